//! What a request means for a desired state: an answer, nothing to do, or the new desired
//! state, checked whole. The planner is pure: it reads no map and no file. What an answer
//! shows of the running routers (running or not, ifindexes, counters) comes in through
//! [`Live`], which routerd fills before planning ([`Live::read_counters`]).

use serde::Serialize;
use serde_json::{Value, json};

use super::{
    edit::{self, GatewayText, RouteText, SteerText, Target},
    edit_keyed,
    live::Live,
    protocol::{ApiError, Request},
    views::{self, FloatingIpEntry, RouterSummary, StateText},
};
use crate::config::{DesiredState, FirewallRuleText, Router, RuleText};

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
/// wrong (its code says what kind of wrong) (and nothing changes).
pub fn plan(state: &DesiredState, request: &Request) -> Result<Plan, ApiError> {
    plan_with(state, request, &Live::default())
}

/// What `request` means for `state`, routerd running the routers of `live` (whose
/// counters it read for this request).
pub fn plan_with(state: &DesiredState, request: &Request, live: &Live) -> Result<Plan, ApiError> {
    match request {
        // The socket serves it (`server`); it plans nothing.
        Request::Monitor { .. } => Err(ApiError::invalid(
            "monitor is a stream the API socket serves, not a query of the desired state",
        )),
        Request::Apply { text } => {
            let new = DesiredState::parse(text)?;
            Ok(edit::change(state, new))
        }
        Request::ShowState => answer(&StateText {
            text: state.to_toml(),
        }),
        Request::RouteList { router, table } => {
            let r = find_router(state, router)?;
            let only = match table {
                None => None,
                Some(t) => Some(edit::resolve_table(r, "table", t)?),
            };
            answer(&views::route_views(r, only))
        }
        Request::RuleList { router } => answer(&views::rule_entries(find_router(state, router)?)),
        Request::FwRuleList { router } => {
            let r = find_router(state, router)?;
            answer(&views::firewall_listing(r, live.counters.get(&r.id)))
        }
        Request::RouterList => {
            let list: Vec<RouterSummary> = state
                .routers
                .iter()
                .map(|r| views::router_summary(r, live))
                .collect();
            answer(&list)
        }
        Request::RouterShow { router } => {
            answer(&views::router_detail(find_router(state, router)?, live))
        }
        Request::FipList { router } => {
            let routers: Vec<&Router> = match router {
                None => state.routers.iter().collect(),
                Some(id) => vec![find_router(state, id)?],
            };
            let list: Vec<FloatingIpEntry> = routers
                .into_iter()
                .flat_map(|r| views::floating_ip_entries(r, live))
                .collect();
            answer(&list)
        }
        Request::RouteAdd {
            router,
            destination,
            nexthop,
            table,
            may_exist,
        } => edit::route_add(
            state,
            router,
            RouteText {
                destination,
                nexthop,
                table: table.as_deref(),
            },
            *may_exist,
        ),
        Request::RouteDel {
            router,
            destination,
            table,
            if_exists,
        } => edit::route_del(state, router, destination, table.as_deref(), *if_exists),
        Request::RuleAdd {
            router,
            priority,
            iif,
            from,
            to,
            table,
            may_exist,
        } => edit::rule_add(
            state,
            router,
            &RuleText {
                priority: *priority,
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
        } => edit::rule_del(state, router, *priority, *if_exists),
        Request::FwRuleAdd {
            router,
            position,
            action,
            protocol,
            source,
            destination,
            destination_ports,
            description,
            id,
            may_exist,
        } => edit_keyed::fw_rule_add(
            state,
            router,
            *position,
            &FirewallRuleText {
                action,
                protocol: protocol.as_deref(),
                source: source.as_deref(),
                destination: destination.as_deref(),
                destination_ports: destination_ports.as_deref(),
                description: description.as_deref(),
                id: id.as_deref(),
            },
            *may_exist,
        ),
        Request::FwRuleDel {
            router,
            position,
            id,
            if_exists,
        } => edit_keyed::fw_rule_del(state, router, *position, id.as_deref(), *if_exists),
        Request::FwDefault { router, policy } => edit::fw_default(state, router, policy),
        Request::FwSteerSet {
            router,
            interface,
            nexthop,
            gateway_nexthop,
        } => edit::fw_steer_set(
            state,
            router,
            SteerText {
                interface: interface.as_deref(),
                nexthop: nexthop.as_deref(),
                gateway_nexthop: gateway_nexthop.as_deref(),
            },
        ),
        Request::FwSteerClear { router, interface } => {
            edit::fw_steer_clear(state, router, interface.as_deref())
        }
        Request::RouterCreate {
            router,
            namespace,
            mode,
            may_exist,
        } => edit::router_create(state, router, namespace, mode.as_deref(), *may_exist),
        Request::RouterDelete { router, if_exists } => {
            edit::router_delete(state, router, *if_exists)
        }
        Request::RouterInterfaceAdd {
            router,
            interface,
            address,
            may_exist,
        } => edit::interface_add(state, router, interface, address, *may_exist),
        Request::RouterInterfaceRemove {
            router,
            interface,
            if_exists,
        } => edit::interface_remove(state, router, interface, *if_exists),
        Request::RouterGatewaySet {
            router,
            interface,
            address,
            nexthop,
            snat,
        } => edit::gateway_set(
            state,
            router,
            GatewayText {
                interface,
                address,
                nexthop,
                snat: *snat,
            },
        ),
        Request::RouterGatewayClear { router, if_exists } => {
            edit::gateway_clear(state, router, *if_exists)
        }
        Request::FipCreate {
            router,
            address,
            fixed,
            id,
            may_exist,
        }
        | Request::FipAssociate {
            router,
            address,
            fixed,
            id,
            may_exist,
        } => edit_keyed::fip_add(state, router, address, fixed, id.as_deref(), *may_exist),
        Request::FipDelete {
            router,
            address,
            id,
            if_exists,
        }
        | Request::FipDisassociate {
            router,
            address,
            id,
            if_exists,
        } => edit_keyed::fip_delete(state, router, address.as_deref(), id.as_deref(), *if_exists),
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

fn answer<T: Serialize>(v: &T) -> Result<Plan, ApiError> {
    Ok(Plan::Answer(serde_json::to_value(v).unwrap_or_else(
        |e| json!({ "encoding_error": e.to_string() }),
    )))
}

fn find_router<'a>(state: &'a DesiredState, id: &str) -> Result<&'a Router, ApiError> {
    Target::of(state, id).map(|t| t.router())
}
