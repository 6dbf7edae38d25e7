//! Map keys, values and constants shared by the eBPF programs and the controller.
//!
//! Every type is `#[repr(C)]` with explicit padding and only integer fields, so that user
//! space can never write a value the kernel side cannot interpret. Addresses are stored as
//! the four bytes seen on the wire (`[u8; 4]`), never as host-order integers, so there is
//! exactly one byte order to think about.
#![no_std]

pub mod bench;
pub mod ha;
pub mod nat;
pub mod policy;
pub mod reason;

pub use ha::*;
pub use nat::*;
pub use policy::*;
pub use reason::Reason;

/// Names of the maps in the eBPF object; user space opens them by these names.
pub mod map_names {
    pub const ROUTES: &str = "ROUTES";
    pub const ROUTE_EPOCH: &str = "ROUTE_EPOCH";
    pub const ROUTE_CACHE: &str = "ROUTE_CACHE";
    pub const NEIGHBORS: &str = "NEIGHBORS";
    pub const IFACES: &str = "IFACES";
    pub const IFACES_BY_INDEX: &str = "IFACES_BY_INDEX";
    pub const NEIGHBOR_COPIES: &str = "NEIGHBOR_COPIES";
    pub const EGRESS_DEVS: &str = "EGRESS_DEVS";
    pub const IFACE_STATS: &str = "IFACE_STATS";
    pub const IFACE_FORWARDED: &str = "IFACE_FORWARDED";
    pub const NAT_CONFIG: &str = "NAT_CONFIG";
    pub const FIP_BY_ADDRESS: &str = "FIP_BY_ADDRESS";
    pub const FIP_BY_FIXED: &str = "FIP_BY_FIXED";
    pub const FIP_STATS: &str = "FIP_STATS";
    pub const SNAT_STATS: &str = "SNAT_STATS";
    pub const SESSIONS: &str = "SESSIONS";
    pub const POLICY_CONFIG: &str = "POLICY_CONFIG";
    pub const RULES: &str = "RULES";
    pub const SOURCE_TABLES: &str = "SOURCE_TABLES";
    pub const FW_RULES: &str = "FW_RULES";
    pub const FW_STATS: &str = "FW_STATS";
    pub const ALLOWED_SOURCES: &str = "ALLOWED_SOURCES";
    pub const MONITOR: &str = "MONITOR";
    pub const EVENTS: &str = "EVENTS";
    pub const SNAT_SOURCES: &str = "SNAT_SOURCES";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const HA: &str = "HA";
    pub const SYNC: &str = "SYNC";
    pub const FIP_FILTER: &str = "FIP_FILTER";
    /// Every map above, in the order `routerctl` and the pinning code walk them.
    pub const ALL: [&str; 29] = [
        ROUTES,
        ROUTE_EPOCH,
        ROUTE_CACHE,
        NEIGHBORS,
        NEIGHBOR_COPIES,
        IFACES,
        IFACES_BY_INDEX,
        EGRESS_DEVS,
        IFACE_STATS,
        IFACE_FORWARDED,
        NAT_CONFIG,
        FIP_BY_ADDRESS,
        FIP_BY_FIXED,
        FIP_STATS,
        FIP_FILTER,
        SNAT_STATS,
        SESSIONS,
        POLICY_CONFIG,
        RULES,
        SOURCE_TABLES,
        FW_RULES,
        FW_STATS,
        ALLOWED_SOURCES,
        MONITOR,
        EVENTS,
        SNAT_SOURCES,
        FRAGMENTS,
        HA,
        SYNC,
    ];
}

/// Names of the read-only globals of the eBPF object the loader sets (each a `u32`, 0 or 1).
pub mod globals {
    /// 1 if the kernel lets XDP programs call `bpf_xdp_adjust_meta` (the XDP entry's tag
    /// for the TC entry); 0 and the TC entry decides again what the XDP entry passes.
    pub const XDP_META: &str = "XDP_META";
}

/// Names of the programs in the eBPF object.
pub mod prog_names {
    pub const XDP: &str = "router_xdp";
    pub const TC: &str = "router_tc";
}

