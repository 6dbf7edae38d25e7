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
    collections::BTreeMap,
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
    config::{DesiredState, FirewallRule, IfAddr, Prefix, Router},
    error::Error,
    router::{RouterInfo, Writes},
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
        #[serde(default)]
        may_exist: bool,
    },
    FipDelete {
        router: String,
        address: String,
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
        #[serde(default)]
        may_exist: bool,
    },
    /// Disassociates floating IP `address`: the same as `fip_delete`.
    FipDisassociate {
        router: String,
        address: String,
        #[serde(default)]
        if_exists: bool,
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
                | Request::RouterList
                | Request::RouterShow { .. }
                | Request::FipList { .. }
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
    /// Map and kernel writes applying the change made, summed over the routers that
    /// changed (a started or restarted router counts what its start wrote; a removed one
    /// nothing). Zero when nothing changed.
    #[serde(default)]
    pub writes: Writes,
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

/// One element of `router_list`, in the order of the desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterSummary {
    pub id: String,
    pub namespace: String,
    /// `"xdp"` or `"tc"`.
    pub mode: String,
    /// The internal interfaces' names.
    pub interfaces: Vec<String>,
    /// `None` without a gateway.
    pub gateway: Option<GatewayEntry>,
    /// How many floating IPs it has.
    pub floating_ips: usize,
    /// Whether routerd runs it (its fast path attached and followed).
    pub running: bool,
    /// Why it does not run, when its start failed: routerd tries it again.
    pub start_error: Option<String>,
}

