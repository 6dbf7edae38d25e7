//! The malformed- and edge-frame corpus: every frame runs through the XDP
//! entry and the TC entry (BPF_PROG_TEST_RUN) of one router in two configurations, and has
//! exactly one documented outcome in each (docs/verdicts.md, checked against this file by
//! `docs_list_every_case`).
//!
//! The router: `in0` internal 10.0.1.0/24 (router .1), `out0` the gateway interface on
//! 198.18.0.0/24 (gateway IP .2, next hop .1), the default route via .1, floating IP
//! 198.18.0.10 -> 10.0.1.5, default SNAT on (ports 40000-40100); 10.0.1.6 has no floating IP.
//! Every interface is its own zone, as routerd sets them.
//!
//! - `plain`: that router.
//! - `guarded`: the same, with the firewall on (default deny, one rule allowing anything
//!   from 10.0.1.0/24) and anti-spoofing on `in0` (`SOURCE_CHECK`, allowed 10.0.1.0/24).
//!
//! For each run: the verdict; no XDP_ABORTED; the packets counted forwarded + passed +
//! dropped on the ingress grow by exactly one (bytes by the frame's length); exactly one
//! reason counter grows, by one, and it is the documented one (none for a forwarded
//! frame); a frame passed to the kernel leaves byte for byte as it came (after the XDP
//! metadata tag); a forwarded frame has its TTL one less, a right IPv4 header checksum, its
//! L4 checksum exactly as right or wrong as it came, and its padding untouched. The session
//! table is emptied before every run, so no case depends on another.

use std::collections::BTreeSet;

use router_common::{
    FwRule, IfaceStats, Net, Reason, SourceKey, fw_action, fw_flags, iface_flags, iface_role,
    route_kind, xdp_meta,
};
use router_tests::{
    corpus::{
        self as c, ACK, Arp, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, FIN, ICMP, Ip, L3, L4,
        PSH, RST, SYN, UDP, URG,
    },
    fixture::{Routes, iface, neighbor, route, snat_gateway, veth_pairs},
    frames::{ROUTER_IN_MAC, ROUTER_OUT_MAC},
    netns::NetnsGuard,
    testrun::{
        self, Entry, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT,
    },
    topo::ifindex,
};
use router_user::{
    datapath::Datapath,
    maps::{Rooms as _, policy},
};

const GW: [u8; 4] = [198, 18, 0, 2];
const GW_A: [u8; 4] = [198, 18, 0, 1];
const FIP_A: [u8; 4] = [198, 18, 0, 10];
const FIXED_A: [u8; 4] = [10, 0, 1, 5];
const VM3: [u8; 4] = [10, 0, 1, 6];
const ROUTER_IN: [u8; 4] = [10, 0, 1, 1];
const REMOTE: [u8; 4] = [203, 0, 113, 9];
const OTHER_EXT: [u8; 4] = [198, 18, 0, 50];
const METADATA: [u8; 4] = [169, 254, 169, 254];
const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x55];
const GW_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const MULTICAST_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 1];
const EINVAL: i32 = 22;
/// The largest frame BPF_PROG_TEST_RUN gives an XDP program in one buffer: a page less
/// XDP_PACKET_HEADROOM (256) and `skb_shared_info` (320). Longer frames are split into
/// buffers; the program (`xdp.frags`) reads headers from the first and the length from all.
const XDP_LINEAR_MAX: usize = 3520;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Plain,
    Guarded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    In,
    Out,
}

/// One documented outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Forwarded (XDP_REDIRECT / TC_ACT_REDIRECT) to this next-hop MAC.
    Fwd([u8; 6]),
    /// An ARP request answered in place and sent back out of the ingress.
    Answer,
    /// Handed to the kernel untouched (XDP_PASS / TC_ACT_OK).
    Pass(Reason),
    /// Dropped (XDP_DROP / TC_ACT_SHOT).
    Drop(Reason),
    /// BPF_PROG_TEST_RUN refuses the frame with this errno: the program never runs.
    Refused(i32),
}

use Expect::{Answer, Drop, Fwd, Pass, Refused};

/// The frame of a case.
#[derive(Clone)]
enum Frame {
    Bytes(Vec<u8>),
    /// A UDP frame from `in0` to the outside as long as the TC test run takes (found at run
    /// time: a page less `NET_SKB_PAD` and `skb_shared_info`, 3712 bytes on 4 KiB pages).
    LargestTc,
}

#[derive(Clone)]
struct Case {
    name: String,
    side: Side,
    frame: Frame,
    /// Indexed by [`slot`]: plain XDP, plain TC, guarded XDP, guarded TC.
    expect: [Expect; 4],
    /// Frames that must be forwarded (through the same entry) just before the case.
    prelude: Vec<Vec<u8>>,
    /// Session entries the run must leave (plain, guarded), where a finding depends on it.
    sessions: Option<[usize; 2]>,
    why: &'static str,
}

fn slot(config: Config, entry: Entry) -> usize {
    match (config, entry) {
        (Config::Plain, Entry::Xdp) => 0,
        (Config::Plain, Entry::Tc) => 1,
        (Config::Guarded, Entry::Xdp) => 2,
        (Config::Guarded, Entry::Tc) => 3,
    }
}

impl Case {
    fn tc(mut self, e: Expect) -> Self {
        self.expect[1] = e;
        self.expect[3] = e;
        self
    }

    fn guarded(mut self, e: Expect) -> Self {
        self.expect[2] = e;
        self.expect[3] = e;
        self
    }

    fn sessions(mut self, plain: usize, guarded: usize) -> Self {
        self.sessions = Some([plain, guarded]);
        self
    }

    fn after(mut self, frame: Vec<u8>) -> Self {
        self.prelude.push(frame);
        self
    }
}

fn case(name: impl Into<String>, side: Side, frame: Vec<u8>, e: Expect, why: &'static str) -> Case {
    Case {
        name: name.into(),
        side,
        frame: Frame::Bytes(frame),
        expect: [e; 4],
        prelude: Vec::new(),
        sessions: None,
        why,
    }
}

// --- frames -------------------------------------------------------------------------------

/// UDP from the VM without a floating IP to the outside (default SNAT), `payload` bytes.
fn out_udp(payload: &[u8]) -> Vec<u8> {
    c::udp(ROUTER_IN_MAC, VM3, 5000, REMOTE, 53, payload)
}

fn out_tcp(flags: u8) -> Vec<u8> {
    c::tcp(ROUTER_IN_MAC, VM3, 5001, REMOTE, 80, flags, &[])
}

fn out_echo(payload: &[u8]) -> Vec<u8> {
    c::echo(ROUTER_IN_MAC, VM3, REMOTE, true, 0x0777, payload)
}

fn udp_from(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    c::udp(ROUTER_IN_MAC, src, 5000, dst, 53, b"special")
}

fn edit(mut frame: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut frame);
    frame
}

/// `frame` with its IPv4 header's checksum broken.
fn bad_ip_sum(frame: Vec<u8>) -> Vec<u8> {
    edit(frame, |f| f[L3 + 10] ^= 0x5a)
}

/// `frame` with its L4 checksum (at `offset` from the L4 header) broken.
fn bad_l4_sum(frame: Vec<u8>, offset: usize) -> Vec<u8> {
    edit(frame, |f| f[L4 + offset] ^= 0x5a)
}

