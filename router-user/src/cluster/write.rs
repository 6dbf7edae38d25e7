//! Writing the cluster's desired state (`routerctl --etcd URL ...`): changes that never
//! lose each other.
//!
//! A change is planned from one read of the store, at one revision ([`read`]): the routers
//! and placements it writes, checked as routerd checks them, and every key it read with the
//! revision that key had. [`commit`] writes it in one transaction that holds only if none of
//! those keys changed since (its mod revision is the one read, or, for a key that was
//! absent, it still does not exist). Two operators who edit at once never overwrite each
//! other silently: the second gets a `conflict` naming the keys that changed, and nothing
//! of its change is written.
//!
//! Everything written is checked first exactly as a node reads it: each router through its
//! JSON form ([`Router::to_json`], [`Router::from_json`]), and each node that gets or keeps
//! a router of the change through [`Snapshot::desired_for`], the function the node itself
//! runs, so a change a node would refuse (a namespace used twice on one node) is refused
//! before it is written.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::Serialize;
use toml_edit::DocumentMut;

use super::{
    keys::{Key, Keys, Placement, check_node_name},
    sync::{Snapshot, Update, timed},
};
use crate::{
    Error,
    api::{ApiError, Plan, Request, plan},
    config::{DesiredState, Router},
    error::ConfigError,
};

/// A change planned from one read (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The store's revision the change was planned from.
    pub read_revision: i64,
    /// Every key read to plan the change, with its mod revision then (0: absent).
    guards: BTreeMap<String, i64>,
    /// Whether no router or placement may have appeared since the read either (`apply`:
    /// the file is the whole cloud, so a router added meanwhile would be lost).
    whole: bool,
    /// The keys to write: a value to put, or `None` to delete.
    writes: BTreeMap<String, Option<String>>,
    /// Each router the change writes, and the nodes it is placed on before and after.
    pub targets: BTreeMap<String, Moves>,
}

/// Where a router of a change is placed before it and after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Moves {
    pub before: Vec<String>,
    /// Empty when the router is deleted or placed nowhere.
    pub after: Vec<String>,
}

/// What a committed change did (`routerctl ... -f json` prints it as `change`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Written {
    /// The store's revision of the write (the read's when nothing was written).
    pub revision: i64,
    /// Nothing to write: the store already was as asked.
    pub unchanged: bool,
    /// The routers whose desired state or placement changed.
    pub changed_routers: Vec<String>,
    /// The keys put or deleted.
    pub keys: Vec<String>,
}

impl Change {
    fn new(snapshot: &Snapshot) -> Self {
        Self {
            read_revision: snapshot.revision,
            ..Self::default()
        }
    }

    /// Records that `key` was read, at the revision the snapshot has for it.
    fn guard(&mut self, key: String, mod_revision: Option<i64>) {
        self.guards.insert(key, mod_revision.unwrap_or(0));
    }

    fn guard_router(&mut self, snapshot: &Snapshot, keys: &Keys, id: &str) {
        let revision = snapshot.routers.get(id).map(|e| e.mod_revision);
        self.guard(keys.router(id), revision);
        let revision = snapshot.placements.get(id).map(|e| e.mod_revision);
        self.guard(keys.placement(id), revision);
    }

    /// Whether the change writes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The keys the change writes, in order.
    pub fn written_keys(&self) -> Vec<String> {
        self.writes.keys().cloned().collect()
    }

