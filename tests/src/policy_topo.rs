//! Topologies of the policy-routing tests, each built from named namespaces (unique per run,
//! deleted on drop) and configured for routerd by a desired-state file written here:
//!
//! - [`SteeringTopology`]: a router with four internal subnets, a gateway to an
//!   outside host, and a virtual firewall on two more router interfaces (its internal and
//!   external legs) that forwards, counts (nftables) and can drop on demand.
//! - [`ExternalTopology`]: one external L2 (a bridge) carrying three external
//!   subnets, each with its own gateway host, all three leading to one internet host.
//! - [`FirewallTopology`]: internal subnets 10.0.0.0/24, 2.2.2.0/24 and
//!   3.3.3.0/24 behind a router with the stateful firewall.
//!
//! Also: applying a new desired state through SIGHUP and waiting for routerd to report it,
//! and reading the router's firewall and drop-reason counters.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    desired::{FirewallText, PolicyRuleText, PolicyText, RouterText, SteeringText},
    probe::{NftCounters, sysctl},
    routerd::Routerd,
    topo::{Namespaces, ip, unique, veth},
    traffic::wait_for,
};

// ---------------------------------------------------------------------------------------
// Shared helpers

/// Writes `text` as the desired state, sends SIGHUP and waits until routerd has reloaded
/// it; panics with routerd's log if it refused the file or did not finish in time.
pub fn reload(routerd: &Routerd, config: &Path, text: &str) {
    let count = |log: &str, what: &str| log.matches(what).count();
    let before = routerd.log_text();
    let (done0, refused0) = (
        count(&before, "routerd: reloaded in"),
        count(&before, "nothing changed"),
    );
    // Written whole, then renamed: routerd never reads half a file.
    let tmp = config.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, config)
        .unwrap_or_else(|e| panic!("renaming to {}: {e}", config.display()));
    routerd.reload();
    wait_for(
        "routerd to apply the new desired state",
        Duration::from_secs(15),
        || {
            let log = routerd.log_text();
            count(&log, "routerd: reloaded in") > done0 || count(&log, "nothing changed") > refused0
        },
    );
    let log = routerd.log_text();
    let new = &log[before.len().min(log.len())..];
    assert!(
        count(&log, "nothing changed") == refused0,
        "routerd refused the new desired state:\n{new}\n--- file ---\n{text}"
    );
    assert!(
        !new.contains("ERROR"),
        "routerd reported an error applying the new desired state:\n{new}\n--- file ---\n{text}"
    );
}

/// Packets the router counted under drop/pass reason `reason`, all interfaces together.
pub fn reason_total(router: &str, reason: &str) -> u64 {
    router_user::stats::collect(Some(router))
        .unwrap_or_else(|e| panic!("reading router {router}'s counters: {e}"))
        .iter()
        .filter_map(|r| r.reasons.get(reason).copied())
        .sum()
}

