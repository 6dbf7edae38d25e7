//! Observability: routerd's Prometheus endpoint and `routerctl trace`,
//! against a real routerd in namespaces.
//!
//! After real traffic (SNAT, a floating IP, a firewall deny), a scrape of `/metrics` must
//! agree with `routerctl stats --json` and the firewall counters, and give every map a fill
//! level. Then packets are traced through the router's real programs: a VM to the outside
//! (forwarded by the gateway, source translated to the gateway IP, a session it would
//! create), an existing SNAT flow and its reply (the live session is used, nothing created),
//! the outside to a floating IP (DNAT), and a packet a firewall rule denies. Throughout the
//! traces, the live counters and the live session table must not change, and no pin may be
//! left behind.

use router_user::maps::Rooms as _;
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use router_common::{CtEntry, CtKey, map_names};
use router_tests::{
    etcd::free_port,
    probe::{UdpStream, udp_connected},
    routerd::{Routerd, routerd_path},
    topo::{EXT_HOST, RouterTopology},
    traffic::ping,
};
use serde_json::Value;

const FIP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const EXT: Ipv4Addr = Ipv4Addr::new(EXT_HOST[0], EXT_HOST[1], EXT_HOST[2], EXT_HOST[3]);
const GATEWAY: &str = "198.18.0.2";
const DENIED_PORT: u16 = 9999;

fn routerctl_path() -> PathBuf {
    routerd_path().with_file_name("routerctl")
}

