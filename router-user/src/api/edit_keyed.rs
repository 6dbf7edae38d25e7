//! The edits of the objects Neutron names by id: floating IPs (also named by their address)
//! and firewall rules (also named by their position). A request names an object by either
//! key or by both (then both must name the same object), and is idempotent on request:
//! with `may_exist`, adding an object identical to one there (same id, same values) changes
//! nothing; an object that differs under the same id or address is a conflict either way.
//! With `if_exists`, deleting an object that is not there changes nothing.

use std::{net::Ipv4Addr, str::FromStr};

use super::{edit::Target, planner::Plan, protocol::ApiError};
use crate::config::{DesiredState, FirewallRule, FirewallRuleText, FloatingIp, NeutronId};

/// A request's Neutron id, read (`key` names the field in messages).
fn parse_id(key: &str, text: &str) -> Result<NeutronId, ApiError> {
    NeutronId::from_str(text)
        .map_err(|problem| ApiError::invalid(format!("{key} \"{text}\": {problem}")).at(key))
}

/// How messages name a floating IP.
fn describe_fip(f: &FloatingIp) -> String {
    let id = f.id.map_or_else(|| "no id".into(), |id| format!("id {id}"));
    format!("{} -> {} ({id})", f.address, f.fixed)
}

/// Creates floating IP `address` for `fixed`, with Neutron's id `id` if given.
pub(super) fn fip_add(
    state: &DesiredState,
    router: &str,
    address: &str,
    fixed: &str,
    id: Option<&str>,
    may_exist: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let r = t.router();
    let fip = t
        .text()
        .floating_ip(r.floating_ips.len(), address, fixed, id)?;
    let (a, f) = (fip.address, fip.fixed);
    let by_id = fip
        .id
        .and_then(|id| r.floating_ips.iter().find(|x| x.id == Some(id)));
    let by_address = r.floating_ips.iter().find(|x| x.address == a);
    if let Some(existing) = by_id.or(by_address) {
        if *existing == fip {
            if may_exist {
                return Ok(Plan::Unchanged);
            }
            return Err(ApiError::conflict(format!(
                "floating IP {a} is already associated with {f} on router \"{router}\" (use --may-exist)"
            ))
            .at(format!("floating_ip {a}")));
        }
        if let (Some(id), Some(existing)) = (fip.id, by_id) {
            return Err(ApiError::conflict(format!(
                "floating IP id {id} exists on router \"{router}\" as {} (delete it first)",
                describe_fip(existing)
            ))
            .at(format!("floating_ip {id}")));
        }
        if existing.fixed == f {
            return Err(ApiError::conflict(format!(
                "floating IP {a} exists on router \"{router}\" as {}, not with the id asked for (delete it first)",
                describe_fip(existing)
            ))
            .at(format!("floating_ip {a}")));
        }
        return Err(ApiError::conflict(format!(
            "floating IP {a} is already associated with {} on router \"{router}\" (disassociate it first)",
            existing.fixed
        ))
        .at(format!("floating_ip {a}")));
    }
    if let Some(other) = r.floating_ips.iter().find(|x| x.fixed == f) {
        return Err(ApiError::conflict(format!(
            "fixed IP {f} already has floating IP {} on router \"{router}\" (one floating IP per fixed IP)",
            other.address
        )));
    }
    t.change(|r| r.floating_ips.push(fip))
}

/// Deletes the floating IP with `address` and/or Neutron id `id`.
pub(super) fn fip_delete(
    state: &DesiredState,
    router: &str,
    address: Option<&str>,
    id: Option<&str>,
    if_exists: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let fips = &t.router().floating_ips;
    let address = address
        .map(|text| {
            Ipv4Addr::from_str(text).map_err(|_| {
                ApiError::invalid(format!("address \"{text}\": not an IPv4 address")).at("address")
            })
        })
        .transpose()?;
    let id = id.map(|text| parse_id("id", text)).transpose()?;
    let by_address = address.map(|a| fips.iter().position(|f| f.address == a));
    let by_id = id.map(|id| fips.iter().position(|f| f.id == Some(id)));
    let named = match (address, id) {
        (Some(a), None) => format!("floating IP {a}"),
        (None, Some(id)) => format!("floating IP id {id}"),
        (Some(a), Some(id)) => format!("floating IP {a} with id {id}"),
        (None, None) => {
            return Err(ApiError::invalid(
                "name the floating IP by its address or its id (or both)",
            ));
        }
    };
    let at = match (by_address, by_id) {
        (Some(Some(x)), Some(Some(y))) if x != y => {
            return Err(ApiError::conflict(format!(
                "router \"{router}\" has no {named}: the address is {} and the id {}",
                describe_fip(&fips[x]),
                describe_fip(&fips[y])
            )));
        }
        (Some(Some(x)), Some(None)) | (Some(None), Some(Some(x))) => {
            return Err(ApiError::conflict(format!(
                "router \"{router}\" has no {named}, but has {}",
                describe_fip(&fips[x])
            )));
        }
        (Some(Some(x)), _) | (_, Some(Some(x))) => x,
        _ => {
            if if_exists {
                return Ok(Plan::Unchanged);
            }
            return Err(ApiError::not_found(format!(
                "router \"{router}\" has no {named}"
            )));
        }
    };
    t.change(|r| {
        r.floating_ips.remove(at);
    })
}

