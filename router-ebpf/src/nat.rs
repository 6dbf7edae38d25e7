//! NAT decisions, following Neutron's iptables rules (shared/neutron-baseline.md):
//!
//! - a session's translation wins (replies of SNAT and hairpin flows, and their later
//!   packets in the original direction);
//! - PREROUTING DNAT: a floating IP as destination becomes its fixed IP (stateless);
//! - POSTROUTING: traffic neither from nor to the gateway interface and not DNATed is left
//!   alone; otherwise a fixed IP with a floating IP is sent from that floating IP (stateless,
//!   "float-snat"); else traffic leaving the gateway interface, and DNATed traffic that did
//!   not enter from it (hairpin: the mangle mark rule), is SNATed to the gateway IP with a
//!   session.

use core::ptr::NonNull;

use router_common::{CtEntry, FipEntry, NatConfig, Reason, ct_kind, iface_role, nat_flags};

pub use crate::verdict::Target;
use crate::{
    conntrack,
    flow::{Flow, Shape},
    maps::{FIP_BY_ADDRESS, FIP_BY_FIXED, FIP_FILTER, NAT_CONFIG, SNAT_STATS},
    verdict::Verdict,
};

/// No floating IP (in `Plan::dnat_fip` and `Plan::snat_fip`).
pub const NONE: [u8; 4] = [0; 4];

/// The translation decided for one packet.
pub struct Plan {
    pub target: Target,
    /// The session the packet belongs to, if any.
    pub session: Option<NonNull<CtEntry>>,
    /// The session's translation applies (SNAT and hairpin sessions); otherwise the packet
    /// is translated statelessly (no session, or a firewall's `FORWARD` session).
    pub stateful: bool,
    /// The floating IP the destination was translated from (for its counters); 0.0.0.0:
    /// none (a floating IP is never 0.0.0.0). Not an `Option`: a partly undefined value
    /// spilled to the stack fails verification.
    pub dnat_fip: [u8; 4],
    /// The floating IP the source was translated to; 0.0.0.0: none.
    pub snat_fip: [u8; 4],
    /// A session of this kind (`ct_kind`) must be created before forwarding (0: none).
    pub create: u8,
}

/// NAT before routing: the session's translation, or floating-IP DNAT. Without a firewall,
/// sessions are only looked for where they can be: packets from inside (original
/// direction, hairpin replies) and packets to the gateway IP (SNAT replies and ICMP errors
/// about them); with one (`track_all`), every packet may belong to a session.
#[inline(always)]
pub fn before_routing(flow: &Flow, in_role: u32, track_all: bool) -> Plan {
    let may_have_session = track_all
        || in_role != iface_role::EXTERNAL
        || NAT_CONFIG
            .get(0)
            .is_some_and(|c| c.gateway_ip == flow.key.dst);
    let session = may_have_session
        .then(|| conntrack::lookup(&flow.key))
        .flatten();
    if let Some(entry) = session {
        // SAFETY: a map value; `kind` and the rewrite fields never change after creation.
        let entry_ref = unsafe { entry.as_ref() };
        if entry_ref.kind != ct_kind::FORWARD {
            return Plan {
                target: Target::of_entry(entry_ref),
                session,
                stateful: true,
                dnat_fip: NONE,
                snat_fip: NONE,
                create: 0,
            };
        }
    }
    let mut target = Target::of_key(&flow.key);
    let mut dnat_fip = NONE;
    if let Some(fip) = by_address(flow.key.dst) {
        target.dst = fip.addr;
        dnat_fip = flow.key.dst;
    }
    Plan {
        target,
        session,
        stateful: false,
        dnat_fip,
        snat_fip: NONE,
        create: 0,
    }
}

/// Whether `fixed` has a floating IP.
#[inline(always)]
pub fn has_floating_ip(fixed: [u8; 4]) -> bool {
    by_fixed(fixed).is_some()
}

