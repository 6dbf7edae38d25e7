//! What a router's desired state means for routing and the firewall once the generated parts
//! are added: the steering tables and rules, one table per external subnet,
//! and the firewall's rules with their counter slots. Both the kernel (the slow
//! path, with `ip rule` and tables) and the fast path (maps) are programmed from this.

use std::net::Ipv4Addr;

use router_common::{
    FW_STATS_SLOTS, FwRule, TABLE_MAIN, TABLE_STEER_GATEWAY, TABLE_STEER_INTERNAL, fw_flags,
    fw_slot, table_external_subnet,
};

use crate::config::{FloatingIp, Prefix, Router};

/// First priority of the steering rules (user rules are below 30000).
pub const PRIORITY_STEERING: u32 = 30_000;
/// Priority of the gateway steering rule.
pub const PRIORITY_STEER_GATEWAY: u32 = 30_900;
/// First priority of the external-subnet rules.
pub const PRIORITY_EXTERNAL: u32 = 31_000;
/// First priority of the kernel-only rules that route what the kernel forwards from a
/// floating IP of a further external subnet (see [`subnet_mark`]).
pub const PRIORITY_SUBNET_MARK: u32 = 31_500;
/// The bits of a packet's mark that name a further external subnet (the rest belongs to
/// the gateway mark, 0x2/0xff, and the firewall's `REJECT_MARK`, upper half).
pub const SUBNET_MARK_MASK: u32 = 0xff00;
/// The conntrack zone the kernel gives what enters before the steering firewall (see
/// [`steering_zone_interfaces`]); everything else is in zone 0.
pub const STEERING_ZONE: u16 = 1;

/// Where a policy rule comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Config,
    Steering,
    ExternalSubnet,
}

/// One `ip rule` of the router, configured or generated: the kernel gets it as an `ip rule`,
/// the fast path as a `router_common::PolicyRule` (with the ingress interface resolved to
/// its index) when [`IpRule::in_fast_path`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRule {
    pub priority: u32,
    /// `Some("lo")` for rules that only concern the router's own traffic (the fast path
    /// never sees those).
    pub iif: Option<String>,
    pub from: Prefix,
    pub to: Prefix,
    pub table: u32,
    /// `fwmark MARK/MASK`: only the kernel sees marks, so such a rule is the kernel's only.
    pub fwmark: Option<(u32, u32)>,
    /// `suppress_prefixlength N`: a route of prefix length N or less found in `table` is
    /// ignored and the walk goes on.
    pub suppress_prefixlength: Option<u32>,
    pub origin: Origin,
}

impl IpRule {
    /// Whether the fast path walks this rule (it only sees forwarded traffic, and no marks).
    pub fn in_fast_path(&self) -> bool {
        self.iif.as_deref() != Some("lo") && self.fwmark.is_none()
    }
}

/// A route of a table other than main.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableRoute {
    pub table: u32,
    pub destination: Prefix,
    pub nexthop: Ipv4Addr,
}

/// The router's policy with everything generated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// By priority.
    pub rules: Vec<IpRule>,
    /// Routes the kernel must have (every table, main included).
    pub routes: Vec<TableRoute>,
    /// External subnet -> its table, for packets leaving the gateway with a source in it.
    pub source_tables: Vec<(Prefix, u32)>,
}

