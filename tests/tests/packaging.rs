//! What is shipped: `--version` of both binaries, routerd's readiness for systemd
//! (`Type=notify`), and the Debian package `cargo xtask package` builds, unpacked into a
//! scratch root.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use router_tests::{require_root, routerd::routerd_path, topo::unique};

fn binaries() -> [PathBuf; 2] {
    let routerd = routerd_path();
    let routerctl = routerd.with_file_name("routerctl");
    [routerd, routerctl]
}

/// `<name> <version> (git <revision>, ebpf <digest>)`, checked part by part.
fn check_version_line(bin: &Path, name: &str) {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    assert!(out.status.success(), "{} --version: {out:?}", bin.display());
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let rest = line
        .strip_prefix(&format!("{name} {} (git ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{line:?}"));
    let (revision, rest) = rest
        .split_once(", ebpf ")
        .unwrap_or_else(|| panic!("{line:?}"));
    let commit = revision.strip_suffix("-dirty").unwrap_or(revision);
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "revision {revision:?} in {line:?}"
    );
    assert_eq!(
        rest.strip_suffix(')'),
        Some(router_user::datapath::object_digest().as_str()),
        "{line:?}"
    );
}

#[test]
fn version_names_package_revision_and_ebpf_object() {
    let [routerd, routerctl] = binaries();
    check_version_line(&routerd, "routerd");
    check_version_line(&routerctl, "routerctl");
}

/// routerd started with `NOTIFY_SOCKET` set to a socket of the test's, on a file of its own.
struct NotifiedRouterd {
    dir: PathBuf,
    receiver: UnixDatagram,
    child: std::process::Child,
    log: PathBuf,
    router_id: String,
}

impl NotifiedRouterd {
    /// Starts `prefix... routerd --config <dir>/routerd.toml` with `config` in that file.
    fn start(tag: &str, config: &str, prefix: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(tag);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let notify_path = dir.join("notify.sock");
        let receiver = UnixDatagram::bind(&notify_path).expect("binding the notify socket");
        receiver
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let file = dir.join("routerd.toml");
        std::fs::write(&file, config).expect("writing the desired state");
        let log = dir.join("routerd.log");
        let routerd = routerd_path();
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&routerd);
                c
            }
            None => Command::new(&routerd),
        };
        let child = command
            .arg("--config")
            .arg(&file)
            .arg("--socket")
            .arg(dir.join("api.sock"))
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting routerd");
        Self {
            dir,
            receiver,
            child,
            log,
            router_id: tag.to_string(),
        }
    }

    /// The next datagram on the notify socket (30 s at most).
    fn next_message(&self) -> String {
        let mut buf = [0u8; 256];
        match self.receiver.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!("notify socket: {e}:\n{}", self.log_text()),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM: routerd says STOPPING=1 and exits cleanly.
    fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(self.next_message(), "STOPPING=1");
        let status = self.child.wait().expect("waiting for routerd");
        assert!(status.success(), "{status}:\n{}", self.log_text());
    }
}

impl Drop for NotifiedRouterd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = router_user::datapath::teardown(&self.router_id);
        let _ = std::fs::remove_file(router_user::paths::router_info_file(&self.router_id));
        router_user::slowpath::forget(&self.router_id);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// routerd, given `NOTIFY_SOCKET`, sends `READY=1` once its routers have started or wait
/// (here one router waits for a namespace that does not exist), and `STOPPING=1` on SIGTERM.
#[test]
fn routerd_tells_notify_socket_when_ready() {
    require_root();
    let tag = unique("notify");
    let config = format!(
        "[[router]]\nid = \"{tag}\"\nnamespace = \"{tag}-absent\"\nmode = \"tc\"\n\n\
         [[router.interface]]\nname = \"qr-a\"\naddress = \"10.0.1.1/24\"\n"
    );
    let mut routerd = NotifiedRouterd::start(&tag, &config, &[]);
    let ready = routerd.next_message();
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains("0 router(s) running, 1 waiting"),
        "{ready:?}"
    );
    routerd.stop();
    // The version line at start, as `--version` prints it.
    let log_text = routerd.log_text();
    assert!(
        log_text.contains(&format!("routerd {} (git ", env!("CARGO_PKG_VERSION")))
            && log_text.contains(&router_user::datapath::object_digest()),
        "{log_text}"
    );
}

/// The unit's `CapabilityBoundingSet`, as setpriv's `--bounding-set` argument
/// (`-all,+bpf,+net_admin,...`).
fn unit_bounding_set() -> String {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/routerd.service"),
    )
    .expect("packaging/routerd.service");
    let caps: Vec<String> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))
        .flat_map(|v| v.split_whitespace())
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(!caps.is_empty(), "no CapabilityBoundingSet in the unit");
    format!("-all,{}", caps.join(","))
}