/// Default capacities; the controller may size maps differently at load time.
pub const MAX_ROUTES: u32 = 65_536;
pub const MAX_NEIGHBORS: u32 = 4096;
pub const MAX_IFACES: u32 = 256;
/// Floating IPs of one router (the configuration refuses more). Also sizes the hash tables'
/// bucket arrays, which exist per router whatever they hold: 16 bytes a bucket.
pub const MAX_FLOATING_IPS: u32 = 16_384;
/// Session table entries (two per session) unless the configuration says otherwise.
pub const DEFAULT_SESSION_ENTRIES: u32 = 2 * 65_536;

/// The table id of the kernel's main table; tables are numbered as `ip route` numbers them.
pub const TABLE_MAIN: u32 = 254;
/// Tables the controller generates: steering and one per external subnet.
/// Tables of the desired state must stay below this.
pub const TABLE_GENERATED_MIN: u32 = 0x7f00_0000;
pub const TABLE_STEER_INTERNAL: u32 = TABLE_GENERATED_MIN + 1;
pub const TABLE_STEER_GATEWAY: u32 = TABLE_GENERATED_MIN + 2;
/// Table of the `n`th external subnet.
pub const fn table_external_subnet(n: u32) -> u32 {
    TABLE_GENERATED_MIN + 0x100 + n
}

/// Key data of the route LPM trie. The trie key is `{ prefix_len, RouteKey }` with
/// `prefix_len = 32 + prefix length`: the table id always matches in full, so one trie holds
/// every table (policy routing picks the table, the trie does the longest-prefix match).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// Table id in network byte order (the trie matches bits most significant first).
    pub table_be: [u8; 4],
    pub addr: [u8; 4],
}

impl RouteKey {
    /// Bits of the key taken by the table id.
    pub const TABLE_BITS: u32 = 32;

    pub const fn new(table: u32, addr: [u8; 4]) -> Self {
        Self {
            table_be: table.to_be_bytes(),
            addr,
        }
    }
}

/// What a route tells the fast path to do.
pub mod route_kind {
    /// Forward out of `ifindex`, to `gateway` or (when `gateway` is 0.0.0.0) to the
    /// destination itself.
    pub const UNICAST: u32 = 1;
    /// An address of the router itself (or a broadcast address): the kernel's business.
    pub const LOCAL: u32 = 2;
    /// Silently discarded, as the kernel does for `blackhole` routes.
    pub const BLACKHOLE: u32 = 3;
    /// Anything the kernel must answer itself (unreachable, prohibit, multipath).
    pub const KERNEL: u32 = 4;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouteEntry {
    /// One of [`route_kind`].
    pub kind: u32,
    /// Egress interface (UNICAST only).
    pub ifindex: u32,
    /// Next hop; 0.0.0.0 means the destination is on a connected subnet.
    pub gateway: [u8; 4],
    pub _pad: u32,
}

/// Slots of `ROUTE_CACHE` per CPU: 8 KiB a CPU.
pub const ROUTE_CACHE_SLOTS: u32 = 256;

/// An entry of `ROUTE_CACHE`, the programs' per-CPU cache of their lookups in `ROUTES`: what
/// the trie answered for `dst` in `table` (`found` 0: no route) while the forwarding epoch
/// (`ROUTE_EPOCH`) was `epoch`. The controller moves the epoch on after every change of a
/// table a forwarding decision reads (`ROUTES` among them), so no entry of an earlier epoch
/// is used again; epoch 0 is never used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouteCached {
    pub epoch: u32,
    pub table: u32,
    pub dst: [u8; 4],
    pub found: u32,
    pub route: RouteEntry,
}

/// Slots of `FLOW_CACHE` per CPU: 8 KiB a CPU.
pub const FLOW_CACHE_SLOTS: u32 = 128;

/// Bits of [`FlowCached::fip`]: the floating IPs a cached flow is counted against.
pub mod flow_fip {
    /// Its destination is a floating IP (`dst`), translated to `new_dst`.
    pub const IN: u8 = 1 << 0;
    /// Its source leaves as floating IP `new_src`.
    pub const OUT: u8 = 1 << 1;
}

