//! `routerd --config FILE`: applies a desired state to the routers of this node and keeps
//! their fast paths in step with it. SIGHUP re-reads the file and applies the difference
//! (an invalid file changes nothing). SIGTERM or SIGINT (or `kill -9`) end the daemon but
//! not the fast paths: programs, links and maps stay pinned and keep forwarding, and the
//! next routerd adopts them without rebuilding anything. A router removed from the desired
//! state is detached and its pins removed; `routerd --teardown` removes routers by hand.
//!
//! The API socket (`--socket`, `docs/api.md`) takes edits of the desired state: each is
//! checked whole, written to the file atomically, and applied as SIGHUP applies a file; if
//! applying fails, the previous file and running state are restored and the request fails.
//! Requests and signals are handled one at a time by the main loop, which owns the state
//! and the running routers.
//!
//! A router that cannot start (its namespace or a port not there yet, as on a node still
//! booting) waits and is tried again, every second at first and then less often, without
//! stopping routerd or the other routers; `router list` and `router show` say why it waits.

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::Parser;
use router_user::{
    Error,
    api::{self, ChangeResult, Plan, Request, Response},
    config::{DesiredState, Router},
    router::{RunningRouter, Writes},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

#[derive(Parser)]
#[command(
    version,
    about = "eBPF fast path for Neutron-style routers: the daemon"
)]
struct Args {
    /// Desired state (TOML).
    #[arg(long, short, required_unless_present = "teardown")]
    config: Option<PathBuf>,
    /// Detach and remove these routers' pinned fast paths (every pinned router if none is
    /// named) and exit, without a desired state.
    #[arg(long, num_args = 0.., value_name = "ROUTER")]
    teardown: Option<Vec<String>>,
    /// Validate the file and exit without touching anything.
    #[arg(long)]
    check: bool,
    /// The API socket (routerctl's verbs that change the desired state use it). Its
    /// directory is created 0750 if missing; the socket is 0660.
    #[arg(long, default_value = router_user::paths::API_SOCKET)]
    socket: PathBuf,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g. 127.0.0.1:9477
    /// (docs/observability.md). Off unless given.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("routerd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--teardown`: removes the named routers' pins (all pinned routers if none is named).
fn teardown(routers: &[String]) -> Result<(), Error> {
    let routers = if routers.is_empty() {
        router_user::datapath::pinned_routers()
    } else {
        routers.to_vec()
    };
    for id in &routers {
        router_user::datapath::teardown(id)?;
        let _ = std::fs::remove_file(router_user::paths::router_info_file(id));
        println!("routerd: router {id} detached and removed");
    }
    Ok(())
}

/// A request from a connection, and where its response goes.
type Job = (Request, oneshot::Sender<Response>);

fn run(args: Args) -> Result<(), Error> {
    if let Some(routers) = &args.teardown {
        return teardown(routers);
    }
    let config = args
        .config
        .clone()
        .ok_or_else(|| Error::io("--config", std::io::Error::other("missing")))?;
    let mut state = DesiredState::load(&config)?;
    if args.check {
        println!(
            "{}: valid, {} router(s)",
            config.display(),
            state.routers.len()
        );
        return Ok(());
    }
    // Checked before anything is changed, like the configuration.
    if !router_user::paths::bpffs_mounted() {
        return Err(Error::NoBpffs(router_user::paths::BPFFS));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("building the runtime", e))?;
    // Before any router: a second routerd stops here, having touched nothing.
    let socket = {
        let _guard = runtime.enter();
        ApiSocket::bind(&args.socket)?
    };
    // Metrics: bound before any router too, so a taken port stops the daemon at once.
    let metrics = match args.metrics {
        Some(addr) => {
            let _guard = runtime.enter();
            let listener = router_user::metrics::bind(addr)?;
            log::info!("routerd: metrics on http://{addr}/metrics");
            Some(listener)
        }
        None => None,
    };
    router_user::datapath::set_daemon_config(&config);
    raise_file_limit();
    let started = Instant::now();
    let mut running = Vec::new();
    let mut waiting = Waiting::default();
    start_routers(state.routers.clone(), &mut running, &mut waiting);
    log::info!(
        "routerd: {} router(s) started in {} ms; {} waiting",
        running.len(),
        started.elapsed().as_millis(),
        waiting.len()
    );
    // Routers pinned by an earlier routerd that the desired state no longer has.
    for id in router_user::datapath::pinned_routers_of(&config) {
        if state.router(&id).is_none() {
            log::info!("routerd: router {id} is pinned but not desired: removing it");
            if let Err(e) = router_user::datapath::teardown(&id) {
                log::error!("routerd: removing router {id}: {e}");
            }
        }
    }
    log::info!(
        "routerd: {} router(s) running; API on {}",
        running.len(),
        args.socket.display()
    );
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::io("SIGHUP handler", e))?;
        let (jobs_tx, mut jobs) = mpsc::channel::<Job>(64);
        let server = tokio::spawn(socket.serve(jobs_tx));
        let waiting_gauge = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let metrics = metrics.map(|l| {
            tokio::spawn(router_user::metrics::serve(
                l,
                Some(config.clone()),
                waiting_gauge.clone(),
            ))
        });
        let mut retry = tokio::time::interval(RETRY_TICK);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            waiting_gauge.store(waiting.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                _ = term.recv() => { log::info!("routerd: SIGTERM; the fast paths keep running"); break }
                _ = int.recv() => { log::info!("routerd: SIGINT; the fast paths keep running"); break }
                _ = hup.recv() => match (Instant::now(), DesiredState::load(&config)) {
                    (started, Ok(new)) => {
                        state = new.clone();
                        let _ = reload(&mut running, &mut waiting, new, started).await;
                    }
                    (_, Err(e)) => log::error!("routerd: SIGHUP: {e}; nothing changed"),
                },
                Some((request, reply)) = jobs.recv() => {
                    let response =
                        handle(&request, &mut state, &mut running, &mut waiting, &config).await;
                    let _ = reply.send(response);
                }
                _ = retry.tick(), if !waiting.is_empty() => {
                    let due = waiting.due(Instant::now());
                    if !due.is_empty() {
                        start_routers(due, &mut running, &mut waiting);
                    }
                }
            }
        }
        server.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        // The socket file goes with the task.
        let _ = server.await;
        Ok::<(), Error>(())
    })?;
    for router in running {
        router.stop();
    }
    Ok(())
}

