//! Policy routing, firewall steering, several external subnets and the stateful firewall,
//! end to end through the real routerd, in XDP mode and in TC mode:
//!
//! - `steering_*`: traffic entering steered internal interfaces goes to a
//!   virtual firewall's internal leg, traffic entering the gateway to its external leg; the
//!   firewall (a namespace with nftables counters) forwards it back. East-west arrives
//!   untranslated, floating-IP and SNAT traffic translated only on the second pass; a drop
//!   rule in the firewall stops exactly its flow; an explicit `[[router.rule]]` (from/to)
//!   steers only what it selects; steering switched off and on at run time (SIGHUP) while a
//!   steered flow of another VM loses nothing.
//! - `external_subnets_*`: floating IPs of two external subnets leave through
//!   their own subnet's gateway (counted on each gateway host), SNAT through the primary
//!   subnet's, traffic to an external subnet goes directly; a third subnet added and removed
//!   at run time while a flow runs.
//! - `firewall_*`: the FWaaS rules (deny TCP 2.2.2.0/24 -> 3.3.3.0/24, deny ICMP
//!   from 10.0.0.0/24, ...), established replies, default deny from outside, reject (TCP RST,
//!   ICMP unreachable), invalid packets; per-rule and fixed counters equal to the packets
//!   sent; drop reasons in the stats; a rule change at run time.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use router_tests::{
    desired::{FirewallText, FwRuleText},
    observe::{self, Exchange, Protocol},
    policy_topo::{
        ExternalTopology, FirewallTopology, SteeringTopology, ext, fwt, reason_total, steer,
    },
    probe::{self, Connect, UdpStream, delta, describe, tcp_flags},
    traffic,
};

/// The router's firewall counters, through the controller library.
mod fw {
    use router_user::maps::{Pinned, Rooms as _};

    /// (index, action, packets) of each rule, by position in the rule list.
    pub fn rules(router: &str) -> Vec<(usize, String, u64)> {
        let mut v: Vec<(usize, String, u64)> = Pinned::open(router)
            .and_then(|mut m| m.policy().rule_counters())
            .unwrap_or_else(|e| panic!("reading router {router}'s firewall rule counters: {e}"))
            .into_iter()
            .map(|c| (c.index, c.action, c.packets))
            .collect();
        v.sort_by_key(|c| c.0);
        v
    }

    /// Packets (established, invalid, default).
    pub fn fixed(router: &str) -> (u64, u64, u64) {
        let f = Pinned::open(router)
            .and_then(|mut m| m.policy().fixed_counters())
            .unwrap_or_else(|e| panic!("reading router {router}'s firewall counters: {e}"));
        (f.established.0, f.invalid.0, f.default.0)
    }
}

/// Distinct ports for every exchange of a test (no TIME_WAIT collisions).
struct Ports(u16);

impl Ports {
    /// (client port or echo identifier, listening port).
    fn next(&mut self) -> (u16, u16) {
        self.0 += 1;
        (40000 + self.0, 7000 + self.0)
    }
}

/// One exchange of `proto` from `from_ns` to `target` (a listener in `to_ns`).
fn exchange(
    ports: &mut Ports,
    proto: Protocol,
    from_ns: &str,
    target: Ipv4Addr,
    to_ns: &str,
) -> (Exchange, u16) {
    let (client, listen) = ports.next();
    let token = format!("{proto}-{client}");
    let ex = match proto {
        Protocol::Tcp => observe::tcp(
            from_ns,
            client,
            SocketAddrV4::new(target, listen),
            to_ns,
            listen,
            &token,
        ),
        Protocol::Udp => observe::udp(
            from_ns,
            client,
            SocketAddrV4::new(target, listen),
            to_ns,
            listen,
            &token,
        ),
        Protocol::Icmp => observe::icmp_echo(from_ns, client, target, to_ns, &token),
    };
    (ex, listen)
}

/// Asserts that the receiver saw `src` -> `dst` and the sender's answer came from `answer`.
fn assert_path(what: &str, ex: &Exchange, src: Ipv4Addr, dst: Ipv4Addr, answer: Ipv4Addr) {
    let seen = ex.seen.unwrap_or_else(|| {
        panic!("{what}: nothing reached the receiver (expected {src} -> {dst}); got {ex:?}")
    });
    assert_eq!(
        (*seen.src.ip(), *seen.dst.ip()),
        (src, dst),
        "{what}: the receiver saw the wrong addresses (expected {src} -> {dst}); got {ex:?}"
    );
    let got = ex.answer.as_ref().unwrap_or_else(|| {
        panic!("{what}: the receiver got it but no answer came back to the sender; got {ex:?}")
    });
    assert_eq!(
        *got.from.ip(),
        answer,
        "{what}: the answer came from the wrong address (expected {answer}); got {ex:?}"
    );
}

const PROTOS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp];

// ---------------------------------------------------------------------------------------
// Firewall steering

