//! NAT through the real routerd, beyond what each endpoint sees: a floating IP removed at
//! run time stops translating at once (its sessions end), fragments leave translated (by the
//! fast path), and what the fast path hands to the kernel (here: IP options) still leaves
//! translated, by the kernel's slow-path rules.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use router_tests::{
    routerd::Routerd,
    topo::{EXT_HOST, GATEWAY_IP, RouterTopology, ip},
    traffic::{self, in_ns, join},
};

const FIP_B: [u8; 4] = [198, 18, 0, 10];

fn with_floating_ip(topo: &RouterTopology, present: bool) {
    let text = std::fs::read_to_string(&topo.config).expect("config");
    let base = text
        .split("[[router.floating_ip]]")
        .next()
        .unwrap_or_default()
        .to_string();
    let text = if present {
        format!("{base}[[router.floating_ip]]\naddress = \"198.18.0.10\"\nfixed = \"10.0.2.5\"\n")
    } else {
        base
    };
    std::fs::write(&topo.config, text).expect("writing config");
}

/// Receives one datagram on `port` in `ns`; returns who sent it and how many bytes.
fn receive_one(ns: &str, port: u16) -> std::thread::JoinHandle<Option<(SocketAddrV4, usize)>> {
    in_ns(ns, move || {
        let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut buf = vec![0u8; 65536];
        match sock.recv_from(&mut buf) {
            Ok((n, std::net::SocketAddr::V4(from))) => Some((from, n)),
            _ => None,
        }
    })
}

fn send_from(ns: &str, to: [u8; 4], port: u16, len: usize) {
    send_with_options(ns, to, port, len, &[]);
}

/// Sends one datagram carrying `options` in its IPv4 header (IP_OPTIONS).
fn send_with_options(ns: &str, to: [u8; 4], port: u16, len: usize, options: &[u8]) {
    let options = options.to_vec();
    join(in_ns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        if !options.is_empty() {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid socket and an option buffer of the given length.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_OPTIONS,
                    options.as_ptr().cast(),
                    options.len() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "IP_OPTIONS");
        }
        sock.send_to(&vec![7u8; len], SocketAddrV4::new(Ipv4Addr::from(to), port))
            .expect("send");
    }));
}

fn routerd_reason(router: &str, iface: &str, reason: &str) -> u64 {
    let rows = router_user::stats::collect(Some(router)).expect("counters");
    rows.into_iter()
        .find(|r| r.interface == iface)
        .and_then(|r| r.reasons.get(reason).copied())
        .unwrap_or(0)
}

