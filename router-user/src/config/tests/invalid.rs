//! Invalid files: every error names the key and the value.

use super::*;

#[test]
fn invalid_tables_are_rejected() {
    for name in ["main", "local", "default", "100", "0x64", "", "a b", "-x"] {
        let e = full_err("name = \"vfw\"", &format!("name = \"{name}\""));
        names(&e, "table[0].name", &[&format!("\"{name}\"")]);
    }
    let e = full_err("name = \"big\"", "name = \"vfw\"");
    names(&e, "table[1].name", &["another table has this name"]);
    let generated = router_common::TABLE_GENERATED_MIN.to_string();
    for id in [
        "0",
        "253",
        "254",
        "255",
        "-1",
        generated.as_str(),
        "4294967296",
    ] {
        let e = full_err("id = 100", &format!("id = {id}"));
        names(
            &e,
            "table[0].id",
            &[&format!("\"{id}\""), "must be 1-252 or 256-"],
        );
    }
    let last = (router_common::TABLE_GENERATED_MIN - 1).to_string();
    let ok = full_with("id = 70000", &format!("id = {last}"))
        .replace("\"70000\"", &format!("\"{last}\""));
    DesiredState::parse(&ok).expect("the highest table id is allowed");
    let e = full_err("id = 70000", "id = 100");
    names(&e, "table[1].id", &["another table has this id"]);
}

#[test]
fn invalid_routes_are_rejected() {
    let e = full_err(
        "table = \"vfw\"\n\n[[router.route]]",
        "table = \"vfx\"\n\n[[router.route]]",
    );
    names(
        &e,
        "route[1].table",
        &["\"vfx\"", "not \"main\" or a table"],
    );
    let e = full_err("table = 100", "table = 101");
    names(&e, "route[2].table", &["\"101\""]);
    let e = full_err("table = 100", "table = \"local\"");
    names(&e, "route[2].table", &["local"]);
    let e = full_err("table = 100", "table = true");
    names(&e, "route[2].table", &["must be a table name"]);
    DesiredState::parse(&full_with("table = 100", "table = \"main\""))
        .expect_err("10.20/16 twice in main");
    DesiredState::parse(&full_with("table = 100", "table = 254"))
        .expect_err("10.20/16 twice in main");
    // The same destination in two tables is fine; twice in one is not.
    let e = full_err(
        "table = 100",
        "table = \"vfw\"\n\n[[router.route]]\ndestination = \"10.20.0.0/16\"\nnexthop = \"10.99.0.3\"\ntable = \"vfw\"",
    );
    names(
        &e,
        "route[3].destination",
        &["route given twice in table vfw (100)"],
    );
    // A connected subnet is a destination only outside main; an extra external subnet is
    // connected too.
    let e = full_err(
        "nexthop = \"10.99.0.2\"\ntable = \"vfw\"",
        "nexthop = \"10.99.0.2\"\ntable = \"main\"",
    );
    names(
        &e,
        "route[1].destination",
        &["connected subnet of interface qr-b"],
    );
    let e = full_err(
        "destination = \"10.20.0.0/16\"\nnexthop = \"10.0.1.254\"",
        "destination = \"172.24.5.0/24\"\nnexthop = \"10.0.1.254\"",
    );
    names(
        &e,
        "route[0].destination",
        &["connected subnet", "external subnet"],
    );
    DesiredState::parse(&full_with(
        "destination = \"0.0.0.0/0\"",
        "destination = \"172.24.5.0/24\"",
    ))
    .expect("a connected subnet in another table");
    // Next hops: on an external subnet (extra ones included), not the router itself.
    let e = full_err(
        "nexthop = \"172.24.5.1\"\ntable",
        "nexthop = \"172.24.5.2\"\ntable",
    );
    names(&e, "route[3].nexthop", &["qg-r1", "not the router"]);
    let e = full_err(
        "nexthop = \"172.24.5.1\"\ntable",
        "nexthop = \"172.24.5.255\"\ntable",
    );
    names(&e, "route[3].nexthop", &["broadcast"]);
    let e = full_err(
        "nexthop = \"172.24.5.1\"\ntable",
        "nexthop = \"172.24.6.1\"\ntable",
    );
    names(&e, "route[3].nexthop", &["on no subnet"]);
}

/// `n` rules with distinct priorities, to append to a router.
fn rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "\n[[router.rule]]\npriority = {}\ntable = \"main\"\n",
                10 + i
            )
        })
        .collect()
}