/// One API request, against the state the daemon runs: queries are answered, edits are
/// checked, written and applied (or rejected with nothing changed; an edit that fails to
/// apply is rolled back, file and routers).
async fn handle(
    request: &Request,
    state: &mut DesiredState,
    running: &mut Vec<RunningRouter>,
    waiting: &mut Waiting,
    config: &Path,
) -> Response {
    let started = Instant::now();
    let op = op_name(request);
    let mut live = api::Live {
        routers: running
            .iter()
            .map(|r| (r.desired.id.clone(), r.info.clone()))
            .collect(),
        waiting: waiting.reasons(),
        counters: Default::default(),
    };
    live.read_counters(state, request);
    let plan = match api::plan_with(state, request, &live) {
        Ok(plan) => plan,
        Err(e) => {
            if request.is_mutation() {
                log::warn!("routerd: API {op}: rejected: {e}");
            }
            return Response::failure(e);
        }
    };
    let new = match plan {
        Plan::Answer(value) => return Response::success(value),
        Plan::Unchanged => {
            log::info!("routerd: API {op}: already so, nothing written");
            return Response::success(change_result(Vec::new(), true, Writes::default()));
        }
        Plan::Change(new) => new,
    };
    if let Err(e) = api::preflight(state, &new) {
        log::warn!("routerd: API {op}: rejected: {e}");
        return Response::failure(e);
    }
    let changed = api::changed_routers(state, &new);
    // The file as it is, to put back byte for byte if applying fails.
    let previous_file = std::fs::read(config);
    if let Err(e) = write_atomically(config, new.to_toml().as_bytes()) {
        log::error!("routerd: API {op}: {e}; nothing changed");
        return Response::failure(format!("{e}; nothing changed"));
    }
    log::info!(
        "routerd: API {op}: {} written, applying (routers {})",
        config.display(),
        changed.join(", ")
    );
    let old = std::mem::replace(state, new.clone());
    let outcome = reload(running, waiting, new.clone(), started).await;
    if outcome.failures.is_empty() {
        log::info!(
            "routerd: API {op}: applied; {} map and {} kernel writes",
            outcome.writes.map,
            outcome.writes.kernel
        );
        return Response::success(change_result(changed, false, outcome.writes));
    }
    // Roll back: the file first (a crash from here on restarts with the old state), then
    // the routers.
    log::error!(
        "routerd: API {op}: applying failed ({}); restoring the previous state",
        outcome.failures.join("; ")
    );
    *state = old.clone();
    let mut problems = Vec::new();
    let restored = match &previous_file {
        Ok(bytes) => write_atomically(config, bytes),
        Err(_) => write_atomically(config, old.to_toml().as_bytes()),
    };
    if let Err(e) = restored {
        problems.push(format!("restoring {}: {e}", config.display()));
    }
    problems.extend(roll_back(running, waiting, &old, &new, &outcome.failed_live, config).await);
    if problems.is_empty() {
        log::info!("routerd: API {op}: previous state restored");
        Response::failure(format!(
            "{}; nothing changed ({} and the running routers are as before)",
            outcome.failures.join("; "),
            config.display()
        ))
    } else {
        log::error!(
            "routerd: API {op}: restoring the previous state: {}",
            problems.join("; ")
        );
        Response::failure(format!(
            "{}; restoring the previous state failed too: {}",
            outcome.failures.join("; "),
            problems.join("; ")
        ))
    }
}

