//! The session table (`SESSIONS`): two entries per session, one per direction, each naming
//! the other, keyed by zone and tuple. The fast path creates and updates them; user space
//! ages them out, ends them when a translation stops being valid, lists and flushes them
//! (the rules of each are in `conntrack`).
//!
//! And the fragmented datagrams in flight (`FRAGMENTS`): the outcome of each one's first
//! fragment, for its later fragments. The fast path writes them and the LRU forgets them;
//! user space only reads and flushes them.

use std::collections::BTreeMap;

use aya::maps::{HashMap, IterableMap as _, MapData};
use router_common::{CtEntry, CtKey, FragEntry, FragKey, ct_dir, map_names};

use super::{MapSource, typed};

/// `BPF_EXIST`: replace an element only if it is there.
const BPF_EXIST: u64 = 2;
use crate::{
    conntrack::{self, GcReport, Session, Timeouts},
    error::Error,
};

/// Entries and sessions of the table at about one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Entries (two per session).
    pub entries: u64,
    /// Original-direction entries: sessions.
    pub sessions: u64,
}

/// The session table of one router.
pub struct SessionMaps<'a> {
    maps: &'a mut dyn MapSource,
}

impl<'a> SessionMaps<'a> {
    pub fn new(maps: &'a mut dyn MapSource) -> Self {
        Self { maps }
    }

    fn table(&mut self) -> Result<HashMap<&mut MapData, CtKey, CtEntry>, Error> {
        typed(self.maps, map_names::SESSIONS)
    }

    /// Removes the sessions idle for longer than their timeout (see
    /// `conntrack::collect_garbage`).
    pub fn collect_garbage(&mut self, now_ns: u64, timeouts: &Timeouts) -> Result<GcReport, Error> {
        conntrack::collect_garbage(&mut self.table()?, now_ns, timeouts)
    }

    /// Ends every session one of whose entries matches `pred`; returns how many.
    pub fn purge(&mut self, pred: impl Fn(&CtKey, &CtEntry) -> bool) -> Result<usize, Error> {
        conntrack::purge(&mut self.table()?, pred)
    }

    /// Ends every session; returns how many there were.
    pub fn flush(&mut self) -> Result<usize, Error> {
        conntrack::flush(&mut self.table()?)
    }

    /// Every session, as `routerctl ct list` shows them.
    pub fn list(&mut self, now_ns: u64, timeouts: &Timeouts) -> Result<Vec<Session>, Error> {
        conntrack::list(&self.table()?, now_ns, timeouts)
    }

    /// A copy of every entry.
    pub fn dump(&mut self) -> Result<BTreeMap<CtKey, CtEntry>, Error> {
        Ok(self.table()?.iter().filter_map(Result::ok).collect())
    }

    /// Writes `entries` as they are (trace's private copy of a running router's table).
    pub fn insert_all(&mut self, entries: &BTreeMap<CtKey, CtEntry>) -> Result<(), Error> {
        let mut table = self.table()?;
        for (key, entry) in entries {
            table
                .insert(key, entry, 0)
                .map_err(|e| Error::map("writing SESSIONS", e))?;
        }
        Ok(())
    }

    /// Writes session entries a standby received from its active, as they are (times
    /// already on this node's clock): new ones are added, known ones replaced. Returns how
    /// many were written; a full table refuses the rest (counted by the caller as lost).
    pub fn upsert_synced(&mut self, entries: &[(CtKey, CtEntry)]) -> Result<usize, Error> {
        let mut table = self.table()?;
        let mut written = 0;
        for (key, entry) in entries {
            if table.insert(key, entry, 0).is_ok() {
                written += 1;
            }
        }
        if written > 0 {
            // A flow the programs cached as without a session has one now.
            super::routes::next_epoch(self.maps)?;
        }
        self.maps.count_writes(written);
        Ok(written)
    }

    /// Sets the TCP flags of the entries a standby was told changed state; an entry not in
    /// the table (its creation not received yet) is skipped: the next refresh brings it.
    pub fn set_tcp_flags(&mut self, states: &[(CtKey, u32)]) -> Result<usize, Error> {
        let mut table = self.table()?;
        let mut written = 0;
        for (key, flags) in states {
            if let Ok(mut entry) = table.get(key, 0) {
                entry.tcp_flags = *flags;
                if table.insert(key, entry, BPF_EXIST).is_ok() {
                    written += 1;
                }
            }
        }
        self.maps.count_writes(written);
        Ok(written)
    }

    /// Removes the entries a standby was told its active no longer has; returns how many
    /// were here.
    pub fn remove_synced(&mut self, keys: &[CtKey]) -> Result<usize, Error> {
        let mut table = self.table()?;
        let removed = keys.iter().filter(|k| table.remove(k).is_ok()).count();
        self.maps.count_writes(removed);
        Ok(removed)
    }

    /// The entries whose last packet is at or after `since_ns` (monotonic time): what an
    /// active sends its standbys at each refresh (all of them with `since_ns` 0).
    pub fn seen_since(&mut self, since_ns: u64) -> Result<Vec<(CtKey, CtEntry)>, Error> {
        Ok(self
            .table()?
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| e.last_seen_ns >= since_ns)
            .collect())
    }

    /// The table's capacity in entries.
    pub fn capacity(&mut self) -> Result<u32, Error> {
        let table = self.table()?;
        let info = table.map().info().map_err(|e| Error::map("SESSIONS", e))?;
        Ok(info.max_entries())
    }

    /// Distinct keys at about the time of the call: a walk restarts from the beginning when
    /// the entry it stands on is deleted meanwhile (aging), and would count some twice.
    pub fn entries(&mut self) -> Result<usize, Error> {
        let table = self.table()?;
        let keys: std::collections::HashSet<CtKey> = table.keys().filter_map(Result::ok).collect();
        Ok(keys.len())
    }

    /// Entries and sessions (original-direction entries), in one walk.
    pub fn counts(&mut self) -> Result<Counts, Error> {
        let table = self.table()?;
        let mut counts = Counts::default();
        for (_, entry) in table.iter().filter_map(Result::ok) {
            counts.entries += 1;
            if entry.direction == ct_dir::ORIGINAL {
                counts.sessions += 1;
            }
        }
        Ok(counts)
    }

    fn fragment_table(&mut self) -> Result<HashMap<&mut MapData, FragKey, FragEntry>, Error> {
        typed(self.maps, map_names::FRAGMENTS)
    }

    /// The records of fragmented datagrams in flight.
    pub fn fragments(&mut self) -> Result<BTreeMap<FragKey, FragEntry>, Error> {
        Ok(self
            .fragment_table()?
            .iter()
            .filter_map(Result::ok)
            .collect())
    }

    /// Forgets every fragmented datagram in flight (their later fragments are then dropped
    /// as `fragment_unknown`); returns how many there were.
    pub fn flush_fragments(&mut self) -> Result<usize, Error> {
        let mut table = self.fragment_table()?;
        let keys: Vec<FragKey> = table.keys().filter_map(Result::ok).collect();
        for key in &keys {
            // Gone meanwhile (evicted) is as good as removed.
            let _ = table.remove(key);
        }
        Ok(keys.len())
    }
}
