//! routerd's API: newline-delimited JSON over a unix stream socket, one request and one
//! response per line, several requests per connection (`docs/api.md` is the reference).
//!
//! - [`Request`], [`Response`] and the result types: the protocol;
//! - [`plan`]: what a request means for a desired state: an answer, nothing to do, or the
//!   new desired state (validated whole, as a file would be). `routerd` persists and applies
//!   it; this module touches nothing;
//! - [`Client`]: a blocking client, for `routerctl` and the tests.
//!
//! Every edit is made on the state written as TOML and read back with
//! [`DesiredState::parse`], so a bad value is rejected by the same checks and with the same
//! message (naming the key) as in a file.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    str::FromStr,
};

use router_common::TABLE_MAIN;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use crate::{
    config::{DesiredState, FirewallRule, Prefix, Router},
    error::Error,
};

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
    },
    FwRuleDel {
        router: String,
        /// 1-based.
        position: usize,
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
}

impl Request {
    /// Whether the request may change the desired state.
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            Request::ShowState
                | Request::RouteList { .. }
                | Request::RuleList { .. }
                | Request::FwRuleList { .. }
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

/// One response: `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn success(result: Value) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn failure(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(error.into()),
        }
    }

    /// The response as one line (with its newline).
    pub fn to_line(&self) -> String {
        // A Response of strings and JSON values always serializes.
        let mut line = serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"ok\":false,\"error\":\"encoding the response: {e}\"}}")
        });
        line.push('\n');
        line
    }
}

/// Reads one request line; a line that is not a request is an error naming the problem.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("malformed request: {e}"))
}

// ---- results ---------------------------------------------------------------------------

/// The result of every request that may change the state (`apply` and the edits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeResult {
    /// Routers added, removed or changed (sorted).
    pub changed_routers: Vec<String>,
    /// True when the request asked for what already was: nothing was written or applied.
    pub unchanged: bool,
}

/// `show_state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateText {
    pub text: String,
}

/// One element of `route_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub table: String,
    pub destination: String,
    pub nexthop: String,
}

/// One element of `rule_list`, by priority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEntry {
    pub priority: u32,
    /// `None`: any interface.
    pub iif: Option<String>,
    pub from: String,
    pub to: String,
    pub table: String,
    /// `"config"`, `"steering"` or `"external-subnet"`.
    pub origin: String,
}