/// UDP with `words` 4-byte words of IPv4 options, every byte `fill`: IHL 5 + `words`.
fn with_options(words: usize, fill: u8) -> Vec<u8> {
    let mut f = out_udp(b"options!");
    f.splice(L4..L4, std::iter::repeat_n(fill, 4 * words));
    f[L3] = 0x45 + words as u8;
    let tot = u16::from_be_bytes([f[L3 + 2], f[L3 + 3]]) + 4 * words as u16;
    c::set_total_length(&mut f, tot);
    f
}

/// A UDP fragment of datagram 0x4242 from VM3: `frags` (MF 0x2000 | offset in 8-byte
/// units), `data` the fragment's bytes.
fn fragment(frags: u16, data: &[u8]) -> Vec<u8> {
    let mut ip = Ip::new(VM3, REMOTE, UDP);
    ip.frags = frags;
    ip.id = 0x4242;
    c::ipv4(ROUTER_IN_MAC, &ip, data)
}

/// An ICMP destination-unreachable (port) from `src` to `dst` carrying `embedded`.
fn icmp_error(src: [u8; 4], dst: [u8; 4], embedded: &[u8]) -> Vec<u8> {
    let mac = if src[0] == 10 {
        ROUTER_IN_MAC
    } else {
        ROUTER_OUT_MAC
    };
    c::ipv4(
        mac,
        &Ip::new(src, dst, ICMP),
        &c::icmp_msg(3, 3, [0; 4], embedded),
    )
}

/// The IPv4 packet (no Ethernet) of a UDP datagram from `src` to `dst`.
fn ip_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    c::udp(ROUTER_IN_MAC, src, 33434, dst, 33435, b"probe")[L3..].to_vec()
}

/// A UDP frame from `in0` to the outside, `len` bytes long.
fn udp_of_len(len: usize) -> Vec<u8> {
    out_udp(&vec![0x5a; len - 42])
}

// --- the corpus ---------------------------------------------------------------------------

