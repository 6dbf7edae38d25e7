//! Neutron's routers mapped to a desired state, named as Neutron's L3 agent names them:
//! router `<uuid>` in namespace `qrouter-<uuid>`, its internal ports `qr-` and its gateway
//! port `qg-` followed by the first 11 characters of the port's id, its floating IPs
//! with Neutron's ids.
//!
//! What IPv4 cannot express is skipped, and said so (an IPv6 subnet on a port, an IPv6
//! external address, an IPv6 extra route): routerd's desired state is IPv4 only, and a
//! dual-stack router keeps its IPv4 half. What cannot be mapped otherwise is an error
//! naming the object: an object the mapping needs and the input lacks (a subnet, the
//! gateway port), a port with two IPv4 subnets, an external subnet without a gateway.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
};

use super::objects::{FixedIp, NeutronObjects, Port, Router as NeutronRouter, Subnet};
use crate::{
    config::{
        DesiredState, ExternalSubnet, FloatingIp, Gateway, IfAddr, Interface, Mode, NatSettings,
        Prefix, Route, Router,
    },
    error::Error,
};
use router_common::TABLE_MAIN;

/// Device owners of a router's internal ports: legacy and HA routers, distributed (DVR)
/// routers.
const INTERFACE_OWNERS: [&str; 3] = [
    "network:router_interface",
    "network:router_interface_distributed",
    "network:ha_router_replicated_interface",
];
const GATEWAY_OWNER: &str = "network:router_gateway";
/// Router ports that are not the router's own interfaces in `qrouter-<uuid>`: a DVR
/// router's SNAT port (in the `snat-` namespace) and an HA router's keepalived port.
const OTHER_ROUTER_OWNERS: [&str; 2] = [
    "network:router_centralized_snat",
    "network:router_ha_interface",
];

/// How an interface name takes a port's id: Neutron's `qr-`/`qg-` and this many of its
/// characters (15, the kernel's limit, in all).
const PORT_ID_CHARS: usize = 11;

/// What to import, and how.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The routers' mode (the desired state's `mode`).
    pub mode: Mode,
    /// Only these routers (Neutron ids); empty: every router of the input.
    pub routers: Vec<String>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Tc,
            routers: Vec::new(),
        }
    }
}

/// The desired state of the imported routers, and what was left out of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// Checked with [`DesiredState::validate`].
    pub state: DesiredState,
    /// One line per object, or part of one, that was skipped, naming it and saying why.
    pub skipped: Vec<String>,
}

/// The routers of `objects` as a desired state (see the module's documentation).
pub fn import(objects: &NeutronObjects, options: &ImportOptions) -> Result<Imported, Error> {
    for wanted in &options.routers {
        if !objects.routers.iter().any(|r| &r.id == wanted) {
            return Err(Error::import(
                format!("router {wanted}"),
                format!("not in the input (add `openstack router show {wanted} -f json`)"),
            ));
        }
    }
    let chosen: Vec<&NeutronRouter> = objects
        .routers
        .iter()
        .filter(|r| options.routers.is_empty() || options.routers.contains(&r.id))
        .collect();
    let mut mapping = Mapping {
        subnets: objects.subnets_by_id(),
        objects,
        skipped: Vec::new(),
    };
    let mut routers = Vec::with_capacity(chosen.len());
    for r in &chosen {
        routers.push(mapping.router(r, options.mode)?);
    }
    mapping.unplaced_ports(&chosen)?;
    mapping.floating_ips(&mut routers)?;
    let state = DesiredState { routers };
    state.validate()?;
    Ok(Imported {
        state,
        skipped: mapping.skipped,
    })
}

struct Mapping<'a> {
    objects: &'a NeutronObjects,
    subnets: HashMap<&'a str, &'a Subnet>,
    skipped: Vec<String>,
}

