//! Reading the counters of running routers from their pinned maps, and showing them.

use std::net::Ipv4Addr;

use router_common::{IfaceStats, Reason, nat_flags};
use serde::Serialize;

use crate::{
    error::Error,
    maps::{Pinned, Rooms as _},
    router::{RouterInfo, running_router, running_routers},
};

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

/// Every running router, or only `only` (an error if that one is not running). A router
/// whose namespace is gone is not running, whatever it left pinned ([`stale_routers`]).
pub fn selected_routers(only: Option<&str>) -> Result<Vec<RouterInfo>, Error> {
    let Some(id) = only else {
        let mut routers = running_routers()?;
        routers.retain(crate::stale::is_live);
        return Ok(routers);
    };
    match running_router(id)?.filter(crate::stale::is_live) {
        Some(info) => Ok(vec![info]),
        None => {
            let pins = crate::paths::router_pin_dir(id);
            Err(Error::NotRunning(
                id.to_string(),
                pins.display().to_string(),
            ))
        }
    }
}

/// The routers (every one, or only `only`) left by a routerd whose namespace is gone or
/// whose pins are: (router, why). [`selected_routers`] leaves them out.
pub fn stale_routers(only: Option<&str>) -> Vec<(String, String)> {
    let mut infos = running_routers().unwrap_or_default();
    infos.retain(|i| only.is_none_or(|id| i.router == id));
    crate::stale::stale(&infos)
}

/// Counters of every interface of every running router (or of `only`).
pub fn collect(only: Option<&str>) -> Result<Vec<InterfaceStats>, Error> {
    let mut out = Vec::new();
    for info in &selected_routers(only)? {
        let rows = skip_unreadable(only, &info.router, || {
            let mut maps = Pinned::open(&info.router)?;
            info.interfaces
                .iter()
                .map(|iface| {
                    let s = maps.ifaces().stats(iface.ifindex)?;
                    Ok(InterfaceStats::new(
                        &info.router,
                        &iface.name,
                        iface.ifindex,
                        &iface.role,
                        &s,
                    ))
                })
                .collect::<Result<Vec<_>, Error>>()
        })?;
        out.extend(rows.unwrap_or_default());
    }
    Ok(out)
}

/// Runs `f` for `router`. Asked about every router, one that cannot be read (its pins gone,
/// or left by a build with other map layouts) is reported on stderr and skipped rather than
/// hiding every other router; asked about that router alone, it is an error.
fn skip_unreadable<T>(
    only: Option<&str>,
    router: &str,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    match f() {
        Ok(v) => Ok(Some(v)),
        Err(e) if only.is_none() => {
            eprintln!("routerctl: skipping router {router}: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The human-readable table: one row per interface, then one row per non-zero reason.
pub fn table(stats: &[InterfaceStats]) -> String {
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                s.router.clone(),
                s.interface.clone(),
                s.role.clone(),
                s.forwarded_packets.to_string(),
                s.forwarded_bytes.to_string(),
                s.passed_packets.to_string(),
                s.passed_bytes.to_string(),
                s.dropped_packets.to_string(),
                s.dropped_bytes.to_string(),
            ]
        })
        .collect();
    let mut out = crate::table::table(
        &[
            "ROUTER",
            "INTERFACE",
            "ROLE",
            "FWD_PKTS",
            "FWD_BYTES",
            "PASS_PKTS",
            "PASS_BYTES",
            "DROP_PKTS",
            "DROP_BYTES",
        ],
        &rows,
    );
    let reasons: Vec<Vec<String>> = stats
        .iter()
        .flat_map(|s| {
            s.reasons.iter().map(|(name, count)| {
                vec![
                    s.router.clone(),
                    s.interface.clone(),
                    name.clone(),
                    verdict_of(name).into(),
                    count.to_string(),
                ]
            })
        })
        .collect();
    if !reasons.is_empty() {
        out.push('\n');
        out.push_str(&crate::table::table(
            &["ROUTER", "INTERFACE", "REASON", "VERDICT", "PACKETS"],
            &reasons,
        ));
    }
    out
}

/// What the fast path does with packets of reason `name`, in a word.
fn verdict_of(name: &str) -> &'static str {
    Reason::ALL
        .iter()
        .find(|r| r.name() == name)
        .map_or("?", |r| {
            if r.is_drop() {
                "drop"
            } else if *r == Reason::XdpToTc {
                "to-tc"
            } else if *r == Reason::NoNeighbor {
                // Under TC these are forwarded, the kernel resolving the MAC.
                "resolve"
            } else {
                "kernel"
            }
        })
}

