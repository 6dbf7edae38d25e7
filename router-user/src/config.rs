//! The desired state: a TOML file in Neutron's vocabulary, parsed and validated whole before
//! anything is touched. Every error names the offending key and value.

use std::{collections::HashSet, fmt, net::Ipv4Addr, path::Path, str::FromStr};

use serde::Deserialize;

use crate::error::{ConfigError, Error};

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
    pub routes: Vec<Route>,
    pub floating_ips: Vec<FloatingIp>,
    pub nat: NatSettings,
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub address: IfAddr,
    /// Whether XDP-redirected frames are delivered by this interface; `None` = decide from
    /// the interface kind (see `netlink::xdp_egress_default`).
    pub xdp_egress: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: Prefix,
    pub nexthop: Ipv4Addr,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    destination: String,
    nexthop: String,
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

    let mut names = HashSet::new();
    let mut subnets: Vec<(String, Prefix)> = Vec::new();
    let mut check_iface = |key: &str, name: &str, address: &str| -> Result<IfAddr, ConfigError> {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            return Err(at.bad(
                &format!("{key}.name"),
                name,
                "must be an interface name of 1-15 characters",
            ));
        }
        if !names.insert(name.to_string()) {
            return Err(at.bad(&format!("{key}.name"), name, "interface named twice"));
        }
        let addr = parse_ifaddr(address)
            .map_err(|problem| at.bad(&format!("{key}.address"), address, problem))?;
        let subnet = addr.subnet();
        if let Some((other, _)) = subnets.iter().find(|(_, s)| s.overlaps(&subnet)) {
            return Err(at.bad(
                &format!("{key}.address"),
                address,
                &format!("subnet {subnet} overlaps the subnet of interface {other}"),
            ));
        }
        subnets.push((name.to_string(), subnet));
        Ok(addr)
    };

    let gateway = match &r.gateway {
        None => None,
        Some(g) => {
            let address = check_iface("gateway", &g.interface, &g.address)?;
            let nexthop = parse_ip(&g.nexthop)
                .map_err(|problem| at.bad("gateway.nexthop", &g.nexthop, problem))?;
            if !address.subnet().contains(nexthop) || nexthop == address.addr {
                return Err(at.bad(
                    "gateway.nexthop",
                    &g.nexthop,
                    &format!(
                        "must be another host on the gateway subnet {}",
                        address.subnet()
                    ),
                ));
            }
            Some(Gateway {
                interface: g.interface.clone(),
                address,
                nexthop,
                snat: g.snat,
                xdp_egress: g.xdp_egress,
            })
        }
    };
    let mut interfaces = Vec::with_capacity(r.interface.len());
    for (i, f) in r.interface.iter().enumerate() {
        let address = check_iface(&format!("interface[{i}]"), &f.name, &f.address)?;
        interfaces.push(Interface {
            name: f.name.clone(),
            address,
            xdp_egress: f.xdp_egress,
        });
    }

    let mut routes: Vec<Route> = Vec::with_capacity(r.route.len());
    for (i, f) in r.route.iter().enumerate() {
        let key = format!("route[{i}]");
        let destination = parse_prefix(&f.destination)
            .map_err(|problem| at.bad(&format!("{key}.destination"), &f.destination, problem))?;
        let nexthop = parse_ip(&f.nexthop)
            .map_err(|problem| at.bad(&format!("{key}.nexthop"), &f.nexthop, problem))?;
        let Some((via, subnet)) = subnets.iter().find(|(_, s)| s.contains(nexthop)) else {
            return Err(at.bad(
                &format!("{key}.nexthop"),
                &f.nexthop,
                "is on no subnet of this router's interfaces",
            ));
        };
        let own = interfaces
            .iter()
            .map(|i| i.address.addr)
            .chain(gateway.iter().map(|g| g.address.addr));
        if own.into_iter().any(|a| a == nexthop) || subnet.broadcast() == nexthop {
            return Err(at.bad(
                &format!("{key}.nexthop"),
                &f.nexthop,
                &format!("must be a host on {via}'s subnet, not the router or broadcast address"),
            ));
        }
        if let Some((conn, _)) = subnets.iter().find(|(_, s)| *s == destination) {
            return Err(at.bad(
                &format!("{key}.destination"),
                &f.destination,
                &format!("is the connected subnet of interface {conn}"),
            ));
        }
        if routes.iter().any(|r| r.destination == destination) {
            return Err(at.bad(
                &format!("{key}.destination"),
                &f.destination,
                "route given twice",
            ));
        }
        routes.push(Route {
            destination,
            nexthop,
        });
    }

    let nat = validate_nat(&at, r.nat.as_ref())?;
    let floating_ips = validate_floating_ips(&at, &r.floating_ip, gateway.as_ref(), &interfaces)?;

    Ok(Router {
        id: r.id.clone(),
        namespace: r.namespace.clone(),
        mode,
        gateway,
        interfaces,
        routes,
        floating_ips,
        nat,
    })
}