/// `fw_rule_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallListing {
    /// Whether the router has a firewall (`[router.firewall]`).
    pub enabled: bool,
    /// `"allow"` or `"deny"`; `None` without a firewall.
    pub default: Option<String>,
    pub rules: Vec<FwRuleEntry>,
    /// The fixed steps' counters; `None` without a firewall or when the router's pinned
    /// maps cannot be read.
    pub counters: Option<FixedCounterEntry>,
    /// `[router.steering]`, if any.
    pub steering: Option<SteeringEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwRuleEntry {
    /// 1-based.
    pub position: usize,
    pub action: String,
    /// `"any"`, `"tcp"`, `"udp"`, `"icmp"` or a number.
    pub protocol: String,
    pub source: String,
    pub destination: String,
    /// `"80"`, `"1000-2000"`; `None` = every port.
    pub destination_ports: Option<String>,
    pub description: Option<String>,
    /// From the running router; `None` when they cannot be read.
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedCounterEntry {
    pub established: Counter,
    pub invalid: Counter,
    pub default: Counter,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SteeringEntry {
    pub nexthop: String,
    pub gateway_nexthop: Option<String>,
    pub interfaces: Vec<String>,
}

// ---- what a request means ------------------------------------------------------------

/// What a request comes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// A query's answer; nothing changes.
    Answer(Value),
    /// The state already is what was asked: nothing to write or apply.
    Unchanged,
    /// The new desired state, validated whole: to persist and apply.
    Change(DesiredState),
}

/// What `request` means for `state`; an error names what is wrong (and nothing changes).
pub fn plan(state: &DesiredState, request: &Request) -> Result<Plan, String> {
    match request {
        Request::Apply { text } => {
            let new = DesiredState::parse(text).map_err(|e| e.to_string())?;
            Ok(change(state, new))
        }
        Request::ShowState => Ok(Plan::Answer(to_value(&StateText {
            text: state.to_toml(),
        }))),
        Request::RouteList { router, table } => {
            let r = find_router(state, router)?;
            let only = match table {
                None => None,
                Some(t) => Some(resolve_table(r, "table", t)?),
            };
            let mut routes: Vec<_> = r
                .routes
                .iter()
                .filter(|route| only.is_none_or(|t| route.table == t))
                .collect();
            // main first, then the tables by id; file order within a table.
            routes.sort_by_key(|route| (route.table != TABLE_MAIN, route.table));
            let list: Vec<RouteEntry> = routes
                .into_iter()
                .map(|route| RouteEntry {
                    table: r.table_name(route.table),
                    destination: route.destination.to_string(),
                    nexthop: route.nexthop.to_string(),
                })
                .collect();
            Ok(Plan::Answer(to_value(&list)))
        }
        Request::RuleList { router } => {
            let r = find_router(state, router)?;
            Ok(Plan::Answer(to_value(&rule_list(r))))
        }
        Request::FwRuleList { router } => {
            let r = find_router(state, router)?;
            Ok(Plan::Answer(to_value(&firewall_listing(r))))
        }
        Request::RouteAdd {
            router,
            destination,
            nexthop,
            table,
            may_exist,
        } => route_add(
            state,
            router,
            destination,
            nexthop,
            table.as_deref(),
            *may_exist,
        ),
        Request::RouteDel {
            router,
            destination,
            table,
            if_exists,
        } => {
            let (i, r) = router_at(state, router)?;
            let destination = parse_prefix("destination", destination)?;
            let table = match table {
                None => TABLE_MAIN,
                Some(t) => resolve_table(r, "table", t)?,
            };
            let Some(at) = r
                .routes
                .iter()
                .position(|x| x.destination == destination && x.table == table)
            else {
                if *if_exists {
                    return Ok(Plan::Unchanged);
                }
                return Err(format!(
                    "router \"{router}\" has no route to {destination} in table {}",
                    r.table_name(table)
                ));
            };
            let mut new = state.clone();
            new.routers[i].routes.remove(at);
            revalidate(state, &new)
        }
        Request::RuleAdd {
            router,
            priority,
            iif,
            from,
            to,
            table,
            may_exist,
        } => rule_add(
            state,
            router,
            *priority,
            RuleText {
                iif: iif.as_deref(),
                from: from.as_deref(),
                to: to.as_deref(),
                table,
            },
            *may_exist,
        ),
        Request::RuleDel {
            router,
            priority,
            if_exists,
        } => {
            let (i, r) = router_at(state, router)?;
            let Some(at) = r
                .rules
                .iter()
                .position(|x| i64::from(x.priority) == *priority)
            else {
                if *if_exists {
                    return Ok(Plan::Unchanged);
                }
                return Err(format!(
                    "router \"{router}\" has no rule with priority {priority}"
                ));
            };
            let mut new = state.clone();
            new.routers[i].rules.remove(at);
            revalidate(state, &new)
        }
        Request::FwRuleAdd {
            router,
            position,
            action,
            protocol,
            source,
            destination,
            destination_ports,
            description,
        } => {
            let (i, r) = router_at(state, router)?;
            let Some(fw) = &r.firewall else {
                return Err(format!(
                    "router \"{router}\" has no firewall: create it with its default policy first (fw_default; routerctl fw default --router {router} deny|allow)"
                ));
            };
            let count = fw.rules.len();
            let at = match position {
                None => count,
                Some(p) if (1..=count + 1).contains(p) => p - 1,
                Some(p) => {
                    return Err(format!(
                        "position {p} is out of range: router \"{router}\" has {count} firewall rule(s), a rule is inserted at 1 to {}",
                        count + 1
                    ));
                }
            };
            let mut entry = toml::Table::new();
            entry.insert("action".into(), action.clone().into());
            for (key, value) in [
                ("protocol", protocol),
                ("source", source),
                ("destination", destination),
                ("destination_ports", destination_ports),
                ("description", description),
            ] {
                if let Some(v) = value {
                    entry.insert(key.into(), v.clone().into());
                }
            }
            let mut doc = Doc::of(state)?;
            let fw_doc = doc.router(i)?.table("firewall")?;
            array(fw_doc, "rule")?.insert(at, toml::Value::Table(entry));
            doc.validate(state)
        }
        Request::FwRuleDel { router, position } => {
            let (i, r) = router_at(state, router)?;
            let Some(fw) = &r.firewall else {
                return Err(format!("router \"{router}\" has no firewall"));
            };
            if !(1..=fw.rules.len()).contains(position) {
                return Err(format!(
                    "router \"{router}\" has no firewall rule at position {position} (it has {} rule(s), numbered from 1)",
                    fw.rules.len()
                ));
            }
            let mut new = state.clone();
            if let Some(fw) = &mut new.routers[i].firewall {
                fw.rules.remove(position - 1);
            }
            revalidate(state, &new)
        }
        Request::FwDefault { router, policy } => {
            let (i, _) = router_at(state, router)?;
            if policy != "allow" && policy != "deny" {
                return Err(format!(
                    "policy \"{policy}\": must be \"allow\" or \"deny\""
                ));
            }
            let mut doc = Doc::of(state)?;
            doc.router(i)?
                .table("firewall")?
                .insert("default".into(), policy.clone().into());
            doc.validate(state)
        }
        Request::FwSteerSet {
            router,
            interface,
            nexthop,
            gateway_nexthop,
        } => {
            let (i, r) = router_at(state, router)?;
            if interface.is_none() && nexthop.is_none() && gateway_nexthop.is_none() {
                return Err(
                    "nothing to set: give an interface to steer, a nexthop or a gateway_nexthop"
                        .into(),
                );
            }
            let current = r.steering.as_ref();
            let Some(nexthop) = nexthop
                .clone()
                .or_else(|| current.map(|s| s.nexthop.to_string()))
            else {
                return Err(format!(
                    "router \"{router}\" has no steering yet: give the firewall's address (nexthop) to create it"
                ));
            };
            let gateway_nexthop = gateway_nexthop.clone().or_else(|| {
                current
                    .and_then(|s| s.gateway_nexthop)
                    .map(|a| a.to_string())
            });
            let mut interfaces: Vec<String> =
                current.map(|s| s.interfaces.clone()).unwrap_or_default();
            if let Some(name) = interface
                && !interfaces.contains(name)
            {
                interfaces.push(name.clone());
            }
            let mut steering = toml::Table::new();
            steering.insert("nexthop".into(), nexthop.into());
            if let Some(g) = gateway_nexthop {
                steering.insert("gateway_nexthop".into(), g.into());
            }
            steering.insert(
                "interfaces".into(),
                toml::Value::Array(interfaces.into_iter().map(toml::Value::from).collect()),
            );
            let mut doc = Doc::of(state)?;
            doc.router(i)?
                .insert("steering".into(), toml::Value::Table(steering));
            doc.validate(state)
        }
        Request::FwSteerClear { router, interface } => {
            let (i, r) = router_at(state, router)?;
            let mut new = state.clone();
            match interface {
                None => new.routers[i].steering = None,
                Some(name) => {
                    let steered = r
                        .steering
                        .as_ref()
                        .and_then(|s| s.interfaces.iter().position(|n| n == name));
                    let (Some(at), Some(s)) = (steered, &mut new.routers[i].steering) else {
                        return Err(format!(
                            "interface \"{name}\" is not steered on router \"{router}\""
                        ));
                    };
                    s.interfaces.remove(at);
                }
            }
            revalidate(state, &new)
        }
    }
}

/// Routers added, removed or changed from `old` to `new`, sorted.
pub fn changed_routers(old: &DesiredState, new: &DesiredState) -> Vec<String> {
    let mut ids: Vec<String> = new
        .routers
        .iter()
        .filter(|r| old.router(&r.id) != Some(*r))
        .map(|r| r.id.clone())
        .chain(
            old.routers
                .iter()
                .filter(|r| new.router(&r.id).is_none())
                .map(|r| r.id.clone()),
        )
        .collect();
    ids.sort();
    ids
}

fn change(state: &DesiredState, new: DesiredState) -> Plan {
    if new == *state {
        Plan::Unchanged
    } else {
        Plan::Change(new)
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({ "encoding_error": e.to_string() }))
}

fn find_router<'a>(state: &'a DesiredState, id: &str) -> Result<&'a Router, String> {
    router_at(state, id).map(|(_, r)| r)
}