/// An entry of `FLOW_CACHE`, the programs' per-CPU cache of whole forwarding decisions: a
/// TCP or UDP flow (`ingress`, `src`, `dst`, `ports`, `proto`) that the pipeline forwarded
/// without a session (routed, or translated by a floating IP) while the forwarding epoch
/// (`ROUTE_EPOCH`) was `epoch`, with everything its next packets need: the MAC frames to
/// the router carry, the egress and its MTU, both MACs to write and the translation. A flow
/// with a session, a firewall decision, a fragment, or a next hop the kernel must resolve
/// is never cached. The controller moves the epoch on after every change of a table a
/// decision reads, so no entry of an earlier epoch is used again; epoch 0 is never used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCached {
    pub epoch: u32,
    pub ingress: u32,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Source and destination port as on the wire.
    pub ports: [u8; 4],
    pub proto: u8,
    /// 1: decided by the XDP entry (whose egresses must take XDP frames), 0: by the TC entry.
    pub xdp: u8,
    /// The ingress interface's counter slot (`IfaceEntry::slot`).
    pub counter_slot: u16,
    pub egress: u32,
    /// The egress interface's MTU.
    pub mtu: u32,
    /// The ingress interface's MAC: a frame with another destination MAC is not cached.
    pub in_mac: [u8; 6],
    /// The next hop's MAC, written as the destination.
    pub dst_mac: [u8; 6],
    /// The egress interface's source MAC (`IfaceEntry::src_mac`).
    pub src_mac: [u8; 6],
    /// Bits of [`flow_fip`].
    pub fip: u8,
    pub _pad: u8,
    /// The addresses the flow leaves with (its own where untranslated).
    pub new_src: [u8; 4],
    pub new_dst: [u8; 4],
    /// When the entry was made, in units of 2^20 ns of `bpf_ktime_get_coarse_ns`: another
    /// flow takes the slot of an entry of the current epoch only once it is ~1 s old.
    pub made: u32,
}

/// A neighbour (ARP) entry, mirrored from the kernel's table of the router namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NeighborKey {
    pub ifindex: u32,
    pub addr: [u8; 4],
}

impl NeighborKey {
    /// The slot of this neighbour's copy in `NEIGHBOR_COPIES` (below
    /// [`NEIGHBOR_COPY_SLOTS`]): the address's low bits folded with its high ones and with
    /// a hash of the interface, so that the addresses of one /22 on one interface each have
    /// a slot of their own.
    pub const fn copy_slot(&self) -> u32 {
        let addr = u32::from_be_bytes(self.addr);
        let iface = self.ifindex.wrapping_mul(0x9e37_79b9) >> (32 - NEIGHBOR_COPY_BITS);
        (addr ^ (addr >> 16) ^ iface) & (NEIGHBOR_COPY_SLOTS - 1)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NeighborEntry {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Slots of `NEIGHBOR_COPIES`: 16 KiB a router.
pub const NEIGHBOR_COPY_BITS: u32 = 10;
pub const NEIGHBOR_COPY_SLOTS: u32 = 1 << NEIGHBOR_COPY_BITS;

/// An entry of `NEIGHBOR_COPIES`, the copy of `NEIGHBORS` in an array at the slot each
/// neighbour's key hashes to ([`NeighborKey::copy_slot`]): an array lookup the verifier
/// inlines, where the hash takes a call. A slot holds one neighbour, the first the
/// controller put there; the others of that slot are found in `NEIGHBORS` alone. `ifindex`
/// 0 in the key marks a copy not to be used; the controller writes a copy as it does an
/// interface's (see [`IfaceIndexed`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NeighborCopy {
    pub key: NeighborKey,
    pub entry: NeighborEntry,
}

/// Interface roles (Neutron's `qr` and `qg`).
pub mod iface_role {
    pub const INTERNAL: u32 = 1;
    pub const EXTERNAL: u32 = 2;
}

/// Bits of [`IfaceEntry::flags`].
pub mod iface_flags {
    /// Frames redirected by XDP into this interface are delivered (a NIC with
    /// `ndo_xdp_xmit`, a tap, or a veth whose far end runs XDP or GRO). Without it the XDP entry
    /// hands the frame to the TC entry, which redirects it as an skb.
    pub const XDP_EGRESS: u32 = 1 << 0;
    /// Anti-spoofing: a packet arriving here is dropped unless its source is in
    /// `ALLOWED_SOURCES` for this interface.
    pub const SOURCE_CHECK: u32 = 1 << 1;
}

/// Key data of the `ALLOWED_SOURCES` trie: `{ prefix_len = 32 + prefix length, SourceKey }`
/// (the interface always matches in full).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    /// Ingress ifindex in network byte order.
    pub ifindex_be: [u8; 4],
    pub addr: [u8; 4],
}

impl SourceKey {
    pub const IFINDEX_BITS: u32 = 32;

