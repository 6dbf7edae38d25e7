//! The flow cache: each CPU remembers the whole forwarding decision of the TCP and UDP flows
//! it forwarded without a session (routed, or translated by a floating IP), and rewrites and
//! sends their later packets from it without the pipeline's stages.
//!
//! An entry holds only what the decision read from the router's tables; the controller
//! moves the forwarding epoch (`ROUTE_EPOCH`) on after every change of those tables, which
//! ends every entry made before. What a decision checks of each packet rather than of its
//! flow (the IPv4 header, the router's MAC, TTL, the egress MTU, the HA role) is checked
//! again on every hit; a packet that fails a check, or that is a fragment, goes through the
//! stages, which give it its verdict. A flow with a session, a firewall decision, a next hop
//! the kernel must resolve, or that is handed over is never cached: its packets always take
//! the stages.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use network_types::eth::EthHdr;
use router_common::{CtKey, FLOW_CACHE_SLOTS, FlowCached, IfaceEntry, flow_fip};

use crate::{
    context::Frame,
    counters, firewall,
    flow::{Flow, Shape},
    fragment, ha,
    maps::{FLOW_CACHE, HANDOFF, ROUTE_EPOCH},
    nat,
    parse::{self, IPPROTO_TCP, IPPROTO_UDP, L3_OFFSET, L4_OFFSET},
    pipeline::Handoff,
    rewrite,
    verdict::{Hop, Target},
};

/// IPv4's EtherType as it sits in the header.
const ETH_P_IP_WIRE: u16 = 0x0800u16.to_be();

const SLOT_BITS: u32 = FLOW_CACHE_SLOTS.trailing_zeros();

/// `FlowCached::made` counts units of 2^20 ns (~1 ms) of `bpf_ktime_get_coarse_ns`.
const TIME_SHIFT: u32 = 20;
/// How long an entry of the current epoch keeps its slot against the other flows that hash
/// to it: ~1 s. Many more flows than slots would otherwise rewrite their slot with every
/// packet, which costs more than the cache saves (each flow's next packet finds another
/// flow's decision); so a slot changes flows at most once a second, and an ended flow's
/// entry gives way within one.
const KEEP_UNITS: u32 = 1 << 10;
const _: () = assert!(FLOW_CACHE_SLOTS.is_power_of_two() && SLOT_BITS > 0);

/// The forwarding epoch. The entries read it before anything else: an entry made from
/// tables the controller changes during the program run is tagged with an epoch that is
/// already over.
#[inline(always)]
pub fn epoch() -> u32 {
    ROUTE_EPOCH.get(0).copied().unwrap_or(0)
}

/// The fields of a flow that choose its slot.
struct FlowId {
    ingress: u32,
    src: [u8; 4],
    dst: [u8; 4],
    ports: [u8; 4],
    proto: u8,
    /// 1 for the XDP entry: each entry has its own entry for a flow both see.
    xdp: u8,
}

/// The slot of a flow: its fields folded into one word, spread by a multiplicative hash,
/// whose top bits are the slot.
#[inline(always)]
fn slot_of(id: &FlowId) -> u32 {
    let folded = u32::from_ne_bytes(id.src)
        ^ u32::from_ne_bytes(id.dst).rotate_left(11)
        ^ u32::from_ne_bytes(id.ports).rotate_left(22)
        ^ id.ingress.rotate_left(5)
        ^ u32::from(id.proto)
        ^ (u32::from(id.xdp) << 8);
    folded.wrapping_mul(0x9e37_79b1) >> (32 - SLOT_BITS)
}

/// Offset of the IPv4 protocol byte, addresses and ports in an untagged frame without IP
/// options.
const PROTO_OFFSET: usize = L3_OFFSET + 9;
const SRC_OFFSET: usize = L3_OFFSET + 12;
const DST_OFFSET: usize = L3_OFFSET + 16;

