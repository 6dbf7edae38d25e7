//! HA routers (`docs/ha.md`) on two network nodes (`router_tests::ha`): 200 SNATed and 50
//! floating-IP TCP connections talk every 100 ms while the active node is lost (routerd
//! killed with -9, its links taken down), while it comes back and stands by again, and
//! through a planned switchover back to it; and a partitioned active node falls silent.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use router_tests::{
    etcd::{Etcd, Node, routerctl},
    ha::{
        FIP, HaPair, Traffic, ha_status, node_name, node_named, pair, sessions_on, set_links,
        settled, wait_for,
    },
    probe,
};
use router_user::config::DesiredState;
use router_user::maps::{Pinned, Rooms as _};

const SNAT_CONNECTIONS: usize = 200;
const FIP_CONNECTIONS: usize = 50;

/// One HA pair at a time: each runs two routerd, etcd and hundreds of connections on this
/// machine's two cores, and two at once would measure the machine, not the failover.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn failover(mode: &str) {
    let _serial = one_at_a_time();
    // Bound in this order so they drop in the reverse: nodes, etcd, then the namespaces.
    let HaPair {
        pair,
        etcd,
        mut nodes,
        active,
        standby,
    } = HaPair::start(mode);
    eprintln!(
        "{mode}: {} active, {} standing by",
        nodes[active].name, nodes[standby].name
    );

    let traffic = Traffic::start(
        &pair.vm1,
        &pair.vm2,
        &pair.ext,
        SNAT_CONNECTIONS,
        FIP_CONNECTIONS,
        0,
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
    let back_at = traffic.started().elapsed();
    set_links(&pair.router_ns[active], "up");
    nodes[active].restart();
    let returned = wait_for(
        "the returning node to stand by, synced",
        Duration::from_secs(20),
        || ha_status(&nodes[active], &pair.id).filter(|s| s.role == "standby" && s.synced),
    );
    std::thread::sleep(Duration::from_secs(2));

    // A planned switchover back to it.
    let switch_at = traffic.started().elapsed();
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
    let report = traffic.finish();
    let reports: Vec<_> = report.all().collect();

    let broken: Vec<_> = reports.iter().filter(|r| r.broken.is_some()).collect();
    let longest = reports
        .iter()
        .map(|r| r.longest_gap())
        .max()
        .unwrap_or_default();
    // A gap counts in every window it overlaps.
    let longest_from = |from: Duration, to: Duration| {
        reports
            .iter()
            .flat_map(|r| r.gaps.iter())
            .filter(|(at, d)| *at < to && *at + *d > from)
            .map(|g| g.1)
            .max()
            .unwrap_or_default()
    };
    // The return's own gaps: those over before the switchover began (one that runs into
    // it is the switchover's, which the window below has).
    let after_return = reports
        .iter()
        .flat_map(|r| r.gaps.iter())
        .filter(|(at, d)| *at + *d > back_at && *at + *d <= switch_at)
        .map(|g| g.1)
        .max()
        .unwrap_or_default();
    let mut returned_gaps: Vec<(u128, u128)> = reports
        .iter()
        .flat_map(|r| r.gaps.iter())
        .filter(|(at, d)| *at + *d > back_at && *at + *d <= switch_at)
        .map(|(at, d)| ((at.saturating_sub(back_at)).as_millis(), d.as_millis()))
        .collect();
    returned_gaps.sort();
    if !returned_gaps.is_empty() {
        let log = nodes[active].log_text();
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        eprintln!(
            "{mode}: the returning node's log, last lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        for node in [&nodes[active], &nodes[standby]] {
            let stats = node.routerctl(&["stats"]);
            eprintln!(
                "{mode}: {}'s counters:\n{}{}",
                node.name,
                String::from_utf8_lossy(&stats.stdout),
                String::from_utf8_lossy(&stats.stderr)
            );
        }
        let other = nodes[standby].log_text();
        let tail: Vec<&str> = other.lines().rev().take(12).collect();
        eprintln!(
            "{mode}: the active's log, last lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!(
        "{mode}: {} gaps over 150 ms after the return (ms after it, ms long), first ones: {:?}",
        returned_gaps.len(),
        returned_gaps.iter().take(5).collect::<Vec<_>>()
    );
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
    // Made before broken: no packet lost, so no connection waits for a retransmission.
    assert!(
        switchover <= Duration::from_millis(200),
        "a planned switchover cost a gap of {switchover:?}"
    );
    // The node that took over at the loss stands by again, and says so.
    let show = |node: &Node| {
        let out = node.routerctl(&["-f", "json", "router", "show", &pair.id]);
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
    let _serial = one_at_a_time();
    // Bound in this order so they drop in the reverse: nodes, etcd, then the namespaces.
    let HaPair {
        pair,
        etcd: _etcd,
        mut nodes,
        active,
        standby,
    } = HaPair::start(mode);
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

/// A node that joins an HA router for the first time is silent from the start: its kernel
/// holds the router's addresses for over a second before the fast path is attached, and
/// must not answer ARP for them meanwhile (it would teach the switches to send the active's
/// traffic to it). Every request for the gateway address gets one answer, the active's,
/// while the second node starts.
#[test]
fn a_node_joining_answers_no_arp_while_it_starts() {
    let _serial = one_at_a_time();
    let (pair, toml) = pair("xdp");
    let etcd = Etcd::start();
    let router = DesiredState::parse(&toml)
        .expect("the router's desired state")
        .routers
        .remove(0);
    let names = [node_name("a-"), node_name("b-")];
    let first = node_named(&etcd, "a-", &names[0]);
    etcd.put_router(&router);
    etcd.place(&pair.id, &[&names[0], &names[1]]);
    wait_for(
        "the first node to be active",
        Duration::from_secs(20),
        || ha_status(&first, &pair.id).filter(|s| s.role == "active"),
    );
    const REQUESTS: usize = 150;
    let ext = pair.ext.clone();
    // A request every 20 ms for 3 s, while the second node starts (about 1.5 s).
    let asking = std::thread::spawn(move || {
        probe::arp_replies(
            &ext,
            "eth0",
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 18, 0, 2),
            REQUESTS,
            Duration::from_millis(200),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    let second = node_named(&etcd, "b-", &names[1]);
    let replies = asking.join().expect("the ARP prober");
    let nodes = [first, second];
    let (active, _) = settled(&nodes, &pair.id);
    assert_eq!(active, 0, "the first node stays active");
    assert_eq!(
        replies,
        REQUESTS,
        "one answer per request for the gateway address while a node joined; its log:\n{}",
        nodes[1].log_text()
    );
}

/// Sessions that leave the active's table (here: flushed) leave the standby's too, by the
/// next refresh.
#[test]
fn sessions_gone_on_the_active_go_from_the_standby() {
    let _serial = one_at_a_time();
    // Bound in this order so they drop in the reverse: nodes, etcd, then the namespaces.
    let HaPair {
        pair,
        etcd: _etcd,
        nodes,
        active,
        standby,
    } = HaPair::start("tc");
    router_tests::netns::within(&pair.vm1, || {
        for port in 30_000..30_020u16 {
            let socket =
                std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 5), port))
                    .expect("a UDP socket in the VM");
            socket
                .send_to(b"sync", SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 9))
                .expect("sending");
        }
    });
    wait_for(
        "20 sessions on the standby",
        Duration::from_secs(10),
        || (sessions_on(&nodes[standby], &pair.id) >= 20).then_some(()),
    );
    let out = nodes[active].routerctl(&["ct", "flush", &pair.id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sessions_on(&nodes[active], &pair.id), 0);
    let started = Instant::now();
    wait_for("the standby to forget them", Duration::from_secs(5), || {
        (sessions_on(&nodes[standby], &pair.id) == 0).then_some(())
    });
    eprintln!(
        "the standby's sessions went {} ms after the flush on the active",
        started.elapsed().as_millis()
    );
    // Both entries of each session, as the standby's status says (written every second).
    wait_for(
        "the standby's status to count them",
        Duration::from_secs(3),
        || ha_status(&nodes[standby], &pair.id).filter(|s| s.entries_removed >= 40),
    );
}

/// etcd goes away: the pair that still hears each other carries on, one node answering.
/// Then the standby dies too: the active, its lease surely lost and no standby following,
/// falls silent (it cannot know that no other node took the router).
#[test]
fn an_active_that_lost_its_lease_and_its_standby_falls_silent() {
    let _serial = one_at_a_time();
    // Bound in this order so they drop in the reverse: nodes, etcd, then the namespaces.
    let HaPair {
        pair,
        mut etcd,
        mut nodes,
        active,
        standby,
    } = HaPair::start("xdp");
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
    etcd.kill9();
    // Past the HA lease's TTL: the pair still hears each other.
    std::thread::sleep(Duration::from_secs(router_user::ha::LEASE_TTL as u64 + 1));
    assert_eq!(replies(), 5, "one answer per request with etcd away");
    assert_eq!(
        ha_status(&nodes[active], &pair.id).map(|s| s.role),
        Some("active".to_string())
    );
    nodes[standby].kill9();
    wait_for(
        "the lone active to stand by",
        Duration::from_secs(5),
        || ha_status(&nodes[active], &pair.id).filter(|s| s.role == "standby"),
    );
    assert_eq!(
        replies(),
        0,
        "nobody answers: the lone node cannot know it is alone"
    );
}
