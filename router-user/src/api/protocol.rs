//! The wire protocol: newline-delimited JSON over a unix stream socket, one [`Request`]
//! and one [`Response`] per line, several requests per connection (`docs/api.md` is the
//! reference).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::router::Writes;

/// The longest request or response line accepted (a desired state with many floating IPs
/// fits easily).
pub const MAX_LINE: usize = 64 << 20;

/// One request: `{"op": "...", ...}`. Fields that are optional in JSON are `Option`s or
/// default to `false`; unknown fields are errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Replaces the whole desired state with `text` (a desired-state file).
    Apply {
        text: String,
    },
    /// The desired state routerd runs, as a file.
    ShowState,
    RouteAdd {
        router: String,
        destination: String,
        nexthop: String,
        /// `"main"` (the default), a table's name or id.
        #[serde(default, deserialize_with = "text_or_number")]
        #[serde(skip_serializing_if = "Option::is_none")]
        table: Option<String>,
        /// An identical route already there is not an error.
        #[serde(default)]
        may_exist: bool,
    },
    RouteDel {
        router: String,
        destination: String,
        #[serde(default, deserialize_with = "text_or_number")]
        #[serde(skip_serializing_if = "Option::is_none")]
        table: Option<String>,
        /// No such route is not an error.
        #[serde(default)]
        if_exists: bool,
    },
    RouteList {
        router: String,
        /// Only this table (default: every table).
        #[serde(default, deserialize_with = "text_or_number")]
        #[serde(skip_serializing_if = "Option::is_none")]
        table: Option<String>,
    },
    RuleAdd {
        router: String,
        priority: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iif: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(deserialize_with = "text_or_number_required")]
        table: String,
        #[serde(default)]
        may_exist: bool,
    },
    RuleDel {
        router: String,
        priority: i64,
        #[serde(default)]
        if_exists: bool,
    },
    RuleList {
        router: String,
    },
    FwRuleAdd {
        router: String,
        /// 1-based position to insert at (default: after the last rule).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<usize>,
        action: String,
        #[serde(default, deserialize_with = "text_or_number")]
        #[serde(skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destination: Option<String>,
        #[serde(default, deserialize_with = "text_or_number")]
        #[serde(skip_serializing_if = "Option::is_none")]
        destination_ports: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// Neutron's id of the rule (a UUID), unique among the router's rules.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// An identical rule already there is not an error: the rule with this `id`, or,
        /// without an id, an identical rule without one at `position` (or anywhere when no
        /// position is given).
        #[serde(default)]
        may_exist: bool,
    },
    /// Removes the rule at `position`, the rule with `id`, or the rule with both.
    FwRuleDel {
        router: String,
        /// 1-based.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// No such rule is not an error.
        #[serde(default)]
        if_exists: bool,
    },
    FwRuleList {
        router: String,
    },
    /// The firewall's default policy; creates the firewall (`[router.firewall]`) if the
    /// router has none.
    FwDefault {
        router: String,
        policy: String,
    },
    /// Steers `interface` (adds it to `steering.interfaces`) and/or sets the firewall's
    /// addresses; `nexthop` is needed when the router has no steering yet.
    FwSteerSet {
        router: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interface: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nexthop: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway_nexthop: Option<String>,
    },
    /// Stops steering `interface`, or, without one, removes the steering altogether.
    FwSteerClear {
        router: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interface: Option<String>,
    },
    /// A new router in an existing namespace (Neutron's `router create`); routerd starts
    /// it.
    RouterCreate {
        router: String,
        namespace: String,
        /// `"xdp"` (the default) or `"tc"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
        /// A router with this id, namespace and mode already there is not an error.
        #[serde(default)]
        may_exist: bool,
    },
    /// Removes a router: routerd detaches its fast path and removes its pins.
    RouterDelete {
        router: String,
        #[serde(default)]
        if_exists: bool,
    },
    /// Every router: id, namespace, mode, interfaces, gateway, floating IPs, running.
    RouterList,
    /// Everything about one router.
    RouterShow {
        router: String,
    },
    /// An internal interface (a `qr` port) with the subnet's gateway address
    /// (Neutron's `router add subnet`).
    RouterInterfaceAdd {
        router: String,
        interface: String,
        /// `a.b.c.d/len`: the router's address, its subnet the interface's.
        address: String,
        /// The same interface with the same address already there is not an error.
        #[serde(default)]
        may_exist: bool,
    },
    RouterInterfaceRemove {
        router: String,
        interface: String,
        #[serde(default)]
        if_exists: bool,
    },
    /// Sets the external gateway (`[router.gateway]`); further external subnets and, with
    /// the same interface, `xdp_egress` are kept.
    RouterGatewaySet {
        router: String,
        interface: String,
        address: String,
        nexthop: String,
        /// Default SNAT; default: as it is, or `true` for a new gateway.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snat: Option<bool>,
    },
    RouterGatewayClear {
        router: String,
        #[serde(default)]
        if_exists: bool,
    },
    /// A floating IP for a fixed IP (Neutron's `floating ip create --port`: created and
    /// associated at once).
    FipCreate {
        router: String,
        address: String,
        fixed: String,
        /// Neutron's id of the floating IP (a UUID), unique among the router's floating IPs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The same floating IP (address, fixed IP and id) already there is not an error.
        #[serde(default)]
        may_exist: bool,
    },
    /// Deletes the floating IP with `address`, with `id`, or with both.
    FipDelete {
        router: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default)]
        if_exists: bool,
    },
    /// Floating IPs with their counters, of every router or of one.
    FipList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        router: Option<String>,
    },
    /// Associates floating IP `address` with `fixed`. A floating IP exists only while
    /// associated, so this creates it (as `fip_create`).
    FipAssociate {
        router: String,
        address: String,
        fixed: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default)]
        may_exist: bool,
    },
    /// Disassociates a floating IP: the same as `fip_delete`.
    FipDisassociate {
        router: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default)]
        if_exists: bool,
    },
    /// Packets the fast path drops or hands to the kernel, live: after the response, the
    /// connection carries one [`MonitorLine`] per line until the client closes it. Served
    /// by the socket itself (routerd drains the routers' event rings once and hands every
    /// monitor every event), never queued behind edits.
    Monitor {
        /// Only this router's events (it must run); default: every router's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        router: Option<String>,
    },
}

