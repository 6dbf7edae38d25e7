//! Topologies of the policy-routing tests, each built by [`crate::topology`] and configured
//! for routerd by a desired-state file written here:
//!
//! - [`SteeringTopology`]: a router with four internal subnets, a gateway to an
//!   outside host, and a virtual firewall on two more router interfaces (its internal and
//!   external legs) that forwards, counts (nftables) and can drop on demand.
//! - [`ExternalTopology`]: one external L2 (a bridge) carrying three external
//!   subnets, each with its own gateway host, all three leading to one internet host.
//! - [`FirewallTopology`]: internal subnets 10.0.0.0/24, 2.2.2.0/24 and
//!   3.3.3.0/24 behind a router with the stateful firewall.
//!
//! Also: reading the router's drop-reason counters.

use std::{net::Ipv4Addr, path::PathBuf};

use crate::{
    desired::{FirewallText, PolicyRuleText, PolicyText, RouterText, SteeringText},
    probe::{NftCounters, sysctl},
    topology::{Builder, Host, Topology},
};

// ---------------------------------------------------------------------------------------
// Shared helpers

/// Packets the router counted under drop/pass reason `reason`, all interfaces together.
pub fn reason_total(router: &str, reason: &str) -> u64 {
    router_user::stats::collect(Some(router))
        .unwrap_or_else(|e| panic!("reading router {router}'s counters: {e}"))
        .iter()
        .filter_map(|r| r.reasons.get(reason).copied())
        .sum()
}

// ---------------------------------------------------------------------------------------
// Steering through a virtual firewall

/// ```text
///  outside 198.18.0.1 ── qg-s (198.18.0.2 = GW; FIP 198.18.0.10 -> vm-a)
///                         router
///  vm-a 10.0.1.5 ── qr-a 10.0.1.1     qr-fi 10.99.0.1 ── int 10.99.0.2 ┐
///  vm-b 10.0.2.5 ── qr-b 10.0.2.1                                       firewall
///  vm-c 10.0.3.5 ── qr-c 10.0.3.1     qr-fe 10.99.1.1 ── ext 10.99.1.2 ┘
///  vm-d 10.0.4.5 ── qr-d 10.0.4.1
/// ```
/// The firewall forwards (internal subnets via 10.99.0.1, default via 10.99.1.1), counts in
/// nftables, and drops what it is told to. Steering sends what enters the steered `qr`s to
/// its internal leg and what enters `qg` to its external leg; an explicit policy rule (iif qr-d from
/// 10.0.4.0/24 to 10.0.1.0/24) sends vm-d's traffic to vm-a's subnet through it too.
pub struct SteeringTopology {
    pub mode: String,
    pub tag: String,
    pub router_ns: String,
    pub outside_ns: String,
    /// vm-a, vm-b, vm-c, vm-d.
    pub vm_ns: [String; 4],
    pub fw_ns: String,
    pub config: PathBuf,
    pub fw: NftCounters,
    /// Owns the namespaces and the desired-state file.
    pub topology: Topology,
}

pub mod steer {
    use std::net::Ipv4Addr;
    pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const FIP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    pub const VM_A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
    pub const VM_B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);
    pub const VM_C: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 5);
    pub const VM_D: Ipv4Addr = Ipv4Addr::new(10, 0, 4, 5);
    pub const FW_INT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    pub const FW_EXT: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 2);
    pub const QG: &str = "qg-s";
    pub const QR: [&str; 4] = ["qr-a", "qr-b", "qr-c", "qr-d"];
    pub const QR_FW_INT: &str = "qr-fi";
    pub const QR_FW_EXT: &str = "qr-fe";
}

