//! Many routers under one routerd: each in its own namespace with the same tenant subnets,
//! all loaded in parallel; routers added and removed while another carries traffic.
//! `ROUTER_SCALE_ROUTERS=N` runs it with N routers (the benchmark `routerscale` measures
//! 1,000).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use router_tests::{
    probe::UdpStream,
    scale::{EXT_HOST, ScaleTopology},
    traffic::{self, wait_for},
};

#[test]
fn many_routers_load_forward_and_change_without_disturbing_each_other() {
    let n: usize = std::env::var("ROUTER_SCALE_ROUTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
        .max(3);
    // Router n is built but not desired yet: it is added live below.
    let topo = ScaleTopology::build(n + 1, "xdp", 1024, &[0, n - 1, n]);
    topo.write_config(0..n);
    let (routerd, _) = topo.start_routerd(Duration::from_secs(30 + n as u64), &[]);
    for i in 0..n {
        assert!(
            router_user::paths::router_info_file(&topo.router_id(i)).exists(),
            "router {i} did not start"
        );
    }
    let log = routerd.log_text();
    assert!(log.contains(&format!("{n} router(s) started in")), "{log}");

    // Every sampled router forwards its own VM's traffic, with the same subnets as all the
    // others, through its own gateway, in the fast path.
    let kernel_before: Vec<u64> = topo
        .samples
        .iter()
        .map(|s| traffic::forwarded_by_kernel(&topo.router_ns(s.router)))
        .collect();
    for s in topo.samples.iter().filter(|s| s.router < n) {
        assert!(
            traffic::ping(&s.vm_ns, EXT_HOST, 2),
            "router {}: VM -> external host (SNAT)",
            s.router
        );
        assert!(
            traffic::ping(&s.ext_ns, ScaleTopology::floating_ip(s.router).octets(), 2),
            "router {}: external host -> floating IP",
            s.router
        );
    }

    // Router 0 carries a stream while router n is added and router 1 removed.
    let first = &topo.samples[0];
    let stream = UdpStream::start(
        &first.vm_ns,
        42001,
        SocketAddrV4::new(Ipv4Addr::from(EXT_HOST), 6001),
        &first.ext_ns,
        6001,
        Duration::from_millis(5),
    );
    std::thread::sleep(Duration::from_millis(300));
    topo.write_config((0..=n).filter(|&i| i != 1));
    routerd.reload();
    wait_for("the added router", Duration::from_secs(20), || {
        router_user::paths::router_info_file(&topo.router_id(n)).exists()
    });
    wait_for("the removed router's pins", Duration::from_secs(20), || {
        !router_user::datapath::pinned_routers().contains(&topo.router_id(1))
    });
    let added = topo
        .samples
        .iter()
        .find(|s| s.router == n)
        .expect("sample n");
    assert!(
        traffic::ping(&added.vm_ns, EXT_HOST, 2),
        "the added router forwards"
    );
    std::thread::sleep(Duration::from_millis(300));
    let report = stream.finish();
    assert!(
        report.sent > 100 && report.lost.is_empty(),
        "router 0 lost {} of {} datagrams while others were added and removed",
        report.lost.len(),
        report.sent
    );
    assert_eq!(
        report.sources.iter().map(|a| *a.ip()).collect::<Vec<_>>(),
        vec![ScaleTopology::floating_ip(0)],
        "router 0's VM leaves by its floating IP"
    );
    for (s, before) in topo.samples.iter().zip(kernel_before) {
        assert_eq!(
            traffic::forwarded_by_kernel(&topo.router_ns(s.router)),
            before,
            "router {}'s kernel forwarded",
            s.router
        );
    }
}
