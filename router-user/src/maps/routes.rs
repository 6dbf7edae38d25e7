//! RouteMaps and neighbours, mirrored from the kernel of the router's namespace: the LPM trie
//! of every routing table (`ROUTES`, key = table + prefix) and the neighbour table
//! (`NEIGHBORS`, next hop -> MAC). The kernel stays the authority; these are its copy for
//! the fast path, written only where they differ.

use std::collections::BTreeMap;

use aya::maps::{HashMap, LpmTrie, lpm_trie::Key};
use router_common::{NeighborEntry, NeighborKey, RouteEntry, RouteKey, map_names};

use super::{EntryDiff, MapSource, retry_short_of_memory, typed};
use crate::error::Error;

/// A route as the LPM trie stores it: (trie prefix length, key).
pub type RouteSlot = (u32, RouteKey);

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
        let writes = diff.set.len() + diff.remove.len();
        self.maps.count_writes(writes);
        Ok(writes)
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

    /// One neighbour changed (`Some`) or gone (`None`), as a netlink event says.
    pub fn set_neighbor(
        &mut self,
        key: NeighborKey,
        entry: Option<NeighborEntry>,
    ) -> Result<(), Error> {
        let mut map: HashMap<_, NeighborKey, NeighborEntry> =
            typed(self.maps, map_names::NEIGHBORS)?;
        let result = match entry {
            Some(entry) => retry_short_of_memory(|| map.insert(key, entry, 0))
                .map_err(|e| Error::map("writing NEIGHBORS", e)),
            None => {
                let _ = map.remove(&key);
                Ok(())
            }
        };
        self.maps.count_writes(1);
        result
    }

    /// Makes the neighbour map equal to `wanted`. Returns the writes.
    pub fn sync_neighbors(
        &mut self,
        wanted: &[(NeighborKey, NeighborEntry)],
    ) -> Result<usize, Error> {
        let wanted: BTreeMap<NeighborKey, NeighborEntry> = wanted.iter().copied().collect();
        let diff = EntryDiff::between(&self.neighbors()?, &wanted);
        let mut map: HashMap<_, NeighborKey, NeighborEntry> =
            typed(self.maps, map_names::NEIGHBORS)?;
        for key in &diff.remove {
            let _ = map.remove(key);
        }
        for (key, entry) in &diff.set {
            retry_short_of_memory(|| map.insert(key, entry, 0))
                .map_err(|e| Error::map("writing NEIGHBORS", e))?;
        }
        let writes = diff.set.len() + diff.remove.len();
        self.maps.count_writes(writes);
        Ok(writes)
    }
}
