//! `cargo xtask setup | test | demo | build | package | bench | fuzz`: the project's drivers.
//!
//! `setup` installs what a fresh machine lacks, idempotently and quickly when nothing is
//! missing; `test` and `demo` run it first.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod package;

/// The dated nightly that builds the eBPF object (and runs the fuzz targets); its LLVM must
/// match bpf-linker's. Named once, in `ebpf-toolchain` at the workspace root, which
/// router-user's build.rs reads too (it hands it to aya-build).
const NIGHTLY: &str = include_str!("../../ebpf-toolchain").trim_ascii();
const NIGHTLY_LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// cargo-fuzz, which runs the fuzz targets in `fuzz/` (with the nightly: libFuzzer and
/// sanitizers need `-Z` flags).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The fuzz targets (`fuzz/fuzz_targets/`), each with a seed corpus in `fuzz/corpus/<target>/`.
const FUZZ_TARGETS: &[&str] = &["parse_differential", "rewrite_checksums"];
/// Seconds per fuzz target in `cargo xtask test`; `cargo xtask fuzz` defaults to
/// `LONG_FUZZ_SECONDS`.
const SHORT_FUZZ_SECONDS: u64 = 20;
const LONG_FUZZ_SECONDS: u64 = 900;
/// Debian packages the build, the tests and the demo use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "iputils-ping",
    "ethtool",
    "iptables",
    "nftables",
    "conntrack",
    "iperf3",
    "libc6-dev",
    // libFuzzer (libfuzzer-sys) is C++.
    "g++",
    // The cluster's store (`etcd`, `etcdctl`) for the etcd tests and demo, and protoc, which
    // the etcd-client crate's build runs on etcd's protocol files, with the well-known
    // types they import (google/protobuf/*.proto, which Debian ships in libprotobuf-dev).
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    // The topology tests on Open vSwitch (tests/tests/ovs.rs) start it themselves with
    // ovs-ctl and its userspace datapath: nothing here needs systemd or a kernel module.
    "openvswitch-switch",
    // The etcd security test makes its CA and certificates with the openssl command line.
    "openssl",
];

