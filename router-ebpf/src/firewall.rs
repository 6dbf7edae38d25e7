//! The stateful firewall (FWaaS) on internal interfaces, in both directions:
//! invalid packets are dropped, packets of a session (established, or ICMP errors about it:
//! related) pass, new flows take the first matching rule, then the default policy. An
//! accepted new flow gets a session, so its replies are established.
//!
//! Rules see the packet as Neutron's FORWARD chain does: destination after DNAT, source
//! before SNAT. A flow crossing two internal interfaces is checked once.

use core::ffi::c_void;

use router_common::{
    MAX_FW_RULES, PolicyConfig, Reason, fw_action, fw_flags, fw_slot, iface_role, tcp_flags_valid,
};

use crate::{
    flow::{Flow, Shape},
    maps::{FW_RULES, FW_STATS, HANDOFF, POLICY_CONFIG},
    nat::Plan,
    parse::IPPROTO_TCP,
    verdict::Verdict,
    walk,
};

/// Facts about a packet, the first argument of [`router_fw_decide`].
mod fact {
    pub const HAS_SESSION: u32 = 1 << 0;
    /// Invalid even within a session: TCP flags no stack sends.
    pub const BAD_FLAGS: u32 = 1 << 1;
    /// Only valid within a session: ICMP errors and echo replies.
    pub const NEEDS_SESSION: u32 = 1 << 2;
    /// The IP protocol sits in bits 8..16.
    pub const PROTO_SHIFT: u32 = 8;
}

/// Results of [`router_fw_decide`].
mod outcome {
    pub const PASS: u32 = 0;
    pub const TRACK: u32 = 1;
    pub const REJECT: u32 = 2;
    pub const DENY: u32 = 3;
    pub const DEFAULT_DENY: u32 = 4;
    pub const INVALID: u32 = 5;
}

/// Whether a forwarded packet may pass. `Ok(true)`: a new flow the firewall accepted,
/// which needs a session.
#[inline(always)]
pub fn check(
    policy: &PolicyConfig,
    flow: &Flow,
    plan: &Plan,
    has_session: bool,
    in_role: u32,
    out_role: u32,
) -> Result<bool, Verdict> {
    if policy.fw_flags & fw_flags::ENABLED == 0
        || (in_role != iface_role::INTERNAL && out_role != iface_role::INTERNAL)
    {
        return Ok(false);
    }
    // Errors and echo replies are only valid about something the router has seen.
    let needs_session = matches!(flow.shape, Shape::Error(_) | Shape::EchoReply);
    let bad_flags = flow.key.proto == IPPROTO_TCP && !tcp_flags_valid(flow.tcp_flags as u8);
    let dport = match flow.shape {
        Shape::Ports => u32::from(u16::from_be_bytes(flow.key.dport)),
        _ => 0,
    };
    let mut facts = u32::from(flow.key.proto) << fact::PROTO_SHIFT;
    if has_session {
        facts |= fact::HAS_SESSION;
    }
    if needs_session {
        facts |= fact::NEEDS_SESSION;
    }
    if bad_flags {
        facts |= fact::BAD_FLAGS;
    }
    let src = u32::from_ne_bytes(flow.key.src);
    let dst = u32::from_ne_bytes(plan.target.dst);
    match router_fw_decide(facts, src, dst, dport) {
        outcome::PASS => Ok(false),
        outcome::TRACK => Ok(true),
        outcome::REJECT => Err(Verdict::Pass(Reason::FwReject)),
        outcome::DENY => Err(Verdict::Drop(Reason::FwDeny)),
        outcome::INVALID => Err(Verdict::Drop(Reason::FwInvalid)),
        _ => Err(Verdict::Drop(Reason::FwDefaultDeny)),
    }
}

