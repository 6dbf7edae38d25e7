//! Many nodes, one desired state: routerd following etcd (`routerd --etcd URL --node NAME`).
//!
//! The cluster's desired state is in etcd under a versioned prefix ([`keys`],
//! `docs/etcd.md`): every router by id, and its placement on nodes. Each node reads the
//! routers placed on it and applies them through the same [`NodeController`] a file feeds
//! (as a difference: an unchanged router is not written), and reports back under a lease.
//!
//! - [`keys`]: the key layout and the values under it;
//! - [`sync`]: read at one revision, watch from the next, events to this node's desired
//!   state; reconnects with a growing delay and reads everything again after a compaction;
//! - [`node_record`]: the node's lease, its record and each router's status; and what
//!   `routerctl node list` reads;
//! - [`local`]: the last applied state, saved in the state directory for a start without
//!   etcd;
//! - [`write`]: the operator's side (`routerctl --etcd URL ...`): changes planned from one
//!   read, checked as the nodes check them, written in one transaction guarded by every
//!   key read; [`wait`]: until the nodes report a change applied (`--wait`).
//!
//! [`Cluster`] is what routerd holds: the etcd side runs on a thread of its own (its own
//! runtime), so a slow router start in routerd's loop never delays the lease's renewal, and
//! etcd being away never blocks routerd: the routers keep what they last applied, and the
//! fast paths never wait on the store.

mod args;
pub mod keys;
pub mod local;
pub mod node_record;
pub mod sync;
pub mod tls;
pub mod wait;
pub mod write;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Notify, mpsc, watch};

use crate::{
    Error,
    api::{ApiError, ErrorCode, Request, Response},
    config::DesiredState,
    datapath,
    node::NodeController,
};
pub use args::{ClusterArgs, RootArgs};
pub use keys::{
    DEFAULT_PREFIX, HaHolder, Keys, NodeRecord, Placement, RouterStatus, RunState, Switchover,
};
pub use node_record::{NodeView, Report, nodes};
pub use sync::Update;
pub use tls::Credentials;

/// The node's lease time to live by default: a node that stops renewing it is gone from
/// `routerctl node list` this long after.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// How long routerd waits at start for etcd's desired state before it starts from its saved
/// one.
pub const FIRST_READ_WAIT: Duration = Duration::from_secs(3);

/// How a node follows etcd.
#[derive(Clone, Debug)]
pub struct Options {
    /// The etcd endpoints (`http://127.0.0.1:2379`), any of which may answer.
    pub endpoints: Vec<String>,
    /// The key prefix ([`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// This node's name (the placements name nodes by it).
    pub node: String,
    pub lease_ttl: Duration,
    /// Where the last applied state is saved ([`local`]).
    pub state_dir: PathBuf,
    /// Watch responses less than this apart are applied together ([`sync::DEBOUNCE`]).
    pub debounce: Duration,
    /// TLS files for https:// endpoints ([`tls`]).
    pub credentials: Credentials,
    /// The namespace of the overlay devices distributed routers use (`None`: routerd's
    /// own).
    pub overlay_netns: Option<String>,
}

impl Options {
    /// Checks the options: at least one endpoint, a node name the layout admits, TLS
    /// files that can be read, a TTL of at least 2 s (renewed every third of it).
    pub fn check(&self) -> Result<(), Error> {
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err(crate::ConfigError::Invalid {
                key: "etcd".into(),
                value: String::new(),
                problem: "at least one endpoint, e.g. http://127.0.0.1:2379".into(),
            }
            .into());
        }
        keys::check_node_name(&self.node)?;
        // The TLS files are read now, so a missing one stops routerd at start, named,
        // rather than failing every connection after.
        self.credentials.apply(etcd_client::ConnectOptions::new())?;
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(crate::ConfigError::Invalid {
                key: "lease-ttl".into(),
                value: format!("{}", self.lease_ttl.as_secs()),
                problem: "at least 2 seconds".into(),
            }
            .into());
        }
        Ok(())
    }
}

/// routerd's side of the cluster (see the module docs).
pub struct Cluster {
    options: Options,
    local: local::LocalState,
    /// The initial state, until routerd takes it.
    initial: Option<DesiredState>,
    updates: mpsc::Receiver<Update>,
    reports: watch::Sender<Report>,
    reread: Arc<Notify>,
    /// The update the node runs.
    applied: Update,
}

