//! Packet tests: the real programs run on crafted frames with BPF_PROG_TEST_RUN against
//! known map contents (PKTGEN -> SETUP -> CHECK). Every fixture runs through both entries,
//! XDP and TC, and checks the verdict, the reason counter, and the bytes that come out.

use router_common::{IfaceStats, Reason, iface_flags, iface_role, route_kind, xdp_meta};
use router_tests::{
    fixture::{Routes, iface, neighbor, route, veth_pairs},
    frames::{self, NEXT_HOP_MAC, ROUTER_IN_MAC, ROUTER_OUT_MAC, eth},
    netns::NetnsGuard,
    topo::{ifindex, ip},
};
use router_user::{datapath::Datapath, maps::Rooms as _};

use router_tests::testrun::{self, Entry, Run, XDP_PASS};

const OTHER_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x31];
const SLOW_OUT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x40];
const SLOW_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x41];
/// A distributed router's interface: the gateway MAC every node shares, and this node's
/// DVR MAC, the source of what it forwards there.
const SHARED_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];
const DVR_MAC: [u8; 6] = [0xfa, 0x16, 0x3f, 0, 2, 11];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 2, 6];

/// The router under test: interfaces in a private namespace, maps filled as the controller
/// would fill them.
struct Fixture {
    _ns: NetnsGuard,
    dp: Datapath,
    ingress: u32,
}

impl Fixture {
    fn new() -> Self {
        let ns = NetnsGuard::new();
        veth_pairs(&[
            ("in0", "in1"),
            ("out0", "out1"),
            ("slow0", "slow1"),
            ("dvr0", "dvr1"),
        ]);
        let (ingress, egress, slow) = (ifindex("in0"), ifindex("out0"), ifindex("slow0"));
        let dvr = ifindex("dvr0");
        let mut dp = Datapath::load("packet-test", router_common::DEFAULT_SESSION_ENTRIES)
            .expect("loading the eBPF object");
        dp.ifaces()
            .set(
                ingress,
                iface(ROUTER_IN_MAC, iface_role::INTERNAL, iface_flags::XDP_EGRESS),
            )
            .expect("IFACES");
        dp.ifaces()
            .set(
                egress,
                iface(
                    ROUTER_OUT_MAC,
                    iface_role::EXTERNAL,
                    iface_flags::XDP_EGRESS,
                ),
            )
            .expect("IFACES");
        dp.ifaces()
            .set(slow, iface(SLOW_OUT_MAC, iface_role::INTERNAL, 0))
            .expect("IFACES");
        let mut shared = iface(SHARED_GW_MAC, iface_role::INTERNAL, iface_flags::XDP_EGRESS);
        shared.src_mac = DVR_MAC;
        dp.ifaces().set(dvr, shared).expect("IFACES");
        dp.ifaces().set_xdp_egress(dvr).expect("EGRESS_DEVS");
        dp.ifaces().set_xdp_egress(ingress).expect("EGRESS_DEVS");
        dp.ifaces().set_xdp_egress(egress).expect("EGRESS_DEVS");

        let mut routes = Routes::default();
        let mut add = |addr, len, entry| routes.add(addr, len, entry);
        add(
            [10, 0, 1, 0],
            24,
            route(route_kind::UNICAST, ingress, [0; 4]),
        );
        add([10, 0, 1, 1], 32, route(route_kind::LOCAL, 0, [0; 4]));
        add(
            [198, 18, 0, 0],
            24,
            route(route_kind::UNICAST, egress, [0; 4]),
        );
        add(
            [198, 51, 100, 0],
            24,
            route(route_kind::UNICAST, egress, [198, 18, 0, 1]),
        );
        add(
            [10, 20, 0, 0],
            16,
            route(route_kind::UNICAST, egress, [198, 18, 0, 1]),
        );
        add(
            [10, 20, 5, 0],
            24,
            route(route_kind::UNICAST, egress, [198, 18, 0, 254]),
        );
        add([192, 0, 2, 0], 24, route(route_kind::BLACKHOLE, 0, [0; 4]));
        add([203, 0, 113, 0], 24, route(route_kind::KERNEL, 0, [0; 4]));
        add(
            [100, 64, 0, 0],
            24,
            route(route_kind::UNICAST, slow, [0; 4]),
        );
        add([10, 0, 2, 0], 24, route(route_kind::UNICAST, dvr, [0; 4]));
        dp.routes().sync(&routes.0).expect("ROUTES");

        let neigh = neighbor;
        dp.routes()
            .sync_neighbors(&[
                neigh(egress, [198, 18, 0, 1], NEXT_HOP_MAC),
                neigh(egress, [198, 18, 0, 254], OTHER_HOP_MAC),
                neigh(slow, [100, 64, 0, 9], SLOW_HOP_MAC),
                neigh(dvr, [10, 0, 2, 6], VM2_MAC),
            ])
            .expect("NEIGHBORS");
        Self {
            _ns: ns,
            dp,
            ingress,
        }
    }

    /// Sets the forwarding epoch to 0 behind the controller's back: nothing cached is used.
    fn epoch_zero(&mut self) {
        use aya::maps::Array;
        use router_user::maps::MapSource as _;
        let map = self
            .dp
            .map(router_common::map_names::ROUTE_EPOCH)
            .expect("ROUTE_EPOCH");
        let mut epoch: Array<_, u32> = Array::try_from(map).expect("an array");
        epoch.set(0, 0, 0).expect("writing");
    }

    fn stats(&mut self) -> IfaceStats {
        self.dp
            .ifaces()
            .stats(self.ingress)
            .expect("reading IFACE_STATS")
    }

    fn run(&self, entry: Entry, frame: &[u8]) -> Run {
        testrun::run(&self.dp, entry, self.ingress, frame)
    }

