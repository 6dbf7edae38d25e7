//! Every map of the router; user space finds them by the names in `router_common::map_names`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use router_common::{
    CtEntry, CtKey, DEFAULT_SESSION_ENTRIES, EVENTS_BYTES, FLOW_CACHE_SLOTS, FW_STATS_SLOTS,
    FipEntry, FipFilter, FipStats, FlowCached, FragEntry, FragKey, FwRule, FwStats, HaState,
    IfaceEntry, IfaceForwarded, IfaceIndexed, IfaceStats, MAX_ALLOWED_SOURCES, MAX_FLOATING_IPS,
    MAX_FRAGMENT_DATAGRAMS, MAX_FW_RULES, MAX_IFACES, MAX_NEIGHBORS, MAX_ROUTES, MAX_RULES,
    MonitorConfig, NEIGHBOR_COPY_SLOTS, NatConfig, NeighborCopy, NeighborEntry, NeighborKey,
    PolicyConfig, PolicyRule, ROUTE_CACHE_SLOTS, RouteCached, RouteEntry, RouteKey, SYNC_BYTES,
    SnatStats, SourceKey,
};

/// Every routing table of the router in one trie (see `RouteKey`).
#[map]
pub static ROUTES: LpmTrie<RouteKey, RouteEntry> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

/// The forwarding epoch (one entry): the controller moves it on after every change of a
/// table a forwarding decision reads (routes, rules, interfaces, neighbours, floating IPs,
/// the firewall, HA), which ends every `ROUTE_CACHE` and `FLOW_CACHE` entry made before.
#[map]
pub static ROUTE_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// Each CPU's cache of whole forwarding decisions (see `FlowCached`), at a hash of the
/// flow: a flow's later packets are rewritten and sent from it without the pipeline's
/// stages. Only the programs use it (not pinned): a new load starts it empty.
#[map]
pub static FLOW_CACHE: PerCpuArray<FlowCached> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// Each CPU's cache of its lookups in `ROUTES` (see `RouteCached`), at a hash of the table
/// and destination: an array lookup the verifier inlines, where the trie takes a call.
#[map]
pub static ROUTE_CACHE: PerCpuArray<RouteCached> =
    PerCpuArray::with_max_entries(ROUTE_CACHE_SLOTS, 0);

/// Hash maps with a fixed, generous limit that user space fills a few entries at a time are
/// not preallocated: a router uses memory for what it holds, not for its limits (1,000
/// routers each with room for 16,384 neighbours would otherwise pin gigabytes). Lookups
/// cost the same either way; inserts allocate (tables filled in bulk, the floating IPs', are
/// preallocated and sized from the configuration instead).
const ON_DEMAND: u32 = BPF_F_NO_PREALLOC;

/// Neighbours of the router namespace, mirrored from the kernel.
#[map]
pub static NEIGHBORS: HashMap<NeighborKey, NeighborEntry> =
    HashMap::with_max_entries(MAX_NEIGHBORS, ON_DEMAND);

/// The same neighbours, each at the slot its key hashes to (see `NeighborCopy`): looked up
/// without a call, in front of `NEIGHBORS`.
#[map]
pub static NEIGHBOR_COPIES: Array<NeighborCopy> = Array::with_max_entries(NEIGHBOR_COPY_SLOTS, 0);

/// The router's interfaces by ifindex. Only the controller writes it, a few entries per
/// router: made as they come rather than preallocated.
#[map]
pub static IFACES: HashMap<u32, IfaceEntry> = HashMap::with_max_entries(MAX_IFACES, ON_DEMAND);

/// The same interfaces at their ifindex, for ifindexes below `MAX_IFACES` (see
/// `IfaceIndexed`): looked up without a call, in front of `IFACES`.
#[map]
pub static IFACES_BY_INDEX: Array<IfaceIndexed> = Array::with_max_entries(MAX_IFACES, 0);

/// Egress devices for XDP redirect, by ifindex (only those that can take XDP frames).
#[map]
pub static EGRESS_DEVS: DevMapHash = DevMapHash::with_max_entries(MAX_IFACES, 0);

/// Counters by ingress ifindex of the packets not forwarded, with their reasons. User space
/// creates the entries; the programs only update.
#[map]
pub static IFACE_STATS: PerCpuHashMap<u32, IfaceStats> =
    PerCpuHashMap::with_max_entries(MAX_IFACES, ON_DEMAND);

/// Counters of forwarded packets by the ingress interface's slot (`IfaceEntry::slot`): 4 KiB
/// per CPU, looked up without a call.
#[map]
pub static IFACE_FORWARDED: PerCpuArray<IfaceForwarded> =
    PerCpuArray::with_max_entries(MAX_IFACES, 0);

/// The router's gateway and SNAT settings (one entry).
#[map]
pub static NAT_CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

/// Floating IP -> fixed IP. The floating-IP tables are preallocated, sized by routerd from
/// `nat.max_floating_ips`: an entry allocated on insert makes a 10,000-address apply slower.
#[map]
pub static FIP_BY_ADDRESS: HashMap<[u8; 4], FipEntry> =
    HashMap::with_max_entries(MAX_FLOATING_IPS, 0);

