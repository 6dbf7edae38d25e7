//! Sessions of the fast path (the `SESSIONS` map): their state, aging, removal and listing.
//!
//! The fast path creates a session as two entries (reply direction first, then original,
//! each naming the other as `peer`) and only ever refreshes them; every removal happens here.

use std::{
    borrow::{Borrow, BorrowMut},
    collections::BTreeSet,
    net::Ipv4Addr,
    time::Duration,
};

use aya::maps::{HashMap, IterableMap, MapData, MapError};
use router_common::{CtEntry, CtKey, ct_dir, ct_kind, ct_tcp};
use serde::{Deserialize, Serialize};

use crate::{error::Error, paths};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// A half-made session younger than this may still be in creation (the fast path inserts
/// its two entries one after the other), so it is not an orphan yet.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// Idle time after which a session of each state ends, in seconds (the field names are
/// those of the configuration). Defaults are Linux's `nf_conntrack` ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    pub tcp_syn_sent: u64,
    pub tcp_syn_recv: u64,
    pub tcp_established: u64,
    pub tcp_fin_wait: u64,
    pub tcp_close_wait: u64,
    pub tcp_time_wait: u64,
    pub tcp_close: u64,
    /// UDP with no reply yet.
    pub udp: u64,
    /// UDP that saw replies.
    pub udp_stream: u64,
    pub icmp: u64,
    pub generic: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 432_000,
            tcp_fin_wait: 120,
            tcp_close_wait: 60,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
            generic: 600,
        }
    }
}

/// A session's state, derived from what both directions have seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    TimeWait,
    Close,
    Udp,
    UdpStream,
    Icmp,
    Generic,
}

impl State {
    /// The name `conntrack -L` prints for the state (UDP, ICMP and others have none there).
    pub const fn name(self) -> &'static str {
        match self {
            State::SynSent => "SYN_SENT",
            State::SynRecv => "SYN_RECV",
            State::Established => "ESTABLISHED",
            State::FinWait => "FIN_WAIT",
            State::CloseWait => "CLOSE_WAIT",
            State::TimeWait => "TIME_WAIT",
            State::Close => "CLOSE",
            State::Udp => "UNREPLIED",
            State::UdpStream => "REPLIED",
            State::Icmp => "ICMP",
            State::Generic => "GENERIC",
        }
    }

    /// The state of a session of protocol `proto` whose original entry is `orig` and whose
    /// reply entry (if it still exists) is `reply`.
    pub fn derive(orig: &CtEntry, reply: Option<&CtEntry>, proto: u8) -> State {
        match proto {
            IPPROTO_TCP => tcp_state(orig.tcp_flags, reply.map_or(0, |r| r.tcp_flags)),
            IPPROTO_UDP if reply.is_some_and(|r| r.packets > 0) => State::UdpStream,
            IPPROTO_UDP => State::Udp,
            IPPROTO_ICMP => State::Icmp,
            _ => State::Generic,
        }
    }

    pub fn timeout(self, t: &Timeouts) -> Duration {
        Duration::from_secs(match self {
            State::SynSent => t.tcp_syn_sent,
            State::SynRecv => t.tcp_syn_recv,
            State::Established => t.tcp_established,
            State::FinWait => t.tcp_fin_wait,
            State::CloseWait => t.tcp_close_wait,
            State::TimeWait => t.tcp_time_wait,
            State::Close => t.tcp_close,
            State::Udp => t.udp,
            State::UdpStream => t.udp_stream,
            State::Icmp => t.icmp,
            State::Generic => t.generic,
        })
    }
}

fn tcp_state(orig: u32, reply: u32) -> State {
    let has = |flags: u32, bit: u8| flags & u32::from(bit) != 0;
    let (orig_fin, reply_fin) = (has(orig, ct_tcp::FIN), has(reply, ct_tcp::FIN));
    let no_syn = !has(orig | reply, ct_tcp::SYN);
    if has(orig | reply, ct_tcp::RST) {
        State::Close
    } else if orig_fin && reply_fin {
        State::TimeWait
    } else if orig_fin {
        State::FinWait
    } else if reply_fin {
        State::CloseWait
    } else if has(reply, ct_tcp::SYN) && has(orig, ct_tcp::ACK) {
        State::Established
    } else if no_syn && has(orig, ct_tcp::ACK) && has(reply, ct_tcp::ACK) {
        // Picked up mid-stream (say after a controller restart flushed the table).
        State::Established
    } else if has(reply, ct_tcp::SYN) {
        State::SynRecv
    } else {
        State::SynSent
    }
}

/// Now on the fast path's clock, in ns. `bpf_ktime_get_(coarse_)ns` is CLOCK_MONOTONIC
/// (the coarse variant lags it by at most a tick, so idle times read here are never short).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