    /// The destination MAC `frame` leaves with, forwarded alike by both entries (`why`
    /// names the step in a failure).
    fn next_hop_mac(&self, frame: &[u8], why: &str) -> [u8; 6] {
        let macs = [Entry::Xdp, Entry::Tc].map(|entry| {
            let run = self.run(entry, frame);
            assert_eq!(run.verdict, entry.redirect(), "{why}: {entry:?}");
            <[u8; 6]>::try_from(&run.frame[..6]).expect("a MAC")
        });
        assert_eq!(macs[0], macs[1], "{why}: both entries");
        macs[0]
    }
}

/// What a fixture expects.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Forwarded with these MACs (dst, src); TTL one less.
    Forward([u8; 6], [u8; 6]),
    /// Forwarded with the kernel resolving the next hop: MACs untouched, TTL one less.
    Resolve,
    /// Handed to the kernel untouched.
    Pass(Reason),
    /// Dropped.
    Drop(Reason),
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    xdp: Expect,
    /// `None` where BPF_PROG_TEST_RUN cannot build an skb from the frame.
    tc: Option<Expect>,
}

fn case(name: &'static str, frame: Vec<u8>, both: Expect) -> Case {
    Case {
        name,
        frame,
        xdp: both,
        tc: Some(both),
    }
}

const VM: [u8; 4] = [10, 0, 1, 5];
/// Behind the next hop 198.18.0.1.
const REMOTE: [u8; 4] = [198, 51, 100, 7];

/// IPv4 from the VM to `dst`, as it reaches the router's internal interface.
fn vm_to(dst: [u8; 4]) -> frames::Ipv4 {
    eth(ROUTER_IN_MAC).ipv4(VM, dst)
}

fn cases() -> Vec<Case> {
    let fwd = Expect::Forward(NEXT_HOP_MAC, ROUTER_OUT_MAC);
    let mut ttl1 = vm_to(REMOTE).ttl(1).udp(40000, 53).payload(b"x");
    let ttl0 = vm_to(REMOTE).ttl(0).udp(40000, 53).payload(b"x");

    let mut options = vm_to(REMOTE).udp(40000, 53).payload(b"payload!");
    // IHL 6 with one word of NOP options inserted after the fixed header.
    options.splice(34..34, [1u8, 1, 1, 1]);
    options[14] = 0x46;
    let tot = u16::from_be_bytes([options[16], options[17]]) + 4;
    options[16..18].copy_from_slice(&tot.to_be_bytes());
    frames::fix_ip_checksum(&mut options);

    let mut more_fragments = vm_to(REMOTE).udp(40000, 53).payload(b"frag");
    more_fragments[20] = 0x20; // MF
    frames::fix_ip_checksum(&mut more_fragments);
    let mut later_fragment = vm_to(REMOTE).udp(40000, 53).payload(b"frag");
    later_fragment[21] = 0x10; // offset 16 * 8 bytes
    frames::fix_ip_checksum(&mut later_fragment);
    // The same, of another datagram (IP id), whose first fragment never came.
    let mut orphan_fragment = later_fragment.clone();
    orphan_fragment[18..20].copy_from_slice(&0x0bad_u16.to_be_bytes());
    frames::fix_ip_checksum(&mut orphan_fragment);

    let mut bad_ihl = vm_to(REMOTE).udp(40000, 53).payload(b"x");
    bad_ihl[14] = 0x44;
    let mut long_total = vm_to(REMOTE).udp(40000, 53).payload(b"x");
    long_total[16..18].copy_from_slice(&600u16.to_be_bytes());
    frames::fix_ip_checksum(&mut long_total);
    let mut bad_checksum = vm_to(REMOTE).udp(40000, 53).payload(b"x");
    bad_checksum[24] ^= 0xff;
    let truncated_ip = vm_to(REMOTE).udp(40000, 53).payload(b"x")[..24].to_vec();
    // IPv4 header announcing 24 bytes: only half a UDP header.
    let mut short_udp = vm_to(REMOTE).udp(40000, 53).payload(b"")[..38].to_vec();
    short_udp[16..18].copy_from_slice(&24u16.to_be_bytes());
    frames::fix_ip_checksum(&mut short_udp);
    let mut short_tcp = vm_to(REMOTE).tcp(40000, 80).seq(1).syn().build()[..44].to_vec();
    short_tcp[16..18].copy_from_slice(&30u16.to_be_bytes());
    frames::fix_ip_checksum(&mut short_tcp);

    let mut vlan = vm_to(REMOTE).udp(40000, 53).payload(b"x");
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
    let mut double_vlan = vlan.clone();
    double_vlan.splice(16..16, [0x81, 0x00, 0x00, 0x65]);
    let mut broadcast_mac = vm_to(REMOTE).udp(40000, 53).payload(b"x");
    broadcast_mac[..6].copy_from_slice(&[0xff; 6]);
    let big = vm_to(REMOTE).udp(40000, 53).payload(&[0u8; 1600]);
    ttl1[22] = 1;

    vec![
        case(
            "udp, route hit",
            vm_to(REMOTE).udp(40000, 53).payload(b"hello"),
            fwd,
        ),
        case(
            "tcp syn, route hit",
            vm_to(REMOTE).tcp(40000, 80).seq(1).syn().build(),
            fwd,
        ),
        case(
            "icmp echo, route hit",
            vm_to(REMOTE).icmp_echo_request(7, 1).payload(b"ping"),
            fwd,
        ),
        case(
            "shorter prefix /16",
            vm_to([10, 20, 9, 9]).udp(40000, 53).payload(b"x"),
            fwd,
        ),
        case(
            "longest prefix /24 wins over /16",
            vm_to([10, 20, 5, 5]).udp(40000, 53).payload(b"x"),
            Expect::Forward(OTHER_HOP_MAC, ROUTER_OUT_MAC),
        ),
        case(
            "route miss",
            vm_to([8, 8, 8, 8]).udp(40000, 53).payload(b"x"),
            Expect::Pass(Reason::NoRoute),
        ),
        // XDP cannot resolve a neighbour; TC redirects with the kernel resolving it.
        Case {
            name: "connected, neighbour unknown",
            frame: vm_to([198, 18, 0, 77]).udp(40000, 53).payload(b"x"),
            xdp: Expect::Pass(Reason::XdpToTc),
            tc: Some(Expect::Resolve),
        },
        case("ttl 1", ttl1, Expect::Pass(Reason::TtlExpired)),
        case("ttl 0", ttl0, Expect::Pass(Reason::TtlExpired)),
        case("ip options", options, Expect::Pass(Reason::IpOptions)),
        // Fragments are forwarded: the first as any packet, a later one as its first was.
        case(
            "first fragment (MF)",
            more_fragments,
            Expect::Forward(NEXT_HOP_MAC, ROUTER_OUT_MAC),
        ),
        case(
            "later fragment (offset), after its first",
            later_fragment,
            Expect::Forward(NEXT_HOP_MAC, ROUTER_OUT_MAC),
        ),
        case(
            "later fragment without its first",
            orphan_fragment,
            Expect::Drop(Reason::FragmentUnknown),
        ),
        case("ihl 4", bad_ihl, Expect::Drop(Reason::MalformedIpv4)),
        case(
            "total length beyond frame",
            long_total,
            Expect::Drop(Reason::MalformedIpv4),
        ),
        // The kernel's skb test run refuses an IPv4 frame shorter than an IPv4 header.
        Case {
            name: "truncated ipv4 header",
            frame: truncated_ip,
            xdp: Expect::Drop(Reason::MalformedIpv4),
            tc: None,
        },
        case(
            "bad ip checksum",
            bad_checksum,
            Expect::Drop(Reason::BadIpChecksum),
        ),
        case(
            "truncated udp header",
            short_udp,
            Expect::Drop(Reason::MalformedL4),
        ),
        case(
            "truncated tcp header",
            short_tcp,
            Expect::Drop(Reason::MalformedL4),
        ),
        case("one vlan tag", vlan, Expect::Pass(Reason::Vlan)),
        case("two vlan tags", double_vlan, Expect::Pass(Reason::OtherL3)),
        case(
            "ipv6",
            eth(ROUTER_IN_MAC).raw(0x86dd, &[0x60; 40]),
            Expect::Pass(Reason::Ipv6),
        ),
        case(
            "arp",
            eth(ROUTER_IN_MAC).raw(0x0806, &[0; 28]),
            Expect::Pass(Reason::Arp),
        ),
        case(
            "not the router's mac",
            broadcast_mac,
            Expect::Pass(Reason::NotRouterMac),
        ),
        case(
            "to the router itself",
            vm_to([10, 0, 1, 1]).udp(40000, 53).payload(b"x"),
            Expect::Pass(Reason::LocalDest),
        ),
        case(
            "blackhole route",
            vm_to([192, 0, 2, 5]).udp(40000, 53).payload(b"x"),
            Expect::Drop(Reason::Blackhole),
        ),
        case(
            "unreachable route",
            vm_to([203, 0, 113, 1]).udp(40000, 53).payload(b"x"),
            Expect::Pass(Reason::KernelRoute),
        ),
        case(
            "bigger than egress mtu",
            big,
            Expect::Pass(Reason::FragNeeded),
        ),
        case(
            "multicast destination",
            vm_to([224, 0, 0, 5]).udp(40000, 53).payload(b"x"),
            Expect::Pass(Reason::SpecialAddress),
        ),
        case(
            "zero source",
            eth(ROUTER_IN_MAC)
                .ipv4([0, 0, 0, 0], REMOTE)
                .udp(40000, 53)
                .payload(b"x"),
            Expect::Pass(Reason::SpecialAddress),
        ),
        case(
            "a distributed router's network: sent from the node's DVR MAC, not the shared one",
            vm_to([10, 0, 2, 6]).udp(40000, 53).payload(b"x"),
            Expect::Forward(VM2_MAC, DVR_MAC),
        ),
        Case {
            name: "egress without XDP delivery: XDP hands it to TC, TC forwards",
            frame: vm_to([100, 64, 0, 9]).udp(40000, 53).payload(b"x"),
            xdp: Expect::Pass(Reason::XdpToTc),
            tc: Some(Expect::Forward(SLOW_HOP_MAC, SLOW_OUT_MAC)),
        },
    ]
}

