//! The fast path, shared by the XDP and TC entries: parse, NAT, policy routing, firewall,
//! rewrite.

use aya_ebpf::maps::lpm_trie::Key;
use router_common::{
    CtKey, IfaceEntry, Reason, SourceKey, ct_dir, fw_flags, iface_flags, iface_role, policy_flags,
};

use crate::{
    arp, conntrack,
    context::Frame,
    counters, firewall, flow, flow_cache, fragment, ha,
    maps::{self, ALLOWED_SOURCES, HANDOFF, POLICY_CONFIG},
    nat,
    parse::{self, IPPROTO_TCP, Ipv4Packet, L2, L4_OFFSET},
    rewrite, route,
    verdict::Verdict,
    verify,
};

const METADATA_ADDR: [u8; 4] = [169, 254, 169, 254];
const HTTP_PORT: [u8; 2] = 80u16.to_be_bytes();

/// The first stage of the pipeline: HA, parse, the ingress checks. Nothing is written to
/// the packet. `Finish` here means a later fragment's hand-off is ready for
/// `finish_fragment`; [`Stage::Translate`] that the packet goes on to [`classify`] and
/// [`forward`], with the ingress interface and the hand-over MAC left in the hand-off.
#[inline(always)]
fn process(frame: &Frame) -> Stage {
    firewall::undecided();
    // The MAC as a plain value, zero when not handing over: an `Option`'s payload is left
    // undefined when it is `None`, and the compiler may then save that undefined register
    // across a call, which the verifier refuses.
    let (handing_over, handover_mac) = match ha::check() {
        Ok(Some(mac)) => (true, mac),
        Ok(None) => (false, [0; 6]),
        Err(silent) => return Stage::Done(silent),
    };
    match process_frame(frame, handing_over, handover_mac) {
        Stage::Done(verdict) => Stage::Done(while_handing_over(verdict, handing_over)),
        Stage::Translate => Stage::Translate,
    }
}

/// No counter slot (for a count that never uses one).
pub const NO_SLOT: u32 = u32::MAX;

/// The counter slot of this program run's ingress interface (`IfaceEntry::slot`), for the
/// entry that counts a forwarded packet. `decide` sets it once it has found the interface,
/// and only a packet whose interface was found is forwarded; for any other the slot may be
/// an earlier packet's, and is not used.
#[inline(always)]
pub fn counter_slot() -> u32 {
    HANDOFF.get(0).map_or(NO_SLOT, |h| h.counter_slot)
}

/// Where the first stage leaves a packet.
enum Stage {
    Done(Verdict),
    Translate,
}

/// Handing over, a router only forwards (from its own MAC, `forward` saw to it): nothing
/// answered and nothing to the kernel, which would speak with the router's MAC.
#[inline(always)]
fn while_handing_over(verdict: Verdict, handing_over: bool) -> Verdict {
    match verdict {
        // Forwarded, or the XDP entry's hand-over to the TC entry, which decides again.
        Verdict::Finish | Verdict::Pass(Reason::XdpToTc) => verdict,
        _ if handing_over => Verdict::Drop(Reason::Standby),
        _ => verdict,
    }
}

#[inline(always)]
fn process_frame(frame: &Frame, handing_over: bool, handover_mac: [u8; 6]) -> Stage {
    let Some(handoff) = HANDOFF.get_ptr_mut(0) else {
        return Stage::Done(Verdict::Drop(Reason::RedirectFailed));
    };
    let l2 = match parse::parse_l2(frame) {
        Ok(l2) => l2,
        Err(verdict) => return Stage::Done(verdict),
    };
    let Some(iface) = maps::iface(frame.ingress) else {
        return Stage::Done(Verdict::Pass(Reason::UnknownIngress));
    };
    // SAFETY: a per-CPU value, ours for the rest of this program run.
    unsafe { (*handoff).counter_slot = u32::from(iface.slot) };
    let eth = match l2 {
        L2::Ipv4(eth) => eth,
        // Handing over, the router's addresses are the new active's to answer for.
        L2::Arp(_) if handing_over => {
            return Stage::Done(Verdict::Drop(Reason::Standby));
        }
        L2::Arp(eth) => return Stage::Done(arp::answer(frame, eth, &iface)),
    };
    // SAFETY: `parse_l2` bounds-checked the Ethernet header.
    if unsafe { (*eth).dst_addr } != iface.mac {
        return Stage::Done(Verdict::Pass(Reason::NotRouterMac));
    }
    let pkt = match parse::parse_ipv4(frame, eth) {
        Ok(pkt) => pkt,
        Err(verdict) => {
            if matches!(verdict, Verdict::Pass(Reason::IpOptions)) {
                fragment::record_options(frame, iface.zone);
            }
            return Stage::Done(verdict);
        }
    };
    if iface.flags & iface_flags::SOURCE_CHECK != 0 && !source_allowed(frame.ingress, pkt.src) {
        return Stage::Done(Verdict::Drop(Reason::SpoofedSource));
    }
    if pkt.is_later_fragment() {
        return Stage::Done(fragment::later(frame, &pkt, iface.zone));
    }
    if iface.role == iface_role::INTERNAL && is_metadata(frame, &pkt) {
        return Stage::Done(Verdict::Pass(Reason::Metadata));
    }
    // SAFETY: as above.
    unsafe {
        (*handoff).ingress = iface;
        (*handoff).handover_mac = handover_mac;
        (*handoff).handing_over = handing_over as u8;
    }
    Stage::Translate
}

