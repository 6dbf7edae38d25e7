//! A session table without preallocation, made ahead of the object's load when the
//! configuration asks for one (`nat.preallocate_sessions = false`). The object declares the
//! table preallocated, and the loader takes a map already pinned under a map's pin path as
//! that map: the programs then use this one.

use std::{os::fd::FromRawFd, path::Path};

use aya::maps::MapData;
use router_common::{CtEntry, CtKey, map_names};

use crate::error::Error;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_F_NO_PREALLOC: u32 = 1;

/// Makes the session table of `entries` entries without preallocation and pins it at
/// `path`.
pub(super) fn create_on_demand(path: &Path, entries: u32) -> Result<(), Error> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries,
    // map_flags, inner_map_fd, numa_node, map_name[16] (the rest zero).
    let mut attr = [0u32; 32];
    attr[0] = BPF_MAP_TYPE_HASH;
    attr[1] = size_of::<CtKey>() as u32;
    attr[2] = size_of::<CtEntry>() as u32;
    attr[3] = entries;
    attr[4] = BPF_F_NO_PREALLOC;
    let mut name = [0u8; 16];
    let bytes = map_names::SESSIONS.as_bytes();
    let len = bytes.len().min(name.len() - 1);
    name[..len].copy_from_slice(&bytes[..len]);
    for (i, chunk) in name.chunks(4).enumerate() {
        attr[7 + i] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    // SAFETY: `attr` outlives the call and is larger than the part of bpf_attr the kernel
    // reads for this command (the rest is zero, as the kernel requires).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(Error::io(
            format!("creating the session table ({entries} entries, not preallocated)"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a new descriptor the kernel just gave us, owned from here on.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let map = MapData::from_fd(fd).map_err(|e| Error::map("the session table just made", e))?;
    map.pin(path).map_err(|source| Error::Pin {
        what: format!("pinning the session table at {}", path.display()),
        source: Box::new(source),
    })
}
