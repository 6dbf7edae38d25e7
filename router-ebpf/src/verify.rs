//! L4 checksum verification of packets that would create a session, as Linux conntrack
//! does (`nf_conntrack_checksum`): a corrupt or forged packet must not take a table entry
//! or an SNAT port. Forwarded packets of existing flows are not verified (the checksum is
//! updated incrementally, so an error reaches the receiver, which drops it).

use crate::{
    context::Frame,
    flow::Shape,
    parse::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Packet, L4_OFFSET},
};

/// Longest L4 segment verified (in 16-bit words): a 1500-byte MTU's worth. Longer ones (and
/// those not in the linear part of an skb) are left to the receiver.
const MAX_WORDS: usize = 740;

/// Whether `pkt`'s TCP, UDP or ICMP checksum is right (or cannot be checked here: a
/// fragment, a segment too long or beyond the linear part of an skb). A
/// TCP/UDP checksum field holding just the pseudo-header sum is accepted: that is a
/// CHECKSUM_PARTIAL packet of a local sender (a VM on a veth with tx offload), which the
/// device would have completed.
#[inline(always)]
pub fn l4_checksum_ok(frame: &Frame, pkt: &Ipv4Packet, shape: Shape) -> bool {
    // A first fragment's checksum covers the whole datagram, which is not here.
    if !matches!(shape, Shape::Ports | Shape::EchoRequest) || pkt.frags != 0 {
        return true;
    }
    // SAFETY: the IPv4 header was validated earlier in this run.
    let tot_len = usize::from(u16::from_be_bytes(unsafe { (*pkt.ip).tot_len }));
    let Some(l4_len) = tot_len.checked_sub(20) else {
        return true;
    };
    if l4_len / 2 > MAX_WORDS || frame.data + L4_OFFSET + l4_len > frame.data_end {
        return true;
    }
    let pseudo = {
        let (s, d) = (pkt.src, pkt.dst);
        u32::from(u16::from_be_bytes([s[0], s[1]]))
            + u32::from(u16::from_be_bytes([s[2], s[3]]))
            + u32::from(u16::from_be_bytes([d[0], d[1]]))
            + u32::from(u16::from_be_bytes([d[2], d[3]]))
            + u32::from(pkt.proto)
            + l4_len as u32
    };
    let (mut sum, field_at) = match pkt.proto {
        IPPROTO_TCP => (pseudo, 16),
        IPPROTO_UDP => (pseudo, 6),
        IPPROTO_ICMP => (0, 2),
        _ => return true,
    };
    let Some(field) = frame.ptr_at::<[u8; 2]>(L4_OFFSET + field_at) else {
        return true;
    };
    // SAFETY: bounds checked by `ptr_at`.
    let field = u16::from_be_bytes(unsafe { *field });
    if pkt.proto == IPPROTO_UDP && field == 0 {
        return true; // no checksum
    }
    let words = l4_len / 2;
    let mut i = 0;
    while i < MAX_WORDS && i < words {
        // `black_box`: left alone, LLVM rewrites the bound check against `data_end + 1`,
        // which the verifier refuses.
        let offset = core::hint::black_box(L4_OFFSET + 2 * i);
        let Some(word) = frame.ptr_at::<[u8; 2]>(offset) else {
            return true;
        };
        // SAFETY: bounds checked by `ptr_at`.
        sum += u32::from(u16::from_be_bytes(unsafe { *word }));
        i += 1;
    }
    if l4_len % 2 == 1 {
        let Some(last) = frame.ptr_at::<u8>(core::hint::black_box(L4_OFFSET + l4_len - 1)) else {
            return true;
        };
        // SAFETY: bounds checked by `ptr_at`.
        sum += u32::from(unsafe { *last }) << 8;
    }
    fold(sum) == 0xffff || (pkt.proto != IPPROTO_ICMP && field == fold(pseudo))
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
