//! The reference the fast path is measured against: a router namespace set up the way
//! Neutron's L3 agent does it, with the kernel forwarding and iptables translating.
//!
//! Why this exists: "the fast path does what Neutron does" is only a testable claim if
//! Neutron's behaviour is reproduced here from its own rules, not from our reading of them.
//! So the rules below are the ones in `neutron-baseline.md`, character for character, with
//! the interface and addresses substituted; a test that runs the same traffic through them
//! and through the fast path can then compare what the endpoints saw. The benchmarks reuse
//! the same functions, so the "before" numbers come from the same rules as the correctness
//! reference.
//!
//! Which rule produces which observation (each one checked by deleting it again, in
//! `neutron_rule_ablations_change_exactly_their_rows` in `tests/tests/nat_topology.rs`):
//! - `neutron-l3-agent-PREROUTING -d FIP -j DNAT`: the external host reaches the VM, which
//!   sees the external source and its own fixed address as destination.
//! - the mangle rule marking everything from QG with 0x2/0xffff: without it, DNATed traffic
//!   from outside also hits the hairpin SNAT below and the VM sees the gateway address
//!   instead of the external host.
//! - `float-snat -s FIXED -j SNAT --to-source FIP`: a VM with a floating IP leaves with it,
//!   also when the destination is another VM's floating IP (hairpin), because
//!   `neutron-l3-agent-snat` jumps to `float-snat` before its own rules.
//! - `snat -o QG -j SNAT --to-source GW`: a VM without a floating IP leaves as the gateway
//!   (the kernel keeps the source port when it is free). Without it the fixed address leaks
//!   out and nothing comes back.
//! - `snat -m mark ! --mark 0x2/0xffff -m conntrack --ctstate DNAT -j SNAT --to-source GW`:
//!   DNATed traffic from *inside* (hairpin) of a VM without a floating IP is SNATed to the
//!   gateway. Without it the receiver sees the sender's fixed address; in the test topology
//!   the replies still return (the two VMs are on different subnets, so they route through
//!   the router either way), on a shared subnet the receiver would answer directly.
//! - `POSTROUTING ! -i QG ! -o QG ! --ctstate DNAT -j ACCEPT`: not a no-op. Without it,
//!   east-west traffic of a VM with a floating IP is float-SNATed to that floating IP.
//! - `PREROUTING -d 169.254.169.254 -i qr-+ -p tcp --dport 80 -j REDIRECT --to-ports 9697`:
//!   the metadata request reaches the proxy in the router namespace, addressed to the
//!   `qr` port's own address (REDIRECT uses the incoming interface's primary address).
//! - `neutron-l3-agent-OUTPUT -d FIP -j DNAT`: only for traffic the router namespace sends
//!   to a floating IP itself; no VM or external traffic depends on it.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::topo::ip;

/// The metadata proxy's port in the router namespace (Neutron's haproxy listens here).
pub const METADATA_PORT: u16 = 9697;
/// The metadata service address the VMs use.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// A floating IP and the fixed IP it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeutronFloatingIp {
    pub floating: Ipv4Addr,
    pub fixed: Ipv4Addr,
}

/// The L3 agent's iptables rules (mangle mark rule and nat chains) as `iptables-restore`
/// input, exactly as in `neutron-baseline.md`: `qg` is the gateway interface, `gateway`
/// its address, `internal_prefix` the prefix of the internal interfaces (`"qr-"` gives
/// `-i qr-+`). Floating IPs appear in the order given, so the last one is the last rule of
/// each chain (the benchmarks' worst case).
pub fn iptables_rules(
    qg: &str,
    gateway: Ipv4Addr,
    floating_ips: &[NeutronFloatingIp],
    internal_prefix: &str,
) -> String {
    let mut s = String::with_capacity(512 + floating_ips.len() * 200);
    let _ = write!(
        s,
        "*mangle\n\
         :neutron-l3-agent-mark - [0:0]\n\
         -A PREROUTING -j neutron-l3-agent-mark\n\
         -A neutron-l3-agent-mark -i {qg} -j MARK --set-xmark 0x2/0xffff\n\
         COMMIT\n\
         *nat\n\
         :neutron-l3-agent-OUTPUT - [0:0]\n\
         :neutron-l3-agent-POSTROUTING - [0:0]\n\
         :neutron-l3-agent-PREROUTING - [0:0]\n\
         :neutron-l3-agent-float-snat - [0:0]\n\
         :neutron-l3-agent-snat - [0:0]\n\
         :neutron-postrouting-bottom - [0:0]\n\
         -A PREROUTING -j neutron-l3-agent-PREROUTING\n\
         -A OUTPUT -j neutron-l3-agent-OUTPUT\n\
         -A POSTROUTING -j neutron-l3-agent-POSTROUTING\n\
         -A POSTROUTING -j neutron-postrouting-bottom\n"
    );
    for f in floating_ips {
        let _ = writeln!(
            s,
            "-A neutron-l3-agent-OUTPUT -d {}/32 -j DNAT --to-destination {}",
            f.floating, f.fixed
        );
    }
    let _ = write!(
        s,
        "-A neutron-l3-agent-POSTROUTING ! -i {qg} ! -o {qg} -m conntrack ! --ctstate DNAT -j ACCEPT\n\
         -A neutron-l3-agent-PREROUTING -d {METADATA_IP}/32 -i {internal_prefix}+ -p tcp -m tcp --dport 80 -j REDIRECT --to-ports {METADATA_PORT}\n"
    );
    for f in floating_ips {
        let _ = writeln!(
            s,
            "-A neutron-l3-agent-PREROUTING -d {}/32 -j DNAT --to-destination {}",
            f.floating, f.fixed
        );
    }
    for f in floating_ips {
        let _ = writeln!(
            s,
            "-A neutron-l3-agent-float-snat -s {}/32 -j SNAT --to-source {}",
            f.fixed, f.floating
        );
    }
    let _ = write!(
        s,
        "-A neutron-l3-agent-snat -j neutron-l3-agent-float-snat\n\
         -A neutron-l3-agent-snat -o {qg} -j SNAT --to-source {gateway}\n\
         -A neutron-l3-agent-snat -m mark ! --mark 0x2/0xffff -m conntrack --ctstate DNAT -j SNAT --to-source {gateway}\n\
         -A neutron-postrouting-bottom -j neutron-l3-agent-snat\n\
         COMMIT\n"
    );
    s
}

