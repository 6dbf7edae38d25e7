//! The checks of a desired state, on the typed model: the file loader runs them on each
//! section of a router as it reads it, [`super::DesiredState::validate`] on a state edited
//! as typed values, in the same order. A message names the key as the file writes it and
//! the value as the file would hold it.

use std::{collections::HashSet, net::Ipv4Addr};

use router_common::TABLE_MAIN;

use super::{
    Ctx, ExternalSubnet, FloatingIp, Gateway, IfAddr, Interface, NatSettings, Prefix, Route,
    Router, Table, firewall, policy,
};
use crate::error::ConfigError;

/// The longest router id. The id names a directory under bpffs and files under the run
/// directory (`<id>.json`, `<id>.owner`, `<id>.nft`), whose names may be 255 bytes; it never
/// names a kernel object with a short limit (interfaces, BPF objects and nftables tables have
/// names of their own). A Neutron router's id, a UUID, is 36 characters; its namespace
/// `qrouter-<uuid>` is 44, within [`NAMESPACE_MAX`].
const ROUTER_ID_MAX: usize = 64;

/// The longest namespace name (a file name under `/run/netns`).
const NAMESPACE_MAX: usize = 64;

/// The checks across routers: ids and namespaces are unique.
#[derive(Default)]
pub(super) struct StateChecks {
    ids: HashSet<String>,
    namespaces: HashSet<String>,
}

impl StateChecks {
    /// Checks router `index` whole, then that no router before it has its id or namespace.
    pub(super) fn router(&mut self, index: usize, r: &Router) -> Result<(), ConfigError> {
        let mut checks = RouterChecks::new(index, r)?;
        checks.gateway(r)?;
        checks.interfaces(r)?;
        checks.tables(r)?;
        checks.routes(r)?;
        checks.steering(r)?;
        checks.rules(r)?;
        checks.firewall(r)?;
        checks.nat(r)?;
        checks.floating_ips(r)?;
        checks.distributed(r)?;
        self.unique(index, r)
    }

    /// Checks that no router before router `index` has its id or namespace.
    pub(super) fn unique(&mut self, index: usize, r: &Router) -> Result<(), ConfigError> {
        let at = Ctx::router(index, &r.id);
        if !self.ids.insert(r.id.clone()) {
            return Err(at.bad("id", &r.id, "another router has this id"));
        }
        if !self.namespaces.insert(r.namespace.clone()) {
            return Err(at.bad(
                "namespace",
                &r.namespace,
                "another router uses this namespace",
            ));
        }
        Ok(())
    }
}

/// The checks of one router, a section at a time in the order of the file, so that the
/// file reader can check each section as soon as it has read it (a later section may refer
/// to an earlier one: routes to tables, rules to interfaces). Each method checks its
/// section of `r` and what it refers to.
pub(super) struct RouterChecks {
    at: Ctx,
    /// The interfaces and subnets of the gateway and interfaces checked so far.
    seen: Seen,
}

impl RouterChecks {
    /// Checks the router's id and namespace.
    pub(super) fn new(index: usize, r: &Router) -> Result<Self, ConfigError> {
        let at = Ctx::router(index, &r.id);
        if r.id.is_empty()
            || r.id.len() > ROUTER_ID_MAX
            || !r
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || r.id.starts_with('.')
        {
            return Err(at.bad(
                "id",
                &r.id,
                "must be 1-64 characters of letters, digits, '-', '_' or '.', not starting with '.'",
            ));
        }
        if r.namespace.is_empty() || r.namespace.contains('/') || r.namespace.len() > NAMESPACE_MAX
        {
            return Err(at.bad(
                "namespace",
                &r.namespace,
                "must be a namespace name (no '/')",
            ));
        }
        Ok(Self {
            at,
            seen: Seen::default(),
        })
    }

    pub(super) fn gateway(&mut self, r: &Router) -> Result<(), ConfigError> {
        match &r.gateway {
            None => Ok(()),
            Some(g) => check_gateway(&self.at, &mut self.seen, g),
        }
    }

    pub(super) fn interfaces(&mut self, r: &Router) -> Result<(), ConfigError> {
        for (i, f) in r.interfaces.iter().enumerate() {
            self.seen
                .add_iface(&self.at, &format!("interface[{i}]"), &f.name, f.address)?;
        }
        Ok(())
    }

    pub(super) fn tables(&self, r: &Router) -> Result<(), ConfigError> {
        policy::check_tables(&self.at, &r.tables)
    }

