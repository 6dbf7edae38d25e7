//! Fragments through the real programs (BPF_PROG_TEST_RUN), both entries: a datagram cut
//! into fragments as a sender's stack cuts it, every fragment run, and the outputs put back
//! together here: every fragment translated alike, the reassembled datagram's L4 checksum
//! right (checked by etherparse). Also the outcomes a later fragment takes from its first
//! (kernel, MTU), the out-of-order drop and the bound of the record table.
//!
//! The router: `in0` internal (10.0.1.0/24), `out0` the gateway interface (198.18.0.0/24,
//! gateway IP 198.18.0.2, default route via 198.18.0.1), floating IP 198.18.0.10 for
//! 10.0.1.5, SNAT ports 40000-40001 for the others.

use router_common::{MAX_FRAGMENT_DATAGRAMS, Reason, iface_flags, iface_role, route_kind};
use router_tests::{
    fixture::{Routes, iface, neighbor, route, snat_gateway, veth_pairs},
    frames::{self, Addresses, ROUTER_IN_MAC, ROUTER_OUT_MAC, eth, fix_ip_checksum},
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
const VM3: [u8; 4] = [10, 0, 1, 6];
const REMOTE: [u8; 4] = [203, 0, 113, 9];
const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x55];
const UPSTREAM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];
/// IPv4 payload bytes per fragment of a 1500-byte MTU (a multiple of 8).
const FRAGMENT_DATA: usize = 1480;
const L3: usize = 14;

struct Router {
    _ns: NetnsGuard,
    dp: Datapath,
    inside: u32,
    outside: u32,
    entry: Entry,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Forward,
    Pass,
    Drop,
}

impl Router {
    fn new(entry: Entry) -> Self {
        let ns = NetnsGuard::new();
        veth_pairs(&[("in0", "in1"), ("out0", "out1")]);
        let (inside, outside) = (ifindex("in0"), ifindex("out0"));
        let mut dp = Datapath::load("fragments-test", 1024).expect("loading");
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
        add(
            [198, 18, 0, 0],
            24,
            route(route_kind::UNICAST, outside, [0; 4]),
        );
        add(GW, 32, route(route_kind::LOCAL, 0, [0; 4]));
        add([0; 4], 0, route(route_kind::UNICAST, outside, UPSTREAM));
        dp.routes().sync(&routes.0).expect("ROUTES");
        dp.routes()
            .sync_neighbors(&[
                neighbor(outside, UPSTREAM, UPSTREAM_MAC),
                neighbor(inside, FIXED, VM_MAC),
                neighbor(inside, VM3, VM_MAC),
            ])
            .expect("NEIGHBORS");
        snat_gateway(&mut dp, GW, outside, (40000, 40001));
        dp.nat().add_floating_ip(FIP, FIXED).expect("FIP");
        Self {
            _ns: ns,
            dp,
            inside,
            outside,
            entry,
        }
    }

    fn run(&self, ingress: u32, frame: &[u8]) -> (Outcome, Vec<u8>) {
        let run = testrun::run(&self.dp, self.entry, ingress, frame);
        let outcome = match (self.entry, run.verdict) {
            (Entry::Xdp, XDP_REDIRECT) | (Entry::Tc, TC_ACT_REDIRECT) => Outcome::Forward,
            (Entry::Xdp, XDP_PASS) | (Entry::Tc, TC_ACT_OK) => Outcome::Pass,
            (Entry::Xdp, XDP_DROP) | (Entry::Tc, TC_ACT_SHOT) => Outcome::Drop,
            (_, v) => panic!("unexpected verdict {v}"),
        };
        (outcome, run.frame)
    }

    fn reason(&mut self, ifindex: u32, r: Reason) -> u64 {
        self.dp.ifaces().stats(ifindex).expect("stats").reasons[r as usize]
    }

    fn forwarded(&mut self, ifindex: u32) -> u64 {
        self.dp.ifaces().stats(ifindex).expect("stats").fwd_packets
    }

