//! What an HA router's agent says about itself, for `routerctl router show` and metrics:
//! a file per router in the run directory (`<router>.ha`, JSON), rewritten as it changes.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{
    error::Error,
    metrics::{Family, Kind},
    paths,
};

/// Lag samples kept for the percentiles (the most recent ones).
const LAG_SAMPLES: usize = 10_000;

/// One HA router on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    pub router: String,
    pub node: String,
    /// "active", "standby", or "electing" (no holder known yet).
    pub role: String,
    /// The epoch this node follows or holds (0: none yet).
    pub epoch: i64,
    /// The node that holds the router, as last seen.
    pub active_node: Option<String>,
    /// Active: the standbys connected now. Standby: empty.
    pub standbys: Vec<String>,
    /// Standby: whether a whole resync arrived on the current connection.
    pub synced: bool,
    /// Active: session entries sent (creations, refreshes, resyncs); standby: written.
    pub entries_sent: u64,
    pub entries_received: u64,
    /// Active: entries found gone from the table and removed on the standbys; standby:
    /// entries removed as the active said.
    #[serde(default)]
    pub entries_removed: u64,
    /// Active: bytes of session frames queued to standbys (heartbeats aside).
    #[serde(default)]
    pub bytes_sent: u64,
    /// Active: session created -> acknowledged by a standby (microseconds), the last batch
    /// and the 99th percentile of the recent ones.
    pub lag_us_last: u64,
    pub lag_us_p99: u64,
    /// Times this node took the router over, and resyncs it sent (active) or received.
    pub takeovers: u64,
    pub resyncs: u64,
    #[serde(skip)]
    lags: VecDeque<u64>,
}

impl HaStatus {
    pub fn new(router: &str, node: &str) -> Self {
        Self {
            router: router.to_string(),
            node: node.to_string(),
            role: "electing".into(),
            ..Self::default()
        }
    }

    /// One more lag sample (microseconds).
    pub fn lag(&mut self, us: u64) {
        self.lag_us_last = us;
        if self.lags.len() == LAG_SAMPLES {
            self.lags.pop_front();
        }
        self.lags.push_back(us);
    }

    /// Computes the percentile and writes the file.
    pub fn write(&mut self) -> Result<(), Error> {
        let mut sorted: Vec<u64> = self.lags.iter().copied().collect();
        sorted.sort_unstable();
        self.lag_us_p99 = percentile(&sorted, 0.99);
        let path = file(&self.router);
        let tmp = path.with_extension("ha.tmp");
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::io("encoding the HA status", std::io::Error::other(e)))?;
        std::fs::create_dir_all(paths::run_dir())
            .map_err(|e| Error::io(format!("creating {}", paths::run_dir().display()), e))?;
        std::fs::write(&tmp, text)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| Error::io(format!("renaming {}", path.display()), e))
    }
}

/// The `q` quantile of `sorted` (nearest rank; 0 when empty).
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn file(router: &str) -> std::path::PathBuf {
    paths::run_dir().join(format!("{router}.ha"))
}

/// The HA status of router `id` on this node, if it is an HA router here.
pub fn read(id: &str) -> Option<HaStatus> {
    let bytes = std::fs::read(file(id)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes the status of a router that is no longer an HA router here.
pub fn forget(id: &str) {
    let _ = std::fs::remove_file(file(id));
}

/// The HA metric families of this node's HA routers (every family, with or without
/// samples).
pub fn families<'a>(statuses: impl Iterator<Item = &'a HaStatus>) -> Vec<Family> {
    use Kind::{Counter, Gauge};
    let mut active = Family::new(
        "router_ha_active",
        Gauge,
        "1 where this node is the HA router's active node, 0 where it stands by.",
    );
    let mut epoch = Family::new(
        "router_ha_epoch",
        Gauge,
        "The epoch (etcd revision of the holder key) this node holds or follows.",
    );
    let mut takeovers = Family::new(
        "router_ha_takeovers_total",
        Counter,
        "Times this node took the HA router over from another.",
    );
    let mut resyncs = Family::new(
        "router_ha_resyncs_total",
        Counter,
        "Whole-table resyncs this node sent (active) or received (standby).",
    );
    let mut entries = Family::new(
        "router_ha_sync_entries_total",
        Counter,
        "Session entries sent to standbys (direction=sent), written from the active (direction=received), or removed because the active's table no longer has them (direction=removed).",
    );
    let mut lag = Family::new(
        "router_ha_sync_lag_microseconds",
        Gauge,
        "Active: from a session's creation to a standby's acknowledgement, the last batch (quantile=last) and the 99th percentile of recent ones.",
    );
    let mut standbys = Family::new(
        "router_ha_standbys",
        Gauge,
        "Active: standbys connected now.",
    );
    for s in statuses {
        let r = s.router.as_str();
        active.add(&[("router", r)], u64::from(s.role == "active"));
        epoch.add(&[("router", r)], s.epoch.max(0) as u64);
        takeovers.add(&[("router", r)], s.takeovers);
        resyncs.add(&[("router", r)], s.resyncs);
        entries.add(&[("router", r), ("direction", "sent")], s.entries_sent);
        entries.add(
            &[("router", r), ("direction", "received")],
            s.entries_received,
        );
        lag.add(&[("router", r), ("quantile", "last")], s.lag_us_last);
        lag.add(&[("router", r), ("quantile", "0.99")], s.lag_us_p99);
        standbys.add(&[("router", r)], s.standbys.len() as u64);
    }
    vec![active, epoch, takeovers, resyncs, entries, lag, standbys]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&[], 0.99), 0);
        assert_eq!(percentile(&[3], 0.99), 3);
    }
}