/// `routerctl ARGS`, which must print one JSON document of `kind`: its items.
fn routerctl(kind: &str, args: &[&str]) -> Value {
    let out = Command::new(routerctl_path())
        .args(args)
        .output()
        .expect("running routerctl");
    assert!(
        out.status.success(),
        "routerctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "routerctl {args:?}: not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(
        (&doc["kind"], &doc["version"]),
        (&Value::from(kind), &Value::from(1)),
        "routerctl {args:?}: {doc}"
    );
    doc["items"].clone()
}

/// `routerctl trace --router R --in IFACE ARGS --json`, timed.
fn trace(router: &str, ingress: &str, args: &[&str]) -> Value {
    let mut all = vec!["trace", "--router", router, "--in", ingress, "--json"];
    all.extend_from_slice(args);
    let started = Instant::now();
    let t = routerctl("trace", &all);
    eprintln!(
        "trace {ingress} {args:?} ({} ms):\n{}",
        started.elapsed().as_millis(),
        serde_json::to_string_pretty(&t).unwrap_or_default()
    );
    t
}

/// One HTTP/1.1 request to routerd's metrics endpoint: (status line, head, body).
fn http(port: u16, request_line: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "{request_line}\r\nHost: localhost\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, head.to_string(), body.to_string())
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: u64,
}

/// The samples of an exposition-format page (label values unescaped).
fn parse_metrics(body: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value = value
            .parse()
            .unwrap_or_else(|e| panic!("{line}: value {e}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut chars = rest.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut v = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some('n') => v.push('\n'),
                                Some(c) => v.push(c),
                                None => panic!("{line}"),
                            },
                            '"' => break,
                            c => v.push(c),
                        }
                    }
                    labels.insert(key, v);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the one sample of `name` with (at least) `labels`.
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The live session table of `router`.
fn live_sessions(router: &str) -> BTreeMap<CtKey, CtEntry> {
    router_user::maps::Pinned::open(router)
        .and_then(|mut m| m.sessions().dump())
        .expect("SESSIONS")
}

/// Everything a trace must not change: counters (`routerctl stats`, with the ARP and IPv6
/// packets the hosts' kernels send at any time left out: passed to the kernel, they change
/// only `passed` and their reasons), firewall counters, sessions, and the router's pins.
#[derive(Debug, PartialEq)]
struct LiveState {
    stats: Value,
    fw: (
        Vec<router_user::maps::policy::RuleCounters>,
        router_user::maps::policy::FixedCounters,
    ),
    sessions: BTreeMap<CtKey, CtEntry>,
    pins: BTreeSet<String>,
}

fn live_state(router: &str) -> LiveState {
    let mut stats = routerctl("stats", &["stats", router, "-f", "json"]);
    for row in stats["interfaces"].as_array_mut().expect("interface rows") {
        if let Some(reasons) = row.get_mut("reasons").and_then(Value::as_object_mut) {
            let noise: u64 = ["arp", "ipv6"]
                .iter()
                .filter_map(|r| reasons.remove(*r))
                .map(|v| u(&v))
                .sum();
            row["passed_packets"] = Value::from(u(&row["passed_packets"]) - noise);
            row["passed_bytes"] = Value::from(0);
        }
    }
    let fw = (
        router_user::maps::Pinned::open(router)
            .and_then(|mut m| m.policy().rule_counters())
            .expect("firewall rules"),
        router_user::maps::Pinned::open(router)
            .and_then(|mut m| m.policy().fixed_counters())
            .expect("firewall counters"),
    );
    let pins = std::fs::read_dir(router_user::paths::router_pin_dir(router))
        .expect("the router's pins")
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    LiveState {
        stats,
        fw,
        sessions: live_sessions(router),
        pins,
    }
}

fn with_floating_ip_and_firewall(config: &Path) {
    let mut text = std::fs::read_to_string(config).expect("config");
    text.push_str(&format!(
        "\n[[router.floating_ip]]\naddress = \"{FIP_B}\"\nfixed = \"10.0.2.5\"\n\
         \n[router.firewall]\ndefault = \"allow\"\n\
         \n[[router.firewall.rule]]\naction = \"deny\"\nprotocol = \"udp\"\n\
         destination_ports = \"{DENIED_PORT}\"\ndescription = \"observability test\"\n"
    ));
    std::fs::write(config, text).expect("writing config");
}

/// Scrapes until two `routerctl stats` around the scrape agree (the hosts may still send
/// a straggler); returns the samples and those stats.
fn quiet_scrape(port: u16, router: &str) -> (Vec<Sample>, Value, String) {
    for _ in 0..10 {
        let before = routerctl("stats", &["stats", router, "-f", "json"]);
        let (status, head, body) = http(port, "GET /metrics HTTP/1.1");
        let after = routerctl("stats", &["stats", "--router", router, "--json"]);
        assert_eq!(status, "HTTP/1.1 200 OK", "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        if before == after {
            return (parse_metrics(&body), before, body);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the counters never stood still");
}

fn check_metrics(mode: &str, port: u16, router: &str) {
    let (samples, stats, body) = quiet_scrape(port, router);
    eprintln!("{mode}: GET /metrics:\n{body}");
    // One TYPE per family.
    let mut families = BTreeSet::new();
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).expect("a name");
        assert!(families.insert(name), "{mode}: two TYPE lines for {name}");
    }
    assert_eq!(metric(&samples, "routerd_up", &[]), 1);
    assert_eq!(metric(&samples, "routerd_routers", &[]), 1, "{mode}");
    let r = ("router", router);
    let mut interfaces = 0;
    // Each kind of row in its own list, each row of its kind.
    let list = |kind: &str, key: &str| -> Vec<Value> {
        let rows = stats[kind]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("{mode}: no {kind}: {stats}"));
        assert!(
            rows.iter().all(|row| row.get(key).is_some()),
            "{mode}: {kind}: {stats}"
        );
        rows
    };
    let rows = list("interfaces", "interface")
        .into_iter()
        .chain(list("floating_ips", "floating_ip"))
        .chain(list("gateways", "gateway_ip"));
    for row in rows {
        if let Some(iface) = row.get("interface").and_then(Value::as_str) {
            interfaces += 1;
            let i = ("interface", iface);
            for (verdict, key) in [
                ("forwarded", "forwarded"),
                ("passed", "passed"),
                ("dropped", "dropped"),
            ] {
                let v = ("verdict", verdict);
                assert_eq!(
                    metric(&samples, "router_interface_packets_total", &[r, i, v]),
                    u(&row[format!("{key}_packets")]),
                    "{mode}: {iface} {verdict} packets"
                );
                assert_eq!(
                    metric(&samples, "router_interface_bytes_total", &[r, i, v]),
                    u(&row[format!("{key}_bytes")]),
                    "{mode}: {iface} {verdict} bytes"
                );
            }
            let reasons = row["reasons"].as_object().expect("reasons");
            for (reason, count) in reasons {
                assert_eq!(
                    metric(
                        &samples,
                        "router_interface_reason_packets_total",
                        &[r, i, ("reason", reason.as_str())]
                    ),
                    u(count),
                    "{mode}: {iface} {reason}"
                );
            }
            let exported = samples
                .iter()
                .filter(|s| {
                    s.name == "router_interface_reason_packets_total"
                        && s.labels.get("interface").map(String::as_str) == Some(iface)
                })
                .count();
            assert_eq!(exported, reasons.len(), "{mode}: {iface}: reasons exported");
        } else if let Some(fip) = row.get("floating_ip").and_then(Value::as_str) {
            let f = ("floating_ip", fip);
            for direction in ["in", "out"] {
                let d = ("direction", direction);
                assert_eq!(
                    metric(&samples, "router_floating_ip_packets_total", &[r, f, d]),
                    u(&row[format!("{direction}_packets")]),
                    "{mode}: {fip} {direction}"
                );
                assert_eq!(
                    metric(&samples, "router_floating_ip_bytes_total", &[r, f, d]),
                    u(&row[format!("{direction}_bytes")]),
                    "{mode}: {fip} {direction} bytes"
                );
            }
            assert!(u(&row["in_packets"]) > 0, "{mode}: no traffic to {fip}");
        } else if row.get("gateway_ip").is_some() {
            for direction in ["in", "out"] {
                let d = ("direction", direction);
                assert_eq!(
                    metric(&samples, "router_snat_packets_total", &[r, d]),
                    u(&row[format!("{direction}_packets")]),
                    "{mode}: snat {direction}"
                );
                assert_eq!(
                    metric(&samples, "router_snat_bytes_total", &[r, d]),
                    u(&row[format!("{direction}_bytes")]),
                    "{mode}: snat {direction} bytes"
                );
            }
            assert_eq!(
                metric(&samples, "router_snat_sessions_created_total", &[r]),
                u(&row["sessions_created"])
            );
            assert_eq!(
                metric(&samples, "router_snat_port_collisions_total", &[r]),
                u(&row["port_collisions"])
            );
            assert!(u(&row["sessions_created"]) > 0, "{mode}: no SNAT session");
        }
    }
    assert_eq!(interfaces, 3, "{mode}: {stats}");
    // The firewall.
    let rules = router_user::maps::Pinned::open(router)
        .and_then(|mut m| m.policy().rule_counters())
        .expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        metric(
            &samples,
            "router_firewall_rule_packets_total",
            &[r, ("rule", "0"), ("action", "deny")]
        ),
        rules[0].packets
    );
    assert!(rules[0].packets > 0, "{mode}: the deny rule never matched");
    assert_eq!(
        metric(
            &samples,
            "router_firewall_rule_bytes_total",
            &[r, ("rule", "0")]
        ),
        rules[0].bytes
    );
    let fixed = router_user::maps::Pinned::open(router)
        .and_then(|mut m| m.policy().fixed_counters())
        .expect("fixed");
    for (step, action, (packets, bytes)) in [
        ("established", "allow", fixed.established),
        ("invalid", "deny", fixed.invalid),
        ("default", "allow", fixed.default),
    ] {
        let labels = [r, ("step", step), ("action", action)];
        assert_eq!(
            metric(&samples, "router_firewall_step_packets_total", &labels),
            packets,
            "{mode}: {step}"
        );
        assert_eq!(
            metric(&samples, "router_firewall_step_bytes_total", &labels),
            bytes
        );
    }
    // A fill level for every map.
    for map in map_names::ALL {
        let m = ("map", map);
        let entries = metric(&samples, "router_map_entries", &[r, m]);
        let capacity = metric(&samples, "router_map_capacity", &[r, m]);
        assert!(
            capacity > 0 && entries <= capacity,
            "{mode}: {map} {entries}/{capacity}"
        );
    }
    let entries = |map| metric(&samples, "router_map_entries", &[r, ("map", map)]);
    assert_eq!(entries(map_names::IFACES), 3);
    assert_eq!(
        entries(map_names::IFACES_BY_INDEX),
        3,
        "every interface copied at its ifindex"
    );
    assert_eq!(entries(map_names::IFACE_STATS), 3);
    assert_eq!(
        entries(map_names::IFACE_FORWARDED),
        3,
        "a slot per interface"
    );
    assert_eq!(entries(map_names::FIP_BY_ADDRESS), 1);
    assert_eq!(entries(map_names::FIP_BY_FIXED), 1);
    assert_eq!(entries(map_names::FW_RULES), 1);
    assert!(entries(map_names::ROUTES) >= 4, "{mode}: routes");
    assert!(entries(map_names::NEIGHBORS) >= 2, "{mode}: neighbours");
    let sessions = metric(&samples, "router_sessions", &[r]);
    let listed = routerctl("sessions", &["ct", "list", router, "-f", "json"]);
    assert_eq!(
        sessions,
        listed.as_array().expect("sessions").len() as u64,
        "{mode}: router_sessions vs ct list"
    );
    assert!(sessions > 0);
    assert_eq!(entries(map_names::SESSIONS), 2 * sessions, "{mode}");
    assert_eq!(
        metric(
            &samples,
            "router_map_capacity",
            &[r, ("map", map_names::SESSIONS)]
        ),
        2 * 65_536
    );

    // The rest of the endpoint.
    let (status, _, _) = http(port, "GET /nope HTTP/1.1");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _, _) = http(port, "POST /metrics HTTP/1.1");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, head, body) = http(port, "HEAD /metrics HTTP/1.1");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.is_empty() && head.contains("Content-Length: "),
        "{head}"
    );
}

