//! routerd's start, in the background: the routers of the desired state start on a thread
//! of their own ([`NodeController::start_with`]) while routerd's main loop keeps handling
//! signals and the API socket. A start takes minutes on a node of 1,000 routers; meanwhile
//! - queries are answered from the desired state and the routers started so far: a router
//!   not yet tried is `starting` (`router list`, `router show`);
//! - edits are refused with [`ErrorCode::Unavailable`] ("routerd is starting, try again"),
//!   not queued: a client that waits minutes for an answer would have timed out anyway,
//!   and the desired state it edits may change under it (a SIGHUP);
//! - a stop ([`Startup::cancel`]) lets the routers under way finish their start and starts
//!   no other; those started are left running, as a stop leaves them.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::oneshot;

use super::NodeController;
use crate::{
    Error,
    api::{self, ApiError, ErrorCode, Plan, Request, Response},
    config::{DesiredState, Router},
    router::{RouterInfo, RunningRouter, StartControl},
};

/// A start under way (see the module docs).
pub struct Startup {
    progress: Arc<Progress>,
    done: oneshot::Receiver<NodeController>,
}

/// What the start has done so far, shared with the thread that starts the routers.
struct Progress {
    desired: DesiredState,
    cancel: AtomicBool,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    running: BTreeMap<String, RouterInfo>,
    /// Routers whose start failed: why.
    waiting: BTreeMap<String, String>,
}

impl Startup {
    /// Starts the routers of `desired` on a thread of their own, as
    /// [`NodeController::start`] does.
    pub fn spawn(desired: DesiredState, owner: &Path, parallel: usize) -> Result<Self, Error> {
        let progress = Arc::new(Progress {
            desired: desired.clone(),
            cancel: AtomicBool::new(false),
            seen: Mutex::new(Seen::default()),
        });
        let (tx, done) = oneshot::channel();
        let shared = progress.clone();
        let owner = owner.to_path_buf();
        std::thread::Builder::new()
            .name("routerd-start".into())
            .spawn(move || {
                let record = |router: &Router, result: &Result<RunningRouter, Error>| {
                    shared.record(router, result)
                };
                let control = StartControl {
                    cancel: Some(&shared.cancel),
                    done: Some(&record),
                };
                let node = NodeController::start_with(desired, &owner, parallel, &control);
                // If nobody waits any more, the routers are dropped, which leaves them
                // running and pinned.
                let _ = tx.send(node);
            })
            .map_err(|e| Error::io("spawning the start thread", e))?;
        Ok(Self { progress, done })
    }

    /// Waits for the start to end; cancel-safe (a `select!` may poll it again).
    pub async fn finished(&mut self) -> Result<NodeController, Error> {
        (&mut self.done).await.map_err(|_| {
            Error::io(
                "starting the routers",
                std::io::Error::other("the start thread panicked"),
            )
        })
    }

    /// Starts no further router; the routers under way finish their start.
    pub fn cancel(&self) {
        self.progress.cancel.store(true, Ordering::Relaxed);
    }

    /// (routers whose start has ended, routers of the desired state).
    pub fn progress(&self) -> (usize, usize) {
        let seen = self.progress.seen();
        (
            seen.running.len() + seen.waiting.len(),
            self.progress.desired.routers.len(),
        )
    }

    /// The answer to an API request during the start (see the module docs).
    pub fn answer(&self, request: &Request) -> Response {
        let (done, total) = self.progress();
        if request.is_mutation() {
            return Response::failure(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "routerd is starting ({done} of {total} routers tried): try again when it is ready"
                ),
            ));
        }
        let seen = self.progress.seen();
        let desired = &self.progress.desired;
        let mut live = api::Live {
            routers: seen.running.clone(),
            waiting: seen.waiting.clone(),
            starting: desired
                .routers
                .iter()
                .filter(|r| !seen.running.contains_key(&r.id) && !seen.waiting.contains_key(&r.id))
                .map(|r| r.id.clone())
                .collect::<BTreeSet<_>>(),
            counters: Default::default(),
        };
        drop(seen);
        live.read_counters(desired, request);
        match api::plan_with(desired, request, &live) {
            Ok(Plan::Answer(value)) => Response::success(value),
            Ok(_) => Response::failure(ApiError::new(
                ErrorCode::Unavailable,
                "routerd is starting: try again when it is ready",
            )),
            Err(e) => Response::failure(e),
        }
    }
}

impl Progress {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // A panic elsewhere while holding the lock leaves the maps whole (plain inserts).
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, router: &Router, result: &Result<RunningRouter, Error>) {
        let mut seen = self.seen();
        match result {
            Ok(r) => {
                seen.running.insert(router.id.clone(), r.info.clone());
            }
            Err(e) => {
                seen.waiting.insert(router.id.clone(), e.to_string());
            }
        }
    }
}