fn check(entry: Entry, case: &Case, expect: Expect, verdict: u32, out: &[u8]) {
    let name = format!("{}: {}", entry.name(), case.name);
    let (redirect, pass, drop) = (entry.redirect(), entry.pass(), entry.drop());
    match expect {
        Expect::Forward(dst, src) => {
            assert_eq!(verdict, redirect, "{name}: verdict");
            let got = frames::parse(out);
            let sent = frames::parse(&case.frame);
            assert_eq!(got.addresses.dst_mac, dst, "{name}: destination MAC");
            assert_eq!(got.src_mac, src, "{name}: source MAC");
            assert_eq!(got.ttl, sent.ttl - 1, "{name}: TTL");
            assert!(
                got.ip_checksum_ok,
                "{name}: IPv4 checksum after TTL decrement"
            );
            assert!(got.l4_checksum_ok, "{name}: L4 checksum");
            assert_eq!(
                out[14..22],
                case.frame[14..22],
                "{name}: IPv4 header before TTL"
            );
            assert_eq!(out[26..], case.frame[26..], "{name}: addresses and payload");
        }
        Expect::Pass(reason) => {
            assert_eq!(verdict, pass, "{name}: verdict");
            let tags = router_user::datapath::features::kernel().xdp_meta;
            let frame = if entry == Entry::Xdp && tags {
                // The XDP entry leaves a tag in the metadata area for the TC entry, where the
                // kernel lets it.
                let tag = if reason == Reason::XdpToTc {
                    xdp_meta::TC_FORWARD
                } else {
                    xdp_meta::DONE
                };
                assert_eq!(
                    out.len(),
                    case.frame.len() + xdp_meta::LEN,
                    "{name}: metadata"
                );
                assert_eq!(out[..4], tag.to_ne_bytes(), "{name}: metadata tag");
                &out[xdp_meta::LEN..]
            } else {
                out
            };
            assert_eq!(
                frame,
                &case.frame[..],
                "{name}: a passed frame must be untouched"
            );
        }
        Expect::Resolve => {
            assert_eq!(verdict, redirect, "{name}: verdict");
            let got = frames::parse(out);
            assert_eq!(
                out[..12],
                case.frame[..12],
                "{name}: MACs left to the kernel"
            );
            assert_eq!(got.ttl, frames::parse(&case.frame).ttl - 1, "{name}: TTL");
            assert!(got.ip_checksum_ok, "{name}: IPv4 checksum");
        }
        Expect::Drop(_) => assert_eq!(verdict, drop, "{name}: verdict"),
    }
}

