//! The fast path's maps as the controller sees them: one room per concern, as in
//! `router-ebpf`.
//!
//! | room | maps | what it holds |
//! |---|---|---|
//! | [`copies`] | - | how the arrays of copies the programs read without a lock are written |
//! | [`ifaces`] | `IFACES`, `IFACES_BY_INDEX`, `EGRESS_DEVS`, `IFACE_STATS`, `IFACE_FORWARDED` | interface settings (and their copies by ifindex) and counter slots, XDP egresses, interface counters and drop reasons |
//! | [`routes`] | `ROUTES`, `ROUTE_EPOCH`, `NEIGHBORS`, `NEIGHBOR_COPIES` | the kernel's routes and neighbours (and their copies by hash), mirrored; the forwarding epoch, which every room moves on after its changes and which ends the programs' cached decisions |
//! | [`policy`] | `POLICY_CONFIG`, `RULES`, `SOURCE_TABLES`, `FW_RULES`, `FW_STATS`, `ALLOWED_SOURCES` | policy rules, external source tables, the firewall and anti-spoofing |
//! | [`nat`] | `NAT_CONFIG`, `FIP_BY_ADDRESS`, `FIP_BY_FIXED`, `FIP_FILTER`, `FIP_STATS`, `SNAT_STATS`, `SNAT_SOURCES` | gateway and SNAT settings, floating IPs, their counters |
//! | [`sessions`] | `SESSIONS`, `FRAGMENTS` | the session table, fragmented datagrams in flight |
//! | [`events`] | `MONITOR`, `EVENTS` | the event ring and its deadline |
//! | [`ha`] | `HA`, `SYNC` | the router's HA role, the ring of sessions for the standbys |
//!
//! Each room is the only code that names its maps, for writes and for reads, and holds the
//! conversion from the desired state to its map values. A room works on any [`MapSource`]:
//! a router's [`Datapath`](crate::datapath::Datapath) (routerd, tests, benchmarks), the pins
//! of a running router ([`Pinned`]: `routerctl`, metrics, trace), or maps taken out of an
//! object ([`Taken`]: trace's private counters). Loading, pinning, adoption and attachment
//! stay in `datapath`.

pub mod copies;
pub mod events;
pub mod ha;
pub mod ifaces;
pub mod nat;
pub mod policy;
pub mod routes;
pub mod sessions;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use aya::maps::{Map, MapData, MapError, PerCpuValues};
use router_common::map_names;

use crate::error::Error;

pub use events::EventMaps;
pub use ha::{HaMaps, SyncRing};
pub use ifaces::IfaceMaps;
pub use nat::NatMaps;
pub use policy::PolicyMaps;
pub use routes::RouteMaps;
pub use sessions::SessionMaps;

/// Where one router's maps are reached.
pub trait MapSource {
    /// Map `name` (one of `map_names::ALL`), opened on first use.
    fn map(&mut self, name: &'static str) -> Result<&mut Map, Error>;

    /// Map `name` handed over to the caller, who keeps it open as long as it holds it (a
    /// ring buffer being read).
    fn take(&mut self, name: &'static str) -> Result<Map, Error>;

    /// Counts `n` map entries written or removed. A routerd that adopts an unchanged router
    /// writes none, and says so; sources that do not report writes ignore this.
    fn count_writes(&mut self, _n: usize) {}
}

/// The rooms of a map source: `source.nat().floating_ips()`.
pub trait Rooms: MapSource + Sized {
    fn ifaces(&mut self) -> IfaceMaps<'_> {
        IfaceMaps::new(self)
    }
    fn routes(&mut self) -> RouteMaps<'_> {
        RouteMaps::new(self)
    }
    fn policy(&mut self) -> PolicyMaps<'_> {
        PolicyMaps::new(self)
    }
    fn nat(&mut self) -> NatMaps<'_> {
        NatMaps::new(self)
    }
    fn sessions(&mut self) -> SessionMaps<'_> {
        SessionMaps::new(self)
    }
    fn events(&mut self) -> EventMaps<'_> {
        EventMaps::new(self)
    }
    fn ha(&mut self) -> HaMaps<'_> {
        HaMaps::new(self)
    }
}

impl<T: MapSource> Rooms for T {}

/// The maps that hold a router's configuration (what the controller writes), as opposed to
/// its state and counters (what the programs write). `routerctl trace` shares the former
/// with the running router and gives the programs private copies of the latter.
pub const CONFIGURATION: &[&str] = &[
    map_names::ROUTES,
    map_names::ROUTE_EPOCH,
    map_names::NEIGHBORS,
    map_names::NEIGHBOR_COPIES,
    map_names::IFACES,
    map_names::IFACES_BY_INDEX,
    map_names::EGRESS_DEVS,
    map_names::NAT_CONFIG,
    map_names::FIP_BY_ADDRESS,
    map_names::FIP_BY_FIXED,
    map_names::FIP_FILTER,
    map_names::POLICY_CONFIG,
    map_names::RULES,
    map_names::SOURCE_TABLES,
    map_names::FW_RULES,
    map_names::ALLOWED_SOURCES,
    map_names::HA,
];