fn router_at<'a>(state: &'a DesiredState, id: &str) -> Result<(usize, &'a Router), String> {
    state
        .routers
        .iter()
        .enumerate()
        .find(|(_, r)| r.id == id)
        .ok_or_else(|| format!("router \"{id}\" does not exist"))
}

/// A typed edit, checked whole like a file.
fn revalidate(state: &DesiredState, new: &DesiredState) -> Result<Plan, String> {
    let parsed = DesiredState::parse(&new.to_toml()).map_err(|e| e.to_string())?;
    Ok(change(state, parsed))
}

/// A prefix as `route.destination` takes it.
fn parse_prefix(key: &str, s: &str) -> Result<Prefix, String> {
    let bad = |problem: &str| format!("{key} \"{s}\": {problem}");
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| bad("not an IPv4 prefix (a.b.c.d/len)"))?;
    let addr = Ipv4Addr::from_str(addr).map_err(|_| bad("not an IPv4 prefix (a.b.c.d/len)"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| bad("not an IPv4 prefix (a.b.c.d/len)"))?;
    let prefix = Prefix::new_truncating(addr, len);
    if prefix.addr != addr {
        return Err(bad("has host bits set after the prefix length"));
    }
    Ok(prefix)
}

/// A table reference as `route.table` takes it: "main", a table's name, or an id.
fn resolve_table(r: &Router, key: &str, value: &str) -> Result<u32, String> {
    if value == "main" {
        return Ok(TABLE_MAIN);
    }
    if let Some(t) = r.tables.iter().find(|t| t.name == value) {
        return Ok(t.id);
    }
    match value.parse::<u32>() {
        Ok(TABLE_MAIN) => Ok(TABLE_MAIN),
        Ok(id) if r.tables.iter().any(|t| t.id == id) => Ok(id),
        _ => Err(format!(
            "{key} \"{value}\": is not \"main\" or a table of router \"{}\" ([[router.table]] name or id)",
            r.id
        )),
    }
}

