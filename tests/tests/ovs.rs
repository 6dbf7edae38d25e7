//! The router on a Neutron node with Open vSwitch: `qg` is an internal port of `br-ex`,
//! `qr-a`/`qr-b` internal ports of `br-int` on VLANs of their own, the VMs internal ports of
//! `br-int` on their subnet's VLAN, every one of them a tap device of OVS's userspace
//! datapath moved into its namespace (see `router_tests::ovs`), but vm3, plugged by a veth
//! pair as a VM plugged the hybrid way (`qvo` on `br-int`). routerd runs the router in
//! each mode with what it decides by itself for such interfaces (no `xdp_egress` in the
//! desired state), and traffic checks at the far end: routing, floating IPs, SNAT to the
//! gateway, the firewall's drops, and that the router's kernel forwards none of it.
//!
//! ```text
//!  br-ex:  ext 198.18.0.1 ── qg-nat (198.18.0.2 = GW; FIP1 198.18.0.10 -> vm1, FIP2 .11 -> vm2)
//!  br-int VLAN 101:  vm1 10.0.1.5, vm3 10.0.1.6 ── qr-a 10.0.1.1
//!  br-int VLAN 102:  vm2 10.0.2.5 ── qr-b 10.0.2.1
//! ```

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use router_tests::{
    desired::{FirewallText, FwRuleText, PolicyText, RouterText},
    nat_topo::{EXT, FIP1, FIP2, GW, NatTopology, QG, QR_A, QR_B, VM1, VM2, VM3},
    observe::{self, Exchange, Protocol},
    ovs,
    policy_topo::reason_total,
    routerd::{fast_path_has_neighbor, programs_of},
    topo::ip,
    traffic,
};

/// East-west TCP to this port of vm2 is denied by the firewall's first rule.
const DENIED_PORT: u16 = 7100;
const BULK: usize = 4 * 1024 * 1024;

/// The firewall: everything allowed but TCP to vm2's [`DENIED_PORT`] and ICMP from vm3.
fn firewall() -> FirewallText {
    FirewallText {
        default: "allow".into(),
        rules: vec![
            FwRuleText::new("deny", "tcp")
                .destination(&format!("{VM2}/32"))
                .ports(&DENIED_PORT.to_string()),
            FwRuleText::new("deny", "icmp").source(&format!("{VM3}/32")),
        ],
    }
}

/// Packets counted by firewall rule `index` of `router`.
fn rule_packets(router: &str, index: usize) -> u64 {
    use router_user::maps::{Pinned, Rooms as _};
    Pinned::open(router)
        .and_then(|mut m| m.policy().rule_counters())
        .unwrap_or_else(|e| panic!("reading router {router}'s firewall rule counters: {e}"))
        .into_iter()
        .find(|c| c.index == index)
        .map_or(0, |c| c.packets)
}

/// The kind of `dev` in namespace `ns` as the kernel reports it (`tun` for an OVS internal
/// port of the userspace datapath) and, for a tun, its type (`tap`).
fn link_kind(ns: &str, dev: &str) -> (String, String) {
    let info = link_info(ns, dev);
    (
        info["info_kind"].as_str().unwrap_or("").to_string(),
        info["info_data"]["type"].as_str().unwrap_or("").to_string(),
    )
}

/// Whether tap `dev` in `ns` carries virtio-net headers (OVS with `userspace-tso-enable`).
fn vnet_hdr(ns: &str, dev: &str) -> bool {
    link_info(ns, dev)["info_data"]["vnet_hdr"]
        .as_bool()
        .unwrap_or_else(|| panic!("{dev} in {ns} is not a tap"))
}

