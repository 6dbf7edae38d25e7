//! routerd's API (`docs/api.md` is the reference):
//!
//! - [`protocol`]: the wire protocol, [`Request`] and [`Response`], one JSON line each;
//! - [`planner`]: what a request means for a desired state ([`plan`], [`plan_with`]): an
//!   answer, nothing to do, or the new desired state. Pure: it reads no map and no file;
//! - [`edit`]: the edits, made on the typed state and checked whole with
//!   [`DesiredState::validate`](crate::config::DesiredState::validate), so a bad value is
//!   rejected with the message (naming the key) it gets in a file;
//! - [`edit_keyed`]: the edits of floating IPs and firewall rules, which a request names
//!   by Neutron's id as well as by address or position;
//! - [`views`]: what the queries answer, built from the state and [`Live`];
//! - [`live`]: what routerd finds on the node for the planner: the running routers, their
//!   counters ([`Live::read_counters`]), the namespaces a new state needs ([`preflight`]);
//! - [`client`]: a blocking [`Client`], for `routerctl` and the tests.
//!
//! `routerd` persists and applies what the planner decides.

pub mod client;
mod edit;
mod edit_keyed;
pub mod live;
pub mod planner;
pub mod protocol;
pub mod views;

#[cfg(test)]
mod tests;

pub use client::{Client, DEFAULT_TIMEOUT, MonitorStream};
pub use live::{Live, RouterCounters, WantedCounters, preflight};
pub use planner::{Plan, changed_routers, plan, plan_with};
pub use protocol::{
    API_VERSION, ApiError, ChangeResult, ErrorCode, MAX_LINE, MonitorLine, Request, Response,
    parse_request,
};
pub use views::{
    Counter, ExternalSubnetEntry, FirewallListing, FirewallSummary, FixedCounterEntry,
    FloatingIpEntry, FwRuleEntry, GatewayEntry, InterfaceEntry, NatEntry, RouteView, RouterDetail,
    RouterSummary, RuleEntry, StateText, SteeringEntry, TableEntry,
};