#[test]
fn invalid_rules_are_rejected() {
    for p in ["0", "30000", "-5"] {
        let e = full_err("priority = 1000", &format!("priority = {p}"));
        names(&e, "rule[0].priority", &[&format!("\"{p}\""), "1 to 29999"]);
    }
    let e = full_err("priority = 2000", "priority = 1000");
    names(&e, "rule[1].priority", &["another rule has this priority"]);
    let e = full_err("priority = 2000\n", "");
    names(&e, "rule[1].priority", &["required"]);
    let e = full_err("iif = \"qr-a\"\nfrom", "iif = \"qr-z\"\nfrom");
    names(
        &e,
        "rule[0].iif",
        &["\"qr-z\"", "not an interface of this router"],
    );
    let e = full_err("table = \"big\"", "table = \"nope\"");
    names(&e, "rule[2].table", &["\"nope\""]);
    let e = full_err("table = \"big\"", "table = 255");
    names(&e, "rule[2].table", &["\"255\""]);
    let e = full_err("iif = \"qg-r1\"\ntable = \"big\"", "iif = \"qg-r1\"");
    names(&e, "rule[2].table", &["required"]);
    let e = full_err("from = \"10.0.1.5\"", "from = \"10.0.1.5/16\"");
    names(&e, "rule[1].from", &["host bits"]);
    let e = full_err("to = \"10.0.2.0/24\"", "to = \"10.0.2\"");
    names(&e, "rule[0].to", &["not an IPv4 prefix"]);

    // 3 rules + 5 generated: 24 more fit, 25 do not.
    let max = router_common::MAX_RULES as usize;
    DesiredState::parse(&format!("{FULL_EXAMPLE}{}", rules(max - 8))).expect("exactly full");
    let e = err(&format!("{FULL_EXAMPLE}{}", rules(max - 7)));
    names(
        &e,
        "rule",
        &[
            &format!("\"{}\"", max - 4),
            "5 the router generates",
            &format!("make {}", max + 1),
        ],
    );
    // Without steering or a second external subnet, nothing is generated.
    DesiredState::parse(&format!("{SMALL_EXAMPLE}{}", rules(max))).expect("32 rules");
    let e = err(&format!("{SMALL_EXAMPLE}{}", rules(max + 1)));
    names(&e, "rule", &["\"33\"", "the 0 the router generates"]);
}

#[test]
fn invalid_external_subnets_are_rejected() {
    let e = full_err("address = \"172.24.5.2/24\"", "address = \"172.24.5.2\"");
    names(&e, "gateway.subnet[0].address", &["prefix length"]);
    let e = full_err(
        "address = \"172.24.5.2/24\"",
        "address = \"198.18.0.200/16\"",
    );
    names(&e, "gateway.subnet[0].address", &["overlaps", "qg-r1"]);
    // The gateway comes first: an internal interface overlapping an extra subnet is named.
    let e = full_err(
        "address = \"172.24.5.2/24\"\nnexthop = \"172.24.5.1\"",
        "address = \"10.0.0.2/16\"\nnexthop = \"10.0.0.1\"",
    );
    names(
        &e,
        "interface[0].address",
        &["overlaps", "external subnet gateway.subnet[0] on qg-r1"],
    );
    // An internal interface overlapping an extra external subnet.
    let e = full_err(
        "address = \"10.99.1.1/24\"",
        "address = \"172.24.5.129/25\"",
    );
    names(
        &e,
        "interface[3].address",
        &["overlaps", "gateway.subnet[0]"],
    );
    // Two extra subnets overlapping each other.
    let e = full_err(
        "nexthop = \"172.24.5.1\"\n\n[[router.interface]]",
        "nexthop = \"172.24.5.1\"\n\n[[router.gateway.subnet]]\naddress = \"172.24.5.3/28\"\nnexthop = \"172.24.5.4\"\n\n[[router.interface]]",
    );
    names(
        &e,
        "gateway.subnet[1].address",
        &["overlaps", "gateway.subnet[0]"],
    );
    for (nexthop, why) in [
        ("172.24.6.1", "external subnet 172.24.5.0/24"),
        ("172.24.5.2", "not the router's address"),
        ("172.24.5.255", "broadcast"),
        ("172.24.5.0", "network"),
        ("x", "not an IPv4 address"),
    ] {
        let e = full_err(
            "nexthop = \"172.24.5.1\"\n\n[[router.interface]]",
            &format!("nexthop = \"{nexthop}\"\n\n[[router.interface]]"),
        );
        names(&e, "gateway.subnet[0].nexthop", &[why]);
    }
}

