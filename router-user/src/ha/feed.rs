//! What an active node sends its standbys: frames made from its fast path's session
//! reports and from its table, and one connection per standby (a writer of queued frames
//! with a heartbeat when idle, a reader of acknowledgements).

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet},
    rc::Rc,
    sync::Arc,
    time::Instant,
};

use router_common::{CtEntry, CtKey, SyncRecord, ct_dir, sync_what};
use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::mpsc};

use super::{
    HEARTBEAT,
    wire::{Frame, MAX_BATCH},
};
use crate::{conntrack::monotonic_ns, maps::SyncRing};

/// Bytes queued for one standby beyond which it is dropped (it reconnects and resyncs).
const QUEUE_LIMIT: usize = 64 << 20;

/// A standby connected to the active.
pub(super) struct Link {
    pub(super) node: String,
    frames: mpsc::UnboundedSender<Arc<Vec<u8>>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// When the standby last said anything (its heartbeats and acknowledgements).
    pub(super) heard: Rc<Cell<Instant>>,
}

impl Link {
    /// Queues a frame; false when the link is gone or too far behind (then dropped).
    pub(super) fn send(&self, frame: &Arc<Vec<u8>>) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.queued.load(Relaxed) > QUEUE_LIMIT {
            return false;
        }
        self.queued.fetch_add(frame.len(), Relaxed);
        self.frames.send(frame.clone()).is_ok()
    }
}

/// Queues `frames` to every standby, dropping those that are gone or too far behind;
/// returns the bytes queued.
pub(super) fn broadcast(links: &mut Vec<Link>, frames: &[Arc<Vec<u8>>]) -> u64 {
    if frames.is_empty() {
        return 0;
    }
    let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
    let mut queued = 0;
    links.retain(|link| {
        let ok = frames.iter().all(|f| link.send(f));
        if ok {
            queued += bytes;
        } else {
            tracing::warn!("HA: standby {} dropped (gone or too far behind)", link.node);
        }
        ok
    });
    queued
}

/// The session reports waiting in the ring, as frames: new sessions (both of their
/// entries, added to `known`) and TCP states. Returns the frames and the number of entries
/// in them.
pub(super) fn drained_frames(
    ring: &mut SyncRing,
    batch: &mut u64,
    pending: &mut BTreeMap<u64, u64>,
    known: &mut BTreeSet<CtKey>,
) -> (Vec<Arc<Vec<u8>>>, usize) {
    let records = ring.drain(MAX_BATCH / 2);
    if records.is_empty() {
        return (Vec::new(), 0);
    }
    let now = monotonic_ns();
    let mut entries = Vec::new();
    let mut states = Vec::new();
    let mut oldest = u64::MAX;
    for r in &records {
        match r.what {
            sync_what::CREATED => {
                oldest = oldest.min(r.entry.created_ns);
                let (fwd, reply) = both_entries(r);
                entries.push((r.key, to_ages(&fwd, now)));
                entries.push((r.entry.peer, to_ages(&reply, now)));
                // Sent: its removal must be sent too, even before the next refresh sees it.
                known.insert(r.key);
                known.insert(r.entry.peer);
            }
            sync_what::TCP_STATE => states.push((r.key, r.tcp_flags)),
            _ => {}
        }
    }
    let mut frames = Vec::new();
    let count = entries.len();
    if !entries.is_empty() {
        *batch += 1;
        pending.insert(*batch, oldest);
        frames.push(Arc::new(
            Frame::Entries {
                batch: *batch,
                entries,
            }
            .encode(),
        ));
    }
    if !states.is_empty() {
        *batch += 1;
        frames.push(Arc::new(
            Frame::TcpStates {
                batch: *batch,
                states,
            }
            .encode(),
        ));
    }
    (frames, count)
}

/// A new session's two entries from its report: the original direction as made, and the
/// reply direction as the fast path makes it from the original.
pub(super) fn both_entries(r: &SyncRecord) -> (CtEntry, CtEntry) {
    let fwd = r.key;
    let reply = CtEntry {
        new_src: fwd.dst,
        new_dst: fwd.src,
        new_sport: fwd.dport,
        new_dport: fwd.sport,
        peer: fwd,
        created_ns: r.entry.created_ns,
        last_seen_ns: r.entry.last_seen_ns,
        direction: ct_dir::REPLY,
        kind: r.entry.kind,
        ..CtEntry::default()
    };
    (r.entry, reply)
}

/// Entries as frames of at most [`MAX_BATCH`], times as ages.
pub(super) fn entry_frames(
    entries: &[(CtKey, CtEntry)],
    now: u64,
    batch: &mut u64,
) -> Vec<Arc<Vec<u8>>> {
    entries
        .chunks(MAX_BATCH)
        .map(|chunk| {
            *batch += 1;
            let entries = chunk.iter().map(|(k, e)| (*k, to_ages(e, now))).collect();
            Arc::new(
                Frame::Entries {
                    batch: *batch,
                    entries,
                }
                .encode(),
            )
        })
        .collect()
}

