//! The router reconciler: what one router's fast path should hold, computed from its desired
//! state and its interfaces as the kernel has them, compared with what the maps hold now,
//! as a [`RouterChanges`] of writes per room, then written.
//!
//! A new router, a running fast path adopted from an earlier routerd and every change of the
//! desired state go through the same two steps, so each table has one way to be synced and
//! the writes routerd reports are the plan's (an unchanged router: none). The routes and
//! neighbours are not here: they mirror the kernel, not the desired state (see `router`).

use std::collections::BTreeMap;

use crate::{
    config::Router,
    error::Error,
    maps::{MapSource, Rooms, ifaces, nat, policy},
};

/// One interface the router drives, as resolved in its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterPort {
    pub name: String,
    pub iface: ifaces::IfaceSpec,
}

/// The writes that make a router's maps hold its desired state, per room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterChanges {
    pub ifaces: ifaces::IfaceChanges,
    pub nat: nat::NatChanges,
    pub policy: policy::PolicyChanges,
}

impl RouterChanges {
    /// Map entries the plan writes or removes.
    pub fn writes(&self) -> usize {
        self.ifaces.writes() + self.nat.writes() + self.policy.writes()
    }

    pub fn is_empty(&self) -> bool {
        self.writes() == 0
    }
}

/// What turns `maps` into the fast path of `router` on `ports` (by ifindex). Reads the maps,
/// writes nothing.
pub fn plan(
    maps: &mut impl MapSource,
    router: &Router,
    ports: &BTreeMap<u32, RouterPort>,
) -> Result<RouterChanges, Error> {
    let wanted: BTreeMap<u32, ifaces::IfaceSpec> =
        ports.iter().map(|(i, p)| (*i, p.iface.clone())).collect();
    let (entries, egresses) = ifaces::tables(&wanted);
    let ifaces = maps.ifaces().plan(&entries, &egresses)?;
    let gateway = ports
        .iter()
        .find(|(_, p)| p.iface.external)
        .map(|(i, _)| *i);
    let nat = maps
        .nat()
        .plan(&nat::config(router, gateway), &nat::floating_ips(router))?;
    let names: BTreeMap<String, u32> = ports.iter().map(|(i, p)| (p.name.clone(), *i)).collect();
    let live_fw = maps.policy().fw_rules()?;
    let policy = maps
        .policy()
        .plan(&policy::wanted(router, &names, &live_fw))?;
    Ok(RouterChanges {
        ifaces,
        nat,
        policy,
    })
}

/// Carries out `plan`: interfaces first (a rule or a route may name them), then NAT, then
/// the policy, whose rule lists switch in one write. Returns the writes.
pub fn write(maps: &mut impl MapSource, plan: &RouterChanges) -> Result<usize, Error> {
    maps.ifaces().write(&plan.ifaces)?;
    maps.nat().write(&plan.nat)?;
    maps.policy().write(&plan.policy)?;
    Ok(plan.writes())
}

/// [`plan`], then [`write`]. Returns the plan carried out.
pub fn reconcile(
    maps: &mut impl MapSource,
    router: &Router,
    ports: &BTreeMap<u32, RouterPort>,
) -> Result<RouterChanges, Error> {
    let plan = plan(maps, router, ports)?;
    write(maps, &plan)?;
    Ok(plan)
}