fn steering(mode: &str) {
    use steer::*;
    let t0 = Instant::now();
    let mut topo = SteeringTopology::build(mode);
    topo.topology.start_routerd();
    let routerd = topo.topology.routerd();
    let fw = &topo.fw;
    let (vm_a, vm_b, vm_c, vm_d) = (topo.vm(0), topo.vm(1), topo.vm(2), topo.vm(3));
    let out = topo.outside_ns.as_str();
    let mut ports = Ports(0);
    let log = || routerd.log_text();

    // Everything up to the drop checks is the fast path's: the router's kernel forwards none.
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);

    // (a) East-west vm-a -> vm-c: through the firewall's internal leg, untranslated; vm-c's
    // answers leave from an unsteered interface, straight back.
    for proto in PROTOS {
        let before = fw.snapshot();
        let (ex, _) = exchange(&mut ports, proto, vm_a, VM_C, vm_c);
        let what = format!("{mode}: east-west {proto} vm-a -> vm-c");
        assert_path(&what, &ex, VM_A, VM_C, VM_C);
        let after = fw.snapshot();
        let name = format!("a_to_c_{proto}");
        assert!(
            delta(&before, &after, &name) >= 1,
            "{what}: the firewall's internal leg saw none of it (steering of qr-a not applied): {}\n{}",
            describe(&before, &after),
            log()
        );
        assert_eq!(
            delta(&before, &after, "from_c"),
            0,
            "{what}: vm-c's answers went through the firewall, but qr-c is not steered: {}",
            describe(&before, &after)
        );
    }

    // (b) Floating IP from outside: in through the external leg (already DNATed to vm-a),
    // vm-a's answer through the internal leg (not yet SNATed), out as the floating IP.
    for proto in PROTOS {
        let before = fw.snapshot();
        let (ex, _) = exchange(&mut ports, proto, out, FIP_A, vm_a);
        let what = format!("{mode}: {proto} outside -> floating IP {FIP_A} of vm-a");
        assert_path(&what, &ex, OUTSIDE, VM_A, FIP_A);
        let after = fw.snapshot();
        let d = |n: &str| delta(&before, &after, n);
        assert!(
            d("out_to_a") >= 1,
            "{what}: the inbound packets did not pass the firewall's external leg as {OUTSIDE} -> {VM_A} (gateway steering): {}",
            describe(&before, &after)
        );
        assert!(
            d("a_to_out") >= 1,
            "{what}: vm-a's answers did not pass the firewall's internal leg untranslated: {}",
            describe(&before, &after)
        );
        assert_eq!(
            (d("fip_seen_src"), d("fip_seen_dst")),
            (0, 0),
            "{what}: the firewall saw the floating IP: the first pass must be untranslated (internal side) / already DNATed (gateway side): {}",
            describe(&before, &after)
        );
    }

    // (c) Default SNAT from vm-b (no floating IP): through the firewall untranslated, out as
    // the gateway IP; the replies come back through the external leg, de-SNATed.
    for proto in PROTOS {
        let before = fw.snapshot();
        let (ex, _) = exchange(&mut ports, proto, vm_b, OUTSIDE, out);
        let what = format!("{mode}: {proto} vm-b (SNAT) -> outside");
        assert_path(&what, &ex, GW, OUTSIDE, OUTSIDE);
        let after = fw.snapshot();
        let d = |n: &str| delta(&before, &after, n);
        assert!(
            d("b_to_out") >= 1 && d("out_to_b") >= 1,
            "{what}: expected vm-b's packets on the internal leg and the de-SNATed replies on the external leg: {}",
            describe(&before, &after)
        );
        assert_eq!(
            (d("gw_seen"), d("gw_seen_dst")),
            (0, 0),
            "{what}: the firewall saw the gateway IP: SNAT must happen on the second pass only: {}",
            describe(&before, &after)
        );
    }

    // An explicit policy rule (iif qr-d from 10.0.4.0/24 to 10.0.1.0/24 lookup vfw): vm-d -> vm-a
    // through the firewall, vm-d -> vm-c not.
    let before = fw.snapshot();
    let (ex, _) = exchange(&mut ports, Protocol::Udp, vm_d, VM_A, vm_a);
    assert_path(&format!("{mode}: udp vm-d -> vm-a"), &ex, VM_D, VM_A, VM_A);
    let (ex, _) = exchange(&mut ports, Protocol::Udp, vm_d, VM_C, vm_c);
    assert_path(&format!("{mode}: udp vm-d -> vm-c"), &ex, VM_D, VM_C, VM_C);
    let after = fw.snapshot();
    assert!(
        delta(&before, &after, "d_to_a") >= 1,
        "{mode}: the rule `iif qr-d from 10.0.4.0/24 to 10.0.1.0/24 table vfw` did not send vm-d -> vm-a through the firewall: {}",
        describe(&before, &after)
    );
    assert_eq!(
        delta(&before, &after, "d_to_c"),
        0,
        "{mode}: vm-d -> vm-c went through the firewall, but the rule selects only 10.0.1.0/24: {}",
        describe(&before, &after)
    );

    let kernel_forwarded = traffic::forwarded_by_kernel(&topo.router_ns) - kernel_before;
    assert_eq!(
        kernel_forwarded, 0,
        "{mode}: the router's kernel forwarded {kernel_forwarded} packets of the steered traffic: the fast path must route it"
    );

    // (d) A drop in the firewall stops exactly the flow it matches: the path really goes
    // through it, for east-west, floating-IP and SNAT traffic.
    let blocked: [(&str, &str, Ipv4Addr, &str, String); 3] = [
        (
            "east-west vm-a -> vm-c",
            vm_a,
            VM_C,
            vm_c,
            format!("ip saddr {VM_A} ip daddr {VM_C}"),
        ),
        (
            "outside -> floating IP of vm-a",
            out,
            FIP_A,
            vm_a,
            format!("ip saddr {OUTSIDE} ip daddr {VM_A}"),
        ),
        (
            "vm-b (SNAT) -> outside",
            vm_b,
            OUTSIDE,
            out,
            format!("ip saddr {VM_B} ip daddr {OUTSIDE}"),
        ),
    ];
    for (what, from, target, to, flow) in &blocked {
        let (client, listen) = ports.next();
        fw.block(&format!("{flow} udp dport {listen}"));
        let target = SocketAddrV4::new(*target, listen);
        let ex = observe::udp(from, client, target, to, listen, "blocked");
        assert_eq!(
            ex.seen, None,
            "{mode}: {what}: a datagram the firewall drops still arrived, so it did not go through the firewall: {ex:?}"
        );
        // Another port of the same pair still passes.
        let (ex, _) = exchange(&mut ports, Protocol::Tcp, from, *target.ip(), to);
        assert!(
            ex.seen.is_some() && ex.answer.is_some(),
            "{mode}: {what}: TCP on another port must still pass while one UDP port is dropped: {ex:?}"
        );
        fw.unblock();
        let ex = observe::udp(from, client + 500, target, to, listen, "unblocked");
        assert!(
            ex.seen.is_some() && ex.answer.is_some(),
            "{mode}: {what}: the datagram must pass again once the firewall's drop rule is gone: {ex:?}"
        );
    }

    // (e) Steering off for qr-a at run time, while a steered flow of vm-b runs: vm-a's
    // traffic takes the direct path (the firewall sees none of it), vm-b's flow loses nothing
    // and still goes through the firewall; then on again.
    let (client, listen) = ports.next();
    let stream_before = fw.snapshot();
    let stream = UdpStream::start(
        vm_b,
        client,
        SocketAddrV4::new(OUTSIDE, listen),
        out,
        listen,
        Duration::from_millis(5),
    );
    std::thread::sleep(Duration::from_millis(300));
    topo.topology.reload(&topo.desired(&["qr-b"]));
    let before = fw.snapshot();
    for proto in PROTOS {
        let (ex, _) = exchange(&mut ports, proto, vm_a, VM_C, vm_c);
        assert_path(
            &format!("{mode}: {proto} vm-a -> vm-c with qr-a unsteered"),
            &ex,
            VM_A,
            VM_C,
            VM_C,
        );
    }
    let after = fw.snapshot();
    assert_eq!(
        delta(&before, &after, "from_a"),
        0,
        "{mode}: with qr-a removed from steering, vm-a's traffic still reached the firewall: {}\n{}",
        describe(&before, &after),
        log()
    );
    std::thread::sleep(Duration::from_millis(300));
    topo.topology.reload(&topo.desired(&["qr-a", "qr-b"]));
    let before = fw.snapshot();
    let (ex, _) = exchange(&mut ports, Protocol::Udp, vm_a, VM_C, vm_c);
    assert_path(
        &format!("{mode}: udp vm-a -> vm-c steered again"),
        &ex,
        VM_A,
        VM_C,
        VM_C,
    );
    let after = fw.snapshot();
    assert!(
        delta(&before, &after, "a_to_c_udp") >= 1,
        "{mode}: with qr-a steered again, vm-a's traffic did not reach the firewall: {}",
        describe(&before, &after)
    );
    std::thread::sleep(Duration::from_millis(300));
    let report = stream.finish();
    let stream_after = fw.snapshot();
    assert!(
        report.sent >= 100,
        "{mode}: the stream sent only {} datagrams",
        report.sent
    );
    assert!(
        report.lost.is_empty(),
        "{mode}: vm-b's steered flow lost {} of {} datagrams while qr-a's steering changed (first lost: {:?})\n{}",
        report.lost.len(),
        report.sent,
        &report.lost[..report.lost.len().min(20)],
        log()
    );
    assert!(
        report.sources.iter().all(|s| *s.ip() == GW),
        "{mode}: vm-b's flow must arrive as the gateway IP {GW}; sources: {:?}",
        report.sources
    );
    assert!(
        delta(&stream_before, &stream_after, "b_to_out") >= report.received,
        "{mode}: not every datagram of vm-b's flow went through the firewall ({} received): {}",
        report.received,
        describe(&stream_before, &stream_after)
    );
    assert!(
        topo.topology.routerd_mut().stop(),
        "{mode}: routerd did not stop cleanly"
    );
    eprintln!("steering {mode}: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn steering_xdp() {
    steering("xdp");
}

