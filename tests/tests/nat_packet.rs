//! NAT packet tests: every translation and its reverse through both entries, with the
//! output parsed and its checksums verified by etherparse (not by our code).
//!
//! The router: `in0` internal (10.0.1.0/24), `out0` the gateway interface (198.18.0.0/24,
//! gateway IP 198.18.0.2, default route via 198.18.0.1), floating IPs 198.18.0.10 for
//! 10.0.1.5 and 198.18.0.11 for 10.0.1.9, SNAT ports 40000-40001.

use etherparse::{Icmpv4Header, Icmpv4Type, Ipv4Header};
use router_common::{Reason, iface_flags, iface_role, route_kind};
use router_tests::{
    fixture::{Routes, iface, neighbor, route, snat_gateway, veth_pairs},
    frames::{
        Addresses, BROADCAST_MAC, CLIENT_MAC, ROUTER_IN_MAC, ROUTER_OUT_MAC, addresses, eth,
        fix_ip_checksum,
    },
    netns::NetnsGuard,
    testrun::{
        self, Entry, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT,
    },
    topo::ifindex,
};
use router_user::{datapath::Datapath, maps::Rooms as _};

const GW: [u8; 4] = [198, 18, 0, 2];
const UPSTREAM: [u8; 4] = [198, 18, 0, 1];
const FIP: [u8; 4] = [198, 18, 0, 10];
const FIXED: [u8; 4] = [10, 0, 1, 5];
const FIP2: [u8; 4] = [198, 18, 0, 11];
const FIXED2: [u8; 4] = [10, 0, 1, 9];
const VM3: [u8; 4] = [10, 0, 1, 6];
const VM7: [u8; 4] = [10, 0, 1, 7];
const VM8: [u8; 4] = [10, 0, 1, 8];
const REMOTE: [u8; 4] = [203, 0, 113, 9];
const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x55];
const UPSTREAM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];
const PAYLOAD: &[u8] = b"some payload";

struct Router {
    _ns: NetnsGuard,
    dp: Datapath,
    inside: u32,
    outside: u32,
    entry: Entry,
}

impl Router {
    fn new(entry: Entry, session_entries: u32) -> Self {
        let ns = NetnsGuard::new();
        veth_pairs(&[("in0", "in1"), ("out0", "out1")]);
        let (inside, outside) = (ifindex("in0"), ifindex("out0"));
        let mut dp = Datapath::load("nat-test", session_entries).expect("loading");
        let iface = |mac, role| iface(mac, role, iface_flags::XDP_EGRESS);
        dp.ifaces()
            .set(inside, iface(ROUTER_IN_MAC, iface_role::INTERNAL))
            .expect("IFACES");
        dp.ifaces()
            .set(outside, iface(ROUTER_OUT_MAC, iface_role::EXTERNAL))
            .expect("IFACES");
        dp.ifaces().set_xdp_egress(inside).expect("EGRESS_DEVS");
        dp.ifaces().set_xdp_egress(outside).expect("EGRESS_DEVS");
        let mut routes = Routes::default();
        let mut add = |addr, len, entry| routes.add(addr, len, entry);
        add(
            [10, 0, 1, 0],
            24,
            route(route_kind::UNICAST, inside, [0; 4]),
        );
        add([10, 0, 1, 1], 32, route(route_kind::LOCAL, 0, [0; 4]));
        add(
            [198, 18, 0, 0],
            24,
            route(route_kind::UNICAST, outside, [0; 4]),
        );
        add(GW, 32, route(route_kind::LOCAL, 0, [0; 4]));
        add([0; 4], 0, route(route_kind::UNICAST, outside, UPSTREAM));
        dp.routes().sync(&routes.0).expect("ROUTES");
        let neigh = neighbor;
        let mut neighbors = vec![neigh(outside, UPSTREAM, UPSTREAM_MAC)];
        for vm in [FIXED, FIXED2, VM3, VM7, VM8] {
            neighbors.push(neigh(inside, vm, VM_MAC));
        }
        dp.routes().sync_neighbors(&neighbors).expect("NEIGHBORS");
        snat_gateway(&mut dp, GW, outside, (40000, 40001));
        dp.nat().add_floating_ip(FIP, FIXED).expect("FIP");
        dp.nat().add_floating_ip(FIP2, FIXED2).expect("FIP");
        Self {
            _ns: ns,
            dp,
            inside,
            outside,
            entry,
        }
    }

