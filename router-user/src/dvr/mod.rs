//! Distributed routers (DVR, `docs/dvr.md`): what one node runs of a router whose desired
//! state has `[router.distributed]`.
//!
//! - A **compute node** (one that holds a port of the router's networks) runs the
//!   distributed part: every internal interface with the gateway address and MAC, routing
//!   between the networks on the sender's node, forwarding from the node's own DVR MAC;
//!   and the floating IPs of its own VMs, answered, translated and forwarded on its own
//!   external interface, which has no address (the fast path answers ARP for the floating
//!   IPs; routerd resolves the external next hop itself, [`kernel`]). The rest of what
//!   would leave for the external network goes to the SNAT part, through a table per
//!   network (`snat-<interface>`, a default route to the network's `snat_address`) chosen
//!   by source, after rules that keep the router's own subnets in the main table; a VM
//!   with a floating IP is routed by the main table (`policy_flags::FLOATING_IP_BY_MAIN`),
//!   so no rule per floating IP is needed.
//! - The **SNAT node** (where the router is placed) runs the centralised part: the same
//!   interfaces with the networks' `snat_address`es, the gateway and default SNAT.
//!
//! On both, the ports of the router's networks come from the desired state, never from ARP
//! ([`kernel`]): a permanent neighbour entry for each in the router's namespace, and for
//! each port on another node, an overlay forwarding entry (its MAC to that node's overlay
//! address) and an ARP answer on the network's overlay device `vxlan-<vni>`.

mod arp;
pub mod kernel;

use std::net::Ipv4Addr;

use router_common::TABLE_MAIN;

use crate::config::{IfAddr, Prefix, Route, Router, Rule, Table};

/// What a node runs of a distributed router (on the node's copy, [`Router::part`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The node's name.
    pub node: String,
    pub role: Role,
    /// The namespace holding the overlay devices (`/run/netns/<name>`); `None`: routerd's
    /// own.
    pub overlay_netns: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The distributed part, on a node that holds ports.
    Compute,
    /// The centralised part: SNAT and floating IPs.
    Snat,
}

/// This node as distributed routers from a file see it (`routerd --node`,
/// `--overlay-netns`): a process setting, as the pin root is. With etcd, each router
/// arrives as the node's copy already ([`local_copy`], by `cluster::sync`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThisNode {
    pub name: String,
    pub overlay_netns: Option<String>,
}

static THIS_NODE: std::sync::OnceLock<ThisNode> = std::sync::OnceLock::new();

/// Sets this node for distributed routers read from a file; the first call wins.
pub fn set_this_node(node: ThisNode) {
    let _ = THIS_NODE.set(node);
}

/// The router a node runs for `router` as a file gives it: a distributed router that is not
/// the node's copy yet becomes it, the distributed part where the node holds one of its
/// ports and the SNAT part elsewhere (the file is the node's: the router is placed here).
/// Anything else is returned as it is.
pub fn localize(router: &Router) -> Result<Router, crate::Error> {
    if router.distributed.is_none() || router.part.is_some() {
        return Ok(router.clone());
    }
    let refused = |problem: String| crate::ConfigError::Invalid {
        key: format!("router \"{}\".distributed", router.id),
        value: String::new(),
        problem,
    };
    let Some(node) = THIS_NODE.get() else {
        return Err(refused(
            "a distributed router needs this node's name: routerd --node NAME (a key of \
             distributed.nodes)"
                .into(),
        )
        .into());
    };
    let overlay = node.overlay_netns.as_deref();
    // The distributed part where it holds a port, else the SNAT part.
    let copy = match local_copy(router, &node.name, false, overlay) {
        Ok(None) => local_copy(router, &node.name, true, overlay),
        other => other,
    };
    match copy {
        Ok(Some(copy)) => Ok(copy),
        Ok(None) => Err(refused(format!("node {} runs no part of it", node.name)).into()),
        Err(problem) => Err(refused(problem).into()),
    }
}

/// The first priority of the rules that keep the router's own destinations in the main
/// table; the rules choosing a network's SNAT table come after them.
const OWN_RULES_FIRST: u32 = 1;
const SNAT_RULES_FIRST: u32 = 10_000;

/// `router`'s copy for `node`: `placed` says whether the router is placed on it (the SNAT
/// part). `Ok(None)`: the node runs nothing of it. A router that is not distributed is
/// returned as it is when placed.
pub fn local_copy(
    router: &Router,
    node: &str,
    placed: bool,
    overlay_netns: Option<&str>,
) -> Result<Option<Router>, String> {
    let Some(d) = &router.distributed else {
        return Ok(placed.then(|| router.clone()));
    };
    let snat_ports: Vec<Ipv4Addr> = d.networks.iter().filter_map(|n| n.snat_address).collect();
    let holds_ports = d
        .ports
        .iter()
        .any(|p| p.node == node && !snat_ports.contains(&p.address));
    let role = match (placed, holds_ports) {
        (true, true) => {
            return Err(format!(
                "node {node} holds ports of distributed router {} and is where it is placed \
                 (its SNAT part): a node runs one or the other",
                router.id
            ));
        }
        (true, false) => Role::Snat,
        (false, true) => Role::Compute,
        (false, false) => return Ok(None),
    };
    if !d.nodes.contains_key(node) {
        return Err(format!(
            "node {node} runs distributed router {} but has no overlay address in its \
             distributed.nodes",
            router.id
        ));
    }
    let mut copy = router.clone();
    copy.part = Some(Part {
        node: node.to_string(),
        role,
        overlay_netns: overlay_netns.map(str::to_string),
    });
    match role {
        Role::Snat => {
            for i in &mut copy.interfaces {
                if let Some(a) = d.network(&i.name).and_then(|n| n.snat_address) {
                    i.address = IfAddr {
                        addr: a,
                        len: i.address.len,
                    };
                }
            }
        }
        Role::Compute => {
            // Its VMs' floating IPs, on its own gateway, which translates nothing else.
            let here: Vec<Ipv4Addr> = d
                .ports
                .iter()
                .filter(|p| p.node == node)
                .map(|p| p.address)
                .collect();
            copy.floating_ips.retain(|f| here.contains(&f.fixed));
            if let Some(g) = &mut copy.gateway {
                g.snat = false;
                snat_tables(&mut copy);
            }
        }
    }
    if role == Role::Snat {
        // Floating IPs are where their VMs are.
        copy.floating_ips.clear();
    }
    Ok(Some(copy))
}