    pub const fn new(ifindex: u32, addr: [u8; 4]) -> Self {
        Self {
            ifindex_be: ifindex.to_be_bytes(),
            addr,
        }
    }
}

/// Entries of `ALLOWED_SOURCES`.
pub const MAX_ALLOWED_SOURCES: u32 = 16_384;

/// One interface of the router, keyed by ifindex in the router's namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceEntry {
    /// The interface's own MAC: what frames to the router carry as destination, and what
    /// its ARP answers give.
    pub mac: [u8; 6],
    /// The source MAC of what the router forwards out of this interface: `mac`, except on
    /// a distributed router's internal interface, where it is the node's own DVR MAC (the
    /// gateway MAC is the same on every node, so switches must never see it as a source
    /// from more than one).
    pub src_mac: [u8; 6],
    /// Largest IPv4 packet (L3 bytes) the interface sends without fragmenting.
    pub mtu: u32,
    /// One of [`iface_role`].
    pub role: u32,
    /// Bits of [`iface_flags`].
    pub flags: u32,
    /// Session zone of packets arriving here (see [`CtKey::zone`]); the controller gives
    /// every interface its own (its ifindex), as conntrack zones do for firewall steering.
    pub zone: u16,
    /// The interface's slot in `IFACE_FORWARDED` (below [`MAX_IFACES`]), one of its own
    /// among the router's interfaces, given by the controller.
    pub slot: u16,
}

/// An entry of `IFACES_BY_INDEX`, the copy of `IFACES` in an array at each interface's
/// ifindex (for ifindexes below [`MAX_IFACES`]): an array lookup the verifier inlines, where
/// the hash takes a call. `ifindex` 0 (no interface has it) marks an entry not to be used,
/// which the programs then look up in `IFACES`: the controller writes an entry's settings
/// while `ifindex` is 0 and only then its `ifindex`, so no program reads half of a write.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceIndexed {
    pub ifindex: u32,
    pub entry: IfaceEntry,
}

/// Per-CPU counters of the packets forwarded from one ingress interface: the
/// `IFACE_FORWARDED` array at the interface's [`IfaceEntry::slot`]. Forwarding is the common
/// outcome, and an array lookup is inlined by the verifier where the hash of [`IfaceStats`]
/// (the other outcomes) takes a call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceForwarded {
    pub packets: u64,
    pub bytes: u64,
}

/// Number of reason slots in [`IfaceStats::reasons`].
pub const REASON_SLOTS: usize = 48;

/// Per-CPU counters of one ingress interface. `reasons[r]` counts packets handed to the
/// kernel or dropped for reason `r` (see [`Reason`]). The fast path counts forwarded packets
/// in [`IfaceForwarded`] instead; user space adds them into `fwd_*` when it reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceStats {
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    pub pass_packets: u64,
    pub pass_bytes: u64,
    pub drop_packets: u64,
    pub drop_bytes: u64,
    pub reasons: [u64; REASON_SLOTS],
}

impl Default for IfaceStats {
    fn default() -> Self {
        Self {
            fwd_packets: 0,
            fwd_bytes: 0,
            pass_packets: 0,
            pass_bytes: 0,
            drop_packets: 0,
            drop_bytes: 0,
            reasons: [0; REASON_SLOTS],
        }
    }
}

impl IfaceStats {
    /// Adds `other` into `self` (user space sums the per-CPU values).
    pub fn accumulate(&mut self, other: &Self) {
        self.fwd_packets += other.fwd_packets;
        self.fwd_bytes += other.fwd_bytes;
        self.pass_packets += other.pass_packets;
        self.pass_bytes += other.pass_bytes;
        self.drop_packets += other.drop_packets;
        self.drop_bytes += other.drop_bytes;
        for (mine, theirs) in self.reasons.iter_mut().zip(other.reasons.iter()) {
            *mine += *theirs;
        }
    }
}