/// The state as a TOML document, for edits that take the caller's text as it is.
struct Doc(toml::Table);

impl Doc {
    fn of(state: &DesiredState) -> Result<Self, String> {
        toml::from_str(&state.to_toml())
            .map(Doc)
            .map_err(|e| format!("internal error: the state does not read back: {e}"))
    }

    fn router(&mut self, index: usize) -> Result<&mut toml::Table, String> {
        self.0
            .get_mut("router")
            .and_then(|v| v.as_array_mut())
            .and_then(|a| a.get_mut(index))
            .and_then(|v| v.as_table_mut())
            .ok_or_else(|| format!("internal error: router[{index}] is not in the state"))
    }

    /// Parses the edited document (every check of a file) into the plan.
    fn validate(self, state: &DesiredState) -> Result<Plan, String> {
        let new = self.parse()?;
        Ok(change(state, new))
    }

    fn parse(&self) -> Result<DesiredState, String> {
        let text = toml::to_string(&self.0).map_err(|e| format!("encoding the state: {e}"))?;
        DesiredState::parse(&text).map_err(|e| e.to_string())
    }
}

trait TableExt {
    /// The sub-table `key`, created if missing.
    fn table(&mut self, key: &str) -> Result<&mut toml::Table, String>;
}

impl TableExt for toml::Table {
    fn table(&mut self, key: &str) -> Result<&mut toml::Table, String> {
        self.entry(key)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("internal error: {key} is not a table"))
    }
}

/// The array `key` of `table`, created if missing.
fn array<'a>(table: &'a mut toml::Table, key: &str) -> Result<&'a mut Vec<toml::Value>, String> {
    table
        .entry(key)
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| format!("internal error: {key} is not an array"))
}

fn route_add(
    state: &DesiredState,
    router: &str,
    destination: &str,
    nexthop: &str,
    table: Option<&str>,
    may_exist: bool,
) -> Result<Plan, String> {
    let (i, r) = router_at(state, router)?;
    let mut entry = toml::Table::new();
    entry.insert("destination".into(), destination.into());
    entry.insert("nexthop".into(), nexthop.into());
    if let Some(t) = table {
        entry.insert("table".into(), t.into());
    }
    let entry = toml::Value::Table(entry);
    // Appended: checked like the file's last route.
    let mut doc = Doc::of(state)?;
    array(doc.router(i)?, "route")?.push(entry.clone());
    let appended = match doc.parse() {
        Ok(new) => return Ok(change(state, new)),
        Err(e) => e,
    };
    // It may only clash with a route of the same table and destination: read it alone to
    // find which (a route on its own is checked the same way).
    let mut alone = Doc::of(state)?;
    alone
        .router(i)?
        .insert("route".into(), toml::Value::Array(vec![entry]));
    let Ok(probe) = alone.parse() else {
        return Err(appended);
    };
    let Some(new) = probe.routers.get(i).and_then(|p| p.routes.first()) else {
        return Err(appended);
    };
    let Some(old) = r
        .routes
        .iter()
        .find(|x| x.table == new.table && x.destination == new.destination)
    else {
        return Err(appended);
    };
    let table = r.table_name(new.table);
    if old.nexthop != new.nexthop {
        return Err(format!(
            "router \"{router}\" has a route to {} in table {table} via {} already (delete it first)",
            old.destination, old.nexthop
        ));
    }
    if may_exist {
        return Ok(Plan::Unchanged);
    }
    Err(format!(
        "route to {} via {} in table {table} exists on router \"{router}\" (use --may-exist)",
        old.destination, old.nexthop
    ))
}

struct RuleText<'a> {
    iif: Option<&'a str>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    table: &'a str,
}