fn run_all(entry: Entry) {
    let mut f = Fixture::new();
    for case in cases() {
        let before = f.stats();
        let expect = match (entry, case.tc) {
            (Entry::Xdp, _) => case.xdp,
            (Entry::Tc, Some(tc)) => tc,
            (Entry::Tc, None) => continue,
        };
        let run = f.run(entry, &case.frame);
        check(entry, &case, expect, run.verdict, &run.frame);
        let after = f.stats();
        let name = format!("{}: {}", entry.name(), case.name);
        let len = case.frame.len() as u64;
        match expect {
            Expect::Resolve => {
                assert_eq!(
                    after.fwd_packets,
                    before.fwd_packets + 1,
                    "{name}: fwd_packets"
                );
                let r = Reason::NoNeighbor as usize;
                assert_eq!(
                    after.reasons[r],
                    before.reasons[r] + 1,
                    "{name}: no_neighbor"
                );
            }
            Expect::Forward(..) => {
                assert_eq!(
                    after.fwd_packets,
                    before.fwd_packets + 1,
                    "{name}: fwd_packets"
                );
                assert_eq!(after.fwd_bytes, before.fwd_bytes + len, "{name}: fwd_bytes");
            }
            Expect::Pass(r) => {
                assert_eq!(
                    after.reasons[r as usize],
                    before.reasons[r as usize] + 1,
                    "{name}: reason {r:?}"
                );
                let counted = u64::from(r != Reason::XdpToTc);
                assert_eq!(
                    after.pass_packets,
                    before.pass_packets + counted,
                    "{name}: pass_packets"
                );
                assert_eq!(
                    after.pass_bytes,
                    before.pass_bytes + counted * len,
                    "{name}: pass_bytes"
                );
            }
            Expect::Drop(r) => {
                assert_eq!(
                    after.reasons[r as usize],
                    before.reasons[r as usize] + 1,
                    "{name}: reason {r:?}"
                );
                assert_eq!(
                    after.drop_packets,
                    before.drop_packets + 1,
                    "{name}: drop_packets"
                );
                assert_eq!(
                    after.drop_bytes,
                    before.drop_bytes + len,
                    "{name}: drop_bytes"
                );
            }
        }
    }
}

#[test]
fn xdp_entry_fixtures() {
    run_all(Entry::Xdp);
}

#[test]
fn tc_entry_fixtures() {
    run_all(Entry::Tc);
}

#[test]
fn unknown_ingress_is_passed_and_not_counted_elsewhere() {
    let mut f = Fixture::new();
    ip(&[
        "link", "add", "stray0", "type", "veth", "peer", "name", "stray1",
    ]);
    let stray = ifindex("stray0");
    let frame = vm_to(REMOTE).udp(40000, 53).payload(b"x");
    let before = f.stats();
    let run = testrun::run(&f.dp, Entry::Xdp, stray, &frame);
    assert_eq!(run.verdict, XDP_PASS);
    assert_eq!(
        f.stats(),
        before,
        "a foreign interface must not touch our counters"
    );
}

/// A forwarded packet is counted in its ingress interface's slot (`IFACE_FORWARDED`) and no
/// other; when the interface goes, the next new one takes its slot with the count zeroed.
#[test]
fn forwarded_counts_follow_the_ingress_slot_and_a_freed_slot_starts_at_zero() {
    let mut f = Fixture::new();
    let egress = ifindex("out0");
    let frame = vm_to(REMOTE).udp(40000, 53).payload(b"x");
    let (before, out_before) = (f.stats(), f.dp.ifaces().stats(egress).expect("stats"));
    for entry in [Entry::Xdp, Entry::Tc] {
        assert_eq!(f.run(entry, &frame).verdict, entry.redirect(), "{entry:?}");
    }
    let after = f.stats();
    assert_eq!(after.fwd_packets, before.fwd_packets + 2);
    assert_eq!(after.fwd_bytes, before.fwd_bytes + 2 * frame.len() as u64);
    let out_after = f.dp.ifaces().stats(egress).expect("stats");
    assert_eq!(
        out_after.fwd_packets, out_before.fwd_packets,
        "the egress's slot"
    );

    // The ingress goes and a new interface comes: it takes the freed slot, at zero.
    let current = f.dp.ifaces().read().expect("IFACES");
    let slot = current.entries[&f.ingress].slot;
    let mut wanted = current.clone();
    wanted.entries.remove(&f.ingress);
    let changes = router_user::maps::ifaces::IfaceChanges::between(&current, &wanted);
    f.dp.ifaces().write(&changes).expect("removing");
    ip(&[
        "link", "add", "new0", "type", "veth", "peer", "name", "new1",
    ]);
    let new = ifindex("new0");
    let entry = iface(ROUTER_IN_MAC, iface_role::INTERNAL, iface_flags::XDP_EGRESS);
    f.dp.ifaces().set(new, entry).expect("IFACES");
    let entries = f.dp.ifaces().entries().expect("IFACES");
    assert_eq!(entries[&new].slot, slot, "the freed slot");
    assert_eq!(f.dp.ifaces().stats(new).expect("stats").fwd_packets, 0);
    let run = testrun::run(&f.dp, Entry::Tc, new, &frame);
    assert_eq!(run.verdict, Entry::Tc.redirect());
    let counted = f.dp.ifaces().stats(new).expect("stats");
    assert_eq!(
        (counted.fwd_packets, counted.fwd_bytes),
        (1, frame.len() as u64)
    );
}

