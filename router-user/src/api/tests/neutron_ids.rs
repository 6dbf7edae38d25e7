//! Floating IPs and firewall rules named by Neutron's ids: add with `may_exist`, delete
//! with `if_exists`, by id, by the old key, or both.

use super::*;

const FIP_A: &str = "2f245a7b-796b-4f26-9cf9-9e82d248fda7";
const FIP_B: &str = "61cea855-49cb-4846-997d-801b70c71bdd";
const RULE_A: &str = "0b0e3c1c-8f6d-4d5e-a1c4-3f1d2b0a9c8e";
const RULE_B: &str = "5a1d7c2e-3b4f-4e6a-8d9c-0f1e2d3c4b5a";

fn fip(address: &str, fixed: &str, id: &str) -> Value {
    json!({"op": "fip_create", "address": address, "fixed": fixed, "id": id})
}

fn with_may_exist(mut request: Value) -> Value {
    request["may_exist"] = json!(true);
    request
}

#[test]
fn a_floating_ip_is_created_by_id_and_again_with_may_exist() {
    let s = state();
    let s1 = changed(&s, fip("198.18.0.10", "10.0.1.5", FIP_A));
    assert_eq!(
        s1.routers[0].floating_ips[0].id,
        Some(FIP_A.parse().expect("uuid"))
    );
    // The same again: a conflict, or nothing to do with may_exist.
    let e = error(&s1, fip("198.18.0.10", "10.0.1.5", FIP_A));
    assert!(e.contains("(use --may-exist)"), "{e}");
    unchanged(&s1, with_may_exist(fip("198.18.0.10", "10.0.1.5", FIP_A)));
    // The id in upper case is the same id.
    unchanged(
        &s1,
        with_may_exist(fip("198.18.0.10", "10.0.1.5", &FIP_A.to_uppercase())),
    );
    // A different object under the same id or address: a conflict, may_exist or not.
    for (request, problem) in [
        (
            fip("198.18.0.11", "10.0.1.6", FIP_A),
            format!("floating IP id {FIP_A} exists on router \"r1\" as 198.18.0.10 -> 10.0.1.5"),
        ),
        (
            fip("198.18.0.10", "10.0.1.5", FIP_B),
            "floating IP 198.18.0.10 exists on router \"r1\" as 198.18.0.10 -> 10.0.1.5 (id 2f245a7b".into(),
        ),
        (
            json!({"op": "fip_create", "address": "198.18.0.10", "fixed": "10.0.1.5"}),
            "not with the id asked for".into(),
        ),
        (
            fip("198.18.0.10", "10.0.1.7", FIP_B),
            "already associated with 10.0.1.5".into(),
        ),
        (
            fip("198.18.0.12", "10.0.1.8", "not-a-uuid"),
            "floating_ip[1].id = \"not-a-uuid\": not a Neutron id".into(),
        ),
    ] {
        for request in [request.clone(), with_may_exist(request)] {
            let e = error(&s1, request.clone());
            assert!(e.contains(&problem), "{request}: {e}");
        }
    }
    // A floating IP without an id keeps today's idempotence.
    let plain = json!({"op": "fip_create", "address": "198.18.0.11", "fixed": "10.0.1.6"});
    let s2 = changed(&s1, plain.clone());
    unchanged(&s2, with_may_exist(plain));
    // fip_list shows the id of the one that has one, and no id key for the other.
    let listing = answer(&s2, json!({"op": "fip_list"}));
    assert_eq!(listing[0]["id"], json!(FIP_A));
    assert!(listing[1].get("id").is_none(), "{listing}");
}

#[test]
fn a_floating_ip_is_deleted_by_id_address_or_both() {
    let s = changed(&state(), fip("198.18.0.10", "10.0.1.5", FIP_A));
    let gone = changed(&s, json!({"op": "fip_delete", "id": FIP_A}));
    assert!(gone.routers[0].floating_ips.is_empty());
    assert_eq!(
        changed(
            &s,
            json!({"op": "fip_disassociate", "address": "198.18.0.10", "id": FIP_A})
        ),
        gone
    );
    assert_eq!(
        changed(&s, json!({"op": "fip_delete", "address": "198.18.0.10"})),
        gone
    );
    // Absent: an error, or nothing to do with if_exists.
    let e = error(&gone, json!({"op": "fip_delete", "id": FIP_A}));
    assert!(
        e.contains(&format!("router \"r1\" has no floating IP id {FIP_A}")),
        "{e}"
    );
    unchanged(
        &gone,
        json!({"op": "fip_delete", "id": FIP_A, "if_exists": true}),
    );
    // Both keys must name the same floating IP, if_exists or not.
    for if_exists in [false, true] {
        let e = error(
            &s,
            json!({"op": "fip_delete", "address": "198.18.0.10", "id": FIP_B, "if_exists": if_exists}),
        );
        assert!(e.contains("has no floating IP 198.18.0.10 with id"), "{e}");
    }
    let e = error(&s, json!({"op": "fip_delete"}));
    assert!(e.contains("by its address or its id"), "{e}");
}