#[derive(Parser)]
#[command(about = "build, setup, test and demo drivers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks (toolchain parts, packages, bpf-linker, bpffs).
    Setup,
    /// Build the eBPF object, routerd and routerctl (release).
    Build,
    /// Build the release binaries and a Debian package of them (routerd, routerctl, the
    /// systemd unit, a default configuration, completions, man pages) with dpkg-deb.
    Package {
        /// Package the binaries in this directory instead of building release ones
        /// (the tests package the debug binaries they already have).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Where to write the .deb (default: target/debian).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run every test: unit tests, packet tests, topology tests, then a short run of each
    /// fuzz target (left out when a test filter is given).
    Test {
        /// Extra arguments for the test binaries (a filter, --nocapture, ...).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Fuzz the fast path's parsing and rewrite (host build, libFuzzer) for longer: each
    /// target in turn. Crashes are left in fuzz/artifacts/<target>/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = LONG_FUZZ_SECONDS)]
        seconds: u64,
        /// Only this target (default: all).
        #[arg(long)]
        target: Option<String>,
    },
    /// Build the reference topology (an external network, one internal subnet), run routerd on it, send traffic, print the counters.
    /// With `--nodes N` (2 to 8): a real etcd and N routerd nodes, a router placed on each,
    /// a change written to etcd reaching its node, a router moved (docs/etcd.md).
    Demo {
        /// How many routerd nodes follow one desired state in etcd (1: the one-node demo).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// Run the benchmarks (fast path and Neutron iptables path side by side) and write
    /// docs/benchmarks.md, docs/benchmarks.json and the plots; with `--profile`, profile them
    /// with perf instead and write docs/profile.md.
    Bench {
        /// Extra arguments for routerbench (`--quick`, `--only rate,scale`, `--out DIR`,
        /// `--profile`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// One routerd with many routers (1,000 by default): time to start them, memory,
    /// adding and removing one under traffic, a restart under traffic; writes
    /// docs/scale.md and docs/scale.json.
    Scale {
        /// Extra arguments for routerscale (`--routers N`, `--mode tc`, `--max-sessions N`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            build_release()
        }
        Cmd::Package { bin_dir, out } => {
            let bin_dir = match bin_dir {
                Some(dir) => dir,
                None => {
                    build_release()?;
                    workspace().join("target/release")
                }
            };
            let deb = package::build(
                &workspace(),
                &bin_dir,
                &out.unwrap_or_else(|| workspace().join("target/debian")),
            )?;
            println!("{}", deb.canonicalize().unwrap_or(deb).display());
            Ok(())
        }
        Cmd::Test { args } => {
            setup()?;
            test(&args)
        }
        Cmd::Demo { nodes } => {
            setup()?;
            build_release()?;
            demo(nodes)
        }
        Cmd::Bench { args } => {
            setup()?;
            build_release()?;
            bench(&args)
        }
        Cmd::Scale { args } => {
            setup()?;
            build_release()?;
            release_bin("routerscale", &args)
        }
        Cmd::Fuzz { seconds, target } => {
            setup()?;
            let targets: Vec<&str> = match &target {
                Some(t) if FUZZ_TARGETS.contains(&t.as_str()) => vec![t.as_str()],
                Some(t) => bail!("no fuzz target {t}; there are {FUZZ_TARGETS:?}"),
                None => FUZZ_TARGETS.to_vec(),
            };
            for target in targets {
                fuzz(target, seconds)?;
            }
            Ok(())
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(what: &str) {
    eprintln!("setup: {what}");
}

fn setup() -> Result<()> {
    let start = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("setup installs packages and mounts bpffs: run as root");
    }

    // 1. The pinned nightly with rust-src (for -Z build-std=core). `rustup run` must not
    // install it by itself (rustup may be set to): the install below says what it does.
    let version = output(
        Command::new("rustup")
            .args(["run", NIGHTLY, "rustc", "-vV"])
            .env("RUSTUP_AUTO_INSTALL", "0"),
    );
    let version = match version {
        Some(version) => version,
        None => {
            step(&format!("installing the {NIGHTLY} toolchain with rust-src"));
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--component",
                "rust-src",
                "--profile",
                "minimal",
            ]))?;
            output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))
                .with_context(|| format!("running the {NIGHTLY} toolchain just installed"))?
        }
    };
    if !version.contains(&format!("LLVM version: {NIGHTLY_LLVM_MAJOR}.")) {
        bail!(
            "the `{NIGHTLY}` toolchain must use LLVM {NIGHTLY_LLVM_MAJOR} (bpf-linker is built against it); it says:\n{version}"
        );
    }
    let sysroot =
        output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))
            .context("asking the nightly for its sysroot")?;
    let rust_src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !rust_src.exists() {
        step(&format!("adding rust-src to {NIGHTLY}"));
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }

    // 2. Debian packages.
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        step(&format!("installing {}", missing.join(" ")));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    // 3. bpf-linker built against LLVM 22.
    let linker_ok = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if !linker_ok {
        step(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM {NIGHTLY_LLVM_MAJOR} (about a minute)"
        ));
        run(cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{NIGHTLY_LLVM_MAJOR}"),
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX))?;
    }

    // 4. cargo-fuzz (built with the pinned stable; it runs the targets with the nightly).
    if output(cargo().args(["fuzz", "--version"])).is_none() {
        step(&format!(
            "installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 40 s)"
        ));
        run(cargo().args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))?;
    }

    // 5. bpffs.
    let mounted = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
                && l.split_whitespace().nth(2) == Some("bpf")
        });
    if !mounted {
        step("mounting bpffs at /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    eprintln!("setup: ready ({:.1}s)", start.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_are_read_from_test_result_lines() {
        let line =
            "ok. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.4s";
        assert_eq!(super::count_before(line, " passed"), 3);
        assert_eq!(super::count_before(line, " failed"), 1);
        assert_eq!(super::count_before("garbage", " passed"), 0);
    }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn build_release() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "router-user", "--bins"]))
}