/// The second stage, for a packet with its L4 header (not a later fragment) that passed
/// the ingress checks: its flow and NAT before routing, left in the hand-off for the third.
/// Each stage is a global function of each entry and starts afresh, the packet parsed
/// again and the earlier stages' results read from the hand-off: the verifier checks a
/// stage once, not once per way through the stages before it.
#[inline(always)]
pub fn classify(frame: &Frame) -> u32 {
    let Some(handoff) = HANDOFF.get_ptr_mut(0) else {
        return Reason::RedirectFailed as u32;
    };
    let Some(pkt) = parse::reparse_ipv4(frame) else {
        return Reason::MalformedIpv4 as u32;
    };
    // SAFETY: a per-CPU value, ours for the rest of this program run.
    let (zone, role) = unsafe { ((*handoff).ingress.zone, (*handoff).ingress.role) };
    let track_all = POLICY_CONFIG
        .get(0)
        .is_some_and(|p| p.fw_flags & fw_flags::ENABLED != 0);
    let mut flow = flow::of(frame, &pkt);
    flow.key.zone = zone;
    let plan = nat::before_routing(&flow, role, track_all);
    // SAFETY: as above, written field by field (the first stage's fields stay).
    unsafe {
        let h = &mut *handoff;
        copy_key(&mut h.key, &flow.key);
        h.shape = flow.shape.code();
        h.tcp_flags = flow.tcp_flags;
        h.target = plan.target;
        h.stateful = plan.stateful as u8;
        h.has_session = plan.session.is_some() as u8;
        h.dnat_fip = plan.dnat_fip;
    }
    decided::FINISH
}

/// `*to = *from` as four word moves. The plain assignment into the hand-off becomes a call
/// to a byte-by-byte `memmove` (the compiler cannot rule out overlap), several times slower.
#[inline(always)]
fn copy_key(to: &mut CtKey, from: &CtKey) {
    const WORDS: usize = size_of::<CtKey>() / 4;
    const { assert!(size_of::<CtKey>() % 4 == 0 && align_of::<CtKey>() >= 4) };
    let (to, from) = (
        to as *mut CtKey as *mut u32,
        from as *const CtKey as *const u32,
    );
    // SAFETY: both point at a whole, 4-byte aligned key of WORDS words; volatile, so the
    // moves stay moves.
    unsafe {
        for i in 0..WORDS {
            core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i)));
        }
    }
}

/// The third stage: policy routing, the firewall, NAT after routing and the next hop, from
/// what the earlier stages left in the hand-off. Returns `FINISH` with the hand-off ready
/// for `finish`, or a `Reason`.
#[inline(always)]
pub fn forward(frame: &Frame) -> u32 {
    let Some(h) = HANDOFF.get(0) else {
        return Reason::RedirectFailed as u32;
    };
    let Some(pkt) = parse::reparse_ipv4(frame) else {
        return Reason::MalformedIpv4 as u32;
    };
    let handing_over = h.handing_over != 0;
    let verdict = route_packet(frame, h, &pkt);
    if pkt.is_first_fragment() {
        // A forwarded one is recorded by `verdict`, once `finish` has made its session.
        fragment::record_verdict(&pkt, h.ingress.zone, &verdict);
    }
    code_of(while_handing_over(verdict, handing_over))
}

