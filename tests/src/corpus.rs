//! Raw frame builders for the malformed-frame corpus (`tests/tests/corpus.rs`).
//!
//! The builders write every byte themselves (the corpus needs headers etherparse will not
//! write: IHL 0, version 6 in an IPv4 ethertype, lengths that lie, truncated headers);
//! checksums are computed here and the outputs are checked with etherparse by the test.

use crate::frames::CLIENT_MAC;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

/// Offset of the IPv4 header in an untagged frame, and of the L4 header without options.
pub const L3: usize = 14;
pub const L4: usize = 34;

/// The Internet checksum (RFC 1071) of `data`, folded and complemented.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

fn sum(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        s += u32::from(word);
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An Ethernet header from the client to `dst_mac`.
pub fn eth(dst_mac: [u8; 6], ether_type: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&ether_type.to_be_bytes());
    out
}

/// The fields of an IPv4 header the corpus varies.
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub ttl: u8,
    /// Flags and fragment offset (host order): DF 0x4000, MF 0x2000, offset in 8-byte units.
    pub frags: u16,
    pub id: u16,
}

impl Ip {
    pub fn new(src: [u8; 4], dst: [u8; 4], proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            ttl: 64,
            frags: 0,
            id: 0x1234,
        }
    }

    /// A 20-byte header for `payload_len` bytes of payload, checksum filled in.
    pub fn header(&self, payload_len: usize) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        h[6..8].copy_from_slice(&self.frags.to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src);
        h[16..20].copy_from_slice(&self.dst);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }
}

/// Ethernet + IPv4 (`ip`) + `payload` (an L4 segment or anything else).
pub fn ipv4(dst_mac: [u8; 6], ip: &Ip, payload: &[u8]) -> Vec<u8> {
    let mut out = eth(dst_mac, ETH_P_IP);
    out.extend_from_slice(&ip.header(payload.len()));
    out.extend_from_slice(payload);
    out
}

/// The pseudo-header sum of a TCP or UDP segment of `len` bytes.
fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum(&p)
}

fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    !fold(pseudo(src, dst, proto, segment.len()) + sum(segment))
}

/// A UDP datagram with a correct checksum (a computed 0 is sent as 0xffff).
pub fn udp_seg(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(8 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    let mut c = l4_checksum(src, dst, UDP, &s);
    if c == 0 {
        c = 0xffff;
    }
    s[6..8].copy_from_slice(&c.to_be_bytes());
    s
}

/// A TCP segment (20-byte header) with `flags` and a correct checksum.
pub fn tcp_seg(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&1000u32.to_be_bytes()); // sequence
    let ack = if flags & ACK != 0 { 1u32 } else { 0 };
    s.extend_from_slice(&ack.to_be_bytes());
    s.push(0x50); // data offset 5
    s.push(flags);
    s.extend_from_slice(&65535u16.to_be_bytes()); // window
    s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    s.extend_from_slice(payload);
    let c = l4_checksum(src, dst, TCP, &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// An ICMP message: `kind`, `code`, the 4 bytes after the checksum, `payload`.
pub fn icmp_msg(kind: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut s = vec![kind, code, 0, 0];
    s.extend_from_slice(&rest);
    s.extend_from_slice(payload);
    let c = checksum(&s);
    s[2..4].copy_from_slice(&c.to_be_bytes());
    s
}

/// An ICMP echo request (`request`) or reply with identifier `id`, sequence 1.
pub fn echo_msg(request: bool, id: u16, payload: &[u8]) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    icmp_msg(if request { 8 } else { 0 }, 0, [a, b, 0, 1], payload)
}

/// Ethernet + IPv4 + UDP.
pub fn udp(
    dst_mac: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    ipv4(
        dst_mac,
        &Ip::new(src, dst, UDP),
        &udp_seg(src, dst, sport, dport, payload),
    )
}

/// Ethernet + IPv4 + TCP with `flags`.
pub fn tcp(
    dst_mac: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    ipv4(
        dst_mac,
        &Ip::new(src, dst, TCP),
        &tcp_seg(src, dst, sport, dport, flags, payload),
    )
}

/// Ethernet + IPv4 + ICMP echo.
pub fn echo(
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    request: bool,
    id: u16,
    payload: &[u8],
) -> Vec<u8> {
    ipv4(
        dst_mac,
        &Ip::new(src, dst, ICMP),
        &echo_msg(request, id, payload),
    )
}

/// Recomputes the IPv4 header checksum of `frame` (header at [`L3`], IHL honoured, clamped
/// to the frame).
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[L3] & 0x0f) * 4;
    let end = (L3 + ihl.max(20)).min(frame.len());
    frame[L3 + 10] = 0;
    frame[L3 + 11] = 0;
    let c = checksum(&frame[L3..end]);
    frame[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Sets the IPv4 total length of `frame` and fixes the header checksum.
pub fn set_total_length(frame: &mut [u8], len: u16) {
    frame[L3 + 2..L3 + 4].copy_from_slice(&len.to_be_bytes());
    fix_ip_checksum(frame);
}

/// `frame` cut after `l4_bytes` of its L4 header, with the IPv4 total length saying so
/// (a consistent packet whose L4 header is short).
pub fn cut_l4(frame: &[u8], l4_bytes: usize) -> Vec<u8> {
    let mut f = frame[..L4 + l4_bytes].to_vec();
    set_total_length(&mut f, (20 + l4_bytes) as u16);
    f
}

/// Pads `frame` with zeros to `len` bytes (Ethernet padding; the IP length is unchanged).
pub fn pad(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    if frame.len() < len {
        frame.resize(len, 0);
    }
    frame
}

/// Inserts a VLAN tag (`tpid`, VLAN `vid`) after the MAC addresses.
pub fn tag(mut frame: Vec<u8>, tpid: u16, vid: u16) -> Vec<u8> {
    let [a, b] = tpid.to_be_bytes();
    let [c, d] = vid.to_be_bytes();
    frame.splice(12..12, [a, b, c, d]);
    frame
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug)]
pub struct Arp {
    pub dst_mac: [u8; 6],
    pub oper: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
    pub hlen: u8,
    pub plen: u8,
}