/// The firewall's decision for a packet (see [`fact`] and [`outcome`]); the counter slot it
/// decided by is left in the hand-off for [`count_decided`].
///
/// A global function: the verifier checks it once, on its own, instead of walking every
/// rule for every path of the pipeline that reaches it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_fw_decide(facts: u32, src: u32, dst: u32, dport: u32) -> u32 {
    if facts & fact::BAD_FLAGS != 0 {
        decided_by(fw_slot::INVALID);
        return outcome::INVALID;
    }
    if facts & fact::HAS_SESSION != 0 {
        decided_by(fw_slot::ESTABLISHED);
        return outcome::PASS;
    }
    if facts & fact::NEEDS_SESSION != 0 {
        decided_by(fw_slot::INVALID);
        return outcome::INVALID;
    }
    let Some(policy) = POLICY_CONFIG.get(0) else {
        return outcome::PASS;
    };
    let (base, n, flags) = (policy.fw_base, policy.fw_rule_count, policy.fw_flags);
    let mut scan = RuleWalk {
        proto: (facts >> fact::PROTO_SHIFT) as u8,
        _pad: 0,
        dport: dport as u16,
        src: src.to_ne_bytes(),
        dst: dst.to_ne_bytes(),
        base,
        found: NOT_FOUND,
    };
    walk::each(n.min(MAX_FW_RULES), fw_rule_step, &mut scan);
    if let Some(rule) = (scan.found != NOT_FOUND)
        .then(|| FW_RULES.get(scan.found))
        .flatten()
    {
        decided_by(u32::from(rule.slot));
        return match rule.action {
            fw_action::ALLOW => outcome::TRACK,
            fw_action::REJECT => outcome::REJECT,
            _ => outcome::DENY,
        };
    }
    decided_by(fw_slot::DEFAULT);
    if flags & fw_flags::DEFAULT_ALLOW != 0 {
        outcome::TRACK
    } else {
        outcome::DEFAULT_DENY
    }
}

/// `RuleWalk::found` when no rule matched.
const NOT_FOUND: u32 = u32::MAX;

/// A packet's facts for the rule walk, and the index in `FW_RULES` of the first rule that
/// matched.
#[repr(C)]
struct RuleWalk {
    proto: u8,
    _pad: u8,
    dport: u16,
    src: [u8; 4],
    dst: [u8; 4],
    base: u32,
    found: u32,
}

/// One rule of the walk ([`walk::each`]): stops at the first rule that matches.
#[inline(never)]
extern "C" fn fw_rule_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the step of a walk over a `RuleWalk`.
    let scan = unsafe { walk::context::<RuleWalk>(ctx) };
    let at = scan.base.wrapping_add(index as u32);
    let Some(rule) = FW_RULES.get(at) else {
        return walk::STOP;
    };
    if rule.matches(scan.proto, scan.src, scan.dst, scan.dport) {
        scan.found = at;
        return walk::STOP;
    }
    walk::NEXT
}

/// Leaves `slot` in the hand-off as the counter of this packet's firewall decision.
#[inline(always)]
fn decided_by(slot: u32) {
    if let Some(h) = HANDOFF.get_ptr_mut(0) {
        // SAFETY: a per-CPU value, ours for the rest of this program run.
        unsafe { (*h).fw_slot = slot + 1 };
    }
}

/// No firewall decision yet in this program run (the first stage's first step).
#[inline(always)]
pub fn undecided() {
    if let Some(h) = HANDOFF.get_ptr_mut(0) {
        // SAFETY: as in `decided_by`.
        unsafe { (*h).fw_slot = 0 };
    }
}

/// Counts the firewall's decision of this program run, if it made one, for a packet of
/// `bytes`. The entries call it once the packet's fate is theirs: a packet the XDP entry
/// hands to the TC entry, which decides it again, is counted there, not twice.
#[inline(always)]
pub fn count_decided(bytes: u32) {
    let Some(h) = HANDOFF.get(0) else {
        return;
    };
    if h.fw_slot != 0 {
        count(h.fw_slot - 1, bytes);
    }
}

#[inline(always)]
fn count(slot: u32, bytes: u32) {
    if let Some(stats) = FW_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU value: nothing else writes this CPU's copy while we run.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += u64::from(bytes);
        }
    }
}
