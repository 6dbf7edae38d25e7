//! Fragmented datagrams end to end through the real routerd, in XDP mode and in TC mode,
//! checked at the far end: the source address the receiver saw, the gateway the datagram
//! took, every byte, the answer back; and the router namespace's kernel forwarded none of
//! it (the fast path translated every fragment), with no fragment dropped as
//! `fragment_unknown`.
//!
//! - `nat_*`: 3,000-byte UDP datagrams and `ping -s 3000` through a floating IP (both
//!   ways), behind SNAT (and the replies), and hairpin (a VM to another VM's floating IP).
//! - `steering_*`: the same with the router steering through a virtual firewall (each
//!   datagram crosses the router twice, in two zones).
//! - `external_subnets_*`: a floating IP of the second external subnet leaves by that
//!   subnet's gateway, fragments included; and a TCP transfer whose segments a gateway
//!   host fragments on the way in (larger MTU behind it, DF clear).

use std::time::Duration;

use router_tests::{
    nat_topo::{self, NatTopology},
    policy_topo::{ExternalTopology, SteeringTopology, ext, reason_total, steer},
    probe::{delta, describe, sysctl},
    routerd::Routerd,
    topo::ip,
    traffic,
};

const WAIT: Duration = Duration::from_secs(3);
/// Over an MTU of 1500: three fragments each way.
const SIZE: usize = 3000;

/// A large datagram from `from_ns` to `target`; the receiver in `to_ns` must see it from
/// `src`, whole, and its answer must come back whole.
fn large_udp_seen_from(
    what: &str,
    from_ns: &str,
    to_ns: &str,
    target: std::net::Ipv4Addr,
    port: u16,
    src: std::net::Ipv4Addr,
) {
    let got = traffic::large_udp(from_ns, to_ns, target.octets(), port, SIZE, WAIT);
    traffic::assert_udp_seen_from(what, got, src);
}

fn fast_path_did_it(what: &str, router: &str, router_ns: &str, kernel_before: u64) {
    assert_eq!(
        traffic::forwarded_by_kernel(router_ns),
        kernel_before,
        "{what}: the router's kernel forwarded packets the fast path should have"
    );
    assert_eq!(
        reason_total(router, "fragment_unknown"),
        0,
        "{what}: fragments dropped as fragment_unknown"
    );
}

fn nat(mode: &str) {
    use nat_topo::{EXT, FIP1, GW};
    let mut topo = NatTopology::build();
    let config = topo.routerd_config(mode);
    let _routerd = Routerd::start(&config, topo.router_id());
    let (ext_ns, vm1, vm3) = (
        topo.ext_ns.clone(),
        topo.vm1_ns.clone(),
        topo.vm3_ns.clone(),
    );
    let router = topo.router_id().to_string();
    // Neighbours first, so the counter below sees only the datagrams.
    assert!(
        traffic::ping(&vm1, EXT.octets(), 1),
        "{mode}: vm1 reaches ext"
    );
    assert!(
        traffic::ping(&vm3, EXT.octets(), 1),
        "{mode}: vm3 reaches ext"
    );
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);

    large_udp_seen_from(
        &format!("{mode}: udp vm1 -> ext (floating IP)"),
        &vm1,
        &ext_ns,
        EXT,
        5001,
        FIP1,
    );
    large_udp_seen_from(
        &format!("{mode}: udp ext -> floating IP of vm1"),
        &ext_ns,
        &vm1,
        FIP1,
        5002,
        EXT,
    );
    large_udp_seen_from(
        &format!("{mode}: udp vm3 -> ext (SNAT)"),
        &vm3,
        &ext_ns,
        EXT,
        5003,
        GW,
    );
    large_udp_seen_from(
        &format!("{mode}: udp vm3 -> floating IP of vm1 (hairpin)"),
        &vm3,
        &vm1,
        FIP1,
        5004,
        GW,
    );
    for (what, ns, dst) in [
        ("vm1 -> ext (floating IP)", &vm1, EXT),
        ("ext -> floating IP of vm1", &ext_ns, FIP1),
        ("vm3 -> ext (SNAT)", &vm3, EXT),
        ("vm3 -> floating IP of vm1 (hairpin)", &vm3, FIP1),
    ] {
        assert!(
            traffic::ping_large(ns, dst.octets(), SIZE, 2),
            "{mode}: ping -s {SIZE} {what}"
        );
    }
    fast_path_did_it(mode, &router, &topo.router_ns, kernel_before);
}

#[test]
fn nat_xdp() {
    nat("xdp");
}

#[test]
fn nat_tc() {
    nat("tc");
}

