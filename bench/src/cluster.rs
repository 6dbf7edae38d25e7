//! The control plane through etcd (`--only cluster`): how long a change written to etcd
//! takes to reach the node's fast path, against the same change through the node's local
//! API, in one run on one topology. The change is one floating IP, added and removed in
//! turn; each is timed from just before the write (the etcd put of the router's new value,
//! or the API request) until the floating IP is in (or gone from) the router's pinned NAT
//! map, read every 200 µs. The etcd path adds the watch, the debounce window
//! (`cluster::sync::DEBOUNCE`, 20 ms: events are gathered so a transaction applies as
//! one) and the node's apply.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use router_tests::{
    etcd::{Etcd, Node},
    routerd::Routerd,
    topo::RouterTopology,
};
use router_user::{
    api::{Client, Request},
    config::{DesiredState, FloatingIp},
    maps::{Pinned, Rooms as _},
};
use serde::{Deserialize, Serialize};

/// The floating IP that comes and goes, and the VM behind it (the topology's VM A).
const FIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const FIXED: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
/// The longest one change may take before the run fails.
const TOO_LONG: Duration = Duration::from_secs(10);

/// One path's latencies over its changes.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ClusterResult {
    /// `etcd` (a write to etcd, a node following it) or `local API` (the node's socket).
    pub path: String,
    pub changes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Both paths, `changes` floating-IP changes each.
pub fn run(changes: usize, say: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<ClusterResult>> {
    let topo = RouterTopology::build("xdp");
    let router = DesiredState::load(&topo.config)
        .context("the topology's desired state")?
        .routers
        .remove(0);
    let id = router.id.clone();
    let mut with = router.clone();
    with.floating_ips.push(FloatingIp {
        address: FIP,
        fixed: FIXED,
        id: None,
    });

    say("cluster: etcd and a routerd node following it");
    let etcd_times = {
        let etcd = Etcd::start();
        let node = Node::start(&etcd.endpoint(), "bench-");
        etcd.put_router(&router);
        let at = etcd.place(&id, &[&node.name]);
        etcd.wait_running(&node.name, &id, at, Duration::from_secs(20));
        let mut maps = Pinned::open_in(&node.pin_root, &id)?;
        say(&format!(
            "cluster: {changes} floating-IP changes through etcd"
        ));
        let mut times = Vec::with_capacity(changes);
        for i in 0..changes {
            let add = i % 2 == 0;
            let started = Instant::now();
            etcd.put_router(if add { &with } else { &router });
            wait_for_map(&mut maps, add)?;
            times.push(started.elapsed());
        }
        times
    };

    say("cluster: the same router under a routerd of its own (its file, its API)");
    let api_times = {
        let socket = std::env::temp_dir().join(format!("routerbench-{id}.sock"));
        let _routerd = Routerd::start_with_socket(&topo.config, &id, &socket);
        let mut maps = Pinned::open(&id)?;
        let mut client = Client::connect(&socket)?;
        say(&format!(
            "cluster: {changes} floating-IP changes through the local API"
        ));
        let mut times = Vec::with_capacity(changes);
        for i in 0..changes {
            let add = i % 2 == 0;
            let request = if add {
                Request::FipCreate {
                    router: id.clone(),
                    address: FIP.to_string(),
                    fixed: FIXED.to_string(),
                    id: None,
                    may_exist: false,
                }
            } else {
                Request::FipDelete {
                    router: id.clone(),
                    address: Some(FIP.to_string()),
                    id: None,
                    if_exists: false,
                }
            };
            let started = Instant::now();
            client.call(&request)?;
            wait_for_map(&mut maps, add)?;
            times.push(started.elapsed());
        }
        times
    };
    drop(topo);
    Ok(vec![
        summary("etcd", etcd_times),
        summary("local API", api_times),
    ])
}

/// Waits until the floating IP is in the map (`present`) or gone from it.
fn wait_for_map(maps: &mut Pinned, present: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + TOO_LONG;
    loop {
        let fips = maps.nat().floating_ips()?;
        if fips.contains_key(&FIP.octets()) == present {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the floating IP was not {} within {TOO_LONG:?}",
            if present { "added" } else { "removed" }
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn summary(path: &str, mut times: Vec<Duration>) -> ClusterResult {
    times.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let at = |q: f64| times.get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1));
    ClusterResult {
        path: path.into(),
        changes: times.len(),
        p50_ms: ms(at(0.5)),
        p99_ms: ms(at(0.99)),
        max_ms: ms(times.last()),
    }
}