impl SteeringTopology {
    /// Builds the namespaces, links and the firewall; writes the desired state with qr-a and
    /// qr-b steered.
    pub fn build(mode: &str) -> Self {
        use steer::*;
        let mut builder = Builder::new("s").external(
            QG,
            &format!("{GW}/24"),
            &OUTSIDE.to_string(),
            [Host::new("out", &format!("{OUTSIDE}/24"))],
        );
        for (i, port) in QR.iter().enumerate() {
            let n = i + 1;
            builder = builder.internal(
                port,
                &format!("10.0.{n}.1/24"),
                [Host::new(&format!("vm{n}"), &format!("10.0.{n}.5/24"))
                    .via(&format!("10.0.{n}.1"))],
            );
        }
        // The firewall: two legs, forwarding, its own routes.
        let topology = builder
            .internal(
                QR_FW_INT,
                "10.99.0.1/24",
                [Host::new("vfw", &format!("{FW_INT}/24")).dev("int")],
            )
            .internal(
                QR_FW_EXT,
                "10.99.1.1/24",
                [Host::new("vfw", &format!("{FW_EXT}/24")).dev("ext")],
            )
            .route("vfw", "10.0.0.0/16 via 10.99.0.1")
            .route("vfw", "default via 10.99.1.1")
            .build();
        let fw_ns = topology.ns("vfw").to_string();
        sysctl(
            &fw_ns,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.int.rp_filter=0",
                "net.ipv4.conf.ext.rp_filter=0",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.int.send_redirects=0",
                "net.ipv4.conf.ext.send_redirects=0",
            ],
        );
        let vm = |a: Ipv4Addr| a.to_string();
        let counters: Vec<(String, String)> = [
            // East-west, first pass of each direction.
            (
                "a_to_c",
                format!(
                    "iifname \"int\" ip saddr {} ip daddr {}",
                    vm(VM_A),
                    vm(VM_C)
                ),
            ),
            (
                "a_to_c_tcp",
                format!(
                    "iifname \"int\" ip saddr {} ip daddr {} meta l4proto tcp",
                    vm(VM_A),
                    vm(VM_C)
                ),
            ),
            (
                "a_to_c_udp",
                format!(
                    "iifname \"int\" ip saddr {} ip daddr {} meta l4proto udp",
                    vm(VM_A),
                    vm(VM_C)
                ),
            ),
            (
                "a_to_c_icmp",
                format!(
                    "iifname \"int\" ip saddr {} ip daddr {} meta l4proto icmp",
                    vm(VM_A),
                    vm(VM_C)
                ),
            ),
            ("from_c", format!("ip saddr {}", vm(VM_C))),
            // Everything from vm-a, whatever the destination.
            ("from_a", format!("ip saddr {}", vm(VM_A))),
            // Floating IP: inbound arrives on the external leg translated to vm-a, vm-a's
            // replies arrive on the internal leg untranslated.
            (
                "out_to_a",
                format!(
                    "iifname \"ext\" ip saddr {} ip daddr {}",
                    vm(OUTSIDE),
                    vm(VM_A)
                ),
            ),
            (
                "a_to_out",
                format!(
                    "iifname \"int\" ip saddr {} ip daddr {}",
                    vm(VM_A),
                    vm(OUTSIDE)
                ),
            ),
            ("fip_seen_src", format!("ip saddr {}", vm(FIP_A))),
            ("fip_seen_dst", format!("ip daddr {}", vm(FIP_A))),
            // SNAT: vm-b untranslated on the internal leg, its replies de-SNATed on the
            // external leg; the gateway IP never reaches the firewall.
            (
                "b_to_out",
                format!(
                    "iifname \"int\" ip saddr {} ip daddr {}",
                    vm(VM_B),
                    vm(OUTSIDE)
                ),
            ),
            (
                "out_to_b",
                format!(
                    "iifname \"ext\" ip saddr {} ip daddr {}",
                    vm(OUTSIDE),
                    vm(VM_B)
                ),
            ),
            ("gw_seen", format!("ip saddr {}", vm(GW))),
            ("gw_seen_dst", format!("ip daddr {}", vm(GW))),
            // The explicit policy rule: vm-d to vm-a's subnet only.
            (
                "d_to_a",
                format!("iifname \"int\" ip saddr {} ip daddr 10.0.1.0/24", vm(VM_D)),
            ),
            (
                "d_to_c",
                format!("ip saddr {} ip daddr {}", vm(VM_D), vm(VM_C)),
            ),
        ]
        .into_iter()
        .map(|(n, e)| (n.to_string(), e))
        .collect();
        let refs: Vec<(&str, &str)> = counters
            .iter()
            .map(|(n, e)| (n.as_str(), e.as_str()))
            .collect();
        let fw = NftCounters::install(&fw_ns, "vfw", "forward", &refs);
        let me = Self {
            mode: mode.to_string(),
            tag: topology.tag.clone(),
            router_ns: topology.router_ns.clone(),
            outside_ns: topology.ns("out").to_string(),
            vm_ns: [1, 2, 3, 4].map(|n| topology.ns(&format!("vm{n}")).to_string()),
            fw_ns,
            config: topology.config.clone(),
            fw,
            topology,
        };
        me.topology.write_config(&me.desired(&["qr-a", "qr-b"]));
        me
    }

    pub fn vm(&self, i: usize) -> &str {
        &self.vm_ns[i]
    }

    /// The desired state with `steered` internal interfaces.
    pub fn desired(&self, steered: &[&str]) -> String {
        use steer::*;
        let policy = PolicyText {
            tables: vec![("vfw".into(), 100)],
            table_routes: vec![("0.0.0.0/0".into(), FW_INT.to_string(), "vfw".into())],
            rules: vec![PolicyRuleText {
                priority: 1000,
                // Without iif the packet coming back from the firewall would match again.
                iif: Some(QR[3].into()),
                from: Some("10.0.4.0/24".into()),
                to: Some("10.0.1.0/24".into()),
                table: "vfw".into(),
            }],
            steering: Some(SteeringText {
                nexthop: FW_INT.to_string(),
                gateway_nexthop: Some(FW_EXT.to_string()),
                interfaces: steered.iter().map(|s| s.to_string()).collect(),
            }),
            ..PolicyText::default()
        };
        RouterText {
            floating_ips: vec![(FIP_A, VM_A)],
            extra: policy.render(),
            ..self.topology.router_text(&self.mode)
        }
        .render()
    }
}

