//! NAT and session (connection tracking) types shared by the fast path and the controller.
//!
//! Floating IPs are stateless 1:1 maps (`FIP_BY_ADDRESS`, `FIP_BY_FIXED`). Default SNAT and
//! hairpin SNAT need port translation and therefore sessions: two [`CtEntry`]s per session in
//! `SESSIONS`, one keyed by the original direction's tuple and one by the reply direction's,
//! each holding the tuple its packets are rewritten to and the key of its partner.

/// Bits of [`NatConfig::flags`].
pub mod nat_flags {
    /// Default SNAT to the gateway IP is on (`gateway.snat = true`).
    pub const SNAT: u32 = 1 << 0;
    /// The router has a gateway (`gateway_ip` and `gateway_ifindex` are valid).
    pub const GATEWAY: u32 = 1 << 1;
}

/// The router's NAT settings: the only entry of the `NAT_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatConfig {
    pub gateway_ip: [u8; 4],
    pub gateway_ifindex: u32,
    /// Bits of [`nat_flags`].
    pub flags: u32,
    /// Ports (and ICMP echo identifiers) the fast path may give SNAT sessions, inclusive.
    /// The kernel's own slow-path SNAT uses a disjoint range, so the two never collide.
    pub port_min: u16,
    pub port_max: u16,
    /// Most SNAT sessions one internal address may hold at once (0: no limit), so that one
    /// VM cannot take every port of the gateway IP from the others.
    pub source_quota: u32,
    pub _pad: u32,
}

/// One side of a floating IP: keyed by the floating IP it holds the fixed IP, keyed by the
/// fixed IP it holds the floating IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FipEntry {
    pub addr: [u8; 4],
    pub _pad: u32,
}

/// 64-bit words of a [`FipFilter`]: 8,192 bits, 1 KiB.
pub const FIP_FILTER_WORDS: usize = 128;

/// A filter in front of the floating-IP tables, the only entry of the `FIP_FILTER` array:
/// one bit per hash of an address, set for every floating IP and every fixed IP that has
/// one. An address whose bit is clear is neither, and the fast path skips both hash
/// lookups for it (most packets of a router carry no floating IP). A set bit only means
/// "look": two addresses may share a bit.
///
/// `ready` 0 (a table just made, before the controller's first write) means "look for
/// every address": the filter is only trusted once it has been written whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FipFilter {
    pub bits: [u64; FIP_FILTER_WORDS],
    pub ready: u32,
    pub _pad: u32,
}

impl Default for FipFilter {
    fn default() -> Self {
        Self {
            bits: [0; FIP_FILTER_WORDS],
            ready: 0,
            _pad: 0,
        }
    }
}

impl FipFilter {
    /// The filter of these addresses (floating and fixed IPs), ready.
    pub fn of<'a>(addrs: impl IntoIterator<Item = &'a [u8; 4]>) -> Self {
        let mut filter = Self {
            ready: 1,
            ..Self::default()
        };
        for addr in addrs {
            let bit = Self::bit(*addr);
            filter.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        filter
    }

    /// The bit of `addr`: a multiplicative hash of the address, its top 13 bits.
    #[inline(always)]
    pub fn bit(addr: [u8; 4]) -> u32 {
        u32::from_be_bytes(addr).wrapping_mul(0x9E37_79B1) >> 19
    }

    /// Whether `addr` may be a floating IP or the fixed IP of one.
    #[inline(always)]
    pub fn may_hold(&self, addr: [u8; 4]) -> bool {
        if self.ready == 0 {
            return true;
        }
        let bit = Self::bit(addr);
        // The mask keeps the index provably in bounds for the verifier.
        let word = self.bits[(bit / 64) as usize & (FIP_FILTER_WORDS - 1)];
        (word >> (bit % 64)) & 1 != 0
    }
}

/// Per-CPU counters of one floating IP (keyed by the floating IP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FipStats {
    /// Packets to the floating IP, translated to the fixed IP.
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Packets from the fixed IP, translated to the floating IP.
    pub out_packets: u64,
    pub out_bytes: u64,
}

impl FipStats {
    pub fn accumulate(&mut self, other: &Self) {
        self.in_packets += other.in_packets;
        self.in_bytes += other.in_bytes;
        self.out_packets += other.out_packets;
        self.out_bytes += other.out_bytes;
    }
}

