//! Prometheus metrics of the running routers (`routerd --metrics ADDR:PORT`,
//! `docs/observability.md`): collected from the routers' pinned maps on every scrape, then
//! rendered in the text exposition format 0.0.4 by a pure function ([`render`]).
//!
//! The maps are kernel objects: reading them needs no locking with the router threads, and a
//! scrape never writes anything.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{StatusCode, body::Bytes};
use router_common::fw_flags;
use tokio::net::TcpListener;

use crate::{
    error::Error,
    maps::{
        Fill, Pinned, Rooms as _,
        policy::{FixedCounters, RuleCounters},
    },
    router::{RouterInfo, running_routers},
    stats::{self, FloatingIpStats, GatewayStats, InterfaceStats},
};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything one router exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterMetrics {
    pub router: String,
    pub interfaces: Vec<InterfaceStats>,
    pub gateway: Option<GatewayStats>,
    pub floating_ips: Vec<FloatingIpStats>,
    pub fw_rules: Vec<RuleCounters>,
    pub fw_fixed: FixedCounters,
    /// Whether the router has a firewall, and what its default policy does.
    pub fw_enabled: bool,
    pub fw_default_allow: bool,
    /// One per map of `map_names::ALL`, in that order.
    pub maps: Vec<Fill>,
    /// Sessions (original-direction entries of `SESSIONS`).
    pub sessions: u64,
    /// Interfaces of an XDP-mode router where native XDP could not attach (they run the TC
    /// entry alone).
    pub xdp_unavailable: Vec<String>,
    /// An HA router's state on this node (`None` for a router placed on one node).
    pub ha: Option<crate::ha::status::HaStatus>,
}

/// One scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub routers: Vec<RouterMetrics>,
    /// Routers whose maps could not be read this time (being torn down, say).
    pub errors: u64,
    /// Routers of the desired state whose start failed; routerd tries them again.
    pub waiting: u64,
}

// ---- collection ------------------------------------------------------------------------

/// Reads every running router's maps. With `config`, only the routers pinned by the routerd
/// of that desired-state file (the caller's own routers).
pub fn collect(config: Option<&Path>) -> Snapshot {
    let mut routers = running_routers().unwrap_or_else(|e| {
        tracing::warn!("metrics: listing the running routers: {e}");
        Vec::new()
    });
    if let Some(config) = config {
        let mine = crate::datapath::pinned_routers_of(config);
        routers.retain(|r| mine.contains(&r.router));
    }
    // A router whose namespace is gone forwards nothing: its counters are not a live
    // router's (routerd removes it at its next sweep).
    routers.retain(crate::stale::is_live);
    let mut snapshot = Snapshot::default();
    for info in &routers {
        match collect_router(info) {
            Ok(m) => snapshot.routers.push(m),
            Err(e) => {
                tracing::warn!("metrics: router {}: {e}", info.router);
                snapshot.errors += 1;
            }
        }
    }
    snapshot
}

/// Reads one router's counters and map fill levels.
pub fn collect_router(info: &RouterInfo) -> Result<RouterMetrics, Error> {
    let router = info.router.as_str();
    let interfaces = stats::collect(Some(router))?;
    let nat = stats::collect_nat(Some(router))?;
    let mut maps = Pinned::open(router)?;
    let policy = maps.policy().config()?;
    let fw_rules = maps.policy().rule_counters()?;
    let fw_fixed = maps.policy().fixed_counters()?;
    let (fill, sessions) = maps.fill()?;
    Ok(RouterMetrics {
        router: router.to_string(),
        interfaces,
        gateway: nat.gateways.into_iter().next(),
        floating_ips: nat.floating_ips,
        fw_rules,
        fw_fixed,
        fw_enabled: policy.fw_flags & fw_flags::ENABLED != 0,
        fw_default_allow: policy.fw_flags & fw_flags::DEFAULT_ALLOW != 0,
        maps: fill,
        sessions,
        xdp_unavailable: info
            .interfaces
            .iter()
            .filter(|i| i.xdp_unavailable.is_some())
            .map(|i| i.name.clone())
            .collect(),
        ha: crate::ha::status::read(router),
    })
}

// ---- rendering -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One metric family: a name, its help text, and its samples.
#[derive(Clone, Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Family {
    pub(crate) fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, labels: &[(&'static str, &str)], value: u64) {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect();
        self.samples.push((labels, value));
    }
}

