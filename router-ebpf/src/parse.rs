//! Ethernet / 802.1Q / IPv4 / L4 parsing with verifier-visible bounds checks.
//!
//! Parsing either yields the offsets the later stages need, or a final verdict (Katran's
//! "further processing or a final action"): the caller stops at the first verdict.

use network_types::{eth::EthHdr, ip::Ipv4Hdr, vlan::VlanHdr};
use router_common::Reason;

use crate::{context::Frame, csum, verdict::Verdict};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

const IPV4_HDR_LEN: usize = 20;
/// "More fragments" and the fragment offset (in 8-byte units) of the IPv4 flags field.
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;
const IP_MF_AND_OFFSET: u16 = IP_MF | IP_OFFSET;

/// Offset of the IPv4 header (untagged Ethernet).
pub const L3_OFFSET: usize = 14;
/// Offset of the L4 header: packets with IP options never reach the stages that use it.
pub const L4_OFFSET: usize = L3_OFFSET + IPV4_HDR_LEN;

/// A parsed IPv4 packet without options, whose TCP, UDP or ICMP header (if that is the
/// protocol and the packet is not a later fragment) lies within the directly accessible
/// data.
pub struct Ipv4Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    /// The "more fragments" bit and the fragment offset ([`IP_MF`], [`IP_OFFSET`]); 0 for a
    /// packet that is not a fragment.
    pub frags: u16,
}

impl Ipv4Packet {
    /// A fragment other than the first: no L4 header, only a slice of the datagram's data.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        self.frags & IP_OFFSET != 0
    }

    /// The first fragment of a fragmented datagram (offset 0, MF set): it carries the L4
    /// header.
    #[inline(always)]
    pub fn is_first_fragment(&self) -> bool {
        self.frags == IP_MF
    }
}

/// What the fast path handles at L2.
pub enum L2 {
    Ipv4(*mut EthHdr),
    Arp(*mut EthHdr),
}

/// Parses the Ethernet header and any VLAN tag.
#[inline(always)]
pub fn parse_l2(frame: &Frame) -> Result<L2, Verdict> {
    let eth: *mut EthHdr = frame
        .ptr_at(0)
        .ok_or(Verdict::Drop(Reason::TruncatedEthernet))?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    match ether_type {
        ETH_P_IP => Ok(L2::Ipv4(eth)),
        ETH_P_ARP => Ok(L2::Arp(eth)),
        ETH_P_IPV6 => Err(Verdict::Pass(Reason::Ipv6)),
        ETH_P_8021Q | ETH_P_8021AD => {
            // One tag is understood (and belongs to a VLAN sub-interface the kernel owns);
            // a second tag, or a truncated one, is just another L3 the kernel sees to.
            let vlan: *mut VlanHdr = frame
                .ptr_at(size_of::<EthHdr>())
                .ok_or(Verdict::Pass(Reason::OtherL3))?;
            // SAFETY: bounds checked above.
            let inner = u16::from_be(unsafe { (*vlan).ether_type });
            if inner == ETH_P_8021Q || inner == ETH_P_8021AD {
                Err(Verdict::Pass(Reason::OtherL3))
            } else {
                Err(Verdict::Pass(Reason::Vlan))
            }
        }
        _ => Err(Verdict::Pass(Reason::OtherL3)),
    }
}

/// Validates the IPv4 header that follows an untagged Ethernet header, and the L4 header
/// of TCP, UDP and ICMP (not in a later fragment, which has none). Packets the fast path
/// leaves to the kernel get `Pass`, broken ones `Drop`. Fragments are accepted: the
/// pipeline translates them (`fragment`).
#[inline(always)]
pub fn parse_ipv4(frame: &Frame, eth: *mut EthHdr) -> Result<Ipv4Packet, Verdict> {
    let l3 = size_of::<EthHdr>();
    let ip: *mut Ipv4Hdr = frame
        .ptr_at(l3)
        .ok_or(Verdict::Drop(Reason::MalformedIpv4))?;
    let hdr: *const [u8; IPV4_HDR_LEN] = ip as *const [u8; IPV4_HDR_LEN];
    // SAFETY: `ptr_at` checked the 20 bytes of the fixed header.
    let (vihl, tot_len, frags, proto, dst, src) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as u32,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).dst_addr,
            (*ip).src_addr,
        )
    };
    let ihl_bytes = ((vihl & 0x0f) as u32) * 4;
    if vihl >> 4 != 4 || ihl_bytes < IPV4_HDR_LEN as u32 {
        return Err(Verdict::Drop(Reason::MalformedIpv4));
    }
    // The packet's whole length only when the directly accessible part is shorter than the
    // IPv4 packet: under XDP it takes a helper call.
    let ip_end = l3 as u32 + tot_len;
    let linear = (frame.data_end - frame.data) as u32;
    if tot_len < ihl_bytes || (ip_end > linear && ip_end > frame.len()) {
        return Err(Verdict::Drop(Reason::MalformedIpv4));
    }
    if ihl_bytes != IPV4_HDR_LEN as u32 {
        return Err(Verdict::Pass(Reason::IpOptions));
    }
    // SAFETY: as above.
    if csum::ipv4_header_sum(unsafe { &*hdr }) != 0xffff {
        return Err(Verdict::Drop(Reason::BadIpChecksum));
    }
    if is_special(src) || is_special(dst) {
        return Err(Verdict::Pass(Reason::SpecialAddress));
    }
    let frags = frags & IP_MF_AND_OFFSET;
    let l4 = l3 + IPV4_HDR_LEN;
    let l4_ok = match proto {
        _ if frags & IP_OFFSET != 0 => true,
        IPPROTO_TCP => frame.ptr_at::<[u8; 20]>(l4).is_some() && tot_len >= 40,
        IPPROTO_UDP | IPPROTO_ICMP => frame.ptr_at::<[u8; 8]>(l4).is_some() && tot_len >= 28,
        _ => true,
    };
    if !l4_ok {
        return Err(Verdict::Drop(Reason::MalformedL4));
    }
    Ok(Ipv4Packet {
        eth,
        ip,
        src,
        dst,
        proto,
        frags,
    })
}

/// The headers of a packet `parse_ipv4` accepted earlier in this program run (the second
/// half of the pipeline cannot keep the first half's pointers); `None` cannot happen but
/// keeps the bounds visible to the verifier.
#[inline(always)]
pub fn reparse_ipv4(frame: &Frame) -> Option<Ipv4Packet> {
    let eth: *mut EthHdr = frame.ptr_at(0)?;
    let ip: *mut Ipv4Hdr = frame.ptr_at(L3_OFFSET)?;
    // SAFETY: `ptr_at` checked the fixed header.
    let (src, dst, proto, frags) = unsafe {
        (
            (*ip).src_addr,
            (*ip).dst_addr,
            (*ip).proto,
            u16::from_be_bytes((*ip).frags) & IP_MF_AND_OFFSET,
        )
    };
    Some(Ipv4Packet {
        eth,
        ip,
        src,
        dst,
        proto,
        frags,
    })
}

/// Addresses the kernel never forwards: 0.0.0.0/8, 127.0.0.0/8, multicast, class E and
/// limited broadcast. Handing them over lets the kernel apply its martian rules.
#[inline(always)]
fn is_special(addr: [u8; 4]) -> bool {
    addr[0] == 0 || addr[0] == 127 || addr[0] >= 224
}
