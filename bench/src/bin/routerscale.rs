//! `routerscale`: one routerd serving many routers (1,000 by default), each in its own
//! namespace with a gateway and three internal ports. Measures the time to start them all,
//! the memory they hold (idle, and once every port has carried a frame), the time to add and
//! remove one while another carries traffic, and a restart of routerd under traffic; writes
//! `docs/scale.md` and `docs/scale.json`.
//!
//! Run through `cargo xtask scale [--routers N]` (which builds the release binaries).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use router_tests::{
    probe::UdpStream,
    scale::{EXT_HOST, ScaleTopology, meminfo, pinned_bpf_memory, rss},
    traffic,
};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Many routers under one routerd: start time, memory, live changes")]
struct Args {
    /// Routers to start.
    #[arg(long, default_value_t = 1000)]
    routers: usize,
    /// Fast-path mode of every router (xdp or tc).
    #[arg(long, default_value = "xdp")]
    mode: String,
    /// `nat.max_sessions` of every router.
    #[arg(long, default_value_t = 4096)]
    max_sessions: u32,
    /// Preallocate every router's session table (`nat.preallocate_sessions = true`, the
    /// default of a router) instead of making it as sessions come, as a node of many
    /// routers would.
    #[arg(long)]
    preallocated_sessions: bool,
    /// `nat.max_floating_ips` of every router (each has one): its floating-IP tables and
    /// their per-CPU counters are preallocated.
    #[arg(long, default_value_t = 64)]
    max_floating_ips: u32,
    /// Start routerd with `--expedited-start` (RCU grace periods expedited while the routers
    /// start).
    #[arg(long)]
    expedited_start: bool,
    /// Where the report goes (the JSON beside it).
    #[arg(long, default_value = "docs/scale.md")]
    out: PathBuf,
}

