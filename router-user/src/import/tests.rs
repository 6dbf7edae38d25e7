//! The Neutron import on the fixtures of `tests/fixtures/neutron/`: two routers as the
//! openstack client prints them, the desired state they give (`expected.toml`), and what
//! the import refuses.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;
use crate::config::{DesiredState, Mode};

const ROUTER_A: &str = "de2ba9c8-cf2e-41df-8b64-441c516b64ae";
const ROUTER_B: &str = "bc322bd5-6359-47d4-9926-363fe6a11024";
const SUBNET_A2: &str = "05ec9f85-fcc0-4749-bb13-17a0006a6bd3";
const PORT_A1: &str = "8b3237b9-c071-457d-8366-df32e30b4ea9";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/neutron")
}

fn expected() -> String {
    let path = fixtures().join("expected.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every fixture file: (name, document).
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("the fixtures")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a fixture");
            let name = p
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            (name, serde_json::from_str(&text).expect("JSON"))
        })
        .collect()
}

/// The fixtures, `edit`ed, as objects.
fn objects_with(
    edit: impl FnOnce(&mut Vec<(String, Value)>),
) -> Result<NeutronObjects, crate::Error> {
    let mut docs = documents();
    edit(&mut docs);
    let mut objects = NeutronObjects::default();
    for (name, doc) in &docs {
        objects.add_document(name, doc)?;
    }
    Ok(objects)
}

fn document<'a>(docs: &'a mut [(String, Value)], name: &str) -> &'a mut Value {
    &mut docs
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .1
}

/// The import's error for the fixtures `edit`ed.
fn refused(edit: impl FnOnce(&mut Vec<(String, Value)>)) -> String {
    let objects = match objects_with(edit) {
        Ok(objects) => objects,
        Err(e) => return e.to_string(),
    };
    import(&objects, &ImportOptions::default())
        .expect_err("the import refuses it")
        .to_string()
}

#[test]
fn the_fixtures_import_as_the_expected_file_and_round_trip() {
    let objects = NeutronObjects::load(&fixtures()).expect("the fixtures read");
    let imported = import(&objects, &ImportOptions::default()).expect("they import");
    let text = imported.state.to_toml();
    assert_eq!(
        text,
        expected(),
        "the import's file differs from expected.toml"
    );
    // The file reads back as the same state: nothing the import decided is lost in TOML.
    let parsed = DesiredState::parse(&text).expect("the file is a valid desired state");
    assert_eq!(parsed, imported.state);
    let state = &imported.state;
    assert_eq!(state.routers.len(), 2);
    let a = state.router(ROUTER_A).expect("router A");
    assert_eq!(a.namespace, format!("qrouter-{ROUTER_A}"));
    assert_eq!(a.mode, Mode::Tc);
    let names: Vec<&str> = a.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["qr-8b3237b9-c0", "qr-b63aad80-4b"]);
    let gateway = a.gateway.as_ref().expect("router A's gateway");
    assert_eq!(gateway.interface, "qg-838cce57-83");
    assert!(gateway.snat);
    assert_eq!(
        a.floating_ips[0].id.map(|id| id.to_string()).as_deref(),
        Some("6df9f3b1-1e3e-468e-a7ae-7205b0f20d66")
    );
    let b = state.router(ROUTER_B).expect("router B");
    let gateway = b.gateway.as_ref().expect("router B's gateway");
    assert!(!gateway.snat);
    assert_eq!(gateway.subnets.len(), 1, "two external subnets");
    assert_eq!(b.routes.len(), 1, "its extra route");
    // What IPv4 cannot hold is said, object by object.
    let skipped = imported.skipped.join("\n");
    for expected in [
        "external address 2001:db8::3a (subnet 3406b7ae-3459-46e5-a5eb-2fc44f6e57a5): IPv6: skipped",
        "port 862e31d0-a517-438d-bc7d-ac26bcacafd3: fd12:3456:789a::1 (subnet f8052fe1-3ad4-4072-a3fb-d5efbb5e0e52): IPv6 only: interface skipped",
        "floating IP 2c7990c7-bbfa-4fa3-a122-1b8e710450aa (172.24.4.30): not associated",
    ] {
        assert!(
            skipped.contains(expected),
            "{expected:?} not in:\n{skipped}"
        );
    }
    assert_eq!(imported.skipped.len(), 3, "{skipped}");
}

