//! The file's parsing and the checks, by example.

use super::{file::parse_prefix_or_addr, *};

mod edit;
mod ids;
mod invalid;
mod validate;

/// The smallest complete router file: it must parse exactly as written.
pub const SMALL_EXAMPLE: &str = r#"
[[router]]
id = "r1"
namespace = "qrouter-r1"      # the namespace that holds the router's interfaces
mode = "xdp"                  # or "tc"

[router.gateway]              # the qg side
interface = "qg-r1"
address = "198.18.0.2/24"     # the router's gateway IP on the external network
nexthop = "198.18.0.1"        # default route
snat = true                   # used once NAT lands

[[router.interface]]          # one qr per internal subnet; the address is the subnet's gateway
name = "qr-a"
address = "10.0.1.1/24"

[[router.interface]]
name = "qr-b"
address = "10.0.2.1/24"

[[router.route]]              # extra routes
destination = "10.20.0.0/16"
nexthop = "10.0.1.254"
"#;

fn err(text: &str) -> String {
    match DesiredState::parse(text) {
        Ok(s) => panic!("accepted invalid config: {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn small_example_parses() {
    let state = DesiredState::parse(SMALL_EXAMPLE).expect("example must parse");
    let r = &state.routers[0];
    assert_eq!(r.id, "r1");
    assert_eq!(r.mode, Mode::Xdp);
    let g = r.gateway.as_ref().expect("gateway");
    assert_eq!(g.address.to_string(), "198.18.0.2/24");
    assert_eq!(g.nexthop, Ipv4Addr::new(198, 18, 0, 1));
    assert!(g.snat);
    assert_eq!(r.interfaces.len(), 2);
    assert_eq!(r.interfaces[1].address.subnet().to_string(), "10.0.2.0/24");
    assert_eq!(r.routes[0].destination.to_string(), "10.20.0.0/16");
}

#[test]
fn the_mode_defaults_to_auto() {
    let without = SMALL_EXAMPLE.replace("mode = \"xdp\"                  # or \"tc\"\n", "");
    assert_ne!(without, SMALL_EXAMPLE, "the example names its mode");
    let state = DesiredState::parse(&without).expect("valid without a mode");
    assert_eq!(state.routers[0].mode, Mode::Auto);
    let auto = SMALL_EXAMPLE.replace("mode = \"xdp\"", "mode = \"auto\"");
    assert_eq!(
        DesiredState::parse(&auto).expect("valid").routers[0].mode,
        Mode::Auto
    );
    // Written back, the mode is kept: a file follows the default only while it says none.
    assert!(state.to_toml().contains("mode = \"auto\""));
}

#[test]
fn bad_values_are_named() {
    let e = err(&SMALL_EXAMPLE.replace("10.0.1.1/24", "10.0.1.300/24"));
    assert!(
        e.contains("interface[0].address") && e.contains("10.0.1.300/24"),
        "{e}"
    );
    let e = err(&SMALL_EXAMPLE.replace("mode = \"xdp\"", "mode = \"dpdk\""));
    assert!(e.contains("mode") && e.contains("dpdk"), "{e}");
    let e = err(&SMALL_EXAMPLE.replace("10.0.1.254", "10.9.9.9"));
    assert!(
        e.contains("route[0].nexthop") && e.contains("on no subnet"),
        "{e}"
    );
    let e = err(&SMALL_EXAMPLE.replace("10.20.0.0/16", "10.20.0.1/16"));
    assert!(
        e.contains("route[0].destination") && e.contains("host bits"),
        "{e}"
    );
    let e = err(&SMALL_EXAMPLE.replace("198.18.0.1\"", "198.19.0.1\""));
    assert!(e.contains("gateway.nexthop"), "{e}");
    let e = err(&SMALL_EXAMPLE.replace("10.0.2.1/24", "10.0.1.9/24"));
    assert!(e.contains("overlaps") && e.contains("qr-a"), "{e}");
    let e = err(&SMALL_EXAMPLE.replace("name = \"qr-b\"", "name = \"qr-a\""));
    assert!(e.contains("interface named twice"), "{e}");
    let e = err(&SMALL_EXAMPLE.replace("10.0.1.1/24", "10.0.1.0/24"));
    assert!(e.contains("network or broadcast"), "{e}");
    let e = err(&SMALL_EXAMPLE.replace("id = \"r1\"", "id = \"../x\""));
    assert!(e.contains("id") && e.contains("../x"), "{e}");
}

#[test]
fn unknown_keys_and_syntax_errors_are_rejected() {
    let e = err(&SMALL_EXAMPLE.replace("snat = true", "snat = true\nsnatt = 1"));
    assert!(e.contains("snatt"), "{e}");
    let e = err(&SMALL_EXAMPLE.replace("snat = true", "snat = \"yes\""));
    assert!(e.contains("snat"), "{e}");
    let e = err("[[router]]\nid = \"r1\"\n");
    assert!(e.contains("namespace"), "{e}");
}

#[test]
fn duplicate_routers_are_rejected() {
    let twice = format!(
        "{SMALL_EXAMPLE}\n{}",
        SMALL_EXAMPLE.replace("qrouter-r1", "qrouter-r2")
    );
    assert!(err(&twice).contains("another router has this id"));
    let twice = format!(
        "{SMALL_EXAMPLE}\n{}",
        SMALL_EXAMPLE.replace("\"r1\"", "\"r2\"")
    );
    assert!(err(&twice).contains("another router uses this namespace"));
}

#[test]
fn prefix_arithmetic() {
    let p = Prefix::new_truncating(Ipv4Addr::new(10, 1, 2, 3), 16);
    assert_eq!(p.to_string(), "10.1.0.0/16");
    assert!(p.contains(Ipv4Addr::new(10, 1, 255, 1)));
    assert!(!p.contains(Ipv4Addr::new(10, 2, 0, 1)));
    assert_eq!(p.broadcast(), Ipv4Addr::new(10, 1, 255, 255));
    let q = Prefix::new_truncating(Ipv4Addr::new(10, 1, 7, 0), 24);
    assert!(p.overlaps(&q) && q.overlaps(&p));
    let zero = Prefix::new_truncating(Ipv4Addr::new(1, 2, 3, 4), 0);
    assert_eq!(zero.addr, Ipv4Addr::UNSPECIFIED);
    assert!(zero.contains(Ipv4Addr::new(8, 8, 8, 8)));
}

/// A floating IP, and a `[router.nat]` section with every key.
const NAT_EXAMPLE: &str = r#"
[[router.floating_ip]]
address = "198.18.0.10"   # on the external network
fixed = "10.0.1.5"        # a VM on one of the router's internal subnets

[router.nat]
snat_ports = "2000-3000"
slow_path_snat_ports = "60000-65535"
max_sessions = 1024
preallocate_sessions = false
metadata_port = 8775
[router.nat.timeouts]
udp = 5
tcp_established = 3600
"#;

#[test]
fn floating_ips_and_nat_settings_parse() {
    let state = DesiredState::parse(&format!("{SMALL_EXAMPLE}{NAT_EXAMPLE}")).expect("valid");
    let r = &state.routers[0];
    assert_eq!(
        r.floating_ips,
        vec![FloatingIp {
            address: Ipv4Addr::new(198, 18, 0, 10),
            fixed: Ipv4Addr::new(10, 0, 1, 5),
            id: None,
        }]
    );
    assert_eq!(
        r.nat.snat_ports,
        PortRange {
            min: 2000,
            max: 3000
        }
    );
    assert_eq!(r.nat.max_sessions, 1024);
    assert!(!r.nat.preallocate_sessions);
    assert_eq!(r.nat.metadata_port, 8775);
    assert_eq!(
        (r.nat.timeouts.udp, r.nat.timeouts.tcp_established),
        (5, 3600)
    );
    assert_eq!(r.nat.timeouts.icmp, 30, "unset timeouts keep the defaults");
    // Without a [router.nat] section: the defaults.
    let plain = DesiredState::parse(SMALL_EXAMPLE).expect("valid");
    assert_eq!(plain.routers[0].nat, NatSettings::default());
    assert!(plain.routers[0].nat.preallocate_sessions);
}

#[test]
fn invalid_floating_ips_and_nat_settings_are_rejected() {
    let with =
        |from: &str, to: &str| err(&format!("{SMALL_EXAMPLE}{}", NAT_EXAMPLE.replace(from, to)));
    let e = with("198.18.0.10", "198.19.0.10");
    assert!(
        e.contains("floating_ip[0].address") && e.contains("external subnet"),
        "{e}"
    );
    let e = with("198.18.0.10", "198.18.0.2");
    assert!(e.contains("gateway IP"), "{e}");
    let e = with("10.0.1.5", "10.0.3.5");
    assert!(
        e.contains("floating_ip[0].fixed") && e.contains("no internal subnet"),
        "{e}"
    );
    let e = with("10.0.1.5", "10.0.1.1");
    assert!(e.contains("floating_ip[0].fixed"), "{e}");
    let e = with("60000-65535", "2500-65535");
    assert!(
        e.contains("nat.slow_path_snat_ports") && e.contains("overlaps"),
        "{e}"
    );
    let e = with("2000-3000", "3000-2000");
    assert!(e.contains("nat.snat_ports"), "{e}");
    let e = with("udp = 5", "udp = 0");
    assert!(e.contains("nat.timeouts.udp"), "{e}");
    let e = with("max_sessions = 1024", "max_sessions = 1");
    assert!(e.contains("nat.max_sessions"), "{e}");
    let twice = format!(
        "{SMALL_EXAMPLE}{NAT_EXAMPLE}\n[[router.floating_ip]]\naddress = \"198.18.0.11\"\nfixed = \"10.0.1.5\"\n"
    );
    assert!(err(&twice).contains("already has a floating IP"));
    let start = SMALL_EXAMPLE.find("[router.gateway]").expect("gateway");
    let end = SMALL_EXAMPLE
        .find("[[router.interface]]")
        .expect("interface");
    let no_gateway = format!("{}{}", &SMALL_EXAMPLE[..start], &SMALL_EXAMPLE[end..]);
    let e = err(&format!("{no_gateway}{NAT_EXAMPLE}"));
    assert!(
        e.contains("floating_ip[0].address") && e.contains("needs a router gateway"),
        "{e}"
    );
}

// ---- policy routing, steering, several external subnets, the firewall -----------------

/// A router using every key: firewall steering, FWaaS rules, several external subnets (a
/// second external subnet), extra tables, routes and rules, floating IPs on both external
/// subnets, NAT settings and timeouts.
const FULL_EXAMPLE: &str = r#"
[[router]]
id = "r1"
namespace = "qrouter-r1"
mode = "tc"

[router.gateway]
interface = "qg-r1"
address = "198.18.0.2/24"
nexthop = "198.18.0.1"
snat = false
xdp_egress = true

[[router.gateway.subnet]]
address = "172.24.5.2/24"
nexthop = "172.24.5.1"

[[router.interface]]
name = "qr-a"
address = "10.0.1.1/24"

[[router.interface]]
name = "qr-b"
address = "10.0.2.1/24"
xdp_egress = false

[[router.interface]]
name = "qr-fw"
address = "10.99.0.1/24"

[[router.interface]]
name = "qr-fwx"
address = "10.99.1.1/24"

[[router.table]]
name = "vfw"
id = 100

[[router.table]]
name = "big"
id = 70000

[[router.route]]
destination = "10.20.0.0/16"
nexthop = "10.0.1.254"

[[router.route]]
destination = "10.0.2.0/24"
nexthop = "10.99.0.2"
table = "vfw"

[[router.route]]
destination = "10.20.0.0/16"
nexthop = "10.99.0.2"
table = 100

[[router.route]]
destination = "0.0.0.0/0"
nexthop = "172.24.5.1"
table = "70000"

[[router.rule]]
priority = 1000
iif = "qr-a"
from = "10.0.1.0/24"
to = "10.0.2.0/24"
table = "vfw"

[[router.rule]]
priority = 2000
from = "10.0.1.5"
table = "main"

[[router.rule]]
priority = 3000
iif = "qg-r1"
table = "big"

[router.steering]
nexthop = "10.99.0.2"
gateway_nexthop = "10.99.1.2"
interfaces = ["qr-a", "qr-b"]

[router.firewall]
default = "allow"

[[router.firewall.rule]]
action = "deny"
protocol = "tcp"
source = "2.2.2.0/24"
destination = "3.3.3.0/24"
destination_ports = "1:65535"
description = "fwaas rules"

[[router.firewall.rule]]
action = "reject"
protocol = "icmp"
source = "10.0.0.0/24"

[[router.firewall.rule]]
action = "allow"
protocol = "udp"
destination_ports = 53

[[router.firewall.rule]]
action = "allow"
protocol = 47
description = "GRE \"tunnels\" \\ and\ttabs\nnewline \u0001 ü"

[[router.firewall.rule]]
action = "deny"
protocol = "tcp"
destination = "10.0.1.5"
destination_ports = "8000-8080"

[[router.floating_ip]]
address = "198.18.0.10"
fixed = "10.0.1.5"

[[router.floating_ip]]
address = "172.24.5.10"
fixed = "10.0.2.5"

[router.nat]
snat_ports = "2000-3000"
slow_path_snat_ports = "60000-65535"
max_sessions = 1024
preallocate_sessions = false
metadata_port = 8775

[router.nat.timeouts]
tcp_syn_sent = 1
tcp_syn_recv = 2
tcp_established = 3
tcp_fin_wait = 4
tcp_close_wait = 5
tcp_time_wait = 6
tcp_close = 7
udp = 8
udp_stream = 9
icmp = 10
generic = 11
"#;

/// `FULL_EXAMPLE` with `from` (which must occur exactly once) replaced by `to`.
fn full_with(from: &str, to: &str) -> String {
    assert_eq!(
        FULL_EXAMPLE.matches(from).count(),
        1,
        "{from:?} must occur once in FULL_EXAMPLE"
    );
    FULL_EXAMPLE.replacen(from, to, 1)
}

fn full_err(from: &str, to: &str) -> String {
    err(&full_with(from, to))
}

/// Asserts that `e` names `key` and contains every one of `words`.
#[track_caller]
fn names(e: &str, key: &str, words: &[&str]) {
    assert!(
        e.contains(&format!("router[0] (id \"r1\").{key} = ")),
        "{key}: {e}"
    );
    for w in words {
        assert!(e.contains(w), "{w:?} missing: {e}");
    }
}

fn full() -> Router {
    DesiredState::parse(FULL_EXAMPLE)
        .expect("FULL_EXAMPLE must parse")
        .routers
        .remove(0)
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("address")
}

fn prefix(s: &str) -> Prefix {
    parse_prefix_or_addr(s).expect("prefix")
}

#[test]
fn existing_files_get_the_defaults_of_the_new_keys() {
    let r = &DesiredState::parse(SMALL_EXAMPLE).expect("valid").routers[0];
    assert_eq!(r.routes[0].table, router_common::TABLE_MAIN);
    assert!(r.tables.is_empty() && r.rules.is_empty());
    assert_eq!((&r.steering, &r.firewall), (&None, &None));
    let g = r.gateway.as_ref().expect("gateway");
    assert!(g.subnets.is_empty());
    assert_eq!(
        r.external_subnets(),
        vec![ExternalSubnet {
            address: g.address,
            nexthop: g.nexthop
        }]
    );
    assert_eq!(r.generated_rule_count(), 0);
}

#[test]
fn full_example_parses() {
    let r = full();
    assert_eq!(r.mode, Mode::Tc);
    let g = r.gateway.as_ref().expect("gateway");
    assert!(!g.snat);
    assert_eq!(g.xdp_egress, Some(true));
    let extra = ExternalSubnet {
        address: IfAddr {
            addr: ip("172.24.5.2"),
            len: 24,
        },
        nexthop: ip("172.24.5.1"),
    };
    assert_eq!(g.subnets, vec![extra]);
    let ext = r.external_subnets();
    assert_eq!(ext.len(), 2);
    assert_eq!(ext[0].address.to_string(), "198.18.0.2/24");
    assert_eq!(ext[0].nexthop, ip("198.18.0.1"));
    assert_eq!(ext[1], extra);

    assert_eq!(
        r.tables,
        vec![
            Table {
                name: "vfw".into(),
                id: 100
            },
            Table {
                name: "big".into(),
                id: 70000
            }
        ]
    );
    let tables: Vec<u32> = r.routes.iter().map(|r| r.table).collect();
    assert_eq!(tables, vec![router_common::TABLE_MAIN, 100, 100, 70000]);
    assert_eq!(r.routes[1].destination, prefix("10.0.2.0/24"));
    assert_eq!(r.table_name(254), "main");
    assert_eq!(r.table_name(100), "vfw");
    assert_eq!(r.table_name(70000), "big");
    assert_eq!(r.table_name(7), "7");

    assert_eq!(
        r.rules[0],
        Rule {
            priority: 1000,
            iif: Some("qr-a".into()),
            from: prefix("10.0.1.0/24"),
            to: prefix("10.0.2.0/24"),
            table: 100,
        }
    );
    assert_eq!(
        r.rules[1],
        Rule {
            priority: 2000,
            iif: None,
            from: prefix("10.0.1.5/32"),
            to: Prefix::ANY,
            table: router_common::TABLE_MAIN,
        }
    );
    assert_eq!(r.rules[2].table, 70000);
    let p = r.rules[0].to_policy_rule(7);
    assert_eq!(p.iif, 7);
    assert_eq!(p.from, router_common::Net::new([10, 0, 1, 0], 24));
    assert_eq!(p.to, router_common::Net::new([10, 0, 2, 0], 24));
    assert_eq!(p.table, 100);
    assert!(p.matches(7, [10, 0, 1, 9], [10, 0, 2, 9]));
    assert!(!p.matches(7, [10, 0, 1, 9], [10, 0, 3, 9]));
    assert_eq!(r.rules[1].to_policy_rule(0).to, router_common::Net::ANY);

    assert_eq!(
        r.steering,
        Some(Steering {
            nexthop: ip("10.99.0.2"),
            gateway_nexthop: Some(ip("10.99.1.2")),
            interfaces: vec!["qr-a".into(), "qr-b".into()],
        })
    );
    // Two steered interfaces, gateway steering, two external subnets.
    assert_eq!(r.generated_rule_count(), 5);

    let fw = r.firewall.as_ref().expect("firewall");
    assert!(fw.default_allow);
    assert_eq!(fw.rules.len(), 5);
    let seed = &fw.rules[0];
    assert_eq!(
        *seed,
        FirewallRule {
            action: FwAction::Deny,
            protocol: 6,
            source: prefix("2.2.2.0/24"),
            destination: prefix("3.3.3.0/24"),
            ports: Some(PortRange { min: 1, max: 65535 }),
            description: Some("fwaas rules".into()),
            id: None,
        }
    );
    let fr = seed.to_fw_rule(3);
    assert_eq!(
        fr,
        router_common::FwRule {
            source: router_common::Net::new([2, 2, 2, 0], 24),
            destination: router_common::Net::new([3, 3, 3, 0], 24),
            port_min: 1,
            port_max: 65535,
            proto: 6,
            action: router_common::fw_action::DENY,
            slot: 3,
            _pad: 0,
        }
    );
    assert!(fr.matches(6, [2, 2, 2, 9], [3, 3, 3, 9], 80));
    let icmp = &fw.rules[1];
    assert_eq!(
        (icmp.action, icmp.protocol, icmp.ports),
        (FwAction::Reject, 1, None)
    );
    let any_port = icmp.to_fw_rule(0);
    assert_eq!((any_port.port_min, any_port.port_max), (0, 65535));
    assert_eq!(any_port.action, router_common::fw_action::REJECT);
    assert_eq!(any_port.destination, router_common::Net::ANY);
    assert_eq!(fw.rules[2].ports, Some(PortRange { min: 53, max: 53 }));
    assert_eq!(
        fw.rules[2].to_fw_rule(0).action,
        router_common::fw_action::ALLOW
    );
    assert_eq!(fw.rules[3].protocol, 47);
    assert_eq!(
        fw.rules[3].description.as_deref(),
        Some("GRE \"tunnels\" \\ and\ttabs\nnewline \u{1} ü")
    );
    assert_eq!(fw.rules[4].destination, prefix("10.0.1.5/32"));
    assert_eq!(
        [FwAction::Allow, FwAction::Deny, FwAction::Reject].map(|a| a.to_string()),
        ["allow", "deny", "reject"]
    );

    assert_eq!(r.floating_ips[1].address, ip("172.24.5.10"));
    assert_eq!(r.nat.timeouts.generic, 11);
}

#[test]
fn to_toml_round_trips() {
    let state = DesiredState::parse(FULL_EXAMPLE).expect("valid");
    let text = state.to_toml();
    let back = DesiredState::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, state, "{text}");
    assert_eq!(back.to_toml(), text, "rendering is stable");
    // Every key of the example is written out.
    for key in [
        "[[router.gateway.subnet]]",
        "xdp_egress = false",
        "[[router.table]]",
        "table = \"vfw\"",
        "table = \"big\"",
        "iif = \"qg-r1\"",
        "from = \"10.0.1.5/32\"",
        "gateway_nexthop = \"10.99.1.2\"",
        "interfaces = [\"qr-a\", \"qr-b\"]",
        "default = \"allow\"",
        "action = \"reject\"",
        "protocol = 47",
        "destination_ports = \"53\"",
        "destination_ports = \"8000-8080\"",
        "description = \"GRE \\\"tunnels\\\" \\\\ and\\ttabs\\nnewline \\u0001 ü\"",
        "metadata_port = 8775",
        "preallocate_sessions = false",
        "[router.nat.timeouts]",
        "generic = 11",
    ] {
        assert!(text.contains(key), "{key} missing from\n{text}");
    }

    // Several routers, defaults left out, a router with neither gateway nor extras, and
    // the files of the earlier issues.
    let several = format!(
        "{FULL_EXAMPLE}\n{SMALL_EXAMPLE}\n[[router]]\nid = \"bare\"\nnamespace = \"qrouter-bare\"\n\n[router.steering]\nnexthop = \"10.1.0.2\"\n\n[router.firewall]\n\n[[router.interface]]\nname = \"qr-x\"\naddress = \"10.1.0.1/24\"\n"
    )
    .replacen("id = \"r1\"\nnamespace = \"qrouter-r1\"      #", "id = \"r2\"\nnamespace = \"qrouter-r2\"      #", 1);
    let state = DesiredState::parse(&several).expect("valid");
    assert_eq!(state.routers.len(), 3);
    let text = state.to_toml();
    assert_eq!(DesiredState::parse(&text).expect("valid"), state, "{text}");
    let bare = state.router("bare").expect("bare").to_toml();
    assert!(!bare.contains("[router.nat"), "{bare}");
    assert!(bare.contains("interfaces = []"), "{bare}");
    for plain in [
        SMALL_EXAMPLE.to_string(),
        format!("{SMALL_EXAMPLE}{NAT_EXAMPLE}"),
    ] {
        let state = DesiredState::parse(&plain).expect("valid");
        assert_eq!(DesiredState::parse(&state.to_toml()).expect("valid"), state);
    }
    let empty = DesiredState { routers: vec![] };
    assert_eq!(DesiredState::parse(&empty.to_toml()).expect("valid"), empty);
}

#[test]
fn documentation_examples_parse() {
    let doc = include_str!("../../../../docs/configuration.md");
    let mut examples = 0;
    for block in doc.split("```toml\n").skip(1) {
        let text = block.split("```").next().expect("closed block");
        if !text.starts_with("[[router]]") {
            continue;
        }
        let state = DesiredState::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            DesiredState::parse(&state.to_toml()).expect("round trip"),
            state
        );
        examples += 1;
    }
    assert!(examples >= 5, "{examples} examples");
    // Firewall steering generates a rule per steered interface and one for the gateway.
    let steering_example = doc
        .split("```toml\n")
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("qr-vfw-int"))
        .expect("steering example");
    let r = &DesiredState::parse(steering_example)
        .expect("valid")
        .routers[0];
    assert_eq!(r.generated_rule_count(), 3);
}