fn test(args: &[String]) -> Result<()> {
    // The binaries the topology tests start.
    run(cargo().args(["build", "-p", "router-user", "--bins"]))?;
    let routerd = workspace().join("target/debug/routerd");
    let packages = [
        "router-common",
        "router-user",
        "router-tests",
        "bench",
        "xtask",
    ];
    let mut child = cargo()
        .args(["test", "--lib", "--bins", "--tests"])
        .args(packages.iter().flat_map(|p| ["-p", p]))
        .arg("--")
        .args(args)
        .env("ROUTERD_BIN", routerd)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Echo the output and add up every binary's "test result:" line into one closing line.
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    // A short run of each fuzz target, from its committed seed corpus; each counts as one
    // test. Not when a filter picks some tests, nor after failed tests.
    let filtered = args.iter().any(|a| !a.starts_with('-'));
    let mut fuzz_failed = Vec::new();
    if status.success() && !filtered {
        for target in FUZZ_TARGETS {
            match fuzz(target, SHORT_FUZZ_SECONDS) {
                Ok(()) => passed += 1,
                Err(e) => {
                    eprintln!("xtask test: fuzz target {target}: {e:#}");
                    failed += 1;
                    fuzz_failed.push(*target);
                }
            }
        }
    }
    println!("\nxtask test: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if !fuzz_failed.is_empty() {
        bail!("fuzzing failed: {fuzz_failed:?} (inputs in fuzz/artifacts/)");
    }
    Ok(())
}

/// Runs fuzz target `target` for `seconds` with the nightly (cargo-fuzz: libFuzzer with
/// AddressSanitizer), from its seed corpus `fuzz/corpus/<target>/`. New inputs go to
/// `target/fuzz-corpus/<target>/` (kept between runs, never committed), so the committed
/// seeds stay as they are; a crash is saved in `fuzz/artifacts/<target>/` and fails the run.
fn fuzz(target: &str, seconds: u64) -> Result<()> {
    let scratch = workspace().join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let seeds = workspace().join("fuzz/corpus").join(target);
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    let start = Instant::now();
    let mut cmd = Command::new("rustup");
    cmd.args(["run", NIGHTLY, "cargo", "fuzz", "run", target])
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=1024")
        .arg("-print_final_stats=1")
        .current_dir(workspace())
        // The stable toolchain of `cargo xtask` must not leak into the nightly's build.
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN");
    run(&mut cmd)?;
    eprintln!(
        "xtask: fuzz target {target}: no failure in {:.0} s (build included)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The number just before `label` in a "test result:" line ("ok. 3 passed; 0 failed; ...").
fn count_before(line: &str, label: &str) -> u64 {
    line.split(';')
        .find_map(|part| part.strip_suffix(label))
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn demo(nodes: usize) -> Result<()> {
    let bin_dir = workspace().join("target/release");
    let (bin, extra) = if nodes > 1 {
        ("demo_cluster", vec![nodes.to_string()])
    } else {
        ("demo", Vec::new())
    };
    run(cargo()
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            "router-tests",
            "--bin",
            bin,
            "--",
        ])
        .arg(&bin_dir)
        .args(extra))
}

fn bench(args: &[String]) -> Result<()> {
    // `--profile` samples with perf (Debian's linux-perf), which nothing else needs.
    if args.iter().any(|a| a == "--profile")
        && output(Command::new("perf").arg("--version")).is_none()
    {
        step("installing linux-perf (for --profile)");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "linux-perf",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // The HA baselines: Neutron's L3 HA (keepalived) and keepalived with conntrackd, run in
    // the benchmark's own namespaces. Their packages must not start system-wide daemons:
    // a policy-rc.d refuses every service start while they install.
    let missing: Vec<&str> = ["keepalived", "conntrackd"]
        .into_iter()
        .filter(|bin| {
            output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none()
        })
        .collect();
    if !missing.is_empty() {
        step(&format!(
            "installing {} (the HA baselines)",
            missing.join(", ")
        ));
        let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
        let had_policy = policy.exists();
        if !had_policy {
            std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
            run(Command::new("chmod").args(["755", "/usr/sbin/policy-rc.d"]))?;
        }
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        let installed = run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"));
        if !had_policy {
            let _ = std::fs::remove_file(policy);
        }
        installed?;
    }
    let release = workspace().join("target/release");
    run(cargo()
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            "bench",
            "--bin",
            "routerbench",
            "--",
        ])
        .args(args)
        .env("ROUTERD_BIN", release.join("routerd"))
        .current_dir(workspace()))
}

/// Runs a binary of the bench crate (release) with the release routerd.
fn release_bin(bin: &str, args: &[String]) -> Result<()> {
    let release = workspace().join("target/release");
    run(cargo()
        .args(["run", "--release", "-q", "-p", "bench", "--bin", bin, "--"])
        .args(args)
        .env("ROUTERD_BIN", release.join("routerd"))
        .current_dir(workspace()))
}
