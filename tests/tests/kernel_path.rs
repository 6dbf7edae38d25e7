//! What the fast path hands to the kernel is translated and routed there as the fast path
//! would, checked at the far end through the real routerd in XDP and TC modes. The packets
//! here carry IP options (UDP datagrams with four no-operation options both ways, and
//! `ping -R`), which the fast path never translates itself; every test checks that the
//! router's kernel did forward them.
//!
//! - `steering_*`: the router steers through a two-legged virtual firewall, so each packet
//!   crosses the router twice. The kernel tracks what enters before the firewall in a
//!   conntrack zone of its own; without it, the pass back from the firewall is taken for the
//!   first pass's connection (which was not translated) and leaves with the VM's fixed
//!   address.
//! - `external_subnets_*`: a floating IP of the second external subnet. The kernel marks
//!   what its VM sends before routing and its mark rules send it to that subnet's gateway;
//!   without them it leaves by the first subnet's gateway, which drops it as spoofed.

use std::{net::Ipv4Addr, time::Duration};

use router_tests::{
    policy_topo::{ExternalTopology, SteeringTopology, ext, steer},
    probe::{delta, describe, sysctl},
    topo::ip,
    traffic,
};

const WAIT: Duration = Duration::from_secs(3);
/// Under an MTU of 1500: options, not fragments, send these to the kernel.
const SIZE: usize = 1000;

/// A datagram with IP options from `from_ns` to `target`; the receiver in `to_ns` must see
/// it from `src`, whole, and its answer (with options too) must come back whole.
fn options_udp_seen_from(
    what: &str,
    from_ns: &str,
    to_ns: &str,
    target: Ipv4Addr,
    port: u16,
    src: Ipv4Addr,
) {
    let got = traffic::udp_with_ip_options(from_ns, to_ns, target.octets(), port, SIZE, WAIT);
    traffic::assert_udp_seen_from(what, got, src);
}

fn kernel_did_it(what: &str, router_ns: &str, before: u64, at_least: u64) {
    let after = traffic::forwarded_by_kernel(router_ns);
    assert!(
        after >= before + at_least,
        "{what}: the router's kernel forwarded {} packets, expected at least {at_least}: \
         the test did not exercise the kernel's path",
        after - before
    );
}