/// What one garbage collection pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Entries looked at (two per session).
    pub scanned: usize,
    /// Sessions that timed out (both entries removed).
    pub expired_sessions: usize,
    /// Entries whose partner was missing, removed.
    pub orphans_removed: usize,
    /// SNAT and hairpin sessions left per internal address (for the per-source quota).
    pub snat_sources: std::collections::HashMap<[u8; 4], u32>,
}

/// Removes the sessions idle for longer than their state's timeout, and half-sessions
/// (an entry whose partner is gone) older than a few seconds.
pub fn collect_garbage<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, CtKey, CtEntry>,
    now_ns: u64,
    timeouts: &Timeouts,
) -> Result<GcReport, Error> {
    let keys = snapshot_keys(map)?;
    let mut report = GcReport {
        scanned: keys.len(),
        ..GcReport::default()
    };
    for key in keys {
        // Gone already: removed with its partner earlier in this pass, or by the fast path.
        let Some(entry) = lookup(map, &key)? else {
            continue;
        };
        match partner(map, &key, &entry)? {
            // A reply entry is judged with its original.
            Some(_) if entry.direction != ct_dir::ORIGINAL => {}
            Some(reply) => {
                let state = State::derive(&entry, Some(&reply), key.proto);
                let last = entry.last_seen_ns.max(reply.last_seen_ns);
                if idle_for(now_ns, last) > state.timeout(timeouts) {
                    remove_session(map, &key, &entry)?;
                    report.expired_sessions += 1;
                } else if entry.kind == ct_kind::SNAT || entry.kind == ct_kind::HAIRPIN {
                    *report.snat_sources.entry(key.src).or_default() += 1;
                }
            }
            None if idle_for(now_ns, entry.created_ns) > ORPHAN_GRACE => {
                report.orphans_removed += usize::from(remove(map, &key)?);
            }
            None => {}
        }
    }
    Ok(report)
}

/// Removes every session one of whose entries matches `pred` (both entries go), and
/// returns how many sessions that was. For when a translation stops being valid.
pub fn purge<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, CtKey, CtEntry>,
    pred: impl Fn(&CtKey, &CtEntry) -> bool,
) -> Result<usize, Error> {
    let mut removed = 0;
    for key in snapshot_keys(map)? {
        let Some(entry) = lookup(map, &key)? else {
            continue;
        };
        if !pred(&key, &entry) {
            continue;
        }
        match partner(map, &key, &entry)? {
            Some(_) => remove_session(map, &key, &entry)?,
            None => {
                remove(map, &key)?;
            }
        }
        removed += 1;
    }
    Ok(removed)
}

/// Removes every session; returns how many there were.
pub fn flush<T: BorrowMut<MapData>>(map: &mut HashMap<T, CtKey, CtEntry>) -> Result<usize, Error> {
    purge(map, |_, _| true)
}

/// One direction's tuple, as `conntrack -L` shows it. For ICMP echo both ports hold the
/// echo identifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
}

impl Tuple {
    /// One direction's tuple from a session key's or entry's fields.
    pub fn new(proto: u8, src: [u8; 4], sport: [u8; 2], dst: [u8; 4], dport: [u8; 2]) -> Self {
        let (mut sport, mut dport) = (u16::from_be_bytes(sport), u16::from_be_bytes(dport));
        if proto == IPPROTO_ICMP {
            // The identifier sits in the request's source slot and the reply's destination
            // slot; the other slot is 0.
            sport |= dport;
            dport = sport;
        }
        Self {
            src: Ipv4Addr::from(src),
            sport,
            dst: Ipv4Addr::from(dst),
            dport,
        }
    }
}

/// One session, for people and scripts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Session {
    /// "tcp", "udp", "icmp" or the protocol number.
    pub proto: String,
    pub zone: u16,
    /// "snat" or "hairpin".
    pub kind: String,
    pub state: &'static str,
    /// As the first packet arrived.
    pub original: Tuple,
    /// What the original direction's packets are rewritten to.
    pub translated: Tuple,
    /// As replies arrive (in the reply entry's zone).
    pub reply: Tuple,
    pub age_secs: u64,
    pub idle_secs: u64,
    pub expires_in_secs: u64,
    pub original_packets: u64,
    pub original_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// Every session (one per original entry), in a stable order.
pub fn list<T: Borrow<MapData>>(
    map: &HashMap<T, CtKey, CtEntry>,
    now_ns: u64,
    timeouts: &Timeouts,
) -> Result<Vec<Session>, Error> {
    let mut out = Vec::new();
    // Keys are visited sorted, so sessions come out by zone, protocol and original tuple.
    for key in snapshot_keys(map)? {
        let Some(orig) = lookup(map, &key)? else {
            continue;
        };
        if orig.direction != ct_dir::ORIGINAL {
            continue;
        }
        let reply = partner(map, &key, &orig)?;
        out.push(session(&key, &orig, reply.as_ref(), now_ns, timeouts));
    }
    Ok(out)
}

