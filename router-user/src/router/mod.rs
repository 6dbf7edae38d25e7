//! One running router: a thread inside the router's namespace that sets the kernel up from
//! the desired state, loads and attaches the fast path, and keeps its maps in step with the
//! kernel's routes and neighbours.

mod degraded;
mod mirror;
mod state;

use std::{
    sync::mpsc,
    thread::{self, JoinHandle},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc as tmpsc, oneshot};

use self::state::{MirrorEnd, setup};
use crate::{config::Router, error::Error, netns, paths, slowpath};

/// What `routerctl` learns about a running router (written to `paths::run_dir()`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouterInfo {
    pub router: String,
    pub namespace: String,
    pub mode: String,
    pub interfaces: Vec<InterfaceInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    pub ifindex: u32,
    /// "internal" (qr) or "external" (qg).
    pub role: String,
    /// Whether XDP redirects into this interface (otherwise the TC entry forwards).
    pub xdp_egress: bool,
    /// In XDP mode, why native XDP could not attach here (the interface runs the TC entry
    /// alone); `None` where it runs as its router's mode says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_unavailable: Option<String>,
}

/// Writes a start or a reconfiguration made: map entries written or removed
/// (`Datapath::writes`), and kernel writes (netlink addresses, routes and rules, sysctls,
/// nftables transactions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writes {
    pub map: usize,
    pub kernel: usize,
}

impl std::ops::AddAssign for Writes {
    fn add_assign(&mut self, other: Self) {
        self.map += other.map;
        self.kernel += other.kernel;
    }
}

/// A router whose fast path is attached; dropping it without `stop` also stops it.
pub struct RunningRouter {
    pub info: RouterInfo,
    /// The desired state the router runs.
    pub desired: Router,
    /// What its start wrote (an adopted, unchanged fast path: nothing).
    pub start_writes: Writes,
    /// `true`: detach and remove everything; `false`: leave the fast path running.
    stop: Option<oneshot::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
    changes: tmpsc::UnboundedSender<Change>,
}

/// A new desired state for a running router, and where to say how applying it went.
struct Change {
    router: Router,
    done: oneshot::Sender<Result<Writes, Error>>,
}

/// How a start of many routers is followed and stopped: `done` is told of each router as
/// its start ends (from the thread that started it), and once `cancel` is set no further
/// router is started.
#[derive(Default)]
pub struct StartControl<'a> {
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
    #[allow(clippy::type_complexity)]
    pub done: Option<&'a (dyn Fn(&Router, &Result<RunningRouter, Error>) + Sync)>,
}

