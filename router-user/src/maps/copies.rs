//! Copies of hash entries in arrays the programs read without a call (`IFACES_BY_INDEX`,
//! `NEIGHBOR_COPIES`): the array lookup is inlined by the verifier where a hash lookup
//! takes a call. The programs use a copy only while it is valid and its key is the one they
//! look for, and go to the hash otherwise.
//!
//! The programs read the arrays without a lock, so a valid copy is never changed in place:
//! it is made invalid as it is, the program runs that may have read it are waited for, its
//! new contents are written while it is invalid, and then it is made valid. A reader thus
//! sees an invalid copy, or one whole copy, never half of two. The rooms that own the
//! arrays decide what they hold and in which order against their hash maps: a copy is made
//! invalid before its entry leaves the hash, and written after its entry is in it.

use std::collections::BTreeMap;

use aya::maps::Array;
use router_common::{IfaceIndexed, NeighborCopy};

use super::{MapSource, typed};
use crate::error::Error;

/// A copy the programs read without a lock.
pub trait Copied: aya::Pod + Copy + PartialEq + 'static {
    /// Whether the programs may use it.
    fn valid(&self) -> bool;
    /// The same copy, its contents as they are, made invalid.
    fn invalid(&self) -> Self;
}

impl Copied for IfaceIndexed {
    fn valid(&self) -> bool {
        self.ifindex != 0
    }
    fn invalid(&self) -> Self {
        Self {
            ifindex: 0,
            ..*self
        }
    }
}

impl Copied for NeighborCopy {
    fn valid(&self) -> bool {
        self.key.ifindex != 0
    }
    fn invalid(&self) -> Self {
        let mut copy = *self;
        copy.key.ifindex = 0;
        copy
    }
}

/// The valid copies at `indexes` of array `name`, by index. Only the owning room writes
/// these arrays, a copy only at its own key's index, after its hash entry is in and made
/// invalid before the entry goes: a valid copy is always at the index of a key in the hash,
/// so reading those indexes reads every valid copy (a router of a few interfaces and
/// neighbours reads a few entries, not the whole array).
pub fn read_at<V: Copied>(
    maps: &mut dyn MapSource,
    name: &'static str,
    indexes: impl IntoIterator<Item = u32>,
) -> Result<BTreeMap<u32, V>, Error> {
    let indexes: std::collections::BTreeSet<u32> = indexes.into_iter().collect();
    let map: Array<_, V> = typed(maps, name)?;
    let mut out = BTreeMap::new();
    for index in indexes.into_iter().filter(|i| *i < map.len()) {
        let copy = map
            .get(&index, 0)
            .map_err(|e| Error::map(format!("reading {name}[{index}]"), e))?;
        if copy.valid() {
            out.insert(index, copy);
        }
    }
    Ok(out)
}

/// The copy at `index` of array `name`, valid or not.
pub fn get<V: Copied>(
    maps: &mut dyn MapSource,
    name: &'static str,
    index: u32,
) -> Result<V, Error> {
    let map: Array<_, V> = typed(maps, name)?;
    map.get(&index, 0)
        .map_err(|e| Error::map(format!("reading {name}[{index}]"), e))
}

/// Makes the copies `removed` (as they are now) invalid, their contents left.
pub fn remove<V: Copied>(
    maps: &mut dyn MapSource,
    name: &'static str,
    removed: &[(u32, V)],
) -> Result<(), Error> {
    write(maps, name, removed.iter().map(|(i, v)| (*i, v.invalid())))
}

/// Writes the copies `set`; `live` are the valid copies they replace, as they are now.
pub fn set<V: Copied>(
    maps: &mut dyn MapSource,
    name: &'static str,
    live: &[(u32, V)],
    set: &[(u32, V)],
) -> Result<(), Error> {
    if !live.is_empty() {
        remove(maps, name, live)?;
        wait_for_programs();
    }
    write(maps, name, set.iter().map(|(i, v)| (*i, v.invalid())))?;
    write(maps, name, set.iter().copied())
}

fn write<V: Copied>(
    maps: &mut dyn MapSource,
    name: &'static str,
    entries: impl IntoIterator<Item = (u32, V)>,
) -> Result<(), Error> {
    let mut entries = entries.into_iter().peekable();
    if entries.peek().is_none() {
        return Ok(());
    }
    let mut map: Array<_, V> = typed(maps, name)?;
    for (index, copy) in entries {
        map.set(index, copy, 0)
            .map_err(|e| Error::map(format!("{name}[{index}]"), e))?;
    }
    Ok(())
}

/// Returns once every program run that started before the call has ended: the programs run
/// inside RCU read-side sections, and `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for an RCU
/// grace period. Where the kernel refuses it (nohz_full), a wait far longer than a program
/// runs (microseconds) stands in.
fn wait_for_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let done = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) } == 0;
    if !done {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
