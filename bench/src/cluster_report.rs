//! The report's section "Control plane through etcd": the one-floating-IP changes, the bulk
//! apply over several nodes and etcd under many watchers, each path beside its
//! counterpart.

use std::fmt::Write as _;

use crate::Results;

/// The target for one floating IP through etcd: p99 in ms.
pub const ONE_FIP_P99_MS: f64 = 100.0;
/// The target for the bulk apply through etcd (its slowest round), in ms.
pub const BULK_MS: f64 = 2000.0;

/// p99 of the one-floating-IP changes through etcd.
pub fn one_fip_p99(r: &Results) -> Option<f64> {
    r.cluster
        .iter()
        .find(|c| c.path == "etcd")
        .map(|c| c.p99_ms)
}

/// The slowest round of the bulk apply through etcd, and its floating IPs and nodes.
pub fn bulk_max(r: &Results) -> Option<(f64, usize, usize)> {
    r.cluster_bulk
        .iter()
        .find(|b| b.path == "etcd")
        .map(|b| (b.max_ms, b.floating_ips, b.nodes))
}

/// `a / b` as "N.Nx", or "-".
fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.1}x", a / b),
        _ => "-".into(),
    }
}

/// The section, when the run measured any of it.
pub fn section(s: &mut String, r: &Results) {
    if r.cluster.is_empty() && r.cluster_bulk.is_empty() && r.cluster_watchers.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n## Control plane through etcd");
    if !r.cluster.is_empty() {
        let api = r
            .cluster
            .iter()
            .find(|c| c.path == "local API")
            .map(|c| c.p50_ms);
        let _ = writeln!(
            s,
            "\nOne floating IP added and removed in turn on one router, timed from just before \
             the write until the router's pinned NAT map has the change (read every 200 µs): \
             `etcd`: the router's new value put in etcd, a routerd node following it (watch, \
             20 ms debounce window, apply); `local API`: `fip_create` / `fip_delete` on the \
             socket of a routerd running the same router from its file.\n\n\
             | path | changes | p50 ms | p99 ms | max ms | p50 vs local API |\n|---|---|---|---|---|---|"
        );
        for c in &r.cluster {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {} |",
                c.path,
                c.changes,
                c.p50_ms,
                c.p99_ms,
                c.max_ms,
                ratio(c.p50_ms, api)
            );
        }
    }
    if !r.cluster_bulk.is_empty() {
        let api = r
            .cluster_bulk
            .iter()
            .find(|b| b.path == "local API")
            .map(|b| b.median_ms);
        let _ = writeln!(
            s,
            "\nFloating IPs spread over routerd nodes, one router each (a third of them per \
             router), applied from none: timed from just before the write until every \
             router's pinned NAT map holds all its floating IPs. `etcd`: one transaction puts \
             every router's new value, each node follows its own; `local API`: each router \
             under a routerd of its own, its whole file `apply`'d through its socket, the \
             routers at once. Target: {:.0} ms through etcd (the slowest round).\n\n\
             | path | nodes | floating IPs | rounds | median ms | max ms | median vs local API |\n|---|---|---|---|---|---|---|",
            BULK_MS
        );
        for b in &r.cluster_bulk {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {:.0} | {} |",
                b.path,
                b.nodes,
                b.floating_ips,
                b.rounds,
                b.median_ms,
                b.max_ms,
                ratio(b.median_ms, api)
            );
        }
    }
    if !r.cluster_watchers.is_empty() {
        let _ = writeln!(
            s,
            "\netcd as the nodes that follow it grow: simulated nodes, each with a connection \
             of its own, a watch on the whole prefix and a lease renewed every third of its \
             TTL with its node record on it, as routerd holds (no routerd behind them: etcd's \
             delivery, not the nodes' apply). Delivery: from a router's put until every \
             watcher has the event, sequential writes; writes/s: puts back to back until \
             every watcher has the last; etcd's CPU time (user + system) and resident memory \
             over the whole step (connecting the watchers, the writes), a fresh etcd per \
             row. The watchers run on the same cores as etcd.\n\n\
             | watchers | writes | delivery p50 ms | p99 ms | max ms | writes/s to all | etcd CPU ms (window s) | etcd RSS MiB before -> after |\n|---|---|---|---|---|---|---|---|"
        );
        for w in &r.cluster_watchers {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} ({:.1}) | {:.1} -> {:.1} |",
                w.watchers,
                w.writes,
                w.p50_ms,
                w.p99_ms,
                w.max_ms,
                w.writes_per_sec,
                w.etcd_cpu_ms,
                w.window_s,
                w.etcd_rss_before_mib,
                w.etcd_rss_after_mib
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::{BulkResult, ClusterResult},
        cluster_watch::WatchersResult,
    };

    fn results() -> Results {
        let one = |path: &str, p50_ms, p99_ms| ClusterResult {
            path: path.into(),
            changes: 50,
            p50_ms,
            p99_ms,
            max_ms: p99_ms + 1.0,
        };
        let bulk = |path: &str, median_ms, max_ms| BulkResult {
            path: path.into(),
            nodes: 3,
            floating_ips: 10_000,
            rounds: 3,
            median_ms,
            max_ms,
        };
        Results {
            cluster: vec![one("etcd", 40.0, 80.0), one("local API", 20.0, 30.0)],
            cluster_bulk: vec![bulk("etcd", 900.0, 1200.0), bulk("local API", 600.0, 700.0)],
            cluster_watchers: vec![WatchersResult {
                watchers: 100,
                writes: 20,
                p50_ms: 5.25,
                p99_ms: 9.5,
                max_ms: 9.5,
                writes_per_sec: 812.4,
                etcd_cpu_ms: 1530.0,
                window_s: 4.2,
                etcd_rss_before_mib: 30.0,
                etcd_rss_after_mib: 41.5,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn each_path_is_a_row_beside_its_counterpart() {
        let mut s = String::new();
        section(&mut s, &results());
        assert!(
            s.contains("| etcd | 50 | 40.0 | 80.0 | 81.0 | 2.0x |"),
            "{s}"
        );
        assert!(
            s.contains("| local API | 50 | 20.0 | 30.0 | 31.0 | 1.0x |"),
            "{s}"
        );
        assert!(
            s.contains("| etcd | 3 | 10000 | 3 | 900 | 1200 | 1.5x |"),
            "{s}"
        );
        assert!(
            s.contains("| local API | 3 | 10000 | 3 | 600 | 700 | 1.0x |"),
            "{s}"
        );
        assert!(
            s.contains("| 100 | 20 | 5.2 | 9.5 | 9.5 | 812 | 1530 (4.2) | 30.0 -> 41.5 |"),
            "{s}"
        );
    }

    #[test]
    fn a_run_without_the_section_has_none() {
        let mut s = String::new();
        section(&mut s, &Results::default());
        assert!(s.is_empty());
        let only_watchers = Results {
            cluster_watchers: results().cluster_watchers,
            ..Default::default()
        };
        section(&mut s, &only_watchers);
        assert!(s.contains("## Control plane through etcd"));
        assert!(!s.contains("| path |"), "{s}");
    }

    #[test]
    fn the_targets_read_the_etcd_rows() {
        let r = results();
        assert_eq!(one_fip_p99(&r), Some(80.0));
        assert_eq!(bulk_max(&r), Some((1200.0, 10_000, 3)));
        assert_eq!(one_fip_p99(&Results::default()), None);
    }
}
