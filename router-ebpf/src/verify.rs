//! L4 checksum verification of packets that would create a session, as Linux conntrack
//! does (`nf_conntrack_checksum`): a corrupt or forged packet must not take a table entry
//! or an SNAT port. Forwarded packets of existing flows are not verified (the checksum is
//! updated incrementally, so an error reaches the receiver, which drops it).

use aya_ebpf::helpers::bpf_csum_diff;

use crate::{
    context::Frame,
    flow::Shape,
    maps::CSUM_SCRATCH,
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
    let Some(data) = sum_native(frame, l4_len) else {
        return true;
    };
    // A one's complement sum of the bytes in host order is the byte-swapped sum in network
    // order.
    sum += u32::from(fold64(data).swap_bytes());
    fold(sum) == 0xffff || (pkt.proto != IPPROTO_ICMP && field == fold(pseudo))
}

/// Most bytes one checksum helper call takes (its limit on older kernels).
const HELPER_BYTES: usize = 512;

/// Room for the longest L4 segment checked and its padding to whole 32-bit words, in
/// whole helper calls.
pub const SCRATCH_BYTES: usize = 3 * HELPER_BYTES;

/// The one's complement sum of the `l4_len` bytes after the IPv4 header, as 16-bit words in
/// host order (to be folded), or `None` where a helper fails. The bytes are copied out of
/// the packet and summed by the kernel's `bpf_csum_diff` (its optimised checksum loop): a
/// handful of steps for the verifier, where a loop over every word took tens of thousands.
#[inline(always)]
fn sum_native(frame: &Frame, l4_len: usize) -> Option<u64> {
    if l4_len == 0 || l4_len > MAX_WORDS * 2 {
        return None;
    }
    let buf = CSUM_SCRATCH.get_ptr_mut(0)? as *mut u8;
    frame.load_bytes(L4_OFFSET, buf, l4_len as u32)?;
    // Up to three zero bytes after the segment pad it to whole words, which the helper
    // wants and which add nothing to the sum.
    // SAFETY: `l4_len + 4` is within the buffer.
    unsafe { core::ptr::write_unaligned(buf.add(l4_len) as *mut [u8; 4], [0; 4]) };
    let padded = (l4_len + 3) & !3;
    let mut sum = 0u64;
    let mut start = 0;
    while start < SCRATCH_BYTES && start < padded {
        let size = (padded - start).min(HELPER_BYTES);
        // SAFETY: `start + size` is within the buffer; `from` is empty.
        let partial = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                buf.add(start) as *mut u32,
                size as u32,
                0,
            )
        };
        if partial < 0 {
            return None;
        }
        sum += partial as u64 & 0xffff_ffff;
        start += HELPER_BYTES;
    }
    Some(sum)
}

#[inline(always)]
fn fold64(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    fold(sum as u32)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
