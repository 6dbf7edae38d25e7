//! `routerbench` (run by `cargo xtask bench`): the fast path and two kernel baselines (the
//! Neutron iptables path and routerd's slow-path nftables maps) side by side, in one run,
//! written to `docs/benchmarks.{md,json}` with SVG plots.

mod cluster;
mod cluster_report;
mod cluster_watch;
mod dvr;
mod ha;
mod jitmap;
mod live;
mod micro;
mod profile;
mod rate;
mod report;
mod scale_runs;

use std::time::{Duration, Instant};

use clap::Parser;
use rate::{CpuResult, FipConnectionResult, FlowtableProbe, Path, RateResult, TcpResult};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "benchmarks: per-packet cost, forwarding rate, floating-IP scale, control plane")]
struct Args {
    /// Directory that receives benchmarks.md, benchmarks.json and the plots.
    #[arg(long, default_value = "docs")]
    out: std::path::PathBuf,
    /// Shorter runs and fewer sizes (a smoke run, not for the record).
    #[arg(long)]
    quick: bool,
    /// Only these sections (micro, live, rate, tcp, cpu, scale, control, cluster, ha, dvr); all by
    /// default. `tcp` and `cpu` share `rate`'s setups.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Instead of the benchmarks: profile them with `perf record` (the per-packet runs, the
    /// XDP and TC forwarding-rate runs, routerd applying 10k floating IPs) and write
    /// profile.md and profile.json to `--out`. `--only micro,rate,control` picks sections.
    #[arg(long)]
    profile: bool,
    /// Instead of the benchmarks: rewrite README.md's figures block from the repository's
    /// docs/benchmarks.json (a run that writes docs/ does it too).
    #[arg(long)]
    readme: bool,
    /// Instead of the benchmarks: write the report (benchmarks.md, the plots, README.md's
    /// figures) again from the repository's docs/benchmarks.json, as this build renders it.
    #[arg(long)]
    render: bool,
    /// Where `--profile` keeps its perf.data files.
    #[arg(long, default_value = "target/profile")]
    perf_data: std::path::PathBuf,
}

/// Everything one run measured.
#[derive(Serialize, Deserialize, Default)]
pub struct Results {
    pub command: String,
    pub machine: String,
    pub quick: bool,
    pub micro: Vec<micro::MicroResult>,
    pub rate: Vec<RateResult>,
    pub tcp: Vec<TcpResult>,
    /// CPU time at a fixed offered load, every path.
    #[serde(default)]
    pub cpu: Vec<CpuResult>,
    /// Whether the kernel makes nftables flowtables (why they are not a baseline).
    #[serde(default)]
    pub flowtable: Option<FlowtableProbe>,
    pub scale: Vec<RateResult>,
    pub floating_ip_connections: Vec<FipConnectionResult>,
    pub control: Vec<ControlResult>,
    pub updates: Vec<UpdateResult>,
    /// A change through etcd against the same change through the local API.
    #[serde(default)]
    pub cluster: Vec<cluster::ClusterResult>,
    /// Floating IPs over several nodes through etcd against the nodes' local APIs.
    #[serde(default)]
    pub cluster_bulk: Vec<cluster::BulkResult>,
    /// etcd's delivery and load as the watching nodes grow.
    #[serde(default)]
    pub cluster_watchers: Vec<cluster_watch::WatchersResult>,
    /// The router programs' cost per packet under live load (kernel BPF statistics).
    #[serde(default)]
    pub live: Vec<live::LiveResult>,
    /// HA routers: the session sync under load, a node lost, a planned switchover.
    #[serde(default)]
    pub ha: Vec<ha::HaResult>,
    /// Distributed routers: east-west across compute nodes, distributed and centralised.
    #[serde(default)]
    pub dvr: Vec<dvr::DvrResult>,
    /// Distributed routers: each node's kernel objects, ours and Neutron DVR's.
    #[serde(default)]
    pub dvr_objects: Vec<dvr::NodeObjects>,
}

/// Forwarding while the maps change under it: every offered frame must arrive.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UpdateResult {
    pub path: String,
    pub floating_ips: usize,
    /// SIGHUP applies (a floating IP added or removed) during the measurement.
    pub applies: u64,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    /// Frames the router's gateway port forwarded, and dropped or passed, meanwhile.
    pub router_forwarded: u64,
    pub router_not_forwarded: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ControlResult {
    pub what: String,
    pub path: String,
    pub floating_ips: usize,
    pub millis: f64,
}