#[test]
fn steering_tc() {
    steering("tc");
}

// ---------------------------------------------------------------------------------------
// Several external subnets

fn external_subnets(mode: &str) {
    use ext::*;
    let t0 = Instant::now();
    let mut topo = ExternalTopology::build(mode);
    topo.topology.start_routerd();
    let routerd = topo.topology.routerd();
    let (vm1, vm2, vm3) = (
        topo.vm_ns[0].as_str(),
        topo.vm_ns[1].as_str(),
        topo.vm_ns[2].as_str(),
    );
    let (inet, h5) = (topo.inet_ns.as_str(), topo.h5_ns.as_str());
    let mut ports = Ports(0);
    let snap = || -> [BTreeMap<String, u64>; 3] { [0, 1, 2].map(|i| topo.gw[i].snapshot()) };
    // Which gateway hosts saw `counter` grow between two snapshots.
    let grew = |b: &[BTreeMap<String, u64>; 3], a: &[BTreeMap<String, u64>; 3], counter: &str| {
        [0, 1, 2].map(|i| delta(&b[i], &a[i], counter))
    };
    let describe3 = |b: &[BTreeMap<String, u64>; 3], a: &[BTreeMap<String, u64>; 3]| {
        (0..3)
            .map(|i| format!("gw{}: {}", i + 1, describe(&b[i], &a[i])))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Packets from `source` must have reached gateway host `only` (0-based) and no other.
    let only_via = |what: &str,
                    b: &[BTreeMap<String, u64>; 3],
                    a: &[BTreeMap<String, u64>; 3],
                    counter: &str,
                    only: usize| {
        let g = grew(b, a, counter);
        assert!(
            g[only] >= 1 && (0..3).all(|i| i == only || g[i] == 0),
            "{mode}: {what}: expected packets ({counter}) at gw{} only; per gateway host {g:?}:\n{}\n{}",
            only + 1,
            describe3(b, a),
            routerd.log_text()
        );
    };

    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);
    // VM1 (floating IP of subnet 1) out, and its answers to the internet: via gw1 only.
    for proto in PROTOS {
        let b = snap();
        let (ex, _) = exchange(&mut ports, proto, vm1, INET, inet);
        let what = format!("{proto} vm1 (FIP {FIP1}) -> internet");
        assert_path(&format!("{mode}: {what}"), &ex, FIP1, INET, INET);
        only_via(&what, &b, &snap(), "from_fip1", 0);
        let b = snap();
        let (ex, _) = exchange(&mut ports, proto, inet, FIP1, vm1);
        let what = format!("{proto} internet -> FIP {FIP1} (vm1's answers)");
        assert_path(&format!("{mode}: {what}"), &ex, INET, VM1, FIP1);
        only_via(&what, &b, &snap(), "from_fip1", 0);
    }
    // VM2 (floating IP of subnet 2): via gw2 only, never the default gateway gw1.
    for proto in PROTOS {
        let b = snap();
        let (ex, _) = exchange(&mut ports, proto, vm2, INET, inet);
        let what = format!("{proto} vm2 (FIP {FIP2}) -> internet");
        assert_path(&format!("{mode}: {what}"), &ex, FIP2, INET, INET);
        only_via(&what, &b, &snap(), "from_fip2", 1);
        let b = snap();
        let (ex, _) = exchange(&mut ports, proto, inet, FIP2, vm2);
        let what = format!("{proto} internet -> FIP {FIP2} (vm2's answers)");
        assert_path(&format!("{mode}: {what}"), &ex, INET, VM2, FIP2);
        only_via(&what, &b, &snap(), "from_fip2", 1);
    }
    // VM3 (default SNAT to the primary address): via gw1.
    for proto in PROTOS {
        let b = snap();
        let (ex, _) = exchange(&mut ports, proto, vm3, INET, inet);
        let what = format!("{proto} vm3 (SNAT {GW_IP}) -> internet");
        assert_path(&format!("{mode}: {what}"), &ex, GW_IP, INET, INET);
        only_via(&what, &b, &snap(), "from_gw_ip", 0);
    }
    // To a host on external subnet 2: directly on the external L2, no gateway.
    for (vm, src, name) in [(vm1, FIP1, "vm1"), (vm3, GW_IP, "vm3")] {
        for proto in PROTOS {
            let b = snap();
            let (ex, _) = exchange(&mut ports, proto, vm, H5, h5);
            let what = format!("{mode}: {proto} {name} -> {H5} on external subnet 2");
            assert_path(&what, &ex, src, H5, H5);
            let a = snap();
            assert_eq!(
                (grew(&b, &a, "to_h5"), grew(&b, &a, "h5")),
                ([0; 3], [0; 3]),
                "{what}: went through a gateway host, but the subnet is connected:\n{}",
                describe3(&b, &a)
            );
        }
    }

    let kernel_forwarded = traffic::forwarded_by_kernel(&topo.router_ns) - kernel_before;
    assert_eq!(
        kernel_forwarded, 0,
        "{mode}: the router's kernel forwarded {kernel_forwarded} packets: the fast path must choose each subnet's gateway itself"
    );

    // A third subnet (and vm3's floating IP on it) added and removed at run time, while a
    // flow of vm1 runs: the flow loses nothing and stays on gw1.
    let (client, listen) = ports.next();
    let stream_before = snap();
    let stream = UdpStream::start(
        vm1,
        client,
        SocketAddrV4::new(INET, listen),
        inet,
        listen,
        Duration::from_millis(5),
    );
    std::thread::sleep(Duration::from_millis(300));
    topo.topology.reload(&topo.desired(true));
    assert!(
        traffic::ping(&topo.gw_ns[2], [172, 24, 6, 2], 1),
        "{mode}: gw3 cannot reach the router's new address 172.24.6.2 on subnet 3\n{}",
        routerd.log_text()
    );
    for proto in PROTOS {
        let b = snap();
        let (ex, _) = exchange(&mut ports, proto, inet, FIP3, vm3);
        let what = format!("{proto} internet -> FIP {FIP3} on the new subnet 3");
        assert_path(&format!("{mode}: {what}"), &ex, INET, VM3, FIP3);
        only_via(&what, &b, &snap(), "from_fip3", 2);
        let b = snap();
        let (ex, _) = exchange(&mut ports, proto, vm3, INET, inet);
        let what = format!("{proto} vm3 (FIP {FIP3}) -> internet");
        assert_path(&format!("{mode}: {what}"), &ex, FIP3, INET, INET);
        only_via(&what, &b, &snap(), "from_fip3", 2);
    }
    std::thread::sleep(Duration::from_millis(300));
    topo.topology.reload(&topo.desired(false));
    let b = snap();
    let (ex, _) = exchange(&mut ports, Protocol::Udp, vm3, INET, inet);
    let what = "udp vm3 -> internet after subnet 3 was removed";
    assert_path(&format!("{mode}: {what}"), &ex, GW_IP, INET, INET);
    only_via(what, &b, &snap(), "from_gw_ip", 0);
    let (ex, _) = exchange(&mut ports, Protocol::Udp, inet, FIP3, vm3);
    assert_eq!(
        ex.seen, None,
        "{mode}: the floating IP {FIP3} of the removed subnet 3 still reaches vm3: {ex:?}"
    );
    assert!(
        !traffic::ping(&topo.gw_ns[2], [172, 24, 6, 2], 1),
        "{mode}: the router still answers on 172.24.6.2 after subnet 3 was removed"
    );
    std::thread::sleep(Duration::from_millis(300));
    let report = stream.finish();
    let stream_after = snap();
    assert!(
        report.sent >= 100,
        "{mode}: the stream sent only {}",
        report.sent
    );
    assert!(
        report.lost.is_empty(),
        "{mode}: vm1's flow lost {} of {} datagrams while subnet 3 was added and removed (first lost: {:?})\n{}",
        report.lost.len(),
        report.sent,
        &report.lost[..report.lost.len().min(20)],
        routerd.log_text()
    );
    assert!(
        report.sources.iter().all(|s| *s.ip() == FIP1),
        "{mode}: vm1's flow must arrive from {FIP1}; sources {:?}",
        report.sources
    );
    let g = grew(&stream_before, &stream_after, "from_fip1");
    assert!(
        g[0] >= report.received && g[1] == 0 && g[2] == 0,
        "{mode}: vm1's flow ({} datagrams) must go through gw1 only; per gateway host {g:?}",
        report.received
    );
    // No fixed IP ever reached the external network.
    let total_fixed: Vec<u64> = (0..3).map(|i| topo.gw[i].get("fixed")).collect();
    assert_eq!(
        total_fixed,
        vec![0, 0, 0],
        "{mode}: untranslated internal addresses reached the gateway hosts"
    );
    assert!(
        topo.topology.routerd_mut().stop(),
        "{mode}: routerd did not stop cleanly"
    );
    eprintln!(
        "external subnets {mode}: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn external_subnets_xdp() {
    external_subnets("xdp");
}

#[test]
fn external_subnets_tc() {
    external_subnets("tc");
}

// ---------------------------------------------------------------------------------------
// The stateful firewall

/// The FWaaS rules and what the test needs besides; default deny.
fn seed_001_rules() -> Vec<FwRuleText> {
    vec![
        // 0
        FwRuleText::new("deny", "tcp")
            .source("2.2.2.0/24")
            .destination("3.3.3.0/24")
            .ports("1:65535"),
        // 1
        FwRuleText::new("deny", "icmp").source("10.0.0.0/24"),
        // 2
        FwRuleText::new("allow", "udp")
            .source("2.2.2.0/24")
            .destination("3.3.3.0/24"),
        // 3
        FwRuleText::new("allow", "tcp").source("10.0.0.0/24"),
        // 4
        FwRuleText::new("reject", "tcp")
            .source("2.2.2.0/24")
            .destination("10.0.0.0/24")
            .ports("5001"),
        // 5
        FwRuleText::new("reject", "udp")
            .source("2.2.2.0/24")
            .destination("10.0.0.0/24")
            .ports("5002"),
        // 6
        FwRuleText::new("reject", "icmp")
            .source("2.2.2.0/24")
            .destination("10.0.0.0/24"),
    ]
}

const ACTIONS: [&str; 7] = [
    "deny", "deny", "allow", "allow", "reject", "reject", "reject",
];

/// Rule packets and fixed counters at one moment.
#[derive(Clone, Debug)]
struct FwSnap {
    rules: Vec<u64>,
    established: u64,
    invalid: u64,
    default: u64,
}

fn fw_snap(router: &str) -> FwSnap {
    let rules = fw::rules(router);
    let (established, invalid, default) = fw::fixed(router);
    FwSnap {
        rules: rules.iter().map(|r| r.2).collect(),
        established,
        invalid,
        default,
    }
}

/// Asserts that between `b` and `a` exactly the rules in `expected` (index, packets) grew,
/// by exactly that much, and every other rule stayed.
fn assert_rules(what: &str, b: &FwSnap, a: &FwSnap, expected: &[(usize, u64)]) {
    let got: Vec<u64> = a
        .rules
        .iter()
        .zip(&b.rules)
        .map(|(x, y)| x.saturating_sub(*y))
        .collect();
    let mut want = vec![0u64; got.len()];
    for (i, n) in expected {
        want[*i] = *n;
    }
    assert_eq!(
        got, want,
        "{what}: per-rule packet deltas (index = rule position) differ from the packets sent; before {b:?}, after {a:?}"
    );
}

fn firewall(mode: &str) {
    use fwt::*;
    let t0 = Instant::now();
    let fw_text = FirewallText {
        default: "deny".into(),
        rules: seed_001_rules(),
    };
    let mut topo = FirewallTopology::build(mode, &fw_text);
    topo.topology.start_routerd();
    let r = topo.tag.as_str();
    let (vm0, vm2, vm3, out) = (
        topo.vm0_ns.as_str(),
        topo.vm2_ns.as_str(),
        topo.vm3_ns.as_str(),
        topo.outside_ns.as_str(),
    );
    let mut ports = Ports(0);

    let listed = fw::rules(r);
    assert_eq!(
        listed
            .iter()
            .map(|c| (c.0, c.1.as_str()))
            .collect::<Vec<_>>(),
        ACTIONS.iter().copied().enumerate().collect::<Vec<_>>(),
        "{mode}: rule_counters must list the configured rules in order with their actions"
    );

    // The fast path decides every packet up to the reject checks: the router's kernel
    // forwards none. (Rejected packets are handed to the kernel to be answered, and its
    // forwarding counter counts them before its firewall chain drops them.)
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);

    // TCP 2.2.2.x -> 3.3.3.x: denied by rule 0, exactly as many packets as sent.
    let b = fw_snap(r);
    let deny0 = reason_total(r, "fw_deny");
    probe::send_tcp_raw(
        vm2,
        SocketAddrV4::new(VM2, 41000),
        SocketAddrV4::new(VM3, 22),
        tcp_flags::SYN,
        5,
    );
    std::thread::sleep(Duration::from_millis(200));
    let a = fw_snap(r);
    assert_rules(
        &format!("{mode}: 5 SYNs 2.2.2.5 -> 3.3.3.5:22"),
        &b,
        &a,
        &[(0, 5)],
    );
    assert_eq!(
        (a.default - b.default, a.invalid - b.invalid),
        (0, 0),
        "{mode}: the denied SYNs must not reach the default or invalid counters: {b:?} -> {a:?}"
    );
    assert!(
        reason_total(r, "fw_deny") >= deny0 + 5,
        "{mode}: the drop reason fw_deny did not count the 5 denied SYNs: {:#?}",
        router_user::stats::collect(Some(r))
    );
    let (outcome, took) = probe::tcp_connect(
        vm2,
        SocketAddrV4::new(VM3, 7777),
        Duration::from_millis(1500),
    );
    assert_eq!(
        outcome,
        Connect::TimedOut,
        "{mode}: TCP 2.2.2.5 -> 3.3.3.5 must be dropped silently by rule 0 (after {took:?})"
    );

    // UDP on the same pair: allowed by rule 2, the answer passes as established.
    let b = fw_snap(r);
    let (ex, _) = exchange(&mut ports, Protocol::Udp, vm2, VM3, vm3);
    assert_path(
        &format!("{mode}: udp 2.2.2.5 -> 3.3.3.5 (rule 2 allows)"),
        &ex,
        VM2,
        VM3,
        VM3,
    );
    let a = fw_snap(r);
    assert_rules(
        &format!("{mode}: one datagram 2.2.2.5 -> 3.3.3.5"),
        &b,
        &a,
        &[(2, 1)],
    );
    assert!(
        a.established > b.established,
        "{mode}: the UDP answer must pass as established: {b:?} -> {a:?}"
    );

    // ICMP from 10.0.0.0/24: denied by rule 1, to outside and east-west.
    let b = fw_snap(r);
    let deny0 = reason_total(r, "fw_deny");
    let to_out = probe::echo(vm0, OUTSIDE, 0x5101, 5, Duration::from_millis(500));
    let to_vm3 = probe::echo(vm0, VM3, 0x5102, 5, Duration::from_millis(500));
    let a = fw_snap(r);
    assert!(
        to_out.replies.is_empty() && to_vm3.replies.is_empty(),
        "{mode}: pings from 10.0.0.5 must be dropped (rule 1): outside {to_out:?}, 3.3.3.5 {to_vm3:?}"
    );
    assert_rules(
        &format!("{mode}: 10 echo requests from 10.0.0.5"),
        &b,
        &a,
        &[(1, 10)],
    );
    assert!(
        reason_total(r, "fw_deny") >= deny0 + 10,
        "{mode}: fw_deny did not count the 10 denied echo requests"
    );

    // TCP from 10.0.0.5 to outside: allowed by rule 3; with default deny and no rule for
    // inbound, its replies can only pass as established.
    let b = fw_snap(r);
    let (ex, _) = exchange(&mut ports, Protocol::Tcp, vm0, OUTSIDE, out);
    assert_path(
        &format!("{mode}: tcp 10.0.0.5 -> outside"),
        &ex,
        GW,
        OUTSIDE,
        OUTSIDE,
    );
    let a = fw_snap(r);
    assert!(
        a.rules[3] > b.rules[3] && a.established > b.established && a.default == b.default,
        "{mode}: tcp 10.0.0.5 -> outside: expected rule 3 (the SYN) and established (the rest) to grow, default unchanged: {b:?} -> {a:?}"
    );

    // A new connection from outside to vm3's floating IP: no rule allows it, default deny.
    let (outcome, took) = probe::tcp_connect(
        out,
        SocketAddrV4::new(FIP3, 8080),
        Duration::from_millis(1500),
    );
    assert_eq!(
        outcome,
        Connect::TimedOut,
        "{mode}: a new connection from outside to {FIP3} must be dropped by the default policy (after {took:?})"
    );
    let b = fw_snap(r);
    let default0 = reason_total(r, "fw_default_deny");
    probe::send_tcp_raw(
        out,
        SocketAddrV4::new(OUTSIDE, 42000),
        SocketAddrV4::new(FIP3, 8080),
        tcp_flags::SYN,
        5,
    );
    std::thread::sleep(Duration::from_millis(200));
    let a = fw_snap(r);
    assert_rules(&format!("{mode}: 5 SYNs outside -> {FIP3}"), &b, &a, &[]);
    assert_eq!(
        a.default - b.default,
        5,
        "{mode}: the default counter must grow by the 5 inbound SYNs: {b:?} -> {a:?}"
    );
    assert!(
        reason_total(r, "fw_default_deny") >= default0 + 5,
        "{mode}: fw_default_deny did not count the 5 inbound SYNs: {:#?}",
        router_user::stats::collect(Some(r))
    );

    let kernel_forwarded = traffic::forwarded_by_kernel(&topo.router_ns) - kernel_before;
    assert_eq!(
        kernel_forwarded, 0,
        "{mode}: the router's kernel forwarded {kernel_forwarded} packets: the fast path must decide them"
    );

    // Reject: TCP answered with a RST (refused at once), UDP and ICMP with an ICMP
    // unreachable.
    let b = fw_snap(r);
    let reject0 = reason_total(r, "fw_reject");
    let (outcome, took) =
        probe::tcp_connect(vm2, SocketAddrV4::new(VM0, 5001), Duration::from_secs(3));
    assert!(
        outcome == Connect::Refused && took < Duration::from_secs(1),
        "{mode}: TCP 2.2.2.5 -> 10.0.0.5:5001 (rule 4 rejects) must be refused at once by a RST; got {outcome:?} after {took:?}"
    );
    let udp = probe::udp_connected(vm2, SocketAddrV4::new(VM0, 5002), Duration::from_secs(2));
    assert_eq!(
        udp,
        Err(ErrorKind::ConnectionRefused),
        "{mode}: UDP 2.2.2.5 -> 10.0.0.5:5002 (rule 5 rejects) must get an ICMP port unreachable"
    );
    let ping = probe::echo(vm2, VM0, 0x5201, 1, Duration::from_secs(1));
    assert!(
        ping.replies.is_empty() && ping.errors.iter().any(|e| e.1 == 3),
        "{mode}: ping 2.2.2.5 -> 10.0.0.5 (rule 6 rejects) must get an ICMP destination unreachable; got {ping:?}"
    );
    let a = fw_snap(r);
    assert_rules(
        &format!("{mode}: one TCP SYN, one datagram, one echo request rejected"),
        &b,
        &a,
        &[(4, 1), (5, 1), (6, 1)],
    );
    assert!(
        reason_total(r, "fw_reject") >= reject0 + 3,
        "{mode}: fw_reject did not count the 3 rejected packets: {:#?}",
        router_user::stats::collect(Some(r))
    );

    // Invalid: TCP flags no stack sends (SYN+FIN) are dropped before any rule, by the fast
    // path.
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);
    let b = fw_snap(r);
    let invalid0 = reason_total(r, "fw_invalid");
    probe::send_tcp_raw(
        vm2,
        SocketAddrV4::new(VM2, 43000),
        SocketAddrV4::new(VM3, 80),
        tcp_flags::SYN | tcp_flags::FIN,
        5,
    );
    std::thread::sleep(Duration::from_millis(200));
    let a = fw_snap(r);
    assert_rules(&format!("{mode}: 5 SYN+FIN segments"), &b, &a, &[]);
    assert_eq!(
        a.invalid - b.invalid,
        5,
        "{mode}: the invalid counter must grow by the 5 SYN+FIN segments: {b:?} -> {a:?}"
    );
    assert!(
        reason_total(r, "fw_invalid") >= invalid0 + 5,
        "{mode}: fw_invalid did not count the 5 SYN+FIN segments"
    );

    let kernel_forwarded = traffic::forwarded_by_kernel(&topo.router_ns) - kernel_before;
    assert_eq!(
        kernel_forwarded, 0,
        "{mode}: the router's kernel forwarded {kernel_forwarded} packets: the fast path must decide them"
    );

    // The drop reasons as `routerctl stats --json` shows them.
    let ctl = router_tests::routerd::routerd_path().with_file_name("routerctl");
    let stats = std::process::Command::new(&ctl)
        .args(["stats", "-f", "json", r])
        .output()
        .expect("running routerctl");
    assert!(
        stats.status.success(),
        "routerctl stats: {}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let text = String::from_utf8_lossy(&stats.stdout);
    for reason in ["fw_deny", "fw_default_deny", "fw_reject", "fw_invalid"] {
        assert!(
            text.contains(&format!("\"{reason}\"")),
            "{mode}: routerctl stats --json does not show {reason}:\n{text}"
        );
    }

    // At run time: rule 0 removed and the default switched to allow. TCP 2.2.2.5 -> 3.3.3.5
    // and a new connection from outside to the floating IP now pass.
    let mut rules = seed_001_rules();
    rules.remove(0);
    topo.topology.reload(&topo.desired(&FirewallText {
        default: "allow".into(),
        rules,
    }));
    let (ex, _) = exchange(&mut ports, Protocol::Tcp, vm2, VM3, vm3);
    assert_path(
        &format!("{mode}: tcp 2.2.2.5 -> 3.3.3.5 after the deny rule was removed"),
        &ex,
        VM2,
        VM3,
        VM3,
    );
    let b = fw_snap(r);
    let (ex, _) = exchange(&mut ports, Protocol::Tcp, out, FIP3, vm3);
    assert_path(
        &format!("{mode}: tcp outside -> {FIP3} with default allow"),
        &ex,
        OUTSIDE,
        VM3,
        FIP3,
    );
    let a = fw_snap(r);
    assert!(
        a.default > b.default,
        "{mode}: the default counter must count the connection default allow let in: {b:?} -> {a:?}"
    );
    // ICMP from 10.0.0.0/24 is still denied (now rule 0).
    let ping = probe::echo(vm0, OUTSIDE, 0x5301, 2, Duration::from_millis(500));
    assert!(
        ping.replies.is_empty(),
        "{mode}: ping from 10.0.0.5 must still be denied after the reload: {ping:?}"
    );
    assert!(
        topo.topology.routerd_mut().stop(),
        "{mode}: routerd did not stop cleanly"
    );
    eprintln!("firewall {mode}: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn firewall_xdp() {
    firewall("xdp");
}

#[test]
fn firewall_tc() {
    firewall("tc");
}