/// An entry with its creation and last packet as ages before `now` (for the wire).
pub fn to_ages(entry: &CtEntry, now: u64) -> CtEntry {
    CtEntry {
        created_ns: now.saturating_sub(entry.created_ns),
        last_seen_ns: now.saturating_sub(entry.last_seen_ns),
        ..*entry
    }
}

/// An entry from the wire placed on this node's clock at `now`.
pub fn from_ages(entry: &CtEntry, now: u64) -> CtEntry {
    CtEntry {
        created_ns: now.saturating_sub(entry.created_ns),
        last_seen_ns: now.saturating_sub(entry.last_seen_ns),
        ..*entry
    }
}

/// Starts the tasks of one standby's connection: a writer (queued frames, a heartbeat when
/// idle) and a reader (acknowledgements).
pub(super) fn open_link(
    stream: TcpStream,
    node: String,
    acks: mpsc::UnboundedSender<(String, u64)>,
) -> Link {
    let (frames_tx, mut frames) = mpsc::unbounded_channel::<Arc<Vec<u8>>>();
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (mut reader, mut writer) = stream.into_split();
    let reader_node = node.clone();
    let heard = Rc::new(Cell::new(Instant::now()));
    let reader_heard = heard.clone();
    let reading = tokio::task::spawn_local(async move {
        loop {
            let mut prefix = [0u8; 4];
            use tokio::io::AsyncReadExt as _;
            if reader.read_exact(&mut prefix).await.is_err() {
                return;
            }
            let Ok(n) = Frame::body_length(prefix) else {
                return;
            };
            let mut body = vec![0u8; n];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            reader_heard.set(Instant::now());
            match Frame::decode(&body) {
                Ok(Frame::Ack { batch }) => {
                    let _ = acks.send((reader_node.clone(), batch));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("HA: standby {reader_node}: {e}");
                    return;
                }
            }
        }
    });
    let counter = queued.clone();
    tokio::task::spawn_local(async move {
        let heartbeat = Frame::Heartbeat.encode();
        let mut idle = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                frame = frames.recv() => {
                    let Some(frame) = frame else { break };
                    counter.fetch_sub(frame.len(), std::sync::atomic::Ordering::Relaxed);
                    if writer.write_all(&frame).await.is_err() { break; }
                    idle.reset();
                }
                _ = idle.tick() => {
                    if writer.write_all(&heartbeat).await.is_err() { break; }
                }
            }
            if reading.is_finished() {
                break;
            }
        }
        reading.abort();
    });
    Link {
        node,
        frames: frames_tx,
        queued,
        heard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_cross_clocks() {
        let entry = CtEntry {
            created_ns: 1_000,
            last_seen_ns: 4_000,
            ..CtEntry::default()
        };
        let wire = to_ages(&entry, 5_000);
        assert_eq!((wire.created_ns, wire.last_seen_ns), (4_000, 1_000));
        // The standby's clock is elsewhere: the ages stay.
        let local = from_ages(&wire, 90_000);
        assert_eq!((local.created_ns, local.last_seen_ns), (86_000, 89_000));
    }

    #[test]
    fn a_report_makes_both_entries_of_its_session() {
        let key = CtKey {
            zone: 0,
            proto: 6,
            _pad: 0,
            src: [10, 0, 1, 5],
            dst: [203, 0, 113, 9],
            sport: [0x9c, 0x40],
            dport: [0, 80],
        };
        let reply_key = CtKey {
            zone: 0,
            proto: 6,
            _pad: 0,
            src: [203, 0, 113, 9],
            dst: [198, 18, 0, 1],
            sport: [0, 80],
            dport: [0x04, 0x01],
        };
        let fwd = CtEntry {
            new_src: [198, 18, 0, 1],
            new_dst: key.dst,
            new_sport: [0x04, 0x01],
            new_dport: key.dport,
            peer: reply_key,
            created_ns: 7,
            last_seen_ns: 7,
            kind: 1,
            ..CtEntry::default()
        };
        let record = SyncRecord {
            what: sync_what::CREATED,
            tcp_flags: 0,
            key,
            entry: fwd,
        };
        let (f, r) = both_entries(&record);
        assert_eq!(f, fwd);
        assert_eq!(r.peer, key, "the reply entry names the original");
        assert_eq!((r.new_src, r.new_dst), (key.dst, key.src));
        assert_eq!((r.new_sport, r.new_dport), (key.dport, key.sport));
        assert_eq!(r.direction, ct_dir::REPLY);
        assert_eq!(r.kind, 1);
    }
}