/// Fixed IP -> floating IP.
#[map]
pub static FIP_BY_FIXED: HashMap<[u8; 4], FipEntry> =
    HashMap::with_max_entries(MAX_FLOATING_IPS, 0);

/// The filter in front of `FIP_BY_ADDRESS` and `FIP_BY_FIXED` (one entry; see
/// `router_common::FipFilter`): addresses no floating IP can match skip both lookups.
#[map]
pub static FIP_FILTER: Array<FipFilter> = Array::with_max_entries(1, 0);

/// Counters by floating IP; user space creates the entries with the floating IPs.
/// Preallocated: a per-CPU entry allocated on insert costs ~30 us (10,000 floating IPs took
/// 300 ms to apply), so routerd sizes it from `nat.max_floating_ips` instead.
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

/// Rule counts, the live halves of `RULES` and `FW_RULES`, and firewall flags (one entry).
#[map]
pub static POLICY_CONFIG: Array<PolicyConfig> = Array::with_max_entries(1, 0);

/// Policy rules in priority order, two halves of `MAX_RULES` (see `PolicyConfig`).
#[map]
pub static RULES: Array<PolicyRule> = Array::with_max_entries(2 * MAX_RULES, 0);

/// External subnet -> the table routes through a gateway are taken from for packets leaving
/// with a source in it.
#[map]
pub static SOURCE_TABLES: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(256, 0);

/// Firewall rules in order, two halves of `MAX_FW_RULES`.
#[map]
pub static FW_RULES: Array<FwRule> = Array::with_max_entries(2 * MAX_FW_RULES, 0);

/// Firewall counters by rule slot and the fixed slots (`router_common::fw_slot`).
#[map]
pub static FW_STATS: PerCpuArray<FwStats> = PerCpuArray::with_max_entries(FW_STATS_SLOTS, 0);

/// The first half of the pipeline's decision for the second (one per CPU; never outlives a
/// program run).
#[map]
pub static HANDOFF: PerCpuArray<crate::pipeline::Handoff> = PerCpuArray::with_max_entries(1, 0);

/// The L4 bytes of a packet whose checksum is checked, copied out of the packet for the
/// kernel's checksum helper (one per CPU; never outlives a program run).
#[map]
pub static CSUM_SCRATCH: PerCpuArray<[u8; crate::verify::SCRATCH_BYTES]> =
    PerCpuArray::with_max_entries(1, 0);

/// Anti-spoofing: the sources each internal interface with `SOURCE_CHECK` accepts.
#[map]
pub static ALLOWED_SOURCES: LpmTrie<SourceKey, u8> =
    LpmTrie::with_max_entries(MAX_ALLOWED_SOURCES, 0);

/// `routerctl monitor`'s deadline (see `router_common::MonitorConfig`).
#[map]
pub static MONITOR: Array<MonitorConfig> = Array::with_max_entries(1, 0);

/// Dropped and passed packets while a monitor runs.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// SNAT sessions per internal address, for `NatConfig::source_quota`: counted up here when
/// a session is made, recounted from the table by user space at each garbage collection.
#[map]
pub static SNAT_SOURCES: HashMap<[u8; 4], u32> =
    HashMap::with_max_entries(MAX_FLOATING_IPS, ON_DEMAND);

/// Fragmented datagrams in flight: the outcome of each one's first fragment, for its later
/// fragments (`fragment.rs`). An LRU: a datagram whose last fragment never came is
/// forgotten when room is needed, and a record answers for 30 s at most.
#[map]
pub static FRAGMENTS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(MAX_FRAGMENT_DATAGRAMS, 0);

/// The router's HA role, written by its controller (see `router_common::HaState`).
#[map]
pub static HA: Array<HaState> = Array::with_max_entries(1, 0);

/// Sessions made and TCP closes seen, while `HaState::sync` asks for them: the controller
/// sends them to the standbys.
#[map]
pub static SYNC: RingBuf = RingBuf::with_byte_size(SYNC_BYTES, 0);

/// The settings of interface `ifindex`, if it is one of the router's: from
/// `IFACES_BY_INDEX` when its entry there is valid, else from `IFACES` (an ifindex beyond
/// the array, or an entry being written).
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<IfaceEntry> {
    if let Some(indexed) = IFACES_BY_INDEX.get(ifindex)
        && indexed.ifindex == ifindex
    {
        return Some(indexed.entry);
    }
    // SAFETY: map values are plain data; the entry is copied, never kept.
    unsafe { IFACES.get(&ifindex) }.copied()
}

/// The neighbour `key`, if the router knows it: from its copy in `NEIGHBOR_COPIES` when
/// the copy there is this neighbour's, else from `NEIGHBORS`.
#[inline(always)]
pub fn neighbor(key: &NeighborKey) -> Option<NeighborEntry> {
    if let Some(copy) = NEIGHBOR_COPIES.get(key.copy_slot())
        && copy.key.ifindex == key.ifindex
        && u32::from_ne_bytes(copy.key.addr) == u32::from_ne_bytes(key.addr)
    {
        return Some(copy.entry);
    }
    // SAFETY: map values are plain data, copied out.
    unsafe { NEIGHBORS.get(key) }.copied()
}
