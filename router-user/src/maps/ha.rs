//! HaMaps: the router's HA role as the fast path reads it (`HA`), and the ring the active's
//! fast path reports sessions to (`SYNC`). The sessions a standby receives are written by
//! the session room (`SessionMaps::apply_synced`).

use aya::maps::{Array, MapData, RingBuf};
use router_common::{HaState, SyncRecord, map_names};

use super::{MapSource, typed};
use crate::error::Error;

/// The HA maps of one router.
pub struct HaMaps<'a> {
    maps: &'a mut dyn MapSource,
}

impl<'a> HaMaps<'a> {
    pub fn new(maps: &'a mut dyn MapSource) -> Self {
        Self { maps }
    }

    fn table(&mut self) -> Result<Array<&mut MapData, HaState>, Error> {
        typed(self.maps, map_names::HA)
    }

    /// The role the fast path follows now.
    pub fn state(&mut self) -> Result<HaState, Error> {
        self.table()?
            .get(&0, 0)
            .map_err(|e| Error::map("reading HA", e))
    }

    /// Sets the role the fast path follows (one array element: the change is seen by the
    /// next packet).
    pub fn set(&mut self, state: HaState) -> Result<(), Error> {
        self.table()?
            .set(0, state, 0)
            .map_err(|e| Error::map("writing HA", e))
    }

    /// The ring of session reports, to read from (it stays open while the reader holds it).
    pub fn ring(&mut self) -> Result<SyncRing, Error> {
        let map = self.maps.take(map_names::SYNC)?;
        let ring = RingBuf::try_from(map).map_err(|e| Error::map("map SYNC", e))?;
        Ok(SyncRing(ring))
    }
}

/// A router's ring of session reports.
pub struct SyncRing(RingBuf<MapData>);

impl SyncRing {
    /// Every record waiting in the ring (at most `limit`).
    pub fn drain(&mut self, limit: usize) -> Vec<SyncRecord> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(item) = self.0.next() else { break };
            if item.len() < size_of::<SyncRecord>() {
                continue;
            }
            // SAFETY: the programs write whole `SyncRecord`s; read unaligned.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
        out
    }
}

impl std::os::fd::AsRawFd for SyncRing {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}