#[derive(Serialize)]
struct Report {
    command: String,
    machine: String,
    routers: usize,
    interfaces_per_router: usize,
    mode: String,
    max_sessions: u32,
    preallocated_sessions: bool,
    max_floating_ips: u32,
    /// routerd ran with `--expedited-start`.
    expedited_start: bool,
    topology_build_s: f64,
    topology_memory_mib: f64,
    start_ms: u64,
    start_wall_s: f64,
    routerd_rss_mib: f64,
    bpf_memlock_mib: f64,
    bpf_maps: usize,
    /// The largest maps and programs by name, in KiB per router.
    bpf_largest_kib: Vec<(String, f64)>,
    bpf_programs: usize,
    routerd_fds: usize,
    node_memory_mib: f64,
    /// The /proc/meminfo fields that grew most while the routers started, in MiB.
    node_memory_by_kind: Vec<(String, f64)>,
    /// Router ports that were sent a frame after the start (every port with no host).
    ports_framed: usize,
    /// Node memory taken since before the start, once those ports had each carried a frame.
    node_memory_carrying_mib: f64,
    /// The /proc/meminfo fields that grew most from the start to then, in MiB.
    node_memory_carrying_by_kind: Vec<(String, f64)>,
    samples_forwarding: usize,
    samples: usize,
    add_one_ms: u128,
    remove_one_ms: u128,
    change_stream_sent: u64,
    change_stream_lost: usize,
    restart_ms: u64,
    restart_stream_sent: u64,
    restart_stream_lost: usize,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Runs streams of datagrams through router `sample` (each at most 50 s, the stream's own
/// bound) until `done` says stop; returns (sent, lost).
fn stream_until(
    topo: &ScaleTopology,
    sample: usize,
    port: u16,
    mut done: impl FnMut() -> bool,
) -> (u64, usize) {
    let s = topo
        .samples
        .iter()
        .find(|s| s.router == sample)
        .expect("a sampled router");
    let (mut sent, mut lost) = (0, 0);
    loop {
        let stream = UdpStream::start(
            &s.vm_ns,
            port,
            SocketAddrV4::new(Ipv4Addr::from(EXT_HOST), port),
            &s.ext_ns,
            port,
            Duration::from_millis(5),
        );
        let until = Instant::now() + Duration::from_secs(50);
        let mut finished = false;
        while Instant::now() < until {
            if done() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(200));
        let report = stream.finish();
        sent += report.sent;
        lost += report.lost.len();
        if finished {
            return (sent, lost);
        }
    }
}

/// The command that makes this report, with the options that differ from the defaults.
fn command_line(args: &Args) -> String {
    let defaults = Args::parse_from(["routerscale"]);
    let mut cmd = format!("cargo xtask scale --routers {}", args.routers);
    if args.mode != defaults.mode {
        cmd += &format!(" --mode {}", args.mode);
    }
    if args.max_sessions != defaults.max_sessions {
        cmd += &format!(" --max-sessions {}", args.max_sessions);
    }
    if args.preallocated_sessions {
        cmd += " --preallocated-sessions";
    }
    if args.max_floating_ips != defaults.max_floating_ips {
        cmd += &format!(" --max-floating-ips {}", args.max_floating_ips);
    }
    if args.expedited_start {
        cmd += " --expedited-start";
    }
    if args.out != defaults.out {
        cmd += &format!(" --out {}", args.out.display());
    }
    cmd
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.routers < 3 {
        bail!("--routers must be at least 3");
    }
    if std::env::var_os("ROUTERD_BIN").is_none() {
        let exe = std::env::current_exe().context("locating routerscale")?;
        let routerd = exe.with_file_name("routerd");
        // SAFETY: single-threaded at this point.
        unsafe { std::env::set_var("ROUTERD_BIN", &routerd) };
    }
    let n = args.routers;
    let mib = |b: u64| b as f64 / MIB;

    eprintln!("waiting for the node's free memory to hold still...");
    let settled = wait_memory_settled();
    eprintln!("  {:.0} s", settled.as_secs_f64());
    eprintln!("building {} router namespaces with 4 ports each...", n + 1);
    let avail0 = meminfo("MemAvailable");
    let t = Instant::now();
    let mut topo =
        ScaleTopology::build(n + 1, &args.mode, args.max_sessions, &[0, n / 2, n - 1, n]);
    topo.preallocate_sessions = args.preallocated_sessions;
    topo.max_floating_ips = args.max_floating_ips;
    let topology_build_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let avail1 = meminfo("MemAvailable");
    let kinds1 = memory_kinds();
    topo.write_config(0..n);

    let routerd_args: Vec<&str> = if args.expedited_start {
        vec!["--expedited-start"]
    } else {
        Vec::new()
    };
    eprintln!("starting routerd with {n} routers...");
    let t = Instant::now();
    let timeout = Duration::from_secs(60 + n as u64);
    let (mut first, start_ms) = topo.start_routerd(timeout, &routerd_args);
    let start_wall_s = t.elapsed().as_secs_f64();
    eprintln!("  started in {start_ms} ms");
    std::thread::sleep(Duration::from_secs(3));
    let pid = first.pid().context("routerd pid")?;
    let avail2 = meminfo("MemAvailable");
    let kinds2 = memory_kinds();
    let routerd_rss = rss(pid);
    let ids: Vec<String> = (0..n).map(|i| topo.router_id(i)).collect();
    let pinned = pinned_bpf_memory(&ids);
    let routerd_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());

    eprintln!("sending a frame into every router port...");
    let ports_framed = topo.frame_into_every_port();
    std::thread::sleep(Duration::from_secs(2));
    let avail3 = meminfo("MemAvailable");
    let kinds3 = memory_kinds();
    eprintln!("  {ports_framed} ports");

    let live: Vec<usize> = topo
        .samples
        .iter()
        .map(|s| s.router)
        .filter(|&r| r < n)
        .collect();
    let samples_forwarding = topo
        .samples
        .iter()
        .filter(|s| s.router < n)
        .filter(|s| {
            traffic::ping(&s.vm_ns, EXT_HOST, 2)
                && traffic::ping(&s.ext_ns, ScaleTopology::floating_ip(s.router).octets(), 2)
        })
        .count();
    eprintln!(
        "  {samples_forwarding} of {} sampled routers forward",
        live.len()
    );

    eprintln!("adding router {n} and removing router 1 while router 0 carries a stream...");
    let (mut add_one_ms, mut remove_one_ms) = (0, 0);
    let (change_stream_sent, change_stream_lost) = {
        let mut step = 0;
        let mut t = Instant::now();
        stream_until(&topo, 0, 6001, || match step {
            0 => {
                std::thread::sleep(Duration::from_millis(300));
                topo.write_config(0..=n);
                t = Instant::now();
                first.reload();
                step = 1;
                false
            }
            1 => {
                if router_user::paths::router_info_file(&topo.router_id(n)).exists() {
                    add_one_ms = t.elapsed().as_millis();
                    topo.write_config((0..=n).filter(|&i| i != 1));
                    t = Instant::now();
                    first.reload();
                    step = 2;
                }
                false
            }
            _ => {
                if router_user::datapath::pinned_routers().contains(&topo.router_id(1)) {
                    return false;
                }
                remove_one_ms = t.elapsed().as_millis();
                true
            }
        })
    };
    eprintln!(
        "  add {add_one_ms} ms, remove {remove_one_ms} ms; stream lost {change_stream_lost} of {change_stream_sent}"
    );

    eprintln!(
        "restarting routerd under traffic through router {}...",
        n / 2
    );
    // Stopped (its fast paths keep running); dropped at the end, which tears them down.
    first.stop();
    let (second, restart_ms, restart_stream_sent, restart_stream_lost) =
        std::thread::scope(|scope| {
            let starting = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                topo.start_routerd(timeout, &routerd_args)
            });
            let (sent, lost) = stream_until(&topo, n / 2, 6002, || starting.is_finished());
            let (second, ms) = starting.join().expect("starting routerd again");
            (second, ms, sent, lost)
        });
    eprintln!(
        "  restarted in {restart_ms} ms; stream lost {restart_stream_lost} of {restart_stream_sent}"
    );

    let report = Report {
        command: command_line(&args),
        machine: machine(),
        routers: n,
        interfaces_per_router: 4,
        mode: args.mode.clone(),
        expedited_start: args.expedited_start,
        max_sessions: args.max_sessions,
        preallocated_sessions: args.preallocated_sessions,
        max_floating_ips: args.max_floating_ips,
        topology_build_s,
        topology_memory_mib: mib(avail0.saturating_sub(avail1)),
        start_ms,
        start_wall_s,
        routerd_rss_mib: mib(routerd_rss),
        bpf_memlock_mib: mib(pinned.bytes),
        bpf_maps: pinned.maps,
        bpf_largest_kib: pinned
            .by_name
            .iter()
            .take(6)
            .map(|(name, bytes)| (name.clone(), *bytes as f64 / 1024.0 / n as f64))
            .collect(),
        bpf_programs: pinned.programs,
        routerd_fds,
        node_memory_mib: mib(avail1.saturating_sub(avail2)),
        node_memory_by_kind: grown(&kinds1, &kinds2),
        ports_framed,
        node_memory_carrying_mib: mib(avail1.saturating_sub(avail3)),
        node_memory_carrying_by_kind: grown(&kinds2, &kinds3),
        samples_forwarding,
        samples: live.len(),
        add_one_ms,
        remove_one_ms,
        change_stream_sent,
        change_stream_lost,
        restart_ms,
        restart_stream_sent,
        restart_stream_lost,
    };
    write_report(&args.out, &report)?;
    drop(second);
    drop(first);
    Ok(())
}