/// `linkinfo` of `dev` in namespace `ns`, as `ip -d -j` prints it.
fn link_info(ns: &str, dev: &str) -> serde_json::Value {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-j", "-d", "link", "show", "dev", dev])
        .output()
        .expect("running ip");
    assert!(out.status.success(), "ip link show {dev} in {ns}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    json[0]["linkinfo"].clone()
}

/// The wiring is what a Neutron node has: ports on the right bridge with the right VLAN,
/// taps in the namespaces, and the VLANs keep the subnets apart at layer 2.
fn check_wiring(topo: &NatTopology) {
    let t = &topo.topology;
    let qg = t.ovs_port(&topo.router_ns, QG);
    let qr_a = t.ovs_port(&topo.router_ns, QR_A);
    let qr_b = t.ovs_port(&topo.router_ns, QR_B);
    assert!(qg.bridge.starts_with("bx-") && qg.tag.is_none(), "{qg:?}");
    assert!(qr_a.bridge.starts_with("bi-") && qr_b.bridge == qr_a.bridge);
    assert_ne!(qr_a.tag, qr_b.tag, "each subnet has a VLAN of its own");
    for (ns, dev, like) in [
        (&topo.ext_ns, "eth0", qg),
        (&topo.vm1_ns, "eth0", qr_a),
        (&topo.vm3_ns, "eth0", qr_a),
        (&topo.vm2_ns, "eth0", qr_b),
    ] {
        let port = t.ovs_port(ns, dev);
        assert_eq!(
            (&port.bridge, port.tag),
            (&like.bridge, like.tag),
            "{dev} in {ns}"
        );
    }
    for port in t.ovs_ports() {
        // OVS's database, not the builder's record.
        assert_eq!(ovs::Bridge::tag_of(&port.port), port.tag, "{port:?}");
        let (kind, tun_type) = link_kind(&port.ns, &port.dev);
        if port.ns == topo.vm3_ns {
            assert_eq!(kind, "veth", "{port:?} is plugged by a veth pair");
        } else {
            assert_eq!(
                (kind.as_str(), tun_type.as_str()),
                ("tun", "tap"),
                "{port:?} is an internal port of the userspace datapath"
            );
        }
    }
    // vm2 given an address in subnet A stays unreachable from vm1: another VLAN.
    ip(&[
        "-n",
        &topo.vm2_ns,
        "addr",
        "add",
        "10.0.1.99/24",
        "dev",
        "eth0",
    ]);
    let crossed = traffic::ping(&topo.vm1_ns, [10, 0, 1, 99], 1);
    ip(&[
        "-n",
        &topo.vm2_ns,
        "addr",
        "del",
        "10.0.1.99/24",
        "dev",
        "eth0",
    ]);
    assert!(!crossed, "VLAN 101 reached VLAN 102 without the router");
    // vm3, on vm1's VLAN, is reachable directly.
    assert!(
        traffic::ping(&topo.vm1_ns, VM3.octets(), 1),
        "vm1 -> vm3 on VLAN 101"
    );
}

/// Distinct ports for every exchange (no TIME_WAIT collisions).
struct Ports(u16);

impl Ports {
    /// (client port or echo identifier, listening port).
    fn next(&mut self) -> (u16, u16) {
        self.0 += 1;
        (41000 + self.0, 7200 + self.0)
    }
}

fn exchange(
    ports: &mut Ports,
    proto: Protocol,
    from_ns: &str,
    target: SocketAddrV4,
    to_ns: &str,
) -> Exchange {
    let (client, listen) = ports.next();
    let listen = if target.port() == 0 {
        listen
    } else {
        target.port()
    };
    let target = SocketAddrV4::new(*target.ip(), listen);
    let token = format!("{proto}-{client}");
    match proto {
        Protocol::Tcp => observe::tcp(from_ns, client, target, to_ns, listen, &token),
        Protocol::Udp => observe::udp(from_ns, client, target, to_ns, listen, &token),
        Protocol::Icmp => observe::icmp_echo(from_ns, client, *target.ip(), to_ns, &token),
    }
}

/// The receiver saw `src` -> `dst` and the sender's answer came from `answer`.
fn assert_path(what: &str, ex: &Exchange, src: Ipv4Addr, dst: Ipv4Addr, answer: Ipv4Addr) {
    let seen = ex
        .seen
        .unwrap_or_else(|| panic!("{what}: nothing reached the receiver; got {ex:?}"));
    assert_eq!(
        (*seen.src.ip(), *seen.dst.ip()),
        (src, dst),
        "{what}: the receiver saw the wrong addresses; got {ex:?}"
    );
    let got = ex
        .answer
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no answer came back to the sender; got {ex:?}"));
    assert_eq!(*got.from.ip(), answer, "{what}: answer from {ex:?}");
}

/// `userspace_tso`: whether OVS runs with userspace TSO (its taps with virtio-net headers).
fn neutron_node(mode: &str, userspace_tso: bool) {
    let t0 = Instant::now();
    let mut topo = NatTopology::build_ovs();
    check_wiring(&topo);
    for port in topo.topology.ovs_ports() {
        if port.ns != topo.vm3_ns {
            assert_eq!(vnet_hdr(&port.ns, &port.dev), userspace_tso, "{port:?}");
        }
    }
    let text = RouterText {
        floating_ips: vec![(FIP1, VM1), (FIP2, VM2)],
        extra: PolicyText {
            firewall: Some(firewall()),
            ..PolicyText::default()
        }
        .render(),
        ..topo.topology.router_text(mode)
    };
    topo.topology.write_config(&text.render());
    topo.topology.start_routerd();
    let id = topo.tag.clone();
    let log = || topo.topology.routerd().log_text();

    let expected: &[&str] = if mode == "xdp" {
        &["router_tc", "router_xdp"]
    } else {
        &["router_tc"]
    };
    assert_eq!(programs_of(&id), expected, "{mode}");
    let info = router_user::router::running_routers()
        .expect("router info")
        .into_iter()
        .find(|r| r.router == id)
        .expect("the router runs");
    for iface in &info.interfaces {
        // Taps take native XDP, and frames redirected into them reach ovs-vswitchd: the
        // router's own choice for them is XDP and the XDP redirect. Unless OVS runs with
        // userspace TSO (taps with virtio-net headers: GSO aggregates and partial
        // checksums), where the router runs the TC entry alone on them.
        let tso = vnet_hdr(&topo.router_ns, &iface.name);
        assert_eq!(
            (iface.xdp_egress, iface.xdp_unavailable.is_some()),
            (mode == "xdp" && !tso, mode == "xdp" && tso),
            "{mode}: {} ({:?})",
            iface.name,
            info.interfaces
        );
    }

    // Resolve every neighbour (the kernel forwards the first packet to each).
    for (ns, what) in [(&topo.vm1_ns, "vm1"), (&topo.vm2_ns, "vm2")] {
        assert!(
            traffic::ping(ns, EXT.octets(), 2),
            "{mode}: ping {what} -> ext\n{}",
            log()
        );
    }
    assert!(
        traffic::udp_once(
            &topo.vm3_ns,
            &topo.ext_ns,
            EXT.octets(),
            6999,
            observe::WAIT
        ),
        "{mode}: udp vm3 -> ext\n{}",
        log()
    );
    for (ifname, addr) in [(QG, EXT), (QR_A, VM1), (QR_A, VM3), (QR_B, VM2)] {
        traffic::wait_for(
            &format!("{mode}: {addr} on {ifname} in the fast path's neighbours"),
            Duration::from_secs(5),
            || fast_path_has_neighbor(&id, ifname, addr.octets()),
        );
    }

    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);
    let undelivered_before = reason_total(&id, "redirect_failed");
    let mut ports = Ports(0);
    let (ext, vm1, vm2, vm3) = (
        topo.ext_ns.clone(),
        topo.vm1_ns.clone(),
        topo.vm2_ns.clone(),
        topo.vm3_ns.clone(),
    );
    let to = |a: Ipv4Addr| SocketAddrV4::new(a, 0);
    for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp] {
        let ex = exchange(&mut ports, proto, &ext, to(FIP1), &vm1);
        assert_path(&format!("{mode} {proto}: ext -> FIP1"), &ex, EXT, VM1, FIP1);
        let ex = exchange(&mut ports, proto, &vm1, to(EXT), &ext);
        assert_path(&format!("{mode} {proto}: vm1 -> ext"), &ex, FIP1, EXT, EXT);
        let ex = exchange(&mut ports, proto, &vm1, to(VM2), &vm2);
        assert_path(&format!("{mode} {proto}: vm1 -> vm2"), &ex, VM1, VM2, VM2);
        if proto != Protocol::Icmp {
            let ex = exchange(&mut ports, proto, &vm3, to(EXT), &ext);
            assert_path(&format!("{mode} {proto}: vm3 -> ext"), &ex, GW, EXT, EXT);
        }
    }

    // The firewall: each denied exchange reaches nobody, and its rule counts it. Both wait
    // out their whole timeout: side by side.
    let denied_before = (rule_packets(&id, 0), rule_packets(&id, 1));
    let (client, _) = ports.next();
    let (from, to_ns) = (vm1.clone(), vm2.clone());
    let denied_tcp = std::thread::spawn(move || {
        let target = SocketAddrV4::new(VM2, DENIED_PORT);
        observe::tcp(&from, client, target, &to_ns, DENIED_PORT, "denied")
    });
    let ex = exchange(&mut ports, Protocol::Icmp, &vm3, to(EXT), &ext);
    assert_eq!(ex.seen, None, "{mode}: ICMP from vm3 passed the firewall");
    let ex = traffic::join(denied_tcp);
    assert_eq!(
        ex.seen, None,
        "{mode}: TCP to vm2:{DENIED_PORT} passed the firewall"
    );
    let denied = (rule_packets(&id, 0), rule_packets(&id, 1));
    assert!(
        denied.0 > denied_before.0 && denied.1 > denied_before.1,
        "{mode}: the deny rules did not count their drops: {denied_before:?} -> {denied:?}"
    );

    // Bulk TCP, byte for byte: out through a floating IP, out through SNAT to the gateway,
    // and east-west between the VLANs.
    for (from, to_ns, dst, port, what) in [
        (&vm1, &ext, EXT, 5101, "vm1 (FIP) -> ext"),
        (&vm3, &ext, EXT, 5102, "vm3 (SNAT) -> ext"),
        (&vm1, &vm2, VM2, 5103, "vm1 -> vm2"),
    ] {
        let start = Instant::now();
        let got = traffic::tcp_transfer(from, to_ns, dst.octets(), port, BULK);
        assert_eq!(got, BULK, "{mode}: bulk TCP {what}");
        eprintln!(
            "{mode}: {what}: {} MB in {:?} ({:.0} Mbit/s)",
            BULK >> 20,
            start.elapsed(),
            (BULK * 8) as f64 / start.elapsed().as_secs_f64() / 1e6
        );
    }

    assert_eq!(
        traffic::forwarded_by_kernel(&topo.router_ns),
        kernel_before,
        "{mode}: the router's kernel forwarded packets the fast path should have\n{}",
        log()
    );
    assert_eq!(
        reason_total(&id, "redirect_failed"),
        undelivered_before,
        "{mode}: redirects into the OVS taps failed: {:#?}",
        router_user::stats::collect(Some(&id))
    );
    eprintln!("{mode}: done in {:?}", t0.elapsed());
}