#[test]
fn more_floating_ips_than_a_router_holds_are_rejected() {
    let fip = |i: u32| {
        let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + 10 + i);
        let f = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + 10 + i);
        format!("[[router.floating_ip]]\naddress = \"{a}\"\nfixed = \"{f}\"\n")
    };
    let router = |n: u32, nat: &str| {
        let mut s = format!(
            "[[router]]\nid = \"r1\"\nnamespace = \"ns1\"\n\
             [router.gateway]\ninterface = \"qg\"\naddress = \"172.16.0.2/16\"\nnexthop = \"172.16.0.1\"\n\
             [[router.interface]]\nname = \"qr\"\naddress = \"10.128.0.1/16\"\n{nat}"
        );
        for i in 0..n {
            s += &fip(i);
        }
        s
    };
    DesiredState::parse(&router(1024, "")).expect("the default holds 1024");
    let e = err(&router(1025, ""));
    names(
        &e,
        "floating_ip",
        &["1025 entries", "more than nat.max_floating_ips (1024)"],
    );
    let state = DesiredState::parse(&router(1025, "[router.nat]\nmax_floating_ips = 2000\n"))
        .expect("a larger table holds more");
    assert_eq!(state.routers[0].nat.max_floating_ips, 2000);
    let e = err(&router(1, "[router.nat]\nmax_floating_ips = 0\n"));
    names(&e, "nat.max_floating_ips", &["must be 1 to 65536"]);
}