/// routerd confined to the unit's capabilities (as systemd confines it) starts a real XDP
/// router, applies an API edit (maps, nftables) and exits cleanly: the set is enough.
#[test]
fn routerd_runs_with_the_units_capabilities_only() {
    require_root();
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("setpriv (util-linux) not installed: skipped");
        return;
    }
    let tag = unique("caps");
    let mut namespaces = router_tests::topo::Namespaces::default();
    let router_ns = namespaces.add(&format!("{tag}-r"));
    let outside = namespaces.add(&format!("{tag}-o"));
    router_tests::topo::veth("qg-caps", &router_ns, "ext", &outside);
    router_tests::topo::veth("qr-caps", &router_ns, "vm", &outside);
    let config = format!(
        "[[router]]\nid = \"{tag}\"\nnamespace = \"{router_ns}\"\nmode = \"xdp\"\n\n\
         [router.gateway]\ninterface = \"qg-caps\"\naddress = \"198.18.0.2/24\"\n\
         nexthop = \"198.18.0.1\"\nsnat = true\n\n\
         [[router.interface]]\nname = \"qr-caps\"\naddress = \"10.0.1.1/24\"\n"
    );
    let bounding = unit_bounding_set();
    let mut routerd = NotifiedRouterd::start(
        &tag,
        &config,
        &["setpriv", "--bounding-set", &bounding, "--inh-caps", "-all"],
    );
    let ready = routerd.next_message();
    assert!(
        ready.contains("1 router(s) running, 0 waiting"),
        "{ready:?}:\n{}",
        routerd.log_text()
    );
    let socket = routerd.dir.join("api.sock");
    let ctl = routerd_path().with_file_name("routerctl");
    run(Command::new(&ctl).arg("--socket").arg(&socket).args([
        "fip",
        "create",
        "--router",
        &tag,
        "--address",
        "198.18.0.10",
        "--fixed",
        "10.0.1.5",
    ]));
    routerd.stop();
    let log_text = routerd.log_text();
    assert!(
        !log_text.contains("ERROR") && !log_text.contains("WARN"),
        "{log_text}"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo xtask package` from the binaries the tests use (no release build), unpacked with
/// `dpkg-deb -x`: every file in its place, the binaries run from there, the conffile and
/// the dependencies declared, and the unit is one systemd accepts.
#[test]
fn deb_installs_binaries_unit_config_completions_and_man_pages() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch = std::env::temp_dir().join(unique("deb"));
    let bin_dir = routerd_path()
        .parent()
        .expect("routerd's directory")
        .to_path_buf();
    // xtask in a target directory of its own: the outer `cargo test` may hold the lock of
    // the workspace's.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let deb = run(Command::new(cargo)
        .current_dir(&workspace)
        .args(["run", "-q", "-p", "xtask", "--"])
        .arg("package")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(scratch.join("out"))
        .env("CARGO_TARGET_DIR", workspace.join("target/xtask-for-tests")));
    // The last line (dpkg-deb says what it builds before).
    let deb = PathBuf::from(deb.lines().last().unwrap_or_default().trim());
    let root = scratch.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));

    for file in [
        "usr/sbin/routerd",
        "usr/bin/routerctl",
        "lib/systemd/system/routerd.service",
        "etc/routerd/routerd.toml",
        "usr/share/bash-completion/completions/routerd",
        "usr/share/bash-completion/completions/routerctl",
        "usr/share/zsh/vendor-completions/_routerd",
        "usr/share/zsh/vendor-completions/_routerctl",
        "usr/share/fish/vendor_completions.d/routerd.fish",
        "usr/share/fish/vendor_completions.d/routerctl.fish",
        "usr/share/man/man1/routerd.1.gz",
        "usr/share/man/man1/routerctl.1.gz",
    ] {
        assert!(
            root.join(file).is_file(),
            "{file} missing from {}",
            deb.display()
        );
    }
    assert!(root.join("var/lib/routerd").is_dir());
    // The completions know the real subcommands.
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/routerctl"))
            .expect("routerctl's bash completion");
    assert!(bash.contains("routerctl") && bash.contains("fip") && bash.contains("trace"));
    let man = run(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc {}",
        root.join("usr/share/man/man1/routerd.1.gz").display()
    )));
    assert!(
        man.contains(".TH routerd 1") && man.contains("\\-\\-config"),
        "{man}"
    );

    check_version_line(&root.join("usr/sbin/routerd"), "routerd");
    check_version_line(&root.join("usr/bin/routerctl"), "routerctl");
    // The default configuration is valid and runs no router.
    let check = run(Command::new(root.join("usr/sbin/routerd"))
        .arg("--check")
        .arg("--config")
        .arg(root.join("etc/routerd/routerd.toml")));
    assert!(check.contains("valid, 0 router(s)"), "{check}");

    let control = run(Command::new("dpkg-deb").arg("-f").arg(&deb));
    for field in [
        "Package: routerd",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Depends: libc6, iproute2, libnftables1, conntrack",
    ] {
        assert!(control.contains(field), "{field} not in\n{control}");
    }
    let control_dir = scratch.join("control");
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&control_dir));
    let conffiles = std::fs::read_to_string(control_dir.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles, "/etc/routerd/routerd.toml\n");

    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/routerd.service")).expect("the unit");
    check_unit_keys(&unit);
    verify_unit(&unit, &root, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The keys the service depends on, read as systemd reads them (`Key=value` lines).
fn check_unit_keys(unit: &str) {
    let value = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    assert_eq!(value("Type"), ["notify"]);
    assert_eq!(value("KillMode"), ["process"]);
    assert_eq!(value("Restart"), ["on-failure"]);
    assert_eq!(
        value("ExecStart"),
        ["/usr/sbin/routerd --config /etc/routerd/routerd.toml"]
    );
    let caps: Vec<&str> = value("CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"] {
        assert!(caps.contains(&cap), "{cap} not in {caps:?}");
    }
    assert_eq!(value("StateDirectory"), ["routerd"]);
}

/// `systemd-analyze verify` when it is installed: no warning at all. The unit names
/// `/usr/sbin/routerd`, which this machine need not have: the copy verified names the
/// scratch root's binary instead (verify checks that the commands are executable).
fn verify_unit(unit: &str, root: &Path, scratch: &Path) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: the unit's keys were checked by parsing only");
        return;
    }
    let dir = scratch.join("verify");
    std::fs::create_dir_all(&dir).expect("verify directory");
    let copy = dir.join("routerd.service");
    let routerd = root.join("usr/sbin/routerd");
    std::fs::write(
        &copy,
        unit.replace("/usr/sbin/routerd", &routerd.to_string_lossy()),
    )
    .expect("writing the unit's copy");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("running systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
}