#[test]
fn one_document_and_a_directory_give_the_same_state() {
    let from_directory = NeutronObjects::load(&fixtures()).expect("the fixtures read");
    let all: Vec<Value> = documents().into_iter().map(|(_, doc)| doc).collect();
    let mut one = NeutronObjects::default();
    one.add_json("neutron.json", &Value::Array(all).to_string())
        .expect("one document");
    assert_eq!(one, from_directory);
    // Read twice, every object is kept once.
    let mut twice = from_directory.clone();
    for (name, doc) in documents() {
        twice
            .add_document(&name, &doc)
            .expect("the same objects again");
    }
    assert_eq!(twice, from_directory);
}

#[test]
fn routers_may_be_chosen_and_get_the_mode_asked_for() {
    let objects = NeutronObjects::load(&fixtures()).expect("the fixtures read");
    let options = ImportOptions {
        mode: Mode::Xdp,
        routers: vec![ROUTER_B.into()],
    };
    let imported = import(&objects, &options).expect("router B alone");
    assert_eq!(imported.state.routers.len(), 1);
    assert_eq!(imported.state.routers[0].id, ROUTER_B);
    assert_eq!(imported.state.routers[0].mode, Mode::Xdp);
    let e = import(
        &objects,
        &ImportOptions {
            routers: vec!["6e2f1c3a-0b7d-4f6e-9a51-2c3d4e5f6a7b".into()],
            ..ImportOptions::default()
        },
    )
    .expect_err("a router the input lacks");
    assert!(
        e.to_string().contains(
            "router 6e2f1c3a-0b7d-4f6e-9a51-2c3d4e5f6a7b: not in the input (add `openstack router show"
        ),
        "{e}"
    );
}

