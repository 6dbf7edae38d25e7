//! The only place a forwarded packet is written: MACs, TTL, and the translation, with every
//! checksum updated incrementally. It runs after every decision is made, so a packet the
//! pipeline hands to the kernel is never half-rewritten.

use router_common::CtKey;

use crate::{
    context::{Frame, L4Csum},
    csum::Delta,
    flow::{EmbeddedShape, Flow, INNER_L3_OFFSET, INNER_L4_OFFSET, Shape},
    parse::{IPPROTO_TCP, IPPROTO_UDP, Ipv4Packet, L3_OFFSET, L4_OFFSET},
    verdict::{Hop, Target},
};

const ICMP_CSUM: usize = L4_OFFSET + 2;
const ICMP_ID: usize = L4_OFFSET + 4;

/// Writes `mac` at `to` as a 4- and a 2-byte store. A plain assignment of the array into
/// the packet becomes a call to a byte-by-byte `memmove` (the compiler cannot rule out
/// overlap with the source), several times slower.
///
/// # Safety
/// `to` must point at 6 writable bytes (a header field the parser bounds-checked).
#[inline(always)]
unsafe fn set_mac(to: *mut [u8; 6], mac: [u8; 6]) {
    let head = u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let tail = u16::from_ne_bytes([mac[4], mac[5]]);
    // SAFETY: the caller's promise; unaligned stores are fine for packet data.
    unsafe {
        core::ptr::write_unaligned(to as *mut u32, head);
        core::ptr::write_unaligned((to as *mut u8).add(4) as *mut u16, tail);
    }
}

/// Writes the MACs, the TTL and the addresses of the IPv4 header, and fixes its checksum;
/// returns the change of the addresses (for an L4 pseudo-header). An address becomes its
/// translation (`src` -> `new_src`, `dst` -> `new_dst`) where it is the flow's own (an ICMP
/// error from a router on the path keeps that router's address as its source).
#[inline(always)]
fn ip_header(
    pkt: &Ipv4Packet,
    (src, new_src): ([u8; 4], [u8; 4]),
    (dst, new_dst): ([u8; 4], [u8; 4]),
    hop: &Hop,
) -> Delta {
    // SAFETY: the parser bounds-checked the Ethernet and IPv4 headers.
    let (old_src, old_dst) = unsafe {
        if let Some(mac) = hop.mac {
            set_mac(&raw mut (*pkt.eth).dst_addr, mac);
            set_mac(&raw mut (*pkt.eth).src_addr, hop.out.src_mac);
        }
        ((*pkt.ip).src_addr, (*pkt.ip).dst_addr)
    };
    let new_src = if old_src == src { new_src } else { old_src };
    let new_dst = if old_dst == dst { new_dst } else { old_dst };
    let mut ip = Delta::default();
    let mut pseudo = Delta::default();
    // SAFETY: as above.
    unsafe {
        let ttl_proto = [(*pkt.ip).ttl, (*pkt.ip).proto];
        (*pkt.ip).ttl -= 1;
        ip.word(ttl_proto, [(*pkt.ip).ttl, (*pkt.ip).proto]);
        if new_src != old_src {
            (*pkt.ip).src_addr = new_src;
            ip.addr(old_src, new_src);
            pseudo.addr(old_src, new_src);
        }
        if new_dst != old_dst {
            (*pkt.ip).dst_addr = new_dst;
            ip.addr(old_dst, new_dst);
            pseudo.addr(old_dst, new_dst);
        }
        (*pkt.ip).check = ip.apply((*pkt.ip).check);
    }
    pseudo
}

/// Rewrites a later fragment (no L4 header) to leave by `hop` with the addresses its
/// datagram's first fragment left with. Its L4 checksum, in the first fragment, already
/// took the translation of the whole datagram, pseudo-header included.
#[inline(always)]
pub fn later_fragment(pkt: &Ipv4Packet, new_src: [u8; 4], new_dst: [u8; 4], hop: &Hop) {
    ip_header(pkt, (pkt.src, new_src), (pkt.dst, new_dst), hop);
}

/// Rewrites `pkt` to leave by `hop` as `target`.
#[inline(always)]
pub fn apply(frame: &Frame, pkt: &Ipv4Packet, flow: &Flow, target: &Target, hop: &Hop) {
    let key = &flow.key;
    let pseudo = ip_header(pkt, (key.src, target.src), (key.dst, target.dst), hop);
    if *target == Target::of_key(&flow.key) {
        return;
    }
    match flow.shape {
        Shape::Ports => {
            let mut data = Delta::default();
            set(frame, L4_OFFSET, target.sport, &mut data);
            set(frame, L4_OFFSET + 2, target.dport, &mut data);
            let (offset, kind) = if pkt.proto == IPPROTO_TCP {
                (L4_OFFSET + 16, L4Csum::Tcp)
            } else {
                (L4_OFFSET + 6, L4Csum::Udp)
            };
            // Last: under TC this invalidates every packet pointer.
            frame.finish_l4_csum(offset, kind, pseudo, data);
        }
        Shape::EchoRequest => echo_id(frame, target.sport),
        Shape::EchoReply => echo_id(frame, target.dport),
        Shape::Error(inner) => {
            // SAFETY: the parser validated the IPv4 header.
            let tot_len = u16::from_be_bytes(unsafe { (*pkt.ip).tot_len });
            let ip_end = L3_OFFSET + usize::from(tot_len);
            embedded(frame, &flow.key, target, inner, ip_end)
        }
        Shape::Other => {}
    }
}

