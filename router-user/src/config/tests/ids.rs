//! Neutron's ids: router ids that are UUIDs, floating IPs and firewall rules with ids.

use super::*;

const ROUTER_UUID: &str = "8604a0de-7f6b-409a-a47c-a1cc7bc77b2e";
const FIP_A: &str = "2f245a7b-796b-4f26-9cf9-9e82d248fda7";
const FIP_B: &str = "61cea855-49cb-4846-997d-801b70c71bdd";
const RULE_A: &str = "0b0e3c1c-8f6d-4d5e-a1c4-3f1d2b0a9c8e";

/// A router named as Neutron names it, with `body` after its interfaces.
fn neutron_router(body: &str) -> String {
    format!(
        r#"
[[router]]
id = "{ROUTER_UUID}"
namespace = "qrouter-{ROUTER_UUID}"

[router.gateway]
interface = "qg-4d5e6f70-81"
address = "198.18.0.2/24"
nexthop = "198.18.0.1"

[[router.interface]]
name = "qr-0a1b2c3d-4e"
address = "10.0.1.1/24"
{body}"#
    )
}

#[test]
fn a_router_may_be_named_by_its_neutron_uuid() {
    let state = DesiredState::parse(&neutron_router("")).expect("a UUID router id is valid");
    let r = &state.routers[0];
    assert_eq!(r.id, ROUTER_UUID);
    assert_eq!(r.namespace, format!("qrouter-{ROUTER_UUID}"));
    assert_eq!(r.interfaces[0].name, "qr-0a1b2c3d-4e");
    state.validate().expect("and validates as typed values");

    // 64 characters is the limit; one more is refused, naming the limit.
    let long = "a".repeat(64);
    let text = SMALL_EXAMPLE.replace("id = \"r1\"", &format!("id = \"{long}\""));
    DesiredState::parse(&text).expect("64 characters");
    let text = SMALL_EXAMPLE.replace("id = \"r1\"", &format!("id = \"{long}b\""));
    let e = err(&text);
    assert!(e.contains("must be 1-64 characters"), "{e}");
}

#[test]
fn floating_ips_and_firewall_rules_read_and_write_their_ids() {
    let text = neutron_router(&format!(
        r#"
[router.firewall]
default = "deny"

[[router.firewall.rule]]
id = "{RULE_A}"
action = "allow"
protocol = "tcp"
destination_ports = "22"

[[router.firewall.rule]]
action = "deny"

[[router.floating_ip]]
id = "{FIP_A}"
address = "198.18.0.10"
fixed = "10.0.1.5"

[[router.floating_ip]]
address = "198.18.0.11"
fixed = "10.0.1.6"
"#
    ));
    let state = DesiredState::parse(&text).expect("valid");
    let r = &state.routers[0];
    assert_eq!(r.floating_ips[0].id, Some(FIP_A.parse().expect("uuid")));
    assert_eq!(r.floating_ips[1].id, None, "no id: as before");
    let fw = r.firewall.as_ref().expect("firewall");
    assert_eq!(fw.rules[0].id, Some(RULE_A.parse().expect("uuid")));
    assert_eq!(fw.rules[1].id, None);
    // Written back and read again: the same state, ids included.
    let written = state.to_toml();
    assert!(written.contains(&format!("id = \"{FIP_A}\"")), "{written}");
    assert_eq!(DesiredState::parse(&written).expect("reads back"), state);
    // An id in upper case is the same id, written as Neutron writes it.
    let upper = text.replace(FIP_A, &FIP_A.to_uppercase());
    assert_eq!(DesiredState::parse(&upper).expect("valid"), state);
}

#[test]
fn ids_that_are_no_uuid_or_given_twice_are_refused() {
    let fip = |id: &str, address: &str, fixed: &str| {
        format!(
            "\n[[router.floating_ip]]\nid = \"{id}\"\naddress = \"{address}\"\nfixed = \"{fixed}\"\n"
        )
    };
    let e = err(&neutron_router(&fip("fip-1", "198.18.0.10", "10.0.1.5")));
    assert!(
        e.contains(".floating_ip[0].id = \"fip-1\": not a Neutron id (a UUID"),
        "{e}"
    );
    let twice = neutron_router(&format!(
        "{}{}",
        fip(FIP_A, "198.18.0.10", "10.0.1.5"),
        fip(FIP_A, "198.18.0.11", "10.0.1.6")
    ));
    let e = err(&twice);
    assert!(
        e.contains(&format!(
            ".floating_ip[1].id = \"{FIP_A}\": another floating IP of this router has this id"
        )),
        "{e}"
    );
    let other = neutron_router(&format!(
        "{}{}",
        fip(FIP_A, "198.18.0.10", "10.0.1.5"),
        fip(FIP_B, "198.18.0.11", "10.0.1.6")
    ));
    DesiredState::parse(&other).expect("two ids");

    let rule =
        |id: &str| format!("\n[[router.firewall.rule]]\nid = \"{id}\"\naction = \"allow\"\n");
    let rules = neutron_router(&format!(
        "\n[router.firewall]\ndefault = \"deny\"\n{}{}",
        rule(RULE_A),
        rule(RULE_A)
    ));
    let e = err(&rules);
    assert!(
        e.contains(&format!(
            ".firewall.rule[1].id = \"{RULE_A}\": another firewall rule of this router has this id"
        )),
        "{e}"
    );
    // The typed state gets the file's message.
    let mut state = DesiredState::parse(&other).expect("valid");
    let first = state.routers[0].floating_ips[0].id;
    state.routers[0].floating_ips[1].id = first;
    let typed = state.validate().expect_err("an id twice").to_string();
    assert!(
        typed.contains("another floating IP of this router has this id"),
        "{typed}"
    );
    assert_eq!(
        DesiredState::parse(&state.to_toml())
            .expect_err("written out too")
            .to_string(),
        typed
    );
}

#[test]
fn an_edit_of_a_file_keeps_what_an_id_does_not_touch() {
    let text = neutron_router(&format!(
        "\n[[router.floating_ip]]   # the web server\nid = \"{FIP_A}\"\naddress = \"198.18.0.10\"\nfixed = \"10.0.1.5\"\n"
    ));
    let mut state = DesiredState::parse(&text).expect("valid");
    state.routers[0].floating_ips.push(FloatingIp {
        address: ip("198.18.0.11"),
        fixed: ip("10.0.1.6"),
        id: Some(FIP_B.parse().expect("uuid")),
    });
    let edited = state.to_toml_over(&text);
    assert!(edited.contains("# the web server"), "{edited}");
    assert!(edited.contains(&format!("id = \"{FIP_B}\"")), "{edited}");
    assert_eq!(DesiredState::parse(&edited).expect("reads back"), state);
}