/// The maps a running router pinned, opened from their pins as they are needed.
pub struct Pinned {
    router: String,
    dir: PathBuf,
    open: BTreeMap<&'static str, Map>,
}

impl Pinned {
    /// The pinned maps of running router `router` (an error if it has none).
    pub fn open(router: &str) -> Result<Self, Error> {
        Self::open_in(crate::paths::pin_root(), router)
    }

    /// The pinned maps of router `router` under another pin root than this process's (a
    /// routerd started with `--pin-root`, read from a test or a tool beside it).
    pub fn open_in(pin_root: &std::path::Path, router: &str) -> Result<Self, Error> {
        let dir = pin_root.join(router);
        if !dir.join(map_names::NAT_CONFIG).exists() {
            return Err(Error::NotRunning(
                router.to_string(),
                dir.display().to_string(),
            ));
        }
        Ok(Self {
            router: router.to_string(),
            dir,
            open: BTreeMap::new(),
        })
    }

    pub fn router(&self) -> &str {
        &self.router
    }

    /// Entries and capacity of every map, in `map_names::ALL` order (see [`Fill`]), and the
    /// number of sessions (counted in the same walk of the session table).
    pub fn fill(&mut self) -> Result<(Vec<Fill>, u64), Error> {
        let config = self.policy().config()?;
        let mut sessions = 0;
        let mut out = Vec::with_capacity(map_names::ALL.len());
        for name in map_names::ALL {
            let path = self.dir.join(name);
            let what = || format!("{}: {name}", self.router);
            let data = MapData::from_pin(&path).map_err(|e| Error::map(what(), e))?;
            let info = data.info().map_err(|e| Error::map(what(), e))?;
            let capacity = u64::from(info.max_entries());
            let entries = if name == map_names::SESSIONS {
                let counts = self.sessions().counts()?;
                sessions = counts.sessions;
                counts.entries
            } else if name == map_names::IFACE_FORWARDED {
                // A slot per interface.
                self.ifaces().entries()?.len() as u64
            } else if name == map_names::IFACES_BY_INDEX {
                // The valid copies.
                self.ifaces().indexed()?.len() as u64
            } else if name == map_names::NEIGHBOR_COPIES {
                self.routes().neighbor_copies()?.len() as u64
            } else {
                match policy::slots_in_use(name, &config) {
                    Some(n) => n,
                    None => counted_entries(&data, &info, capacity),
                }
            };
            out.push(Fill {
                map: name,
                entries,
                capacity,
            });
        }
        Ok((out, sessions))
    }
}

impl MapSource for Pinned {
    fn map(&mut self, name: &'static str) -> Result<&mut Map, Error> {
        if !self.open.contains_key(name) {
            let path = self.dir.join(name);
            let data = MapData::from_pin(&path).map_err(|_| {
                Error::NotRunning(self.router.clone(), self.dir.display().to_string())
            })?;
            let map =
                Map::from_map_data(data).map_err(|e| Error::map(path.display().to_string(), e))?;
            self.open.insert(name, map);
        }
        self.open
            .get_mut(name)
            .ok_or_else(|| Error::map(name, MapError::InvalidName { name: name.into() }))
    }

    fn take(&mut self, name: &'static str) -> Result<Map, Error> {
        self.map(name)?;
        self.open
            .remove(name)
            .ok_or_else(|| Error::map(name, MapError::InvalidName { name: name.into() }))
    }
}

/// Maps taken out of a loaded object by name (the programs keep using them).
pub struct Taken(pub BTreeMap<&'static str, Map>);

impl MapSource for Taken {
    fn map(&mut self, name: &'static str) -> Result<&mut Map, Error> {
        self.0
            .get_mut(name)
            .ok_or_else(|| Error::map(name, MapError::InvalidName { name: name.into() }))
    }

    fn take(&mut self, name: &'static str) -> Result<Map, Error> {
        self.0
            .remove(name)
            .ok_or_else(|| Error::map(name, MapError::InvalidName { name: name.into() }))
    }
}

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fill {
    pub map: &'static str,
    /// Meaningful entries: keys of hash and LPM maps, slots in use of the policy arrays,
    /// the capacity of one-entry settings and counters, 0 for ring buffers.
    pub entries: u64,
    /// The map's `max_entries`.
    pub capacity: u64,
}

/// Entries of a map whose room does not count them itself: hash-like maps count their keys
/// whatever their key type, arrays their capacity, other maps (ring buffers) 0.
fn counted_entries(data: &MapData, info: &aya::maps::MapInfo, capacity: u64) -> u64 {
    use aya::maps::MapType;
    match info.map_type() {
        Ok(
            MapType::Hash
            | MapType::PerCpuHash
            | MapType::LruHash
            | MapType::LruPerCpuHash
            | MapType::LpmTrie
            | MapType::DevMapHash,
        ) => count_keys(data, info.key_size() as usize, capacity),
        Ok(MapType::Array | MapType::PerCpuArray) => capacity,
        _ => 0,
    }
}

/// Keys of a hash-like map, walked with `BPF_MAP_GET_NEXT_KEY` (at most `limit`: a walk
/// that meets a deleted key starts over, so it must not run on forever).
fn count_keys(map: &MapData, key_size: usize, limit: u64) -> u64 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    /// `union bpf_attr` as the map element commands use it.
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let fd = map.fd().as_fd().as_raw_fd();
    let (mut key, mut next) = (vec![0u8; key_size.max(1)], vec![0u8; key_size.max(1)]);
    let mut n = 0;
    while n < limit {
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            key: if n == 0 { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `attr` and the buffers it points to (each `key_size` bytes, as the map's
        // keys) live across the call; the kernel writes only `next`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const Attr,
                std::mem::size_of::<Attr>(),
            )
        };
        if rc != 0 {
            break;
        }
        n += 1;
        std::mem::swap(&mut key, &mut next);
    }
    n
}