fn corpus() -> Vec<Case> {
    use Side::{In, Out};
    let mut v = Vec::new();
    let fwd = Fwd(GW_A_MAC);
    let base = out_udp(b"twelve bytes");

    // Ethernet.
    for n in 0..14 {
        v.push(case(
            format!("ethernet: {n} of 14 header bytes"),
            In,
            base[..n].to_vec(),
            Refused(EINVAL),
            "BPF_PROG_TEST_RUN refuses frames under 14 bytes (no driver delivers one); `truncated_ethernet` is unreachable here",
        ));
    }
    // IPv4 header.
    for n in 0..20 {
        v.push(
            case(
                format!("ipv4: ethernet + {n} of 20 header bytes"),
                In,
                base[..L3 + n].to_vec(),
                Drop(Reason::MalformedIpv4),
                "the fixed IPv4 header is not in the frame; the TC test run refuses IPv4 frames under 34 bytes",
            )
            .tc(Refused(EINVAL)),
        );
    }
    // L4 headers, the IPv4 total length saying so (a consistent packet, short L4 header).
    let syn = out_tcp(SYN);
    for n in 1..20 {
        v.push(case(
            format!("tcp: {n} of 20 header bytes"),
            In,
            c::cut_l4(&syn, n),
            Drop(Reason::MalformedL4),
            "TCP header shorter than 20 bytes",
        ));
    }
    let udp = out_udp(b"");
    for n in 1..8 {
        v.push(case(
            format!("udp: {n} of 8 header bytes"),
            In,
            c::cut_l4(&udp, n),
            Drop(Reason::MalformedL4),
            "UDP header shorter than 8 bytes",
        ));
    }
    let ping = out_echo(b"");
    for n in 1..8 {
        v.push(case(
            format!("icmp: {n} of 8 header bytes"),
            In,
            c::cut_l4(&ping, n),
            Drop(Reason::MalformedL4),
            "ICMP header shorter than 8 bytes",
        ));
    }
    v.push(case(
        "tcp: 10 of 20 header bytes, total length still 40",
        In,
        syn[..L4 + 10].to_vec(),
        Drop(Reason::MalformedIpv4),
        "the total length reaches beyond the frame: checked before L4",
    ));
    v.push(case(
        "udp: 4 of 8 header bytes, padded to 60",
        In,
        c::pad(c::cut_l4(&udp, 4), 60),
        Drop(Reason::MalformedL4),
        "the header bytes are in the frame but the total length (24) ends inside the UDP header",
    ));
    v.push(case(
        "tcp: 10 of 20 header bytes, padded to 60",
        In,
        c::pad(c::cut_l4(&syn, 10), 60),
        Drop(Reason::MalformedL4),
        "the total length (30) ends inside the TCP header",
    ));

    // ICMP errors whose embedded packet is short.
    let embedded = ip_packet(REMOTE, VM3);
    v.push(case(
        "icmp error: embedded ipv4 header 10 of 20 bytes, from a VM without floating IP",
        In,
        icmp_error(VM3, REMOTE, &embedded[..10]),
        Pass(Reason::NatSlowPath),
        "no flow can be read from it: needs SNAT as `other`, which the kernel's rules do",
    ));
    v.push(
        case(
            "icmp error: embedded ipv4 header 10 of 20 bytes, from the VM with a floating IP",
            In,
            icmp_error(FIXED_A, REMOTE, &embedded[..10]),
            fwd,
            "stateless float-snat of the outer header; the firewall takes it for a new ICMP flow, not an invalid error (finding 3)",
        )
        .sessions(0, 2),
    );
    v.push(
        case(
            "icmp error: embedded header + 4 of 8 UDP bytes, from the VM with a floating IP",
            In,
            icmp_error(FIXED_A, REMOTE, &embedded[..24]),
            fwd,
            "fewer than 28 embedded bytes: treated like any ICMP packet (finding 3)",
        )
        .sessions(0, 2),
    );
    v.push(case(
        "icmp error: embedded header 10 of 20 bytes, from outside to the gateway IP",
        Out,
        icmp_error(REMOTE, GW, &embedded[..10]),
        Pass(Reason::LocalDest),
        "addressed to the router: the kernel's conntrack relates it",
    ));
    let about_fixed = ip_packet(REMOTE, FIXED_A);
    v.push(
        case(
            "icmp error: complete, about a flow nobody started, from the VM with a floating IP",
            In,
            icmp_error(FIXED_A, REMOTE, &about_fixed),
            fwd,
            "float-snat translates outer and embedded headers; the firewall finds the error invalid",
        )
        .guarded(Drop(Reason::FwInvalid)),
    );
    v.push(
        case(
            "icmp error: complete, about a flow nobody started, from a VM without floating IP",
            In,
            icmp_error(VM3, REMOTE, &ip_packet(REMOTE, VM3)),
            Pass(Reason::NatSlowPath),
            "an error about a flow without a session needs the kernel's NAT; the firewall finds it invalid first",
        )
        .guarded(Drop(Reason::FwInvalid)),
    );

    // IHL, version, total length.
    for ihl in 0..5u8 {
        v.push(case(
            format!("ipv4: ihl {ihl}"),
            In,
            edit(base.clone(), |f| {
                f[L3] = 0x40 | ihl;
                c::fix_ip_checksum(f);
            }),
            Drop(Reason::MalformedIpv4),
            "IHL below 5",
        ));
    }
    v.push(case(
        "ipv4: ihl 6, one word of NOP options",
        In,
        with_options(1, 1),
        Pass(Reason::IpOptions),
        "options are the kernel's",
    ));
    v.push(case(
        "ipv4: ihl 15, 40 bytes of garbage options",
        In,
        with_options(10, 0xee),
        Pass(Reason::IpOptions),
        "the kernel validates options (and answers parameter problem)",
    ));
    v.push(case(
        "ipv4: ihl 6 with a bad header checksum",
        In,
        bad_ip_sum(with_options(1, 1)),
        Pass(Reason::IpOptions),
        "options are checked before the checksum; the kernel drops it",
    ));
    v.push(case(
        "ipv4: ihl 15, total length 32 (shorter than the header)",
        In,
        edit(base.clone(), |f| {
            f[L3] = 0x4f;
            c::set_total_length(f, 32);
        }),
        Drop(Reason::MalformedIpv4),
        "the header would end beyond the total length",
    ));
    v.push(case(
        "ipv4: ihl 15, total length 60, beyond the frame",
        In,
        edit(out_udp(b"x"), |f| {
            f[L3] = 0x4f;
            c::set_total_length(f, 60);
        }),
        Drop(Reason::MalformedIpv4),
        "the header and the total length reach beyond the frame",
    ));
    v.push(case(
        "ipv4: version 6 in an IPv4 ethertype",
        In,
        edit(base.clone(), |f| {
            f[L3] = 0x65;
            c::fix_ip_checksum(f);
        }),
        Drop(Reason::MalformedIpv4),
        "version is not 4",
    ));
    v.push(case(
        "ipv4: an IPv6 packet behind ethertype 0x0800",
        In,
        edit(c::ipv6(ROUTER_IN_MAC, UDP, &[]), |f| {
            f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes())
        }),
        Drop(Reason::MalformedIpv4),
        "version 6, IHL 0",
    ));
    v.push(case(
        "ipv4: version 15",
        In,
        edit(base.clone(), |f| {
            f[L3] = 0xf5;
            c::fix_ip_checksum(f);
        }),
        Drop(Reason::MalformedIpv4),
        "version is not 4",
    ));
    let tot = base.len() as u16 - 14;
    for (what, len) in [
        ("one byte longer than the frame", tot + 1),
        ("65535", 65535),
        ("19 (shorter than the header)", 19),
        ("0", 0),
    ] {
        v.push(case(
            format!("ipv4: total length {what}"),
            In,
            edit(base.clone(), |f| c::set_total_length(f, len)),
            Drop(Reason::MalformedIpv4),
            "the total length disagrees with the frame or the header",
        ));
    }
    for (what, frame, len) in [
        ("udp", base.clone(), 27u16),
        ("tcp", syn.clone(), 39),
        ("icmp", out_echo(b"data"), 27),
    ] {
        v.push(case(
            format!("{what}: total length one byte short of the L4 header, frame complete"),
            In,
            edit(frame, |f| c::set_total_length(f, len)),
            Drop(Reason::MalformedL4),
            "the L4 header lies beyond the IP total length",
        ));
    }
    v.push(case(
        "ipv4: ethernet padding (udp, 2 payload bytes, frame padded to 60)",
        In,
        c::pad(out_udp(b"hi"), 60),
        fwd,
        "the IP length says 30: routed as such, padding carried along untouched",
    ));
    v.push(case(
        "ipv4: 1570 bytes after a 30-byte packet (1614-byte frame, egress MTU 1500)",
        In,
        c::pad(out_udp(b"hi"), 1614),
        fwd,
        "the MTU check uses the IP length; the trailing bytes leave too, above the MTU (finding 4)",
    ));

    // Fragments: the first runs the pipeline as any packet and its outcome is recorded; a
    // later one takes that outcome, and without one is dropped.
    let data: Vec<u8> = (0..24).collect();
    let frag = |flags_offset: u16, bytes: &[u8]| fragment(flags_offset, bytes);
    let first = c::udp_seg(VM3, REMOTE, 5000, 53, &data);
    let first_frag = frag(0x2000, &first[..16]);
    v.push(case(
        "fragment: first (MF, offset 0)",
        In,
        first_frag.clone(),
        fwd,
        "a first fragment runs the pipeline (SNAT, session) as an unfragmented packet",
    ));
    v.push(
        case(
            "fragment: middle (MF, offset 16), after its first",
            In,
            frag(0x2002, &first[16..24]),
            fwd,
            "a later fragment leaves as its first fragment did",
        )
        .after(first_frag.clone()),
    );
    v.push(
        case(
            "fragment: last (offset 24), after its first",
            In,
            frag(0x0003, &first[24..]),
            fwd,
            "a later fragment leaves as its first fragment did",
        )
        .after(first_frag.clone()),
    );
    v.push(case(
        "fragment: overlapping 1 of 2 (MF, offset 0, 24 bytes)",
        In,
        frag(0x2000, &first[..24]),
        fwd,
        "a first fragment; overlaps are the receiver's to resolve",
    ));
    v.push(case(
        "fragment: overlapping 2 of 2 (offset 8), its first not seen",
        In,
        frag(0x0001, &first[8..]),
        Drop(Reason::FragmentUnknown),
        "a later fragment before (or without) its first: dropped, as Cilium does",
    ));
    v.push(case(
        "fragment: first, UDP header cut (MF, 4 bytes)",
        In,
        frag(0x2000, &first[..4]),
        Drop(Reason::MalformedL4),
        "a first fragment must carry the whole L4 header",
    ));
    v.push(
        case(
            "fragment: from a spoofed source (10.0.2.5, MF)",
            In,
            edit(first_frag, |f| {
                f[L3 + 12..L3 + 16].copy_from_slice(&[10, 0, 2, 5]);
                c::fix_ip_checksum(f);
            }),
            fwd,
            "fragments meet anti-spoofing as any packet does",
        )
        .guarded(Drop(Reason::SpoofedSource)),
    );
    v.push(case(
        "ipv4: DF set",
        In,
        edit(base.clone(), |f| {
            f[L3 + 6] = 0x40;
            c::fix_ip_checksum(f);
        }),
        fwd,
        "not a fragment",
    ));
    v.push(case(
        "ipv4: reserved flag bit set",
        In,
        edit(base.clone(), |f| {
            f[L3 + 6] = 0x80;
            c::fix_ip_checksum(f);
        }),
        fwd,
        "not a fragment; Linux forwards it too",
    ));

    // TTL.
    let ttl = |t: u8| {
        edit(base.clone(), |f| {
            f[L3 + 8] = t;
            c::fix_ip_checksum(f);
        })
    };
    v.push(case(
        "ttl 0",
        In,
        ttl(0),
        Pass(Reason::TtlExpired),
        "the kernel answers time exceeded",
    ));
    v.push(case(
        "ttl 1",
        In,
        ttl(1),
        Pass(Reason::TtlExpired),
        "the kernel answers time exceeded",
    ));
    v.push(case("ttl 2", In, ttl(2), fwd, "leaves with TTL 1"));
    v.push(case("ttl 255", In, ttl(255), fwd, "leaves with TTL 254"));
    v.push(case(
        "ttl 1 to the router's own address",
        In,
        edit(udp_from(VM3, ROUTER_IN), |f| {
            f[L3 + 8] = 1;
            c::fix_ip_checksum(f);
        }),
        Pass(Reason::LocalDest),
        "local delivery does not need TTL",
    ));

    // Checksums.
    v.push(case(
        "ipv4: bad header checksum",
        In,
        bad_ip_sum(base.clone()),
        Drop(Reason::BadIpChecksum),
        "the kernel would drop it too",
    ));
    v.push(case(
        "ipv4: bad header checksum and ttl 1",
        In,
        bad_ip_sum(ttl(1)),
        Drop(Reason::BadIpChecksum),
        "the checksum is checked before the TTL",
    ));
    v.push(case(
        "ipv4: bad header checksum on a fragment",
        In,
        bad_ip_sum(frag(0x2000, &first[..16])),
        Drop(Reason::BadIpChecksum),
        "the header checksum is checked before anything else",
    ));
    v.push(case(
        "ipv4: header checksum field 0 (not computed)",
        In,
        edit(base.clone(), |f| {
            f[L3 + 10..L3 + 12].copy_from_slice(&[0, 0])
        }),
        Drop(Reason::BadIpChecksum),
        "IPv4 has no 'no checksum' value",
    ));
    v.push(case(
        "tcp: bad checksum (SYN)",
        In,
        bad_l4_sum(syn.clone(), 16),
        Drop(Reason::BadL4Checksum),
        "it would create a SNAT session: its checksum is verified first (as nf_conntrack_checksum does)",
    ));
    v.push(case(
        "udp: bad checksum",
        In,
        bad_l4_sum(base.clone(), 6),
        Drop(Reason::BadL4Checksum),
        "verified before it would create a SNAT session: no session, no port",
    ));
    v.push(case(
        "udp: checksum 0 (none)",
        In,
        edit(base.clone(), |f| f[L4 + 6..L4 + 8].copy_from_slice(&[0, 0])),
        fwd,
        "no checksum stays no checksum",
    ));
    v.push(case(
        "icmp: bad checksum (echo request)",
        In,
        bad_l4_sum(out_echo(b"ping"), 2),
        Drop(Reason::BadL4Checksum),
        "verified before it would create a SNAT session (ICMP: no pseudo-header)",
    ));
    v.push(
        case(
            "udp: bad checksum, to a floating IP from outside",
            Out,
            bad_l4_sum(c::udp(ROUTER_OUT_MAC, REMOTE, 6000, FIP_A, 53, b"in"), 6),
            Fwd(VM_MAC),
            "DNAT keeps it wrong; the firewall's default deny drops a new inbound flow",
        )
        .guarded(Drop(Reason::FwDefaultDeny)),
    );

    // VLAN.
    v.push(case(
        "vlan: one 802.1Q tag",
        In,
        c::tag(base.clone(), ETH_P_8021Q, 100),
        Pass(Reason::Vlan),
        "a VLAN sub-interface's, the kernel's",
    ));
    v.push(case(
        "vlan: one 802.1ad tag",
        In,
        c::tag(base.clone(), ETH_P_8021AD, 100),
        Pass(Reason::Vlan),
        "one tag of either TPID is a sub-interface's",
    ));
    v.push(case(
        "vlan: 802.1ad outer + 802.1Q inner (QinQ)",
        In,
        c::tag(c::tag(base.clone(), ETH_P_8021Q, 100), ETH_P_8021AD, 200),
        Pass(Reason::OtherL3),
        "two tags",
    ));
    v.push(case(
        "vlan: two 802.1Q tags",
        In,
        c::tag(c::tag(base.clone(), ETH_P_8021Q, 100), ETH_P_8021Q, 200),
        Pass(Reason::OtherL3),
        "two tags",
    ));
    v.push(case(
        "vlan: 802.1Q tag cut after 2 bytes",
        In,
        c::tag(base.clone(), ETH_P_8021Q, 100)[..16].to_vec(),
        Pass(Reason::OtherL3),
        "a truncated tag is just another L2 the kernel sees to",
    ));
    v.push(case(
        "vlan: one tag, broadcast MAC",
        In,
        edit(c::tag(base.clone(), ETH_P_8021Q, 100), |f| {
            f[..6].copy_from_slice(&BROADCAST_MAC)
        }),
        Pass(Reason::Vlan),
        "tags are looked at before the MAC",
    ));

    // IPv6 and other ethertypes.
    v.push(case(
        "ipv6: hop-by-hop options header",
        In,
        c::ipv6(ROUTER_IN_MAC, 0, &c::HOP_BY_HOP_THEN_UDP),
        Pass(Reason::Ipv6),
        "IPv6 is the kernel's",
    ));
    v.push(case(
        "ipv6: fragment header",
        In,
        c::ipv6(ROUTER_IN_MAC, 44, &c::FRAGMENT_THEN_UDP),
        Pass(Reason::Ipv6),
        "IPv6 is the kernel's",
    ));
    v.push(
        case(
            "ipv6: header cut after 4 bytes",
            In,
            c::ipv6(ROUTER_IN_MAC, UDP, &[])[..18].to_vec(),
            Pass(Reason::Ipv6),
            "the ethertype decides; the TC test run refuses IPv6 frames under 54 bytes",
        )
        .tc(Refused(EINVAL)),
    );
    v.push(case(
        "ethertype 0x88cc (LLDP), 14 bytes",
        In,
        c::eth(ROUTER_IN_MAC, 0x88cc),
        Pass(Reason::OtherL3),
        "not IPv4/ARP/IPv6",
    ));

    // ARP.
    let fip_request = Arp::request(OTHER_EXT, FIP_A);
    v.push(case(
        "arp: request for the floating IP on the gateway interface",
        Out,
        fip_request.frame(),
        Answer,
        "the fast path answers for floating IPs",
    ));
    v.push(case(
        "arp: request for the floating IP, padded to 60",
        Out,
        c::pad(fip_request.frame(), 60),
        Answer,
        "padding is ignored",
    ));
    v.push(case(
        "arp: request for the floating IP, unicast to another host's MAC",
        Out,
        (Arp {
            dst_mac: OTHER_MAC,
            ..fip_request
        })
        .frame(),
        Answer,
        "the destination MAC is not checked; Linux ignores ARP sent to other hosts (finding 6)",
    ));
    v.push(case(
        "arp: probe (sender 0.0.0.0) for the floating IP",
        Out,
        Arp::request([0; 4], FIP_A).frame(),
        Answer,
        "answered like Linux defends its address (RFC 5227)",
    ));
    v.push(case(
        "arp: gratuitous request claiming the floating IP",
        Out,
        Arp::request(FIP_A, FIP_A).frame(),
        Pass(Reason::Arp),
        "an announcement asks for no answer (Linux gives none for its own address: the sender is a martian); an HA router's new active announces so, and an answer would teach the switches the MAC back",
    ));
    v.push(case(
        "arp: request for a non-router address",
        Out,
        Arp::request(REMOTE, OTHER_EXT).frame(),
        Pass(Reason::Arp),
        "not a floating IP: the kernel ignores it",
    ));
    v.push(case(
        "arp: request for the gateway IP",
        Out,
        Arp::request(OTHER_EXT, GW).frame(),
        Pass(Reason::Arp),
        "the kernel owns and answers the gateway IP",
    ));
    v.push(case(
        "arp: request for the floating IP on an internal interface",
        In,
        Arp::request(VM3, FIP_A).frame(),
        Pass(Reason::Arp),
        "answers are given on the gateway interface only",
    ));
    v.push(case(
        "arp: reply about the floating IP",
        Out,
        (Arp {
            oper: 2,
            dst_mac: ROUTER_OUT_MAC,
            ..fip_request
        })
        .frame(),
        Pass(Reason::Arp),
        "replies are the kernel's (neighbour learning)",
    ));
    v.push(case(
        "arp: gratuitous for another address",
        Out,
        Arp::request(OTHER_EXT, OTHER_EXT).frame(),
        Pass(Reason::Arp),
        "the kernel updates its neighbour table",
    ));
    v.push(case(
        "arp: request for the floating IP cut after 20 of 28 bytes",
        Out,
        fip_request.frame()[..34].to_vec(),
        Pass(Reason::Arp),
        "too short to answer",
    ));
    v.push(case(
        "arp: request for the floating IP with hlen 8",
        Out,
        (Arp {
            hlen: 8,
            ..fip_request
        })
        .frame(),
        Pass(Reason::Arp),
        "not Ethernet/IPv4 ARP",
    ));
    v.push(case(
        "arp: request for the floating IP with plen 16",
        Out,
        (Arp {
            plen: 16,
            ..fip_request
        })
        .frame(),
        Pass(Reason::Arp),
        "not Ethernet/IPv4 ARP",
    ));
    v.push(case(
        "arp: ethertype ARP, no payload (14 bytes)",
        Out,
        c::eth(BROADCAST_MAC, ETH_P_ARP),
        Pass(Reason::Arp),
        "too short to answer",
    ));

    // Jumbo frames: the MTU is 1500, so every size is the kernel's (frag-needed). The XDP
    // entry takes multi-buffer frames: past the first buffer's 3520 bytes the test run
    // puts the rest in fragments, and the program counts the whole frame.
    v.push(case(
        format!("jumbo: {XDP_LINEAR_MAX} bytes (largest single-buffer XDP test frame)"),
        In,
        udp_of_len(XDP_LINEAR_MAX),
        Pass(Reason::FragNeeded),
        "larger than the egress MTU",
    ));
    v.push(case(
        format!("jumbo: {} bytes", XDP_LINEAR_MAX + 1),
        In,
        udp_of_len(XDP_LINEAR_MAX + 1),
        Pass(Reason::FragNeeded),
        "XDP: two buffers, headers in the first, length from both",
    ));
    v.push(
        case(
            "jumbo: 9000 bytes",
            In,
            udp_of_len(9000),
            Pass(Reason::FragNeeded),
            "XDP: multi-buffer; the TC test run refuses frames over a page",
        )
        .tc(Refused(EINVAL)),
    );
    v.push(Case {
        name: "jumbo: the largest frame the TC test run takes".into(),
        side: In,
        frame: Frame::LargestTc,
        expect: [Pass(Reason::FragNeeded); 4],
        prelude: Vec::new(),
        sessions: None,
        why: "3712 bytes with 4 KiB pages",
    });

    // Empty payloads.
    v.push(case(
        "tcp: SYN without payload",
        In,
        syn.clone(),
        fwd,
        "routed, SNAT session",
    ));
    v.push(case(
        "udp: no payload",
        In,
        udp.clone(),
        fwd,
        "routed, SNAT session",
    ));
    v.push(case(
        "icmp: echo request without data",
        In,
        ping.clone(),
        fwd,
        "routed, SNAT echo id",
    ));
    v.push(case(
        "tcp: ACK without payload, no session",
        In,
        out_tcp(ACK),
        fwd,
        "mid-stream pickup, as conntrack's tcp_loose does",
    ));

    // Special addresses.
    for (name, src, dst) in [
        ("source 0.0.0.0", [0, 0, 0, 0], REMOTE),
        ("source 127.0.0.1", [127, 0, 0, 1], REMOTE),
        ("source 224.0.0.1 (multicast)", [224, 0, 0, 1], REMOTE),
        ("source 240.0.0.1 (class E)", [240, 0, 0, 1], REMOTE),
        ("source 255.255.255.255", [255; 4], REMOTE),
        ("destination 0.0.0.0", VM3, [0, 0, 0, 0]),
        ("destination 127.0.0.1", VM3, [127, 0, 0, 1]),
        ("destination 239.1.1.1 (multicast)", VM3, [239, 1, 1, 1]),
        ("destination 240.0.0.1 (class E)", VM3, [240, 0, 0, 1]),
        ("destination 255.255.255.255", VM3, [255; 4]),
    ] {
        v.push(case(
            format!("address: {name}"),
            In,
            udp_from(src, dst),
            Pass(Reason::SpecialAddress),
            "martian or multicast: the kernel's rules (checked before anti-spoofing)",
        ));
    }
    v.push(case(
        "address: destination the subnet broadcast 10.0.1.255",
        In,
        udp_from(VM3, [10, 0, 1, 255]),
        Pass(Reason::LocalDest),
        "a broadcast route of the local table",
    ));
    v.push(case(
        "address: destination the router (10.0.1.1)",
        In,
        udp_from(VM3, ROUTER_IN),
        Pass(Reason::LocalDest),
        "local delivery",
    ));
    v.push(case(
        "address: tcp to the metadata address 169.254.169.254:80",
        In,
        c::tcp(ROUTER_IN_MAC, VM3, 5002, METADATA, 80, SYN, &[]),
        Pass(Reason::Metadata),
        "the kernel redirects it to the metadata proxy",
    ));
    v.push(
        case(
            "address: spoofed source 10.0.2.5",
            In,
            udp_from([10, 0, 2, 5], REMOTE),
            fwd,
            "not the interface's subnet: dropped where anti-spoofing is on",
        )
        .guarded(Drop(Reason::SpoofedSource)),
    );
    v.push(
        case(
            "address: spoofed source 198.18.0.77 (the external subnet)",
            In,
            udp_from([198, 18, 0, 77], REMOTE),
            fwd,
            "dropped where anti-spoofing is on",
        )
        .guarded(Drop(Reason::SpoofedSource)),
    );
    v.push(case(
        "address: spoofed source with ip options",
        In,
        edit(with_options(1, 1), |f| {
            f[L3 + 12..L3 + 16].copy_from_slice(&[10, 0, 2, 5]);
            c::fix_ip_checksum(f);
        }),
        Pass(Reason::IpOptions),
        "options go to the kernel before anti-spoofing looks (finding 5)",
    ));
    v.push(case(
        "address: spoofed source with a bad header checksum",
        In,
        bad_ip_sum(udp_from([10, 0, 2, 5], REMOTE)),
        Drop(Reason::BadIpChecksum),
        "the checksum is checked first",
    ));

    // Destination MACs.
    for (name, mac) in [
        ("broadcast", BROADCAST_MAC),
        ("IPv4 multicast", MULTICAST_MAC),
        ("another host's", OTHER_MAC),
    ] {
        v.push(case(
            format!("mac: {name} destination MAC"),
            In,
            edit(base.clone(), |f| f[..6].copy_from_slice(&mac)),
            Pass(Reason::NotRouterMac),
            "not addressed to the router at L2",
        ));
    }
    v.push(case(
        "mac: broadcast MAC to 255.255.255.255 (a DHCP discover)",
        In,
        c::udp(BROADCAST_MAC, [0; 4], 68, [255; 4], 67, &[0; 32]),
        Pass(Reason::NotRouterMac),
        "the MAC is checked first",
    ));

    // TCP flags.
    for (name, flags) in [
        ("SYN+FIN", SYN | FIN),
        ("null (no flags)", 0),
        ("xmas (FIN+PSH+URG)", FIN | PSH | URG),
        ("SYN+RST", SYN | RST),
        ("FIN alone", FIN),
    ] {
        v.push(
            case(
                format!("tcp flags: {name}"),
                In,
                out_tcp(flags),
                fwd,
                "routed and SNATed, with a session, without a firewall (finding 1); invalid with one",
            )
            .guarded(Drop(Reason::FwInvalid))
            .sessions(2, 0),
        );
    }
    v.push(
        case(
            "tcp flags: xmas from outside to the floating IP",
            Out,
            c::tcp(
                ROUTER_OUT_MAC,
                REMOTE,
                6001,
                FIP_A,
                22,
                FIN | PSH | URG,
                &[],
            ),
            Fwd(VM_MAC),
            "DNATed without a firewall; invalid with one",
        )
        .guarded(Drop(Reason::FwInvalid)),
    );
    v.push(
        case(
            "tcp flags: SYN+FIN inside an established session",
            In,
            out_tcp(SYN | FIN),
            fwd,
            "without a firewall SNATed in its session; with one invalid even inside a session, as Linux conntrack finds it",
        )
        .guarded(Drop(Reason::FwInvalid))
        .after(out_tcp(SYN)),
    );
    v
}