/// The programs take an interface's settings from its copy at its ifindex
/// (`IFACES_BY_INDEX`) while the copy is valid, and from `IFACES` when it is not (being
/// written) or is another interface's; the controller's read-back mends a copy that went
/// astray.
#[test]
fn interface_copies_by_ifindex_are_used_only_while_valid() {
    use router_common::IfaceIndexed;
    use router_user::maps::{EntryDiff, ifaces::IfaceChanges};
    let mut f = Fixture::new();
    let egress = ifindex("out0");
    let frame = vm_to(REMOTE).udp(40000, 53).payload(b"x");
    let current = f.dp.ifaces().read().expect("interfaces");
    assert_eq!(
        current.indexed,
        router_user::maps::ifaces::indexed(&current.entries),
        "every interface copied"
    );
    let copy = current.indexed[&egress];
    let forwards = |f: &mut Fixture, why: &str| {
        for entry in [Entry::Xdp, Entry::Tc] {
            assert_eq!(
                f.run(entry, &frame).verdict,
                entry.redirect(),
                "{why}: {entry:?}"
            );
        }
    };
    forwards(&mut f, "the copy as written");
    // A copy whose MTU the packet exceeds: what the programs read is the copy.
    let small = IfaceIndexed {
        entry: router_common::IfaceEntry {
            mtu: 20,
            ..copy.entry
        },
        ..copy
    };
    let write = |f: &mut Fixture, set: Vec<(u32, IfaceIndexed)>, remove: Vec<u32>| {
        let live = f.dp.ifaces().indexed().expect("copies");
        let changes = IfaceChanges {
            indexed_live: live.into_iter().filter(|(i, _)| *i == egress).collect(),
            indexed: EntryDiff { set, remove },
            ..Default::default()
        };
        f.dp.ifaces().write(&changes).expect("writing the copy");
    };
    write(&mut f, vec![(egress, small)], vec![]);
    for entry in [Entry::Xdp, Entry::Tc] {
        assert_ne!(f.run(entry, &frame).verdict, entry.redirect(), "{entry:?}");
    }
    // Made invalid (its settings left): the programs go to `IFACES`.
    write(&mut f, vec![], vec![egress]);
    assert!(
        f.dp.ifaces()
            .indexed()
            .expect("copies")
            .get(&egress)
            .is_none()
    );
    forwards(&mut f, "an invalid copy");
    // Another interface's entry at this index is not this interface's.
    let stray = IfaceIndexed {
        ifindex: f.ingress,
        ..small
    };
    write(&mut f, vec![(egress, stray)], vec![]);
    forwards(&mut f, "a stray copy");
    // Read back against what `IFACES` holds, the stray is put right.
    let current = f.dp.ifaces().read().expect("interfaces");
    let mut wanted = current.clone();
    wanted.indexed = router_user::maps::ifaces::indexed(&current.entries);
    let mend = IfaceChanges::between(&current, &wanted);
    assert_eq!(mend.indexed.set, vec![(egress, copy)], "the stray mended");
    f.dp.ifaces().write(&mend).expect("mending");
    assert_eq!(f.dp.ifaces().indexed().expect("copies")[&egress], copy);
    forwards(&mut f, "the mended copy");
}

/// The programs take a next hop's MAC from its copy in `NEIGHBOR_COPIES` while the copy
/// is valid and the next hop's own, and from `NEIGHBORS` otherwise; the controller's
/// neighbour events keep the copy with the neighbour, and a full sync mends a stray.
#[test]
fn neighbour_copies_are_used_only_while_valid_and_their_own() {
    use router_common::{NeighborCopy, NeighborEntry, NeighborKey, map_names::NEIGHBOR_COPIES};
    use router_user::maps::copies;
    let mut f = Fixture::new();
    let egress = ifindex("out0");
    let key = NeighborKey {
        ifindex: egress,
        addr: [198, 18, 0, 1],
    };
    let slot = key.copy_slot();
    // Each probe is a flow of its own: the copies are written here behind the controller's
    // back, which ends no flow's cached decision (`FLOW_CACHE`).
    let port = std::cell::Cell::new(40000u16);
    let next_hop = |f: &mut Fixture, why: &str| {
        port.set(port.get() + 1);
        f.next_hop_mac(&vm_to(REMOTE).udp(port.get(), 53).payload(b"x"), why)
    };
    let copy = f.dp.routes().neighbor_copies().expect("copies")[&slot];
    assert_eq!(copy.key, key, "the next hop has its slot");
    assert_eq!(next_hop(&mut f, "as written"), NEXT_HOP_MAC);
    let with_mac = |key, mac| NeighborCopy {
        key,
        entry: NeighborEntry { mac, _pad: [0; 2] },
    };

    // A copy with another MAC than the hash's: the programs read the copy.
    let other = with_mac(key, OTHER_HOP_MAC);
    copies::set(
        &mut f.dp,
        NEIGHBOR_COPIES,
        &[(slot, copy)],
        &[(slot, other)],
    )
    .expect("writing the copy");
    assert_eq!(next_hop(&mut f, "the copy"), OTHER_HOP_MAC);
    // Made invalid: the hash's.
    copies::remove(&mut f.dp, NEIGHBOR_COPIES, &[(slot, other)]).expect("removing");
    assert_eq!(next_hop(&mut f, "an invalid copy"), NEXT_HOP_MAC);
    // Another neighbour's copy in this slot: the hash's.
    let stranger = with_mac(
        NeighborKey {
            ifindex: egress,
            addr: [198, 18, 0, 99],
        },
        OTHER_HOP_MAC,
    );
    copies::set(&mut f.dp, NEIGHBOR_COPIES, &[], &[(slot, stranger)]).expect("a stray");
    assert_eq!(next_hop(&mut f, "a stray copy"), NEXT_HOP_MAC);
    // A full sync mends the slot.
    let known: Vec<_> =
        f.dp.routes()
            .neighbors()
            .expect("NEIGHBORS")
            .into_iter()
            .collect();
    f.dp.routes().sync_neighbors(&known).expect("syncing");
    assert_eq!(
        f.dp.routes().neighbor_copies().expect("copies")[&slot],
        copy
    );

    // The neighbour's new MAC, as an event says: the copy follows.
    let moved = NeighborEntry {
        mac: SLOW_HOP_MAC,
        _pad: [0; 2],
    };
    f.dp.routes()
        .set_neighbor(key, Some(moved))
        .expect("a new MAC");
    assert_eq!(
        f.dp.routes().neighbor_copies().expect("copies")[&slot].entry,
        moved
    );
    assert_eq!(next_hop(&mut f, "a new MAC"), SLOW_HOP_MAC);
    // Gone: its copy goes with it.
    f.dp.routes().set_neighbor(key, None).expect("gone");
    let left: NeighborCopy = copies::get(&mut f.dp, NEIGHBOR_COPIES, slot).expect("the slot");
    assert_eq!(left.key.ifindex, 0, "made invalid");
}

