//! Routing tables, policy rules (`ip rule`) and firewall steering.

use std::{collections::HashSet, net::Ipv4Addr};

use router_common::{MAX_RULES, PolicyRule, TABLE_GENERATED_MIN, TABLE_MAIN};
use serde::Deserialize;

use super::{Ctx, Gateway, Interface, Prefix, host_on, parse_ip, parse_prefix_or_addr, value_text};
use crate::error::ConfigError;

/// A routing table besides main (`[[router.table]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    /// As `ip route ... table ID` numbers it: 1-252 or 256 up to (not including)
    /// [`TABLE_GENERATED_MIN`].
    pub id: u32,
}

/// One policy rule (`[[router.rule]]`), like `ip rule add priority P [iif I] [from F]
/// [to T] lookup TABLE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-29999, unique within the router; lower is walked first.
    pub priority: u32,
    /// Ingress interface (the gateway's or an internal one); `None` = any.
    pub iif: Option<String>,
    pub from: Prefix,
    pub to: Prefix,
    /// Table id ([`TABLE_MAIN`] or one of [`super::Router::tables`]).
    pub table: u32,
}

impl Rule {
    /// The rule as the fast path matches it; `iif_index` is the ifindex of `self.iif` in
    /// the router's namespace (0 when `iif` is `None`: any interface).
    pub fn to_policy_rule(&self, iif_index: u32) -> PolicyRule {
        PolicyRule {
            iif: iif_index,
            from: self.from.to_net(),
            to: self.to.to_net(),
            table: self.table,
        }
    }
}