/// The compute part's tables: a rule per destination of the main table (the subnets and
/// static routes) to keep them there, then per network a rule from its subnet to a table
/// whose default route is the network's SNAT address.
fn snat_tables(copy: &mut Router) {
    let Some(d) = copy.distributed.clone() else {
        return;
    };
    let own: Vec<Prefix> = copy
        .interfaces
        .iter()
        .map(|i| i.address.subnet())
        .chain(
            copy.routes
                .iter()
                .filter(|r| r.table == TABLE_MAIN)
                .map(|r| r.destination),
        )
        .collect();
    for (i, to) in own.into_iter().enumerate() {
        copy.rules.push(Rule {
            priority: OWN_RULES_FIRST + i as u32,
            iif: None,
            from: Prefix::ANY,
            to,
            table: TABLE_MAIN,
        });
    }
    for (i, iface) in copy.interfaces.clone().iter().enumerate() {
        let Some(snat) = d.network(&iface.name).and_then(|n| n.snat_address) else {
            continue;
        };
        let id = 1 + i as u32;
        copy.tables.push(Table {
            name: format!("snat-{}", iface.name),
            id,
        });
        copy.routes.push(Route {
            destination: Prefix::ANY,
            nexthop: snat,
            table: id,
        });
        copy.rules.push(Rule {
            priority: SNAT_RULES_FIRST + i as u32,
            iif: None,
            from: iface.address.subnet(),
            to: Prefix::ANY,
            table: id,
        });
    }
}

/// Whether `router` is a compute node's copy: its gateway interface holds no address.
pub fn is_compute(router: &Router) -> bool {
    router
        .part
        .as_ref()
        .is_some_and(|p| p.role == Role::Compute)
}

/// The bits of `router_common::policy_flags` `router` runs with.
pub fn policy_flags(router: &Router) -> u32 {
    if is_compute(router) {
        router_common::policy_flags::FLOATING_IP_BY_MAIN
    } else {
        0
    }
}

/// The source MAC of what `router` forwards out of an interface whose own MAC is `mac`:
/// the node's DVR MAC on a compute node's internal interfaces, `mac` elsewhere.
pub fn source_mac(router: &Router, mac: [u8; 6], external: bool) -> [u8; 6] {
    match (&router.part, &router.distributed) {
        (Some(part), Some(d)) if part.role == Role::Compute && !external => {
            d.dvr_mac(&part.node).unwrap_or(mac)
        }
        _ => mac,
    }
}

/// A port the node's copy knows without ARP: its address and MAC on interface `interface`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub interface: String,
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
}

/// What the overlay device of one network holds for the node: each port on another node,
/// by MAC with that node's overlay address, and its ARP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayEntries {
    pub vni: u32,
    /// `(MAC, remote overlay address, port address)`, sorted.
    pub remote: Vec<([u8; 6], Ipv4Addr, Ipv4Addr)>,
}

impl OverlayEntries {
    /// The overlay device of the network: `vxlan-<vni>`, as Neutron's Linux bridge agent
    /// names it.
    pub fn device(&self) -> String {
        format!("vxlan-{}", self.vni)
    }
}

/// The permanent neighbours of the node's copy: every port of its networks but its own
/// addresses.
pub fn neighbours(copy: &Router) -> Vec<Neighbour> {
    let Some(d) = &copy.distributed else {
        return Vec::new();
    };
    let mut out: Vec<Neighbour> = d
        .ports
        .iter()
        .filter(|p| {
            copy.interfaces
                .iter()
                .any(|i| i.name == p.interface && i.address.addr != p.address)
        })
        .map(|p| Neighbour {
            interface: p.interface.clone(),
            address: p.address,
            mac: p.mac,
        })
        .collect();
    out.sort();
    out
}

/// The overlay entries of the node's copy, one per network.
pub fn overlay_entries(copy: &Router) -> Vec<OverlayEntries> {
    let (Some(d), Some(part)) = (&copy.distributed, &copy.part) else {
        return Vec::new();
    };
    d.networks
        .iter()
        .map(|n| {
            let mut remote: Vec<_> = d
                .ports
                .iter()
                .filter(|p| p.interface == n.interface && p.node != part.node)
                .filter_map(|p| Some((p.mac, *d.nodes.get(&p.node)?, p.address)))
                .collect();
            remote.sort();
            OverlayEntries { vni: n.vni, remote }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