    /// Runs every fragment of `datagram` (in order) from `ingress`; each must be forwarded.
    /// Returns the datagram as the far end would reassemble it.
    fn forward_all(&mut self, ingress: u32, datagram: &[u8], what: &str) -> Vec<u8> {
        let before = self.forwarded(ingress);
        let fragments = fragment(datagram);
        assert!(fragments.len() >= 2, "{what}: not fragmented");
        let mut outs = Vec::new();
        for (i, f) in fragments.iter().enumerate() {
            let (outcome, out) = self.run(ingress, f);
            assert_eq!(outcome, Outcome::Forward, "{what}: fragment {i}");
            assert!(
                frames::parse(&out).ip_checksum_ok,
                "{what}: fragment {i}: IPv4 checksum"
            );
            assert_eq!(
                frames::parse(&out).ttl,
                frames::parse(f).ttl - 1,
                "{what}: fragment {i}: TTL"
            );
            outs.push(out);
        }
        assert_eq!(
            self.forwarded(ingress) - before,
            fragments.len() as u64,
            "{what}: every fragment counted as forwarded"
        );
        reassemble(&outs, what)
    }
}

/// A frame whose IPv4 packet carries `id`.
fn with_id(mut frame: Vec<u8>, id: u16) -> Vec<u8> {
    frame[L3 + 4..L3 + 6].copy_from_slice(&id.to_be_bytes());
    fix_ip_checksum(&mut frame);
    frame
}

/// Cuts `frame`'s IPv4 packet into fragments of `FRAGMENT_DATA` bytes, as a sender does.
fn fragment(frame: &[u8]) -> Vec<Vec<u8>> {
    let (head, data) = frame.split_at(L3 + 20);
    let chunks: Vec<&[u8]> = data.chunks(FRAGMENT_DATA).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = head.to_vec();
            f.extend_from_slice(chunk);
            let more = if i + 1 < chunks.len() { 0x2000 } else { 0 };
            let offset = (i * FRAGMENT_DATA / 8) as u16;
            f[L3 + 2..L3 + 4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
            f[L3 + 6..L3 + 8].copy_from_slice(&(more | offset).to_be_bytes());
            fix_ip_checksum(&mut f);
            f
        })
        .collect()
}

