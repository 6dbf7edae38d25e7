//! Topology tests: real namespaces, veth pairs, the real routerd, real traffic. Proves the
//! fast path carries routed traffic in XDP and in TC mode (the kernel's forwarding counter
//! stays still), that the kernel still answers TTL expiry, and that the first packet to an
//! unresolved neighbour is not lost.

use router_user::maps::Rooms as _;
use std::{net::Ipv4Addr, time::Duration};

use router_common::NeighborKey;
use router_tests::{
    routerd::Routerd,
    topo::{EXT_HOST, QR_A_IP, RouterTopology, VM_A, VM_B, ip},
    traffic::{self, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, IcmpError},
};
use router_user::stats;

const TEN_MB: usize = 10 * 1024 * 1024;

fn counters(router: &str, iface: &str) -> stats::InterfaceStats {
    let rows = stats::collect(Some(router)).expect("reading pinned counters");
    rows.into_iter()
        .find(|r| r.interface == iface)
        .unwrap_or_else(|| panic!("no counters for {iface}"))
}

fn fwd_packets(router: &str, iface: &str) -> u64 {
    counters(router, iface).forwarded_packets
}

fn fwd_bytes(router: &str, iface: &str) -> u64 {
    counters(router, iface).forwarded_bytes
}

fn has_neighbor(router: &str, ifname: &str, addr: [u8; 4]) -> bool {
    let mut maps = router_user::maps::Pinned::open(router).expect("pinned maps");
    let info = router_user::router::running_routers()
        .expect("router info")
        .into_iter()
        .find(|r| r.router == router)
        .expect("router is running");
    let ifindex = info
        .interfaces
        .iter()
        .find(|i| i.name == ifname)
        .expect("interface")
        .ifindex;
    maps.routes()
        .neighbor(&NeighborKey { ifindex, addr })
        .expect("NEIGHBORS")
        .is_some()
}

fn routed_through_fast_path(mode: &str) {
    routed(mode, false);
}

fn reason_count(router: &str, iface: &str, reason: &str) -> u64 {
    counters(router, iface)
        .reasons
        .get(reason)
        .copied()
        .unwrap_or(0)
}

