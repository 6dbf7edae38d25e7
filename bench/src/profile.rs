//! `routerbench --profile` (`cargo xtask bench --profile`): where the time of the benchmark's
//! own workloads goes, sampled with `perf record` and summarised here into tables written to
//! `docs/profile.md` (and `.json`).
//!
//! Three workloads, each the benchmark's own code:
//!
//! - **micro**: `BPF_PROG_TEST_RUN` loops of the baseline router (`micro::profile_loops`):
//!   `floor_arp_pass` and `route_only` (repeat), `fip_in` and `snat_established` (single
//!   runs, as their targets are measured), XDP and TC entries. `perf record -g -p` on this
//!   process. The *timed region* is every sample whose call chain holds `bpf_test_run`
//!   (the kernel's loop around the program, which is what the kernel's own timing covers);
//!   a symbol's ns/packet is its share of the region times the ns/packet the kernel measured
//!   over the same loop. Samples outside the region are the syscall and the benchmark's
//!   bookkeeping (reported, not converted).
//! - **rate**: the forwarding-rate run (64 B, 1024 flows, `rate.rs`'s topology, XDP mode; TC
//!   too), `perf record -g -a` for the measured part only. Shares are of all samples of both
//!   CPUs, idle included (with `cpu-clock`, idle CPUs are sampled too), and ns/packet is a
//!   share times the CPU time of the window (CPUs x seconds) over the frames delivered.
//! - **control**: routerd applying 10,000 floating IPs from none (SIGHUP), several times,
//!   `perf record -a --call-graph dwarf` only while each apply runs (the applies back to none
//!   in between are not recorded); ms/apply is a share times the CPU time of the windows
//!   over the applies.
//!
//! Every loop is bounded in time; the namespaces are the benchmark's own guards (gone on
//! every exit path), and `perf` is stopped (or killed) when its recorder drops.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde::Serialize;

use crate::{jitmap::JitIndex, micro, rate, report};

/// How `routerbench --profile` was asked to run.
pub struct Options {
    /// Where profile.md and profile.json go.
    pub out: PathBuf,
    /// Where the perf.data files go (kept for `perf report -i`).
    pub data: PathBuf,
    pub quick: bool,
    /// Sections: micro, rate, control (all when empty).
    pub only: Vec<String>,
    pub command: String,
}

/// Everything one profile run found.
#[derive(Serialize, Default)]
pub struct Profile {
    pub command: String,
    pub machine: String,
    pub source: String,
    pub event: String,
    /// /proc/loadavg when the profile started and when it ended (other work on the machine).
    pub load: [String; 2],
    pub micro: Vec<MicroProfile>,
    pub rate: Vec<RateProfile>,
    pub control: Option<ControlProfile>,
    /// Warnings perf printed (lost samples, lowered frequency, ...).
    pub perf_notes: Vec<String>,
}

/// One symbol (or group) of a profile.
#[derive(Serialize, Clone, Debug)]
pub struct Share {
    pub name: String,
    pub samples: u64,
    /// Of the samples the table is about (see each table).
    pub share: f64,
    /// ns per packet (micro, rate) or ms per apply (control).
    pub cost: f64,
}

#[derive(Serialize)]
pub struct MicroProfile {
    /// The same loop just before, without perf: the figures the ns columns are scaled to.
    pub without_perf: micro::LoopStats,
    /// The loop under perf.
    pub stats: micro::LoopStats,
    /// What the ns columns are scaled by: without perf / under perf, the row's own (repeat
    /// rows) or the repeat rows' mean (single runs).
    pub dilation: f64,
    pub frequency: u32,
    pub samples: u64,
    pub region_samples: u64,
    /// Sampled time in the region per run (sum of the samples' periods / runs), scaled by
    /// the ratio of the kernel's figures without and with perf.
    pub sampled_region_ns_per_packet: f64,
    /// Of that, samples with the router's BPF code on the stack (its code and its calls).
    pub program_ns_per_packet: f64,
    pub leaf: Vec<Share>,
    /// By the innermost BPF function on the stack: its own code and the helpers it calls.
    pub bpf_functions: Vec<BpfFunction>,
    /// Helper and kernel calls from BPF code, by call site (function + return offset).
    pub call_sites: Vec<Share>,
    /// The same calls by the map they work on.
    pub maps: Vec<Share>,
    /// Samples of the router's own BPF code by source line.
    pub hot_lines: Vec<Share>,
    /// Samples outside the timed region, by leaf (the syscall, the bookkeeping).
    pub outside: Vec<Share>,
    pub data: String,
}

