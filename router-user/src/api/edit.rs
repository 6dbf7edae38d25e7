//! The edits of the desired state. Each reads the request's text values as the file reads
//! the same keys ([`RouterText`]), changes a copy of the typed state, and checks the copy
//! whole with [`DesiredState::validate`]: a bad edit gets the message the same content
//! gets in a file, naming the key (`router[0] (id "r1").route[1].nexthop`).

use std::{net::Ipv4Addr, str::FromStr};

use router_common::TABLE_MAIN;

use super::{planner::Plan, protocol::ApiError};
use crate::config::{
    self, DesiredState, Firewall, IfAddr, Prefix, Router, RouterText, RuleText, Steering,
};

/// Router `id` of a state, to edit.
pub(super) struct Target<'a> {
    state: &'a DesiredState,
    index: usize,
    router: &'a Router,
}

impl<'a> Target<'a> {
    pub(super) fn of(state: &'a DesiredState, id: &str) -> Result<Self, ApiError> {
        state
            .routers
            .iter()
            .enumerate()
            .find(|(_, r)| r.id == id)
            .map(|(index, router)| Self {
                state,
                index,
                router,
            })
            .ok_or_else(|| {
                ApiError::not_found(format!("router \"{id}\" does not exist"))
                    .at(format!("router {id}"))
            })
    }

    pub(super) fn router(&self) -> &'a Router {
        self.router
    }

    /// The request's values for this router, read as the file reads them.
    pub(super) fn text(&self) -> RouterText<'a> {
        RouterText::new(self.index, self.router)
    }

    /// The state with this router edited by `edit` (not checked).
    pub(super) fn edited(&self, edit: impl FnOnce(&mut Router)) -> DesiredState {
        let mut new = self.state.clone();
        edit(&mut new.routers[self.index]);
        new
    }

    /// The state with this router edited by `edit`, checked whole.
    pub(super) fn change(&self, edit: impl FnOnce(&mut Router)) -> Result<Plan, ApiError> {
        checked(self.state, self.edited(edit))
    }
}

/// `new`, checked whole, as a plan for `state`.
fn checked(state: &DesiredState, new: DesiredState) -> Result<Plan, ApiError> {
    new.validate()?;
    Ok(change(state, new))
}

/// A valid `new` as a plan for `state`: nothing to do when it is `state`.
pub(super) fn change(state: &DesiredState, new: DesiredState) -> Plan {
    if new == *state {
        Plan::Unchanged
    } else {
        Plan::Change(new)
    }
}

