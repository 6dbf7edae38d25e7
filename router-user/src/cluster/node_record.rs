//! The node in etcd: its record and the status of each router placed on it, all under one
//! lease the node keeps alive. If routerd dies (or loses etcd for longer than the lease's
//! time to live), etcd deletes them: a node without a record is down.
//!
//! [`run`] grants the lease, writes the record and the statuses, renews the lease every
//! third of its TTL, and writes what changes in the node's [`Report`]. When the connection
//! breaks (the etcd member it talked to died) it connects again and keeps renewing the same
//! lease if etcd still has it, so the record never goes away while the node lives; when
//! the lease is gone (the node was stopped or cut off longer than the TTL) it starts over
//! with a new one. Either way it writes everything again.

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions};
use tokio::sync::watch;

use super::{
    Options,
    keys::{Key, Keys, NodeRecord, RouterStatus},
    sync::{Backoff, connect, timed},
};
use crate::Error;

/// What the node reports: the status of each router placed on it, and the ones that run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub statuses: BTreeMap<String, RouterStatus>,
    /// The routers that run, sorted.
    pub running: Vec<String>,
}

/// The lease and record loop (see the module docs). Returns when `reports` closes.
pub async fn run(options: Options, mut reports: watch::Receiver<Report>) {
    let keys = Keys::new(&options.prefix);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut backoff = Backoff::new();
    let mut lease = None;
    loop {
        let result = match connect(&options.endpoints, &options.credentials).await {
            Ok(mut client) => {
                let mut node = NodeLease {
                    options: &options,
                    keys: &keys,
                    started,
                    id: &mut lease,
                };
                node.keep(&mut client, &mut reports, &mut backoff).await
            }
            Err(e) => Err(e),
        };
        match result {
            // The report channel closed: routerd stops.
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    "routerd: node record in etcd: {e}; retrying in {} ms",
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The node's lease on one connection.
struct NodeLease<'a> {
    options: &'a Options,
    keys: &'a Keys,
    started: u64,
    /// The lease the node holds, kept across connections.
    id: &'a mut Option<i64>,
}

impl NodeLease<'_> {
    /// The lease (the one held if etcd still has it, else a new one), filled and renewed
    /// until something fails. `Ok` when routerd stops.
    async fn keep(
        &mut self,
        client: &mut Client,
        reports: &mut watch::Receiver<Report>,
        backoff: &mut Backoff,
    ) -> Result<(), Error> {
        let ttl = self.options.lease_ttl.as_secs().max(1) as i64;
        let held = match *self.id {
            Some(id) => {
                let (mut keeper, mut answers) =
                    timed("keeping the lease alive", client.lease_keep_alive(id)).await?;
                renew(&mut keeper, &mut answers)
                    .await?
                    .then_some((id, keeper, answers))
            }
            None => None,
        };
        let resumed = held.is_some();
        let (id, mut keeper, mut answers) = match held {
            Some(held) => held,
            None => {
                let id = timed("granting the node's lease", client.lease_grant(ttl, None))
                    .await?
                    .id();
                let (keeper, answers) =
                    timed("keeping the lease alive", client.lease_keep_alive(id)).await?;
                (id, keeper, answers)
            }
        };
        *self.id = Some(id);
        let mut written = Report::default();
        let report = reports.borrow_and_update().clone();
        self.write(client, id, &report, &mut written, true).await?;
        backoff.reset();
        if resumed {
            tracing::info!(
                "routerd: node {} in etcd again, on its lease {id:x}",
                self.options.node
            );
        } else {
            tracing::info!(
                "routerd: node {} registered in etcd (lease {id:x}, {ttl} s)",
                self.options.node
            );
        }
        let mut renewal = tokio::time::interval(Duration::from_millis(
            (self.options.lease_ttl.as_millis() / 3).max(100) as u64,
        ));
        renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = renewal.tick() => {
                    if !renew(&mut keeper, &mut answers).await? {
                        // The lease expired (the node was away longer than its TTL): its
                        // keys are gone; start over with a new lease.
                        *self.id = None;
                        return Err(Error::etcd(
                            "renewing the lease",
                            etcd_client::Error::LeaseKeepAliveError("the lease has expired".into()),
                        ));
                    }
                }
                changed = reports.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let report = reports.borrow_and_update().clone();
                    self.write(client, id, &report, &mut written, false).await?;
                }
            }
        }
    }
}

/// Renews the lease once: whether etcd still has it.
async fn renew(
    keeper: &mut LeaseKeeper,
    answers: &mut LeaseKeepAliveStream,
) -> Result<bool, Error> {
    timed("renewing the lease", keeper.keep_alive()).await?;
    let answer = timed("renewing the lease", answers.message()).await?;
    Ok(answer.is_some_and(|a| a.ttl() > 0))
}

