//! Every map of the router; user space finds them by the names in `router_common::map_names`.

use aya_ebpf::{
    macros::map,
    maps::{DevMapHash, HashMap, LpmTrie, PerCpuHashMap},
};
use router_common::{
    IfaceEntry, IfaceStats, MAX_IFACES, MAX_NEIGHBORS, MAX_ROUTES, NeighborEntry, NeighborKey,
    RouteEntry, RouteKey,
};

/// Every routing table of the router in one trie (see `RouteKey`).
#[map]
pub static ROUTES: LpmTrie<RouteKey, RouteEntry> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

/// Neighbours of the router namespace, mirrored from the kernel.
#[map]
pub static NEIGHBORS: HashMap<NeighborKey, NeighborEntry> =
    HashMap::with_max_entries(MAX_NEIGHBORS, 0);

/// The router's interfaces by ifindex.
#[map]
pub static IFACES: HashMap<u32, IfaceEntry> = HashMap::with_max_entries(MAX_IFACES, 0);

/// Egress devices for XDP redirect, by ifindex (only those that can take XDP frames).
#[map]
pub static EGRESS_DEVS: DevMapHash = DevMapHash::with_max_entries(MAX_IFACES, 0);

/// Counters by ingress ifindex. User space creates the entries; the programs only update.
#[map]
pub static IFACE_STATS: PerCpuHashMap<u32, IfaceStats> =
    PerCpuHashMap::with_max_entries(MAX_IFACES, 0);
