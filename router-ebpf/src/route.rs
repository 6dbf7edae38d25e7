//! Where a packet goes: policy rules, the routing tables, the external source tables, the
//! egress checks and the neighbour. Nothing here writes to the packet.

use core::ffi::c_void;

use aya_ebpf::maps::lpm_trie::Key;
#[cfg(doc)]
use router_common::policy_flags;
use router_common::{
    MAX_RULES, NeighborKey, PolicyConfig, ROUTE_CACHE_SLOTS, Reason, RouteEntry, RouteKey,
    TABLE_MAIN, iface_flags, route_kind,
};

pub use crate::verdict::{Egress, Hop};
use crate::{
    context::Frame,
    maps::{self, POLICY_CONFIG, ROUTE_CACHE, ROUTE_EPOCH, ROUTES, RULES, SOURCE_TABLES},
    parse::Ipv4Packet,
    verdict::Verdict,
    walk,
};

/// The route for `dst` in `table`: this CPU's cached answer of the trie while the routes'
/// epoch has not moved on, else the trie's (cached for the next packet).
#[inline(always)]
fn in_table(table: u32, dst: [u8; 4]) -> Option<RouteEntry> {
    let epoch = ROUTE_EPOCH.get(0).copied().unwrap_or(0);
    let Some(cached) = ROUTE_CACHE.get_ptr_mut(cache_slot(table, dst)) else {
        return in_trie(table, dst);
    };
    // SAFETY: a per-CPU value; program runs do not nest on one CPU, so this run alone
    // reads and writes it.
    let cached = unsafe { &mut *cached };
    if epoch != 0
        && cached.epoch == epoch
        && cached.table == table
        && u32::from_ne_bytes(cached.dst) == u32::from_ne_bytes(dst)
    {
        return if cached.found != 0 {
            Some(cached.route)
        } else {
            None
        };
    }
    let found = in_trie(table, dst);
    // Read before the trie, the epoch is no later than the routes the trie answered from.
    cached.epoch = epoch;
    cached.table = table;
    cached.dst = dst;
    match found {
        Some(route) => {
            cached.route = route;
            cached.found = 1;
        }
        None => cached.found = 0,
    }
    found
}

#[inline(always)]
fn in_trie(table: u32, dst: [u8; 4]) -> Option<RouteEntry> {
    let key = Key::new(RouteKey::TABLE_BITS + 32, RouteKey::new(table, dst));
    ROUTES.get(&key).copied()
}

/// The `ROUTE_CACHE` slot of `dst` in `table`: the address's low bits folded with its higher
/// ones and a hash of the table, so the addresses of one /24 have slots of their own.
#[inline(always)]
fn cache_slot(table: u32, dst: [u8; 4]) -> u32 {
    let addr = u32::from_be_bytes(dst);
    let table = table.wrapping_mul(0x9e37_79b9) >> 24;
    (addr ^ (addr >> 12) ^ table) & (ROUTE_CACHE_SLOTS - 1)
}

/// The route of a packet that arrived on `iif` from `src` to `dst` (the destination after
/// DNAT, the source before SNAT, as the kernel routes): the rules in order, each matching
/// rule's table until one has a route, then the main table; `main_only`: the main table
/// alone (see [`policy_flags::FLOATING_IP_BY_MAIN`]).
#[inline(always)]
pub fn find(
    policy: &PolicyConfig,
    iif: u32,
    src: [u8; 4],
    dst: [u8; 4],
    main_only: bool,
) -> Result<RouteEntry, Verdict> {
    let mut table = TABLE_MAIN;
    if policy.rule_count != 0 && !main_only {
        let chosen = router_rule_table(iif, u32::from_ne_bytes(src), u32::from_ne_bytes(dst));
        if chosen != 0 {
            table = chosen;
        }
    }
    match in_table(table, dst) {
        Some(route) => usable(route),
        None => Err(Verdict::Pass(Reason::NoRoute)),
    }
}

/// The table of the first rule that matches and has a route for `dst`; 0 for none.
///
/// A global function: the verifier checks it once, on its own, instead of for every path
/// of the pipeline that reaches it; the walk itself is a `bpf_loop`, whose step it checks
/// once rather than once per rule.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_rule_table(iif: u32, src: u32, dst: u32) -> u32 {
    let Some(policy) = POLICY_CONFIG.get(0) else {
        return 0;
    };
    let mut scan = RuleWalk {
        iif,
        src: src.to_ne_bytes(),
        dst: dst.to_ne_bytes(),
        base: policy.rules_base,
        table: 0,
    };
    walk::each(policy.rule_count.min(MAX_RULES), rule_step, &mut scan);
    scan.table
}

