//! The real `routerd` binary as a child process. Dropping it stops the daemon (SIGTERM) and
//! removes the fast paths it left pinned (`routerd --teardown`), so nothing outlives a test.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::traffic::wait_for;

pub struct Routerd {
    child: Option<Child>,
    pub router_id: String,
    log: PathBuf,
    /// The API socket of this routerd (`--socket`): one per instance, so that several
    /// can run side by side (the default path admits one routerd per node).
    pub socket: PathBuf,
    config: PathBuf,
}

/// The binary `cargo xtask test` built (ROUTERD_BIN), or the debug build next to the tests.
pub fn routerd_path() -> PathBuf {
    std::env::var_os("ROUTERD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/routerd"))
}

impl Routerd {
    /// Starts routerd on `config` and waits until router `router_id` is attached.
    pub fn start(config: &Path, router_id: &str) -> Self {
        let socket = std::env::temp_dir().join(format!("routerd-{router_id}.sock"));
        Self::start_with_socket(config, router_id, &socket)
    }

    /// As [`Routerd::start`], with the API socket at `socket`.
    pub fn start_with_socket(config: &Path, router_id: &str, socket: &Path) -> Self {
        Self::spawn(config, router_id, socket, &[], Duration::from_secs(20))
    }

    /// As [`Routerd::start`], waiting up to `timeout` for `router_id` (a node of many
    /// routers takes longer than one).
    pub fn start_waiting(config: &Path, router_id: &str, timeout: Duration) -> Self {
        Self::start_waiting_with_args(config, router_id, timeout, &[])
    }

    /// As [`Routerd::start_waiting`], with further arguments for routerd.
    pub fn start_waiting_with_args(
        config: &Path,
        router_id: &str,
        timeout: Duration,
        args: &[&str],
    ) -> Self {
        let socket = std::env::temp_dir().join(format!("routerd-{router_id}.sock"));
        Self::spawn(config, router_id, &socket, args, timeout)
    }

    /// As [`Routerd::start`], with further arguments for routerd (`--metrics ADDR:PORT`).
    pub fn start_with_args(config: &Path, router_id: &str, args: &[&str]) -> Self {
        let socket = std::env::temp_dir().join(format!("routerd-{router_id}.sock"));
        Self::spawn(config, router_id, &socket, args, Duration::from_secs(20))
    }

    /// Starts routerd on `config` without waiting for any router (one whose start fails
    /// waits, and the test watches it); returns once the API socket is there.
    pub fn start_unattached(config: &Path, router_id: &str) -> Self {
        let socket = std::env::temp_dir().join(format!("routerd-{router_id}.sock"));
        let _ = std::fs::remove_file(&socket);
        let me = Self::spawn(config, router_id, &socket, &[], Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "routerd did not serve its API in time:\n{}",
                me.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// Starts routerd on `config` with the API socket at `socket` and returns at once,
    /// without waiting for any router (`name` names its log).
    pub fn start_unready(config: &Path, name: &str, socket: &Path) -> Self {
        Self::spawn(config, name, socket, &[], Duration::ZERO)
    }

    fn spawn(
        config: &Path,
        router_id: &str,
        socket: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Self {
        let bin = routerd_path();
        // routerd writes it once the router forwards (and leaves it when it exits, for the
        // next routerd): a fresh one is the sign of this start.
        let _ = std::fs::remove_file(router_user::paths::router_info_file(router_id));
        let log = std::env::temp_dir().join(format!("routerd-{router_id}.log"));
        let log_file = std::fs::File::create(&log).expect("routerd log file");
        let child = Command::new(&bin)
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e} (build it with `cargo xtask test`)",
                    bin.display()
                )
            });
        let mut me = Self {
            child: Some(child),
            router_id: router_id.to_string(),
            log,
            socket: socket.to_path_buf(),
            config: config.to_path_buf(),
        };
        let info = router_user::paths::router_info_file(router_id);
        let deadline = Instant::now() + timeout;
        while !timeout.is_zero() && !info.exists() {
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "routerd exited with {status} during setup:\n{}",
                    me.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "routerd did not attach in time:\n{}",
                me.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Every router of the start tried (routerd refuses edits until then).
        while !timeout.is_zero() && !me.log_text().contains(" router(s) started in ") {
            assert!(
                Instant::now() < deadline,
                "routerd did not finish its start in time:\n{}",
                me.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// Asks routerd to re-read its configuration (SIGHUP).
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        }
    }

    /// Whether the daemon has exited (it never should on its own).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// The process id, for signalling from another thread.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: the daemon dies at once, leaving its fast paths running and pinned.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Removes every fast path this routerd's desired-state file pinned.
    pub fn teardown(&self) {
        for id in router_user::datapath::pinned_routers_of(&self.config) {
            let _ = router_user::datapath::teardown(&id);
            let _ = std::fs::remove_file(router_user::paths::router_info_file(&id));
            router_user::slowpath::forget(&id);
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status's success. The fast
    /// paths stay (see `teardown`).
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut ok = false;
        wait_for(
            "routerd to exit after SIGTERM",
            Duration::from_secs(10),
            || match child.try_wait() {
                Ok(Some(status)) => {
                    ok = status.success();
                    true
                }
                _ => false,
            },
        );
        ok
    }
}

impl Drop for Routerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.teardown();
        let _ = std::fs::remove_file(&self.log);
        // routerd removes it on a clean exit; not after a kill.
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Whether running router `router_id` has the neighbour `addr` on interface `ifname` in its
/// pinned neighbour map, i.e. the fast path can forward to it without the kernel.
pub fn fast_path_has_neighbor(router_id: &str, ifname: &str, addr: [u8; 4]) -> bool {
    use router_user::maps::{Pinned, Rooms as _};
    let Ok(mut maps) = Pinned::open(router_id) else {
        return false;
    };
    let Some(ifindex) = router_user::router::running_routers()
        .ok()
        .and_then(|routers| routers.into_iter().find(|r| r.router == router_id))
        .and_then(|info| info.interfaces.into_iter().find(|i| i.name == ifname))
        .map(|i| i.ifindex)
    else {
        return false;
    };
    let key = router_common::NeighborKey { ifindex, addr };
    maps.routes().neighbor(&key).is_ok_and(|n| n.is_some())
}

/// Names of the programs loaded in the kernel that use router `router_id`'s pinned
/// `NAT_CONFIG` map (every entry point of the router does), sorted.
pub fn programs_of(router_id: &str) -> Vec<String> {
    let pin =
        router_user::paths::router_pin_dir(router_id).join(router_common::map_names::NAT_CONFIG);
    let map = aya::maps::MapData::from_pin(&pin)
        .unwrap_or_else(|e| panic!("opening {}: {e}", pin.display()));
    let id = map.info().expect("map info").id();
    let mut names: Vec<String> = aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.map_ids().ok().flatten().unwrap_or_default().contains(&id))
        .filter_map(|p| p.name_as_str().map(String::from))
        .collect();
    names.sort();
    names
}