fn steering(mode: &str) {
    use steer::*;
    let mut topo = SteeringTopology::build(mode);
    topo.topology.start_routerd();
    let (vm_a, vm_b) = (topo.vm(0).to_string(), topo.vm(1).to_string());
    let out = topo.outside_ns.clone();
    let router = topo.tag.clone();
    assert!(
        traffic::ping(&vm_a, OUTSIDE.octets(), 1),
        "{mode}: vm-a reaches outside"
    );
    assert!(
        traffic::ping(&vm_b, OUTSIDE.octets(), 1),
        "{mode}: vm-b reaches outside"
    );
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);
    let before = topo.fw.snapshot();

    large_udp_seen_from(
        &format!("{mode}: steered udp vm-a -> outside (floating IP)"),
        &vm_a,
        &out,
        OUTSIDE,
        6001,
        FIP_A,
    );
    large_udp_seen_from(
        &format!("{mode}: steered udp outside -> floating IP of vm-a"),
        &out,
        &vm_a,
        FIP_A,
        6002,
        OUTSIDE,
    );
    large_udp_seen_from(
        &format!("{mode}: steered udp vm-b -> outside (SNAT)"),
        &vm_b,
        &out,
        OUTSIDE,
        6003,
        GW,
    );
    for (what, ns, dst) in [
        ("vm-a -> outside", &vm_a, OUTSIDE),
        ("outside -> floating IP of vm-a", &out, FIP_A),
        ("vm-b -> outside", &vm_b, OUTSIDE),
    ] {
        assert!(
            traffic::ping_large(ns, dst.octets(), SIZE, 2),
            "{mode}: steered ping -s {SIZE} {what}"
        );
    }
    let after = topo.fw.snapshot();
    assert!(
        delta(&before, &after, "a_to_out") >= 1 && delta(&before, &after, "out_to_a") >= 1,
        "{mode}: the datagrams did not pass the firewall: {}",
        describe(&before, &after)
    );
    assert_eq!(
        (
            delta(&before, &after, "fip_seen_src"),
            delta(&before, &after, "fip_seen_dst")
        ),
        (0, 0),
        "{mode}: the firewall saw the floating IP: {}",
        describe(&before, &after)
    );
    fast_path_did_it(mode, &router, &topo.router_ns, kernel_before);
}

#[test]
fn steering_xdp() {
    steering("xdp");
}

#[test]
fn steering_tc() {
    steering("tc");
}

fn external_subnets(mode: &str) {
    use ext::*;
    let mut topo = ExternalTopology::build(mode);
    // A larger MTU behind gw1 than in front of it, and TCP from the internet host without
    // DF: gw1 fragments the segments on their way to the router.
    let inet = topo.inet_ns.clone();
    let gw1 = topo.gw_ns[0].clone();
    let vm1 = topo.vm_ns[0].clone();
    ip(&["-n", &inet, "link", "set", "up1", "mtu", "9000"]);
    ip(&["-n", &gw1, "link", "set", "eth1", "mtu", "9000"]);
    ip(&["-n", &vm1, "link", "set", "eth0", "mtu", "9000"]);
    sysctl(&inet, &["net.ipv4.ip_no_pmtu_disc=1"]);
    topo.topology.start_routerd();
    let (vm2, vm3) = (topo.vm_ns[1].clone(), topo.vm_ns[2].clone());
    let router = topo.tag.clone();
    for vm in [&vm1, &vm2, &vm3] {
        assert!(
            traffic::ping(vm, INET.octets(), 1),
            "{mode}: {vm} reaches the internet"
        );
    }
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);

    // vm2's floating IP is on subnet 2: its fragments leave by gw2, never gw1.
    let before = topo.gw_counts("from_fip2");
    large_udp_seen_from(
        &format!("{mode}: udp vm2 (FIP {FIP2}) -> internet"),
        &vm2,
        &inet,
        INET,
        7001,
        FIP2,
    );
    assert!(
        traffic::ping_large(&vm2, INET.octets(), SIZE, 2),
        "{mode}: ping -s {SIZE} vm2 -> internet"
    );
    let after = topo.gw_counts("from_fip2");
    assert!(
        after[1] > before[1] && after[0] == before[0] && after[2] == before[2],
        "{mode}: vm2's fragments left by the wrong gateway: from_fip2 per gateway {before:?} -> {after:?}"
    );
    large_udp_seen_from(
        &format!("{mode}: udp internet -> FIP {FIP2}"),
        &inet,
        &vm2,
        FIP2,
        7002,
        INET,
    );
    // vm3 (SNAT to the primary address): by gw1.
    let before = topo.gw_counts("from_gw_ip");
    large_udp_seen_from(
        &format!("{mode}: udp vm3 (SNAT) -> internet"),
        &vm3,
        &inet,
        INET,
        7003,
        GW_IP,
    );
    let after = topo.gw_counts("from_gw_ip");
    assert!(
        after[0] > before[0] && after[1] == before[1],
        "{mode}: vm3's fragments left by the wrong gateway: {before:?} -> {after:?}"
    );

    // TCP into vm1's floating IP, its 8960-byte segments fragmented by gw1.
    let bytes = 2 * 1024 * 1024;
    assert_eq!(
        traffic::tcp_transfer(&inet, &vm1, FIP1.octets(), 7004, bytes),
        bytes,
        "{mode}: TCP through fragments"
    );
    fast_path_did_it(mode, &router, &topo.router_ns, kernel_before);
}

#[test]
fn external_subnets_xdp() {
    external_subnets("xdp");
}

#[test]
fn external_subnets_tc() {
    external_subnets("tc");
}