fn steering(mode: &str) {
    use steer::*;
    let mut topo = SteeringTopology::build(mode);
    topo.topology.start_routerd();
    let (vm_a, vm_b) = (topo.vm(0).to_string(), topo.vm(1).to_string());
    let out = topo.outside_ns.clone();
    // Neighbours first, through the fast path.
    for vm in [&vm_a, &vm_b] {
        assert!(
            traffic::ping(vm, OUTSIDE.octets(), 1),
            "{mode}: {vm} reaches outside"
        );
    }
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);
    let before = topo.fw.snapshot();

    options_udp_seen_from(
        &format!("{mode}: steered udp with options vm-a -> outside (floating IP)"),
        &vm_a,
        &out,
        OUTSIDE,
        6101,
        FIP_A,
    );
    options_udp_seen_from(
        &format!("{mode}: steered udp with options outside -> floating IP of vm-a"),
        &out,
        &vm_a,
        FIP_A,
        6102,
        OUTSIDE,
    );
    options_udp_seen_from(
        &format!("{mode}: steered udp with options vm-b -> outside (SNAT)"),
        &vm_b,
        &out,
        OUTSIDE,
        6103,
        GW,
    );
    for (what, ns, dst) in [
        ("vm-a -> outside (floating IP)", &vm_a, OUTSIDE),
        ("outside -> floating IP of vm-a", &out, FIP_A),
        ("vm-b -> outside (SNAT)", &vm_b, OUTSIDE),
    ] {
        assert!(
            traffic::ping_record_route(ns, dst.octets(), 2),
            "{mode}: steered ping -R {what}"
        );
    }
    let after = topo.fw.snapshot();
    assert!(
        delta(&before, &after, "a_to_out") >= 1
            && delta(&before, &after, "out_to_a") >= 1
            && delta(&before, &after, "b_to_out") >= 1,
        "{mode}: the packets did not pass the firewall untranslated: {}",
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
    // Each datagram and echo crosses the router twice each way.
    kernel_did_it(
        mode,
        &topo.router_ns,
        kernel_before,
        2 * (3 * 2 + 3 * 2 * 2),
    );
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
    let (vm2, vm3) = (topo.vm_ns[1].clone(), topo.vm_ns[2].clone());
    // vm2's network carries jumbo frames and vm2 sends without DF: a datagram larger than
    // the gateway's MTU is the kernel's to fragment.
    ip(&["-n", &topo.router_ns, "link", "set", "qr-2", "mtu", "9000"]);
    ip(&["-n", &vm2, "link", "set", "eth0", "mtu", "9000"]);
    sysctl(&vm2, &["net.ipv4.ip_no_pmtu_disc=1"]);
    topo.topology.start_routerd();
    let inet = topo.inet_ns.clone();
    for vm in [&vm2, &vm3] {
        assert!(
            traffic::ping(vm, INET.octets(), 1),
            "{mode}: {vm} reaches the internet"
        );
    }
    let kernel_before = traffic::forwarded_by_kernel(&topo.router_ns);

    // vm2's floating IP is on subnet 2: what the kernel forwards for it leaves by gw2,
    // the answers to what came in included.
    let before = topo.gw_counts("from_fip2");
    options_udp_seen_from(
        &format!("{mode}: udp with options vm2 (FIP {FIP2}) -> internet"),
        &vm2,
        &inet,
        INET,
        7101,
        FIP2,
    );
    options_udp_seen_from(
        &format!("{mode}: udp with options internet -> FIP {FIP2}"),
        &inet,
        &vm2,
        FIP2,
        7102,
        INET,
    );
    assert!(
        traffic::ping_record_route(&vm2, INET.octets(), 2),
        "{mode}: ping -R vm2 -> internet"
    );
    let after = topo.gw_counts("from_fip2");
    assert!(
        after[1] >= before[1] + 4 && after[0] == before[0] && after[2] == before[2],
        "{mode}: vm2's packets left by the wrong gateway: from_fip2 per gateway {before:?} -> {after:?}"
    );
    let before = topo.gw_counts("from_fip2");
    let kernel = traffic::forwarded_by_kernel(&topo.router_ns);
    traffic::assert_udp_seen_from(
        &format!("{mode}: a 3,000-byte datagram without DF from vm2"),
        traffic::large_udp(&vm2, &inet, INET.octets(), 7104, 3000, WAIT),
        FIP2,
    );
    let after = topo.gw_counts("from_fip2");
    assert!(
        after[1] >= before[1] + 3 && after[0] == before[0] && after[2] == before[2],
        "{mode}: the kernel's fragments of vm2's datagram left by the wrong gateway: {before:?} -> {after:?}"
    );
    kernel_did_it(mode, &topo.router_ns, kernel, 1);

    // vm3 (SNAT to the primary address): by gw1.
    let before = topo.gw_counts("from_gw_ip");
    options_udp_seen_from(
        &format!("{mode}: udp with options vm3 (SNAT) -> internet"),
        &vm3,
        &inet,
        INET,
        7103,
        GW_IP,
    );
    let after = topo.gw_counts("from_gw_ip");
    assert!(
        after[0] > before[0] && after[1] == before[1] && after[2] == before[2],
        "{mode}: vm3's packets left by the wrong gateway: {before:?} -> {after:?}"
    );
    let fixed = topo.gw_counts("fixed");
    assert_eq!(fixed, [0, 0, 0], "{mode}: fixed addresses left the router");
    kernel_did_it(mode, &topo.router_ns, kernel_before, 3 * 2 + 2 * 2);
}

#[test]
fn external_subnets_xdp() {
    external_subnets("xdp");
}

#[test]
fn external_subnets_tc() {
    external_subnets("tc");
}