/// A point-to-point link: `port` in the router namespace, `eth0` in `host_ns` with
/// `addr` (with prefix length) and, if given, a default route.
fn host_link(router_ns: &str, port: &str, host_ns: &str, addr: &str, gateway: Option<&str>) {
    veth(port, router_ns, "eth0", host_ns);
    ip(&["-n", host_ns, "link", "set", "eth0", "up"]);
    ip(&["-n", host_ns, "addr", "add", addr, "dev", "eth0"]);
    if let Some(gw) = gateway {
        ip(&["-n", host_ns, "route", "add", "default", "via", gw]);
    }
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
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
    /// Declared last: namespaces go after everything that lives in them.
    pub namespaces: Namespaces,
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
        crate::require_root();
        let mut namespaces = Namespaces::default();
        let tag = unique("s");
        let router_ns = namespaces.add(&format!("qrouter-{tag}"));
        let outside_ns = namespaces.add(&format!("out-{tag}"));
        let fw_ns = namespaces.add(&format!("vfw-{tag}"));
        let vm_ns = ["a", "b", "c", "d"].map(|v| namespaces.add(&format!("vm{v}-{tag}")));

        host_link(&router_ns, QG, &outside_ns, "198.18.0.1/24", None);
        for (i, ns) in vm_ns.iter().enumerate() {
            host_link(
                &router_ns,
                QR[i],
                ns,
                &format!("10.0.{}.5/24", i + 1),
                Some(&format!("10.0.{}.1", i + 1)),
            );
        }
        // The firewall: two legs, forwarding, its own routes.
        veth(QR_FW_INT, &router_ns, "int", &fw_ns);
        veth(QR_FW_EXT, &router_ns, "ext", &fw_ns);
        for (dev, addr) in [("int", "10.99.0.2/24"), ("ext", "10.99.1.2/24")] {
            ip(&["-n", &fw_ns, "link", "set", dev, "up"]);
            ip(&["-n", &fw_ns, "addr", "add", addr, "dev", dev]);
        }
        ip(&[
            "-n",
            &fw_ns,
            "route",
            "add",
            "10.0.0.0/16",
            "via",
            "10.99.0.1",
        ]);
        ip(&["-n", &fw_ns, "route", "add", "default", "via", "10.99.1.1"]);
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
        let config = std::env::temp_dir().join(format!("{tag}.toml"));
        let me = Self {
            mode: mode.to_string(),
            tag,
            router_ns,
            outside_ns,
            vm_ns,
            fw_ns,
            config,
            fw,
            namespaces,
        };
        write_config(&me.config, &me.desired(&["qr-a", "qr-b"]));
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
        let mut interfaces: Vec<(String, String, Option<bool>)> = QR
            .iter()
            .enumerate()
            .map(|(i, q)| (q.to_string(), format!("10.0.{}.1/24", i + 1), None))
            .collect();
        interfaces.push((QR_FW_INT.into(), "10.99.0.1/24".into(), None));
        interfaces.push((QR_FW_EXT.into(), "10.99.1.1/24".into(), None));
        RouterText {
            id: self.tag.clone(),
            namespace: self.router_ns.clone(),
            mode: self.mode.clone(),
            gateway: Some((QG.into(), format!("{GW}/24"), OUTSIDE.to_string(), None)),
            interfaces,
            floating_ips: vec![(FIP_A, VM_A)],
            extra: policy.render(),
        }
        .render()
    }
}

impl Drop for SteeringTopology {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
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
    pub switch_ns: String,
    /// gw1, gw2, gw3.
    pub gw_ns: [String; 3],
    pub inet_ns: String,
    pub h5_ns: String,
    /// vm1, vm2, vm3.
    pub vm_ns: [String; 3],
    pub config: PathBuf,
    /// The counters of gw1, gw2, gw3.
    pub gw: [NftCounters; 3],
    pub namespaces: Namespaces,
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
        crate::require_root();
        let mut namespaces = Namespaces::default();
        let tag = unique("x");
        let router_ns = namespaces.add(&format!("qrouter-{tag}"));
        let switch_ns = namespaces.add(&format!("extsw-{tag}"));
        let inet_ns = namespaces.add(&format!("inet-{tag}"));
        let h5_ns = namespaces.add(&format!("h5-{tag}"));
        let gw_ns = ["1", "2", "3"].map(|g| namespaces.add(&format!("gw{g}-{tag}")));
        let vm_ns = ["1", "2", "3"].map(|v| namespaces.add(&format!("vm{v}-{tag}")));

