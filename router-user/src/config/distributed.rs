//! A distributed router (DVR, `[router.distributed]`): the overlay of each of its internal
//! networks, every port on them with the node it lives on (l2population), and each node's
//! overlay address. What each node runs of it is `crate::dvr`'s business.
//!
//! ```toml
//! [router.distributed]
//! nodes = { compute-1 = "192.0.2.11", compute-2 = "192.0.2.12", network-1 = "192.0.2.10" }
//!
//! [[router.distributed.network]]
//! interface = "qr-net1"
//! vni = 1001
//! snat_address = "10.0.1.3"
//!
//! [[router.distributed.port]]
//! interface = "qr-net1"
//! address = "10.0.1.5"
//! mac = "fa:16:3e:00:01:05"
//! node = "compute-1"
//! ```

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use serde::Deserialize;

use super::{
    Ctx, Router,
    file::{parse_ip, read},
    render::quote,
};
use crate::error::ConfigError;

/// The largest VXLAN network identifier (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// The first three bytes of every DVR MAC, Neutron's default `dvr_base_mac`.
const DVR_MAC_BASE: [u8; 3] = [0xfa, 0x16, 0x3f];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Distributed {
    /// Each node's overlay address (its VTEP), by node name: every node that holds a port
    /// of the router's networks or its SNAT part.
    pub nodes: BTreeMap<String, Ipv4Addr>,
    /// The overlay of each internal interface's network, one per internal interface.
    pub networks: Vec<Network>,
    /// The ports on the router's networks, and where they live.
    pub ports: Vec<Port>,
}

/// One internal network of a distributed router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// The router interface on the network.
    pub interface: String,
    /// Its VXLAN network identifier: the overlay device `vxlan-<vni>` carries it.
    pub vni: u32,
    /// The SNAT part's address on the network (Neutron's `sg-` port): compute nodes send
    /// it what leaves for the external network without a floating IP. Required with a
    /// gateway; a port on the SNAT node must have it.
    pub snat_address: Option<Ipv4Addr>,
}

/// A port on one of the router's networks: a VM, or the SNAT part's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The router interface whose network the port is on.
    pub interface: String,
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    /// The node it lives on (a key of [`Distributed::nodes`]).
    pub node: String,
}

impl Distributed {
    /// The network of interface `name`.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.interface == name)
    }

    /// The DVR MAC of `node`: the source MAC of what its copy of the router forwards onto
    /// an internal network. Neutron's base `fa:16:3f` and the low three bytes of the node's
    /// overlay address, so no two nodes of an underlay /8 share one and nothing needs
    /// allocating.
    pub fn dvr_mac(&self, node: &str) -> Option<[u8; 6]> {
        self.nodes.get(node).map(|vtep| dvr_mac(*vtep))
    }
}

/// The DVR MAC of the node whose overlay address is `vtep` (see [`Distributed::dvr_mac`]).
pub fn dvr_mac(vtep: Ipv4Addr) -> [u8; 6] {
    let o = vtep.octets();
    [
        DVR_MAC_BASE[0],
        DVR_MAC_BASE[1],
        DVR_MAC_BASE[2],
        o[1],
        o[2],
        o[3],
    ]
}

/// A MAC as `ip link` writes it.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> Result<[u8; 6], &'static str> {
    const BAD: &str = "not a MAC address (aa:bb:cc:dd:ee:ff)";
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or(BAD)?;
        if part.len() != 2 {
            return Err(BAD);
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| BAD)?;
    }
    if parts.next().is_some() {
        return Err(BAD);
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err("must be a unicast MAC address");
    }
    Ok(mac)
}