    /// After [`Self::gateway`] and [`Self::interfaces`] (a route's next hop is on one of
    /// their subnets).
    pub(super) fn routes(&self, r: &Router) -> Result<(), ConfigError> {
        check_routes(&self.at, &r.routes, &self.seen, &r.tables)
    }

    pub(super) fn steering(&self, r: &Router) -> Result<(), ConfigError> {
        policy::check_steering(
            &self.at,
            r.steering.as_ref(),
            r.gateway.as_ref(),
            &r.interfaces,
        )
    }

    pub(super) fn rules(&self, r: &Router) -> Result<(), ConfigError> {
        policy::check_rules(
            &self.at,
            &r.rules,
            &policy::RuleScope {
                tables: &r.tables,
                gateway: r.gateway.as_ref(),
                interfaces: &r.interfaces,
                generated: r.generated_rule_count(),
            },
        )
    }

    pub(super) fn firewall(&self, r: &Router) -> Result<(), ConfigError> {
        firewall::check_firewall(&self.at, r.firewall.as_ref())
    }

    pub(super) fn nat(&self, r: &Router) -> Result<(), ConfigError> {
        check_nat(&self.at, &r.nat)
    }

    pub(super) fn floating_ips(&self, r: &Router) -> Result<(), ConfigError> {
        check_floating_ips(
            &self.at,
            &r.floating_ips,
            r.gateway.as_ref(),
            &r.interfaces,
            r.nat.max_floating_ips,
        )
    }

    pub(super) fn distributed(&self, r: &Router) -> Result<(), ConfigError> {
        super::distributed::check_distributed(&self.at, r)
    }
}

/// A subnet the router is connected to: an interface's, or one of the external subnets.
struct Connected {
    /// The interface it is on.
    iface: String,
    subnet: Prefix,
    /// The router's own address on it.
    own: Ipv4Addr,
    /// How error messages name it.
    label: String,
}

/// Interfaces and connected subnets seen so far, for the uniqueness and overlap checks.
#[derive(Default)]
struct Seen {
    names: HashSet<String>,
    connected: Vec<Connected>,
}

impl Seen {
    fn add_iface(
        &mut self,
        at: &Ctx,
        key: &str,
        name: &str,
        address: IfAddr,
    ) -> Result<(), ConfigError> {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            return Err(at.bad(
                &format!("{key}.name"),
                name,
                "must be an interface name of 1-15 characters",
            ));
        }
        if !self.names.insert(name.to_string()) {
            return Err(at.bad(&format!("{key}.name"), name, "interface named twice"));
        }
        self.add_subnet(
            at,
            &format!("{key}.address"),
            name,
            address,
            format!("interface {name}"),
        )
    }

    /// Adds an address (and so its subnet) on interface `iface`.
    fn add_subnet(
        &mut self,
        at: &Ctx,
        key: &str,
        iface: &str,
        address: IfAddr,
        label: String,
    ) -> Result<(), ConfigError> {
        check_ifaddr(address).map_err(|problem| at.bad(key, &address.to_string(), problem))?;
        let subnet = address.subnet();
        if let Some(other) = self.connected.iter().find(|c| c.subnet.overlaps(&subnet)) {
            return Err(at.bad(
                key,
                &address.to_string(),
                &format!("subnet {subnet} overlaps the subnet of {}", other.label),
            ));
        }
        self.connected.push(Connected {
            iface: iface.to_string(),
            subnet,
            own: address.addr,
            label,
        });
        Ok(())
    }

    /// Whether `addr` is one of the router's own addresses.
    fn is_own(&self, addr: Ipv4Addr) -> bool {
        self.connected.iter().any(|c| c.own == addr)
    }
}

/// Whether `a` may be an interface's address: a unicast host address of a subnet of /8 to
/// /30.
fn check_ifaddr(a: IfAddr) -> Result<(), &'static str> {
    if !(8..=30).contains(&a.len) {
        return Err("prefix length must be 8 to 30 for an interface subnet");
    }
    let subnet = a.subnet();
    if a.addr == subnet.addr || a.addr == subnet.broadcast() {
        return Err("is the network or broadcast address of its subnet, not a host address");
    }
    let addr = a.addr;
    if addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() || addr.octets()[0] == 0 {
        return Err("is not a unicast host address");
    }
    Ok(())
}

