//! Route and neighbour lookup, and the rewrite that forwards a packet.

use aya_ebpf::maps::lpm_trie::Key;
use router_common::{NeighborKey, Reason, RouteKey, TABLE_MAIN, iface_flags, route_kind};

use crate::{
    context::Frame,
    csum,
    maps::{IFACES, NEIGHBORS, ROUTES},
    parse::Ipv4Packet,
    verdict::Verdict,
};

/// Looks the destination up, checks TTL and MTU, finds the next hop's MAC, and only then
/// rewrites MACs and TTL: every `Pass` leaves the packet as it arrived.
#[inline(always)]
pub fn forward(frame: &Frame, pkt: &Ipv4Packet) -> Verdict {
    let key = Key::new(
        RouteKey::TABLE_BITS + 32,
        RouteKey::new(TABLE_MAIN, pkt.dst),
    );
    let Some(route) = ROUTES.get(&key) else {
        return Verdict::Pass(Reason::NoRoute);
    };
    match route.kind {
        route_kind::UNICAST => {}
        route_kind::LOCAL => return Verdict::Pass(Reason::LocalDest),
        route_kind::BLACKHOLE => return Verdict::Drop(Reason::Blackhole),
        _ => return Verdict::Pass(Reason::KernelRoute),
    }
    // SAFETY: the pipeline validated the IPv4 header before calling us.
    let (ttl, tot_len) = unsafe { ((*pkt.ip).ttl, u16::from_be_bytes((*pkt.ip).tot_len)) };
    if ttl <= 1 {
        return Verdict::Pass(Reason::TtlExpired);
    }
    let egress = route.ifindex;
    // SAFETY: map values are plain data; the entry is read, never kept.
    let Some(out) = (unsafe { IFACES.get(&egress) }) else {
        return Verdict::Pass(Reason::UnknownEgress);
    };
    if !frame.gso && u32::from(tot_len) > out.mtu {
        return Verdict::Pass(Reason::FragNeeded);
    }
    if frame.needs_xdp_egress && out.flags & iface_flags::XDP_EGRESS == 0 {
        return Verdict::Pass(Reason::XdpToTc);
    }
    let next_hop = if route.gateway == [0; 4] {
        pkt.dst
    } else {
        route.gateway
    };
    let neigh_key = NeighborKey {
        ifindex: egress,
        addr: next_hop,
    };
    // SAFETY: as above.
    let Some(neigh) = (unsafe { NEIGHBORS.get(&neigh_key) }) else {
        return Verdict::Pass(Reason::NoNeighbor);
    };

    // SAFETY: both headers were bounds-checked by the parser.
    unsafe {
        (*pkt.eth).dst_addr = neigh.mac;
        (*pkt.eth).src_addr = out.mac;
        decrement_ttl(pkt);
    }
    Verdict::Forward { ifindex: egress }
}

/// TTL - 1 with the header checksum updated incrementally (TTL is the high byte of the
/// TTL/protocol word).
///
/// # Safety
/// `pkt.ip` must point at a bounds-checked IPv4 header.
#[inline(always)]
unsafe fn decrement_ttl(pkt: &Ipv4Packet) {
    let ip = pkt.ip;
    // SAFETY: guaranteed by the caller.
    unsafe {
        let old = u16::from_be_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl -= 1;
        let new = u16::from_be_bytes([(*ip).ttl, (*ip).proto]);
        let check = u16::from_be_bytes((*ip).check);
        (*ip).check = csum::replace16(check, old, new).to_be_bytes();
    }
}
