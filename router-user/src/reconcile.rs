//! The router reconciler: what one router's fast path should hold, computed from its desired
//! state and its interfaces as the kernel has them, compared with what the maps hold, as
//! [`RouterChanges`] (the writes per room), then written.
//!
//! A new router, a running fast path adopted from an earlier routerd and every change of the
//! desired state go through the same steps, so each table has one way to be synced and the
//! writes routerd reports are the plan's (an unchanged router: none). What the maps hold is
//! read from them once, when the router starts or is adopted ([`read`]); from then on the
//! router keeps it ([`RouterTables`], updated with each plan it writes), so planning a
//! change reads no map and costs nothing beside a large table. The routes and neighbours are
//! not here: they mirror the kernel, not the desired state (see `router`).

use std::collections::BTreeMap;

use crate::{
    config::Router,
    error::Error,
    maps::{
        MapSource, Rooms,
        ifaces::{self, IfaceChanges, IfaceSpec, IfaceTables},
        nat::{self, NatChanges, NatTables},
        policy::{self, PolicyChanges, PolicyState},
    },
};

/// One interface the router drives, as resolved in its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterPort {
    pub name: String,
    pub iface: IfaceSpec,
}

/// What a router's maps hold (of what the controller writes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterTables {
    pub ifaces: IfaceTables,
    pub nat: NatTables,
    pub policy: PolicyState,
}

/// The writes that make a router's maps hold its desired state, per room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterChanges {
    pub ifaces: IfaceChanges,
    pub nat: NatChanges,
    pub policy: PolicyChanges,
}

impl RouterChanges {
    /// Map entries the changes write or remove.
    pub fn writes(&self) -> usize {
        self.ifaces.writes() + self.nat.writes() + self.policy.writes()
    }

    pub fn is_empty(&self) -> bool {
        self.writes() == 0
    }

    /// `tables` as they are once these changes are written.
    pub fn apply_to(&self, tables: &mut RouterTables) {
        self.ifaces.apply_to(&mut tables.ifaces);
        self.nat.apply_to(&mut tables.nat);
        self.policy.apply_to(&mut tables.policy);
    }
}

/// What `maps` hold now.
pub fn read(maps: &mut impl MapSource) -> Result<RouterTables, Error> {
    Ok(RouterTables {
        ifaces: maps.ifaces().read()?,
        nat: maps.nat().read()?,
        policy: maps.policy().read()?,
    })
}

/// What turns `current` into the fast path of `router` on `ports` (by ifindex). Pure: it
/// reads no map. The firewall rules keep the counter slots they have in `current`.
pub fn plan(
    current: &RouterTables,
    router: &Router,
    ports: &BTreeMap<u32, RouterPort>,
) -> RouterChanges {
    let specs: BTreeMap<u32, IfaceSpec> =
        ports.iter().map(|(i, p)| (*i, p.iface.clone())).collect();
    let mut wanted_ifaces = ifaces::tables(&specs, &current.ifaces);
    // Counters stay when an interface goes (until the router goes).
    wanted_ifaces
        .counted
        .extend(current.ifaces.counted.iter().copied());
    let gateway = ports
        .iter()
        .find(|(_, p)| p.iface.external)
        .map(|(i, _)| *i);
    let names: BTreeMap<String, u32> = ports.iter().map(|(i, p)| (p.name.clone(), *i)).collect();
    RouterChanges {
        ifaces: IfaceChanges::between(&current.ifaces, &wanted_ifaces),
        nat: NatChanges::between(&current.nat, &nat::tables(router, gateway)),
        policy: PolicyChanges::between(
            &current.policy,
            &policy::tables(router, &names, &current.policy.fw_rules),
        ),
    }
}

/// Carries out `changes`: interfaces first (a rule or a route may name them), then NAT,
/// then the policy, whose rule lists switch in one write. Returns the writes.
pub fn write(maps: &mut impl MapSource, changes: &RouterChanges) -> Result<usize, Error> {
    maps.ifaces().write(&changes.ifaces)?;
    maps.nat().write(&changes.nat)?;
    maps.policy().write(&changes.policy)?;
    Ok(changes.writes())
}

