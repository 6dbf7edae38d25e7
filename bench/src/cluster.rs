//! The control plane through etcd (`--only cluster`): how long a change written to etcd
//! takes to reach the node's fast path, against the same change through the node's local
//! API, in one run on one topology. The change is one floating IP, added and removed in
//! turn; each is timed from just before the write (the etcd put of the router's new value,
//! or the API request) until the floating IP is in (or gone from) the router's pinned NAT
//! map, read every 200 µs. The etcd path adds the watch, the debounce window
//! (`cluster::sync::DEBOUNCE`, 20 ms: events are gathered so a transaction applies as
//! one) and the node's apply.
//!
//! [`run_bulk`]: many floating IPs over [`BULK_NODES`] nodes, a router each, applied from
//! none through one etcd transaction (every router's new value) against each router's
//! file `apply`'d through its own routerd's API, the routers at once; timed until every
//! router's pinned map holds all its floating IPs. How etcd itself fares as the nodes grow
//! is `cluster_watch.rs`.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use router_tests::{
    desired::RouterText,
    etcd::{Etcd, Node},
    routerd::Routerd,
    topo::RouterTopology,
    topology::{Builder, Host, Topology},
};
use router_user::{
    api::{Client, Request},
    config::{DesiredState, FloatingIp, Router},
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

/// Floating IPs over several nodes, each running one router of its own, applied at once
/// through one path: from just before the write until every router's pinned map holds
/// all its floating IPs.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct BulkResult {
    /// `etcd` (one transaction puts every router's new value) or `local API` (each node's
    /// file `apply`'d through its socket, the three at once).
    pub path: String,
    pub nodes: usize,
    /// Floating IPs over all nodes.
    pub floating_ips: usize,
    /// Times the whole set was applied (from none, each time).
    pub rounds: usize,
    pub median_ms: f64,
    pub max_ms: f64,
}

/// How many nodes the bulk run spreads its floating IPs over, one router each.
pub const BULK_NODES: usize = 3;
/// The longest one bulk apply may take before the run fails.
const BULK_TOO_LONG: Duration = Duration::from_secs(60);

/// One router of the bulk run: a namespace with a gateway on 198.18.0.0/16 and one
/// internal port on 10.0.0.0/16 (room for thousands of floating IPs and fixed IPs), its
/// file text without floating IPs and with `count` of them.
struct BulkRouter {
    topology: Topology,
    empty: String,
    full: String,
    count: usize,
}

impl BulkRouter {
    fn build(count: usize) -> anyhow::Result<Self> {
        let topology = Builder::new("cb")
            .external(
                "qg-ext",
                "198.18.0.2/16",
                "198.18.0.1",
                [Host::new("ext", "198.18.0.1/16")],
            )
            .internal(
                "qr-a",
                "10.0.0.1/16",
                [Host::new("vma", "10.0.0.5/16").via("10.0.0.1")],
            )
            .build();
        // The map's size is fixed when the router starts: room for every floating IP from
        // the start, so the change never restarts the router.
        let text = RouterText {
            extra: "[router.nat]\nmax_floating_ips = 4096\n".into(),
            ..topology.router_text("xdp")
        };
        let full = RouterText {
            floating_ips: (0..count)
                .map(|i| {
                    let (hi, lo) = (1 + (i / 250) as u8, 1 + (i % 250) as u8);
                    (Ipv4Addr::new(198, 18, hi, lo), Ipv4Addr::new(10, 0, hi, lo))
                })
                .collect(),
            ..text.clone()
        };
        Ok(Self {
            empty: text.render(),
            full: full.render(),
            count,
            topology,
        })
    }

    fn id(&self) -> &str {
        &self.topology.tag
    }

    fn router(text: &str) -> anyhow::Result<Router> {
        let mut state = DesiredState::parse(text).context("a bulk router's desired state")?;
        anyhow::ensure!(state.routers.len() == 1, "one router per bulk file");
        Ok(state.routers.remove(0))
    }
}