/// A prefix as a request names a route by (`route_del`).
fn parse_prefix(key: &str, s: &str) -> Result<Prefix, ApiError> {
    let bad = |problem: &str| ApiError::invalid(format!("{key} \"{s}\": {problem}")).at(key);
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

/// A table as a request names it (`route_del`, `route_list`): "main", a table's name, or
/// an id.
pub(super) fn resolve_table(r: &Router, key: &str, value: &str) -> Result<u32, ApiError> {
    if value == "main" {
        return Ok(TABLE_MAIN);
    }
    if let Some(t) = r.tables.iter().find(|t| t.name == value) {
        return Ok(t.id);
    }
    match value.parse::<u32>() {
        Ok(TABLE_MAIN) => Ok(TABLE_MAIN),
        Ok(id) if r.tables.iter().any(|t| t.id == id) => Ok(id),
        _ => Err(ApiError::invalid(format!(
            "{key} \"{value}\": is not \"main\" or a table of router \"{}\" ([[router.table]] name or id)",
            r.id
        ))),
    }
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

/// A route the request gives as text.
pub(super) struct RouteText<'a> {
    pub destination: &'a str,
    pub nexthop: &'a str,
    pub table: Option<&'a str>,
}

pub(super) fn route_add(
    state: &DesiredState,
    router: &str,
    text: RouteText<'_>,
    may_exist: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let r = t.router;
    // Appended: checked like the file's last route.
    let route = t
        .text()
        .route(r.routes.len(), text.destination, text.nexthop, text.table)?;
    let appended = match t.change(|r| r.routes.push(route.clone())) {
        Ok(plan) => return Ok(plan),
        Err(e) => e,
    };
    // It may only clash with a route of the same table and destination: checked alone, the
    // route tells whether that is all.
    if t.edited(|r| r.routes = vec![route.clone()])
        .validate()
        .is_err()
    {
        return Err(appended);
    }
    let Some(old) = r
        .routes
        .iter()
        .find(|x| x.table == route.table && x.destination == route.destination)
    else {
        return Err(appended);
    };
    let table = r.table_name(route.table);
    if old.nexthop != route.nexthop {
        return Err(ApiError::conflict(format!(
            "router \"{router}\" has a route to {} in table {table} via {} already (delete it first)",
            old.destination, old.nexthop
        )));
    }
    if may_exist {
        return Ok(Plan::Unchanged);
    }
    Err(ApiError::conflict(format!(
        "route to {} via {} in table {table} exists on router \"{router}\" (use --may-exist)",
        old.destination, old.nexthop
    )))
}

pub(super) fn route_del(
    state: &DesiredState,
    router: &str,
    destination: &str,
    table: Option<&str>,
    if_exists: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let r = t.router;
    let destination = parse_prefix("destination", destination)?;
    let table = match table {
        None => TABLE_MAIN,
        Some(name) => resolve_table(r, "table", name)?,
    };
    let Some(at) = r
        .routes
        .iter()
        .position(|x| x.destination == destination && x.table == table)
    else {
        if if_exists {
            return Ok(Plan::Unchanged);
        }
        return Err(ApiError::not_found(format!(
            "router \"{router}\" has no route to {destination} in table {}",
            r.table_name(table)
        )));
    };
    t.change(|r| {
        r.routes.remove(at);
    })
}

pub(super) fn rule_add(
    state: &DesiredState,
    router: &str,
    text: &RuleText<'_>,
    may_exist: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let r = t.router;
    let priority = text.priority;
    let existing = r.rules.iter().find(|x| i64::from(x.priority) == priority);
    // In the place of the rule with this priority, if any (last), to compare the two.
    let others = r.rules.len() - usize::from(existing.is_some());
    let added = t.text().rule(others, text)?;
    let new = t.edited(|r| {
        r.rules.retain(|x| i64::from(x.priority) != priority);
        r.rules.push(added.clone());
    });
    new.validate()?;
    let Some(old) = existing else {
        return Ok(change(state, new));
    };
    if added == *old {
        if may_exist {
            return Ok(Plan::Unchanged);
        }
        return Err(ApiError::conflict(format!(
            "rule priority {priority} exists on router \"{router}\" (use --may-exist)"
        )));
    }
    Err(ApiError::conflict(format!(
        "rule priority {priority} exists on router \"{router}\" with other selectors or table ({}); delete it first or choose another priority",
        describe_rule(r, old)
    )))
}

fn describe_rule(r: &Router, rule: &config::Rule) -> String {
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

pub(super) fn rule_del(
    state: &DesiredState,
    router: &str,
    priority: i64,
    if_exists: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let Some(at) = t
        .router
        .rules
        .iter()
        .position(|x| i64::from(x.priority) == priority)
    else {
        if if_exists {
            return Ok(Plan::Unchanged);
        }
        return Err(ApiError::not_found(format!(
            "router \"{router}\" has no rule with priority {priority}"
        )));
    };
    t.change(|r| {
        r.rules.remove(at);
    })
}

/// Sets the firewall's default policy, creating the firewall if the router has none.
pub(super) fn fw_default(
    state: &DesiredState,
    router: &str,
    policy: &str,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let default_allow = match policy {
        "allow" => true,
        "deny" => false,
        _ => {
            return Err(ApiError::invalid(format!(
                "policy \"{policy}\": must be \"allow\" or \"deny\""
            )));
        }
    };
    t.change(|r| {
        r.firewall
            .get_or_insert_with(|| Firewall {
                default_allow,
                rules: Vec::new(),
            })
            .default_allow = default_allow;
    })
}

/// What `fw_steer_set` changes; what it leaves out stays as it is.
pub(super) struct SteerText<'a> {
    pub interface: Option<&'a str>,
    pub nexthop: Option<&'a str>,
    pub gateway_nexthop: Option<&'a str>,
}

pub(super) fn fw_steer_set(
    state: &DesiredState,
    router: &str,
    text: SteerText<'_>,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    if text.interface.is_none() && text.nexthop.is_none() && text.gateway_nexthop.is_none() {
        return Err(ApiError::invalid(
            "nothing to set: give an interface to steer, a nexthop or a gateway_nexthop",
        ));
    }
    let current = t.router.steering.as_ref();
    let values = t.text();
    let nexthop = match (text.nexthop, current) {
        (Some(s), _) => values.steering_nexthop(s)?,
        (None, Some(c)) => c.nexthop,
        (None, None) => {
            return Err(ApiError::invalid(format!(
                "router \"{router}\" has no steering yet: give the firewall's address (nexthop) to create it"
            )));
        }
    };
    let gateway_nexthop = match text.gateway_nexthop {
        Some(s) => Some(values.steering_gateway_nexthop(s)?),
        None => current.and_then(|s| s.gateway_nexthop),
    };
    let mut interfaces: Vec<String> = current.map(|s| s.interfaces.clone()).unwrap_or_default();
    if let Some(name) = text.interface
        && !interfaces.iter().any(|n| n == name)
    {
        interfaces.push(name.to_string());
    }
    t.change(|r| {
        r.steering = Some(Steering {
            nexthop,
            gateway_nexthop,
            interfaces,
        });
    })
}

