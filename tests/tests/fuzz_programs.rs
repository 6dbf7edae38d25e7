//! Random frames through both real program entries (BPF_PROG_TEST_RUN): the verifier
//! accepted the programs, this checks what it cannot, that no frame makes them misbehave.
//!
//! 20,000 frames per entry from a seeded PRNG (the seed is printed; `FUZZ_SEED=n` replays
//! one run): purely random bytes, and valid Ethernet/IPv4/TCP/UDP/ICMP frames (ICMP errors
//! about live sessions, ARP, VLAN) built by etherparse towards the router's floating IPs,
//! SNAT gateway, VMs and the outside, then mutated: byte flips, truncations, corrupted
//! length fields (with the IPv4 checksum fixed up half of the time, so the corruption gets
//! past the checksum check). For every frame:
//!
//! - the return code is one the entry is expected to give (never `XDP_ABORTED`);
//! - the interface counters account for it exactly once (forwarded, passed or dropped, as
//!   the return code says; under XDP a hand-off to TC bumps only its reason);
//! - a frame handed to the kernel or dropped leaves the program unchanged.
//!
//! The router is `nat_packet`'s: `in0` internal 10.0.1.0/24, `out0` external
//! 198.18.0.0/24 (gateway IP .2, default route via .1), floating IPs .10/.11, SNAT on.

use std::time::{Duration, Instant};

use etherparse::{Icmpv4Type, icmpv4::TimeExceededCode};
use router_common::{IfaceStats, Reason, iface_flags, iface_role, route_kind, xdp_meta};
use router_tests::{
    fixture::{Routes, iface, neighbor, route, snat_gateway, veth_pairs},
    frames::{BROADCAST_MAC, ROUTER_IN_MAC, ROUTER_OUT_MAC, addresses, eth, ipv4},
    netns::NetnsGuard,
    testrun::{
        self, Entry, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_ABORTED, XDP_DROP, XDP_PASS,
        XDP_REDIRECT,
    },
    topo::ifindex,
};
use router_user::{datapath::Datapath, maps::Rooms as _};

const FRAMES: usize = 20_000;

const GW: [u8; 4] = [198, 18, 0, 2];
const UPSTREAM: [u8; 4] = [198, 18, 0, 1];
const FIP: [u8; 4] = [198, 18, 0, 10];
const FIXED: [u8; 4] = [10, 0, 1, 5];
const FIP2: [u8; 4] = [198, 18, 0, 11];
const FIXED2: [u8; 4] = [10, 0, 1, 9];
const VM3: [u8; 4] = [10, 0, 1, 6];
/// On the internal subnet, no neighbour entry: XDP hands to TC, TC resolves.
const UNRESOLVED: [u8; 4] = [10, 0, 1, 77];
const REMOTE: [u8; 4] = [203, 0, 113, 9];
const METADATA: [u8; 4] = [169, 254, 169, 254];
const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x55];
const UPSTREAM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];

/// xorshift64*: small, seeded, good enough to pick bytes and branches.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

struct Router {
    _ns: NetnsGuard,
    dp: Datapath,
    inside: u32,
    outside: u32,
}