#[test]
fn floating_ips_must_be_in_an_external_subnet() {
    let e = full_err("address = \"172.24.5.10\"", "address = \"172.24.6.10\"");
    names(
        &e,
        "floating_ip[1].address",
        &["in no external subnet", "198.18.0.0/24, 172.24.5.0/24"],
    );
    let e = full_err("address = \"172.24.5.10\"", "address = \"172.24.5.1\"");
    names(&e, "floating_ip[1].address", &["gateway IP", "next hop"]);
    let e = full_err("address = \"172.24.5.10\"", "address = \"172.24.5.2\"");
    names(&e, "floating_ip[1].address", &["gateway IP"]);
    let e = full_err("address = \"172.24.5.10\"", "address = \"172.24.5.255\"");
    names(&e, "floating_ip[1].address", &["not a host address"]);
    let e = full_err("address = \"172.24.5.10\"", "address = \"198.18.0.10\"");
    names(&e, "floating_ip[1].address", &["given twice"]);
}

#[test]
fn invalid_steering_is_rejected() {
    let e = full_err(
        "nexthop = \"10.99.0.2\"\ngateway",
        "nexthop = \"10.0.1.2\"\ngateway",
    );
    names(&e, "steering.nexthop", &["qr-a", "steered"]);
    let e = full_err(
        "nexthop = \"10.99.0.2\"\ngateway",
        "nexthop = \"198.18.0.5\"\ngateway",
    );
    names(&e, "steering.nexthop", &["no internal subnet"]);
    let e = full_err(
        "nexthop = \"10.99.0.2\"\ngateway",
        "nexthop = \"10.99.0.1\"\ngateway",
    );
    names(&e, "steering.nexthop", &["not the router"]);
    let e = full_err(
        "nexthop = \"10.99.0.2\"\ngateway",
        "nexthop = \"10.99.0.255\"\ngateway",
    );
    names(&e, "steering.nexthop", &["broadcast"]);
    let e = full_err(
        "gateway_nexthop = \"10.99.1.2\"",
        "gateway_nexthop = \"10.0.2.7\"",
    );
    names(&e, "steering.gateway_nexthop", &["qr-b", "steered"]);
    let e = full_err(
        "gateway_nexthop = \"10.99.1.2\"",
        "gateway_nexthop = \"172.24.5.9\"",
    );
    names(&e, "steering.gateway_nexthop", &["no internal subnet"]);
    DesiredState::parse(&full_with(
        "gateway_nexthop = \"10.99.1.2\"",
        "gateway_nexthop = \"10.99.0.3\"",
    ))
    .expect("the gateway's firewall address on the same firewall interface");
    let e = full_err(
        "interfaces = [\"qr-a\", \"qr-b\"]",
        "interfaces = [\"qr-a\", \"qg-r1\"]",
    );
    names(&e, "steering.interfaces[1]", &["gateway interface"]);
    let e = full_err(
        "interfaces = [\"qr-a\", \"qr-b\"]",
        "interfaces = [\"qr-a\", \"qr-q\"]",
    );
    names(&e, "steering.interfaces[1]", &["not an internal interface"]);
    let e = full_err(
        "interfaces = [\"qr-a\", \"qr-b\"]",
        "interfaces = [\"qr-a\", \"qr-a\"]",
    );
    names(&e, "steering.interfaces[1]", &["listed twice"]);
    let e = full_err(
        "interfaces = [\"qr-a\", \"qr-b\"]",
        "interfaces = [\"qr-a\", \"qr-fw\"]",
    );
    names(&e, "steering.nexthop", &["qr-fw", "steered"]);
    let e = full_err("nexthop = \"10.99.0.2\"\ngateway", "gateway");
    assert!(e.contains("nexthop"), "{e}");
    // Steering off: no interfaces, only the gateway's traffic.
    let r = DesiredState::parse(&full_with(
        "interfaces = [\"qr-a\", \"qr-b\"]",
        "interfaces = []",
    ))
    .expect("valid")
    .routers
    .remove(0);
    assert_eq!(r.generated_rule_count(), 3);
    // Gateway steering needs a gateway.
    let no_gateway = "[[router]]\nid = \"r1\"\nnamespace = \"n\"\n[[router.interface]]\nname = \"qr-a\"\naddress = \"10.0.1.1/24\"\n[[router.interface]]\nname = \"qr-fw\"\naddress = \"10.99.0.1/24\"\n[router.steering]\nnexthop = \"10.99.0.2\"\ngateway_nexthop = \"10.99.0.3\"\ninterfaces = [\"qr-a\"]\n";
    names(
        &err(no_gateway),
        "steering.gateway_nexthop",
        &["no gateway"],
    );
    let ok = no_gateway.replace("gateway_nexthop = \"10.99.0.3\"\n", "");
    DesiredState::parse(&ok).expect("steering without a gateway");
}