fn check_traces(mode: &str, topo: &RouterTopology, snat_flow: (u16, u16)) {
    let router = topo.router_id.as_str();
    let before = live_state(router);
    let (flow_sport, translated_sport) = snat_flow;

    // 1. A VM to the outside, a new flow: SNAT to the gateway IP, a session would be made.
    let t = trace(
        router,
        "qr-a",
        &[
            "--src",
            "10.0.1.5",
            "--dst",
            "198.18.0.1",
            "--proto",
            "udp",
            "--sport",
            "45678",
            "--dport",
            "7000",
        ],
    );
    assert_eq!(t["verdict"], "forwarded", "{mode}");
    assert_eq!(t["egress"]["interface"], "qg-ext", "{mode}");
    assert_eq!(t["egress"]["method"], "source_mac", "{mode}");
    assert_eq!(t["output"]["src"], GATEWAY);
    assert_eq!(t["output"]["dst"], "198.18.0.1");
    assert_eq!(t["output"]["ttl"], 63);
    assert_eq!(t["output"]["ip_checksum_ok"], true);
    assert_eq!(t["output"]["l4_checksum_ok"], true);
    assert!(
        t["changes"]
            .as_array()
            .expect("changes")
            .contains(&Value::from(format!("src 10.0.1.5 -> {GATEWAY}"))),
        "{t}"
    );
    assert_eq!(t["session"]["created"]["kind"], "snat");
    assert_eq!(t["session"]["created"]["translated"]["src"], GATEWAY);
    assert_eq!(t["session"]["created"]["original"]["sport"], 45678);
    assert_eq!(t["session"]["entries_added"], 2);
    assert!(t["session"]["existing"].is_null());
    assert_eq!(t["firewall"]["step"], "default");
    assert_eq!(t["firewall"]["action"], "allow");
    assert_eq!(t["nat"]["snat"]["direction"], "out");
    assert_eq!(t["nat"]["snat"]["sessions_created"], 1);
    let stages: Vec<&str> = t["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["entry"].as_str().expect("entry"))
        .collect();
    if mode == "xdp" {
        // veths take no XDP redirect by default: XDP hands the frame to the TC entry.
        assert_eq!(stages, ["xdp", "tc"], "{t}");
        assert!(
            t["reasons"]
                .as_array()
                .expect("reasons")
                .contains(&Value::from("xdp_to_tc")),
            "{t}"
        );
        assert_eq!(t["stages"][1]["action"], "TC_ACT_REDIRECT");
    } else {
        assert_eq!(stages, ["tc"], "{t}");
    }

    // 2. The live SNAT flow (the UDP stream that ran earlier): its session is used as it is.
    let sport = flow_sport.to_string();
    let t = trace(
        router,
        "qr-a",
        &[
            "--src",
            "10.0.1.5",
            "--dst",
            "198.18.0.1",
            "--proto",
            "udp",
            "--sport",
            &sport,
            "--dport",
            "5002",
        ],
    );
    assert_eq!(t["verdict"], "forwarded");
    assert_eq!(t["session"]["direction"], "original");
    assert_eq!(t["session"]["existing"]["kind"], "snat");
    assert_eq!(t["session"]["entries_added"], 0);
    assert!(t["session"]["created"].is_null());
    assert_eq!(t["output"]["src"], GATEWAY);
    assert_eq!(
        t["output"]["sport"], translated_sport,
        "{mode}: the live translation"
    );
    assert_eq!(t["firewall"]["step"], "established");
    assert_eq!(t["nat"]["snat"]["sessions_created"], 0);

    // ... and its reply, translated back to the VM.
    let translated = translated_sport.to_string();
    let t = trace(
        router,
        "qg-ext",
        &[
            "--src",
            "198.18.0.1",
            "--dst",
            GATEWAY,
            "--proto",
            "udp",
            "--sport",
            "5002",
            "--dport",
            &translated,
        ],
    );
    assert_eq!(t["verdict"], "forwarded");
    assert_eq!(t["egress"]["interface"], "qr-a");
    assert_eq!(t["output"]["dst"], "10.0.1.5");
    assert_eq!(t["output"]["dport"], flow_sport);
    assert_eq!(t["session"]["direction"], "reply");
    assert_eq!(t["nat"]["snat"]["direction"], "in");

    // 3. The outside to a floating IP: DNAT to the fixed IP, out of qr-b.
    let t = trace(
        router,
        "qg-ext",
        &[
            "--src",
            "198.18.0.1",
            "--dst",
            "198.18.0.10",
            "--proto",
            "tcp",
            "--dport",
            "22",
            "--tcp-flags",
            "syn",
        ],
    );
    assert_eq!(t["verdict"], "forwarded", "{mode}");
    assert_eq!(t["egress"]["interface"], "qr-b");
    assert_eq!(t["output"]["dst"], "10.0.2.5");
    assert_eq!(t["output"]["src"], "198.18.0.1");
    assert_eq!(t["output"]["tcp_flags"], "syn");
    assert_eq!(t["output"]["l4_checksum_ok"], true);
    assert_eq!(t["nat"]["floating_ips"][0]["address"], "198.18.0.10");
    assert_eq!(t["nat"]["floating_ips"][0]["direction"], "in");
    assert!(t["nat"]["snat"].is_null());
    // The firewall tracks the new flow (no port translation).
    assert_eq!(t["session"]["created"]["kind"], "forward");
    assert_eq!(t["session"]["created"]["translated"]["dst"], "10.0.2.5");

    // 4. Denied by the firewall rule: dropped, no session.
    let t = trace(
        router,
        "qr-a",
        &[
            "--src",
            "10.0.1.5",
            "--dst",
            "198.18.0.1",
            "--proto",
            "udp",
            "--dport",
            &DENIED_PORT.to_string(),
        ],
    );
    assert_eq!(t["verdict"], "dropped");
    assert_eq!(t["reason"], "fw_deny");
    assert_eq!(t["firewall"]["step"], "rule");
    assert_eq!(t["firewall"]["rule"], 0);
    assert_eq!(t["firewall"]["action"], "deny");
    assert!(t["output"].is_null() && t["egress"].is_null());
    assert_eq!(t["session"]["entries_added"], 0);

    // 5. TTL 1: the kernel's business (time exceeded), nothing written.
    let t = trace(
        router,
        "qr-a",
        &[
            "--src",
            "10.0.1.5",
            "--dst",
            "198.18.0.1",
            "--proto",
            "icmp",
            "--ttl",
            "1",
        ],
    );
    assert_eq!(t["verdict"], "passed");
    assert_eq!(t["reason"], "ttl_expired");

    // The text form says the same.
    let out = Command::new(routerctl_path())
        .args([
            "trace",
            "--router",
            router,
            "--in",
            "qr-a",
            "--src",
            "10.0.1.5",
            "--dst",
            "198.18.0.1",
            "--proto",
            "udp",
            "--dport",
            "7001",
        ])
        .output()
        .expect("routerctl trace");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("verdict:  forwarded out of qg-ext"), "{text}");
    assert!(
        text.contains("session:  would be created: snat udp"),
        "{text}"
    );

    let after = live_state(router);
    assert_eq!(
        before.stats, after.stats,
        "{mode}: live counters changed during the traces"
    );
    assert_eq!(
        before.fw, after.fw,
        "{mode}: live firewall counters changed"
    );
    assert_eq!(
        before.sessions.len(),
        after.sessions.len(),
        "{mode}: the live session table changed"
    );
    assert!(
        before.sessions == after.sessions,
        "{mode}: a live session changed during the traces"
    );
    assert_eq!(before.pins, after.pins, "{mode}: pins changed");
    no_trace_pins_left(mode);
}

