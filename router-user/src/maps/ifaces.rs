//! Interfaces: the settings of each interface the router drives (`IFACES`, by ifindex in
//! the router's namespace, and the same in an array at the ifindex, `IFACES_BY_INDEX`, for
//! ifindexes that fit it), the egresses XDP may redirect into (`EGRESS_DEVS`), and each
//! interface's counters: of what it forwarded, by its slot (`IFACE_FORWARDED`), and of what
//! it passed and dropped, with the reasons (`IFACE_STATS`).
//!
//! Every interface has a slot of its own, kept while it stays; a slot an interface leaves
//! is given to the next new one, its forwarded counts zeroed first.
//!
//! `IFACES_BY_INDEX` is written as [`copies`](super::copies) says: an interface's copy after
//! its `IFACES` entry, and made invalid before the entry goes.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{DevMapHash, HashMap, PerCpuArray, PerCpuHashMap};
use router_common::{
    IfaceEntry, IfaceForwarded, IfaceIndexed, IfaceStats, MAX_IFACES, iface_flags, iface_role,
    map_names,
};

use super::{EntryDiff, MapSource, copies, retry_short_of_memory, typed, zeroed};
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

/// The fast path's entry for interface `ifindex`, counted in `slot`.
pub fn entry(ifindex: u32, w: &IfaceSpec, slot: u16) -> IfaceEntry {
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
        slot,
    }
}

/// The slot of an interface beyond the `MAX_IFACES` the maps hold (whose write then fails,
/// the `IFACES` map being full): never counted.
const NO_SLOT: u16 = u16::MAX;

/// Slots for the interfaces `ifindexes`: each keeps the one it has in `current` (if no
/// other kept it first), the others take the lowest free ones.
pub fn slots(
    ifindexes: impl IntoIterator<Item = u32>,
    current: &BTreeMap<u32, IfaceEntry>,
) -> BTreeMap<u32, u16> {
    let ifindexes: Vec<u32> = ifindexes.into_iter().collect();
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for i in &ifindexes {
        if let Some(e) = current.get(i)
            && u32::from(e.slot) < MAX_IFACES
            && taken.insert(e.slot)
        {
            out.insert(*i, e.slot);
        }
    }
    let mut free = (0..MAX_IFACES as u16).filter(|s| !taken.contains(s));
    for i in ifindexes {
        if let std::collections::btree_map::Entry::Vacant(v) = out.entry(i) {
            v.insert(free.next().unwrap_or(NO_SLOT));
        }
    }
    out
}

/// What the interface maps hold: the entries, their valid copies in `IFACES_BY_INDEX` (by
/// array index), the XDP egresses, and which interfaces have counters (an interface that
/// goes keeps them until the router goes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceTables {
    pub entries: BTreeMap<u32, IfaceEntry>,
    pub indexed: BTreeMap<u32, IfaceIndexed>,
    pub egresses: BTreeSet<u32>,
    pub counted: BTreeSet<u32>,
}

/// What `IFACES_BY_INDEX` holds for `entries`: each interface whose ifindex fits the array,
/// at its ifindex.
pub fn indexed(entries: &BTreeMap<u32, IfaceEntry>) -> BTreeMap<u32, IfaceIndexed> {
    entries
        .iter()
        .filter(|(i, _)| **i != 0 && **i < MAX_IFACES)
        .map(|(i, e)| {
            let entry = IfaceIndexed {
                ifindex: *i,
                entry: *e,
            };
            (*i, entry)
        })
        .collect()
}

