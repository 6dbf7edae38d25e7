//! `routerd [--config FILE]`: applies a desired state to the routers of this node and keeps
//! their fast paths in step with it. SIGHUP re-reads the file and applies the difference
//! (an invalid file changes nothing). SIGTERM or SIGINT (or `kill -9`) end the daemon but
//! not the fast paths: programs, links and maps stay pinned and keep forwarding, and the
//! next routerd adopts them without rebuilding anything. A router removed from the desired
//! state is detached and its pins removed; `routerd --teardown` removes routers by hand.
//!
//! The API socket (`--socket`, `docs/api.md`) takes edits of the desired state: each is
//! checked whole, written to the file atomically, and applied as SIGHUP applies a file; if
//! applying fails, the previous file and running state are restored and the request fails.
//! Requests, signals and retries are handled one at a time by the main loop, which owns the
//! node controller (`router_user::node`: the desired state and the routers); this file is
//! arguments, process settings, signals and sockets around it.
//!
//! A router that cannot start (its namespace or a port not there yet, as on a node still
//! booting) waits and is tried again, every second at first and then less often, without
//! stopping routerd or the other routers; `router list` and `router show` say why it waits.
//!
//! Signals are handled from the first instant (`router_user::signals`), and the routers
//! start on a thread of their own (`node::Startup`) while the main loop serves the socket:
//! during the start queries are answered, edits refused ("starting, try again"), a SIGHUP
//! is applied once the start ends and a SIGTERM starts no further router. At start and
//! every `--sweep-interval` the pins of stale routers are removed (`router_user::stale`).
//! The socket also streams the routers' events to `routerctl monitor`s
//! (`router_user::monitor::Hub`).
//!
//! With `--etcd URL --node NAME` the desired state is the routers placed on this node in
//! etcd instead of the file (`router_user::cluster`, `docs/etcd.md`): applied as it changes,
//! saved in the state directory to restart from while etcd is away; SIGHUP reads etcd
//! again, and the API answers queries only. `--pin-root`, `--run-dir`, `--socket` and
//! `--state-dir` set this routerd's paths apart from another's on the same machine.
//!
//! Under systemd (`packaging/routerd.service`, `Type=notify`) routerd reports ready once
//! every router of the file has started or is waiting, and the unit leaves the fast paths
//! running when it stops (`KillMode=process`).

use std::{path::PathBuf, time::Instant};

use clap::Parser;
use router_user::{
    Error,
    node::{self, NodeController, Startup, StateFile},
    server::{ApiSocket, Job},
    signals::{HeldSignals, Signal, Signals},
};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(
    name = "routerd",
    version = router_user::version::long(),
    about = "eBPF fast path for Neutron-style routers: the daemon",
    after_help = LOGS_HELP
)]
struct Args {
    /// Desired state (TOML).
    #[arg(long, short, default_value = router_user::paths::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Detach and remove these routers' pinned fast paths and exit, without a desired
    /// state. Without a router, --all is required (every pinned router).
    #[arg(long, num_args = 0.., value_name = "ROUTER")]
    teardown: Option<Vec<String>>,
    /// With --teardown and no router: every pinned router.
    #[arg(long, requires = "teardown")]
    all: bool,
    /// Validate the file and exit without touching anything.
    #[arg(long)]
    check: bool,
    /// The API socket (routerctl's verbs that change the desired state use it). Its
    /// directory is created 0750 if missing; the socket is 0660.
    #[arg(long, env = router_user::paths::API_SOCKET_ENV, default_value = router_user::paths::API_SOCKET)]
    socket: PathBuf,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g. 127.0.0.1:9477
    /// (docs/observability.md). Off unless given.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Seconds between two looks for stale routers (pins of routers of no desired state
    /// whose namespace is gone), besides the one at start.
    #[arg(long, value_name = "SECONDS", default_value_t = router_user::stale::SWEEP_INTERVAL.as_secs_f64())]
    sweep_interval: f64,
    /// How log lines are written to stderr: `text` (time, level, target, the router's span,
    /// message) or `json` (one object a line).
    #[arg(long, value_enum, env = "ROUTERD_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// While the routers start, expedite the kernel's RCU grace periods
    /// (/sys/kernel/rcu_expedited, set back once they have started), for kernels and
    /// drivers where attaching a program waits for one under the RTNL lock. On this
    /// project's kernels routerd's own attaches wait for none that matter (the TC entry is
    /// a filter, not a tcx link), and the option slows a start of 1,000 routers in XDP mode
    /// (docs/scale-expedited.md): an interrupt to every CPU per grace period.
    #[arg(long)]
    expedited_start: bool,
    #[command(flatten)]
    roots: router_user::cluster::RootArgs,
    #[command(flatten)]
    cluster: router_user::cluster::ClusterArgs,
}

