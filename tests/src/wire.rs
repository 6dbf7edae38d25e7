//! Frames for the BPF_PROG_TEST_RUN packet tests, built and checked by etherparse (not by
//! the router's own code).

use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use crate::frames::CLIENT_MAC;

/// Ethernet + IPv4 + L4 from `src` to `dst` (MACs as a host sends them to the router).
pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, router_mac: [u8; 6]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, router_mac)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, b"some payload")
        .expect("udp");
    out
}

pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, router_mac: [u8; 6]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, router_mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535)
        .syn()
        .write(&mut out, &[])
        .expect("tcp");
    out
}

pub fn echo(src: [u8; 4], dst: [u8; 4], id: u16, request: bool, router_mac: [u8; 6]) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, router_mac).ipv4(src, dst, 64);
    let b = if request {
        b.icmpv4_echo_request(id, 1)
    } else {
        b.icmpv4_echo_reply(id, 1)
    };
    b.write(&mut out, b"ping").expect("icmp");
    out
}

/// What an independent parser sees in a forwarded frame.
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub dst_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Ports, or (ICMP echo id, 0).
    pub sport: u16,
    pub dport: u16,
}

/// Parses `frame`, asserting every checksum in it is valid, UDP checksum 0 included.
pub fn seen(frame: &[u8]) -> Seen {
    let p = SlicedPacket::from_ethernet(frame).expect("etherparse accepts the output");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
        panic!("no Ethernet")
    };
    let Some(NetSlice::Ipv4(ipv4)) = &p.net else {
        panic!("no IPv4")
    };
    let h = ipv4.header().to_header();
    assert_eq!(h.calc_header_checksum(), h.header_checksum, "IPv4 checksum");
    let (sport, dport) = match &p.transport {
        Some(TransportSlice::Udp(u)) => {
            if u.checksum() != 0 {
                let want = u
                    .to_header()
                    .calc_checksum_ipv4(&h, u.payload())
                    .expect("csum");
                assert_eq!(want, u.checksum(), "UDP checksum");
            }
            (u.source_port(), u.destination_port())
        }
        Some(TransportSlice::Tcp(t)) => {
            let want = t
                .to_header()
                .calc_checksum_ipv4(&h, t.payload())
                .expect("csum");
            assert_eq!(want, t.checksum(), "TCP checksum");
            (t.source_port(), t.destination_port())
        }
        Some(TransportSlice::Icmpv4(i)) => {
            assert_eq!(
                i.header().icmp_type.calc_checksum(i.payload()),
                i.checksum(),
                "ICMP checksum"
            );
            match i.header().icmp_type {
                Icmpv4Type::EchoRequest(e) | Icmpv4Type::EchoReply(e) => (e.id, 0),
                _ => (0, 0),
            }
        }
        _ => (0, 0),
    };
    Seen {
        dst_mac: eth.destination(),
        src: h.source,
        dst: h.destination,
        sport,
        dport,
    }
}

/// A TCP segment with the given flags byte (SYN 0x02, ACK 0x10, FIN 0x01, RST 0x04).
pub fn tcp_with_flags(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
    router_mac: [u8; 6],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, router_mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535);
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("tcp");
    out
}