/// `routerctl monitor`: while `MONITOR[0].until_ns` (kernel monotonic clock) lies ahead, the
/// programs send an [`Event`] to the `EVENTS` ring buffer for every packet they drop or hand
/// to the kernel. A monitor refreshes the deadline every second, so a monitor that dies
/// stops the events a few seconds later; nobody has to clean up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MonitorConfig {
    pub until_ns: u64,
}

/// Bytes of the `EVENTS` ring buffer: about 330 events, what routerd's monitor reads every
/// 5 ms while someone listens (65,000 dropped or passed packets a second before the ring
/// overflows). Every router has one, monitored or not, so it is kept small: a node of
/// 1,000 routers holds 1,000 rings.
pub const EVENTS_BYTES: u32 = 16 * 1024;

/// One dropped or passed packet, for `routerctl monitor`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    pub ts_ns: u64,
    pub ifindex: u32,
    /// A [`Reason`] number.
    pub reason: u32,
    pub len: u32,
    /// IPv4 fields (zero for other frames).
    pub proto: u8,
    pub _pad: [u8; 3],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// Fragmented datagrams the `FRAGMENTS` table remembers at once (an LRU: the least
/// recently used record makes room). A datagram's record lives from its first fragment to
/// its last, usually well under a millisecond; each is about 120 bytes of kernel memory,
/// preallocated per router.
pub const MAX_FRAGMENT_DATAGRAMS: u32 = 256;

/// How long a datagram's record answers for its later fragments (Linux's `ipfrag_time`).
pub const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

/// Key of `FRAGMENTS`: one fragmented datagram as it arrived (before translation), in the
/// session zone of its ingress interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FragKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// The IPv4 identification field, as on the wire.
    pub id: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
    pub zone: u16,
    pub _pad2: [u8; 2],
}

/// What became of a fragmented datagram's first fragment (`FragEntry::outcome`).
pub mod frag_outcome {
    /// Forwarded: later fragments take the same addresses and path.
    pub const FORWARD: u8 = 1;
    /// Handed to the kernel: later fragments follow (`Reason::Fragment`).
    pub const PASS: u8 = 2;
    /// Dropped: later fragments are dropped for the same reason.
    pub const DROP: u8 = 3;
    /// The XDP entry handed it to the TC entry, which has not decided it yet: later
    /// fragments go the same way.
    pub const TO_TC: u8 = 4;
}

/// Value of `FRAGMENTS`: the first fragment's outcome, for the datagram's later fragments
/// (which carry no L4 header: they need only the addresses and the path).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragEntry {
    /// When the first fragment was decided (coarse monotonic clock).
    pub created_ns: u64,
    /// The addresses the datagram leaves with.
    pub new_src: [u8; 4],
    pub new_dst: [u8; 4],
    pub next_hop: [u8; 4],
    pub egress: u32,
    /// Floating IPs the datagram was translated from and to (0.0.0.0: none), for their
    /// counters.
    pub dnat_fip: [u8; 4],
    pub snat_fip: [u8; 4],
    /// The next hop's MAC, when `has_mac` (else the TC entry lets the kernel resolve it).
    pub mac: [u8; 6],
    pub has_mac: u8,
    /// One of [`frag_outcome`].
    pub outcome: u8,
    /// The `Reason` of a `PASS` or `DROP` outcome.
    pub reason: u8,
    pub _pad: [u8; 7],
}