// --- the router ---------------------------------------------------------------------------

struct Router {
    _ns: NetnsGuard,
    dp: Datapath,
    inside: u32,
    outside: u32,
}

fn allow_inside() -> FwRule {
    FwRule {
        source: Net::new([10, 0, 1, 0], 24),
        destination: Net::new([0; 4], 0),
        port_min: 0,
        port_max: u16::MAX,
        proto: 0,
        action: fw_action::ALLOW,
        slot: 0,
        _pad: 0,
    }
}

impl Router {
    fn new(config: Config) -> Self {
        let ns = NetnsGuard::new();
        veth_pairs(&[("in0", "in1"), ("out0", "out1")]);
        let (inside, outside) = (ifindex("in0"), ifindex("out0"));
        let mut dp = Datapath::load("corpus-test", 4096).expect("loading");
        for (index, mac, role) in [
            (inside, ROUTER_IN_MAC, iface_role::INTERNAL),
            (outside, ROUTER_OUT_MAC, iface_role::EXTERNAL),
        ] {
            let mut entry = iface(mac, role, iface_flags::XDP_EGRESS);
            entry.zone = index as u16;
            if config == Config::Guarded && index == inside {
                entry.flags |= iface_flags::SOURCE_CHECK;
            }
            dp.ifaces().set(index, entry).expect("IFACES");
            dp.ifaces().set_xdp_egress(index).expect("EGRESS_DEVS");
        }
        let mut routes = Routes::default();
        let unicast = |ifindex, via| route(route_kind::UNICAST, ifindex, via);
        let local = route(route_kind::LOCAL, 0, [0; 4]);
        routes.add([10, 0, 1, 0], 24, unicast(inside, [0; 4]));
        routes.add(ROUTER_IN, 32, local);
        routes.add([10, 0, 1, 255], 32, local);
        routes.add([198, 18, 0, 0], 24, unicast(outside, [0; 4]));
        routes.add(GW, 32, local);
        routes.add([198, 18, 0, 255], 32, local);
        routes.add([0; 4], 0, unicast(outside, GW_A));
        dp.routes().sync(&routes.0).expect("ROUTES");
        dp.routes()
            .sync_neighbors(&[
                neighbor(outside, GW_A, GW_A_MAC),
                neighbor(inside, FIXED_A, VM_MAC),
                neighbor(inside, VM3, VM_MAC),
            ])
            .expect("NEIGHBORS");
        snat_gateway(&mut dp, GW, outside, (40000, 40100));
        dp.nat().add_floating_ip(FIP_A, FIXED_A).expect("FIP");
        if config == Config::Guarded {
            let wanted = policy::PolicyTables {
                fw_rules: vec![allow_inside()],
                fw_flags: fw_flags::ENABLED,
                ..policy::PolicyTables::default()
            };
            dp.policy().sync_rules(&wanted).expect("policy maps");
            let key = (
                SourceKey::IFINDEX_BITS + 24,
                SourceKey::new(inside, [10, 0, 1, 0]),
            );
            let wanted: BTreeSet<_> = [key].into();
            dp.policy()
                .sync_allowed_sources(&wanted)
                .expect("ALLOWED_SOURCES");
        }
        Self {
            _ns: ns,
            dp,
            inside,
            outside,
        }
    }