impl MicroProfile {
    /// Scales every ns figure to `dilation` instead of the row's own.
    fn rescale(&mut self, dilation: f64) {
        let k = dilation / self.dilation;
        self.dilation = dilation;
        self.sampled_region_ns_per_packet *= k;
        self.program_ns_per_packet *= k;
        for table in [
            &mut self.leaf,
            &mut self.call_sites,
            &mut self.maps,
            &mut self.hot_lines,
            &mut self.outside,
        ] {
            for r in table.iter_mut() {
                r.cost *= k;
            }
        }
        for f in &mut self.bpf_functions {
            f.self_ns *= k;
            f.callees_ns *= k;
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct BpfFunction {
    pub name: String,
    pub self_ns: f64,
    pub callees_ns: f64,
    pub share: f64,
}

#[derive(Serialize)]
pub struct RateProfile {
    /// The same run without perf, just before (delivered frames per second).
    pub delivered_pps_without_perf: f64,
    /// CPU use (/proc/stat) during the run without perf, and during the profiled run.
    pub cpu_without_perf: CpuUse,
    /// The run without perf under other conditions.
    pub variants: Vec<Variant>,
    /// Why the generator's thread was off its CPU during the run without perf (`cost`:
    /// seconds; `share`: of the run).
    pub generator_off_cpu: Vec<Share>,
    pub cpu: CpuUse,
    pub result: rate::RateResult,
    pub seconds: f64,
    pub cpus: usize,
    pub frequency: u32,
    pub samples: u64,
    pub categories: Vec<Share>,
    pub leaf: Vec<Share>,
    /// BPF functions of the router (self and helpers), ns per delivered frame.
    pub router: Vec<Share>,
    /// The router's calls by the map they work on.
    pub maps: Vec<Share>,
    /// Samples of the router's own BPF code by source line.
    pub hot_lines: Vec<Share>,
    pub data: String,
}

#[derive(Serialize)]
pub struct ControlProfile {
    pub floating_ips: usize,
    /// The apply's building blocks timed alone, without perf: (what, ms for 10,000).
    pub building_blocks: Vec<(String, f64)>,
    /// routerd's own figure for the same apply without perf, just before, ms.
    pub apply_ms_without_perf: Vec<f64>,
    /// routerd's own figure for each recorded apply, ms.
    pub apply_ms: Vec<f64>,
    pub window_ms: f64,
    pub cpus: usize,
    pub frequency: u32,
    pub samples: u64,
    pub processes: Vec<Share>,
    pub phases: Vec<Share>,
    pub leaf: Vec<Share>,
    pub inclusive: Vec<Share>,
    pub data: String,
}

const MICRO_FREQ: u32 = 10_000;
const RATE_FREQ: u32 = 5_000;
const CONTROL_FREQ: u32 = 4_000;
const TOP: usize = 15;

/// The rows profiled in the micro section: the two targets' methods, the floor, XDP and TC.
const MICRO_ROWS: &[(&str, &str, &str)] = &[
    ("floor_arp_pass", "xdp", "repeat"),
    ("route_only", "xdp", "repeat"),
    ("fip_in", "xdp", "single-runs"),
    ("snat_established", "xdp", "single-runs"),
    ("route_only", "tc", "repeat"),
    ("fip_in", "tc", "single-runs"),
    ("snat_established", "tc", "single-runs"),
];

pub fn run(opts: Options, progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let wants = |s: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == s);
    ensure!(
        Command::new("perf")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "perf is not installed (apt-get install linux-perf; `cargo xtask bench --profile` does)"
    );
    std::fs::create_dir_all(&opts.data)
        .with_context(|| format!("creating {}", opts.data.display()))?;
    // JIT'd programs in /proc/kallsyms (perf names them `bpf_prog_<tag>_<function>`), and
    // no BPF run statistics (they add clock reads to every program run).
    let _kallsyms = Sysctl::set("/proc/sys/net/core/bpf_jit_kallsyms", "1")?;
    let _stats = Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    let event = sampling_event();
    let mut profile = Profile {
        command: opts.command.clone(),
        machine: report::machine(),
        source: source_state(),
        event: event.to_string(),
        load: [loadavg(), String::new()],
        ..Default::default()
    };
    let mut notes = Vec::new();
    if wants("micro") {
        profile.micro = profile_micro(&opts, event, &mut notes, progress)?;
    }
    if wants("rate") {
        for path in [
            rate::Path::Ceiling,
            rate::Path::Xdp,
            rate::Path::Tc,
            rate::Path::Neutron,
        ] {
            profile
                .rate
                .push(profile_rate(&opts, event, path, &mut notes, progress)?);
        }
    }
    if wants("control") {
        profile.control = Some(profile_control(&opts, event, &mut notes, progress)?);
    }
    notes.sort();
    notes.dedup();
    profile.perf_notes = notes;
    profile.load[1] = loadavg();
    progress("profile: writing the report");
    std::fs::create_dir_all(&opts.out)?;
    std::fs::write(
        opts.out.join("profile.json"),
        serde_json::to_string_pretty(&profile)?,
    )?;
    let md_path = opts.out.join("profile.md");
    let old = std::fs::read_to_string(&md_path).unwrap_or_default();
    std::fs::write(&md_path, markdown(&profile, &old))?;
    eprintln!("routerbench: wrote {}", md_path.display());
    Ok(())
}

fn profile_micro(
    opts: &Options,
    event: &str,
    notes: &mut Vec<String>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<MicroProfile>> {
    let timer = event == "cpu-clock";
    let duration = if opts.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };
    let mut results = Vec::new();
    let pid = std::process::id().to_string();
    micro::profile_loops(MICRO_ROWS, duration, progress, &mut |label, run_loop| {
        eprintln!(
            "profile: micro: {label}, {} s without perf, then {} s under perf",
            duration.as_secs(),
            duration.as_secs()
        );
        let data = opts
            .data
            .join(format!("micro-{}.data", label.replace(' ', "-")));
        let without_perf = run_loop()?;
        let mut perf = Recorder::start(event, MICRO_FREQ, &["-g", "-p", &pid], &data)?;
        perf.enable()?;
        let stats = run_loop();
        perf.disable()?;
        notes.extend(perf.finish()?);
        let stats = stats?;
        let samples = script(&data)?;
        // While the router's programs are still loaded.
        let mut jit = JitIndex::of(&router_functions(&samples))
            .map_err(|e| notes.push(format!("call sites not mapped to maps: {e}")))
            .ok();
        results.push(summarise_micro(
            without_perf,
            stats,
            &samples,
            &data,
            timer,
            &mut jit,
        ));
        Ok(())
    })?;
    // Single runs are too noisy (a run takes ~1 us of syscall around a few hundred ns) for
    // their own with/without ratio: they are scaled by the repeat rows' mean ratio, which is
    // the sampling's cost per second of CPU, the same for every row.
    let repeat: Vec<f64> = results
        .iter()
        .filter(|m| m.stats.method == "repeat")
        .map(|m| m.dilation)
        .collect();
    if !repeat.is_empty() {
        let mean = repeat.iter().sum::<f64>() / repeat.len() as f64;
        for m in results.iter_mut().filter(|m| m.stats.method != "repeat") {
            m.rescale(mean);
        }
    }
    Ok(results)
}

fn profile_rate(
    opts: &Options,
    event: &str,
    path: rate::Path,
    notes: &mut Vec<String>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<RateProfile> {
    let _ = event;
    let duration = if opts.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(4)
    };
    progress(&format!("profile: rate: setting up {}", path.name()));
    let mut setup = rate::setup(path, 1)?;
    progress(&format!(
        "profile: rate: {}, 64 B, 1024 flows, {} s without perf",
        path.name(),
        duration.as_secs()
    ));
    // The run without perf is traced at every context switch (cheap next to sampling):
    // why the generator's thread leaves its CPU, and for how long.
    let switches_data = opts
        .data
        .join(format!("rate-{}-switches.data", path_tag(path)));
    let mut switches = Recorder::start("sched:sched_switch", 0, &["-g", "-a"], &switches_data)?;
    let mut ticks = Vec::new();
    let mut cpu_without_perf = CpuUse::default();
    let mut traced = (Instant::now(), Duration::ZERO);
    let without = setup.measure_observed(64, 1024, duration, &mut |on| {
        if on {
            switches.enable()?;
            traced.0 = Instant::now();
            ticks = cpu_ticks();
        } else {
            cpu_without_perf = CpuUse::between(&ticks, &cpu_ticks());
            traced.1 = traced.0.elapsed();
            switches.disable()?;
        }
        Ok(())
    });
    notes.extend(switches.finish()?);
    let without = without?.delivered_pps;
    let generator_off_cpu = off_cpu(
        &script_switches(&switches_data)?,
        std::process::id(),
        traced.1,
    );
    let routerd = setup.routerd_pid().unwrap_or(0);
    let data = opts.data.join(format!("rate-{}.data", path_tag(path)));
    progress(&format!(
        "profile: rate: {}, 64 B, 1024 flows, {} s under perf -a",
        path.name(),
        duration.as_secs()
    ));
    let mut perf = Recorder::start(event, RATE_FREQ, &["-g", "-a"], &data)?;
    let mut window = (Instant::now(), Duration::ZERO);
    let mut cpu = CpuUse::default();
    let result = setup.measure_observed(64, 1024, duration, &mut |on| {
        if on {
            perf.enable()?;
            window.0 = Instant::now();
            ticks = cpu_ticks();
        } else {
            cpu = CpuUse::between(&ticks, &cpu_ticks());
            window.1 = window.0.elapsed();
            perf.disable()?;
        }
        Ok(())
    });
    notes.extend(perf.finish()?);
    let result = result?;
    let samples = script(&data)?;
    // While routerd's programs are still loaded.
    let mut jit = JitIndex::of(&router_functions(&samples))
        .map_err(|e| notes.push(format!("call sites not mapped to maps: {e}")))
        .ok();
    // The same run without perf under other conditions: CPUs kept from idling by a
    // busy loop of the lowest priority on each (it runs only when nothing else would), and
    // the generator's program attached (see `Generator::attach`).
    let mut variants = Vec::new();
    for (what, soak, attach) in [
        ("CPUs kept from idling (SCHED_IDLE busy loops)", true, false),
        (
            "generator attached (no dispatcher re-patching)",
            false,
            true,
        ),
        ("both", true, true),
    ] {
        progress(&format!(
            "profile: rate: {}, 64 B, 1024 flows, {} s, {what}",
            path.name(),
            duration.as_secs()
        ));
        if attach {
            setup.attach_generator();
        }
        let _soakers = soak
            .then(|| Soakers::start(duration + Duration::from_secs(10)))
            .transpose()?;
        let mut use_ = CpuUse::default();
        let pps = setup
            .measure_observed(64, 1024, duration, &mut |on| {
                if on {
                    ticks = cpu_ticks();
                } else {
                    use_ = CpuUse::between(&ticks, &cpu_ticks());
                }
                Ok(())
            })?
            .delivered_pps;
        variants.push(Variant {
            what: what.to_string(),
            delivered_pps: pps,
            cpu: use_,
        });
    }
    drop(setup);
    let mut profile = summarise_rate(
        result,
        window.1,
        cpu,
        &samples,
        &data,
        &mut jit,
        [std::process::id(), routerd],
    );
    profile.delivered_pps_without_perf = without;
    profile.cpu_without_perf = cpu_without_perf;
    profile.generator_off_cpu = generator_off_cpu;
    profile.variants = variants;
    Ok(profile)
}

fn profile_control(
    opts: &Options,
    event: &str,
    notes: &mut Vec<String>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<ControlProfile> {
    let timer = event == "cpu-clock";
    let n = 10_000;
    let applies = if opts.quick { 2 } else { 6 };
    progress(&format!(
        "profile: control: setting up the XDP path with {n} floating IPs"
    ));
    let mut setup = rate::setup(rate::Path::Xdp, n)?;
    let routerd = setup
        .routerd_pid()
        .ok_or_else(|| anyhow::anyhow!("no routerd"))?;
    let data = opts.data.join("control-apply-10k.data");
    // routerd and the processes it starts (nft): on a shared machine, other processes'
    // work stays out (a system-wide profile could not tell another nft from routerd's).
    let pid = routerd.to_string();
    let mut perf = Recorder::start(
        event,
        CONTROL_FREQ,
        &["-p", &pid, "--call-graph", "dwarf,16384"],
        &data,
    )?;
    let mut without = Vec::new();
    for _ in 0..2 {
        setup.apply_floating_ips(0, 0)?;
        std::thread::sleep(Duration::from_millis(200));
        without.push(setup.apply_floating_ips(n, 0)?.as_secs_f64() * 1e3);
    }
    let mut apply_ms = Vec::new();
    let mut window = Duration::ZERO;
    let mut run = || -> anyhow::Result<()> {
        for i in 0..applies {
            progress(&format!(
                "profile: control: routerd applies {n} floating IPs ({} of {applies}) under perf -a",
                i + 1
            ));
            setup.apply_floating_ips(0, 0)?;
            // Let the removal's deferred work (RCU, kworkers) settle out of the window.
            std::thread::sleep(Duration::from_millis(200));
            let mut started = Instant::now();
            let took = setup.apply_floating_ips_observed(n, 0, &mut |on| {
                if on {
                    perf.enable()?;
                    started = Instant::now();
                } else {
                    window += started.elapsed();
                    perf.disable()?;
                }
                Ok(())
            })?;
            apply_ms.push(took.as_secs_f64() * 1e3);
        }
        Ok(())
    };
    let ran = run();
    notes.extend(perf.finish()?);
    ran?;
    drop(setup);
    progress("profile: control: reading the samples (dwarf unwinding takes a while)");
    let samples = script(&data)?;
    let mut profile = summarise_control(n, routerd, apply_ms, window, &samples, &data, timer);
    profile.apply_ms_without_perf = without;
    progress("profile: control: timing the apply's building blocks alone");
    profile.building_blocks = building_blocks(n)?;
    Ok(profile)
}

// ---------------------------------------------------------------------------------------
// perf record

/// A `perf record` running with its events off, switched on and off through its control
/// FIFO (`--control`), so that only the measured part of a workload is sampled.
struct Recorder {
    child: Option<Child>,
    ctl: File,
    ack: File,
    log: PathBuf,
    data: PathBuf,
}

impl Recorder {
    fn start(event: &str, freq: u32, scope: &[&str], data: &Path) -> anyhow::Result<Self> {
        let dir = data.with_extension("ctl");
        std::fs::create_dir_all(&dir)?;
        let (ctl_path, ack_path) = (dir.join("ctl"), dir.join("ack"));
        for p in [&ctl_path, &ack_path] {
            let _ = std::fs::remove_file(p);
            nix::unistd::mkfifo(
                p,
                nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
            )
            .with_context(|| format!("mkfifo {}", p.display()))?;
        }
        let _ = std::fs::remove_file(data);
        // Our reading end first, non-blocking (it opens without a writer): perf's blocking
        // open of the writing end then finds a reader.
        let ack = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&ack_path)?;
        let log = dir.join("perf.log");
        let log_file = File::create(&log)?;
        let child = Command::new("perf")
            .arg("record")
            .args(["-e", event])
            // A tracepoint is recorded at every event (`-c 1`), a clock sampled at `freq`.
            .args(if freq == 0 {
                ["-c".to_string(), "1".to_string()]
            } else {
                ["-F".to_string(), freq.to_string()]
            })
            .args(scope)
            .args(["-D", "-1", "--no-buildid", "-o"])
            .arg(data)
            .arg("--control")
            .arg(format!(
                "fifo:{},{}",
                ctl_path.display(),
                ack_path.display()
            ))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting perf record")?;
        let mut child = Some(child);
        // perf opens the control FIFO for reading as it starts: open the writing end then.
        let deadline = Instant::now() + Duration::from_secs(30);
        let ctl = loop {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&ctl_path)
            {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    if let Some(c) = child.as_mut()
                        && let Ok(Some(status)) = c.try_wait()
                    {
                        bail!(
                            "perf record exited ({status}): {}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        );
                    }
                    if Instant::now() > deadline {
                        if let Some(mut c) = child.take() {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                        bail!("perf record did not open its control FIFO in 30 s");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("opening perf's control FIFO"),
            }
        };
        Ok(Self {
            child,
            ctl,
            ack,
            log,
            data: data.to_path_buf(),
        })
    }

    fn enable(&mut self) -> anyhow::Result<()> {
        self.command("enable")
    }

    fn disable(&mut self) -> anyhow::Result<()> {
        self.command("disable")
    }

    /// Sends `cmd` and waits (at most 30 s) for perf's `ack`.
    fn command(&mut self, cmd: &str) -> anyhow::Result<()> {
        self.ctl.write_all(format!("{cmd}\n").as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match self.ack.read(&mut buf) {
                Ok(n) if n > 0 => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(3).any(|w| w == b"ack") {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("reading perf's ack"),
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "perf record exited ({status}) before acknowledging {cmd}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "perf did not acknowledge {cmd} in 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops perf (SIGINT, as Ctrl-C) and waits for it to write its file (at most 2 min);
    /// returns the warnings it printed.
    fn finish(mut self) -> anyhow::Result<Vec<String>> {
        let mut child = self.child.take().context("perf already stopped")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("perf record did not stop within 2 min of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        ensure!(
            std::fs::metadata(&self.data).is_ok_and(|m| m.len() > 0),
            "perf record wrote no data: {log}"
        );
        Ok(log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("warning") || l.contains("lost") || l.contains("lowering")
            })
            .map(|l| l.trim().to_string())
            .collect())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `cycles` where the machine has a PMU (`perf stat -e cycles true` counts), else the
/// timer-based `cpu-clock` (virtual machines without a virtual PMU, like this one).
fn sampling_event() -> &'static str {
    let counts = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "cycles", "true"])
        .output()
        .is_ok_and(|o| {
            let err = String::from_utf8_lossy(&o.stderr);
            o.status.success() && !err.contains("not supported") && !err.contains("not counted")
        });
    if counts { "cycles" } else { "cpu-clock" }
}

/// A sysctl set for the life of the guard, restored on drop.
struct Sysctl {
    path: &'static str,
    before: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> anyhow::Result<Self> {
        let before = std::fs::read_to_string(path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .to_string();
        std::fs::write(path, value).with_context(|| format!("writing {path}"))?;
        Ok(Self { path, before })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.before);
    }
}

/// Per-CPU time from /proc/stat, in ticks: (busy: user, nice, system, irq, softirq;
/// idle: idle, iowait; steal).
fn cpu_ticks() -> Vec<(u64, u64, u64)> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            (at(0) + at(1) + at(2) + at(5) + at(6), at(3) + at(4), at(7))
        })
        .collect()
}

/// A rate run without perf under other conditions than the benchmark's.
#[derive(Serialize, Clone, Debug)]
pub struct Variant {
    pub what: String,
    pub delivered_pps: f64,
    pub cpu: CpuUse,
}

/// A busy loop at the lowest priority (`SCHED_IDLE`) on every CPU, for a bounded time;
/// killed on drop. It runs only when nothing else would, so CPUs never idle.
struct Soakers(Vec<Child>);

impl Soakers {
    fn start(limit: Duration) -> anyhow::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut soakers = Soakers(Vec::new());
        for cpu in 0..cpus {
            // A process group of its own (timeout's child outlives a killed timeout): the
            // whole group is killed on drop.
            let child = Command::new("taskset")
                .args(["-c", &cpu.to_string(), "chrt", "-i", "0", "timeout"])
                .arg(limit.as_secs().max(1).to_string())
                .args(["sh", "-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .context("starting a SCHED_IDLE busy loop")?;
            soakers.0.push(child);
        }
        Ok(soakers)
    }
}

impl Drop for Soakers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: signalling the process group of our own child (its id is the group's).
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// How busy each CPU was between two [`cpu_ticks`] snapshots.
#[derive(Serialize, Clone, Debug, Default)]
pub struct CpuUse {
    /// Per CPU: the fraction of its ticks that were busy (user, system, irq, softirq).
    pub busy: Vec<f64>,
    /// Per CPU: the fraction stolen by the hypervisor.
    pub steal: Vec<f64>,
    /// Busy CPU time of all CPUs together, ns.
    pub busy_ns: f64,
}

impl CpuUse {
    fn between(before: &[(u64, u64, u64)], after: &[(u64, u64, u64)]) -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut out = CpuUse::default();
        for (b, a) in before.iter().zip(after) {
            let busy = a.0.saturating_sub(b.0) as f64;
            let idle = a.1.saturating_sub(b.1) as f64;
            let steal = a.2.saturating_sub(b.2) as f64;
            let all = (busy + idle + steal).max(1.0);
            out.busy.push(busy / all);
            out.steal.push(steal / all);
            out.busy_ns += busy / hz * 1e9;
        }
        out
    }

    fn describe(&self) -> String {
        self.busy
            .iter()
            .zip(&self.steal)
            .enumerate()
            .map(|(i, (b, st))| {
                format!("cpu{i} {:.0} % busy, {:.0} % stolen", b * 100.0, st * 100.0)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The commit, and the files changed in the work tree (what was built and profiled).
fn source_state() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]);
    let files: Vec<&str> = dirty
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    if files.is_empty() {
        format!("commit {head}")
    } else {
        format!(
            "commit {head} plus uncommitted changes to {}",
            files.join(", ")
        )
    }
}

// ---------------------------------------------------------------------------------------
// perf script

#[derive(Debug, Clone)]
struct StackFrame {
    sym: String,
    offset: u64,
    dso: String,
}

#[derive(Debug, Clone)]
struct Sample {
    comm: String,
    pid: u32,
    /// The sample's period: ns of CPU time with `cpu-clock`, cycles with `cycles`.
    period: u64,
    /// Innermost first.
    frames: Vec<StackFrame>,
}

impl Sample {
    fn leaf(&self) -> String {
        self.frames.first().map_or("[none]".into(), frame_name)
    }

    fn has(&self, sym: &str) -> bool {
        self.frames.iter().any(|f| f.sym == sym)
    }

    /// A CPU with nothing to run (the idle task halted), not softirq work done on it.
    fn idle(&self) -> bool {
        self.pid == 0
            && self
                .frames
                .first()
                .is_some_and(|f| ["halt", "idle", "mwait"].iter().any(|p| f.sym.contains(p)))
    }

    /// Index of the innermost JIT'd BPF program frame.
    fn innermost_bpf(&self) -> Option<usize> {
        self.frames.iter().position(|f| bpf_name(&f.sym).is_some())
    }
}

fn script(data: &Path) -> anyhow::Result<Vec<Sample>> {
    let out = Command::new("perf")
        .args([
            "script",
            "--no-inline",
            "-F",
            "comm,pid,tid,period,ip,sym,symoff,dso",
            "-i",
        ])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    ensure!(
        out.status.success(),
        "perf script -i {} failed: {}",
        data.display(),
        out.status
    );
    Ok(parse_script(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `perf script -F comm,pid,tid,period,ip,sym,symoff,dso` output with call chains:
/// a header line `comm pid/tid period` (comm may hold spaces), then one indented line per
/// frame, `addr sym+0xoff (dso)`, innermost first, then a blank line.
fn parse_script(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut current: Option<Sample> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if let Some(s) = current.take() {
                samples.push(s);
            }
            continue;
        }
        if line.starts_with('\t') {
            if let Some(s) = current.as_mut()
                && let Some(f) = parse_frame(line.trim())
            {
                s.frames.push(f);
            }
            continue;
        }
        if let Some(s) = current.take() {
            samples.push(s);
        }
        current = parse_header(line);
    }
    if let Some(s) = current {
        samples.push(s);
    }
    samples
}

fn parse_header(line: &str) -> Option<Sample> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let ids_at = tokens.iter().rposition(|t| {
        t.split_once('/').is_some_and(|(p, t)| {
            !p.is_empty()
                && !t.is_empty()
                && (p.to_string() + t).bytes().all(|b| b.is_ascii_digit())
        })
    })?;
    let pid = tokens[ids_at].split('/').next()?.parse().ok()?;
    let period = tokens
        .get(ids_at + 1)
        .and_then(|p| p.trim_end_matches(':').parse().ok())
        .unwrap_or(0);
    let comm = tokens[..ids_at].join(" ");
    Some(Sample {
        comm,
        pid,
        period,
        frames: Vec::new(),
    })
}

fn parse_frame(line: &str) -> Option<StackFrame> {
    let (_addr, rest) = line.split_once(char::is_whitespace)?;
    let rest = rest.trim();
    let (symoff, dso) = match rest.rfind(" (") {
        Some(i) if rest.ends_with(')') => (&rest[..i], &rest[i + 2..rest.len() - 1]),
        _ => (rest, ""),
    };
    let (sym, offset) = match symoff.rfind("+0x") {
        Some(i) => (
            &symoff[..i],
            u64::from_str_radix(&symoff[i + 3..], 16).unwrap_or(0),
        ),
        None => (symoff, 0),
    };
    Some(StackFrame {
        sym: sym.to_string(),
        offset,
        dso: dso.to_string(),
    })
}

/// `bpf_prog_<16 hex digits of tag>_<function>` -> the function.
fn bpf_name(sym: &str) -> Option<&str> {
    let rest = sym.strip_prefix("bpf_prog_")?;
    let (tag, name) = rest.split_at_checked(16)?;
    let name = name.strip_prefix('_')?;
    tag.bytes().all(|b| b.is_ascii_hexdigit()).then_some(name)
}

/// A frame's name for the tables: BPF programs as `bpf:<function>`, Rust hashes dropped,
/// unknown symbols by their object.
fn frame_name(f: &StackFrame) -> String {
    if let Some(name) = bpf_name(&f.sym) {
        return format!("bpf:{name}");
    }
    if f.sym == "[unknown]" || f.sym.is_empty() {
        let dso = f.dso.rsplit('/').next().unwrap_or("");
        return format!("[unknown] ({dso})");
    }
    strip_rust_hash(&f.sym).to_string()
}

fn strip_rust_hash(sym: &str) -> &str {
    match sym.rfind("::h") {
        Some(i)
            if sym.len() == i + 3 + 16 && sym[i + 3..].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            &sym[..i]
        }
        _ => sym,
    }
}

/// Counts `key(sample)` over `samples` into shares of `total` samples, adding up
/// `cost(sample)`; the `top` largest, the rest summed as `(other)`.
fn table<'a>(
    samples: impl Iterator<Item = &'a Sample>,
    key: impl Fn(&Sample) -> Option<String>,
    total: u64,
    cost: &dyn Fn(&Sample) -> f64,
    top: usize,
) -> Vec<Share> {
    let mut counts: HashMap<String, (u64, f64)> = HashMap::new();
    for s in samples {
        if let Some(k) = key(s) {
            let e = counts.entry(k).or_default();
            e.0 += 1;
            e.1 += cost(s);
        }
    }
    shares(counts, total, top)
}

fn shares(counts: HashMap<String, (u64, f64)>, total: u64, top: usize) -> Vec<Share> {
    let mut rows: Vec<(String, (u64, f64))> = counts.into_iter().collect();
    rows.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    let share = |n: u64, cost: f64| Share {
        name: String::new(),
        samples: n,
        share: n as f64 / total.max(1) as f64,
        cost,
    };
    let mut out: Vec<Share> = rows
        .iter()
        .take(top)
        .map(|(name, (n, c))| Share {
            name: name.clone(),
            ..share(*n, *c)
        })
        .collect();
    let (rest, rest_cost) = rows
        .iter()
        .skip(top)
        .fold((0, 0.0), |(n, c), (_, (m, d))| (n + m, c + d));
    if rest > 0 {
        out.push(Share {
            name: format!("(other {} symbols)", rows.len() - top),
            ..share(rest, rest_cost)
        });
    }
    out
}

/// The router's JIT'd functions seen in `samples` (all but the benchmark's own
/// generator and sink), for [`JitIndex::of`].
fn router_functions(samples: &[Sample]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for f in samples.iter().flat_map(|s| &s.frames) {
        if bpf_name(&f.sym).is_some_and(|n| !n.starts_with("bench_")) && !found.contains(&f.sym) {
            found.push(f.sym.clone());
        }
    }
    found
}

/// `bpf:function  file:line: text` of a sample in the router's own BPF code.
fn own_line(s: &Sample, jit: &Option<JitIndex>) -> Option<String> {
    let f = s.frames.first()?;
    let name = bpf_name(&f.sym)?;
    let line = jit
        .as_ref()
        .and_then(|j| j.line_of(&f.sym, f.offset))
        .unwrap_or("(no line info)");
    Some(format!("{name}  {line}"))
}

/// Calls from BPF code, by call site and by map.
#[derive(Default)]
struct Sites {
    /// `[MAP] <- bpf:function+0xoffset` -> samples, cost, and the kernel functions seen
    /// right under the BPF frame (a lookup's entry, or what it tail-called).
    sites: HashMap<String, (u64, f64, HashMap<String, u64>)>,
    maps: HashMap<String, (u64, f64)>,
}

impl Sites {
    /// Counts the call from BPF frame `i` (> 0) of `s`, costing `cost`.
    fn add(&mut self, s: &Sample, i: usize, cost: f64, jit: &mut Option<JitIndex>) {
        let caller = &s.frames[i];
        let callee = frame_name(&s.frames[i - 1]);
        // Map helpers and the map functions the verifier calls directly.
        let map_call = ["map", "elem", "trie", "lookup"]
            .iter()
            .any(|p| callee.contains(p));
        let map = jit
            .as_mut()
            .filter(|_| map_call)
            .and_then(|j| j.map_of_call(&caller.sym, caller.offset));
        if let Some(m) = &map {
            let e = self.maps.entry(m.clone()).or_default();
            e.0 += 1;
            e.1 += cost;
        }
        let site = format!(
            "{}<- {}+{:#x}",
            map.map_or(String::new(), |m| format!("[{m}] ")),
            frame_name(caller),
            caller.offset
        );
        let e = self.sites.entry(site).or_default();
        e.0 += 1;
        e.1 += cost;
        *e.2.entry(callee).or_default() += 1;
    }

    /// (by call site, labelled with the callee seen most, by map).
    fn tables(self, total: u64) -> (Vec<Share>, Vec<Share>) {
        let sites = self
            .sites
            .into_iter()
            .map(|(site, (n, c, callees))| {
                let callee = callees
                    .into_iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                    .map_or(String::new(), |(name, _)| name);
                (format!("{callee} {site}"), (n, c))
            })
            .collect();
        (shares(sites, total, TOP), shares(self.maps, total, TOP))
    }
}

// ---------------------------------------------------------------------------------------
// Summaries

fn summarise_micro(
    without_perf: micro::LoopStats,
    stats: micro::LoopStats,
    samples: &[Sample],
    data: &Path,
    timer: bool,
    jit: &mut Option<JitIndex>,
) -> MicroProfile {
    let ours: Vec<&Sample> = samples.iter().filter(|s| !s.idle()).collect();
    let region: Vec<&Sample> = ours
        .iter()
        .copied()
        .filter(|s| s.has("bpf_test_run"))
        .collect();
    let n = region.len() as u64;
    let runs = stats.runs.max(1) as f64;
    // Sampling slows the loop down (its interrupts fall inside the timed runs), evenly
    // enough that shares stay as they are: costs are scaled back by the ratio of the kernel's
    // figures without and with perf. cpu-clock: a sample is `period` ns of this thread's
    // CPU time; otherwise the region's samples share the kernel's measured time.
    let dilation = without_perf.ns_per_packet / stats.ns_per_packet.max(f64::MIN_POSITIVE);
    let measured_share = without_perf.ns_per_packet / n.max(1) as f64;
    let cost = move |s: &Sample| {
        if timer {
            s.period as f64 / runs * dilation
        } else {
            measured_share
        }
    };
    let leaf = table(region.iter().copied(), |s| Some(s.leaf()), n, &cost, TOP);
    let mut funcs: BTreeMap<String, (u64, f64, f64)> = BTreeMap::new();
    let mut sites = Sites::default();
    let mut lines: HashMap<String, (u64, f64)> = HashMap::new();
    let mut program_ns = 0.0;
    for s in &region {
        let c = cost(s);
        let Some(i) = s.innermost_bpf() else {
            let e = funcs
                .entry("(no BPF frame: test loop, dispatcher, timer)".into())
                .or_default();
            e.0 += 1;
            e.1 += c;
            continue;
        };
        program_ns += c;
        let e = funcs.entry(frame_name(&s.frames[i])).or_default();
        e.0 += 1;
        if i == 0 {
            e.1 += c;
            if let Some(line) = own_line(s, jit) {
                let e = lines.entry(line).or_default();
                e.0 += 1;
                e.1 += c;
            }
        } else {
            e.2 += c;
            sites.add(s, i, c, jit);
        }
    }
    let mut bpf_functions: Vec<BpfFunction> = funcs
        .into_iter()
        .map(|(name, (samples, own, callees))| BpfFunction {
            name,
            self_ns: own,
            callees_ns: callees,
            share: samples as f64 / n.max(1) as f64,
        })
        .collect();
    bpf_functions.sort_by(|a, b| b.share.total_cmp(&a.share));
    let region_ns: f64 = region.iter().map(|s| cost(s)).sum();
    let (call_sites, maps) = sites.tables(n);
    let outside = table(
        ours.iter().copied().filter(|s| !s.has("bpf_test_run")),
        |s| Some(s.leaf()),
        ours.len() as u64,
        &cost,
        8,
    );
    MicroProfile {
        dilation,
        without_perf,
        sampled_region_ns_per_packet: region_ns,
        program_ns_per_packet: program_ns,
        stats,
        frequency: MICRO_FREQ,
        samples: ours.len() as u64,
        region_samples: n,
        leaf,
        bpf_functions,
        call_sites,
        maps,
        hot_lines: shares(lines, n, TOP),
        outside,
        data: data.display().to_string(),
    }
}

fn path_tag(path: rate::Path) -> &'static str {
    match path {
        rate::Path::Ceiling => "ceiling",
        rate::Path::Xdp => "xdp",
        rate::Path::Tc => "tc",
        rate::Path::Auto => "auto",
        rate::Path::Neutron => "neutron",
        rate::Path::Nftables => "nftables",
    }
}

/// One `sched:sched_switch` event.
struct Switch {
    time: f64,
    prev: u32,
    prev_state: String,
    next: u32,
    /// The switching-out task's kernel stack, innermost first.
    stack: Vec<String>,
}

fn script_switches(data: &Path) -> anyhow::Result<Vec<Switch>> {
    let out = Command::new("perf")
        .args(["script", "--no-inline", "-F", "tid,time,trace,ip,sym", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    ensure!(
        out.status.success(),
        "perf script -i {} failed",
        data.display()
    );
    Ok(parse_switches(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `perf script -F tid,time,trace,ip,sym` of `sched:sched_switch` with call chains.
fn parse_switches(text: &str) -> Vec<Switch> {
    let mut out: Vec<Switch> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('\t') {
            if let Some(last) = out.last_mut()
                && let Some(f) = parse_frame(line.trim())
            {
                last.stack.push(f.sym);
            }
            continue;
        }
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(key))
                .map(str::to_string)
        };
        let time = line
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.trim_end_matches(':').parse().ok());
        if let (Some(time), Some(prev), Some(state), Some(next)) = (
            time,
            field("prev_pid=").and_then(|p| p.parse().ok()),
            field("prev_state="),
            field("next_pid=").and_then(|p| p.parse().ok()),
        ) {
            out.push(Switch {
                time,
                prev,
                prev_state: state,
                next,
                stack: Vec::new(),
            });
        }
    }
    out
}

/// Time thread `tid` spent off its CPU, by why it left (state and the first kernel
/// functions under the scheduler's), as shares of `window`; `cost` is in seconds.
fn off_cpu(switches: &[Switch], tid: u32, window: Duration) -> Vec<Share> {
    const SCHEDULER: &[&str] = &[
        "__schedule",
        "schedule",
        "schedule_timeout",
        "wait_for_completion",
        "__wait_for_common",
        "schedule_preempt_disabled",
        "preempt_schedule",
        "preempt_schedule_common",
        "__cond_resched",
        "_cond_resched",
        "io_schedule",
        "preempt_schedule_irq",
        "raw_irqentry_exit_cond_resched",
        "irqentry_exit",
    ];
    let mut counts: HashMap<String, (u64, f64)> = HashMap::new();
    let mut out: Option<(f64, String)> = None;
    for sw in switches {
        if sw.prev == tid {
            let why: Vec<&str> = sw
                .stack
                .iter()
                .map(String::as_str)
                .filter(|f| !SCHEDULER.contains(f))
                .take(3)
                .collect();
            let state = if sw.prev_state.starts_with('R') {
                "preempted".to_string()
            } else {
                format!("asleep ({})", sw.prev_state)
            };
            out = Some((sw.time, format!("{state}: {}", why.join(" <- "))));
        } else if sw.next == tid
            && let Some((left, why)) = out.take()
        {
            let e = counts.entry(why).or_default();
            e.0 += 1;
            e.1 += sw.time - left;
        }
    }
    let secs = window.as_secs_f64().max(1e-9);
    let mut rows: Vec<Share> = counts
        .into_iter()
        .map(|(name, (n, t))| Share {
            name,
            samples: n,
            share: t / secs,
            cost: t,
        })
        .collect();
    rows.sort_by(|a, b| b.cost.total_cmp(&a.cost));
    rows.truncate(8);
    rows
}

/// Work of other processes on the machine during a system-wide profile.
const UNRELATED: &str = "not this benchmark (other processes on the machine)";

/// Whether `s` is another process's work: not the benchmark's processes (`ours`), not a
/// kernel thread, not the idle task, with no packet processing on its stack (softirqs run
/// in whatever process they interrupt).
fn unrelated(s: &Sample, ours: [u32; 2]) -> bool {
    const KERNEL_THREADS: &[&str] = &[
        "kworker",
        "ksoftirqd",
        "rcu",
        "migration",
        "kthreadd",
        "kcompactd",
        "kswapd",
        "khugepaged",
        "kdamond",
        "watchdog",
        "jbd2",
        "irq/",
        "cpuhp",
        "idle_inject",
    ];
    const NET: &[&str] = &[
        "net_rx_action",
        "__napi_poll",
        "veth_",
        "xdp_",
        "bpf_test_run",
        "netif_",
    ];
    !(s.pid == 0
        || ours.contains(&s.pid)
        || KERNEL_THREADS.iter().any(|k| s.comm.starts_with(k))
        || s.frames
            .iter()
            .any(|f| NET.iter().any(|n| f.sym.starts_with(n)))
        || s.comm.starts_with("perf"))
}

/// The stage a sample of the forwarding-rate run belongs to: the innermost frame of its
/// stack that names one (a spin lock or a `memcpy` counts for whoever called it).
fn rate_category(s: &Sample) -> &'static str {
    const PAGE: &[&str] = &[
        "page_pool",
        "free_page",
        "free_unref",
        "__free_pages",
        "alloc_pages",
        "get_page_from_freelist",
        "rmqueue",
        "xdp_return",
        "napi_pp_put_page",
        "xdp_build_skb",
        "kmem_cache",
        "folio",
        "__put_page",
        "page_frag",
        "xdp_test_run_init_page",
        "clear_page",
    ];
    const REDIRECT: &[&str] = &[
        "xdp_do_redirect",
        "dev_map",
        "bq_xmit",
        "bq_enqueue",
        "__dev_flush",
        "xdp_do_flush",
        "dev_hash",
        "dev_xdp_enqueue",
        "__xdp_redirect_map",
        "bpf_xdp_redirect_map",
        "xdp_convert",
        "dev_get_by_index",
    ];
    const GENERATOR: &[&str] = &[
        "xdp_test_run_batch",
        "bpf_test_run_xdp_live",
        "bpf_prog_test_run_xdp",
    ];
    const SKB: &[&str] = &[
        "tcf_",
        "tcx_",
        "cls_bpf",
        "skb",
        "__netif",
        "netif_",
        "gro_",
        "sch_",
        "validate_xmit",
        "dev_queue_xmit",
        "dev_hard_start_xmit",
    ];
    const NETFILTER: &[&str] = &[
        "nf_",
        "nft_",
        "ipt_",
        "iptable_",
        "ipv4_conntrack",
        "__nf_",
        "hash_conntrack",
        "resolve_normal_ct",
    ];
    const IP: &[&str] = &[
        "ip_forward",
        "ip_route_",
        "fib_",
        "ip_rcv",
        "ip_output",
        "ip_finish_output",
        "neigh_",
        "ip_sublist_rcv",
        "ip_list_rcv",
        "__ip_",
        "dst_",
        "ip_neigh",
    ];
    const SOFTIRQ: &[&str] = &[
        "net_rx_action",
        "__napi_poll",
        "handle_softirqs",
        "__do_softirq",
        "do_softirq",
        "napi_",
        "__local_bh_enable_ip",
        "irq_exit",
        "raise_softirq",
        "run_ksoftirqd",
    ];
    if s.idle() {
        return "idle";
    }
    let matches = |sym: &str, pats: &[&str]| pats.iter().any(|p| sym.contains(p));
    for (i, f) in s.frames.iter().enumerate() {
        if let Some(owner) = bpf_name(&f.sym) {
            return match (
                owner.starts_with("router_"),
                owner.starts_with("bench_sink"),
                i,
            ) {
                (true, _, 0) => "router: BPF code",
                (true, _, _) => "router: helpers and map lookups",
                (_, true, _) => "sink program (drop + count)",
                _ => "generator program",
            };
        }
        let sym = f.sym.as_str();
        if matches(sym, REDIRECT) {
            return "XDP redirect (devmap, bulk queue)";
        }
        if matches(sym, PAGE) {
            return "page / frame memory";
        }
        if sym.starts_with("veth_") || sym.contains("ptr_ring") {
            return "veth driver (rings, xmit, NAPI poll)";
        }
        if matches(sym, GENERATOR) {
            return "generator: test-run live-frames loop";
        }
        if sym.starts_with("bpf_dispatcher") {
            return "XDP dispatcher";
        }
        if matches(sym, NETFILTER) {
            return "netfilter (conntrack, iptables NAT)";
        }
        if matches(sym, IP) {
            return "kernel IP routing and forwarding";
        }
        if matches(sym, SKB) {
            return "skb path (TC, netif, GRO, xmit)";
        }
        if matches(sym, SOFTIRQ) {
            return "softirq / NAPI plumbing";
        }
    }
    if s.comm.starts_with("perf") {
        return "perf itself";
    }
    if s.frames.first().is_some_and(|f| !f.dso.contains("kernel")) {
        return "user space";
    }
    "other kernel"
}

fn summarise_rate(
    result: rate::RateResult,
    window: Duration,
    cpu: CpuUse,
    samples: &[Sample],
    data: &Path,
    jit: &mut Option<JitIndex>,
    ours: [u32; 2],
) -> RateProfile {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let delivered = (result.delivered_pps * window.as_secs_f64()).max(1.0);
    // Shares are of the busy samples (this VM's cpu-clock samples idle CPUs unevenly), and
    // the busy CPU time per frame is the kernel's own account (/proc/stat) over the window.
    let busy: Vec<&Sample> = samples.iter().filter(|s| !s.idle()).collect();
    let total = busy.len() as u64;
    let per_sample = cpu.busy_ns / delivered / total.max(1) as f64;
    let cost = move |_: &Sample| per_sample;
    let categories = table(
        busy.iter().copied(),
        |s| {
            Some(if unrelated(s, ours) {
                UNRELATED.to_string()
            } else {
                rate_category(s).to_string()
            })
        },
        total,
        &cost,
        32,
    );
    let leaf = table(
        busy.iter().copied().filter(|s| !unrelated(s, ours)),
        |s| Some(s.leaf()),
        total,
        &cost,
        25,
    );
    let mut own: HashMap<String, (u64, f64)> = HashMap::new();
    let mut lines: HashMap<String, (u64, f64)> = HashMap::new();
    let mut sites = Sites::default();
    for s in samples {
        let Some(i) = s.innermost_bpf() else {
            continue;
        };
        let Some(owner) = bpf_name(&s.frames[i].sym) else {
            continue;
        };
        if !owner.starts_with("router_") {
            continue;
        }
        if i == 0 {
            let e = own.entry(format!("bpf:{owner} (own code)")).or_default();
            e.0 += 1;
            e.1 += cost(s);
            if let Some(line) = own_line(s, jit) {
                let e = lines.entry(line).or_default();
                e.0 += 1;
                e.1 += cost(s);
            }
        } else {
            sites.add(s, i, cost(s), jit);
        }
    }
    let (calls, maps) = sites.tables(total);
    let mut router = shares(own, total, TOP);
    router.extend(calls);
    router.sort_by_key(|r| std::cmp::Reverse(r.samples));
    RateProfile {
        variants: Vec::new(),
        generator_off_cpu: Vec::new(),
        delivered_pps_without_perf: 0.0,
        cpu_without_perf: CpuUse::default(),
        cpu,
        result,
        seconds: window.as_secs_f64(),
        cpus,
        frequency: RATE_FREQ,
        samples: total,
        categories,
        leaf,
        router,
        maps,
        hot_lines: shares(lines, total, TOP),
        data: data.display().to_string(),
    }
}

/// The apply's building blocks, each timed alone for `n` floating IPs: `n` single-element
/// writes (one `bpf()` call each, as routerd makes them) into a fresh hash map of the
/// router's floating-IP maps' shape, per-CPU (`FIP_STATS`) or not (`FIP_BY_*`),
/// preallocated or not (`BPF_F_NO_PREALLOC`); and `nft` adding the `n` elements of both
/// NAT maps in one transaction, in a namespace of its own.
fn building_blocks(n: usize) -> anyhow::Result<Vec<(String, f64)>> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let stats = size_of::<router_common::FipStats>();
    let mut out = Vec::new();
    for (what, percpu, value, flags) in [
        ("per-CPU hash (FIP_STATS), preallocated", true, stats, 0u32),
        (
            "per-CPU hash (FIP_STATS), BPF_F_NO_PREALLOC",
            true,
            stats,
            1,
        ),
        ("hash (FIP_BY_*), preallocated", false, 8, 0),
        ("hash (FIP_BY_*), BPF_F_NO_PREALLOC", false, 8, 1),
    ] {
        let ms = time_map_inserts(n, percpu, value, flags, cpus)?;
        out.push((format!("{n} inserts, one bpf() each: {what}"), ms));
    }
    let mut namespaces = router_tests::topo::Namespaces::default();
    let ns = namespaces.add(&router_tests::topo::unique("nft"));
    let nft = |rules: String| -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(rules.as_bytes())?;
        ensure!(child.wait()?.success(), "nft failed");
        Ok(())
    };
    nft(
        "table ip neutron_router {\n  map fip_dnat { type ipv4_addr : ipv4_addr; }\n  \
         map fip_snat { type ipv4_addr : ipv4_addr; }\n}\n"
            .to_string(),
    )?;
    let addr =
        |net: u8, i: usize| format!("{net}.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255);
    let dnat: Vec<String> = (0..n)
        .map(|i| format!("{} : {}", addr(198, i), addr(10, i)))
        .collect();
    let snat: Vec<String> = (0..n)
        .map(|i| format!("{} : {}", addr(10, i), addr(198, i)))
        .collect();
    let rules = format!(
        "add element ip neutron_router fip_dnat {{ {} }}\nadd element ip neutron_router fip_snat {{ {} }}\n",
        dnat.join(", "),
        snat.join(", ")
    );
    let start = Instant::now();
    nft(rules)?;
    out.push((
        format!("nft adding {n} elements to each of the two NAT maps (one transaction, process start included)"),
        start.elapsed().as_secs_f64() * 1e3,
    ));
    Ok(out)
}