/// Whether this CPU's entry at the packet's slot is of the current `epoch` and of the flow
/// the packet's header bytes say: a few loads and compares, so that a packet of a flow that
/// is not cached pays little for the cache. Nothing is validated: [`forward`] does that.
#[inline(always)]
pub fn may_hold(frame: &Frame, epoch: u32) -> bool {
    if epoch == 0 {
        return false;
    }
    let Some(head) = frame.ptr_at::<[u8; L4_OFFSET + 4]>(0) else {
        return false;
    };
    // SAFETY: `ptr_at` checked that the bytes lie within the packet.
    let head = unsafe { &*head };
    let word = |at: usize| [head[at], head[at + 1], head[at + 2], head[at + 3]];
    let id = FlowId {
        ingress: frame.ingress,
        src: word(SRC_OFFSET),
        dst: word(DST_OFFSET),
        ports: word(L4_OFFSET),
        proto: head[PROTO_OFFSET],
        xdp: u8::from(frame.needs_xdp_egress),
    };
    FLOW_CACHE
        .get(slot_of(&id))
        .is_some_and(|c| c.epoch == epoch && holds(c, &id))
}

/// Whether `cached` is the entry of flow `id`.
#[inline(always)]
fn holds(cached: &FlowCached, id: &FlowId) -> bool {
    cached.ingress == id.ingress
        && u32::from_ne_bytes(cached.src) == u32::from_ne_bytes(id.src)
        && u32::from_ne_bytes(cached.dst) == u32::from_ne_bytes(id.dst)
        && u32::from_ne_bytes(cached.ports) == u32::from_ne_bytes(id.ports)
        && cached.proto == id.proto
        && cached.xdp == id.xdp
}

/// Forwards the packet from this CPU's entry for its flow, if there is one of the current
/// `epoch` and the packet passes the checks of every packet: the packet is rewritten, its
/// floating IP counted, the ingress counter slot left for the entry, which sends and counts
/// it. Returns the egress ifindex, or [`MISSED`]: nothing was written, the stages decide
/// the packet. The entries call it through global functions of their own, which keep its
/// stack off theirs.
#[inline(always)]
pub fn forward(frame: &Frame, epoch: u32) -> u32 {
    from_entry(frame, epoch).unwrap_or(MISSED)
}

/// What [`forward`] returns for a packet it did not forward (no interface has ifindex 0).
pub const MISSED: u32 = 0;

#[inline(always)]
fn from_entry(frame: &Frame, epoch: u32) -> Option<u32> {
    if epoch == 0 {
        return None;
    }
    let eth: *mut EthHdr = frame.ptr_at(0)?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IP_WIRE {
        return None;
    }
    let pkt = parse::parse_ipv4(frame, eth).ok()?;
    if pkt.frags != 0 || (pkt.proto != IPPROTO_TCP && pkt.proto != IPPROTO_UDP) {
        return None;
    }
    // SAFETY: `parse_ipv4` found the L4 header in the packet; `ptr_at` checks it again
    // for the verifier.
    let ports = unsafe { *frame.ptr_at::<[u8; 4]>(L4_OFFSET)? };
    let id = FlowId {
        ingress: frame.ingress,
        src: pkt.src,
        dst: pkt.dst,
        ports,
        proto: pkt.proto,
        xdp: u8::from(frame.needs_xdp_egress),
    };
    let cached: &FlowCached = FLOW_CACHE.get(slot_of(&id))?;
    if cached.epoch != epoch || !holds(cached, &id) {
        return None;
    }
    // SAFETY: the parser bounds-checked the Ethernet and IPv4 headers.
    let (to_router, ttl, tot_len) = unsafe {
        (
            (*eth).dst_addr == cached.in_mac,
            (*pkt.ip).ttl,
            u16::from_be_bytes((*pkt.ip).tot_len),
        )
    };
    if !to_router || ttl <= 1 || (!frame.gso && u32::from(tot_len) > cached.mtu) {
        return None;
    }
    if !matches!(ha::check(), Ok(None)) {
        return None;
    }
    firewall::undecided();
    let handoff = HANDOFF.get_ptr_mut(0)?;
    // SAFETY: a per-CPU value, ours for the rest of this program run.
    unsafe { (*handoff).counter_slot = u32::from(cached.counter_slot) };
    if cached.fip != 0 {
        let bytes = frame.len();
        if cached.fip & flow_fip::IN != 0 {
            counters::fip(cached.dst, bytes, true);
        }
        if cached.fip & flow_fip::OUT != 0 {
            counters::fip(cached.new_src, bytes, false);
        }
    }
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    let flow = Flow {
        key: CtKey {
            zone: 0,
            proto: pkt.proto,
            _pad: 0,
            src: pkt.src,
            dst: pkt.dst,
            sport,
            dport,
        },
        shape: Shape::Ports,
        tcp_flags: 0,
    };
    let target = Target {
        src: cached.new_src,
        dst: cached.new_dst,
        sport,
        dport,
    };
    let hop = Hop {
        egress: cached.egress,
        out: IfaceEntry {
            src_mac: cached.src_mac,
            ..IfaceEntry::default()
        },
        next_hop: [0; 4],
        mac: Some(cached.dst_mac),
    };
    let egress = cached.egress;
    rewrite::apply(frame, &pkt, &flow, &target, &hop);
    Some(egress)
}