    fn ifindex(&self, side: Side) -> u32 {
        match side {
            Side::In => self.inside,
            Side::Out => self.outside,
        }
    }

    fn stats(&mut self, ifindex: u32) -> IfaceStats {
        self.dp.ifaces().stats(ifindex).expect("IFACE_STATS")
    }

    fn session_entries(&mut self) -> usize {
        self.dp.sessions().entries().expect("SESSIONS")
    }

    fn clear_sessions(&mut self) {
        self.dp.sessions().flush().expect("removing the sessions");
        self.dp
            .sessions()
            .flush_fragments()
            .expect("removing the fragment records");
    }

    /// The largest frame the TC test run takes (binary search on refusal).
    fn largest_tc_frame(&self) -> usize {
        let (mut ok, mut refused) = (1514, 65536);
        while ok + 1 < refused {
            let mid = (ok + refused) / 2;
            match testrun::try_run(&self.dp, Entry::Tc, self.inside, &udp_of_len(mid)) {
                Ok(_) => ok = mid,
                Err(_) => refused = mid,
            }
        }
        ok
    }

    fn run(&mut self, config: Config, entry: Entry, case: &Case, frame: &[u8]) {
        let name = format!("{config:?}/{entry:?}: {}", case.name);
        let expect = case.expect[slot(config, entry)];
        let ingress = self.ifindex(case.side);
        self.clear_sessions();
        for p in &case.prelude {
            let verdict = testrun::try_run(&self.dp, entry, ingress, p)
                .unwrap_or_else(|e| panic!("{name}: prelude refused ({e})"))
                .verdict;
            let want = if entry == Entry::Xdp {
                XDP_REDIRECT
            } else {
                TC_ACT_REDIRECT
            };
            assert_eq!(verdict, want, "{name}: prelude not forwarded");
        }
        let sessions_before = self.session_entries();
        let before = self.stats(ingress);
        let result =
            testrun::try_run(&self.dp, entry, ingress, frame).map(|r| (r.verdict, r.frame));
        let after = self.stats(ingress);
        if let Some(made) = case.sessions {
            let want = made[usize::from(config == Config::Guarded)];
            let got = self.session_entries() - sessions_before;
            assert_eq!(got, want, "{name}: session entries made");
        }
        let (verdict, out) = match (expect, result) {
            (Refused(errno), Err(e)) => {
                assert_eq!(e, errno, "{name}: refused with another errno");
                assert_eq!(before, after, "{name}: a refused frame counted");
                return;
            }
            (Refused(_), Ok((v, _))) => panic!("{name}: expected a refusal, ran with verdict {v}"),
            (_, Err(e)) => panic!("{name}: BPF_PROG_TEST_RUN refused the frame (errno {e})"),
            (_, Ok(r)) => r,
        };
        if entry == Entry::Xdp {
            assert_ne!(verdict, 0, "{name}: XDP_ABORTED");
        }
        let (redirect, pass, drop) = match entry {
            Entry::Xdp => (XDP_REDIRECT, XDP_PASS, XDP_DROP),
            Entry::Tc => (TC_ACT_REDIRECT, TC_ACT_OK, TC_ACT_SHOT),
        };
        let want = match expect {
            Fwd(_) | Answer => redirect,
            Pass(_) => pass,
            Drop(_) => drop,
            Refused(_) => unreachable!(),
        };
        let reasons = reason_deltas(&before, &after);
        assert_eq!(
            verdict, want,
            "{name}: verdict {verdict}, expected {expect:?}; reasons counted {reasons:?}"
        );
        let tc_refuses = matches!(case.expect[slot(config, Entry::Tc)], Refused(_));
        if entry == Entry::Xdp
            && matches!(expect, Pass(_))
            && tc_refuses
            && !router_user::datapath::features::kernel().xdp_meta
        {
            // Untagged, the TC entry counts what XDP passes, and its test run refuses this
            // frame (the kernel's stack would take it): nothing is counted here.
            assert_eq!(before, after, "{name}: counted without the TC entry");
            return;
        }

        // Counters: one packet, one outcome, one reason (none when forwarded).
        let total = |s: &IfaceStats| s.fwd_packets + s.pass_packets + s.drop_packets;
        assert_eq!(
            total(&after),
            total(&before) + 1,
            "{name}: fwd+pass+drop packets"
        );
        let bytes = counted_bytes(entry, frame.len());
        let (packets, byte_count) = match expect {
            Fwd(_) | Answer => (
                after.fwd_packets - before.fwd_packets,
                after.fwd_bytes - before.fwd_bytes,
            ),
            Pass(_) => (
                after.pass_packets - before.pass_packets,
                after.pass_bytes - before.pass_bytes,
            ),
            _ => (
                after.drop_packets - before.drop_packets,
                after.drop_bytes - before.drop_bytes,
            ),
        };
        assert_eq!(
            (packets, byte_count),
            (1, bytes),
            "{name}: packets and bytes of the outcome"
        );
        let want_reasons = match expect {
            Pass(r) | Drop(r) => vec![(r, 1)],
            _ => Vec::new(),
        };
        assert_eq!(reasons, want_reasons, "{name}: reason counters");

        match expect {
            Pass(_) => {
                let seen = match entry {
                    Entry::Xdp if router_user::datapath::features::kernel().xdp_meta => {
                        assert_eq!(out.len(), frame.len() + xdp_meta::LEN, "{name}: metadata");
                        assert_eq!(out[..4], xdp_meta::DONE.to_ne_bytes(), "{name}: tag");
                        &out[xdp_meta::LEN..]
                    }
                    Entry::Xdp | Entry::Tc => &out[..],
                };
                assert!(seen == frame, "{name}: a passed frame must be untouched");
            }
            Fwd(mac) => check_forwarded(&name, frame, &out, mac),
            Answer => check_answer(&name, frame, &out),
            Drop(_) | Refused(_) => {}
        }
    }
}

