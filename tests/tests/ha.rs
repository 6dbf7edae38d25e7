//! HA routers (`docs/ha.md`): one router placed on two network nodes, each its own
//! routerd following a real etcd, joined by a switch namespace (an internal and an
//! external bridge) with the VMs and the external host.
//!
//! ```text
//!            vm1 10.0.1.5   vm2 10.0.1.6 (floating IP 198.18.0.10)
//!                 \          /
//!                  br-int (sw)  ── qr0 of node a, qr0 of node b (same MAC, 10.0.1.1)
//!                  br-ext (sw)  ── qg0 of node a, qg0 of node b (same MAC, 198.18.0.2)
//!                     |
//!               ext 198.18.0.1
//! ```
//!
//! Each node's router namespace is `<node prefix>qr-<tag>` (`ROUTERD_NETNS_PREFIX`), as
//! two machines would both call it `qr-<tag>`. 200 SNATed and 50 floating-IP TCP
//! connections talk every 100 ms while the active node is lost (routerd killed with -9,
//! its links taken down), then while it comes back and stands by again.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use router_tests::{
    etcd::{Etcd, Node, routerctl},
    held::Held,
    probe,
    topo::{Namespaces, ip_batch, run, unique},
};
use router_user::{
    config::DesiredState,
    ha::status::HaStatus,
    maps::{Pinned, Rooms as _},
};

const SNAT_CONNECTIONS: usize = 200;
const FIP_CONNECTIONS: usize = 50;
const FIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

struct Pair {
    id: String,
    vm1: String,
    vm2: String,
    ext: String,
    /// Each node's router namespace, by node index.
    router_ns: [String; 2],
    // Dropped last: the nodes (declared after) stop before their namespaces go.
    _ns: Namespaces,
}

