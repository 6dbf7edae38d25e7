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

/// Replaces the router's slow-path rules in the calling thread's namespace.
pub fn apply(router: &Router) -> Result<(), Error> {
    let rules = ruleset(router);
    let what = || format!("router {}: installing the slow-path NAT rules", router.id);
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
