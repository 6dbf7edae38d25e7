//! The rewrite oracle: a well-formed packet built by etherparse from the fuzz input, our
//! `rewrite::apply` on it, and the packet etherparse builds with the translated fields (its
//! checksums computed from scratch) must be the same bytes. Then every checksum of the
//! result is verified by etherparse once more.
//!
//! The translation follows the pipeline's contract with `rewrite::apply`: outer addresses
//! become the target's where they are the flow's own (an ICMP error from a router on the
//! path keeps that router's source), ports (TCP/UDP) or the echo identifier follow the
//! target, and the packet embedded in an ICMP error becomes the inverse of the target.

use arbitrary::Arbitrary;
use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, IpDscp, IpNumber,
    Ipv4Header, Ipv4HeaderSlice, SlicedPacket, TcpHeader, TransportSlice, UdpHeader,
    checksum::Sum16BitWords,
};
use router_common::{CtKey, IfaceEntry};
use router_ebpf::verdict::{Hop, Target};

use crate::fast_path::{self, FlowShape};

const MAX_PAYLOAD: usize = 1400;

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    pub outer: Ip,
    pub packet: Packet,
    /// The translation: each field is the flow's own unless replaced.
    pub new_src: Option<[u8; 4]>,
    pub new_dst: Option<[u8; 4]>,
    pub new_sport: Option<u16>,
    pub new_dport: Option<u16>,
    /// The next hop's MAC (`None`: the kernel resolves it and writes the MACs).
    pub next_hop_mac: Option<[u8; 6]>,
    pub out_mac: [u8; 6],
    pub in_src_mac: [u8; 6],
    pub in_dst_mac: [u8; 6],
    /// Bytes after the IPv4 packet (Ethernet padding, a trailer): never ours to change.
    pub trailer: Vec<u8>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Ip {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub dscp: u8,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: Option<u32>,
        flags: u8,
        window: u16,
        /// In 4-byte words, at most 10.
        options: Vec<[u8; 4]>,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        /// A sender that does not checksum (field 0): stays 0.
        no_checksum: bool,
        payload: Vec<u8>,
    },
    Echo {
        request: bool,
        id: u16,
        seq: u16,
        payload: Vec<u8>,
    },
    /// Another protocol (not TCP/UDP/ICMP): addresses only.
    Other { proto: u8, payload: Vec<u8> },
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Packet {
    Plain(L4),
    /// An ICMP error (time exceeded, unreachable, parameter problem) about a packet that
    /// went from the error's destination to `inner_dst`.
    Error {
        kind: ErrorKind,
        code: u8,
        rest: [u8; 4],
        /// From the inner packet's destination (else from a router on the path).
        from_destination: bool,
        inner: Ip,
        inner_l4: L4,
        /// How many bytes of the original packet the error carries (RFC 792 asks for the
        /// IPv4 header and 8 bytes; fewer is a broken error, which is not translated).
        keep: u16,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ErrorKind {
    Unreachable,
    TimeExceeded,
    ParameterProblem,
}

impl ErrorKind {
    fn type_u8(self) -> u8 {
        match self {
            Self::Unreachable => 3,
            Self::TimeExceeded => 11,
            Self::ParameterProblem => 12,
        }
    }
}

/// An address the fast path forwards (not 0/8, 127/8, 224/4, 240/4).
fn usable(mut a: [u8; 4]) -> [u8; 4] {
    if a[0] == 0 || a[0] == 127 || a[0] >= 224 {
        a[0] = 1 + a[0] % 126;
    }
    a
}

fn capped(p: &[u8]) -> &[u8] {
    &p[..p.len().min(MAX_PAYLOAD)]
}

impl L4 {
    fn proto(&self) -> IpNumber {
        match self {
            L4::Tcp { .. } => IpNumber::TCP,
            L4::Udp { .. } => IpNumber::UDP,
            L4::Echo { .. } => IpNumber::ICMP,
            L4::Other { proto, .. } => IpNumber(*proto),
        }
    }

    fn sanitize(&mut self) {
        // Not TCP/UDP/ICMP, nor a protocol etherparse would try to parse in the output
        // (AH, ICMPv6): GRE instead.
        if let L4::Other { proto, .. } = self
            && matches!(*proto, 1 | 6 | 17 | 51 | 58)
        {
            *proto = 47;
        }
        if let L4::Tcp { options, .. } = self {
            options.truncate(10);
        }
    }

    /// The L4 header and payload, checksummed (as etherparse computes them) for `ip`.
    fn bytes(&self, ip: &Ipv4Header) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                options,
                payload,
            } => {
                let payload = capped(payload);
                let mut tcp = TcpHeader::new(*sport, *dport, *seq, *window);
                tcp.fin = flags & 0x01 != 0;
                tcp.syn = flags & 0x02 != 0;
                tcp.rst = flags & 0x04 != 0;
                tcp.psh = flags & 0x08 != 0;
                tcp.urg = flags & 0x20 != 0;
                tcp.ece = flags & 0x40 != 0;
                tcp.cwr = flags & 0x80 != 0;
                if let Some(ack) = ack {
                    tcp.ack = true;
                    tcp.acknowledgment_number = *ack;
                }
                let opts: Vec<u8> = options.iter().flatten().copied().collect();
                tcp.set_options_raw(&opts)
                    .expect("at most 40 bytes of options");
                tcp.checksum = tcp.calc_checksum_ipv4(ip, payload).expect("checksum");
                tcp.write(&mut out).expect("tcp");
                out.extend_from_slice(payload);
            }
            L4::Udp {
                sport,
                dport,
                no_checksum,
                payload,
            } => {
                let payload = capped(payload);
                let mut udp =
                    UdpHeader::with_ipv4_checksum(*sport, *dport, ip, payload).expect("udp");
                if *no_checksum {
                    udp.checksum = 0;
                }
                udp.write(&mut out).expect("udp");
                out.extend_from_slice(payload);
            }
            L4::Echo {
                request,
                id,
                seq,
                payload,
            } => {
                let payload = capped(payload);
                let echo = IcmpEchoHeader { id: *id, seq: *seq };
                let ty = if *request {
                    Icmpv4Type::EchoRequest(echo)
                } else {
                    Icmpv4Type::EchoReply(echo)
                };
                Icmpv4Header::with_checksum(ty, payload)
                    .write(&mut out)
                    .expect("icmp");
                out.extend_from_slice(payload);
            }
            L4::Other { payload, .. } => out.extend_from_slice(capped(payload)),
        }
        out
    }

    /// The same L4 packet with the ports (or echo identifier) replaced.
    fn with_ports(&self, sport: u16, dport: u16) -> L4 {
        let mut l4 = self.clone();
        match &mut l4 {
            L4::Tcp {
                sport: s, dport: d, ..
            }
            | L4::Udp {
                sport: s, dport: d, ..
            } => {
                *s = sport;
                *d = dport;
            }
            L4::Echo { request, id, .. } => *id = if *request { sport } else { dport },
            L4::Other { .. } => {}
        }
        l4
    }

    /// (sport, dport) as a flow sees them: the echo identifier is a request's source "port"
    /// and a reply's destination "port".
    fn ports(&self) -> (u16, u16) {
        match self {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => (*sport, *dport),
            L4::Echo {
                request: true, id, ..
            } => (*id, 0),
            L4::Echo { id, .. } => (0, *id),
            L4::Other { .. } => (0, 0),
        }
    }
}