/// The families of a snapshot, in a fixed order (every family is there, with or without
/// samples).
pub fn families(s: &Snapshot) -> Vec<Family> {
    use Kind::{Counter, Gauge};
    let mut up = Family::new("routerd_up", Gauge, "1 while routerd serves metrics.");
    up.add(&[], 1);
    let mut routers = Family::new(
        "routerd_routers",
        Gauge,
        "Routers of this routerd whose fast path is running.",
    );
    routers.add(&[], (s.routers.len() as u64) + s.errors);
    let mut errors = Family::new(
        "routerd_scrape_errors",
        Gauge,
        "Routers whose maps could not be read in this scrape.",
    );
    errors.add(&[], s.errors);
    let mut waiting = Family::new(
        "routerd_routers_waiting",
        Gauge,
        "Routers of the desired state that do not run because their start failed; routerd tries them again (routerctl router list says why).",
    );
    waiting.add(&[], s.waiting);
    let mut packets = Family::new(
        "router_interface_packets_total",
        Counter,
        "Packets that arrived on an interface, by what the fast path did with them (forwarded, passed to the kernel, dropped).",
    );
    let mut bytes = Family::new(
        "router_interface_bytes_total",
        Counter,
        "Bytes (whole frames) that arrived on an interface, by verdict.",
    );
    let mut reasons = Family::new(
        "router_interface_reason_packets_total",
        Counter,
        "Packets of an interface by reason (handed to the kernel or dropped; docs/verdicts.md). Only reasons that occurred.",
    );
    let mut fip_packets = Family::new(
        "router_floating_ip_packets_total",
        Counter,
        "Packets translated by a floating IP: in = to it (DNAT), out = from its fixed IP (SNAT).",
    );
    let mut fip_bytes = Family::new(
        "router_floating_ip_bytes_total",
        Counter,
        "Bytes translated by a floating IP, by direction.",
    );
    let mut snat_packets = Family::new(
        "router_snat_packets_total",
        Counter,
        "Packets of default-SNAT and hairpin sessions: out = translated to the gateway IP, in = replies translated back.",
    );
    let mut snat_bytes = Family::new(
        "router_snat_bytes_total",
        Counter,
        "Bytes of default-SNAT and hairpin sessions, by direction.",
    );
    let mut snat_created = Family::new(
        "router_snat_sessions_created_total",
        Counter,
        "SNAT and hairpin sessions the fast path created.",
    );
    let mut snat_collisions = Family::new(
        "router_snat_port_collisions_total",
        Counter,
        "SNAT port candidates that were taken already (and retried).",
    );
    let mut fw_packets = Family::new(
        "router_firewall_rule_packets_total",
        Counter,
        "Packets that matched a firewall rule (rule = its 0-based position in the configured list).",
    );
    let mut fw_bytes = Family::new(
        "router_firewall_rule_bytes_total",
        Counter,
        "Bytes that matched a firewall rule.",
    );
    let mut step_packets = Family::new(
        "router_firewall_step_packets_total",
        Counter,
        "Packets decided by the firewall's fixed steps: established (of a session, accepted), invalid (dropped), default (no rule matched; action = the default policy).",
    );
    let mut step_bytes = Family::new(
        "router_firewall_step_bytes_total",
        Counter,
        "Bytes decided by the firewall's fixed steps.",
    );
    let mut entries = Family::new(
        "router_map_entries",
        Gauge,
        "Entries in use in a map of the fast path (hash and LPM maps: keys; arrays: entries in use, see docs/observability.md).",
    );
    let mut capacity = Family::new(
        "router_map_capacity",
        Gauge,
        "Capacity (max_entries) of a map of the fast path.",
    );
    let mut sessions = Family::new(
        "router_sessions",
        Gauge,
        "Sessions in the fast path's session table (each holds two entries of SESSIONS).",
    );

    let mut xdp_unavailable = Family::new(
        "router_interface_xdp_unavailable",
        Gauge,
        "1 for each interface of an XDP-mode router where native XDP could not attach: it runs the TC entry alone (routerctl router show says why).",
    );
    for r in &s.routers {
        let router = r.router.as_str();
        for name in &r.xdp_unavailable {
            xdp_unavailable.add(&[("router", router), ("interface", name)], 1);
        }
        for i in &r.interfaces {
            let base = [
                ("router", router),
                ("interface", i.interface.as_str()),
                ("role", i.role.as_str()),
            ];
            for (verdict, p, b) in [
                ("forwarded", i.forwarded_packets, i.forwarded_bytes),
                ("passed", i.passed_packets, i.passed_bytes),
                ("dropped", i.dropped_packets, i.dropped_bytes),
            ] {
                let labels = [base[0], base[1], base[2], ("verdict", verdict)];
                packets.add(&labels, p);
                bytes.add(&labels, b);
            }
            for (reason, count) in &i.reasons {
                reasons.add(
                    &[
                        ("router", router),
                        ("interface", i.interface.as_str()),
                        ("reason", reason.as_str()),
                    ],
                    *count,
                );
            }
        }
        for f in &r.floating_ips {
            let fip = f.floating_ip.to_string();
            for (direction, p, b) in [
                ("in", f.in_packets, f.in_bytes),
                ("out", f.out_packets, f.out_bytes),
            ] {
                let labels = [
                    ("router", router),
                    ("floating_ip", fip.as_str()),
                    ("direction", direction),
                ];
                fip_packets.add(&labels, p);
                fip_bytes.add(&labels, b);
            }
        }
        if let Some(g) = &r.gateway {
            for (direction, p, b) in [
                ("out", g.out_packets, g.out_bytes),
                ("in", g.in_packets, g.in_bytes),
            ] {
                let labels = [("router", router), ("direction", direction)];
                snat_packets.add(&labels, p);
                snat_bytes.add(&labels, b);
            }
            snat_created.add(&[("router", router)], g.sessions_created);
            snat_collisions.add(&[("router", router)], g.port_collisions);
        }
        for rule in &r.fw_rules {
            let index = rule.index.to_string();
            let labels = [
                ("router", router),
                ("rule", index.as_str()),
                ("action", rule.action.as_str()),
            ];
            fw_packets.add(&labels, rule.packets);
            fw_bytes.add(&labels, rule.bytes);
        }
        if r.fw_enabled {
            let default = if r.fw_default_allow { "allow" } else { "deny" };
            for (step, action, (p, b)) in [
                ("established", "allow", r.fw_fixed.established),
                ("invalid", "deny", r.fw_fixed.invalid),
                ("default", default, r.fw_fixed.default),
            ] {
                let labels = [("router", router), ("step", step), ("action", action)];
                step_packets.add(&labels, p);
                step_bytes.add(&labels, b);
            }
        }
        for m in &r.maps {
            let labels = [("router", router), ("map", m.map)];
            entries.add(&labels, m.entries);
            capacity.add(&labels, m.capacity);
        }
        sessions.add(&[("router", router)], r.sessions);
    }
    vec![
        up,
        routers,
        errors,
        waiting,
        packets,
        bytes,
        reasons,
        fip_packets,
        fip_bytes,
        snat_packets,
        snat_bytes,
        snat_created,
        snat_collisions,
        fw_packets,
        fw_bytes,
        step_packets,
        step_bytes,
        entries,
        capacity,
        sessions,
        xdp_unavailable,
    ]
    .into_iter()
    .chain(crate::ha::status::families(
        s.routers.iter().filter_map(|r| r.ha.as_ref()),
    ))
    .collect()
}

