//! Reading the counters of running routers from their pinned maps, and showing them.

use std::fmt::Write as _;

use router_common::{IfaceStats, Reason};
use serde::Serialize;

use crate::{datapath, error::Error, router::running_routers};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InterfaceStats {
    pub router: String,
    pub interface: String,
    pub ifindex: u32,
    pub role: String,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// Packets by reason name (only reasons that occurred).
    pub reasons: std::collections::BTreeMap<String, u64>,
}

impl InterfaceStats {
    fn new(router: &str, interface: &str, ifindex: u32, role: &str, s: &IfaceStats) -> Self {
        let reasons = Reason::ALL
            .iter()
            .filter(|r| s.reasons[**r as usize] != 0)
            .map(|r| (r.name().to_string(), s.reasons[*r as usize]))
            .collect();
        Self {
            router: router.to_string(),
            interface: interface.to_string(),
            ifindex,
            role: role.to_string(),
            forwarded_packets: s.fwd_packets,
            forwarded_bytes: s.fwd_bytes,
            passed_packets: s.pass_packets,
            passed_bytes: s.pass_bytes,
            dropped_packets: s.drop_packets,
            dropped_bytes: s.drop_bytes,
            reasons,
        }
    }
}

/// Counters of every interface of every running router (or of `only`).
pub fn collect(only: Option<&str>) -> Result<Vec<InterfaceStats>, Error> {
    let mut out = Vec::new();
    let routers = running_routers()?;
    if let Some(id) = only
        && !routers.iter().any(|r| r.router == id)
    {
        return Err(Error::NotRunning(
            id.to_string(),
            crate::paths::RUN_DIR.to_string(),
        ));
    }
    for info in routers
        .iter()
        .filter(|r| only.is_none_or(|id| r.router == id))
    {
        let map = datapath::open_pinned_stats(&info.router)?;
        for iface in &info.interfaces {
            let s = datapath::sum_stats(&map, iface.ifindex)?;
            out.push(InterfaceStats::new(
                &info.router,
                &iface.name,
                iface.ifindex,
                &iface.role,
                &s,
            ));
        }
    }
    Ok(out)
}

/// The human-readable table: one row per interface, then one row per non-zero reason.
pub fn table(stats: &[InterfaceStats]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<14} {:<8} {:>12} {:>14} {:>10} {:>12} {:>10} {:>12}",
        "ROUTER",
        "INTERFACE",
        "ROLE",
        "FWD_PKTS",
        "FWD_BYTES",
        "PASS_PKTS",
        "PASS_BYTES",
        "DROP_PKTS",
        "DROP_BYTES"
    );
    for s in stats {
        let _ = writeln!(
            out,
            "{:<10} {:<14} {:<8} {:>12} {:>14} {:>10} {:>12} {:>10} {:>12}",
            s.router,
            s.interface,
            s.role,
            s.forwarded_packets,
            s.forwarded_bytes,
            s.passed_packets,
            s.passed_bytes,
            s.dropped_packets,
            s.dropped_bytes
        );
    }
    if stats.iter().any(|s| !s.reasons.is_empty()) {
        let _ = writeln!(
            out,
            "\n{:<10} {:<14} {:<20} {:<8} {:>12}",
            "ROUTER", "INTERFACE", "REASON", "VERDICT", "PACKETS"
        );
        for s in stats {
            for (name, count) in &s.reasons {
                let verdict = Reason::ALL
                    .iter()
                    .find(|r| r.name() == name)
                    .map_or("?", |r| {
                        if r.is_drop() {
                            "drop"
                        } else if *r == Reason::XdpToTc {
                            "to-tc"
                        } else {
                            "kernel"
                        }
                    });
                let _ = writeln!(
                    out,
                    "{:<10} {:<14} {:<20} {:<8} {:>12}",
                    s.router, s.interface, name, verdict, count
                );
            }
        }
    }
    out
}
