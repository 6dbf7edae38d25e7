//! How etcd's load grows with the nodes that follow it (`--only cluster`). Each simulated
//! node holds on etcd what routerd holds: a connection of its own
//! (`cluster::sync::connect`), a watch on the whole prefix, a lease of
//! `cluster::DEFAULT_LEASE_TTL` renewed every third of it, and its node record on the
//! lease. No routerd runs behind them: what is measured is etcd delivering, not nodes
//! applying (the one-FIP and bulk runs in `cluster.rs` time that).
//!
//! Per count of watchers, on an etcd of its own: the time from a router's put until the
//! event has arrived at every watcher (sequential writes, p50/p99/max); writes/s: puts back
//! to back until every watcher has the last; etcd's CPU time (utime + stime of
//! /proc/PID/stat) and resident memory (VmRSS of /proc/PID/status) from before the
//! watchers connect to after the last write. The watchers run in this process, on the same
//! two cores as etcd: their own cost is in the latencies.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use etcd_client::{PutOptions, WatchOptions};
use router_tests::etcd::Etcd;
use router_user::{
    cluster::{self, Credentials, DEFAULT_PREFIX, Keys, NodeRecord},
    config::{Mode, Router},
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The longest the watchers may take to see one write before the run fails.
const TOO_LONG: Duration = Duration::from_secs(20);

/// etcd under `watchers` simulated nodes.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WatchersResult {
    pub watchers: usize,
    /// Sequential writes timed until every watcher had each.
    pub writes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Puts back to back, until every watcher had the last, per second.
    pub writes_per_sec: f64,
    /// etcd's CPU time (user + system) over the window.
    pub etcd_cpu_ms: f64,
    /// The window: from before the watchers connect to after the last write.
    pub window_s: f64,
    pub etcd_rss_before_mib: f64,
    pub etcd_rss_after_mib: f64,
}

/// Each count of `watchers` in turn, `writes` timed writes and a burst of `burst` puts.
pub fn run(
    watchers: &[usize],
    writes: usize,
    burst: usize,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<WatchersResult>> {
    watchers
        .iter()
        .map(|&n| {
            say(&format!(
                "cluster: etcd under {n} watching node(s): {writes} writes, a burst of {burst}"
            ));
            measure(n, writes, burst)
        })
        .collect()
}

fn measure(n: usize, writes: usize, burst: usize) -> anyhow::Result<WatchersResult> {
    let etcd = Etcd::start();
    let pid = etcd.pid().context("etcd's process id")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let before = Usage::of(pid)?;
    let started = Instant::now();
    let (mut latencies, writes_per_sec) =
        runtime.block_on(simulate(&etcd.endpoint(), n, writes, burst))?;
    let window = started.elapsed();
    let after = Usage::of(pid)?;
    drop(runtime);
    latencies.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let at =
        |q: f64| latencies.get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1));
    Ok(WatchersResult {
        watchers: n,
        writes: latencies.len(),
        p50_ms: ms(at(0.5)),
        p99_ms: ms(at(0.99)),
        max_ms: ms(latencies.last()),
        writes_per_sec,
        etcd_cpu_ms: (after.cpu - before.cpu).as_secs_f64() * 1e3,
        window_s: window.as_secs_f64(),
        etcd_rss_before_mib: before.rss_kib as f64 / 1024.0,
        etcd_rss_after_mib: after.rss_kib as f64 / 1024.0,
    })
}

