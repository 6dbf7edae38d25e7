//! Interfaces: the settings of each interface the router drives (`IFACES`, by ifindex in
//! the router's namespace), the egresses XDP may redirect into (`EGRESS_DEVS`), and each
//! interface's counters with the drop and hand-over reasons (`IFACE_STATS`).

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{DevMapHash, HashMap, PerCpuHashMap};
use router_common::{IfaceEntry, IfaceStats, iface_flags, iface_role, map_names};

use super::{EntryDiff, MapSource, retry_short_of_memory, typed, zeroed};
use crate::error::Error;

/// An interface as the desired state and the kernel describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceSpec {
    pub mac: [u8; 6],
    /// The source MAC of what the router forwards out of it (see `IfaceEntry::src_mac`).
    pub src_mac: [u8; 6],
    pub mtu: u32,
    /// Gateway (`qg`) or internal (`qr`).
    pub external: bool,
    /// XDP may redirect into it (its far end takes XDP frames).
    pub xdp_egress: bool,
    /// Packets arriving here are checked against their allowed sources.
    pub source_check: bool,
}

/// The fast path's entry for interface `ifindex`.
pub fn entry(ifindex: u32, w: &IfaceSpec) -> IfaceEntry {
    let mut flags = 0;
    if w.xdp_egress {
        flags |= iface_flags::XDP_EGRESS;
    }
    if w.source_check {
        flags |= iface_flags::SOURCE_CHECK;
    }
    IfaceEntry {
        mac: w.mac,
        src_mac: w.src_mac,
        mtu: w.mtu,
        role: if w.external {
            iface_role::EXTERNAL
        } else {
            iface_role::INTERNAL
        },
        flags,
        // Every interface its own session zone (see `IfaceEntry::zone`).
        zone: ifindex as u16,
        _pad2: [0; 2],
    }
}

/// What the interface maps hold: the entries, the XDP egresses, and which interfaces have
/// counters (an interface that goes keeps them until the router goes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceTables {
    pub entries: BTreeMap<u32, IfaceEntry>,
    pub egresses: BTreeSet<u32>,
    pub counted: BTreeSet<u32>,
}

/// What the interface maps should hold for `wanted` (by ifindex).
pub fn tables(wanted: &BTreeMap<u32, IfaceSpec>) -> IfaceTables {
    IfaceTables {
        entries: wanted.iter().map(|(i, w)| (*i, entry(*i, w))).collect(),
        egresses: wanted
            .iter()
            .filter(|(_, w)| w.xdp_egress)
            .map(|(i, _)| *i)
            .collect(),
        counted: wanted.keys().copied().collect(),
    }
}

/// Writes to the interface maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceChanges {
    pub entries: EntryDiff<u32, IfaceEntry>,
    pub egresses: EntryDiff<u32, ()>,
    /// New interfaces whose counters are created (zeroed) with them.
    pub new_counters: Vec<u32>,
}

impl IfaceChanges {
    /// What turns `current` into `wanted` (whose counters are created where missing; none
    /// are removed).
    pub fn between(current: &IfaceTables, wanted: &IfaceTables) -> Self {
        Self {
            entries: EntryDiff::between(&current.entries, &wanted.entries),
            egresses: EntryDiff::between_sets(&current.egresses, &wanted.egresses),
            new_counters: wanted
                .counted
                .difference(&current.counted)
                .copied()
                .collect(),
        }
    }

    pub fn writes(&self) -> usize {
        self.entries.len() + self.egresses.len() + self.new_counters.len()
    }

    /// `tables` as they are once these changes are written.
    pub fn apply_to(&self, tables: &mut IfaceTables) {
        self.entries.apply_to(&mut tables.entries);
        self.egresses.apply_to_set(&mut tables.egresses);
        tables.counted.extend(self.new_counters.iter().copied());
    }
}

/// The interface maps of one router.
pub struct IfaceMaps<'a> {
    maps: &'a mut dyn MapSource,
}

impl<'a> IfaceMaps<'a> {
    pub fn new(maps: &'a mut dyn MapSource) -> Self {
        Self { maps }
    }

    /// The interfaces the fast path has, by ifindex.
    pub fn entries(&mut self) -> Result<BTreeMap<u32, IfaceEntry>, Error> {
        let map: HashMap<_, u32, IfaceEntry> = typed(self.maps, map_names::IFACES)?;
        map.iter()
            .map(|r| r.map_err(|e| Error::map("reading IFACES", e)))
            .collect()
    }

    /// The egresses XDP redirects into.
    pub fn egresses(&mut self) -> Result<BTreeSet<u32>, Error> {
        let map: DevMapHash<_> = typed(self.maps, map_names::EGRESS_DEVS)?;
        Ok(map.keys().filter_map(Result::ok).collect())
    }

    /// What the interface maps hold now.
    pub fn read(&mut self) -> Result<IfaceTables, Error> {
        let stats: PerCpuHashMap<_, u32, IfaceStats> = typed(self.maps, map_names::IFACE_STATS)?;
        let counted = stats.keys().filter_map(Result::ok).collect();
        Ok(IfaceTables {
            entries: self.entries()?,
            egresses: self.egresses()?,
            counted,
        })
    }

