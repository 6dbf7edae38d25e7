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

use crate::{config::Router, error::Error};

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
    let _ = writeln!(s, "  }}\n}}");
    s
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
    run_nft(&new.id, &s)
}

/// Replaces the router's slow-path rules in the calling thread's namespace.
pub fn apply(router: &Router) -> Result<(), Error> {
    run_nft(&router.id, &ruleset(router))
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

/// Removes the router's slow-path rules (the router is being stopped).
pub fn remove() {
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", TABLE])
        .stderr(std::process::Stdio::null())
        .status();
}