    fn run(&self, ingress: u32, frame: &[u8]) -> (Outcome, Vec<u8>) {
        let testrun::Run {
            verdict,
            frame: out,
            ..
        } = testrun::run(&self.dp, self.entry, ingress, frame);
        let outcome = match (self.entry, verdict) {
            (Entry::Xdp, XDP_REDIRECT) | (Entry::Tc, TC_ACT_REDIRECT) => Outcome::Forward,
            (Entry::Xdp, XDP_PASS) | (Entry::Tc, TC_ACT_OK) => Outcome::Pass,
            (Entry::Xdp, XDP_DROP) | (Entry::Tc, TC_ACT_SHOT) => Outcome::Drop,
            (_, v) => panic!("unexpected verdict {v}"),
        };
        (outcome, out)
    }

    fn reason(&mut self, ifindex: u32, r: Reason) -> u64 {
        self.dp.ifaces().stats(ifindex).expect("stats").reasons[r as usize]
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Forward,
    Pass,
    Drop,
}

fn expect_forward(r: &Router, ingress: u32, frame: &[u8], want: Addresses, what: &str) {
    let (outcome, out) = r.run(ingress, frame);
    assert_eq!(outcome, Outcome::Forward, "{what}: verdict");
    assert_eq!(addresses(&out), want, "{what}");
}

fn want(dst_mac: [u8; 6], src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Addresses {
    Addresses::new(dst_mac, src, sport, dst, dport)
}

fn floating_ips(entry: Entry) {
    let r = Router::new(entry, 1024);
    let (i, o) = (r.inside, r.outside);
    // Out: the fixed IP leaves as its floating IP, ports untouched (stateless).
    let f = eth(ROUTER_IN_MAC)
        .ipv4(FIXED, REMOTE)
        .udp(5000, 53)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, FIP, 5000, REMOTE, 53),
        "fip out udp",
    );
    let f = eth(ROUTER_IN_MAC)
        .ipv4(FIXED, REMOTE)
        .tcp(5001, 443)
        .seq(1000)
        .syn()
        .build();
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, FIP, 5001, REMOTE, 443),
        "fip out tcp",
    );
    let f = eth(ROUTER_IN_MAC)
        .ipv4(FIXED, REMOTE)
        .icmp_echo_request(77, 1)
        .payload(b"ping");
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, FIP, 77, REMOTE, 0),
        "fip out ping",
    );
    // In: the floating IP is rewritten to the fixed IP.
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, FIP)
        .udp(53, 5000)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 53, FIXED, 5000),
        "fip in udp",
    );
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, FIP)
        .tcp(443, 5001)
        .seq(1000)
        .syn()
        .build();
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 443, FIXED, 5001),
        "fip in tcp",
    );
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, FIP)
        .icmp_echo_reply(77, 1)
        .payload(b"ping");
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 77, FIXED, 0),
        "fip in ping reply",
    );
    // UDP without a checksum keeps none.
    let mut f = eth(ROUTER_IN_MAC)
        .ipv4(FIXED, REMOTE)
        .udp(5002, 53)
        .payload(PAYLOAD);
    f[40..42].copy_from_slice(&[0, 0]);
    let (outcome, out) = r.run(i, &f);
    assert_eq!(outcome, Outcome::Forward);
    assert_eq!(out[40..42], [0, 0], "UDP checksum 0 stays 0");
    assert_eq!(addresses(&out).src, FIP);
    // Any other protocol: the address only (GRE, protocol 47).
    let mut gre = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, FIP)
        .udp(1, 1)
        .payload(PAYLOAD);
    gre[23] = 47;
    fix_ip_checksum(&mut gre);
    let (outcome, out) = r.run(o, &gre);
    assert_eq!(outcome, Outcome::Forward, "gre to a floating IP");
    assert_eq!(out[30..34], FIXED, "gre destination");
    assert_eq!(addresses(&out).src, REMOTE);
    // No translation between internal hosts, even for one with a floating IP.
    let f = eth(ROUTER_IN_MAC)
        .ipv4(FIXED, VM3)
        .udp(5000, 53)
        .payload(PAYLOAD);
    expect_forward(&r, i, &f, want(VM_MAC, FIXED, 5000, VM3, 53), "east-west");
}