/// Each CPU caches its route lookups (`ROUTE_CACHE`) until the routes' epoch moves on: a
/// route the controller changes takes effect with the next packet, a trie changed behind the
/// controller's back does not (the cache answers), and at epoch 0 every lookup goes to the
/// trie.
#[test]
fn cached_routes_end_when_the_routes_change() {
    use aya::maps::{LpmTrie, lpm_trie::Key};
    use router_common::{RouteEntry, RouteKey, TABLE_MAIN, map_names};
    use router_user::maps::MapSource as _;
    // The cache is per CPU: the runs stay on one.
    testrun::stay_on_one_cpu();
    let mut f = Fixture::new();
    let frame = vm_to(REMOTE).udp(40000, 53).payload(b"x");
    let next_hop = |f: &mut Fixture, why: &str| f.next_hop_mac(&frame, why);
    let slot = (
        RouteKey::TABLE_BITS + 24,
        RouteKey::new(TABLE_MAIN, [198, 51, 100, 0]),
    );
    let via = |f: &mut Fixture, gateway: [u8; 4]| {
        let mut routes = f.dp.routes().all().expect("ROUTES");
        let route = routes.get_mut(&slot).expect("the remote's route");
        *route = RouteEntry { gateway, ..*route };
        routes
    };
    let epoch = f.dp.routes().epoch().expect("ROUTE_EPOCH");
    assert_ne!(epoch, 0, "the routes' first write starts an epoch");
    assert_eq!(next_hop(&mut f, "cached"), NEXT_HOP_MAC);
    assert_eq!(next_hop(&mut f, "from the cache"), NEXT_HOP_MAC);

    // The controller moves the route to the other next hop: the next packet follows it.
    let moved = via(&mut f, [198, 18, 0, 254]);
    assert_eq!(
        f.dp.routes().sync(&moved).expect("ROUTES"),
        2,
        "the route and the epoch"
    );
    assert_ne!(f.dp.routes().epoch().expect("ROUTE_EPOCH"), epoch);
    assert_eq!(next_hop(&mut f, "after the change"), OTHER_HOP_MAC);

    // The trie written behind the controller's back (no new epoch): the cache answers.
    let back = via(&mut f, [198, 18, 0, 1])[&slot];
    {
        let mut trie: LpmTrie<_, RouteKey, RouteEntry> =
            LpmTrie::try_from(f.dp.map(map_names::ROUTES).expect("ROUTES")).expect("a trie");
        trie.insert(&Key::new(slot.0, slot.1), back, 0)
            .expect("writing");
    }
    assert_eq!(next_hop(&mut f, "cached, trie changed"), OTHER_HOP_MAC);
    // At epoch 0 nothing cached is used: the trie's answer.
    f.epoch_zero();
    assert_eq!(next_hop(&mut f, "at epoch 0"), NEXT_HOP_MAC);
}

