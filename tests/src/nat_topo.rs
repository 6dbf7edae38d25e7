//! The NAT topology: an external host, a router with a gateway port and two internal ports,
//! and three VMs, two of them with floating IPs. Built bare by [`crate::topology`] (links
//! only, router interfaces without addresses) so the same wiring can be configured either
//! the Neutron way (`configure_neutron`) or by routerd (`routerd_config`).
//!
//! ```text
//!  ext 198.18.0.1 ── qg (198.18.0.2 = GW)
//!                     router
//!  vm1 10.0.1.5 ─┐
//!                ├─ switch A (bridge) ── qr-a 10.0.1.1
//!  vm3 10.0.1.6 ─┘
//!  vm2 10.0.2.5 ──────────────────────── qr-b 10.0.2.1
//! ```
//! vm1 has floating IP 198.18.0.10, vm2 has 198.18.0.11, vm3 has none. The external host
//! has no route to the internal subnets: it can reach the VMs only through NAT.

use std::{net::Ipv4Addr, path::PathBuf};

use crate::{
    desired::RouterText,
    neutron::{NeutronFloatingIp, NeutronRouter},
    topology::{Builder, Host, Topology},
};

pub const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const FIP1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const FIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
pub const QR_A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const QR_B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
pub const VM1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
pub const VM2: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);
pub const VM3: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 6);

pub const QG: &str = "qg-nat";
pub const QR_A: &str = "qr-a";
pub const QR_B: &str = "qr-b";

/// The floating IPs of the topology: vm1's and vm2's.
pub const FLOATING_IPS: [NeutronFloatingIp; 2] = [
    NeutronFloatingIp {
        floating: FIP1,
        fixed: VM1,
    },
    NeutronFloatingIp {
        floating: FIP2,
        fixed: VM2,
    },
];

/// The endpoints, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Ext,
    Router,
    Vm1,
    Vm2,
    Vm3,
}

pub struct NatTopology {
    pub tag: String,
    pub router_ns: String,
    pub ext_ns: String,
    pub vm1_ns: String,
    pub vm2_ns: String,
    pub vm3_ns: String,
    /// Owns the namespaces (the bridge of subnet A among them) and the desired-state file.
    pub topology: Topology,
}

impl NatTopology {
    /// Namespaces and links; the hosts are configured, the router's interfaces exist (down,
    /// without addresses).
    pub fn build() -> Self {
        Self::build_with(Builder::new("n"))
    }

    /// As [`NatTopology::build`], wired as on a Neutron node with Open vSwitch: `qg` and the
    /// external host on `br-ex`, subnet A (`qr-a`, vm1, vm3) and subnet B (`qr-b`, vm2) on
    /// VLANs of `br-int`, every end an internal port but vm3's, a veth as a VM plugged the
    /// hybrid way has (see [`Builder::ovs`]).
    pub fn build_ovs() -> Self {
        Self::build_with(Builder::new("o").ovs())
    }

    fn build_with(builder: Builder) -> Self {
        let vm = |name: &str, address: &str, gateway: Ipv4Addr| {
            Host::new(name, address).via(&gateway.to_string())
        };
        let topology = builder
            .external(
                QG,
                &format!("{GW}/24"),
                &EXT.to_string(),
                [Host::new("ext", &format!("{EXT}/24"))],
            )
            .internal(
                QR_A,
                &format!("{QR_A_IP}/24"),
                [
                    vm("vm1", &format!("{VM1}/24"), QR_A_IP),
                    vm("vm3", &format!("{VM3}/24"), QR_A_IP).veth_plug(),
                ],
            )
            .internal(
                QR_B,
                &format!("{QR_B_IP}/24"),
                [vm("vm2", &format!("{VM2}/24"), QR_B_IP)],
            )
            .build();
        Self {
            tag: topology.tag.clone(),
            router_ns: topology.router_ns.clone(),
            ext_ns: topology.ns("ext").to_string(),
            vm1_ns: topology.ns("vm1").to_string(),
            vm2_ns: topology.ns("vm2").to_string(),
            vm3_ns: topology.ns("vm3").to_string(),
            topology,
        }
    }

    pub fn ns(&self, endpoint: Endpoint) -> &str {
        match endpoint {
            Endpoint::Ext => &self.ext_ns,
            Endpoint::Router => &self.router_ns,
            Endpoint::Vm1 => &self.vm1_ns,
            Endpoint::Vm2 => &self.vm2_ns,
            Endpoint::Vm3 => &self.vm3_ns,
        }
    }

    /// The router as Neutron's L3 agent describes it.
    pub fn neutron_router() -> NeutronRouter {
        NeutronRouter {
            qg: QG.to_string(),
            gateway: GW,
            gateway_prefix_len: 24,
            nexthop: EXT,
            internal: vec![
                (QR_A.to_string(), QR_A_IP, 24),
                (QR_B.to_string(), QR_B_IP, 24),
            ],
            floating_ips: FLOATING_IPS.to_vec(),
        }
    }

    /// Configures the router namespace the way Neutron's L3 agent does (no eBPF).
    pub fn configure_neutron(&self) {
        Self::neutron_router().configure(&self.router_ns);
    }

    /// The router id routerd is given.
    pub fn router_id(&self) -> &str {
        &self.tag
    }

    /// Writes routerd's desired state for this router in `mode` ("xdp" or "tc") and returns
    /// its path (removed with the topology). No addresses are added here: routerd adds them,
    /// and answers ARP for the floating IPs itself.
    pub fn routerd_config(&mut self, mode: &str) -> PathBuf {
        self.routerd_config_with(mode, "")
    }

    /// [`Self::routerd_config`] with more `[router.nat]` settings (`nat` lines).
    pub fn routerd_config_with(&mut self, mode: &str, nat: &str) -> PathBuf {
        let text = RouterText {
            floating_ips: vec![(FIP1, VM1), (FIP2, VM2)],
            extra: format!(
                "[router.nat]\nmetadata_port = {}\n{nat}",
                crate::neutron::METADATA_PORT
            ),
            ..self.topology.router_text(mode)
        };
        self.topology.write_config(&text.render());
        self.topology.config.clone()
    }
}