/// The bytes a run counts: the whole frame, under XDP too (the program takes multi-buffer
/// frames and counts every buffer).
fn counted_bytes(_entry: Entry, len: usize) -> u64 {
    len as u64
}

/// Reasons whose counters moved, with how much.
fn reason_deltas(before: &IfaceStats, after: &IfaceStats) -> Vec<(Reason, u64)> {
    let mut moved = Vec::new();
    for (slot, (b, a)) in before.reasons.iter().zip(after.reasons.iter()).enumerate() {
        if a != b {
            let reason = Reason::from_u32(slot as u32)
                .unwrap_or_else(|| panic!("counter slot {slot} moved, no reason has it"));
            moved.push((reason, a - b));
        }
    }
    moved
}

fn check_forwarded(name: &str, frame: &[u8], out: &[u8], next_hop: [u8; 6]) {
    assert_eq!(out.len(), frame.len(), "{name}: length");
    let (sent, got) = (c::view(frame), c::view(out));
    let router_mac = if next_hop == VM_MAC {
        ROUTER_IN_MAC
    } else {
        ROUTER_OUT_MAC
    };
    assert_eq!(
        (got.dst_mac, got.src_mac),
        (next_hop, router_mac),
        "{name}: MACs"
    );
    assert_eq!(got.ttl, sent.ttl - 1, "{name}: TTL");
    assert!(got.ip_sum_ok, "{name}: IPv4 header checksum");
    assert_eq!(
        got.l4, sent.l4,
        "{name}: the L4 checksum as right or wrong as it came"
    );
    let end = L3 + usize::from(u16::from_be_bytes([frame[L3 + 2], frame[L3 + 3]]));
    assert!(
        out[end..] == frame[end..],
        "{name}: bytes after the IP packet untouched"
    );
}

