//! The file as written (serde's mirror of the TOML) and its text read into the typed model.
//!
//! Reading checks only what a value's type cannot hold: an address that is not one, a
//! prefix with host bits set, a table name no `[[router.table]]` has, a mode that is not
//! `auto`, `xdp` or `tc`. Everything else is checked on the typed model ([`super::check`]).
//! [`RouterText`] reads the text values of an edit (a request's fields) with the same
//! functions, so a bad value is named as the file would name it.

use std::{net::Ipv4Addr, str::FromStr};

use router_common::TABLE_MAIN;
use serde::Deserialize;

use super::{
    Ctx, ExternalSubnet, FloatingIp, Gateway, IfAddr, Interface, Mode, NatSettings, PortRange,
    Prefix, Route, Router, check::RouterChecks, distributed, firewall, policy,
};
use crate::error::ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileState {
    #[serde(default)]
    pub(super) router: Vec<FileRouter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRouter {
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
    distributed: Option<distributed::FileDistributed>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFloatingIp {
    address: String,
    fixed: String,
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNat {
    snat_ports: Option<String>,
    slow_path_snat_ports: Option<String>,
    max_sessions: Option<u32>,
    preallocate_sessions: Option<bool>,
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
    "auto".into()
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

/// Router `index` of the file, read into the typed model and checked a section at a time
/// (not yet against the other routers).
pub(super) fn read_router(index: usize, f: &FileRouter) -> Result<Router, ConfigError> {
    let at = Ctx::router(index, &f.id);
    let mut r = Router::new(&f.id, &f.namespace, Mode::Xdp);
    let mut checks = RouterChecks::new(index, &r)?;
    r.mode = read_mode(&at, &f.mode)?;
    r.gateway = f
        .gateway
        .as_ref()
        .map(|g| read_gateway(&at, g))
        .transpose()?;
    checks.gateway(&r)?;
    r.interfaces = f
        .interface
        .iter()
        .enumerate()
        .map(|(i, x)| read_interface(&at, i, x))
        .collect::<Result<_, _>>()?;
    checks.interfaces(&r)?;
    r.tables = policy::read_tables(&at, &f.table)?;
    checks.tables(&r)?;
    r.routes = f
        .route
        .iter()
        .enumerate()
        .map(|(i, x)| read_route(&at, i, x, &r.tables))
        .collect::<Result<_, _>>()?;
    checks.routes(&r)?;
    r.steering = policy::read_steering(&at, f.steering.as_ref())?;
    checks.steering(&r)?;
    r.rules = policy::read_rules(&at, &f.rule, &r.tables)?;
    checks.rules(&r)?;
    r.firewall = firewall::read_firewall(&at, f.firewall.as_ref())?;
    checks.firewall(&r)?;
    r.nat = read_nat(&at, f.nat.as_ref())?;
    checks.nat(&r)?;
    r.floating_ips = f
        .floating_ip
        .iter()
        .enumerate()
        .map(|(i, x)| read_floating_ip(&at, i, x))
        .collect::<Result<_, _>>()?;
    checks.floating_ips(&r)?;
    r.distributed = distributed::read_distributed(&at, f.distributed.as_ref())?;
    checks.distributed(&r)?;
    Ok(r)
}

fn read_mode(at: &Ctx, text: &str) -> Result<Mode, ConfigError> {
    match text {
        "auto" => Ok(Mode::Auto),
        "xdp" => Ok(Mode::Xdp),
        "tc" => Ok(Mode::Tc),
        _ => Err(at.bad("mode", text, "must be \"auto\", \"xdp\" or \"tc\"")),
    }
}

fn read_gateway(at: &Ctx, g: &FileGateway) -> Result<Gateway, ConfigError> {
    let subnets = g
        .subnet
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let key = format!("gateway.subnet[{i}]");
            Ok(ExternalSubnet {
                address: read(at, &format!("{key}.address"), &s.address, parse_ifaddr)?,
                nexthop: read(at, &format!("{key}.nexthop"), &s.nexthop, parse_ip)?,
            })
        })
        .collect::<Result<_, ConfigError>>()?;
    Ok(Gateway {
        interface: g.interface.clone(),
        address: read(at, "gateway.address", &g.address, parse_ifaddr)?,
        nexthop: read(at, "gateway.nexthop", &g.nexthop, parse_ip)?,
        snat: g.snat,
        xdp_egress: g.xdp_egress,
        subnets,
    })
}

fn read_interface(at: &Ctx, index: usize, f: &FileInterface) -> Result<Interface, ConfigError> {
    let key = format!("interface[{index}]");
    let allowed_sources = f
        .allowed_sources
        .iter()
        .enumerate()
        .map(|(j, text)| {
            read(
                at,
                &format!("{key}.allowed_sources[{j}]"),
                text,
                parse_prefix_or_addr,
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(Interface {
        name: f.name.clone(),
        address: read(at, &format!("{key}.address"), &f.address, parse_ifaddr)?,
        xdp_egress: f.xdp_egress,
        source_check: f.source_check.unwrap_or(true),
        allowed_sources,
    })
}

fn read_route(
    at: &Ctx,
    index: usize,
    f: &FileRoute,
    tables: &[super::Table],
) -> Result<Route, ConfigError> {
    let key = format!("route[{index}]");
    Ok(Route {
        destination: read(
            at,
            &format!("{key}.destination"),
            &f.destination,
            parse_prefix,
        )?,
        nexthop: read(at, &format!("{key}.nexthop"), &f.nexthop, parse_ip)?,
        table: match &f.table {
            None => TABLE_MAIN,
            Some(v) => policy::resolve_table(at, &format!("{key}.table"), v, tables)?,
        },
    })
}

fn read_floating_ip(at: &Ctx, index: usize, f: &FileFloatingIp) -> Result<FloatingIp, ConfigError> {
    let key = format!("floating_ip[{index}]");
    Ok(FloatingIp {
        address: read(at, &format!("{key}.address"), &f.address, parse_ip)?,
        fixed: read(at, &format!("{key}.fixed"), &f.fixed, parse_ip)?,
        id: f
            .id
            .as_deref()
            .map(|text| read(at, &format!("{key}.id"), text, parse_id))
            .transpose()?,
    })
}

fn read_nat(at: &Ctx, file: Option<&FileNat>) -> Result<NatSettings, ConfigError> {
    let mut nat = NatSettings::default();
    let Some(f) = file else {
        return Ok(nat);
    };
    if let Some(s) = &f.snat_ports {
        nat.snat_ports = read(at, "nat.snat_ports", s, parse_port_range)?;
    }
    if let Some(s) = &f.slow_path_snat_ports {
        nat.slow_path_snat_ports = read(at, "nat.slow_path_snat_ports", s, parse_port_range)?;
    }
    let numbers = [
        (f.max_sessions, &mut nat.max_sessions),
        (f.max_floating_ips, &mut nat.max_floating_ips),
        (
            f.snat_sessions_per_source,
            &mut nat.snat_sessions_per_source,
        ),
    ];
    for (value, slot) in numbers {
        if let Some(v) = value {
            *slot = v;
        }
    }
    if let Some(p) = f.preallocate_sessions {
        nat.preallocate_sessions = p;
    }
    if let Some(p) = f.metadata_port {
        nat.metadata_port = p;
    }
    if let Some(t) = &f.timeouts {
        let d = &mut nat.timeouts;
        let fields = [
            (t.tcp_syn_sent, &mut d.tcp_syn_sent),
            (t.tcp_syn_recv, &mut d.tcp_syn_recv),
            (t.tcp_established, &mut d.tcp_established),
            (t.tcp_fin_wait, &mut d.tcp_fin_wait),
            (t.tcp_close_wait, &mut d.tcp_close_wait),
            (t.tcp_time_wait, &mut d.tcp_time_wait),
            (t.tcp_close, &mut d.tcp_close),
            (t.udp, &mut d.udp),
            (t.udp_stream, &mut d.udp_stream),
            (t.icmp, &mut d.icmp),
            (t.generic, &mut d.generic),
        ];
        for (value, slot) in fields {
            if let Some(v) = value {
                *slot = v;
            }
        }
    }
    Ok(nat)
}

// ---- an edit's text values ---------------------------------------------------------------

/// The text values an edit gives for router `index` of a state (a request's fields), read
/// as the file reads the same keys: a bad value gets the file's message, naming the key
/// where the value is to sit (`router[0] (id "r1").route[2].nexthop = "x": not an IPv4
/// address`). What is read is not checked yet: the edited state is, by
/// [`super::DesiredState::validate`].
pub struct RouterText<'a> {
    at: Ctx,
    router: &'a Router,
}

impl<'a> RouterText<'a> {
    /// Values for `router`, router `index` of its state.
    pub fn new(index: usize, router: &'a Router) -> Self {
        Self {
            at: Ctx::router(index, &router.id),
            router,
        }
    }

    /// `route[index]`; `table` is `"main"` (the default), a table's name or id.
    pub fn route(
        &self,
        index: usize,
        destination: &str,
        nexthop: &str,
        table: Option<&str>,
    ) -> Result<Route, ConfigError> {
        let f = FileRoute {
            destination: destination.to_string(),
            nexthop: nexthop.to_string(),
            table: table.map(|t| toml::Value::String(t.to_string())),
        };
        read_route(&self.at, index, &f, &self.router.tables)
    }

    /// `rule[index]`.
    pub fn rule(
        &self,
        index: usize,
        rule: &policy::RuleText<'_>,
    ) -> Result<super::Rule, ConfigError> {
        policy::read_rule(&self.at, index, &rule.to_file(), &self.router.tables)
    }

    /// `firewall.rule[index]`.
    pub fn firewall_rule(
        &self,
        index: usize,
        rule: &firewall::FirewallRuleText<'_>,
    ) -> Result<super::FirewallRule, ConfigError> {
        firewall::read_rule(
            &self.at,
            &format!("firewall.rule[{index}]"),
            &rule.to_file(),
        )
    }

    /// `interface[index]`, with the defaults of the keys not given (source check on, no
    /// further allowed sources, XDP egress decided at start).
    pub fn interface(
        &self,
        index: usize,
        name: &str,
        address: &str,
    ) -> Result<Interface, ConfigError> {
        let f = FileInterface {
            name: name.to_string(),
            address: address.to_string(),
            xdp_egress: None,
            source_check: None,
            allowed_sources: Vec::new(),
        };
        read_interface(&self.at, index, &f)
    }

    /// `gateway`, without further external subnets and with XDP egress decided at start.
    pub fn gateway(
        &self,
        interface: &str,
        address: &str,
        nexthop: &str,
        snat: bool,
    ) -> Result<Gateway, ConfigError> {
        let f = FileGateway {
            interface: interface.to_string(),
            address: address.to_string(),
            nexthop: nexthop.to_string(),
            snat,
            xdp_egress: None,
            subnet: Vec::new(),
        };
        read_gateway(&self.at, &f)
    }

    /// `steering.nexthop`.
    pub fn steering_nexthop(&self, text: &str) -> Result<Ipv4Addr, ConfigError> {
        read(&self.at, "steering.nexthop", text, parse_ip)
    }

    /// `steering.gateway_nexthop`.
    pub fn steering_gateway_nexthop(&self, text: &str) -> Result<Ipv4Addr, ConfigError> {
        read(&self.at, "steering.gateway_nexthop", text, parse_ip)
    }

    /// `floating_ip[index]`, with Neutron's id `id` if given.
    pub fn floating_ip(
        &self,
        index: usize,
        address: &str,
        fixed: &str,
        id: Option<&str>,
    ) -> Result<FloatingIp, ConfigError> {
        let f = FileFloatingIp {
            address: address.to_string(),
            fixed: fixed.to_string(),
            id: id.map(str::to_string),
        };
        read_floating_ip(&self.at, index, &f)
    }
}

/// A new router, `router[index]` of its state, with nothing configured yet; `mode` `None`
/// is the file's default (`xdp`).
pub fn new_router(
    index: usize,
    id: &str,
    namespace: &str,
    mode: Option<&str>,
) -> Result<Router, ConfigError> {
    let at = Ctx::router(index, id);
    let mode = read_mode(&at, mode.unwrap_or("auto"))?;
    Ok(Router::new(id, namespace, mode))
}

// ---- values --------------------------------------------------------------------------------

/// `text` read by `parse`; a value that does not read is named by `key`.
pub(super) fn read<T>(
    at: &Ctx,
    key: &str,
    text: &str,
    parse: impl FnOnce(&str) -> Result<T, &'static str>,
) -> Result<T, ConfigError> {
    parse(text).map_err(|problem| at.bad(key, text, problem))
}

fn parse_addr_len(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr = Ipv4Addr::from_str(addr).ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some((addr, len))
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

/// A Neutron id (a UUID).
pub(super) fn parse_id(s: &str) -> Result<super::NeutronId, &'static str> {
    s.parse()
}

pub(super) fn parse_ip(s: &str) -> Result<Ipv4Addr, &'static str> {
    Ipv4Addr::from_str(s).map_err(|_| "not an IPv4 address")
}

/// An address with its prefix length; whether it may be an interface's is checked on the
/// typed value ([`super::check`]).
fn parse_ifaddr(s: &str) -> Result<IfAddr, &'static str> {
    let (addr, len) =
        parse_addr_len(s).ok_or("not an IPv4 address with prefix length (a.b.c.d/len)")?;
    Ok(IfAddr { addr, len })
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
pub(super) fn parse_prefix_or_addr(s: &str) -> Result<Prefix, &'static str> {
    if s.contains('/') {
        parse_prefix(s)
    } else {
        let addr =
            Ipv4Addr::from_str(s).map_err(|_| "not an IPv4 prefix (a.b.c.d/len) or address")?;
        Ok(Prefix { addr, len: 32 })
    }
}

/// A TOML value as error messages quote it.
pub(super) fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