fn rule(action: &str, id: Option<&str>) -> Value {
    let mut r =
        json!({"op": "fw_rule_add", "action": action, "protocol": "tcp", "destination_ports": 22});
    if let Some(id) = id {
        r["id"] = json!(id);
    }
    r
}

#[test]
fn a_firewall_rule_is_added_by_id_and_again_with_may_exist() {
    let s = changed(&state(), json!({"op": "fw_default", "policy": "deny"}));
    let s1 = changed(&s, rule("allow", Some(RULE_A)));
    let s2 = changed(&s1, rule("deny", Some(RULE_B)));
    let rules = &s2.routers[0].firewall.as_ref().expect("firewall").rules;
    assert_eq!(rules[1].id, Some(RULE_B.parse().expect("uuid")));
    let e = error(&s2, rule("allow", Some(RULE_A)));
    assert!(e.contains("has this firewall rule already: rule 1"), "{e}");
    unchanged(&s2, with_may_exist(rule("allow", Some(RULE_A))));
    let mut at_one = with_may_exist(rule("allow", Some(RULE_A)));
    at_one["position"] = json!(1);
    unchanged(&s2, at_one.clone());
    // The same id elsewhere or with other values: a conflict.
    at_one["position"] = json!(2);
    let e = error(&s2, at_one);
    assert!(
        e.contains("a different firewall rule with this id: rule 1"),
        "{e}"
    );
    let e = error(&s2, with_may_exist(rule("reject", Some(RULE_A))));
    assert!(e.contains("a different firewall rule with this id"), "{e}");
    // Without an id: may_exist finds an identical rule without one.
    let s3 = changed(&s2, rule("reject", None));
    unchanged(&s3, with_may_exist(rule("reject", None)));
    let e = error(
        &s3,
        json!({"op": "fw_rule_add", "action": "allow", "id": RULE_A, "protocol": "tcp", "destination_ports": 22, "position": 7}),
    );
    assert!(e.contains("position 7 is out of range"), "{e}");
    // fw_rule_list shows the ids.
    let listing = answer(&s3, json!({"op": "fw_rule_list"}));
    assert_eq!(listing["rules"][0]["id"], json!(RULE_A));
    assert!(listing["rules"][2].get("id").is_none(), "{listing}");
}

#[test]
fn a_firewall_rule_is_deleted_by_id_position_or_both() {
    let s = changed(&state(), json!({"op": "fw_default", "policy": "deny"}));
    let s = changed(&s, rule("allow", Some(RULE_A)));
    let s = changed(&s, rule("deny", Some(RULE_B)));
    let only_a = changed(&s, json!({"op": "fw_rule_del", "id": RULE_B}));
    assert_eq!(
        changed(&s, json!({"op": "fw_rule_del", "position": 2})),
        only_a
    );
    assert_eq!(
        changed(
            &s,
            json!({"op": "fw_rule_del", "position": 2, "id": RULE_B})
        ),
        only_a
    );
    let e = error(
        &s,
        json!({"op": "fw_rule_del", "position": 1, "id": RULE_B}),
    );
    assert!(e.contains("that position holds rule 1 (id 0b0e3c1c"), "{e}");
    let e = error(&only_a, json!({"op": "fw_rule_del", "id": RULE_B}));
    assert!(
        e.contains(&format!("has no firewall rule with id {RULE_B}")),
        "{e}"
    );
    unchanged(
        &only_a,
        json!({"op": "fw_rule_del", "id": RULE_B, "if_exists": true}),
    );
    unchanged(
        &only_a,
        json!({"op": "fw_rule_del", "position": 5, "if_exists": true}),
    );
    // With no firewall at all, if_exists still succeeds.
    unchanged(
        &state(),
        json!({"op": "fw_rule_del", "id": RULE_B, "if_exists": true}),
    );
    let e = error(&state(), json!({"op": "fw_rule_del", "position": 1}));
    assert!(e.contains("it has no firewall"), "{e}");
}