/// Per-CPU counters of the router's SNAT gateway (the only entry of `SNAT_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SnatStats {
    /// Packets and bytes translated to the gateway IP (original direction).
    pub out_packets: u64,
    pub out_bytes: u64,
    /// Replies translated back from the gateway IP.
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Sessions the fast path created.
    pub sessions_created: u64,
    /// Port candidates that were taken already (collisions retried).
    pub port_collisions: u64,
}

impl SnatStats {
    pub fn accumulate(&mut self, other: &Self) {
        self.out_packets += other.out_packets;
        self.out_bytes += other.out_bytes;
        self.in_packets += other.in_packets;
        self.in_bytes += other.in_bytes;
        self.sessions_created += other.sessions_created;
        self.port_collisions += other.port_collisions;
    }
}

/// A packet's tuple as the session table sees it. For ICMP echo the identifier is the
/// "source port" of a request and the "destination port" of a reply, so a request's
/// tuple, inverted, is its reply's tuple.
///
/// Aligned to 4 bytes (its size and layout are those of plain `repr(C)`): copies of it in
/// the fast path are then four word moves, not a call to a byte-by-byte `memmove`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct CtKey {
    /// Sessions live in zones: one flow seen twice (say before and after a firewall) is two
    /// sessions, not a collision. A packet's zone is that of the interface it arrived on.
    pub zone: u16,
    pub proto: u8,
    pub _pad: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Ports as on the wire (network byte order).
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

impl CtKey {
    /// The key of the other direction in `zone`, for a packet that left as `self`.
    pub const fn inverted(&self, zone: u16) -> Self {
        Self {
            zone,
            proto: self.proto,
            _pad: 0,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// Bits of [`CtEntry::tcp_flags`]: the TCP flags seen in this entry's direction.
pub mod ct_tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Values of [`CtEntry::direction`].
pub mod ct_dir {
    pub const ORIGINAL: u8 = 0;
    pub const REPLY: u8 = 1;
}

/// What made a session (values of [`CtEntry::kind`]).
pub mod ct_kind {
    /// Default SNAT of traffic leaving the gateway interface.
    pub const SNAT: u8 = 1;
    /// Hairpin: a floating IP reached from inside, destination- and source-translated.
    pub const HAIRPIN: u8 = 2;
    /// No port translation: a flow the firewall tracks (floating-IP and routed flows). Its
    /// entries record the translation the flow got but packets are translated statelessly.
    pub const FORWARD: u8 = 3;
}

/// One direction of a session.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// The tuple packets of this direction are rewritten to.
    pub new_src: [u8; 4],
    pub new_dst: [u8; 4],
    pub new_sport: [u8; 2],
    pub new_dport: [u8; 2],
    /// The other direction's entry.
    pub peer: CtKey,
    pub _pad0: u32,
    /// `bpf_ktime_get_ns` at creation and at the last packet.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Bits of [`ct_tcp`] seen in this direction (a u32: BPF atomics are 32 or 64 bits).
    pub tcp_flags: u32,
    /// One of [`ct_dir`].
    pub direction: u8,
    /// One of [`ct_kind`].
    pub kind: u8,
    pub _pad: [u8; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_holds_what_it_was_made_of_and_little_else() {
        let mut addrs = [[0u8; 4]; 200];
        for (i, a) in addrs.iter_mut().enumerate() {
            *a = (0xCB00_7100 + i as u32).to_be_bytes();
        }
        let filter = FipFilter::of(&addrs);
        assert!(addrs.iter().all(|a| filter.may_hold(*a)));
        // 200 addresses set at most 200 of 8,192 bits: others pass rarely.
        let others = (0..10_000u32).map(|i| (0x0A00_0000 + i).to_be_bytes());
        let passed = others.filter(|a| filter.may_hold(*a)).count();
        assert!(
            passed < 500,
            "{passed} of 10,000 other addresses pass the filter"
        );
        // A filter never written looks for every address.
        assert!(FipFilter::default().may_hold([10, 0, 0, 1]));
        assert!(!FipFilter::of(&[]).may_hold([10, 0, 0, 1]));
    }
}