/// `router_show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterDetail {
    pub id: String,
    pub namespace: String,
    pub mode: String,
    pub running: bool,
    /// Why it does not run, when its start failed: routerd tries it again.
    pub start_error: Option<String>,
    /// The internal interfaces, in file order.
    pub interfaces: Vec<InterfaceEntry>,
    pub gateway: Option<GatewayEntry>,
    /// Every subnet of the external network the router has an address on, the gateway's
    /// first; empty without a gateway.
    pub external_subnets: Vec<ExternalSubnetEntry>,
    /// `[[router.table]]`.
    pub tables: Vec<TableEntry>,
    /// As `route_list` answers.
    pub routes: Vec<RouteEntry>,
    /// As `rule_list` answers (configured and generated rules).
    pub rules: Vec<RuleEntry>,
    /// As `fip_list` answers.
    pub floating_ips: Vec<FloatingIpEntry>,
    pub firewall: FirewallSummary,
    pub nat: NatEntry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceEntry {
    pub name: String,
    /// The router's address, `a.b.c.d/len`.
    pub address: String,
    /// Its subnet, `a.b.c.0/len`.
    pub subnet: String,
    pub source_check: bool,
    pub allowed_sources: Vec<String>,
    /// Whether XDP redirects into it: as the running router decided; when not running, as
    /// configured (`None`: decided by the driver at start).
    pub xdp_egress: Option<bool>,
    /// Its ifindex in the router's namespace, when running.
    pub ifindex: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayEntry {
    pub interface: String,
    /// The gateway IP with the external subnet's length, `a.b.c.d/len`.
    pub address: String,
    pub nexthop: String,
    pub snat: bool,
    /// As for [`InterfaceEntry::xdp_egress`].
    pub xdp_egress: Option<bool>,
    /// When running.
    pub ifindex: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalSubnetEntry {
    pub subnet: String,
    /// The router's address on it.
    pub address: String,
    /// The subnet's gateway.
    pub nexthop: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    pub name: String,
    pub id: u32,
}

/// One element of `fip_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIpEntry {
    pub router: String,
    /// The floating IP.
    pub address: String,
    /// The fixed IP it is associated with.
    pub fixed: String,
    /// From the running router's pinned `FIP_STATS` (summed over CPUs); `None` when the
    /// router does not run or they cannot be read. In: to the floating IP; out: from the
    /// fixed IP.
    pub in_packets: Option<u64>,
    pub in_bytes: Option<u64>,
    pub out_packets: Option<u64>,
    pub out_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallSummary {
    pub enabled: bool,
    /// `"allow"` or `"deny"`; `None` without a firewall.
    pub default: Option<String>,
    /// How many rules (`fw_rule_list` has them).
    pub rules: usize,
    pub steering: Option<SteeringEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatEntry {
    pub snat_ports: String,
    pub slow_path_snat_ports: String,
    pub max_sessions: u32,
    pub metadata_port: u16,
}

/// What routerd knows of the routers it runs, for the answers that show it (`running`,
/// ifindexes, counters).
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// By router id.
    pub routers: BTreeMap<String, RouterInfo>,
    /// Routers whose start failed, by id: why. routerd tries them again.
    pub waiting: BTreeMap<String, String>,
}

impl Live {
    fn info(&self, id: &str) -> Option<&RouterInfo> {
        self.routers.get(id)
    }
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

/// What `request` means for `state`, with no router running; an error names what is
/// wrong (and nothing changes).
pub fn plan(state: &DesiredState, request: &Request) -> Result<Plan, String> {
    plan_with(state, request, &Live::default())
}

/// What `request` means for `state`, routerd running the routers of `live`.
pub fn plan_with(state: &DesiredState, request: &Request, live: &Live) -> Result<Plan, String> {
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
            Ok(Plan::Answer(to_value(&route_entries(r, only))))
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
        Request::RouterCreate {
            router,
            namespace,
            mode,
            may_exist,
        } => router_create(state, router, namespace, mode.as_deref(), *may_exist),
        Request::RouterDelete { router, if_exists } => {
            let Some(at) = state.routers.iter().position(|r| r.id == *router) else {
                if *if_exists {
                    return Ok(Plan::Unchanged);
                }
                return Err(format!("router \"{router}\" does not exist"));
            };
            let mut new = state.clone();
            new.routers.remove(at);
            revalidate(state, &new)
        }
        Request::RouterList => {
            let list: Vec<RouterSummary> = state
                .routers
                .iter()
                .map(|r| router_summary(r, live))
                .collect();
            Ok(Plan::Answer(to_value(&list)))
        }
        Request::RouterShow { router } => {
            let r = find_router(state, router)?;
            Ok(Plan::Answer(to_value(&router_detail(r, live))))
        }
        Request::RouterInterfaceAdd {
            router,
            interface,
            address,
            may_exist,
        } => interface_add(state, router, interface, address, *may_exist),
        Request::RouterInterfaceRemove {
            router,
            interface,
            if_exists,
        } => {
            let (i, r) = router_at(state, router)?;
            let Some(at) = r.interfaces.iter().position(|x| x.name == *interface) else {
                if r.gateway
                    .as_ref()
                    .is_some_and(|g| g.interface == *interface)
                {
                    return Err(format!(
                        "interface {interface} is the gateway interface of router \"{router}\", not an internal one (router gateway clear removes it)"
                    ));
                }
                if *if_exists {
                    return Ok(Plan::Unchanged);
                }
                return Err(format!("router \"{router}\" has no interface {interface}"));
            };
            let mut new = state.clone();
            new.routers[i].interfaces.remove(at);
            revalidate(state, &new)
                .map_err(|e| format!("router \"{router}\" still uses interface {interface}: {e}"))
        }
        Request::RouterGatewaySet {
            router,
            interface,
            address,
            nexthop,
            snat,
        } => gateway_set(state, router, interface, address, nexthop, *snat),
        Request::RouterGatewayClear { router, if_exists } => {
            let (i, r) = router_at(state, router)?;
            if r.gateway.is_none() {
                if *if_exists {
                    return Ok(Plan::Unchanged);
                }
                return Err(format!("router \"{router}\" has no gateway"));
            }
            let mut new = state.clone();
            new.routers[i].gateway = None;
            revalidate(state, &new)
                .map_err(|e| format!("router \"{router}\" still uses its gateway: {e}"))
        }
        Request::FipCreate {
            router,
            address,
            fixed,
            may_exist,
        }
        | Request::FipAssociate {
            router,
            address,
            fixed,
            may_exist,
        } => fip_add(state, router, address, fixed, *may_exist),
        Request::FipDelete {
            router,
            address,
            if_exists,
        }
        | Request::FipDisassociate {
            router,
            address,
            if_exists,
        } => {
            let (i, r) = router_at(state, router)?;
            let a = Ipv4Addr::from_str(address)
                .map_err(|_| format!("address \"{address}\": not an IPv4 address"))?;
            let Some(at) = r.floating_ips.iter().position(|f| f.address == a) else {
                if *if_exists {
                    return Ok(Plan::Unchanged);
                }
                return Err(format!("router \"{router}\" has no floating IP {a}"));
            };
            let mut new = state.clone();
            new.routers[i].floating_ips.remove(at);
            revalidate(state, &new)
        }
        Request::FipList { router } => {
            let routers: Vec<&Router> = match router {
                None => state.routers.iter().collect(),
                Some(id) => vec![find_router(state, id)?],
            };
            let list: Vec<FloatingIpEntry> = routers
                .into_iter()
                .flat_map(|r| floating_ip_entries(r, live))
                .collect();
            Ok(Plan::Answer(to_value(&list)))
        }
    }
}

/// What the node must have for `new` before it is written: the namespace of every router
/// that is new or moves to another namespace. (An interface missing in a namespace is found
/// when the router starts; routerd then restores the previous state.)
pub fn preflight(old: &DesiredState, new: &DesiredState) -> Result<(), String> {
    for r in &new.routers {
        if old
            .router(&r.id)
            .is_some_and(|o| o.namespace == r.namespace)
        {
            continue;
        }
        let path = crate::paths::netns_path(&r.namespace);
        if !path.exists() {
            return Err(format!(
                "router \"{}\": namespace \"{}\" does not exist (no {}; create it first, e.g. ip netns add {})",
                r.id,
                r.namespace,
                path.display(),
                r.namespace
            ));
        }
    }
    Ok(())
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
    use crate::maps::{Pinned, Rooms as _};
    if let Ok(counters) = Pinned::open(&r.id).and_then(|mut m| m.policy().rule_counters()) {
        for c in counters {
            if let Some(entry) = rules.get_mut(c.index) {
                entry.packets = Some(c.packets);
                entry.bytes = Some(c.bytes);
            }
        }
    }
    let counter = |(packets, bytes): (u64, u64)| Counter { packets, bytes };
    let counters = Pinned::open(&r.id)
        .and_then(|mut m| m.policy().fixed_counters())
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

/// The routes of `r` (of table `only`, or all): main first, then the tables by id; file
/// order within a table.
fn route_entries(r: &Router, only: Option<u32>) -> Vec<RouteEntry> {
    let mut routes: Vec<_> = r
        .routes
        .iter()
        .filter(|route| only.is_none_or(|t| route.table == t))
        .collect();
    routes.sort_by_key(|route| (route.table != TABLE_MAIN, route.table));
    routes
        .into_iter()
        .map(|route| RouteEntry {
            table: r.table_name(route.table),
            destination: route.destination.to_string(),
            nexthop: route.nexthop.to_string(),
        })
        .collect()
}

/// `a.b.c.d/len`, read only to compare with an interface's address (the file's checks
/// judge it otherwise).
fn parse_ifaddr(s: &str) -> Option<IfAddr> {
    let (addr, len) = s.split_once('/')?;
    Some(IfAddr {
        addr: Ipv4Addr::from_str(addr).ok()?,
        len: len.parse().ok().filter(|l| *l <= 32)?,
    })
}

fn router_create(
    state: &DesiredState,
    id: &str,
    namespace: &str,
    mode: Option<&str>,
    may_exist: bool,
) -> Result<Plan, String> {
    if let Some(r) = state.router(id) {
        // No mode asked: the file's default.
        let same = r.namespace == namespace && r.mode.to_string() == mode.unwrap_or("xdp");
        if same && may_exist {
            return Ok(Plan::Unchanged);
        }
        let what = format!(
            "router \"{id}\" exists (namespace \"{}\", mode {})",
            r.namespace, r.mode
        );
        return Err(if same {
            format!("{what} (use --may-exist)")
        } else {
            format!("{what}: delete it first or choose another id")
        });
    }
    if let Some(other) = state.routers.iter().find(|r| r.namespace == namespace) {
        return Err(format!(
            "namespace \"{namespace}\" is used by router \"{}\" (one router per namespace)",
            other.id
        ));
    }
    let mut entry = toml::Table::new();
    entry.insert("id".into(), id.into());
    entry.insert("namespace".into(), namespace.into());
    if let Some(m) = mode {
        entry.insert("mode".into(), m.into());
    }
    let mut doc = Doc::of(state)?;
    array(&mut doc.0, "router")?.push(toml::Value::Table(entry));
    doc.validate(state)
}

fn interface_add(
    state: &DesiredState,
    router: &str,
    name: &str,
    address: &str,
    may_exist: bool,
) -> Result<Plan, String> {
    let (i, r) = router_at(state, router)?;
    if r.gateway.as_ref().is_some_and(|g| g.interface == name) {
        return Err(format!(
            "interface {name} is the gateway interface of router \"{router}\" (router gateway set changes it)"
        ));
    }
    if let Some(existing) = r.interfaces.iter().find(|x| x.name == name) {
        let asked = parse_ifaddr(address).ok_or_else(|| {
            format!("address \"{address}\": not an IPv4 address with prefix length (a.b.c.d/len)")
        })?;
        if existing.address == asked {
            if may_exist {
                return Ok(Plan::Unchanged);
            }
            return Err(format!(
                "interface {name} with address {asked} exists on router \"{router}\" (use --may-exist)"
            ));
        }
        return Err(format!(
            "router \"{router}\" has interface {name} with address {} already (remove it first)",
            existing.address
        ));
    }
    let mut entry = toml::Table::new();
    entry.insert("name".into(), name.into());
    entry.insert("address".into(), address.into());
    let mut doc = Doc::of(state)?;
    array(doc.router(i)?, "interface")?.push(toml::Value::Table(entry));
    doc.validate(state)
}

fn gateway_set(
    state: &DesiredState,
    router: &str,
    interface: &str,
    address: &str,
    nexthop: &str,
    snat: Option<bool>,
) -> Result<Plan, String> {
    let (i, r) = router_at(state, router)?;
    if r.interfaces.iter().any(|x| x.name == interface) {
        return Err(format!(
            "interface {interface} is an internal interface of router \"{router}\" (router interface remove it first)"
        ));
    }
    let same_interface = r.gateway.as_ref().is_some_and(|g| g.interface == interface);
    let snat = snat.unwrap_or_else(|| r.gateway.as_ref().is_none_or(|g| g.snat));
    let mut doc = Doc::of(state)?;
    // The existing table, if any: its further external subnets stay.
    let g = doc.router(i)?.table("gateway")?;
    if !same_interface {
        g.remove("xdp_egress");
    }
    g.insert("interface".into(), interface.into());
    g.insert("address".into(), address.into());
    g.insert("nexthop".into(), nexthop.into());
    g.insert("snat".into(), snat.into());
    doc.validate(state)
}

fn fip_add(
    state: &DesiredState,
    router: &str,
    address: &str,
    fixed: &str,
    may_exist: bool,
) -> Result<Plan, String> {
    let (i, r) = router_at(state, router)?;
    // Addresses that do not parse get the file's message below.
    if let (Ok(a), Ok(f)) = (Ipv4Addr::from_str(address), Ipv4Addr::from_str(fixed)) {
        if let Some(existing) = r.floating_ips.iter().find(|x| x.address == a) {
            if existing.fixed == f {
                if may_exist {
                    return Ok(Plan::Unchanged);
                }
                return Err(format!(
                    "floating IP {a} is already associated with {f} on router \"{router}\" (use --may-exist)"
                ));
            }
            return Err(format!(
                "floating IP {a} is already associated with {} on router \"{router}\" (disassociate it first)",
                existing.fixed
            ));
        }
        if let Some(other) = r.floating_ips.iter().find(|x| x.fixed == f) {
            return Err(format!(
                "fixed IP {f} already has floating IP {} on router \"{router}\" (one floating IP per fixed IP)",
                other.address
            ));
        }
    }
    let mut entry = toml::Table::new();
    entry.insert("address".into(), address.into());
    entry.insert("fixed".into(), fixed.into());
    let mut doc = Doc::of(state)?;
    array(doc.router(i)?, "floating_ip")?.push(toml::Value::Table(entry));
    doc.validate(state)
}

/// The floating IPs of `r`, with the counters of its pinned maps when it runs.
fn floating_ip_entries(r: &Router, live: &Live) -> Vec<FloatingIpEntry> {
    let counters: BTreeMap<Ipv4Addr, crate::stats::FloatingIpStats> = if live.info(&r.id).is_some()
    {
        crate::stats::collect_nat(Some(&r.id))
            .map(|nat| {
                nat.floating_ips
                    .into_iter()
                    .map(|f| (f.floating_ip, f))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        BTreeMap::new()
    };
    r.floating_ips
        .iter()
        .map(|f| {
            let c = counters.get(&f.address).filter(|c| c.fixed_ip == f.fixed);
            FloatingIpEntry {
                router: r.id.clone(),
                address: f.address.to_string(),
                fixed: f.fixed.to_string(),
                in_packets: c.map(|c| c.in_packets),
                in_bytes: c.map(|c| c.in_bytes),
                out_packets: c.map(|c| c.out_packets),
                out_bytes: c.map(|c| c.out_bytes),
            }
        })
        .collect()
}

/// The running router's view of interface `name`: (ifindex, XDP egress).
fn attached(info: Option<&RouterInfo>, name: &str) -> Option<(u32, bool)> {
    info?
        .interfaces
        .iter()
        .find(|i| i.name == name)
        .map(|i| (i.ifindex, i.xdp_egress))
}

fn gateway_entry(r: &Router, live: &Live) -> Option<GatewayEntry> {
    let g = r.gateway.as_ref()?;
    let seen = attached(live.info(&r.id), &g.interface);
    Some(GatewayEntry {
        interface: g.interface.clone(),
        address: g.address.to_string(),
        nexthop: g.nexthop.to_string(),
        snat: g.snat,
        xdp_egress: seen.map(|(_, x)| x).or(g.xdp_egress),
        ifindex: seen.map(|(i, _)| i),
    })
}

fn router_summary(r: &Router, live: &Live) -> RouterSummary {
    RouterSummary {
        id: r.id.clone(),
        namespace: r.namespace.clone(),
        mode: r.mode.to_string(),
        interfaces: r.interfaces.iter().map(|i| i.name.clone()).collect(),
        gateway: gateway_entry(r, live),
        floating_ips: r.floating_ips.len(),
        running: live.info(&r.id).is_some(),
        start_error: live.waiting.get(&r.id).cloned(),
    }
}

fn router_detail(r: &Router, live: &Live) -> RouterDetail {
    let info = live.info(&r.id);
    let interfaces = r
        .interfaces
        .iter()
        .map(|i| {
            let seen = attached(info, &i.name);
            InterfaceEntry {
                name: i.name.clone(),
                address: i.address.to_string(),
                subnet: i.address.subnet().to_string(),
                source_check: i.source_check,
                allowed_sources: i.allowed_sources.iter().map(|p| p.to_string()).collect(),
                xdp_egress: seen.map(|(_, x)| x).or(i.xdp_egress),
                ifindex: seen.map(|(index, _)| index),
            }
        })
        .collect();
    let fw = firewall_listing_config(r);
    RouterDetail {
        id: r.id.clone(),
        namespace: r.namespace.clone(),
        mode: r.mode.to_string(),
        running: info.is_some(),
        start_error: live.waiting.get(&r.id).cloned(),
        interfaces,
        gateway: gateway_entry(r, live),
        external_subnets: r
            .external_subnets()
            .into_iter()
            .map(|s| ExternalSubnetEntry {
                subnet: s.address.subnet().to_string(),
                address: s.address.to_string(),
                nexthop: s.nexthop.to_string(),
            })
            .collect(),
        tables: r
            .tables
            .iter()
            .map(|t| TableEntry {
                name: t.name.clone(),
                id: t.id,
            })
            .collect(),
        routes: route_entries(r, None),
        rules: rule_list(r),
        floating_ips: floating_ip_entries(r, live),
        firewall: fw,
        nat: NatEntry {
            snat_ports: r.nat.snat_ports.to_string(),
            slow_path_snat_ports: r.nat.slow_path_snat_ports.to_string(),
            max_sessions: r.nat.max_sessions,
            metadata_port: r.nat.metadata_port,
        },
    }
}

/// The firewall of `r` in brief (no counters).
fn firewall_listing_config(r: &Router) -> FirewallSummary {
    FirewallSummary {
        enabled: r.firewall.is_some(),
        default: r
            .firewall
            .as_ref()
            .map(|f| if f.default_allow { "allow" } else { "deny" }.into()),
        rules: r.firewall.as_ref().map_or(0, |f| f.rules.len()),
        steering: r.steering.as_ref().map(|s| SteeringEntry {
            nexthop: s.nexthop.to_string(),
            gateway_nexthop: s.gateway_nexthop.map(|a| a.to_string()),
            interfaces: s.interfaces.clone(),
        }),
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
    fn router_create_and_delete() {
        let s = state();
        let created = |request: Value| match plan(
            &s,
            &parse_request(&request.to_string()).expect("a request"),
        ) {
            Ok(Plan::Change(new)) => new,
            other => panic!("{request}: {other:?}"),
        };
        let refused = |request: Value| match plan(
            &s,
            &parse_request(&request.to_string()).expect("a request"),
        ) {
            Err(e) => e,
            other => panic!("{request}: expected an error, got {other:?}"),
        };
        let new = created(
            json!({"op": "router_create", "router": "r2", "namespace": "ns2", "mode": "tc"}),
        );
        assert_eq!(new.routers.len(), 2);
        assert_eq!(new.routers[1].mode, crate::config::Mode::Tc);
        assert_eq!(changed_routers(&s, &new), ["r2"]);
        let new = created(json!({"op": "router_create", "router": "r2", "namespace": "ns2"}));
        assert_eq!(new.routers[1].mode, crate::config::Mode::Xdp);
        assert!(new.routers[1].interfaces.is_empty() && new.routers[1].gateway.is_none());
        for (request, problem) in [
            (
                json!({"op": "router_create", "router": "r1", "namespace": "ns1"}),
                "router \"r1\" exists (namespace \"ns1\", mode xdp) (use --may-exist)",
            ),
            (
                json!({"op": "router_create", "router": "r1", "namespace": "ns9", "may_exist": true}),
                "router \"r1\" exists (namespace \"ns1\", mode xdp): delete it first",
            ),
            (
                json!({"op": "router_create", "router": "r1", "namespace": "ns1", "mode": "tc", "may_exist": true}),
                "delete it first",
            ),
            (
                json!({"op": "router_create", "router": "r2", "namespace": "ns1"}),
                "namespace \"ns1\" is used by router \"r1\"",
            ),
            (
                json!({"op": "router_create", "router": "r2", "namespace": "ns2", "mode": "ebpf"}),
                "router[1] (id \"r2\").mode = \"ebpf\": must be \"xdp\" or \"tc\"",
            ),
            (
                json!({"op": "router_create", "router": "r 2", "namespace": "ns2"}),
                ".id = \"r 2\": must be 1-32 characters",
            ),
            (
                json!({"op": "router_delete", "router": "r9"}),
                "router \"r9\" does not exist",
            ),
        ] {
            let e = refused(request.clone());
            assert!(e.contains(problem), "{request}: {e}");
        }
        assert_eq!(
            plan(
                &s,
                &parse_request(
                    r#"{"op":"router_create","router":"r1","namespace":"ns1","may_exist":true}"#
                )
                .expect("request")
            ),
            Ok(Plan::Unchanged)
        );
        assert_eq!(
            plan(
                &s,
                &parse_request(r#"{"op":"router_delete","router":"r9","if_exists":true}"#)
                    .expect("request")
            ),
            Ok(Plan::Unchanged)
        );
        let gone = created(json!({"op": "router_delete", "router": "r1"}));
        assert!(gone.routers.is_empty());
        // An empty state takes a router too.
        let empty = DesiredState::parse("").expect("valid");
        assert!(matches!(
            plan(&empty, &parse_request(r#"{"op":"router_create","router":"a","namespace":"n"}"#).expect("request")),
            Ok(Plan::Change(n)) if n.routers.len() == 1
        ));
    }

    #[test]
    fn interfaces_add_and_remove() {
        let s = state();
        let new = changed(
            &s,
            json!({"op": "router_interface_add", "interface": "qr-b", "address": "10.0.2.1/24"}),
        );
        assert_eq!(new.routers[0].interfaces.len(), 3);
        unchanged(
            &s,
            json!({"op": "router_interface_add", "interface": "qr-a", "address": "10.0.1.1/24", "may_exist": true}),
        );
        for (request, problem) in [
            (
                json!({"op": "router_interface_add", "interface": "qr-b", "address": "10.0.1.9/24"}),
                "interface[2].address = \"10.0.1.9/24\": subnet 10.0.1.0/24 overlaps the subnet of interface qr-a",
            ),
            (
                json!({"op": "router_interface_add", "interface": "qr-b", "address": "198.18.0.9/16"}),
                "overlaps the subnet of interface qg-1",
            ),
            (
                json!({"op": "router_interface_add", "interface": "qr-b", "address": "10.0.2.1"}),
                "interface[2].address = \"10.0.2.1\": not an IPv4 address with prefix length",
            ),
            (
                json!({"op": "router_interface_add", "interface": "qr-b", "address": "10.0.2.0/24"}),
                "is the network or broadcast address",
            ),
            (
                json!({"op": "router_interface_add", "interface": "qr-a", "address": "10.0.1.1/24"}),
                "interface qr-a with address 10.0.1.1/24 exists on router \"r1\" (use --may-exist)",
            ),
            (
                json!({"op": "router_interface_add", "interface": "qr-a", "address": "10.0.3.1/24", "may_exist": true}),
                "router \"r1\" has interface qr-a with address 10.0.1.1/24 already",
            ),
            (
                json!({"op": "router_interface_add", "interface": "qg-1", "address": "10.0.3.1/24"}),
                "interface qg-1 is the gateway interface of router \"r1\"",
            ),
            (
                json!({"op": "router_interface_remove", "interface": "qr-a"}),
                "router \"r1\" still uses interface qr-a: invalid configuration: router[0] (id \"r1\").route[0].nexthop = \"10.0.1.254\": is on no subnet",
            ),
            (
                json!({"op": "router_interface_remove", "interface": "qr-x"}),
                "router \"r1\" has no interface qr-x",
            ),
            (
                json!({"op": "router_interface_remove", "interface": "qg-1", "if_exists": true}),
                "is the gateway interface of router \"r1\", not an internal one",
            ),
        ] {
            let e = error(&s, request.clone());
            assert!(e.contains(problem), "{request}: {e}");
        }
        let new = changed(
            &s,
            json!({"op": "router_interface_remove", "interface": "qr-fw"}),
        );
        assert_eq!(new.routers[0].interfaces.len(), 1);
        unchanged(
            &s,
            json!({"op": "router_interface_remove", "interface": "qr-x", "if_exists": true}),
        );
    }

    #[test]
    fn gateway_set_and_clear() {
        let s = state();
        unchanged(
            &s,
            json!({"op": "router_gateway_set", "interface": "qg-1", "address": "198.18.0.2/24", "nexthop": "198.18.0.1"}),
        );
        let new = changed(
            &s,
            json!({"op": "router_gateway_set", "interface": "qg-1", "address": "198.18.0.2/24", "nexthop": "198.18.0.1", "snat": false}),
        );
        assert_eq!(new.routers[0].gateway.as_ref().map(|g| g.snat), Some(false));
        // Unsaid, SNAT stays as it is.
        let again = changed(
            &new,
            json!({"op": "router_gateway_set", "interface": "qg-1", "address": "198.18.0.2/24", "nexthop": "198.18.0.3"}),
        );
        assert_eq!(
            again.routers[0].gateway.as_ref().map(|g| g.snat),
            Some(false)
        );
        for (request, problem) in [
            (
                json!({"op": "router_gateway_set", "interface": "qg-1", "address": "198.18.0.2/24", "nexthop": "192.0.2.1"}),
                "gateway.nexthop = \"192.0.2.1\": must be another host on the gateway subnet 198.18.0.0/24",
            ),
            (
                json!({"op": "router_gateway_set", "interface": "qr-a", "address": "198.18.0.2/24", "nexthop": "198.18.0.1"}),
                "interface qr-a is an internal interface of router \"r1\"",
            ),
            (
                json!({"op": "router_gateway_set", "interface": "qg-1", "address": "10.0.1.200/24", "nexthop": "10.0.1.1"}),
                "overlaps the subnet of",
            ),
        ] {
            let e = error(&s, request.clone());
            assert!(e.contains(problem), "{request}: {e}");
        }
        let with_fip = changed(
            &s,
            json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5"}),
        );
        let e = error(&with_fip, json!({"op": "router_gateway_clear"}));
        assert!(
            e.contains("router \"r1\" still uses its gateway: invalid configuration: router[0] (id \"r1\").floating_ip[0].address = \"198.18.0.10\": a floating IP needs a router gateway"),
            "{e}"
        );
        let cleared = changed(&s, json!({"op": "router_gateway_clear"}));
        assert!(cleared.routers[0].gateway.is_none());
        let e = error(&cleared, json!({"op": "router_gateway_clear"}));
        assert_eq!(e, "router \"r1\" has no gateway");
        unchanged(
            &cleared,
            json!({"op": "router_gateway_clear", "if_exists": true}),
        );
        let set = changed(
            &cleared,
            json!({"op": "router_gateway_set", "interface": "qg-2", "address": "203.0.113.2/24", "nexthop": "203.0.113.1"}),
        );
        assert_eq!(set.routers[0].gateway.as_ref().map(|g| g.snat), Some(true));
        // Further external subnets and, on the same interface, xdp_egress stay.
        let text = BASE.replace(
            "nexthop = \"198.18.0.1\"\n",
            "nexthop = \"198.18.0.1\"\nxdp_egress = true\n\n[[router.gateway.subnet]]\naddress = \"203.0.113.2/24\"\nnexthop = \"203.0.113.1\"\n",
        );
        let s = DesiredState::parse(&text).expect("valid");
        let kept = changed(
            &s,
            json!({"op": "router_gateway_set", "interface": "qg-1", "address": "198.18.0.3/24", "nexthop": "198.18.0.1", "snat": false}),
        );
        let g = kept.routers[0].gateway.as_ref().expect("a gateway");
        assert_eq!(
            (g.address.to_string(), g.snat, g.xdp_egress),
            ("198.18.0.3/24".into(), false, Some(true))
        );
        assert_eq!(g.subnets.len(), 1);
        let moved = changed(
            &s,
            json!({"op": "router_gateway_set", "interface": "qg-9", "address": "198.18.0.2/24", "nexthop": "198.18.0.1"}),
        );
        let g = moved.routers[0].gateway.as_ref().expect("a gateway");
        assert_eq!((g.xdp_egress, g.subnets.len()), (None, 1));
    }

    #[test]
    fn floating_ips_create_associate_and_delete() {
        let s = state();
        let s = changed(
            &s,
            json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5"}),
        );
        assert_eq!(s.routers[0].floating_ips.len(), 1);
        unchanged(
            &s,
            json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5", "may_exist": true}),
        );
        unchanged(
            &s,
            json!({"op": "fip_associate", "address": "198.18.0.10", "fixed": "10.0.1.5", "may_exist": true}),
        );
        for (request, problem) in [
            (
                json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5"}),
                "floating IP 198.18.0.10 is already associated with 10.0.1.5 on router \"r1\" (use --may-exist)",
            ),
            (
                json!({"op": "fip_associate", "address": "198.18.0.10", "fixed": "10.0.1.6", "may_exist": true}),
                "floating IP 198.18.0.10 is already associated with 10.0.1.5 on router \"r1\" (disassociate it first)",
            ),
            (
                json!({"op": "fip_create", "address": "198.18.0.11", "fixed": "10.0.1.5"}),
                "fixed IP 10.0.1.5 already has floating IP 198.18.0.10",
            ),
            (
                json!({"op": "fip_create", "address": "198.18.1.10", "fixed": "10.0.1.6"}),
                "floating_ip[1].address = \"198.18.1.10\": is in no external subnet of this router (198.18.0.0/24)",
            ),
            (
                json!({"op": "fip_create", "address": "198.18.0.11", "fixed": "10.0.9.6"}),
                "floating_ip[1].fixed = \"10.0.9.6\": is on no internal subnet of this router",
            ),
            (
                json!({"op": "fip_create", "address": "198.18.0.2", "fixed": "10.0.1.6"}),
                "is one of the router's gateway IPs",
            ),
            (
                json!({"op": "fip_create", "address": "nope", "fixed": "10.0.1.6"}),
                "floating_ip[1].address = \"nope\": not an IPv4 address",
            ),
            (
                json!({"op": "fip_delete", "address": "198.18.0.11"}),
                "router \"r1\" has no floating IP 198.18.0.11",
            ),
            (
                json!({"op": "fip_disassociate", "address": "198.18.0.11"}),
                "router \"r1\" has no floating IP 198.18.0.11",
            ),
            (
                json!({"op": "fip_delete", "address": "x"}),
                "address \"x\": not an IPv4 address",
            ),
        ] {
            let e = error(&s, request.clone());
            assert!(e.contains(problem), "{request}: {e}");
        }
        let s2 = changed(
            &s,
            json!({"op": "fip_associate", "address": "198.18.0.11", "fixed": "10.99.0.5"}),
        );
        let e = error(
            &s2,
            json!({"op": "router_interface_remove", "interface": "qr-fw"}),
        );
        assert!(
            e.contains("still uses interface qr-fw")
                && e.contains("floating_ip[1].fixed = \"10.99.0.5\""),
            "{e}"
        );
        let s3 = changed(
            &s2,
            json!({"op": "fip_disassociate", "address": "198.18.0.11"}),
        );
        assert_eq!(s3, s);
        let s4 = changed(&s, json!({"op": "fip_delete", "address": "198.18.0.10"}));
        assert!(s4.routers[0].floating_ips.is_empty());
        unchanged(
            &s4,
            json!({"op": "fip_delete", "address": "198.18.0.10", "if_exists": true}),
        );
        let listing = answer(&s2, json!({"op": "fip_list"}));
        assert_eq!(
            listing,
            json!([
                {"router": "r1", "address": "198.18.0.10", "fixed": "10.0.1.5", "in_packets": null,
                 "in_bytes": null, "out_packets": null, "out_bytes": null},
                {"router": "r1", "address": "198.18.0.11", "fixed": "10.99.0.5", "in_packets": null,
                 "in_bytes": null, "out_packets": null, "out_bytes": null},
            ])
        );
        assert_eq!(
            plan(&s2, &Request::FipList { router: None }).ok(),
            Some(Plan::Answer(listing))
        );
        assert_eq!(
            plan(
                &s2,
                &Request::FipList {
                    router: Some("r9".into())
                }
            ),
            Err("router \"r9\" does not exist".into())
        );
    }

    #[test]
    fn router_list_and_show_have_the_documented_shape() {
        let s = changed(
            &state(),
            json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5"}),
        );
        assert_eq!(
            plan(&s, &Request::RouterList),
            Ok(Plan::Answer(json!([{
                "id": "r1", "namespace": "ns1", "mode": "xdp", "interfaces": ["qr-a", "qr-fw"],
                "gateway": {"interface": "qg-1", "address": "198.18.0.2/24", "nexthop": "198.18.0.1",
                            "snat": true, "xdp_egress": null, "ifindex": null},
                "floating_ips": 1, "running": false, "start_error": null
            }])))
        );
        let show = answer(&s, json!({"op": "router_show"}));
        let keys: Vec<&str> = show
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut expected = vec![
            "id",
            "namespace",
            "mode",
            "running",
            "start_error",
            "interfaces",
            "gateway",
            "external_subnets",
            "tables",
            "routes",
            "rules",
            "floating_ips",
            "firewall",
            "nat",
        ];
        expected.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, expected);
        assert_eq!(
            show["interfaces"][0],
            json!({"name": "qr-a", "address": "10.0.1.1/24", "subnet": "10.0.1.0/24",
                   "source_check": true, "allowed_sources": [], "xdp_egress": null, "ifindex": null})
        );
        assert_eq!(
            show["external_subnets"],
            json!([{"subnet": "198.18.0.0/24", "address": "198.18.0.2/24", "nexthop": "198.18.0.1"}])
        );
        assert_eq!(show["tables"], json!([{"name": "vfw", "id": 100}]));
        assert_eq!(show["routes"][0]["destination"], "10.20.0.0/16");
        assert_eq!(show["rules"][0]["priority"], 1000);
        assert_eq!(show["floating_ips"][0]["fixed"], "10.0.1.5");
        assert_eq!(
            show["firewall"],
            json!({"enabled": false, "default": null, "rules": 0, "steering": null})
        );
        assert_eq!(
            show["nat"],
            json!({"snat_ports": "1024-64511", "slow_path_snat_ports": "64512-65535",
                   "max_sessions": 65536, "metadata_port": 9697})
        );
        // A running router: its ifindexes and XDP egress decisions.
        let live = Live {
            routers: [(
                "r1".to_string(),
                RouterInfo {
                    router: "r1".into(),
                    namespace: "ns1".into(),
                    mode: "xdp".into(),
                    interfaces: vec![crate::router::InterfaceInfo {
                        name: "qr-a".into(),
                        ifindex: 7,
                        role: "internal".into(),
                        xdp_egress: false,
                    }],
                },
            )]
            .into(),
            ..Live::default()
        };
        let Ok(Plan::Answer(show)) = plan_with(
            &s,
            &Request::RouterShow {
                router: "r1".into(),
            },
            &live,
        ) else {
            panic!("router_show answers");
        };
        assert_eq!(show["running"], true);
        assert_eq!(show["interfaces"][0]["ifindex"], 7);
        assert_eq!(show["interfaces"][0]["xdp_egress"], false);
        assert_eq!(show["interfaces"][1]["ifindex"], Value::Null);
        assert_eq!(show["start_error"], Value::Null);
        // A router whose start failed: not running, and why.
        let live = Live {
            waiting: [("r1".to_string(), "interface qr-a is missing".to_string())].into(),
            ..Live::default()
        };
        for request in [
            Request::RouterList,
            Request::RouterShow {
                router: "r1".into(),
            },
        ] {
            let Ok(Plan::Answer(answer)) = plan_with(&s, &request, &live) else {
                panic!("{request:?} answers");
            };
            let r = if answer.is_array() {
                &answer[0]
            } else {
                &answer
            };
            assert_eq!(r["running"], false);
            assert_eq!(r["start_error"], "interface qr-a is missing");
        }
    }

    #[test]
    fn preflight_needs_the_namespaces_of_new_routers() {
        let s = state();
        // r1 keeps its namespace: not checked again.
        assert_eq!(preflight(&s, &s), Ok(()));
        let Ok(Plan::Change(new)) = plan(
            &s,
            &parse_request(r#"{"op":"router_create","router":"r2","namespace":"no-such-ns-here"}"#)
                .expect("request"),
        ) else {
            panic!("a change");
        };
        let e = preflight(&s, &new).expect_err("missing namespace");
        assert!(
            e.contains("router \"r2\": namespace \"no-such-ns-here\" does not exist (no /run/netns/no-such-ns-here"),
            "{e}"
        );
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
