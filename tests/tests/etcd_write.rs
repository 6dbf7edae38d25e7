//! Writing the cluster's desired state with routerctl (`docs/etcd.md`, "Writing the
//! desired state"): edits through etcd transactions that never lose each other, checked as
//! the nodes check them, and `--wait` returning once the nodes run the change.
//!
//! Every test starts its own etcd on loopback; the ones with nodes make their topologies
//! first, so the nodes stop (and tear their routers down) before the namespaces go.

use std::{
    process::Output,
    time::{Duration, Instant},
};

use router_tests::{
    etcd::{Etcd, Node, routerctl},
    topo::RouterTopology,
};
use router_user::{
    cluster::RunState,
    config::{DesiredState, Router},
};

/// A router with a gateway, written as a file's `[[router]]` (no namespace needed: nothing
/// runs it in the tests that use it).
fn paper_router(id: &str) -> Router {
    let text = format!(
        "[[router]]\nid = \"{id}\"\nnamespace = \"qrouter-{id}\"\n\
         [router.gateway]\ninterface = \"qg-a\"\naddress = \"198.18.0.2/24\"\nnexthop = \"198.18.0.1\"\n\
         [[router.interface]]\nname = \"qr-a\"\naddress = \"10.0.1.1/24\"\n"
    );
    DesiredState::parse(&text)
        .expect("a valid router")
        .routers
        .remove(0)
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The floating IPs of router `id` as stored.
fn stored_fips(etcd: &Etcd, id: &str) -> Vec<String> {
    let value = etcd
        .get(&etcd.keys.router(id))
        .expect("the router is stored");
    let router = Router::from_json(value.as_bytes()).expect("a valid router");
    router
        .floating_ips
        .iter()
        .map(|f| f.address.to_string())
        .collect()
}

/// Two operators edit the same router from the same read (`--read-revision`), at the same
/// time: exactly one wins; the other exits with the conflict code and nothing of its edit
/// is written. An apply from a stale read is refused the same way. An invalid router is
/// refused with the invalid code and writes nothing.
#[test]
fn two_edits_from_one_read_exactly_one_wins() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    etcd.put_router(&paper_router("r1"));
    let read = etcd.revision();
    let read_s = read.to_string();
    let fip = |address: &str, fixed: &str| -> std::process::Child {
        let routerctl = router_tests::routerd::routerd_path().with_file_name("routerctl");
        std::process::Command::new(routerctl)
            .args([
                "--etcd",
                &ep,
                "--read-revision",
                &read_s,
                "fip",
                "add",
                "r1",
            ])
            .args(["--address", address, "--fixed", fixed])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("routerctl")
    };
    let a = fip("198.18.0.10", "10.0.1.5");
    let b = fip("198.18.0.11", "10.0.1.6");
    let a = a.wait_with_output().expect("routerctl a");
    let b = b.wait_with_output().expect("routerctl b");
    let codes = [code(&a), code(&b)];
    assert!(
        codes == [0, 4] || codes == [4, 0],
        "one wins, one conflicts:\n{}\n{}",
        text(&a),
        text(&b)
    );
    let (won, lost, address) = if codes[0] == 0 {
        (&a, &b, "198.18.0.10")
    } else {
        (&b, &a, "198.18.0.11")
    };
    assert!(text(lost).contains("error code conflict"), "{}", text(lost));
    assert!(
        text(won).contains("written to etcd at revision"),
        "{}",
        text(won)
    );
    // Exactly the winner's floating IP; the store moved by one write only.
    assert_eq!(stored_fips(&etcd, "r1"), [address]);
    assert_eq!(etcd.revision(), read + 1);

    // The loser reads again (no --read-revision) and its edit goes through.
    let out = routerctl(&[
        "--etcd",
        &ep,
        "fip",
        "add",
        "r1",
        "--address",
        "198.18.0.12",
        "--fixed",
        "10.0.1.7",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stored_fips(&etcd, "r1").len(), 2);

    // An apply planned from the old read conflicts as well; nothing of it is written.
    let dir = std::env::temp_dir().join(router_tests::topo::unique("cloud"));
    std::fs::create_dir_all(&dir).expect("a directory");
    let file = dir.join("cloud.toml");
    let cloud = format!(
        "{}\n[placement]\nr1 = [\"n1\"]\n",
        paper_router("r1").to_toml()
    );
    std::fs::write(&file, &cloud).expect("the file");
    let file_s = file.to_string_lossy().into_owned();
    let before = etcd.revision();
    let out = routerctl(&["--etcd", &ep, "--read-revision", &read_s, "apply", &file_s]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("routers/r1"), "{}", text(&out));
    assert_eq!(etcd.revision(), before);
    assert!(etcd.get(&etcd.keys.placement("r1")).is_none());

    // A router created after the read is a conflict too: the file is the whole cloud, and
    // applying it would delete the new router unseen.
    let seen = etcd.revision();
    etcd.put_router(&paper_router("r2"));
    let seen_s = seen.to_string();
    let out = routerctl(&["--etcd", &ep, "--read-revision", &seen_s, "apply", &file_s]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("routers/r2 (created"), "{}", text(&out));
    etcd.delete(&etcd.keys.router("r2"));
    let before = etcd.revision();

    // An invalid router (a route through a next hop on no subnet) is refused, as routerd
    // refuses it: exit code 2, nothing written.
    let bad = cloud.replace(
        "[[router.interface]]",
        "[[router.route]]\ndestination = \"10.20.0.0/16\"\nnexthop = \"10.9.9.9\"\n\n[[router.interface]]",
    );
    std::fs::write(&file, &bad).expect("the file");
    let out = routerctl(&["--etcd", &ep, "apply", &file_s]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("nexthop"), "{}", text(&out));
    assert_eq!(etcd.revision(), before);
    let out = routerctl(&[
        "--etcd",
        &ep,
        "route",
        "add",
        "r1",
        "10.20.0.0/16",
        "10.9.9.9",
    ]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert_eq!(etcd.revision(), before);

    // The valid file applies in one transaction (one revision): the router (its floating
    // IPs dropped, as the file has none) and its placement; again, nothing changes.
    std::fs::write(&file, &cloud).expect("the file");
    let out = routerctl(&["--etcd", &ep, "apply", &file_s]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(etcd.revision(), before + 1);
    assert!(stored_fips(&etcd, "r1").is_empty());
    let out = routerctl(&["--etcd", &ep, "apply", &file_s]);
    assert!(text(&out).contains("unchanged"), "{}", text(&out));
    assert_eq!(etcd.revision(), before + 1);
    // `state` prints the cloud as a file apply takes back.
    let out = routerctl(&["--etcd", &ep, "state"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("[placement]") && shown.contains("r1 = [\"n1\"]"),
        "{shown}"
    );
    std::fs::write(&file, &shown).expect("the file");
    let out = routerctl(&["--etcd", &ep, "apply", &file_s]);
    assert!(text(&out).contains("unchanged"), "{}", text(&out));

    // A router created on a node must not exist yet; deleted, its placement goes too.
    let out = routerctl(&[
        "--etcd",
        &ep,
        "router",
        "add",
        "r1",
        "--namespace",
        "qrouter-x",
        "--node",
        "n2",
    ]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = routerctl(&["--etcd", &ep, "router", "del", "r1"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(etcd.get_prefix(&etcd.keys.all()).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

fn routerctl_ok(args: &[&str]) -> String {
    let out = routerctl(args);
    assert_eq!(code(&out), 0, "routerctl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--wait` returns once the nodes run the change: a router applied with its placement
/// runs on its node when apply returns; a floating IP added is in the node's fast path when
/// `fip add` returns; a router moved runs on the new node and is gone from the old one
/// when `router move` returns. A node that does not exist never applies: `--wait` gives up
/// after --timeout with exit code 8, naming it.
#[test]
fn wait_returns_when_the_nodes_run_the_change() {
    let topo = RouterTopology::build("xdp");
    let router = DesiredState::load(&topo.config)
        .expect("the topology's desired state")
        .routers
        .remove(0);
    let id = router.id.clone();
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let n1 = Node::start(&ep, "w1-");
    let n2 = Node::start(&ep, "w2-");
    let dir = std::env::temp_dir().join(router_tests::topo::unique("cloud"));
    std::fs::create_dir_all(&dir).expect("a directory");
    let file = dir.join("cloud.toml");
    std::fs::write(
        &file,
        format!(
            "{}\n[placement]\n\"{id}\" = [\"{}\"]\n",
            router.to_toml(),
            n1.name
        ),
    )
    .expect("the file");
    let out = routerctl_ok(&[
        "--etcd",
        &ep,
        "--wait",
        "--timeout",
        "20",
        "-f",
        "json",
        "apply",
        &file.to_string_lossy(),
    ]);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let revision = doc["items"]["revision"].as_i64().expect("a revision");
    assert_eq!(
        doc["items"]["applied"]["nodes"][0],
        n1.name.as_str(),
        "{doc}"
    );
    // Applied means applied: no waiting here.
    assert!(n1.runs(&id), "{id} runs on {} when apply returns", n1.name);
    let status = etcd.status(&n1.name, &id).expect("a status");
    assert!(status.revision >= revision && status.state == RunState::Running);

    let started = Instant::now();
    routerctl_ok(&[
        "--etcd",
        &ep,
        "--wait",
        "fip",
        "add",
        &id,
        "--address",
        "198.18.0.10",
        "--fixed",
        "10.0.1.5",
    ]);
    let took = started.elapsed();
    assert!(
        n1.floating_ips(&id).contains_key(&[198, 18, 0, 10]),
        "the floating IP is in {}'s fast path when fip add returns",
        n1.name
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    routerctl_ok(&[
        "--etcd", &ep, "--wait", "router", "move", &id, "--node", &n2.name,
    ]);
    assert!(n2.runs(&id), "{id} runs on {} when move returns", n2.name);
    assert!(n2.floating_ips(&id).contains_key(&[198, 18, 0, 10]));
    assert!(etcd.status(&n1.name, &id).is_none());
    assert!(!n1.pinned(&id), "{id} left {}", n1.name);

    // Nobody runs a node called ghost: the change is written, never applied.
    let out = routerctl(&[
        "--etcd",
        &ep,
        "--wait",
        "--timeout",
        "1",
        "router",
        "move",
        &id,
        "--node",
        "ghost",
    ]);
    assert_eq!(code(&out), 8, "{}", text(&out));
    assert!(
        text(&out).contains("node ghost") && text(&out).contains("down"),
        "{}",
        text(&out)
    );
    // Written all the same: --wait only waits.
    assert!(
        etcd.get(&etcd.keys.placement(&id))
            .is_some_and(|p| p.contains("ghost"))
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop((n1, n2));
    drop(topo);
}

/// `routerctl import neutron --etcd` stores the fixtures' routers, as the file import
/// writes them, placed on `--node`, in one transaction; the routers already there are left
/// alone; importing again writes nothing.
#[test]
fn a_neutron_import_is_written_to_etcd() {
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/neutron");
    let fixtures = fixtures.to_string_lossy().into_owned();
    let expected = DesiredState::load(std::path::Path::new(&format!("{fixtures}/expected.toml")))
        .expect("expected.toml");
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    etcd.put_router(&paper_router("other"));
    let before = etcd.revision();
    let out = routerctl(&[
        "--etcd", &ep, "import", "neutron", &fixtures, "--node", "net-1",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(etcd.revision(), before + 1, "one transaction");
    for router in &expected.routers {
        let stored = etcd
            .get(&etcd.keys.router(&router.id))
            .unwrap_or_else(|| panic!("router {} stored", router.id));
        assert_eq!(
            Router::from_json(stored.as_bytes()).as_ref(),
            Ok(router),
            "router {} as the file import writes it",
            router.id
        );
        assert_eq!(
            etcd.get(&etcd.keys.placement(&router.id)).as_deref(),
            Some(r#"{"nodes":["net-1"]}"#)
        );
    }
    assert!(etcd.get(&etcd.keys.router("other")).is_some());
    let out = routerctl(&[
        "--etcd", &ep, "import", "neutron", &fixtures, "--node", "net-1",
    ]);
    assert!(text(&out).contains("unchanged"), "{}", text(&out));
    assert_eq!(etcd.revision(), before + 1);
    // -o and --etcd together: refused, nothing written.
    let out = routerctl(&[
        "--etcd",
        &ep,
        "import",
        "neutron",
        &fixtures,
        "-o",
        "/nonexistent/x",
    ]);
    assert_eq!(code(&out), 2, "{}", text(&out));
}