fn rule_add(
    state: &DesiredState,
    router: &str,
    priority: i64,
    text: RuleText<'_>,
    may_exist: bool,
) -> Result<Plan, String> {
    let (i, r) = router_at(state, router)?;
    let mut entry = toml::Table::new();
    entry.insert("priority".into(), priority.into());
    for (key, value) in [("iif", text.iif), ("from", text.from), ("to", text.to)] {
        if let Some(v) = value {
            entry.insert(key.into(), v.into());
        }
    }
    entry.insert("table".into(), text.table.into());
    let existing = r.rules.iter().find(|x| i64::from(x.priority) == priority);
    let mut doc = Doc::of(state)?;
    let rules = array(doc.router(i)?, "rule")?;
    if existing.is_some() {
        // Put in the place of the rule with this priority, to compare the two.
        rules.retain(|v| v.get("priority").and_then(toml::Value::as_integer) != Some(priority));
    }
    rules.push(toml::Value::Table(entry));
    let new = doc.parse()?;
    let Some(old) = existing else {
        return Ok(change(state, new));
    };
    let added = new
        .routers
        .get(i)
        .and_then(|n| n.rules.iter().find(|x| i64::from(x.priority) == priority));
    if added == Some(old) {
        if may_exist {
            return Ok(Plan::Unchanged);
        }
        return Err(format!(
            "rule priority {priority} exists on router \"{router}\" (use --may-exist)"
        ));
    }
    Err(format!(
        "rule priority {priority} exists on router \"{router}\" with other selectors or table ({}); delete it first or choose another priority",
        describe_rule(r, old)
    ))
}

fn describe_rule(r: &Router, rule: &crate::config::Rule) -> String {
    let mut s = format!("priority {}", rule.priority);
    if let Some(iif) = &rule.iif {
        s += &format!(" iif {iif}");
    }
    if rule.from != Prefix::ANY {
        s += &format!(" from {}", rule.from);
    }
    if rule.to != Prefix::ANY {
        s += &format!(" to {}", rule.to);
    }
    s + &format!(" lookup {}", r.table_name(rule.table))
}

/// The router's rules with the ones it generates, by priority.
fn rule_list(r: &Router) -> Vec<RuleEntry> {
    crate::policy::of(r)
        .rules
        .into_iter()
        .map(|rule| RuleEntry {
            priority: rule.priority,
            iif: rule.iif,
            from: rule.from.to_string(),
            to: rule.to.to_string(),
            table: crate::policy::table_name(r, rule.table),
            origin: match rule.origin {
                crate::policy::Origin::Config => "config",
                crate::policy::Origin::Steering => "steering",
                crate::policy::Origin::ExternalSubnet => "external-subnet",
            }
            .into(),
        })
        .collect()
}

