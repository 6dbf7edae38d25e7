//! EventMaps: the ring buffer the programs report dropped and handed-over packets to
//! (`EVENTS`), and the deadline until which they do (`MONITOR`): a monitor moves it forward
//! while it reads, so the programs send nothing when nobody listens.

use aya::maps::{Array, MapData, RingBuf};
use router_common::{Event, MonitorConfig, map_names};

use super::{MapSource, typed};
use crate::error::Error;

/// The event maps of one router.
pub struct EventMaps<'a> {
    maps: &'a mut dyn MapSource,
}

impl<'a> EventMaps<'a> {
    pub fn new(maps: &'a mut dyn MapSource) -> Self {
        Self { maps }
    }

    /// Lets the programs send events until `until_ns` (kernel monotonic time; 0 stops them).
    pub fn send_until(&mut self, until_ns: u64) -> Result<(), Error> {
        let mut config: Array<_, MonitorConfig> = typed(self.maps, map_names::MONITOR)?;
        config
            .set(0, MonitorConfig { until_ns }, 0)
            .map_err(|e| Error::map("writing MONITOR", e))
    }

    /// The ring, to read events from (it stays open while the reader holds it).
    pub fn ring(&mut self) -> Result<Ring, Error> {
        let map = self.maps.take(map_names::EVENTS)?;
        let ring = RingBuf::try_from(map).map_err(|e| Error::map("map EVENTS", e))?;
        Ok(Ring(ring))
    }
}

/// A router's event ring.
pub struct Ring(RingBuf<MapData>);

impl Ring {
    /// Every event waiting in the ring.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.0.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the programs write whole `Event`s; read unaligned.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
        out
    }
}
