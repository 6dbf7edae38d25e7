//! Every runtime path of the controller, in one place.
//!
//! The pin root and the run directory have defaults ([`DEFAULT_PIN_ROOT`], [`DEFAULT_RUN_DIR`])
//! and can be set once per process, before the first path is asked for: by
//! [`set_roots`] (routerd's `--pin-root` and `--run-dir`) or by the environment
//! (`ROUTERD_PIN_ROOT`, `ROUTERD_RUN_DIR`, read by routerd and routerctl alike). So several
//! routerd can run side by side on one machine, each with its own pins and run-time files,
//! and a routerctl given the same variables reads the same ones.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Our directory under bpffs by default: one sub-directory per router holds its pinned maps.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/neutron-router";
/// Run-time state by default (which interfaces each router has), for `routerctl`.
pub const DEFAULT_RUN_DIR: &str = "/run/neutron-router";
/// The environment variable that sets the pin root (it must be under [`BPFFS`]).
pub const PIN_ROOT_ENV: &str = "ROUTERD_PIN_ROOT";
/// The environment variable that sets the run directory.
pub const RUN_DIR_ENV: &str = "ROUTERD_RUN_DIR";
/// The environment variable that sets the API socket (routerd's `--socket`, routerctl's).
pub const API_SOCKET_ENV: &str = "ROUTERD_SOCKET";
/// The API socket of routerd (newline-delimited JSON, see `docs/api.md`); its directory is
/// created 0750, the socket is 0660.
pub const API_SOCKET: &str = "/run/routerd/routerd.sock";
/// routerd's desired state when `--config` is not given (the packaged default).
pub const DEFAULT_CONFIG: &str = "/etc/routerd/routerd.toml";
/// Where routerd keeps what must outlive a restart (with `--etcd`: the last desired state it
/// applied), by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/routerd";
/// The environment variable that sets the state directory.
pub const STATE_DIR_ENV: &str = "ROUTERD_STATE_DIR";
/// Where network namespaces are bound, as `ip netns` does it.
pub const NETNS_DIR: &str = "/run/netns";

static PIN_ROOT: OnceLock<PathBuf> = OnceLock::new();
static RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets the pin root and the run directory of this process. Only the first setting counts,
/// and only before either path was used: returns false if a root was already fixed (to
/// another value), so a caller cannot believe it moved paths other code already uses.
pub fn set_roots(pin_root: &Path, run_dir: &Path) -> bool {
    let pin_set = PIN_ROOT.set(pin_root.to_path_buf()).is_ok()
        || PIN_ROOT.get().is_some_and(|p| p == pin_root);
    let run_set =
        RUN_DIR.set(run_dir.to_path_buf()).is_ok() || RUN_DIR.get().is_some_and(|p| p == run_dir);
    pin_set && run_set
}

/// The value of `variable`, or `default` when it is unset or empty.
fn from_env(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// The directory under bpffs holding one sub-directory of pins per router.
pub fn pin_root() -> &'static Path {
    PIN_ROOT.get_or_init(|| from_env(PIN_ROOT_ENV, DEFAULT_PIN_ROOT))
}

/// The run-time state directory (router info files, owners, slow-path rule files).
pub fn run_dir() -> &'static Path {
    RUN_DIR.get_or_init(|| from_env(RUN_DIR_ENV, DEFAULT_RUN_DIR))
}

pub fn router_pin_dir(router: &str) -> PathBuf {
    pin_root().join(router)
}

pub fn router_info_file(router: &str) -> PathBuf {
    run_dir().join(format!("{router}.json"))
}

/// The namespace a router's `namespace` names on this node: `/run/netns/<namespace>`, or
/// with `ROUTERD_NETNS_PREFIX` set (several nodes simulated on one machine, each its own
/// routerd), `/run/netns/<prefix><namespace>`.
pub fn netns_path(namespace: &str) -> PathBuf {
    let prefix = NETNS_PREFIX.get_or_init(|| {
        std::env::var(NETNS_PREFIX_ENV)
            .ok()
            .filter(|p| !p.contains('/'))
            .unwrap_or_default()
    });
    PathBuf::from(NETNS_DIR).join(format!("{prefix}{namespace}"))
}

/// A namespace that is not a router's, by its exact name: `/run/netns/<name>`.
pub fn netns_path_exact(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// The environment variable that prefixes every router namespace's name on this node
/// (see [`netns_path`]).
pub const NETNS_PREFIX_ENV: &str = "ROUTERD_NETNS_PREFIX";
static NETNS_PREFIX: OnceLock<String> = OnceLock::new();

/// Whether bpffs is mounted at [`BPFFS`] (pins need it).
pub fn bpffs_mounted() -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    nix::sys::statfs::statfs(BPFFS).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}