const LOGS_HELP: &str = "\
Logs go to stderr. RUST_LOG filters them (default: info), e.g. RUST_LOG=debug,
RUST_LOG=router_user=debug, RUST_LOG=info,router_user::router=debug. A line about one
router carries it as the field `router` (text: `router{router=r1}:`; JSON: `span.router`).";

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Writes log lines to stderr in `format`, filtered by RUST_LOG (default `info`). Records
/// of the `log` crate (aya's) come out through the same subscriber.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // `try_init` also installs the `log` bridge; it fails only if a subscriber is already
    // set, which nothing else in routerd does.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

fn main() -> std::process::ExitCode {
    // From the first instant a signal waits for its handler instead of killing routerd
    // (released at once by the paths that install none: --teardown, --check, errors).
    let held = HeldSignals::hold();
    limit_malloc_arenas();
    router_user::generate::exit_if_asked(<Args as clap::CommandFactory>::command);
    let args = Args::parse();
    init_logs(args.log_format);
    if let Some(problem) = teardown_usage(&args) {
        // A usage error, as clap's (exit code 2).
        eprintln!("routerd: {problem}");
        return std::process::ExitCode::from(2);
    }
    match run(args, held) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("routerd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What is wrong with how `--teardown` is asked for, if anything: tearing down every router
/// stops every router's fast path on the node, so it is done only with `--all`.
fn teardown_usage(args: &Args) -> Option<&'static str> {
    match (&args.teardown, args.all) {
        (Some(routers), false) if routers.is_empty() => Some(
            "--teardown without a router removes every pinned router: name the routers, or give --all",
        ),
        (Some(routers), true) if !routers.is_empty() => {
            Some("--teardown names routers and --all: give one or the other")
        }
        _ => None,
    }
}

/// `--teardown`: removes the named routers' pins (all pinned routers if none is named,
/// which `--all` has allowed).
fn teardown(routers: &[String]) -> Result<(), Error> {
    let routers = if routers.is_empty() {
        router_user::datapath::pinned_routers()
    } else {
        routers.to_vec()
    };
    for id in &routers {
        router_user::datapath::teardown(id)?;
        let _ = std::fs::remove_file(router_user::paths::router_info_file(id));
        router_user::slowpath::forget(id);
        println!("routerd: router {id} detached and removed");
    }
    Ok(())
}

fn run(args: Args, held: HeldSignals) -> Result<(), Error> {
    args.roots.apply()?;
    if let Some(routers) = &args.teardown {
        drop(held);
        return teardown(routers);
    }
    if let Some(node) = args.cluster.file_node()? {
        router_user::dvr::set_this_node(node);
    }
    let file = StateFile::new(&args.config);
    // With --etcd, the desired state is etcd's and the file is not read.
    let state = if args.cluster.etcd.is_some() && !args.check {
        router_user::config::DesiredState::default()
    } else {
        file.load()?
    };
    if args.check {
        println!(
            "{}: valid, {} router(s)",
            file.path().display(),
            state.routers.len()
        );
        return Ok(());
    }
    let sweep_interval = std::time::Duration::try_from_secs_f64(args.sweep_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Error::io(
                "--sweep-interval",
                std::io::Error::other("must be a positive number of seconds"),
            )
        })?;
    tracing::info!("routerd {}", router_user::version::long());
    // Checked before anything is changed, like the configuration.
    if !router_user::paths::bpffs_mounted() {
        return Err(Error::NoBpffs(router_user::paths::BPFFS));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("building the runtime", e))?;
    let _runtime = runtime.enter();
    let mut signals = Signals::install(held)?;
    // Before any router: a second routerd stops here, having touched nothing.
    let socket = ApiSocket::bind(&args.socket)?;
    // Metrics: bound before any router too, so a taken port stops the daemon at once.
    let metrics = match args.metrics {
        Some(addr) => {
            let listener = router_user::metrics::bind(addr)?;
            tracing::info!("routerd: metrics on http://{addr}/metrics");
            Some(listener)
        }
        None => None,
    };
    raise_file_limit();
    let mut cluster = args.cluster.start(&runtime)?;
    let ha = match args.cluster.ha_options()? {
        Some(options) => {
            let listen = options.listen;
            let ha = router_user::ha::Ha::start(options)?;
            tracing::info!("routerd: HA: session sync on {listen}");
            Some(ha)
        }
        None => None,
    };
    // The routers' owner: the file, or with --etcd the state saved from etcd.
    let (state, owner) = match &mut cluster {
        Some(c) => (c.take_initial_state(), c.state_file().to_path_buf()),
        None => (state, file.path().to_path_buf()),
    };
    let socket = socket.with_monitor(router_user::monitor::Hub::start(owner.clone())?);
    let node = runtime.block_on(async {
        // The socket answers from the start: during it, queries from what has started so
        // far, edits with "starting, try again" (node::Startup).
        let (jobs_tx, mut jobs) = mpsc::channel::<Job>(64);
        let server = tokio::spawn(socket.serve(jobs_tx));
        let waiting_gauge = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let metrics = metrics.map(|l| {
            tokio::spawn(router_user::metrics::serve(
                l,
                Some(owner.clone()),
                waiting_gauge.clone(),
            ))
        });
        let expedited = if args.expedited_start {
            Some(node::ExpeditedGrace::begin()?)
        } else {
            None
        };
        let mut startup = Startup::spawn(state, &owner, node::default_parallelism())?;
        let mut reload_pending = false;
        let mut node = loop {
            tokio::select! {
                node = startup.finished() => break node?,
                signal = signals.next() => match signal {
                    Signal::Hangup => {
                        reload_pending = true;
                        tracing::info!("routerd: SIGHUP during the start: the file is read again once every router has been tried");
                    }
                    stop => {
                        let (done, total) = startup.progress();
                        tracing::info!("routerd: {stop} during the start ({done} of {total} routers tried): no further router starts; those started keep running");
                        startup.cancel();
                        let node = startup.finished().await?;
                        drop(expedited);
                        server.abort();
                        let _ = server.await;
                        return Ok::<_, Error>(node);
                    }
                },
                Some(job) = jobs.recv() => {
                    let _ = job.reply.send(startup.answer(&job.request));
                }
            }
        };
        drop(expedited);
        tracing::info!(
            "routerd: {} router(s) running; API on {}",
            node.running_count(),
            args.socket.display()
        );
        // Every router has started or is waiting, and the signals are handled: ready, for
        // systemd (`Type=notify`), which may send SIGTERM as soon as it has read this.
        let status = format!(
            "READY=1\nSTATUS={} router(s) running, {} waiting",
            node.running_count(),
            node.waiting_count()
        );
        if let Err(e) = router_user::notify::notify(&status) {
            tracing::warn!("routerd: telling systemd it is ready: {e}");
        }
        // The file's journal (API edits it does not hold yet) was replayed at the start:
        // written into the file soon.
        let mut fold = node::FoldSchedule::default();
        if cluster.is_none() && file.unfolded() {
            fold.edited(Instant::now());
        }
        if reload_pending {
            match &cluster {
                Some(c) => c.reread(),
                None => reload(&mut node, &file, &mut fold).await,
            }
        }
        let mut retry = tokio::time::interval(node::RETRY_TICK);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The start swept already: the first tick comes one interval from now.
        let every = sweep_interval;
        let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let waiting = node.waiting_count();
            waiting_gauge.store(waiting as u64, std::sync::atomic::Ordering::Relaxed);
            if let Some(c) = &cluster {
                c.observe(&node);
            }
            if let Some(ha) = &ha {
                ha.set_routers(&node.desired().routers);
            }
            tokio::select! {
                signal = signals.next() => match (signal, &cluster) {
                    (Signal::Hangup, Some(c)) => c.reread(),
                    (Signal::Hangup, None) => reload(&mut node, &file, &mut fold).await,
                    (stop, _) => { tracing::info!("routerd: {stop}; the fast paths keep running"); break }
                },
                Some(update) = router_user::cluster::next_update(&mut cluster) => {
                    if let Some(c) = &mut cluster {
                        c.apply(&mut node, update).await;
                    }
                }
                Some(job) = jobs.recv() => {
                    let response = match &cluster {
                        Some(c) => c.handle(&mut node, &job.request),
                        None => {
                            let response = node.handle(&job.request, &file).await;
                            if job.request.is_mutation() && file.unfolded() {
                                fold.edited(Instant::now());
                            }
                            response
                        }
                    };
                    let _ = job.reply.send(response);
                }
                _ = tokio::time::sleep_until(fold.due().unwrap_or_else(Instant::now).into()), if fold.due().is_some() => {
                    fold_journal(&node, &file, &mut fold);
                }
                _ = retry.tick(), if waiting > 0 => node.retry_due(Instant::now()),
                _ = sweep.tick() => { node.sweep_stale(); }
            }
        }
        if cluster.is_none() {
            fold_journal(&node, &file, &mut fold);
        }
        server.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        // The socket file goes with the task.
        let _ = server.await;
        Ok::<_, Error>(node)
    })?;
    let _ = router_user::notify::notify("STOPPING=1");
    node.stop();
    Ok(())
}

