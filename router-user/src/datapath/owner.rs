//! Who a router's pins belong to, and the pins of a node: the owner record a routerd
//! writes beside each router (adopted only by a routerd running the same router, in the same
//! namespace, with the same map layouts and sizes), the object digest that lets the same
//! build's programs be adopted without verifying them again, and the removal of a router's
//! pins.

use std::path::{Path, PathBuf};

use router_common::{
    CtEntry, CtKey, FragEntry, FragKey, FwRule, FwStats, IfaceEntry, IfaceForwarded, IfaceIndexed,
    IfaceStats, NatConfig, NeighborCopy, PolicyConfig, PolicyRule, RouteCached, RouteEntry,
    RouteKey, SourceKey,
};

use super::{EBPF_OBJECT, attach::detach_tc_filter, remove_pin};
use crate::error::Error;

/// Sizes of the maps the configuration sizes, fixed when the maps are created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSizes {
    /// Entries of the session table (two per session).
    pub session_entries: u32,
    /// Whether the session table is made without preallocation (`BPF_F_NO_PREALLOC`).
    #[serde(default)]
    pub sessions_on_demand: bool,
    /// Bytes of the `SYNC` ring (0: the object's own size).
    #[serde(default)]
    pub sync_bytes: u32,
    /// Entries of the floating-IP tables and their (preallocated, per-CPU) counters.
    pub floating_ips: u32,
}

impl TableSizes {
    /// The tables `router`'s configuration asks for. Only an HA router's fast path writes
    /// the sync ring; any other has the smallest one.
    pub fn for_router(router: &crate::config::Router) -> Self {
        Self {
            session_entries: router.nat.max_sessions.saturating_mul(2),
            sessions_on_demand: !router.nat.preallocate_sessions,
            sync_bytes: if router.ha {
                router_common::SYNC_BYTES
            } else {
                router_common::SYNC_BYTES_UNUSED
            },
            floating_ips: router.nat.max_floating_ips,
        }
    }

    /// Bytes of the `SYNC` ring (records of routerds that did not size it: the object's).
    pub fn sync_ring(&self) -> u32 {
        if self.sync_bytes == 0 {
            router_common::SYNC_BYTES
        } else {
            self.sync_bytes
        }
    }

    /// Whether tables made with these sizes serve a router that wants `wanted`: the same
    /// tables, and a ring at least as large (a router that no longer needs the HA ring
    /// keeps the one it has rather than lose its sessions with its tables).
    pub fn serves(&self, wanted: &TableSizes) -> bool {
        let tables = |s: &TableSizes| (s.session_entries, s.floating_ips, s.sessions_on_demand);
        tables(self) == tables(wanted) && self.sync_ring() >= wanted.sync_ring()
    }
}

/// Who a router's pins belong to: adopted only by a routerd running the same router in the
/// same namespace with the same map layouts. Kept beside the router's info file (bpffs holds
/// only BPF objects).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub namespace: String,
    /// Inode of the network namespace (a namespace deleted and created again under the same
    /// name is another one).
    pub netns_inode: u64,
    /// Changes whenever a shared map type changes size.
    pub layout: String,
    /// Sizes of the tables sized by the configuration (set at creation: another size is
    /// another table).
    #[serde(default)]
    pub sizes: TableSizes,
    /// The eBPF object the pinned programs were loaded from (see [`object_digest`]): the
    /// same object's programs are adopted without loading them again.
    #[serde(default)]
    pub object: String,
    /// The desired-state file of the routerd that pinned the router (not part of what
    /// adoption compares): a routerd removes pinned routers its own file no longer has,
    /// never another daemon's.
    #[serde(default)]
    pub config: String,
}

static DAEMON_CONFIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the desired-state file of this routerd (see [`Owner::config`]).
pub fn set_daemon_config(path: &Path) {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let _ = DAEMON_CONFIG.set(path.display().to_string());
}