/// Stops steering `interface`, or, without one, removes the steering altogether.
pub(super) fn fw_steer_clear(
    state: &DesiredState,
    router: &str,
    interface: Option<&str>,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let Some(name) = interface else {
        return t.change(|r| r.steering = None);
    };
    let Some(at) = t
        .router
        .steering
        .as_ref()
        .and_then(|s| s.interfaces.iter().position(|n| n == name))
    else {
        return Err(ApiError::not_found(format!(
            "interface \"{name}\" is not steered on router \"{router}\""
        )));
    };
    t.change(|r| {
        if let Some(s) = &mut r.steering {
            s.interfaces.remove(at);
        }
    })
}

pub(super) fn router_create(
    state: &DesiredState,
    id: &str,
    namespace: &str,
    mode: Option<&str>,
    may_exist: bool,
) -> Result<Plan, ApiError> {
    if let Some(r) = state.router(id) {
        // No mode asked: the file's default.
        let same = r.namespace == namespace && r.mode.to_string() == mode.unwrap_or("auto");
        if same && may_exist {
            return Ok(Plan::Unchanged);
        }
        let what = format!(
            "router \"{id}\" exists (namespace \"{}\", mode {})",
            r.namespace, r.mode
        );
        let message = if same {
            format!("{what} (use --may-exist)")
        } else {
            format!("{what}: delete it first or choose another id")
        };
        return Err(ApiError::conflict(message).at(format!("router {id}")));
    }
    if let Some(other) = state.routers.iter().find(|r| r.namespace == namespace) {
        return Err(ApiError::conflict(format!(
            "namespace \"{namespace}\" is used by router \"{}\" (one router per namespace)",
            other.id
        )));
    }
    let router = config::new_router(state.routers.len(), id, namespace, mode)?;
    let mut new = state.clone();
    new.routers.push(router);
    checked(state, new)
}

pub(super) fn router_delete(
    state: &DesiredState,
    router: &str,
    if_exists: bool,
) -> Result<Plan, ApiError> {
    let Some(at) = state.routers.iter().position(|r| r.id == router) else {
        if if_exists {
            return Ok(Plan::Unchanged);
        }
        return Err(
            ApiError::not_found(format!("router \"{router}\" does not exist"))
                .at(format!("router {router}")),
        );
    };
    let mut new = state.clone();
    new.routers.remove(at);
    checked(state, new)
}

