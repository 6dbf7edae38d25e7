//! The made-up packet of a trace: what the operator says (protocol, addresses, ports, flags),
//! the Ethernet frame built from it, and the headers read back from a frame (the input and
//! what the programs made of it), with the fields that changed.

use std::{net::Ipv4Addr, str::FromStr};

use etherparse::{PacketBuilder, SlicedPacket, TcpHeader, TransportSlice};
use serde::Serialize;

use crate::conntrack::proto_name;

/// Source MAC of a traced frame unless one is given (locally administered).
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x74, 0x72, 0x63];

// ---- the packet ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "6" => Ok(Proto::Tcp),
            "udp" | "17" => Ok(Proto::Udp),
            "icmp" | "1" => Ok(Proto::Icmp),
            _ => Err(format!("{s:?}: not tcp, udp or icmp")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpType {
    EchoRequest,
    EchoReply,
}

impl FromStr for IcmpType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "echo-request" | "8" => Ok(IcmpType::EchoRequest),
            "echo-reply" | "0" => Ok(IcmpType::EchoReply),
            _ => Err(format!("{s:?}: not echo-request or echo-reply")),
        }
    }
}

/// Bits of the TCP flags byte, by name.
const TCP_FLAG_NAMES: [(&str, u8); 8] = [
    ("fin", 0x01),
    ("syn", 0x02),
    ("rst", 0x04),
    ("psh", 0x08),
    ("ack", 0x10),
    ("urg", 0x20),
    ("ece", 0x40),
    ("cwr", 0x80),
];

/// `syn`, `syn,ack`, `fin|ack`, `none` (no flags) or a number (`0x12`).
pub fn parse_tcp_flags(s: &str) -> Result<u8, String> {
    if s == "none" || s.is_empty() {
        return Ok(0);
    }
    if let Some(hex) = s.strip_prefix("0x") {
        return u8::from_str_radix(hex, 16).map_err(|e| format!("{s:?}: {e}"));
    }
    if let Ok(n) = s.parse::<u8>() {
        return Ok(n);
    }
    let mut flags = 0;
    for name in s.split([',', '|', '+']) {
        let name = name.trim().to_ascii_lowercase();
        let bit = TCP_FLAG_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
            .ok_or_else(|| format!("{name:?}: not a TCP flag (fin syn rst psh ack urg ece cwr)"))?;
        flags |= bit;
    }
    Ok(flags)
}

/// The flags byte by name, `syn,ack` (empty: `none`).
pub fn tcp_flags_name(flags: u8) -> String {
    let names: Vec<&str> = TCP_FLAG_NAMES
        .iter()
        .filter(|(_, b)| flags & b != 0)
        .map(|(n, _)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// `02:00:00:00:00:01` (or with `-`).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(format!("{s:?}: not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{s:?}: not a MAC address"))?;
    }
    Ok(mac)
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The packet to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: Proto,
    /// TCP and UDP ports.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte.
    pub tcp_flags: u8,
    pub icmp_type: IcmpType,
    /// ICMP echo identifier.
    pub icmp_id: u16,
    pub ttl: u8,
    /// IPv4 total length (headers and zero payload); `None`: headers only.
    pub len: Option<usize>,
    pub src_mac: [u8; 6],
    /// `None`: the ingress interface's MAC.
    pub dst_mac: Option<[u8; 6]>,
}

impl Default for Packet {
    fn default() -> Self {
        Self {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            proto: Proto::Udp,
            sport: 40000,
            dport: 80,
            tcp_flags: 0x02,
            icmp_type: IcmpType::EchoRequest,
            icmp_id: 1,
            ttl: 64,
            len: None,
            src_mac: DEFAULT_SRC_MAC,
            dst_mac: None,
        }
    }
}

