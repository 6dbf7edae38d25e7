//! Many nodes following one desired state in a real etcd (`docs/etcd.md`): each routerd
//! runs the routers placed on it, a change reaches only its node, a router moves between
//! nodes, etcd going away costs no packet and no map write, a node stopped across a
//! compaction converges, a dead node leaves the node list within its lease's TTL.
//!
//! Every test starts its own etcd (`router_tests::etcd::Etcd`, loopback ports free for the
//! run) and its own routerd nodes, each with its own pin root, run and state directories,
//! in namespaces of its own. The topologies are made before the nodes, so the nodes stop
//! (and tear their routers down) before the namespaces go: a running routerd binds a
//! namespace deleted under its router again. The etcd outage lasts [`outage`] (ETCD_TEST_OUTAGE_SECS, 5 s by
//! default; 30 for the full-length run).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use router_tests::{
    etcd::{Etcd, Node, node_list, try_node_list, wait_until},
    probe::UdpStream,
    topo::{EXT_HOST, RouterTopology},
    traffic,
};
use router_user::{
    cluster::{DEFAULT_LEASE_TTL, RunState},
    config::{DesiredState, FloatingIp, Router},
};

const FIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const VM_A_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const SETTLE: Duration = Duration::from_secs(20);

/// How long etcd stays away in the outage test: ETCD_TEST_OUTAGE_SECS, or 5 s.
fn outage() -> Duration {
    let secs = std::env::var("ETCD_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5u64);
    Duration::from_secs(secs.min(50))
}

/// A router topology (gateway, two internal ports, a VM on each) and its router as the
/// desired state declares it.
fn router_topology() -> (RouterTopology, Router) {
    let topo = RouterTopology::build("xdp");
    let state = DesiredState::load(&topo.config).expect("the topology's desired state");
    let router = state.routers.into_iter().next().expect("one router");
    (topo, router)
}

fn with_fip(router: &Router) -> Router {
    let mut r = router.clone();
    r.floating_ips.push(FloatingIp {
        address: FIP,
        fixed: VM_A_ADDR,
        id: None,
    });
    r
}

/// `(nodes running, node alive)` by node name, from `routerctl node list -f json`.
fn listed(etcd: &Etcd) -> Vec<(String, bool, Vec<String>)> {
    node_list(&etcd.endpoint())
        .into_iter()
        .map(|n| {
            let running = n["running"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (
                n["node"].as_str().unwrap_or_default().to_string(),
                n["alive"].as_bool().unwrap_or(false),
                running,
            )
        })
        .collect()
}

fn applied_count(node: &Node) -> usize {
    node.log_text().matches("applied;").count()
}

/// Three nodes side by side, a router each; a floating IP written to etcd for one router
/// reaches that router's fast path on its node (by traffic and in its map) and no other
/// node writes anything; `node list` shows the three; the local API answers queries and
/// refuses edits.
#[test]
fn three_nodes_run_their_routers_and_a_change_reaches_only_its_node() {
    let topologies: Vec<(RouterTopology, Router)> = (0..3).map(|_| router_topology()).collect();
    let etcd = Etcd::start();
    let nodes: Vec<Node> = ["n1-", "n2-", "n3-"]
        .iter()
        .map(|n| Node::start(&etcd.endpoint(), n))
        .collect();
    for ((_, router), node) in topologies.iter().zip(&nodes) {
        etcd.put_router(router);
        let at = etcd.place(&router.id, &[&node.name]);
        etcd.wait_running(&node.name, &router.id, at, SETTLE);
        node.wait_runs(&router.id, SETTLE);
    }
    for ((topo, router), node) in topologies.iter().zip(&nodes) {
        assert!(
            traffic::ping(&topo.vm_a_ns, EXT_HOST, 2),
            "router {} on {} forwards",
            router.id,
            node.name
        );
        // Each router runs on its node only.
        for other in nodes.iter().filter(|n| n.name != node.name) {
            assert!(!other.pinned(&router.id), "{} on {}", router.id, other.name);
        }
    }
    let list = listed(&etcd);
    for ((_, router), node) in topologies.iter().zip(&nodes) {
        assert!(
            list.iter().any(|(name, alive, running)| *name == node.name
                && *alive
                && running == &vec![router.id.clone()]),
            "node list: {list:?}"
        );
    }

    // A floating IP for the second router.
    let (topo2, router2) = &topologies[1];
    let logs: Vec<usize> = nodes.iter().map(|n| n.log_text().len()).collect();
    let before: Vec<usize> = nodes.iter().map(applied_count).collect();
    let at = etcd.put_router(&with_fip(router2));
    etcd.wait_running(&nodes[1].name, &router2.id, at, SETTLE);
    let fips = nodes[1].floating_ips(&router2.id);
    assert_eq!(fips.get(&FIP.octets()), Some(&VM_A_ADDR.octets()));
    assert!(
        traffic::ping(&topo2.ext_ns, FIP.octets(), 2),
        "the floating IP answers through node 2"
    );
    assert_eq!(applied_count(&nodes[1]), before[1] + 1);
    // The other nodes were told nothing to do, and wrote nothing.
    std::thread::sleep(Duration::from_millis(200));
    for i in [0, 2] {
        let (_, router) = &topologies[i];
        assert!(nodes[i].floating_ips(&router.id).is_empty());
        assert_eq!(
            applied_count(&nodes[i]),
            before[i],
            "node {} applied something:\n{}",
            nodes[i].name,
            nodes[i].log_since(logs[i])
        );
    }

    // The local API: queries work, edits are refused (the desired state is etcd's).
    let routerctl = router_tests::routerd::routerd_path().with_file_name("routerctl");
    let out = std::process::Command::new(&routerctl)
        .args(["-f", "json", "router", "list"])
        .envs(nodes[1].env())
        .output()
        .expect("routerctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&router2.id));
    let out = std::process::Command::new(&routerctl)
        .args(["router", "delete", &router2.id])
        .envs(nodes[1].env())
        .output()
        .expect("routerctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("read_only"),
        "{stderr}"
    );
    assert!(nodes[1].runs(&router2.id));
}

/// A router and its placement written in one transaction arrive in one watch response and
/// are applied as one desired state; a router whose placement moves to another node is torn
/// down on the first and set up on the second.
#[test]
fn a_router_placed_elsewhere_moves() {
    let (topo, router) = router_topology();
    let etcd = Etcd::start();
    let one = Node::start(&etcd.endpoint(), "m1-");
    let two = Node::start(&etcd.endpoint(), "m2-");
    let before = applied_count(&one);
    let at = etcd.put_all(&[
        (etcd.keys.router(&router.id), router.to_json()),
        (
            etcd.keys.placement(&router.id),
            router_user::cluster::Placement {
                nodes: vec![one.name.clone()],
            }
            .to_json(),
        ),
    ]);
    etcd.wait_running(&one.name, &router.id, at, SETTLE);
    assert_eq!(applied_count(&one), before + 1, "{}", one.log_text());
    assert!(
        traffic::ping(&topo.vm_a_ns, EXT_HOST, 2),
        "forwards on node one"
    );

    let at = etcd.place(&router.id, &[&two.name]);
    etcd.wait_running(&two.name, &router.id, at, SETTLE);
    wait_until(
        "the router's pins to leave node one",
        SETTLE,
        || !one.pinned(&router.id) && !one.runs(&router.id),
        || one.log_text(),
    );
    assert!(two.runs(&router.id) && two.pinned(&router.id));
    assert!(etcd.status(&one.name, &router.id).is_none());
    assert!(
        traffic::ping(&topo.vm_a_ns, EXT_HOST, 2),
        "forwards on node two"
    );
}

/// etcd killed (-9) under traffic: the fast paths forward every datagram, the nodes write
/// nothing; a node restarted meanwhile starts from its saved state and adopts its router
/// (0 map writes); a node restarted without its saved state waits for etcd, touching
/// nothing, and adopts its router (0 map writes) when etcd answers; when etcd is back the
/// nodes read everything, find nothing to change, and an edit made then is applied.
#[test]
fn etcd_away_costs_no_packet_and_no_write() {
    let topologies: Vec<(RouterTopology, Router)> = (0..2).map(|_| router_topology()).collect();
    let mut etcd = Etcd::start();
    let mut nodes = vec![
        Node::start(&etcd.endpoint(), "o1-"),
        Node::start(&etcd.endpoint(), "o2-"),
    ];
    for ((_, router), node) in topologies.iter().zip(&nodes) {
        etcd.put_router(router);
        let at = etcd.place(&router.id, &[&node.name]);
        etcd.wait_running(&node.name, &router.id, at, SETTLE);
    }
    let streams: Vec<UdpStream> = topologies
        .iter()
        .map(|(topo, _)| {
            UdpStream::start(
                &topo.vm_a_ns,
                42001,
                SocketAddrV4::new(Ipv4Addr::from(EXT_HOST), 6001),
                &topo.ext_ns,
                6001,
                Duration::from_millis(5),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let logs: Vec<usize> = nodes.iter().map(|n| n.log_text().len()).collect();
    let before: Vec<usize> = nodes.iter().map(applied_count).collect();
    etcd.kill9();
    let outage_started = Instant::now();
    // The nodes notice and retry.
    for node in &nodes {
        wait_until(
            "the node to notice etcd is away",
            Duration::from_secs(10),
            || node.log_since(0).contains("retrying in"),
            || node.log_text(),
        );
    }
    // Node two restarts while etcd is away: it starts from its saved state.
    nodes[1].kill9();
    let skip = nodes[1].log_text().len();
    nodes[1].restart();
    let restarted = nodes[1].log_since(skip);
    assert!(
        restarted.contains("starting from the saved state (1 router(s)"),
        "{restarted}"
    );
    wait_until(
        "node two to adopt its router",
        SETTLE,
        || {
            nodes[1]
                .log_text()
                .contains("adopted the running fast path")
        },
        || nodes[1].log_text(),
    );
    let adopted = nodes[1].log_since(logs[1]);
    assert!(adopted.contains("; 0 map writes"), "{adopted}");
    assert!(!adopted.contains("detached and removed"), "{adopted}");
    // Node one restarts too, its saved state lost: with routers pinned and nothing to go
    // by, it waits for etcd and touches nothing.
    nodes[0].kill9();
    std::fs::remove_file(
        nodes[0]
            .state_dir
            .join(router_user::cluster::local::FILE_NAME),
    )
    .expect("node one's saved state");
    let waiting_from = nodes[0].log_text().len();
    nodes[0].restart_until("waiting for etcd before touching them");
    assert!(nodes[0].pinned(&topologies[0].1.id));
    if let Some(rest) = outage().checked_sub(outage_started.elapsed()) {
        std::thread::sleep(rest);
    }
    etcd.restart();
    wait_until(
        "node one to adopt its router once etcd answers",
        SETTLE,
        || {
            let log = nodes[0].log_since(waiting_from);
            log.contains("API on") && log.contains("adopted the running fast path")
        },
        || nodes[0].log_text(),
    );
    let adopted = nodes[0].log_since(waiting_from);
    assert!(adopted.contains("; 0 map writes"), "{adopted}");
    assert!(!adopted.contains("detached and removed"), "{adopted}");
    for (i, node) in nodes.iter().enumerate() {
        wait_until(
            "the node to read etcd again",
            SETTLE,
            || {
                node.log_since(logs[i])
                    .matches("read the desired state from etcd")
                    .count()
                    >= 1
            },
            || node.log_text(),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for (stream, (_, router)) in streams.into_iter().zip(&topologies) {
        let report = stream.finish();
        assert!(
            report.sent > 500 && report.lost.is_empty(),
            "router {} lost {} of {}",
            router.id,
            report.lost.len(),
            report.sent
        );
    }
    // Nothing applied on node one (no change); node two's restart applied nothing either.
    assert_eq!(
        applied_count(&nodes[0]),
        before[0],
        "{}",
        nodes[0].log_since(logs[0])
    );
    assert_eq!(
        nodes[1].log_since(logs[1]).matches("applied;").count(),
        0,
        "{}",
        nodes[1].log_since(logs[1])
    );
    // An edit after etcd is back is applied.
    let (topo, router) = &topologies[0];
    let at = etcd.put_router(&with_fip(router));
    etcd.wait_running(&nodes[0].name, &router.id, at, SETTLE);
    assert!(traffic::ping(&topo.ext_ns, FIP.octets(), 2));
}

/// A node stopped (SIGSTOP) longer than its lease while its router changes and etcd
/// compacts its history past the node's watch: the node leaves the node list, and when
/// continued it registers again and converges on the latest desired state.
#[test]
fn a_node_stopped_across_a_compaction_converges() {
    let (topo, router) = router_topology();
    let etcd = Etcd::start();
    let mut node = Node::start(&etcd.endpoint(), "s1-");
    etcd.put_router(&router);
    let at = etcd.place(&router.id, &[&node.name]);
    etcd.wait_running(&node.name, &router.id, at, SETTLE);
    let log = node.log_text().len();
    node.pause();
    let at = etcd.put_router(&with_fip(&router));
    // More events than the stopped node's connection buffers (about 20 MB: the server's
    // send window fills, then its queue for the watcher), so the watcher falls behind;
    // then a compaction past them: the node's watch is cancelled as compacted.
    let filler = "x".repeat(100 * 1024);
    for i in 0..200 {
        etcd.put(
            &format!("{}/filler-{}", etcd.keys.prefix(), i % 10),
            &filler,
        );
    }
    let compacted = etcd.compact();
    assert!(compacted > at);
    let gone_by = DEFAULT_LEASE_TTL + Duration::from_secs(2);
    wait_until(
        "the stopped node to leave the node list",
        gone_by,
        || {
            !listed(&etcd)
                .iter()
                .any(|(n, alive, _)| *n == node.name && *alive)
        },
        || format!("{:?}", listed(&etcd)),
    );
    node.resume();
    etcd.wait_running(&node.name, &router.id, at, SETTLE);
    assert_eq!(
        node.floating_ips(&router.id).get(&FIP.octets()),
        Some(&VM_A_ADDR.octets())
    );
    assert!(traffic::ping(&topo.ext_ns, FIP.octets(), 2));
    wait_until(
        "the node to be listed again",
        SETTLE,
        || {
            listed(&etcd)
                .iter()
                .any(|(n, alive, _)| *n == node.name && *alive)
        },
        || node.log_text(),
    );
    let after = node.log_since(log);
    assert!(
        after.contains("registered in etcd"),
        "the node did not register again:\n{after}"
    );
    assert!(
        after.contains("compacted the watch's revision")
            && after.contains("reading everything again"),
        "the node's watch was not cancelled as compacted:\n{after}"
    );
    assert_eq!(
        etcd.status(&node.name, &router.id).map(|s| s.state),
        Some(RunState::Running)
    );
}

/// A node killed -9 is gone from `routerctl node list` within its lease's TTL and a second;
/// the router placed on it shows it down.
#[test]
fn a_dead_node_leaves_the_node_list_within_its_ttl() {
    let (_topo, router) = router_topology();
    let etcd = Etcd::start();
    let mut dead = Node::start(&etcd.endpoint(), "d1-");
    let alive = Node::start(&etcd.endpoint(), "d2-");
    etcd.put_router(&router);
    let at = etcd.place(&router.id, &[&dead.name]);
    etcd.wait_running(&dead.name, &router.id, at, SETTLE);
    let list = listed(&etcd);
    for node in [&dead, &alive] {
        assert!(
            list.iter().any(|(n, a, _)| *n == node.name && *a),
            "{list:?}"
        );
    }
    dead.kill9();
    let killed = Instant::now();
    let limit = DEFAULT_LEASE_TTL + Duration::from_secs(1);
    loop {
        let list = listed(&etcd);
        if list.iter().any(|(n, a, _)| *n == dead.name && !*a) {
            break;
        }
        assert!(
            killed.elapsed() <= limit,
            "node {} still alive {:?} after kill -9: {list:?}",
            dead.name,
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(killed.elapsed() <= limit);
    assert!(
        listed(&etcd).iter().any(|(n, a, _)| *n == alive.name && *a),
        "the other node stays"
    );
}

/// A three-member etcd whose leader is killed (-9) under traffic: the nodes, given every
/// member, carry on: they stay in the node list throughout (a new leader keeps their
/// leases), no datagram is lost, and an edit made after the election is applied.
#[test]
fn a_three_member_etcd_loses_its_leader_and_the_nodes_carry_on() {
    let topologies: Vec<(RouterTopology, Router)> = (0..2).map(|_| router_topology()).collect();
    let mut etcd = Etcd::start_cluster(3);
    let nodes = [
        Node::start(&etcd.endpoint(), "c1-"),
        Node::start(&etcd.endpoint(), "c2-"),
    ];
    for ((_, router), node) in topologies.iter().zip(&nodes) {
        etcd.put_router(router);
        let at = etcd.place(&router.id, &[&node.name]);
        etcd.wait_running(&node.name, &router.id, at, SETTLE);
    }
    let (topo, router) = &topologies[0];
    let stream = UdpStream::start(
        &topo.vm_a_ns,
        42001,
        SocketAddrV4::new(Ipv4Addr::from(EXT_HOST), 6001),
        &topo.ext_ns,
        6001,
        Duration::from_millis(5),
    );
    std::thread::sleep(Duration::from_millis(300));
    let killed = etcd.kill9_leader();
    let survivors = etcd
        .endpoint()
        .replace(&format!("{killed},"), "")
        .replace(&format!(",{killed}"), "");
    // For longer than a lease: both nodes are alive at every look (a read refused during
    // the election is looked at again).
    let until = Instant::now() + DEFAULT_LEASE_TTL + Duration::from_secs(2);
    let mut looks = 0;
    while Instant::now() < until {
        let Ok(list) = try_node_list(&survivors) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        looks += 1;
        for node in &nodes {
            assert!(
                list.iter()
                    .any(|n| n["node"] == node.name.as_str() && n["alive"] == true),
                "node {} not alive after the leader was killed: {list:?}\n{}",
                node.name,
                node.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(looks >= 5, "the node list was read {looks} times");
    // Each node kept its lease: registered once, in etcd again on the same lease.
    for node in &nodes {
        let log = node.log_text();
        assert_eq!(log.matches("registered in etcd").count(), 1, "{log}");
    }
    let at = etcd.put_router(&with_fip(router));
    etcd.wait_running(&nodes[0].name, &router.id, at, SETTLE);
    assert!(traffic::ping(&topo.ext_ns, FIP.octets(), 2));
    let report = stream.finish();
    assert!(
        report.sent > 500 && report.lost.is_empty(),
        "lost {} of {}",
        report.lost.len(),
        report.sent
    );
}

/// Events less than the debounce window apart are one desired state: a placement and its
/// router put separately (two revisions, two watch responses) arrive as one update; a
/// router placed on another node changes nothing here. The sync loop runs on its own
/// against a real etcd, with a window long enough (300 ms) that the puts fall in it.
#[test]
fn events_within_the_debounce_window_are_one_update() {
    use router_user::cluster::{Options, sync};
    let etcd = Etcd::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let options = Options {
        endpoints: vec![etcd.endpoint()],
        prefix: etcd.keys.prefix().to_string(),
        node: "n1".into(),
        lease_ttl: DEFAULT_LEASE_TTL,
        state_dir: std::env::temp_dir(),
        debounce: Duration::from_millis(300),
        credentials: Default::default(),
        overlay_netns: None,
    };
    let (tx, mut updates) = tokio::sync::mpsc::channel(16);
    let reread = std::sync::Arc::new(tokio::sync::Notify::new());
    let task = runtime.spawn(sync::run(options, sync::Update::default(), tx, reread));
    let mut next = |within: Duration| {
        runtime.block_on(async {
            tokio::time::timeout(within, updates.recv())
                .await
                .ok()
                .flatten()
        })
    };
    let first = next(Duration::from_secs(10)).expect("the first full read");
    assert!(first.state.routers.is_empty());

    let router = |id: &str| {
        let text = format!(
            "[[router]]\nid = \"{id}\"\nnamespace = \"ns-{id}\"\n\
             [[router.interface]]\nname = \"qr-a\"\naddress = \"10.0.1.1/24\"\n"
        );
        DesiredState::parse(&text)
            .expect("router")
            .routers
            .remove(0)
    };
    // The placement first: alone, it is a change for this node (a router placed here
    // without a desired state, refused), so two updates would be sent without the window.
    let placed = etcd.place("r1", &["n1"]);
    let written = etcd.put_router(&router("r1"));
    assert!(written > placed, "two revisions");
    let update = next(Duration::from_secs(5)).expect("an update");
    assert_eq!(update.state.routers, vec![router("r1")]);
    assert!(update.refused.is_empty(), "{:?}", update.refused);
    assert_eq!(update.revisions.get("r1"), Some(&written));
    assert!(
        next(Duration::from_millis(700)).is_none(),
        "the two puts were sent as more than one update"
    );
    // Another node's router: nothing for this one.
    etcd.put_router(&router("r2"));
    etcd.place("r2", &["n2"]);
    assert!(next(Duration::from_millis(700)).is_none());
    task.abort();
}

/// A router placed on a node that cannot start it (its namespace does not exist) is
/// reported `waiting` with the start error, in its status and in `node list`; taken off the
/// node, its status goes.
#[test]
fn a_router_that_cannot_start_is_reported_waiting() {
    let etcd = Etcd::start();
    let node = Node::start(&etcd.endpoint(), "w1-");
    let id = router_tests::topo::unique("w");
    let text = format!(
        "[[router]]\nid = \"{id}\"\nnamespace = \"qrouter-{id}\"\n\
         [[router.interface]]\nname = \"qr-a\"\naddress = \"10.0.1.1/24\"\n"
    );
    let router = DesiredState::parse(&text)
        .expect("router")
        .routers
        .remove(0);
    etcd.put_router(&router);
    let at = etcd.place(&id, &[&node.name]);
    let mut status = None;
    wait_until(
        "the router's status",
        SETTLE,
        || {
            status = etcd.status(&node.name, &id);
            status.is_some()
        },
        || node.log_text(),
    );
    let status = status.expect("a status");
    assert_eq!(status.state, RunState::Waiting);
    assert_eq!(status.revision, at);
    assert!(
        status
            .error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("qrouter-{id}"))),
        "{status:?}"
    );
    let listed = node_list(&etcd.endpoint());
    let me = listed
        .iter()
        .find(|n| n["node"] == node.name.as_str())
        .expect("the node is listed");
    assert_eq!(me["placed"][&id]["state"], "waiting", "{me}");
    assert_eq!(me["running"], serde_json::json!([]));
    etcd.delete(&etcd.keys.placement(&id));
    wait_until(
        "the status to go",
        SETTLE,
        || etcd.status(&node.name, &id).is_none(),
        || node.log_text(),
    );
}
