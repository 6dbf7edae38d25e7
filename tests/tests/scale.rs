//! Many routers under one routerd: each in its own namespace with the same tenant subnets,
//! all loaded in parallel; routers added and removed while another carries traffic; each
//! router's tables made as its configuration says.
//! `ROUTER_SCALE_ROUTERS=N` runs it with N routers (the benchmark `routerscale` measures
//! 1,000).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use router_tests::{
    probe::UdpStream,
    scale::{EXT_HOST, ScaleTopology, pin_fdinfo},
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

    // A frame goes into every port of the started routers that leads to no host (two of each
    // sampled router's lead to hosts; router n has not started, so its ports are down).
    assert_eq!(topo.frame_into_every_port(), 4 * n - 4);

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

/// The numeric fdinfo fields of router `i`'s pinned map `name`.
fn pinned_map(topo: &ScaleTopology, i: usize, name: &str) -> BTreeMap<String, u64> {
    let path = router_user::paths::router_pin_dir(&topo.router_id(i)).join(name);
    pin_fdinfo(&path).unwrap_or_default()
}

/// A router's tables as its configuration makes them: the session table made as sessions
/// come (`nat.preallocate_sessions = false`: its memory is its hash buckets, not its
/// entries) or preallocated, and made again when the setting changes; the sync ring one
/// page, as only an HA router's fast path writes it.
#[test]
fn tables_are_made_as_the_configuration_says() {
    // BPF_F_NO_PREALLOC; about 150 bytes per entry when preallocated.
    const NO_PREALLOC: u64 = 1;
    const ENTRIES: u64 = 2 * 4096;
    let mut topo = ScaleTopology::build(1, "tc", 4096, &[0]);
    topo.preallocate_sessions = false;
    topo.write_config(0..1);
    let (routerd, _) = topo.start_routerd(Duration::from_secs(60), &[]);
    let sample = &topo.samples[0];
    let forwards = || {
        traffic::ping(&sample.vm_ns, EXT_HOST, 2)
            && traffic::ping(&sample.ext_ns, ScaleTopology::floating_ip(0).octets(), 2)
    };
    let sessions = pinned_map(&topo, 0, "SESSIONS");
    assert_eq!(
        sessions.get("map_flags").map(|f| f & NO_PREALLOC),
        Some(NO_PREALLOC),
        "{sessions:?}"
    );
    assert_eq!(sessions.get("max_entries"), Some(&ENTRIES), "{sessions:?}");
    let on_demand = sessions.get("memlock").copied().unwrap_or(u64::MAX);
    assert!(on_demand < ENTRIES * 150 / 4, "{sessions:?}");
    let sync = pinned_map(&topo, 0, "SYNC");
    assert_eq!(
        sync.get("max_entries").copied(),
        Some(u64::from(router_common::SYNC_BYTES_UNUSED)),
        "{sync:?}"
    );
    assert!(
        forwards(),
        "the router forwards with its tables made on demand"
    );

    topo.preallocate_sessions = true;
    topo.write_config(0..1);
    routerd.reload();
    wait_for(
        "the session table made again, preallocated",
        Duration::from_secs(20),
        || {
            pinned_map(&topo, 0, "SESSIONS")
                .get("map_flags")
                .is_some_and(|f| f & NO_PREALLOC == 0)
        },
    );
    let sessions = pinned_map(&topo, 0, "SESSIONS");
    assert!(
        sessions.get("memlock").copied().unwrap_or(0) >= ENTRIES * 100,
        "a preallocated table holds memory for its entries: {sessions:?} (on demand: {on_demand})"
    );
    wait_for(
        "the router forwarding again",
        Duration::from_secs(10),
        forwards,
    );
}
