//! The edits: checked like the file, duplicates and `may_exist`/`if_exists`.

use super::*;

#[test]
fn route_add_checks_like_the_file_and_knows_duplicates() {
    let s = state();
    let new = changed(
        &s,
        json!({"op": "route_add", "destination": "10.30.0.0/16", "nexthop": "10.99.0.2", "table": "vfw"}),
    );
    assert_eq!(new.routers[0].routes.len(), 2);
    assert_eq!(new.routers[0].routes[1].table, 100);
    for (request, problem) in [
        (
            json!({"op": "route_add", "destination": "10.30.0.5/16", "nexthop": "10.0.1.254"}),
            "route[1].destination = \"10.30.0.5/16\": has host bits",
        ),
        (
            json!({"op": "route_add", "destination": "10.30.0.0/16", "nexthop": "192.0.2.1"}),
            "route[1].nexthop = \"192.0.2.1\": is on no subnet",
        ),
        (
            json!({"op": "route_add", "destination": "10.30.0.0/16", "nexthop": "10.0.1.254", "table": "nope"}),
            "route[1].table = \"nope\"",
        ),
        (
            json!({"op": "route_add", "destination": "10.20.0.0/16", "nexthop": "10.0.1.254"}),
            "exists on router \"r1\" (use --may-exist)",
        ),
        (
            json!({"op": "route_add", "destination": "10.20.0.0/16", "nexthop": "10.0.1.253", "may_exist": true}),
            "via 10.0.1.254 already",
        ),
    ] {
        let e = error(&s, request);
        assert!(e.contains(problem), "{e}");
    }
    unchanged(
        &s,
        json!({"op": "route_add", "destination": "10.20.0.0/16", "nexthop": "10.0.1.254", "table": "254", "may_exist": true}),
    );
    let e = plan(
        &s,
        &Request::RouteList {
            router: "r9".into(),
            table: None,
        },
    );
    assert_eq!(
        e,
        Err(ApiError::not_found("router \"r9\" does not exist").at("router r9"))
    );
}

#[test]
fn route_del_and_list() {
    let s = state();
    let new = changed(
        &s,
        json!({"op": "route_del", "destination": "10.20.0.0/16"}),
    );
    assert!(new.routers[0].routes.is_empty());
    let e = error(
        &s,
        json!({"op": "route_del", "destination": "10.20.0.0/16", "table": "vfw"}),
    );
    assert!(e.contains("no route to 10.20.0.0/16 in table vfw"), "{e}");
    unchanged(
        &s,
        json!({"op": "route_del", "destination": "10.21.0.0/16", "if_exists": true}),
    );
    let e = error(
        &s,
        json!({"op": "route_del", "destination": "10.21.0.0/16", "table": "x"}),
    );
    assert!(e.contains("table \"x\""), "{e}");
    let e = error(
        &s,
        json!({"op": "route_del", "destination": "10.21.0.1/16"}),
    );
    assert!(e.contains("has host bits"), "{e}");
    assert_eq!(
        answer(&s, json!({"op": "route_list"})),
        json!([{"table": "main", "destination": "10.20.0.0/16", "nexthop": "10.0.1.254"}])
    );
    assert_eq!(
        answer(&s, json!({"op": "route_list", "table": 100})),
        json!([])
    );
}

#[test]
fn rules_add_del_and_may_exist() {
    let s = state();
    let same = json!({"op": "rule_add", "priority": 1000, "iif": "qr-a", "table": "vfw"});
    let e = error(&s, same.clone());
    assert!(
        e.contains("rule priority 1000 exists on router \"r1\" (use --may-exist)"),
        "{e}"
    );
    let mut may = same;
    may["may_exist"] = json!(true);
    unchanged(&s, may);
    // Written differently, the same rule.
    unchanged(
        &s,
        json!({"op": "rule_add", "priority": 1000, "iif": "qr-a", "table": 100, "from": "0.0.0.0/0", "may_exist": true}),
    );
    let e = error(
        &s,
        json!({"op": "rule_add", "priority": 1000, "table": "main", "may_exist": true}),
    );
    assert!(
        e.contains("other selectors or table (priority 1000 iif qr-a lookup vfw)"),
        "{e}"
    );
    let e = error(
        &s,
        json!({"op": "rule_add", "priority": 10, "iif": "eth9", "table": "main"}),
    );
    assert!(e.contains("rule[1].iif = \"eth9\""), "{e}");
    let new = changed(
        &s,
        json!({"op": "rule_add", "priority": 10, "from": "10.0.1.5", "table": "main"}),
    );
    assert_eq!(new.routers[0].rules[1].from.len, 32);
    let new = changed(&s, json!({"op": "rule_del", "priority": 1000}));
    assert!(new.routers[0].rules.is_empty());
    unchanged(
        &s,
        json!({"op": "rule_del", "priority": 5, "if_exists": true}),
    );
    let e = error(&s, json!({"op": "rule_del", "priority": 5}));
    assert!(e.contains("no rule with priority 5"), "{e}");
}