fn default_snat(entry: Entry) {
    let mut r = Router::new(entry, 1024);
    let (i, o) = (r.inside, r.outside);
    // The original port is kept when it is in the range and free...
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM3, REMOTE)
        .udp(40000, 53)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40000, REMOTE, 53),
        "snat udp",
    );
    // ...the same flow again uses its session...
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40000, REMOTE, 53),
        "snat udp again",
    );
    // ...another host with the same port gets the other one...
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM7, REMOTE)
        .udp(40000, 53)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40001, REMOTE, 53),
        "snat collision",
    );
    // ...and a third finds none: dropped, never sent untranslated.
    let before = r.reason(i, Reason::NoSnatPort);
    let (outcome, _) = r.run(
        i,
        &eth(ROUTER_IN_MAC)
            .ipv4(VM8, REMOTE)
            .udp(40000, 53)
            .payload(PAYLOAD),
    );
    assert_eq!(outcome, Outcome::Drop, "port exhaustion");
    assert_eq!(
        r.reason(i, Reason::NoSnatPort),
        before + 1,
        "no_snat_port counted"
    );
    // Replies are translated back.
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, GW)
        .udp(53, 40000)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 53, VM3, 40000),
        "snat reply 1",
    );
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, GW)
        .udp(53, 40001)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 53, VM7, 40000),
        "snat reply 2",
    );
    // A port no session holds is the router's own business.
    let (outcome, _) = r.run(
        o,
        &eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, GW)
            .udp(53, 39999)
            .payload(PAYLOAD),
    );
    assert_eq!(outcome, Outcome::Pass, "no session: to the kernel");
    // TCP to another destination may reuse port 40000.
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM8, REMOTE)
        .tcp(40000, 80)
        .seq(1000)
        .syn()
        .build();
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40000, REMOTE, 80),
        "snat tcp",
    );
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, GW)
        .tcp(80, 40000)
        .seq(1000)
        .syn()
        .build();
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 80, VM8, 40000),
        "snat tcp reply",
    );
    // ICMP echo: the identifier is the port.
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM3, REMOTE)
        .icmp_echo_request(40001, 1)
        .payload(b"ping");
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40001, REMOTE, 0),
        "snat ping",
    );
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, GW)
        .icmp_echo_reply(40001, 1)
        .payload(b"ping");
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 40001, VM3, 0),
        "snat ping reply",
    );
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM7, REMOTE)
        .icmp_echo_request(40001, 1)
        .payload(b"ping");
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40000, REMOTE, 0),
        "ping id collision",
    );
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, GW)
        .icmp_echo_reply(40000, 1)
        .payload(b"ping");
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 40001, VM7, 0),
        "ping id reply",
    );
}