/// The text exposition format (0.0.4) of `families`: per family one HELP and one TYPE
/// line, then its samples.
pub fn render_families(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.name());
        for (labels, value) in &f.samples {
            out.push_str(f.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
    out
}

/// The whole page of a scrape.
pub fn render(s: &Snapshot) -> String {
    render_families(&families(s))
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and newline escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

// ---- the HTTP endpoint -----------------------------------------------------------------

/// Binds the metrics listener (in the calling thread's namespace; call within a tokio
/// runtime context).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let what = || format!("metrics listener on {addr}");
    let listener = std::net::TcpListener::bind(addr).map_err(|e| Error::io(what(), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(what(), e))?;
    TcpListener::from_std(listener).map_err(|e| Error::io(what(), e))
}

/// Serves `GET /metrics` over HTTP/1.1 until aborted, one task per connection (one request
/// each: the connection closes after the answer); each scrape collects afresh (on a blocking
/// thread) the routers of `config`'s routerd. `waiting`: how many routers wait to start, as
/// routerd keeps it.
pub async fn serve(listener: TcpListener, config: Option<PathBuf>, waiting: Arc<AtomicU64>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (config, waiting) = (config.clone(), waiting.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        answer(request, config.clone(), waiting.clone())
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .title_case_headers(true)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    match tokio::time::timeout(CONNECTION_TIME, connection).await {
                        Ok(Err(e)) => tracing::debug!("metrics: connection: {e}"),
                        Err(_) => tracing::debug!("metrics: connection timed out"),
                        Ok(Ok(())) => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How long one connection may take, request and answer.
const CONNECTION_TIME: Duration = Duration::from_secs(30);

/// The answer to one request: the page at `/metrics` (GET or HEAD), a pointer at `/`.
async fn answer<B>(
    request: hyper::Request<B>,
    config: Option<PathBuf>,
    waiting: Arc<AtomicU64>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, content_type, body) = match route(request.method(), request.uri().path()) {
        Route::Metrics => {
            let waiting = waiting.load(Ordering::Relaxed);
            let page = tokio::task::spawn_blocking(move || {
                render(&Snapshot {
                    waiting,
                    ..collect(config.as_deref())
                })
            })
            .await
            .unwrap_or_else(|e| {
                tracing::error!("metrics: collection failed: {e}");
                String::new()
            });
            (StatusCode::OK, CONTENT_TYPE, page)
        }
        Route::Index => (
            StatusCode::OK,
            PLAIN,
            "routerd: metrics at /metrics\n".into(),
        ),
        Route::NotFound => (StatusCode::NOT_FOUND, PLAIN, "see /metrics\n".into()),
        Route::WrongMethod => (
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "GET or HEAD\n".into(),
        ),
    };
    let mut response = hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response = response.header(hyper::header::ALLOW, "GET, HEAD");
    }
    Ok(response
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new()))))
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    WrongMethod,
}

