//! Readable frames for fixtures (`udp(...)`, `tcp(...)`), and a parser that checks what
//! the program wrote, both built on etherparse rather than on our own parsing code.

use etherparse::{
    EtherType, Ethernet2Header, Ipv4Header, PacketBuilder, SlicedPacket, TransportSlice,
};

pub type Mac = [u8; 6];

pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const ROUTER_IN_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];
pub const ROUTER_OUT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x20];
pub const NEXT_HOP_MAC: Mac = [0x02, 0, 0, 0, 0, 0x30];

/// A UDP frame from `src` to `dst`.
pub fn udp(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_IN_MAC)
        .ipv4(src, dst, ttl)
        .udp(40000, 53)
        .write(&mut out, payload)
        .expect("building a UDP frame");
    out
}

/// A TCP SYN from `src` to `dst`.
pub fn tcp(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_IN_MAC)
        .ipv4(src, dst, ttl)
        .tcp(40000, 80, 1, 65535)
        .syn()
        .write(&mut out, &[])
        .expect("building a TCP frame");
    out
}

/// An ICMP echo request from `src` to `dst`.
pub fn icmp_echo(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_IN_MAC)
        .ipv4(src, dst, ttl)
        .icmpv4_echo_request(7, 1)
        .write(&mut out, b"ping")
        .expect("building an ICMP frame");
    out
}

/// A frame with `ether_type` and `payload` after the Ethernet header.
pub fn raw_l2(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Ethernet2Header {
        source: CLIENT_MAC,
        destination: ROUTER_IN_MAC,
        ether_type: EtherType(ether_type),
    }
    .write(&mut out)
    .expect("writing an Ethernet header");
    out.extend_from_slice(payload);
    out
}

/// Recomputes the IPv4 header checksum of `frame` (for fixtures that edit the header).
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let (mut hdr, _) = Ipv4Header::from_slice(&frame[14..]).expect("an IPv4 header to fix");
    hdr.header_checksum = hdr.calc_header_checksum();
    let ihl = usize::from(hdr.ihl()) * 4;
    let mut bytes = Vec::new();
    hdr.write(&mut bytes).expect("writing IPv4 header");
    frame[14..14 + ihl].copy_from_slice(&bytes);
}

/// What a forwarded frame looks like to an independent parser.
#[derive(Debug)]
pub struct Parsed {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub ttl: u8,
    pub ip_checksum_ok: bool,
    pub l4_checksum_ok: bool,
}

/// Parses `frame` with etherparse and verifies both checksums.
pub fn parse(frame: &[u8]) -> Parsed {
    let sliced = SlicedPacket::from_ethernet(frame)
        .unwrap_or_else(|e| panic!("etherparse rejects the output frame: {e}"));
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &sliced.link else {
        panic!("no Ethernet header in output");
    };
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!("no IPv4 header in output");
    };
    let header = ip.header().to_header();
    let ip_checksum_ok = header.calc_header_checksum() == header.header_checksum;
    let l4_checksum_ok = match &sliced.transport {
        Some(TransportSlice::Udp(u)) => {
            u.to_header().calc_checksum_ipv4(&header, u.payload()).ok() == Some(u.checksum())
        }
        Some(TransportSlice::Tcp(t)) => {
            t.to_header().calc_checksum_ipv4(&header, t.payload()).ok() == Some(t.checksum())
        }
        Some(TransportSlice::Icmpv4(i)) => {
            i.header().icmp_type.calc_checksum(i.payload()) == i.checksum()
        }
        // Other protocols carry no L4 checksum these tests produce.
        _ => true,
    };
    Parsed {
        src_mac: eth.source(),
        dst_mac: eth.destination(),
        ttl: header.time_to_live,
        ip_checksum_ok,
        l4_checksum_ok,
    }
}