// ---- the file ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDistributed {
    #[serde(default)]
    nodes: BTreeMap<String, String>,
    #[serde(default)]
    network: Vec<FileNetwork>,
    #[serde(default)]
    port: Vec<FilePort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNetwork {
    interface: String,
    vni: i64,
    snat_address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePort {
    interface: String,
    address: String,
    mac: String,
    node: String,
}

pub(super) fn read_distributed(
    at: &Ctx,
    f: Option<&FileDistributed>,
) -> Result<Option<Distributed>, ConfigError> {
    let Some(f) = f else {
        return Ok(None);
    };
    let nodes = f
        .nodes
        .iter()
        .map(|(name, vtep)| {
            let key = format!("distributed.nodes.{name}");
            Ok((name.clone(), read(at, &key, vtep, parse_ip)?))
        })
        .collect::<Result<_, ConfigError>>()?;
    let networks = f
        .network
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let key = format!("distributed.network[{i}]");
            let vni = u32::try_from(n.vni)
                .ok()
                .filter(|v| (1..=VNI_MAX).contains(v))
                .ok_or_else(|| {
                    at.bad(
                        &format!("{key}.vni"),
                        &n.vni.to_string(),
                        "must be a VXLAN network identifier, 1-16777215",
                    )
                })?;
            Ok(Network {
                interface: n.interface.clone(),
                vni,
                snat_address: n
                    .snat_address
                    .as_deref()
                    .map(|t| read(at, &format!("{key}.snat_address"), t, parse_ip))
                    .transpose()?,
            })
        })
        .collect::<Result<_, ConfigError>>()?;
    let ports = f
        .port
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let key = format!("distributed.port[{i}]");
            Ok(Port {
                interface: p.interface.clone(),
                address: read(at, &format!("{key}.address"), &p.address, parse_ip)?,
                mac: read(at, &format!("{key}.mac"), &p.mac, parse_mac)?,
                node: p.node.clone(),
            })
        })
        .collect::<Result<_, ConfigError>>()?;
    Ok(Some(Distributed {
        nodes,
        networks,
        ports,
    }))
}

// ---- the checks ----------------------------------------------------------------------------

