//! Stale routers: pins (and run-time files) of routers whose namespace is gone, left by a
//! routerd that was killed, or by a router whose namespace was deleted while no routerd
//! followed it. Nothing forwards through them any more (their interfaces went with the
//! namespace), yet they hold kernel memory and `routerctl` would show them as alive.
//!
//! - [`sweep`] (routerd, at start and every [`SWEEP_INTERVAL`]) removes them, one log line
//!   per router, under two rules: a router of the desired state is never removed (one that
//!   waits for its namespace may adopt its pins later); a router pinned by another routerd
//!   that runs (its desired-state file is that of a live `routerd` process) is never
//!   touched.
//! - [`is_live`] (`routerctl stats`, `ct`, `nat`) tells a router's info file of a live
//!   router from a stale one.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{config::DesiredState, datapath, paths, router::RouterInfo};

/// How often routerd looks for stale routers (`routerd --sweep-interval`).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Whether namespace `namespace` is gone: not bound under [`paths::NETNS_DIR`], or bound to
/// another namespace than the one of inode `inode` (deleted and created again).
pub fn namespace_gone(namespace: &str, inode: Option<u64>) -> bool {
    // A bound namespace is a file of nsfs (the device of every namespace file); the bare
    // file a failed unmount leaves is not.
    let nsfs = std::fs::metadata("/proc/thread-self/ns/net").map(|m| m.dev());
    match std::fs::metadata(paths::netns_path(namespace)) {
        Err(_) => true,
        Ok(meta) if nsfs.is_ok_and(|dev| dev != meta.dev()) => true,
        Ok(meta) => inode.is_some_and(|i| i != meta.ino()),
    }
}

/// Whether the router of info file `info` is alive: its namespace is there (the one its
/// pins were made in) and its maps are pinned.
pub fn is_live(info: &RouterInfo) -> bool {
    let inode = datapath::owner_of(&info.router).map(|o| o.netns_inode);
    !namespace_gone(&info.namespace, inode) && datapath::maps_pinned(&info.router)
}

/// Removes the stale routers the routerd of desired-state file `own_config` may remove
/// (see the module docs): routers not in `desired` that it pinned itself, and routers of
/// no running routerd whose namespace is gone. Returns the routers removed.
pub fn sweep(desired: &DesiredState, own_config: &Path) -> Vec<String> {
    let own = canonical(own_config);
    let mut others: Option<Vec<PathBuf>> = None;
    let mut removed = Vec::new();
    for id in datapath::pinned_routers() {
        if desired.router(&id).is_some() {
            continue;
        }
        // Pins without an owner record are a start under way (the record is written last)
        // or a start that died: which, only their maker knows.
        let Some(owner) = datapath::owner_of(&id) else {
            continue;
        };
        let ours = Path::new(&owner.config) == own;
        let why = if ours {
            "is pinned but not desired".to_string()
        } else {
            if !namespace_gone(&owner.namespace, Some(owner.netns_inode)) {
                continue;
            }
            let others = others.get_or_insert_with(|| other_daemon_configs(&own));
            if others.iter().any(|c| Path::new(&owner.config) == c) {
                continue;
            }
            format!(
                "is stale (its namespace {} is gone, no routerd runs it)",
                owner.namespace
            )
        };
        let _router = crate::router::span(&id).entered();
        tracing::info!("routerd: router {id} {why}: removing it");
        // Its slow-path rules went with its namespace; their record is removed with the pins.
        match datapath::teardown(&id) {
            Ok(()) => {
                let _ = std::fs::remove_file(paths::router_info_file(&id));
                crate::slowpath::forget(&id);
                removed.push(id);
            }
            Err(e) => tracing::error!("routerd: removing router {id}: {e}"),
        }
    }
    removed
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The desired-state files of the other `routerd` processes of this node (from their
/// command lines: `--config FILE`, `--config=FILE`, `-c FILE`, or the default), except
/// `own`.
fn other_daemon_configs(own: &Path) -> Vec<PathBuf> {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        if !std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "routerd") {
            continue;
        }
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let config = config_argument(&args).unwrap_or_else(|| paths::DEFAULT_CONFIG.into());
        // A relative path is the process's, from its working directory.
        let config = std::fs::read_link(dir.join("cwd"))
            .map(|cwd| cwd.join(&config))
            .unwrap_or_else(|_| PathBuf::from(&config));
        let config = canonical(&config);
        if config != own {
            out.push(config);
        }
    }
    out
}

/// The value of routerd's `--config`/`-c` argument in `args`.
fn config_argument(args: &[String]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--config" || a == "-c" {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_string());
        }
        if let Some(v) = a
            .strip_prefix("-c")
            .filter(|v| !v.is_empty() && !a.starts_with("--"))
        {
            return Some(v.to_string());
        }
    }
    None
}

/// The routers of `infos` that are stale (see [`is_live`]): (router, why).
pub fn stale(infos: &[RouterInfo]) -> Vec<(String, String)> {
    infos
        .iter()
        .filter(|i| !is_live(i))
        .map(|i| {
            let inode = datapath::owner_of(&i.router).map(|o| o.netns_inode);
            let why = if namespace_gone(&i.namespace, inode) {
                format!("its namespace {} is gone", i.namespace)
            } else {
                "its maps are not pinned".to_string()
            };
            (i.router.clone(), why)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::config_argument;

    #[test]
    fn the_config_argument_is_found_in_every_spelling() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_argument(&args(&["routerd", "--config", "/a.toml"])),
            Some("/a.toml".into())
        );
        assert_eq!(
            config_argument(&args(&["routerd", "--socket", "/s", "--config=/b.toml"])),
            Some("/b.toml".into())
        );
        assert_eq!(
            config_argument(&args(&["routerd", "-c", "c.toml"])),
            Some("c.toml".into())
        );
        assert_eq!(
            config_argument(&args(&["routerd", "-cd.toml"])),
            Some("d.toml".into())
        );
        assert_eq!(config_argument(&args(&["routerd", "--check"])), None);
    }
}