/// One floating IP and its counters (summed over CPUs).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FloatingIpStats {
    pub router: String,
    pub floating_ip: Ipv4Addr,
    pub fixed_ip: Ipv4Addr,
    /// To the floating IP, translated to the fixed IP.
    pub in_packets: u64,
    pub in_bytes: u64,
    /// From the fixed IP, translated to the floating IP.
    pub out_packets: u64,
    pub out_bytes: u64,
}

/// A router's gateway, its SNAT settings and counters (summed over CPUs).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct GatewayStats {
    pub router: String,
    /// None when the router has no gateway.
    pub gateway_ip: Option<Ipv4Addr>,
    pub snat: bool,
    pub port_min: u16,
    pub port_max: u16,
    pub sessions_created: u64,
    pub port_collisions: u64,
    /// Translated to the gateway IP.
    pub out_packets: u64,
    pub out_bytes: u64,
    /// Replies translated back.
    pub in_packets: u64,
    pub in_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct NatStats {
    /// One per router.
    pub gateways: Vec<GatewayStats>,
    pub floating_ips: Vec<FloatingIpStats>,
}

/// NAT settings and counters of every running router (or of `only`).
pub fn collect_nat(only: Option<&str>) -> Result<NatStats, Error> {
    let mut out = NatStats::default();
    for info in &selected_routers(only)? {
        let read = skip_unreadable(only, &info.router, || {
            let mut maps = Pinned::open(&info.router)?;
            Ok((
                gateway(&info.router, &mut maps)?,
                floating_ips(&info.router, &mut maps)?,
            ))
        })?;
        if let Some((gateway, fips)) = read {
            out.gateways.push(gateway);
            out.floating_ips.extend(fips);
        }
    }
    Ok(out)
}

fn gateway(router: &str, maps: &mut Pinned) -> Result<GatewayStats, Error> {
    let cfg = maps.nat().config()?;
    let s = maps.nat().snat_stats()?;
    let has_gateway = cfg.flags & nat_flags::GATEWAY != 0;
    Ok(GatewayStats {
        router: router.to_string(),
        gateway_ip: has_gateway.then(|| Ipv4Addr::from(cfg.gateway_ip)),
        snat: has_gateway && cfg.flags & nat_flags::SNAT != 0,
        port_min: cfg.port_min,
        port_max: cfg.port_max,
        sessions_created: s.sessions_created,
        port_collisions: s.port_collisions,
        out_packets: s.out_packets,
        out_bytes: s.out_bytes,
        in_packets: s.in_packets,
        in_bytes: s.in_bytes,
    })
}

fn floating_ips(router: &str, maps: &mut Pinned) -> Result<Vec<FloatingIpStats>, Error> {
    let fips = maps.nat().floating_ip_counters_all()?;
    Ok(fips
        .into_iter()
        .map(|(fip, fixed, s)| FloatingIpStats {
            router: router.to_string(),
            floating_ip: Ipv4Addr::from(fip),
            fixed_ip: Ipv4Addr::from(fixed),
            in_packets: s.in_packets,
            in_bytes: s.in_bytes,
            out_packets: s.out_packets,
            out_bytes: s.out_bytes,
        })
        .collect())
}

