//! Route and neighbour lookup: where a packet goes, and whether the fast path can take it
//! there. Nothing here writes to the packet.

use aya_ebpf::maps::lpm_trie::Key;
use router_common::{
    IfaceEntry, NeighborKey, Reason, RouteKey, TABLE_MAIN, iface_flags, route_kind,
};

use crate::{
    context::Frame,
    maps::{IFACES, NEIGHBORS, ROUTES},
    parse::Ipv4Packet,
    verdict::Verdict,
};

/// Where a packet leaves.
pub struct Hop {
    pub egress: u32,
    pub out: IfaceEntry,
    pub next_hop: [u8; 4],
    /// The next hop's MAC, or `None` when the kernel must resolve it (TC only:
    /// `bpf_redirect_neigh`).
    pub mac: Option<[u8; 6]>,
}

/// Looks `dst` (the destination after any translation) up and checks TTL, MTU and the
/// egress. A `Pass` verdict leaves the packet as it arrived.
#[inline(always)]
pub fn lookup(frame: &Frame, pkt: &Ipv4Packet, dst: [u8; 4]) -> Result<Hop, Verdict> {
    let key = Key::new(RouteKey::TABLE_BITS + 32, RouteKey::new(TABLE_MAIN, dst));
    let Some(route) = ROUTES.get(&key) else {
        return Err(Verdict::Pass(Reason::NoRoute));
    };
    match route.kind {
        route_kind::UNICAST => {}
        route_kind::LOCAL => return Err(Verdict::Pass(Reason::LocalDest)),
        route_kind::BLACKHOLE => return Err(Verdict::Drop(Reason::Blackhole)),
        _ => return Err(Verdict::Pass(Reason::KernelRoute)),
    }
    // SAFETY: the pipeline validated the IPv4 header before calling us.
    let (ttl, tot_len) = unsafe { ((*pkt.ip).ttl, u16::from_be_bytes((*pkt.ip).tot_len)) };
    if ttl <= 1 {
        return Err(Verdict::Pass(Reason::TtlExpired));
    }
    let egress = route.ifindex;
    // SAFETY: map values are plain data; the entry is copied, never kept.
    let Some(out) = (unsafe { IFACES.get(&egress) }).copied() else {
        return Err(Verdict::Pass(Reason::UnknownEgress));
    };
    if !frame.gso && u32::from(tot_len) > out.mtu {
        return Err(Verdict::Pass(Reason::FragNeeded));
    }
    if frame.needs_xdp_egress && out.flags & iface_flags::XDP_EGRESS == 0 {
        return Err(Verdict::Pass(Reason::XdpToTc));
    }
    let next_hop = if route.gateway == [0; 4] {
        dst
    } else {
        route.gateway
    };
    let neigh_key = NeighborKey {
        ifindex: egress,
        addr: next_hop,
    };
    // SAFETY: as above.
    let mac = unsafe { NEIGHBORS.get(&neigh_key) }.map(|n| n.mac);
    if mac.is_none() && frame.needs_xdp_egress {
        // XDP cannot ask the kernel to resolve a neighbour; the TC entry can.
        return Err(Verdict::Pass(Reason::XdpToTc));
    }
    Ok(Hop {
        egress,
        out,
        next_hop,
        mac,
    })
}
