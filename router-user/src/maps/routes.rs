//! RouteMaps and neighbours, mirrored from the kernel of the router's namespace: the LPM trie
//! of every routing table (`ROUTES`, key = table + prefix), the forwarding epoch
//! (`ROUTE_EPOCH`, whose change ends every decision the programs cached; every room moves it
//! on after its changes, through [`next_epoch`]) and the neighbour table
//! (`NEIGHBORS`, next hop -> MAC, with a copy of each neighbour at the slot its key hashes
//! to in `NEIGHBOR_COPIES`, written as [`copies`](super::copies) says). The kernel stays
//! the authority; these are its copy for the fast path, written only where they differ.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, LpmTrie, lpm_trie::Key};
use router_common::{NeighborCopy, NeighborEntry, NeighborKey, RouteEntry, RouteKey, map_names};

use super::{EntryDiff, MapSource, copies, retry_short_of_memory, typed};
use crate::error::Error;

/// A route as the LPM trie stores it: (trie prefix length, key).
pub type RouteSlot = (u32, RouteKey);

fn epoch(maps: &mut dyn MapSource) -> Result<u32, Error> {
    let map: Array<_, u32> = typed(maps, map_names::ROUTE_EPOCH)?;
    map.get(&0, 0)
        .map_err(|e| Error::map("reading ROUTE_EPOCH", e))
}

/// Moves the forwarding epoch on (never to 0, at which nothing cached is used): every
/// decision the programs cached before (`ROUTE_CACHE`, `FLOW_CACHE`) ends, and each CPU's
/// next packet of each flow is decided from the tables anew. Every room calls it after it
/// changed a table a forwarding decision reads, once the change is complete.
pub fn next_epoch(maps: &mut dyn MapSource) -> Result<(), Error> {
    let next = match epoch(maps)?.wrapping_add(1) {
        0 => 1,
        n => n,
    };
    let mut map: Array<_, u32> = typed(maps, map_names::ROUTE_EPOCH)?;
    map.set(0, next, 0)
        .map_err(|e| Error::map("writing ROUTE_EPOCH", e))
}

/// What `NEIGHBOR_COPIES` should hold for `neighbors`, where it holds `current` (by
/// slot): a slot keeps its neighbour while it stays (with its MAC now), and a free slot goes
/// to the lowest key that hashes to it; the other keys of a slot are in `NEIGHBORS` alone.
pub fn copies_of(
    neighbors: &BTreeMap<NeighborKey, NeighborEntry>,
    current: &BTreeMap<u32, NeighborCopy>,
) -> BTreeMap<u32, NeighborCopy> {
    let mut out = BTreeMap::new();
    for (slot, copy) in current {
        if copy.key.copy_slot() == *slot
            && let Some(entry) = neighbors.get(&copy.key)
        {
            let copy = NeighborCopy {
                key: copy.key,
                entry: *entry,
            };
            out.insert(*slot, copy);
        }
    }
    for (key, entry) in neighbors.iter().filter(|(k, _)| k.ifindex != 0) {
        out.entry(key.copy_slot()).or_insert(NeighborCopy {
            key: *key,
            entry: *entry,
        });
    }
    out
}

/// The route and neighbour maps of one router.
pub struct RouteMaps<'a> {
    maps: &'a mut dyn MapSource,
}

impl<'a> RouteMaps<'a> {
    pub fn new(maps: &'a mut dyn MapSource) -> Self {
        Self { maps }
    }

    /// Every route of every table.
    pub fn all(&mut self) -> Result<BTreeMap<RouteSlot, RouteEntry>, Error> {
        let map: LpmTrie<_, RouteKey, RouteEntry> = typed(self.maps, map_names::ROUTES)?;
        let mut out = BTreeMap::new();
        for item in map.iter() {
            let (key, value) = item.map_err(|e| Error::map("reading ROUTES", e))?;
            out.insert((key.prefix_len(), key.data()), value);
        }
        Ok(out)
    }

    /// The longest-prefix match for `dst` in `table`, as the fast path's lookup finds it.
    pub fn lookup(&mut self, table: u32, dst: [u8; 4]) -> Result<Option<RouteEntry>, Error> {
        let map: LpmTrie<_, RouteKey, RouteEntry> = typed(self.maps, map_names::ROUTES)?;
        let key = Key::new(RouteKey::TABLE_BITS + 32, RouteKey::new(table, dst));
        Ok(map.get(&key, 0).ok())
    }