fn routed(mode: &str, xdp_egress: bool) {
    let topo = RouterTopology::build_with(mode, xdp_egress);
    let mut routerd = Routerd::start(&topo.config, &topo.router_id);
    let id = topo.router_id.clone();
    // TC mode runs (and so loads and verifies) only the TC entry.
    let expected: &[&str] = if mode == "xdp" {
        &["router_tc", "router_xdp"]
    } else {
        &["router_tc"]
    };
    assert_eq!(router_tests::routerd::programs_of(&id), expected, "{mode}");

    // Reachability (this also resolves the neighbours).
    assert!(
        traffic::ping(&topo.vm_a_ns, VM_B, 3),
        "{mode}: ping VM A -> VM B\n{}",
        routerd.log_text()
    );
    assert!(
        traffic::ping(&topo.vm_a_ns, EXT_HOST, 3),
        "{mode}: ping VM A -> external host"
    );
    assert!(
        traffic::ping(&topo.vm_b_ns, EXT_HOST, 3),
        "{mode}: ping VM B -> external host"
    );
    assert!(
        traffic::ping(&topo.ext_ns, VM_A, 3),
        "{mode}: ping external host -> VM A"
    );

    // Bulk TCP with content checks; the kernel must not forward any of it.
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);
    let (qr_a_before, qg_before) = (fwd_bytes(&id, "qr-a"), fwd_packets(&id, &topo.qg));
    let to_tc_before = reason_count(&id, "qr-a", "xdp_to_tc");
    let flows = [
        (&topo.vm_a_ns, &topo.vm_b_ns, VM_B, 5001),
        (&topo.vm_a_ns, &topo.ext_ns, EXT_HOST, 5002),
        (&topo.vm_b_ns, &topo.ext_ns, EXT_HOST, 5003),
    ];
    for (from, to, dst, port) in flows {
        let got = traffic::tcp_transfer(from, to, dst, port, TEN_MB);
        assert_eq!(got, TEN_MB, "{mode}: TCP {from} -> {to}");
    }
    let kernel_grew = traffic::forwarded_by_kernel(&topo.router_ns) - kernel_before;
    let qr_a = fwd_bytes(&id, "qr-a") - qr_a_before;
    let qg = fwd_packets(&id, &topo.qg) - qg_before;
    // Bytes, not packets: in TC mode a VM's TSO super-packets are forwarded whole.
    assert!(
        qr_a >= 2 * TEN_MB as u64,
        "{mode}: fast path forwarded only {qr_a} bytes from qr-a"
    );
    assert!(
        qg >= 100,
        "{mode}: fast path forwarded only {qg} packets (ACKs) from qg"
    );
    let to_tc = reason_count(&id, "qr-a", "xdp_to_tc") - to_tc_before;
    if xdp_egress {
        assert_eq!(
            to_tc, 0,
            "{mode}: with XDP egress every packet must leave by DEVMAP redirect"
        );
    } else if mode == "xdp" {
        assert!(
            to_tc > 0,
            "{mode}: veths without XDP on the far end must be reached through TC"
        );
    }
    assert!(
        kernel_grew <= 10,
        "{mode}: the kernel forwarded {kernel_grew} datagrams of the transfer (fast path: {qr_a})"
    );

    // traceroute: hop 1 is the router (time exceeded), hop 2 the destination.
    assert_eq!(
        traffic::udp_probe(&topo.vm_a_ns, EXT_HOST, 1),
        Some(IcmpError {
            from: Ipv4Addr::from(QR_A_IP),
            icmp_type: ICMP_TIME_EXCEEDED
        }),
        "{mode}: TTL 1 must be answered by the router"
    );
    assert_eq!(
        traffic::udp_probe(&topo.vm_a_ns, EXT_HOST, 2),
        Some(IcmpError {
            from: Ipv4Addr::from(EXT_HOST),
            icmp_type: ICMP_DEST_UNREACH
        }),
        "{mode}: TTL 2 must reach the external host"
    );

    // The first packet to an unresolved next hop is not lost; the entry is then mirrored.
    ip(&["-n", &topo.router_ns, "neigh", "flush", "dev", "qr-b"]);
    traffic::wait_for(
        "the neighbour to leave the map",
        Duration::from_secs(3),
        || !has_neighbor(&id, "qr-b", VM_B),
    );
    assert!(
        traffic::udp_once(
            &topo.vm_a_ns,
            &topo.vm_b_ns,
            VM_B,
            6001,
            Duration::from_secs(3)
        ),
        "{mode}: the first datagram to an unresolved neighbour was lost"
    );
    traffic::wait_for(
        "the resolved neighbour in the map",
        Duration::from_secs(5),
        || has_neighbor(&id, "qr-b", VM_B),
    );
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);
    let fwd_before = fwd_packets(&id, "qr-a");
    assert!(traffic::udp_once(
        &topo.vm_a_ns,
        &topo.vm_b_ns,
        VM_B,
        6002,
        Duration::from_secs(3)
    ));
    assert_eq!(
        traffic::forwarded_by_kernel(&topo.router_ns),
        kernel_before,
        "{mode}: after resolution the fast path forwards"
    );
    assert_eq!(
        fwd_packets(&id, "qr-a"),
        fwd_before + 1,
        "{mode}: fast-path counter"
    );

    // routerctl reads the same pinned counters, as a table and as JSON.
    let ctl = router_tests::routerd::routerd_path().with_file_name("routerctl");
    let out = std::process::Command::new(&ctl)
        .args(["stats", "--json", "--router", &id])
        .output()
        .expect("running routerctl");
    assert!(
        out.status.success(),
        "routerctl stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("routerctl --json output");
    assert_eq!(
        (&doc["kind"], &doc["version"]),
        (&serde_json::json!("stats"), &serde_json::json!(1))
    );
    let rows = doc["items"]["interfaces"]
        .as_array()
        .expect("the interface rows");
    let qr_a_row = rows
        .iter()
        .find(|r| r["interface"] == "qr-a")
        .expect("qr-a row");
    assert!(qr_a_row["forwarded_bytes"].as_u64().unwrap_or(0) >= 2 * TEN_MB as u64);
    assert_eq!(qr_a_row["role"], "internal");
    assert!(
        rows.iter()
            .any(|r| r["interface"] == topo.qg.as_str() && r["role"] == "external")
    );
    let out = std::process::Command::new(&ctl)
        .arg("stats")
        .output()
        .expect("running routerctl");
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "routerctl stats table"
    );

    // SIGTERM ends the daemon, not the fast path: pins stay and packets are still
    // forwarded without the kernel.
    assert!(
        routerd.stop(),
        "{mode}: routerd exit status\n{}",
        routerd.log_text()
    );
    assert!(
        router_user::paths::router_pin_dir(&id)
            .join("links")
            .exists(),
        "{mode}: pins gone after SIGTERM"
    );
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);
    assert!(
        traffic::ping(&topo.vm_a_ns, VM_B, 3),
        "{mode}: fast path after routerd exited"
    );
    assert_eq!(
        traffic::forwarded_by_kernel(&topo.router_ns),
        kernel_before,
        "{mode}: the kernel forwarded while no routerd ran"
    );

    // Teardown detaches: pins gone, the kernel forwards again.
    let out = std::process::Command::new(router_tests::routerd::routerd_path())
        .args(["--teardown", &id])
        .output()
        .expect("running routerd --teardown");
    assert!(out.status.success(), "{mode}: teardown failed: {out:?}");
    assert!(
        !router_user::paths::router_pin_dir(&id).exists(),
        "{mode}: pins left behind"
    );
    assert!(
        !router_user::paths::router_info_file(&id).exists(),
        "{mode}: info file left behind"
    );
    // The kernel releases an unpinned link from a work queue: give it a moment.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);
    assert!(
        traffic::ping(&topo.vm_a_ns, VM_B, 2),
        "{mode}: kernel path after detach"
    );
    let kernel_after = traffic::forwarded_by_kernel(&topo.router_ns);
    assert!(
        kernel_after >= kernel_before + 4,
        "{mode}: the kernel forwards after detach ({kernel_before} -> {kernel_after})"
    );
}