/// Waits (at most 180 s) until MemAvailable holds still: within 16 MiB over 2 s. The kernel
/// frees a deleted namespace's memory in the background, and an earlier run's thousand
/// namespaces take a while: measured meanwhile, what this run takes would be hidden by what
/// that frees. Returns how long it waited.
fn wait_memory_settled() -> Duration {
    let started = Instant::now();
    let mut last = meminfo("MemAvailable");
    while started.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_secs(2));
        let now = meminfo("MemAvailable");
        if now.abs_diff(last) < 16 * 1024 * 1024 {
            break;
        }
        last = now;
    }
    started.elapsed()
}

/// The kinds of memory that grew by 1 MiB or more from `before` to `after`, in MiB.
fn grown(before: &[(&'static str, u64)], after: &[(&'static str, u64)]) -> Vec<(String, f64)> {
    before
        .iter()
        .zip(after)
        .map(|((kind, before), (_, after))| {
            (kind.to_string(), after.saturating_sub(*before) as f64 / MIB)
        })
        .filter(|(_, grown)| *grown >= 1.0)
        .collect()
}

/// The /proc/meminfo fields that tell kernel memory apart, in bytes: BPF maps and
/// programs are mostly `VmallocUsed` (large maps, JIT images) and `Percpu` (per-CPU maps),
/// the rest of the kernel's objects `SUnreclaim`; routerd's own memory is `AnonPages`.
fn memory_kinds() -> Vec<(&'static str, u64)> {
    [
        "AnonPages",
        "SUnreclaim",
        "SReclaimable",
        "VmallocUsed",
        "Percpu",
        "KernelStack",
        "PageTables",
        "Cached",
    ]
    .into_iter()
    .map(|kind| (kind, meminfo(kind)))
    .collect()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = meminfo("MemTotal") as f64 / MIB / 1024.0;
    format!("{cpus} CPUs, {memory:.1} GiB, Linux {}", kernel.trim())
}