impl Arp {
    /// A broadcast who-has `tpa` from `spa` (the client's MAC).
    pub fn request(spa: [u8; 4], tpa: [u8; 4]) -> Self {
        Self {
            dst_mac: [0xff; 6],
            oper: 1,
            sha: CLIENT_MAC,
            spa,
            tha: [0; 6],
            tpa,
            hlen: 6,
            plen: 4,
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        let mut out = eth(self.dst_mac, ETH_P_ARP);
        out.extend_from_slice(&[0, 1, 8, 0, self.hlen, self.plen]);
        out.extend_from_slice(&self.oper.to_be_bytes());
        out.extend_from_slice(&self.sha);
        out.extend_from_slice(&self.spa);
        out.extend_from_slice(&self.tha);
        out.extend_from_slice(&self.tpa);
        out
    }
}

/// Ethernet + IPv6 from fe80::1 to ff02::1 + `ext` (extension headers, the first of
/// protocol `first`) + an 8-byte UDP header with no checksum check intended.
pub fn ipv6(dst_mac: [u8; 6], first: u8, ext: &[u8]) -> Vec<u8> {
    let mut out = eth(dst_mac, ETH_P_IPV6);
    let udp = [0x13, 0x88, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00];
    let payload_len = (ext.len() + udp.len()) as u16;
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.push(first);
    out.push(64);
    let mut src = [0u8; 16];
    src[0] = 0xfe;
    src[1] = 0x80;
    src[15] = 1;
    let mut dst = [0u8; 16];
    dst[0] = 0xff;
    dst[1] = 0x02;
    dst[15] = 1;
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(ext);
    out.extend_from_slice(&udp);
    out
}

/// An IPv6 hop-by-hop options header (8 bytes, PadN) followed by UDP.
pub const HOP_BY_HOP_THEN_UDP: [u8; 8] = [UDP, 0, 1, 4, 0, 0, 0, 0];
/// An IPv6 fragment header (first fragment, more fragments) followed by UDP.
pub const FRAGMENT_THEN_UDP: [u8; 8] = [UDP, 0, 0x00, 0x01, 0, 0, 0x12, 0x34];

/// Whether the L4 checksum of a frame (checked by etherparse) is right, wrong, or absent
/// (UDP checksum 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Sum {
    Right,
    Wrong,
    Zero,
    /// Not TCP, UDP or ICMP, or not parseable.
    NotApplicable,
}

/// What etherparse sees in an Ethernet/IPv4 frame: the header checksum's state, TTL,
/// addresses, ports, and the L4 checksum's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ip_sum_ok: bool,
    pub ttl: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub l4: L4Sum,
}

pub fn view(frame: &[u8]) -> View {
    use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame)
        .unwrap_or_else(|e| panic!("etherparse rejects {frame:02x?}: {e}"));
    let Some(LinkSlice::Ethernet2(e)) = &p.link else {
        panic!("no Ethernet header")
    };
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("no IPv4 header")
    };
    let h = ip.header().to_header();
    let l4 = match &p.transport {
        Some(TransportSlice::Udp(u)) if u.checksum() == 0 => L4Sum::Zero,
        Some(TransportSlice::Udp(u)) => {
            let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).ok();
            if want == Some(u.checksum()) {
                L4Sum::Right
            } else {
                L4Sum::Wrong
            }
        }
        Some(TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).ok();
            if want == Some(t.checksum()) {
                L4Sum::Right
            } else {
                L4Sum::Wrong
            }
        }
        Some(TransportSlice::Icmpv4(i)) => {
            if i.header().icmp_type.calc_checksum(i.payload()) == i.checksum() {
                L4Sum::Right
            } else {
                L4Sum::Wrong
            }
        }
        _ => L4Sum::NotApplicable,
    };
    View {
        dst_mac: e.destination(),
        src_mac: e.source(),
        // Over the raw bytes: etherparse's header drops the reserved flag bit.
        ip_sum_ok: checksum(ip.header().slice()) == 0,
        ttl: h.time_to_live,
        src: h.source,
        dst: h.destination,
        l4,
    }
}