/// Time exceeded from a router on the path, about a packet that left translated: the
/// outer destination and the embedded source go back to the VM.
fn icmp_errors(entry: Entry) {
    let r = Router::new(entry, 1024);
    let (i, o) = (r.inside, r.outside);
    // A SNAT session (VM7:40000 leaves as GW:40000) and a floating-IP flow.
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM7, REMOTE)
        .udp(40000, 53)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40000, REMOTE, 53),
        "snat flow",
    );
    let cases = [
        (
            eth(ROUTER_OUT_MAC)
                .ipv4(GW, REMOTE)
                .udp(40000, 53)
                .payload(PAYLOAD),
            GW,
            VM7,
            40000,
            "snat udp",
        ),
        (
            eth(ROUTER_OUT_MAC)
                .ipv4(GW, REMOTE)
                .tcp(40000, 53)
                .seq(1000)
                .syn()
                .build(),
            GW,
            VM7,
            40000,
            "snat tcp (no session)",
        ),
        (
            eth(ROUTER_OUT_MAC)
                .ipv4(FIP, REMOTE)
                .udp(5000, 53)
                .payload(PAYLOAD),
            FIP,
            FIXED,
            5000,
            "floating ip udp",
        ),
        (
            eth(ROUTER_OUT_MAC)
                .ipv4(FIP, REMOTE)
                .icmp_echo_request(9, 1)
                .payload(b"ping"),
            FIP,
            FIXED,
            9,
            "floating ip ping",
        ),
    ];
    for (original, outer_dst, vm, vm_port, what) in cases {
        let error = eth(ROUTER_OUT_MAC)
            .ipv4(UPSTREAM, outer_dst)
            .icmp_time_exceeded()
            .payload(&original[14..]);
        let (outcome, out) = r.run(o, &error);
        if what.contains("no session") {
            // TCP 40000 has no session: the kernel's rules decide.
            assert_eq!(outcome, Outcome::Pass, "{what}");
            continue;
        }
        assert_eq!(outcome, Outcome::Forward, "{what}: verdict");
        let outer = addresses(&out);
        assert_eq!(
            (outer.src, outer.dst),
            (UPSTREAM, vm),
            "{what}: outer addresses"
        );
        // The embedded packet: valid header checksum, source back to the VM.
        let (inner, rest) = Ipv4Header::from_slice(&out[42..]).expect("embedded IPv4");
        assert_eq!(
            inner.calc_header_checksum(),
            inner.header_checksum,
            "{what}: inner csum"
        );
        assert_eq!(
            (inner.source, inner.destination),
            (vm, REMOTE),
            "{what}: inner addresses"
        );
        let port = if inner.protocol.0 == 1 {
            let (icmp, _) = Icmpv4Header::from_slice(rest).expect("embedded icmp");
            match icmp.icmp_type {
                Icmpv4Type::EchoRequest(e) => e.id,
                other => panic!("{what}: {other:?}"),
            }
        } else {
            u16::from_be_bytes([rest[0], rest[1]])
        };
        assert_eq!(port, vm_port, "{what}: inner source port");
        if inner.protocol.0 == 17 {
            let payload_len = usize::from(u16::from_be_bytes([rest[4], rest[5]])) - 8;
            let udp = etherparse::UdpHeader::from_slice(rest)
                .expect("inner udp")
                .0;
            let want = udp
                .calc_checksum_ipv4(&inner, &rest[8..8 + payload_len])
                .expect("csum");
            assert_eq!(want, udp.checksum, "{what}: inner UDP checksum");
        }
    }
}

fn hairpin(entry: Entry) {
    let r = Router::new(entry, 1024);
    let i = r.inside;
    // Sender without a floating IP: destination to the fixed IP, source to the gateway IP.
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM3, FIP)
        .udp(40001, 7)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        i,
        &f,
        want(VM_MAC, GW, 40001, FIXED, 7),
        "hairpin via gw",
    );
    // The reply reaches the sender from the floating IP it used.
    let f = eth(ROUTER_IN_MAC)
        .ipv4(FIXED, GW)
        .udp(7, 40001)
        .payload(PAYLOAD);
    expect_forward(&r, i, &f, want(VM_MAC, FIP, 7, VM3, 40001), "hairpin reply");
    // Sender with a floating IP: it appears as its own floating IP (float-snat first).
    let f = eth(ROUTER_IN_MAC)
        .ipv4(FIXED2, FIP)
        .udp(6000, 7)
        .payload(PAYLOAD);
    expect_forward(&r, i, &f, want(VM_MAC, FIP2, 6000, FIXED, 7), "hairpin fip");
    let f = eth(ROUTER_IN_MAC)
        .ipv4(FIXED, FIP2)
        .udp(7, 6000)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        i,
        &f,
        want(VM_MAC, FIP, 7, FIXED2, 6000),
        "hairpin fip reply",
    );
}

