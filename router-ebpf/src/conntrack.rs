//! Sessions: lookup, per-packet state, and creation with SNAT port allocation.
//!
//! A session is two entries: the reply direction's is inserted first (that insert is what
//! claims the translated port: `NOEXIST` fails if another session holds the tuple), then the
//! original direction's, also with `NOEXIST`; if that fails the first is removed again.
//! Aging and garbage collection are user space's job.

use core::ptr::NonNull;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use router_common::{CtEntry, CtKey, NatConfig, Reason, ct_dir, ct_kind, ct_tcp};

use crate::{
    flow::Shape,
    ha,
    maps::{SESSIONS, SNAT_SOURCES},
    nat::Target,
};

/// Port candidates tried before giving up: the original port, then random ones.
const PORT_TRIES: u32 = 16;
const EEXIST: i32 = -17;
/// TCP flags a session follows.
const TRACKED_TCP: u32 = (ct_tcp::FIN | ct_tcp::SYN | ct_tcp::RST | ct_tcp::ACK) as u32;

/// The session entry of `key`. A `NonNull`: `None` is then a null pointer, where an
/// `Option` of a raw pointer leaves its payload undefined, and a partly undefined value
/// spilled to the stack fails verification.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<NonNull<CtEntry>> {
    SESSIONS.get_ptr_mut(key).and_then(NonNull::new)
}

/// TCP flags whose first sight changes how long a session lives (established, closing):
/// a standby is told of them.
const REPORTED_TCP: u32 = (ct_tcp::FIN | ct_tcp::RST | ct_tcp::ACK) as u32;

/// Records a packet of `bytes` with `tcp_flags` on `entry`, the session entry of `key`.
#[inline(always)]
pub fn touch(key: &CtKey, entry: *mut CtEntry, bytes: u32, tcp_flags: u32) {
    let flags = tcp_flags & TRACKED_TCP;
    // SAFETY: `entry` points into a hash map value, 8-byte aligned. Counters are atomic
    // adds (another CPU may count the same flow); the timestamp is a plain store (any recent
    // value will do); flags only gain bits and a rare lost bit is corrected by the next packet.
    unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_coarse_ns();
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*entry).bytes,
            u64::from(bytes),
        );
        let seen = (*entry).tcp_flags;
        let closed = u32::from(ct_tcp::FIN | ct_tcp::RST);
        let syn = u32::from(ct_tcp::SYN);
        if flags & syn != 0 && flags & u32::from(ct_tcp::ACK) == 0 && seen & closed != 0 {
            // A new connection reusing the tuple of a closed one: start its state afresh.
            (*entry).tcp_flags = flags;
            if let Some(peer) = SESSIONS.get_ptr_mut(&(*entry).peer) {
                (*peer).tcp_flags = 0;
            }
            ha::tcp_state(key, flags);
        } else if seen | flags != seen {
            (*entry).tcp_flags = seen | flags;
            if (seen | flags) & !seen & REPORTED_TCP != 0 {
                ha::tcp_state(key, seen | flags);
            }
        }
    }
}

/// What a failed creation means for the packet.
pub enum CreateError {
    NoPort,
    TableFull,
    Quota,
}

impl CreateError {
    pub fn reason(self) -> Reason {
        match self {
            CreateError::NoPort => Reason::NoSnatPort,
            CreateError::TableFull => Reason::SessionTableFull,
            CreateError::Quota => Reason::SnatSourceQuota,
        }
    }
}

/// Creates the session of a packet with tuple `fwd` that leaves as `target`, choosing the
/// translated source port (or echo identifier) from the configured range. On success
/// `target.sport` holds the port chosen. Replies will arrive in `reply_zone`.
#[inline(always)]
pub fn create(
    fwd: &CtKey,
    target: &mut Target,
    reply_zone: u16,
    kind: u8,
    cfg: &NatConfig,
    shape: Shape,
    collisions: &mut u64,
) -> Result<(), CreateError> {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let reverse = reply_entry(fwd, kind, now);
    if cfg.source_quota != 0
        // SAFETY: a map value, read once.
        && unsafe { SNAT_SOURCES.get(&fwd.src) }.is_some_and(|n| *n >= cfg.source_quota)
    {
        return Err(CreateError::Quota);
    }
    let (min, max) = (u32::from(cfg.port_min), u32::from(cfg.port_max));
    if min == 0 || max < min {
        return Err(CreateError::NoPort);
    }
    let span = max - min + 1;
    let original = u32::from(u16::from_be_bytes(fwd.sport));
    // SAFETY: plain helper call.
    let start = unsafe { bpf_get_prandom_u32() };
    let mut i = 0;
    while i < PORT_TRIES {
        let port = if i == 0 && original >= min && original <= max {
            original
        } else {
            // `checked_rem`: a panic path would not load (span is never 0 here anyway).
            let Some(offset) = start.wrapping_add(i.wrapping_mul(0x9e37)).checked_rem(span) else {
                return Err(CreateError::NoPort);
            };
            min + offset
        };
        i += 1;
        target.sport = (port as u16).to_be_bytes();
        let reply_key = reply_key(target, fwd.proto, reply_zone, shape);
        match SESSIONS.insert(&reply_key, &reverse, u64::from(BPF_NOEXIST)) {
            Ok(()) => {
                insert_forward(fwd, target, reply_key, kind, now)?;
                if cfg.source_quota != 0 {
                    count_source(fwd.src);
                }
                return Ok(());
            }
            Err(EEXIST) => *collisions += 1,
            Err(_) => return Err(CreateError::TableFull),
        }
    }
    Err(CreateError::NoPort)
}

