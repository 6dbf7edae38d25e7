//! Routing tables, policy rules (`ip rule`) and firewall steering.

use std::{collections::HashSet, net::Ipv4Addr};

use router_common::{MAX_RULES, PolicyRule, TABLE_GENERATED_MIN, TABLE_MAIN};
use serde::Deserialize;

use super::{
    Ctx, Gateway, Interface, Prefix,
    check::host_on,
    file::{parse_ip, parse_prefix_or_addr, read, value_text},
};
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

/// A policy rule as an edit gives it (a request's fields), for
/// [`super::RouterText::rule`].
#[derive(Clone, Copy, Debug)]
pub struct RuleText<'a> {
    pub priority: i64,
    /// `None`: any interface.
    pub iif: Option<&'a str>,
    /// A prefix or an address; `None`: any.
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    /// `"main"`, a table's name or id.
    pub table: &'a str,
}

impl RuleText<'_> {
    pub(super) fn to_file(self) -> FileRule {
        FileRule {
            priority: Some(self.priority),
            iif: self.iif.map(str::to_string),
            from: self.from.map(str::to_string),
            to: self.to.map(str::to_string),
            table: Some(toml::Value::String(self.table.to_string())),
        }
    }
}

/// Priorities of the rules of the desired state (the router's own come after them).
const PRIORITY_MAX: u32 = 29_999;

const PRIORITY_RANGE: &str = "must be 1 to 29999 (the router's own rules come after them)";

/// Names `ip` gives tables of its own; a table of the desired state cannot take them.
const RESERVED_NAMES: [&str; 4] = ["main", "local", "default", "unspec"];

/// Why a table id is refused: the kernel's and the router's own ids are not the file's.
fn table_id_range() -> String {
    format!(
        "must be 1-252 or 256-{}: 0 and 253-255 are the kernel's (unspec, default, main, local) and higher ids the router's own",
        TABLE_GENERATED_MIN - 1
    )
}

pub(super) fn read_tables(at: &Ctx, file: &[FileTable]) -> Result<Vec<Table>, ConfigError> {
    file.iter()
        .enumerate()
        .map(|(i, f)| {
            let id = u32::try_from(f.id).map_err(|_| {
                at.bad(
                    &format!("table[{i}].id"),
                    &f.id.to_string(),
                    &table_id_range(),
                )
            })?;
            Ok(Table {
                name: f.name.clone(),
                id,
            })
        })
        .collect()
}

pub(super) fn check_tables(at: &Ctx, tables: &[Table]) -> Result<(), ConfigError> {
    for (i, t) in tables.iter().enumerate() {
        let key = format!("table[{i}]");
        let before = &tables[..i];
        let name_ok = (1..=31).contains(&t.name.len())
            && t.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(at.bad(
                &format!("{key}.name"),
                &t.name,
                "must be 1-31 characters of letters, digits, '-', '_' or '.', starting with a letter",
            ));
        }
        if RESERVED_NAMES.contains(&t.name.as_str()) {
            return Err(at.bad(
                &format!("{key}.name"),
                &t.name,
                "is the name of a kernel table (main, local, default, unspec)",
            ));
        }
        if before.iter().any(|x| x.name == t.name) {
            return Err(at.bad(
                &format!("{key}.name"),
                &t.name,
                "another table has this name",
            ));
        }
        let in_range = (1..=252).contains(&t.id) || (256..TABLE_GENERATED_MIN).contains(&t.id);
        if !in_range {
            return Err(at.bad(&format!("{key}.id"), &t.id.to_string(), &table_id_range()));
        }
        if before.iter().any(|x| x.id == t.id) {
            return Err(at.bad(
                &format!("{key}.id"),
                &t.id.to_string(),
                "another table has this id",
            ));
        }
    }
    Ok(())
}

const UNKNOWN_TABLE: &str =
    "is not \"main\" or a table of this router ([[router.table]] name or id)";