/// Each CPU caches the whole decision of a flow it forwarded without a session
/// (`FLOW_CACHE`), and sends the flow's later packets from it, counted as the stages count
/// them: a neighbour changed behind the controller's back keeps its old MAC for the cached
/// flow (the cache answers); at epoch 0 nothing cached is used; every change the controller
/// makes (a neighbour, a floating IP, an interface's MTU, the firewall) takes effect with
/// the next packet; and what is checked of each packet (TTL, the IPv4 checksum, the
/// router's MAC, the HA role) is checked on a hit too.
#[test]
fn cached_flows_end_when_what_decided_them_changes() {
    use aya::maps::HashMap;
    use router_common::{
        HaState, NeighborCopy, NeighborEntry, NeighborKey, fw_flags, ha_role, map_names,
    };
    use router_user::maps::{MapSource as _, copies, policy::PolicyTables};
    // The cache is per CPU: the runs stay on one.
    testrun::stay_on_one_cpu();
    let mut f = Fixture::new();
    let egress = ifindex("out0");
    let frame = vm_to(REMOTE).udp(40000, 53).payload(b"x");
    let next_hop = |f: &mut Fixture, why: &str| f.next_hop_mac(&frame, why);
    let refused = |f: &mut Fixture, frame: &[u8], reason: Reason, why: &str| {
        for entry in [Entry::Xdp, Entry::Tc] {
            // The flow's decision is cached first.
            assert_eq!(
                f.run(entry, &vm_to(REMOTE).udp(40000, 53).payload(b"x"))
                    .verdict,
                entry.redirect(),
                "{why}: cached"
            );
            let before = f.stats().reasons[reason as usize];
            assert_ne!(
                f.run(entry, frame).verdict,
                entry.redirect(),
                "{why}: {entry:?}"
            );
            assert_eq!(
                f.stats().reasons[reason as usize],
                before + 1,
                "{why}: {entry:?} counts {reason:?}"
            );
        }
    };

    let before = f.stats();
    assert_eq!(next_hop(&mut f, "decided"), NEXT_HOP_MAC);
    assert_eq!(next_hop(&mut f, "from the cache"), NEXT_HOP_MAC);
    let after = f.stats();
    assert_eq!(
        after.fwd_packets,
        before.fwd_packets + 4,
        "every packet counted"
    );
    assert_eq!(after.fwd_bytes, before.fwd_bytes + 4 * frame.len() as u64);

    // The neighbour's new MAC, through the controller: the next packet takes it.
    let key = NeighborKey {
        ifindex: egress,
        addr: [198, 18, 0, 1],
    };
    let with_mac = |mac| NeighborEntry { mac, _pad: [0; 2] };
    f.dp.routes()
        .set_neighbor(key, Some(with_mac(OTHER_HOP_MAC)))
        .expect("a new MAC");
    assert_eq!(next_hop(&mut f, "a new MAC"), OTHER_HOP_MAC);
    assert_eq!(next_hop(&mut f, "the new MAC, cached"), OTHER_HOP_MAC);

    // The old MAC back behind the controller's back (no new epoch): the cache answers.
    let slot = key.copy_slot();
    let live: NeighborCopy =
        copies::get(&mut f.dp, map_names::NEIGHBOR_COPIES, slot).expect("the copy");
    let back = NeighborCopy {
        key,
        entry: with_mac(NEXT_HOP_MAC),
    };
    copies::set(
        &mut f.dp,
        map_names::NEIGHBOR_COPIES,
        &[(slot, live)],
        &[(slot, back)],
    )
    .expect("writing the copy");
    {
        let mut table: HashMap<_, NeighborKey, NeighborEntry> =
            HashMap::try_from(f.dp.map(map_names::NEIGHBORS).expect("NEIGHBORS")).expect("a hash");
        table
            .insert(key, with_mac(NEXT_HOP_MAC), 0)
            .expect("writing");
    }
    assert_eq!(next_hop(&mut f, "cached, neighbour changed"), OTHER_HOP_MAC);
    // At epoch 0 nothing cached is used: the tables' answer.
    f.epoch_zero();
    assert_eq!(next_hop(&mut f, "at epoch 0"), NEXT_HOP_MAC);

    // A floating IP for the VM (which also starts a new epoch): the flow leaves from it,
    // and the cached packets count against it as the first did.
    const FIP: [u8; 4] = [198, 18, 0, 50];
    f.dp.nat().add_floating_ip(FIP, VM).expect("a floating IP");
    assert_ne!(f.dp.routes().epoch().expect("ROUTE_EPOCH"), 0);
    for why in ["translated", "translated, from the cache"] {
        for entry in [Entry::Xdp, Entry::Tc] {
            let run = f.run(entry, &frame);
            assert_eq!(run.verdict, entry.redirect(), "{why}: {entry:?}");
            let out = frames::parse(&run.frame);
            assert_eq!(out.addresses.src, FIP, "{why}: {entry:?}");
            assert!(
                out.ip_checksum_ok && out.l4_checksum_ok,
                "{why}: {entry:?} checksums"
            );
        }
    }
    let counted = f.dp.nat().floating_ip_counters(FIP).expect("FIP_STATS");
    assert_eq!(
        counted.out_packets, 4,
        "every packet counted against the floating IP"
    );

    // What is checked of each packet is checked on a hit too.
    refused(
        &mut f,
        &vm_to(REMOTE).ttl(1).udp(40000, 53).payload(b"x"),
        Reason::TtlExpired,
        "TTL 1",
    );
    let mut broken = frame.clone();
    broken[24] ^= 0xff;
    refused(
        &mut f,
        &broken,
        Reason::BadIpChecksum,
        "a wrong IPv4 checksum",
    );
    let mut elsewhere = frame.clone();
    elsewhere[..6].copy_from_slice(&OTHER_HOP_MAC);
    refused(&mut f, &elsewhere, Reason::NotRouterMac, "to another MAC");
    f.dp.ha()
        .set(HaState {
            role: ha_role::STANDBY,
            ..HaState::default()
        })
        .expect("HA");
    refused_uncached(&mut f, &frame, Reason::Standby, "a standby");
    f.dp.ha().set(HaState::default()).expect("HA");

    // The egress's MTU below the packet's size: handed to the kernel.
    let mut small = iface(
        ROUTER_OUT_MAC,
        iface_role::EXTERNAL,
        iface_flags::XDP_EGRESS,
    );
    small.mtu = 28;
    f.dp.ifaces().set(egress, small).expect("IFACES");
    refused_uncached(&mut f, &frame, Reason::FragNeeded, "over the MTU");
    f.dp.ifaces()
        .set(
            egress,
            iface(
                ROUTER_OUT_MAC,
                iface_role::EXTERNAL,
                iface_flags::XDP_EGRESS,
            ),
        )
        .expect("IFACES");
    assert_eq!(next_hop(&mut f, "the MTU back"), NEXT_HOP_MAC);

    // The firewall on, denying by default: the flow is dropped.
    let firewall = PolicyTables {
        fw_flags: fw_flags::ENABLED,
        ..PolicyTables::default()
    };
    f.dp.policy().sync_rules(&firewall).expect("the firewall");
    refused_uncached(&mut f, &frame, Reason::FwDefaultDeny, "the firewall");
}

