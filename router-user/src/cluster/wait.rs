//! Waiting until the nodes that host a change report it applied (`routerctl --etcd URL ...
//! --wait`), as OVN's `--wait=hv` waits for the hypervisors: each node a changed router is
//! placed on reports it `running` at the change's revision or later (its status key,
//! `docs/etcd.md`), and each node it left no longer reports it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use etcd_client::{Client, GetOptions};

use super::{
    keys::{Key, Keys, RouterStatus, RunState},
    sync::timed,
    write::{Moves, Written},
};
use crate::Error;

/// How often the statuses are read while waiting.
const POLL: Duration = Duration::from_millis(25);

/// Waits until every node hosting `written`'s routers (`targets`: where each is placed
/// before and after) reports the change applied, for at most `timeout` (`None`: as long as
/// it takes). On timeout the error names each node that has not, and what it reports.
pub async fn applied(
    client: &mut Client,
    keys: &Keys,
    written: &Written,
    targets: &BTreeMap<String, Moves>,
    timeout: Option<Duration>,
) -> Result<(), Error> {
    if written.unchanged {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        let pending = pending(client, keys, written.revision, targets).await?;
        if pending.is_empty() {
            return Ok(());
        }
        if let Some(timeout) = timeout
            && started.elapsed() >= timeout
        {
            return Err(Error::NotApplied {
                revision: written.revision,
                seconds: timeout.as_secs_f64(),
                pending: pending.join("; "),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What keeps the change at `revision` from being applied everywhere: one line per node
/// and router, empty when it is applied.
async fn pending(
    client: &mut Client,
    keys: &Keys,
    revision: i64,
    targets: &BTreeMap<String, Moves>,
) -> Result<Vec<String>, Error> {
    let statuses = timed(
        "reading the routers' statuses",
        client.get(keys.statuses(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut reported: BTreeMap<(String, String), Option<RouterStatus>> = BTreeMap::new();
    for kv in statuses.kvs() {
        if let Some(Key::Status { node, router }) = keys.parse(kv.key()) {
            reported.insert((node, router), serde_json::from_slice(kv.value()).ok());
        }
    }
    let records = timed(
        "reading the node records",
        client.get(
            keys.nodes(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        ),
    )
    .await?;
    let alive: BTreeSet<String> = records
        .kvs()
        .iter()
        .filter_map(|kv| match keys.parse(kv.key()) {
            Some(Key::Node(node)) => Some(node),
            _ => None,
        })
        .collect();
    let mut pending = Vec::new();
    for (id, moves) in targets {
        for node in &moves.after {
            let down = if alive.contains(node) {
                ""
            } else {
                " (the node is down: it has no record)"
            };
            match reported.get(&(node.clone(), id.clone())) {
                None => pending.push(format!("node {node}: router {id} not reported{down}")),
                Some(None) => pending.push(format!("node {node}: router {id}: unreadable status")),
                Some(Some(s)) if s.revision < revision => pending.push(format!(
                    "node {node}: router {id} at revision {}{}{down}",
                    s.revision,
                    s.error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )),
                Some(Some(s)) if s.state != RunState::Running => pending.push(format!(
                    "node {node}: router {id} waiting: {}",
                    s.error.as_deref().unwrap_or("no error given")
                )),
                Some(Some(_)) => {}
            }
        }
        for node in moves.before.iter().filter(|n| !moves.after.contains(n)) {
            if reported.contains_key(&(node.clone(), id.clone())) {
                pending.push(format!("node {node}: router {id} still runs there"));
            }
        }
    }
    Ok(pending)
}