/// The switch, the hosts and both nodes' router namespaces, IPv6 off everywhere (a
/// standby's kernel must not speak with the router's MAC).
fn pair(mode: &str) -> (Pair, String) {
    let tag = unique("ha");
    let mut ns = Namespaces::default();
    let name = |what: &str| format!("{what}-{tag}");
    let (sw, vm1, vm2, ext) = (name("sw"), name("vm1"), name("vm2"), name("ext"));
    let router_ns = [format!("a-qr-{tag}"), format!("b-qr-{tag}")];
    for n in [&sw, &vm1, &vm2, &ext, &router_ns[0], &router_ns[1]] {
        ns.add(n);
        probe::sysctl(
            n,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
    }
    let mut links = String::new();
    for (i, node) in ["a", "b"].iter().enumerate() {
        let r = &router_ns[i];
        links += &format!(
            "link add qr0 netns {r} address 02:00:00:aa:00:01 type veth peer name {node}qr netns {sw}\n\
             link add qg0 netns {r} address 02:00:00:aa:00:02 type veth peer name {node}qg netns {sw}\n"
        );
    }
    links += &format!(
        "link add eth0 netns {vm1} type veth peer name v1 netns {sw}\n\
         link add eth0 netns {vm2} type veth peer name v2 netns {sw}\n\
         link add eth0 netns {ext} type veth peer name e0 netns {sw}\n"
    );
    ip_batch(None, &links);
    ip_batch(
        Some(&sw),
        "link add br-int type bridge stp_state 0\nlink add br-ext type bridge stp_state 0\n\
         link set aqr master br-int\nlink set bqr master br-int\nlink set v1 master br-int\nlink set v2 master br-int\n\
         link set aqg master br-ext\nlink set bqg master br-ext\nlink set e0 master br-ext\n\
         link set br-int up\nlink set br-ext up\nlink set aqr up\nlink set bqr up\nlink set v1 up\n\
         link set v2 up\nlink set aqg up\nlink set bqg up\nlink set e0 up\n",
    );
    // XDP redirects into a veth arrive only where its far end takes them (GRO on).
    for port in ["aqr", "bqr", "aqg", "bqg"] {
        run(
            "ip",
            &["netns", "exec", &sw, "ethtool", "-K", port, "gro", "on"],
        );
    }
    for (host, addr, gw) in [
        (&vm1, "10.0.1.5/24", "10.0.1.1"),
        (&vm2, "10.0.1.6/24", "10.0.1.1"),
        (&ext, "198.18.0.1/24", ""),
    ] {
        let mut lines = format!("link set eth0 up\naddress add {addr} dev eth0\n");
        if !gw.is_empty() {
            lines += &format!("route add default via {gw}\n");
        }
        ip_batch(Some(host), &lines);
    }
    let toml = format!(
        "[[router]]\nid = \"{tag}\"\nnamespace = \"qr-{tag}\"\nmode = \"{mode}\"\n\n\
         [router.gateway]\ninterface = \"qg0\"\naddress = \"198.18.0.2/24\"\nnexthop = \"198.18.0.1\"\nsnat = true\n\n\
         [[router.interface]]\nname = \"qr0\"\naddress = \"10.0.1.1/24\"\n\n\
         [[router.floating_ip]]\naddress = \"{FIP}\"\nfixed = \"10.0.1.6\"\n"
    );
    (
        Pair {
            id: tag,
            vm1,
            vm2,
            ext,
            router_ns,
            _ns: ns,
        },
        toml,
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn node(etcd: &Etcd, prefix: &str) -> Node {
    let listen = format!("127.0.0.1:{}", free_port());
    Node::start_with(
        &etcd.endpoint(),
        &unique(&format!("net{prefix}")),
        &["--ha-listen".into(), listen],
        &[("ROUTERD_NETNS_PREFIX", prefix)],
    )
}

fn ha_status(node: &Node, id: &str) -> Option<HaStatus> {
    let bytes = std::fs::read(node.run_dir.join(format!("{id}.ha"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which node is active and which stands by with a whole resync, once they agree.
fn settled(nodes: &[Node; 2], id: &str) -> (usize, usize) {
    wait_for(
        "one active node and one synced standby",
        Duration::from_secs(30),
        || {
            let s: Vec<Option<HaStatus>> = nodes.iter().map(|n| ha_status(n, id)).collect();
            let role = |i: usize| s[i].as_ref().map(|s| (s.role.as_str(), s.synced, s.epoch));
            match (role(0), role(1)) {
                (Some(("active", _, e0)), Some(("standby", true, e1))) if e0 == e1 => Some((0, 1)),
                (Some(("standby", true, e0)), Some(("active", _, e1))) if e0 == e1 => Some((1, 0)),
                _ => None,
            }
        },
    )
}

fn sessions_on(node: &Node, id: &str) -> u64 {
    Pinned::open_in(&node.pin_root, id)
        .and_then(|mut m| m.sessions().counts())
        .map(|c| c.sessions)
        .unwrap_or(0)
}

fn set_links(ns: &str, state: &str) {
    ip_batch(
        Some(ns),
        &format!("link set qr0 {state}\nlink set qg0 {state}\n"),
    );
}

fn failover(mode: &str) {
    let (pair, toml) = pair(mode);
    let etcd = Etcd::start();
    let state = DesiredState::parse(&toml).expect("the router's desired state");
    let router = state.routers.into_iter().next().expect("one router");
    let mut nodes = [node(&etcd, "a-"), node(&etcd, "b-")];
    etcd.put_router(&router);
    etcd.place(&pair.id, &[&nodes[0].name, &nodes[1].name]);
    let (active, standby) = settled(&nodes, &pair.id);
    eprintln!(
        "{mode}: {} active, {} standing by",
        nodes[active].name, nodes[standby].name
    );

    let snat = Held::start(
        &pair.ext,
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5001),
        &pair.vm1,
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5001),
        SNAT_CONNECTIONS,
        Duration::from_millis(100),
    );
    let fip = Held::start(
        &pair.vm2,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 6), 5002),
        &pair.ext,
        SocketAddrV4::new(FIP, 5002),
        FIP_CONNECTIONS,
        Duration::from_millis(100),
    );
    // Every SNATed connection's session reaches the standby (floating IPs translate
    // without sessions).
    let wanted = SNAT_CONNECTIONS as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let synced = loop {
        let n = sessions_on(&nodes[standby], &pair.id);
        if n >= wanted {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "{n} sessions on the standby, {} on the active (status {:?} / {:?}); logs:\n{}\n{}",
            sessions_on(&nodes[active], &pair.id),
            ha_status(&nodes[active], &pair.id),
            ha_status(&nodes[standby], &pair.id),
            nodes[active].log_text(),
            nodes[standby].log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "{mode}: {} sessions on the active, {synced} on the standby",
        sessions_on(&nodes[active], &pair.id)
    );
    std::thread::sleep(Duration::from_millis(1500));

    // The active node is lost: its routerd dies, its links go down.
    let lost_at = Instant::now();
    nodes[active].kill9();
    set_links(&pair.router_ns[active], "down");
    wait_for("the standby to take over", Duration::from_secs(10), || {
        ha_status(&nodes[standby], &pair.id).filter(|s| s.role == "active")
    });
    let takeover = lost_at.elapsed();
    std::thread::sleep(Duration::from_secs(2));

    // It comes back, resyncs and stands by.
    let back_at = snat.started.elapsed();
    set_links(&pair.router_ns[active], "up");
    nodes[active].restart();
    let returned = wait_for(
        "the returning node to stand by, synced",
        Duration::from_secs(20),
        || ha_status(&nodes[active], &pair.id).filter(|s| s.role == "standby" && s.synced),
    );
    std::thread::sleep(Duration::from_secs(2));

    // A planned switchover back to it.
    let switch_at = snat.started.elapsed();
    let out = routerctl(&[
        "--etcd",
        &etcd.endpoint(),
        "-f",
        "json",
        "router",
        "switchover",
        &pair.id,
        "--to",
        &nodes[active].name,
    ]);
    assert!(
        out.status.success(),
        "switchover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let handed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        handed["items"]["to"],
        nodes[active].name.as_str(),
        "{handed}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let reports: Vec<_> = snat.finish().into_iter().chain(fip.finish()).collect();

    let broken: Vec<_> = reports.iter().filter(|r| r.broken.is_some()).collect();
    let longest = reports
        .iter()
        .map(|r| r.longest_gap())
        .max()
        .unwrap_or_default();
    let longest_from = |from: Duration, to: Duration| {
        reports
            .iter()
            .flat_map(|r| r.gaps.iter())
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|g| g.1)
            .max()
            .unwrap_or_default()
    };
    let after_return = longest_from(back_at, switch_at);
    let switchover = longest_from(switch_at, Duration::MAX);
    eprintln!(
        "{mode}: takeover seen after {} ms; {} of {} connections broken; longest gap {} ms; \
         longest gap after the return {} ms; the returning node resynced at epoch {}; \
         switchover back in {} s, longest gap during it {} ms",
        takeover.as_millis(),
        broken.len(),
        reports.len(),
        longest.as_millis(),
        after_return.as_millis(),
        returned.epoch,
        handed["items"]["seconds"],
        switchover.as_millis()
    );
    // At least 99.9 %: with 250 connections, every one.
    assert!(
        broken.is_empty(),
        "{} connections broke, e.g. {:?}",
        broken.len(),
        broken.iter().take(3).collect::<Vec<_>>()
    );
    assert!(longest <= Duration::from_secs(1), "longest gap {longest:?}");
    assert!(
        after_return <= Duration::from_millis(500),
        "the returning node disturbed traffic: a gap of {after_return:?}"
    );
    assert!(
        switchover <= Duration::from_millis(200),
        "a planned switchover cost a gap of {switchover:?}"
    );
    // The node that took over at the loss stands by again, and says so.
    let show = |node: &Node| {
        let out = std::process::Command::new(
            router_tests::routerd::routerd_path().with_file_name("routerctl"),
        )
        .args(["-f", "json", "router", "show", &pair.id])
        .envs(node.env())
        .output()
        .expect("routerctl");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let first = show(&nodes[active]);
    let second = show(&nodes[standby]);
    assert_eq!(first["items"]["ha"]["role"], "active", "{first}");
    assert_eq!(second["items"]["ha"]["role"], "standby", "{second}");
    assert!(
        second["items"]["ha"]["takeovers"].as_u64() >= Some(1),
        "{second}"
    );
    assert!(
        first["items"]["ha"]["takeovers"].as_u64() >= Some(1),
        "{first}"
    );
}

#[test]
fn the_active_node_is_lost_and_connections_survive_xdp() {
    failover("xdp");
}

#[test]
fn the_active_node_is_lost_and_connections_survive_tc() {
    failover("tc");
}

/// A partition: the active node's routerd stops (no heartbeat, no renewal) while its fast
/// path stays attached and its links up. The standby takes over; the stopped node's fast
/// path falls silent when its hold lapses; when it runs again it sees the higher epoch and
/// stands by. Counted by ARP replies for the floating IP: one per request before, during
/// and after.
fn partition(mode: &str) {
    let (pair, toml) = pair(mode);
    let etcd = Etcd::start();
    let state = DesiredState::parse(&toml).expect("the router's desired state");
    let router = state.routers.into_iter().next().expect("one router");
    let mut nodes = [node(&etcd, "a-"), node(&etcd, "b-")];
    etcd.put_router(&router);
    etcd.place(&pair.id, &[&nodes[0].name, &nodes[1].name]);
    let (active, standby) = settled(&nodes, &pair.id);
    let ext_addr = Ipv4Addr::new(198, 18, 0, 1);
    let replies = || {
        probe::arp_replies(
            &pair.ext,
            "eth0",
            ext_addr,
            FIP,
            5,
            Duration::from_millis(200),
        )
    };
    assert_eq!(replies(), 5, "{mode}: one answer per request before");

    nodes[active].pause();
    wait_for("the standby to take over", Duration::from_secs(10), || {
        ha_status(&nodes[standby], &pair.id).filter(|s| s.role == "active")
    });
    // Past the stopped node's hold: its fast path is fenced.
    std::thread::sleep(ha_fence() + Duration::from_millis(100));
    assert_eq!(
        replies(),
        5,
        "{mode}: one answer per request while partitioned"
    );

    nodes[active].resume();
    let healed = wait_for(
        "the old active to stand by",
        Duration::from_secs(10),
        || ha_status(&nodes[active], &pair.id).filter(|s| s.role == "standby"),
    );
    assert_eq!(
        replies(),
        5,
        "{mode}: one answer per request after the partition healed"
    );
    let role = Pinned::open_in(&nodes[active].pin_root, &pair.id)
        .and_then(|mut m| m.ha().state())
        .map(|s| s.role)
        .expect("the old active's HA map");
    assert_eq!(role, router_common::ha_role::STANDBY);
    let log = nodes[active].log_text();
    assert!(
        !log.contains("still the holder: active again"),
        "the stopped node armed its fast path again:\n{log}"
    );
    eprintln!(
        "{mode}: after the partition, {} stands by at epoch {}",
        nodes[active].name, healed.epoch
    );
}

fn ha_fence() -> Duration {
    router_user::ha::FENCE
}

#[test]
fn a_partitioned_active_falls_silent_and_one_node_answers_xdp() {
    partition("xdp");
}

#[test]
fn a_partitioned_active_falls_silent_and_one_node_answers_tc() {
    partition("tc");
}
