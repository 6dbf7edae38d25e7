use super::*;
use crate::{
    api::ErrorCode,
    cluster::keys::DEFAULT_PREFIX,
    node::tests::{router, router_with},
};

fn keys() -> Keys {
    Keys::new(DEFAULT_PREFIX)
}

/// A store with `routers` placed on `node`, each key at its own revision.
fn store(routers: &[(&Router, &str)]) -> Snapshot {
    let mut s = Snapshot::default();
    let mut revision = 1;
    for (r, node) in routers {
        revision += 1;
        s.put(
            &keys(),
            keys().router(&r.id).as_bytes(),
            r.to_json().as_bytes(),
            revision,
        );
        revision += 1;
        let p = Placement {
            nodes: vec![node.to_string()],
        };
        s.put(
            &keys(),
            keys().placement(&r.id).as_bytes(),
            p.to_json().as_bytes(),
            revision,
        );
    }
    s.revision = revision;
    s
}

fn code(e: Error) -> ErrorCode {
    match e {
        Error::Api(a) => a.code,
        other => panic!("not an API error: {other}"),
    }
}

#[test]
fn an_edit_is_planned_on_the_stored_router_and_guards_what_it_read() {
    let r1 = router("r1", "ns1");
    let s = store(&[(&r1, "n1")]);
    let request = Request::FipCreate {
        router: "r1".into(),
        address: "10.0.1.77".into(),
        fixed: "10.0.1.5".into(),
        id: None,
        may_exist: false,
    };
    // The floating IP is on no external subnet (r1 has no gateway): refused as routerd
    // refuses it, nothing planned.
    assert_eq!(
        code(plan_request(&s, &keys(), &request, None).expect_err("refused")),
        ErrorCode::Invalid
    );
    let route = Request::RouteAdd {
        router: "r1".into(),
        destination: "10.20.0.0/16".into(),
        nexthop: "10.0.1.254".into(),
        table: None,
        may_exist: false,
    };
    let change = plan_request(&s, &keys(), &route, None).expect("planned");
    assert_eq!(change.written_keys(), [keys().router("r1")]);
    assert_eq!(
        change.guards,
        BTreeMap::from([(keys().router("r1"), 2), (keys().placement("r1"), 3)])
    );
    assert_eq!(change.targets["r1"].before, ["n1"]);
    assert_eq!(change.targets["r1"].after, ["n1"]);
    // A new router must not exist: its keys are guarded as absent.
    let create = Request::RouterCreate {
        router: "r2".into(),
        namespace: "ns2".into(),
        mode: None,
        may_exist: false,
    };
    let change = plan_request(&s, &keys(), &create, Some("n2")).expect("planned");
    assert_eq!(change.guards[&keys().router("r2")], 0);
    assert_eq!(change.guards[&keys().placement("r2")], 0);
    assert_eq!(change.targets["r2"].after, ["n2"]);
    // Deleting takes the placement with it.
    let delete = Request::RouterDelete {
        router: "r1".into(),
        if_exists: false,
    };
    let change = plan_request(&s, &keys(), &delete, None).expect("planned");
    assert_eq!(
        change.writes,
        BTreeMap::from([(keys().router("r1"), None), (keys().placement("r1"), None)])
    );
    assert!(change.targets["r1"].after.is_empty());
}

