//! Routers of the desired state whose start failed, and when each is tried again.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{
    Error,
    config::{DesiredState, Router},
};

/// How often waiting routers are looked at; each is tried again when its delay is over.
pub const RETRY_TICK: Duration = Duration::from_secs(1);
/// The delay after a router's first failed start; it doubles with each failure after that.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest delay between two starts of a waiting router.
pub const RETRY_LONGEST: Duration = Duration::from_secs(30);

/// The delay before the next start of a router that failed `attempts` times in a row
/// (at least 1): `RETRY_FIRST`, doubling with each failure, at most `RETRY_LONGEST`.
pub fn retry_delay(attempts: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(RETRY_LONGEST)
}

/// Routers of the desired state whose start failed, tried again after a delay that grows
/// from `RETRY_FIRST` to `RETRY_LONGEST`, until they start or leave the desired state.
#[derive(Default)]
pub(super) struct Waiting {
    by_id: BTreeMap<String, WaitingRouter>,
}

struct WaitingRouter {
    router: Router,
    error: String,
    /// Failed starts of `router` as it is (a changed router counts afresh).
    attempts: u32,
    next_try: Instant,
}

impl Waiting {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether `router`, exactly as it is, is waiting.
    pub(super) fn has(&self, router: &Router) -> bool {
        self.by_id
            .get(&router.id)
            .is_some_and(|w| w.router == *router)
    }

    /// Records a start of `router` that failed at `now`, and when to try it again.
    pub(super) fn failed(&mut self, router: Router, error: &Error, now: Instant) {
        let attempts = match self.by_id.get(&router.id) {
            Some(w) if w.router == router => w.attempts.saturating_add(1),
            _ => 1,
        };
        let delay = retry_delay(attempts);
        // The error names the router.
        tracing::error!(
            "routerd: {error}; the router did not start and waits, tried again in {} s",
            delay.as_secs()
        );
        self.by_id.insert(
            router.id.clone(),
            WaitingRouter {
                router,
                error: error.to_string(),
                attempts,
                next_try: now + delay,
            },
        );
    }

    /// Forgets router `id`, started at last; returns its failed attempts if it was waiting.
    pub(super) fn started(&mut self, id: &str) -> Option<u32> {
        self.by_id.remove(id).map(|w| w.attempts)
    }

    /// Forgets the routers `state` no longer has, and returns them; a changed router waits
    /// as it is now.
    pub(super) fn retain_desired(&mut self, state: &DesiredState) -> Vec<Router> {
        let gone: Vec<String> = self
            .by_id
            .keys()
            .filter(|id| state.router(id).is_none())
            .cloned()
            .collect();
        gone.iter()
            .filter_map(|id| self.by_id.remove(id))
            .map(|w| w.router)
            .collect()
    }

    /// The routers whose delay is over at `now`.
    pub(super) fn due(&self, now: Instant) -> Vec<Router> {
        self.by_id
            .values()
            .filter(|w| w.next_try <= now)
            .map(|w| w.router.clone())
            .collect()
    }

    /// Why each waits, by router id (for `router list` and `router show`).
    pub(super) fn reasons(&self) -> BTreeMap<String, String> {
        self.by_id
            .iter()
            .map(|(id, w)| (id.clone(), w.error.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::{router, state};

    fn error(text: &str) -> Error {
        Error::io("starting", std::io::Error::other(text.to_string()))
    }

    fn due_ids(waiting: &Waiting, now: Instant) -> Vec<String> {
        waiting.due(now).into_iter().map(|r| r.id).collect()
    }

    #[test]
    fn delay_doubles_from_one_second_to_thirty() {
        let secs: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(u32::MAX), RETRY_LONGEST);
        // Zero attempts is not a state a router can be in; it must not underflow.
        assert_eq!(retry_delay(0), RETRY_FIRST);
    }

    #[test]
    fn a_router_is_due_when_its_delay_is_over() {
        let t0 = Instant::now();
        let mut waiting = Waiting::default();
        let r1 = router("r1", "ns1");
        // Each failure of the same router pushes its next try further out.
        let mut now = t0;
        for delay in [1, 2, 4, 8, 16, 30, 30] {
            waiting.failed(r1.clone(), &error("no namespace"), now);
            let next = now + Duration::from_secs(delay);
            assert!(due_ids(&waiting, next - Duration::from_millis(1)).is_empty());
            assert_eq!(due_ids(&waiting, next), ["r1"]);
            now = next;
        }
        assert_eq!(waiting.started("r1"), Some(7));
        assert!(waiting.is_empty());
        assert_eq!(waiting.started("r1"), None);
    }

    #[test]
    fn a_changed_router_counts_afresh() {
        let t0 = Instant::now();
        let mut waiting = Waiting::default();
        let r1 = router("r1", "ns1");
        waiting.failed(r1.clone(), &error("one"), t0);
        waiting.failed(r1.clone(), &error("two"), t0);
        assert_eq!(
            due_ids(&waiting, t0 + Duration::from_secs(1)),
            Vec::<String>::new()
        );
        let moved = router("r1", "ns9");
        assert!(waiting.has(&r1) && !waiting.has(&moved));
        waiting.failed(moved.clone(), &error("three"), t0);
        assert!(waiting.has(&moved) && !waiting.has(&r1));
        assert_eq!(due_ids(&waiting, t0 + Duration::from_secs(1)), ["r1"]);
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting.started("r1"), Some(1));
    }

    #[test]
    fn only_desired_routers_keep_waiting() {
        let t0 = Instant::now();
        let mut waiting = Waiting::default();
        waiting.failed(router("r1", "ns1"), &error("r1 failed"), t0);
        waiting.failed(router("r2", "ns2"), &error("r2 failed"), t0);
        waiting.failed(router("r3", "ns3"), &error("r3 failed"), t0);
        // r2 changed: it stays (and waits as it was until it fails again); r3 is gone.
        waiting.retain_desired(&state(vec![router("r1", "ns1"), router("r2", "ns7")]));
        let reasons = waiting.reasons();
        assert_eq!(reasons.keys().collect::<Vec<_>>(), ["r1", "r2"]);
        assert!(reasons["r2"].contains("r2 failed"), "{reasons:?}");
        assert_eq!(due_ids(&waiting, t0 + RETRY_FIRST), ["r1", "r2"]);
    }
}
