//! The desired state: a TOML file in Neutron's vocabulary, parsed and validated whole before
//! anything is touched. Every error names the offending key and value.
//!
//! - this module: the typed model (routers, interfaces, the gateway and its external
//!   subnets, routes, floating IPs, NAT settings) and its two ways in:
//!   [`DesiredState::parse`] for a file, [`DesiredState::validate`] for a state edited as
//!   typed values (the API's edits);
//! - [`file`]: the file as written, read into the typed model; reading checks only what a
//!   value's type cannot hold (an address that is not one, a table name no table has), and
//!   [`RouterText`] reads an edit's text values the same way;
//! - [`check`]: every other check, run on the typed model by both ways in, so a file and an
//!   edit get the same message for the same content;
//! - [`policy`]: routing tables, policy rules (`ip rule`) and firewall steering;
//! - [`firewall`]: the stateful firewall (FWaaS);
//! - [`render`]: the state written back as TOML ([`DesiredState::to_toml`]);
//! - [`edit`]: the state written over the operator's file, changing only what changed
//!   ([`DesiredState::to_toml_over`]).
//!
//! `docs/configuration.md` is the operator's reference of the file.

use std::{fmt, net::Ipv4Addr, path::Path};

use router_common::TABLE_MAIN;

use crate::error::{ConfigError, Error};

mod check;
mod distributed;
mod edit;
mod file;
mod firewall;
mod ident;
mod json;
mod policy;
mod render;
#[cfg(test)]
mod tests;

/// One router with a gateway and one internal interface: the smallest state other modules'
/// tests build on (appending keys of `[[router]]` to it).
#[cfg(test)]
pub(crate) const ONE_ROUTER: &str = r#"[[router]]
id = "r1"
namespace = "ns1"
[router.gateway]
interface = "qg-1"
address = "172.24.4.2/24"
nexthop = "172.24.4.1"
[[router.interface]]
name = "qr-a"
address = "10.0.0.1/24"
"#;

pub use distributed::{Distributed, Network, Port, VNI_MAX, dvr_mac, mac_text};
pub use file::{RouterText, new_router};
pub use firewall::{Firewall, FirewallRule, FirewallRuleText, FwAction};
pub use ident::{NEUTRON_ID_FORM, NeutronId};
pub use policy::{Rule, RuleText, Steering, Table};

/// A validated desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub routers: Vec<Router>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The default: each interface as suits its kind. Native XDP (with the TC entry
    /// beside it) except on a veth, which runs the TC entry alone: XDP on a veth takes
    /// segmentation offload from its peer, whose TCP then crosses the router as MTU-sized
    /// frames (see `netlink::tc_by_choice`).
    Auto,
    /// XDP on every interface (native), with the TC entry alongside for egresses that
    /// cannot take XDP frames.
    Xdp,
    /// The TC entry only, for interfaces without native XDP.
    Tc,
}

impl Mode {
    /// Whether the XDP program is loaded and attached where an interface allows it.
    pub fn runs_xdp(self) -> bool {
        matches!(self, Mode::Auto | Mode::Xdp)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
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
    /// Placed on several nodes (an HA router, `crate::ha`): set from the placement in
    /// etcd, never from a file. It starts silent on every node until one is elected.
    pub ha: bool,
    /// A distributed router (`[router.distributed]`), `None` = centralised.
    pub distributed: Option<Distributed>,
    /// What this node runs of a distributed router: set by `crate::dvr` on the node's copy,
    /// never from a file.
    pub part: Option<crate::dvr::Part>,
}

impl Router {
    /// Whether `other` is this router but for its floating IPs, compared in place (a
    /// router may have tens of thousands of them, and this is asked on every change).
    pub fn same_but_floating_ips(&self, other: &Router) -> bool {
        // Every field named, so that a new one cannot be left out of the comparison.
        let Router {
            id,
            namespace,
            mode,
            gateway,
            interfaces,
            routes,
            floating_ips: _,
            nat,
            tables,
            rules,
            steering,
            firewall,
            ha,
            distributed,
            part,
        } = self;
        *id == other.id
            && *namespace == other.namespace
            && *mode == other.mode
            && *gateway == other.gateway
            && *interfaces == other.interfaces
            && *routes == other.routes
            && *nat == other.nat
            && *tables == other.tables
            && *rules == other.rules
            && *steering == other.steering
            && *firewall == other.firewall
            && *ha == other.ha
            && *distributed == other.distributed
            && *part == other.part
    }

    /// A router with nothing configured but its id, namespace and mode: no gateway,
    /// interfaces, routes or firewall, and the default NAT settings.
    pub fn new(id: &str, namespace: &str, mode: Mode) -> Self {
        Self {
            id: id.to_string(),
            namespace: namespace.to_string(),
            mode,
            gateway: None,
            interfaces: Vec::new(),
            routes: Vec::new(),
            floating_ips: Vec::new(),
            nat: NatSettings::default(),
            tables: Vec::new(),
            rules: Vec::new(),
            steering: None,
            firewall: None,
            ha: false,
            distributed: None,
            part: None,
        }
    }

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
    /// Neutron's id of the floating IP (`id`), unique among the router's floating IPs;
    /// `None`: addressed by its address only.
    pub id: Option<NeutronId>,
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
    /// Whether the session table's memory is taken whole when the router starts (a new
    /// session never waits for the kernel's allocator, and a flood finds the table full,
    /// never the node short of memory) or as sessions are made (a router costs what it
    /// holds; nodes of many routers).
    pub preallocate_sessions: bool,
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
            preallocate_sessions: true,
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

impl DesiredState {
    /// Reads and validates a desired-state file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        Ok(Self::parse(&text)?)
    }

    /// Parses and validates desired-state TOML: each router is read into the typed model
    /// and checked as [`DesiredState::validate`] checks it, a section at a time.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: file::FileState =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let mut checks = check::StateChecks::default();
        let mut routers = Vec::with_capacity(file.router.len());
        for (i, f) in file.router.iter().enumerate() {
            let router = file::read_router(i, f)?;
            checks.unique(i, &router)?;
            routers.push(router);
        }
        Ok(Self { routers })
    }

    /// Checks a state built or edited as typed values with every check the file loader
    /// runs; the error is the one [`DesiredState::parse`] gives for the same state written
    /// as a file ([`DesiredState::to_toml`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut checks = check::StateChecks::default();
        for (i, r) in self.routers.iter().enumerate() {
            checks.router(i, r)?;
        }
        Ok(())
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