/// How messages name a firewall rule (1-based `position`).
fn describe_rule(position: usize, rule: &FirewallRule) -> String {
    let id = rule
        .id
        .map_or_else(|| "no id".into(), |id| format!("id {id}"));
    format!("rule {position} ({id}, {})", rule.action)
}

/// Inserts a firewall rule at 1-based `position` (default: after the last).
///
/// With an id, a rule with that id already there answers the request: identical (and at
/// `position`, when given) it is there already, otherwise a conflict. Without an id,
/// `may_exist` finds an identical rule without an id at `position` (when given) or
/// anywhere.
pub(super) fn fw_rule_add(
    state: &DesiredState,
    router: &str,
    position: Option<usize>,
    text: &FirewallRuleText<'_>,
    may_exist: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let Some(fw) = &t.router().firewall else {
        return Err(ApiError::not_found(format!(
            "router \"{router}\" has no firewall: create it with its default policy first (fw_default; routerctl fw default --router {router} deny|allow)"
        )));
    };
    let count = fw.rules.len();
    let at = match position {
        None => count,
        Some(p) if (1..=count + 1).contains(&p) => p - 1,
        Some(p) => {
            return Err(ApiError::invalid(format!(
                "position {p} is out of range: router \"{router}\" has {count} firewall rule(s), a rule is inserted at 1 to {}",
                count + 1
            )));
        }
    };
    let rule = t.text().firewall_rule(at, text)?;
    let same_id = rule
        .id
        .and_then(|id| Some((id, fw.rules.iter().position(|x| x.id == Some(id))?)));
    if let Some((id, i)) = same_id {
        let existing = &fw.rules[i];
        let in_place = position.is_none_or(|p| p == i + 1);
        if *existing == rule && in_place {
            if may_exist {
                return Ok(Plan::Unchanged);
            }
            return Err(ApiError::conflict(format!(
                "router \"{router}\" has this firewall rule already: {} (use --may-exist)",
                describe_rule(i + 1, existing)
            )));
        }
        return Err(ApiError::conflict(format!(
            "router \"{router}\" has a different firewall rule with this id: {} (delete it first)",
            describe_rule(i + 1, existing)
        ))
        .at(format!("firewall rule {id}")));
    }
    if may_exist && rule.id.is_none() {
        let same = match position {
            Some(p) => fw.rules.get(p - 1).is_some_and(|x| *x == rule),
            None => fw.rules.contains(&rule),
        };
        if same {
            return Ok(Plan::Unchanged);
        }
    }
    t.change(|r| {
        if let Some(fw) = &mut r.firewall {
            fw.rules.insert(at, rule);
        }
    })
}

/// Removes the firewall rule at 1-based `position` and/or with Neutron id `id`.
pub(super) fn fw_rule_del(
    state: &DesiredState,
    router: &str,
    position: Option<usize>,
    id: Option<&str>,
    if_exists: bool,
) -> Result<Plan, ApiError> {
    let t = Target::of(state, router)?;
    let id = id.map(|text| parse_id("id", text)).transpose()?;
    let named = match (position, id) {
        (Some(p), None) => format!("firewall rule at position {p}"),
        (None, Some(id)) => format!("firewall rule with id {id}"),
        (Some(p), Some(id)) => format!("firewall rule at position {p} with id {id}"),
        (None, None) => {
            return Err(ApiError::invalid(
                "name the firewall rule by its position or its id (or both)",
            ));
        }
    };
    let rules = t
        .router()
        .firewall
        .as_ref()
        .map_or(&[][..], |f| f.rules.as_slice());
    let by_position = position.map(|p| p.checked_sub(1).filter(|i| *i < rules.len()));
    let by_id = id.map(|id| rules.iter().position(|x| x.id == Some(id)));
    let at = match (by_position, by_id) {
        (Some(Some(x)), Some(y)) if y != Some(x) => {
            return Err(ApiError::conflict(format!(
                "router \"{router}\" has no {named}: that position holds {}",
                describe_rule(x + 1, &rules[x])
            )));
        }
        (Some(Some(x)), _) | (None, Some(Some(x))) => x,
        (Some(None), Some(Some(y))) => {
            return Err(ApiError::conflict(format!(
                "router \"{router}\" has no {named}: that id is {}",
                describe_rule(y + 1, &rules[y])
            )));
        }
        _ => {
            if if_exists {
                return Ok(Plan::Unchanged);
            }
            let how_many = match &t.router().firewall {
                None => "it has no firewall".to_string(),
                Some(f) => format!("it has {} rule(s), numbered from 1", f.rules.len()),
            };
            return Err(ApiError::not_found(format!(
                "router \"{router}\" has no {named} ({how_many})"
            )));
        }
    };
    t.change(|r| {
        if let Some(fw) = &mut r.firewall {
            fw.rules.remove(at);
        }
    })
}