// ---------------------------------------------------------------------------------------
// Several external subnets

/// ```text
///                       ┌ gw1 172.24.4.1 ─┐
///  router qg-x ── br0 ──┼ gw2 172.24.5.1 ─┼── internet 203.0.113.10
///  172.24.4.2/24        ├ gw3 172.24.6.1 ─┘
///  172.24.5.2/24        └ h5  172.24.5.50 (a host on subnet 2, no gateway needed)
///  (172.24.6.2/24 at run time)
///  vm1 10.0.1.5 (FIP 172.24.4.10) ── qr-1
///  vm2 10.0.2.5 (FIP 172.24.5.10) ── qr-2
///  vm3 10.0.3.5 (SNAT; FIP 172.24.6.10 while subnet 3 exists) ── qr-3
/// ```
/// Each gateway host counts in nftables (prerouting) what arrives from the external L2, by
/// source address; the internet host routes each external subnet back through its own
/// gateway.
pub struct ExternalTopology {
    pub mode: String,
    pub tag: String,
    pub router_ns: String,
    /// gw1, gw2, gw3.
    pub gw_ns: [String; 3],
    pub inet_ns: String,
    pub h5_ns: String,
    /// vm1, vm2, vm3.
    pub vm_ns: [String; 3],
    pub config: PathBuf,
    /// The counters of gw1, gw2, gw3.
    pub gw: [NftCounters; 3],
    /// Owns the namespaces (the external L2's bridge among them) and the desired-state
    /// file.
    pub topology: Topology,
}

pub mod ext {
    use std::net::Ipv4Addr;
    pub const GW_IP: Ipv4Addr = Ipv4Addr::new(172, 24, 4, 2);
    pub const GW1: Ipv4Addr = Ipv4Addr::new(172, 24, 4, 1);
    pub const GW2: Ipv4Addr = Ipv4Addr::new(172, 24, 5, 1);
    pub const GW3: Ipv4Addr = Ipv4Addr::new(172, 24, 6, 1);
    pub const FIP1: Ipv4Addr = Ipv4Addr::new(172, 24, 4, 10);
    pub const FIP2: Ipv4Addr = Ipv4Addr::new(172, 24, 5, 10);
    pub const FIP3: Ipv4Addr = Ipv4Addr::new(172, 24, 6, 10);
    pub const H5: Ipv4Addr = Ipv4Addr::new(172, 24, 5, 50);
    pub const INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    pub const VM1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
    pub const VM2: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);
    pub const VM3: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 5);
    pub const QG: &str = "qg-x";
}