/// Memory kinds and their growth, as a report's cell.
fn kinds(grown: &[(String, f64)]) -> String {
    if grown.is_empty() {
        return "none by 1 MiB or more".into();
    }
    grown
        .iter()
        .map(|(kind, mib)| format!("{kind} {mib:.0} MiB"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_report(out: &PathBuf, r: &Report) -> Result<()> {
    let per = |v: f64| v / r.routers as f64;
    let md = format!(
        "# Many routers on one node\n\n\
         Command: `{cmd}`  \nMachine: {machine}\n\n\
         One routerd serves {n} routers, each in its own namespace with a gateway port and \
         three internal ports ({ifaces} interfaces), every router with the same tenant \
         subnets and a floating IP, mode `{mode}`, `nat.max_sessions = {sessions}` ({tables}), \
         `nat.max_floating_ips = {fips}` (the floating-IP tables are preallocated). \
         Routers are set up two per CPU at a time; each loads and verifies its own programs \
         (mode `xdp`: the XDP and the TC entry; mode `tc`: the TC entry). {expedited}\n\n\
         | what | figure |\n|---|---|\n\
         | routers started (routerd's own figure, from the first to the last attached) | {start_s:.1} s ({start_per:.0} ms per router) |\n\
         | routerd started to every router attached (wall clock) | {wall:.1} s |\n\
         | kernel memory of the pinned BPF maps and programs (their memlock; JIT images and BTF not included) | {bpf:.0} MiB ({bpf_per:.2} MiB per router; {maps} maps, {progs} programs) |\n\
         | of it, the largest per router | {largest} |\n\
         | node memory taken by starting the routers (MemAvailable before and after) | {node:.0} MiB ({node_per:.2} MiB per router) |\n\
         | of it, by kind (/proc/meminfo growth) | {kinds} |\n\
         | node memory taken once every router port has carried a frame (a broadcast from the fabric into each of the {framed} ports with no host; MemAvailable before the start and after) | {carrying:.0} MiB ({carrying_per:.2} MiB per router) |\n\
         | of it, taken by the frames (/proc/meminfo growth; a page pool's pages are none of these kinds) | {carrying_kinds} |\n\
         | routerd resident memory | {rss:.0} MiB |\n\
         | routerd's open file descriptors | {fds} ({fds_per:.1} per router) |\n\
         | the namespaces and veth pairs themselves (not ours; built in {build:.0} s) | {topo_mem:.0} MiB |\n\
         | sampled routers forwarding (VM -> external host by SNAT, external host -> floating IP) | {fwd} of {samples} |\n\
         | add one router to {n} (SIGHUP to attached) | {add} ms |\n\
         | remove one router (SIGHUP to its pins gone) | {remove} ms |\n\
         | datagrams router 0 lost meanwhile (5 ms apart) | {cl} of {cs} |\n\
         | restart routerd: every router adopted (routerd's figure) | {restart_s:.1} s |\n\
         | datagrams a router lost during the restart (5 ms apart) | {rl} of {rs} |\n",
        cmd = r.command,
        machine = r.machine,
        n = r.routers,
        ifaces = r.routers * r.interfaces_per_router,
        mode = r.mode,
        expedited = if r.expedited_start {
            "routerd runs with `--expedited-start`: the kernel's RCU grace periods are \
             expedited while the routers start."
        } else {
            "routerd runs without `--expedited-start`."
        },
        sessions = r.max_sessions,
        fips = r.max_floating_ips,
        tables = if r.preallocated_sessions {
            "the session table is preallocated; every other hash map but the floating IPs' \
             holds only what is in it"
        } else {
            "`nat.preallocate_sessions = false`: the session table, like every other hash map \
             but the floating IPs', holds only what is in it"
        },
        start_s = r.start_ms as f64 / 1000.0,
        start_per = per(r.start_ms as f64),
        wall = r.start_wall_s,
        bpf = r.bpf_memlock_mib,
        bpf_per = per(r.bpf_memlock_mib),
        maps = r.bpf_maps,
        progs = r.bpf_programs,
        largest = r
            .bpf_largest_kib
            .iter()
            .map(|(name, kib)| format!("`{name}` {kib:.0} KiB"))
            .collect::<Vec<_>>()
            .join(", "),
        node = r.node_memory_mib,
        node_per = per(r.node_memory_mib),
        kinds = kinds(&r.node_memory_by_kind),
        framed = r.ports_framed,
        carrying = r.node_memory_carrying_mib,
        carrying_per = per(r.node_memory_carrying_mib),
        carrying_kinds = kinds(&r.node_memory_carrying_by_kind),
        rss = r.routerd_rss_mib,
        fds = r.routerd_fds,
        fds_per = per(r.routerd_fds as f64),
        build = r.topology_build_s,
        topo_mem = r.topology_memory_mib,
        fwd = r.samples_forwarding,
        samples = r.samples,
        add = r.add_one_ms,
        remove = r.remove_one_ms,
        cl = r.change_stream_lost,
        cs = r.change_stream_sent,
        restart_s = r.restart_ms as f64 / 1000.0,
        rl = r.restart_stream_lost,
        rs = r.restart_stream_sent,
    );
    std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
    let json = out.with_extension("json");
    std::fs::write(&json, serde_json::to_string_pretty(r)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!("wrote {} and {}", out.display(), json.display());
    Ok(())
}