/// Checks that `nexthop` is another host on `subnet` (not `own`, the network or the
/// broadcast address).
pub(super) fn host_on(subnet: Prefix, own: Ipv4Addr, nexthop: Ipv4Addr) -> bool {
    subnet.contains(nexthop)
        && nexthop != own
        && nexthop != subnet.addr
        && nexthop != subnet.broadcast()
}

fn check_gateway(at: &Ctx, seen: &mut Seen, g: &Gateway) -> Result<(), ConfigError> {
    seen.add_iface(at, "gateway", &g.interface, g.address)?;
    if !host_on(g.address.subnet(), g.address.addr, g.nexthop) {
        return Err(at.bad(
            "gateway.nexthop",
            &g.nexthop.to_string(),
            &format!(
                "must be another host on the gateway subnet {}",
                g.address.subnet()
            ),
        ));
    }
    for (i, s) in g.subnets.iter().enumerate() {
        let key = format!("gateway.subnet[{i}]");
        seen.add_subnet(
            at,
            &format!("{key}.address"),
            &g.interface,
            s.address,
            format!("external subnet {key} on {}", g.interface),
        )?;
        if !host_on(s.address.subnet(), s.address.addr, s.nexthop) {
            return Err(at.bad(
                &format!("{key}.nexthop"),
                &s.nexthop.to_string(),
                &format!(
                    "must be another host on the external subnet {} (not the router's address, network or broadcast)",
                    s.address.subnet()
                ),
            ));
        }
    }
    Ok(())
}

fn check_routes(
    at: &Ctx,
    routes: &[Route],
    seen: &Seen,
    tables: &[Table],
) -> Result<(), ConfigError> {
    let mut keys = HashSet::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let key = format!("route[{i}]");
        policy::check_table_known(at, &format!("{key}.table"), r.table, tables)?;
        let nexthop = r.nexthop.to_string();
        let Some(via) = seen.connected.iter().find(|c| c.subnet.contains(r.nexthop)) else {
            return Err(at.bad(
                &format!("{key}.nexthop"),
                &nexthop,
                "is on no subnet of this router's interfaces",
            ));
        };
        if seen.is_own(r.nexthop)
            || via.subnet.broadcast() == r.nexthop
            || via.subnet.addr == r.nexthop
        {
            return Err(at.bad(
                &format!("{key}.nexthop"),
                &nexthop,
                &format!(
                    "must be a host on {}'s subnet {}, not the router, network or broadcast address",
                    via.iface, via.subnet
                ),
            ));
        }
        // Main has the connected routes already; another table may send a connected
        // subnet elsewhere (through a firewall, say).
        if r.table == TABLE_MAIN
            && let Some(conn) = seen.connected.iter().find(|c| c.subnet == r.destination)
        {
            return Err(at.bad(
                &format!("{key}.destination"),
                &r.destination.to_string(),
                &format!("is the connected subnet of {}", conn.label),
            ));
        }
        if !keys.insert((r.table, r.destination)) {
            return Err(at.bad(
                &format!("{key}.destination"),
                &r.destination.to_string(),
                &format!(
                    "route given twice in table {}",
                    table_label(tables, r.table)
                ),
            ));
        }
    }
    Ok(())
}

/// A table as messages name it.
fn table_label(tables: &[Table], id: u32) -> String {
    if id == TABLE_MAIN {
        return "main".into();
    }
    match tables.iter().find(|t| t.id == id) {
        Some(t) => format!("{} ({id})", t.name),
        None => id.to_string(),
    }
}