impl ExternalTopology {
    pub fn build(mode: &str) -> Self {
        use ext::*;
        // The external L2: the router's gateway port, the three gateway hosts and h5 (a
        // host on subnet 2 that reaches subnet 1 on the link, one L2).
        let mut external: Vec<Host> = [GW1, GW2, GW3]
            .iter()
            .enumerate()
            .map(|(i, gw)| Host::new(&format!("gw{}", i + 1), &format!("{gw}/24")))
            .collect();
        external.push(Host::new("h5", &format!("{H5}/24")).via(&GW2.to_string()));
        let mut builder = Builder::new("x")
            .external(QG, &format!("{GW_IP}/24"), &GW1.to_string(), external)
            .route("h5", "172.24.4.0/24 dev eth0");
        // The internet host: one link per gateway, each external subnet routed back
        // through its own gateway.
        builder = builder.address("inet", "lo", &format!("{INET}/32"));
        for i in 0..3 {
            let (n, gw) = (i + 1, format!("gw{}", i + 1));
            let (gw_end, inet_end) = (4 * i + 1, 4 * i + 2);
            builder = builder
                .link(
                    Host::new(&gw, &format!("192.0.2.{gw_end}/30")).dev("eth1"),
                    Host::new("inet", &format!("192.0.2.{inet_end}/30")).dev(&format!("up{n}")),
                )
                .route(&gw, &format!("203.0.113.0/24 via 192.0.2.{inet_end}"))
                .route(
                    "inet",
                    &format!("172.24.{}.0/24 via 192.0.2.{gw_end} src {INET}", 3 + n),
                );
        }
        for n in 1..=3 {
            builder = builder.internal(
                &format!("qr-{n}"),
                &format!("10.0.{n}.1/24"),
                [Host::new(&format!("vm{n}"), &format!("10.0.{n}.5/24"))
                    .via(&format!("10.0.{n}.1"))],
            );
        }
        let topology = builder.build();
        let gw_ns = [1, 2, 3].map(|n| topology.ns(&format!("gw{n}")).to_string());
        for ns in &gw_ns {
            sysctl(
                ns,
                &[
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv4.conf.eth0.rp_filter=0",
                    "net.ipv4.conf.eth1.rp_filter=0",
                ],
            );
        }
        sysctl(
            topology.ns("inet"),
            &[
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        );

        let counters: Vec<(String, String)> = [
            ("from_fip1", format!("iifname \"eth0\" ip saddr {FIP1}")),
            ("from_fip2", format!("iifname \"eth0\" ip saddr {FIP2}")),
            ("from_fip3", format!("iifname \"eth0\" ip saddr {FIP3}")),
            ("from_gw_ip", format!("iifname \"eth0\" ip saddr {GW_IP}")),
            ("h5", format!("ip saddr {H5}")),
            ("to_h5", format!("ip daddr {H5}")),
            ("fixed", "ip saddr 10.0.0.0/16".to_string()),
        ]
        .into_iter()
        .map(|(n, e)| (n.to_string(), e))
        .collect();
        let refs: Vec<(&str, &str)> = counters
            .iter()
            .map(|(n, e)| (n.as_str(), e.as_str()))
            .collect();
        let gw = [0, 1, 2].map(|i| NftCounters::install(&gw_ns[i], "gwc", "prerouting", &refs));
        let me = Self {
            mode: mode.to_string(),
            tag: topology.tag.clone(),
            router_ns: topology.router_ns.clone(),
            gw_ns,
            inet_ns: topology.ns("inet").to_string(),
            h5_ns: topology.ns("h5").to_string(),
            vm_ns: [1, 2, 3].map(|n| topology.ns(&format!("vm{n}")).to_string()),
            config: topology.config.clone(),
            gw,
            topology,
        };
        me.topology.write_config(&me.desired(false));
        me
    }

    /// The desired state: subnets 1 and 2, and with `third` subnet 3 and vm3's floating IP
    /// on it.
    pub fn desired(&self, third: bool) -> String {
        use ext::*;
        let mut subnets = vec![("172.24.5.2/24".to_string(), GW2.to_string())];
        let mut fips = vec![(FIP1, VM1), (FIP2, VM2)];
        if third {
            subnets.push(("172.24.6.2/24".into(), GW3.to_string()));
            fips.push((FIP3, VM3));
        }
        let policy = PolicyText {
            gateway_subnets: subnets,
            ..PolicyText::default()
        };
        RouterText {
            floating_ips: fips,
            extra: policy.render(),
            ..self.topology.router_text(&self.mode)
        }
        .render()
    }

    /// `name` of every gateway host: [gw1, gw2, gw3].
    pub fn gw_counts(&self, name: &str) -> [u64; 3] {
        [0, 1, 2].map(|i| self.gw[i].get(name))
    }
}

// ---------------------------------------------------------------------------------------
// The stateful firewall

/// ```text
///  outside 198.18.0.1 ── qg-f (198.18.0.2 = GW; FIP 198.18.0.13 -> vm3)
///                         router (firewall on every qr)
///  vm0 10.0.0.5 ── qr-0 10.0.0.1
///  vm2 2.2.2.5  ── qr-2 2.2.2.1
///  vm3 3.3.3.5  ── qr-3 3.3.3.1
/// ```
pub struct FirewallTopology {
    pub mode: String,
    pub tag: String,
    pub router_ns: String,
    pub outside_ns: String,
    pub vm0_ns: String,
    pub vm2_ns: String,
    pub vm3_ns: String,
    pub config: PathBuf,
    /// Owns the namespaces and the desired-state file.
    pub topology: Topology,
}

pub mod fwt {
    use std::net::Ipv4Addr;
    pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const FIP3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 13);
    pub const VM0: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    pub const VM2: Ipv4Addr = Ipv4Addr::new(2, 2, 2, 5);
    pub const VM3: Ipv4Addr = Ipv4Addr::new(3, 3, 3, 5);
    pub const QG: &str = "qg-f";
}