#[test]
fn neutron_node_on_ovs_xdp() {
    neutron_node("xdp", false);
}

#[test]
fn neutron_node_on_ovs_tc() {
    neutron_node("tc", false);
}

/// With userspace TSO, OVS hands the router GSO aggregates and partial checksums through
/// its taps' virtio-net headers: in XDP mode routerd runs the TC entry alone on those taps
/// (asserted in `neutron_node`), and everything still arrives, bulk TCP through SNAT to
/// the gateway included. OVS is restarted twice (on and off again); no other topology uses
/// OVS meanwhile.
#[test]
fn neutron_node_on_ovs_with_userspace_tso_xdp() {
    let _tso = ovs::UserspaceTso::enable();
    neutron_node("xdp", true);
}

/// The bridges go with the topology, even when the test fails halfway.
#[test]
fn bridges_are_deleted_on_panic() {
    let bridges = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let topo = NatTopology::build_ovs();
        let names: std::collections::BTreeSet<String> = topo
            .topology
            .ovs_ports()
            .iter()
            .map(|p| p.bridge.clone())
            .collect();
        bridges.lock().expect("lock").extend(names);
        panic!("a test failing halfway");
    });
    assert!(result.is_err());
    let bridges = bridges.into_inner().expect("lock");
    assert_eq!(bridges.len(), 2, "br-int and br-ex: {bridges:?}");
    let left = ovs::vsctl(&["list-br"]).expect("ovs-vsctl list-br");
    for bridge in &bridges {
        assert!(
            !left.lines().any(|l| l == bridge),
            "bridge {bridge} outlived its topology: {left}"
        );
    }
}