    /// Checks the change as the nodes will read it, and notes where each router it writes
    /// is placed before and after. `before` is the snapshot it was planned from.
    fn check(&mut self, before: &Snapshot, keys: &Keys) -> Result<(), Error> {
        let mut after = before.clone();
        let mut routers = BTreeSet::new();
        for (key, value) in &self.writes {
            let parsed = keys.parse(key.as_bytes());
            match value {
                Some(value) => after.put(keys, key.as_bytes(), value.as_bytes(), i64::MAX),
                None => after.delete(keys, key.as_bytes()),
            }
            match (parsed, value) {
                (Some(Key::Router(id)), Some(value)) => {
                    let router = Router::from_json(value.as_bytes())
                        .map_err(|e| ApiError::from(e).at(format!("router {id}")))?;
                    if router.id != id {
                        return Err(invalid(&id, format!("its id is \"{}\"", router.id)));
                    }
                    routers.insert(id);
                }
                (Some(Key::Placement(id)), Some(value)) => {
                    let placement = Placement::from_json(value.as_bytes())?;
                    for node in &placement.nodes {
                        check_node_name(node)?;
                    }
                    routers.insert(id);
                }
                (Some(Key::Router(id) | Key::Placement(id)), None) => {
                    routers.insert(id);
                }
                _ => {}
            }
        }
        self.targets = routers
            .into_iter()
            .map(|id| {
                let moves = Moves {
                    before: placed_on(before, &id),
                    after: placed_on(&after, &id),
                };
                (id, moves)
            })
            .collect();
        // Each node that gets or keeps a router of the change, read as the node reads it:
        // a router of the change it would refuse, or one it ran and would refuse now (its
        // namespace taken by a router of the change), refuses the change.
        let nodes: BTreeSet<&String> = self.targets.values().flat_map(|m| &m.after).collect();
        for node in nodes {
            let was = before.desired_for(node, None, &Update::default());
            let will = after.desired_for(node, None, &Update::default());
            for (id, problem) in &will.refused {
                if self.targets.contains_key(id) || !was.refused.contains_key(id) {
                    return Err(invalid(id, format!("on node {node}: {problem}")));
                }
            }
        }
        Ok(())
    }
}

fn invalid(id: &str, problem: String) -> Error {
    ApiError::invalid(format!("router {id}: {problem}"))
        .at(format!("router {id}"))
        .into()
}

/// The nodes `id` is placed on in `snapshot`: none without a desired state, a placement,
/// or with one that cannot be read.
fn placed_on(snapshot: &Snapshot, id: &str) -> Vec<String> {
    if !snapshot.routers.contains_key(id) {
        return Vec::new();
    }
    snapshot
        .placements
        .get(id)
        .and_then(|e| Placement::from_json(&e.value).ok())
        .map(|p| p.nodes)
        .unwrap_or_default()
}

impl Snapshot {
    /// Router `id` as stored, read as a node reads it; `None` if it has no desired state.
    pub fn router(&self, id: &str) -> Result<Option<Router>, Error> {
        let Some(entry) = self.routers.get(id) else {
            return Ok(None);
        };
        let refused = |problem: String| {
            ApiError::invalid(format!(
                "router {id}: its desired state in etcd is refused ({problem}); replace it \
                 with `routerctl --etcd URL apply` or delete it"
            ))
            .at(format!("router {id}"))
        };
        let router = Router::from_json(&entry.value).map_err(|e| refused(e.to_string()))?;
        if router.id != id {
            return Err(refused(format!("its id is \"{}\"", router.id)).into());
        }
        Ok(Some(router))
    }

    /// The placement of `id` as stored (`None` without one or with one that cannot be read).
    pub fn placement(&self, id: &str) -> Option<Placement> {
        self.placements
            .get(id)
            .and_then(|e| Placement::from_json(&e.value).ok())
    }

    /// The routers that read as a node reads them, in id order, and the ids of those that
    /// do not with why.
    pub fn routers(&self) -> (DesiredState, BTreeMap<String, String>) {
        let mut state = DesiredState::default();
        let mut refused = BTreeMap::new();
        for id in self.routers.keys() {
            match self.router(id) {
                Ok(Some(r)) => state.routers.push(r),
                Ok(None) => {}
                Err(e) => {
                    refused.insert(id.clone(), e.to_string());
                }
            }
        }
        (state, refused)
    }
}