fn session(
    key: &CtKey,
    orig: &CtEntry,
    reply: Option<&CtEntry>,
    now_ns: u64,
    timeouts: &Timeouts,
) -> Session {
    let p = key.proto;
    let state = State::derive(orig, reply, p);
    let last = reply.map_or(orig.last_seen_ns, |r| r.last_seen_ns.max(orig.last_seen_ns));
    let idle = idle_for(now_ns, last);
    let rk = &orig.peer;
    Session {
        proto: proto_name(p),
        zone: key.zone,
        kind: kind_name(orig.kind),
        state: state.name(),
        original: Tuple::new(p, key.src, key.sport, key.dst, key.dport),
        translated: Tuple::new(
            p,
            orig.new_src,
            orig.new_sport,
            orig.new_dst,
            orig.new_dport,
        ),
        reply: Tuple::new(p, rk.src, rk.sport, rk.dst, rk.dport),
        age_secs: idle_for(now_ns, orig.created_ns).as_secs(),
        idle_secs: idle.as_secs(),
        expires_in_secs: state.timeout(timeouts).saturating_sub(idle).as_secs(),
        original_packets: orig.packets,
        original_bytes: orig.bytes,
        reply_packets: reply.map_or(0, |r| r.packets),
        reply_bytes: reply.map_or(0, |r| r.bytes),
    }
}

/// A protocol number as people name it (`tcp`, `udp`, `icmp`, else the number).
pub fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        other => other.to_string(),
    }
}

/// A session kind as people name it.
pub fn kind_name(kind: u8) -> String {
    match kind {
        ct_kind::SNAT => "snat".into(),
        ct_kind::HAIRPIN => "hairpin".into(),
        ct_kind::FORWARD => "forward".into(),
        other => format!("kind-{other}"),
    }
}

/// The timeouts a running router ages its sessions with: the `timeouts` object of its info
/// file when it has one, else the defaults.
pub fn running_timeouts(router: &str) -> Timeouts {
    std::fs::read_to_string(paths::router_info_file(router))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|mut info| serde_json::from_value(info.get_mut("timeouts")?.take()).ok())
        .unwrap_or_default()
}

fn idle_for(now_ns: u64, since_ns: u64) -> Duration {
    Duration::from_nanos(now_ns.saturating_sub(since_ns))
}

/// The entry's partner, if it exists and names this entry back (a newer session may have
/// taken the partner's tuple since).
fn partner<T: Borrow<MapData>>(
    map: &HashMap<T, CtKey, CtEntry>,
    key: &CtKey,
    entry: &CtEntry,
) -> Result<Option<CtEntry>, Error> {
    Ok(lookup(map, &entry.peer)?.filter(|p| p.peer == *key && p.direction != entry.direction))
}

/// Removes both entries of the session `key` (holding `entry`) belongs to.
fn remove_session<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, CtKey, CtEntry>,
    key: &CtKey,
    entry: &CtEntry,
) -> Result<(), Error> {
    // Original first, reply last: the reply entry is the claim on the translated port, so no
    // new session can take that port while the old original entry still translates to it.
    let (orig, reply) = if entry.direction == ct_dir::REPLY {
        (&entry.peer, key)
    } else {
        (key, &entry.peer)
    };
    remove(map, orig)?;
    remove(map, reply)?;
    Ok(())
}

fn lookup<T: Borrow<MapData>>(
    map: &HashMap<T, CtKey, CtEntry>,
    key: &CtKey,
) -> Result<Option<CtEntry>, Error> {
    match map.get(key, 0) {
        Ok(entry) => Ok(Some(entry)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(Error::map("reading SESSIONS", e)),
    }
}

/// Removes `key`; false if it was gone already.
fn remove<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, CtKey, CtEntry>,
    key: &CtKey,
) -> Result<bool, Error> {
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(Error::map("removing from SESSIONS", e)),
    }
}

/// The keys present now, sorted. Collected before any removal: deleting the key a walk
/// stands on restarts the kernel's walk from the first key.
fn snapshot_keys<T: Borrow<MapData>>(
    map: &HashMap<T, CtKey, CtEntry>,
) -> Result<BTreeSet<CtKey>, Error> {
    // The fast path deletes too (a creation that lost a race), which may restart the walk;
    // the bound keeps a busy table from holding it forever.
    let capacity = map
        .map()
        .info()
        .map_err(|e| Error::map("reading SESSIONS", e))?
        .max_entries() as usize;
    let mut keys = BTreeSet::new();
    for key in map.keys().take(capacity.saturating_mul(4)) {
        keys.insert(key.map_err(|e| Error::map("walking SESSIONS", e))?);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests;
