//! The queries' answers: their shape, and what they show of the running routers.

use super::*;

#[test]
fn router_list_and_show_have_the_documented_shape() {
    let s = changed(
        &state(),
        json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5"}),
    );
    assert_eq!(
        plan(&s, &Request::RouterList),
        Ok(Plan::Answer(json!([{
            "id": "r1", "namespace": "ns1", "mode": "auto", "interfaces": ["qr-a", "qr-fw"],
            "gateway": {"interface": "qg-1", "address": "198.18.0.2/24", "nexthop": "198.18.0.1",
                        "snat": true, "xdp_egress": null, "ifindex": null},
            "floating_ips": 1, "running": false, "start_error": null
        }])))
    );
    let show = answer(&s, json!({"op": "router_show"}));
    let keys: Vec<&str> = show
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut expected = vec![
        "id",
        "namespace",
        "mode",
        "running",
        "start_error",
        "interfaces",
        "gateway",
        "external_subnets",
        "tables",
        "routes",
        "rules",
        "floating_ips",
        "firewall",
        "nat",
    ];
    expected.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, expected);
    assert_eq!(
        show["interfaces"][0],
        json!({"name": "qr-a", "address": "10.0.1.1/24", "subnet": "10.0.1.0/24",
               "source_check": true, "allowed_sources": [], "xdp_egress": null, "ifindex": null})
    );
    assert_eq!(
        show["external_subnets"],
        json!([{"subnet": "198.18.0.0/24", "address": "198.18.0.2/24", "nexthop": "198.18.0.1"}])
    );
    assert_eq!(show["tables"], json!([{"name": "vfw", "id": 100}]));
    assert_eq!(show["routes"][0]["destination"], "10.20.0.0/16");
    assert_eq!(show["rules"][0]["priority"], 1000);
    assert_eq!(show["floating_ips"][0]["fixed"], "10.0.1.5");
    assert_eq!(
        show["firewall"],
        json!({"enabled": false, "default": null, "rules": 0, "steering": null})
    );
    assert_eq!(
        show["nat"],
        json!({"snat_ports": "1024-64511", "slow_path_snat_ports": "64512-65535",
               "max_sessions": 65536, "metadata_port": 9697})
    );
    // A running router: its ifindexes and XDP egress decisions.
    let live = Live {
        routers: [(
            "r1".to_string(),
            RouterInfo {
                router: "r1".into(),
                namespace: "ns1".into(),
                mode: "xdp".into(),
                interfaces: vec![crate::router::InterfaceInfo {
                    name: "qr-a".into(),
                    ifindex: 7,
                    role: "internal".into(),
                    xdp_egress: false,
                    xdp_unavailable: None,
                }],
            },
        )]
        .into(),
        ..Live::default()
    };
    let Ok(Plan::Answer(show)) = plan_with(
        &s,
        &Request::RouterShow {
            router: "r1".into(),
        },
        &live,
    ) else {
        panic!("router_show answers");
    };
    assert_eq!(show["running"], true);
    assert_eq!(show["interfaces"][0]["ifindex"], 7);
    assert_eq!(show["interfaces"][0]["xdp_egress"], false);
    assert_eq!(show["interfaces"][1]["ifindex"], Value::Null);
    assert_eq!(show["start_error"], Value::Null);
    // A router whose start failed: not running, and why.
    let live = Live {
        waiting: [("r1".to_string(), "interface qr-a is missing".to_string())].into(),
        ..Live::default()
    };
    for request in [
        Request::RouterList,
        Request::RouterShow {
            router: "r1".into(),
        },
    ] {
        let Ok(Plan::Answer(answer)) = plan_with(&s, &request, &live) else {
            panic!("{request:?} answers");
        };
        let r = if answer.is_array() {
            &answer[0]
        } else {
            &answer
        };
        assert_eq!(r["running"], false);
        assert_eq!(r["start_error"], "interface qr-a is missing");
    }
}

/// `r1` of [`BASE`] with a firewall of two rules and two floating IPs.
fn with_counted_objects() -> DesiredState {
    let s = changed(&state(), json!({"op": "fw_default", "policy": "deny"}));
    let s = changed(
        &s,
        json!({"op": "fw_rule_add", "action": "allow", "protocol": "tcp", "destination_ports": 22}),
    );
    let s = changed(
        &s,
        json!({"op": "fw_rule_add", "action": "deny", "protocol": "icmp"}),
    );
    let s = changed(
        &s,
        json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5"}),
    );
    changed(
        &s,
        json!({"op": "fip_create", "address": "198.18.0.11", "fixed": "10.0.1.6"}),
    )
}

fn fip_stats(floating_ip: &str, fixed_ip: &str, n: u64) -> crate::stats::FloatingIpStats {
    crate::stats::FloatingIpStats {
        router: "r1".into(),
        floating_ip: floating_ip.parse().expect("an address"),
        fixed_ip: fixed_ip.parse().expect("an address"),
        in_packets: n,
        in_bytes: n * 100,
        out_packets: n + 1,
        out_bytes: (n + 1) * 100,
    }
}