#[test]
fn firewall_edits() {
    let s = state();
    let e = error(&s, json!({"op": "fw_rule_add", "action": "allow"}));
    assert!(e.contains("has no firewall"), "{e}");
    let s = changed(&s, json!({"op": "fw_default", "policy": "allow"}));
    assert!(
        s.routers[0]
            .firewall
            .as_ref()
            .is_some_and(|f| f.default_allow)
    );
    unchanged(&s, json!({"op": "fw_default", "policy": "allow"}));
    let s = changed(
        &s,
        json!({"op": "fw_rule_add", "action": "deny", "protocol": "icmp"}),
    );
    let s = changed(
        &s,
        json!({"op": "fw_rule_add", "position": 1, "action": "allow", "protocol": 6, "destination_ports": 80}),
    );
    let protocols: Vec<u8> = s.routers[0]
        .firewall
        .iter()
        .flat_map(|f| &f.rules)
        .map(|r| r.protocol)
        .collect();
    assert_eq!(protocols, [6, 1]);
    for (request, problem) in [
        (
            json!({"op": "fw_rule_add", "action": "allow", "protocol": "icmp", "destination_ports": "80"}),
            "firewall.rule[2].destination_ports = \"80\": ports need protocol",
        ),
        (
            json!({"op": "fw_rule_add", "action": "maybe"}),
            "firewall.rule[2].action = \"maybe\"",
        ),
        (
            json!({"op": "fw_rule_add", "position": 4, "action": "allow"}),
            "position 4 is out of range",
        ),
        (
            json!({"op": "fw_rule_add", "position": 0, "action": "allow"}),
            "position 0 is out of range",
        ),
        (
            json!({"op": "fw_rule_del", "position": 3}),
            "no firewall rule at position 3",
        ),
        (
            json!({"op": "fw_default", "policy": "maybe"}),
            "must be \"allow\" or \"deny\"",
        ),
    ] {
        let e = error(&s, request);
        assert!(e.contains(problem), "{e}");
    }
    let s2 = changed(&s, json!({"op": "fw_rule_del", "position": 1}));
    assert_eq!(
        s2.routers[0].firewall.as_ref().map(|f| f.rules.len()),
        Some(1)
    );
    let listing = answer(&s, json!({"op": "fw_rule_list"}));
    assert_eq!(listing["default"], "allow");
    assert_eq!(listing["rules"][0]["destination_ports"], "80");
    assert_eq!(listing["rules"][1]["protocol"], "icmp");
}

