//! The kernel's own NAT rules: the slow path's translation.
//!
//! The fast path hands some packets to the kernel (fragments, IP options, TTL expiry,
//! packets too big for the egress, protocols it does not translate). The router namespace
//! keeps `ip_forward=1` so the kernel can deal with them, and these nftables rules make the
//! kernel translate them exactly as Neutron's iptables rules would — so nothing handed over
//! ever leaves with an internal source address. One table per router namespace, replaced
//! atomically (`nft -f` applies a file as one transaction). Floating IPs are set elements,
//! not one rule each, so a lookup does not grow with their number.
//!
//! The kernel's SNAT uses its own port range, disjoint from the fast path's, so a session
//! the kernel makes can never take a tuple a fast-path session holds.

use std::{fmt::Write as _, io::Write as _, net::Ipv4Addr, process::Command};

use router_common::REJECT_MARK;

use crate::{
    config::{FirewallRule, FwAction, Router},
    error::Error,
};

pub const TABLE: &str = "neutron_router";
/// DNATed traffic that did not enter from the gateway (Neutron's mark rule).
const HAIRPIN: &str = "meta mark & 0xffff != 0x2 ct status & dnat == dnat";

/// The ruleset for `router`, as an `nft -f` file.
pub fn ruleset(router: &Router) -> String {
    let mut s = String::new();
    // "add" then "delete" makes the delete succeed whether or not the table exists.
    let _ = writeln!(
        s,
        "add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{"
    );
    let fips = |pick: fn(&crate::config::FloatingIp) -> (Ipv4Addr, Ipv4Addr)| {
        router
            .floating_ips
            .iter()
            .map(|f| {
                let (a, b) = pick(f);
                format!("{a} : {b}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "  map fip_dnat {{ type ipv4_addr : ipv4_addr;");
    if !router.floating_ips.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", fips(|f| (f.address, f.fixed)));
    }
    let _ = writeln!(s, "  }}\n  map fip_snat {{ type ipv4_addr : ipv4_addr;");
    if !router.floating_ips.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", fips(|f| (f.fixed, f.address)));
    }
    let _ = writeln!(s, "  }}");
    let internal: Vec<String> = router
        .interfaces
        .iter()
        .map(|i| format!("\"{}\"", i.name))
        .collect();

    // Anti-spoofing for what the fast path hands over unchecked (fragments, IP options):
    // the same sources as its ALLOWED_SOURCES, before conntrack sees the packet.
    let _ = writeln!(
        s,
        "  chain source_check {{ type filter hook prerouting priority raw;"
    );
    for (name, prefixes) in crate::policy::allowed_sources(router) {
        if prefixes.iter().any(|p| p.len == 0) {
            continue;
        }
        let set: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            s,
            "    iifname \"{name}\" ip saddr != {{ {} }} drop",
            set.join(", ")
        );
    }
    let _ = writeln!(s, "  }}");

    // mangle: what entered from the gateway is marked (Neutron's 0x2/0xffff).
    let _ = writeln!(
        s,
        "  chain mark_gateway {{ type filter hook prerouting priority mangle;"
    );
    if let Some(g) = &router.gateway {
        let _ = writeln!(
            s,
            "    iifname \"{}\" meta mark set meta mark & 0xffff0000 | 0x2",
            g.interface
        );
    }
    let _ = writeln!(s, "  }}");

    let _ = writeln!(
        s,
        "  chain dnat_in {{ type nat hook prerouting priority dstnat;"
    );
    if !internal.is_empty() {
        let _ = writeln!(
            s,
            "    iifname {{ {} }} ip daddr 169.254.169.254 tcp dport 80 redirect to :{}",
            internal.join(", "),
            router.nat.metadata_port
        );
    }
    let _ = writeln!(s, "    dnat to ip daddr map @fip_dnat");
    let _ = writeln!(s, "  }}");

    let _ = writeln!(
        s,
        "  chain snat_out {{ type nat hook postrouting priority srcnat;"
    );
    if let Some(g) = &router.gateway {
        let qg = &g.interface;
        let _ = writeln!(
            s,
            "    iifname != \"{qg}\" oifname != \"{qg}\" ct status & dnat == 0 accept"
        );
        let _ = writeln!(s, "    snat to ip saddr map @fip_snat");
        if g.snat {
            let (gw, ports) = (g.address.addr, router.nat.slow_path_snat_ports);
            // Ports (and ICMP identifiers) only for protocols that have them.
            for matches in [format!("oifname \"{qg}\""), HAIRPIN.to_string()] {
                let _ = writeln!(
                    s,
                    "    {matches} meta l4proto {{ tcp, udp }} snat to {gw}:{ports}"
                );
                let _ = writeln!(s, "    {matches} meta l4proto icmp snat to {gw}:{ports}");
                let _ = writeln!(s, "    {matches} snat to {gw}");
            }
        }
    }
    let _ = writeln!(s, "  }}");
    firewall_chain(&mut s, router, &internal);
    let _ = writeln!(s, "}}");
    s
}

/// The firewall in the kernel: it answers what the fast path rejects (marked
/// `REJECT_MARK`), and judges what the fast path hands over without judging (fragments,
/// IP options) by the same rules, with the kernel's own conntrack for state.
fn firewall_chain(s: &mut String, router: &Router, internal: &[String]) {
    let mark = format!("meta mark & 0xffff0000 == {REJECT_MARK:#x}");
    let _ = writeln!(
        s,
        "  chain fw_forward {{ type filter hook forward priority filter; policy accept;"
    );
    let _ = writeln!(s, "    {mark} meta l4proto tcp reject with tcp reset");
    let _ = writeln!(s, "    {mark} reject with icmp type port-unreachable");
    if let (Some(fw), false) = (&router.firewall, internal.is_empty()) {
        let set = internal.join(", ");
        let _ = writeln!(
            s,
            "    iifname != {{ {set} }} oifname != {{ {set} }} accept"
        );
        let _ = writeln!(s, "    ct state invalid drop");
        let _ = writeln!(s, "    ct state established,related accept");
        for rule in &fw.rules {
            let _ = writeln!(s, "{}", nft_rule(rule));
        }
        let policy = if fw.default_allow { "accept" } else { "drop" };
        let _ = writeln!(s, "    {policy}");
    }
    let _ = writeln!(s, "  }}");
}

/// One firewall rule as nftables statements.
fn nft_rule(rule: &FirewallRule) -> String {
    let mut m = String::new();
    let proto = match rule.protocol {
        0 => None,
        6 => Some("tcp"),
        17 => Some("udp"),
        1 => Some("icmp"),
        _ => None,
    };
    match (rule.protocol, proto) {
        (0, _) => {}
        (_, Some(name)) => {
            let _ = write!(m, " meta l4proto {name}");
        }
        (n, None) => {
            let _ = write!(m, " meta l4proto {n}");
        }
    }
    if rule.source.len != 0 {
        let _ = write!(m, " ip saddr {}", rule.source);
    }
    if rule.destination.len != 0 {
        let _ = write!(m, " ip daddr {}", rule.destination);
    }
    if let (Some(ports), Some(name @ ("tcp" | "udp"))) = (rule.ports, proto) {
        let _ = write!(m, " {name} dport {}-{}", ports.min, ports.max);
    }
    match rule.action {
        FwAction::Allow => format!("   {m} accept"),
        FwAction::Deny => format!("   {m} drop"),
        FwAction::Reject if rule.protocol == 0 => format!(
            "   {m} meta l4proto tcp reject with tcp reset\n   {m} reject with icmp type port-unreachable"
        ),
        FwAction::Reject if rule.protocol == 6 => format!("   {m} reject with tcp reset"),
        FwAction::Reject => format!("   {m} reject with icmp type port-unreachable"),
    }
}

/// Brings the slow-path rules from `old` to `new`: when only floating IPs differ, by adding
/// and deleting map elements (one transaction); otherwise by replacing the table.
pub fn update(old: &Router, new: &Router) -> Result<(), Error> {
    let same_but_fips = Router {
        floating_ips: new.floating_ips.clone(),
        ..old.clone()
    } == *new;
    if !same_but_fips {
        return apply(new);
    }
    let before: std::collections::BTreeSet<_> = old.floating_ips.iter().collect();
    let after: std::collections::BTreeSet<_> = new.floating_ips.iter().collect();
    let gone: Vec<_> = before.difference(&after).collect();
    let added: Vec<_> = after.difference(&before).collect();
    let mut s = String::new();
    let keys = |fips: &[&&crate::config::FloatingIp], dnat: bool| {
        fips.iter()
            .map(|f| if dnat { f.address } else { f.fixed }.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pairs = |fips: &[&&crate::config::FloatingIp], dnat: bool| {
        fips.iter()
            .map(|f| {
                let (a, b) = if dnat {
                    (f.address, f.fixed)
                } else {
                    (f.fixed, f.address)
                };
                format!("{a} : {b}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !gone.is_empty() {
        let _ = writeln!(
            s,
            "delete element ip {TABLE} fip_dnat {{ {} }}",
            keys(&gone, true)
        );
        let _ = writeln!(
            s,
            "delete element ip {TABLE} fip_snat {{ {} }}",
            keys(&gone, false)
        );
    }
    if !added.is_empty() {
        let _ = writeln!(
            s,
            "add element ip {TABLE} fip_dnat {{ {} }}",
            pairs(&added, true)
        );
        let _ = writeln!(
            s,
            "add element ip {TABLE} fip_snat {{ {} }}",
            pairs(&added, false)
        );
    }
    if s.is_empty() {
        return Ok(());
    }
    run_nft(&new.id, &s)?;
    let _ = std::fs::write(applied_file(&new.id), ruleset(new));
    Ok(())
}

/// Replaces the router's slow-path rules in the calling thread's namespace.
pub fn apply(router: &Router) -> Result<(), Error> {
    let rules = ruleset(router);
    run_nft(&router.id, &rules)?;
    let _ = std::fs::write(applied_file(&router.id), rules);
    Ok(())
}

/// Applies the router's rules unless the kernel has exactly these already (the table
/// exists and the last ruleset applied for this router is the same text). Returns whether
/// it wrote.
pub fn ensure(router: &Router) -> Result<bool, Error> {
    let rules = ruleset(router);
    let same = std::fs::read_to_string(applied_file(&router.id)).is_ok_and(|r| r == rules);
    let present = Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if same && present {
        return Ok(false);
    }
    apply(router)?;
    Ok(true)
}

/// The ruleset last applied for `router` (in the run directory, gone at reboot with the
/// kernel state it describes).
fn applied_file(router: &str) -> std::path::PathBuf {
    crate::paths::run_dir().join(format!("{router}.nft"))
}

/// Runs `nft -f -` on `rules` (one transaction: all or nothing).
fn run_nft(id: &str, rules: &str) -> Result<(), Error> {
    let rules = rules.to_string();
    let what = || format!("router {id}: installing the slow-path NAT rules");
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("{} (running nft)", what()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| Error::io(what(), e))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::io(what(), e))?;
    if !out.status.success() {
        return Err(Error::io(
            what(),
            std::io::Error::other(format!(
                "nft: {}\n{rules}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        ));
    }
    Ok(())
}

/// Removes the router's slow-path rules (the router is being removed).
pub fn remove(router: &str) {
    let _ = std::fs::remove_file(applied_file(router));
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", TABLE])
        .stderr(std::process::Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DesiredState;

    /// The FWaaS example firewall and a reject rule of every kind, as nftables reads it: `nft
    /// --check` parses and validates the file (needs root, like every test here).
    #[test]
    fn firewall_ruleset_is_valid_nftables() {
        let text = r#"
[[router]]
id = "r1"
namespace = "ns1"
[router.gateway]
interface = "qg-1"
address = "172.24.4.2/24"
nexthop = "172.24.4.1"
[[router.interface]]
name = "qr-a"
address = "10.0.0.1/24"
[router.firewall]
[[router.firewall.rule]]
action = "deny"
protocol = "tcp"
source = "2.2.2.0/24"
destination = "3.3.3.0/24"
destination_ports = "1:65535"
[[router.firewall.rule]]
action = "deny"
protocol = "icmp"
source = "10.0.0.0/24"
[[router.firewall.rule]]
action = "reject"
protocol = "udp"
destination_ports = "53"
[[router.firewall.rule]]
action = "reject"
[[router.firewall.rule]]
action = "allow"
protocol = "47"
"#;
        let router = DesiredState::parse(text).expect("valid").routers.remove(0);
        let rules = ruleset(&router);
        assert!(rules.contains("ip saddr 2.2.2.0/24 ip daddr 3.3.3.0/24 tcp dport 1-65535 drop"));
        assert!(rules.contains("meta l4proto icmp ip saddr 10.0.0.0/24 drop"));
        let mut child = Command::new("nft")
            .args(["--check", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("nft ends");
        assert!(
            out.status.success(),
            "nft rejects:\n{}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