impl Router {
    fn new() -> Self {
        let ns = NetnsGuard::new();
        veth_pairs(&[("in0", "in1"), ("out0", "out1")]);
        let (inside, outside) = (ifindex("in0"), ifindex("out0"));
        let mut dp = Datapath::load("fuzz-test", 4096).expect("loading");
        let entry = |mac, role| iface(mac, role, iface_flags::XDP_EGRESS);
        dp.ifaces()
            .set(inside, entry(ROUTER_IN_MAC, iface_role::INTERNAL))
            .expect("IFACES");
        dp.ifaces()
            .set(outside, entry(ROUTER_OUT_MAC, iface_role::EXTERNAL))
            .expect("IFACES");
        dp.ifaces().set_xdp_egress(inside).expect("EGRESS_DEVS");
        dp.ifaces().set_xdp_egress(outside).expect("EGRESS_DEVS");
        let mut routes = Routes::default();
        routes.add(
            [10, 0, 1, 0],
            24,
            route(route_kind::UNICAST, inside, [0; 4]),
        );
        routes.add([10, 0, 1, 1], 32, route(route_kind::LOCAL, 0, [0; 4]));
        routes.add(
            [198, 18, 0, 0],
            24,
            route(route_kind::UNICAST, outside, [0; 4]),
        );
        routes.add(GW, 32, route(route_kind::LOCAL, 0, [0; 4]));
        routes.add([192, 0, 2, 0], 24, route(route_kind::BLACKHOLE, 0, [0; 4]));
        routes.add([0; 4], 0, route(route_kind::UNICAST, outside, UPSTREAM));
        dp.routes().sync(&routes.0).expect("ROUTES");
        let mut neighbors = vec![neighbor(outside, UPSTREAM, UPSTREAM_MAC)];
        for vm in [FIXED, FIXED2, VM3] {
            neighbors.push(neighbor(inside, vm, VM_MAC));
        }
        dp.routes().sync_neighbors(&neighbors).expect("NEIGHBORS");
        snat_gateway(&mut dp, GW, outside, (40000, 40063));
        dp.nat().add_floating_ip(FIP, FIXED).expect("FIP");
        dp.nat().add_floating_ip(FIP2, FIXED2).expect("FIP");
        Self {
            _ns: ns,
            dp,
            inside,
            outside,
        }
    }

    fn run(&self, entry: Entry, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let run = testrun::run(&self.dp, entry, ingress, frame);
        (run.verdict, run.frame)
    }
}

/// Packets counted, by class: (forwarded, passed, dropped, handed from XDP to TC).
fn classes(s: &IfaceStats) -> [u64; 4] {
    [
        s.fwd_packets,
        s.pass_packets,
        s.drop_packets,
        s.reasons[Reason::XdpToTc as usize],
    ]
}

// ---- frames ----------------------------------------------------------------------------

/// Addresses that lead somewhere in this router (and a few that lead nowhere useful).
const INSIDE_SOURCES: &[[u8; 4]] = &[FIXED, FIXED2, VM3, UNRESOLVED, [10, 0, 1, 200]];
const OUTSIDE_SOURCES: &[[u8; 4]] = &[REMOTE, UPSTREAM, [198, 18, 0, 50]];
const DESTINATIONS: &[[u8; 4]] = &[
    REMOTE,
    FIP,
    FIP2,
    GW,
    FIXED,
    VM3,
    UNRESOLVED,
    METADATA,
    [192, 0, 2, 1],
    [10, 0, 1, 1],
    [224, 0, 0, 1],
    [127, 0, 0, 1],
];
const PORTS: &[u16] = &[53, 80, 443, 5000, 40000, 40001, 40002, 40063, 65535];

