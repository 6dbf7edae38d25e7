//! The desired state: a TOML file in Neutron's vocabulary, parsed and validated whole before
//! anything is touched. Every error names the offending key and value.
//!
//! - this module: routers, interfaces, the gateway and its external subnets,
//!   routes, floating IPs, NAT settings;
//! - [`policy`]: routing tables, policy rules (`ip rule`) and firewall steering;
//! - [`firewall`]: the stateful firewall (FWaaS);
//! - [`render`]: the state written back as TOML ([`DesiredState::to_toml`]).
//!
//! `docs/configuration.md` is the operator's reference of the file.

use std::{collections::HashSet, fmt, net::Ipv4Addr, path::Path, str::FromStr};

use router_common::TABLE_MAIN;
use serde::Deserialize;

use crate::error::{ConfigError, Error};

mod firewall;
mod policy;
mod render;
#[cfg(test)]
mod tests;

pub use firewall::{Firewall, FirewallRule, FwAction};
pub use policy::{Rule, Steering, Table};

/// A validated desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredState {
    pub routers: Vec<Router>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// XDP on every interface (native), with the TC entry alongside for egresses that
    /// cannot take XDP frames.
    Xdp,
    /// TC (tcx) only, for interfaces without native XDP.
    Tc,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Xdp => "xdp",
            Mode::Tc => "tc",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    pub id: String,
    pub namespace: String,
    pub mode: Mode,
    pub gateway: Option<Gateway>,
    pub interfaces: Vec<Interface>,
    /// Routes of every table, in file order (see [`Route::table`]).
    pub routes: Vec<Route>,
    pub floating_ips: Vec<FloatingIp>,
    pub nat: NatSettings,
    /// Routing tables besides main (`[[router.table]]`), in file order.
    pub tables: Vec<Table>,
    /// Policy rules (`[[router.rule]]`), in file order; the fast path walks them by
    /// priority, before the rules the router generates for steering and external subnets.
    pub rules: Vec<Rule>,
    /// Firewall steering, `None` without `[router.steering]`.
    pub steering: Option<Steering>,
    /// The stateful firewall on internal interfaces, `None` = no firewall.
    pub firewall: Option<Firewall>,
}

impl Router {
    /// A table's name as the file writes it: `"main"`, a `[[router.table]]` name, or the
    /// number.
    pub fn table_name(&self, id: u32) -> String {
        if id == TABLE_MAIN {
            return "main".into();
        }
        self.tables
            .iter()
            .find(|t| t.id == id)
            .map_or_else(|| id.to_string(), |t| t.name.clone())
    }

    /// Every subnet of the external network the router has an address on: the gateway's
    /// primary one (`gateway.address`, `gateway.nexthop`) first, then `gateway.subnets`.
    /// Empty without a gateway.
    pub fn external_subnets(&self) -> Vec<ExternalSubnet> {
        self.gateway
            .iter()
            .flat_map(|g| {
                std::iter::once(ExternalSubnet {
                    address: g.address,
                    nexthop: g.nexthop,
                })
                .chain(g.subnets.iter().copied())
            })
            .collect()
    }

    /// Policy rules the router generates besides `rules`: one per steered interface, one
    /// for gateway steering, and one per external subnet when there is more than one.
    pub fn generated_rule_count(&self) -> usize {
        let external = self.gateway.as_ref().map_or(0, |g| 1 + g.subnets.len());
        policy::generated_rules(self.steering.as_ref(), external)
    }
}

/// A 1:1 floating IP on the external network for a VM's fixed IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FloatingIp {
    pub address: Ipv4Addr,
    pub fixed: Ipv4Addr,
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// NAT and session settings (`[router.nat]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatSettings {
    /// Ports the fast path gives default-SNAT sessions.
    pub snat_ports: PortRange,
    /// Ports the kernel's slow-path SNAT uses (disjoint from `snat_ports`).
    pub slow_path_snat_ports: PortRange,
    /// Sessions the table holds (each takes two map entries).
    pub max_sessions: u32,
    /// Floating IPs the router's tables hold (their counters are preallocated).
    pub max_floating_ips: u32,
    /// Most SNAT sessions one internal address may hold (0: no limit).
    pub snat_sessions_per_source: u32,
    /// Port of the metadata proxy in the router namespace.
    pub metadata_port: u16,
    pub timeouts: crate::conntrack::Timeouts,
}