/// The fixed load of the CPU section: 64-byte frames in 1024 flows at a rate every path
/// carries (the kernel baselines deliver about 0.4 Mpps here).
const CPU_OFFERED_PPS: u64 = 150_000;
const CPU_FRAME_BYTES: u32 = 64;
const CPU_FLOWS: u32 = 1024;

/// Progress on stderr: what runs now, and how long the run has taken.
struct Progress {
    started: Instant,
    step: usize,
}

impl Progress {
    fn say(&mut self, what: &str) {
        self.step += 1;
        eprintln!(
            "[{:>4.0}s] {:>3}. {what}",
            self.started.elapsed().as_secs_f64(),
            self.step
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.readme {
        let json = std::fs::read_to_string(report::repo().join("docs/benchmarks.json"))?;
        report::update_readme(&serde_json::from_str(&json)?)?;
        eprintln!("routerbench: wrote README.md's figures");
        return Ok(());
    }
    if args.render {
        let docs = report::repo().join("docs");
        let json = std::fs::read_to_string(docs.join("benchmarks.json"))?;
        report::write(&docs, &serde_json::from_str(&json)?)?;
        eprintln!("routerbench: wrote the report again from docs/benchmarks.json");
        return Ok(());
    }
    router_tests::require_root();
    run(args)
}

fn run(args: Args) -> anyhow::Result<()> {
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let mut progress = Progress {
        started: Instant::now(),
        step: 0,
    };
    if args.profile {
        return profile::run(
            profile::Options {
                out: args.out.clone(),
                data: args.perf_data.clone(),
                quick: args.quick,
                only: args.only.clone(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
            },
            &mut |what| progress.say(what),
        );
    }
    let mut results = Results {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: report::machine(),
        quick: args.quick,
        ..Default::default()
    };
    let duration = if args.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    if wants("micro") {
        results.micro = micro::run_all(args.quick, &mut |what| progress.say(what))?;
    }
    if wants("live") {
        results.live = live::run_all(args.quick, &mut |what| progress.say(what))?;
    }
    if wants("rate") || wants("scale") {
        results.flowtable = Some(rate::probe_flowtable());
    }
    if wants("rate") || wants("tcp") || wants("cpu") {
        let sizes: &[u32] = if wants("rate") { &[64, 1500] } else { &[] };
        let flows: &[u32] = &[1, 1024];
        for path in [
            Path::Ceiling,
            Path::Xdp,
            Path::Tc,
            Path::Auto,
            Path::Neutron,
            Path::Nftables,
        ] {
            // Frame rates and CPU on every path but the default mode (see below), TCP
            // through every router.
            let frames = path != Path::Auto && (wants("rate") || wants("cpu"));
            let tcp = path != Path::Ceiling && wants("tcp");
            if !frames && !tcp {
                continue;
            }
            progress.say(&format!("rate: setting up {}", path.name()));
            let mut setup = rate::setup(path, 1)?;
            // The default mode is measured for TCP bulk, which decides it; its frame rates
            // are the TC entry's on these veths.
            let sizes: &[u32] = if path == Path::Auto { &[] } else { sizes };
            for &size in sizes {
                for &f in flows {
                    progress.say(&format!("rate: {}, {size} B, {f} flows", path.name()));
                    let mut row = setup.measure(size, f, duration)?;
                    if matches!(path, Path::Xdp | Path::Tc) {
                        // A second run with the kernel's BPF statistics on: they cost every
                        // program (generator and sink too), so they stay off for the rates.
                        row.router_program_ns =
                            rate::with_bpf_stats(|| setup.measure(size, f, duration))?
                                .router_program_ns;
                    }
                    results.rate.push(row);
                }
            }
            if path != Path::Auto && wants("cpu") {
                progress.say(&format!(
                    "cpu: {}, {} frames/s offered, {CPU_FRAME_BYTES} B, {CPU_FLOWS} flows",
                    path.name(),
                    CPU_OFFERED_PPS
                ));
                results.cpu.push(setup.cpu_at_rate(
                    CPU_FRAME_BYTES,
                    CPU_FLOWS,
                    CPU_OFFERED_PPS,
                    // At least a second: /proc/stat counts in 10 ms ticks.
                    duration.max(Duration::from_secs(1)),
                )?);
            }
            if path != Path::Ceiling && wants("tcp") {
                progress.say(&format!(
                    "tcp: {}, iperf3 and SNAT connections",
                    path.name()
                ));
                results
                    .tcp
                    .push(setup.tcp(duration.max(Duration::from_secs(1)))?);
            }
        }
    }
    if wants("scale") || wants("control") {
        let counts: &[usize] = if args.quick {
            &[1, 1000]
        } else {
            &[1, 100, 1000, 10_000]
        };
        for path in [Path::Xdp, Path::Tc, Path::Neutron, Path::Nftables] {
            for &n in counts {
                progress.say(&format!(
                    "scale: setting up {} with {n} floating IPs",
                    path.name()
                ));
                let mut setup = rate::setup(path, n)?;
                if let Some(t) = setup.iptables_restore {
                    results.control.push(ControlResult {
                        what: "iptables-restore of the Neutron rules".into(),
                        path: path.name().into(),
                        floating_ips: n,
                        millis: t.as_secs_f64() * 1e3,
                    });
                }
                if let Some(t) = setup.nftables_apply {
                    results.control.push(ControlResult {
                        what: "libnftables applies routerd's slow-path ruleset (one transaction)"
                            .into(),
                        path: path.name().into(),
                        floating_ips: n,
                        millis: t.as_secs_f64() * 1e3,
                    });
                }
                if wants("scale") {
                    // 60,000 flows: almost every packet is a new connection for conntrack.
                    for flows in [60_000, 1024] {
                        if flows == 1024 && n != *counts.last().unwrap_or(&1) {
                            continue;
                        }
                        progress.say(&format!(
                            "scale: {}, {n} floating IPs, {flows} flows",
                            path.name()
                        ));
                        results.scale.push(setup.measure(64, flows, duration)?);
                    }
                }
                if wants("control")
                    && !path.is_kernel_baseline()
                    && n == *counts.last().unwrap_or(&1)
                {
                    progress.say(&format!(
                        "control: {} forwarding while floating IPs change",
                        path.name()
                    ));
                    let (r, applies, router_forwarded, router_not_forwarded) =
                        setup.measure_during_updates(64, 1024, duration)?;
                    results.updates.push(UpdateResult {
                        path: path.name().into(),
                        floating_ips: n,
                        applies,
                        offered_pps: r.offered_pps,
                        delivered_pps: r.delivered_pps,
                        router_forwarded,
                        router_not_forwarded,
                    });
                }
                if wants("control") && path == Path::Xdp && n == *counts.last().unwrap_or(&1) {
                    progress.say("control: routerd applies floating IPs");
                    let all = setup.apply_floating_ips(0, 0)?;
                    let _ = all;
                    let add_all = setup.apply_floating_ips(n, 0)?;
                    results.control.push(ControlResult {
                        what: format!("routerd applies {n} floating IPs (SIGHUP, from none)"),
                        path: path.name().into(),
                        floating_ips: n,
                        millis: add_all.as_secs_f64() * 1e3,
                    });
                    results.control.push(ControlResult {
                        what: format!(
                            "the router's own apply of {n} floating IPs (maps and slow-path rules, file read excluded)"
                        ),
                        path: path.name().into(),
                        floating_ips: n,
                        millis: setup.last_router_apply()?.as_secs_f64() * 1e3,
                    });
                    let one = setup.apply_floating_ips(n, 1)?;
                    results.control.push(ControlResult {
                        what: format!("routerd adds one floating IP to {n}"),
                        path: path.name().into(),
                        floating_ips: n + 1,
                        millis: one.as_secs_f64() * 1e3,
                    });
                    // The first change after a bulk apply is the slowest (seen: 50-155 ms
                    // against 10-45 ms after it): later single changes, as a median.
                    let mut changes = Vec::new();
                    let mut router_applies = Vec::new();
                    for plus in [2, 1, 2, 1, 2, 1] {
                        changes.push(setup.apply_floating_ips(n, plus)?);
                        router_applies.push(setup.last_router_apply()?);
                    }
                    changes.sort();
                    router_applies.sort();
                    results.control.push(ControlResult {
                        what: format!(
                            "the router's own apply of one floating IP beside {n} (maps and slow-path rules, file read excluded; median of {})",
                            router_applies.len()
                        ),
                        path: path.name().into(),
                        floating_ips: n + 1,
                        millis: router_applies[router_applies.len() / 2].as_secs_f64() * 1e3,
                    });
                    results.control.push(ControlResult {
                        what: format!(
                            "routerd adds or removes one floating IP beside {n} (median of the next {} changes)",
                            changes.len()
                        ),
                        path: path.name().into(),
                        floating_ips: n + 1,
                        millis: changes[changes.len() / 2].as_secs_f64() * 1e3,
                    });
                    let same = setup.apply_floating_ips(n, 1)?;
                    results.control.push(ControlResult {
                        what: format!("routerd re-applies the same {} floating IPs", n + 1),
                        path: path.name().into(),
                        floating_ips: n + 1,
                        millis: same.as_secs_f64() * 1e3,
                    });
                    // One at a time through the API, as a controller would.
                    let mut by_api = setup.api_floating_ip_changes(7)?;
                    by_api.sort();
                    results.control.push(ControlResult {
                        what: format!(
                            "one floating IP added or removed beside {} through the API (request to answer, median of {})",
                            n + 1,
                            by_api.len()
                        ),
                        path: path.name().into(),
                        floating_ips: n + 1,
                        millis: by_api[by_api.len() / 2].as_secs_f64() * 1e3,
                    });
                    // Through the API, as an operator would: from none again.
                    setup.apply_floating_ips(0, 0)?;
                    let by_routerctl = setup.routerctl_apply(n)?;
                    results.control.push(ControlResult {
                        what: format!(
                            "`routerctl apply FILE` of {n} floating IPs, from none (command start to exit)"
                        ),
                        path: path.name().into(),
                        floating_ips: n,
                        millis: by_routerctl.as_secs_f64() * 1e3,
                    });
                    let again = setup.routerctl_apply(n)?;
                    results.control.push(ControlResult {
                        what: format!("`routerctl apply FILE` of the same {n} floating IPs"),
                        path: path.name().into(),
                        floating_ips: n,
                        millis: again.as_secs_f64() * 1e3,
                    });
                }
                if wants("scale") {
                    // Last: it detaches the sink the rate runs above need.
                    progress.say(&format!(
                        "scale: {}, {n} floating IPs, new TCP connections",
                        path.name()
                    ));
                    results
                        .floating_ip_connections
                        .push(setup.floating_ip_connections(duration)?);
                }
            }
        }
    }
    if wants("cluster") {
        let changes = if args.quick { 10 } else { 50 };
        results.cluster = cluster::run(changes, &mut |what| progress.say(what))?;
        let (fips, rounds) = if args.quick { (1000, 1) } else { (10_000, 3) };
        results.cluster_bulk = cluster::run_bulk(fips, rounds, &mut |what| progress.say(what))?;
        let (watchers, writes, burst): (&[usize], _, _) = if args.quick {
            (&[1, 10], 10, 50)
        } else {
            (&[1, 10, 100], 20, 200)
        };
        results.cluster_watchers =
            cluster_watch::run(watchers, writes, burst, &mut |what| progress.say(what))?;
    }
    if wants("ha") {
        results.ha = ha::run(args.quick, &mut |what| progress.say(what))?;
        for conntrackd in [false, true] {
            if router_tests::keepalived::available(conntrackd) {
                results.ha.push(ha::run_baseline(conntrackd, &mut |what| {
                    progress.say(what)
                })?);
            } else {
                eprintln!(
                    "routerbench: keepalived{} not installed: its HA baseline is skipped \
                     (cargo xtask bench installs them)",
                    if conntrackd { " or conntrackd" } else { "" }
                );
            }
        }
    }
    if wants("dvr") {
        (results.dvr, results.dvr_objects) = dvr::run(args.quick, &mut |what| progress.say(what))?;
    }
    progress.say("writing the report");
    report::write(&args.out, &results)?;
    eprintln!(
        "routerbench: wrote {}",
        args.out.join("benchmarks.md").display()
    );
    Ok(())
}