/// The policy of `router`.
pub fn of(router: &Router) -> Policy {
    let mut p = Policy::default();
    for r in &router.rules {
        p.rules.push(IpRule {
            priority: r.priority,
            iif: r.iif.clone(),
            from: r.from,
            to: r.to,
            table: r.table,
            fwmark: None,
            suppress_prefixlength: None,
            origin: Origin::Config,
        });
    }
    for r in &router.routes {
        p.routes.push(TableRoute {
            table: r.table,
            destination: r.destination,
            nexthop: r.nexthop,
        });
    }
    let any = Prefix::ANY;
    if let Some(s) = &router.steering {
        for (i, name) in s.interfaces.iter().enumerate() {
            p.rules.push(IpRule {
                priority: PRIORITY_STEERING + i as u32,
                iif: Some(name.clone()),
                from: any,
                to: any,
                table: TABLE_STEER_INTERNAL,
                fwmark: None,
                suppress_prefixlength: None,
                origin: Origin::Steering,
            });
        }
        p.routes.push(TableRoute {
            table: TABLE_STEER_INTERNAL,
            destination: any,
            nexthop: s.nexthop,
        });
        if let (Some(nexthop), Some(g)) = (s.gateway_nexthop, &router.gateway) {
            p.rules.push(IpRule {
                priority: PRIORITY_STEER_GATEWAY,
                iif: Some(g.interface.clone()),
                from: any,
                to: any,
                table: TABLE_STEER_GATEWAY,
                fwmark: None,
                suppress_prefixlength: None,
                origin: Origin::Steering,
            });
            p.routes.push(TableRoute {
                table: TABLE_STEER_GATEWAY,
                destination: any,
                nexthop,
            });
        }
    }
    let external = router.external_subnets();
    if external.len() > 1 {
        for (n, subnet) in external.iter().enumerate() {
            let table = table_external_subnet(n as u32);
            // The kernel cannot route by the source NAT gives a forwarded packet; it only
            // needs the tables for traffic of its own (`iif lo`). The fast path uses
            // `source_tables` after NAT.
            p.rules.push(IpRule {
                priority: PRIORITY_EXTERNAL + n as u32,
                iif: Some("lo".into()),
                from: subnet.address.subnet(),
                to: any,
                table,
                fwmark: None,
                suppress_prefixlength: None,
                origin: Origin::ExternalSubnet,
            });
            // What the kernel forwards from a floating IP of this subnet (the slow path
            // marks it by its fixed source before routing): main's routes except the
            // default, then this subnet's table, as the fast path's source tables do.
            if let Some(mark) = subnet_mark(n) {
                let fwmark = Some((mark, SUBNET_MARK_MASK));
                let at = PRIORITY_SUBNET_MARK + 2 * n as u32;
                p.rules.push(IpRule {
                    priority: at,
                    iif: None,
                    from: any,
                    to: any,
                    table: TABLE_MAIN,
                    fwmark,
                    suppress_prefixlength: Some(0),
                    origin: Origin::ExternalSubnet,
                });
                p.rules.push(IpRule {
                    priority: at + 1,
                    iif: None,
                    from: any,
                    to: any,
                    table,
                    fwmark,
                    suppress_prefixlength: None,
                    origin: Origin::ExternalSubnet,
                });
            }
            p.routes.push(TableRoute {
                table,
                destination: any,
                nexthop: subnet.nexthop,
            });
            p.source_tables.push((subnet.address.subnet(), table));
        }
    }
    p.rules.sort_by_key(|r| r.priority);
    p
}

/// The mark the slow path gives what a floating IP of external subnet `n` sends, before
/// routing, so the kernel's rules send it to that subnet's gateway. Subnet 0 (the
/// gateway's primary one) needs none: main's default route is its gateway.
pub fn subnet_mark(n: usize) -> Option<u32> {
    (1..=0xff).contains(&n).then_some((n as u32) << 8)
}

/// For each floating IP on a further external subnet: its fixed address and the subnet's
/// mark ([`subnet_mark`]). Empty with a single external subnet.
pub fn floating_ip_marks(router: &Router) -> Vec<(Ipv4Addr, u32)> {
    marks_of(router, &router.floating_ips)
}

/// [`floating_ip_marks`] of `fips`, floating IPs of `router`'s external network.
pub fn marks_of<'a>(
    router: &Router,
    fips: impl IntoIterator<Item = &'a FloatingIp>,
) -> Vec<(Ipv4Addr, u32)> {
    let external = router.external_subnets();
    if external.len() < 2 {
        return Vec::new();
    }
    fips.into_iter()
        .filter_map(|f| {
            let n = external
                .iter()
                .position(|s| s.address.subnet().contains(f.address))?;
            Some((f.fixed, subnet_mark(n)?))
        })
        .collect()
}

/// The interfaces whose arrivals the kernel tracks in [`STEERING_ZONE`]: the steered
/// internal ones, and the firewall's internal leg when its external leg is another
/// interface. A flow crossing the firewall is then two connections, one on each side of
/// it, and NAT happens on the one that leaves (or enters) by the gateway, as in the fast
/// path, where every interface is its own zone. (A conntrack entry has one zone for both
/// directions, so the kernel cannot key replies by their own ingress as the fast path
/// does; with a one-legged firewall that also takes the gateway's traffic the kernel
/// cannot tell the passes apart, and what it forwards itself may leave untranslated.)
pub fn steering_zone_interfaces(router: &Router) -> Vec<String> {
    let Some(s) = &router.steering else {
        return Vec::new();
    };
    let leg = |nexthop: Ipv4Addr| {
        router
            .interfaces
            .iter()
            .find(|i| i.address.subnet().contains(nexthop))
            .map(|i| i.name.clone())
    };
    let mut names = s.interfaces.clone();
    let internal_leg = leg(s.nexthop);
    let external_leg = s.gateway_nexthop.and_then(leg);
    if let (Some(int), Some(ext)) = (&internal_leg, &external_leg)
        && int != ext
        && !names.contains(int)
    {
        names.push(int.clone());
    }
    names
}