/// Checks `[router.distributed]` against the rest of the router (run last: it refers to
/// the interfaces and the gateway).
pub(super) fn check_distributed(at: &Ctx, r: &Router) -> Result<(), ConfigError> {
    let Some(d) = &r.distributed else {
        return Ok(());
    };
    let unsupported = [
        ("steering", r.steering.is_some()),
        ("firewall", r.firewall.is_some()),
        ("table", !r.tables.is_empty()),
        ("rule", !r.rules.is_empty()),
    ];
    for (section, present) in unsupported {
        if present {
            return Err(at.bad(
                section,
                "",
                "not supported on a distributed router (its copies on compute nodes route \
                 with tables of their own)",
            ));
        }
    }
    let mut vteps = HashSet::new();
    let mut macs = HashSet::new();
    for (name, vtep) in &d.nodes {
        let key = format!("distributed.nodes.{name}");
        crate::cluster::keys::check_node_name(name).map_err(|_| {
            at.bad(
                &key,
                name,
                "not a node name (1-63 letters, digits, '-', '_' or '.')",
            )
        })?;
        if vtep.is_unspecified() || vtep.is_broadcast() || vtep.is_multicast() || vtep.is_loopback()
        {
            return Err(at.bad(&key, &vtep.to_string(), "not a unicast overlay address"));
        }
        if !vteps.insert(*vtep) {
            return Err(at.bad(&key, &vtep.to_string(), "another node has this address"));
        }
        if !macs.insert(dvr_mac(*vtep)) {
            return Err(at.bad(
                &key,
                &vtep.to_string(),
                "another node's address ends in the same three bytes (the DVR MAC is made of them)",
            ));
        }
    }
    let mut vnis = HashSet::new();
    for (i, n) in d.networks.iter().enumerate() {
        let key = format!("distributed.network[{i}]");
        let Some(iface) = r.interfaces.iter().find(|x| x.name == n.interface) else {
            return Err(at.bad(
                &format!("{key}.interface"),
                &n.interface,
                "not an internal interface of the router",
            ));
        };
        if d.networks[..i].iter().any(|o| o.interface == n.interface) {
            return Err(at.bad(
                &format!("{key}.interface"),
                &n.interface,
                "another network entry has this interface",
            ));
        }
        if !vnis.insert(n.vni) {
            return Err(at.bad(
                &format!("{key}.vni"),
                &n.vni.to_string(),
                "another network of the router has this VNI",
            ));
        }
        match n.snat_address {
            None if r.gateway.is_some() => {
                return Err(at.bad(
                    &format!("{key}.snat_address"),
                    "",
                    "required with a gateway: compute nodes send external traffic there",
                ));
            }
            None => {}
            Some(a) => {
                let subnet = iface.address.subnet();
                if !subnet.contains(a) || a == iface.address.addr || a == subnet.broadcast() {
                    return Err(at.bad(
                        &format!("{key}.snat_address"),
                        &a.to_string(),
                        &format!("must be a host of {subnet} other than the gateway address"),
                    ));
                }
                if !d
                    .ports
                    .iter()
                    .any(|p| p.interface == n.interface && p.address == a)
                {
                    return Err(at.bad(
                        &format!("{key}.snat_address"),
                        &a.to_string(),
                        "no port has this address (the SNAT node's port gives its MAC)",
                    ));
                }
            }
        }
    }
    if let Some(missing) = r.interfaces.iter().find(|i| d.network(&i.name).is_none()) {
        return Err(at.bad(
            "distributed.network",
            &missing.name,
            "every internal interface of a distributed router needs its network (vni)",
        ));
    }
    let mut addresses = HashSet::new();
    let mut port_macs = HashSet::new();
    for (i, p) in d.ports.iter().enumerate() {
        let key = format!("distributed.port[{i}]");
        let Some(iface) = r.interfaces.iter().find(|x| x.name == p.interface) else {
            return Err(at.bad(
                &format!("{key}.interface"),
                &p.interface,
                "not an internal interface of the router",
            ));
        };
        let subnet = iface.address.subnet();
        if !subnet.contains(p.address) || p.address == iface.address.addr {
            return Err(at.bad(
                &format!("{key}.address"),
                &p.address.to_string(),
                &format!("must be a host of {subnet} other than the gateway address"),
            ));
        }
        if !addresses.insert(p.address) {
            return Err(at.bad(
                &format!("{key}.address"),
                &p.address.to_string(),
                "another port has this address",
            ));
        }
        if !port_macs.insert((p.interface.as_str(), p.mac)) {
            return Err(at.bad(
                &format!("{key}.mac"),
                &mac_text(p.mac),
                "another port of the network has this MAC",
            ));
        }
        if !d.nodes.contains_key(&p.node) {
            return Err(at.bad(
                &format!("{key}.node"),
                &p.node,
                "not in distributed.nodes (its overlay address is needed)",
            ));
        }
    }
    for (i, f) in r.floating_ips.iter().enumerate() {
        if !d.ports.iter().any(|p| p.address == f.fixed) {
            return Err(at.bad(
                &format!("floating_ip[{i}].fixed"),
                &f.fixed.to_string(),
                "no port of the distributed router has this address (its node answers for the floating IP)",
            ));
        }
    }
    Ok(())
}

// ---- the renderer --------------------------------------------------------------------------

pub(super) fn write_distributed(s: &mut String, d: &Distributed) -> std::fmt::Result {
    writeln!(s, "\n[router.distributed]")?;
    let nodes: Vec<String> = d
        .nodes
        .iter()
        .map(|(name, vtep)| format!("{} = \"{vtep}\"", quote(name)))
        .collect();
    writeln!(s, "nodes = {{ {} }}", nodes.join(", "))?;
    for n in &d.networks {
        writeln!(s, "\n[[router.distributed.network]]")?;
        writeln!(s, "interface = {}", quote(&n.interface))?;
        writeln!(s, "vni = {}", n.vni)?;
        if let Some(a) = n.snat_address {
            writeln!(s, "snat_address = \"{a}\"")?;
        }
    }
    for p in &d.ports {
        writeln!(s, "\n[[router.distributed.port]]")?;
        writeln!(s, "interface = {}", quote(&p.interface))?;
        writeln!(s, "address = \"{}\"", p.address)?;
        writeln!(s, "mac = \"{}\"", mac_text(p.mac))?;
        writeln!(s, "node = {}", quote(&p.node))?;
    }
    Ok(())
}
