//! The node controller: the routers of this node, kept in step with a desired state.
//!
//! A [`NodeController`] owns
//! - the desired state it applies: a [`DesiredState`] value. Where it comes from (routerd's
//!   file and API socket today, a key-value store tomorrow) is the caller's business, and so
//!   is persisting it ([`StateFile`] is routerd's);
//! - the running routers ([`RunningRouter`], a thread each), in the order they started;
//! - the waiting routers: those of the desired state whose start failed, each with its last
//!   error and when it is tried again (after 1 s, doubling up to 30 s: [`retry_delay`]);
//! - the owner recorded with the routers' pins (`datapath::Owner::config`, routerd's
//!   desired-state file): a controller adopts and removes only its own owner's routers.
//!
//! Its lifecycle:
//! 1. [`NodeController::start`] starts every router of the desired state, several at once;
//!    a router that does not start waits. Routers pinned under the same owner that the
//!    state no longer has are removed, and so are stale routers of no running routerd
//!    ([`NodeController::sweep_stale`], which routerd also calls every 30 s).
//! 2. A new desired state is applied as a difference against what runs ([`diff`]): removed
//!    routers are detached and their pins removed, new ones started, changed ones changed
//!    live where [`can_apply`] allows and restarted where not; an unchanged
//!    router is not touched. Two ways:
//!    - [`NodeController::reload`] goes as far as it can: the new state is the state, a
//!      router that fails keeps running as it was or waits (SIGHUP; a source that is the
//!      truth and cannot be refused);
//!    - [`NodeController::apply`] is all or nothing: if a router fails, it returns a
//!      [`FailedApply`], which [`NodeController::roll_back`] turns back into the previous
//!      state (the caller restores its own copy of the state in between).
//!      [`NodeController::handle`] serves an API request that way: plan, persist, apply,
//!      roll back.
//! 3. [`NodeController::retry_due`], called every [`RETRY_TICK`], starts the waiting routers
//!    whose delay is over.
//! 4. [`NodeController::stop`] stops following the routers and leaves their fast paths
//!    forwarding and pinned: the next controller adopts them without rebuilding anything.
//!
//! Methods take `&mut self` and run one at a time: the caller serialises its sources of
//! change (routerd's main loop handles signals, API requests and retries one by one). The
//! log lines keep the `routerd:` prefix operators and tests know them by.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    time::Instant,
};

use crate::{
    api,
    config::{DesiredState, Router},
    datapath, paths,
    router::{RunningRouter, StartControl, Writes, can_apply},
};

mod expedite;
pub mod journal;
mod request;
mod startup;
mod state_file;
mod waiting;

pub use expedite::ExpeditedGrace;
pub use startup::Startup;
pub use state_file::{FOLD_LONGEST, FOLD_QUIET, FOLD_RETRY, FoldSchedule, StateFile};
use tracing::Instrument;
use waiting::Waiting;
pub use waiting::{RETRY_FIRST, RETRY_LONGEST, RETRY_TICK, retry_delay};

/// How many routers set up at once by default: two per CPU. Loading is mostly the
/// verifier's work, but a router's setup also waits on the kernel (netlink answers,
/// attaching to its interfaces), and with one per CPU the CPUs idled a third of the time.
pub fn default_parallelism() -> usize {
    2 * std::thread::available_parallelism().map_or(1, usize::from)
}

/// The routers of this node and the desired state they follow (see the module docs).
pub struct NodeController {
    desired: DesiredState,
    running: Vec<RunningRouter>,
    waiting: Waiting,
    owner: PathBuf,
    /// Routers set up at once.
    parallel: usize,
}

/// What bringing the routers to a desired state did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// What failed, one message per router (a router already waiting as it is and failing
    /// again is not a failure).
    pub failures: Vec<String>,
    /// Routers whose live change failed, possibly halfway.
    pub failed_live: Vec<String>,
    /// The writes of the routers that changed.
    pub writes: Writes,
}