/// SIGHUP: reads the file again (with the API edits its journal holds) and applies it; an
/// invalid file changes nothing. The API edits are then written into the file at once.
async fn reload(node: &mut NodeController, file: &StateFile, fold: &mut node::FoldSchedule) {
    let started = Instant::now();
    match file.load() {
        Ok(new) => {
            let _ = node.reload(new, started).await;
            fold_journal(node, file, fold);
        }
        Err(e) => tracing::error!("routerd: SIGHUP: {e}; nothing changed"),
    }
}

/// Writes the API edits the journal holds into the state file (see `node::journal`).
fn fold_journal(node: &NodeController, file: &StateFile, fold: &mut node::FoldSchedule) {
    let started = Instant::now();
    match file.fold(node.desired()) {
        Ok(true) => {
            fold.folded(None);
            tracing::info!(
                "routerd: {} written with the API's edits in {} ms",
                file.path().display(),
                started.elapsed().as_millis()
            );
        }
        Ok(false) => fold.folded(None),
        Err(e) => {
            fold.folded(Some(Instant::now()));
            tracing::error!(
                "routerd: writing the API's edits into {}: {e}; they stay in its journal (read at every start), tried again in {} s",
                file.path().display(),
                node::FOLD_RETRY.as_secs()
            );
        }
    }
}