/// `n` simulated nodes, then the timed writes and the burst: the latencies and writes/s.
async fn simulate(
    endpoint: &str,
    n: usize,
    writes: usize,
    burst: usize,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let keys = Keys::new(DEFAULT_PREFIX);
    let endpoints = [endpoint.to_string()];
    let ttl = cluster::DEFAULT_LEASE_TTL;
    // Each event's revision, once per watcher that received it.
    let (seen, mut arrivals) = mpsc::unbounded_channel::<i64>();
    // Dropped on every exit: the watchers stop with it.
    let mut nodes = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut client = cluster::sync::connect(&endpoints, &Credentials::default()).await?;
        let name = format!("simulated-{i}");
        let lease = client.lease_grant(ttl.as_secs() as i64, None).await?.id();
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
        let record = NodeRecord {
            node: name.clone(),
            version: "routerbench".into(),
            pid: 0,
            started: 0,
            routers: Vec::new(),
        };
        client
            .put(
                keys.node(&name),
                serde_json::to_string(&record)?,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        let mut stream = client
            .watch(keys.all(), Some(WatchOptions::new().with_prefix()))
            .await?;
        let seen = seen.clone();
        nodes.spawn(async move {
            // Held for the connection's life.
            let _client = client;
            let mut renewal = tokio::time::interval(ttl / 3);
            loop {
                tokio::select! {
                    _ = renewal.tick() => {
                        if keeper.keep_alive().await.is_err()
                            || !matches!(answers.message().await, Ok(Some(_)))
                        {
                            return;
                        }
                    }
                    message = stream.message() => {
                        let Ok(Some(response)) = message else { return };
                        for event in response.events() {
                            if let Some(kv) = event.kv() {
                                let _ = seen.send(kv.mod_revision());
                            }
                        }
                    }
                }
            }
        });
    }
    let mut writer = cluster::sync::connect(&endpoints, &Credentials::default()).await?;
    let key = keys.router("watched");
    let value = Router::new("watched", "qrouter-watched", Mode::Xdp).to_json();
    let mut latencies = Vec::with_capacity(writes);
    for _ in 0..writes {
        let started = Instant::now();
        let put = writer.put(key.as_str(), value.as_str(), None).await?;
        let revision = put.header().map_or(0, |h| h.revision());
        all_saw(&mut arrivals, revision, n).await?;
        latencies.push(started.elapsed());
    }
    let started = Instant::now();
    let mut last = 0;
    for _ in 0..burst {
        let put = writer.put(key.as_str(), value.as_str(), None).await?;
        last = put.header().map_or(0, |h| h.revision());
    }
    all_saw(&mut arrivals, last, n).await?;
    let writes_per_sec = burst as f64 / started.elapsed().as_secs_f64();
    nodes.abort_all();
    Ok((latencies, writes_per_sec))
}

/// Waits until `n` watchers have reported the event of `revision` (earlier ones are
/// passed over).
async fn all_saw(
    arrivals: &mut mpsc::UnboundedReceiver<i64>,
    revision: i64,
    n: usize,
) -> anyhow::Result<()> {
    let mut count = 0;
    let wait = async {
        while count < n {
            match arrivals.recv().await {
                Some(r) if r == revision => count += 1,
                Some(_) => {}
                None => return false,
            }
        }
        true
    };
    match tokio::time::timeout(TOO_LONG, wait).await {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!("the watchers stopped before revision {revision}"),
        Err(_) => anyhow::bail!("not every watcher saw revision {revision} within {TOO_LONG:?}"),
    }
}

/// A process's CPU time so far and its resident memory now.
struct Usage {
    cpu: Duration,
    rss_kib: u64,
}

impl Usage {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Self::parse(&stat, &status, clock_ticks())
            .with_context(|| format!("reading /proc/{pid}/stat and status"))
    }

    /// From the text of /proc/PID/stat and /proc/PID/status; `ticks` per second.
    fn parse(stat: &str, status: &str, ticks: u64) -> Option<Self> {
        // After the command (in parentheses, which may hold spaces) come the fields from
        // the third on: utime and stime are the 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let tick = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
        let cpu_ticks = tick(14)? + tick(15)?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(Self {
            cpu: Duration::from_secs_f64(cpu_ticks as f64 / ticks.max(1) as f64),
            rss_kib,
        })
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reads_cpu_time_and_rss_from_proc_text() {
        let stat = "4242 (etcd (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9";
        let status = "Name:\tetcd\nVmPeak:\t 99 kB\nVmRSS:\t   20480 kB\nThreads:\t9\n";
        let usage = Usage::parse(stat, status, 100).expect("parses");
        assert_eq!(usage.cpu, Duration::from_secs(3));
        assert_eq!(usage.rss_kib, 20480);
        assert!(Usage::parse("4242 (etcd) S 1", status, 100).is_none());
    }

    #[test]
    fn usage_of_this_process() {
        let usage = Usage::of(std::process::id()).expect("this process's /proc");
        assert!(usage.rss_kib > 0);
    }
}