/// Anti-spoofing: for each internal interface with `source_check`, the sources it accepts:
/// its subnet, every destination routed (in any table) through a next hop on it, and its
/// `allowed_sources`. A default route through it (a firewall leg) admits everything.
/// The fast path (`ALLOWED_SOURCES`) and the kernel's slow path (nftables) both use this.
pub fn allowed_sources(router: &Router) -> Vec<(String, Vec<Prefix>)> {
    let routes = of(router).routes;
    router
        .interfaces
        .iter()
        .filter(|i| i.source_check)
        .map(|i| {
            let subnet = i.address.subnet();
            let routed = routes
                .iter()
                .filter(|r| subnet.contains(r.nexthop))
                .map(|r| r.destination);
            let mut prefixes: Vec<Prefix> = std::iter::once(subnet)
                .chain(routed)
                .chain(i.allowed_sources.iter().copied())
                .collect();
            prefixes.sort();
            prefixes.dedup();
            (i.name.clone(), prefixes)
        })
        .collect()
}

/// The fast path's firewall: rules with counter slots, and flags. Rules keep the slot they
/// had in `previous` (the live rules) when an identical rule is still there, so counters
/// survive unrelated edits; new rules take free slots, which the caller zeroes (`fresh`).
pub struct FirewallProgram {
    pub rules: Vec<FwRule>,
    pub flags: u32,
    /// Slots given to new rules (their counters must start from zero).
    pub fresh: Vec<u8>,
}

pub fn firewall(router: &Router, previous: &[FwRule]) -> FirewallProgram {
    let Some(fw) = &router.firewall else {
        return FirewallProgram {
            rules: Vec::new(),
            flags: 0,
            fresh: Vec::new(),
        };
    };
    let mut available: Vec<FwRule> = previous.to_vec();
    let mut used = [false; FW_STATS_SLOTS as usize];
    let mut rules = Vec::with_capacity(fw.rules.len());
    let mut pending = Vec::new();
    for (i, r) in fw.rules.iter().enumerate() {
        let rule = r.to_fw_rule(0);
        match available
            .iter()
            .position(|p| FwRule { slot: 0, ..*p } == rule)
        {
            Some(at) => {
                let kept = available.swap_remove(at);
                used[usize::from(kept.slot)] = true;
                rules.push(kept);
            }
            None => {
                pending.push(i);
                rules.push(rule);
            }
        }
    }
    let mut fresh = Vec::new();
    let mut free = (0..fw_slot::FIRST_FIXED as usize).filter(|s| !used[*s]);
    for i in pending {
        // Validation caps the rules far below the slots.
        let slot = free.next().unwrap_or(0) as u8;
        rules[i].slot = slot;
        fresh.push(slot);
    }
    let mut flags = fw_flags::ENABLED;
    if fw.default_allow {
        flags |= fw_flags::DEFAULT_ALLOW;
    }
    FirewallProgram {
        rules,
        flags,
        fresh,
    }
}

/// Whether `table` is one the router generates.
pub fn is_generated(table: u32) -> bool {
    table >= router_common::TABLE_GENERATED_MIN
}