/// Writes `new` at `offset` and records the change in `delta`.
#[inline(always)]
fn set(frame: &Frame, offset: usize, new: [u8; 2], delta: &mut Delta) {
    if let Some(p) = frame.ptr_at::<[u8; 2]>(offset) {
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            delta.word(*p, new);
            *p = new;
        }
    }
}

#[inline(always)]
fn set_addr(frame: &Frame, offset: usize, new: [u8; 4], delta: &mut Delta) {
    if let Some(p) = frame.ptr_at::<[u8; 4]>(offset) {
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            delta.addr(*p, new);
            *p = new;
        }
    }
}

/// Applies `delta` to the checksum at `offset`, recording that change in `outer`.
#[inline(always)]
fn fix_csum(frame: &Frame, offset: usize, delta: Delta, outer: &mut Delta, udp: bool) {
    if let Some(p) = frame.ptr_at::<[u8; 2]>(offset) {
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            let old = *p;
            if udp && old == [0, 0] {
                return;
            }
            let mut new = delta.apply(old);
            if udp && new == [0, 0] {
                new = [0xff, 0xff];
            }
            *p = new;
            outer.word(old, new);
        }
    }
}

/// ICMP echo: the identifier is the "port"; ICMP has no pseudo-header.
#[inline(always)]
fn echo_id(frame: &Frame, id: [u8; 2]) {
    let mut data = Delta::default();
    set(frame, ICMP_ID, id, &mut data);
    let mut unused = Delta::default();
    fix_csum(frame, ICMP_CSUM, data, &mut unused, false);
}

/// Translates the packet embedded in an ICMP error: it travelled the opposite direction,
/// so it becomes the inverse of `target`. Every change inside the ICMP payload (addresses,
/// the embedded IP and L4 checksums, ports) is folded into the outer ICMP checksum.
/// `ip_end` is the end of the outer IPv4 packet: bytes after it are not the error's.
#[inline(always)]
fn embedded(frame: &Frame, key: &CtKey, target: &Target, shape: EmbeddedShape, ip_end: usize) {
    let mut icmp = Delta::default();
    let mut inner_ip = Delta::default();
    let mut inner_pseudo = Delta::default();
    if target.dst != key.dst {
        set_addr(frame, INNER_L3_OFFSET + 12, target.dst, &mut inner_ip);
        inner_pseudo.addr(key.dst, target.dst);
    }
    if target.src != key.src {
        set_addr(frame, INNER_L3_OFFSET + 16, target.src, &mut inner_ip);
        inner_pseudo.addr(key.src, target.src);
    }
    icmp.merge(inner_ip);
    fix_csum(frame, INNER_L3_OFFSET + 10, inner_ip, &mut icmp, false);
    let mut ports = Delta::default();
    match shape {
        EmbeddedShape::Ports => {
            set(frame, INNER_L4_OFFSET, target.dport, &mut ports);
            set(frame, INNER_L4_OFFSET + 2, target.sport, &mut ports);
            icmp.merge(ports);
            let mut l4 = inner_pseudo;
            l4.merge(ports);
            // The embedded L4 checksum is fixed when the error carries it (a TCP checksum
            // sits beyond the 8 bytes RFC 792 guarantees): within the error's total length,
            // not merely within the frame.
            // SAFETY: the protocol byte is within the 28 bytes `flow` bounds-checked.
            let proto = match frame.ptr_at::<u8>(INNER_L3_OFFSET + 9) {
                Some(p) => unsafe { *p },
                None => return,
            };
            if proto == IPPROTO_UDP {
                fix_csum(frame, INNER_L4_OFFSET + 6, l4, &mut icmp, true);
            } else if INNER_L4_OFFSET + 18 <= ip_end {
                fix_csum(frame, INNER_L4_OFFSET + 16, l4, &mut icmp, false);
            }
        }
        EmbeddedShape::EchoRequest | EmbeddedShape::EchoReply => {
            let id = if shape == EmbeddedShape::EchoRequest {
                target.dport
            } else {
                target.sport
            };
            set(frame, INNER_L4_OFFSET + 4, id, &mut ports);
            icmp.merge(ports);
            fix_csum(frame, INNER_L4_OFFSET + 2, ports, &mut icmp, false);
        }
    }
    let mut unused = Delta::default();
    fix_csum(frame, ICMP_CSUM, icmp, &mut unused, false);
}
