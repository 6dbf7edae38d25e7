//! Every runtime path of the controller, in one place.

use std::path::PathBuf;

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Our directory under bpffs: one sub-directory per router holds its pinned maps.
pub const PIN_ROOT: &str = "/sys/fs/bpf/neutron-router";
/// Run-time state (which interfaces each router has), for `routerctl`.
pub const RUN_DIR: &str = "/run/neutron-router";
/// The API socket of routerd (newline-delimited JSON, see `docs/api.md`); its directory is
/// created 0750, the socket is 0660.
pub const API_SOCKET: &str = "/run/routerd/routerd.sock";
/// routerd's desired state when `--config` is not given (the packaged default).
pub const DEFAULT_CONFIG: &str = "/etc/routerd/routerd.toml";
/// Where network namespaces are bound, as `ip netns` does it.
pub const NETNS_DIR: &str = "/run/netns";

pub fn router_pin_dir(router: &str) -> PathBuf {
    PathBuf::from(PIN_ROOT).join(router)
}

pub fn router_info_file(router: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{router}.json"))
}

pub fn netns_path(namespace: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(namespace)
}

/// Whether bpffs is mounted at [`BPFFS`] (pins need it).
pub fn bpffs_mounted() -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    nix::sys::statfs::statfs(BPFFS).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}