fn route(method: &hyper::Method, path: &str) -> Route {
    let readable = *method == hyper::Method::GET || *method == hyper::Method::HEAD;
    match (path, readable) {
        ("/metrics" | "/", false) => Route::WrongMethod,
        ("/metrics", true) => Route::Metrics,
        ("/", true) => Route::Index,
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use router_common::map_names;

    use super::*;

    fn snapshot() -> Snapshot {
        let mut reasons = BTreeMap::new();
        reasons.insert("arp".to_string(), 3);
        reasons.insert("fw_deny".to_string(), 2);
        let iface = InterfaceStats {
            router: "r\"1".into(),
            interface: "qr-a".into(),
            ifindex: 2,
            role: "internal".into(),
            forwarded_packets: 10,
            forwarded_bytes: 1000,
            passed_packets: 3,
            passed_bytes: 180,
            dropped_packets: 2,
            dropped_bytes: 120,
            reasons,
        };
        let router = RouterMetrics {
            router: "r\"1".into(),
            interfaces: vec![iface],
            gateway: Some(GatewayStats {
                router: "r\"1".into(),
                gateway_ip: Some(Ipv4Addr::new(198, 18, 0, 2)),
                snat: true,
                port_min: 1024,
                port_max: 64511,
                sessions_created: 4,
                port_collisions: 1,
                out_packets: 7,
                out_bytes: 700,
                in_packets: 6,
                in_bytes: 600,
            }),
            floating_ips: vec![FloatingIpStats {
                router: "r\"1".into(),
                floating_ip: Ipv4Addr::new(198, 18, 0, 10),
                fixed_ip: Ipv4Addr::new(10, 0, 2, 5),
                in_packets: 5,
                in_bytes: 500,
                out_packets: 4,
                out_bytes: 400,
            }],
            fw_rules: vec![RuleCounters {
                index: 0,
                action: "deny".into(),
                packets: 2,
                bytes: 120,
            }],
            fw_fixed: FixedCounters {
                established: (8, 800),
                invalid: (0, 0),
                default: (1, 60),
            },
            fw_enabled: true,
            fw_default_allow: true,
            maps: map_names::ALL
                .iter()
                .map(|m| Fill {
                    map: m,
                    entries: 1,
                    capacity: 2,
                })
                .collect(),
            sessions: 3,
            xdp_unavailable: vec!["qr-x".into()],
            ha: Some({
                let mut ha = crate::ha::status::HaStatus::new("r\"1", "net-1");
                ha.role = "active".into();
                ha.takeovers = 2;
                ha.lag_us_p99 = 1500;
                ha
            }),
        };
        Snapshot {
            routers: vec![
                router.clone(),
                RouterMetrics {
                    router: "r2\\x\ny".into(),
                    ..router
                },
            ],
            errors: 0,
            waiting: 1,
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("a\nb"), "a\\nb");
        assert_eq!(escape_label("plain-1.2"), "plain-1.2");
        let text = render(&snapshot());
        assert!(
            text.contains(r#"router_sessions{router="r\"1"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"router_sessions{router="r2\\x\ny"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"router_interface_xdp_unavailable{router="r\"1",interface="qr-x"} 1"#),
            "{text}"
        );
        // No raw newline inside a sample: every line is a comment or `name{...} value`.
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let value = line.rsplit(' ').next().expect("a value");
            assert!(value.parse::<u64>().is_ok(), "{line}");
            assert!(line.starts_with("router"), "{line}");
        }
    }

    #[test]
    fn one_help_and_type_per_family_before_its_samples() {
        let text = render(&snapshot());
        let mut typed: Vec<&str> = Vec::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("name and kind");
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert!(!typed.contains(&name), "second TYPE for {name}");
                typed.push(name);
                current = name;
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().expect("name");
                assert!(!typed.contains(&name), "HELP of {name} after its TYPE");
            } else {
                let name = line.split(['{', ' ']).next().expect("a name");
                assert_eq!(name, current, "sample of {name} outside its family");
                if current.ends_with("_total") {
                    assert!(text.contains(&format!("# TYPE {current} counter")));
                }
            }
        }
        assert_eq!(typed.len(), families(&snapshot()).len());
        assert!(typed.contains(&"routerd_up") && typed.contains(&"router_map_capacity"));
    }

    #[test]
    fn samples_carry_the_documented_labels() {
        let text = render(&snapshot());
        for expected in [
            "routerd_up 1",
            "routerd_routers 2",
            "routerd_routers_waiting 1",
            r#"router_interface_packets_total{router="r\"1",interface="qr-a",role="internal",verdict="forwarded"} 10"#,
            r#"router_interface_bytes_total{router="r\"1",interface="qr-a",role="internal",verdict="dropped"} 120"#,
            r#"router_interface_reason_packets_total{router="r\"1",interface="qr-a",reason="fw_deny"} 2"#,
            r#"router_floating_ip_packets_total{router="r\"1",floating_ip="198.18.0.10",direction="in"} 5"#,
            r#"router_floating_ip_bytes_total{router="r\"1",floating_ip="198.18.0.10",direction="out"} 400"#,
            r#"router_snat_packets_total{router="r\"1",direction="out"} 7"#,
            r#"router_snat_sessions_created_total{router="r\"1"} 4"#,
            r#"router_snat_port_collisions_total{router="r\"1"} 1"#,
            r#"router_firewall_rule_packets_total{router="r\"1",rule="0",action="deny"} 2"#,
            r#"router_firewall_step_packets_total{router="r\"1",step="default",action="allow"} 1"#,
            r#"router_map_entries{router="r\"1",map="SESSIONS"} 1"#,
            r#"router_map_capacity{router="r\"1",map="ALLOWED_SOURCES"} 2"#,
            r#"router_ha_active{router="r\"1"} 1"#,
            r#"router_ha_takeovers_total{router="r\"1"} 2"#,
            r#"router_ha_sync_lag_microseconds{router="r\"1",quantile="0.99"} 1500"#,
        ] {
            assert!(
                text.contains(&format!("{expected}\n")),
                "missing {expected}:\n{text}"
            );
        }
        // Every map has both gauges, for every router.
        for map in map_names::ALL {
            for family in ["router_map_entries", "router_map_capacity"] {
                let n = text
                    .lines()
                    .filter(|l| l.starts_with(family) && l.contains(&format!("map=\"{map}\"")))
                    .count();
                assert_eq!(n, 2, "{family} {map}");
            }
        }
    }

    #[test]
    fn an_empty_snapshot_still_has_every_family() {
        let text = render(&Snapshot::default());
        assert!(text.contains("routerd_up 1\n"));
        assert!(text.contains("routerd_routers 0\n"));
        assert!(text.contains("routerd_routers_waiting 0\n"));
        assert_eq!(
            text.matches("# TYPE ").count(),
            families(&Snapshot::default()).len()
        );
    }

    #[test]
    fn requests_are_routed_by_method_and_path() {
        use hyper::Method;
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::GET, "/"), Route::Index);
        assert_eq!(route(&Method::POST, "/metrics"), Route::WrongMethod);
        assert_eq!(route(&Method::GET, "/nope"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/nope"), Route::NotFound);
    }

    #[tokio::test]
    async fn a_refused_method_is_told_what_is_allowed() {
        let request = hyper::Request::builder()
            .method("POST")
            .uri("/metrics")
            .body(())
            .expect("request");
        let response = answer(request, None, Arc::new(AtomicU64::new(0)))
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["allow"], "GET, HEAD");
    }
}