/// The change an API edit of one router means (`routerctl --etcd URL fip create ...`): the
/// request planned on the router as stored, exactly as routerd plans it on its own state
/// (`api::plan`), so a verb means the same locally and through etcd. `node` places the
/// router there too (`router create --node`).
pub fn plan_request(
    snapshot: &Snapshot,
    keys: &Keys,
    request: &Request,
    node: Option<&str>,
) -> Result<Change, Error> {
    let Some(id) = request.router().filter(|_| request.is_mutation()) else {
        return Err(ApiError::invalid("not an edit of one router").into());
    };
    let mut change = Change::new(snapshot);
    change.guard_router(snapshot, keys, &id);
    let current = match (snapshot.router(&id), request) {
        (Ok(current), _) => current,
        // A router whose stored value is refused can still be deleted.
        (Err(_), Request::RouterDelete { .. }) => {
            delete_router(&mut change, snapshot, keys, &id);
            change.check(snapshot, keys)?;
            return Ok(change);
        }
        (Err(e), _) => return Err(e),
    };
    let state = DesiredState {
        routers: current.into_iter().collect(),
    };
    match plan(&state, request)? {
        Plan::Answer(_) => return Err(ApiError::invalid("not an edit of one router").into()),
        Plan::Unchanged => {}
        Plan::Change(new) => match new.router(&id) {
            Some(router) => {
                change
                    .writes
                    .insert(keys.router(&id), Some(router.to_json()));
            }
            None => delete_router(&mut change, snapshot, keys, &id),
        },
    }
    if let Some(node) = node {
        place(&mut change, snapshot, keys, &id, &[node.to_string()]);
    }
    change.check(snapshot, keys)?;
    Ok(change)
}

fn delete_router(change: &mut Change, snapshot: &Snapshot, keys: &Keys, id: &str) {
    if snapshot.routers.contains_key(id) {
        change.writes.insert(keys.router(id), None);
    }
    if snapshot.placements.contains_key(id) {
        change.writes.insert(keys.placement(id), None);
    }
}

/// Puts `id`'s placement on `nodes` if it is not that already.
fn place(change: &mut Change, snapshot: &Snapshot, keys: &Keys, id: &str, nodes: &[String]) {
    let wanted = Placement {
        nodes: nodes.to_vec(),
    };
    if snapshot.placement(id).as_ref() != Some(&wanted) {
        change
            .writes
            .insert(keys.placement(id), Some(wanted.to_json()));
    }
}

/// The change that places router `id` on `nodes` (`routerctl --etcd URL router move`).
pub fn plan_move(
    snapshot: &Snapshot,
    keys: &Keys,
    id: &str,
    nodes: &[String],
) -> Result<Change, Error> {
    let mut change = Change::new(snapshot);
    change.guard_router(snapshot, keys, id);
    if snapshot.router(id)?.is_none() {
        return Err(
            ApiError::not_found(format!("router \"{id}\" does not exist in etcd"))
                .at(format!("router {id}"))
                .into(),
        );
    }
    place(&mut change, snapshot, keys, id, nodes);
    change.check(snapshot, keys)?;
    Ok(change)
}

/// The whole cloud as a file (`routerctl --etcd URL apply`): the desired-state file's
/// routers, and where each runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cloud {
    pub state: DesiredState,
    /// Router id to the nodes it runs on; a router without one runs nowhere.
    pub placements: BTreeMap<String, Vec<String>>,
}

impl Cloud {
    /// Reads a cloud file: a desired-state file (read and checked as routerd reads one)
    /// with a `[placement]` table, router id = the nodes' names.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut doc: DocumentMut = text
            .parse()
            .map_err(|e: toml_edit::TomlError| ConfigError::Syntax(e.to_string()))?;
        doc.remove("placement");
        // The placements alone: the rest of the file is the desired-state file's.
        #[derive(serde::Deserialize)]
        struct Placements {
            #[serde(default)]
            placement: BTreeMap<String, Vec<String>>,
            #[serde(flatten)]
            _rest: toml::Table,
        }
        let placements = toml::from_str::<Placements>(text)
            .map_err(|e| ConfigError::Syntax(format!("[placement]: {e}")))?
            .placement;
        let state = DesiredState::parse(&doc.to_string())?;
        for (id, nodes) in &placements {
            if state.router(id).is_none() {
                return Err(ConfigError::Invalid {
                    key: format!("placement.{id}"),
                    value: nodes.join(","),
                    problem: format!("no [[router]] has id \"{id}\""),
                });
            }
            for node in nodes {
                check_node_name(node)?;
            }
        }
        Ok(Self { state, placements })
    }

    /// The cloud as a file [`Cloud::parse`] reads back.
    pub fn to_toml(&self) -> String {
        let mut text = self.state.to_toml();
        if !self.placements.is_empty() {
            let mut table = toml::Table::new();
            table.insert(
                "placement".into(),
                toml::Value::Table(
                    self.placements
                        .iter()
                        .map(|(id, nodes)| {
                            let nodes = nodes.iter().cloned().map(toml::Value::String);
                            (id.clone(), toml::Value::Array(nodes.collect()))
                        })
                        .collect(),
                ),
            );
            if !text.is_empty() && !text.ends_with("\n\n") {
                text.push('\n');
            }
            text.push_str(&toml::to_string(&table).unwrap_or_default());
        }
        text
    }

    /// The cloud as stored, with the routers that cannot be read and why.
    pub fn of(snapshot: &Snapshot) -> (Self, BTreeMap<String, String>) {
        let (state, refused) = snapshot.routers();
        let placements = state
            .routers
            .iter()
            .filter_map(|r| Some((r.id.clone(), snapshot.placement(&r.id)?.nodes)))
            .collect();
        (Self { state, placements }, refused)
    }
}