/// The human-readable NAT tables: one row per router gateway, one per floating IP.
pub fn nat_table(nat: &NatStats) -> String {
    let gateways: Vec<Vec<String>> = nat
        .gateways
        .iter()
        .map(|g| {
            vec![
                g.router.clone(),
                g.gateway_ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
                if g.snat { "on" } else { "off" }.into(),
                format!("{}-{}", g.port_min, g.port_max),
                g.sessions_created.to_string(),
                g.port_collisions.to_string(),
                g.out_packets.to_string(),
                g.out_bytes.to_string(),
                g.in_packets.to_string(),
                g.in_bytes.to_string(),
            ]
        })
        .collect();
    let mut out = crate::table::table(
        &[
            "ROUTER",
            "GATEWAY",
            "SNAT",
            "PORTS",
            "SESSIONS",
            "COLLISIONS",
            "OUT_PKTS",
            "OUT_BYTES",
            "IN_PKTS",
            "IN_BYTES",
        ],
        &gateways,
    );
    if !nat.floating_ips.is_empty() {
        let fips: Vec<Vec<String>> = nat
            .floating_ips
            .iter()
            .map(|f| {
                vec![
                    f.router.clone(),
                    f.floating_ip.to_string(),
                    f.fixed_ip.to_string(),
                    f.in_packets.to_string(),
                    f.in_bytes.to_string(),
                    f.out_packets.to_string(),
                    f.out_bytes.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&crate::table::table(
            &[
                "ROUTER",
                "FLOATING_IP",
                "FIXED_IP",
                "IN_PKTS",
                "IN_BYTES",
                "OUT_PKTS",
                "OUT_BYTES",
            ],
            &fips,
        ));
    }
    out
}

/// One element of `routerctl stats --json`: interface rows as always, then a row per
/// floating IP (it has `floating_ip`) and per gateway (it has `gateway_ip`).
#[derive(Serialize)]
#[serde(untagged)]
pub enum Row<'a> {
    Interface(&'a InterfaceStats),
    FloatingIp(&'a FloatingIpStats),
    Gateway(&'a GatewayStats),
}

pub fn rows<'a>(interfaces: &'a [InterfaceStats], nat: &'a NatStats) -> Vec<Row<'a>> {
    let ifaces = interfaces.iter().map(Row::Interface);
    let fips = nat.floating_ips.iter().map(Row::FloatingIp);
    ifaces
        .chain(fips)
        .chain(nat.gateways.iter().map(Row::Gateway))
        .collect()
}

/// Session table entries of running router `router` (two per session), at about the time of
/// the call.
pub fn session_count(router: &str) -> Result<usize, Error> {
    Pinned::open(router)?.sessions().entries()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat() -> NatStats {
        NatStats {
            gateways: vec![GatewayStats {
                router: "r1".into(),
                gateway_ip: Some(Ipv4Addr::new(203, 0, 113, 2)),
                snat: true,
                port_min: 1024,
                port_max: 64511,
                sessions_created: 3,
                port_collisions: 1,
                out_packets: 10,
                out_bytes: 1000,
                in_packets: 9,
                in_bytes: 900,
            }],
            floating_ips: vec![FloatingIpStats {
                router: "r1".into(),
                floating_ip: Ipv4Addr::new(203, 0, 113, 10),
                fixed_ip: Ipv4Addr::new(10, 0, 0, 5),
                in_packets: 4,
                in_bytes: 336,
                out_packets: 3,
                out_bytes: 252,
            }],
        }
    }

    #[test]
    fn json_rows_keep_interfaces_first_and_unchanged() {
        let iface = InterfaceStats::new("r1", "qr-a", 2, "internal", &IfaceStats::default());
        let nat = nat();
        let value =
            serde_json::to_value(rows(std::slice::from_ref(&iface), &nat)).expect("serializable");
        let rows = value.as_array().expect("an array");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], serde_json::to_value(&iface).expect("serializable"));
        assert_eq!(rows[1]["floating_ip"], "203.0.113.10");
        assert_eq!(rows[1]["fixed_ip"], "10.0.0.5");
        assert_eq!(rows[2]["gateway_ip"], "203.0.113.2");
        assert_eq!(rows[2]["sessions_created"], 3);
    }

    #[test]
    fn nat_table_shows_gateway_and_floating_ips() {
        let text = nat_table(&nat());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ROUTER  GATEWAY"));
        // Columns line up under their headers, however long the values.
        assert_eq!(lines[0].find("GATEWAY"), lines[1].find("203.0.113.2"));
        assert_eq!(lines[3].find("FIXED_IP"), lines[4].find("10.0.0.5"));
        assert!(lines[1].contains("203.0.113.2") && lines[1].contains("1024-64511"));
        assert!(lines[1].split_whitespace().nth(2) == Some("on"));
        assert!(lines[3].contains("FLOATING_IP"));
        assert!(lines[4].contains("203.0.113.10") && lines[4].contains("10.0.0.5"));
        let no_gateway = NatStats {
            gateways: vec![GatewayStats {
                gateway_ip: None,
                snat: false,
                ..nat().gateways[0].clone()
            }],
            floating_ips: vec![],
        };
        let text = nat_table(&no_gateway);
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.contains(" -  ") && l.contains("off"))
        );
    }
}