    /// Makes the route trie equal to `wanted`, touching only entries that differ. Returns
    /// the number of writes.
    pub fn sync(&mut self, wanted: &BTreeMap<RouteSlot, RouteEntry>) -> Result<usize, Error> {
        let diff = EntryDiff::between(&self.all()?, wanted);
        let mut map: LpmTrie<_, RouteKey, RouteEntry> = typed(self.maps, map_names::ROUTES)?;
        for ((len, key), entry) in &diff.set {
            map.insert(&Key::new(*len, *key), entry, 0)
                .map_err(|e| Error::map("writing ROUTES", e))?;
        }
        for (len, key) in &diff.remove {
            map.remove(&Key::new(*len, *key))
                .map_err(|e| Error::map("removing from ROUTES", e))?;
        }
        let mut writes = diff.set.len() + diff.remove.len();
        if writes > 0 {
            self.next_epoch()?;
            writes += 1;
        }
        self.maps.count_writes(writes);
        Ok(writes)
    }

    /// The forwarding epoch, whose change ends the programs' cached route lookups
    /// (`ROUTE_CACHE`) and flow decisions (`FLOW_CACHE`).
    pub fn epoch(&mut self) -> Result<u32, Error> {
        epoch(self.maps)
    }

    /// Moves the forwarding epoch on, once `ROUTES` has changed (see [`next_epoch`]).
    fn next_epoch(&mut self) -> Result<(), Error> {
        next_epoch(self.maps)
    }