impl<'a> Mapping<'a> {
    fn router(&mut self, r: &NeutronRouter, mode: Mode) -> Result<Router, Error> {
        let mut out = Router::new(&r.id, &format!("qrouter-{}", r.id), mode);
        out.gateway = self.gateway(r)?;
        for port in self.objects.ports.iter().filter(|p| belongs(p, r)) {
            let owner = port.device_owner.as_str();
            if INTERFACE_OWNERS.contains(&owner) {
                if let Some(interface) = self.interface(r, port)? {
                    out.interfaces.push(interface);
                }
            } else if OTHER_ROUTER_OWNERS.contains(&owner) {
                self.skipped.push(format!(
                    "router {}: port {} ({owner}): not an interface of the router's own namespace: skipped",
                    r.id, port.id
                ));
            }
        }
        if let Some(listed) = &r.interface_ports {
            for id in listed {
                if !self.objects.ports.iter().any(|p| &p.id == id) {
                    return Err(Error::import(
                        format!("router {}", r.id),
                        format!(
                            "interface port {id} (interfaces_info) is not in the input (add `openstack port list --router {} --long -f json`)",
                            r.id
                        ),
                    ));
                }
            }
        }
        for extra in &r.routes {
            match (
                extra.destination.parse::<IpAddrPrefix>(),
                extra.nexthop.parse::<IpAddr>(),
            ) {
                (Ok(IpAddrPrefix::V4(destination)), Ok(IpAddr::V4(nexthop))) => {
                    out.routes.push(Route {
                        destination,
                        nexthop,
                        table: TABLE_MAIN,
                    });
                }
                (Ok(IpAddrPrefix::V6), Ok(IpAddr::V6(_))) => self.skipped.push(format!(
                    "router {}: route {} via {}: IPv6: skipped",
                    r.id, extra.destination, extra.nexthop
                )),
                _ => {
                    return Err(Error::import(
                        format!("router {}", r.id),
                        format!(
                            "route {} via {}: not an IPv4 prefix (no host bits) and an IPv4 next hop",
                            extra.destination, extra.nexthop
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The subnet `fixed` is on, IPv4, as the router's address on it.
    fn on_subnet(
        &self,
        object: &str,
        fixed: &FixedIp,
        addr: Ipv4Addr,
    ) -> Result<(IfAddr, &'a Subnet), Error> {
        let subnet = self.subnets.get(fixed.subnet_id.as_str()).ok_or_else(|| {
            Error::import(
                object,
                format!(
                    "subnet {} of {addr} is not in the input (add `openstack subnet show {} -f json`)",
                    fixed.subnet_id, fixed.subnet_id
                ),
            )
        })?;
        let prefix = match subnet.cidr.parse::<IpAddrPrefix>() {
            Ok(IpAddrPrefix::V4(p)) => p,
            _ => {
                return Err(Error::import(
                    format!("subnet {}", subnet.id),
                    format!(
                        "cidr \"{}\" is not an IPv4 prefix, yet {addr} is on it",
                        subnet.cidr
                    ),
                ));
            }
        };
        if !prefix.contains(addr) {
            return Err(Error::import(
                object,
                format!(
                    "{addr} is not in its subnet {} ({})",
                    subnet.id, subnet.cidr
                ),
            ));
        }
        Ok((
            IfAddr {
                addr,
                len: prefix.len,
            },
            subnet,
        ))
    }

    fn gateway(&mut self, r: &NeutronRouter) -> Result<Option<Gateway>, Error> {
        let Some(info) = &r.gateway else {
            return Ok(None);
        };
        let object = format!("router {}", r.id);
        let mut subnets = Vec::new();
        for fixed in &info.external_fixed_ips {
            let IpAddr::V4(addr) = fixed.ip_address else {
                self.skipped.push(format!(
                    "router {}: external address {} (subnet {}): IPv6: skipped",
                    r.id, fixed.ip_address, fixed.subnet_id
                ));
                continue;
            };
            let (address, subnet) = self.on_subnet(&object, fixed, addr)?;
            let nexthop = match subnet.gateway_ip {
                Some(IpAddr::V4(gw)) => gw,
                _ => {
                    return Err(Error::import(
                        format!("subnet {}", subnet.id),
                        format!(
                            "external subnet {} of router {} has no IPv4 gateway_ip: the router's route out of it needs one",
                            subnet.cidr, r.id
                        ),
                    ));
                }
            };
            subnets.push(ExternalSubnet { address, nexthop });
        }
        let Some((primary, further)) = subnets.split_first() else {
            self.skipped.push(format!(
                "router {}: external gateway without an IPv4 address: skipped",
                r.id
            ));
            return Ok(None);
        };
        let port = self
            .objects
            .ports
            .iter()
            .find(|p| p.device_owner == GATEWAY_OWNER && is_gateway_port(p, r))
            .ok_or_else(|| {
                Error::import(
                    &object,
                    format!(
                        "its gateway port (device_owner {GATEWAY_OWNER}) is not in the input (add `openstack port list --router {} --long -f json`)",
                        r.id
                    ),
                )
            })?;
        Ok(Some(Gateway {
            interface: interface_name("qg-", port)?,
            address: primary.address,
            nexthop: primary.nexthop,
            snat: info.enable_snat,
            xdp_egress: None,
            subnets: further.to_vec(),
        }))
    }

    fn interface(&mut self, r: &NeutronRouter, port: &Port) -> Result<Option<Interface>, Error> {
        let object = format!("router {} port {}", r.id, port.id);
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for fixed in &port.fixed_ips {
            match fixed.ip_address {
                IpAddr::V4(addr) => v4.push((fixed, addr)),
                IpAddr::V6(addr) => v6.push(format!("{addr} (subnet {})", fixed.subnet_id)),
            }
        }
        if !v6.is_empty() {
            let what = if v4.is_empty() {
                "IPv6 only: interface skipped"
            } else {
                "IPv6: skipped"
            };
            self.skipped
                .push(format!("{object}: {}: {what}", v6.join(", ")));
        }
        let (fixed, addr) = match v4.as_slice() {
            [] if !v6.is_empty() => return Ok(None),
            [] => {
                self.skipped
                    .push(format!("{object}: no address: interface skipped"));
                return Ok(None);
            }
            [one] => *one,
            more => {
                return Err(Error::import(
                    object,
                    format!(
                        "has {} IPv4 addresses; a router interface has one address here (one port per subnet)",
                        more.len()
                    ),
                ));
            }
        };
        let (address, _) = self.on_subnet(&object, fixed, addr)?;
        Ok(Some(Interface {
            name: interface_name("qr-", port)?,
            address,
            xdp_egress: None,
            source_check: true,
            allowed_sources: Vec::new(),
        }))
    }

    /// A router port of the input that no imported router claims, and whose router cannot
    /// be told (a `port list` row, without a device id), is an error when a router without
    /// `interfaces_info` might own it: that router's interfaces would be silently missing.
    fn unplaced_ports(&self, routers: &[&NeutronRouter]) -> Result<(), Error> {
        let Some(blind) = routers.iter().find(|r| r.interface_ports.is_none()) else {
            return Ok(());
        };
        for port in &self.objects.ports {
            let interface = INTERFACE_OWNERS.contains(&port.device_owner.as_str());
            if interface && port.device_id.is_none() && !routers.iter().any(|r| belongs(port, r)) {
                return Err(Error::import(
                    format!("port {}", port.id),
                    format!(
                        "a router interface without a device id, and router {} lists no interfaces_info: give `openstack port show {} -f json` (which has the device id)",
                        blind.id, port.id
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Each floating IP associated with an imported router, in the input's order.
    fn floating_ips(&mut self, routers: &mut [Router]) -> Result<(), Error> {
        let input: HashSet<&str> = self.objects.routers.iter().map(|r| r.id.as_str()).collect();
        for f in &self.objects.floating_ips {
            let object = format!("floating IP {} ({})", f.id, f.floating_ip_address);
            let (Some(router), Some(fixed)) = (&f.router_id, f.fixed_ip_address) else {
                self.skipped.push(format!(
                    "{object}: not associated with a fixed IP: skipped (routerd holds floating IPs while associated)"
                ));
                continue;
            };
            let Some(r) = routers.iter_mut().find(|r| &r.id == router) else {
                if !input.contains(router.as_str()) {
                    self.skipped.push(format!(
                        "{object}: its router {router} is not in the input: skipped"
                    ));
                }
                continue;
            };
            let (IpAddr::V4(address), IpAddr::V4(fixed)) = (f.floating_ip_address, fixed) else {
                self.skipped.push(format!("{object}: IPv6: skipped"));
                continue;
            };
            let id =
                f.id.parse()
                    .map_err(|problem: &str| Error::import(&object, format!("id: {problem}")))?;
            r.floating_ips.push(FloatingIp {
                address,
                fixed,
                id: Some(id),
            });
        }
        for r in routers.iter_mut() {
            let count = u32::try_from(r.floating_ips.len()).unwrap_or(u32::MAX);
            if count > NatSettings::default().max_floating_ips {
                // Room for them all: the table is sized from this (validate caps it).
                r.nat.max_floating_ips = count.next_power_of_two();
            }
        }
        Ok(())
    }
}

/// Whether `port` is one of router `r`'s: its device id says so, the router lists it
/// (`interfaces_info`), or it is a gateway port with the router's external addresses.
fn belongs(port: &Port, r: &NeutronRouter) -> bool {
    port.device_id.as_deref() == Some(r.id.as_str())
        || r.interface_ports
            .as_ref()
            .is_some_and(|ids| ids.contains(&port.id))
        || (port.device_owner == GATEWAY_OWNER && is_gateway_port(port, r))
}

/// Whether gateway port `port` is router `r`'s: its device id, or the same external
/// addresses (a `port list` row has no device id; an external address has one port).
fn is_gateway_port(port: &Port, r: &NeutronRouter) -> bool {
    if let Some(device) = &port.device_id {
        return device == &r.id;
    }
    r.gateway.as_ref().is_some_and(|g| {
        !g.external_fixed_ips.is_empty()
            && g.external_fixed_ips
                .iter()
                .all(|f| port.fixed_ips.contains(f))
    })
}

/// The interface Neutron makes for `port`: `prefix` and the port id's first 11 characters.
fn interface_name(prefix: &str, port: &Port) -> Result<String, Error> {
    match port.id.get(..PORT_ID_CHARS) {
        Some(head) if port.id.is_ascii() => Ok(format!("{prefix}{head}")),
        _ => Err(Error::import(
            format!("port {}", port.id),
            "its id is too short for an interface name (Neutron's are UUIDs)",
        )),
    }
}

/// A prefix of either family; only IPv4 ones are kept (with their length).
enum IpAddrPrefix {
    V4(Prefix),
    V6,
}

impl std::str::FromStr for IpAddrPrefix {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, len) = s.split_once('/').ok_or(())?;
        let len: u8 = len.parse().map_err(|_| ())?;
        match addr.parse::<IpAddr>().map_err(|_| ())? {
            IpAddr::V4(a) if len <= 32 => {
                let p = Prefix::new_truncating(a, len);
                if p.addr == a {
                    Ok(Self::V4(p))
                } else {
                    Err(())
                }
            }
            IpAddr::V6(_) if len <= 128 => Ok(Self::V6),
            _ => Err(()),
        }
    }
}