/// A table reference (`route.table`, `rule.table`): `"main"`, a table's name, or a number
/// (integer or string) that is main's or a table's id.
pub(super) fn resolve_table(
    at: &Ctx,
    key: &str,
    value: &toml::Value,
    tables: &[Table],
) -> Result<u32, ConfigError> {
    let unknown = || at.bad(key, &value_text(value), UNKNOWN_TABLE);
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

/// Checks that table id `id` (of `route.table` or `rule.table`) is main or one of `tables`.
pub(super) fn check_table_known(
    at: &Ctx,
    key: &str,
    id: u32,
    tables: &[Table],
) -> Result<(), ConfigError> {
    if id == TABLE_MAIN || tables.iter().any(|t| t.id == id) {
        return Ok(());
    }
    Err(at.bad(key, &id.to_string(), UNKNOWN_TABLE))
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

pub(super) fn read_rules(
    at: &Ctx,
    file: &[FileRule],
    tables: &[Table],
) -> Result<Vec<Rule>, ConfigError> {
    file.iter()
        .enumerate()
        .map(|(i, f)| read_rule(at, i, f, tables))
        .collect()
}

/// `rule[index]`.
pub(super) fn read_rule(
    at: &Ctx,
    index: usize,
    f: &FileRule,
    tables: &[Table],
) -> Result<Rule, ConfigError> {
    let key = format!("rule[{index}]");
    let Some(priority) = f.priority else {
        return Err(at.bad(
            &format!("{key}.priority"),
            "",
            "is required (1-29999, unique within the router)",
        ));
    };
    let priority = u32::try_from(priority).map_err(|_| {
        at.bad(
            &format!("{key}.priority"),
            &priority.to_string(),
            PRIORITY_RANGE,
        )
    })?;
    let prefix = |name: &str, value: &Option<String>| match value {
        None => Ok(Prefix::ANY),
        Some(s) => read(at, &format!("{key}.{name}"), s, parse_prefix_or_addr),
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
    let table = resolve_table(at, &format!("{key}.table"), table, tables)?;
    Ok(Rule {
        priority,
        iif: f.iif.clone(),
        from,
        to,
        table,
    })
}

pub(super) fn check_rules(
    at: &Ctx,
    rules: &[Rule],
    scope: &RuleScope<'_>,
) -> Result<(), ConfigError> {
    let total = rules.len() + scope.generated;
    if total > MAX_RULES as usize {
        return Err(at.bad(
            "rule",
            &rules.len().to_string(),
            &format!(
                "{} rules plus the {} the router generates (one per steered interface, one for gateway steering, one per external subnet when there are several) make {total}, more than the {MAX_RULES} policy rules the fast path holds",
                rules.len(),
                scope.generated
            ),
        ));
    }
    let mut priorities = HashSet::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let key = format!("rule[{i}]");
        if !(1..=PRIORITY_MAX).contains(&r.priority) {
            return Err(at.bad(
                &format!("{key}.priority"),
                &r.priority.to_string(),
                PRIORITY_RANGE,
            ));
        }
        if !priorities.insert(r.priority) {
            return Err(at.bad(
                &format!("{key}.priority"),
                &r.priority.to_string(),
                "another rule has this priority",
            ));
        }
        if let Some(iif) = &r.iif {
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
        check_table_known(at, &format!("{key}.table"), r.table, scope.tables)?;
    }
    Ok(())
}

pub(super) fn read_steering(
    at: &Ctx,
    file: Option<&FileSteering>,
) -> Result<Option<Steering>, ConfigError> {
    let Some(f) = file else {
        return Ok(None);
    };
    Ok(Some(Steering {
        nexthop: read(at, "steering.nexthop", &f.nexthop, parse_ip)?,
        gateway_nexthop: f
            .gateway_nexthop
            .as_deref()
            .map(|text| read(at, "steering.gateway_nexthop", text, parse_ip))
            .transpose()?,
        interfaces: f.interfaces.clone(),
    }))
}

pub(super) fn check_steering(
    at: &Ctx,
    steering: Option<&Steering>,
    gateway: Option<&Gateway>,
    interfaces: &[Interface],
) -> Result<(), ConfigError> {
    let Some(s) = steering else {
        return Ok(());
    };
    let mut steered = HashSet::with_capacity(s.interfaces.len());
    for (i, name) in s.interfaces.iter().enumerate() {
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
    let firewall_address = |key: &str, addr: Ipv4Addr| -> Result<(), ConfigError> {
        let text = addr.to_string();
        let Some(on) = interfaces
            .iter()
            .find(|i| i.address.subnet().contains(addr))
        else {
            return Err(at.bad(
                key,
                &text,
                "is on no internal subnet of this router: the firewall must hang off an internal interface",
            ));
        };
        if steered.contains(on.name.as_str()) {
            return Err(at.bad(
                key,
                &text,
                &format!(
                    "is on the subnet of {}, which is steered: the firewall must hang off an internal interface that is not steered",
                    on.name
                ),
            ));
        }
        if !host_on(on.address.subnet(), on.address.addr, addr) {
            return Err(at.bad(
                key,
                &text,
                &format!(
                    "must be a host on {}'s subnet {}, not the router, network or broadcast address",
                    on.name,
                    on.address.subnet()
                ),
            ));
        }
        Ok(())
    };
    firewall_address("steering.nexthop", s.nexthop)?;
    if let Some(addr) = s.gateway_nexthop {
        if gateway.is_none() {
            return Err(at.bad(
                "steering.gateway_nexthop",
                &addr.to_string(),
                "steers traffic from the gateway interface, but the router has no gateway",
            ));
        }
        firewall_address("steering.gateway_nexthop", addr)?;
    }
    Ok(())
}