/// Bulk TCP over OVS taps, each way of forwarding in turn: Neutron's (the kernel with the
/// L3 agent's iptables rules), routerd in TC mode, in XDP mode redirecting into the taps
/// (its choice for them), and in XDP mode handing every frame to the TC entry to send
/// (`xdp_egress = false`). Prints Mbit/s (median of three) for docs/ovs.md; run it alone:
/// `cargo test -p router-tests --test ovs -- --ignored --nocapture compare`.
#[test]
#[ignore = "a measurement, not a check"]
fn compare_forwarding_over_ovs_taps() {
    const BYTES: usize = 32 * 1024 * 1024;
    let mut rows = Vec::new();
    for (what, mode, xdp_egress) in [
        ("Neutron (kernel + iptables)", None, None),
        ("routerd tc", Some("tc"), None),
        ("routerd xdp (redirect into the taps)", Some("xdp"), None),
        ("routerd xdp, xdp_egress = false", Some("xdp"), Some(false)),
    ] {
        let mut topo = NatTopology::build_ovs();
        match mode {
            None => topo.configure_neutron(),
            Some(mode) => {
                let mut text = RouterText {
                    floating_ips: vec![(FIP1, VM1), (FIP2, VM2)],
                    ..topo.topology.router_text(mode)
                };
                if let Some(x) = xdp_egress {
                    if let Some(g) = &mut text.gateway {
                        g.3 = Some(x);
                    }
                    for i in &mut text.interfaces {
                        i.2 = Some(x);
                    }
                }
                topo.topology.write_config(&text.render());
                topo.topology.start_routerd();
            }
        }
        assert!(traffic::ping(&topo.vm1_ns, EXT.octets(), 2), "{what}");
        assert!(traffic::ping(&topo.vm1_ns, VM2.octets(), 2), "{what}");
        let mut cells = Vec::new();
        for (n, (from, to_ns, dst)) in [
            (&topo.vm1_ns, &topo.ext_ns, EXT),
            (&topo.vm1_ns, &topo.vm2_ns, VM2),
        ]
        .into_iter()
        .enumerate()
        {
            let mut rates: Vec<f64> = (0..3u16)
                .map(|k| {
                    let start = Instant::now();
                    let port = 5200 + n as u16 * 10 + k;
                    let got = traffic::tcp_transfer(from, to_ns, dst.octets(), port, BYTES);
                    assert_eq!(got, BYTES, "{what}");
                    (BYTES * 8) as f64 / start.elapsed().as_secs_f64() / 1e6
                })
                .collect();
            rates.sort_by(f64::total_cmp);
            cells.push(rates[1]);
        }
        rows.push(format!("| {what} | {:.0} | {:.0} |", cells[0], cells[1]));
    }
    eprintln!("| forwarding | vm1 -> ext (FIP), Mbit/s | vm1 -> vm2, Mbit/s |\n|---|---|---|");
    for row in rows {
        eprintln!("{row}");
    }
}