/// One line of a `monitor` stream: an event, or how many events this monitor lost because
/// it read more slowly than they came (its queue is bounded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorLine {
    Event(crate::monitor::EventLine),
    Dropped(u64),
}

impl Request {
    /// Whether the request may change the desired state.
    /// The router a request names, if it names one (every edit but `apply`).
    pub fn router(&self) -> Option<String> {
        serde_json::to_value(self)
            .ok()?
            .get("router")?
            .as_str()
            .map(str::to_string)
    }

    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            Request::ShowState
                | Request::RouteList { .. }
                | Request::RuleList { .. }
                | Request::FwRuleList { .. }
                | Request::RouterList
                | Request::RouterShow { .. }
                | Request::FipList { .. }
                | Request::Monitor { .. }
        )
    }
}

/// A string, or a number taken as its decimal text (`"table": 100`, `"protocol": 6`,
/// `"destination_ports": 80`).
fn text_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Number(i64),
    }
    Ok(Option::<TextOrNumber>::deserialize(d)?.map(|v| match v {
        TextOrNumber::Text(s) => s,
        TextOrNumber::Number(n) => n.to_string(),
    }))
}

fn text_or_number_required<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    text_or_number(d)?.ok_or_else(|| serde::de::Error::custom("must be a string or a number"))
}

/// The version of the protocol, in every response (`"version"`). It changes only when a
/// field changes meaning or goes away; new fields and new error codes keep it.
pub const API_VERSION: u32 = 1;

/// What kind of failure a refused request is: stable names a script can act on
/// (`routerctl` maps them to its exit codes; `docs/api.md` lists them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request, or a value in it, is malformed or breaks a rule of the desired state.
    Invalid,
    /// The router, or the object of the router the request names, does not exist.
    NotFound,
    /// It exists already (differently), or something still uses it.
    Conflict,
    /// Valid, but applying it failed; the previous state is whole again.
    ApplyFailed,
    /// Applying failed and restoring the previous state failed too: some of the change
    /// may be in place.
    RestoreFailed,
    /// The client may not use the API (its uid or gid is not allowed).
    Forbidden,
    /// routerd is shutting down.
    Unavailable,
    /// The desired state is not routerd's to change here: it follows etcd (`--etcd`), where
    /// changes are written.
    ReadOnly,
    /// routerd could not persist the state or encode its answer.
    Internal,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// Why routerd refused a request: a stable code, a message naming what is wrong, and the
/// key or object at fault when there is one (`router[0] (id "r1").route[1].nexthop`,
/// `router r1`, `floating_ip 198.18.0.10`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    /// On the wire: `"error"`, as before codes existed.
    #[serde(rename = "error")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            object: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// The same error, naming the key or object at fault.
    pub fn at(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }
}

/// A desired state that fails its checks: `invalid`, at the key the check names.
impl From<crate::error::ConfigError> for ApiError {
    fn from(e: crate::error::ConfigError) -> Self {
        let key = match &e {
            crate::error::ConfigError::Invalid { key, .. } => Some(key.clone()),
            crate::error::ConfigError::Syntax(_) => None,
        };
        Self {
            code: ErrorCode::Invalid,
            message: e.to_string(),
            object: key,
        }
    }
}

/// One response: `{"ok": true, "version": 1, "result": ...}` or
/// `{"ok": false, "version": 1, "code": "not_found", "error": "...", "object": "..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// [`API_VERSION`] of the routerd that answered (0: one from before versions).
    #[serde(default)]
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    pub fn success(result: Value) -> Self {
        Self {
            ok: true,
            version: API_VERSION,
            result: Some(result),
            error: None,
        }
    }

    pub fn failure(error: ApiError) -> Self {
        Self {
            ok: false,
            version: API_VERSION,
            result: None,
            error: Some(error),
        }
    }

    /// The response as one line (with its newline).
    pub fn to_line(&self) -> String {
        // A Response of strings and JSON values always serializes.
        let mut line = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                "{{\"ok\":false,\"version\":{API_VERSION},\"code\":\"internal\",\"error\":\"encoding the response: {e}\"}}"
            )
        });
        line.push('\n');
        line
    }
}

/// Reads one request line; a line that is not a request is an error naming the problem.
pub fn parse_request(line: &str) -> Result<Request, ApiError> {
    serde_json::from_str(line).map_err(|e| ApiError::invalid(format!("malformed request: {e}")))
}

/// The result of every request that may change the state (`apply` and the edits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeResult {
    /// Routers added, removed or changed (sorted).
    pub changed_routers: Vec<String>,
    /// True when the request asked for what already was: nothing was written or applied.
    pub unchanged: bool,
    /// Map and kernel writes applying the change made, summed over the routers that
    /// changed (a started or restarted router counts what its start wrote; a removed one
    /// nothing). Zero when nothing changed.
    #[serde(default)]
    pub writes: Writes,
}