impl Owner {
    /// The owner record of the calling thread's namespace.
    pub fn current(namespace: &str, sizes: TableSizes) -> Result<Self, Error> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(|e| Error::io("reading the network namespace", e))?;
        Ok(Self {
            namespace: namespace.to_string(),
            netns_inode: meta.ino(),
            layout: layout_signature(),
            sizes,
            object: object_digest(),
            config: DAEMON_CONFIG.get().cloned().unwrap_or_default(),
        })
    }

    /// Whether a datapath pinned by `self` may be adopted by `other`.
    pub(super) fn same_datapath(&self, other: &Owner) -> bool {
        (&self.namespace, self.netns_inode, &self.layout)
            == (&other.namespace, other.netns_inode, &other.layout)
            && self.sizes.serves(&other.sizes)
    }
}

/// A digest of [`EBPF_OBJECT`] (FNV-1a): programs pinned from another build are replaced.
pub fn object_digest() -> String {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST
        .get_or_init(|| {
            let hash = EBPF_OBJECT.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
            format!("{hash:016x}-{}", EBPF_OBJECT.len())
        })
        .clone()
}

/// The owner record of router `router`'s pins, if there is one and it can be read.
pub fn owner_of(router: &str) -> Option<Owner> {
    std::fs::read(owner_file(router))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Whether router `router`'s maps are pinned.
pub fn maps_pinned(router: &str) -> bool {
    crate::paths::router_pin_dir(router)
        .join(router_common::map_names::NAT_CONFIG)
        .exists()
}

/// Whether `Datapath::open` for `owner` would take over what is pinned for `router`
/// (otherwise whatever it leaves pinned is its own making).
pub fn would_adopt(router: &str, owner: &Owner) -> bool {
    maps_pinned(router) && owner_of(router).is_some_and(|r| r.same_datapath(owner))
}

/// Routers pinned by the routerd whose desired-state file is `config`.
pub fn pinned_routers_of(config: &Path) -> Vec<String> {
    let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    pinned_routers()
        .into_iter()
        .filter(|id| {
            std::fs::read(owner_file(id))
                .ok()
                .and_then(|b| serde_json::from_slice::<Owner>(&b).ok())
                .is_some_and(|o| o.config == config.display().to_string())
        })
        .collect()
}

/// The sizes of every shared map key and value, after a version that changes with the
/// meaning of a field (v3: `IfaceEntry::slot`, where v2 had padding): maps pinned by a build
/// with other layouts are not adopted.
fn layout_signature() -> String {
    use std::mem::size_of;
    format!(
        "v3:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}",
        size_of::<RouteKey>(),
        size_of::<RouteEntry>(),
        size_of::<IfaceEntry>(),
        size_of::<IfaceIndexed>(),
        size_of::<NeighborCopy>(),
        size_of::<RouteCached>(),
        size_of::<IfaceStats>(),
        size_of::<IfaceForwarded>(),
        size_of::<NatConfig>(),
        size_of::<CtKey>(),
        size_of::<CtEntry>(),
        size_of::<PolicyConfig>(),
        size_of::<PolicyRule>(),
        size_of::<FwRule>(),
        size_of::<FwStats>(),
        size_of::<SourceKey>(),
        size_of::<FragKey>(),
        size_of::<FragEntry>(),
    )
}

pub(super) fn owner_file(router: &str) -> PathBuf {
    crate::paths::run_dir().join(format!("{router}.owner"))
}

pub(super) fn links_dir(router: &str) -> PathBuf {
    crate::paths::router_pin_dir(router).join("links")
}

/// Removes everything a router attached and pinned (its TC filters and link pins first,
/// which detaches its programs, then maps) and its owner record. Nothing of the router
/// stays in the kernel once its last file descriptor closes.
pub fn teardown(router: &str) -> Result<(), Error> {
    detach_tc_filters(router)?;
    let dir = crate::paths::router_pin_dir(router);
    for sub in [links_dir(router), dir.clone()] {
        if let Ok(entries) = std::fs::read_dir(&sub) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    remove_pin(&entry.path())?;
                }
            }
        }
    }
    for d in [links_dir(router), dir] {
        match std::fs::remove_dir(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("removing {}", d.display()), e));
            }
            _ => {}
        }
    }
    remove_pin(&owner_file(router))?;
    // The slow path's record of the rules it applied (slowpath.rs).
    remove_pin(&crate::paths::run_dir().join(format!("{router}.nft")))
}