/// Made-up counters for `r1`: the answers must show these and nothing else (the planner
/// reads no map: with no router pinned anywhere these are the only counters there are).
fn made_up_counters() -> Live {
    let counters = RouterCounters {
        floating_ips: vec![
            fip_stats("198.18.0.10", "10.0.1.5", 7),
            // The fast path's entry for another fixed IP: not this floating IP's counters.
            fip_stats("198.18.0.11", "10.0.1.99", 9),
        ],
        firewall_rules: vec![
            crate::maps::policy::RuleCounters {
                index: 1,
                action: "deny".into(),
                packets: 3,
                bytes: 252,
            },
            // A rule the state no longer has: ignored.
            crate::maps::policy::RuleCounters {
                index: 5,
                action: "allow".into(),
                packets: 1,
                bytes: 1,
            },
        ],
        firewall_fixed: Some(crate::maps::policy::FixedCounters {
            established: (11, 1100),
            invalid: (2, 80),
            default: (4, 240),
        }),
    };
    Live {
        counters: [("r1".to_string(), counters)].into(),
        ..Live::default()
    }
}

fn answer_with(s: &DesiredState, request: &Request, live: &Live) -> Value {
    match plan_with(s, request, live) {
        Ok(Plan::Answer(v)) => v,
        other => panic!("{request:?}: expected an answer, got {other:?}"),
    }
}

#[test]
fn answers_show_the_counters_they_are_given() {
    let s = with_counted_objects();
    let live = made_up_counters();
    let fips = answer_with(&s, &Request::FipList { router: None }, &live);
    assert_eq!(
        fips,
        json!([
            {"router": "r1", "address": "198.18.0.10", "fixed": "10.0.1.5", "in_packets": 7,
             "in_bytes": 700, "out_packets": 8, "out_bytes": 800},
            {"router": "r1", "address": "198.18.0.11", "fixed": "10.0.1.6", "in_packets": null,
             "in_bytes": null, "out_packets": null, "out_bytes": null},
        ])
    );
    let show = answer_with(
        &s,
        &Request::RouterShow {
            router: "r1".into(),
        },
        &live,
    );
    assert_eq!(show["floating_ips"], fips);
    let fw = answer_with(
        &s,
        &Request::FwRuleList {
            router: "r1".into(),
        },
        &live,
    );
    let counted: Vec<(Value, Value)> = fw["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| (r["packets"].clone(), r["bytes"].clone()))
        .collect();
    assert_eq!(
        counted,
        [(Value::Null, Value::Null), (json!(3), json!(252))]
    );
    assert_eq!(
        fw["counters"],
        json!({"established": {"packets": 11, "bytes": 1100},
               "invalid": {"packets": 2, "bytes": 80},
               "default": {"packets": 4, "bytes": 240}})
    );
    // Given no counters, the same answers show none.
    for request in [
        Request::FipList { router: None },
        Request::FwRuleList {
            router: "r1".into(),
        },
    ] {
        let v = answer_with(&s, &request, &Live::default());
        let shown = v
            .as_array()
            .map_or_else(|| v["counters"].clone(), |a| a[0]["in_packets"].clone());
        assert_eq!(shown, Value::Null, "{request:?}");
    }
    assert_eq!(
        answer_with(
            &s,
            &Request::FwRuleList {
                router: "r1".into()
            },
            &Live::default()
        )["rules"][1]["packets"],
        Value::Null
    );
}

#[test]
fn only_the_queries_that_show_counters_want_them() {
    let one = |floating_ips, firewall| {
        Some(WantedCounters {
            router: Some("r1".into()),
            floating_ips,
            firewall,
        })
    };
    let r1 = || "r1".to_string();
    assert_eq!(
        Live::wants_counters(&Request::FwRuleList { router: r1() }),
        one(false, true)
    );
    assert_eq!(
        Live::wants_counters(&Request::RouterShow { router: r1() }),
        one(true, false)
    );
    assert_eq!(
        Live::wants_counters(&Request::FipList { router: None }),
        Some(WantedCounters {
            router: None,
            floating_ips: true,
            firewall: false,
        })
    );
    for request in [
        Request::RouterList,
        Request::ShowState,
        Request::RuleList { router: r1() },
        Request::RouteList {
            router: r1(),
            table: None,
        },
        Request::FipDelete {
            router: r1(),
            address: Some("198.18.0.10".into()),
            id: None,
            if_exists: false,
        },
    ] {
        assert_eq!(Live::wants_counters(&request), None, "{request:?}");
    }
    // The floating IPs' counters are read from running routers only: with none running,
    // nothing is read and the answer shows none.
    let s = with_counted_objects();
    let mut live = Live::default();
    live.read_counters(&s, &Request::FipList { router: None });
    assert_eq!(
        live.counters,
        [("r1".to_string(), RouterCounters::default())].into()
    );
    let mut live = Live::default();
    live.read_counters(&s, &Request::RouterList);
    assert!(live.counters.is_empty());
}