/// Creates the firewall's session of a flow leaving as `target` (no port translation).
/// When the reply tuple is taken already (the same flow in another session) the packet goes
/// on without a session of its own.
#[inline(always)]
pub fn create_forward(
    fwd: &CtKey,
    target: &Target,
    reply_zone: u16,
    shape: Shape,
) -> Result<(), CreateError> {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let reply_key = reply_key(target, fwd.proto, reply_zone, shape);
    let reverse = reply_entry(fwd, ct_kind::FORWARD, now);
    match SESSIONS.insert(&reply_key, &reverse, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            let mut target = *target;
            insert_forward(fwd, &mut target, reply_key, ct_kind::FORWARD, now)
        }
        Err(EEXIST) => Ok(()),
        Err(_) => Err(CreateError::TableFull),
    }
}

/// The reply direction's entry of a session whose original direction is `fwd`: replies
/// are rewritten back to `fwd`, inverted.
#[inline(always)]
fn reply_entry(fwd: &CtKey, kind: u8, now: u64) -> CtEntry {
    let target = Target {
        src: fwd.dst,
        dst: fwd.src,
        sport: fwd.dport,
        dport: fwd.sport,
    };
    new_entry(&target, *fwd, ct_dir::REPLY, kind, now)
}

/// A new session's entry of one direction: rewritten to `target`, its other direction's key
/// `peer`, seen first and last at `now`, no packets counted yet.
#[inline(always)]
fn new_entry(target: &Target, peer: CtKey, direction: u8, kind: u8, now: u64) -> CtEntry {
    // Zero the compiler cannot see: it would merge the run of zero fields into a call to a
    // byte-by-byte `memset`, several times slower than these few stores.
    let zero = core::hint::black_box(0u64);
    CtEntry {
        new_src: target.src,
        new_dst: target.dst,
        new_sport: target.sport,
        new_dport: target.dport,
        peer,
        _pad0: zero as u32,
        created_ns: now,
        last_seen_ns: now,
        packets: zero,
        bytes: zero,
        tcp_flags: zero as u32,
        direction,
        kind,
        _pad: [0; 2],
    }
}

/// One more SNAT session for internal address `src` (see `NatConfig::source_quota`).
#[inline(always)]
fn count_source(src: [u8; 4]) {
    match SNAT_SOURCES.get_ptr_mut(&src) {
        // SAFETY: a map value, 4-byte aligned; another CPU may count the same address.
        Some(n) => unsafe {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(n, 1);
        },
        None => {
            let _ = SNAT_SOURCES.insert(&src, &1, 0);
        }
    }
}

/// The key replies to a packet leaving as `target` will carry.
#[inline(always)]
fn reply_key(target: &Target, proto: u8, zone: u16, shape: Shape) -> CtKey {
    let (sport, dport) = match shape {
        // An echo request's identifier comes back as the reply's "destination port".
        Shape::EchoRequest => ([0; 2], target.sport),
        _ => (target.dport, target.sport),
    };
    CtKey {
        zone,
        proto,
        _pad: 0,
        src: target.dst,
        dst: target.src,
        sport,
        dport,
    }
}

#[inline(always)]
fn insert_forward(
    fwd: &CtKey,
    target: &mut Target,
    reply_key: CtKey,
    kind: u8,
    now: u64,
) -> Result<(), CreateError> {
    let forward = new_entry(target, reply_key, ct_dir::ORIGINAL, kind, now);
    match SESSIONS.insert(fwd, &forward, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            ha::created(fwd, &forward);
            Ok(())
        }
        Err(err) => {
            let _ = SESSIONS.remove(&reply_key);
            if err != EEXIST {
                return Err(CreateError::TableFull);
            }
            // Another CPU created this session first: use its translation.
            match lookup(fwd) {
                // SAFETY: a map value, read once.
                Some(theirs) => {
                    *target = unsafe { Target::of_entry(theirs.as_ref()) };
                    Ok(())
                }
                None => Err(CreateError::TableFull),
            }
        }
    }
}