fn arp_and_metadata(entry: Entry) {
    let mut r = Router::new(entry, 1024);
    let (i, o) = (r.inside, r.outside);
    let arp = |target: [u8; 4]| eth(BROADCAST_MAC).arp_request(UPSTREAM, target);
    let (outcome, out) = r.run(o, &arp(FIP));
    assert_eq!(
        outcome,
        Outcome::Forward,
        "arp for a floating IP is answered"
    );
    assert_eq!(out[0..6], CLIENT_MAC, "reply to the asker");
    assert_eq!(out[6..12], ROUTER_OUT_MAC);
    assert_eq!(out[20..22], [0, 2], "an ARP reply");
    assert_eq!(
        out[22..28],
        ROUTER_OUT_MAC,
        "sender MAC is the gateway port's"
    );
    assert_eq!(out[28..32], FIP, "sender IP is the floating IP");
    assert_eq!(out[32..38], CLIENT_MAC);
    assert_eq!(out[38..42], UPSTREAM);
    let (outcome, _) = r.run(o, &arp([198, 18, 0, 99]));
    assert_eq!(outcome, Outcome::Pass, "other ARP goes to the kernel");
    let (outcome, _) = r.run(i, &arp(FIP));
    assert_eq!(outcome, Outcome::Pass, "not answered on internal ports");
    // An announcement (another node, e.g. an HA router's new active, claiming the address)
    // asks for no reply; answering it would teach the switches the MAC back.
    let announcement = eth(BROADCAST_MAC).arp_request(FIP, FIP);
    let (outcome, _) = r.run(o, &announcement);
    assert_eq!(outcome, Outcome::Pass, "an announcement is not answered");

    let before = r.reason(i, Reason::Metadata);
    let (outcome, out) = r.run(
        i,
        &eth(ROUTER_IN_MAC)
            .ipv4(FIXED, [169, 254, 169, 254])
            .tcp(5555, 80)
            .seq(1000)
            .syn()
            .build(),
    );
    assert_eq!(
        outcome,
        Outcome::Pass,
        "metadata goes to the kernel's redirect"
    );
    let sent = eth(ROUTER_IN_MAC)
        .ipv4(FIXED, [169, 254, 169, 254])
        .tcp(5555, 80)
        .seq(1000)
        .syn()
        .build();
    assert!(out.ends_with(&sent), "untouched");
    assert_eq!(r.reason(i, Reason::Metadata), before + 1);
}

/// A full table refuses new sessions with a counted drop, and an established session keeps
/// working while the rest of the table is half-open TCP (SYN only).
fn full_table(entry: Entry) {
    // Four entries: two sessions.
    let mut r = Router::new(entry, 4);
    let (i, o) = (r.inside, r.outside);
    // An established TCP session: SYN out, SYN-ACK back.
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM3, REMOTE)
        .tcp(40000, 443)
        .seq(1000)
        .syn()
        .build();
    expect_forward(&r, i, &f, want(UPSTREAM_MAC, GW, 40000, REMOTE, 443), "syn");
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, GW)
        .tcp(443, 40000)
        .seq(1000)
        .syn()
        .build();
    expect_forward(&r, o, &f, want(VM_MAC, REMOTE, 443, VM3, 40000), "syn-ack");
    // A half-open one fills the table.
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM7, [203, 0, 113, 10])
        .tcp(40000, 80)
        .seq(1000)
        .syn()
        .build();
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40000, [203, 0, 113, 10], 80),
        "half-open",
    );
    let before = r.reason(i, Reason::SessionTableFull);
    let (outcome, _) = r.run(
        i,
        &eth(ROUTER_IN_MAC)
            .ipv4(VM8, [203, 0, 113, 11])
            .tcp(40000, 80)
            .seq(1000)
            .syn()
            .build(),
    );
    assert_eq!(outcome, Outcome::Drop, "a third session does not fit");
    assert_eq!(r.reason(i, Reason::SessionTableFull), before + 1);
    // The established session still works both ways.
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM3, REMOTE)
        .tcp(40000, 443)
        .seq(1000)
        .syn()
        .build();
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40000, REMOTE, 443),
        "established out",
    );
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, GW)
        .tcp(443, 40000)
        .seq(1000)
        .syn()
        .build();
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 443, VM3, 40000),
        "established in",
    );
    // Floating IPs need no session.
    let f = eth(ROUTER_IN_MAC)
        .ipv4(FIXED, REMOTE)
        .udp(1, 2)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, FIP, 1, REMOTE, 2),
        "fip with a full table",
    );
}