#[test]
fn invalid_firewall_rules_are_rejected() {
    let e = full_err(
        "protocol = \"icmp\"",
        "protocol = \"icmp\"\ndestination_ports = \"80\"",
    );
    names(
        &e,
        "firewall.rule[1].destination_ports",
        &["\"80\"", "tcp", "udp"],
    );
    let e = full_err("protocol = 47", "destination_ports = \"80\"");
    names(&e, "firewall.rule[3].destination_ports", &["tcp"]);
    for bad in [
        "\"2000-1000\"",
        "\"0-80\"",
        "\"0\"",
        "0",
        "\"70000\"",
        "\"1:\"",
        "\"a\"",
        "-1",
        "true",
    ] {
        let e = full_err(
            "destination_ports = 53",
            &format!("destination_ports = {bad}"),
        );
        names(&e, "firewall.rule[2].destination_ports", &[]);
    }
    for (ok, min, max) in [
        ("\"0:65535\"", 0, 65535),
        ("\"0-65535\"", 0, 65535),
        ("\" 7 : 9 \"", 7, 9),
        ("65535", 65535, 65535),
    ] {
        let r = DesiredState::parse(&full_with(
            "destination_ports = 53",
            &format!("destination_ports = {ok}"),
        ))
        .expect(ok)
        .routers
        .remove(0);
        let rule = &r.firewall.expect("firewall").rules[2];
        assert_eq!(rule.ports, Some(PortRange { min, max }), "{ok}");
    }
    for bad in ["\"sctp\"", "256", "-1", "\"TCP\"", "1.5"] {
        let e = full_err("protocol = 47", &format!("protocol = {bad}"));
        names(&e, "firewall.rule[3].protocol", &["protocol number 0-255"]);
    }
    let r = DesiredState::parse(&full_with("protocol = 47", "protocol = \"any\""))
        .expect("any")
        .routers
        .remove(0);
    assert_eq!(r.firewall.expect("firewall").rules[3].protocol, 0);
    let e = full_err("action = \"reject\"", "action = \"drop\"");
    names(&e, "firewall.rule[1].action", &["\"drop\"", "allow"]);
    let e = full_err("action = \"reject\"\n", "");
    names(&e, "firewall.rule[1].action", &["required"]);
    let e = full_err("default = \"allow\"", "default = \"accept\"");
    names(&e, "firewall.default", &["\"accept\""]);
    let e = full_err("source = \"10.0.0.0/24\"", "source = \"10.0.0.1/24\"");
    names(&e, "firewall.rule[1].source", &["host bits"]);
    let e = full_err(
        "description = \"fwaas rules\"",
        &format!("description = \"{}\"", "x".repeat(256)),
    );
    names(&e, "firewall.rule[0].description", &["255"]);
    let e = full_err("action = \"reject\"", "action = \"reject\"\nports = \"1\"");
    assert!(e.contains("ports"), "{e}");

    let max = router_common::MAX_FW_RULES as usize;
    let many = |n: usize| -> String {
        (0..n)
            .map(|_| "\n[[router.firewall.rule]]\naction = \"allow\"\n")
            .collect()
    };
    // FULL_EXAMPLE has 5 rules; they come right before the floating IPs.
    let at = FULL_EXAMPLE
        .find("\n[[router.floating_ip]]")
        .expect("floating ip");
    let with = |n: usize| format!("{}{}{}", &FULL_EXAMPLE[..at], many(n), &FULL_EXAMPLE[at..]);
    DesiredState::parse(&with(max - 5)).expect("exactly full");
    let e = err(&with(max - 4));
    names(
        &e,
        "firewall.rule",
        &[
            &format!("\"{}\"", max + 1),
            &format!("the {max} the fast path holds"),
        ],
    );
    // A firewall section alone: no rules, default deny.
    let r = DesiredState::parse(&format!("{SMALL_EXAMPLE}\n[router.firewall]\n"))
        .expect("valid")
        .routers
        .remove(0);
    assert_eq!(
        r.firewall,
        Some(Firewall {
            default_allow: false,
            rules: vec![]
        })
    );
}