#[test]
fn xdp_mode_routes_through_the_fast_path() {
    routed_through_fast_path("xdp");
}

/// The far ends run GRO (so XDP frames redirected into them are delivered) and send full
/// checksums (tx checksum offload off): the XDP entry redirects through the DEVMAP itself.
/// With offload on, a redirected frame would carry the partial checksum the sender's skb
/// left for the device (CHECKSUM_PARTIAL does not survive XDP), and TCP would break.
#[test]
fn xdp_mode_with_xdp_egress_redirects_in_xdp() {
    routed("xdp", true);
}

#[test]
fn tc_mode_routes_through_the_fast_path() {
    routed_through_fast_path("tc");
}

#[test]
fn invalid_desired_state_is_rejected_before_anything_changes() {
    let topo = RouterTopology::build("xdp");
    let good = std::fs::read_to_string(&topo.config).expect("config");
    let bad = good.replace("10.0.1.254", "10.9.9.9");
    std::fs::write(&topo.config, bad).expect("write bad config");
    let out = std::process::Command::new(router_tests::routerd::routerd_path())
        .arg("--config")
        .arg(&topo.config)
        .output()
        .expect("running routerd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "routerd accepted an invalid file");
    assert!(
        stderr.contains("route[0].nexthop") && stderr.contains("10.9.9.9"),
        "{stderr}"
    );
    // Nothing was touched: no address on qg, no pins, no info file.
    let addrs = traffic::join(traffic::in_ns(&topo.router_ns, || {
        std::fs::read_to_string("/proc/thread-self/net/fib_trie").expect("fib_trie")
    }));
    assert!(
        !addrs.contains("198.18.0.2"),
        "routerd changed the namespace before rejecting"
    );
    assert!(!router_user::paths::router_pin_dir(&topo.router_id).exists());
}

/// The mode changed in the desired state restarts the router in the other mode: XDP mode
/// loads the XDP program beside the TC one, TC mode drops it (and its pin), and the fast
/// path forwards in each.
#[test]
fn a_mode_change_loads_or_drops_the_xdp_program() {
    let topo = RouterTopology::build("tc");
    let routerd = Routerd::start(&topo.config, &topo.router_id);
    let id = topo.router_id.clone();
    let xdp_pin = router_user::paths::router_pin_dir(&id).join("prog_xdp");
    let text = std::fs::read_to_string(&topo.config).expect("config");
    for (mode, programs) in [
        ("xdp", &["router_tc", "router_xdp"][..]),
        ("tc", &["router_tc"][..]),
    ] {
        let now = text.replace("mode = \"tc\"", &format!("mode = \"{mode}\""));
        assert!(now.contains(&format!("mode = \"{mode}\"")), "{now}");
        std::fs::write(&topo.config, &now).expect("writing config");
        let reloads = || routerd.log_text().matches("routerd: reloaded in").count();
        let before = reloads();
        routerd.reload();
        traffic::wait_for(
            &format!("router {id} restarted in {mode} mode"),
            Duration::from_secs(10),
            || reloads() > before,
        );
        // A program whose last link and pin are gone is freed after an RCU grace period.
        traffic::wait_for(
            &format!("router {id}'s programs in {mode} mode: {programs:?}"),
            Duration::from_secs(5),
            || router_tests::routerd::programs_of(&id) == programs,
        );
        assert_eq!(xdp_pin.exists(), mode == "xdp", "{mode}: prog_xdp pin");
        let before = traffic::forwarded_by_kernel(&topo.router_ns);
        assert!(
            traffic::ping(&topo.vm_a_ns, VM_B, 2),
            "{mode}: ping VM A -> VM B\n{}",
            routerd.log_text()
        );
        assert_eq!(
            traffic::forwarded_by_kernel(&topo.router_ns),
            before,
            "{mode}: the fast path forwards"
        );
    }
}