/// Sessions are keyed by zone: the same flow arriving where the zone differs (say after a
/// firewall) is a session of its own, not its earlier self.
fn zones(entry: Entry) {
    let mut r = Router::new(entry, 1024);
    let (i, o) = (r.inside, r.outside);
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM3, REMOTE)
        .udp(40000, 53)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40000, REMOTE, 53),
        "zone 0",
    );
    let mut iface = iface(ROUTER_IN_MAC, iface_role::INTERNAL, iface_flags::XDP_EGRESS);
    iface.zone = 7;
    r.dp.ifaces().set(i, iface).expect("IFACES");
    // A new session: port 40000 is held by the zone-0 one, so it gets 40001.
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40001, REMOTE, 53),
        "zone 7",
    );
    // Both sessions answer.
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, GW)
        .udp(53, 40000)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 53, VM3, 40000),
        "zone 0 reply",
    );
    let f = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, GW)
        .udp(53, 40001)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        o,
        &f,
        want(VM_MAC, REMOTE, 53, VM3, 40000),
        "zone 7 reply",
    );
    iface.zone = 0;
    r.dp.ifaces().set(i, iface).expect("IFACES");
    let f = eth(ROUTER_IN_MAC)
        .ipv4(VM3, REMOTE)
        .udp(40000, 53)
        .payload(PAYLOAD);
    expect_forward(
        &r,
        i,
        &f,
        want(UPSTREAM_MAC, GW, 40000, REMOTE, 53),
        "zone 0 again",
    );
}

/// A router handing over to another node (HA role `HANDING_OVER`) forwards what it holds
/// sessions for, from its node's own MAC, and does nothing else: no ARP answer, no new
/// session (the new active would never hear of it), nothing to the kernel.
fn handing_over(entry: Entry) {
    use router_common::{HaState, ha_role};
    const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];
    let mut r = Router::new(entry, 1024);
    let (i, o) = (r.inside, r.outside);
    // An SNAT session made while active.
    let syn = eth(ROUTER_IN_MAC)
        .ipv4(VM3, REMOTE)
        .tcp(40000, 443)
        .seq(1000)
        .syn()
        .build();
    expect_forward(
        &r,
        i,
        &syn,
        want(UPSTREAM_MAC, GW, 40000, REMOTE, 443),
        "syn",
    );
    r.dp.ha()
        .set(HaState {
            role: ha_role::HANDING_OVER,
            handover_mac: NODE_MAC,
            ..HaState::default()
        })
        .expect("HA");
    let before = r.reason(i, Reason::Standby) + r.reason(o, Reason::Standby);

    let (outcome, out) = r.run(i, &syn);
    assert_eq!(outcome, Outcome::Forward, "the session's packets go on");
    assert_eq!(out[6..12], NODE_MAC, "from the node's own MAC");
    assert_eq!(out[0..6], UPSTREAM_MAC);
    let reply = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, GW)
        .tcp(443, 40000)
        .seq(1000)
        .syn()
        .build();
    let (outcome, out) = r.run(o, &reply);
    assert_eq!(outcome, Outcome::Forward, "and their replies");
    assert_eq!(out[6..12], NODE_MAC);
    let to_fip = eth(ROUTER_OUT_MAC)
        .ipv4(REMOTE, FIP)
        .udp(5000, 53)
        .payload(PAYLOAD);
    let (outcome, out) = r.run(o, &to_fip);
    assert_eq!(
        outcome,
        Outcome::Forward,
        "floating IPs translate without sessions"
    );
    assert_eq!(out[6..12], NODE_MAC);

    let new_session = eth(ROUTER_IN_MAC)
        .ipv4(VM7, REMOTE)
        .tcp(40001, 443)
        .seq(1000)
        .syn()
        .build();
    let (outcome, _) = r.run(i, &new_session);
    assert_eq!(outcome, Outcome::Drop, "no new session");
    let (outcome, _) = r.run(o, &eth(BROADCAST_MAC).arp_request(UPSTREAM, FIP));
    assert_eq!(outcome, Outcome::Drop, "no ARP answer");
    let to_router = eth(ROUTER_IN_MAC)
        .ipv4(VM3, [10, 0, 1, 1])
        .udp(5000, 53)
        .payload(PAYLOAD);
    let (outcome, _) = r.run(i, &to_router);
    assert_eq!(outcome, Outcome::Drop, "nothing for the kernel");
    assert_eq!(
        r.reason(i, Reason::Standby) + r.reason(o, Reason::Standby),
        before + 3,
        "each counted as standby"
    );
}

macro_rules! both_entries {
    ($($name:ident),*) => {
        mod xdp { $(#[test] fn $name() { router_tests::require_root(); super::$name(super::Entry::Xdp) })* }
        mod tc { $(#[test] fn $name() { router_tests::require_root(); super::$name(super::Entry::Tc) })* }
    };
}

both_entries!(
    floating_ips,
    default_snat,
    icmp_errors,
    hairpin,
    arp_and_metadata,
    full_table,
    zones,
    handing_over
);