        // The external L2.
        ip(&["-n", &switch_ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch_ns, "link", "set", "br0", "up"]);
        let mut ports: Vec<(String, String, String)> =
            vec![(QG.to_string(), router_ns.clone(), "p-qg".to_string())];
        for (i, ns) in gw_ns.iter().enumerate() {
            ports.push(("eth0".into(), ns.clone(), format!("p-gw{}", i + 1)));
        }
        ports.push(("eth0".into(), h5_ns.clone(), "p-h5".into()));
        for (dev, ns, port) in &ports {
            veth(dev, ns, port, &switch_ns);
            ip(&["-n", &switch_ns, "link", "set", port, "master", "br0"]);
            ip(&["-n", &switch_ns, "link", "set", port, "up"]);
        }
        // The internet host: one link per gateway.
        ip(&[
            "-n",
            &inet_ns,
            "addr",
            "add",
            &format!("{INET}/32"),
            "dev",
            "lo",
        ]);
        for (i, ns) in gw_ns.iter().enumerate() {
            let n = i + 1;
            let up = format!("up{n}");
            veth("eth1", ns, &up, &inet_ns);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "eth1", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("172.24.{}.1/24", 3 + n),
                "dev",
                "eth0",
            ]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("192.0.2.{}/30", 4 * i + 1),
                "dev",
                "eth1",
            ]);
            ip(&["-n", &inet_ns, "link", "set", &up, "up"]);
            ip(&[
                "-n",
                &inet_ns,
                "addr",
                "add",
                &format!("192.0.2.{}/30", 4 * i + 2),
                "dev",
                &up,
            ]);
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                &format!("192.0.2.{}", 4 * i + 2),
            ]);
            ip(&[
                "-n",
                &inet_ns,
                "route",
                "add",
                &format!("172.24.{}.0/24", 3 + n),
                "via",
                &format!("192.0.2.{}", 4 * i + 1),
                "src",
                &INET.to_string(),
            ]);
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
            &inet_ns,
            &[
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        );
        // h5: a host on external subnet 2 that reaches subnet 1 on the link (one L2).
        ip(&["-n", &h5_ns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &h5_ns,
            "addr",
            "add",
            &format!("{H5}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &h5_ns, "route", "add", "172.24.4.0/24", "dev", "eth0"]);
        ip(&[
            "-n",
            &h5_ns,
            "route",
            "add",
            "default",
            "via",
            &GW2.to_string(),
        ]);

        for (i, ns) in vm_ns.iter().enumerate() {
            host_link(
                &router_ns,
                &format!("qr-{}", i + 1),
                ns,
                &format!("10.0.{}.5/24", i + 1),
                Some(&format!("10.0.{}.1", i + 1)),
            );
        }

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
        let config = std::env::temp_dir().join(format!("{tag}.toml"));
        let me = Self {
            mode: mode.to_string(),
            tag,
            router_ns,
            switch_ns,
            gw_ns,
            inet_ns,
            h5_ns,
            vm_ns,
            config,
            gw,
            namespaces,
        };
        write_config(&me.config, &me.desired(false));
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
            id: self.tag.clone(),
            namespace: self.router_ns.clone(),
            mode: self.mode.clone(),
            gateway: Some((QG.into(), format!("{GW_IP}/24"), GW1.to_string(), None)),
            interfaces: (1..=3)
                .map(|i| (format!("qr-{i}"), format!("10.0.{i}.1/24"), None))
                .collect(),
            floating_ips: fips,
            extra: policy.render(),
        }
        .render()
    }

    /// `name` of every gateway host: [gw1, gw2, gw3].
    pub fn gw_counts(&self, name: &str) -> [u64; 3] {
        [0, 1, 2].map(|i| self.gw[i].get(name))
    }
}

impl Drop for ExternalTopology {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
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
    pub namespaces: Namespaces,
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
        crate::require_root();
        let mut namespaces = Namespaces::default();
        let tag = unique("f");
        let router_ns = namespaces.add(&format!("qrouter-{tag}"));
        let outside_ns = namespaces.add(&format!("out-{tag}"));
        let vm0_ns = namespaces.add(&format!("vm0-{tag}"));
        let vm2_ns = namespaces.add(&format!("vm2-{tag}"));
        let vm3_ns = namespaces.add(&format!("vm3-{tag}"));
        host_link(&router_ns, QG, &outside_ns, "198.18.0.1/24", None);
        host_link(&router_ns, "qr-0", &vm0_ns, "10.0.0.5/24", Some("10.0.0.1"));
        host_link(&router_ns, "qr-2", &vm2_ns, "2.2.2.5/24", Some("2.2.2.1"));
        host_link(&router_ns, "qr-3", &vm3_ns, "3.3.3.5/24", Some("3.3.3.1"));
        let config = std::env::temp_dir().join(format!("{tag}.toml"));
        let me = Self {
            mode: mode.to_string(),
            tag,
            router_ns,
            outside_ns,
            vm0_ns,
            vm2_ns,
            vm3_ns,
            config,
            namespaces,
        };
        write_config(&me.config, &me.desired(firewall));
        me
    }

    pub fn desired(&self, firewall: &FirewallText) -> String {
        use fwt::*;
        let policy = PolicyText {
            firewall: Some(firewall.clone()),
            ..PolicyText::default()
        };
        RouterText {
            id: self.tag.clone(),
            namespace: self.router_ns.clone(),
            mode: self.mode.clone(),
            gateway: Some((QG.into(), format!("{GW}/24"), OUTSIDE.to_string(), None)),
            interfaces: vec![
                ("qr-0".into(), "10.0.0.1/24".into(), None),
                ("qr-2".into(), "2.2.2.1/24".into(), None),
                ("qr-3".into(), "3.3.3.1/24".into(), None),
            ],
            floating_ips: vec![(FIP3, VM3)],
            extra: policy.render(),
        }
        .render()
    }
}

impl Drop for FirewallTopology {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}