/// The change that makes the store `cloud`: routers and placements that differ are put,
/// routers and placements the file does not have are deleted. Every router and placement
/// read is guarded, and the ranges too: a router added meanwhile is a conflict.
pub fn plan_apply(snapshot: &Snapshot, keys: &Keys, cloud: &Cloud) -> Result<Change, Error> {
    let mut change = Change::new(snapshot);
    change.whole = true;
    for (id, entry) in &snapshot.routers {
        change.guard(keys.router(id), Some(entry.mod_revision));
    }
    for (id, entry) in &snapshot.placements {
        change.guard(keys.placement(id), Some(entry.mod_revision));
    }
    for router in &cloud.state.routers {
        let id = &router.id;
        if snapshot.router(id).ok().flatten().as_ref() != Some(router) {
            change
                .writes
                .insert(keys.router(id), Some(router.to_json()));
        }
        match cloud.placements.get(id) {
            Some(nodes) => place(&mut change, snapshot, keys, id, nodes),
            None if snapshot.placements.contains_key(id) => {
                change.writes.insert(keys.placement(id), None);
            }
            None => {}
        }
    }
    let gone = snapshot
        .routers
        .keys()
        .chain(snapshot.placements.keys())
        .filter(|id| cloud.state.router(id).is_none())
        .cloned()
        .collect::<BTreeSet<String>>();
    for id in gone {
        delete_router(&mut change, snapshot, keys, &id);
    }
    change.check(snapshot, keys)?;
    Ok(change)
}

/// The change that stores `state`'s routers as they are, leaving the other routers alone
/// (`routerctl import neutron --etcd`): each that differs is put and, with `node`, placed
/// there (without, a router keeps its placement; a new one is stored unplaced). Each
/// router's keys are guarded, as a single edit's are.
pub fn plan_merge(
    snapshot: &Snapshot,
    keys: &Keys,
    state: &DesiredState,
    node: Option<&str>,
) -> Result<Change, Error> {
    state.validate()?;
    let mut change = Change::new(snapshot);
    for router in &state.routers {
        let id = &router.id;
        change.guard_router(snapshot, keys, id);
        if snapshot.router(id).ok().flatten().as_ref() != Some(router) {
            change
                .writes
                .insert(keys.router(id), Some(router.to_json()));
        }
        if let Some(node) = node {
            place(&mut change, snapshot, keys, id, &[node.to_string()]);
        }
    }
    change.check(snapshot, keys)?;
    Ok(change)
}

/// Reads the routers and placements at one revision (`at`, or the latest).
pub async fn read(client: &mut Client, keys: &Keys, at: Option<i64>) -> Result<Snapshot, Error> {
    let mut options = GetOptions::new().with_prefix();
    if let Some(revision) = at {
        options = options.with_revision(revision);
    }
    let response = timed(
        "reading the desired state",
        client.get(keys.all(), Some(options)),
    )
    .await?;
    let mut snapshot = Snapshot {
        revision: at.unwrap_or_else(|| response.header().map_or(0, |h| h.revision())),
        ..Snapshot::default()
    };
    for kv in response.kvs() {
        snapshot.put(keys, kv.key(), kv.value(), kv.mod_revision());
    }
    Ok(snapshot)
}