/// Loads `iptables_rules(..)` into namespace `ns` with one `iptables-restore` (which
/// replaces the mangle and nat tables as one transaction, as the agent does). Returns how
/// long `iptables-restore` took, for the benchmarks.
pub fn install_iptables_rules(
    ns: &str,
    qg: &str,
    gateway: Ipv4Addr,
    floating_ips: &[NeutronFloatingIp],
    internal_prefix: &str,
) -> Duration {
    let rules = iptables_rules(qg, gateway, floating_ips, internal_prefix);
    let started = Instant::now();
    pipe_into(&["netns", "exec", ns, "iptables-restore"], &rules);
    started.elapsed()
}

/// Runs `ip ARGS` with `input` on stdin; panics with stderr if it fails.
fn pipe_into(args: &[&str], input: &str) {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running ip {}: {e}", args.join(" ")));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("writing to ip {}: {e}", args.join(" ")));
    let out = child.wait_with_output().expect("waiting for ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}\ninput:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        if input.len() > 4000 {
            &input[..4000]
        } else {
            input
        }
    );
}

/// One router as the L3 agent configures it.
#[derive(Clone, Debug)]
pub struct NeutronRouter {
    /// The gateway interface and its address (`GW`) with prefix length.
    pub qg: String,
    pub gateway: Ipv4Addr,
    pub gateway_prefix_len: u8,
    /// The default route's next hop on the external network.
    pub nexthop: Ipv4Addr,
    /// Internal interfaces (`qr-*`): name, the subnet's gateway address, prefix length.
    pub internal: Vec<(String, Ipv4Addr, u8)>,
    pub floating_ips: Vec<NeutronFloatingIp>,
}

impl NeutronRouter {
    /// Configures namespace `ns` (whose interfaces already exist) as the agent does:
    /// [`NeutronRouter::configure_forwarding`], then the iptables rules. Returns the
    /// `iptables-restore` time.
    pub fn configure(&self, ns: &str) -> Duration {
        self.configure_forwarding(ns);
        install_iptables_rules(ns, &self.qg, self.gateway, &self.floating_ips, "qr-")
    }

    /// Everything the agent configures but the iptables rules: links up, addresses, the
    /// default route, `ip_forward=1`, and every floating IP as a /32 on the gateway
    /// interface (so the kernel answers ARP for it). Another translation (the benchmarks'
    /// nftables baseline) can then be put on the same kernel router.
    pub fn configure_forwarding(&self, ns: &str) {
        for (name, addr, len) in std::iter::once((&self.qg, self.gateway, self.gateway_prefix_len))
            .chain(self.internal.iter().map(|(n, a, l)| (n, *a, *l)))
        {
            ip(&["-n", ns, "link", "set", name, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/{len}"),
                "dev",
                name,
            ]);
        }
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &self.nexthop.to_string(),
            "dev",
            &self.qg,
        ]);
        set_ip_forward(ns);
        // One batch: the benchmarks add thousands of them.
        if !self.floating_ips.is_empty() {
            let mut batch = String::new();
            for f in &self.floating_ips {
                let _ = writeln!(
                    batch,
                    "addr add {0}/32 brd {0} dev {1}",
                    f.floating, self.qg
                );
            }
            pipe_into(&["-n", ns, "-batch", "-"], &batch);
        }
    }
}

/// `net.ipv4.ip_forward=1` in namespace `ns` (written from a thread inside it: /proc/sys/net
/// follows the writer's namespace), checked by reading it back.
pub fn set_ip_forward(ns: &str) {
    let value = crate::traffic::join(crate::traffic::in_ns(ns, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("writing ip_forward");
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("reading ip_forward")
    }));
    assert_eq!(value.trim(), "1", "ip_forward in {ns}");
}