#[inline(always)]
fn route_packet(frame: &Frame, h: &Handoff, pkt: &Ipv4Packet) -> Verdict {
    let iface = h.ingress;
    let handover_mac = (h.handing_over != 0).then_some(h.handover_mac);
    let policy = POLICY_CONFIG.get(0).copied().unwrap_or_default();
    let flow = flow::Flow {
        key: h.key,
        shape: flow::Shape::from_code(h.shape),
        tcp_flags: h.tcp_flags,
    };
    let has_session = h.has_session != 0;
    // The session itself is not needed before `finish`, which looks it up.
    let mut plan = nat::Plan {
        target: h.target,
        session: None,
        stateful: h.stateful != 0,
        dnat_fip: h.dnat_fip,
        snat_fip: nat::NONE,
        create: 0,
    };
    // A distributed router's compute copy routes its floating IPs' VMs by the main table.
    let main_only = policy.flags & policy_flags::FLOATING_IP_BY_MAIN != 0
        && iface.role == iface_role::INTERNAL
        && nat::has_floating_ip(flow.key.src);
    let mut route = match route::find(
        &policy,
        frame.ingress,
        flow.key.src,
        plan.target.dst,
        main_only,
    ) {
        Ok(route) => route,
        Err(verdict) => return verdict,
    };
    let egress = match route::egress(frame, pkt, &route) {
        Ok(egress) => egress,
        Err(verdict) => return verdict,
    };
    let out = egress.out;
    let track = match firewall::check(&policy, &flow, &plan, has_session, iface.role, out.role) {
        Ok(track) => track,
        Err(verdict) => return verdict,
    };
    if let Err(verdict) = nat::after_routing(&mut plan, &flow, iface.role, out.role) {
        return verdict;
    }
    // Handing over, no session is made here: the new active would never hear of it, and
    // there the connection's next packet would be translated anew.
    if handover_mac.is_some() && (plan.create != 0 || (track && !has_session)) {
        return Verdict::Drop(Reason::Standby);
    }
    if out.role == iface_role::EXTERNAL {
        route::by_external_source(&policy, &mut route, plan.target.src, plan.target.dst);
    }
    let mut hop = match route::neighbor(frame, egress, &route, plan.target.dst) {
        Ok(hop) => hop,
        Err(verdict) => return verdict,
    };
    if let Some(mac) = handover_mac {
        // Handing over, no next hop is left for the kernel to resolve: it would ask with
        // the router's MAC and teach the switches that it lives here.
        if hop.mac.is_none() {
            return Verdict::Drop(Reason::Standby);
        }
        hop.out.src_mac = mac;
    }
    let Some(handoff) = HANDOFF.get_ptr_mut(0) else {
        return Verdict::Drop(Reason::RedirectFailed);
    };
    // SAFETY: a per-CPU value, ours for the rest of this program run, written field by
    // field (the earlier stages' fields stay); the parser validated the IPv4 header.
    unsafe {
        let h = &mut *handoff;
        h.target = plan.target;
        h.egress = hop.egress;
        h.out = hop.out;
        h.next_hop = hop.next_hop;
        h.snat_fip = plan.snat_fip;
        // `mac` is read only where `has_mac` is set: no zeroes written for it (a call to
        // `memset` under TC).
        match hop.mac {
            Some(mac) => {
                h.mac = mac;
                h.has_mac = 1;
            }
            None => h.has_mac = 0,
        }
        h.create = plan.create;
        h.track = track as u8;
        h.stateful = plan.stateful as u8;
        h.fragment = if pkt.is_first_fragment() {
            fragment::role::FIRST
        } else {
            fragment::role::NONE
        };
        h.ip_id = (*pkt.ip).id;
        // Whether the decision holds for the flow's later packets, looked at here without
        // a call; the entry caches it once `finish` has carried it out.
        h.cacheable = u8::from(flow_cache::cacheable(h));
    }
    Verdict::Finish
}

/// Results of the stages ([`decide`], [`classify`], [`forward`]) other than a `Reason`
/// number.
pub mod decided {
    /// Forward: the hand-off is ready for `finish`.
    pub const FINISH: u32 = 0;
    /// An answer (ARP) was written in place: send it back out of the ingress.
    pub const REPLY: u32 = 0x100;
    /// Go on to `classify` and `forward` (from `decide` only).
    pub const TRANSLATE: u32 = 0x101;
}