/// Firewall steering: traffic entering from the steered internal interfaces is
/// routed to a firewall hanging off another internal interface of the router, and traffic
/// entering from the gateway to `gateway_nexthop` if set. What the firewall sends back
/// enters from its own interface, is not steered, and takes the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steering {
    /// The firewall's address for traffic from the steered internal interfaces.
    pub nexthop: Ipv4Addr,
    /// The firewall's address for traffic from the gateway interface.
    pub gateway_nexthop: Option<Ipv4Addr>,
    /// Steered internal interfaces (empty: no internal steering).
    pub interfaces: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTable {
    name: String,
    id: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRule {
    priority: Option<i64>,
    iif: Option<String>,
    from: Option<String>,
    to: Option<String>,
    table: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSteering {
    nexthop: String,
    gateway_nexthop: Option<String>,
    #[serde(default)]
    interfaces: Vec<String>,
}

/// Priorities of the rules of the desired state (the router's own come after them).
const PRIORITY_MAX: i64 = 29_999;

/// Names `ip` gives tables of its own; a table of the desired state cannot take them.
const RESERVED_NAMES: [&str; 4] = ["main", "local", "default", "unspec"];

pub(super) fn validate_tables(at: &Ctx, file: &[FileTable]) -> Result<Vec<Table>, ConfigError> {
    let mut out: Vec<Table> = Vec::with_capacity(file.len());
    for (i, f) in file.iter().enumerate() {
        let key = format!("table[{i}]");
        let name_ok = (1..=31).contains(&f.name.len())
            && f.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && f.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(at.bad(
                &format!("{key}.name"),
                &f.name,
                "must be 1-31 characters of letters, digits, '-', '_' or '.', starting with a letter",
            ));
        }
        if RESERVED_NAMES.contains(&f.name.as_str()) {
            return Err(at.bad(
                &format!("{key}.name"),
                &f.name,
                "is the name of a kernel table (main, local, default, unspec)",
            ));
        }
        if out.iter().any(|t| t.name == f.name) {
            return Err(at.bad(
                &format!("{key}.name"),
                &f.name,
                "another table has this name",
            ));
        }
        let id = f.id;
        let in_range =
            (1..=252).contains(&id) || (256..i64::from(TABLE_GENERATED_MIN)).contains(&id);
        if !in_range {
            return Err(at.bad(
                &format!("{key}.id"),
                &id.to_string(),
                &format!(
                    "must be 1-252 or 256-{}: 0 and 253-255 are the kernel's (unspec, default, main, local) and higher ids the router's own",
                    TABLE_GENERATED_MIN - 1
                ),
            ));
        }
        let id = u32::try_from(id).unwrap_or(0);
        if out.iter().any(|t| t.id == id) {
            return Err(at.bad(
                &format!("{key}.id"),
                &id.to_string(),
                "another table has this id",
            ));
        }
        out.push(Table {
            name: f.name.clone(),
            id,
        });
    }
    Ok(out)
}

/// A table reference (`route.table`, `rule.table`): `"main"`, a table's name, or a number
/// (integer or string) that is main's or a table's id.
pub(super) fn resolve_table(
    at: &Ctx,
    key: &str,
    value: &toml::Value,
    tables: &[Table],
) -> Result<u32, ConfigError> {
    let unknown = || {
        at.bad(
            key,
            &value_text(value),
            "is not \"main\" or a table of this router ([[router.table]] name or id)",
        )
    };
    let id: i64 = match value {
        toml::Value::String(s) if s == "main" => return Ok(TABLE_MAIN),
        toml::Value::String(s) => {
            if let Some(t) = tables.iter().find(|t| t.name == *s) {
                return Ok(t.id);
            }
            s.parse().map_err(|_| unknown())?
        }
        toml::Value::Integer(n) => *n,
        _ => {
            return Err(at.bad(
                key,
                &value_text(value),
                "must be a table name, a table id, or \"main\"",
            ));
        }
    };
    if id == i64::from(TABLE_MAIN) {
        return Ok(TABLE_MAIN);
    }
    tables
        .iter()
        .find(|t| i64::from(t.id) == id)
        .map(|t| t.id)
        .ok_or_else(unknown)
}

/// Policy rules the router generates (see [`super::Router::generated_rule_count`]), for a
/// router with `external` external subnets (primary and extra).
pub(super) fn generated_rules(steering: Option<&Steering>, external: usize) -> usize {
    let steer = steering.map_or(0, |s| {
        s.interfaces.len() + usize::from(s.gateway_nexthop.is_some())
    });
    steer + if external > 1 { external } else { 0 }
}

/// What rules may refer to.
pub(super) struct RuleScope<'a> {
    pub tables: &'a [Table],
    pub gateway: Option<&'a Gateway>,
    pub interfaces: &'a [Interface],
    /// Rules the router generates itself.
    pub generated: usize,
}

pub(super) fn validate_rules(
    at: &Ctx,
    file: &[FileRule],
    scope: &RuleScope<'_>,
) -> Result<Vec<Rule>, ConfigError> {
    let total = file.len() + scope.generated;
    if total > MAX_RULES as usize {
        return Err(at.bad(
            "rule",
            &file.len().to_string(),
            &format!(
                "{} rules plus the {} the router generates (one per steered interface, one for gateway steering, one per external subnet when there are several) make {total}, more than the {MAX_RULES} policy rules the fast path holds",
                file.len(),
                scope.generated
            ),
        ));
    }
    let mut out: Vec<Rule> = Vec::with_capacity(file.len());
    let mut priorities = HashSet::with_capacity(file.len());
    for (i, f) in file.iter().enumerate() {
        let key = format!("rule[{i}]");
        let Some(priority) = f.priority else {
            return Err(at.bad(
                &format!("{key}.priority"),
                "",
                "is required (1-29999, unique within the router)",
            ));
        };
        if !(1..=PRIORITY_MAX).contains(&priority) {
            return Err(at.bad(
                &format!("{key}.priority"),
                &priority.to_string(),
                "must be 1 to 29999 (the router's own rules come after them)",
            ));
        }
        if !priorities.insert(priority) {
            return Err(at.bad(
                &format!("{key}.priority"),
                &priority.to_string(),
                "another rule has this priority",
            ));
        }
        if let Some(iif) = &f.iif {
            let known = scope.gateway.is_some_and(|g| g.interface == *iif)
                || scope.interfaces.iter().any(|i| i.name == *iif);
            if !known {
                return Err(at.bad(
                    &format!("{key}.iif"),
                    iif,
                    "is not an interface of this router (the gateway or an internal one)",
                ));
            }
        }
        let prefix = |name: &str, value: &Option<String>| match value {
            None => Ok(Prefix::ANY),
            Some(s) => parse_prefix_or_addr(s)
                .map_err(|problem| at.bad(&format!("{key}.{name}"), s, problem)),
        };
        let from = prefix("from", &f.from)?;
        let to = prefix("to", &f.to)?;
        let Some(table) = &f.table else {
            return Err(at.bad(
                &format!("{key}.table"),
                "",
                "is required: a table name, a table id, or \"main\"",
            ));
        };
        let table = resolve_table(at, &format!("{key}.table"), table, scope.tables)?;
        out.push(Rule {
            priority: u32::try_from(priority).unwrap_or(0),
            iif: f.iif.clone(),
            from,
            to,
            table,
        });
    }
    Ok(out)
}