/// An entry of the current epoch keeps its slot against the other flows that hash to it for
/// about a second: a flow's entry outlives 2,000 other flows through the same CPU (which
/// fill the other slots), and once it is older the next flow that misses in its slot takes
/// it.
#[test]
fn a_cached_flow_keeps_its_slot_against_other_flows_for_a_second() {
    // The cache is per CPU: the runs stay on one, whose entries are read.
    testrun::stay_on_one_cpu();
    let f = Fixture::new();
    let send = |sport: u16| {
        let frame = vm_to(REMOTE).udp(sport, 53).payload(b"x");
        assert_eq!(
            f.run(Entry::Xdp, &frame).verdict,
            Entry::Xdp.redirect(),
            "{sport}"
        );
    };
    let live = || -> Vec<router_common::FlowCached> {
        flow_cache(&f.dp)
            .into_iter()
            .filter(|e| e.epoch != 0 && e.xdp == 1)
            .collect()
    };
    let held = || {
        live()
            .iter()
            .any(|e| e.ports[..2] == 40000u16.to_be_bytes()[..])
    };
    send(40000);
    assert!(held(), "cached");
    (41000..43000).for_each(send);
    assert!(held(), "kept against 2,000 other flows");
    assert!(
        live().len() > 100,
        "the others fill the other slots: {}",
        live().len()
    );
    std::thread::sleep(std::time::Duration::from_millis(1200));
    (41000..43000).for_each(send);
    assert!(!held(), "a second later, another flow has its slot");
}

/// CPU 0's entries of the programs' flow cache (`FLOW_CACHE`, which is not pinned: found
/// through the XDP program's maps).
fn flow_cache(dp: &Datapath) -> Vec<router_common::FlowCached> {
    use aya::maps::{Map, MapData, MapInfo, PerCpuArray};
    let ids = dp
        .xdp()
        .expect("the XDP program")
        .info()
        .and_then(|i| i.map_ids())
        .ok()
        .flatten()
        .unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|id| MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some("FLOW_CACHE")))
        .expect("the XDP program holds FLOW_CACHE");
    let data = MapData::from_id(id).expect("opening FLOW_CACHE");
    let map: PerCpuArray<_, router_common::FlowCached> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("a per-CPU array");
    (0..router_common::FLOW_CACHE_SLOTS)
        .map(|slot| map.get(&slot, 0).expect("a slot")[0])
        .collect()
}

/// Runs `frame` through both entries as it is: neither forwards it, and each counts it
/// under `reason`.
fn refused_uncached(f: &mut Fixture, frame: &[u8], reason: Reason, why: &str) {
    for entry in [Entry::Xdp, Entry::Tc] {
        let before = f.stats().reasons[reason as usize];
        assert_ne!(
            f.run(entry, frame).verdict,
            entry.redirect(),
            "{why}: {entry:?}"
        );
        assert_eq!(
            f.stats().reasons[reason as usize],
            before + 1,
            "{why}: {entry:?} counts {reason:?}"
        );
    }
}

/// Where the kernel refuses the XDP entry its tags, the TC entry behind it decides again
/// what XDP passed: the XDP entry leaves such a pass uncounted and the TC entry counts it;
/// what XDP hands over to be forwarded, XDP counts as `xdp_to_tc` and TC as the forward.
/// Each packet is counted once.
#[test]
fn untagged_xdp_passes_are_counted_once() {
    let mut f = Fixture::new();
    let local = vm_to([10, 0, 1, 1]).udp(40000, 53).payload(b"x");
    if router_user::datapath::features::kernel().xdp_meta {
        // Tagged: the TC entry passes a `DONE` frame untouched (see `xdp_entry_fixtures`).
        let run = router_user::testrun::run_xdp(f.dp.xdp().expect("XDP"), f.ingress, &local, 1)
            .expect("run");
        assert_eq!(run.frame.len(), local.len() + xdp_meta::LEN, "tagged");
        return;
    }
    let before = f.stats();
    let run =
        router_user::testrun::run_xdp(f.dp.xdp().expect("XDP"), f.ingress, &local, 1).expect("run");
    assert_eq!(run.verdict, XDP_PASS);
    assert_eq!(run.frame, local, "untagged and untouched");
    assert_eq!(f.stats(), before, "the XDP entry leaves the pass to TC");
    let tc = router_user::testrun::run_tc(f.dp.tc(), f.ingress, &run.frame, 1).expect("run");
    assert_eq!(tc.verdict, testrun::TC_ACT_OK);
    let after = f.stats();
    let r = Reason::LocalDest as usize;
    assert_eq!(after.pass_packets, before.pass_packets + 1, "one pass");
    assert_eq!(after.reasons[r], before.reasons[r] + 1, "one local_dest");

    // Handed over to be forwarded (the egress takes no XDP frames): XDP counts the
    // hand-over, the TC entry the forward.
    let slow = vm_to([100, 64, 0, 9]).udp(40000, 53).payload(b"x");
    let run =
        router_user::testrun::run_xdp(f.dp.xdp().expect("XDP"), f.ingress, &slow, 1).expect("run");
    assert_eq!(run.verdict, XDP_PASS);
    let handed = f.stats();
    let h = Reason::XdpToTc as usize;
    assert_eq!(handed.reasons[h], after.reasons[h] + 1, "one xdp_to_tc");
    assert_eq!(handed.pass_packets, after.pass_packets, "no pass");
    let tc = router_user::testrun::run_tc(f.dp.tc(), f.ingress, &run.frame, 1).expect("run");
    assert_eq!(tc.verdict, testrun::TC_ACT_REDIRECT);
    assert_eq!(f.stats().fwd_packets, handed.fwd_packets + 1, "one forward");

    // The harness's XDP run does as the kernel would: the pass counted once, by TC.
    let before = f.stats();
    assert_eq!(f.run(Entry::Xdp, &local).verdict, XDP_PASS);
    assert_eq!(
        f.stats().pass_packets,
        before.pass_packets + 1,
        "counted once"
    );
}
