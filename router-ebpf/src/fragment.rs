//! IPv4 fragments, translated without reassembly (virtual reassembly, as VPP and Cilium
//! do). The first fragment (offset 0, MF set) carries the L4 header and goes through the
//! pipeline as an unfragmented packet does; its outcome is recorded in `FRAGMENTS`, keyed by
//! the datagram as it arrived (source, destination, protocol, IP id, zone). A later fragment
//! (offset > 0) takes that outcome: forwarded with the same addresses and by the same path
//! (only the IPv4 header changes: the L4 checksum, in the first fragment, already took the
//! translation of the whole datagram), handed to the kernel (`fragment`) or dropped for the
//! same reason. A later fragment without a record is dropped (`fragment_unknown`): the fast
//! path holds nothing back, and the kernel could not reassemble a datagram whose first
//! fragment has already left.
//!
//! Unfragmented packets never reach this unit: they cost the test of the fragment bits the
//! parser reads anyway, and one byte of the hand-off.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use router_common::{
    CtKey, FRAGMENT_TIMEOUT_NS, FragEntry, FragKey, Reason, frag_outcome, iface_flags,
};

use crate::{
    context::Frame,
    counters,
    flow::Shape,
    maps::{self, FRAGMENTS, HANDOFF},
    parse::{IP_MF, IP_OFFSET, Ipv4Packet, L3_OFFSET},
    pipeline::Handoff,
    rewrite,
    verdict::{Hop, Target, Verdict},
};

/// What the hand-off says of fragments (`Handoff::fragment`).
pub mod role {
    /// Not a fragment.
    pub const NONE: u8 = 0;
    /// A first fragment: its outcome is recorded once `finish` has made its session.
    pub const FIRST: u8 = 1;
    /// A later fragment: `finish` rewrites its IPv4 header only.
    pub const LATER: u8 = 2;
}

/// The key and facts of a fragment packed into scalars, for the global functions below
/// (which take no pointers).
#[inline(always)]
fn meta(pkt: &Ipv4Packet, zone: u16) -> u64 {
    // SAFETY: the parser validated the IPv4 header.
    let id = unsafe { (*pkt.ip).id };
    u64::from(u16::from_ne_bytes(id)) | u64::from(pkt.proto) << 16 | u64::from(zone) << 32
}

#[inline(always)]
fn key_of(src: u32, dst: u32, meta: u64) -> FragKey {
    FragKey {
        src: src.to_ne_bytes(),
        dst: dst.to_ne_bytes(),
        id: (meta as u16).to_ne_bytes(),
        proto: (meta >> 16) as u8,
        _pad: 0,
        zone: (meta >> 32) as u16,
        _pad2: [0; 2],
    }
}

