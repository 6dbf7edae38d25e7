//! The key layout of the cluster's desired state in etcd, and the values under it
//! (`docs/etcd.md` is the operator's reference; version 1 of the layout):
//!
//! ```text
//! <prefix>/routers/<router-id>          a router's desired state: Router::to_json
//! <prefix>/placement/<router-id>        Placement: {"nodes": ["<node>", ...]}
//! <prefix>/nodes/<node>                 NodeRecord, under the node's lease
//! <prefix>/status/<node>/<router-id>    RouterStatus, under the node's lease
//! <prefix>/ha/<router-id>               HaHolder: the active node of an HA router, under
//!                                       that node's HA lease; its mod revision is the epoch
//! <prefix>/switchover/<router-id>       Switchover: an operator's request that the active
//!                                       node hand the router over
//! ```
//!
//! `<prefix>` is [`DEFAULT_PREFIX`] unless routerd is given `--etcd-prefix`. Router ids and
//! node names never hold `/` (a router id is checked by the desired state's rules, a node
//! name by [`check_node_name`]), so a key has one reading.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The prefix of every key, with the version of the layout in it: a layout that changes
/// meaning gets a new version and a new prefix, so old and new routerd never misread each
/// other's keys.
pub const DEFAULT_PREFIX: &str = "/neutron-router/v1";

/// The keys under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Router(String),
    Placement(String),
    Node(String),
    Status { node: String, router: String },
}

impl Keys {
    /// The keys under `prefix` (a trailing `/` is dropped).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Everything of the layout: the range a node reads and watches.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn router(&self, id: &str) -> String {
        format!("{}/routers/{id}", self.prefix)
    }

    /// Every router's desired state.
    pub fn routers(&self) -> String {
        format!("{}/routers/", self.prefix)
    }

    /// Every placement.
    pub fn placements(&self) -> String {
        format!("{}/placement/", self.prefix)
    }

    pub fn placement(&self, id: &str) -> String {
        format!("{}/placement/{id}", self.prefix)
    }

    /// The node records' range.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    /// Every status key (of every node).
    pub fn statuses(&self) -> String {
        format!("{}/status/", self.prefix)
    }

    /// The status keys of one node.
    pub fn statuses_of(&self, node: &str) -> String {
        format!("{}/status/{node}/", self.prefix)
    }

    pub fn status(&self, node: &str, router: &str) -> String {
        format!("{}/status/{node}/{router}", self.prefix)
    }

    /// Every HA router's active node.
    pub fn holders(&self) -> String {
        format!("{}/ha/", self.prefix)
    }

    pub fn holder(&self, router: &str) -> String {
        format!("{}/ha/{router}", self.prefix)
    }

    /// The router id of an HA holder key.
    pub fn holder_router(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let id = key.strip_prefix(&self.holders())?;
        (!id.is_empty() && !id.contains('/')).then(|| id.to_string())
    }

    /// Every switchover request.
    pub fn switchovers(&self) -> String {
        format!("{}/switchover/", self.prefix)
    }

    pub fn switchover(&self, router: &str) -> String {
        format!("{}/switchover/{router}", self.prefix)
    }

    /// The router id of a switchover request's key.
    pub fn switchover_router(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let id = key.strip_prefix(&self.switchovers())?;
        (!id.is_empty() && !id.contains('/')).then(|| id.to_string())
    }

    /// What `key` is; `None` for a key outside the layout (ignored, so a later version can
    /// add keys beside these).
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (kind, name) = rest.split_once('/')?;
        let one = |name: &str| (!name.is_empty() && !name.contains('/')).then(|| name.to_string());
        match kind {
            "routers" => one(name).map(Key::Router),
            "placement" => one(name).map(Key::Placement),
            "nodes" => one(name).map(Key::Node),
            "status" => {
                let (node, router) = name.split_once('/')?;
                Some(Key::Status {
                    node: one(node)?,
                    router: one(router)?,
                })
            }
            _ => None,
        }
    }
}

/// Where a router runs: the nodes, by name. A router placed on several nodes is an HA
/// router: each of them runs it, and one, elected through etcd, is active (`crate::ha`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub nodes: Vec<String>,
}

/// The active node of an HA router, as it wrote itself under `ha/<router-id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaHolder {
    pub node: String,
    /// Where its standbys connect for the session sync (`routerd --ha-listen`).
    pub sync: String,
}

