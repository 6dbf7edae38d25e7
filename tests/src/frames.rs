//! The frames of the packet tests, built and read back by etherparse (an implementation of
//! the headers independent of the router's own parsing code).
//!
//! A frame reads as its headers, outermost first, and ends with its payload:
//!
//! ```ignore
//! eth(ROUTER_IN_MAC).ipv4(VM, REMOTE).udp(5000, 53).payload(b"query")
//! eth(ROUTER_OUT_MAC).ipv4(REMOTE, FIP).ttl(1).tcp(443, 5000).seq(1).syn().build()
//! eth(ROUTER_OUT_MAC).ipv4(UPSTREAM, GW).icmp_time_exceeded().payload(&quoted)
//! ipv4(GW, REMOTE).udp(40000, 53).payload(b"x") // an IPv4 packet alone
//! ```
//!
//! Frames come from [`CLIENT_MAC`] unless [`Eth::src`] says otherwise; IPv4 headers have
//! TTL 64 unless [`Ipv4::ttl`] says otherwise. [`parse`] and [`addresses`] read what a
//! program wrote.

use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Type, Ipv4Header, NetSlice, PacketBuilder, PacketBuilderStep,
    SlicedPacket, TransportSlice, icmpv4::TimeExceededCode,
};

pub type Mac = [u8; 6];

pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const ROUTER_IN_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];
pub const ROUTER_OUT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x20];
pub const NEXT_HOP_MAC: Mac = [0x02, 0, 0, 0, 0, 0x30];
pub const BROADCAST_MAC: Mac = [0xff; 6];

/// TCP flag bits, as in the header's flags byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// An Ethernet header from [`CLIENT_MAC`] to `dst`.
pub fn eth(dst: Mac) -> Eth {
    Eth {
        src: CLIENT_MAC,
        dst,
    }
}

/// An IPv4 packet without a link header (what an ICMP error quotes), TTL 64.
pub fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Ipv4 {
    Ipv4 {
        eth: None,
        src,
        dst,
        ttl: 64,
    }
}

/// An Ethernet header; its payload comes next.
#[derive(Clone, Copy, Debug)]
pub struct Eth {
    src: Mac,
    dst: Mac,
}

impl Eth {
    /// The sender's MAC.
    pub fn src(self, mac: Mac) -> Self {
        Self { src: mac, ..self }
    }

    /// IPv4 from `src` to `dst`, TTL 64.
    pub fn ipv4(self, src: [u8; 4], dst: [u8; 4]) -> Ipv4 {
        Ipv4 {
            eth: Some(self),
            ..ipv4(src, dst)
        }
    }

    /// `payload` as is, after an Ethernet header naming `ether_type`.
    pub fn raw(self, ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Ethernet2Header {
            source: self.src,
            destination: self.dst,
            ether_type: EtherType(ether_type),
        }
        .write(&mut out)
        .expect("writing an Ethernet header");
        out.extend_from_slice(payload);
        out
    }

    /// An ARP request from the sender's MAC and `sender_ip` for `target_ip` (42 bytes, no
    /// padding).
    pub fn arp_request(self, sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
        // Hardware Ethernet, protocol IPv4, address lengths 6 and 4, operation request.
        let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        arp.extend_from_slice(&self.src);
        arp.extend_from_slice(&sender_ip);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&target_ip);
        self.raw(0x0806, &arp)
    }
}

/// An IPv4 header; its transport header comes next.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4 {
    eth: Option<Eth>,
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
}

impl Ipv4 {
    pub fn ttl(self, ttl: u8) -> Self {
        Self { ttl, ..self }
    }

    pub fn udp(self, sport: u16, dport: u16) -> Udp {
        Udp {
            ip: self,
            sport,
            dport,
        }
    }

    /// A TCP segment with no flags set, sequence number 0 and window 65535.
    pub fn tcp(self, sport: u16, dport: u16) -> Tcp {
        Tcp {
            ip: self,
            sport,
            dport,
            seq: 0,
            window: 65535,
            flags: 0,
            ack: 1,
        }
    }

    pub fn icmp_echo_request(self, id: u16, seq: u16) -> Icmp {
        self.icmp(Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader {
            id,
            seq,
        }))
    }

    pub fn icmp_echo_reply(self, id: u16, seq: u16) -> Icmp {
        self.icmp(Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader {
            id,
            seq,
        }))
    }

    /// A time exceeded (TTL exceeded in transit); the payload is the quoted packet.
    pub fn icmp_time_exceeded(self) -> Icmp {
        self.icmp(Icmpv4Type::TimeExceeded(
            TimeExceededCode::TtlExceededInTransit,
        ))
    }

    /// Any ICMP message; the payload is what follows its 8-byte header.
    pub fn icmp(self, icmp_type: Icmpv4Type) -> Icmp {
        Icmp {
            ip: self,
            icmp_type,
        }
    }

    fn builder(self) -> PacketBuilderStep<etherparse::IpHeaders> {
        match self.eth {
            Some(eth) => {
                PacketBuilder::ethernet2(eth.src, eth.dst).ipv4(self.src, self.dst, self.ttl)
            }
            None => PacketBuilder::ipv4(self.src, self.dst, self.ttl),
        }
    }
}

/// A UDP header, checksum filled in.
#[derive(Clone, Copy, Debug)]
pub struct Udp {
    ip: Ipv4,
    sport: u16,
    dport: u16,
}

impl Udp {
    pub fn payload(self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.ip
            .builder()
            .udp(self.sport, self.dport)
            .write(&mut out, payload)
            .expect("building a UDP frame");
        out
    }
}