/// What the interface maps should hold for `wanted` (by ifindex), where they hold `current`
/// (whose slots stay).
pub fn tables(wanted: &BTreeMap<u32, IfaceSpec>, current: &IfaceTables) -> IfaceTables {
    let slots = slots(wanted.keys().copied(), &current.entries);
    let entries = wanted
        .iter()
        .map(|(i, w)| (*i, entry(*i, w, slots.get(i).copied().unwrap_or(NO_SLOT))))
        .collect();
    IfaceTables {
        indexed: indexed(&entries),
        entries,
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
    /// `IFACES_BY_INDEX` by array index; a removed entry is written invalid (zero).
    pub indexed: EntryDiff<u32, IfaceIndexed>,
    /// The entries of `indexed` valid now, as they are: the removed ones are made invalid
    /// (their settings left as they are); the changed ones too, and the programs waited
    /// for, before they are written.
    pub indexed_live: Vec<(u32, IfaceIndexed)>,
    pub egresses: EntryDiff<u32, ()>,
    /// New interfaces whose counters are created (zeroed) with them.
    pub new_counters: Vec<u32>,
    /// Slots taken by a new interface (or one given another slot): their forwarded counts
    /// are zeroed before the entries that point at them are written.
    pub zeroed_slots: Vec<u16>,
}

impl IfaceChanges {
    /// What turns `current` into `wanted` (whose counters are created where missing; none
    /// are removed).
    pub fn between(current: &IfaceTables, wanted: &IfaceTables) -> Self {
        let indexed_diff = EntryDiff::between(&current.indexed, &indexed(&wanted.entries));
        let indexed_live = indexed_diff
            .set
            .iter()
            .map(|(i, _)| i)
            .chain(&indexed_diff.remove)
            .filter_map(|i| current.indexed.get(i).map(|e| (*i, *e)))
            .collect();
        Self {
            entries: EntryDiff::between(&current.entries, &wanted.entries),
            indexed: indexed_diff,
            indexed_live,
            egresses: EntryDiff::between_sets(&current.egresses, &wanted.egresses),
            new_counters: wanted
                .counted
                .difference(&current.counted)
                .copied()
                .collect(),
            zeroed_slots: wanted
                .entries
                .iter()
                .filter(|(i, e)| current.entries.get(i).is_none_or(|c| c.slot != e.slot))
                .map(|(_, e)| e.slot)
                .filter(|s| u32::from(*s) < MAX_IFACES)
                .collect(),
        }
    }

    pub fn writes(&self) -> usize {
        self.entries.len()
            + self.indexed.len()
            + self.egresses.len()
            + self.new_counters.len()
            + self.zeroed_slots.len()
    }

    /// `tables` as they are once these changes are written.
    pub fn apply_to(&self, tables: &mut IfaceTables) {
        self.entries.apply_to(&mut tables.entries);
        self.indexed.apply_to(&mut tables.indexed);
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

    /// The valid entries of `IFACES_BY_INDEX`, by array index (an entry whose `ifindex` is
    /// not its index is stray, kept here to be cleared).
    pub fn indexed(&mut self) -> Result<BTreeMap<u32, IfaceIndexed>, Error> {
        let entries = self.entries()?;
        self.indexed_of(&entries)
    }

    /// The valid entries of `IFACES_BY_INDEX` at the ifindexes of `entries` (where every
    /// valid one is: see `copies::read_at`).
    fn indexed_of(
        &mut self,
        entries: &BTreeMap<u32, IfaceEntry>,
    ) -> Result<BTreeMap<u32, IfaceIndexed>, Error> {
        let indexes = entries.keys().copied().filter(|i| *i < MAX_IFACES);
        copies::read_at(self.maps, map_names::IFACES_BY_INDEX, indexes)
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
        let entries = self.entries()?;
        Ok(IfaceTables {
            indexed: self.indexed_of(&entries)?,
            entries,
            egresses: self.egresses()?,
            counted,
        })
    }

    /// Carries out `plan`. Counters exist from an interface's start, so the programs only
    /// ever update them; an interface that goes keeps its counters until the router goes.
    pub fn write(&mut self, plan: &IfaceChanges) -> Result<(), Error> {
        // Copies go before the entries they copy; new ones come after them (below).
        let removed: Vec<_> = plan
            .indexed_live
            .iter()
            .filter(|(i, _)| plan.indexed.remove.contains(i))
            .copied()
            .collect();
        copies::remove(self.maps, map_names::IFACES_BY_INDEX, &removed)?;
        for ifindex in &plan.new_counters {
            self.create_counters(*ifindex)?;
        }
        if !plan.zeroed_slots.is_empty() {
            let mut fwd: PerCpuArray<_, IfaceForwarded> =
                typed(self.maps, map_names::IFACE_FORWARDED)?;
            for slot in &plan.zeroed_slots {
                zeroed::<IfaceForwarded>()
                    .and_then(|zero| fwd.set(u32::from(*slot), zero, 0))
                    .map_err(|e| Error::map(format!("IFACE_FORWARDED[{slot}]"), e))?;
            }
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
        let live: Vec<_> = plan
            .indexed_live
            .iter()
            .filter(|(i, _)| !plan.indexed.remove.contains(i))
            .copied()
            .collect();
        copies::set(
            self.maps,
            map_names::IFACES_BY_INDEX,
            &live,
            &plan.indexed.set,
        )?;
        if plan.writes() > 0 {
            super::routes::next_epoch(self.maps)?;
        }
        self.maps.count_writes(plan.writes());
        Ok(())
    }

    /// Sets one interface's entry as it is, in the slot it has or a free one (with
    /// counters, if it has none yet).
    pub fn set(&mut self, ifindex: u32, entry: IfaceEntry) -> Result<(), Error> {
        let current = self.read()?;
        let mut wanted = current.clone();
        let all = current.entries.keys().copied().chain([ifindex]);
        let slot = slots(all, &current.entries)
            .get(&ifindex)
            .copied()
            .unwrap_or(NO_SLOT);
        wanted.entries.insert(ifindex, IfaceEntry { slot, ..entry });
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

    /// Counters of interface `ifindex`, summed over CPUs; what it forwarded too while it
    /// is one of the router's (an interface that went leaves its slot).
    pub fn stats(&mut self, ifindex: u32) -> Result<IfaceStats, Error> {
        let slot = self.entries()?.get(&ifindex).map(|e| e.slot);
        self.stats_in(ifindex, slot)
    }

    /// Counters of interface `ifindex`, with what slot `slot` forwarded, summed over CPUs.
    pub fn stats_in(&mut self, ifindex: u32, slot: Option<u16>) -> Result<IfaceStats, Error> {
        let map: PerCpuHashMap<_, u32, IfaceStats> = typed(self.maps, map_names::IFACE_STATS)?;
        let values = map
            .get(&ifindex, 0)
            .map_err(|e| Error::map(format!("IFACE_STATS[{ifindex}]"), e))?;
        let mut total = IfaceStats::default();
        for v in values.iter() {
            total.accumulate(v);
        }
        if let Some(slot) = slot {
            let (packets, bytes) = self.forwarded(slot)?;
            total.fwd_packets += packets;
            total.fwd_bytes += bytes;
        }
        Ok(total)
    }

    /// Packets and bytes slot `slot` forwarded, summed over CPUs.
    fn forwarded(&mut self, slot: u16) -> Result<(u64, u64), Error> {
        let map: PerCpuArray<_, IfaceForwarded> = typed(self.maps, map_names::IFACE_FORWARDED)?;
        let values = map
            .get(&u32::from(slot), 0)
            .map_err(|e| Error::map(format!("IFACE_FORWARDED[{slot}]"), e))?;
        Ok(values
            .iter()
            .fold((0, 0), |(p, b), v| (p + v.packets, b + v.bytes)))
    }

    /// Counters of every interface that has them, summed over CPUs (see [`Self::stats`]).
    pub fn all_stats(&mut self) -> Result<BTreeMap<u32, IfaceStats>, Error> {
        let map: PerCpuHashMap<_, u32, IfaceStats> = typed(self.maps, map_names::IFACE_STATS)?;
        let ifindexes: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        let entries = self.entries()?;
        ifindexes
            .into_iter()
            .map(|i| Ok((i, self.stats_in(i, entries.get(&i).map(|e| e.slot))?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::copies::Copied as _;

    /// An internal interface with a 1500-byte MTU, no XDP egress, no source check.
    fn internal() -> IfaceSpec {
        IfaceSpec {
            mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            external: false,
            xdp_egress: false,
            source_check: false,
        }
    }

    #[test]
    fn entries_carry_role_flags_and_zone() {
        let w = IfaceSpec {
            external: true,
            xdp_egress: true,
            ..internal()
        };
        let e = entry(7, &w, 3);
        assert_eq!(e.role, iface_role::EXTERNAL);
        assert_eq!(e.flags, iface_flags::XDP_EGRESS);
        assert_eq!((e.zone, e.slot), (7, 3));
        let t = tables(
            &BTreeMap::from([
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
            ]),
            &IfaceTables::default(),
        );
        assert_eq!(t.entries[&8].flags, iface_flags::SOURCE_CHECK);
        assert_eq!(t.entries[&8].role, iface_role::INTERNAL);
        assert_eq!(t.egresses, BTreeSet::from([7]));
        assert_eq!(t.counted, BTreeSet::from([7, 8]));
    }

    #[test]
    fn changes_create_counters_once_and_keep_them() {
        let spec = |xdp_egress| IfaceSpec {
            xdp_egress,
            ..internal()
        };
        let empty = IfaceTables::default();
        let both = tables(&BTreeMap::from([(3, spec(true)), (4, spec(false))]), &empty);
        let first = IfaceChanges::between(&empty, &both);
        // Two entries and their copies, one egress, two sets of counters, two slots zeroed.
        assert_eq!(first.writes(), 9);
        let mut now = empty.clone();
        first.apply_to(&mut now);
        assert_eq!(now, both);
        assert_eq!(IfaceChanges::between(&now, &both).writes(), 0);
        // Interface 3 goes: its entry and egress are removed, its counters stay.
        let one = tables(&BTreeMap::from([(4, spec(false))]), &now);
        let second = IfaceChanges::between(&now, &one);
        assert_eq!(
            (second.entries.remove.clone(), second.egresses.len()),
            (vec![3], 1)
        );
        assert!(second.new_counters.is_empty() && second.zeroed_slots.is_empty());
        second.apply_to(&mut now);
        assert_eq!(now.counted, BTreeSet::from([3, 4]));
    }

    #[test]
    fn slots_stay_with_their_interfaces_and_a_freed_one_is_zeroed_for_the_next() {
        let spec = internal();
        let specs = |ifindexes: &[u32]| -> BTreeMap<u32, IfaceSpec> {
            ifindexes.iter().map(|i| (*i, spec.clone())).collect()
        };
        let slot_of = |t: &IfaceTables| -> Vec<(u32, u16)> {
            t.entries.iter().map(|(i, e)| (*i, e.slot)).collect()
        };
        let mut now = IfaceTables::default();
        let three = tables(&specs(&[10, 20, 30]), &now);
        assert_eq!(slot_of(&three), [(10, 0), (20, 1), (30, 2)]);
        let first = IfaceChanges::between(&now, &three);
        assert_eq!(first.zeroed_slots, [0, 1, 2]);
        first.apply_to(&mut now);

        // 20 goes and 5 comes (a lower ifindex): 10 and 30 keep theirs, 5 takes 20's slot,
        // which is zeroed before 5's entry points at it.
        let next = tables(&specs(&[5, 10, 30]), &now);
        assert_eq!(slot_of(&next), [(5, 1), (10, 0), (30, 2)]);
        let second = IfaceChanges::between(&now, &next);
        assert_eq!(second.zeroed_slots, [1]);
        second.apply_to(&mut now);
        assert_eq!(IfaceChanges::between(&now, &next).writes(), 0);

        // Two entries claiming one slot (maps written by an older build): the first keeps
        // it, the other moves to a free one, zeroed.
        let mut clash = now.entries.clone();
        clash.get_mut(&30).expect("30").slot = 0;
        let mended = slots([5, 10, 30], &clash);
        assert_eq!(mended, BTreeMap::from([(5, 1), (10, 0), (30, 2)]));

        // More interfaces than slots: the rest get none, and no slot is zeroed for them.
        let many: Vec<u32> = (1..=MAX_IFACES + 2).collect();
        let full = tables(&specs(&many), &IfaceTables::default());
        let unslotted = full.entries.values().filter(|e| e.slot == NO_SLOT).count();
        assert_eq!(unslotted, 2);
        let changes = IfaceChanges::between(&IfaceTables::default(), &full);
        assert_eq!(changes.zeroed_slots.len(), MAX_IFACES as usize);
    }

    #[test]
    fn copies_by_ifindex_follow_the_entries_and_live_ones_are_made_invalid_first() {
        let spec = |mtu| IfaceSpec { mtu, ..internal() };
        let mut now = IfaceTables::default();
        // Ifindex 300 does not fit the array: the programs find it in `IFACES` alone.
        let first = tables(&BTreeMap::from([(3, spec(1500)), (300, spec(1500))]), &now);
        assert_eq!(first.indexed.keys().copied().collect::<Vec<_>>(), [3]);
        assert_eq!(first.indexed[&3].ifindex, 3);
        assert_eq!(first.indexed[&3].entry, first.entries[&3]);
        let new = IfaceChanges::between(&now, &first);
        assert_eq!(new.indexed.set.len(), 1);
        assert!(new.indexed_live.is_empty(), "a new copy waits for nothing");
        new.apply_to(&mut now);
        assert_eq!(now, first);

        // A changed MTU: the copy is rewritten, and it is live.
        let changed = tables(&BTreeMap::from([(3, spec(9000)), (300, spec(1500))]), &now);
        let change = IfaceChanges::between(&now, &changed);
        assert_eq!(change.indexed.set, [(3, changed.indexed[&3])]);
        assert_eq!(change.indexed_live, [(3, now.indexed[&3])]);
        change.apply_to(&mut now);

        // Interface 3 goes: its copy is removed (made invalid as it is), before its entry.
        let gone = tables(&BTreeMap::from([(300, spec(1500))]), &now);
        let removal = IfaceChanges::between(&now, &gone);
        assert_eq!(removal.indexed.remove, [3]);
        assert_eq!(removal.indexed_live, [(3, now.indexed[&3])]);
        assert_eq!(now.indexed[&3].invalid().entry, now.indexed[&3].entry);
        assert_eq!(now.indexed[&3].invalid().ifindex, 0);
        removal.apply_to(&mut now);
        assert!(now.indexed.is_empty());

        // Another interface's entry at an index (a stray) is replaced, as a live one.
        let mut strayed = first.clone();
        strayed.indexed.get_mut(&3).expect("3").ifindex = 4;
        let mend = IfaceChanges::between(&strayed, &first);
        assert_eq!(mend.indexed.set, [(3, first.indexed[&3])]);
        assert_eq!(mend.indexed_live.len(), 1);
    }
}
