//! The NAT topology: an external host, a router with a gateway port and two internal ports,
//! and three VMs, two of them with floating IPs. Built bare (links only, router interfaces
//! without addresses) so the same wiring can be configured either the Neutron way
//! (`configure_neutron`) or by routerd (`routerd_config`).
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
    neutron::{FloatingIp, NeutronRouter},
    topo::{Namespaces, ip, unique, veth},
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
pub const FLOATING_IPS: [FloatingIp; 2] = [
    FloatingIp {
        floating: FIP1,
        fixed: VM1,
    },
    FloatingIp {
        floating: FIP2,
        fixed: VM2,
    },
];

/// The endpoints, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
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
    /// The L2 segment of subnet A (a bridge), where vm1, vm3 and qr-a meet.
    pub switch_ns: String,
    config: Option<PathBuf>,
    /// Declared last: namespaces go after everything that lives in them.
    pub namespaces: Namespaces,
}

impl NatTopology {
    /// Namespaces and links; the hosts are configured, the router's interfaces exist (down,
    /// without addresses).
    pub fn build() -> Self {
        crate::require_root();
        let mut namespaces = Namespaces::default();
        let tag = unique("n");
        let router_ns = namespaces.add(&format!("qrouter-{tag}"));
        let ext_ns = namespaces.add(&format!("ext-{tag}"));
        let vm1_ns = namespaces.add(&format!("vm1-{tag}"));
        let vm2_ns = namespaces.add(&format!("vm2-{tag}"));
        let vm3_ns = namespaces.add(&format!("vm3-{tag}"));
        let switch_ns = namespaces.add(&format!("swa-{tag}"));

        // External network and subnet B: point to point.
        veth(QG, &router_ns, "eth0", &ext_ns);
        veth(QR_B, &router_ns, "eth0", &vm2_ns);
        // Subnet A: qr-a, vm1 and vm3 on one bridge.
        ip(&["-n", &switch_ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch_ns, "link", "set", "br0", "up"]);
        veth(QR_A, &router_ns, "p-qr", &switch_ns);
        veth("eth0", &vm1_ns, "p-vm1", &switch_ns);
        veth("eth0", &vm3_ns, "p-vm3", &switch_ns);
        for port in ["p-qr", "p-vm1", "p-vm3"] {
            ip(&["-n", &switch_ns, "link", "set", port, "master", "br0"]);
            ip(&["-n", &switch_ns, "link", "set", port, "up"]);
        }

        for (ns, addr, gw) in [
            (&ext_ns, "198.18.0.1/24", None),
            (&vm1_ns, "10.0.1.5/24", Some("10.0.1.1")),
            (&vm2_ns, "10.0.2.5/24", Some("10.0.2.1")),
            (&vm3_ns, "10.0.1.6/24", Some("10.0.1.1")),
        ] {
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
            if let Some(gw) = gw {
                ip(&["-n", ns, "route", "add", "default", "via", gw]);
            }
        }
        Self {
            tag,
            router_ns,
            ext_ns,
            vm1_ns,
            vm2_ns,
            vm3_ns,
            switch_ns,
            config: None,
            namespaces,
        }
    }

    pub fn ns(&self, host: Host) -> &str {
        match host {
            Host::Ext => &self.ext_ns,
            Host::Router => &self.router_ns,
            Host::Vm1 => &self.vm1_ns,
            Host::Vm2 => &self.vm2_ns,
            Host::Vm3 => &self.vm3_ns,
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
        let path = std::env::temp_dir().join(format!("{}.toml", self.tag));
        let text = crate::desired::RouterText {
            id: self.tag.clone(),
            namespace: self.router_ns.clone(),
            mode: mode.into(),
            gateway: Some((QG.into(), format!("{GW}/24"), EXT.to_string(), None)),
            interfaces: vec![
                (QR_A.into(), format!("{QR_A_IP}/24"), None),
                (QR_B.into(), format!("{QR_B_IP}/24"), None),
            ],
            floating_ips: vec![(FIP1, VM1), (FIP2, VM2)],
            extra: format!(
                "[router.nat]\nmetadata_port = {}\n",
                crate::neutron::METADATA_PORT
            ),
        }
        .render();
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        self.config = Some(path.clone());
        path
    }
}

impl Drop for NatTopology {
    fn drop(&mut self) {
        if let Some(path) = self.config.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