/// Map `name` of `source` as the typed map `T`.
fn typed<'a, T>(source: &'a mut dyn MapSource, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    T::try_from(source.map(name)?).map_err(|e| Error::map(format!("map {name}"), e))
}

/// Per-CPU values, every one `T::default()`: fresh counters.
fn zeroed<T: aya::Pod + Default + Clone>() -> Result<PerCpuValues<T>, MapError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    Ok(PerCpuValues::try_from(vec![T::default(); cpus])?)
}

/// Runs a map write again while the kernel answers ENOMEM, for up to a second. Entries of
/// the maps that are not preallocated come from caches the kernel refills in the
/// background (per-CPU counters from the per-CPU allocator's atomic reserve): setting up
/// hundreds of routers at once can find one empty for a moment (seen at about 800 routers:
/// "percpu: allocation failed ... atomic alloc failed").
fn retry_short_of_memory(mut write: impl FnMut() -> Result<(), MapError>) -> Result<(), MapError> {
    let mut tries = 0;
    loop {
        match write() {
            Err(MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOMEM) && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => {
                if tries > 0 {
                    tracing::info!(
                        "a per-CPU map write needed {tries} retries (kernel short of per-CPU memory)"
                    );
                }
                return other;
            }
        }
    }
}

/// The difference between what a map holds and what it should hold: entries to write and
/// keys to remove. Computed before anything is written, so a plan can be counted (and
/// shown) first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryDiff<K, V> {
    pub set: Vec<(K, V)>,
    pub remove: Vec<K>,
}

impl<K, V> Default for EntryDiff<K, V> {
    fn default() -> Self {
        Self {
            set: Vec::new(),
            remove: Vec::new(),
        }
    }
}

impl<K: Ord + Clone, V: PartialEq + Clone> EntryDiff<K, V> {
    /// What turns `current` into `wanted`: entries missing or different, keys not wanted.
    pub fn between(current: &BTreeMap<K, V>, wanted: &BTreeMap<K, V>) -> Self {
        Self {
            set: wanted
                .iter()
                .filter(|(k, v)| current.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            remove: current
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Entries written or removed.
    pub fn len(&self) -> usize {
        self.set.len() + self.remove.len()
    }

    /// `map` as it is once the diff is written.
    pub fn apply_to(&self, map: &mut BTreeMap<K, V>) {
        for k in &self.remove {
            map.remove(k);
        }
        for (k, v) in &self.set {
            map.insert(k.clone(), v.clone());
        }
    }
}

impl<K: Ord + Clone> EntryDiff<K, ()> {
    /// What turns the set `current` into `wanted`.
    pub fn between_sets(current: &BTreeSet<K>, wanted: &BTreeSet<K>) -> Self {
        Self {
            set: wanted
                .difference(current)
                .map(|k| (k.clone(), ()))
                .collect(),
            remove: current.difference(wanted).cloned().collect(),
        }
    }

    /// `set` as it is once the diff is written.
    pub fn apply_to_set(&self, set: &mut BTreeSet<K>) {
        for k in &self.remove {
            set.remove(k);
        }
        set.extend(self.set.iter().map(|(k, ())| k.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_writes_only_differences() {
        let current = BTreeMap::from([(1, 'a'), (2, 'b'), (3, 'c')]);
        let wanted = BTreeMap::from([(1, 'a'), (2, 'x'), (4, 'd')]);
        let diff = EntryDiff::between(&current, &wanted);
        assert_eq!(diff.set, vec![(2, 'x'), (4, 'd')]);
        assert_eq!(diff.remove, vec![3]);
        assert!(EntryDiff::between(&wanted, &wanted).is_empty());
    }
}