/// Every router has a thread, and glibc gives threads arenas of their own (up to eight per
/// CPU), each keeping its high-water mark: with hundreds of routers that was three quarters
/// of routerd's memory (331 MiB for 40 routers, 79 MiB with one arena). Routers are idle
/// between events, so a few arenas shared by all cost no measurable contention.
fn limit_malloc_arenas() {
    let arenas = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(4);
    // SAFETY: mallopt only changes allocator parameters; called before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas as libc::c_int) };
}

/// Each router holds a few dozen descriptors (maps, programs, links, netlink sockets): a
/// node of 1,000 routers needs far more than the usual soft limit of 1,024. Raised to what
/// the kernel allows; a failure leaves the limit as it was, with a warning.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let wanted = nr_open.min(1 << 20);
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < wanted => {
            // Root may raise the hard limit too; otherwise the soft one up to the hard one.
            if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard)).is_err()
                && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            {
                tracing::warn!("routerd: raising the open-file limit from {soft}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("routerd: reading the open-file limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Args, teardown_usage};

    #[test]
    fn teardown_of_every_router_needs_all() {
        let usage = |args: &[&str]| {
            let parsed = Args::try_parse_from(args).expect("parses");
            teardown_usage(&parsed)
        };
        assert!(usage(&["routerd", "--teardown"]).is_some_and(|p| p.contains("--all")));
        assert_eq!(usage(&["routerd", "--teardown", "--all"]), None);
        assert_eq!(usage(&["routerd", "--teardown", "r1", "r2"]), None);
        assert!(usage(&["routerd", "--teardown", "r1", "--all"]).is_some());
        assert_eq!(usage(&["routerd", "-c", "x.toml"]), None);
        // --all means nothing without --teardown.
        assert!(Args::try_parse_from(["routerd", "-c", "x.toml", "--all"]).is_err());
    }
}