impl FirewallTopology {
    /// Builds the namespaces and links and writes the desired state with `firewall`.
    pub fn build(mode: &str, firewall: &FirewallText) -> Self {
        use fwt::*;
        let vm = |name: &str, address: &str, router: &str| Host::new(name, address).via(router);
        let topology = Builder::new("f")
            .external(
                QG,
                &format!("{GW}/24"),
                &OUTSIDE.to_string(),
                [Host::new("out", &format!("{OUTSIDE}/24"))],
            )
            .internal(
                "qr-0",
                "10.0.0.1/24",
                [vm("vm0", "10.0.0.5/24", "10.0.0.1")],
            )
            .internal("qr-2", "2.2.2.1/24", [vm("vm2", "2.2.2.5/24", "2.2.2.1")])
            .internal("qr-3", "3.3.3.1/24", [vm("vm3", "3.3.3.5/24", "3.3.3.1")])
            .build();
        let me = Self {
            mode: mode.to_string(),
            tag: topology.tag.clone(),
            router_ns: topology.router_ns.clone(),
            outside_ns: topology.ns("out").to_string(),
            vm0_ns: topology.ns("vm0").to_string(),
            vm2_ns: topology.ns("vm2").to_string(),
            vm3_ns: topology.ns("vm3").to_string(),
            config: topology.config.clone(),
            topology,
        };
        me.topology.write_config(&me.desired(firewall));
        me
    }

    pub fn desired(&self, firewall: &FirewallText) -> String {
        use fwt::*;
        let policy = PolicyText {
            firewall: Some(firewall.clone()),
            ..PolicyText::default()
        };
        RouterText {
            floating_ips: vec![(FIP3, VM3)],
            extra: policy.render(),
            ..self.topology.router_text(&self.mode)
        }
        .render()
    }
}