/// One fragment of `frame`'s IPv4 packet: `data` bytes from `offset` (a multiple of 8).
fn piece(frame: &[u8], offset: usize, len: usize, more: bool) -> Vec<u8> {
    let mut f = frame[..L3 + 20].to_vec();
    f.extend_from_slice(&frame[L3 + 20 + offset..L3 + 20 + offset + len]);
    let flags = if more { 0x2000 } else { 0 } | (offset / 8) as u16;
    f[L3 + 2..L3 + 4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
    f[L3 + 6..L3 + 8].copy_from_slice(&flags.to_be_bytes());
    fix_ip_checksum(&mut f);
    f
}

/// The datagram the fragments `outs` make, after checking they agree on their headers.
fn reassemble(outs: &[Vec<u8>], what: &str) -> Vec<u8> {
    let first = &outs[0];
    let mut parts: Vec<(usize, &[u8])> = Vec::new();
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(out[..12], first[..12], "{what}: fragment {i}: MACs");
        assert_eq!(
            out[L3 + 12..L3 + 20],
            first[L3 + 12..L3 + 20],
            "{what}: fragment {i}: addresses as the first fragment's"
        );
        assert_eq!(out[L3 + 4..L3 + 6], first[L3 + 4..L3 + 6], "{what}: IP id");
        let flags = u16::from_be_bytes([out[L3 + 6], out[L3 + 7]]);
        let tot = usize::from(u16::from_be_bytes([out[L3 + 2], out[L3 + 3]]));
        parts.push((usize::from(flags & 0x1fff) * 8, &out[L3 + 20..L3 + tot]));
    }
    parts.sort_by_key(|(offset, _)| *offset);
    let mut data = Vec::new();
    for (offset, bytes) in parts {
        assert_eq!(offset, data.len(), "{what}: fragments cover the datagram");
        data.extend_from_slice(bytes);
    }
    let mut whole = first[..L3 + 20].to_vec();
    whole.extend_from_slice(&data);
    whole[L3 + 2..L3 + 4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
    whole[L3 + 6..L3 + 8].copy_from_slice(&[0, 0]);
    fix_ip_checksum(&mut whole);
    whole
}

/// Where the reassembled datagram goes, its L4 checksum checked (and present).
fn delivered(whole: &[u8], what: &str) -> Addresses {
    let p = frames::parse(whole);
    assert!(
        p.l4_checksum_ok && !p.udp_checksum_absent,
        "{what}: the reassembled datagram's L4 checksum"
    );
    p.addresses
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn translates_every_fragment(entry: Entry) {
    let mut r = Router::new(entry);
    let (i, o) = (r.inside, r.outside);
    let data = payload(3000);
    let want = |mac, src, sport, dst, dport| Addresses::new(mac, src, sport, dst, dport);

    // A floating IP, out and in (stateless).
    let out = with_id(
        eth(ROUTER_IN_MAC)
            .ipv4(FIXED, REMOTE)
            .udp(5000, 53)
            .payload(&data),
        1,
    );
    let whole = r.forward_all(i, &out, "udp from the floating IP's VM");
    assert_eq!(
        delivered(&whole, "fip out"),
        want(UPSTREAM_MAC, FIP, 5000, REMOTE, 53)
    );
    assert_eq!(whole[L3 + 20 + 8..], data[..], "fip out: payload intact");
    let inbound = with_id(
        eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, FIP)
            .udp(53, 5000)
            .payload(&data),
        2,
    );
    let whole = r.forward_all(o, &inbound, "udp to the floating IP");
    assert_eq!(
        delivered(&whole, "fip in"),
        want(VM_MAC, REMOTE, 53, FIXED, 5000)
    );
    let ping = with_id(
        eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, FIP)
            .icmp_echo_request(0x77, 1)
            .payload(&data),
        3,
    );
    let whole = r.forward_all(o, &ping, "echo request to the floating IP");
    assert_eq!(
        delivered(&whole, "ping fip"),
        want(VM_MAC, REMOTE, 0x77, FIXED, 0)
    );

    // SNAT: a session made by the first fragment; its port is in the first fragment only.
    let out = with_id(
        eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .udp(6000, 53)
            .payload(&data),
        4,
    );
    let whole = r.forward_all(i, &out, "udp from a VM behind SNAT");
    let a = delivered(&whole, "snat out");
    assert_eq!((a.src, a.dst, a.dport), (GW, REMOTE, 53), "snat out");
    assert!((40000..=40001).contains(&a.sport), "snat port {}", a.sport);
    let reply = with_id(
        eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, GW)
            .udp(53, a.sport)
            .payload(&data),
        5,
    );
    let whole = r.forward_all(o, &reply, "the SNAT reply");
    assert_eq!(
        delivered(&whole, "snat reply"),
        want(VM_MAC, REMOTE, 53, VM3, 6000)
    );
    let ping = with_id(
        eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .icmp_echo_request(0x99, 1)
            .payload(&data),
        6,
    );
    let whole = r.forward_all(i, &ping, "echo request behind SNAT");
    let a = delivered(&whole, "snat ping");
    assert_eq!((a.src, a.dst), (GW, REMOTE), "snat ping");

    // Hairpin: a VM to another VM's floating IP, DNAT and SNAT to the gateway IP.
    let hairpin = with_id(
        eth(ROUTER_IN_MAC)
            .ipv4(VM3, FIP)
            .udp(7000, 53)
            .payload(&data),
        7,
    );
    let whole = r.forward_all(i, &hairpin, "hairpin");
    let a = delivered(&whole, "hairpin");
    assert_eq!((a.dst_mac, a.src, a.dst, a.dport), (VM_MAC, GW, FIXED, 53));
    assert_eq!(r.reason(i, Reason::FragmentUnknown), 0);
}

#[test]
fn translates_every_fragment_xdp() {
    translates_every_fragment(Entry::Xdp);
}

#[test]
fn translates_every_fragment_tc() {
    translates_every_fragment(Entry::Tc);
}