/// The Ethernet frame of `p`, to `dst_mac`, with every checksum right.
pub fn build_frame(p: &Packet, dst_mac: [u8; 6]) -> Result<Vec<u8>, String> {
    let l4 = match p.proto {
        Proto::Tcp => TcpHeader::MIN_LEN,
        Proto::Udp | Proto::Icmp => 8,
    };
    let headers = 20 + l4;
    let total = p.len.unwrap_or(headers);
    if !(headers..=usize::from(u16::MAX)).contains(&total) {
        return Err(format!(
            "--len {total}: the IPv4 total length must be {headers}-65535 for this protocol"
        ));
    }
    let payload = vec![0u8; total - headers];
    let ip =
        PacketBuilder::ethernet2(p.src_mac, dst_mac).ipv4(p.src.octets(), p.dst.octets(), p.ttl);
    let mut out = Vec::with_capacity(14 + total);
    let written = match p.proto {
        Proto::Tcp => {
            let mut h = TcpHeader::new(p.sport, p.dport, 1, 64240);
            let bit = |b: u8| p.tcp_flags & b != 0;
            (h.fin, h.syn, h.rst, h.psh) = (bit(0x01), bit(0x02), bit(0x04), bit(0x08));
            (h.ack, h.urg, h.ece, h.cwr) = (bit(0x10), bit(0x20), bit(0x40), bit(0x80));
            if h.ack {
                h.acknowledgment_number = 1;
            }
            ip.tcp_header(h).write(&mut out, &payload)
        }
        Proto::Udp => ip.udp(p.sport, p.dport).write(&mut out, &payload),
        Proto::Icmp => match p.icmp_type {
            IcmpType::EchoRequest => ip
                .icmpv4_echo_request(p.icmp_id, 1)
                .write(&mut out, &payload),
            IcmpType::EchoReply => ip.icmpv4_echo_reply(p.icmp_id, 1).write(&mut out, &payload),
        },
    };
    written.map_err(|e| format!("building the frame: {e}"))?;
    Ok(out)
}

// ---- what a frame looks like -----------------------------------------------------------

/// The headers of a frame, as etherparse reads them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Headers {
    pub src_mac: String,
    pub dst_mac: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// "tcp", "udp", "icmp" or the protocol number.
    pub proto: String,
    pub ttl: u8,
    /// IPv4 total length.
    pub length: u16,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// TCP only: `syn,ack`.
    pub tcp_flags: Option<String>,
    /// ICMP only: "echo-request", "echo-reply" or the type number.
    pub icmp_type: Option<String>,
    /// ICMP echo only.
    pub icmp_id: Option<u16>,
    pub ip_checksum_ok: bool,
    /// TCP, UDP (a zero UDP checksum is "none", so fine) and ICMP; `None` for others.
    pub l4_checksum_ok: Option<bool>,
}

/// Parses an IPv4-over-Ethernet frame and checks its checksums.
pub fn parse_headers(frame: &[u8]) -> Result<Headers, String> {
    let sliced = SlicedPacket::from_ethernet(frame).map_err(|e| format!("not parseable: {e}"))?;
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &sliced.link else {
        return Err("no Ethernet header".into());
    };
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        return Err("not IPv4".into());
    };
    let h = ip.header().to_header();
    let mut out = Headers {
        src_mac: mac_string(eth.source()),
        dst_mac: mac_string(eth.destination()),
        src: Ipv4Addr::from(h.source),
        dst: Ipv4Addr::from(h.destination),
        proto: proto_name(h.protocol.0),
        ttl: h.time_to_live,
        length: h.total_len,
        sport: None,
        dport: None,
        tcp_flags: None,
        icmp_type: None,
        icmp_id: None,
        ip_checksum_ok: h.calc_header_checksum() == h.header_checksum,
        l4_checksum_ok: None,
    };
    match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            out.sport = Some(t.source_port());
            out.dport = Some(t.destination_port());
            let flags = frame
                .get(14 + usize::from(h.ihl()) * 4 + 13)
                .copied()
                .unwrap_or(0);
            out.tcp_flags = Some(tcp_flags_name(flags));
            out.l4_checksum_ok =
                Some(t.calc_checksum_ipv4(h.source, h.destination).ok() == Some(t.checksum()));
        }
        Some(TransportSlice::Udp(u)) => {
            out.sport = Some(u.source_port());
            out.dport = Some(u.destination_port());
            let ok = u.checksum() == 0
                || u.to_header().calc_checksum_ipv4(&h, u.payload()).ok() == Some(u.checksum());
            out.l4_checksum_ok = Some(ok);
        }
        Some(TransportSlice::Icmpv4(i)) => {
            use etherparse::Icmpv4Type;
            let (name, id) = match i.header().icmp_type {
                Icmpv4Type::EchoRequest(e) => ("echo-request".to_string(), Some(e.id)),
                Icmpv4Type::EchoReply(e) => ("echo-reply".to_string(), Some(e.id)),
                _ => (i.type_u8().to_string(), None),
            };
            out.icmp_type = Some(name);
            out.icmp_id = id;
            out.l4_checksum_ok =
                Some(i.header().icmp_type.calc_checksum(i.payload()) == i.checksum());
        }
        _ => {}
    }
    Ok(out)
}