impl Default for NatSettings {
    fn default() -> Self {
        Self {
            snat_ports: PortRange {
                min: 1024,
                max: 64511,
            },
            slow_path_snat_ports: PortRange {
                min: 64512,
                max: 65535,
            },
            max_sessions: 65_536,
            max_floating_ips: 1024,
            snat_sessions_per_source: 0,
            metadata_port: 9697,
            timeouts: crate::conntrack::Timeouts::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub interface: String,
    pub address: IfAddr,
    pub nexthop: Ipv4Addr,
    pub snat: bool,
    pub xdp_egress: Option<bool>,
    /// Further subnets of the external network, each with the router's address
    /// on it (added to the gateway interface) and its own gateway. The primary subnet
    /// (`address`, `nexthop`) is not in this list; see [`Router::external_subnets`].
    pub subnets: Vec<ExternalSubnet>,
}

/// One subnet of the external network: the router's address on it and the subnet's
/// gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExternalSubnet {
    pub address: IfAddr,
    pub nexthop: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub address: IfAddr,
    /// Whether XDP-redirected frames are delivered by this interface; `None` = decide from
    /// the interface kind (see `netlink::xdp_egress_default`).
    pub xdp_egress: Option<bool>,
    /// Anti-spoofing: packets arriving here must come from the interface's subnet, a
    /// network routed through a next hop on it, or `allowed_sources` (default on).
    pub source_check: bool,
    /// Further sources VMs on this interface may use (Neutron's allowed address pairs).
    pub allowed_sources: Vec<Prefix>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: Prefix,
    pub nexthop: Ipv4Addr,
    /// The table id ([`TABLE_MAIN`] unless the file says otherwise).
    pub table: u32,
}

/// An interface address with its prefix length, like `10.0.1.1/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfAddr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl IfAddr {
    pub fn subnet(&self) -> Prefix {
        Prefix::new_truncating(self.addr, self.len)
    }
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A network prefix with no host bits set, like `10.20.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    /// 0.0.0.0/0.
    pub const ANY: Prefix = Prefix {
        addr: Ipv4Addr::UNSPECIFIED,
        len: 0,
    };

    pub fn new_truncating(addr: Ipv4Addr, len: u8) -> Self {
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        }
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.len) == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Prefix) -> bool {
        let len = self.len.min(other.len);
        u32::from(self.addr) & mask(len) == u32::from(other.addr) & mask(len)
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.len))
    }

    /// The prefix as the fast path matches it.
    pub fn to_net(&self) -> router_common::Net {
        router_common::Net::new(self.addr.octets(), self.len)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn parse_addr_len(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr = Ipv4Addr::from_str(addr).ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some((addr, len))
}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileState {
    #[serde(default)]
    router: Vec<FileRouter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRouter {
    id: String,
    namespace: String,
    #[serde(default = "default_mode")]
    mode: String,
    gateway: Option<FileGateway>,
    #[serde(default)]
    interface: Vec<FileInterface>,
    #[serde(default)]
    route: Vec<FileRoute>,
    #[serde(default)]
    floating_ip: Vec<FileFloatingIp>,
    nat: Option<FileNat>,
    #[serde(default)]
    table: Vec<policy::FileTable>,
    #[serde(default)]
    rule: Vec<policy::FileRule>,
    steering: Option<policy::FileSteering>,
    firewall: Option<firewall::FileFirewall>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFloatingIp {
    address: String,
    fixed: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNat {
    snat_ports: Option<String>,
    slow_path_snat_ports: Option<String>,
    max_sessions: Option<u32>,
    max_floating_ips: Option<u32>,
    snat_sessions_per_source: Option<u32>,
    metadata_port: Option<u16>,
    timeouts: Option<FileTimeouts>,
}

/// Session timeouts in seconds; missing ones keep Linux conntrack's defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTimeouts {
    tcp_syn_sent: Option<u64>,
    tcp_syn_recv: Option<u64>,
    tcp_established: Option<u64>,
    tcp_fin_wait: Option<u64>,
    tcp_close_wait: Option<u64>,
    tcp_time_wait: Option<u64>,
    tcp_close: Option<u64>,
    udp: Option<u64>,
    udp_stream: Option<u64>,
    icmp: Option<u64>,
    generic: Option<u64>,
}

fn default_mode() -> String {
    "xdp".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGateway {
    interface: String,
    address: String,
    nexthop: String,
    #[serde(default = "default_snat")]
    snat: bool,
    xdp_egress: Option<bool>,
    #[serde(default)]
    subnet: Vec<FileExternalSubnet>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExternalSubnet {
    address: String,
    nexthop: String,
}

fn default_snat() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInterface {
    name: String,
    address: String,
    xdp_egress: Option<bool>,
    source_check: Option<bool>,
    #[serde(default)]
    allowed_sources: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    destination: String,
    nexthop: String,
    /// A table name, number, or "main" (the default).
    table: Option<toml::Value>,
}

impl DesiredState {
    /// Reads and validates a desired-state file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        Ok(Self::parse(&text)?)
    }

    /// Parses and validates desired-state TOML.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: FileState =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let mut routers = Vec::with_capacity(file.router.len());
        let mut ids = HashSet::new();
        let mut namespaces = HashSet::new();
        for (i, r) in file.router.iter().enumerate() {
            let router = validate_router(i, r)?;
            let at = Ctx::router(i, &r.id);
            if !ids.insert(router.id.clone()) {
                return Err(at.bad("id", &r.id, "another router has this id"));
            }
            if !namespaces.insert(router.namespace.clone()) {
                return Err(at.bad(
                    "namespace",
                    &r.namespace,
                    "another router uses this namespace",
                ));
            }
            routers.push(router);
        }
        Ok(Self { routers })
    }

    pub fn router(&self, id: &str) -> Option<&Router> {
        self.routers.iter().find(|r| r.id == id)
    }
}

/// Where in the file a value sits, for error messages.
struct Ctx {
    base: String,
}

impl Ctx {
    fn router(index: usize, id: &str) -> Self {
        Self {
            base: format!("router[{index}] (id \"{id}\")"),
        }
    }

    fn bad(&self, key: &str, value: &str, problem: &str) -> ConfigError {
        ConfigError::Invalid {
            key: format!("{}.{key}", self.base),
            value: value.to_string(),
            problem: problem.to_string(),
        }
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
        address: &str,
    ) -> Result<IfAddr, ConfigError> {
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
        address: &str,
        label: String,
    ) -> Result<IfAddr, ConfigError> {
        let addr = parse_ifaddr(address).map_err(|problem| at.bad(key, address, problem))?;
        let subnet = addr.subnet();
        if let Some(other) = self.connected.iter().find(|c| c.subnet.overlaps(&subnet)) {
            return Err(at.bad(
                key,
                address,
                &format!("subnet {subnet} overlaps the subnet of {}", other.label),
            ));
        }
        self.connected.push(Connected {
            iface: iface.to_string(),
            subnet,
            own: addr.addr,
            label,
        });
        Ok(addr)
    }

    /// Whether `addr` is one of the router's own addresses.
    fn is_own(&self, addr: Ipv4Addr) -> bool {
        self.connected.iter().any(|c| c.own == addr)
    }
}

/// Checks that `nexthop` is another host on `subnet` (not `own`, the network or the
/// broadcast address).
fn host_on(subnet: Prefix, own: Ipv4Addr, nexthop: Ipv4Addr) -> bool {
    subnet.contains(nexthop)
        && nexthop != own
        && nexthop != subnet.addr
        && nexthop != subnet.broadcast()
}

fn validate_router(index: usize, r: &FileRouter) -> Result<Router, ConfigError> {
    let at = Ctx::router(index, &r.id);
    if r.id.is_empty()
        || r.id.len() > 32
        || !r
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || r.id.starts_with('.')
    {
        return Err(at.bad(
            "id",
            &r.id,
            "must be 1-32 characters of letters, digits, '-', '_' or '.', not starting with '.'",
        ));
    }
    if r.namespace.is_empty() || r.namespace.contains('/') || r.namespace.len() > 64 {
        return Err(at.bad(
            "namespace",
            &r.namespace,
            "must be a namespace name (no '/')",
        ));
    }
    let mode = match r.mode.as_str() {
        "xdp" => Mode::Xdp,
        "tc" => Mode::Tc,
        _ => return Err(at.bad("mode", &r.mode, "must be \"xdp\" or \"tc\"")),
    };

    let mut seen = Seen::default();
    let gateway = match &r.gateway {
        None => None,
        Some(g) => Some(validate_gateway(&at, &mut seen, g)?),
    };
    let mut interfaces = Vec::with_capacity(r.interface.len());
    for (i, f) in r.interface.iter().enumerate() {
        let address = seen.add_iface(&at, &format!("interface[{i}]"), &f.name, &f.address)?;
        let mut allowed_sources = Vec::with_capacity(f.allowed_sources.len());
        for (j, text) in f.allowed_sources.iter().enumerate() {
            let prefix = parse_prefix_or_addr(text).map_err(|problem| {
                at.bad(
                    &format!("interface[{i}].allowed_sources[{j}]"),
                    text,
                    problem,
                )
            })?;
            allowed_sources.push(prefix);
        }
        interfaces.push(Interface {
            name: f.name.clone(),
            address,
            xdp_egress: f.xdp_egress,
            source_check: f.source_check.unwrap_or(true),
            allowed_sources,
        });
    }

    let tables = policy::validate_tables(&at, &r.table)?;
    let routes = validate_routes(&at, &r.route, &seen, &tables)?;
    let steering =
        policy::validate_steering(&at, r.steering.as_ref(), gateway.as_ref(), &interfaces)?;
    let external = gateway.as_ref().map_or(0, |g| 1 + g.subnets.len());
    let rules = policy::validate_rules(
        &at,
        &r.rule,
        &policy::RuleScope {
            tables: &tables,
            gateway: gateway.as_ref(),
            interfaces: &interfaces,
            generated: policy::generated_rules(steering.as_ref(), external),
        },
    )?;
    let firewall = firewall::validate_firewall(&at, r.firewall.as_ref())?;
    let nat = validate_nat(&at, r.nat.as_ref())?;
    let floating_ips = validate_floating_ips(
        &at,
        &r.floating_ip,
        gateway.as_ref(),
        &interfaces,
        nat.max_floating_ips,
    )?;

    Ok(Router {
        id: r.id.clone(),
        namespace: r.namespace.clone(),
        mode,
        gateway,
        interfaces,
        routes,
        floating_ips,
        nat,
        tables,
        rules,
        steering,
        firewall,
    })
}

fn validate_gateway(at: &Ctx, seen: &mut Seen, g: &FileGateway) -> Result<Gateway, ConfigError> {
    let address = seen.add_iface(at, "gateway", &g.interface, &g.address)?;
    let nexthop =
        parse_ip(&g.nexthop).map_err(|problem| at.bad("gateway.nexthop", &g.nexthop, problem))?;
    if !host_on(address.subnet(), address.addr, nexthop) {
        return Err(at.bad(
            "gateway.nexthop",
            &g.nexthop,
            &format!(
                "must be another host on the gateway subnet {}",
                address.subnet()
            ),
        ));
    }
    let mut subnets = Vec::with_capacity(g.subnet.len());
    for (i, s) in g.subnet.iter().enumerate() {
        let key = format!("gateway.subnet[{i}]");
        let sub_address = seen.add_subnet(
            at,
            &format!("{key}.address"),
            &g.interface,
            &s.address,
            format!("external subnet {key} on {}", g.interface),
        )?;
        let sub_nexthop = parse_ip(&s.nexthop)
            .map_err(|problem| at.bad(&format!("{key}.nexthop"), &s.nexthop, problem))?;
        if !host_on(sub_address.subnet(), sub_address.addr, sub_nexthop) {
            return Err(at.bad(
                &format!("{key}.nexthop"),
                &s.nexthop,
                &format!(
                    "must be another host on the external subnet {} (not the router's address, network or broadcast)",
                    sub_address.subnet()
                ),
            ));
        }
        subnets.push(ExternalSubnet {
            address: sub_address,
            nexthop: sub_nexthop,
        });
    }
    Ok(Gateway {
        interface: g.interface.clone(),
        address,
        nexthop,
        snat: g.snat,
        xdp_egress: g.xdp_egress,
        subnets,
    })
}

fn validate_routes(
    at: &Ctx,
    file: &[FileRoute],
    seen: &Seen,
    tables: &[Table],
) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(file.len());
    let mut keys = HashSet::with_capacity(file.len());
    for (i, f) in file.iter().enumerate() {
        let key = format!("route[{i}]");
        let destination = parse_prefix(&f.destination)
            .map_err(|problem| at.bad(&format!("{key}.destination"), &f.destination, problem))?;
        let nexthop = parse_ip(&f.nexthop)
            .map_err(|problem| at.bad(&format!("{key}.nexthop"), &f.nexthop, problem))?;
        let table = match &f.table {
            None => TABLE_MAIN,
            Some(v) => policy::resolve_table(at, &format!("{key}.table"), v, tables)?,
        };
        let Some(via) = seen.connected.iter().find(|c| c.subnet.contains(nexthop)) else {
            return Err(at.bad(
                &format!("{key}.nexthop"),
                &f.nexthop,
                "is on no subnet of this router's interfaces",
            ));
        };
        if seen.is_own(nexthop) || via.subnet.broadcast() == nexthop || via.subnet.addr == nexthop {
            return Err(at.bad(
                &format!("{key}.nexthop"),
                &f.nexthop,
                &format!(
                    "must be a host on {}'s subnet {}, not the router, network or broadcast address",
                    via.iface, via.subnet
                ),
            ));
        }
        // Main has the connected routes already; another table may send a connected
        // subnet elsewhere (through a firewall, say).
        if table == TABLE_MAIN
            && let Some(conn) = seen.connected.iter().find(|c| c.subnet == destination)
        {
            return Err(at.bad(
                &format!("{key}.destination"),
                &f.destination,
                &format!("is the connected subnet of {}", conn.label),
            ));
        }
        if !keys.insert((table, destination)) {
            return Err(at.bad(
                &format!("{key}.destination"),
                &f.destination,
                &format!("route given twice in table {}", table_label(tables, table)),
            ));
        }
        routes.push(Route {
            destination,
            nexthop,
            table,
        });
    }
    Ok(routes)
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

fn validate_floating_ips(
    at: &Ctx,
    file: &[FileFloatingIp],
    gateway: Option<&Gateway>,
    interfaces: &[Interface],
    max: u32,
) -> Result<Vec<FloatingIp>, ConfigError> {
    if file.len() > max as usize {
        return Err(at.bad(
            "floating_ip",
            &format!("{} entries", file.len()),
            &format!("more than nat.max_floating_ips ({max})"),
        ));
    }
    let mut out: Vec<FloatingIp> = Vec::with_capacity(file.len());
    // Sets, not scans: tens of thousands of floating IPs must validate in milliseconds.
    let mut addresses = HashSet::with_capacity(file.len());
    let mut fixeds = HashSet::with_capacity(file.len());
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
    for (i, f) in file.iter().enumerate() {
        let key = format!("floating_ip[{i}]");
        let address = parse_ip(&f.address)
            .map_err(|problem| at.bad(&format!("{key}.address"), &f.address, problem))?;
        let fixed = parse_ip(&f.fixed)
            .map_err(|problem| at.bad(&format!("{key}.fixed"), &f.fixed, problem))?;
        if gateway.is_none() {
            return Err(at.bad(
                &format!("{key}.address"),
                &f.address,
                "a floating IP needs a router gateway (router.gateway)",
            ));
        }
        let Some(subnet) = external
            .iter()
            .map(|e| e.address.subnet())
            .find(|s| s.contains(address))
        else {
            return Err(at.bad(
                &format!("{key}.address"),
                &f.address,
                &format!(
                    "is in no external subnet of this router ({})",
                    external_list()
                ),
            ));
        };
        if address == subnet.addr || address == subnet.broadcast() {
            return Err(at.bad(
                &format!("{key}.address"),
                &f.address,
                &format!("is not a host address of the external subnet {subnet}"),
            ));
        }
        if external
            .iter()
            .any(|e| address == e.address.addr || address == e.nexthop)
        {
            return Err(at.bad(
                &format!("{key}.address"),
                &f.address,
                "is one of the router's gateway IPs or an external subnet's next hop",
            ));
        }
        let Some(inside) = interfaces
            .iter()
            .find(|i| i.address.subnet().contains(fixed))
        else {
            return Err(at.bad(
                &format!("{key}.fixed"),
                &f.fixed,
                "is on no internal subnet of this router",
            ));
        };
        let subnet = inside.address.subnet();
        if fixed == inside.address.addr || fixed == subnet.addr || fixed == subnet.broadcast() {
            return Err(at.bad(
                &format!("{key}.fixed"),
                &f.fixed,
                &format!("is not a VM address on {}'s subnet {subnet}", inside.name),
            ));
        }
        if !addresses.insert(address) {
            return Err(at.bad(
                &format!("{key}.address"),
                &f.address,
                "floating IP given twice",
            ));
        }
        if !fixeds.insert(fixed) {
            return Err(at.bad(
                &format!("{key}.fixed"),
                &f.fixed,
                "already has a floating IP (one per fixed IP)",
            ));
        }
        out.push(FloatingIp { address, fixed });
    }
    Ok(out)
}

fn validate_nat(at: &Ctx, file: Option<&FileNat>) -> Result<NatSettings, ConfigError> {
    let mut nat = NatSettings::default();
    let Some(f) = file else {
        return Ok(nat);
    };
    if let Some(s) = &f.snat_ports {
        nat.snat_ports =
            parse_port_range(s).map_err(|problem| at.bad("nat.snat_ports", s, problem))?;
    }
    if let Some(s) = &f.slow_path_snat_ports {
        nat.slow_path_snat_ports = parse_port_range(s)
            .map_err(|problem| at.bad("nat.slow_path_snat_ports", s, problem))?;
    }
    let (a, b) = (nat.snat_ports, nat.slow_path_snat_ports);
    if a.min <= b.max && b.min <= a.max {
        return Err(at.bad(
            "nat.slow_path_snat_ports",
            &b.to_string(),
            &format!("overlaps nat.snat_ports {a}: the kernel and the fast path would hand out the same ports"),
        ));
    }
    if let Some(n) = f.max_sessions {
        if !(16..=(1 << 22)).contains(&n) {
            return Err(at.bad("nat.max_sessions", &n.to_string(), "must be 16 to 4194304"));
        }
        nat.max_sessions = n;
    }
    if let Some(n) = f.max_floating_ips {
        if !(1..=65_536).contains(&n) {
            return Err(at.bad("nat.max_floating_ips", &n.to_string(), "must be 1 to 65536"));
        }
        nat.max_floating_ips = n;
    }
    if let Some(n) = f.snat_sessions_per_source {
        if n > nat.max_sessions {
            return Err(at.bad(
                "nat.snat_sessions_per_source",
                &n.to_string(),
                &format!("must be at most nat.max_sessions ({})", nat.max_sessions),
            ));
        }
        nat.snat_sessions_per_source = n;
    }
    if let Some(p) = f.metadata_port {
        if p == 0 {
            return Err(at.bad("nat.metadata_port", "0", "must be a port number 1-65535"));
        }
        nat.metadata_port = p;
    }
    if let Some(t) = &f.timeouts {
        let d = &mut nat.timeouts;
        let fields = [
            ("tcp_syn_sent", t.tcp_syn_sent, &mut d.tcp_syn_sent),
            ("tcp_syn_recv", t.tcp_syn_recv, &mut d.tcp_syn_recv),
            ("tcp_established", t.tcp_established, &mut d.tcp_established),
            ("tcp_fin_wait", t.tcp_fin_wait, &mut d.tcp_fin_wait),
            ("tcp_close_wait", t.tcp_close_wait, &mut d.tcp_close_wait),
            ("tcp_time_wait", t.tcp_time_wait, &mut d.tcp_time_wait),
            ("tcp_close", t.tcp_close, &mut d.tcp_close),
            ("udp", t.udp, &mut d.udp),
            ("udp_stream", t.udp_stream, &mut d.udp_stream),
            ("icmp", t.icmp, &mut d.icmp),
            ("generic", t.generic, &mut d.generic),
        ];
        for (name, value, slot) in fields {
            if let Some(v) = value {
                if v == 0 || v > 30 * 86_400 {
                    return Err(at.bad(
                        &format!("nat.timeouts.{name}"),
                        &v.to_string(),
                        "must be 1 to 2592000 seconds",
                    ));
                }
                *slot = v;
            }
        }
    }
    Ok(nat)
}

fn parse_port_range(s: &str) -> Result<PortRange, &'static str> {
    let (a, b) = s.split_once('-').ok_or("not a port range (low-high)")?;
    let min: u16 = a
        .trim()
        .parse()
        .map_err(|_| "not a port range (low-high)")?;
    let max: u16 = b
        .trim()
        .parse()
        .map_err(|_| "not a port range (low-high)")?;
    if min == 0 || max < min {
        return Err("must be low-high with 1 <= low <= high <= 65535");
    }
    Ok(PortRange { min, max })
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, &'static str> {
    Ipv4Addr::from_str(s).map_err(|_| "not an IPv4 address")
}

fn parse_ifaddr(s: &str) -> Result<IfAddr, &'static str> {
    let (addr, len) =
        parse_addr_len(s).ok_or("not an IPv4 address with prefix length (a.b.c.d/len)")?;
    if !(8..=30).contains(&len) {
        return Err("prefix length must be 8 to 30 for an interface subnet");
    }
    let ifaddr = IfAddr { addr, len };
    let subnet = ifaddr.subnet();
    if addr == subnet.addr || addr == subnet.broadcast() {
        return Err("is the network or broadcast address of its subnet, not a host address");
    }
    if addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() || addr.octets()[0] == 0 {
        return Err("is not a unicast host address");
    }
    Ok(ifaddr)
}

fn parse_prefix(s: &str) -> Result<Prefix, &'static str> {
    let (addr, len) = parse_addr_len(s).ok_or("not an IPv4 prefix (a.b.c.d/len)")?;
    let prefix = Prefix::new_truncating(addr, len);
    if prefix.addr != addr {
        return Err("has host bits set after the prefix length");
    }
    Ok(prefix)
}

/// A prefix, or a bare address meaning its /32 (as `ip rule` and iptables take them).
fn parse_prefix_or_addr(s: &str) -> Result<Prefix, &'static str> {
    if s.contains('/') {
        parse_prefix(s)
    } else {
        let addr =
            Ipv4Addr::from_str(s).map_err(|_| "not an IPv4 prefix (a.b.c.d/len) or address")?;
        Ok(Prefix { addr, len: 32 })
    }
}

/// A TOML value as error messages quote it.
fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