#[test]
fn a_change_a_node_would_refuse_is_refused_before_it_is_written() {
    let r1 = router("r1", "ns1");
    let r2 = router("r2", "ns2");
    let s = store(&[(&r1, "n1"), (&r2, "n2")]);
    // r0 would take ns1 on n1 from r1 (r0 comes first in id order): refused.
    let create = Request::RouterCreate {
        router: "r0".into(),
        namespace: "ns1".into(),
        mode: None,
        may_exist: false,
    };
    let e = plan_request(&s, &keys(), &create, Some("n1")).expect_err("clash");
    assert!(e.to_string().contains("namespace ns1"), "{e}");
    // On another node it fits; placed nowhere it fits too.
    assert!(plan_request(&s, &keys(), &create, Some("n2")).is_ok());
    assert!(plan_request(&s, &keys(), &create, None).is_ok());
    // Moving r2 next to a router with its namespace is refused; a bad node name too.
    let r3 = router("r3", "ns2");
    let s = store(&[(&r1, "n1"), (&r2, "n2"), (&r3, "n3")]);
    assert!(plan_move(&s, &keys(), "r3", &["n2".into()]).is_err());
    assert!(plan_move(&s, &keys(), "r3", &["a/b".into()]).is_err());
    assert_eq!(
        code(plan_move(&s, &keys(), "r9", &["n1".into()]).expect_err("no r9")),
        ErrorCode::NotFound
    );
    let moved = plan_move(&s, &keys(), "r3", &["n1".into()]).expect("fits on n1");
    assert_eq!(moved.written_keys(), [keys().placement("r3")]);
    assert_eq!(moved.targets["r3"].before, ["n3"]);
    assert_eq!(moved.targets["r3"].after, ["n1"]);
}

#[test]
fn apply_writes_what_differs_and_deletes_what_the_file_lacks() {
    let r1 = router("r1", "ns1");
    let r2 = router("r2", "ns2");
    let s = store(&[(&r1, "n1"), (&r2, "n2")]);
    let text = format!(
        "{}\n{}\n[placement]\nr1 = [\"n1\"]\nr3 = [\"n3\"]\n",
        r1.to_toml(),
        router_with(
            "r3",
            "ns3",
            "[[router.route]]\ndestination = \"10.20.0.0/16\"\nnexthop = \"10.0.1.254\"\n"
        )
        .to_toml()
    );
    let cloud = Cloud::parse(&text).expect("a cloud file");
    assert_eq!(Cloud::parse(&cloud.to_toml()), Ok(cloud.clone()));
    let change = plan_apply(&s, &keys(), &cloud).expect("planned");
    // r1 unchanged; r2 deleted with its placement; r3 new.
    assert_eq!(
        change.written_keys(),
        [
            keys().placement("r2"),
            keys().placement("r3"),
            keys().router("r2"),
            keys().router("r3"),
        ]
    );
    assert!(change.whole);
    assert_eq!(change.guards.len(), 4);
    // Applied again on what it wrote: nothing to do.
    let mut after = s.clone();
    for (key, value) in &change.writes {
        match value {
            Some(v) => after.put(&keys(), key.as_bytes(), v.as_bytes(), 20),
            None => after.delete(&keys(), key.as_bytes()),
        }
    }
    assert!(
        plan_apply(&after, &keys(), &cloud)
            .expect("planned")
            .is_empty()
    );
    // A placement of a router the file does not have, and an invalid router, are refused.
    assert!(Cloud::parse("[placement]\nr9 = [\"n1\"]\n").is_err());
    let bad = text.replace("10.0.1.254", "10.9.9.9");
    assert!(Cloud::parse(&bad).is_err());
}

#[test]
fn an_import_puts_its_routers_and_leaves_the_others() {
    let r1 = router("r1", "ns1");
    let r2 = router("r2", "ns2");
    let s = store(&[(&r1, "n1"), (&r2, "n2")]);
    let imported = DesiredState {
        routers: vec![r1.clone(), router("r3", "ns3")],
    };
    let change = plan_merge(&s, &keys(), &imported, Some("n1")).expect("planned");
    // r1 is as stored and placed on n1 already: only r3 is written, and placed.
    assert_eq!(
        change.written_keys(),
        [keys().placement("r3"), keys().router("r3")]
    );
    assert_eq!(change.guards.len(), 4);
    // Without a node, r3 is stored unplaced; r1 keeps its placement.
    let change = plan_merge(&s, &keys(), &imported, None).expect("planned");
    assert_eq!(change.written_keys(), [keys().router("r3")]);
    // Placed with r2 on n2, whose namespace it takes: refused.
    let clash = DesiredState {
        routers: vec![router("r0", "ns2")],
    };
    assert!(plan_merge(&s, &keys(), &clash, Some("n2")).is_err());
}