/// Whether the decision the stages left in `h` (final: the packet is to be forwarded, and
/// nothing `finish` does for such a decision can fail) may be used for the flow's later
/// packets, at the epoch the program run began with (see the module's documentation).
#[inline(always)]
pub fn cacheable(h: &Handoff) -> bool {
    h.epoch != 0
        && h.shape == Shape::Ports.code()
        && h.has_mac != 0
        && h.has_session == 0
        && h.create == 0
        && h.track == 0
        && h.stateful == 0
        && h.fw_slot == 0
        && h.handing_over == 0
        && h.fragment == fragment::role::NONE
        && h.target.sport == h.key.sport
        && h.target.dport == h.key.dport
        && (h.dnat_fip == nat::NONE || h.dnat_fip == h.key.dst)
        && (h.snat_fip == nat::NONE || h.snat_fip == h.target.src)
}

/// Leaves `epoch` (read before anything else of this program run) in the hand-off, for
/// [`router_flow_remember`] once the stages have decided the packet.
#[inline(always)]
pub fn begin(epoch: u32) {
    if let Some(h) = HANDOFF.get_ptr_mut(0) {
        // SAFETY: a per-CPU value, ours for the rest of this program run.
        unsafe { (*h).epoch = epoch };
    }
}

/// Remembers the decision the stages left in the hand-off for the packet that came in by
/// `ingress` (`xdp` 1 under XDP) in this CPU's entry for its flow, tagged with the epoch
/// [`begin`] left there. The entry calls it only for a decision `forward` found
/// [`cacheable`] (`Handoff::cacheable`), once `finish` has carried it out. Returns 0.
///
/// A global function, shared by both entries: its stack is not the stage's.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_flow_remember(ingress: u32, xdp: u32) -> u32 {
    // First, while little else is held: the call would spill it to a stack with no room.
    // SAFETY: plain helper call.
    let now = (unsafe { bpf_ktime_get_coarse_ns() } >> TIME_SHIFT) as u32;
    if let Some(h) = HANDOFF.get(0) {
        remember(ingress, xdp as u8, h, now);
    }
    0 // global functions must return a scalar
}

#[inline(always)]
fn remember(ingress: u32, xdp: u8, h: &Handoff, now: u32) {
    let k = &h.key;
    let ports = [k.sport[0], k.sport[1], k.dport[0], k.dport[1]];
    let id = FlowId {
        ingress,
        src: k.src,
        dst: k.dst,
        ports,
        proto: k.proto,
        xdp,
    };
    let Some(entry) = FLOW_CACHE.get_ptr_mut(slot_of(&id)) else {
        return;
    };
    // SAFETY: as below.
    let (epoch, made) = unsafe { ((*entry).epoch, (*entry).made) };
    if epoch == h.epoch && now.wrapping_sub(made) < KEEP_UNITS {
        return;
    }
    let mut fip = 0;
    if h.dnat_fip != nat::NONE {
        fip |= flow_fip::IN;
    }
    if h.snat_fip != nat::NONE {
        fip |= flow_fip::OUT;
    }
    // SAFETY: a per-CPU value; program runs do not nest on one CPU, so this run alone
    // reads and writes it. Written field by field: a whole-struct store becomes a call to
    // `memcpy`.
    unsafe {
        let e = &mut *entry;
        e.epoch = h.epoch;
        e.ingress = ingress;
        e.src = k.src;
        e.dst = k.dst;
        e.ports = ports;
        e.proto = k.proto;
        e.xdp = xdp;
        e.counter_slot = h.ingress.slot;
        e.egress = h.egress;
        e.mtu = h.out.mtu;
        e.in_mac = h.ingress.mac;
        e.dst_mac = h.mac;
        e.src_mac = h.out.src_mac;
        e.fip = fip;
        e.new_src = h.target.src;
        e.new_dst = h.target.dst;
        e.made = now;
    }
}