#[test]
fn steering_set_and_clear() {
    let s = state();
    let e = error(&s, json!({"op": "fw_steer_set", "interface": "qr-a"}));
    assert!(e.contains("no steering yet"), "{e}");
    let s = changed(
        &s,
        json!({"op": "fw_steer_set", "interface": "qr-a", "nexthop": "10.99.0.2"}),
    );
    let steered = |s: &DesiredState| s.routers[0].steering.as_ref().map(|x| x.interfaces.clone());
    assert_eq!(steered(&s), Some(vec!["qr-a".to_string()]));
    unchanged(&s, json!({"op": "fw_steer_set", "interface": "qr-a"}));
    let e = error(&s, json!({"op": "fw_steer_set", "interface": "qr-fw"}));
    assert!(e.contains("steering.nexthop"), "{e}");
    let origins: Vec<Value> = answer(&s, json!({"op": "rule_list"}))
        .as_array()
        .map(|rules| rules.iter().map(|r| r["origin"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(origins, ["config", "steering"]);
    let e = error(&s, json!({"op": "fw_steer_clear", "interface": "qr-fw"}));
    assert!(e.contains("not steered"), "{e}");
    let s2 = changed(&s, json!({"op": "fw_steer_clear", "interface": "qr-a"}));
    assert_eq!(steered(&s2), Some(vec![]));
    let s3 = changed(&s, json!({"op": "fw_steer_clear"}));
    assert_eq!(steered(&s3), None);
    unchanged(&s3, json!({"op": "fw_steer_clear"}));
}

#[test]
fn router_create_and_delete() {
    let s = state();
    let created =
        |request: Value| match plan(&s, &parse_request(&request.to_string()).expect("a request")) {
            Ok(Plan::Change(new)) => new,
            other => panic!("{request}: {other:?}"),
        };
    let refused =
        |request: Value| match plan(&s, &parse_request(&request.to_string()).expect("a request")) {
            Err(e) => e,
            other => panic!("{request}: expected an error, got {other:?}"),
        };
    let new =
        created(json!({"op": "router_create", "router": "r2", "namespace": "ns2", "mode": "tc"}));
    assert_eq!(new.routers.len(), 2);
    assert_eq!(new.routers[1].mode, crate::config::Mode::Tc);
    assert_eq!(changed_routers(&s, &new), ["r2"]);
    let new = created(json!({"op": "router_create", "router": "r2", "namespace": "ns2"}));
    assert_eq!(new.routers[1].mode, crate::config::Mode::Auto);
    assert!(new.routers[1].interfaces.is_empty() && new.routers[1].gateway.is_none());
    for (request, problem) in [
        (
            json!({"op": "router_create", "router": "r1", "namespace": "ns1"}),
            "router \"r1\" exists (namespace \"ns1\", mode auto) (use --may-exist)",
        ),
        (
            json!({"op": "router_create", "router": "r1", "namespace": "ns9", "may_exist": true}),
            "router \"r1\" exists (namespace \"ns1\", mode auto): delete it first",
        ),
        (
            json!({"op": "router_create", "router": "r1", "namespace": "ns1", "mode": "tc", "may_exist": true}),
            "delete it first",
        ),
        (
            json!({"op": "router_create", "router": "r2", "namespace": "ns1"}),
            "namespace \"ns1\" is used by router \"r1\"",
        ),
        (
            json!({"op": "router_create", "router": "r2", "namespace": "ns2", "mode": "ebpf"}),
            "router[1] (id \"r2\").mode = \"ebpf\": must be \"auto\", \"xdp\" or \"tc\"",
        ),
        (
            json!({"op": "router_create", "router": "r 2", "namespace": "ns2"}),
            ".id = \"r 2\": must be 1-64 characters",
        ),
        (
            json!({"op": "router_delete", "router": "r9"}),
            "router \"r9\" does not exist",
        ),
    ] {
        let e = refused(request.clone());
        assert!(e.message.contains(problem), "{request}: {e}");
    }
    assert_eq!(
        plan(
            &s,
            &parse_request(
                r#"{"op":"router_create","router":"r1","namespace":"ns1","may_exist":true}"#
            )
            .expect("request")
        ),
        Ok(Plan::Unchanged)
    );
    assert_eq!(
        plan(
            &s,
            &parse_request(r#"{"op":"router_delete","router":"r9","if_exists":true}"#)
                .expect("request")
        ),
        Ok(Plan::Unchanged)
    );
    let gone = created(json!({"op": "router_delete", "router": "r1"}));
    assert!(gone.routers.is_empty());
    // An empty state takes a router too.
    let empty = DesiredState::parse("").expect("valid");
    assert!(matches!(
        plan(&empty, &parse_request(r#"{"op":"router_create","router":"a","namespace":"n"}"#).expect("request")),
        Ok(Plan::Change(n)) if n.routers.len() == 1
    ));
}

#[test]
fn interfaces_add_and_remove() {
    let s = state();
    let new = changed(
        &s,
        json!({"op": "router_interface_add", "interface": "qr-b", "address": "10.0.2.1/24"}),
    );
    assert_eq!(new.routers[0].interfaces.len(), 3);
    unchanged(
        &s,
        json!({"op": "router_interface_add", "interface": "qr-a", "address": "10.0.1.1/24", "may_exist": true}),
    );
    for (request, problem) in [
        (
            json!({"op": "router_interface_add", "interface": "qr-b", "address": "10.0.1.9/24"}),
            "interface[2].address = \"10.0.1.9/24\": subnet 10.0.1.0/24 overlaps the subnet of interface qr-a",
        ),
        (
            json!({"op": "router_interface_add", "interface": "qr-b", "address": "198.18.0.9/16"}),
            "overlaps the subnet of interface qg-1",
        ),
        (
            json!({"op": "router_interface_add", "interface": "qr-b", "address": "10.0.2.1"}),
            "interface[2].address = \"10.0.2.1\": not an IPv4 address with prefix length",
        ),
        (
            json!({"op": "router_interface_add", "interface": "qr-b", "address": "10.0.2.0/24"}),
            "is the network or broadcast address",
        ),
        (
            json!({"op": "router_interface_add", "interface": "qr-a", "address": "10.0.1.1/24"}),
            "interface qr-a with address 10.0.1.1/24 exists on router \"r1\" (use --may-exist)",
        ),
        (
            json!({"op": "router_interface_add", "interface": "qr-a", "address": "10.0.3.1/24", "may_exist": true}),
            "router \"r1\" has interface qr-a with address 10.0.1.1/24 already",
        ),
        (
            json!({"op": "router_interface_add", "interface": "qg-1", "address": "10.0.3.1/24"}),
            "interface qg-1 is the gateway interface of router \"r1\"",
        ),
        (
            json!({"op": "router_interface_remove", "interface": "qr-a"}),
            "router \"r1\" still uses interface qr-a: invalid configuration: router[0] (id \"r1\").route[0].nexthop = \"10.0.1.254\": is on no subnet",
        ),
        (
            json!({"op": "router_interface_remove", "interface": "qr-x"}),
            "router \"r1\" has no interface qr-x",
        ),
        (
            json!({"op": "router_interface_remove", "interface": "qg-1", "if_exists": true}),
            "is the gateway interface of router \"r1\", not an internal one",
        ),
    ] {
        let e = error(&s, request.clone());
        assert!(e.contains(problem), "{request}: {e}");
    }
    let new = changed(
        &s,
        json!({"op": "router_interface_remove", "interface": "qr-fw"}),
    );
    assert_eq!(new.routers[0].interfaces.len(), 1);
    unchanged(
        &s,
        json!({"op": "router_interface_remove", "interface": "qr-x", "if_exists": true}),
    );
}

#[test]
fn gateway_set_and_clear() {
    let s = state();
    unchanged(
        &s,
        json!({"op": "router_gateway_set", "interface": "qg-1", "address": "198.18.0.2/24", "nexthop": "198.18.0.1"}),
    );
    let new = changed(
        &s,
        json!({"op": "router_gateway_set", "interface": "qg-1", "address": "198.18.0.2/24", "nexthop": "198.18.0.1", "snat": false}),
    );
    assert_eq!(new.routers[0].gateway.as_ref().map(|g| g.snat), Some(false));
    // Unsaid, SNAT stays as it is.
    let again = changed(
        &new,
        json!({"op": "router_gateway_set", "interface": "qg-1", "address": "198.18.0.2/24", "nexthop": "198.18.0.3"}),
    );
    assert_eq!(
        again.routers[0].gateway.as_ref().map(|g| g.snat),
        Some(false)
    );
    for (request, problem) in [
        (
            json!({"op": "router_gateway_set", "interface": "qg-1", "address": "198.18.0.2/24", "nexthop": "192.0.2.1"}),
            "gateway.nexthop = \"192.0.2.1\": must be another host on the gateway subnet 198.18.0.0/24",
        ),
        (
            json!({"op": "router_gateway_set", "interface": "qr-a", "address": "198.18.0.2/24", "nexthop": "198.18.0.1"}),
            "interface qr-a is an internal interface of router \"r1\"",
        ),
        (
            json!({"op": "router_gateway_set", "interface": "qg-1", "address": "10.0.1.200/24", "nexthop": "10.0.1.1"}),
            "overlaps the subnet of",
        ),
    ] {
        let e = error(&s, request.clone());
        assert!(e.contains(problem), "{request}: {e}");
    }
    let with_fip = changed(
        &s,
        json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5"}),
    );
    let e = error(&with_fip, json!({"op": "router_gateway_clear"}));
    assert!(
        e.contains("router \"r1\" still uses its gateway: invalid configuration: router[0] (id \"r1\").floating_ip[0].address = \"198.18.0.10\": a floating IP needs a router gateway"),
        "{e}"
    );
    let cleared = changed(&s, json!({"op": "router_gateway_clear"}));
    assert!(cleared.routers[0].gateway.is_none());
    let e = error(&cleared, json!({"op": "router_gateway_clear"}));
    assert_eq!(e, "router \"r1\" has no gateway");
    unchanged(
        &cleared,
        json!({"op": "router_gateway_clear", "if_exists": true}),
    );
    let set = changed(
        &cleared,
        json!({"op": "router_gateway_set", "interface": "qg-2", "address": "203.0.113.2/24", "nexthop": "203.0.113.1"}),
    );
    assert_eq!(set.routers[0].gateway.as_ref().map(|g| g.snat), Some(true));
    // Further external subnets and, on the same interface, xdp_egress stay.
    let text = BASE.replace(
        "nexthop = \"198.18.0.1\"\n",
        "nexthop = \"198.18.0.1\"\nxdp_egress = true\n\n[[router.gateway.subnet]]\naddress = \"203.0.113.2/24\"\nnexthop = \"203.0.113.1\"\n",
    );
    let s = DesiredState::parse(&text).expect("valid");
    let kept = changed(
        &s,
        json!({"op": "router_gateway_set", "interface": "qg-1", "address": "198.18.0.3/24", "nexthop": "198.18.0.1", "snat": false}),
    );
    let g = kept.routers[0].gateway.as_ref().expect("a gateway");
    assert_eq!(
        (g.address.to_string(), g.snat, g.xdp_egress),
        ("198.18.0.3/24".into(), false, Some(true))
    );
    assert_eq!(g.subnets.len(), 1);
    let moved = changed(
        &s,
        json!({"op": "router_gateway_set", "interface": "qg-9", "address": "198.18.0.2/24", "nexthop": "198.18.0.1"}),
    );
    let g = moved.routers[0].gateway.as_ref().expect("a gateway");
    assert_eq!((g.xdp_egress, g.subnets.len()), (None, 1));
}

#[test]
fn floating_ips_create_associate_and_delete() {
    let s = state();
    let s = changed(
        &s,
        json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5"}),
    );
    assert_eq!(s.routers[0].floating_ips.len(), 1);
    unchanged(
        &s,
        json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5", "may_exist": true}),
    );
    unchanged(
        &s,
        json!({"op": "fip_associate", "address": "198.18.0.10", "fixed": "10.0.1.5", "may_exist": true}),
    );
    for (request, problem) in [
        (
            json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5"}),
            "floating IP 198.18.0.10 is already associated with 10.0.1.5 on router \"r1\" (use --may-exist)",
        ),
        (
            json!({"op": "fip_associate", "address": "198.18.0.10", "fixed": "10.0.1.6", "may_exist": true}),
            "floating IP 198.18.0.10 is already associated with 10.0.1.5 on router \"r1\" (disassociate it first)",
        ),
        (
            json!({"op": "fip_create", "address": "198.18.0.11", "fixed": "10.0.1.5"}),
            "fixed IP 10.0.1.5 already has floating IP 198.18.0.10",
        ),
        (
            json!({"op": "fip_create", "address": "198.18.1.10", "fixed": "10.0.1.6"}),
            "floating_ip[1].address = \"198.18.1.10\": is in no external subnet of this router (198.18.0.0/24)",
        ),
        (
            json!({"op": "fip_create", "address": "198.18.0.11", "fixed": "10.0.9.6"}),
            "floating_ip[1].fixed = \"10.0.9.6\": is on no internal subnet of this router",
        ),
        (
            json!({"op": "fip_create", "address": "198.18.0.2", "fixed": "10.0.1.6"}),
            "is one of the router's gateway IPs",
        ),
        (
            json!({"op": "fip_create", "address": "nope", "fixed": "10.0.1.6"}),
            "floating_ip[1].address = \"nope\": not an IPv4 address",
        ),
        (
            json!({"op": "fip_delete", "address": "198.18.0.11"}),
            "router \"r1\" has no floating IP 198.18.0.11",
        ),
        (
            json!({"op": "fip_disassociate", "address": "198.18.0.11"}),
            "router \"r1\" has no floating IP 198.18.0.11",
        ),
        (
            json!({"op": "fip_delete", "address": "x"}),
            "address \"x\": not an IPv4 address",
        ),
    ] {
        let e = error(&s, request.clone());
        assert!(e.contains(problem), "{request}: {e}");
    }
    let s2 = changed(
        &s,
        json!({"op": "fip_associate", "address": "198.18.0.11", "fixed": "10.99.0.5"}),
    );
    let e = error(
        &s2,
        json!({"op": "router_interface_remove", "interface": "qr-fw"}),
    );
    assert!(
        e.contains("still uses interface qr-fw")
            && e.contains("floating_ip[1].fixed = \"10.99.0.5\""),
        "{e}"
    );
    let s3 = changed(
        &s2,
        json!({"op": "fip_disassociate", "address": "198.18.0.11"}),
    );
    assert_eq!(s3, s);
    let s4 = changed(&s, json!({"op": "fip_delete", "address": "198.18.0.10"}));
    assert!(s4.routers[0].floating_ips.is_empty());
    unchanged(
        &s4,
        json!({"op": "fip_delete", "address": "198.18.0.10", "if_exists": true}),
    );
    let listing = answer(&s2, json!({"op": "fip_list"}));
    assert_eq!(
        listing,
        json!([
            {"router": "r1", "address": "198.18.0.10", "fixed": "10.0.1.5", "in_packets": null,
             "in_bytes": null, "out_packets": null, "out_bytes": null},
            {"router": "r1", "address": "198.18.0.11", "fixed": "10.99.0.5", "in_packets": null,
             "in_bytes": null, "out_packets": null, "out_bytes": null},
        ])
    );
    assert_eq!(
        plan(&s2, &Request::FipList { router: None }).ok(),
        Some(Plan::Answer(listing))
    );
    assert_eq!(
        plan(
            &s2,
            &Request::FipList {
                router: Some("r9".into())
            }
        ),
        Err(ApiError::not_found("router \"r9\" does not exist").at("router r9"))
    );
}

/// An edit refused by the checks of the state gets the message the file loader gives for
/// the same content: the file with the object the edit adds.
#[test]
fn a_refused_edit_has_the_message_of_the_same_file() {
    let s = state();
    for (request, added) in [
        (
            json!({"op": "route_add", "destination": "10.30.0.0/16", "nexthop": "192.0.2.1"}),
            "[[router.route]]\ndestination = \"10.30.0.0/16\"\nnexthop = \"192.0.2.1\"\n",
        ),
        (
            json!({"op": "route_add", "destination": "10.30.0.5/16", "nexthop": "10.0.1.254"}),
            "[[router.route]]\ndestination = \"10.30.0.5/16\"\nnexthop = \"10.0.1.254\"\n",
        ),
        (
            json!({"op": "rule_add", "priority": 10, "iif": "eth9", "table": 100}),
            "[[router.rule]]\npriority = 10\niif = \"eth9\"\ntable = 100\n",
        ),
        (
            json!({"op": "router_interface_add", "interface": "qr-b", "address": "10.0.1.9/24"}),
            "[[router.interface]]\nname = \"qr-b\"\naddress = \"10.0.1.9/24\"\n",
        ),
        (
            json!({"op": "fip_create", "address": "198.18.1.10", "fixed": "10.0.1.6"}),
            "[[router.floating_ip]]\naddress = \"198.18.1.10\"\nfixed = \"10.0.1.6\"\n",
        ),
        (
            json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.1"}),
            "[[router.floating_ip]]\naddress = \"198.18.0.10\"\nfixed = \"10.0.1.1\"\n",
        ),
        (
            json!({"op": "fw_steer_set", "nexthop": "10.0.1.1"}),
            "[router.steering]\nnexthop = \"10.0.1.1\"\n",
        ),
    ] {
        let edit = error(&s, request.clone());
        let file = DesiredState::parse(&format!("{BASE}\n{added}"))
            .expect_err("the same content in a file is refused")
            .to_string();
        assert_eq!(edit, file, "{request}");
    }
    // A router added with a bad id.
    let edit = match plan(
        &s,
        &parse_request(r#"{"op":"router_create","router":"../x","namespace":"n2"}"#)
            .expect("a request"),
    ) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    let file = DesiredState::parse(&format!(
        "{BASE}\n[[router]]\nid = \"../x\"\nnamespace = \"n2\"\n"
    ))
    .expect_err("refused")
    .to_string();
    assert_eq!(edit.code, ErrorCode::Invalid);
    assert_eq!(edit.message, file);
}