/// Deletes the TC entry's filters from the interfaces of the namespace `router`'s pins were
/// made in (its owner record's). A namespace that is gone, or is another of the same name,
/// took the router's interfaces and filters with it.
fn detach_tc_filters(router: &str) -> Result<(), Error> {
    let Some(owner) = owner_of(router) else {
        return Ok(());
    };
    if crate::stale::namespace_gone(&owner.namespace, Some(owner.netns_inode)) {
        return Ok(());
    }
    let path = crate::paths::netns_path(&owner.namespace);
    // In a thread of its own: entering the namespace is the calling thread's for good.
    let detach = || -> Result<(), Error> {
        crate::netns::enter(&path)
            .map_err(|e| Error::io(format!("entering {}", path.display()), e))?;
        let interfaces = nix::net::if_::if_nameindex().map_err(|e| {
            Error::io(
                format!("listing the interfaces of {}", path.display()),
                e.into(),
            )
        })?;
        for iface in interfaces.iter() {
            detach_tc_filter(&iface.name().to_string_lossy())?;
        }
        Ok(())
    };
    std::thread::scope(|s| {
        s.spawn(detach).join().unwrap_or_else(|_| {
            Err(Error::io(
                format!("removing router {router}'s TC filters"),
                std::io::Error::other("the thread panicked"),
            ))
        })
    })
}

/// Routers with pins on this node.
pub fn pinned_routers() -> Vec<String> {
    std::fs::read_dir(crate::paths::pin_root())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::TableSizes;
    use crate::config::{DesiredState, ONE_ROUTER};

    fn router(extra: &str) -> crate::config::Router {
        let state = DesiredState::parse(&format!("{ONE_ROUTER}{extra}")).expect("parses");
        state.routers[0].clone()
    }

    fn sizes(extra: &str) -> TableSizes {
        TableSizes::for_router(&router(extra))
    }

    #[test]
    fn tables_follow_the_configuration() {
        let plain = sizes("");
        assert_eq!(plain.session_entries, 2 * 65_536);
        assert!(!plain.sessions_on_demand);
        assert_eq!(plain.sync_bytes, router_common::SYNC_BYTES_UNUSED);
        let on_demand = sizes("[router.nat]\nmax_sessions = 4096\npreallocate_sessions = false\n");
        assert_eq!(on_demand.session_entries, 8192);
        assert!(on_demand.sessions_on_demand);
        let ha = TableSizes::for_router(&crate::config::Router {
            ha: true,
            ..router("")
        });
        assert_eq!(ha.sync_bytes, router_common::SYNC_BYTES);
    }

    #[test]
    fn tables_serve_a_router_with_the_same_tables_and_no_larger_ring() {
        let small = TableSizes {
            session_entries: 8192,
            sessions_on_demand: false,
            sync_bytes: router_common::SYNC_BYTES_UNUSED,
            floating_ips: 1024,
        };
        let large = TableSizes {
            sync_bytes: router_common::SYNC_BYTES,
            ..small
        };
        // A router that leaves HA keeps its tables (and the larger ring); one that joins
        // HA needs a larger ring, so new tables.
        assert!(large.serves(&small));
        assert!(!small.serves(&large));
        // Records of routerds that did not size the ring had the object's, the large one.
        let old_record = TableSizes {
            sync_bytes: 0,
            ..small
        };
        assert!(old_record.serves(&large) && old_record.serves(&small));
        for other in [
            TableSizes {
                session_entries: 4096,
                ..large
            },
            TableSizes {
                sessions_on_demand: true,
                ..large
            },
            TableSizes {
                floating_ips: 64,
                ..large
            },
        ] {
            assert!(!large.serves(&other) && !other.serves(&large), "{other:?}");
        }
    }
}