/// A valid frame (before mutation) and the interface it arrives on.
fn valid(rng: &mut Rng, r: &Router) -> (u32, Vec<u8>) {
    let inbound = rng.chance(2);
    let (ingress, mac, src) = if inbound {
        (r.outside, ROUTER_OUT_MAC, rng.pick(OUTSIDE_SOURCES))
    } else {
        (r.inside, ROUTER_IN_MAC, rng.pick(INSIDE_SOURCES))
    };
    let dst = rng.pick(DESTINATIONS);
    let ttl = rng.pick(&[0, 1, 2, 64, 255]);
    let (sport, dport) = (rng.pick(PORTS), rng.pick(PORTS));
    let payload: Vec<u8> = (0..rng.below(64)).map(|_| rng.byte()).collect();
    let ip = eth(mac).ipv4(src, dst).ttl(ttl);
    let out = match rng.below(9) {
        0 | 1 => ip.udp(sport, dport).payload(&payload),
        2 | 3 => {
            let tcp = ip.tcp(sport, dport).seq(rng.next() as u32);
            let tcp = match rng.below(4) {
                0 => tcp.syn(),
                1 => tcp.ack(1),
                2 => tcp.fin().ack(1),
                _ => tcp.rst(),
            };
            tcp.payload(&payload)
        }
        4 => {
            let icmp = if rng.chance(2) {
                ip.icmp_echo_request(sport, 1)
            } else {
                ip.icmp_echo_reply(dport, 1)
            };
            icmp.payload(&payload)
        }
        5 | 6 => {
            // An ICMP error about a packet that left through SNAT or a floating IP (the
            // embedded packet goes from the gateway side to the outside), quoting a random
            // number of its bytes.
            let inner_src = rng.pick(&[GW, FIP, FIP2, FIXED]);
            let quoted = ipv4(inner_src, rng.pick(&[REMOTE, UPSTREAM])).ttl(1);
            let mut original = match rng.below(3) {
                0 => quoted.udp(sport, dport).payload(&payload),
                1 => quoted
                    .tcp(sport, dport)
                    .seq(7)
                    .window(1000)
                    .syn()
                    .payload(&payload),
                _ => quoted.icmp_echo_request(sport, 3).payload(&payload),
            };
            original.truncate(rng.below(original.len() + 1).max(rng.pick(&[0, 28, 48])));
            let ty = rng.pick(&[
                Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
                Icmpv4Type::Unknown {
                    type_u8: 3,
                    code_u8: 4,
                    bytes5to8: [0, 0, 5, 0xdc],
                },
                Icmpv4Type::Unknown {
                    type_u8: 12,
                    code_u8: 0,
                    bytes5to8: [8, 0, 0, 0],
                },
            ]);
            let error = eth(ROUTER_OUT_MAC)
                .ipv4(rng.pick(OUTSIDE_SOURCES), inner_src)
                .ttl(ttl.max(2))
                .icmp(ty)
                .payload(&original);
            return (r.outside, error);
        }
        7 => {
            // ARP request (often for a floating IP, which the router answers).
            eth(BROADCAST_MAC).arp_request(src, rng.pick(&[FIP, FIP2, GW, REMOTE]))
        }
        _ => {
            // VLAN-tagged or another L3: the kernel's.
            let b = ip.udp(sport, dport).payload(&payload);
            let tag: &[u8] = rng.pick(&[
                &[0x81, 0, 0, 5][..],
                &[0x88, 0xa8, 0, 5, 0x81, 0, 0, 6],
                &[0x86, 0xdd],
            ]);
            let mut out = b[..12].to_vec();
            out.extend_from_slice(tag);
            if tag.len() > 2 {
                out.extend_from_slice(&b[12..]);
            } else {
                out.extend_from_slice(&b[14..]);
            }
            out
        }
    };
    (ingress, out)
}

/// Recomputes the IPv4 header checksum, if there is a header to fix.
fn fix_ip_checksum(frame: &mut [u8]) {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    if ihl < 20 || frame.len() < 14 + ihl {
        return;
    }
    frame[24..26].copy_from_slice(&[0, 0]);
    let mut sum = 0u32;
    for pair in frame[14..14 + ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    for _ in 0..=rng.below(3) {
        match rng.below(6) {
            0 | 1 => {
                for _ in 0..=rng.below(4) {
                    let at = rng.below(frame.len());
                    frame[at] ^= 1 << rng.below(8);
                }
            }
            2 => {
                let at = rng.below(frame.len());
                frame[at] = rng.byte();
            }
            3 => {
                let len = 14 + rng.below(frame.len() - 13);
                frame.truncate(len);
            }
            4 if frame.len() >= 18 => {
                // IPv4 IHL or total length (or whatever is there in another L3).
                if rng.chance(2) {
                    frame[14] = (frame[14] & 0xf0) | (rng.byte() & 0x0f);
                } else {
                    let any = rng.next() as u16;
                    let len = rng.pick(&[0u16, 19, 20, 27, 28, 40, 1500, 65535, any]);
                    frame[16..18].copy_from_slice(&len.to_be_bytes());
                }
            }
            _ if frame.len() >= 40 => {
                // The UDP length, or bytes of the embedded header of an ICMP error.
                let at = 38 + rng.below(frame.len() - 39);
                frame[at] = rng.byte();
            }
            _ => frame.extend((0..rng.below(16)).map(|_| rng.byte())),
        }
    }
    if rng.chance(2) {
        fix_ip_checksum(frame);
    }
}

/// Random bytes, often with the router's MAC and the IPv4 ethertype so they get past L2.
fn random(rng: &mut Rng, r: &Router) -> (u32, Vec<u8>) {
    let len = 14 + rng.below(140);
    let mut frame: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
    let (ingress, mac) = if rng.chance(2) {
        (r.inside, ROUTER_IN_MAC)
    } else {
        (r.outside, ROUTER_OUT_MAC)
    };
    if !rng.chance(4) {
        frame[..6].copy_from_slice(&mac);
    }
    if !rng.chance(4) {
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        if len > 14 && rng.chance(2) {
            frame[14] = 0x45;
        }
        if rng.chance(2) {
            fix_ip_checksum(&mut frame);
        }
    }
    (ingress, frame)
}

// ---- the runs --------------------------------------------------------------------------

/// BPF_PROG_TEST_RUN of an skb refuses (EINVAL) an IPv4 frame shorter than the fixed
/// IPv4 header and an IPv6 frame shorter than the IPv6 header (seen on 6.18); such frames
/// reach a real TC hook, but only the XDP run can test them here.
fn kernel_refuses_skb(frame: &[u8]) -> bool {
    match frame[12..14] {
        [0x08, 0x00] => frame.len() < 14 + 20,
        [0x86, 0xdd] => frame.len() < 14 + 40,
        _ => false,
    }
}

fn seed() -> u64 {
    match std::env::var("FUZZ_SEED") {
        Ok(s) => s.parse().expect("FUZZ_SEED: a number"),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        }
    }
}