/// An [`NodeController::apply`] that failed: the routers run part of the new state until
/// [`NodeController::roll_back`] is given this.
#[derive(Debug)]
#[must_use = "the routers run part of the new state until it is rolled back"]
pub struct FailedApply {
    /// What failed, one message per router.
    pub failures: Vec<String>,
    failed_live: Vec<String>,
    new: DesiredState,
}

/// What applying a desired state does to one running router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not in the new state: detached, its pins removed.
    Remove,
    /// The same in the new state: nothing is written.
    Keep,
    /// Changed in a way the running router takes live.
    ApplyLive(Router),
    /// Changed in a way that needs a new start (another namespace or mode, a new interface).
    Restart(Router),
}

/// A new desired state against the routers that run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    /// One step per running router, in their order: (router id, step).
    pub steps: Vec<(String, Step)>,
    /// Routers of the new state that do not run (new ones, and ones waiting), in the new
    /// state's order: to start.
    pub added: Vec<Router>,
}

/// What bringing `running` (the desired states of the running routers) to `new` takes.
/// A running router takes a new state live where [`can_apply`] allows.
pub fn diff<'a>(running: impl IntoIterator<Item = &'a Router>, new: &DesiredState) -> Diff {
    let mut ids = HashSet::new();
    let steps = running
        .into_iter()
        .map(|old| {
            ids.insert(old.id.as_str());
            let step = match new.router(&old.id) {
                None => Step::Remove,
                Some(wanted) if wanted == old => Step::Keep,
                Some(wanted) if can_apply(old, wanted) => Step::ApplyLive(wanted.clone()),
                Some(wanted) => Step::Restart(wanted.clone()),
            };
            (old.id.clone(), step)
        })
        .collect();
    let added = new
        .routers
        .iter()
        .filter(|r| !ids.contains(r.id.as_str()))
        .cloned()
        .collect();
    Diff { steps, added }
}

impl NodeController {
    /// Records `owner` with the pins of the routers this process starts (once per process),
    /// starts the routers of `desired` with up to `parallel` setting up at once (those that
    /// fail wait), then removes the routers pinned under `owner` that `desired` does not
    /// have (left by an earlier daemon).
    pub fn start(desired: DesiredState, owner: &Path, parallel: usize) -> Self {
        Self::start_with(desired, owner, parallel, &StartControl::default())
    }

