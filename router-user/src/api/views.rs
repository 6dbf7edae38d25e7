//! The answers of the queries: what `router_list`, `router_show`, `route_list`,
//! `rule_list`, `fw_rule_list`, `fip_list` and `show_state` show, and how they are built
//! from the desired state and what routerd knows of the running routers ([`Live`]).

use std::{collections::BTreeMap, net::Ipv4Addr};

use router_common::TABLE_MAIN;
use serde::{Deserialize, Serialize};

use super::live::{Live, RouterCounters};
use crate::{
    config::{FirewallRule, Router},
    router::{InterfaceInfo, RouterInfo},
    stats::FloatingIpStats,
};

/// `show_state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateText {
    pub text: String,
}

/// One route as `route_list` shows it (not the fast path's `router_common::RouteEntry`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
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
    /// `fwmark MARK/MASK` (hexadecimal), for rules only the kernel has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<String>,
    /// `suppress_prefixlength N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_prefixlength: Option<u32>,
}

impl RuleEntry {
    /// What the rule matches beyond interface and prefixes, and how its lookup is bounded,
    /// as `ip rule` says it (`-` for nothing).
    pub fn extra_text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = &self.fwmark {
            parts.push(format!("fwmark {m}"));
        }
        if let Some(n) = self.suppress_prefixlength {
            parts.push(format!("suppress_prefixlength {n}"));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

/// `fw_rule_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallListing {
    /// Whether the router has a firewall (`[router.firewall]`).
    pub enabled: bool,
    /// `"allow"` or `"deny"`; `None` without a firewall.
    pub default: Option<String>,
    pub rules: Vec<FwRuleEntry>,
    /// The fixed steps' counters, as routerd read them from the router's pinned maps for
    /// this answer; `None` without a firewall or when they cannot be read.
    pub counters: Option<FixedCounterEntry>,
    /// `[router.steering]`, if any.
    pub steering: Option<SteeringEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwRuleEntry {
    /// 1-based.
    pub position: usize,
    /// Neutron's id of the rule; left out when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
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
    /// routerd is starting and has not tried this router yet (only shown when so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
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
    /// routerd is starting and has not tried this router yet (only shown when so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
    /// The internal interfaces, in file order.
    pub interfaces: Vec<InterfaceEntry>,
    pub gateway: Option<GatewayEntry>,
    /// Every subnet of the external network the router has an address on, the gateway's
    /// first; empty without a gateway.
    pub external_subnets: Vec<ExternalSubnetEntry>,
    /// `[[router.table]]`.
    pub tables: Vec<TableEntry>,
    /// As `route_list` answers.
    pub routes: Vec<RouteView>,
    /// As `rule_list` answers (configured and generated rules).
    pub rules: Vec<RuleEntry>,
    /// As `fip_list` answers.
    pub floating_ips: Vec<FloatingIpEntry>,
    pub firewall: FirewallSummary,
    pub nat: NatEntry,
    /// An HA router's state on this node (`docs/ha.md`): role, epoch, the active node, the
    /// standbys and the sync's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<crate::ha::status::HaStatus>,
    /// A distributed router's part on this node (`docs/dvr.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedEntry>,
}

/// What this node runs of a distributed router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistributedEntry {
    /// "compute" (the distributed part) or "snat" (the centralised part); "unknown" when
    /// routerd does not know this node's name (`--node`).
    pub part: String,
    pub node: Option<String>,
    /// The source MAC of what this node forwards onto the router's networks (compute part).
    pub dvr_mac: Option<String>,
    /// (interface, VNI) of each network.
    pub networks: Vec<(String, u32)>,
    pub ports: usize,
    /// Of `ports`, on this node.
    pub ports_here: usize,
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
    /// When running in XDP mode: why native XDP could not attach here (the interface runs
    /// the TC entry alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_unavailable: Option<String>,
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
    /// As for [`InterfaceEntry::xdp_unavailable`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_unavailable: Option<String>,
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
    /// Neutron's id of the floating IP; left out when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The floating IP.
    pub address: String,
    /// The fixed IP it is associated with.
    pub fixed: String,
    /// From the running router's pinned `FIP_STATS` (summed over CPUs), as routerd read
    /// them for this answer; `None` when the router does not run or they cannot be read. In: to the floating IP; out: from the
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

// ---- building them ------------------------------------------------------------------------

/// The routes of `r` (of table `only`, or all): main first, then the tables by id; file
/// order within a table.
pub(super) fn route_views(r: &Router, only: Option<u32>) -> Vec<RouteView> {
    let mut routes: Vec<_> = r
        .routes
        .iter()
        .filter(|route| only.is_none_or(|t| route.table == t))
        .collect();
    routes.sort_by_key(|route| (route.table != TABLE_MAIN, route.table));
    routes
        .into_iter()
        .map(|route| RouteView {
            table: r.table_name(route.table),
            destination: route.destination.to_string(),
            nexthop: route.nexthop.to_string(),
        })
        .collect()
}

/// The router's rules with the ones it generates, by priority.
pub(super) fn rule_entries(r: &Router) -> Vec<RuleEntry> {
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
            fwmark: rule.fwmark.map(|(m, k)| format!("{m:#x}/{k:#x}")),
            suppress_prefixlength: rule.suppress_prefixlength,
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
        id: rule.id.map(|id| id.to_string()),
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

fn steering_entry(r: &Router) -> Option<SteeringEntry> {
    r.steering.as_ref().map(|s| SteeringEntry {
        nexthop: s.nexthop.to_string(),
        gateway_nexthop: s.gateway_nexthop.map(|a| a.to_string()),
        interfaces: s.interfaces.clone(),
    })
}

fn policy_name(default_allow: bool) -> String {
    if default_allow { "allow" } else { "deny" }.into()
}

/// The firewall of `r` with the counters routerd read from the running router (none
/// given: `null`).
pub(super) fn firewall_listing(r: &Router, counters: Option<&RouterCounters>) -> FirewallListing {
    let steering = steering_entry(r);
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
    for c in counters.iter().flat_map(|c| &c.firewall_rules) {
        if let Some(entry) = rules.get_mut(c.index) {
            entry.packets = Some(c.packets);
            entry.bytes = Some(c.bytes);
        }
    }
    let counter = |(packets, bytes): (u64, u64)| Counter { packets, bytes };
    let fixed = counters.and_then(|c| c.firewall_fixed.as_ref());
    FirewallListing {
        enabled: true,
        default: Some(policy_name(fw.default_allow)),
        rules,
        counters: fixed.map(|f| FixedCounterEntry {
            established: counter(f.established),
            invalid: counter(f.invalid),
            default: counter(f.default),
        }),
        steering,
    }
}

/// The firewall of `r` in brief (no counters).
fn firewall_summary(r: &Router) -> FirewallSummary {
    FirewallSummary {
        enabled: r.firewall.is_some(),
        default: r.firewall.as_ref().map(|f| policy_name(f.default_allow)),
        rules: r.firewall.as_ref().map_or(0, |f| f.rules.len()),
        steering: steering_entry(r),
    }
}

/// The floating IPs of `r`, with the counters routerd read from the running router (none
/// given: `null`).
pub(super) fn floating_ip_entries(r: &Router, live: &Live) -> Vec<FloatingIpEntry> {
    let counters: BTreeMap<Ipv4Addr, &FloatingIpStats> = live
        .counters
        .get(&r.id)
        .iter()
        .flat_map(|c| &c.floating_ips)
        .map(|f| (f.floating_ip, f))
        .collect();
    r.floating_ips
        .iter()
        .map(|f| {
            let c = counters.get(&f.address).filter(|c| c.fixed_ip == f.fixed);
            FloatingIpEntry {
                router: r.id.clone(),
                id: f.id.map(|id| id.to_string()),
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

/// The running router's view of interface `name`.
fn attached<'a>(info: Option<&'a RouterInfo>, name: &str) -> Option<&'a InterfaceInfo> {
    info?.interfaces.iter().find(|i| i.name == name)
}

fn gateway_entry(r: &Router, live: &Live) -> Option<GatewayEntry> {
    let g = r.gateway.as_ref()?;
    let seen = attached(live.routers.get(&r.id), &g.interface);
    Some(GatewayEntry {
        interface: g.interface.clone(),
        address: g.address.to_string(),
        nexthop: g.nexthop.to_string(),
        snat: g.snat,
        xdp_egress: seen.map(|i| i.xdp_egress).or(g.xdp_egress),
        ifindex: seen.map(|i| i.ifindex),
        xdp_unavailable: seen.and_then(|i| i.xdp_unavailable.clone()),
    })
}

pub(super) fn router_summary(r: &Router, live: &Live) -> RouterSummary {
    RouterSummary {
        id: r.id.clone(),
        namespace: r.namespace.clone(),
        mode: r.mode.to_string(),
        interfaces: r.interfaces.iter().map(|i| i.name.clone()).collect(),
        gateway: gateway_entry(r, live),
        floating_ips: r.floating_ips.len(),
        running: live.routers.contains_key(&r.id),
        start_error: live.waiting.get(&r.id).cloned(),
        starting: live.starting.contains(&r.id),
    }
}

pub(super) fn router_detail(r: &Router, live: &Live) -> RouterDetail {
    // A distributed router from a file: as this node runs it.
    let local = crate::dvr::localize(r).ok();
    let r = local.as_ref().unwrap_or(r);
    let info = live.routers.get(&r.id);
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
                xdp_egress: seen.map(|s| s.xdp_egress).or(i.xdp_egress),
                ifindex: seen.map(|s| s.ifindex),
                xdp_unavailable: seen.and_then(|s| s.xdp_unavailable.clone()),
            }
        })
        .collect();
    RouterDetail {
        id: r.id.clone(),
        namespace: r.namespace.clone(),
        mode: r.mode.to_string(),
        running: info.is_some(),
        start_error: live.waiting.get(&r.id).cloned(),
        starting: live.starting.contains(&r.id),
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
        routes: route_views(r, None),
        rules: rule_entries(r),
        floating_ips: floating_ip_entries(r, live),
        firewall: firewall_summary(r),
        nat: NatEntry {
            snat_ports: r.nat.snat_ports.to_string(),
            slow_path_snat_ports: r.nat.slow_path_snat_ports.to_string(),
            max_sessions: r.nat.max_sessions,
            metadata_port: r.nat.metadata_port,
        },
        ha: r.ha.then(|| crate::ha::status::read(&r.id)).flatten(),
        distributed: distributed_entry(r),
    }
}

fn distributed_entry(r: &Router) -> Option<DistributedEntry> {
    let d = r.distributed.as_ref()?;
    let node = r.part.as_ref().map(|p| p.node.clone());
    Some(DistributedEntry {
        part: match r.part.as_ref().map(|p| p.role) {
            Some(crate::dvr::Role::Compute) => "compute",
            Some(crate::dvr::Role::Snat) => "snat",
            None => "unknown",
        }
        .into(),
        dvr_mac: r
            .part
            .as_ref()
            .filter(|p| p.role == crate::dvr::Role::Compute)
            .and_then(|p| d.dvr_mac(&p.node))
            .map(crate::config::mac_text),
        networks: d
            .networks
            .iter()
            .map(|n| (n.interface.clone(), n.vni))
            .collect(),
        ports: d.ports.len(),
        ports_here: d
            .ports
            .iter()
            .filter(|p| node.as_deref() == Some(p.node.as_str()))
            .count(),
        node,
    })
}