impl StartControl<'_> {
    fn cancelled(&self) -> bool {
        self.cancel
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl RunningRouter {
    /// Sets the router up in its namespace and attaches the fast path. Returns once it
    /// forwards, or with the error that stopped it (then nothing of it stays attached).
    pub fn start(router: Router) -> Result<Self, Error> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (change_tx, change_rx) = tmpsc::unbounded_channel();
        let name = format!("router-{}", router.id);
        let desired = router.clone();
        // A distributed router from a file runs as this node's copy of it.
        let router = crate::dvr::localize(&router)?;
        let thread = thread::Builder::new()
            .name(name.clone())
            .spawn(move || run(router, ready_tx, stop_rx, change_rx))
            .map_err(|e| Error::io(format!("spawning thread {name}"), e))?;
        match ready_rx.recv() {
            Ok(Ok((info, start_writes))) => Ok(Self {
                info,
                desired,
                start_writes,
                stop: Some(stop_tx),
                thread: Some(thread),
                changes: change_tx,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::io(
                    format!("thread {name} ended during setup"),
                    std::io::Error::other("panicked"),
                ))
            }
        }
    }

    /// Starts `routers` (as `start`) with up to `parallel` setting up at once, and returns
    /// them in the order given; each result is that router's. Loading is mostly the
    /// verifier's work on one CPU, so a node's routers come up about `parallel` times faster
    /// than one after another.
    pub fn start_all(routers: Vec<Router>, parallel: usize) -> Vec<Result<Self, Error>> {
        Self::start_all_with(routers, parallel, &StartControl::default())
    }

    /// As [`RunningRouter::start_all`], telling `control` of each router as it is done, and
    /// starting no further router once `control` is cancelled (those routers' results are
    /// [`Error::Cancelled`]; the ones under way finish their start).
    pub fn start_all_with(
        routers: Vec<Router>,
        parallel: usize,
        control: &StartControl<'_>,
    ) -> Vec<Result<Self, Error>> {
        use std::sync::{
            Mutex,
            atomic::{AtomicUsize, Ordering},
        };
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Self, Error>>>> =
            Mutex::new(routers.iter().map(|_| None).collect());
        thread::scope(|scope| {
            for _ in 0..parallel.clamp(1, routers.len().max(1)) {
                scope.spawn(|| {
                    loop {
                        if control.cancelled() {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(router) = routers.get(i) else { break };
                        let started = Self::start(router.clone());
                        if let Some(done) = control.done {
                            done(router, &started);
                        }
                        if let Ok(mut slots) = results.lock() {
                            slots[i] = Some(started);
                        }
                    }
                });
            }
        });
        let cancelled = control.cancelled();
        results
            .into_inner()
            .unwrap_or_default()
            .into_iter()
            .zip(&routers)
            .map(|(r, router)| {
                r.unwrap_or_else(|| {
                    if cancelled {
                        return Err(Error::Cancelled(router.id.clone()));
                    }
                    Err(Error::io(
                        format!("starting router {}", router.id),
                        std::io::Error::other("its start thread panicked"),
                    ))
                })
            })
            .collect()
    }

    /// Whether `new` can be applied to this router without restarting it (see
    /// [`can_apply`]).
    pub fn can_apply(&self, new: &Router) -> bool {
        can_apply(&self.desired, new)
    }

    /// Applies `new` to the running router (see `can_apply`): floating IPs, NAT settings,
    /// routes, removed interfaces or gateway. Sessions that used anything removed end at once.
    /// Returns the writes it made.
    pub async fn apply(&mut self, new: Router) -> Result<Writes, Error> {
        let (done, result) = oneshot::channel();
        let change = Change {
            router: crate::dvr::localize(&new)?,
            done,
        };
        let gone = || {
            Error::io(
                format!("router {}", new.id),
                std::io::Error::other("router thread ended"),
            )
        };
        self.changes.send(change).map_err(|_| gone())?;
        let writes = result.await.map_err(|_| gone())??;
        self.desired = new;
        Ok(writes)
    }

    /// Stops following the router, leaving its fast path running and pinned for the next
    /// routerd (which adopts it), and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown(false);
    }

    /// Detaches the fast path, removes its pins and slow-path rules (the router is gone from
    /// the desired state), and waits for the thread.
    pub fn remove(mut self) {
        self.shutdown(true);
    }

    fn shutdown(&mut self, teardown: bool) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(teardown);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningRouter {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

/// Whether a router running `old` can take `new` without restarting: same namespace and
/// mode, same table sizes, and no interface added or changed (removals are live).
pub fn can_apply(old: &Router, new: &Router) -> bool {
    if old.distributed.is_some() || new.distributed.is_some() {
        // A distributed router from a file: as the node runs it.
        return match (crate::dvr::localize(old), crate::dvr::localize(new)) {
            (Ok(old), Ok(new)) => fits(&old, &new),
            _ => false,
        };
    }
    fits(old, new)
}

/// [`can_apply`] for two routers as the node runs them.
fn fits(old: &Router, new: &Router) -> bool {
    let gateway_ok = match (&old.gateway, &new.gateway) {
        (_, None) => true,
        (Some(a), Some(b)) => {
            a.interface == b.interface && a.address == b.address && a.xdp_egress == b.xdp_egress
        }
        (None, Some(_)) => false,
    };
    old.namespace == new.namespace
        && old.mode == new.mode
        && old.part.as_ref().map(|p| p.role) == new.part.as_ref().map(|p| p.role)
        && old.nat.max_sessions == new.nat.max_sessions
        && old.nat.preallocate_sessions == new.nat.preallocate_sessions
        && old.ha == new.ha
        && old.nat.max_floating_ips == new.nat.max_floating_ips
        && gateway_ok
        && new.interfaces.iter().all(|i| {
            // Allowed sources change live; anything else about an interface restarts.
            old.interfaces.iter().any(|o| {
                crate::config::Interface {
                    allowed_sources: i.allowed_sources.clone(),
                    ..o.clone()
                } == *i
            })
        })
}

/// The span of work about one router: events inside it carry the router's id as the field
/// `router` (`router{router=r1}:` in text logs, `"span":{"router":"r1",..}` in JSON logs),
/// so that a router's lines can be selected without parsing the message.
pub(crate) fn span(id: &str) -> tracing::Span {
    tracing::info_span!("router", router = %id)
}

/// Takes back what the kernel was given to serve a router that never started (degraded
/// mode: the slow path's table and the floating IPs' addresses), now that it leaves the
/// desired state. Best effort, in the router's namespace; a namespace already gone took
/// all of it along.
pub fn release_degraded(router: &Router) {
    let router = router.clone();
    let thread = std::thread::Builder::new()
        .name(format!("release-{}", router.id))
        .spawn(move || {
            let _router = span(&router.id).entered();
            slowpath::forget(&router.id);
            if netns::enter(&paths::netns_path(&router.namespace)).is_err() {
                return;
            }
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok((conn, handle, _)) = rtnetlink::new_connection() else {
                    return;
                };
                tokio::spawn(conn);
                match degraded::leave(&handle, &router).await {
                    Ok(n) => tracing::info!(
                        "router {}: left the desired state while waiting: the kernel's part removed ({n} floating IP addresses)",
                        router.id
                    ),
                    Err(e) => tracing::warn!("router {}: {e}", router.id),
                }
                slowpath::remove(&router.id);
            });
        });
    if let Ok(thread) = thread {
        let _ = thread.join();
    }
}