/// What differs between two frames' headers, for people: `src 10.0.1.5 -> 198.18.0.2`.
pub fn changes(before: &Headers, after: &Headers) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what} {a} -> {b}"));
        }
    };
    let opt = |v: Option<u16>| v.map_or_else(|| "-".into(), |v| v.to_string());
    diff("src_mac", before.src_mac.clone(), after.src_mac.clone());
    diff("dst_mac", before.dst_mac.clone(), after.dst_mac.clone());
    diff("src", before.src.to_string(), after.src.to_string());
    diff("dst", before.dst.to_string(), after.dst.to_string());
    diff("sport", opt(before.sport), opt(after.sport));
    diff("dport", opt(before.dport), opt(after.dport));
    diff("icmp_id", opt(before.icmp_id), opt(after.icmp_id));
    diff("ttl", before.ttl.to_string(), after.ttl.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet() -> Packet {
        Packet {
            src: Ipv4Addr::new(10, 0, 1, 5),
            dst: Ipv4Addr::new(203, 0, 113, 7),
            ..Packet::default()
        }
    }

    #[test]
    fn frames_are_built_with_valid_checksums() {
        let mac = [2, 0, 0, 0, 0, 9];
        for (proto, l4) in [(Proto::Tcp, 20), (Proto::Udp, 8), (Proto::Icmp, 8)] {
            let p = Packet {
                proto,
                tcp_flags: 0x12,
                ..packet()
            };
            let frame = build_frame(&p, mac).expect("frame");
            assert_eq!(frame.len(), 14 + 20 + l4);
            let h = parse_headers(&frame).expect("parse");
            assert!(h.ip_checksum_ok && h.l4_checksum_ok == Some(true), "{h:?}");
            assert_eq!(h.dst_mac, "02:00:00:00:00:09");
            assert_eq!(h.src_mac, mac_string(DEFAULT_SRC_MAC));
            assert_eq!(h.ttl, 64);
            match proto {
                Proto::Tcp => {
                    assert_eq!(h.tcp_flags.as_deref(), Some("syn,ack"));
                    assert_eq!((h.sport, h.dport), (Some(40000), Some(80)));
                }
                Proto::Udp => assert_eq!(h.proto, "udp"),
                Proto::Icmp => {
                    assert_eq!(h.icmp_type.as_deref(), Some("echo-request"));
                    assert_eq!(h.icmp_id, Some(1));
                }
            }
        }
        let long = Packet {
            len: Some(1500),
            ttl: 3,
            ..packet()
        };
        let frame = build_frame(&long, mac).expect("frame");
        assert_eq!(frame.len(), 14 + 1500);
        assert_eq!(parse_headers(&frame).expect("parse").ttl, 3);
        assert!(
            build_frame(
                &Packet {
                    len: Some(27),
                    ..packet()
                },
                mac
            )
            .is_err()
        );
    }

    #[test]
    fn flags_macs_and_names_parse() {
        assert_eq!(parse_tcp_flags("syn"), Ok(0x02));
        assert_eq!(parse_tcp_flags("syn,ack"), Ok(0x12));
        assert_eq!(parse_tcp_flags("fin|ack"), Ok(0x11));
        assert_eq!(parse_tcp_flags("none"), Ok(0));
        assert_eq!(parse_tcp_flags("0x29"), Ok(0x29));
        assert!(parse_tcp_flags("syn,bogus").is_err());
        assert_eq!(tcp_flags_name(0x12), "syn,ack");
        assert_eq!(tcp_flags_name(0), "none");
        assert_eq!(
            parse_mac("02:00:00:aa:bb:0c"),
            Ok([2, 0, 0, 0xaa, 0xbb, 0x0c])
        );
        assert!(parse_mac("02:00:00:aa:bb").is_err());
        assert_eq!("tcp".parse::<Proto>(), Ok(Proto::Tcp));
        assert!("sctp".parse::<Proto>().is_err());
        assert_eq!("echo-reply".parse::<IcmpType>(), Ok(IcmpType::EchoReply));
    }

    #[test]
    fn changes_name_every_rewritten_field() {
        let a = parse_headers(&build_frame(&packet(), [2, 0, 0, 0, 0, 1]).expect("frame"))
            .expect("parse");
        let mut b = a.clone();
        b.src = Ipv4Addr::new(198, 18, 0, 2);
        b.ttl = 63;
        b.sport = Some(1024);
        assert_eq!(
            changes(&a, &b),
            vec![
                "src 10.0.1.5 -> 198.18.0.2".to_string(),
                "sport 40000 -> 1024".to_string(),
                "ttl 64 -> 63".to_string()
            ]
        );
    }
}