/// The first stage of the pipeline as a number (see [`decided`]), for the global functions
/// the entries call.
#[inline(always)]
pub fn decide(frame: &Frame) -> u32 {
    match process(frame) {
        Stage::Translate => decided::TRANSLATE,
        Stage::Done(verdict) => code_of(verdict),
    }
}

#[inline(always)]
fn code_of(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Finish => decided::FINISH,
        Verdict::Forward { .. } => decided::REPLY,
        Verdict::Pass(reason) | Verdict::Drop(reason) => reason as u32,
    }
}

/// For a packet `decide` handed off: 1 if its L4 checksum is right (or cannot be checked
/// here), 0 if not. Run (through global functions of its own) only for packets that would
/// create a session.
#[inline(always)]
pub fn checksum_check(frame: &Frame) -> u32 {
    let Some(shape) = HANDOFF.get(0).map(|h| flow::Shape::from_code(h.shape)) else {
        return 1;
    };
    match parse::reparse_ipv4(frame) {
        Some(pkt) => u32::from(verify::l4_checksum_ok(frame, &pkt, shape)),
        None => 1,
    }
}

/// The verdict of a packet after every stage: `decision` from [`decide`], `classify` and
/// `forward` when that sends it on, then (when that was `FINISH`) `check` (`checksum_check`,
/// for a packet that would create a session) and `finish`, or for a later fragment
/// `finish_fragment` ([`finish_fragment`]).
#[inline(always)]
pub fn verdict(
    frame: &Frame,
    decision: u32,
    classify: impl FnOnce() -> u32,
    forward: impl FnOnce() -> u32,
    check: impl FnOnce() -> u32,
    finish: impl FnOnce() -> u32,
    finish_fragment: impl FnOnce() -> u32,
) -> Verdict {
    let decision = if decision != decided::TRANSLATE {
        decision
    } else {
        match classify() {
            decided::FINISH => forward(),
            reason => reason,
        }
    };
    match decision {
        decided::FINISH => {}
        decided::REPLY => {
            return Verdict::Forward {
                ifindex: frame.ingress,
                resolve: [0; 4],
            };
        }
        reason => return Verdict::of_reason(reason),
    }
    let Some(h) = HANDOFF.get(0) else {
        return Verdict::Drop(Reason::RedirectFailed);
    };
    if h.fragment == fragment::role::LATER {
        finish_fragment();
    } else {
        let creates = h.create != 0 || (h.track != 0 && h.has_session == 0);
        if creates && check() == 0 {
            return Verdict::Drop(Reason::BadL4Checksum);
        }
        let result = finish();
        if result != 0 {
            return Verdict::of_reason(result);
        }
        if h.fragment == fragment::role::FIRST {
            // Here rather than in `finish`, whose stack cannot take another call.
            fragment::record_forward(h);
        }
        if h.cacheable != 0 {
            flow_cache::router_flow_remember(frame.ingress, u32::from(frame.needs_xdp_egress));
        }
    }
    Verdict::Forward {
        ifindex: h.egress,
        resolve: if h.has_mac != 0 { [0; 4] } else { h.next_hop },
    }
}

/// What the first half of the pipeline hands the second (`finish`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handoff {
    pub key: CtKey,
    pub target: nat::Target,
    pub tcp_flags: u32,
    pub egress: u32,
    pub out: IfaceEntry,
    /// The interface the packet came in by (from `decide`, for the later stages).
    pub ingress: IfaceEntry,
    pub next_hop: [u8; 4],
    /// 0.0.0.0: none (a floating IP is never 0.0.0.0).
    pub dnat_fip: [u8; 4],
    pub snat_fip: [u8; 4],
    pub mac: [u8; 6],
    pub has_mac: u8,
    pub shape: u8,
    pub create: u8,
    pub track: u8,
    pub stateful: u8,
    pub has_session: u8,
    /// One of `fragment::role`.
    pub fragment: u8,
    pub _pad: u8,
    /// The IPv4 identification, for a first fragment's record.
    pub ip_id: [u8; 2],
    /// While the router hands over, the MAC it forwards from (from `decide`).
    pub handover_mac: [u8; 6],
    pub handing_over: u8,
    /// 1: the flow cache may keep this decision (`flow_cache::cacheable`), from `forward`.
    pub cacheable: u8,
    /// The firewall's counter slot of this packet's decision, plus one (0: none), counted
    /// by the entry that keeps the packet (`firewall::count_decided`).
    pub fw_slot: u32,
    /// The ingress interface's counter slot (see [`counter_slot`]), from `decide`.
    pub counter_slot: u32,
    /// The forwarding epoch as this program run began (`flow_cache::begin`).
    pub epoch: u32,
}