/// An operator's request that the active node of an HA router hand it over (`routerctl
/// router switchover`): acted on only by the holder of `epoch`, so a request left behind
/// never moves the router again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    /// The epoch of the holder asked to hand over.
    pub epoch: i64,
    /// The standby to hand over to; `None`: any connected standby.
    #[serde(default)]
    pub to: Option<String>,
}

impl Switchover {
    pub fn from_json(value: &[u8]) -> Result<Self, ConfigError> {
        serde_json::from_slice(value).map_err(|e| ConfigError::Syntax(format!("switchover: {e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl HaHolder {
    pub fn from_json(value: &[u8]) -> Result<Self, ConfigError> {
        serde_json::from_slice(value).map_err(|e| ConfigError::Syntax(format!("ha holder: {e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Placement {
    pub fn from_json(value: &[u8]) -> Result<Self, ConfigError> {
        serde_json::from_slice(value).map_err(|e| ConfigError::Syntax(format!("placement: {e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn has(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n == node)
    }
}

/// A node's record: who it is and what it runs. Attached to the node's lease, so it goes
/// away when the node stops renewing it (the node is down).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// routerd's version (`routerd --version`'s first line).
    pub version: String,
    pub pid: u32,
    /// When this routerd started, seconds since the Unix epoch.
    pub started: u64,
    /// The routers that run on the node, by id, sorted.
    pub routers: Vec<String>,
}

/// Whether a router runs as its desired state says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    /// Its start failed (the error says why); it is tried again.
    Waiting,
}

/// What a node reports for each router placed on it, under its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStatus {
    /// The etcd revision of the router's desired state the node has applied: the later
    /// of the mod revisions of its `routers/` and `placement/` keys. A writer that put the
    /// router at revision R knows the node runs it once this is R or more.
    pub revision: i64,
    pub state: RunState,
    /// Why it waits (its last start error), or why its latest desired state was refused
    /// (the router then runs the one before); `null` when all is well.
    pub error: Option<String>,
}

/// A node name as the key layout admits it: 1-63 letters, digits, `-`, `_`, `.`, not
/// starting with `.` (a host name fits).
pub fn check_node_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key: "node".into(),
            value: name.into(),
            problem: "a node name is 1-63 letters, digits, '-', '_' or '.', not starting with '.'"
                .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_what_they_are() {
        let keys = Keys::new("/neutron-router/v1/");
        assert_eq!(keys.router("r1"), "/neutron-router/v1/routers/r1");
        assert_eq!(
            keys.parse(keys.router("r1").as_bytes()),
            Some(Key::Router("r1".into()))
        );
        assert_eq!(
            keys.parse(keys.placement("r1").as_bytes()),
            Some(Key::Placement("r1".into()))
        );
        assert_eq!(
            keys.parse(keys.node("n1").as_bytes()),
            Some(Key::Node("n1".into()))
        );
        assert_eq!(
            keys.parse(keys.status("n1", "r1").as_bytes()),
            Some(Key::Status {
                node: "n1".into(),
                router: "r1".into()
            })
        );
        // Outside the layout: another prefix, an unknown kind, a nested or empty name.
        for key in [
            "/neutron-router/v2/routers/r1",
            "/neutron-router/v1/other/r1",
            "/neutron-router/v1/routers/a/b",
            "/neutron-router/v1/routers/",
            "/neutron-router/v1routers/r1",
        ] {
            assert_eq!(keys.parse(key.as_bytes()), None, "{key}");
        }
    }

    #[test]
    fn values_have_their_documented_form() {
        let placement = Placement::from_json(br#"{"nodes": ["n1"]}"#).expect("placement");
        assert!(placement.has("n1") && !placement.has("n2"));
        assert!(Placement::from_json(br#"{"node": "n1"}"#).is_err());
        let status = RouterStatus {
            revision: 7,
            state: RunState::Waiting,
            error: Some("namespace missing".into()),
        };
        assert_eq!(
            serde_json::to_string(&status).expect("json"),
            r#"{"revision":7,"state":"waiting","error":"namespace missing"}"#
        );
        assert!(check_node_name("node-1.example").is_ok());
        for bad in ["", ".n", "a/b", &"n".repeat(64)] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
    }
}