fn check_answer(name: &str, frame: &[u8], out: &[u8]) {
    assert_eq!(out.len(), frame.len(), "{name}: length");
    let (sha, spa, tpa) = (&frame[22..28], &frame[28..32], &frame[38..42]);
    assert_eq!(&out[..6], sha, "{name}: to the asker");
    assert_eq!(
        out[6..12],
        ROUTER_OUT_MAC,
        "{name}: from the gateway interface"
    );
    assert_eq!(
        out[12..20],
        frame[12..20],
        "{name}: ethertype and ARP header"
    );
    assert_eq!(out[20..22], [0, 2], "{name}: a reply");
    assert_eq!(out[22..28], ROUTER_OUT_MAC, "{name}: sender MAC");
    assert_eq!(
        &out[28..32],
        tpa,
        "{name}: sender IP, the address asked for"
    );
    assert_eq!(&out[32..38], sha, "{name}: target MAC");
    assert_eq!(&out[38..42], spa, "{name}: target IP");
    assert!(out[42..] == frame[42..], "{name}: padding untouched");
}

fn run_corpus(config: Config) {
    router_tests::require_root();
    let mut r = Router::new(config);
    let largest_tc = r.largest_tc_frame();
    let cases = corpus();
    for case in &cases {
        for entry in [Entry::Xdp, Entry::Tc] {
            let frame = match &case.frame {
                Frame::Bytes(b) => b.clone(),
                Frame::LargestTc => udp_of_len(largest_tc),
            };
            r.run(config, entry, case, &frame);
        }
    }
    eprintln!(
        "{config:?}: {} cases through both entries; the TC test run takes frames up to {largest_tc} bytes",
        cases.len()
    );
}