impl Cluster {
    /// Starts following etcd: the etcd thread starts, and routerd waits up to
    /// [`FIRST_READ_WAIT`] for the desired state placed on this node. Without an answer it
    /// starts from the saved state, and reconciles when etcd answers; without a saved state
    /// it starts with no router, unless routers of this node are pinned (the saved state
    /// was lost): then it waits for etcd rather than tear them down.
    pub async fn start(options: Options) -> Result<Self, Error> {
        options.check()?;
        let local = local::LocalState::new(&options.state_dir);
        let saved = match local.load() {
            Ok(saved) => saved,
            Err(e) => {
                tracing::error!("routerd: {e}; starting without the saved state");
                None
            }
        };
        let (updates_tx, mut updates) = mpsc::channel(16);
        let (reports, reports_rx) = watch::channel(Report::default());
        let reread = Arc::new(Notify::new());
        {
            let options = options.clone();
            let first = saved.clone().unwrap_or_default();
            let reread = reread.clone();
            std::thread::Builder::new()
                .name("etcd".into())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!("routerd: the etcd thread's runtime: {e}");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        tokio::join!(
                            sync::run(options.clone(), first, updates_tx, reread),
                            node_record::run(options, reports_rx),
                        );
                    });
                })
                .map_err(|e| Error::io("starting the etcd thread", e))?;
        }
        let applied = match tokio::time::timeout(FIRST_READ_WAIT, updates.recv()).await {
            Ok(Some(update)) => {
                tracing::info!(
                    "routerd: node {}: {} router(s) placed here in etcd at revision {}",
                    options.node,
                    update.state.routers.len(),
                    update.revision
                );
                if let Err(e) = local.save(&update) {
                    tracing::error!("routerd: saving the desired state: {e}");
                }
                update
            }
            _ if saved.is_none() && !datapath::pinned_routers_of(local.path()).is_empty() => {
                // Starting from nothing would tear down routers that forward now, on no
                // information: wait for etcd instead (the fast paths keep forwarding).
                tracing::warn!(
                    "routerd: etcd did not answer in {} s and there is no saved state in {}, \
                     but routers of this node are pinned: waiting for etcd before touching them",
                    FIRST_READ_WAIT.as_secs(),
                    local.path().display()
                );
                let update = updates.recv().await.ok_or_else(|| {
                    Error::io(
                        "waiting for etcd",
                        std::io::Error::other("the etcd thread ended"),
                    )
                })?;
                if let Err(e) = local.save(&update) {
                    tracing::error!("routerd: saving the desired state: {e}");
                }
                update
            }
            _ => {
                let saved = saved.unwrap_or_default();
                tracing::warn!(
                    "routerd: etcd did not answer in {} s; starting from the saved state \
                     ({} router(s), revision {}) in {}",
                    FIRST_READ_WAIT.as_secs(),
                    saved.state.routers.len(),
                    saved.revision,
                    local.path().display()
                );
                saved
            }
        };
        log_refused(&applied);
        Ok(Self {
            options,
            local,
            initial: Some(applied.state.clone()),
            updates,
            reports,
            reread,
            applied,
        })
    }

    /// The desired state to start the node with (once; empty after).
    pub fn take_initial_state(&mut self) -> DesiredState {
        self.initial.take().unwrap_or_default()
    }

    /// The owner recorded with the routers' pins: the saved state's file.
    pub fn state_file(&self) -> &Path {
        self.local.path()
    }

    pub fn node(&self) -> &str {
        &self.options.node
    }

    /// The next update from etcd (waits until there is one).
    pub async fn next(&mut self) -> Option<Update> {
        self.updates.recv().await
    }

    /// Makes the etcd side read everything again (SIGHUP with `--etcd`).
    pub fn reread(&self) {
        self.reread.notify_one();
    }

    /// Applies `update` to the node as a difference (nothing at all when this node's
    /// routers are as they run), then saves it as the state to start from.
    pub async fn apply(&mut self, node: &mut NodeController, update: Update) {
        let started = Instant::now();
        log_refused(&update);
        if update.state != *node.desired() {
            let outcome = node.reload(update.state.clone(), started).await;
            tracing::info!(
                "routerd: etcd revision {} applied; {} map and {} kernel writes{}",
                update.revision,
                outcome.writes.map,
                outcome.writes.kernel,
                if outcome.failures.is_empty() {
                    String::new()
                } else {
                    format!("; failed: {}", outcome.failures.join("; "))
                }
            );
        }
        if let Err(e) = self.local.save(&update) {
            tracing::error!("routerd: saving the desired state: {e}");
        }
        self.applied = update;
    }

    /// Reports the routers' state to etcd if it changed (called after anything that may
    /// change it: an update, a retry of waiting routers).
    pub fn observe(&self, node: &NodeController) {
        let waiting = node.waiting();
        let mut report = Report::default();
        for router in &node.desired().routers {
            let id = &router.id;
            let wait = waiting.get(id);
            if wait.is_none() {
                report.running.push(id.clone());
            }
            report.statuses.insert(
                id.clone(),
                RouterStatus {
                    revision: self.applied.revisions.get(id).copied().unwrap_or(0),
                    state: if wait.is_some() {
                        RunState::Waiting
                    } else {
                        RunState::Running
                    },
                    error: wait.or(self.applied.refused.get(id)).cloned(),
                },
            );
        }
        // Placed here but refused with nothing to fall back on: waits for a valid state.
        for (id, problem) in &self.applied.refused {
            report
                .statuses
                .entry(id.clone())
                .or_insert_with(|| RouterStatus {
                    revision: 0,
                    state: RunState::Waiting,
                    error: Some(problem.clone()),
                });
        }
        report.running.sort();
        self.reports.send_if_modified(|current| {
            if *current == report {
                return false;
            }
            *current = report;
            true
        });
    }

    /// Serves an API request: queries as without etcd; an edit is refused, as the desired
    /// state is etcd's and a local edit would be undone by the next update.
    pub fn handle(&self, node: &mut NodeController, request: &Request) -> Response {
        if request.is_mutation() {
            return Response::failure(ApiError::new(
                ErrorCode::ReadOnly,
                format!(
                    "the desired state of node {} is in etcd ({}, prefix {}): write the change \
                     there; routerd's API only answers queries",
                    self.options.node,
                    self.options.endpoints.join(","),
                    self.options.prefix
                ),
            ));
        }
        node.answer(request)
    }
}

fn log_refused(update: &Update) {
    for (id, problem) in &update.refused {
        let _router = crate::router::span(id).entered();
        tracing::error!("routerd: router {id}: desired state in etcd refused: {problem}");
    }
}

/// The next update of `cluster`, or never without one (for routerd's `select!`).
pub async fn next_update(cluster: &mut Option<Cluster>) -> Option<Update> {
    match cluster {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}