/// The fixed IP of floating IP `addr`, if it is one.
#[inline(always)]
pub fn by_address(addr: [u8; 4]) -> Option<FipEntry> {
    if !may_be_floating(addr) {
        return None;
    }
    // SAFETY: map values are plain data, copied out.
    unsafe { FIP_BY_ADDRESS.get(&addr) }.copied()
}

/// The floating IP of fixed IP `addr`, if it has one.
#[inline(always)]
fn by_fixed(addr: [u8; 4]) -> Option<FipEntry> {
    if !may_be_floating(addr) {
        return None;
    }
    // SAFETY: map values are plain data, copied out.
    unsafe { FIP_BY_FIXED.get(&addr) }.copied()
}

/// Whether `addr` may be a floating IP or the fixed IP of one (`FipFilter`): an inlined
/// array lookup and one bit, where the two hash lookups it saves cost several times that.
#[inline(always)]
fn may_be_floating(addr: [u8; 4]) -> bool {
    FIP_FILTER.get(0).is_none_or(|f| f.may_hold(addr))
}

/// NAT after routing, from the roles of the ingress and egress interfaces.
#[inline(always)]
pub fn after_routing(
    plan: &mut Plan,
    flow: &Flow,
    in_role: u32,
    out_role: u32,
) -> Result<(), Verdict> {
    if plan.stateful {
        return Ok(());
    }
    let from_gateway = in_role == iface_role::EXTERNAL;
    let to_gateway = out_role == iface_role::EXTERNAL;
    let dnat = plan.dnat_fip != NONE;
    if !from_gateway && !to_gateway && !dnat {
        return Ok(());
    }
    if let Some(fip) = by_fixed(plan.target.src) {
        plan.target.src = fip.addr;
        plan.snat_fip = fip.addr;
        return Ok(());
    }
    let Some(cfg) = config() else {
        return Ok(());
    };
    if cfg.flags & nat_flags::SNAT == 0 {
        return Ok(());
    }
    let kind = if to_gateway {
        ct_kind::SNAT
    } else if dnat && !from_gateway {
        ct_kind::HAIRPIN
    } else {
        return Ok(());
    };
    match flow.shape {
        Shape::Ports | Shape::EchoRequest => {
            plan.target.src = cfg.gateway_ip;
            plan.create = kind;
            Ok(())
        }
        // Replies, errors and other protocols without a session: the kernel's slow-path
        // rules translate them (or find the session the kernel made).
        _ => Err(Verdict::Pass(Reason::NatSlowPath)),
    }
}

/// Creates the session the plan asks for, or (`track`) the firewall's session of a new
/// flow it accepted. The last step before rewriting: nothing after it may hand the packet to
/// the kernel.
#[inline(always)]
pub fn commit(plan: &mut Plan, flow: &Flow, reply_zone: u16, track: bool) -> Result<(), Verdict> {
    if plan.create == 0 {
        if track && plan.session.is_none() {
            conntrack::create_forward(&flow.key, &plan.target, reply_zone, flow.shape)
                .map_err(|e| Verdict::Drop(e.reason()))?;
            plan.session = conntrack::lookup(&flow.key);
        }
        return Ok(());
    }
    let Some(cfg) = config() else {
        return Err(Verdict::Pass(Reason::NatSlowPath));
    };
    let mut collisions = 0;
    let result = conntrack::create(
        &flow.key,
        &mut plan.target,
        reply_zone,
        plan.create,
        &cfg,
        flow.shape,
        &mut collisions,
    );
    if let Some(stats) = SNAT_STATS.get_ptr_mut(0) {
        // SAFETY: a per-CPU value.
        unsafe {
            (*stats).port_collisions += collisions;
            if result.is_ok() {
                (*stats).sessions_created += 1;
            }
        }
    }
    result.map_err(|e| Verdict::Drop(e.reason()))?;
    plan.session = conntrack::lookup(&flow.key);
    plan.stateful = true;
    Ok(())
}

#[inline(always)]
fn config() -> Option<NatConfig> {
    let cfg = NAT_CONFIG.get(0).copied()?;
    (cfg.flags & nat_flags::GATEWAY != 0).then_some(cfg)
}
