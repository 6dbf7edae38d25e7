//! Running work inside a router's network namespace.
//!
//! Netlink sockets, XDP/TC attachment and DEVMAP updates all resolve interfaces in the
//! network namespace of the calling thread, so each router gets a thread of its own that
//! enters the namespace once and stays there.

use std::{fs::File, io, path::Path};

use nix::sched::{CloneFlags, setns};

/// Moves the calling thread into the network namespace bound at `path`.
pub fn enter(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Writes a sysctl of the calling thread's network namespace (`/proc/sys` resolves
/// `net.*` by the opener's namespace).
pub fn write_sysctl(name: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::write(path, value)
}

/// A sysctl of the calling thread's namespace, trimmed; `None` if it cannot be read.
pub fn read_sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|v| v.trim().to_string())
}