fn fuzz(entry: Entry) {
    router_tests::require_root();
    let seed = seed();
    println!("{entry:?}: FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let mut r = Router::new();
    let mut before =
        [r.inside, r.outside].map(|i| classes(&r.dp.ifaces().stats(i).expect("stats")));
    let start = Instant::now();
    let mut seen_codes = [0usize; 8];
    let (mut n, mut refused) = (0, 0);
    while n < FRAMES {
        let (ingress, frame) = match rng.below(3) {
            0 => random(&mut rng, &r),
            _ => {
                let (ingress, mut frame) = valid(&mut rng, &r);
                if !rng.chance(5) {
                    mutate(&mut rng, &mut frame);
                }
                (ingress, frame)
            }
        };
        if entry == Entry::Tc && kernel_refuses_skb(&frame) {
            refused += 1;
            continue;
        }
        n += 1;
        let (code, out) = r.run(entry, ingress, &frame);
        let what = || format!("{entry:?} frame {n} (FUZZ_SEED={seed}) on {ingress}: {frame:02x?}");
        assert_ne!(
            code,
            XDP_ABORTED.wrapping_add(u32::from(entry == Entry::Tc) * 99),
            "XDP_ABORTED: {}",
            what()
        );
        // The class the return code says, and the counters must agree.
        let class = match (entry, code) {
            (Entry::Xdp, XDP_REDIRECT) | (Entry::Tc, TC_ACT_REDIRECT) => 0,
            (Entry::Xdp, XDP_PASS) | (Entry::Tc, TC_ACT_OK) => 1,
            (Entry::Xdp, XDP_DROP) | (Entry::Tc, TC_ACT_SHOT) => 2,
            (_, code) => panic!("unexpected return code {code}: {}", what()),
        };
        seen_codes[class] += 1;
        let slot = usize::from(ingress == r.outside);
        let after = classes(&r.dp.ifaces().stats(ingress).expect("stats"));
        let grew: Vec<u64> = after
            .iter()
            .zip(&before[slot])
            .map(|(a, b)| a - b)
            .collect();
        let untagged = !router_user::datapath::features::kernel().xdp_meta;
        let want: &[[u64; 4]] = match class {
            0 => &[[1, 0, 0, 0]],
            // Untagged, the TC entry counts XDP's passes, and its test run refuses some
            // frames the kernel's stack would take: those stay uncounted here.
            1 if entry == Entry::Xdp && untagged && kernel_refuses_skb(&frame) => &[[0, 0, 0, 0]],
            // Under XDP a pass may be a hand-off to TC, counted by its reason only.
            1 if entry == Entry::Xdp => &[[0, 1, 0, 0], [0, 0, 0, 1]],
            1 => &[[0, 1, 0, 0]],
            _ => &[[0, 0, 1, 0]],
        };
        assert!(
            want.iter().any(|w| w[..] == grew[..]),
            "counters grew by {grew:?} (fwd, pass, drop, xdp_to_tc), wanted one of {want:?}: {}",
            what()
        );
        before[slot] = after;
        // The XDP entry leaves a tag in the metadata area (in front of the frame) of what it
        // passes, where the kernel lets it.
        let tags = router_user::datapath::features::kernel().xdp_meta;
        let body = if entry == Entry::Xdp && class == 1 && tags {
            assert_eq!(
                out.len(),
                frame.len() + xdp_meta::LEN,
                "metadata: {}",
                what()
            );
            let tag = u32::from_ne_bytes([out[0], out[1], out[2], out[3]]);
            assert!(
                [xdp_meta::DONE, xdp_meta::TC_FORWARD].contains(&tag),
                "metadata tag {tag}: {}",
                what()
            );
            &out[xdp_meta::LEN..]
        } else {
            &out[..]
        };
        if class != 0 {
            assert_eq!(body, frame, "a frame not forwarded was changed: {}", what());
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{entry:?}: {FRAMES} frames in {:.2}s: {} forwarded, {} passed, {} dropped \
         ({refused} the kernel refuses to test-run as an skb left out)",
        elapsed.as_secs_f64(),
        seen_codes[0],
        seen_codes[1],
        seen_codes[2]
    );
    // Every branch class must have been reached, or the generator has gone stale.
    assert!(seen_codes[..3].iter().all(|c| *c > 100), "{seen_codes:?}");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}

#[test]
fn random_frames_through_the_xdp_entry() {
    fuzz(Entry::Xdp);
}

#[test]
fn random_frames_through_the_tc_entry() {
    fuzz(Entry::Tc);
}

/// Found by the `rewrite_checksums` fuzz target: an ICMP error quoting only 8 bytes of a
/// TCP segment (RFC 792's minimum), in a frame with bytes after the IPv4 packet. The
/// embedded TCP checksum is not part of the error, so it must not be "updated" in the
/// trailer (which broke the outer ICMP checksum); and 20 quoted bytes plus a trailer that
/// looks like ports are not an embedded packet at all.
#[test]
fn icmp_errors_end_at_their_total_length() {
    router_tests::require_root();
    for entry in [Entry::Xdp, Entry::Tc] {
        let r = Router::new();
        // A SNAT session: VM3:40000 leaves as GW:40000 (the original port is free).
        let syn = eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .tcp(40000, 80)
            .seq(1)
            .syn()
            .build();
        let (code, out) = r.run(entry, r.inside, &syn);
        assert!(
            code == XDP_REDIRECT || code == TC_ACT_REDIRECT,
            "{entry:?}: SNAT"
        );
        let left = addresses(&out);
        assert_eq!((left.src, left.sport), (GW, 40000), "{entry:?}: SNAT");
        let quoted = &out[14..14 + 28];
        let trailer = [0xa5u8; 12];
        let error = |quoted: &[u8], trailer: &[u8]| {
            let mut frame = eth(ROUTER_OUT_MAC)
                .ipv4(UPSTREAM, GW)
                .icmp_time_exceeded()
                .payload(quoted);
            frame.extend_from_slice(trailer);
            frame
        };
        let frame = error(quoted, &trailer);
        let (code, out) = r.run(entry, r.outside, &frame);
        assert!(
            code == XDP_REDIRECT || code == TC_ACT_REDIRECT,
            "{entry:?}: error"
        );
        assert_eq!(
            &out[out.len() - 12..],
            &trailer,
            "{entry:?}: trailer changed"
        );
        let ip = &out[..out.len() - 12];
        let back = addresses(ip); // checks the IPv4 and the (outer) ICMP checksums
        assert_eq!(back.dst, VM3, "{entry:?}: error translated to the VM");
        assert_eq!(&out[42 + 12..42 + 16], &VM3, "{entry:?}: embedded source");

        // 20 quoted bytes (no L4 header) and a trailer holding the session's ports.
        let frame = error(&quoted[..20], &quoted[20..28]);
        let (code, out) = r.run(entry, r.outside, &frame);
        assert!(
            code == XDP_PASS || code == TC_ACT_OK,
            "{entry:?}: not an error about a flow"
        );
        // (Under XDP, after the metadata tag.)
        assert_eq!(
            &out[out.len() - frame.len()..],
            frame,
            "{entry:?}: passed frames are untouched"
        );
    }
}