/// An IPv4 packet: `ip`'s fields, `proto`, the L4 bytes `l4` builds for its header.
fn ipv4(ip: &Ip, proto: IpNumber, l4: impl FnOnce(&Ipv4Header) -> Vec<u8>, len: usize) -> Vec<u8> {
    let mut h = Ipv4Header::new(len as u16, ip.ttl, proto, ip.src, ip.dst).expect("ipv4");
    h.identification = ip.id;
    h.dont_fragment = ip.dont_fragment;
    h.dscp = IpDscp::try_new(ip.dscp & 0x3f).expect("dscp");
    let body = l4(&h);
    assert_eq!(body.len(), len);
    h.header_checksum = h.calc_header_checksum();
    let mut out = Vec::new();
    h.write(&mut out).expect("ipv4 header");
    out.extend_from_slice(&body);
    out
}

fn l4_len(l4: &L4) -> usize {
    // The length does not depend on the addresses: build once against a dummy header.
    let dummy = Ipv4Header::new(0, 64, l4.proto(), [1; 4], [2; 4]).expect("ipv4");
    l4.bytes(&dummy).len()
}

fn ip_packet(ip: &Ip, l4: &L4) -> Vec<u8> {
    ipv4(ip, l4.proto(), |h| l4.bytes(h), l4_len(l4))
}