/// Writes what differs between `report` and `written` (everything, on a new lease: `whole`):
/// the record if the running routers changed, each changed status, and deletes the
/// statuses of routers no longer placed here (on a new lease, every status key of the node
/// not in the report, left by an earlier routerd).
impl NodeLease<'_> {
    async fn write(
        &self,
        client: &mut Client,
        lease: i64,
        report: &Report,
        written: &mut Report,
        whole: bool,
    ) -> Result<(), Error> {
        let (options, keys, started) = (self.options, self.keys, self.started);
        let on_lease = || Some(PutOptions::new().with_lease(lease));
        if whole || report.running != written.running {
            let record = NodeRecord {
                node: options.node.clone(),
                version: crate::version::long()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                pid: std::process::id(),
                started,
                routers: report.running.clone(),
            };
            let value = serde_json::to_string(&record).unwrap_or_default();
            timed(
                "writing the node record",
                client.put(keys.node(&options.node), value, on_lease()),
            )
            .await?;
        }
        for (id, status) in &report.statuses {
            if !whole && written.statuses.get(id) == Some(status) {
                continue;
            }
            let value = serde_json::to_string(status).unwrap_or_default();
            timed(
                "writing a router's status",
                client.put(keys.status(&options.node, id), value, on_lease()),
            )
            .await?;
        }
        let stale: Vec<String> = if whole {
            let existing = timed(
                "reading the node's statuses",
                client.get(
                    keys.statuses_of(&options.node),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            )
            .await?;
            existing
                .kvs()
                .iter()
                .filter_map(|kv| match keys.parse(kv.key()) {
                    Some(Key::Status { router, .. }) => Some(router),
                    _ => None,
                })
                .filter(|id| !report.statuses.contains_key(id))
                .collect()
        } else {
            written
                .statuses
                .keys()
                .filter(|id| !report.statuses.contains_key(*id))
                .cloned()
                .collect()
        };
        for id in stale {
            timed(
                "deleting a router's status",
                client.delete(keys.status(&options.node, &id), None::<DeleteOptions>),
            )
            .await?;
        }
        *written = report.clone();
        Ok(())
    }
}

/// A node as `routerctl node list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeView {
    pub node: String,
    /// Whether the node has a record (its lease is alive).
    pub alive: bool,
    /// Seconds left on the node's lease (absent when down).
    pub lease_left: Option<i64>,
    pub version: Option<String>,
    pub pid: Option<u32>,
    pub started: Option<u64>,
    /// The routers it runs (from its record).
    pub running: Vec<String>,
    /// The routers placed on it, with their status (`null` for one it has not reported).
    pub placed: BTreeMap<String, Option<RouterStatus>>,
}

/// Every node known to the store under `prefix`: those with a record (alive), and those
/// named by a placement but without a record (down), by name. One range read of the whole
/// prefix, so records, statuses and placements are of one revision.
pub async fn nodes(
    endpoints: &[String],
    credentials: &super::Credentials,
    prefix: &str,
) -> Result<Vec<NodeView>, Error> {
    let keys = Keys::new(prefix);
    let mut client = connect(endpoints, credentials).await?;
    let response = timed(
        "reading the nodes",
        client.get(keys.all(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut views: BTreeMap<String, NodeView> = BTreeMap::new();
    let view = |views: &mut BTreeMap<String, NodeView>, node: &str| {
        views
            .entry(node.to_string())
            .or_insert_with(|| NodeView {
                node: node.to_string(),
                alive: false,
                lease_left: None,
                version: None,
                pid: None,
                started: None,
                running: Vec::new(),
                placed: BTreeMap::new(),
            })
            .node
            .clone()
    };
    let mut leases = Vec::new();
    for kv in response.kvs() {
        match keys.parse(kv.key()) {
            Some(Key::Node(node)) => {
                view(&mut views, &node);
                let Ok(record) = serde_json::from_slice::<NodeRecord>(kv.value()) else {
                    continue;
                };
                if let Some(v) = views.get_mut(&node) {
                    v.alive = true;
                    v.version = Some(record.version);
                    v.pid = Some(record.pid);
                    v.started = Some(record.started);
                    v.running = record.routers;
                }
                leases.push((node, kv.lease()));
            }
            Some(Key::Placement(router)) => {
                let Ok(placement) = super::keys::Placement::from_json(kv.value()) else {
                    continue;
                };
                for node in placement.nodes {
                    view(&mut views, &node);
                    if let Some(v) = views.get_mut(&node) {
                        v.placed.entry(router.clone()).or_insert(None);
                    }
                }
            }
            Some(Key::Status { node, router }) => {
                view(&mut views, &node);
                let status = serde_json::from_slice::<RouterStatus>(kv.value()).ok();
                if let Some(v) = views.get_mut(&node) {
                    v.placed.insert(router, status);
                }
            }
            _ => {}
        }
    }
    for (node, lease) in leases {
        if lease == 0 {
            continue;
        }
        let left = timed(
            "reading a node's lease",
            client.lease_time_to_live(lease, None),
        )
        .await?
        .ttl();
        if let Some(v) = views.get_mut(&node) {
            v.lease_left = Some(left);
        }
    }
    Ok(views.into_values().collect())
}