    /// Carries out `plan`. Counters exist from an interface's start, so the programs only
    /// ever update them; an interface that goes keeps its counters until the router goes.
    pub fn write(&mut self, plan: &IfaceChanges) -> Result<(), Error> {
        for ifindex in &plan.new_counters {
            self.create_counters(*ifindex)?;
        }
        let mut map: HashMap<_, u32, IfaceEntry> = typed(self.maps, map_names::IFACES)?;
        for (ifindex, entry) in &plan.entries.set {
            map.insert(ifindex, entry, 0)
                .map_err(|e| Error::map(format!("IFACES[{ifindex}]"), e))?;
        }
        for ifindex in &plan.entries.remove {
            let _ = map.remove(ifindex);
        }
        let mut devs: DevMapHash<_> = typed(self.maps, map_names::EGRESS_DEVS)?;
        for (ifindex, ()) in &plan.egresses.set {
            devs.insert(*ifindex, *ifindex, None, 0)
                .map_err(|e| match e {
                    aya::maps::xdp::XdpMapError::MapError(e) => {
                        Error::map(format!("EGRESS_DEVS[{ifindex}]"), e)
                    }
                    other => Error::io(
                        format!("EGRESS_DEVS[{ifindex}]"),
                        std::io::Error::other(other.to_string()),
                    ),
                })?;
        }
        for ifindex in &plan.egresses.remove {
            let _ = devs.remove(*ifindex);
        }
        self.maps.count_writes(plan.writes());
        Ok(())
    }

    /// Sets one interface's entry as it is (with counters, if it has none yet).
    pub fn set(&mut self, ifindex: u32, entry: IfaceEntry) -> Result<(), Error> {
        let current = self.read()?;
        let mut wanted = current.clone();
        wanted.entries.insert(ifindex, entry);
        wanted.counted.insert(ifindex);
        self.write(&IfaceChanges::between(&current, &wanted))
    }

    /// Lets XDP redirect into `ifindex` (only for egresses that deliver XDP frames).
    pub fn set_xdp_egress(&mut self, ifindex: u32) -> Result<(), Error> {
        let current = self.read()?;
        let mut wanted = current.clone();
        wanted.egresses.insert(ifindex);
        self.write(&IfaceChanges::between(&current, &wanted))
    }

    /// Zeroed counters for interface `ifindex` (the programs only update existing ones).
    pub fn create_counters(&mut self, ifindex: u32) -> Result<(), Error> {
        let mut stats: PerCpuHashMap<_, u32, IfaceStats> =
            typed(self.maps, map_names::IFACE_STATS)?;
        retry_short_of_memory(|| stats.insert(ifindex, zeroed::<IfaceStats>()?, 0))
            .map_err(|e| Error::map(format!("IFACE_STATS[{ifindex}]"), e))
    }

    /// Counters of interface `ifindex`, summed over CPUs.
    pub fn stats(&mut self, ifindex: u32) -> Result<IfaceStats, Error> {
        let map: PerCpuHashMap<_, u32, IfaceStats> = typed(self.maps, map_names::IFACE_STATS)?;
        let values = map
            .get(&ifindex, 0)
            .map_err(|e| Error::map(format!("IFACE_STATS[{ifindex}]"), e))?;
        let mut total = IfaceStats::default();
        for v in values.iter() {
            total.accumulate(v);
        }
        Ok(total)
    }

    /// Counters of every interface that has them, summed over CPUs.
    pub fn all_stats(&mut self) -> Result<BTreeMap<u32, IfaceStats>, Error> {
        let map: PerCpuHashMap<_, u32, IfaceStats> = typed(self.maps, map_names::IFACE_STATS)?;
        let mut out = BTreeMap::new();
        for item in map.iter() {
            let (ifindex, values) = item.map_err(|e| Error::map("reading IFACE_STATS", e))?;
            let mut total = IfaceStats::default();
            for v in values.iter() {
                total.accumulate(v);
            }
            out.insert(ifindex, total);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_role_flags_and_zone() {
        let w = IfaceSpec {
            mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            external: true,
            xdp_egress: true,
            source_check: false,
        };
        let e = entry(7, &w);
        assert_eq!(e.role, iface_role::EXTERNAL);
        assert_eq!(e.flags, iface_flags::XDP_EGRESS);
        assert_eq!(e.zone, 7);
        let t = tables(&BTreeMap::from([
            (7, w.clone()),
            (
                8,
                IfaceSpec {
                    external: false,
                    xdp_egress: false,
                    source_check: true,
                    ..w
                },
            ),
        ]));
        assert_eq!(t.entries[&8].flags, iface_flags::SOURCE_CHECK);
        assert_eq!(t.entries[&8].role, iface_role::INTERNAL);
        assert_eq!(t.egresses, BTreeSet::from([7]));
        assert_eq!(t.counted, BTreeSet::from([7, 8]));
    }

    #[test]
    fn changes_create_counters_once_and_keep_them() {
        let spec = |xdp_egress| IfaceSpec {
            mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            external: false,
            xdp_egress,
            source_check: false,
        };
        let empty = IfaceTables::default();
        let both = tables(&BTreeMap::from([(3, spec(true)), (4, spec(false))]));
        let first = IfaceChanges::between(&empty, &both);
        // Two entries, one egress, two sets of counters.
        assert_eq!(first.writes(), 5);
        let mut now = empty.clone();
        first.apply_to(&mut now);
        assert_eq!(now, both);
        assert_eq!(IfaceChanges::between(&now, &both).writes(), 0);
        // Interface 3 goes: its entry and egress are removed, its counters stay.
        let one = tables(&BTreeMap::from([(4, spec(false))]));
        let second = IfaceChanges::between(&now, &one);
        assert_eq!(
            (second.entries.remove.clone(), second.egresses.len()),
            (vec![3], 1)
        );
        assert!(second.new_counters.is_empty());
        second.apply_to(&mut now);
        assert_eq!(now.counted, BTreeSet::from([3, 4]));
    }
}