/// Makes `maps`, which hold `current`, hold the fast path of `router` on `ports`, and
/// `current` what they then hold. Returns the changes written.
pub fn reconcile(
    maps: &mut impl MapSource,
    current: &mut RouterTables,
    router: &Router,
    ports: &BTreeMap<u32, RouterPort>,
) -> Result<RouterChanges, Error> {
    let changes = plan(current, router, ports);
    if let Err(e) = write(maps, &changes) {
        // Part of it may be written: what the maps hold is read again.
        if let Ok(now) = read(maps) {
            *current = now;
        }
        return Err(e);
    }
    changes.apply_to(current);
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use router_common::{MAX_FW_RULES, fw_flags, iface_role};

    use super::*;
    use crate::config::DesiredState;

    const ROUTER: &str = r#"
[[router]]
id = "r1"
namespace = "qrouter-r1"

[router.gateway]
interface = "qg-r1"
address = "198.18.0.2/24"
nexthop = "198.18.0.1"
snat = true

[[router.interface]]
name = "qr-a"
address = "10.0.1.1/24"

[[router.floating_ip]]
address = "198.18.0.10"
fixed = "10.0.1.5"
"#;

    fn router(extra: &str) -> Router {
        let state = DesiredState::parse(&format!("{ROUTER}{extra}")).expect("router");
        state.routers.into_iter().next().expect("one router")
    }

    fn ports() -> BTreeMap<u32, RouterPort> {
        let port = |name: &str, external| RouterPort {
            name: name.into(),
            iface: IfaceSpec {
                mac: [2, 0, 0, 0, 0, 1],
                src_mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                external,
                xdp_egress: false,
                source_check: false,
            },
        };
        BTreeMap::from([(2, port("qg-r1", true)), (3, port("qr-a", false))])
    }

    /// `current` after `changes`, and the writes they made.
    fn applied(current: &mut RouterTables, r: &Router) -> usize {
        let changes = plan(current, r, &ports());
        changes.apply_to(current);
        changes.writes()
    }

    #[test]
    fn a_new_router_is_written_once_and_then_unchanged() {
        let mut tables = RouterTables::default();
        let r = router("");
        let first = plan(&tables, &r, &ports());
        // Two interfaces with their copies by ifindex, counters and counter slots (zeroed),
        // the NAT settings, one floating IP (two entries) and the filter in front of them,
        // and the policy settings.
        assert_eq!(first.ifaces.writes(), 8);
        assert_eq!(first.nat.writes(), 4);
        assert!(first.nat.filter.is_some_and(|f| f.ready == 1));
        assert_eq!(tables.ifaces.entries.len(), 0);
        first.apply_to(&mut tables);
        assert_eq!(tables.ifaces.entries[&2].role, iface_role::EXTERNAL);
        assert_eq!(tables.nat.config.gateway_ifindex, 2);
        assert!(
            plan(&tables, &r, &ports()).is_empty(),
            "unchanged: no writes"
        );
    }

    #[test]
    fn changes_write_only_what_differs() {
        let mut tables = RouterTables::default();
        applied(&mut tables, &router(""));
        let more = "[[router.floating_ip]]\naddress = \"198.18.0.11\"\nfixed = \"10.0.1.6\"\n";
        // One more floating IP: its two entries, and the filter with its two addresses.
        assert_eq!(applied(&mut tables, &router(more)), 3);
        assert!(tables.nat.filter.may_hold([198, 18, 0, 11]));
        assert!(tables.nat.filter.may_hold([10, 0, 1, 6]));
        // Its fixed IP changed: removed and added again, and the filter.
        let moved = "[[router.floating_ip]]\naddress = \"198.18.0.11\"\nfixed = \"10.0.1.7\"\n";
        assert_eq!(applied(&mut tables, &router(moved)), 5);
        assert_eq!(tables.nat.floating_ips[&[198, 18, 0, 11]], [10, 0, 1, 7]);
        // Back to one: two entries removed, and the filter.
        assert_eq!(applied(&mut tables, &router("")), 3);
        assert_eq!(tables.nat.floating_ips.len(), 1);
        assert_eq!(tables.nat.filter, nat::filter_of(&tables.nat.floating_ips));
    }

    #[test]
    fn firewall_rules_switch_halves_and_keep_their_slots() {
        let fw = "[router.firewall]\ndefault = \"allow\"\n[[router.firewall.rule]]\naction = \"deny\"\nprotocol = \"icmp\"\nsource = \"10.0.0.0/24\"\n";
        let mut tables = RouterTables::default();
        applied(&mut tables, &router(""));
        let changes = plan(&tables, &router(fw), &ports());
        let cfg = changes.policy.config.expect("the settings switch");
        assert_eq!((cfg.fw_base, cfg.fw_rule_count), (MAX_FW_RULES, 1));
        assert_ne!(cfg.fw_flags & fw_flags::ENABLED, 0);
        assert_eq!(
            changes.policy.fresh_slots.len(),
            1,
            "a new rule's counters are zeroed"
        );
        changes.apply_to(&mut tables);
        let slot = tables.policy.fw_rules[0].slot;
        // The same rule again, a second one after it: the first keeps its slot.
        let two = format!("{fw}[[router.firewall.rule]]\naction = \"allow\"\nprotocol = \"tcp\"\n");
        let changes = plan(&tables, &router(&two), &ports());
        let rules = changes.policy.fw_rules.clone().expect("a new list");
        assert_eq!(rules[0].slot, slot);
        assert_eq!(
            changes.policy.config.map(|c| c.fw_base),
            Some(0),
            "the other half"
        );
    }
}