/// `routerctl ARGS`, which must print one JSON document of `kind`: its items.
fn routerctl(kind: &str, args: &[&str]) -> serde_json::Value {
    let ctl = router_tests::routerd::routerd_path().with_file_name("routerctl");
    let out = std::process::Command::new(&ctl)
        .args(args)
        .output()
        .expect("routerctl");
    assert!(
        out.status.success(),
        "routerctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("routerctl JSON");
    assert_eq!(
        (&doc["kind"], &doc["version"]),
        (&serde_json::json!(kind), &serde_json::json!(1)),
        "routerctl {args:?}: {doc}"
    );
    doc["items"].clone()
}

fn run(mode: &str) {
    let topo = RouterTopology::build(mode);
    with_floating_ip(&topo, true);
    let mut routerd = Routerd::start(&topo.config, &topo.router_id);
    // The external host has a route to 10/8 via the router in this topology; remove it so
    // the floating IP is the only way in.
    ip(&["-n", &topo.ext_ns, "route", "del", "10.0.0.0/8"]);

    // The floating IP answers (ARP from the fast path, DNAT) and VM B appears as it.
    assert!(
        traffic::ping(&topo.ext_ns, FIP_B, 2),
        "{mode}: ping the floating IP\n{}",
        routerd.log_text()
    );
    let rx = receive_one(&topo.ext_ns, 7001);
    std::thread::sleep(Duration::from_millis(200));
    send_from(&topo.vm_b_ns, EXT_HOST, 7001, 100);
    let (from, _) = join(rx).expect("datagram from VM B");
    assert_eq!(
        from.ip().octets(),
        FIP_B,
        "{mode}: VM B leaves as its floating IP"
    );

    // Fragments: a 3000-byte datagram from VM A (no floating IP) leaves as the gateway IP,
    // never as 10.0.1.5 (the fast path translates every fragment as the first).
    let rx = receive_one(&topo.ext_ns, 7002);
    std::thread::sleep(Duration::from_millis(200));
    send_from(&topo.vm_a_ns, EXT_HOST, 7002, 3000);
    let (from, n) = join(rx).expect("fragmented datagram from VM A");
    assert_eq!(
        (from.ip().octets(), n),
        (GATEWAY_IP, 3000),
        "{mode}: fragments SNATed"
    );
    // And a fragmented datagram from VM B leaves as its floating IP.
    let rx = receive_one(&topo.ext_ns, 7003);
    std::thread::sleep(Duration::from_millis(200));
    send_from(&topo.vm_b_ns, EXT_HOST, 7003, 3000);
    let (from, _) = join(rx).expect("fragmented datagram from VM B");
    assert_eq!(
        from.ip().octets(),
        FIP_B,
        "{mode}: fragments keep the floating IP"
    );

    // IP options are the kernel's too: still translated.
    let rx = receive_one(&topo.ext_ns, 7006);
    std::thread::sleep(Duration::from_millis(200));
    send_with_options(&topo.vm_a_ns, EXT_HOST, 7006, 100, &[1, 1, 1, 0]);
    let (from, _) = join(rx).expect("datagram with IP options from VM A");
    assert_eq!(
        from.ip().octets(),
        GATEWAY_IP,
        "{mode}: IP-options packet SNATed"
    );
    assert!(
        routerd_reason(&topo.router_id, "qr-a", "ip_options") >= 1,
        "{mode}: it went by the slow path"
    );

    // A default-SNAT session made by the fast path, as routerctl lists it.
    let rx = receive_one(&topo.ext_ns, 7005);
    std::thread::sleep(Duration::from_millis(200));
    send_from(&topo.vm_a_ns, EXT_HOST, 7005, 100);
    let (from, _) = join(rx).expect("datagram from VM A");
    assert_eq!(
        from.ip().octets(),
        GATEWAY_IP,
        "{mode}: VM A leaves as the gateway IP"
    );
    let sessions = routerctl("sessions", &["ct", "list", "-f", "json", &topo.router_id]);
    let found = sessions.as_array().expect("array").iter().any(|s| {
        s["original"]["src"] == "10.0.1.5"
            && s["original"]["dport"] == 7005
            && s["translated"]["src"] == "198.18.0.2"
    });
    assert!(found, "{mode}: ct list shows the SNAT session: {sessions}");
    let nat = routerctl(
        "nat",
        &["nat", "list", "--json", "--router", &topo.router_id],
    );
    let fip = &nat["floating_ips"][0];
    assert_eq!(fip["floating_ip"], "198.18.0.10", "{mode}: nat list: {nat}");
    // In: the two pings to the floating IP; out: their replies and VM B's datagrams.
    assert!(
        fip["in_packets"].as_u64().unwrap_or(0) >= 2
            && fip["out_packets"].as_u64().unwrap_or(0) >= 3,
        "{mode}: fip counters: {nat}"
    );
    assert!(
        nat["gateways"][0]["out_packets"].as_u64().unwrap_or(0) >= 1,
        "{mode}: SNAT gateway counters: {nat}"
    );
    assert!(
        nat["gateways"][0]["sessions_created"].as_u64().unwrap_or(0) >= 1,
        "{nat}"
    );

    // Remove the floating IP at run time: it stops answering and translating at once.
    with_floating_ip(&topo, false);
    routerd.reload();
    traffic::wait_for(
        "the floating IP to be removed",
        Duration::from_secs(5),
        || routerd.log_text().contains("applied new desired state"),
    );
    assert!(
        !traffic::ping(&topo.ext_ns, FIP_B, 1),
        "{mode}: a removed floating IP must not answer"
    );
    let rx = receive_one(&topo.ext_ns, 7004);
    std::thread::sleep(Duration::from_millis(200));
    send_from(&topo.vm_b_ns, EXT_HOST, 7004, 100);
    let (from, _) = join(rx).expect("datagram from VM B after removal");
    assert_eq!(
        from.ip().octets(),
        GATEWAY_IP,
        "{mode}: VM B now leaves by default SNAT"
    );
    assert!(routerd.stop(), "routerd stops cleanly");
}

#[test]
fn nat_operations_xdp() {
    run("xdp");
}

#[test]
fn nat_operations_tc() {
    run("tc");
}

/// Traceroute and path-MTU discovery through default SNAT and through a floating IP: the
/// ICMP errors a router beyond the external network sends to the translated address reach
/// the VM, outer and embedded headers translated back.
fn icmp_errors_through_nat(mode: &str) {
    let mut topo = RouterTopology::build(mode);
    with_floating_ip(&topo, true);
    let far_ns = topo.topology.namespace("far");
    router_tests::topo::veth("eth1", &topo.ext_ns, "eth0", &far_ns);
    ip(&["-n", &topo.ext_ns, "link", "set", "eth1", "mtu", "1400"]);
    ip(&["-n", &far_ns, "link", "set", "eth0", "mtu", "1400"]);
    ip(&[
        "-n",
        &topo.ext_ns,
        "addr",
        "add",
        "203.0.113.1/24",
        "dev",
        "eth1",
    ]);
    ip(&["-n", &topo.ext_ns, "link", "set", "eth1", "up"]);
    ip(&[
        "-n",
        &far_ns,
        "addr",
        "add",
        "203.0.113.2/24",
        "dev",
        "eth0",
    ]);
    ip(&["-n", &far_ns, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        &far_ns,
        "route",
        "add",
        "default",
        "via",
        "203.0.113.1",
    ]);
    router_tests::topo::run(
        "ip",
        &[
            "netns",
            "exec",
            &topo.ext_ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    );
    let routerd = Routerd::start(&topo.config, &topo.router_id);
    ip(&["-n", &topo.ext_ns, "route", "del", "10.0.0.0/8"]);
    const FAR: [u8; 4] = [203, 0, 113, 2];
    for (vm, what) in [
        (&topo.vm_a_ns, "default SNAT"),
        (&topo.vm_b_ns, "floating IP"),
    ] {
        assert!(
            traffic::ping(vm, FAR, 1),
            "{mode} {what}: reach the far host\n{}",
            routerd.log_text()
        );
        let hop = traffic::udp_probe(vm, FAR, 2);
        assert_eq!(
            hop,
            Some(traffic::IcmpError {
                from: Ipv4Addr::from(EXT_HOST),
                icmp_type: traffic::ICMP_TIME_EXCEEDED,
            }),
            "{mode} {what}: traceroute hop 2"
        );
        let too_big = traffic::udp_probe_with(vm, FAR, 64, 1472, true);
        let (error, mtu) = too_big.unwrap_or_else(|| panic!("{mode} {what}: no frag-needed"));
        assert_eq!(
            (error.from, error.icmp_type, mtu),
            (Ipv4Addr::from(EXT_HOST), traffic::ICMP_DEST_UNREACH, 1400),
            "{mode} {what}: path MTU discovery"
        );
    }
}

#[test]
fn icmp_errors_through_nat_xdp() {
    icmp_errors_through_nat("xdp");
}

#[test]
fn icmp_errors_through_nat_tc() {
    icmp_errors_through_nat("tc");
}

/// Sessions age out by their state's timeout (configured short here), and `ct flush` ends
/// them all.
fn sessions_age_out(mode: &str) {
    let topo = RouterTopology::build(mode);
    let mut text = std::fs::read_to_string(&topo.config).expect("config");
    text.push_str("\n[router.nat.timeouts]\nudp = 2\nudp_stream = 2\n");
    std::fs::write(&topo.config, text).expect("config");
    let routerd = Routerd::start(&topo.config, &topo.router_id);
    ip(&["-n", &topo.ext_ns, "route", "del", "10.0.0.0/8"]);
    let count = |port: u64| {
        let all = routerctl(
            "sessions",
            &["ct", "list", "--output", "json", &topo.router_id],
        );
        all.as_array()
            .expect("array")
            .iter()
            .filter(|s| s["original"]["dport"] == port)
            .count()
    };
    let rx = receive_one(&topo.ext_ns, 7101);
    std::thread::sleep(Duration::from_millis(200));
    send_from(&topo.vm_a_ns, EXT_HOST, 7101, 10);
    assert!(
        join(rx).is_some(),
        "{mode}: datagram arrives\n{}",
        routerd.log_text()
    );
    assert_eq!(count(7101), 1, "{mode}: the session exists");
    traffic::wait_for("the session to age out", Duration::from_secs(6), || {
        count(7101) == 0
    });
    let rx = receive_one(&topo.ext_ns, 7102);
    std::thread::sleep(Duration::from_millis(200));
    send_from(&topo.vm_a_ns, EXT_HOST, 7102, 10);
    assert!(join(rx).is_some());
    assert_eq!(count(7102), 1, "{mode}: a new session");
    let ctl = router_tests::routerd::routerd_path().with_file_name("routerctl");
    // Without a router, ct flush would reset every router's sessions: refused unless --all.
    let refused = std::process::Command::new(&ctl)
        .args(["ct", "flush"])
        .output()
        .expect("routerctl ct flush");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "ct flush: {stderr}");
    assert!(stderr.contains("--all"), "{stderr}");
    assert_eq!(count(7102), 1, "{mode}: ct flush without a router flushed");
    let out = std::process::Command::new(&ctl)
        .args(["ct", "flush", &topo.router_id])
        .output()
        .expect("routerctl ct flush");
    assert!(out.status.success(), "ct flush");
    assert_eq!(count(7102), 0, "{mode}: flushed");
}

#[test]
fn sessions_age_out_xdp() {
    sessions_age_out("xdp");
}

#[test]
fn sessions_age_out_tc() {
    sessions_age_out("tc");
}