pub(super) fn interface_add(
    state: &DesiredState,
    router: &str,
    name: &str,
    address: &str,
    may_exist: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let r = t.router;
    if r.gateway.as_ref().is_some_and(|g| g.interface == name) {
        return Err(ApiError::conflict(format!(
            "interface {name} is the gateway interface of router \"{router}\" (router gateway set changes it)"
        )));
    }
    if let Some(existing) = r.interfaces.iter().find(|x| x.name == name) {
        let asked = parse_ifaddr(address).ok_or_else(|| {
            ApiError::invalid(format!(
                "address \"{address}\": not an IPv4 address with prefix length (a.b.c.d/len)"
            ))
            .at("address")
        })?;
        if existing.address == asked {
            if may_exist {
                return Ok(Plan::Unchanged);
            }
            return Err(ApiError::conflict(format!(
                "interface {name} with address {asked} exists on router \"{router}\" (use --may-exist)"
            )));
        }
        return Err(ApiError::conflict(format!(
            "router \"{router}\" has interface {name} with address {} already (remove it first)",
            existing.address
        )));
    }
    let interface = t.text().interface(r.interfaces.len(), name, address)?;
    t.change(|r| r.interfaces.push(interface))
}

pub(super) fn interface_remove(
    state: &DesiredState,
    router: &str,
    interface: &str,
    if_exists: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let r = t.router;
    let Some(at) = r.interfaces.iter().position(|x| x.name == interface) else {
        if r.gateway.as_ref().is_some_and(|g| g.interface == interface) {
            return Err(ApiError::conflict(format!(
                "interface {interface} is the gateway interface of router \"{router}\", not an internal one (router gateway clear removes it)"
            )));
        }
        if if_exists {
            return Ok(Plan::Unchanged);
        }
        return Err(ApiError::not_found(format!(
            "router \"{router}\" has no interface {interface}"
        )));
    };
    t.change(|r| {
        r.interfaces.remove(at);
    })
    .map_err(|e| {
        ApiError::conflict(format!(
            "router \"{router}\" still uses interface {interface}: {e}"
        ))
        .at(format!("interface {interface}"))
    })
}

/// The external gateway a request sets.
pub(super) struct GatewayText<'a> {
    pub interface: &'a str,
    pub address: &'a str,
    pub nexthop: &'a str,
    /// Default SNAT; `None`: as it is, or on for a new gateway.
    pub snat: Option<bool>,
}

/// Sets the external gateway; its further external subnets and, on the same interface, its
/// XDP egress setting stay.
pub(super) fn gateway_set(
    state: &DesiredState,
    router: &str,
    text: GatewayText<'_>,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let r = t.router;
    let interface = text.interface;
    if r.interfaces.iter().any(|x| x.name == interface) {
        return Err(ApiError::conflict(format!(
            "interface {interface} is an internal interface of router \"{router}\" (router interface remove it first)"
        )));
    }
    let old = r.gateway.as_ref();
    let snat = text.snat.unwrap_or_else(|| old.is_none_or(|g| g.snat));
    let mut gateway = t
        .text()
        .gateway(interface, text.address, text.nexthop, snat)?;
    if let Some(old) = old {
        gateway.subnets = old.subnets.clone();
        if old.interface == interface {
            gateway.xdp_egress = old.xdp_egress;
        }
    }
    t.change(|r| r.gateway = Some(gateway))
}

pub(super) fn gateway_clear(
    state: &DesiredState,
    router: &str,
    if_exists: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    if t.router.gateway.is_none() {
        if if_exists {
            return Ok(Plan::Unchanged);
        }
        return Err(ApiError::not_found(format!(
            "router \"{router}\" has no gateway"
        )));
    }
    t.change(|r| r.gateway = None).map_err(|e| {
        ApiError::conflict(format!("router \"{router}\" still uses its gateway: {e}")).at("gateway")
    })
}