/// A TCP header, checksum filled in.
#[derive(Clone, Copy, Debug)]
pub struct Tcp {
    ip: Ipv4,
    sport: u16,
    dport: u16,
    seq: u32,
    window: u16,
    flags: u8,
    /// The acknowledgment number, when the ACK flag is set.
    ack: u32,
}

impl Tcp {
    pub fn seq(self, seq: u32) -> Self {
        Self { seq, ..self }
    }

    pub fn window(self, window: u16) -> Self {
        Self { window, ..self }
    }

    pub fn syn(self) -> Self {
        self.flags(TCP_SYN)
    }

    pub fn fin(self) -> Self {
        self.flags(TCP_FIN)
    }

    pub fn rst(self) -> Self {
        self.flags(TCP_RST)
    }

    /// The ACK flag, acknowledging `number`.
    pub fn ack(self, number: u32) -> Self {
        Self {
            ack: number,
            ..self.flags(TCP_ACK)
        }
    }

    /// Sets the flags in `bits` ([`TCP_FIN`], [`TCP_SYN`], [`TCP_RST`], [`TCP_PSH`],
    /// [`TCP_ACK`]; an ACK acknowledges 1 unless [`Tcp::ack`] says otherwise).
    pub fn flags(self, bits: u8) -> Self {
        Self {
            flags: self.flags | bits,
            ..self
        }
    }

    /// The segment without a payload.
    pub fn build(self) -> Vec<u8> {
        self.payload(&[])
    }

    pub fn payload(self, payload: &[u8]) -> Vec<u8> {
        let mut b = self
            .ip
            .builder()
            .tcp(self.sport, self.dport, self.seq, self.window);
        if self.flags & TCP_FIN != 0 {
            b = b.fin();
        }
        if self.flags & TCP_SYN != 0 {
            b = b.syn();
        }
        if self.flags & TCP_RST != 0 {
            b = b.rst();
        }
        if self.flags & TCP_PSH != 0 {
            b = b.psh();
        }
        if self.flags & TCP_ACK != 0 {
            b = b.ack(self.ack);
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).expect("building a TCP frame");
        out
    }
}

/// An ICMP header, checksum filled in.
#[derive(Clone, Debug)]
pub struct Icmp {
    ip: Ipv4,
    icmp_type: Icmpv4Type,
}

impl Icmp {
    pub fn payload(self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.ip
            .builder()
            .icmpv4(self.icmp_type)
            .write(&mut out, payload)
            .expect("building an ICMP frame");
        out
    }
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

/// An Ethernet/IPv4 frame as an independent parser reads it.
#[derive(Debug)]
pub struct Parsed {
    pub src_mac: Mac,
    pub ttl: u8,
    pub addresses: Addresses,
    pub ip_checksum_ok: bool,
    /// The TCP, UDP or ICMP checksum is right (a UDP checksum of 0, "none", is not).
    pub l4_checksum_ok: bool,
    /// A UDP datagram sent without a checksum (0).
    pub udp_checksum_absent: bool,
}

/// Where a frame goes: what the router's rewrites change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub dst_mac: Mac,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Ports, or (ICMP echo id, 0); (0, 0) for anything else.
    pub sport: u16,
    pub dport: u16,
}

impl Addresses {
    pub fn new(dst_mac: Mac, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self {
            dst_mac,
            src,
            dst,
            sport,
            dport,
        }
    }
}

/// Parses `frame` (Ethernet, IPv4, and the transport header when there is one).
pub fn parse(frame: &[u8]) -> Parsed {
    let sliced = SlicedPacket::from_ethernet(frame)
        .unwrap_or_else(|e| panic!("etherparse rejects the frame: {e}"));
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &sliced.link else {
        panic!("no Ethernet header in the frame");
    };
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!("no IPv4 header in the frame");
    };
    let header = ip.header().to_header();
    let ip_checksum_ok = header.calc_header_checksum() == header.header_checksum;
    let mut udp_checksum_absent = false;
    let (l4_checksum_ok, sport, dport) = match &sliced.transport {
        Some(TransportSlice::Udp(u)) => {
            udp_checksum_absent = u.checksum() == 0;
            let want = u.to_header().calc_checksum_ipv4(&header, u.payload()).ok();
            (
                want == Some(u.checksum()),
                u.source_port(),
                u.destination_port(),
            )
        }
        Some(TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&header, t.payload()).ok();
            (
                want == Some(t.checksum()),
                t.source_port(),
                t.destination_port(),
            )
        }
        Some(TransportSlice::Icmpv4(i)) => {
            let ok = i.header().icmp_type.calc_checksum(i.payload()) == i.checksum();
            match i.header().icmp_type {
                Icmpv4Type::EchoRequest(e) | Icmpv4Type::EchoReply(e) => (ok, e.id, 0),
                _ => (ok, 0, 0),
            }
        }
        // Other protocols carry no L4 checksum these tests produce.
        _ => (true, 0, 0),
    };
    Parsed {
        src_mac: eth.source(),
        ttl: header.time_to_live,
        addresses: Addresses {
            dst_mac: eth.destination(),
            src: header.source,
            dst: header.destination,
            sport,
            dport,
        },
        ip_checksum_ok,
        l4_checksum_ok,
        udp_checksum_absent,
    }
}

/// Where `frame` goes, asserting that every checksum in it is valid (a UDP datagram may
/// carry none).
pub fn addresses(frame: &[u8]) -> Addresses {
    let p = parse(frame);
    assert!(p.ip_checksum_ok, "IPv4 checksum");
    assert!(
        p.l4_checksum_ok || p.udp_checksum_absent,
        "L4 checksum of {:?}",
        p.addresses
    );
    p.addresses
}