/// The ICMP error around `embedded` (the first bytes of the original packet).
fn error_packet(ip: &Ip, kind: ErrorKind, code: u8, rest: [u8; 4], embedded: &[u8]) -> Vec<u8> {
    let ty = Icmpv4Type::Unknown {
        type_u8: kind.type_u8(),
        code_u8: code,
        bytes5to8: rest,
    };
    let icmp = |_: &Ipv4Header| {
        let mut out = Vec::new();
        Icmpv4Header::with_checksum(ty.clone(), embedded)
            .write(&mut out)
            .expect("icmp");
        out.extend_from_slice(embedded);
        out
    };
    ipv4(ip, IpNumber::ICMP, icmp, 8 + embedded.len())
}

fn frame(src_mac: [u8; 6], dst_mac: [u8; 6], ip: &[u8], trailer: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Ethernet2Header {
        source: src_mac,
        destination: dst_mac,
        ether_type: EtherType::IPV4,
    }
    .write(&mut out)
    .expect("ethernet");
    out.extend_from_slice(ip);
    out.extend_from_slice(trailer);
    out
}

/// A normalised input: forwardable addresses, TTL > 1, bounded sizes, an error addressed to
/// the original packet's source.
fn normalise(mut input: Input) -> Input {
    input.outer.src = usable(input.outer.src);
    input.outer.dst = usable(input.outer.dst);
    input.outer.ttl = input.outer.ttl.max(2);
    input.trailer.truncate(64);
    match &mut input.packet {
        Packet::Plain(l4) => l4.sanitize(),
        Packet::Error {
            from_destination,
            inner,
            inner_l4,
            ..
        } => {
            inner_l4.sanitize();
            inner.src = usable(inner.src);
            inner.dst = usable(inner.dst);
            // The error goes back to the original packet's source.
            input.outer.dst = inner.src;
            if *from_destination {
                input.outer.src = inner.dst;
            }
        }
    }
    input
}