/// Writes `change` in one transaction guarded by every key it read (see the module docs):
/// what it wrote, or a `conflict` naming the keys that changed since the read (and nothing
/// written).
pub async fn commit(client: &mut Client, keys: &Keys, change: &Change) -> Result<Written, Error> {
    let changed_routers: Vec<String> = change.targets.keys().cloned().collect();
    if change.writes.is_empty() {
        return Ok(Written {
            revision: change.read_revision,
            unchanged: true,
            changed_routers: Vec::new(),
            keys: Vec::new(),
        });
    }
    let mut compares: Vec<Compare> = change
        .guards
        .iter()
        .map(|(key, &revision)| {
            if revision == 0 {
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)
            }
        })
        .collect();
    if change.whole {
        for range in [keys.routers(), keys.placements()] {
            compares.push(
                Compare::mod_revision(range, CompareOp::Less, change.read_revision + 1)
                    .with_prefix(),
            );
        }
    }
    let operations: Vec<TxnOp> = change
        .writes
        .iter()
        .map(|(key, value)| match value {
            Some(value) => TxnOp::put(key.as_str(), value.as_str(), None),
            None => TxnOp::delete(key.as_str(), None),
        })
        .collect();
    let txn = Txn::new().when(compares).and_then(operations);
    let response = match timed("writing the change", client.txn(txn)).await {
        Ok(r) => r,
        Err(Error::Etcd { source, .. }) if source.to_string().contains("too many operations") => {
            return Err(Error::etcd(
                format!(
                    "writing the change in one transaction ({} keys written, {} compared): \
                     more than etcd's --max-txn-ops (128 by default) allows; raise it",
                    change.writes.len(),
                    change.guards.len()
                ),
                *source,
            ));
        }
        Err(e) => return Err(e),
    };
    if !response.succeeded() {
        return Err(conflict(client, keys, change).await);
    }
    Ok(Written {
        revision: response.header().map_or(0, |h| h.revision()),
        unchanged: false,
        changed_routers,
        keys: change.written_keys(),
    })
}

/// The conflict a refused transaction met: the keys that changed since the read.
async fn conflict(client: &mut Client, keys: &Keys, change: &Change) -> Error {
    let mut changed = Vec::new();
    if let Ok(now) = read(client, keys, None).await {
        let revision_now = |key: &str| match keys.parse(key.as_bytes()) {
            Some(Key::Router(id)) => now.routers.get(&id).map(|e| e.mod_revision),
            Some(Key::Placement(id)) => now.placements.get(&id).map(|e| e.mod_revision),
            _ => None,
        };
        for (key, &was) in &change.guards {
            match (was, revision_now(key)) {
                (0, Some(r)) => changed.push(format!("{key} (created at revision {r})")),
                (w, None) if w != 0 => changed.push(format!("{key} (deleted)")),
                (w, Some(r)) if w != 0 && r != w => {
                    changed.push(format!("{key} (written at revision {r})"))
                }
                _ => {}
            }
        }
        if change.whole {
            let added = now
                .routers
                .iter()
                .map(|(id, e)| (keys.router(id), e.mod_revision))
                .chain(
                    now.placements
                        .iter()
                        .map(|(id, e)| (keys.placement(id), e.mod_revision)),
                )
                .filter(|(key, r)| *r > change.read_revision && !change.guards.contains_key(key));
            for (key, r) in added {
                changed.push(format!("{key} (created at revision {r})"));
            }
        }
    }
    let what = if changed.is_empty() {
        "a key it read".to_string()
    } else {
        changed.join(", ")
    };
    let object = change
        .targets
        .keys()
        .next()
        .map(|id| format!("router {id}"))
        .unwrap_or_else(|| "desired state".into());
    ApiError::conflict(format!(
        "the desired state in etcd changed since this change read it at revision {}: {what}; \
         nothing was written (read it again and retry)",
        change.read_revision
    ))
    .at(object)
    .into()
}

#[cfg(test)]
#[path = "write_tests.rs"]
mod tests;
