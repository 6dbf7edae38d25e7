//! `DesiredState::validate` on states edited as typed values: refused with the message the
//! file loader gives for the same content.

use router_common::TABLE_MAIN;

use super::*;

/// [`SMALL_EXAMPLE`] with router `r1` edited by `edit`: `validate` refuses it, with the
/// error `DesiredState::parse` gives for `file` and for the edited state written out.
#[track_caller]
fn refused_as_in_a_file(edit: impl FnOnce(&mut Router), file: &str) -> String {
    let mut state = DesiredState::parse(SMALL_EXAMPLE).expect("valid");
    edit(&mut state.routers[0]);
    let typed = state.validate().expect_err("the edit is invalid");
    assert_eq!(
        DesiredState::parse(file).expect_err("the file is invalid"),
        typed
    );
    assert_eq!(
        DesiredState::parse(&state.to_toml()).expect_err("the written state is invalid"),
        typed
    );
    typed.to_string()
}

#[test]
fn a_route_through_a_next_hop_on_no_subnet() {
    let e = refused_as_in_a_file(
        |r| {
            r.routes.push(Route {
                destination: prefix("10.30.0.0/16"),
                nexthop: ip("192.0.2.1"),
                table: TABLE_MAIN,
            })
        },
        &format!(
            "{SMALL_EXAMPLE}\n[[router.route]]\ndestination = \"10.30.0.0/16\"\nnexthop = \"192.0.2.1\"\n"
        ),
    );
    assert_eq!(
        e,
        "invalid configuration: router[0] (id \"r1\").route[1].nexthop = \"192.0.2.1\": is on no subnet of this router's interfaces"
    );
}

#[test]
fn a_floating_ip_given_twice() {
    let gateway_and_fips = format!(
        "{SMALL_EXAMPLE}\n[[router.floating_ip]]\naddress = \"198.18.0.10\"\nfixed = \"10.0.1.5\"\n\n[[router.floating_ip]]\naddress = \"198.18.0.10\"\nfixed = \"10.0.1.6\"\n"
    );
    let e = refused_as_in_a_file(
        |r| {
            for fixed in ["10.0.1.5", "10.0.1.6"] {
                r.floating_ips.push(FloatingIp {
                    address: ip("198.18.0.10"),
                    fixed: ip(fixed),
                    id: None,
                });
            }
        },
        &gateway_and_fips,
    );
    assert_eq!(
        e,
        "invalid configuration: router[0] (id \"r1\").floating_ip[1].address = \"198.18.0.10\": floating IP given twice"
    );
}

#[test]
fn other_typed_edits_get_the_messages_of_the_file() {
    let e = refused_as_in_a_file(
        |r| r.interfaces[1].address.addr = ip("10.0.1.9"),
        &SMALL_EXAMPLE.replace("10.0.2.1/24", "10.0.1.9/24"),
    );
    assert!(e.contains("interface[1].address = \"10.0.1.9/24\": subnet 10.0.1.0/24 overlaps the subnet of interface qr-a"), "{e}");
    let e = refused_as_in_a_file(
        |r| r.interfaces[0].address.addr = ip("10.0.1.0"),
        &SMALL_EXAMPLE.replace("10.0.1.1/24", "10.0.1.0/24"),
    );
    assert!(e.contains("network or broadcast"), "{e}");
    let e = refused_as_in_a_file(
        |r| r.id = "../x".into(),
        &SMALL_EXAMPLE.replace("id = \"r1\"", "id = \"../x\""),
    );
    assert!(e.contains("router[0] (id \"../x\").id = \"../x\""), "{e}");
    let e = refused_as_in_a_file(
        |r| {
            if let Some(g) = &mut r.gateway {
                g.nexthop = ip("198.19.0.1");
            }
        },
        &SMALL_EXAMPLE.replace("198.18.0.1\"", "198.19.0.1\""),
    );
    assert!(e.contains("gateway.nexthop = \"198.19.0.1\""), "{e}");
    let e = refused_as_in_a_file(
        |r| {
            r.firewall = Some(Firewall {
                default_allow: false,
                rules: vec![FirewallRule {
                    action: FwAction::Allow,
                    protocol: 1,
                    source: Prefix::ANY,
                    destination: Prefix::ANY,
                    ports: Some(PortRange { min: 80, max: 80 }),
                    description: None,
                    id: None,
                }],
            })
        },
        &format!(
            "{SMALL_EXAMPLE}\n[router.firewall]\n[[router.firewall.rule]]\naction = \"allow\"\nprotocol = \"icmp\"\ndestination_ports = \"80\"\n"
        ),
    );
    assert!(
        e.contains("firewall.rule[0].destination_ports = \"80\": ports need protocol"),
        "{e}"
    );
    let e = refused_as_in_a_file(
        |r| {
            r.rules.push(Rule {
                priority: 10,
                iif: Some("eth9".into()),
                from: Prefix::ANY,
                to: Prefix::ANY,
                table: TABLE_MAIN,
            })
        },
        &format!(
            "{SMALL_EXAMPLE}\n[[router.rule]]\npriority = 10\niif = \"eth9\"\ntable = \"main\"\n"
        ),
    );
    assert!(e.contains("rule[0].iif = \"eth9\""), "{e}");
    let e = refused_as_in_a_file(
        |r| {
            r.nat.slow_path_snat_ports = PortRange {
                min: 60000,
                max: 65535,
            }
        },
        &format!("{SMALL_EXAMPLE}\n[router.nat]\nslow_path_snat_ports = \"60000-65535\"\n"),
    );
    assert!(
        e.contains("nat.slow_path_snat_ports = \"60000-65535\": overlaps"),
        "{e}"
    );
}

#[test]
fn values_only_a_typed_edit_can_hold_are_refused_too() {
    // A table id no `[[router.table]]` has: a file names tables, a typed route holds ids.
    let mut state = DesiredState::parse(SMALL_EXAMPLE).expect("valid");
    state.routers[0].routes[0].table = 100;
    let e = state.validate().expect_err("unknown table").to_string();
    assert!(
        e.contains("route[0].table = \"100\": is not \"main\" or a table of this router"),
        "{e}"
    );
    // Two routers with one id.
    let mut state = DesiredState::parse(SMALL_EXAMPLE).expect("valid");
    let mut second = state.routers[0].clone();
    second.namespace = "qrouter-r2".into();
    state.routers.push(second);
    let e = state.validate().expect_err("one id twice").to_string();
    assert!(
        e.contains("router[1] (id \"r1\").id = \"r1\": another router has this id"),
        "{e}"
    );
    DesiredState::parse(SMALL_EXAMPLE)
        .expect("valid")
        .validate()
        .expect("a state read from a valid file is valid");
}