/// The fuzz target's body.
pub fn check(input: Input) {
    let input = normalise(input);
    let (ip_bytes, kept) = match &input.packet {
        Packet::Plain(l4) => (ip_packet(&input.outer, l4), None),
        Packet::Error {
            kind,
            code,
            rest,
            inner,
            inner_l4,
            keep,
            ..
        } => {
            let full = ip_packet(inner, inner_l4);
            let keep = usize::from(*keep).min(full.len()).min(MAX_PAYLOAD);
            let embedded = full[..keep].to_vec();
            (
                error_packet(&input.outer, *kind, *code, *rest, &embedded),
                Some((keep, embedded)),
            )
        }
    };
    let original = frame(
        input.in_src_mac,
        input.in_dst_mac,
        &ip_bytes,
        &input.trailer,
    );

    let hop = Hop {
        egress: 2,
        out: IfaceEntry {
            mac: input.out_mac,
            src_mac: input.out_mac,
            mtu: 1500,
            role: 0,
            flags: 0,
            zone: 0,
            slot: 0,
        },
        next_hop: [0; 4],
        mac: input.next_hop_mac,
    };
    let choose = |key: &CtKey, _shape: FlowShape| Target {
        src: input.new_src.map(usable).unwrap_or(key.src),
        dst: input.new_dst.map(usable).unwrap_or(key.dst),
        sport: input.new_sport.map(u16::to_be_bytes).unwrap_or(key.sport),
        dport: input.new_dport.map(u16::to_be_bytes).unwrap_or(key.dport),
    };
    let mut out = original.clone();
    let (flow, target) = match fast_path::parse_and_rewrite(&mut out, choose, &hop) {
        Ok(done) => done,
        Err(parsed) => panic!("ours refuses a well-formed packet: {parsed:?}\n{input:?}"),
    };

    // What the flow must be: the packet's own tuple, or for an error the embedded tuple
    // inverted (when the error carries a translatable packet).
    let expected_shape = match &input.packet {
        Packet::Plain(L4::Tcp { .. } | L4::Udp { .. }) => FlowShape::Ports,
        Packet::Plain(L4::Echo { request: true, .. }) => FlowShape::EchoRequest,
        Packet::Plain(L4::Echo { .. }) => FlowShape::EchoReply,
        Packet::Plain(L4::Other { .. }) => FlowShape::Other,
        Packet::Error { .. } if kept.as_ref().is_some_and(|(k, _)| *k < 28) => FlowShape::Other,
        Packet::Error { inner_l4, .. } => match inner_l4 {
            L4::Tcp { .. } | L4::Udp { .. } => FlowShape::ErrorPorts,
            L4::Echo { request: true, .. } => FlowShape::ErrorEchoRequest,
            L4::Echo { .. } => FlowShape::ErrorEchoReply,
            L4::Other { .. } => FlowShape::Other,
        },
    };
    assert_eq!(flow.shape, expected_shape, "flow shape of {input:?}");

    // The flow's tuple, from the input.
    let (proto, src, dst, (sport, dport)) = match &input.packet {
        Packet::Plain(l4) => (l4.proto(), input.outer.src, input.outer.dst, l4.ports()),
        Packet::Error { .. } if expected_shape == FlowShape::Other => {
            (IpNumber::ICMP, input.outer.src, input.outer.dst, (0, 0))
        }
        Packet::Error {
            inner, inner_l4, ..
        } => {
            let (s, d) = inner_l4.ports();
            (inner_l4.proto(), inner.dst, inner.src, (d, s))
        }
    };
    let want_key = CtKey {
        zone: 0,
        proto: proto.0,
        _pad: 0,
        src,
        dst,
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
    };
    assert_eq!(flow.key, want_key, "flow tuple of {input:?}");

    let t = |b: [u8; 2]| u16::from_be_bytes(b);
    let key = flow.key;
    let mut outer = input.outer;
    outer.ttl -= 1;
    if outer.src == key.src {
        outer.src = target.src;
    }
    if outer.dst == key.dst {
        outer.dst = target.dst;
    }
    let expected_ip = match &input.packet {
        Packet::Plain(l4) => ip_packet(&outer, &l4.with_ports(t(target.sport), t(target.dport))),
        Packet::Error {
            kind,
            code,
            rest,
            inner,
            inner_l4,
            ..
        } => {
            let (keep, original_embedded) = kept.as_ref().expect("an error");
            let keep = *keep;
            let (mut inner, mut inner_l4) = (*inner, inner_l4.clone());
            if expected_shape != FlowShape::Other {
                // The embedded packet travelled the other way: the inverse of the target.
                // (An embedded echo request's identifier is the flow's destination "port",
                // a reply's its source "port": `with_ports` puts it there.)
                inner.src = target.dst;
                inner.dst = target.src;
                inner_l4 = inner_l4.with_ports(t(target.dport), t(target.sport));
            }
            let mut embedded = ip_packet(&inner, &inner_l4);
            embedded.truncate(keep);
            if keep == 20 + 17 && matches!(inner_l4, L4::Tcp { .. }) {
                // The error cut the embedded TCP checksum in half: its new first byte depends
                // on the carry out of the byte that is not there, so it stays as it was.
                embedded[36] = original_embedded[36];
            }
            error_packet(&outer, *kind, *code, *rest, &embedded)
        }
    };
    let (src_mac, dst_mac) = match input.next_hop_mac {
        Some(mac) => (input.out_mac, mac),
        None => (input.in_src_mac, input.in_dst_mac),
    };
    let expected = frame(src_mac, dst_mac, &expected_ip, &input.trailer);
    let diff: Vec<(usize, u8, u8)> = out
        .iter()
        .zip(&expected)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i, *a, *b))
        .collect();
    // Known limit of incremental updates (RFC 1624's -0): an ICMP echo reply whose whole
    // message is zero (identifier 0, sequence 0, no payload) has the full checksum 0xffff,
    // and an update that leaves it zero yields 0x0000 (Linux's NAT does the same). Only
    // that pair, only at an echo checksum, and the message must then be all zero.
    let echo_csum = match (&input.packet, expected_shape) {
        (Packet::Plain(_), FlowShape::EchoReply) => Some(14 + 20 + 2),
        (Packet::Error { .. }, FlowShape::ErrorEchoReply) => Some(14 + 20 + 8 + 20 + 2),
        _ => None,
    };
    let negative_zero = echo_csum.is_some_and(|at| {
        diff == [(at, 0, 0xff), (at + 1, 0, 0xff)]
            && expected[at - 2..].len() >= 8
            && expected[at - 2..at].iter().all(|b| *b == 0)
            && expected[at + 2..at + 6].iter().all(|b| *b == 0)
    });
    if !diff.is_empty() && !negative_zero {
        panic!(
            "rewrite differs from etherparse's translated packet at (offset, ours, etherparse) \
             {diff:?}\n original {original:02x?}\n ours     {out:02x?}\n expected {expected:02x?}\n{input:?}"
        );
    }
    verify_checksums(&out[..out.len() - input.trailer.len()], negative_zero);
}

