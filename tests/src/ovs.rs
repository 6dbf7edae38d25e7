//! Open vSwitch as a Neutron node has it, for the topology tests: bridges of the userspace
//! datapath (`datapath_type=netdev`; these kernels have no `openvswitch` module), whose
//! internal ports are tap devices, moved into the namespaces that use them the way
//! Neutron's OVS interface driver moves `qr-`/`qg-`/`tap` ports into theirs.
//!
//! A tap keeps working in another namespace: ovs-vswitchd reads and writes it through the
//! file descriptor it opened, which does not depend on the namespace. What OVS loses is
//! everything it asks the kernel by name (MAC, MTU, statistics: `ovs-ofctl dump-ports`
//! shows `?`), and it logs "No such device" for those requests. Ports are created under a
//! temporary name unique to the run (interface names are per namespace, and the root
//! namespace is shared with every other test) and renamed as they enter their namespace.

use std::{
    fs::File,
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::topo::ip;

/// The script Debian's `openvswitch-switch` starts OVS with (there is no systemd here).
const OVS_CTL: &str = "/usr/share/openvswitch/scripts/ovs-ctl";
/// Serializes starting OVS between test processes.
const START_LOCK: &str = "/run/router-tests-ovs-start.lock";
/// Held shared by every topology on OVS, exclusively by a test that changes OVS's global
/// configuration (see [`UserspaceTso`]).
const CONFIG_LOCK: &str = "/run/router-tests-ovs-config.lock";
/// How long one ovs-vsctl call may wait for the database or ovs-vswitchd.
const VSCTL_TIMEOUT: &str = "--timeout=20";

/// Runs `ovs-vsctl` with `args` (bounded by [`VSCTL_TIMEOUT`]); its stdout, or what it
/// said when it failed.
pub fn vsctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ovs-vsctl")
        .arg(VSCTL_TIMEOUT)
        .args(args)
        .output()
        .map_err(|e| {
            format!("running ovs-vsctl (is openvswitch-switch installed? `cargo xtask setup`): {e}")
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ovs-vsctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether ovsdb-server (`ovs-vsctl show`) and ovs-vswitchd (`ovs-appctl version`) answer.
fn answers() -> bool {
    let ok = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    ok("ovs-vsctl", &["--timeout=3", "show"])
        && ok(
            "ovs-appctl",
            &["--timeout=3", "-t", "ovs-vswitchd", "version"],
        )
}

/// Starts Open vSwitch (`ovs-ctl start`) unless it answers already. Safe to call from any
/// number of tests at once, in one process (once) or several (a lock file serializes the
/// start; whoever comes second finds OVS answering). Panics with ovs-ctl's output if OVS
/// cannot be started.
pub fn ensure_running() {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        start_once()?;
        remove_orphans();
        Ok(())
    });
    if let Err(e) = started {
        panic!("{e}");
    }
}

/// Deletes the bridges of test processes that are gone (killed before their topology's
/// drop could run): `bi-`/`bx-` bridges whose name carries the id of a process that no
/// longer exists (`bi-<prefix><pid>n<counter>`, see [`crate::topo::unique`]).
fn remove_orphans() {
    let Ok(bridges) = vsctl(&["list-br"]) else {
        return;
    };
    for bridge in bridges.lines() {
        let Some(tag) = bridge
            .strip_prefix("bi-")
            .or_else(|| bridge.strip_prefix("bx-"))
        else {
            continue;
        };
        let pid: String = tag
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let orphan = !pid.is_empty()
            && tag[tag.find(&pid).unwrap_or(0) + pid.len()..].starts_with('n')
            && !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if orphan {
            eprintln!("deleting OVS bridge {bridge}: its test process {pid} is gone");
            let _ = vsctl(&["--if-exists", "del-br", bridge]);
        }
    }
}

/// `path` opened and locked with `flock(operation)` (`LOCK_SH` or `LOCK_EX`), waiting at
/// most `timeout`; the lock goes with the file. flock locks belong to the open file, so
/// they exclude threads of one process as they exclude processes.
fn flock(path: &str, operation: libc::c_int, timeout: Duration) -> Result<File, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {path}: {e}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let deadline = Instant::now() + timeout;
    // SAFETY: flock on a file descriptor owned by `file`.
    while unsafe { libc::flock(fd, operation | libc::LOCK_NB) } != 0 {
        if Instant::now() > deadline {
            return Err(format!("{path} stayed locked for {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(file)
}

thread_local! {
    /// This thread holds [`CONFIG_LOCK`] exclusively (a [`UserspaceTso`]): the topologies it
    /// builds meanwhile need no shared lock (which would wait for itself).
    static CONFIG_OWNER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// OVS's global configuration as it is, held by a topology on OVS for its lifetime: a test
/// that changes it waits until no topology uses OVS.
pub struct SharedConfig {
    /// The lock goes with the file.
    _lock: Option<File>,
}

/// Takes [`CONFIG_LOCK`] shared (waiting up to two minutes for a test that changes OVS's
/// configuration), or nothing if this thread holds it exclusively.
pub fn shared_config() -> SharedConfig {
    let lock = (!CONFIG_OWNER.get()).then(|| {
        flock(CONFIG_LOCK, libc::LOCK_SH, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"))
    });
    SharedConfig { _lock: lock }
}

/// OVS with userspace TSO (`other_config:userspace-tso-enable=true`, ovs-vswitchd
/// restarted): its taps then carry virtio-net headers. Holds [`CONFIG_LOCK`] exclusively,
/// so no other topology runs on OVS meanwhile; dropping it removes the key and restarts
/// ovs-vswitchd again, whatever happened in between.
pub struct UserspaceTso {
    _lock: File,
}

impl UserspaceTso {
    pub fn enable() -> Self {
        ensure_running();
        let lock = flock(CONFIG_LOCK, libc::LOCK_EX, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        CONFIG_OWNER.set(true);
        let tso = Self { _lock: lock };
        vsctl(&[
            "set",
            "open_vswitch",
            ".",
            "other_config:userspace-tso-enable=true",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        restart().unwrap_or_else(|e| panic!("{e}"));
        tso
    }
}

impl Drop for UserspaceTso {
    fn drop(&mut self) {
        CONFIG_OWNER.set(false);
        let undone = vsctl(&[
            "remove",
            "open_vswitch",
            ".",
            "other_config",
            "userspace-tso-enable",
        ])
        .and_then(|_| restart());
        if let Err(e) = undone {
            eprintln!("turning userspace TSO off again: {e}");
        }
    }
}

/// Restarts OVS (`ovs-ctl restart`) and waits until it answers again.
fn restart() -> Result<(), String> {
    run_ovs_ctl("restart")
}

fn start_once() -> Result<(), String> {
    if answers() {
        return Ok(());
    }
    let _lock = flock(START_LOCK, libc::LOCK_EX, Duration::from_secs(60))?;
    if answers() {
        return Ok(());
    }
    run_ovs_ctl("start")
}

/// `ovs-ctl COMMAND`, then waits until OVS answers (20 s at most).
fn run_ovs_ctl(command: &str) -> Result<(), String> {
    let out = Command::new(OVS_CTL).arg(command).output().map_err(|e| {
        format!("running {OVS_CTL} (`cargo xtask setup` installs openvswitch-switch): {e}")
    })?;
    let said = || {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    if !out.status.success() {
        return Err(format!("{OVS_CTL} {command} failed:\n{}", said()));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !answers() {
        if Instant::now() > deadline {
            return Err(format!(
                "OVS did not answer 20 s after {OVS_CTL} {command}:\n{}",
                said()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A bridge of the userspace datapath, deleted on drop (with its ports, wherever their
/// taps are: the taps go with the file descriptors ovs-vswitchd closes).
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    /// Creates bridge `name` (at most 15 characters: it is an interface too) with
    /// `datapath_type=netdev`, starting OVS first if needed.
    pub fn new(name: &str) -> Self {
        assert!(name.len() <= 15, "bridge name {name} is longer than 15");
        ensure_running();
        let bridge = Self {
            name: name.to_string(),
        };
        // Owned before it exists: a failure halfway still deletes what was made.
        vsctl(&[
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            "datapath_type=netdev",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        bridge
    }

    /// An internal port of this bridge (a tap device) with VLAN `tag` (an access port;
    /// `None`: untagged), moved into namespace `ns` as `dev`. Returns the port's name in
    /// OVS (unique to the run; the device in `ns` is `dev`).
    pub fn internal_port(&self, tag: Option<u16>, ns: &str, dev: &str) -> String {
        let port = temporary_name();
        let tag = tag.map(|t| format!("tag={t}"));
        let mut args = vec!["add-port", &self.name, &port];
        args.extend(tag.as_deref());
        args.extend(["--", "set", "interface", &port, "type=internal"]);
        vsctl(&args).unwrap_or_else(|e| panic!("{e}"));
        // ovs-vsctl returns once ovs-vswitchd has created the tap.
        ip(&["link", "set", "dev", &port, "netns", ns, "name", dev]);
        port
    }

    /// The VLAN tag of `port`, as OVS's database has it (`None`: untagged).
    pub fn tag_of(port: &str) -> Option<u16> {
        let out = vsctl(&["get", "port", port, "tag"]).unwrap_or_else(|e| panic!("{e}"));
        out.trim().parse().ok()
    }

    /// A VM plugged the hybrid way: a veth pair, `dev` in namespace `ns`, its peer (named
    /// as the returned port, unique to the run) a port of this bridge with VLAN `tag`.
    /// ovs-vswitchd reads such a port through a packet socket and forwards the partial
    /// checksum a sender with tx checksum offload leaves as it is (OVS 3.1 without
    /// userspace TSO), which no receiver accepts: `dev` sends with tx checksum offload off,
    /// as a VM's virtio NIC does when its host cannot offload. The pair goes with `ns`.
    pub fn veth_port(&self, tag: Option<u16>, ns: &str, dev: &str) -> String {
        let port = temporary_name();
        ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", dev, "netns", ns,
        ]);
        let tag = tag.map(|t| format!("tag={t}"));
        let mut args = vec!["add-port", &self.name, &port];
        args.extend(tag.as_deref());
        vsctl(&args).unwrap_or_else(|e| panic!("{e}"));
        ip(&["link", "set", &port, "up"]);
        crate::topo::run(
            "ip",
            &["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"],
        );
        port
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Err(e) = vsctl(&["--if-exists", "del-br", &self.name]) {
            eprintln!("deleting OVS bridge {}: {e}", self.name);
        }
    }
}

/// A port name no other test run uses at the same time: `ov<pid>p<counter>`.
fn temporary_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "ov{}p{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    assert!(name.len() <= 15, "port name {name} is longer than 15");
    name
}