/// The second half of the pipeline, for a packet `process` decided to forward: creates its
/// session, counts it and rewrites it. Returns 0, or the `Reason` it was not forwarded for
/// (nothing was written then).
///
/// The two halves are verified separately (the entries call this through global
/// functions): the verifier's cost of the whole is their sum, not their product.
#[inline(always)]
pub fn finish(frame: &Frame) -> u32 {
    // A reference, not a copy: the stack of this half is tight.
    let Some(h) = HANDOFF.get(0) else {
        return Reason::RedirectFailed as u32;
    };
    let Some(pkt) = parse::reparse_ipv4(frame) else {
        return Reason::MalformedIpv4 as u32;
    };
    let flow = flow::Flow {
        key: h.key,
        shape: flow::Shape::from_code(h.shape),
        tcp_flags: h.tcp_flags,
    };
    let mut plan = nat::Plan {
        target: h.target,
        session: if h.has_session != 0 {
            conntrack::lookup(&h.key)
        } else {
            None
        },
        stateful: h.stateful != 0,
        dnat_fip: h.dnat_fip,
        snat_fip: h.snat_fip,
        create: h.create,
    };
    if let Err(verdict) = nat::commit(&mut plan, &flow, h.out.zone, h.track != 0) {
        return match verdict {
            Verdict::Pass(reason) | Verdict::Drop(reason) => reason as u32,
            _ => Reason::RedirectFailed as u32,
        };
    }
    count_nat(&plan, &flow, frame.len());
    let hop = route::Hop {
        egress: h.egress,
        out: h.out,
        next_hop: h.next_hop,
        mac: if h.has_mac != 0 { Some(h.mac) } else { None },
    };
    rewrite::apply(frame, &pkt, &flow, &plan.target, &hop);
    0
}

/// The second half for a later fragment `decide` found the record of: its floating IPs'
/// counters and its IPv4 header (a global function of each entry of its own: `finish`'s
/// stack has no room for it). Returns 0.
#[inline(always)]
pub fn finish_fragment(frame: &Frame) -> u32 {
    if let (Some(h), Some(pkt)) = (HANDOFF.get(0), parse::reparse_ipv4(frame)) {
        fragment::finish_later(frame, &pkt, h);
    }
    0
}

/// Anti-spoofing: whether `src` may arrive on `ingress`.
#[inline(always)]
fn source_allowed(ingress: u32, src: [u8; 4]) -> bool {
    let key = Key::new(SourceKey::IFINDEX_BITS + 32, SourceKey::new(ingress, src));
    ALLOWED_SOURCES.get(&key).is_some()
}

/// TCP to 169.254.169.254:80: Neutron redirects it to the metadata proxy.
#[inline(always)]
fn is_metadata(frame: &Frame, pkt: &Ipv4Packet) -> bool {
    if pkt.dst != METADATA_ADDR || pkt.proto != IPPROTO_TCP {
        return false;
    }
    match frame.ptr_at::<[u8; 2]>(L4_OFFSET + 2) {
        // SAFETY: bounds checked by `ptr_at`.
        Some(dport) => unsafe { *dport == HTTP_PORT },
        None => false,
    }
}

/// Session state and the per-floating-IP and SNAT counters of a packet about to be
/// forwarded. ICMP errors count as traffic but do not move a session's state.
#[inline(always)]
fn count_nat(plan: &nat::Plan, flow: &flow::Flow, bytes: u32) {
    if plan.dnat_fip != nat::NONE {
        counters::fip(plan.dnat_fip, bytes, true);
    }
    if plan.snat_fip != nat::NONE {
        counters::fip(plan.snat_fip, bytes, false);
    }
    if let Some(entry) = plan.session {
        if plan.stateful {
            // SAFETY: a map value; `direction` never changes after creation.
            let original = unsafe { entry.as_ref().direction } == ct_dir::ORIGINAL;
            counters::snat(bytes, original);
        }
        if !flow.is_error() {
            conntrack::touch(&flow.key, entry.as_ptr(), bytes, flow.tcp_flags);
        }
    }
}