/// Every checksum of `frame` (outer IPv4 and L4; an ICMP error's embedded IPv4 header) as
/// etherparse computes it; UDP checksum 0 means none.
fn verify_checksums(frame: &[u8], negative_zero: bool) {
    let p = SlicedPacket::from_ethernet(frame).expect("etherparse parses the output");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("no IPv4 in the output")
    };
    let h = ip.header().to_header();
    assert_eq!(h.calc_header_checksum(), h.header_checksum, "IPv4 checksum");
    match &p.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let want = tcp.to_header().calc_checksum_ipv4(&h, tcp.payload());
            assert_eq!(want.ok(), Some(tcp.checksum()), "TCP checksum");
        }
        Some(TransportSlice::Udp(udp)) if udp.checksum() != 0 => {
            let want = udp.to_header().calc_checksum_ipv4(&h, udp.payload());
            assert_eq!(want.ok(), Some(udp.checksum()), "UDP checksum");
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            // Summed over the raw message: etherparse's decoded `Icmpv4Type` drops bytes
            // 5-8 of some error types (time exceeded's unused field), which are summed too.
            let sum = Sum16BitWords::new()
                .add_slice(icmp.slice())
                .ones_complement();
            assert!(sum == 0 || negative_zero, "ICMP checksum");
            if matches!(icmp.type_u8(), 3 | 11 | 12)
                && let Ok(inner) = Ipv4HeaderSlice::from_slice(icmp.payload())
            {
                let sum = Sum16BitWords::new()
                    .add_slice(inner.slice())
                    .ones_complement();
                assert_eq!(sum, 0, "embedded IPv4 checksum");
            }
        }
        _ => {}
    }
}