#[test]
fn corpus_plain() {
    run_corpus(Config::Plain);
}

#[test]
fn corpus_with_firewall_and_anti_spoofing() {
    run_corpus(Config::Guarded);
}

// --- sessions and bad checksums -----------------------------------------------------------

/// `frame` from inside to outside through both entries of a router in `config` (SNAT on,
/// and the firewall too when guarded): the session entries each run left.
fn sessions_made_by(config: Config, frame: &[u8]) -> Vec<(Entry, usize)> {
    router_tests::require_root();
    let mut r = Router::new(config);
    let mut made = Vec::new();
    for entry in [Entry::Xdp, Entry::Tc] {
        r.clear_sessions();
        let before = r.session_entries();
        testrun::try_run(&r.dp, entry, r.inside, frame).expect("test run");
        made.push((entry, r.session_entries() - before));
    }
    made
}

#[test]
fn bad_ip_checksum_creates_no_session() {
    for config in [Config::Guarded, Config::Plain] {
        let made = sessions_made_by(config, &bad_ip_sum(out_tcp(SYN)));
        assert_eq!(made, [(Entry::Xdp, 0), (Entry::Tc, 0)], "{config:?}");
        // The same frame with its checksum right does make one (two entries), so the table
        // is being watched.
        let made = sessions_made_by(config, &out_tcp(SYN));
        assert_eq!(made, [(Entry::Xdp, 2), (Entry::Tc, 2)], "{config:?}");
    }
}

/// Packets that would create a session have their L4 checksum verified first (pipeline.rs,
/// verify.rs), as Linux conntrack does; established flows' packets are not.
#[test]
fn bad_l4_checksum_creates_no_session() {
    let mut made = Vec::new();
    for config in [Config::Guarded, Config::Plain] {
        for (what, frame) in [
            ("tcp", bad_l4_sum(out_tcp(SYN), 16)),
            ("udp", bad_l4_sum(out_udp(b"twelve bytes"), 6)),
            ("icmp", bad_l4_sum(out_echo(b"ping"), 2)),
        ] {
            made.push((config, what, sessions_made_by(config, &frame)));
        }
    }
    let none = [(Entry::Xdp, 0), (Entry::Tc, 0)];
    let made_some: Vec<_> = made.iter().filter(|(.., m)| m[..] != none).collect();
    assert!(
        made_some.is_empty(),
        "bad-checksum packets that made session entries: {made_some:?}"
    );
}

/// The L4 checksum is verified over the whole segment at every length: odd ones (a last
/// byte padded with zero), and across the boundaries where the program sums in parts (every
/// 512 bytes). A good datagram makes its session; the same with its last byte changed
/// makes none.
#[test]
fn l4_checksum_is_verified_at_every_length() {
    router_tests::require_root();
    let mut r = Router::new(Config::Plain);
    let mut wrong = Vec::new();
    for len in [
        1usize, 2, 3, 13, 56, 57, 59, 60, 61, 63, 64, 65, 503, 504, 505, 507, 1015, 1016, 1017,
        1019, 1471, 1472,
    ] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8 | 1).collect();
        let good = out_udp(&payload);
        let bad = edit(good.clone(), |f| {
            let last = f.len() - 1;
            f[last] ^= 0x5a;
        });
        for (frame, sessions) in [(&good, 2), (&bad, 0)] {
            for entry in [Entry::Xdp, Entry::Tc] {
                r.clear_sessions();
                let before = r.session_entries();
                testrun::try_run(&r.dp, entry, r.inside, frame).expect("test run");
                let made = r.session_entries() - before;
                if made != sessions {
                    wrong.push((len, entry, sessions, made));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "(payload bytes, entry, session entries wanted, made): {wrong:?}"
    );
}

// --- the documentation --------------------------------------------------------------------

fn verdict_word(e: Expect) -> &'static str {
    match e {
        Fwd(_) => "forwarded",
        Answer => "answered",
        Pass(_) => "kernel",
        Drop(_) => "drop",
        Refused(_) => "not run (EINVAL)",
    }
}

fn reason_word(e: Expect) -> String {
    match e {
        Pass(r) | Drop(r) => format!("`{}`", r.name()),
        _ => "—".into(),
    }
}

fn both_entries(x: Expect, t: Expect) -> (String, String, String) {
    let reason = if reason_word(x) == reason_word(t) {
        reason_word(x)
    } else {
        format!("XDP {}, TC {}", reason_word(x), reason_word(t))
    };
    (verdict_word(x).into(), verdict_word(t).into(), reason)
}

/// The table docs/verdicts.md holds between its markers.
fn table() -> String {
    let mut s = String::from(
        "| # | frame | in | XDP | TC | reason | firewall + anti-spoofing | why |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (i, case) in corpus().iter().enumerate() {
        let (x, t, reason) = both_entries(case.expect[0], case.expect[1]);
        let guarded = if case.expect[2..] == case.expect[..2] {
            "same".to_string()
        } else {
            let (gx, gt, greason) = both_entries(case.expect[2], case.expect[3]);
            if gx == gt {
                format!("{gx} {greason}")
            } else {
                format!("XDP {gx}, TC {gt}: {greason}")
            }
        };
        let side = match case.side {
            Side::In => "in0",
            Side::Out => "out0",
        };
        // A prelude is a SYN opening the flow, or (named in the case) a first fragment.
        let prelude = if case.prelude.is_empty() || case.name.contains("after its first") {
            ""
        } else {
            " (after a SYN)"
        };
        s.push_str(&format!(
            "| {} | {}{prelude} | {side} | {x} | {t} | {reason} | {guarded} | {} |\n",
            i + 1,
            case.name,
            case.why
        ));
    }
    s
}

const BEGIN: &str = "<!-- corpus table: generated from tests/tests/corpus.rs -->\n";
const END: &str = "<!-- end of corpus table -->\n";

/// docs/verdicts.md lists every case with the outcome the corpus asserts. With
/// `CORPUS_WRITE_DOCS=1` the table is rewritten instead of compared.
#[test]
fn docs_list_every_case() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/verdicts.md");
    let doc = std::fs::read_to_string(&path).expect("docs/verdicts.md");
    let (head, rest) = doc.split_once(BEGIN).expect("the table's start marker");
    let (current, tail) = rest.split_once(END).expect("the table's end marker");
    let table = table();
    if std::env::var_os("CORPUS_WRITE_DOCS").is_some() {
        std::fs::write(&path, format!("{head}{BEGIN}{table}{END}{tail}")).expect("writing");
        return;
    }
    assert!(
        current == table,
        "docs/verdicts.md is not the corpus's table: run with CORPUS_WRITE_DOCS=1"
    );
}

#[test]
fn docs_name_every_reason() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/verdicts.md");
    let doc = std::fs::read_to_string(&path).expect("docs/verdicts.md");
    let (_, listed) = doc
        .split_once("## Every reason")
        .expect("the section listing every reason");
    let listed = listed.split("\n## ").next().unwrap_or_default();
    for reason in Reason::ALL {
        assert!(
            listed.contains(&format!("`{}`", reason.name())),
            "docs/verdicts.md does not list reason `{}`",
            reason.name()
        );
    }
}

#[test]
fn corpus_names_are_unique() {
    let cases = corpus();
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len());
}