pub(super) fn validate_steering(
    at: &Ctx,
    file: Option<&FileSteering>,
    gateway: Option<&Gateway>,
    interfaces: &[Interface],
) -> Result<Option<Steering>, ConfigError> {
    let Some(f) = file else {
        return Ok(None);
    };
    let mut steered = HashSet::with_capacity(f.interfaces.len());
    for (i, name) in f.interfaces.iter().enumerate() {
        let key = format!("steering.interfaces[{i}]");
        if gateway.is_some_and(|g| g.interface == *name) {
            return Err(at.bad(
                &key,
                name,
                "is the gateway interface: only internal interfaces are steered (gateway_nexthop steers the gateway's traffic)",
            ));
        }
        if !interfaces.iter().any(|i| i.name == *name) {
            return Err(at.bad(&key, name, "is not an internal interface of this router"));
        }
        if !steered.insert(name.as_str()) {
            return Err(at.bad(&key, name, "interface listed twice"));
        }
    }
    // The firewall hangs off an internal interface of its own, which is not steered (what
    // it sends back must take the main table).
    let firewall_address = |key: &str, text: &str| -> Result<Ipv4Addr, ConfigError> {
        let addr = parse_ip(text).map_err(|problem| at.bad(key, text, problem))?;
        let Some(on) = interfaces
            .iter()
            .find(|i| i.address.subnet().contains(addr))
        else {
            return Err(at.bad(
                key,
                text,
                "is on no internal subnet of this router: the firewall must hang off an internal interface",
            ));
        };
        if steered.contains(on.name.as_str()) {
            return Err(at.bad(
                key,
                text,
                &format!(
                    "is on the subnet of {}, which is steered: the firewall must hang off an internal interface that is not steered",
                    on.name
                ),
            ));
        }
        if !host_on(on.address.subnet(), on.address.addr, addr) {
            return Err(at.bad(
                key,
                text,
                &format!(
                    "must be a host on {}'s subnet {}, not the router, network or broadcast address",
                    on.name,
                    on.address.subnet()
                ),
            ));
        }
        Ok(addr)
    };
    let nexthop = firewall_address("steering.nexthop", &f.nexthop)?;
    let gateway_nexthop = match &f.gateway_nexthop {
        None => None,
        Some(text) => {
            if gateway.is_none() {
                return Err(at.bad(
                    "steering.gateway_nexthop",
                    text,
                    "steers traffic from the gateway interface, but the router has no gateway",
                ));
            }
            Some(firewall_address("steering.gateway_nexthop", text)?)
        }
    };
    Ok(Some(Steering {
        nexthop,
        gateway_nexthop,
        interfaces: f.interfaces.clone(),
    }))
}