    /// Every neighbour the fast path knows.
    pub fn neighbors(&mut self) -> Result<BTreeMap<NeighborKey, NeighborEntry>, Error> {
        let map: HashMap<_, NeighborKey, NeighborEntry> = typed(self.maps, map_names::NEIGHBORS)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// The neighbour `key`, if the fast path knows it.
    pub fn neighbor(&mut self, key: &NeighborKey) -> Result<Option<NeighborEntry>, Error> {
        let map: HashMap<_, NeighborKey, NeighborEntry> = typed(self.maps, map_names::NEIGHBORS)?;
        Ok(map.get(key, 0).ok())
    }

    /// The valid copies of `NEIGHBOR_COPIES`, by slot.
    pub fn neighbor_copies(&mut self) -> Result<BTreeMap<u32, NeighborCopy>, Error> {
        let keys: Vec<NeighborKey> = self.neighbors()?.into_keys().collect();
        self.copies_at(&keys)
    }

    /// The valid copies of `NEIGHBOR_COPIES` in the slots of `keys` (where every valid one
    /// is, when `keys` are the neighbours: see `copies::read_at`).
    fn copies_at(&mut self, keys: &[NeighborKey]) -> Result<BTreeMap<u32, NeighborCopy>, Error> {
        let slots = keys.iter().map(NeighborKey::copy_slot);
        copies::read_at(self.maps, map_names::NEIGHBOR_COPIES, slots)
    }

    /// One neighbour changed (`Some`) or gone (`None`), as a netlink event says. Its copy
    /// follows where the slot is its own or free.
    pub fn set_neighbor(
        &mut self,
        key: NeighborKey,
        entry: Option<NeighborEntry>,
    ) -> Result<(), Error> {
        const COPIES: &str = map_names::NEIGHBOR_COPIES;
        let slot = key.copy_slot();
        let copy: NeighborCopy = copies::get(self.maps, COPIES, slot)?;
        let own = copies::Copied::valid(&copy) && copy.key == key;
        let mut writes = 1;
        let changed = self.neighbor(&key)? != entry;
        match entry {
            Some(entry) => {
                let mut map: HashMap<_, NeighborKey, NeighborEntry> =
                    typed(self.maps, map_names::NEIGHBORS)?;
                retry_short_of_memory(|| map.insert(key, entry, 0))
                    .map_err(|e| Error::map("writing NEIGHBORS", e))?;
                let new = [(slot, NeighborCopy { key, entry })];
                if own && copy.entry != entry {
                    copies::set(self.maps, COPIES, &[(slot, copy)], &new)?;
                    writes += 1;
                } else if !copies::Copied::valid(&copy) {
                    copies::set(self.maps, COPIES, &[], &new)?;
                    writes += 1;
                }
            }
            None => {
                if own {
                    copies::remove(self.maps, COPIES, &[(slot, copy)])?;
                    writes += 1;
                }
                let mut map: HashMap<_, NeighborKey, NeighborEntry> =
                    typed(self.maps, map_names::NEIGHBORS)?;
                let _ = map.remove(&key);
            }
        }
        if changed {
            next_epoch(self.maps)?;
            writes += 1;
        }
        self.maps.count_writes(writes);
        Ok(())
    }

    /// Makes the neighbour map equal to `wanted`. Returns the writes.
    pub fn sync_neighbors(
        &mut self,
        wanted: &[(NeighborKey, NeighborEntry)],
    ) -> Result<usize, Error> {
        const COPIES: &str = map_names::NEIGHBOR_COPIES;
        let wanted: BTreeMap<NeighborKey, NeighborEntry> = wanted.iter().copied().collect();
        let current = self.neighbors()?;
        let diff = EntryDiff::between(&current, &wanted);
        let keys: Vec<NeighborKey> = current.keys().chain(wanted.keys()).copied().collect();
        let current_copies = self.copies_at(&keys)?;
        let copy_diff = EntryDiff::between(&current_copies, &copies_of(&wanted, &current_copies));
        let live = |slots: &mut dyn Iterator<Item = &u32>| -> Vec<(u32, NeighborCopy)> {
            slots
                .filter_map(|s| current_copies.get(s).map(|c| (*s, *c)))
                .collect()
        };
        // Copies are made invalid before their entries go, and written after them.
        copies::remove(self.maps, COPIES, &live(&mut copy_diff.remove.iter()))?;
        let mut map: HashMap<_, NeighborKey, NeighborEntry> =
            typed(self.maps, map_names::NEIGHBORS)?;
        for key in &diff.remove {
            let _ = map.remove(key);
        }
        for (key, entry) in &diff.set {
            retry_short_of_memory(|| map.insert(key, entry, 0))
                .map_err(|e| Error::map("writing NEIGHBORS", e))?;
        }
        let replaced = live(&mut copy_diff.set.iter().map(|(s, _)| s));
        copies::set(self.maps, COPIES, &replaced, &copy_diff.set)?;
        let mut writes = diff.len() + copy_diff.len();
        if writes > 0 {
            next_epoch(self.maps)?;
            writes += 1;
        }
        self.maps.count_writes(writes);
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neighbor(ifindex: u32, last: u8, mac: u8) -> (NeighborKey, NeighborEntry) {
        let key = NeighborKey {
            ifindex,
            addr: [10, 0, 0, last],
        };
        let entry = NeighborEntry {
            mac: [2, 0, 0, 0, 0, mac],
            _pad: [0; 2],
        };
        (key, entry)
    }

    #[test]
    fn the_addresses_of_a_subnet_on_one_interface_have_slots_of_their_own() {
        let slots = |ifindex: u32, net: [u8; 2]| -> std::collections::BTreeSet<u32> {
            (0..1024u32)
                .map(|i| {
                    let key = NeighborKey {
                        ifindex,
                        addr: [net[0], net[1], (i >> 8) as u8 | 4, i as u8],
                    };
                    key.copy_slot()
                })
                .collect()
        };
        // A /22 (10.0.4.0/22, 172.16.4.0/22) on one interface: 1,024 addresses, 1,024 slots.
        for (ifindex, net) in [(3, [10, 0]), (2, [172, 16]), (77, [10, 0])] {
            let s = slots(ifindex, net);
            assert_eq!(s.len(), 1024, "{ifindex} {net:?}");
            assert!(s.iter().all(|s| *s < router_common::NEIGHBOR_COPY_SLOTS));
        }
    }

    #[test]
    fn a_slot_keeps_its_neighbour_and_a_freed_one_goes_to_the_lowest_key() {
        // Three keys on one slot: found by trying addresses on other interfaces.
        let first = neighbor(3, 7, 1);
        let slot = first.0.copy_slot();
        let rivals: Vec<_> = (4..100_000)
            .map(|i| neighbor(i, 7, 2))
            .filter(|(k, _)| k.copy_slot() == slot)
            .take(2)
            .collect();
        let (low, high) = (rivals[0], rivals[1]);
        let all = BTreeMap::from([first, low, high]);
        let start = copies_of(&all, &BTreeMap::new());
        assert_eq!(start.len(), 1);
        assert_eq!(start[&slot].key, first.0, "the lowest key");

        // A new MAC for the holder: the copy follows it.
        let moved = (
            first.0,
            NeighborEntry {
                mac: [9; 6],
                _pad: [0; 2],
            },
        );
        let changed = copies_of(&BTreeMap::from([moved, low, high]), &start);
        assert_eq!(changed[&slot].entry.mac, [9; 6]);

        // The holder stays while a lower key comes (it does not move), and when the holder
        // goes, the slot goes to the lowest key left.
        let held = BTreeMap::from([(
            slot,
            NeighborCopy {
                key: high.0,
                entry: high.1,
            },
        )]);
        assert_eq!(copies_of(&all, &held)[&slot].key, high.0);
        let without_high = BTreeMap::from([first, low]);
        assert_eq!(copies_of(&without_high, &held)[&slot].key, first.0);

        // A stray (a copy in a slot its key does not hash to) is dropped.
        let stray_slot = (slot + 1) % router_common::NEIGHBOR_COPY_SLOTS;
        let stray = BTreeMap::from([(
            stray_slot,
            NeighborCopy {
                key: first.0,
                entry: first.1,
            },
        )]);
        let mended = copies_of(&all, &stray);
        assert!(!mended.contains_key(&stray_slot) || mended[&stray_slot].key != first.0);
        assert_eq!(mended[&slot].key, first.0);
    }
}