/// The temporary pin directories of traces (`/sys/fs/bpf/neutron-router-trace-<pid>-<n>`)
/// go before a trace runs. Those of traces running in parallel tests come and go; any
/// seen now must be gone a moment later.
fn no_trace_pins_left(mode: &str) {
    let seen: BTreeSet<PathBuf> = std::fs::read_dir(router_user::paths::BPFFS)
        .expect("bpffs")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("neutron-router-trace")
        })
        .map(|e| e.path())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.iter().any(|d| d.exists()) {
        assert!(
            Instant::now() < deadline,
            "{mode}: trace pins left behind: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn observability(mode: &str) {
    let started = Instant::now();
    let topo = RouterTopology::build(mode);
    with_floating_ip_and_firewall(&topo.config);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let routerd = Routerd::start_with_args(&topo.config, &topo.router_id, &["--metrics", &listen]);
    assert!(
        routerd.log_text().contains("metrics on http://127.0.0.1:"),
        "{}",
        routerd.log_text()
    );

    // Real traffic: SNAT (ping, a UDP stream), a floating IP, a firewall deny.
    assert!(
        ping(&topo.vm_a_ns, EXT_HOST, 3),
        "{mode}: VM A cannot reach the outside"
    );
    let to_fip = UdpStream::start(
        &topo.ext_ns,
        41001,
        SocketAddrV4::new(FIP_B, 5001),
        &topo.vm_b_ns,
        5001,
        Duration::from_millis(5),
    );
    let via_snat = UdpStream::start(
        &topo.vm_a_ns,
        41002,
        SocketAddrV4::new(EXT, 5002),
        &topo.ext_ns,
        5002,
        Duration::from_millis(5),
    );
    std::thread::sleep(Duration::from_millis(400));
    let fip = to_fip.finish();
    let snat = via_snat.finish();
    assert!(
        fip.received > 0 && snat.received > 0,
        "{mode}: {fip:?} {snat:?}"
    );
    let translated = snat
        .sources
        .iter()
        .next()
        .expect("the SNAT stream's source")
        .port();
    let denied = udp_connected(
        &topo.vm_a_ns,
        SocketAddrV4::new(EXT, DENIED_PORT),
        Duration::from_millis(300),
    );
    assert!(
        denied.is_err(),
        "{mode}: the firewall let port {DENIED_PORT} through"
    );
    std::thread::sleep(Duration::from_millis(300));

    check_metrics(mode, port, &topo.router_id);
    check_traces(mode, &topo, (41002, translated));
    eprintln!("{mode}: {} ms", started.elapsed().as_millis());
    drop(routerd);
}

#[test]
fn metrics_and_trace_xdp() {
    observability("xdp");
}

#[test]
fn metrics_and_trace_tc() {
    observability("tc");
}