fn protocol_text(proto: u8) -> String {
    match proto {
        0 => "any".into(),
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

fn fw_rule_entry(position: usize, rule: &FirewallRule) -> FwRuleEntry {
    FwRuleEntry {
        position,
        action: rule.action.to_string(),
        protocol: protocol_text(rule.protocol),
        source: rule.source.to_string(),
        destination: rule.destination.to_string(),
        destination_ports: rule.ports.map(|p| {
            if p.min == p.max {
                p.min.to_string()
            } else {
                p.to_string()
            }
        }),
        description: rule.description.clone(),
        packets: None,
        bytes: None,
    }
}

/// The firewall of `r` with the running router's counters (read from its pinned maps).
fn firewall_listing(r: &Router) -> FirewallListing {
    let steering = r.steering.as_ref().map(|s| SteeringEntry {
        nexthop: s.nexthop.to_string(),
        gateway_nexthop: s.gateway_nexthop.map(|a| a.to_string()),
        interfaces: s.interfaces.clone(),
    });
    let Some(fw) = &r.firewall else {
        return FirewallListing {
            enabled: false,
            default: None,
            rules: Vec::new(),
            counters: None,
            steering,
        };
    };
    let mut rules: Vec<FwRuleEntry> = fw
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| fw_rule_entry(i + 1, rule))
        .collect();
    if let Ok(counters) = crate::firewall::rule_counters(&r.id) {
        for c in counters {
            if let Some(entry) = rules.get_mut(c.index) {
                entry.packets = Some(c.packets);
                entry.bytes = Some(c.bytes);
            }
        }
    }
    let counter = |(packets, bytes): (u64, u64)| Counter { packets, bytes };
    let counters = crate::firewall::fixed_counters(&r.id)
        .ok()
        .map(|f| FixedCounterEntry {
            established: counter(f.established),
            invalid: counter(f.invalid),
            default: counter(f.default),
        });
    FirewallListing {
        enabled: true,
        default: Some(if fw.default_allow { "allow" } else { "deny" }.into()),
        rules,
        counters,
        steering,
    }
}

// ---- the client ------------------------------------------------------------------------

/// A connection to routerd.
pub struct Client {
    stream: BufReader<UnixStream>,
    path: PathBuf,
}

impl Client {
    /// Connects to routerd's socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, Error> {
        let stream = UnixStream::connect(path).map_err(|source| Error::Unreachable {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            stream: BufReader::new(stream),
            path: path.to_path_buf(),
        })
    }

    /// Sends `request`; returns the result, or the error routerd answered as
    /// [`Error::Api`].
    pub fn call(&mut self, request: &Request) -> Result<Value, Error> {
        let line = serde_json::to_string(request)
            .map_err(|e| Error::io("encoding the request", std::io::Error::other(e)))?;
        let response = self.call_line(&line)?;
        match response {
            Response {
                ok: true, result, ..
            } => Ok(result.unwrap_or(Value::Null)),
            Response { error, .. } => {
                Err(Error::Api(error.unwrap_or_else(|| {
                    "routerd answered an error without a message".into()
                })))
            }
        }
    }

    /// Sends one raw line (a newline is added) and reads the response.
    pub fn call_line(&mut self, line: &str) -> Result<Response, Error> {
        let talk = |source| Error::Io {
            what: format!("talking to routerd at {}", self.path.display()),
            source,
        };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let written = self.stream.get_mut().write_all(&bytes);
        // routerd may have answered (a refusal) and closed before reading: read the
        // answer even when the write failed.
        let mut answer = String::new();
        let read = (&mut self.stream)
            .take(MAX_LINE as u64)
            .read_line(&mut answer);
        match (written, read) {
            (_, Ok(n)) if n > 0 => {}
            (Err(e), _) => return Err(talk(e)),
            (Ok(()), Err(e)) => return Err(talk(e)),
            (Ok(()), Ok(_)) => {
                return Err(talk(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "routerd closed the connection without answering",
                )));
            }
        }
        serde_json::from_str(answer.trim_end()).map_err(|e| {
            talk(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a response: {e}"),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[router]]
id = "r1"
namespace = "ns1"

[router.gateway]
interface = "qg-1"
address = "198.18.0.2/24"
nexthop = "198.18.0.1"

[[router.interface]]
name = "qr-a"
address = "10.0.1.1/24"

[[router.interface]]
name = "qr-fw"
address = "10.99.0.1/24"

[[router.table]]
name = "vfw"
id = 100

[[router.route]]
destination = "10.20.0.0/16"
nexthop = "10.0.1.254"

[[router.rule]]
priority = 1000
iif = "qr-a"
table = "vfw"
"#;

    fn state() -> DesiredState {
        DesiredState::parse(BASE).expect("valid")
    }

    /// `request` on router r1, sent as JSON.
    fn ask(s: &DesiredState, mut request: Value) -> Result<Plan, String> {
        request["router"] = json!("r1");
        plan(s, &parse_request(&request.to_string()).expect("a request"))
    }

    fn changed(s: &DesiredState, request: Value) -> DesiredState {
        match ask(s, request.clone()) {
            Ok(Plan::Change(s)) => s,
            other => panic!("{request}: expected a change, got {other:?}"),
        }
    }

    fn error(s: &DesiredState, request: Value) -> String {
        match ask(s, request.clone()) {
            Err(e) => e,
            other => panic!("{request}: expected an error, got {other:?}"),
        }
    }

    fn unchanged(s: &DesiredState, request: Value) {
        assert_eq!(ask(s, request.clone()), Ok(Plan::Unchanged), "{request}");
    }

    fn answer(s: &DesiredState, request: Value) -> Value {
        match ask(s, request.clone()) {
            Ok(Plan::Answer(v)) => v,
            other => panic!("{request}: expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn requests_read_and_write_as_documented() {
        let line = r#"{"op":"route_add","router":"r1","destination":"10.30.0.0/16","nexthop":"10.0.1.254","table":100}"#;
        let r = parse_request(line).expect("a request");
        assert_eq!(
            r,
            Request::RouteAdd {
                router: "r1".into(),
                destination: "10.30.0.0/16".into(),
                nexthop: "10.0.1.254".into(),
                table: Some("100".into()),
                may_exist: false,
            }
        );
        let text = serde_json::to_string(&r).expect("encodes");
        assert_eq!(parse_request(&text), Ok(r));
        assert_eq!(
            parse_request(r#"{"op":"show_state"}"#),
            Ok(Request::ShowState)
        );
        for (line, problem) in [
            (
                r#"{"op":"route_add","router":"r1"}"#,
                "missing field `destination`",
            ),
            (
                r#"{"op":"rule_list","router":"r1","bogus":1}"#,
                "unknown field `bogus`",
            ),
            (r#"{"op":"launch"}"#, "unknown variant `launch`"),
            ("{not json", "malformed request"),
        ] {
            let e = parse_request(line).expect_err(line);
            assert!(
                e.starts_with("malformed request: ") && e.contains(problem),
                "{e}"
            );
        }
    }

    #[test]
    fn route_add_checks_like_the_file_and_knows_duplicates() {
        let s = state();
        let new = changed(
            &s,
            json!({"op": "route_add", "destination": "10.30.0.0/16", "nexthop": "10.99.0.2", "table": "vfw"}),
        );
        assert_eq!(new.routers[0].routes.len(), 2);
        assert_eq!(new.routers[0].routes[1].table, 100);
        for (request, problem) in [
            (
                json!({"op": "route_add", "destination": "10.30.0.5/16", "nexthop": "10.0.1.254"}),
                "route[1].destination = \"10.30.0.5/16\": has host bits",
            ),
            (
                json!({"op": "route_add", "destination": "10.30.0.0/16", "nexthop": "192.0.2.1"}),
                "route[1].nexthop = \"192.0.2.1\": is on no subnet",
            ),
            (
                json!({"op": "route_add", "destination": "10.30.0.0/16", "nexthop": "10.0.1.254", "table": "nope"}),
                "route[1].table = \"nope\"",
            ),
            (
                json!({"op": "route_add", "destination": "10.20.0.0/16", "nexthop": "10.0.1.254"}),
                "exists on router \"r1\" (use --may-exist)",
            ),
            (
                json!({"op": "route_add", "destination": "10.20.0.0/16", "nexthop": "10.0.1.253", "may_exist": true}),
                "via 10.0.1.254 already",
            ),
        ] {
            let e = error(&s, request);
            assert!(e.contains(problem), "{e}");
        }
        unchanged(
            &s,
            json!({"op": "route_add", "destination": "10.20.0.0/16", "nexthop": "10.0.1.254", "table": "254", "may_exist": true}),
        );
        let e = plan(
            &s,
            &Request::RouteList {
                router: "r9".into(),
                table: None,
            },
        );
        assert_eq!(e, Err("router \"r9\" does not exist".into()));
    }

    #[test]
    fn route_del_and_list() {
        let s = state();
        let new = changed(
            &s,
            json!({"op": "route_del", "destination": "10.20.0.0/16"}),
        );
        assert!(new.routers[0].routes.is_empty());
        let e = error(
            &s,
            json!({"op": "route_del", "destination": "10.20.0.0/16", "table": "vfw"}),
        );
        assert!(e.contains("no route to 10.20.0.0/16 in table vfw"), "{e}");
        unchanged(
            &s,
            json!({"op": "route_del", "destination": "10.21.0.0/16", "if_exists": true}),
        );
        let e = error(
            &s,
            json!({"op": "route_del", "destination": "10.21.0.0/16", "table": "x"}),
        );
        assert!(e.contains("table \"x\""), "{e}");
        let e = error(
            &s,
            json!({"op": "route_del", "destination": "10.21.0.1/16"}),
        );
        assert!(e.contains("has host bits"), "{e}");
        assert_eq!(
            answer(&s, json!({"op": "route_list"})),
            json!([{"table": "main", "destination": "10.20.0.0/16", "nexthop": "10.0.1.254"}])
        );
        assert_eq!(
            answer(&s, json!({"op": "route_list", "table": 100})),
            json!([])
        );
    }

    #[test]
    fn rules_add_del_and_may_exist() {
        let s = state();
        let same = json!({"op": "rule_add", "priority": 1000, "iif": "qr-a", "table": "vfw"});
        let e = error(&s, same.clone());
        assert!(
            e.contains("rule priority 1000 exists on router \"r1\" (use --may-exist)"),
            "{e}"
        );
        let mut may = same;
        may["may_exist"] = json!(true);
        unchanged(&s, may);
        // Written differently, the same rule.
        unchanged(
            &s,
            json!({"op": "rule_add", "priority": 1000, "iif": "qr-a", "table": 100, "from": "0.0.0.0/0", "may_exist": true}),
        );
        let e = error(
            &s,
            json!({"op": "rule_add", "priority": 1000, "table": "main", "may_exist": true}),
        );
        assert!(
            e.contains("other selectors or table (priority 1000 iif qr-a lookup vfw)"),
            "{e}"
        );
        let e = error(
            &s,
            json!({"op": "rule_add", "priority": 10, "iif": "eth9", "table": "main"}),
        );
        assert!(e.contains("rule[1].iif = \"eth9\""), "{e}");
        let new = changed(
            &s,
            json!({"op": "rule_add", "priority": 10, "from": "10.0.1.5", "table": "main"}),
        );
        assert_eq!(new.routers[0].rules[1].from.len, 32);
        let new = changed(&s, json!({"op": "rule_del", "priority": 1000}));
        assert!(new.routers[0].rules.is_empty());
        unchanged(
            &s,
            json!({"op": "rule_del", "priority": 5, "if_exists": true}),
        );
        let e = error(&s, json!({"op": "rule_del", "priority": 5}));
        assert!(e.contains("no rule with priority 5"), "{e}");
    }

    #[test]
    fn firewall_edits() {
        let s = state();
        let e = error(&s, json!({"op": "fw_rule_add", "action": "allow"}));
        assert!(e.contains("has no firewall"), "{e}");
        let s = changed(&s, json!({"op": "fw_default", "policy": "allow"}));
        assert!(
            s.routers[0]
                .firewall
                .as_ref()
                .is_some_and(|f| f.default_allow)
        );
        unchanged(&s, json!({"op": "fw_default", "policy": "allow"}));
        let s = changed(
            &s,
            json!({"op": "fw_rule_add", "action": "deny", "protocol": "icmp"}),
        );
        let s = changed(
            &s,
            json!({"op": "fw_rule_add", "position": 1, "action": "allow", "protocol": 6, "destination_ports": 80}),
        );
        let protocols: Vec<u8> = s.routers[0]
            .firewall
            .iter()
            .flat_map(|f| &f.rules)
            .map(|r| r.protocol)
            .collect();
        assert_eq!(protocols, [6, 1]);
        for (request, problem) in [
            (
                json!({"op": "fw_rule_add", "action": "allow", "protocol": "icmp", "destination_ports": "80"}),
                "firewall.rule[2].destination_ports = \"80\": ports need protocol",
            ),
            (
                json!({"op": "fw_rule_add", "action": "maybe"}),
                "firewall.rule[2].action = \"maybe\"",
            ),
            (
                json!({"op": "fw_rule_add", "position": 4, "action": "allow"}),
                "position 4 is out of range",
            ),
            (
                json!({"op": "fw_rule_add", "position": 0, "action": "allow"}),
                "position 0 is out of range",
            ),
            (
                json!({"op": "fw_rule_del", "position": 3}),
                "no firewall rule at position 3",
            ),
            (
                json!({"op": "fw_default", "policy": "maybe"}),
                "must be \"allow\" or \"deny\"",
            ),
        ] {
            let e = error(&s, request);
            assert!(e.contains(problem), "{e}");
        }
        let s2 = changed(&s, json!({"op": "fw_rule_del", "position": 1}));
        assert_eq!(
            s2.routers[0].firewall.as_ref().map(|f| f.rules.len()),
            Some(1)
        );
        let listing = answer(&s, json!({"op": "fw_rule_list"}));
        assert_eq!(listing["default"], "allow");
        assert_eq!(listing["rules"][0]["destination_ports"], "80");
        assert_eq!(listing["rules"][1]["protocol"], "icmp");
    }

    #[test]
    fn steering_set_and_clear() {
        let s = state();
        let e = error(&s, json!({"op": "fw_steer_set", "interface": "qr-a"}));
        assert!(e.contains("no steering yet"), "{e}");
        let s = changed(
            &s,
            json!({"op": "fw_steer_set", "interface": "qr-a", "nexthop": "10.99.0.2"}),
        );
        let steered =
            |s: &DesiredState| s.routers[0].steering.as_ref().map(|x| x.interfaces.clone());
        assert_eq!(steered(&s), Some(vec!["qr-a".to_string()]));
        unchanged(&s, json!({"op": "fw_steer_set", "interface": "qr-a"}));
        let e = error(&s, json!({"op": "fw_steer_set", "interface": "qr-fw"}));
        assert!(e.contains("steering.nexthop"), "{e}");
        let origins: Vec<Value> = answer(&s, json!({"op": "rule_list"}))
            .as_array()
            .map(|rules| rules.iter().map(|r| r["origin"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(origins, ["config", "steering"]);
        let e = error(&s, json!({"op": "fw_steer_clear", "interface": "qr-fw"}));
        assert!(e.contains("not steered"), "{e}");
        let s2 = changed(&s, json!({"op": "fw_steer_clear", "interface": "qr-a"}));
        assert_eq!(steered(&s2), Some(vec![]));
        let s3 = changed(&s, json!({"op": "fw_steer_clear"}));
        assert_eq!(steered(&s3), None);
        unchanged(&s3, json!({"op": "fw_steer_clear"}));
    }

    #[test]
    fn apply_reports_what_changes() {
        let s = state();
        assert_eq!(
            plan(&s, &Request::Apply { text: BASE.into() }),
            Ok(Plan::Unchanged)
        );
        let two = format!("{BASE}\n[[router]]\nid = \"r2\"\nnamespace = \"ns2\"\n");
        let Ok(Plan::Change(new)) = plan(&s, &Request::Apply { text: two }) else {
            panic!("a second router is a change");
        };
        assert_eq!(changed_routers(&s, &new), ["r2"]);
        assert_eq!(changed_routers(&new, &s), ["r2"]);
        let bad = plan(
            &s,
            &Request::Apply {
                text: "[[router]]\nid = 1\n".into(),
            },
        );
        assert!(bad.is_err_and(|e| e.starts_with("invalid configuration")));
    }
}