/// ms for `n` single-element `BPF_MAP_UPDATE_ELEM` calls into a fresh hash map (4-byte
/// keys, `value`-byte values; per-CPU: one value per possible CPU).
fn time_map_inserts(
    n: usize,
    percpu: bool,
    value: usize,
    flags: u32,
    cpus: usize,
) -> anyhow::Result<f64> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const HASH: u32 = 1;
    const PERCPU_HASH: u32 = 5;
    let mut attr = [0u8; 72];
    let words = [
        if percpu { PERCPU_HASH } else { HASH },
        4,
        value as u32,
        router_common::MAX_FLOATING_IPS.max(n as u32),
        flags,
    ];
    for (i, w) in words.iter().enumerate() {
        attr[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    // SAFETY: `attr` outlives the call and is as long as the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_mut_ptr(), attr.len()) };
    ensure!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just returned this descriptor, owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let values = vec![
        0u8;
        if percpu {
            value.div_ceil(8) * 8 * cpus
        } else {
            value
        }
    ];
    let start = Instant::now();
    for i in 0..n as u32 {
        let key = (0xc612_0000u32 + i).to_be_bytes();
        let mut attr = [0u8; 32];
        attr[..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(values.as_ptr() as u64).to_ne_bytes());
        // SAFETY: `attr`, `key` and `values` outlive the call; the kernel reads the key
        // and value sizes the map was made with.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_ELEM,
                attr.as_mut_ptr(),
                attr.len(),
            )
        };
        ensure!(
            r == 0,
            "BPF_MAP_UPDATE_ELEM: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// The phase of routerd's apply a sample belongs to, from its call chain.
fn control_phase(s: &Sample, routerd: u32) -> &'static str {
    if s.idle() {
        return "idle (CPU not busy)";
    }
    let any = |pats: &[&str]| {
        s.frames
            .iter()
            .any(|f| pats.iter().any(|p| f.sym.contains(p)))
    };
    if s.comm == "nft" || (s.pid != routerd && any(&["nf_tables", "nft_"])) {
        return "nft process (slow-path ruleset: parse, netlink, nf_tables commit)";
    }
    if s.pid != routerd {
        return if s.comm.starts_with("perf") {
            "perf itself"
        } else {
            "other processes and kernel threads"
        };
    }
    if any(&["execve", "copy_process", "fork", "posix_spawn", "Command"]) {
        return "routerd: spawning processes (nft, ...)";
    }
    if any(&[
        "__sys_bpf",
        "__x64_sys_bpf",
        "bpf_map_update",
        "map_update_elem",
        "map_delete_elem",
        "map_lookup_elem",
    ]) {
        return "routerd: bpf() syscalls (map writes, reads)";
    }
    if any(&[
        "netlink",
        "rtnetlink",
        "__sys_sendmsg",
        "__sys_recvmsg",
        "sock_",
    ]) {
        return "routerd: netlink / sockets";
    }
    if any(&["toml", "serde", "DesiredState", "config::"]) {
        return "routerd: reading and validating the desired state";
    }
    if any(&["slowpath", "ruleset"]) {
        return "routerd: building the slow-path ruleset";
    }
    if any(&["malloc", "free", "realloc", "memcpy", "memmove"]) {
        return "routerd: allocation and copying (other)";
    }
    "routerd: other"
}

fn summarise_control(
    floating_ips: usize,
    routerd: u32,
    apply_ms: Vec<f64>,
    window: Duration,
    samples: &[Sample],
    data: &Path,
    timer: bool,
) -> ControlProfile {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let total = samples.len() as u64;
    let applies = apply_ms.len().max(1) as f64;
    // ms of CPU per apply: a sample's period (cpu-clock), or (cycles) an equal part of the
    // windows' time, as if routerd and its children kept one CPU busy.
    let equal = window.as_secs_f64() * 1e3 / total.max(1) as f64 / applies;
    let cost = move |s: &Sample| {
        if timer {
            s.period as f64 / 1e6 / applies
        } else {
            equal
        }
    };
    let processes = table(
        samples.iter(),
        |s| {
            Some(if s.idle() {
                "idle".to_string()
            } else if s.pid == routerd {
                format!("routerd (thread {})", s.comm)
            } else {
                s.comm.clone()
            })
        },
        total,
        &cost,
        TOP,
    );
    let phases = table(
        samples.iter(),
        |s| Some(control_phase(s, routerd).to_string()),
        total,
        &cost,
        32,
    );
    let busy = samples.iter().filter(|s| !s.idle());
    let leaf = table(
        busy,
        |s| {
            let who = if s.pid == routerd {
                "routerd"
            } else {
                s.comm.as_str()
            };
            Some(format!("{} [{who}]", s.leaf()))
        },
        total,
        &cost,
        25,
    );
    // Inclusive time of each function on routerd's stacks (once per sample), without the
    // roots every sample has (main, the runtime).
    let ours: Vec<&Sample> = samples.iter().filter(|s| s.pid == routerd).collect();
    let mut counts: HashMap<String, (u64, f64)> = HashMap::new();
    for s in &ours {
        let names: HashSet<String> = s.frames.iter().map(frame_name).collect();
        for n in names {
            let e = counts.entry(n).or_default();
            e.0 += 1;
            e.1 += cost(s);
        }
    }
    let roots = ours.len() as u64 * 9 / 10;
    counts.retain(|name, (n, _)| *n < roots.max(1) && !name.starts_with("[unknown]"));
    let inclusive = shares(counts, total, 30)
        .into_iter()
        .filter(|s| !s.name.starts_with("(other"))
        .collect();
    ControlProfile {
        building_blocks: Vec::new(),
        apply_ms_without_perf: Vec::new(),
        floating_ips,
        apply_ms,
        window_ms: window.as_secs_f64() * 1e3,
        cpus,
        frequency: CONTROL_FREQ,
        samples: total,
        processes,
        phases,
        leaf,
        inclusive,
        data: data.display().to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Markdown

fn share_rows(s: &mut String, rows: &[Share], unit: &str, digits: usize) {
    let _ = writeln!(
        s,
        "| symbol | samples | share | {unit} |\n|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| `{}` | {} | {:.1} % | {:.*} |",
            r.name.replace('|', "\\|"),
            r.samples,
            r.share * 100.0,
            digits,
            r.cost
        );
    }
    let _ = writeln!(s);
}

fn markdown(p: &Profile, old: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Where the time goes (profiles)\n");
    let _ = writeln!(
        s,
        "Generated by `{}` (`cargo xtask bench --profile`; the analysis between the `kept` \
         markers is written by hand and carried over when the file is regenerated).  \n\
         Machine: {}  \nLoad average (1, 5, 15 min) at the start: {}; at the end: {}  \n\
         Source profiled: {}  \nSampling: `perf record -e {}` ({} Hz for the \
         per-packet runs, {} Hz system-wide for the rate runs, {} Hz on routerd with DWARF \
         call chains for the control plane), `net.core.bpf_jit_kallsyms = 1`, \
         `kernel.bpf_stats_enabled = 0`.\n",
        p.command,
        p.machine,
        p.load[0],
        p.load[1],
        p.source,
        p.event,
        MICRO_FREQ,
        RATE_FREQ,
        CONTROL_FREQ
    );
    if p.event == "cpu-clock" {
        let _ = writeln!(
            s,
            "This VM has no PMU (`perf stat -e cycles` is not supported), so samples come from \
             the `cpu-clock` timer: each sample stands for its period of CPU time (the ns \
             columns add those up), hardware events (cache misses, branch misses) cannot be \
             counted, and time spent with interrupts off is charged to the instruction that \
             turns them back on (a spin-lock unlock, `local_bh_enable`). perf itself slows \
             what it samples, and the machine is shared (other builds and tests may run during \
             a profile; see the load averages): read the shares and the relative sizes, not \
             the absolute ns.\n"
        );
    }
    if let Some(block) = report::kept_block(old, "analysis") {
        let _ = writeln!(s, "{block}\n");
    } else {
        let _ = writeln!(
            s,
            "<!-- kept: analysis -->\n(No analysis written yet.)\n<!-- /kept -->\n"
        );
    }
    if !p.micro.is_empty() {
        let _ = writeln!(
            s,
            "## Per-packet runs (BPF_PROG_TEST_RUN loops)\n\n\
             The baseline router of the micro benchmark (10 routes, 1 floating IP, 1k sessions), \
             each row's runs looped for a few seconds without perf, then as long again under \
             `perf record -g -p <routerbench>`. *Timed region*: samples whose stack holds \
             `bpf_test_run` (the kernel's loop around the program). Sampling slows the loop \
             (its interrupts land inside the timed runs) but evenly, so `ns/packet` = the \
             samples' CPU time (cpu-clock periods) / runs, scaled by the kernel's figure without \
             perf over its figure under perf (`scaled by`; single runs are too noisy for their \
             own ratio and take the repeat rows' mean): a symbol's share of the unperturbed \
             time. For \
             `repeat` rows the timed region is the kernel's figure; for single runs it is \
             larger, as it also holds the timer set-up and clock reads around each run that \
             the kernel's figure leaves (partly) out. *Router code*: samples with the router's \
             JIT'd code on the stack (its own instructions and the kernel functions it calls); \
             *harness*: the rest of the region (the test loop, `local_bh_enable`, the XDP \
             dispatcher, clock reads). JIT'd BPF shows as `bpf:<function>`: `router_xdp` / \
             `router_tc` are the entries, `router_*_decide`, `_finish`, `_checksum`, `_report` \
             and `router_rule_table` / `router_fw_decide` global functions, `memmove` / \
             `memset` LLVM's copies compiled to BPF functions. Calls from BPF code are named by \
             call site and by the map the call works on (read from the program's JIT line info \
             and translated instructions); array and per-CPU array lookups are inlined by the \
             verifier and count as the caller's own code.\n"
        );
        let _ = writeln!(
            s,
            "| row | kernel-measured ns/packet | the same under perf | scaled by | timed region | router code | harness |\n|---|---|---|---|---|---|---|"
        );
        for m in &p.micro {
            let st = &m.stats;
            let _ = writeln!(
                s,
                "| {} {} {} | **{:.1}** | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} |",
                st.scenario,
                st.entry,
                st.method,
                m.without_perf.ns_per_packet,
                st.ns_per_packet,
                m.dilation,
                m.sampled_region_ns_per_packet,
                m.program_ns_per_packet,
                m.sampled_region_ns_per_packet - m.program_ns_per_packet
            );
        }
        let _ = writeln!(s);
        for m in &p.micro {
            let st = &m.stats;
            let _ = writeln!(
                s,
                "### {} ({}, {})\n\nKernel-measured **{:.1} ns/packet** without perf ({} runs \
                 in {:.1} s), {:.1} under perf ({} runs); timed region {:.1} ns, of which router \
                 code {:.1} ns; {} samples, {:.1} % of them in the timed region.\n",
                st.scenario,
                st.entry,
                st.method,
                m.without_perf.ns_per_packet,
                m.without_perf.runs,
                m.without_perf.seconds,
                st.ns_per_packet,
                st.runs,
                m.sampled_region_ns_per_packet,
                m.program_ns_per_packet,
                m.samples,
                m.region_samples as f64 * 100.0 / m.samples.max(1) as f64
            );
            let _ = writeln!(
                s,
                "By BPF function (its own code, and the kernel functions it calls):\n"
            );
            let _ = writeln!(
                s,
                "| function | share of region | own code ns | callees ns | total ns/packet |\n|---|---|---|---|---|"
            );
            for f in &m.bpf_functions {
                let _ = writeln!(
                    s,
                    "| `{}` | {:.1} % | {:.1} | {:.1} | {:.1} |",
                    f.name,
                    f.share * 100.0,
                    f.self_ns,
                    f.callees_ns,
                    f.self_ns + f.callees_ns
                );
            }
            let _ = writeln!(s, "\nTop symbols (self time) in the timed region:\n");
            share_rows(&mut s, &m.leaf, "ns/packet", 1);
            let _ = writeln!(s, "Calls from BPF code by map:\n");
            share_rows(&mut s, &m.maps, "ns/packet", 1);
            let _ = writeln!(
                s,
                "Calls from BPF code by call site (`callee [map] <- caller+return offset`; the callee \
                 is the kernel function seen most right under the BPF frame):\n"
            );
            share_rows(&mut s, &m.call_sites, "ns/packet", 1);
            let _ = writeln!(
                s,
                "The router's own BPF code by source line (the line-info record at or before \
                 the sampled instruction; inlined library code shows as its own line):\n"
            );
            share_rows(&mut s, &m.hot_lines, "ns/packet", 1);
            let _ = writeln!(
                s,
                "Outside the timed region (the syscall, copying the frame, the benchmark's \
                 checks), share of all samples:\n"
            );
            share_rows(&mut s, &m.outside, "ns/packet", 1);
        }
    }
    for r in &p.rate {
        let x = &r.result;
        let _ = writeln!(
            s,
            "## Forwarding rate: {}, {} B, {} flows (system-wide)\n\n\
             The rate run of the benchmark (generator, router and sink on the machine's {} \
             CPUs), {:.1} s. Without perf, just before: **{:.3} Mpps** delivered, CPUs (from \
             /proc/stat): {}. Under `perf record -g -a`: {:.3} Mpps offered, {:.3} Mpps \
             delivered, CPUs: {}. Busy CPU time per delivered frame under perf: **{:.0} ns** \
             (all CPUs' busy time / frames). Shares are of the busy samples (idle ones left \
             out: this VM's `cpu-clock` samples an idle CPU unevenly), and `ns/frame` = share x \
             that busy time per frame.\n",
            x.path.name(),
            x.frame_bytes,
            x.flows,
            r.cpus,
            r.seconds,
            r.delivered_pps_without_perf / 1e6,
            r.cpu_without_perf.describe(),
            x.offered_pps / 1e6,
            x.delivered_pps / 1e6,
            r.cpu.describe(),
            r.cpu.busy_ns / (x.delivered_pps * r.seconds).max(1.0),
        );
        let _ = writeln!(
            s,
            "The same run without perf, under other conditions than the benchmark's:\n\n\
             | condition | delivered Mpps | vs the benchmark's condition | CPUs |\n|---|---|---|---|\n\
             | the benchmark's | {:.3} | 1.00x | {} |",
            r.delivered_pps_without_perf / 1e6,
            r.cpu_without_perf.describe()
        );
        for v in &r.variants {
            let _ = writeln!(
                s,
                "| {} | {:.3} | {:.2}x | {} |",
                v.what,
                v.delivered_pps / 1e6,
                v.delivered_pps / r.delivered_pps_without_perf.max(1.0),
                v.cpu.describe()
            );
        }
        let _ = writeln!(s);
        let off: f64 = r.generator_off_cpu.iter().map(|o| o.share).sum();
        let _ = writeln!(
            s,
            "The generator's thread (which also runs the softirqs that carry every frame \
             through veth, router and sink) was off its CPU {:.0} % of the run without perf \
             (`sched:sched_switch` traced with call chains):\n",
            off * 100.0
        );
        let _ = writeln!(
            s,
            "| why (state: kernel functions under the scheduler) | times | seconds | share of the run |\n|---|---|---|---|"
        );
        for o in &r.generator_off_cpu {
            let _ = writeln!(
                s,
                "| `{}` | {} | {:.3} | {:.1} % |",
                o.name.replace('|', "\\|"),
                o.samples,
                o.cost,
                o.share * 100.0
            );
        }
        let _ = writeln!(s, "\nBy stage (busy samples):\n");
        share_rows(&mut s, &r.categories, "ns/frame", 0);
        let _ = writeln!(s, "The router's BPF code and what it calls:\n");
        share_rows(&mut s, &r.router, "ns/frame", 1);
        let _ = writeln!(s, "The router's calls by map:\n");
        share_rows(&mut s, &r.maps, "ns/frame", 1);
        let _ = writeln!(s, "The router's own BPF code by source line:\n");
        share_rows(&mut s, &r.hot_lines, "ns/frame", 1);
        let _ = writeln!(
            s,
            "Top symbols (self time; other processes' samples left out):\n"
        );
        share_rows(&mut s, &r.leaf, "ns/frame", 1);
    }
    if let Some(c) = &p.control {
        let mean = c.apply_ms.iter().sum::<f64>() / c.apply_ms.len().max(1) as f64;
        let _ = writeln!(
            s,
            "## Control plane: routerd applies {} floating IPs (from none)\n\n\
             routerd's own figure for the apply (reading the file to done): without perf, just \
             before: {} ms; {} applies recorded under perf: {} ms (mean {:.1} ms). `perf record \
             -p <routerd> --call-graph dwarf` (routerd's threads and the processes it starts, \
             nft) on only while each apply ran ({:.0} ms of windows); the applies back to none \
             in between are not recorded. Only routerd and its children are sampled (on a shared \
             machine other processes stay out), so shares are of their CPU time, and \
             `ms/apply` = the samples' CPU time (cpu-clock periods) / applies: the CPU work of \
             one apply, which can differ from its wall time.\n",
            c.floating_ips,
            c.apply_ms_without_perf
                .iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            c.apply_ms.len(),
            c.apply_ms
                .iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            mean,
            c.window_ms,
        );
        let _ = writeln!(
            s,
            "The apply's building blocks, each timed alone without perf on this machine:\n\n\
             | what | ms |\n|---|---|"
        );
        for (what, ms) in &c.building_blocks {
            let _ = writeln!(s, "| {what} | {ms:.1} |");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "By phase (from each sample's call chain):\n");
        share_rows(&mut s, &c.phases, "ms/apply", 1);
        let _ = writeln!(s, "By process and thread:\n");
        share_rows(&mut s, &c.processes, "ms/apply", 1);
        let _ = writeln!(s, "Top symbols (self time) `[process]`:\n");
        share_rows(&mut s, &c.leaf, "ms/apply", 2);
        let _ = writeln!(
            s,
            "Inclusive time on routerd's stacks (functions on 90 % or more of them left out):\n"
        );
        share_rows(&mut s, &c.inclusive, "ms/apply", 2);
    }
    if !p.perf_notes.is_empty() {
        let _ = writeln!(s, "## perf's warnings\n");
        for n in &p.perf_notes {
            let _ = writeln!(s, "- `{n}`");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "The perf.data files are kept for `perf report -i <file>` until the next run: {}.",
        p.micro
            .iter()
            .map(|m| m.data.as_str())
            .chain(p.rate.iter().map(|r| r.data.as_str()))
            .chain(p.control.iter().map(|c| c.data.as_str()))
            .map(|d| format!("`{d}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_output_is_parsed() {
        let text = "\
opt cgu.00 27317/27318     100000 \n\
\tffffffffc0012345 bpf_prog_6deef7357e7b4530_router_xdp_decide+0x1a3 (bpf_prog_6deef7357e7b4530_router_xdp_decide)\n\
\tffffffff81f091e0 bpf_test_run+0x1a ([kernel.kallsyms])\n\
\t          19145b <core::iter::Map<I, F> as Iterator>::next::h0123456789abcdef+0x6eb (/usr/bin/routerd)\n\
\n\
swapper     0/0     100000 \n\
\tffffffff821f4dab pv_native_safe_halt+0xb ([kernel.kallsyms])\n";
        let samples = parse_script(text);
        assert_eq!(samples.len(), 2);
        let s = &samples[0];
        assert_eq!(
            (s.comm.as_str(), s.pid, s.period),
            ("opt cgu.00", 27317, 100_000)
        );
        assert_eq!(s.frames.len(), 3);
        assert_eq!(s.leaf(), "bpf:router_xdp_decide");
        assert_eq!(s.frames[0].offset, 0x1a3);
        assert!(s.has("bpf_test_run"));
        assert_eq!(
            frame_name(&s.frames[2]),
            "<core::iter::Map<I, F> as Iterator>::next"
        );
        assert!(samples[1].idle());
        assert_eq!(rate_category(&samples[1]), "idle");
    }

    #[test]
    fn off_cpu_time_is_added_up_by_reason() {
        let text = "\
   42 100.000000: prev_comm=gen prev_pid=42 prev_prio=120 prev_state=D ==> next_comm=swapper/0 next_pid=0 next_prio=120\n\
\tffffffff821facd8 __schedule\n\
\tffffffff821fb643 schedule\n\
\tffffffff82202811 schedule_timeout\n\
\tffffffff821fc826 wait_for_completion\n\
\tffffffff81405223 synchronize_rcu_normal\n\
\tffffffff8154a89d bpf_dispatcher_change_prog\n\
    0 100.010000: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=gen next_pid=42 next_prio=120\n";
        let switches = parse_switches(text);
        assert_eq!(switches.len(), 2);
        let rows = off_cpu(&switches, 42, Duration::from_millis(100));
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].name,
            "asleep (D): synchronize_rcu_normal <- bpf_dispatcher_change_prog"
        );
        assert!((rows[0].cost - 0.010).abs() < 1e-6 && (rows[0].share - 0.1).abs() < 1e-6);
    }

    #[test]
    fn kept_blocks_are_found() {
        let old = "a\n<!-- kept: analysis -->\nhand\n<!-- /kept -->\nb";
        assert_eq!(
            report::kept_block(old, "analysis").as_deref(),
            Some("<!-- kept: analysis -->\nhand\n<!-- /kept -->")
        );
        assert_eq!(report::kept_block(old, "other"), None);
    }
}