#[inline(always)]
fn addr(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

/// Facts of a later fragment for [`router_fragment_later`].
mod fact {
    pub const TTL_MASK: u32 = 0xff;
    pub const TOT_LEN_SHIFT: u32 = 8;
    pub const NEEDS_XDP_EGRESS: u32 = 1 << 24;
    pub const GSO: u32 = 1 << 25;
}

/// The verdict of a later fragment (offset > 0) that passed the checks every packet gets
/// first (ingress, MAC, header, anti-spoofing); `Finish` with the hand-off ready when it
/// is to be forwarded.
#[inline(always)]
pub fn later(frame: &Frame, pkt: &Ipv4Packet, zone: u16) -> Verdict {
    // SAFETY: the parser validated the IPv4 header.
    let (ttl, tot_len) = unsafe { ((*pkt.ip).ttl, u16::from_be_bytes((*pkt.ip).tot_len)) };
    let mut facts = u32::from(ttl) | u32::from(tot_len) << fact::TOT_LEN_SHIFT;
    if frame.needs_xdp_egress {
        facts |= fact::NEEDS_XDP_EGRESS;
    }
    if frame.gso {
        facts |= fact::GSO;
    }
    match router_fragment_later(addr(pkt.src), addr(pkt.dst), meta(pkt, zone), facts) {
        0 => Verdict::Finish,
        reason => Verdict::of_reason(reason),
    }
}

/// A later fragment's outcome from its datagram's record: 0 (forward, the hand-off
/// written), or the `Reason` it is passed or dropped for.
///
/// A global function, as the other rare paths are: the verifier checks it once, on its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_fragment_later(src: u32, dst: u32, meta: u64, facts: u32) -> u32 {
    let key = key_of(src, dst, meta);
    // SAFETY: a map value, read in place (this function's stack is small: it is called
    // from the pipeline's first half).
    let Some(entry) = (unsafe { FRAGMENTS.get(&key) }) else {
        return Reason::FragmentUnknown as u32;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(entry.created_ns) > FRAGMENT_TIMEOUT_NS {
        return Reason::FragmentUnknown as u32;
    }
    let needs_xdp_egress = facts & fact::NEEDS_XDP_EGRESS != 0;
    match entry.outcome {
        frag_outcome::FORWARD => {}
        frag_outcome::PASS => return Reason::Fragment as u32,
        frag_outcome::DROP => {
            return match Reason::from_u32(u32::from(entry.reason)) {
                Some(reason) if reason.is_drop() => reason as u32,
                _ => Reason::FragmentUnknown as u32,
            };
        }
        frag_outcome::TO_TC if needs_xdp_egress => return Reason::XdpToTc as u32,
        // The TC entry has not decided the first fragment yet.
        _ => return Reason::FragmentUnknown as u32,
    }
    if facts & fact::TTL_MASK <= 1 {
        return Reason::FragmentUnfit as u32;
    }
    let Some(out) = maps::iface(entry.egress) else {
        return Reason::FragmentUnfit as u32;
    };
    if facts & fact::GSO == 0 && facts >> fact::TOT_LEN_SHIFT & 0xffff > out.mtu {
        return Reason::FragmentUnfit as u32;
    }
    if needs_xdp_egress && (out.flags & iface_flags::XDP_EGRESS == 0 || entry.has_mac == 0) {
        return Reason::XdpToTc as u32;
    }
    let Some(handoff) = HANDOFF.get_ptr_mut(0) else {
        return Reason::RedirectFailed as u32;
    };
    // SAFETY: a per-CPU value, ours for the rest of this program run; written field by field
    // (a whole `Handoff` would be built on the stack first).
    unsafe {
        let h = &mut *handoff;
        h.key = CtKey::default();
        h.target = Target {
            src: entry.new_src,
            dst: entry.new_dst,
            sport: [0; 2],
            dport: [0; 2],
        };
        h.tcp_flags = 0;
        h.egress = entry.egress;
        h.out = out;
        h.next_hop = entry.next_hop;
        h.dnat_fip = entry.dnat_fip;
        h.snat_fip = entry.snat_fip;
        h.mac = entry.mac;
        h.has_mac = entry.has_mac;
        h.shape = Shape::Other.code();
        h.create = 0;
        h.track = 0;
        h.stateful = 0;
        h.has_session = 0;
        h.fragment = role::LATER;
        h.ip_id = key.id;
    }
    0
}

/// The second half for a later fragment `later` decided to forward: its floating IPs'
/// counters and the IPv4 header.
#[inline(always)]
pub fn finish_later(frame: &Frame, pkt: &Ipv4Packet, h: &Handoff) {
    if h.dnat_fip != [0; 4] {
        counters::fip(h.dnat_fip, frame.len(), true);
    }
    if h.snat_fip != [0; 4] {
        counters::fip(h.snat_fip, frame.len(), false);
    }
    let hop = Hop {
        egress: h.egress,
        out: h.out,
        next_hop: h.next_hop,
        mac: if h.has_mac != 0 { Some(h.mac) } else { None },
    };
    rewrite::later_fragment(pkt, h.target.src, h.target.dst, &hop);
}

/// Records that a first fragment was handed to the kernel or dropped (`verdict`), for its
/// datagram's later fragments.
#[inline(always)]
pub fn record_verdict(pkt: &Ipv4Packet, zone: u16, verdict: &Verdict) {
    let outcome = match *verdict {
        Verdict::Pass(Reason::XdpToTc) => u32::from(frag_outcome::TO_TC),
        Verdict::Pass(reason) => u32::from(frag_outcome::PASS) | (reason as u32) << 8,
        Verdict::Drop(reason) => u32::from(frag_outcome::DROP) | (reason as u32) << 8,
        _ => return,
    };
    let _ = router_fragment_record(addr(pkt.src), addr(pkt.dst), meta(pkt, zone), outcome, 0);
}

/// Records that the first fragment in the hand-off was forwarded (its session made): the
/// addresses it leaves with and its path. Its key is the flow's tuple as it arrived; an
/// ICMP error's flow is the tuple of the packet it carries, not its own, so a fragmented
/// ICMP error is not recorded (errors are cut to 576 bytes: they do not fragment) and its
/// later fragments are `fragment_unknown`.
#[inline(always)]
pub fn record_forward(h: &Handoff) {
    if matches!(Shape::from_code(h.shape), Shape::Error(_)) {
        return;
    }
    let meta = u64::from(u16::from_ne_bytes(h.ip_id))
        | u64::from(h.key.proto) << 16
        | u64::from(h.key.zone) << 32;
    let new = u64::from(addr(h.target.src)) | u64::from(addr(h.target.dst)) << 32;
    let outcome = u32::from(frag_outcome::FORWARD);
    let _ = router_fragment_record(addr(h.key.src), addr(h.key.dst), meta, outcome, new);
}

/// A packet with IP options goes to the kernel before the pipeline looks further; when it
/// is a first fragment, its later fragments (which need not carry the options) follow it.
#[inline(always)]
pub fn record_options(frame: &Frame, zone: u16) {
    let Some(hdr) = frame.ptr_at::<[u8; 20]>(L3_OFFSET) else {
        return;
    };
    // SAFETY: bounds checked by `ptr_at`.
    let hdr = unsafe { &*hdr };
    if u16::from_be_bytes([hdr[6], hdr[7]]) & (IP_MF | IP_OFFSET) != IP_MF {
        return;
    }
    let src = u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
    let dst = u32::from_ne_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
    let meta = u64::from(u16::from_ne_bytes([hdr[4], hdr[5]]))
        | u64::from(hdr[9]) << 16
        | u64::from(zone) << 32;
    let outcome = u32::from(frag_outcome::PASS) | (Reason::IpOptions as u32) << 8;
    let _ = router_fragment_record(src, dst, meta, outcome, 0);
}

/// Writes the record of a datagram: `outcome` is a `frag_outcome` in bits 0..8 and a
/// `Reason` in bits 8..16; for `FORWARD`, `new` holds the new source (low half) and
/// destination, and the path is read from the hand-off.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_fragment_record(
    src: u32,
    dst: u32,
    meta: u64,
    outcome: u32,
    new: u64,
) -> u32 {
    let key = key_of(src, dst, meta);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let mut entry = FragEntry {
        created_ns: now,
        outcome: outcome as u8,
        reason: (outcome >> 8) as u8,
        ..FragEntry::default()
    };
    if entry.outcome == frag_outcome::FORWARD {
        let Some(h) = HANDOFF.get(0) else {
            return 0;
        };
        entry.new_src = (new as u32).to_ne_bytes();
        entry.new_dst = ((new >> 32) as u32).to_ne_bytes();
        entry.next_hop = h.next_hop;
        entry.egress = h.egress;
        entry.dnat_fip = h.dnat_fip;
        entry.snat_fip = h.snat_fip;
        // The hand-off's `mac` is only meaningful where `has_mac` is set.
        entry.mac = if h.has_mac != 0 { h.mac } else { [0; 6] };
        entry.has_mac = h.has_mac;
    }
    // An LRU: the insert always finds room.
    let _ = FRAGMENTS.insert(&key, &entry, 0);
    0
}
