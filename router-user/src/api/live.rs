//! What routerd finds on the node, for the planner to be given: the routers it runs, their
//! counters read from the pinned maps, the namespaces a new state needs. Everything here
//! may read the system; the planner ([`super::plan_with`]) reads only what it is given.

use super::protocol::ApiError;
use std::collections::BTreeMap;

use super::protocol::Request;
use crate::{
    config::DesiredState,
    maps::{
        Pinned, Rooms as _,
        policy::{FixedCounters, RuleCounters},
    },
    router::RouterInfo,
    stats::FloatingIpStats,
};

/// What routerd knows of the routers it runs, for the answers that show it (`running`,
/// ifindexes, counters).
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// By router id.
    pub routers: BTreeMap<String, RouterInfo>,
    /// Routers whose start failed, by id: why. routerd tries them again.
    pub waiting: BTreeMap<String, String>,
    /// Routers routerd has not tried yet because it is still starting (see
    /// `node::Startup`): neither running nor waiting.
    pub starting: std::collections::BTreeSet<String>,
    /// Counters of the routers the answer shows, by router id, read for this request only
    /// ([`Live::read_counters`]); a router missing here shows none (`null`).
    pub counters: BTreeMap<String, RouterCounters>,
}

/// A router's counters as its pinned maps held them when routerd read them (summed over
/// CPUs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterCounters {
    /// Its floating IPs' (`FIP_STATS`); empty when it does not run or they cannot be read.
    pub floating_ips: Vec<FloatingIpStats>,
    /// Its firewall rules', by position; empty when they cannot be read.
    pub firewall_rules: Vec<RuleCounters>,
    /// Its firewall's fixed steps'; `None` when they cannot be read.
    pub firewall_fixed: Option<FixedCounters>,
}

/// The counters the answer to a request shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedCounters {
    /// One router's, or `None`: every router's.
    pub router: Option<String>,
    /// The floating IPs' counters (of routers that run).
    pub floating_ips: bool,
    /// The firewall's rule and fixed counters (of routers with a firewall).
    pub firewall: bool,
}

impl Live {
    /// The counters the answer to `request` shows; `None` when it shows none, and no map
    /// need be read.
    pub fn wants_counters(request: &Request) -> Option<WantedCounters> {
        let (router, floating_ips, firewall) = match request {
            Request::FwRuleList { router } => (Some(router.clone()), false, true),
            Request::FipList { router } => (router.clone(), true, false),
            Request::RouterShow { router } => (Some(router.clone()), true, false),
            _ => return None,
        };
        Some(WantedCounters {
            router,
            floating_ips,
            firewall,
        })
    }

    /// Reads the counters the answer to `request` shows ([`Live::wants_counters`]) from the
    /// pinned maps of the routers of `state`, into [`Live::counters`]: routerd calls it
    /// before planning. Floating IPs' counters are read from the routers in
    /// [`Live::routers`] only; counters that cannot be read are left out.
    pub fn read_counters(&mut self, state: &DesiredState, request: &Request) {
        let Some(wanted) = Self::wants_counters(request) else {
            return;
        };
        let routers = state
            .routers
            .iter()
            .filter(|r| wanted.router.as_ref().is_none_or(|id| *id == r.id));
        for r in routers {
            let mut counters = RouterCounters::default();
            if wanted.floating_ips && self.routers.contains_key(&r.id) {
                counters.floating_ips = crate::stats::collect_nat(Some(&r.id))
                    .map(|nat| nat.floating_ips)
                    .unwrap_or_default();
            }
            if wanted.firewall
                && r.firewall.is_some()
                && let Ok(mut maps) = Pinned::open(&r.id)
            {
                counters.firewall_rules = maps.policy().rule_counters().unwrap_or_default();
                counters.firewall_fixed = maps.policy().fixed_counters().ok();
            }
            self.counters.insert(r.id.clone(), counters);
        }
    }
}

/// What the node must have for `new` before it is written: the namespace of every router
/// that is new or moves to another namespace. (An interface missing in a namespace is found
/// when the router starts; routerd then restores the previous state.)
pub fn preflight(old: &DesiredState, new: &DesiredState) -> Result<(), ApiError> {
    for r in &new.routers {
        if old
            .router(&r.id)
            .is_some_and(|o| o.namespace == r.namespace)
        {
            continue;
        }
        let path = crate::paths::netns_path(&r.namespace);
        if !path.exists() {
            return Err(ApiError::not_found(format!(
                "router \"{}\": namespace \"{}\" does not exist (no {}; create it first, e.g. ip netns add {})",
                r.id,
                r.namespace,
                path.display(),
                r.namespace
            ))
            .at(format!("namespace {}", r.namespace)));
        }
    }
    Ok(())
}
