//! What an HA router's agent says about itself, for `routerctl router show` and metrics:
//! a file per router in the run directory (`<router>.ha`, JSON), rewritten as it changes.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{error::Error, paths};

/// Lag samples kept for the percentiles (the most recent ones).
const LAG_SAMPLES: usize = 10_000;

/// One HA router on this node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// Active: session created -> acknowledged by a standby, over the recent batches.
    pub lag_ms_last: f64,
    pub lag_ms_p99: f64,
    /// Times this node took the router over, and resyncs it sent (active) or received.
    pub takeovers: u64,
    pub resyncs: u64,
    #[serde(skip)]
    lags: VecDeque<f64>,
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

    /// One more lag sample (milliseconds).
    pub fn lag(&mut self, ms: f64) {
        self.lag_ms_last = ms;
        if self.lags.len() == LAG_SAMPLES {
            self.lags.pop_front();
        }
        self.lags.push_back(ms);
    }

    /// Computes the percentile and writes the file.
    pub fn write(&mut self) -> Result<(), Error> {
        let mut sorted: Vec<f64> = self.lags.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        self.lag_ms_p99 = percentile(&sorted, 0.99);
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
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }
}