fn later_fragments_follow_their_first(entry: Entry) {
    let mut r = Router::new(entry);
    let (i, o) = (r.inside, r.outside);
    let data = payload(3000);

    // Out of order: the last fragment before the first is dropped and counted; after its
    // first it is forwarded like it.
    let out = with_id(
        eth(ROUTER_IN_MAC)
            .ipv4(FIXED, REMOTE)
            .udp(5000, 53)
            .payload(&data),
        10,
    );
    let frags = fragment(&out);
    let last = frags.last().expect("fragments").clone();
    let (outcome, _) = r.run(i, &last);
    assert_eq!(outcome, Outcome::Drop, "a last fragment before its first");
    assert_eq!(r.reason(i, Reason::FragmentUnknown), 1);
    let (outcome, _) = r.run(i, &frags[0]);
    assert_eq!(outcome, Outcome::Forward, "the first fragment");
    let (outcome, got) = r.run(i, &last);
    assert_eq!(
        outcome,
        Outcome::Forward,
        "the last fragment after its first"
    );
    assert_eq!(got[L3 + 12..L3 + 16], FIP, "translated as the first");
    assert_eq!(r.reason(i, Reason::FragmentUnknown), 1);

    // The first fragment went to the kernel (the gateway IP itself, no session): so do
    // the later ones, untouched.
    let local = with_id(
        eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, GW)
            .udp(53, 9)
            .payload(&data),
        11,
    );
    let frags = fragment(&local);
    let (outcome, _) = r.run(o, &frags[0]);
    assert_eq!(outcome, Outcome::Pass, "first fragment to the router");
    for f in &frags[1..] {
        let (outcome, got) = r.run(o, f);
        assert_eq!(outcome, Outcome::Pass, "later fragment to the router");
        // The XDP entry's tag in front, where the kernel lets it write one.
        let seen = if entry == Entry::Xdp && router_user::datapath::features::kernel().xdp_meta {
            &got[4..]
        } else {
            &got[..]
        };
        assert_eq!(seen, &f[..], "a passed fragment is untouched");
    }
    assert_eq!(r.reason(o, Reason::LocalDest), 1);
    assert_eq!(r.reason(o, Reason::Fragment), (frags.len() - 1) as u64);

    // A later fragment larger than the egress MTU (1500) cannot follow its first.
    let big = with_id(
        eth(ROUTER_IN_MAC)
            .ipv4(FIXED, REMOTE)
            .udp(5001, 53)
            .payload(&data),
        12,
    );
    let (outcome, _) = r.run(i, &piece(&big, 0, 1000, true));
    assert_eq!(outcome, Outcome::Forward, "a small first fragment");
    let (outcome, _) = r.run(i, &piece(&big, 1000, 1600, true));
    assert_eq!(outcome, Outcome::Drop, "a later fragment over the MTU");
    assert_eq!(r.reason(i, Reason::FragmentUnfit), 1);
}

#[test]
fn later_fragments_follow_their_first_xdp() {
    later_fragments_follow_their_first(Entry::Xdp);
}

#[test]
fn later_fragments_follow_their_first_tc() {
    later_fragments_follow_their_first(Entry::Tc);
}

/// The record table is bounded: after twice its size in new datagrams it holds at most its
/// size, the oldest datagram's later fragment is `fragment_unknown`, the newest's forwarded.
#[test]
fn the_record_table_is_bounded() {
    // The LRU keeps free records in per-CPU lists: which record makes room is the oldest
    // only while every insert comes from one CPU, so the test stays on one.
    router_tests::testrun::stay_on_one_cpu();
    let mut r = Router::new(Entry::Xdp);
    let i = r.inside;
    let data = payload(64);
    let datagram = |id: u16| {
        with_id(
            eth(ROUTER_IN_MAC)
                .ipv4(FIXED, REMOTE)
                .udp(5000, 53)
                .payload(&data),
            id,
        )
    };
    let total = 2 * MAX_FRAGMENT_DATAGRAMS as u16;
    for id in 1..=total {
        let (outcome, _) = r.run(i, &piece(&datagram(id), 0, 40, true));
        assert_eq!(outcome, Outcome::Forward, "first fragment {id}");
    }
    let held = r.dp.sessions().fragments().expect("FRAGMENTS").len();
    assert!(
        held <= MAX_FRAGMENT_DATAGRAMS as usize,
        "{held} records for a table of {MAX_FRAGMENT_DATAGRAMS}"
    );
    let (outcome, _) = r.run(i, &piece(&datagram(1), 40, 32, false));
    assert_eq!(outcome, Outcome::Drop, "the oldest datagram was forgotten");
    assert_eq!(r.reason(i, Reason::FragmentUnknown), 1);
    let (outcome, _) = r.run(i, &piece(&datagram(total), 40, 32, false));
    assert_eq!(
        outcome,
        Outcome::Forward,
        "the newest datagram is remembered"
    );
    assert_eq!(
        r.dp.sessions().flush_fragments().expect("flush") as u64,
        held as u64
    );
    let (outcome, _) = r.run(i, &piece(&datagram(total), 40, 32, false));
    assert_eq!(outcome, Outcome::Drop, "flushed");
}