#[test]
fn what_cannot_be_mapped_is_refused_naming_the_object() {
    // A subnet the mapping needs is missing.
    let e = refused(|docs| docs.retain(|(n, _)| *n != format!("subnet-{SUBNET_A2}.json")));
    assert!(
        e.contains(&format!(
            "router {ROUTER_A} port b63aad80-4b5e-414b-9a35-1b62324c9000: subnet {SUBNET_A2} of 10.0.1.1 is not in the input (add `openstack subnet show {SUBNET_A2} -f json`)"
        )),
        "{e}"
    );
    // A port with two IPv4 subnets: a router interface here has one address.
    let e = refused(|docs| {
        let ports = document(docs, &format!("ports-{ROUTER_A}.json"));
        let port = ports
            .as_array_mut()
            .expect("a list")
            .iter_mut()
            .find(|p| p["ID"] == PORT_A1)
            .expect("port A1");
        port["Fixed IP Addresses"]
            .as_array_mut()
            .expect("fixed IPs")
            .push(json!({"subnet_id": SUBNET_A2, "ip_address": "10.0.1.2"}));
    });
    assert!(
        e.contains(&format!(
            "router {ROUTER_A} port {PORT_A1}: has 2 IPv4 addresses"
        )),
        "{e}"
    );
    // An external subnet without a gateway: no route out.
    let e = refused(|docs| {
        document(docs, "subnet-afce6dfe-b614-4ea5-95e0-957e81f276f3.json")["gateway_ip"] =
            Value::Null;
    });
    assert!(
        e.contains(
            "subnet afce6dfe-b614-4ea5-95e0-957e81f276f3: external subnet 172.24.4.0/24 of router"
        ) && e.contains("has no IPv4 gateway_ip"),
        "{e}"
    );
    // The gateway port is missing.
    let e = refused(|docs| {
        document(docs, &format!("ports-{ROUTER_A}.json"))
            .as_array_mut()
            .expect("a list")
            .retain(|p| p["Device Owner"] != "network:router_gateway");
    });
    assert!(
        e.contains(&format!(
            "router {ROUTER_A}: its gateway port (device_owner network:router_gateway) is not in the input"
        )),
        "{e}"
    );
    // A floating IP list without --long has no router.
    let e = refused(|docs| {
        for fip in document(docs, "floating-ips.json")
            .as_array_mut()
            .expect("a list")
        {
            fip.as_object_mut().expect("a row").remove("Router");
        }
    });
    assert!(
        e.contains("floating IP 6df9f3b1-1e3e-468e-a7ae-7205b0f20d66 (floating-ips.json): has no router: list floating IPs with `openstack floating ip list --long`"),
        "{e}"
    );
    // A port list without --long has no device owner.
    let e = refused(|docs| {
        for port in document(docs, &format!("ports-{ROUTER_B}.json"))
            .as_array_mut()
            .expect("a list")
        {
            port.as_object_mut().expect("a row").remove("Device Owner");
        }
    });
    assert!(
        e.contains("has no device_owner: list ports with `openstack port list --long`"),
        "{e}"
    );
    // Something that is none of the four.
    let e = refused(|docs| {
        docs.push((
            "network.json".into(),
            json!({"id": "775d096d-0f0f-45fa-8ee1-4c1fd194910b", "name": "provider", "router:external": true}),
        ));
    });
    assert!(
        e.contains("object 775d096d-0f0f-45fa-8ee1-4c1fd194910b (network.json): not a router"),
        "{e}"
    );
    // A structured field printed as text by an old client.
    let e = refused(|docs| {
        document(docs, &format!("router-{ROUTER_B}.json"))["external_gateway_info"] =
            json!("network_id='775d096d', enable_snat='False'");
    });
    assert!(
        e.contains(&format!(
            "router {ROUTER_B} (router-{ROUTER_B}.json): external_gateway_info is printed as text"
        )),
        "{e}"
    );
    // The same object twice, differently.
    let e = refused(|docs| {
        let mut other = document(docs, &format!("router-{ROUTER_B}.json")).clone();
        other["routes"] = json!([]);
        docs.push(("again.json".into(), other));
    });
    assert!(
        e.contains(&format!(
            "router {ROUTER_B} (again.json): given twice, differently"
        )),
        "{e}"
    );
    // A mapped state that breaks a rule of the desired state gets the file's message.
    let e = refused(|docs| {
        document(docs, "floating-ips.json")[0]["Fixed IP Address"] = json!("192.0.2.7");
    });
    assert!(
        e.contains(&format!(
            "router[1] (id \"{ROUTER_A}\").floating_ip[0].fixed = \"192.0.2.7\": is on no internal subnet"
        )),
        "{e}"
    );
}

#[test]
fn a_router_without_interfaces_info_needs_its_ports_device_ids() {
    // An older client's router show lists no interfaces: a `port list` row cannot be told
    // to be its, and the import says so rather than leave the interface out.
    let e = refused(|docs| {
        document(docs, &format!("router-{ROUTER_A}.json"))
            .as_object_mut()
            .expect("an object")
            .remove("interfaces_info");
    });
    assert!(
        e.contains(&format!(
            "port {PORT_A1}: a router interface without a device id"
        )) && e.contains(&format!("give `openstack port show {PORT_A1} -f json`")),
        "{e}"
    );
    // With `port show` (device id) for its interface ports, it imports the same.
    let objects = objects_with(|docs| {
        document(docs, &format!("router-{ROUTER_A}.json"))
            .as_object_mut()
            .expect("an object")
            .remove("interfaces_info");
        let rows: Vec<Value> = document(docs, &format!("ports-{ROUTER_A}.json"))
            .as_array()
            .expect("a list")
            .clone();
        for row in rows {
            docs.push((
                format!("port-{}.json", row["ID"].as_str().expect("an id")),
                json!({
                    "id": row["ID"], "device_owner": row["Device Owner"],
                    "device_id": ROUTER_A, "fixed_ips": row["Fixed IP Addresses"],
                    "mac_address": row["MAC Address"], "name": "", "status": "ACTIVE",
                }),
            ));
        }
    })
    .expect("the objects read");
    let imported = import(&objects, &ImportOptions::default()).expect("it imports");
    assert_eq!(imported.state.to_toml(), expected());
}