/// Brings the routers back to `old` after applying `new` failed: routers whose live change
/// stopped halfway restart on their old state (adopting their pinned fast path, which
/// writes only what differs), the others are reloaded, and routers `new` added that did
/// not start leave no pins. Returns what failed.
async fn roll_back(
    running: &mut Vec<RunningRouter>,
    waiting: &mut Waiting,
    old: &DesiredState,
    new: &DesiredState,
    failed_live: &[String],
    config: &Path,
) -> Vec<String> {
    let mut problems = Vec::new();
    for id in failed_live {
        let Some(at) = running.iter().position(|r| r.desired.id == *id) else {
            continue;
        };
        let router = running.remove(at);
        let desired = router.desired.clone();
        router.stop();
        match RunningRouter::start(desired) {
            Ok(r) => running.push(r),
            Err(e) => problems.push(e.to_string()),
        }
    }
    problems.extend(
        reload(running, waiting, old.clone(), Instant::now())
            .await
            .failures,
    );
    let pinned = router_user::datapath::pinned_routers_of(config);
    for r in &new.routers {
        if old.router(&r.id).is_none()
            && !running.iter().any(|x| x.desired.id == r.id)
            && pinned.contains(&r.id)
        {
            if let Err(e) = router_user::datapath::teardown(&r.id) {
                problems.push(format!("removing router {}: {e}", r.id));
            }
            let _ = std::fs::remove_file(router_user::paths::router_info_file(&r.id));
        }
    }
    problems
}

fn change_result(
    changed_routers: Vec<String>,
    unchanged: bool,
    writes: Writes,
) -> serde_json::Value {
    serde_json::to_value(ChangeResult {
        changed_routers,
        unchanged,
        writes,
    })
    .unwrap_or_default()
}

fn op_name(request: &Request) -> String {
    serde_json::to_value(request)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(String::from))
        .unwrap_or_default()
}

