//! Every map of the router; user space finds them by the names in `router_common::map_names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap},
};
use router_common::{
    CtEntry, CtKey, DEFAULT_SESSION_ENTRIES, FipEntry, FipStats, IfaceEntry, IfaceStats,
    MAX_FLOATING_IPS, MAX_IFACES, MAX_NEIGHBORS, MAX_ROUTES, NatConfig, NeighborEntry, NeighborKey,
    RouteEntry, RouteKey, SnatStats,
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

/// The router's gateway and SNAT settings (one entry).
#[map]
pub static NAT_CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

/// Floating IP -> fixed IP.
#[map]
pub static FIP_BY_ADDRESS: HashMap<[u8; 4], FipEntry> =
    HashMap::with_max_entries(MAX_FLOATING_IPS, 0);

/// Fixed IP -> floating IP.
#[map]
pub static FIP_BY_FIXED: HashMap<[u8; 4], FipEntry> =
    HashMap::with_max_entries(MAX_FLOATING_IPS, 0);

/// Counters by floating IP; user space creates the entries with the floating IPs.
#[map]
pub static FIP_STATS: PerCpuHashMap<[u8; 4], FipStats> =
    PerCpuHashMap::with_max_entries(MAX_FLOATING_IPS, 0);

/// Counters of the SNAT gateway (one entry).
#[map]
pub static SNAT_STATS: PerCpuArray<SnatStats> = PerCpuArray::with_max_entries(1, 0);

/// Sessions, two entries each (see `router_common::nat`). Not an LRU: a flood of new flows
/// must not evict established ones; a full table refuses new sessions instead. User space
/// sizes it from the configuration at load time.
#[map]
pub static SESSIONS: HashMap<CtKey, CtEntry> =
    HashMap::with_max_entries(DEFAULT_SESSION_ENTRIES, 0);