fn run(
    router: Router,
    ready: mpsc::Sender<Result<(RouterInfo, Writes), Error>>,
    stop: oneshot::Receiver<bool>,
    changes: tmpsc::UnboundedReceiver<Change>,
) {
    // The thread's whole life, setup and mirror alike, is about this router.
    let _router = span(&router.id).entered();
    let fail = |e| {
        let _ = ready.send(Err(e));
    };
    let ready_ok = ready.clone();
    if let Err(source) = netns::enter(&paths::netns_path(&router.namespace)) {
        return fail(Error::Namespace {
            router: router.id.clone(),
            namespace: router.namespace.clone(),
            source,
        });
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(Error::io("building the router runtime", e)),
    };
    runtime.block_on(async move {
        let (conn, handle, _) = match rtnetlink::new_connection() {
            Ok(c) => c,
            Err(e) => return fail(Error::io("opening rtnetlink", e)),
        };
        tokio::spawn(conn);
        let mut state = match setup(&router, &handle).await {
            Ok(state) => state,
            Err(e) => {
                // Until the fast path attaches, the kernel serves the router alone.
                match degraded::serve(&handle, &router).await {
                    Ok(n) => tracing::warn!(
                        "router {}: fast path not attached; the kernel path serves the router ({n} floating IPs answered by the kernel)",
                        router.id
                    ),
                    Err(degraded) => tracing::warn!(
                        "router {}: fast path not attached, and the kernel path is incomplete: {degraded}",
                        router.id
                    ),
                }
                return fail(e);
            }
        };
        match degraded::leave(&handle, &router).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "router {}: the fast path answers for the floating IPs again ({n} kernel addresses removed)",
                router.id
            ),
            Err(e) => tracing::warn!("router {}: {e}", router.id),
        }
        let info = state.info.clone();
        if let Err(e) = write_info(&info) {
            return fail(e);
        }
        let _ = ready_ok.send(Ok((info, state.start_writes)));
        tracing::info!(
            "router {}: fast path attached ({} mode) to {}",
            router.id,
            router.mode,
            state
                .info
                .interfaces
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let (mut stop, mut changes) = (stop, changes);
        let teardown = loop {
            match state.mirror(&handle, &mut stop, &mut changes).await {
                Ok(MirrorEnd::Stop { teardown }) => break teardown,
                Ok(MirrorEnd::Rebuild) => {
                    // An interface came back with a new ifindex: set the router up again
                    // from its current desired state, adopting its own pinned maps (sessions
                    // and counters stay) and attaching to the new interface.
                    let desired = state.router.clone();
                    drop(state);
                    state = loop {
                        match setup(&desired, &handle).await {
                            Ok(s) => break s,
                            Err(e) => {
                                tracing::error!("router {}: repairing: {e}; retrying", desired.id);
                                if let Ok(teardown) = stop.try_recv() {
                                    tracing::info!(
                                        "router {}: stopped while repairing",
                                        desired.id
                                    );
                                    if teardown {
                                        let _ = crate::datapath::teardown(&desired.id);
                                    }
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    };
                    if let Err(e) = write_info(&state.info) {
                        tracing::error!("router {}: {e}", desired.id);
                    }
                    tracing::info!(
                        "router {}: repaired: re-attached to {}",
                        desired.id,
                        state
                            .info
                            .interfaces
                            .iter()
                            .map(|i| format!("{} (ifindex {})", i.name, i.ifindex))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                Err(e) => {
                    tracing::error!("router {}: mirror stopped: {e}", router.id);
                    break false;
                }
            }
        };
        if teardown {
            slowpath::remove(&router.id);
            // The overlay devices are the node's, not the router's: its entries go.
            if let Err(e) = crate::dvr::kernel::clear(&state.router).await {
                tracing::error!("router {}: removing its overlay entries: {e}", router.id);
            }
            let _ = std::fs::remove_file(paths::router_info_file(&router.id));
            drop(state);
            match crate::datapath::teardown(&router.id) {
                Ok(()) => tracing::info!("router {}: detached and removed", router.id),
                Err(e) => tracing::error!("router {}: removing its pins: {e}", router.id),
            }
        } else {
            // The fast path keeps forwarding; the next routerd adopts it.
            tracing::info!("router {}: left running for the next routerd", router.id);
        }
    });
}

fn write_info(info: &RouterInfo) -> Result<(), Error> {
    std::fs::create_dir_all(paths::run_dir())
        .map_err(|e| Error::io(format!("creating {}", paths::run_dir().display()), e))?;
    let path = paths::router_info_file(&info.router);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(info)
        .map_err(|e| Error::io("encoding router info", std::io::Error::other(e)))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(format!("renaming {}", path.display()), e))
}

/// Reads the info file of router `id`: `None` when it has none (it does not run). Reads
/// that one file only, so nothing else in the run directory can stand in its way.
pub fn running_router(id: &str) -> Result<Option<RouterInfo>, Error> {
    let path = paths::router_info_file(id);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let info: RouterInfo = serde_json::from_str(&text).map_err(|e| {
        Error::io(
            format!("parsing {}", path.display()),
            std::io::Error::other(e),
        )
    })?;
    Ok(Some(info).filter(|info| info.router == id))
}

/// Reads the info files of every running router (files of the run directory that are not
/// a router's info are passed over).
pub fn running_routers() -> Result<Vec<RouterInfo>, Error> {
    let mut out = Vec::new();
    let dir = match std::fs::read_dir(paths::run_dir()) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(Error::io(
                format!("reading {}", paths::run_dir().display()),
                e,
            ));
        }
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            // Another tool's JSON file in the run directory is not a router's info.
            let Ok(info) = serde_json::from_str::<RouterInfo>(&text) else {
                continue;
            };
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.router.cmp(&b.router));
    Ok(out)
}
