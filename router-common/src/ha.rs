//! High availability: a router placed on several nodes, one active. The controller tells
//! the fast path its role (`HA`), and the active's fast path reports the sessions it makes
//! and the TCP state they reach (`SYNC`), which the controller sends to the standbys.

use crate::{CtEntry, CtKey};

/// Values of [`HaState::role`].
pub mod ha_role {
    /// Not an HA router: forward as always.
    pub const SINGLE: u32 = 0;
    /// The active node's copy: forward while `fence_at_ns` is ahead.
    pub const ACTIVE: u32 = 1;
    /// A standby: drop everything that arrives (answer nothing, forward nothing).
    pub const STANDBY: u32 = 2;
    /// An active that just handed the router over: it still forwards what arrives (the
    /// switches have not all heard the new active yet), but from `HaState::handover_mac`,
    /// so that its frames never teach a switch that the router's MAC is still here; it
    /// answers nothing and hands nothing to its kernel.
    pub const HANDING_OVER: u32 = 3;
}

/// The router's HA role (the `HA` array's one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HaState {
    /// One of [`ha_role`].
    pub role: u32,
    /// Non-zero: report sessions to `SYNC` (an active with standbys to feed).
    pub sync: u32,
    /// For an active: the `bpf_ktime_get_coarse_ns` time after which it stops forwarding
    /// unless its controller moved this forward (0: never). A controller that dies or
    /// hangs cannot leave a second active answering.
    pub fence_at_ns: u64,
    /// While handing over: the source MAC of what it forwards (this node's own).
    pub handover_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Values of [`SyncRecord::what`].
pub mod sync_what {
    /// A session was made: `key` and `entry` are its original direction.
    pub const CREATED: u32 = 1;
    /// A session's entry `key` reached a new TCP state (its first ACK, FIN or RST, or a
    /// new connection on the tuple of a closed one): `tcp_flags` are its flags now.
    pub const TCP_STATE: u32 = 2;
}

/// One record of the `SYNC` ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncRecord {
    /// One of [`sync_what`].
    pub what: u32,
    pub tcp_flags: u32,
    pub key: CtKey,
    pub entry: CtEntry,
}

/// Bytes of an HA router's `SYNC` ring: about 2,600 records, half a second of 5,000 new
/// sessions a second while the controller drains it every few milliseconds.
pub const SYNC_BYTES: u32 = 256 * 1024;

/// Bytes of the `SYNC` ring of a router without HA, which the fast path never writes: the
/// smallest ring the kernel makes (a page).
pub const SYNC_BYTES_UNUSED: u32 = 4096;