/// The name `routerctl` shows for a table.
pub fn table_name(router: &Router, table: u32) -> String {
    match table {
        TABLE_MAIN => "main".into(),
        TABLE_STEER_INTERNAL => "steer-internal".into(),
        TABLE_STEER_GATEWAY => "steer-gateway".into(),
        t if is_generated(t) => format!("external-{}", t - table_external_subnet(0)),
        t => router.table_name(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DesiredState;

    fn router(extra: &str) -> Router {
        let text = format!(
            r#"
[[router]]
id = "r1"
namespace = "ns1"
[router.gateway]
interface = "qg-1"
address = "172.24.4.2/24"
nexthop = "172.24.4.1"
[[router.interface]]
name = "qr-a"
address = "10.0.1.1/24"
[[router.interface]]
name = "qr-b"
address = "10.0.2.1/24"
[[router.interface]]
name = "fw-int"
address = "10.99.0.1/24"
[[router.interface]]
name = "fw-ext"
address = "10.99.1.1/24"
{extra}
"#
        );
        DesiredState::parse(&text).expect("valid").routers.remove(0)
    }

    #[test]
    fn steering_generates_rules_and_tables() {
        let r = router(
            r#"
[router.steering]
nexthop = "10.99.0.2"
gateway_nexthop = "10.99.1.2"
interfaces = ["qr-a", "qr-b"]
"#,
        );
        let p = of(&r);
        let iifs: Vec<_> = p
            .rules
            .iter()
            .map(|r| r.iif.clone().expect("iif"))
            .collect();
        assert_eq!(iifs, ["qr-a", "qr-b", "qg-1"]);
        assert!(p.rules.iter().all(|r| r.origin == Origin::Steering));
        assert_eq!(p.rules[2].table, TABLE_STEER_GATEWAY);
        assert!(p.routes.contains(&TableRoute {
            table: TABLE_STEER_INTERNAL,
            destination: Prefix::ANY,
            nexthop: "10.99.0.2".parse().expect("address"),
        }));
        assert!(p.source_tables.is_empty());
    }

    #[test]
    fn external_subnets_get_a_table_each_when_there_are_several() {
        let one = router("");
        assert!(of(&one).source_tables.is_empty());
        let two = router(
            r#"
[[router.gateway.subnet]]
address = "172.24.5.2/24"
nexthop = "172.24.5.1"
"#,
        );
        let p = of(&two);
        assert_eq!(p.source_tables.len(), 2);
        assert_eq!(p.source_tables[1].1, table_external_subnet(1));
        assert!(p.rules.iter().all(|r| !r.in_fast_path()));
        assert_eq!(table_name(&two, table_external_subnet(1)), "external-1");
        // The second subnet's marked traffic: main without its default, then its table.
        let marked: Vec<_> = p
            .rules
            .iter()
            .filter(|r| r.fwmark.is_some())
            .map(|r| (r.fwmark, r.table, r.suppress_prefixlength))
            .collect();
        let mark = Some((0x100, SUBNET_MARK_MASK));
        assert_eq!(
            marked,
            [
                (mark, TABLE_MAIN, Some(0)),
                (mark, table_external_subnet(1), None)
            ]
        );
    }

    #[test]
    fn floating_ips_of_further_subnets_are_marked_by_their_fixed_address() {
        let fips = r#"
[[router.floating_ip]]
address = "172.24.4.10"
fixed = "10.0.1.10"
[[router.floating_ip]]
address = "172.24.5.11"
fixed = "10.0.1.11"
"#;
        let primary_only =
            "[[router.floating_ip]]\naddress = \"172.24.4.10\"\nfixed = \"10.0.1.10\"\n";
        assert!(floating_ip_marks(&router(primary_only)).is_empty());
        let two = router(&format!(
            "{fips}[[router.gateway.subnet]]\naddress = \"172.24.5.2/24\"\nnexthop = \"172.24.5.1\"\n"
        ));
        assert_eq!(
            floating_ip_marks(&two),
            [("10.0.1.11".parse().expect("address"), 0x100)]
        );
    }

    #[test]
    fn the_steering_zone_holds_steered_interfaces_and_a_separate_internal_leg() {
        assert!(steering_zone_interfaces(&router("")).is_empty());
        let one_leg =
            router("[router.steering]\nnexthop = \"10.99.0.2\"\ninterfaces = [\"qr-a\"]\n");
        assert_eq!(steering_zone_interfaces(&one_leg), ["qr-a"]);
        let two_legs = router(
            "[router.steering]\nnexthop = \"10.99.0.2\"\ngateway_nexthop = \"10.99.1.2\"\ninterfaces = [\"qr-a\", \"qr-b\"]\n",
        );
        assert_eq!(
            steering_zone_interfaces(&two_legs),
            ["qr-a", "qr-b", "fw-int"]
        );
    }

    #[test]
    fn firewall_rules_keep_their_counter_slots_across_edits() {
        let r = router(
            r#"
[router.firewall]
[[router.firewall.rule]]
action = "deny"
protocol = "icmp"
[[router.firewall.rule]]
action = "allow"
protocol = "tcp"
"#,
        );
        let first = firewall(&r, &[]);
        assert_eq!(first.fresh, [0, 1]);
        assert_eq!(first.flags, fw_flags::ENABLED);
        let r2 = router(
            r#"
[router.firewall]
default = "allow"
[[router.firewall.rule]]
action = "allow"
protocol = "udp"
[[router.firewall.rule]]
action = "allow"
protocol = "tcp"
"#,
        );
        let second = firewall(&r2, &first.rules);
        // The tcp rule keeps slot 1; the new udp rule takes the first free slot (0 was
        // the icmp rule's, which is gone: free again, and zeroed).
        assert_eq!(second.rules[1].slot, 1);
        assert_eq!(second.rules[0].slot, 0);
        assert_eq!(second.fresh, [0]);
        assert_eq!(second.flags, fw_flags::ENABLED | fw_flags::DEFAULT_ALLOW);
    }
}