/// `total` floating IPs spread over [`BULK_NODES`] routers on as many nodes, applied
/// `rounds` times through etcd (one transaction) and through the nodes' local APIs.
pub fn run_bulk(
    total: usize,
    rounds: usize,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<BulkResult>> {
    say(&format!(
        "cluster: {BULK_NODES} routers for {total} floating IPs"
    ));
    let mut routers = (0..BULK_NODES)
        .map(|i| BulkRouter::build(total / BULK_NODES + usize::from(i < total % BULK_NODES)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let counts: Vec<usize> = routers.iter().map(|r| r.count).collect();

    say(&format!(
        "cluster: etcd and {BULK_NODES} routerd nodes, a router each"
    ));
    let etcd_times = {
        let etcd = Etcd::start();
        let nodes: Vec<Node> = (0..BULK_NODES)
            .map(|_| Node::start(&etcd.endpoint(), "bench-"))
            .collect();
        let pairs = |full: bool| -> anyhow::Result<Vec<(String, String)>> {
            routers
                .iter()
                .map(|r| {
                    let text = if full { &r.full } else { &r.empty };
                    Ok((
                        etcd.keys.router(r.id()),
                        BulkRouter::router(text)?.to_json(),
                    ))
                })
                .collect()
        };
        let (empty, full) = (pairs(false)?, pairs(true)?);
        etcd.put_all(&empty);
        let mut maps = Vec::new();
        for (router, node) in routers.iter().zip(&nodes) {
            let at = etcd.place(router.id(), &[&node.name]);
            etcd.wait_running(&node.name, router.id(), at, Duration::from_secs(30));
            maps.push(Pinned::open_in(&node.pin_root, router.id())?);
        }
        let mut times = Vec::with_capacity(rounds);
        for round in 0..rounds {
            say(&format!(
                "cluster: {total} floating IPs through etcd, one transaction ({}/{rounds})",
                round + 1
            ));
            let started = Instant::now();
            etcd.put_all(&full);
            wait_for_counts(&mut maps, &counts)?;
            times.push(started.elapsed());
            etcd.put_all(&empty);
            wait_for_counts(&mut maps, &[0; BULK_NODES])?;
        }
        // The nodes go (their fast paths with them) before the local routerds start.
        drop(maps);
        drop(nodes);
        times
    };

    say(&format!(
        "cluster: the same routers under {BULK_NODES} routerds of their own (their files, their APIs)"
    ));
    let api_times = {
        let mut maps = Vec::new();
        let mut clients = Vec::new();
        for router in &mut routers {
            router.topology.write_config(&router.empty);
            let routerd = router.topology.start_routerd();
            clients.push(Client::connect(&routerd.socket)?);
            maps.push(Pinned::open(&router.topology.tag)?);
        }
        let mut times = Vec::with_capacity(rounds);
        for round in 0..rounds {
            say(&format!(
                "cluster: {total} floating IPs through {BULK_NODES} local APIs at once ({}/{rounds})",
                round + 1
            ));
            let requests: Vec<Request> = routers
                .iter()
                .map(|r| Request::Apply {
                    text: r.full.clone(),
                })
                .collect();
            let started = Instant::now();
            let elapsed = std::thread::scope(|s| -> anyhow::Result<Duration> {
                let calls: Vec<_> = clients
                    .iter_mut()
                    .zip(&requests)
                    .map(|(client, request)| s.spawn(move || client.call(request).map(|_| ())))
                    .collect();
                let waited = wait_for_counts(&mut maps, &counts).map(|()| started.elapsed());
                for call in calls {
                    call.join()
                        .map_err(|_| anyhow::anyhow!("an apply thread panicked"))??;
                }
                waited
            })?;
            times.push(elapsed);
            for (client, router) in clients.iter_mut().zip(&routers) {
                client.call(&Request::Apply {
                    text: router.empty.clone(),
                })?;
            }
            wait_for_counts(&mut maps, &[0; BULK_NODES])?;
        }
        times
    };
    drop(routers);
    Ok(vec![
        bulk_summary("etcd", total, etcd_times),
        bulk_summary("local API", total, api_times),
    ])
}

/// Waits until the floating-IP map of each router holds as many entries as `counts` says
/// (a router whose count is reached is not read again).
fn wait_for_counts(maps: &mut [Pinned], counts: &[usize]) -> anyhow::Result<()> {
    let deadline = Instant::now() + BULK_TOO_LONG;
    let mut done = vec![false; maps.len()];
    loop {
        for (i, maps) in maps.iter_mut().enumerate() {
            if !done[i] {
                done[i] = maps.nat().floating_ips()?.len() == counts[i];
            }
        }
        if done.iter().all(|d| *d) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the routers' maps did not reach {counts:?} floating IPs within {BULK_TOO_LONG:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn bulk_summary(path: &str, total: usize, mut times: Vec<Duration>) -> BulkResult {
    times.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    BulkResult {
        path: path.into(),
        nodes: BULK_NODES,
        floating_ips: total,
        rounds: times.len(),
        median_ms: ms(times.get(times.len() / 2)),
        max_ms: ms(times.last()),
    }
}