/// XDP metadata the XDP entry leaves in front of a frame it hands to the kernel, so the TC
/// entry (attached alongside in XDP mode) knows what to do with it.
pub mod xdp_meta {
    /// Size of the metadata area in bytes.
    pub const LEN: usize = 4;
    /// The XDP entry already decided and counted: the TC entry lets the frame pass.
    pub const DONE: u32 = 0x5244_0001;
    /// The egress cannot take an XDP redirect: the TC entry runs the pipeline itself.
    pub const TC_FORWARD: u32 = 0x5244_0002;
    /// The firewall rejects the frame: the TC entry marks it `REJECT_MARK` for the kernel.
    pub const REJECT: u32 = 0x5244_0003;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and explicit padding, and
    // any bit pattern is a valid value.
    unsafe impl aya::Pod for RouteKey {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for MonitorConfig {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for RouteEntry {}
    unsafe impl aya::Pod for NeighborKey {}
    unsafe impl aya::Pod for NeighborEntry {}
    unsafe impl aya::Pod for NeighborCopy {}
    unsafe impl aya::Pod for IfaceEntry {}
    unsafe impl aya::Pod for IfaceIndexed {}
    unsafe impl aya::Pod for IfaceStats {}
    unsafe impl aya::Pod for IfaceForwarded {}
    unsafe impl aya::Pod for NatConfig {}
    unsafe impl aya::Pod for FipEntry {}
    unsafe impl aya::Pod for FipFilter {}
    unsafe impl aya::Pod for FipStats {}
    unsafe impl aya::Pod for SnatStats {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for PolicyConfig {}
    unsafe impl aya::Pod for PolicyRule {}
    unsafe impl aya::Pod for FwRule {}
    unsafe impl aya::Pod for FwStats {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for HaState {}
    unsafe impl aya::Pod for SyncRecord {}
    unsafe impl aya::Pod for FragEntry {}
    unsafe impl aya::Pod for FlowCached {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn map_names_fit_the_kernels_limit() {
        // BPF_OBJ_NAME_LEN is 16 bytes with the terminating NUL: a longer name is refused
        // when a map is made again from its pin's name.
        for name in map_names::ALL {
            assert!(name.len() <= 15, "{name}");
        }
    }

    #[test]
    fn layouts_are_stable() {
        // The eBPF object and the controller must agree on these to the byte.
        assert_eq!(size_of::<RouteKey>(), 8);
        assert_eq!(size_of::<RouteEntry>(), 16);
        assert_eq!(size_of::<NeighborKey>(), 8);
        assert_eq!(size_of::<NeighborEntry>(), 8);
        assert_eq!(size_of::<IfaceEntry>(), 28);
        assert_eq!(size_of::<IfaceIndexed>(), 32);
        assert_eq!(size_of::<RouteCached>(), 32);
        assert_eq!(size_of::<FlowCached>(), 64);
        assert_eq!(size_of::<NeighborCopy>(), 16);
        assert_eq!(size_of::<NatConfig>(), 24);
        assert_eq!(size_of::<FipEntry>(), 8);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(size_of::<CtEntry>(), 72);
        assert_eq!(size_of::<HaState>(), 24);
        assert_eq!(size_of::<SyncRecord>(), 96);
        assert_eq!(align_of::<CtKey>(), 4);
        assert_eq!(size_of::<PolicyConfig>(), 28);
        assert_eq!(size_of::<PolicyRule>(), 24);
        assert_eq!(size_of::<FwRule>(), 24);
        assert_eq!(size_of::<FwStats>(), 16);
        assert_eq!(size_of::<Event>(), 40);
        assert_eq!(size_of::<FragKey>(), 16);
        assert_eq!(size_of::<FragEntry>(), 48);
        assert_eq!(size_of::<IfaceStats>(), 8 * (6 + REASON_SLOTS));
        assert_eq!(align_of::<RouteKey>(), 1);
        assert_eq!(align_of::<IfaceStats>(), 8);
    }

    #[test]
    fn route_key_puts_table_first_in_network_order() {
        let key = RouteKey::new(TABLE_MAIN, [10, 0, 1, 0]);
        assert_eq!(key.table_be, [0, 0, 0, 254]);
        assert_eq!(key.addr, [10, 0, 1, 0]);
    }

    #[test]
    fn accumulate_sums_every_field() {
        let mut a = IfaceStats::default();
        let mut b = IfaceStats {
            fwd_packets: 1,
            fwd_bytes: 2,
            pass_packets: 3,
            pass_bytes: 4,
            drop_packets: 5,
            drop_bytes: 6,
            ..Default::default()
        };
        b.reasons[7] = 9;
        a.accumulate(&b);
        a.accumulate(&b);
        assert_eq!((a.fwd_packets, a.fwd_bytes, a.pass_packets), (2, 4, 6));
        assert_eq!((a.pass_bytes, a.drop_packets, a.drop_bytes), (8, 10, 12));
        assert_eq!(a.reasons[7], 18);
    }
}