fn check_floating_ips(
    at: &Ctx,
    fips: &[FloatingIp],
    gateway: Option<&Gateway>,
    interfaces: &[Interface],
    max: u32,
) -> Result<(), ConfigError> {
    if fips.len() > max as usize {
        return Err(at.bad(
            "floating_ip",
            &format!("{} entries", fips.len()),
            &format!("more than nat.max_floating_ips ({max})"),
        ));
    }
    // Sets, not scans: tens of thousands of floating IPs must validate in milliseconds.
    let mut addresses = HashSet::with_capacity(fips.len());
    let mut fixeds = HashSet::with_capacity(fips.len());
    let mut ids = HashSet::new();
    let external: Vec<ExternalSubnet> = gateway
        .iter()
        .flat_map(|g| {
            std::iter::once(ExternalSubnet {
                address: g.address,
                nexthop: g.nexthop,
            })
            .chain(g.subnets.iter().copied())
        })
        .collect();
    let external_list = || {
        external
            .iter()
            .map(|e| e.address.subnet().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, f) in fips.iter().enumerate() {
        let key = format!("floating_ip[{i}]");
        let (address, fixed) = (f.address, f.fixed);
        let bad_address =
            |problem: &str| at.bad(&format!("{key}.address"), &address.to_string(), problem);
        let bad_fixed =
            |problem: &str| at.bad(&format!("{key}.fixed"), &fixed.to_string(), problem);
        if gateway.is_none() {
            return Err(bad_address(
                "a floating IP needs a router gateway (router.gateway)",
            ));
        }
        let Some(subnet) = external
            .iter()
            .map(|e| e.address.subnet())
            .find(|s| s.contains(address))
        else {
            return Err(bad_address(&format!(
                "is in no external subnet of this router ({})",
                external_list()
            )));
        };
        if address == subnet.addr || address == subnet.broadcast() {
            return Err(bad_address(&format!(
                "is not a host address of the external subnet {subnet}"
            )));
        }
        if external
            .iter()
            .any(|e| address == e.address.addr || address == e.nexthop)
        {
            return Err(bad_address(
                "is one of the router's gateway IPs or an external subnet's next hop",
            ));
        }
        let Some(inside) = interfaces
            .iter()
            .find(|i| i.address.subnet().contains(fixed))
        else {
            return Err(bad_fixed("is on no internal subnet of this router"));
        };
        let subnet = inside.address.subnet();
        if fixed == inside.address.addr || fixed == subnet.addr || fixed == subnet.broadcast() {
            return Err(bad_fixed(&format!(
                "is not a VM address on {}'s subnet {subnet}",
                inside.name
            )));
        }
        if !addresses.insert(address) {
            return Err(bad_address("floating IP given twice"));
        }
        if !fixeds.insert(fixed) {
            return Err(bad_fixed("already has a floating IP (one per fixed IP)"));
        }
        if let Some(id) = f.id
            && !ids.insert(id)
        {
            return Err(at.bad(
                &format!("{key}.id"),
                &id.to_string(),
                "another floating IP of this router has this id",
            ));
        }
    }
    Ok(())
}

fn check_nat(at: &Ctx, nat: &NatSettings) -> Result<(), ConfigError> {
    let (a, b) = (nat.snat_ports, nat.slow_path_snat_ports);
    for (key, range) in [("nat.snat_ports", a), ("nat.slow_path_snat_ports", b)] {
        if range.min == 0 || range.max < range.min {
            return Err(at.bad(
                key,
                &range.to_string(),
                "must be low-high with 1 <= low <= high <= 65535",
            ));
        }
    }
    if a.min <= b.max && b.min <= a.max {
        return Err(at.bad(
            "nat.slow_path_snat_ports",
            &b.to_string(),
            &format!("overlaps nat.snat_ports {a}: the kernel and the fast path would hand out the same ports"),
        ));
    }
    let n = nat.max_sessions;
    if !(16..=(1 << 22)).contains(&n) {
        return Err(at.bad("nat.max_sessions", &n.to_string(), "must be 16 to 4194304"));
    }
    let n = nat.max_floating_ips;
    if !(1..=65_536).contains(&n) {
        return Err(at.bad("nat.max_floating_ips", &n.to_string(), "must be 1 to 65536"));
    }
    let n = nat.snat_sessions_per_source;
    if n > nat.max_sessions {
        return Err(at.bad(
            "nat.snat_sessions_per_source",
            &n.to_string(),
            &format!("must be at most nat.max_sessions ({})", nat.max_sessions),
        ));
    }
    if nat.metadata_port == 0 {
        return Err(at.bad("nat.metadata_port", "0", "must be a port number 1-65535"));
    }
    let t = &nat.timeouts;
    let timeouts = [
        ("tcp_syn_sent", t.tcp_syn_sent),
        ("tcp_syn_recv", t.tcp_syn_recv),
        ("tcp_established", t.tcp_established),
        ("tcp_fin_wait", t.tcp_fin_wait),
        ("tcp_close_wait", t.tcp_close_wait),
        ("tcp_time_wait", t.tcp_time_wait),
        ("tcp_close", t.tcp_close),
        ("udp", t.udp),
        ("udp_stream", t.udp_stream),
        ("icmp", t.icmp),
        ("generic", t.generic),
    ];
    for (name, v) in timeouts {
        if v == 0 || v > 30 * 86_400 {
            return Err(at.bad(
                &format!("nat.timeouts.{name}"),
                &v.to_string(),
                "must be 1 to 2592000 seconds",
            ));
        }
    }
    Ok(())
}