fn validate_floating_ips(
    at: &Ctx,
    file: &[FileFloatingIp],
    gateway: Option<&Gateway>,
    interfaces: &[Interface],
) -> Result<Vec<FloatingIp>, ConfigError> {
    let mut out: Vec<FloatingIp> = Vec::with_capacity(file.len());
    // Sets, not scans: tens of thousands of floating IPs must validate in milliseconds.
    let mut addresses = HashSet::with_capacity(file.len());
    let mut fixeds = HashSet::with_capacity(file.len());
    for (i, f) in file.iter().enumerate() {
        let key = format!("floating_ip[{i}]");
        let address = parse_ip(&f.address)
            .map_err(|problem| at.bad(&format!("{key}.address"), &f.address, problem))?;
        let fixed = parse_ip(&f.fixed)
            .map_err(|problem| at.bad(&format!("{key}.fixed"), &f.fixed, problem))?;
        let Some(g) = gateway else {
            return Err(at.bad(
                &format!("{key}.address"),
                &f.address,
                "a floating IP needs a router gateway (router.gateway)",
            ));
        };
        let external = g.address.subnet();
        if !external.contains(address)
            || address == external.addr
            || address == external.broadcast()
        {
            return Err(at.bad(
                &format!("{key}.address"),
                &f.address,
                &format!("is not a host address of the external subnet {external}"),
            ));
        }
        if address == g.address.addr || address == g.nexthop {
            return Err(at.bad(
                &format!("{key}.address"),
                &f.address,
                "is the router's gateway IP or its next hop",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The file issue 2 says must work exactly as written.
    pub const ISSUE_EXAMPLE: &str = r#"
[[router]]
id = "r1"
namespace = "qrouter-r1"      # the namespace that holds the router's interfaces
mode = "xdp"                  # or "tc"

[router.gateway]              # the qg side
interface = "qg-r1"
address = "198.18.0.2/24"     # the router's gateway IP on the external network
nexthop = "198.18.0.1"        # default route
snat = true                   # used once NAT lands

[[router.interface]]          # one qr per internal subnet; the address is the subnet's gateway
name = "qr-a"
address = "10.0.1.1/24"

[[router.interface]]
name = "qr-b"
address = "10.0.2.1/24"

[[router.route]]              # extra routes
destination = "10.20.0.0/16"
nexthop = "10.0.1.254"
"#;

    fn err(text: &str) -> String {
        match DesiredState::parse(text) {
            Ok(s) => panic!("accepted invalid config: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn issue_example_parses() {
        let state = DesiredState::parse(ISSUE_EXAMPLE).expect("example must parse");
        let r = &state.routers[0];
        assert_eq!(r.id, "r1");
        assert_eq!(r.mode, Mode::Xdp);
        let g = r.gateway.as_ref().expect("gateway");
        assert_eq!(g.address.to_string(), "198.18.0.2/24");
        assert_eq!(g.nexthop, Ipv4Addr::new(198, 18, 0, 1));
        assert!(g.snat);
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(r.interfaces[1].address.subnet().to_string(), "10.0.2.0/24");
        assert_eq!(r.routes[0].destination.to_string(), "10.20.0.0/16");
    }

    #[test]
    fn bad_values_are_named() {
        let e = err(&ISSUE_EXAMPLE.replace("10.0.1.1/24", "10.0.1.300/24"));
        assert!(
            e.contains("interface[0].address") && e.contains("10.0.1.300/24"),
            "{e}"
        );
        let e = err(&ISSUE_EXAMPLE.replace("mode = \"xdp\"", "mode = \"dpdk\""));
        assert!(e.contains("mode") && e.contains("dpdk"), "{e}");
        let e = err(&ISSUE_EXAMPLE.replace("10.0.1.254", "10.9.9.9"));
        assert!(
            e.contains("route[0].nexthop") && e.contains("on no subnet"),
            "{e}"
        );
        let e = err(&ISSUE_EXAMPLE.replace("10.20.0.0/16", "10.20.0.1/16"));
        assert!(
            e.contains("route[0].destination") && e.contains("host bits"),
            "{e}"
        );
        let e = err(&ISSUE_EXAMPLE.replace("198.18.0.1\"", "198.19.0.1\""));
        assert!(e.contains("gateway.nexthop"), "{e}");
        let e = err(&ISSUE_EXAMPLE.replace("10.0.2.1/24", "10.0.1.9/24"));
        assert!(e.contains("overlaps") && e.contains("qr-a"), "{e}");
        let e = err(&ISSUE_EXAMPLE.replace("name = \"qr-b\"", "name = \"qr-a\""));
        assert!(e.contains("interface named twice"), "{e}");
        let e = err(&ISSUE_EXAMPLE.replace("10.0.1.1/24", "10.0.1.0/24"));
        assert!(e.contains("network or broadcast"), "{e}");
        let e = err(&ISSUE_EXAMPLE.replace("id = \"r1\"", "id = \"../x\""));
        assert!(e.contains("id") && e.contains("../x"), "{e}");
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_rejected() {
        let e = err(&ISSUE_EXAMPLE.replace("snat = true", "snat = true\nsnatt = 1"));
        assert!(e.contains("snatt"), "{e}");
        let e = err(&ISSUE_EXAMPLE.replace("snat = true", "snat = \"yes\""));
        assert!(e.contains("snat"), "{e}");
        let e = err("[[router]]\nid = \"r1\"\n");
        assert!(e.contains("namespace"), "{e}");
    }

    #[test]
    fn duplicate_routers_are_rejected() {
        let twice = format!(
            "{ISSUE_EXAMPLE}\n{}",
            ISSUE_EXAMPLE.replace("qrouter-r1", "qrouter-r2")
        );
        assert!(err(&twice).contains("another router has this id"));
        let twice = format!(
            "{ISSUE_EXAMPLE}\n{}",
            ISSUE_EXAMPLE.replace("\"r1\"", "\"r2\"")
        );
        assert!(err(&twice).contains("another router uses this namespace"));
    }

    #[test]
    fn prefix_arithmetic() {
        let p = Prefix::new_truncating(Ipv4Addr::new(10, 1, 2, 3), 16);
        assert_eq!(p.to_string(), "10.1.0.0/16");
        assert!(p.contains(Ipv4Addr::new(10, 1, 255, 1)));
        assert!(!p.contains(Ipv4Addr::new(10, 2, 0, 1)));
        assert_eq!(p.broadcast(), Ipv4Addr::new(10, 1, 255, 255));
        let q = Prefix::new_truncating(Ipv4Addr::new(10, 1, 7, 0), 24);
        assert!(p.overlaps(&q) && q.overlaps(&p));
        let zero = Prefix::new_truncating(Ipv4Addr::new(1, 2, 3, 4), 0);
        assert_eq!(zero.addr, Ipv4Addr::UNSPECIFIED);
        assert!(zero.contains(Ipv4Addr::new(8, 8, 8, 8)));
    }

    /// Issue 3's floating IP, and a `[router.nat]` section with every key.
    const NAT_EXAMPLE: &str = r#"
[[router.floating_ip]]
address = "198.18.0.10"   # on the external network
fixed = "10.0.1.5"        # a VM on one of the router's internal subnets

[router.nat]
snat_ports = "2000-3000"
slow_path_snat_ports = "60000-65535"
max_sessions = 1024
metadata_port = 8775
[router.nat.timeouts]
udp = 5
tcp_established = 3600
"#;

    #[test]
    fn floating_ips_and_nat_settings_parse() {
        let state = DesiredState::parse(&format!("{ISSUE_EXAMPLE}{NAT_EXAMPLE}")).expect("valid");
        let r = &state.routers[0];
        assert_eq!(
            r.floating_ips,
            vec![FloatingIp {
                address: Ipv4Addr::new(198, 18, 0, 10),
                fixed: Ipv4Addr::new(10, 0, 1, 5)
            }]
        );
        assert_eq!(
            r.nat.snat_ports,
            PortRange {
                min: 2000,
                max: 3000
            }
        );
        assert_eq!(r.nat.max_sessions, 1024);
        assert_eq!(r.nat.metadata_port, 8775);
        assert_eq!(
            (r.nat.timeouts.udp, r.nat.timeouts.tcp_established),
            (5, 3600)
        );
        assert_eq!(r.nat.timeouts.icmp, 30, "unset timeouts keep the defaults");
        // Without a [router.nat] section: the defaults.
        let plain = DesiredState::parse(ISSUE_EXAMPLE).expect("valid");
        assert_eq!(plain.routers[0].nat, NatSettings::default());
    }

    #[test]
    fn invalid_floating_ips_and_nat_settings_are_rejected() {
        let with = |from: &str, to: &str| {
            err(&format!("{ISSUE_EXAMPLE}{}", NAT_EXAMPLE.replace(from, to)))
        };
        let e = with("198.18.0.10", "198.19.0.10");
        assert!(
            e.contains("floating_ip[0].address") && e.contains("external subnet"),
            "{e}"
        );
        let e = with("198.18.0.10", "198.18.0.2");
        assert!(e.contains("gateway IP"), "{e}");
        let e = with("10.0.1.5", "10.0.3.5");
        assert!(
            e.contains("floating_ip[0].fixed") && e.contains("no internal subnet"),
            "{e}"
        );
        let e = with("10.0.1.5", "10.0.1.1");
        assert!(e.contains("floating_ip[0].fixed"), "{e}");
        let e = with("60000-65535", "2500-65535");
        assert!(
            e.contains("nat.slow_path_snat_ports") && e.contains("overlaps"),
            "{e}"
        );
        let e = with("2000-3000", "3000-2000");
        assert!(e.contains("nat.snat_ports"), "{e}");
        let e = with("udp = 5", "udp = 0");
        assert!(e.contains("nat.timeouts.udp"), "{e}");
        let e = with("max_sessions = 1024", "max_sessions = 1");
        assert!(e.contains("nat.max_sessions"), "{e}");
        let twice = format!(
            "{ISSUE_EXAMPLE}{NAT_EXAMPLE}\n[[router.floating_ip]]\naddress = \"198.18.0.11\"\nfixed = \"10.0.1.5\"\n"
        );
        assert!(err(&twice).contains("already has a floating IP"));
        let start = ISSUE_EXAMPLE.find("[router.gateway]").expect("gateway");
        let end = ISSUE_EXAMPLE
            .find("[[router.interface]]")
            .expect("interface");
        let no_gateway = format!("{}{}", &ISSUE_EXAMPLE[..start], &ISSUE_EXAMPLE[end..]);
        let e = err(&format!("{no_gateway}{NAT_EXAMPLE}"));
        assert!(
            e.contains("floating_ip[0].address") && e.contains("needs a router gateway"),
            "{e}"
        );
    }
}