    /// As [`NodeController::start`], telling `control` of each router as its start ends.
    /// Once `control` is cancelled no further router starts (those not started wait) and
    /// no pinned router is removed: the caller is stopping.
    pub fn start_with(
        desired: DesiredState,
        owner: &Path,
        parallel: usize,
        control: &StartControl<'_>,
    ) -> Self {
        datapath::set_daemon_config(owner);
        let started = Instant::now();
        let mut node = Self {
            running: Vec::new(),
            waiting: Waiting::default(),
            owner: owner.to_path_buf(),
            parallel,
            desired,
        };
        start_routers(
            node.desired.routers.clone(),
            node.parallel,
            control,
            &mut node.running,
            &mut node.waiting,
        );
        if control
            .cancel
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            tracing::info!(
                "routerd: start stopped after {} router(s); the others were not started",
                node.running.len()
            );
            return node;
        }
        tracing::info!(
            "routerd: {} router(s) started in {} ms; {} waiting",
            node.running.len(),
            started.elapsed().as_millis(),
            node.waiting.len()
        );
        node.sweep_stale();
        node
    }

    /// Removes stale routers ([`crate::stale::sweep`]): those this controller's owner
    /// pinned that the desired state no longer has, and those of no running routerd whose
    /// namespace is gone. Routers of the desired state, waiting ones too, keep their pins.
    /// Returns the routers removed.
    pub fn sweep_stale(&self) -> Vec<String> {
        crate::stale::sweep(&self.desired, &self.owner)
    }

    /// The desired state the controller follows.
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// The owner recorded with the routers' pins.
    pub fn owner(&self) -> &Path {
        &self.owner
    }

    /// How many routers run.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// How many routers of the desired state wait to be started again.
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// Why each waiting router waits (its last start error), by router id.
    pub fn waiting(&self) -> BTreeMap<String, String> {
        self.waiting.reasons()
    }

    /// What the API's planner needs of the running routers.
    pub fn live(&self) -> api::Live {
        api::Live {
            routers: self
                .running
                .iter()
                .map(|r| (r.desired.id.clone(), r.info.clone()))
                .collect(),
            waiting: self.waiting.reasons(),
            starting: Default::default(),
            counters: Default::default(),
        }
    }

    /// Starts the waiting routers whose delay is over at `now`; those that fail again wait
    /// longer.
    pub fn retry_due(&mut self, now: Instant) {
        if self.waiting.is_empty() {
            return;
        }
        let due = self.waiting.due(now);
        if !due.is_empty() {
            start_routers(
                due,
                self.parallel,
                &StartControl::default(),
                &mut self.running,
                &mut self.waiting,
            );
        }
    }

    /// Makes `new` the desired state and brings the routers to it as far as they go: a
    /// router that fails keeps running as it was (a live change that failed may have been
    /// applied in part), one that does not start waits. `since`: when the work of this
    /// change began (the time logged includes reading and validating `new`).
    pub async fn reload(&mut self, new: DesiredState, since: Instant) -> Outcome {
        let outcome = self.bring_to(&new, since).await;
        self.desired = new;
        outcome
    }

    /// Brings the routers to `new`, all or nothing: if every router gets there, `new` is
    /// the desired state and the writes are returned. If one fails, the desired state stays
    /// the previous one, and the routers must be brought back to it with
    /// [`NodeController::roll_back`]. `since` as for [`NodeController::reload`].
    pub async fn apply(
        &mut self,
        new: DesiredState,
        since: Instant,
    ) -> Result<Writes, FailedApply> {
        let outcome = self.bring_to(&new, since).await;
        if outcome.failures.is_empty() {
            self.desired = new;
            return Ok(outcome.writes);
        }
        Err(FailedApply {
            failures: outcome.failures,
            failed_live: outcome.failed_live,
            new,
        })
    }

    /// Brings the routers back to the desired state after `failed`: routers whose live
    /// change stopped halfway restart on what they ran (adopting their pinned fast path,
    /// which writes only what differs), the others are brought back as a reload would, and
    /// routers the failed state added that did not start leave no pins. Returns what failed.
    pub async fn roll_back(&mut self, failed: FailedApply) -> Vec<String> {
        let mut problems = Vec::new();
        for id in &failed.failed_live {
            let Some(at) = self.running.iter().position(|r| r.desired.id == *id) else {
                continue;
            };
            let router = self.running.remove(at);
            let desired = router.desired.clone();
            router.stop();
            match RunningRouter::start(desired) {
                Ok(r) => self.running.push(r),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let old = self.desired.clone();
        problems.extend(self.bring_to(&old, Instant::now()).await.failures);
        let pinned = datapath::pinned_routers_of(&self.owner);
        for r in &failed.new.routers {
            if old.router(&r.id).is_none()
                && !self.running.iter().any(|x| x.desired.id == r.id)
                && pinned.contains(&r.id)
            {
                if let Err(e) = datapath::teardown(&r.id) {
                    problems.push(format!("removing router {}: {e}", r.id));
                }
                let _ = std::fs::remove_file(paths::router_info_file(&r.id));
            }
        }
        problems
    }

    /// Stops following the routers and leaves their fast paths forwarding and pinned, for
    /// the next controller to adopt.
    pub fn stop(self) {
        for router in self.running {
            router.stop();
        }
    }

    /// Brings the running and waiting routers to `new` (see [`diff`]); the desired state is
    /// the caller's to set. Returns what failed, except routers already waiting as they are,
    /// and what was written.
    async fn bring_to(&mut self, new: &DesiredState, since: Instant) -> Outcome {
        for router in self.waiting.retain_desired(new) {
            // While it waited the kernel served it (degraded mode): that goes with it.
            crate::router::release_degraded(&router);
        }
        let diff = diff(self.running.iter().map(|r| &r.desired), new);
        let mut outcome = Outcome::default();
        let mut kept = Vec::new();
        // Routers whose restart failed and whose previous state did not start again either.
        let mut gone = Vec::new();
        for (mut router, (_, step)) in std::mem::take(&mut self.running)
            .into_iter()
            .zip(diff.steps)
        {
            // Each step's events carry the router it is about (see `crate::router::span`); the
            // span is entered only around code that does not await.
            let span = crate::router::span(&router.desired.id);
            match step {
                Step::Remove => {
                    let _router = span.enter();
                    tracing::info!("routerd: router {} removed", router.desired.id);
                    router.remove();
                }
                Step::Keep => {
                    let _router = span.enter();
                    tracing::info!(
                        "routerd: router {} unchanged, nothing written",
                        router.desired.id
                    );
                    kept.push(router);
                }
                Step::ApplyLive(wanted) => {
                    match router.apply(wanted).instrument(span.clone()).await {
                        Ok(w) => outcome.writes += w,
                        Err(e) => {
                            let _router = span.enter();
                            tracing::error!("routerd: {e}");
                            outcome.failures.push(e.to_string());
                            outcome.failed_live.push(router.desired.id.clone());
                        }
                    }
                    kept.push(router);
                }
                Step::Restart(wanted) => {
                    let _router = span.enter();
                    tracing::info!(
                        "routerd: router {} restarts for its new interfaces",
                        wanted.id
                    );
                    let old = router.desired.clone();
                    let wanted_again = wanted.clone();
                    router.stop();
                    match RunningRouter::start(wanted) {
                        Ok(r) => {
                            outcome.writes += r.start_writes;
                            kept.push(r);
                        }
                        Err(e) => {
                            tracing::error!("routerd: {e}; restoring the previous state");
                            outcome.failures.push(e.to_string());
                            match RunningRouter::start(old) {
                                Ok(r) => kept.push(r),
                                Err(e) => {
                                    outcome.failures.push(e.to_string());
                                    self.waiting
                                        .failed(wanted_again.clone(), &e, Instant::now());
                                    gone.push(wanted_again);
                                }
                            }
                        }
                    }
                }
            }
        }
        // A router that no longer runs at all is started with the added ones (it waits
        // already, so failing again is not news), in the new state's order.
        let mut added = diff.added;
        if !gone.is_empty() {
            added.extend(gone);
            added.sort_by_cached_key(|r| new.routers.iter().position(|n| n.id == r.id));
        }
        // A router already waiting as it is failing again is not news: it does not fail
        // this change (an API edit of another router goes through).
        let news: Vec<bool> = added.iter().map(|r| !self.waiting.has(r)).collect();
        let before = kept.len();
        let failed = start_routers(
            added,
            self.parallel,
            &StartControl::default(),
            &mut kept,
            &mut self.waiting,
        );
        for r in &kept[before..] {
            outcome.writes += r.start_writes;
        }
        for (i, e) in failed {
            if news[i] {
                outcome.failures.push(e);
            }
        }
        self.running = kept;
        tracing::info!(
            "routerd: reloaded in {} us; {} router(s) running",
            since.elapsed().as_micros(),
            self.running.len()
        );
        outcome
    }
}

/// Starts `routers` (up to `parallel` at once), adding those that start to `running` and
/// the others to `waiting`. Returns the failures: (index in `routers`, error).
fn start_routers(
    routers: Vec<Router>,
    parallel: usize,
    control: &StartControl<'_>,
    running: &mut Vec<RunningRouter>,
    waiting: &mut Waiting,
) -> Vec<(usize, String)> {
    let mut failed = Vec::new();
    let results = RunningRouter::start_all_with(routers.clone(), parallel, control);
    for (i, (router, result)) in routers.into_iter().zip(results).enumerate() {
        match result {
            Ok(r) => {
                if let Some(attempts) = waiting.started(&router.id) {
                    let _router = crate::router::span(&router.id).entered();
                    tracing::info!(
                        "routerd: router {} started after {attempts} failed attempt(s)",
                        router.id
                    );
                }
                running.push(r);
            }
            Err(e) => {
                failed.push((i, e.to_string()));
                let _router = crate::router::span(&router.id).entered();
                waiting.failed(router, &e, Instant::now());
            }
        }
    }
    release_freed_memory();
    failed
}

/// Gives the memory the allocator holds free back to the kernel. Each router's start
/// allocates and frees much more than the router keeps (the object parsed, its programs
/// relocated), on its own thread and so in one of the allocator's per-thread arenas, where
/// what is freed between what stays is kept for reuse rather than returned: on a node of
/// many routers, most of routerd's resident memory after a start.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes their locks.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Mode;

    /// A router `id` in namespace `ns`, with one internal interface and `extra` TOML.
    pub(crate) fn router_with(id: &str, ns: &str, extra: &str) -> Router {
        let text = format!(
            "[[router]]\nid = \"{id}\"\nnamespace = \"{ns}\"\nmode = \"xdp\"\n\
             [[router.interface]]\nname = \"qr-a\"\naddress = \"10.0.1.1/24\"\n{extra}"
        );
        match DesiredState::parse(&text) {
            Ok(mut state) => state.routers.remove(0),
            Err(e) => panic!("test router {id}: {e}"),
        }
    }

    pub(crate) fn router(id: &str, ns: &str) -> Router {
        router_with(id, ns, "")
    }

    pub(crate) fn state(routers: Vec<Router>) -> DesiredState {
        DesiredState { routers }
    }

    fn ids(diff: &Diff, wanted: fn(&Step) -> bool) -> Vec<&str> {
        diff.steps
            .iter()
            .filter(|(_, s)| wanted(s))
            .map(|(id, _)| id.as_str())
            .collect()
    }

    #[test]
    fn diff_classifies_every_router() {
        let route = "[[router.route]]\ndestination = \"10.20.0.0/16\"\nnexthop = \"10.0.1.254\"\n";
        let old = state(vec![
            router("kept", "ns-kept"),
            router("gone", "ns-gone"),
            router("routes", "ns-routes"),
            router("moved", "ns-moved"),
            router("tc", "ns-tc"),
        ]);
        let mut tc = router("tc", "ns-tc");
        tc.mode = Mode::Tc;
        let new = state(vec![
            router("new", "ns-new"),
            router("moved", "ns-elsewhere"),
            router_with("routes", "ns-routes", route),
            router("kept", "ns-kept"),
            tc,
            router("waiting", "ns-waiting"),
        ]);
        let diff = diff(&old.routers, &new);
        // One step per running router, in the running order.
        let order: Vec<&str> = diff.steps.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(order, ["kept", "gone", "routes", "moved", "tc"]);
        assert_eq!(ids(&diff, |s| *s == Step::Keep), ["kept"]);
        assert_eq!(ids(&diff, |s| *s == Step::Remove), ["gone"]);
        assert_eq!(ids(&diff, |s| matches!(s, Step::ApplyLive(_))), ["routes"]);
        assert_eq!(
            ids(&diff, |s| matches!(s, Step::Restart(_))),
            ["moved", "tc"]
        );
        // The changed routers carry what they change to.
        for (id, step) in &diff.steps {
            if let Step::ApplyLive(wanted) | Step::Restart(wanted) = step {
                assert_eq!(Some(wanted), new.router(id));
            }
        }
        // What does not run is started, in the new state's order.
        let added: Vec<&str> = diff.added.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(added, ["new", "waiting"]);
    }

    #[test]
    fn diff_of_the_same_state_changes_nothing() {
        let old = state(vec![router("r1", "ns1"), router("r2", "ns2")]);
        let diff = diff(&old.routers, &old.clone());
        assert!(diff.steps.iter().all(|(_, s)| *s == Step::Keep));
        assert!(diff.added.is_empty());
    }

    #[test]
    fn diff_to_nothing_removes_everything() {
        let old = state(vec![router("r1", "ns1"), router("r2", "ns2")]);
        let diff = diff(&old.routers, &state(Vec::new()));
        assert!(diff.steps.iter().all(|(_, s)| *s == Step::Remove));
        assert!(diff.added.is_empty());
        // From nothing, every router is added.
        let diff = super::diff(std::iter::empty(), &old);
        assert!(diff.steps.is_empty());
        assert_eq!(diff.added, old.routers);
    }
}