/// Replaces `path` with `text` so that a crash leaves the old file or the new one, never
/// a mix: `<path>.tmp` in the same directory, fsync, rename, fsync of the directory. The
/// file keeps its permissions.
fn write_atomically(path: &Path, text: &[u8]) -> Result<(), Error> {
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            format!("writing {}", path.display()),
            std::io::Error::other("not a file name"),
        )
    })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |what: &str, e| Error::io(format!("{what} {}", tmp.display()), e);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        if let Ok(meta) = std::fs::metadata(path) {
            file.set_permissions(meta.permissions())
                .map_err(|e| io("setting the permissions of", e))?;
        }
        file.write_all(text).map_err(|e| io("writing", e))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// ---- the API socket --------------------------------------------------------------------

/// The bound socket; the file is removed when the daemon ends (if it is still ours).
struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we bound.
    id: (u64, u64),
    /// Owner and group at bind time, if the file cannot be read later.
    owner: (u32, u32),
}

impl ApiSocket {
    fn bind(path: &Path) -> Result<Self, Error> {
        let bad = |problem: String| Error::Socket {
            path: path.display().to_string(),
            problem,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|e| bad(format!("creating directory {}: {e}", dir.display())))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
                .map_err(|e| bad(format!("chmod 0750 {}: {e}", dir.display())))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(bad(
                    "exists and is not a socket; remove it or give another --socket".into(),
                ));
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(bad(
                        "another routerd is listening on it (stop it first, or give this one another --socket)"
                            .into(),
                    ));
                }
                Err(e) => {
                    log::info!(
                        "routerd: replacing the stale socket {} ({e})",
                        path.display()
                    );
                    std::fs::remove_file(path)
                        .map_err(|e| bad(format!("removing the stale socket: {e}")))?;
                }
            },
            Err(_) => {}
        }
        // No moment with wider permissions than 0660: bind under a strict umask, then set
        // the mode exactly.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = std::os::unix::net::UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(|e| bad(format!("bind: {e}")))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| bad(format!("chmod 0660: {e}")))?;
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("stat: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| bad(format!("non-blocking mode: {e}")))?;
        let listener = UnixListener::from_std(listener).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
            owner: (meta.uid(), meta.gid()),
        })
    }

    /// Accepts connections until aborted; each runs as a task of its own, its requests
    /// go to the main loop one by one.
    async fn serve(self, jobs: mpsc::Sender<Job>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let refusal = self.refusal(&stream);
                    tokio::spawn(connection(stream, refusal, jobs.clone()));
                }
                Err(e) => {
                    log::warn!("routerd: API accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Why a peer may not use the API: it must be root, the socket's owner, or in the
    /// socket's group (primary or supplementary).
    fn refusal(&self, stream: &UnixStream) -> Option<String> {
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => return Some(format!("permission denied: peer credentials unknown ({e})")),
        };
        let (owner, group) = std::fs::metadata(&self.path)
            .map(|m| (m.uid(), m.gid()))
            .unwrap_or(self.owner);
        let (uid, gid) = (cred.uid(), cred.gid());
        let allowed = uid == 0
            || uid == owner
            || gid == group
            || cred
                .pid()
                .is_some_and(|pid| supplementary_groups(pid).contains(&group));
        (!allowed).then(|| {
            format!(
                "permission denied: uid {uid} (gid {gid}) is not root, the owner of {} (uid {owner}) or in its group (gid {group})",
                self.path.display()
            )
        })
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        // Only our own file: another routerd may have replaced it since.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The supplementary groups of process `pid`, from `/proc/PID/status`.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// One client: lines in, lines out, until it closes.
async fn connection(stream: UnixStream, refusal: Option<String>, jobs: mpsc::Sender<Job>) {
    let (read, mut write) = stream.into_split();
    if let Some(why) = refusal {
        log::warn!("routerd: API connection refused: {why}");
        let _ = write
            .write_all(Response::failure(why).to_line().as_bytes())
            .await;
        let _ = write.shutdown().await;
        return;
    }
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(api::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                log::debug!("routerd: API connection: {e}");
                return;
            }
        };
        if n == 0 {
            return;
        }
        let response = if line.len() > api::MAX_LINE {
            let r = Response::failure(format!(
                "malformed request: longer than {} bytes",
                api::MAX_LINE
            ));
            let _ = write.write_all(r.to_line().as_bytes()).await;
            return;
        } else {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            match api::parse_request(text) {
                Err(e) => Response::failure(e),
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if jobs.send((request, tx)).await.is_err() {
                        Response::failure("routerd is shutting down")
                    } else {
                        rx.await
                            .unwrap_or_else(|_| Response::failure("routerd is shutting down"))
                    }
                }
            }
        };
        if write
            .write_all(response.to_line().as_bytes())
            .await
            .is_err()
        {
            return;
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

/// How many routers set up at once: one per CPU (loading is the verifier's work).
fn start_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
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
                log::warn!("routerd: raising the open-file limit from {soft}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("routerd: reading the open-file limit: {e}"),
    }
}

/// Starts `routers` (several at once), adding those that start to `running` and the
/// others to `waiting`. Returns the failures: (index in `routers`, error).
fn start_routers(
    routers: Vec<Router>,
    running: &mut Vec<RunningRouter>,
    waiting: &mut Waiting,
) -> Vec<(usize, String)> {
    let mut failed = Vec::new();
    let results = RunningRouter::start_all(routers.clone(), start_parallelism());
    for (i, (router, result)) in routers.into_iter().zip(results).enumerate() {
        match result {
            Ok(r) => {
                if let Some(attempts) = waiting.started(&router.id) {
                    log::info!(
                        "routerd: router {} started after {attempts} failed attempt(s)",
                        router.id
                    );
                }
                running.push(r);
            }
            Err(e) => {
                failed.push((i, e.to_string()));
                waiting.failed(router, &e);
            }
        }
    }
    failed
}

/// How often waiting routers are looked at; each is tried again when its delay is over.
const RETRY_TICK: Duration = Duration::from_secs(1);
/// The delay after a router's first failed start; it doubles with each failure after that.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LONGEST: Duration = Duration::from_secs(30);

/// Routers of the desired state whose start failed, tried again after a delay that grows
/// from `RETRY_FIRST` to `RETRY_LONGEST`, until they start or leave the desired state.
#[derive(Default)]
struct Waiting {
    by_id: std::collections::BTreeMap<String, WaitingRouter>,
}

struct WaitingRouter {
    router: Router,
    error: String,
    /// Failed starts of `router` as it is (a changed router counts afresh).
    attempts: u32,
    next_try: Instant,
}

impl Waiting {
    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether `router`, exactly as it is, is waiting.
    fn has(&self, router: &Router) -> bool {
        self.by_id
            .get(&router.id)
            .is_some_and(|w| w.router == *router)
    }

    /// Records a failed start of `router`, and when to try it again.
    fn failed(&mut self, router: Router, error: &Error) {
        let attempts = match self.by_id.get(&router.id) {
            Some(w) if w.router == router => w.attempts.saturating_add(1),
            _ => 1,
        };
        let delay = RETRY_FIRST
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(RETRY_LONGEST);
        // The error names the router.
        log::error!(
            "routerd: {error}; the router did not start and waits, tried again in {} s",
            delay.as_secs()
        );
        self.by_id.insert(
            router.id.clone(),
            WaitingRouter {
                router,
                error: error.to_string(),
                attempts,
                next_try: Instant::now() + delay,
            },
        );
    }

    /// Forgets router `id`, started at last; returns its failed attempts if it was waiting.
    fn started(&mut self, id: &str) -> Option<u32> {
        self.by_id.remove(id).map(|w| w.attempts)
    }

    /// Forgets the routers `state` no longer has; a changed router waits as it is now.
    fn retain_desired(&mut self, state: &DesiredState) {
        self.by_id.retain(|id, _| state.router(id).is_some());
    }

    /// The routers whose delay is over at `now`.
    fn due(&self, now: Instant) -> Vec<Router> {
        self.by_id
            .values()
            .filter(|w| w.next_try <= now)
            .map(|w| w.router.clone())
            .collect()
    }

    /// Why each waits, by router id (for `router list` and `router show`).
    fn reasons(&self) -> std::collections::BTreeMap<String, String> {
        self.by_id
            .iter()
            .map(|(id, w)| (id.clone(), w.error.clone()))
            .collect()
    }
}

/// What a reload did.
#[derive(Default)]
struct Outcome {
    /// What failed, one message per router.
    failures: Vec<String>,
    /// Routers whose live change failed (possibly halfway).
    failed_live: Vec<String>,
    /// The writes of the routers that changed.
    writes: Writes,
}

/// Brings the running routers to `new`: live changes where possible, a restart of one
/// router where not (a new interface, another mode), start and stop for added and removed
/// routers. A router that fails keeps running as it was (a live change that failed may
/// have been applied in part); a router that does not start waits (`Waiting`). Returns
/// what failed, except routers already waiting as they are, and what was written.
/// `started`: when the file began to be read (the reload time reported includes parsing).
async fn reload(
    running: &mut Vec<RunningRouter>,
    waiting: &mut Waiting,
    new: DesiredState,
    started: Instant,
) -> Outcome {
    waiting.retain_desired(&new);
    let mut failures = Vec::new();
    let mut failed_live = Vec::new();
    let mut writes = Writes::default();
    let mut kept = Vec::new();
    for mut router in std::mem::take(running) {
        match new.router(&router.desired.id).cloned() {
            None => {
                log::info!("routerd: router {} removed", router.desired.id);
                router.remove();
            }
            Some(wanted) if wanted == router.desired => {
                log::info!("routerd: router {} unchanged, nothing written", wanted.id);
                kept.push(router);
            }
            Some(wanted) if router.can_apply(&wanted) => {
                match router.apply(wanted).await {
                    Ok(w) => writes += w,
                    Err(e) => {
                        log::error!("routerd: {e}");
                        failures.push(e.to_string());
                        failed_live.push(router.desired.id.clone());
                    }
                }
                kept.push(router);
            }
            Some(wanted) => {
                log::info!(
                    "routerd: router {} restarts for its new interfaces",
                    wanted.id
                );
                let old = router.desired.clone();
                let wanted_again = wanted.clone();
                router.stop();
                match RunningRouter::start(wanted) {
                    Ok(r) => {
                        writes += r.start_writes;
                        kept.push(r);
                    }
                    Err(e) => {
                        log::error!("routerd: {e}; restoring the previous state");
                        failures.push(e.to_string());
                        match RunningRouter::start(old) {
                            Ok(r) => kept.push(r),
                            Err(e) => {
                                failures.push(e.to_string());
                                waiting.failed(wanted_again, &e);
                            }
                        }
                    }
                }
            }
        }
    }
    let added: Vec<_> = new
        .routers
        .iter()
        .filter(|wanted| !kept.iter().any(|r| r.desired.id == wanted.id))
        .cloned()
        .collect();
    // A router already waiting as it is failing again is not news: it does not fail
    // this reload (an API edit of another router goes through).
    let news: Vec<bool> = added.iter().map(|r| !waiting.has(r)).collect();
    let before = kept.len();
    let failed = start_routers(added, &mut kept, waiting);
    for r in &kept[before..] {
        writes += r.start_writes;
    }
    for (i, e) in failed {
        if news[i] {
            failures.push(e);
        }
    }
    *running = kept;
    log::info!(
        "routerd: reloaded in {} us; {} router(s) running",
        started.elapsed().as_micros(),
        running.len()
    );
    Outcome {
        failures,
        failed_live,
        writes,
    }
}
