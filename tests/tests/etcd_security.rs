//! etcd with TLS, client certificates and auth (`docs/etcd.md`, "Security"): each node acts
//! as an etcd user of its own name (its certificate's common name) that reads the desired
//! state and writes only its own record and statuses; the operator's user writes routers
//! and placements. A node's credentials run its routers and cannot change the desired
//! state or another node's keys.

use router_tests::{
    etcd::{Etcd, Node, routerctl, wait_until},
    pki,
    topo::{RouterTopology, unique},
};
use router_user::config::DesiredState;
use std::time::Duration;

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// routerctl as etcd user `user`.
fn routerctl_as(etcd: &Etcd, user: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--etcd".to_string(), etcd.endpoint()];
    all.extend(pki::args(&etcd.credentials(user)));
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    routerctl(&all)
}

#[test]
fn a_node_runs_its_routers_but_cannot_change_the_desired_state() {
    let topo = RouterTopology::build("xdp");
    let router = DesiredState::load(&topo.config)
        .expect("the topology's desired state")
        .routers
        .remove(0);
    let id = router.id.clone();
    let (n1, n2) = (unique("s1-"), unique("s2-"));
    let etcd = Etcd::start_secure(&[n1.clone(), n2.clone()]);
    let ep = etcd.endpoint();
    assert!(ep.starts_with("https://"), "{ep}");

    // Without a client certificate etcd does not take the connection.
    let ca = etcd.credentials("root").ca.expect("the CA");
    let out = routerctl(&[
        "--etcd",
        &ep,
        "--etcd-ca",
        &ca.to_string_lossy(),
        "node",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let node1 = Node::start_as(&ep, &n1, &pki::args(&etcd.credentials(&n1)));
    let node2 = Node::start_as(&ep, &n2, &pki::args(&etcd.credentials(&n2)));

    // The operator places the router on n1; n1 runs it, with its own credentials.
    let dir = std::env::temp_dir().join(unique("cloud"));
    std::fs::create_dir_all(&dir).expect("a directory");
    let file = dir.join("cloud.toml");
    std::fs::write(
        &file,
        format!("{}\n[placement]\n\"{id}\" = [\"{n1}\"]\n", router.to_toml()),
    )
    .expect("the file");
    let out = routerctl_as(
        &etcd,
        "operator",
        &[
            "--wait",
            "--timeout",
            "20",
            "apply",
            &file.to_string_lossy(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        node1.log_text()
    );
    assert!(node1.runs(&id));

    // n1's credentials cannot change the desired state: refused by etcd (exit code 1),
    // nothing written.
    let before = etcd.revision();
    let out = routerctl_as(
        &etcd,
        &n1,
        &[
            "fip",
            "add",
            &id,
            "--address",
            "198.18.0.10",
            "--fixed",
            "10.0.1.5",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).to_lowercase().contains("permission denied"),
        "{}",
        text(&out)
    );
    // Nor another node's record or status, nor a router or placement directly; its own
    // status key it may write.
    let status = r#"{"revision":1,"state":"running","error":null}"#;
    for key in [
        etcd.keys.status(&n2, &id),
        etcd.keys.node(&n2),
        etcd.keys.router(&id),
        etcd.keys.placement(&id),
    ] {
        let refused = etcd.put_as(&n1, &key, status);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_lowercase().contains("permission denied")),
            "{n1} writing {key}: {refused:?}"
        );
    }
    assert!(
        etcd.put_as(&n2, &etcd.keys.status(&n1, &id), status)
            .is_err()
    );
    assert_eq!(etcd.revision(), before, "nothing written");
    assert!(
        etcd.put_as(&n1, &etcd.keys.status(&n1, "probe"), status)
            .is_ok()
    );

    // The operator's edit reaches n1's fast path; the nodes are listed, alive.
    let out = routerctl_as(
        &etcd,
        "operator",
        &[
            "--wait",
            "fip",
            "add",
            &id,
            "--address",
            "198.18.0.10",
            "--fixed",
            "10.0.1.5",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(node1.floating_ips(&id).contains_key(&[198, 18, 0, 10]));
    wait_until(
        "both nodes alive in node list",
        Duration::from_secs(10),
        || {
            let out = routerctl_as(&etcd, "operator", &["node", "list", "-f", "json"]);
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let alive = |n: &str| {
                doc["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|i| i["node"] == n && i["alive"] == true))
            };
            alive(&n1) && alive(&n2)
        },
        || node2.log_text(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop((node1, node2));
    drop(topo);
}
