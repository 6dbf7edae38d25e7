//! `cargo xtask demo --nodes N`: a real etcd and N routerd nodes side by side on this
//! machine (each with its own pins, run directory, state and socket), a router per node in
//! namespaces of its own, placed through etcd; a floating IP written to etcd for the first
//! router, answered through its node; that router moved to the next node; `routerctl node
//! list` after each step.
//!
//! Usage: demo_cluster <dir holding routerd and routerctl> <nodes>

use std::{net::Ipv4Addr, path::PathBuf, process::Command, time::Duration};

use router_tests::{
    etcd::{Etcd, Node},
    topo::{EXT_HOST, RouterTopology},
    traffic,
};
use router_user::config::{DesiredState, FloatingIp};

const FIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const SETTLE: Duration = Duration::from_secs(30);

fn main() {
    let mut args = std::env::args().skip(1);
    let bin_dir = PathBuf::from(args.next().unwrap_or_else(|| "target/release".into()));
    let count: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
        .clamp(2, 8);
    // SAFETY: set before any thread starts.
    unsafe { std::env::set_var("ROUTERD_BIN", bin_dir.join("routerd")) };
    let routerctl = bin_dir.join("routerctl");
    let node_list = |etcd: &Etcd| {
        println!("\n$ routerctl --etcd {} node list", etcd.endpoint());
        let _ = Command::new(&routerctl)
            .args(["--etcd", &etcd.endpoint(), "node", "list"])
            .status();
    };

    let etcd = Etcd::start();
    println!(
        "== etcd on {} (prefix {})",
        etcd.endpoint(),
        etcd.keys.prefix()
    );
    let nodes: Vec<Node> = (1..=count)
        .map(|i| Node::start(&etcd.endpoint(), &format!("node{i}-")))
        .collect();
    for node in &nodes {
        println!(
            "== routerd --etcd {} --node {} (pins {}, socket {})",
            etcd.endpoint(),
            node.name,
            node.pin_root.display(),
            node.socket.display()
        );
    }
    let mut ok = true;
    let mut routers = Vec::new();
    for node in &nodes {
        let topo = RouterTopology::build("xdp");
        let state = DesiredState::load(&topo.config).expect("the topology's desired state");
        let router = state.routers.into_iter().next().expect("one router");
        etcd.put_router(&router);
        let at = etcd.place(&router.id, &[&node.name]);
        etcd.wait_running(&node.name, &router.id, at, SETTLE);
        let forwards = traffic::ping(&topo.vm_a_ns, EXT_HOST, 2);
        ok &= forwards;
        println!(
            "== router {} in {} placed on {} at revision {at}: ping VM -> external {}",
            router.id,
            topo.router_ns,
            node.name,
            if forwards { "ok" } else { "FAILED" }
        );
        routers.push((topo, router));
    }
    node_list(&etcd);

    let (topo, router) = &routers[0];
    let mut changed = router.clone();
    changed.floating_ips.push(FloatingIp {
        address: FIP,
        fixed: Ipv4Addr::new(10, 0, 1, 5),
        id: None,
    });
    let at = etcd.put_router(&changed);
    etcd.wait_running(&nodes[0].name, &router.id, at, SETTLE);
    let answers = traffic::ping(&topo.ext_ns, FIP.octets(), 2);
    ok &= answers;
    println!(
        "\n== floating IP {FIP} written to etcd for {} (revision {at}): applied on {}, ping {}",
        router.id,
        nodes[0].name,
        if answers { "ok" } else { "FAILED" }
    );
    for node in &nodes {
        let statuses = etcd.get_prefix(&etcd.keys.statuses_of(&node.name));
        for (key, value) in statuses {
            println!("   {key} = {value}");
        }
    }

    let at = etcd.place(&router.id, &[&nodes[1].name]);
    etcd.wait_running(&nodes[1].name, &router.id, at, SETTLE);
    let moved = traffic::ping(&topo.ext_ns, FIP.octets(), 2);
    ok &= moved && !nodes[0].pinned(&router.id);
    println!(
        "\n== {} placed on {} instead (revision {at}): torn down on {}, ping through {} {}",
        router.id,
        nodes[1].name,
        nodes[0].name,
        nodes[1].name,
        if moved { "ok" } else { "FAILED" }
    );
    node_list(&etcd);

    // The nodes first: a running routerd binds a namespace deleted under its router again.
    drop(nodes);
    drop(routers);
    println!("\n== nodes stopped, their fast paths and namespaces removed; etcd stopped");
    if !ok {
        eprintln!("demo: something failed");
        std::process::exit(1);
    }
}