/// A packet's facts for the rule walk, and the table it chose (0: none yet).
#[repr(C)]
struct RuleWalk {
    iif: u32,
    src: [u8; 4],
    dst: [u8; 4],
    base: u32,
    table: u32,
}

/// One rule of the walk ([`walk::each`]): stops at the first rule that matches and whose
/// table has a route.
#[inline(never)]
extern "C" fn rule_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the step of a walk over a `RuleWalk`.
    let scan = unsafe { walk::context::<RuleWalk>(ctx) };
    let Some(rule) = RULES.get(scan.base.wrapping_add(index as u32)) else {
        return walk::STOP;
    };
    if rule.matches(scan.iif, scan.src, scan.dst) && in_trie(rule.table, scan.dst).is_some() {
        scan.table = rule.table;
        return walk::STOP;
    }
    walk::NEXT
}

#[inline(always)]
fn usable(route: RouteEntry) -> Result<RouteEntry, Verdict> {
    match route.kind {
        route_kind::UNICAST => Ok(route),
        route_kind::LOCAL => Err(Verdict::Pass(Reason::LocalDest)),
        route_kind::BLACKHOLE => Err(Verdict::Drop(Reason::Blackhole)),
        _ => Err(Verdict::Pass(Reason::KernelRoute)),
    }
}

/// Checks TTL, the egress interface and its MTU. A `Pass` verdict leaves the packet as it
/// arrived.
#[inline(always)]
pub fn egress(frame: &Frame, pkt: &Ipv4Packet, route: &RouteEntry) -> Result<Egress, Verdict> {
    // SAFETY: the pipeline validated the IPv4 header before calling us.
    let (ttl, tot_len) = unsafe { ((*pkt.ip).ttl, u16::from_be_bytes((*pkt.ip).tot_len)) };
    if ttl <= 1 {
        return Err(Verdict::Pass(Reason::TtlExpired));
    }
    let ifindex = route.ifindex;
    let Some(out) = maps::iface(ifindex) else {
        return Err(Verdict::Pass(Reason::UnknownEgress));
    };
    if !frame.gso && u32::from(tot_len) > out.mtu {
        return Err(Verdict::Pass(Reason::FragNeeded));
    }
    if frame.needs_xdp_egress && out.flags & iface_flags::XDP_EGRESS == 0 {
        return Err(Verdict::Pass(Reason::XdpToTc));
    }
    Ok(Egress { ifindex, out })
}

/// With several external subnets, a packet leaving through a gateway with source `src` (after NAT) takes the
/// route of the table of `src`'s external subnet, if it has one and that route leaves by
/// the same interface.
#[inline(always)]
pub fn by_external_source(
    policy: &PolicyConfig,
    route: &mut RouteEntry,
    src: [u8; 4],
    dst: [u8; 4],
) {
    if policy.source_tables == 0 || route.gateway == [0; 4] {
        return;
    }
    let Some(table) = SOURCE_TABLES.get(&Key::new(32, src)).copied() else {
        return;
    };
    if let Some(alt) = in_trie(table, dst)
        && alt.kind == route_kind::UNICAST
        && alt.ifindex == route.ifindex
    {
        *route = alt;
    }
}

/// The next hop of `route` for `dst` and its MAC.
#[inline(always)]
pub fn neighbor(
    frame: &Frame,
    egress: Egress,
    route: &RouteEntry,
    dst: [u8; 4],
) -> Result<Hop, Verdict> {
    let next_hop = if route.gateway == [0; 4] {
        dst
    } else {
        route.gateway
    };
    let key = NeighborKey {
        ifindex: egress.ifindex,
        addr: next_hop,
    };
    let mac = maps::neighbor(&key).map(|n| n.mac);
    if mac.is_none() && frame.needs_xdp_egress {
        // XDP cannot ask the kernel to resolve a neighbour; the TC entry can.
        return Err(Verdict::Pass(Reason::XdpToTc));
    }
    Ok(Hop {
        egress: egress.ifindex,
        out: egress.out,
        next_hop,
        mac,
    })
}
