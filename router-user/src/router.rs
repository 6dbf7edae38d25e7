//! One running router: a thread inside the router's namespace that sets the kernel up from
//! the desired state, loads and attaches the fast path, and keeps its maps in step with the
//! kernel's routes and neighbours.

use std::{
    collections::BTreeMap,
    sync::mpsc,
    thread::{self, JoinHandle},
    time::Duration,
};

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use router_common::{CtEntry, CtKey, RouteEntry, TABLE_MAIN, iface_role};
use rtnetlink::{Handle, MulticastGroup};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::{
    config::{IfAddr, Mode, Router},
    conntrack,
    datapath::Datapath,
    error::Error,
    maps::{Rooms as _, ifaces, routes::RouteSlot},
    netlink, netns, paths, policy,
    reconcile::{self, Port},
    slowpath,
};

/// How long route/address events are gathered before the routes are mirrored again.
const RESYNC_DELAY: Duration = Duration::from_millis(20);
/// A full re-read of routes and neighbours, in case a netlink event was lost.
const SAFETY_RESYNC: Duration = Duration::from_secs(10);
/// How often the pins are checked (someone may remove them by hand).
const PIN_CHECK: Duration = Duration::from_secs(1);
/// How often expired sessions are collected.
const GC_INTERVAL: Duration = Duration::from_secs(1);

/// What `routerctl` learns about a running router (written to `paths::RUN_DIR`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouterInfo {
    pub router: String,
    pub namespace: String,
    pub mode: String,
    pub interfaces: Vec<InterfaceInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    pub ifindex: u32,
    /// "internal" (qr) or "external" (qg).
    pub role: String,
    /// Whether XDP redirects into this interface (otherwise the TC entry forwards).
    pub xdp_egress: bool,
}

/// Writes a start or a reconfiguration made: map entries written or removed
/// (`Datapath::writes`), and kernel writes (netlink addresses, routes and rules, sysctls,
/// nftables transactions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writes {
    pub map: usize,
    pub kernel: usize,
}

impl std::ops::AddAssign for Writes {
    fn add_assign(&mut self, other: Self) {
        self.map += other.map;
        self.kernel += other.kernel;
    }
}

/// A router whose fast path is attached; dropping it without `stop` also stops it.
pub struct RunningRouter {
    pub info: RouterInfo,
    /// The desired state the router runs.
    pub desired: Router,
    /// What its start wrote (an adopted, unchanged fast path: nothing).
    pub start_writes: Writes,
    /// `true`: detach and remove everything; `false`: leave the fast path running.
    stop: Option<oneshot::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
    changes: tmpsc::UnboundedSender<Change>,
}

/// A new desired state for a running router, and where to say how applying it went.
struct Change {
    router: Router,
    done: oneshot::Sender<Result<Writes, Error>>,
}

impl RunningRouter {
    /// Sets the router up in its namespace and attaches the fast path. Returns once it
    /// forwards, or with the error that stopped it (then nothing of it stays attached).
    pub fn start(router: Router) -> Result<Self, Error> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (change_tx, change_rx) = tmpsc::unbounded_channel();
        let name = format!("router-{}", router.id);
        let desired = router.clone();
        let thread = thread::Builder::new()
            .name(name.clone())
            .spawn(move || run(router, ready_tx, stop_rx, change_rx))
            .map_err(|e| Error::io(format!("spawning thread {name}"), e))?;
        match ready_rx.recv() {
            Ok(Ok((info, start_writes))) => Ok(Self {
                info,
                desired,
                start_writes,
                stop: Some(stop_tx),
                thread: Some(thread),
                changes: change_tx,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::io(
                    format!("thread {name} ended during setup"),
                    std::io::Error::other("panicked"),
                ))
            }
        }
    }

    /// Starts `routers` (as `start`) with up to `parallel` setting up at once, and returns
    /// them in the order given; each result is that router's. Loading is mostly the
    /// verifier's work on one CPU, so a node's routers come up about `parallel` times faster
    /// than one after another.
    pub fn start_all(routers: Vec<Router>, parallel: usize) -> Vec<Result<Self, Error>> {
        use std::sync::{
            Mutex,
            atomic::{AtomicUsize, Ordering},
        };
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Self, Error>>>> =
            Mutex::new(routers.iter().map(|_| None).collect());
        thread::scope(|scope| {
            for _ in 0..parallel.clamp(1, routers.len().max(1)) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(router) = routers.get(i) else { break };
                        let started = Self::start(router.clone());
                        if let Ok(mut slots) = results.lock() {
                            slots[i] = Some(started);
                        }
                    }
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_default()
            .into_iter()
            .zip(&routers)
            .map(|(r, router)| {
                r.unwrap_or_else(|| {
                    Err(Error::io(
                        format!("starting router {}", router.id),
                        std::io::Error::other("its start thread panicked"),
                    ))
                })
            })
            .collect()
    }

    /// Whether `new` can be applied to this router without restarting it (see
    /// [`can_apply`]).
    pub fn can_apply(&self, new: &Router) -> bool {
        can_apply(&self.desired, new)
    }

    /// Applies `new` to the running router (see `can_apply`): floating IPs, NAT settings,
    /// routes, removed interfaces or gateway. Sessions that used anything removed end at once.
    /// Returns the writes it made.
    pub async fn apply(&mut self, new: Router) -> Result<Writes, Error> {
        let (done, result) = oneshot::channel();
        let change = Change {
            router: new.clone(),
            done,
        };
        let gone = || {
            Error::io(
                format!("router {}", new.id),
                std::io::Error::other("router thread ended"),
            )
        };
        self.changes.send(change).map_err(|_| gone())?;
        let writes = result.await.map_err(|_| gone())??;
        self.desired = new;
        Ok(writes)
    }

    /// Stops following the router, leaving its fast path running and pinned for the next
    /// routerd (which adopts it), and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown(false);
    }

    /// Detaches the fast path, removes its pins and slow-path rules (the router is gone from
    /// the desired state), and waits for the thread.
    pub fn remove(mut self) {
        self.shutdown(true);
    }

    fn shutdown(&mut self, teardown: bool) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(teardown);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningRouter {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

/// Whether a router running `old` can take `new` without restarting: same namespace and
/// mode, same table sizes, and no interface added or changed (removals are live).
pub fn can_apply(old: &Router, new: &Router) -> bool {
    let gateway_ok = match (&old.gateway, &new.gateway) {
        (_, None) => true,
        (Some(a), Some(b)) => {
            a.interface == b.interface && a.address == b.address && a.xdp_egress == b.xdp_egress
        }
        (None, Some(_)) => false,
    };
    old.namespace == new.namespace
        && old.mode == new.mode
        && old.nat.max_sessions == new.nat.max_sessions
        && old.nat.max_floating_ips == new.nat.max_floating_ips
        && gateway_ok
        && new.interfaces.iter().all(|i| {
            // Allowed sources change live; anything else about an interface restarts.
            old.interfaces.iter().any(|o| {
                crate::config::Interface {
                    allowed_sources: i.allowed_sources.clone(),
                    ..o.clone()
                } == *i
            })
        })
}

fn run(
    router: Router,
    ready: mpsc::Sender<Result<(RouterInfo, Writes), Error>>,
    stop: oneshot::Receiver<bool>,
    changes: tmpsc::UnboundedReceiver<Change>,
) {
    let fail = |e| {
        let _ = ready.send(Err(e));
    };
    let ready_ok = ready.clone();
    if let Err(source) = netns::enter(&paths::netns_path(&router.namespace)) {
        return fail(Error::Namespace {
            router: router.id.clone(),
            namespace: router.namespace.clone(),
            source,
        });
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(Error::io("building the router runtime", e)),
    };
    runtime.block_on(async move {
        let (conn, handle, _) = match rtnetlink::new_connection() {
            Ok(c) => c,
            Err(e) => return fail(Error::io("opening rtnetlink", e)),
        };
        tokio::spawn(conn);
        let mut state = match setup(&router, &handle).await {
            Ok(state) => state,
            Err(e) => return fail(e),
        };
        let info = state.info.clone();
        if let Err(e) = write_info(&info) {
            return fail(e);
        }
        let _ = ready_ok.send(Ok((info, state.start_writes)));
        log::info!(
            "router {}: fast path attached ({} mode) to {}",
            router.id,
            router.mode,
            state
                .info
                .interfaces
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let (mut stop, mut changes) = (stop, changes);
        let teardown = loop {
            match state.mirror(&handle, &mut stop, &mut changes).await {
                Ok(MirrorEnd::Stop { teardown }) => break teardown,
                Ok(MirrorEnd::Rebuild) => {
                    // An interface came back with a new ifindex: set the router up again
                    // from its current desired state, adopting its own pinned maps (sessions
                    // and counters stay) and attaching to the new interface.
                    let desired = state.router.clone();
                    drop(state);
                    state = loop {
                        match setup(&desired, &handle).await {
                            Ok(s) => break s,
                            Err(e) => {
                                log::error!("router {}: repairing: {e}; retrying", desired.id);
                                if let Ok(teardown) = stop.try_recv() {
                                    log::info!("router {}: stopped while repairing", desired.id);
                                    if teardown {
                                        let _ = crate::datapath::teardown(&desired.id);
                                    }
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    };
                    if let Err(e) = write_info(&state.info) {
                        log::error!("router {}: {e}", desired.id);
                    }
                    log::info!(
                        "router {}: repaired: re-attached to {}",
                        desired.id,
                        state
                            .info
                            .interfaces
                            .iter()
                            .map(|i| format!("{} (ifindex {})", i.name, i.ifindex))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                Err(e) => {
                    log::error!("router {}: mirror stopped: {e}", router.id);
                    break false;
                }
            }
        };
        if teardown {
            slowpath::remove(&router.id);
            let _ = std::fs::remove_file(paths::router_info_file(&router.id));
            drop(state);
            match crate::datapath::teardown(&router.id) {
                Ok(()) => log::info!("router {}: detached and removed", router.id),
                Err(e) => log::error!("router {}: removing its pins: {e}", router.id),
            }
        } else {
            // The fast path keeps forwarding; the next routerd adopts it.
            log::info!("router {}: left running for the next routerd", router.id);
        }
    });
}

/// Why `RouterState::mirror` returned.
enum MirrorEnd {
    /// Stopped by the daemon; `teardown`: detach and remove everything.
    Stop { teardown: bool },
    /// An interface came back under a new ifindex: set the router up again.
    Rebuild,
}

struct RouterState {
    id: String,
    /// Desired interfaces that are gone from the namespace (logged once).
    missing: std::collections::BTreeSet<String>,
    /// The desired state being run.
    router: Router,
    info: RouterInfo,
    datapath: Datapath,
    /// The interfaces the router drives, by ifindex.
    ports: BTreeMap<u32, Port>,
    /// What `setup` wrote.
    start_writes: Writes,
}

async fn setup(router: &Router, handle: &Handle) -> Result<RouterState, Error> {
    let nl = |what: String| {
        let router = router.id.clone();
        move |source| Error::Netlink {
            router,
            what,
            source: Box::new(source),
        }
    };
    // Everything is resolved before anything is changed.
    let mut wanted = Vec::new();
    if let Some(g) = &router.gateway {
        wanted.push((
            g.interface.clone(),
            g.address,
            iface_role::EXTERNAL,
            g.xdp_egress,
        ));
    }
    for i in &router.interfaces {
        wanted.push((
            i.name.clone(),
            i.address,
            iface_role::INTERNAL,
            i.xdp_egress,
        ));
    }
    let mut links = Vec::new();
    for (name, addr, role, xdp_egress) in &wanted {
        let link = netlink::link_by_name(handle, name)
            .await
            .map_err(nl(format!("looking up {name}")))?
            .ok_or_else(|| Error::InterfaceMissing {
                router: router.id.clone(),
                interface: name.clone(),
                namespace: router.namespace.clone(),
            })?;
        let xdp_egress = router.mode == Mode::Xdp
            && xdp_egress.unwrap_or_else(|| netlink::xdp_egress_default(&link));
        links.push((link, *addr, *role, xdp_egress));
    }

    // The kernel stays the slow path: it forwards what the fast path hands over (and
    // answers TTL expiry), so it needs forwarding on and the same addresses and routes.
    let mut kernel_writes = 0;
    if netns::read_sysctl("net.ipv4.ip_forward").as_deref() != Some("1") {
        netns::write_sysctl("net.ipv4.ip_forward", "1").map_err(|e| {
            Error::io(
                format!("router {}: enabling net.ipv4.ip_forward", router.id),
                e,
            )
        })?;
        kernel_writes += 1;
    }
    for (link, addr, _, _) in &links {
        if !link.up {
            netlink::set_up(handle, link.index)
                .await
                .map_err(nl(format!("setting {} up", link.name)))?;
        }
        if netlink::ensure_address(handle, link.index, *addr)
            .await
            .map_err(nl(format!("adding {addr} to {}", link.name)))?
        {
            log::info!("router {}: added {addr} to {}", router.id, link.name);
            kernel_writes += 1;
        }
    }
    if let (Some(g), Some((link, ..))) = (
        &router.gateway,
        links
            .iter()
            .find(|(_, _, role, _)| *role == iface_role::EXTERNAL),
    ) {
        for subnet in &g.subnets {
            if netlink::ensure_address(handle, link.index, subnet.address)
                .await
                .map_err(nl(format!("adding {} to {}", subnet.address, link.name)))?
            {
                log::info!(
                    "router {}: added {} to {}",
                    router.id,
                    subnet.address,
                    link.name
                );
                kernel_writes += 1;
            }
        }
    }
    kernel_writes += sync_kernel_policy(handle, router).await?;

    // A routerd that ran this router before left its maps and links pinned: they are taken
    // over as they are (sessions, counters), and below only differences are written.
    let sizes = crate::datapath::TableSizes {
        session_entries: router.nat.max_sessions.saturating_mul(2),
        floating_ips: router.nat.max_floating_ips,
    };
    let owner = crate::datapath::Owner::current(&router.namespace, sizes)?;
    let mut datapath = Datapath::open(&router.id, sizes, &owner, router.mode)?;
    let ports: BTreeMap<u32, Port> = links
        .iter()
        .map(|(link, _, role, xdp_egress)| {
            let port = Port {
                name: link.name.clone(),
                iface: ifaces::Wanted {
                    mac: link.mac,
                    mtu: link.mtu,
                    external: *role == iface_role::EXTERNAL,
                    xdp_egress: *xdp_egress,
                    source_check: source_checked(router, &link.name),
                },
            };
            (link.index, port)
        })
        .collect();
    // Interfaces of an earlier run that are gone (one that came back has a new ifindex) are
    // not among the ports: the plan removes them.
    reconcile::reconcile(&mut datapath, router, &ports)?;
    if !datapath.adopted() {
        datapath.nat().reset_snat_stats()?;
    }
    // In the order of the desired state: the gateway first, then the internal interfaces.
    let infos = links
        .iter()
        .filter_map(|(link, ..)| Some((link.index, ports.get(&link.index)?)))
        .map(|(ifindex, p)| InterfaceInfo {
            name: p.name.clone(),
            ifindex,
            role: if p.iface.external {
                "external"
            } else {
                "internal"
            }
            .to_string(),
            xdp_egress: p.iface.xdp_egress,
        })
        .collect();
    // The kernel's NAT rules are in place before the fast path hands it anything.
    if slowpath::ensure(router)? {
        kernel_writes += 1;
    }
    let mut state = RouterState {
        id: router.id.clone(),
        missing: Default::default(),
        router: router.clone(),
        info: RouterInfo {
            router: router.id.clone(),
            namespace: router.namespace.clone(),
            mode: router.mode.to_string(),
            interfaces: infos,
        },
        datapath,
        ports,
        start_writes: Writes::default(),
    };
    state.resync(handle).await?;
    let attach: Vec<(String, u32)> = links
        .iter()
        .map(|(l, ..)| (l.name.clone(), l.index))
        .collect();
    let adopted_links = state.datapath.attach(router.mode, &attach)?;
    if state.datapath.adopted() {
        log::info!(
            "router {}: adopted the running fast path ({adopted_links} links, {}); {} map writes, {kernel_writes} kernel writes",
            router.id,
            if state.datapath.programs_adopted() {
                "the same build's programs kept, not verified again"
            } else {
                "programs of this build swapped in atomically"
            },
            state.datapath.writes()
        );
    } else {
        log::info!(
            "router {}: new fast path; {} map writes, {kernel_writes} kernel writes",
            router.id,
            state.datapath.writes()
        );
    }
    state.start_writes = Writes {
        map: state.datapath.writes(),
        kernel: kernel_writes,
    };
    Ok(state)
}

/// Makes the kernel's static routes (every table) and policy rules those of `router`'s
/// policy: adds what is missing, removes what is no longer wanted. Returns the writes.
async fn sync_kernel_policy(handle: &Handle, router: &Router) -> Result<usize, Error> {
    let nl = |what: String| {
        let router = router.id.clone();
        move |source| Error::Netlink {
            router,
            what,
            source: Box::new(source),
        }
    };
    let p = policy::of(router);
    let mut wanted: Vec<netlink::StaticRoute> = p
        .routes
        .iter()
        .map(|r| netlink::StaticRoute {
            table: r.table,
            destination: r.destination,
            nexthop: r.nexthop,
        })
        .collect();
    if let Some(g) = &router.gateway {
        wanted.push(netlink::StaticRoute {
            table: TABLE_MAIN,
            destination: crate::config::Prefix::ANY,
            nexthop: g.nexthop,
        });
    }
    let mut writes = 0;
    // Rules first out, routes first in: a rule never points at a table being emptied.
    let rules: Vec<netlink::KernelRule> = p
        .rules
        .iter()
        .map(|r| netlink::KernelRule {
            priority: r.priority,
            iif: r.iif.clone(),
            from: r.from,
            to: r.to,
            table: r.table,
        })
        .collect();
    let present = netlink::rules(handle)
        .await
        .map_err(nl("dumping rules".into()))?;
    for (rule, msg) in present.iter().filter(|(r, _)| !rules.contains(r)) {
        netlink::delete_rule(handle, msg.clone())
            .await
            .map_err(nl(format!("deleting rule {rule:?}")))?;
        writes += 1;
    }
    let routes = netlink::static_routes(handle)
        .await
        .map_err(nl("dumping routes".into()))?;
    for route in &wanted {
        if !routes.iter().any(|(r, _)| r == route) {
            netlink::ensure_route(handle, *route)
                .await
                .map_err(nl(format!(
                    "adding route {} via {} (table {})",
                    route.destination, route.nexthop, route.table
                )))?;
            writes += 1;
        }
    }
    for (route, msg) in routes.iter().filter(|(r, _)| !wanted.contains(r)) {
        netlink::delete_route(handle, msg.clone())
            .await
            .map_err(nl(format!("deleting route {route:?}")))?;
        writes += 1;
    }
    for rule in rules
        .iter()
        .filter(|r| !present.iter().any(|(p, _)| p == *r))
    {
        netlink::add_rule(handle, rule)
            .await
            .map_err(nl(format!("adding rule {rule:?}")))?;
        writes += 1;
    }
    Ok(writes)
}

/// Whether packets arriving on interface `name` are checked against their allowed sources.
fn source_checked(router: &Router, name: &str) -> bool {
    router
        .interfaces
        .iter()
        .any(|i| i.name == name && i.source_check)
}

/// Whether the firewall `rules` (first match wins, then the default) allow the flow of a
/// session's original direction, as the fast path judges it: source before SNAT,
/// destination after DNAT.
fn firewall_allows(
    rules: &[router_common::FwRule],
    default_allow: bool,
    key: &CtKey,
    entry: &CtEntry,
) -> bool {
    let dport = match key.proto {
        6 | 17 => u16::from_be_bytes(key.dport),
        _ => 0,
    };
    rules
        .iter()
        .find(|r| r.matches(key.proto, key.src, entry.new_dst, dport))
        .map_or(default_allow, |r| {
            r.action == router_common::fw_action::ALLOW
        })
}

/// Whether a session mentions `addr` in any of its tuples.
fn session_uses(key: &CtKey, entry: &CtEntry, pred: &dyn Fn([u8; 4]) -> bool) -> bool {
    [key.src, key.dst, entry.new_src, entry.new_dst]
        .into_iter()
        .any(pred)
}

impl RouterState {
    /// Applies a new desired state (one `RunningRouter::can_apply` accepted): interfaces
    /// and the gateway that are gone are detached, the maps reconciled with the new state,
    /// and the sessions that used anything removed end. Returns the writes it made.
    async fn reconfigure(&mut self, handle: &Handle, new: Router) -> Result<Writes, Error> {
        let started = std::time::Instant::now();
        let map_writes_before = self.datapath.writes();
        let mut address_writes = 0;
        let old = self.router.clone();
        let nl = |what: String| {
            let router = old.id.clone();
            move |source| Error::Netlink {
                router,
                what,
                source: Box::new(source),
            }
        };
        // Interfaces and the gateway that are gone: detached, their address dropped (and with
        // it the kernel's routes); the plan below removes them from the maps.
        let mut removed: Vec<(String, IfAddr)> = old
            .interfaces
            .iter()
            .filter(|i| {
                !new.interfaces
                    .iter()
                    .any(|n| n.name == i.name && n.address == i.address)
            })
            .map(|i| (i.name.clone(), i.address))
            .collect();
        if let (Some(g), None) = (&old.gateway, &new.gateway) {
            removed.push((g.interface.clone(), g.address));
        }
        for (name, addr) in &removed {
            let index = self
                .ports
                .iter()
                .find(|(_, p)| p.name == *name)
                .map(|(i, _)| *i);
            if let Some(index) = index {
                self.datapath.detach_iface(index)?;
                self.ports.remove(&index);
                self.info.interfaces.retain(|i| i.ifindex != index);
                netlink::delete_address(handle, index, *addr)
                    .await
                    .map_err(nl(format!("removing {addr} from {name}")))?;
                address_writes += 1;
            }
        }
        let plan = reconcile::reconcile(&mut self.datapath, &new, &self.ports)?;

        // Sessions that used what is gone end now, in one pass over the table each.
        let mut ended = 0;
        for (_, addr) in &removed {
            let subnet = addr.subnet();
            let gateway_ip = addr.addr.octets();
            ended += self.datapath.sessions().purge(|k, e| {
                session_uses(k, e, &|a| {
                    a == gateway_ip || subnet.contains(std::net::Ipv4Addr::from(a))
                })
            })?;
        }
        let after: std::collections::BTreeSet<_> = new.floating_ips.iter().collect();
        let gone: Vec<_> = old
            .floating_ips
            .iter()
            .filter(|f| !after.contains(f))
            .collect();
        if !gone.is_empty() {
            let addrs: std::collections::HashSet<[u8; 4]> = gone
                .iter()
                .flat_map(|f| [f.address.octets(), f.fixed.octets()])
                .collect();
            ended += self
                .datapath
                .sessions()
                .purge(|k, e| session_uses(k, e, &|a| addrs.contains(&a)))?;
            flush_kernel_conntrack(&gone.iter().map(|f| f.address).collect::<Vec<_>>());
        }
        let snat_before = old.gateway.as_ref().is_some_and(|g| g.snat);
        let snat_after = new.gateway.as_ref().is_some_and(|g| g.snat);
        if let (true, false, Some(g)) = (snat_before, snat_after, &old.gateway) {
            let gw = g.address.addr.octets();
            ended += self
                .datapath
                .sessions()
                .purge(|k, e| session_uses(k, e, &|a| a == gw))?;
        }
        if new.firewall != old.firewall
            && let Some(fw) = &new.firewall
        {
            // Flows a changed firewall no longer allows end now, as Neutron's FWaaS driver
            // deletes their conntrack entries.
            let rules = self.datapath.policy().fw_rules()?;
            let denied = |k: &CtKey, e: &CtEntry| {
                e.direction == router_common::ct_dir::ORIGINAL
                    && !firewall_allows(&rules, fw.default_allow, k, e)
            };
            ended += self.datapath.sessions().purge(denied)?;
        }

        // External subnets added or removed: their addresses on the gateway.
        let gateway_ifindex = self
            .ports
            .iter()
            .find(|(_, p)| p.iface.external)
            .map(|(i, _)| *i);
        if let (Some(index), Some(g)) = (gateway_ifindex, &new.gateway) {
            let before = old
                .gateway
                .as_ref()
                .map(|g| g.subnets.clone())
                .unwrap_or_default();
            for s in before.iter().filter(|s| !g.subnets.contains(s)) {
                netlink::delete_address(handle, index, s.address)
                    .await
                    .map_err(nl(format!("removing {}", s.address)))?;
                address_writes += 1;
            }
            for s in g.subnets.iter().filter(|s| !before.contains(s)) {
                if netlink::ensure_address(handle, index, s.address)
                    .await
                    .map_err(nl(format!("adding {}", s.address)))?
                {
                    address_writes += 1;
                }
            }
        }
        let kernel_writes = sync_kernel_policy(handle, &new).await?;
        slowpath::update(&old, &new)?;
        // `update` writes one nftables transaction whenever the router changed.
        let nft_writes = usize::from(old != new);
        self.router = new;
        write_info(&self.info)?;
        self.resync(handle).await?;
        log::info!(
            "router {}: applied new desired state in {} us; {ended} session(s) ended; {kernel_writes} kernel and {} map writes",
            self.id,
            started.elapsed().as_micros(),
            plan.writes()
        );
        Ok(Writes {
            map: self.datapath.writes() - map_writes_before,
            kernel: kernel_writes + address_writes + nft_writes,
        })
    }

    /// Ages sessions out.
    fn collect_garbage(&mut self) -> Result<(), Error> {
        let timeouts = self.router.nat.timeouts.clone();
        let report = self
            .datapath
            .sessions()
            .collect_garbage(conntrack::monotonic_ns(), &timeouts)?;
        log::debug!("router {}: session gc {report:?}", self.id);
        if self.router.nat.snat_sessions_per_source != 0 {
            // The fast path only counts up; the table is the truth.
            self.datapath
                .nat()
                .sync_snat_sources(&report.snat_sources)?;
        }
        Ok(())
    }

    /// Mirrors the kernel's routes and neighbours into the maps, writing only differences.
    async fn resync(&mut self, handle: &Handle) -> Result<(), Error> {
        let nl = |what: &str| {
            let router = self.id.clone();
            let what = what.to_string();
            move |source| Error::Netlink {
                router,
                what,
                source: Box::new(source),
            }
        };
        let routes = netlink::route_entries(handle)
            .await
            .map_err(nl("dumping routes"))?;
        let mut wanted: BTreeMap<RouteSlot, RouteEntry> = BTreeMap::new();
        for (len, key, entry) in routes {
            // The kernel consults its local table first: a local entry wins a tie.
            let slot = (len, key);
            let keep_local = wanted
                .get(&slot)
                .is_some_and(|e| e.kind == router_common::route_kind::LOCAL);
            if !keep_local {
                wanted.insert(slot, entry);
            }
        }
        // The kernel consults the local table before any rule: every other table gets the
        // local entries too, so a rule's table never routes away a packet for the router.
        let tables: std::collections::BTreeSet<[u8; 4]> = wanted
            .keys()
            .map(|(_, k)| k.table_be)
            .filter(|t| *t != TABLE_MAIN.to_be_bytes())
            .collect();
        let locals: Vec<(RouteSlot, RouteEntry)> = wanted
            .iter()
            .filter(|(_, e)| e.kind == router_common::route_kind::LOCAL)
            .map(|(s, e)| (*s, *e))
            .collect();
        for table in tables {
            for ((len, key), entry) in &locals {
                let slot = (
                    *len,
                    router_common::RouteKey {
                        table_be: table,
                        ..*key
                    },
                );
                wanted.entry(slot).or_insert(*entry);
            }
        }
        let writes = self.datapath.routes().sync(&wanted)?;
        if writes > 0 {
            log::debug!("router {}: {writes} route writes", self.id);
        }
        let neighbors = netlink::neighbor_entries(handle)
            .await
            .map_err(nl("dumping neighbours"))?;
        let ours: Vec<_> = neighbors
            .into_iter()
            .filter(|(k, _)| self.ports.contains_key(&k.ifindex))
            .collect();
        self.datapath.routes().sync_neighbors(&ours)?;
        Ok(())
    }

    /// Follows netlink events until `stop` fires: neighbours are applied one by one as they
    /// change, route and address changes trigger a re-mirror of the routes.
    /// Follows the kernel and the desired state until stopped, or until an interface of the
    /// router comes back with a new ifindex (then the router is set up again).
    async fn mirror(
        &mut self,
        handle: &Handle,
        stop: &mut oneshot::Receiver<bool>,
        changes: &mut tmpsc::UnboundedReceiver<Change>,
    ) -> Result<MirrorEnd, Error> {
        let groups = [
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Link,
        ];
        let (conn, _, mut events) = rtnetlink::new_multicast_connection(&groups)
            .map_err(|e| Error::io("subscribing to rtnetlink events", e))?;
        tokio::spawn(conn);
        // Events between setup's dump and the subscription would be lost: read again.
        self.resync(handle).await?;
        let mut dirty = false;
        let mut safety = tokio::time::interval(SAFETY_RESYNC);
        let mut gc = tokio::time::interval(GC_INTERVAL);
        let mut pins = tokio::time::interval(PIN_CHECK);
        loop {
            // Maps are opened per event and closed here (see `Datapath::release_maps`).
            self.datapath.release_maps();
            tokio::select! {
                teardown = &mut *stop => {
                    return Ok(MirrorEnd::Stop { teardown: teardown.unwrap_or(false) });
                }
                Some(change) = changes.recv() => {
                    let result = self.reconfigure(handle, change.router).await;
                    if let Err(e) = &result {
                        log::error!("router {}: applying the new desired state: {e}", self.id);
                    }
                    let _ = change.done.send(result);
                }
                _ = pins.tick() => {
                    self.check_pins()?;
                    self.check_namespace();
                }
                _ = gc.tick() => {
                    if let Err(e) = self.collect_garbage() {
                        log::warn!("router {}: session gc: {e}", self.id);
                    }
                }
                event = events.next() => {
                    let Some((msg, _)) = event else {
                        log::warn!("router {}: rtnetlink event stream ended; resubscribing", self.id);
                        return Box::pin(self.mirror(handle, stop, changes)).await;
                    };
                    match msg.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n))
                        | NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                            self.apply_neighbor(&n)?;
                        }
                        NetlinkPayload::InnerMessage(_) => dirty = true,
                        // An overrun (ENOBUFS) loses events: read everything again.
                        NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_) => {
                            log::warn!(
                                "router {}: netlink events lost (overrun); reading everything again",
                                self.id
                            );
                            dirty = true;
                        }
                        _ => {}
                    }
                }
                _ = tokio::time::sleep(RESYNC_DELAY), if dirty => {
                    dirty = false;
                    if self.repair(handle).await? {
                        return Ok(MirrorEnd::Rebuild);
                    }
                    self.resync(handle).await?;
                }
                _ = safety.tick() => {
                    if self.repair(handle).await? {
                        return Ok(MirrorEnd::Rebuild);
                    }
                    self.resync(handle).await?;
                }
            }
        }
    }

    /// Drift repair: what someone changed by hand in the namespace goes back to the desired
    /// state (addresses, links down, routes and rules), and is logged. Returns whether an
    /// interface came back under a new ifindex (the router must be set up again).
    async fn repair(&mut self, handle: &Handle) -> Result<bool, Error> {
        let nl = |what: String| {
            let router = self.id.clone();
            move |source| Error::Netlink {
                router,
                what,
                source: Box::new(source),
            }
        };
        self.check_namespace();
        let mut wanted: Vec<(String, Vec<IfAddr>)> = Vec::new();
        if let Some(g) = &self.router.gateway {
            let mut addrs = vec![g.address];
            addrs.extend(g.subnets.iter().map(|s| s.address));
            wanted.push((g.interface.clone(), addrs));
        }
        for i in &self.router.interfaces {
            wanted.push((i.name.clone(), vec![i.address]));
        }
        for (name, addrs) in &wanted {
            let link = netlink::link_by_name(handle, name)
                .await
                .map_err(nl(format!("looking up {name}")))?;
            let Some(link) = link else {
                if self.missing.insert(name.clone()) {
                    log::warn!(
                        "router {}: interface {name} is gone; waiting for it to come back",
                        self.id
                    );
                }
                continue;
            };
            let known = self
                .ports
                .iter()
                .find(|(_, p)| p.name == *name)
                .map(|(i, _)| *i);
            if known != Some(link.index) {
                log::warn!(
                    "router {}: interface {name} is back as ifindex {}; re-attaching",
                    self.id,
                    link.index
                );
                return Ok(true);
            }
            if self.missing.remove(name) {
                log::info!("router {}: interface {name} is back", self.id);
            }
            if !link.up {
                netlink::set_up(handle, link.index)
                    .await
                    .map_err(nl(format!("setting {name} up")))?;
                log::warn!("router {}: repaired: {name} was down, set up", self.id);
            }
            for addr in addrs {
                if netlink::ensure_address(handle, link.index, *addr)
                    .await
                    .map_err(nl(format!("adding {addr} to {name}")))?
                {
                    log::warn!("router {}: repaired: {addr} re-added to {name}", self.id);
                }
            }
        }
        self.check_pins()?;
        let writes = sync_kernel_policy(handle, &self.router).await?;
        if writes > 0 {
            log::warn!(
                "router {}: repaired: {writes} route or rule changes restored the desired state",
                self.id
            );
        }
        Ok(false)
    }

    /// A router namespace deleted by hand (`ip netns del`) lives on while this thread is in
    /// it, interfaces and all, and keeps forwarding; its name is bound again so that
    /// operators (and the next routerd) find it.
    fn check_namespace(&self) {
        let path = paths::netns_path(&self.router.namespace);
        if path.exists() {
            return;
        }
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(paths::NETNS_DIR)?;
            std::fs::File::create(&path)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(std::io::Error::from)
        })();
        match result {
            Ok(()) => log::warn!(
                "router {}: repaired: namespace {} was deleted under the router; bound again",
                self.id,
                self.router.namespace
            ),
            Err(e) => log::error!(
                "router {}: namespace {} was deleted and cannot be bound again: {e}",
                self.id,
                self.router.namespace
            ),
        }
    }

    /// Pins removed from bpffs by hand are restored (the fast path would otherwise detach
    /// when routerd ends).
    fn check_pins(&mut self) -> Result<(), Error> {
        let repinned = self.datapath.repair_pins()?;
        if !repinned.is_empty() {
            log::warn!(
                "router {}: repaired: pins removed by hand restored: {}",
                self.id,
                repinned.join(", ")
            );
        }
        Ok(())
    }

    fn apply_neighbor(
        &mut self,
        msg: &netlink_packet_route::neighbour::NeighbourMessage,
    ) -> Result<(), Error> {
        let Some((key, entry)) = netlink::neighbor_entry(msg) else {
            return Ok(());
        };
        if !self.ports.contains_key(&key.ifindex) {
            return Ok(());
        }
        log::debug!("router {}: neighbour {:?} -> {:?}", self.id, key, entry);
        self.datapath.routes().set_neighbor(key, entry)
    }
}

/// Ends the kernel's own (slow-path) sessions of removed floating IPs. Best effort: the
/// fast path no longer translates them either way.
fn flush_kernel_conntrack(fips: &[std::net::Ipv4Addr]) {
    let fips = fips.to_vec();
    // On a thread of its own: the rules that made those sessions are gone already, and the
    // conntrack tool takes tens of milliseconds that an apply need not wait for.
    let spawned = std::thread::Builder::new()
        .name("conntrack-flush".into())
        .spawn(move || {
            let run = |args: &[&str]| {
                let _ = std::process::Command::new("conntrack")
                    .args(args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            };
            // Past a handful, one flush of the kernel's (rare, slow-path) sessions is cheaper
            // than two processes per address.
            if fips.len() > 8 {
                return run(&["-F"]);
            }
            for fip in &fips {
                for flag in ["--orig-dst", "--reply-dst"] {
                    run(&["-D", flag, &fip.to_string()]);
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("flushing the kernel's sessions of removed floating IPs: {e}");
    }
}

fn write_info(info: &RouterInfo) -> Result<(), Error> {
    std::fs::create_dir_all(paths::RUN_DIR)
        .map_err(|e| Error::io(format!("creating {}", paths::RUN_DIR), e))?;
    let path = paths::router_info_file(&info.router);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(info)
        .map_err(|e| Error::io("encoding router info", std::io::Error::other(e)))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(format!("renaming {}", path.display()), e))
}

/// Reads the info files of every running router.
pub fn running_routers() -> Result<Vec<RouterInfo>, Error> {
    let mut out = Vec::new();
    let dir = match std::fs::read_dir(paths::RUN_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("reading {}", paths::RUN_DIR), e)),
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let info: RouterInfo = serde_json::from_str(&text).map_err(|e| {
                Error::io(
                    format!("parsing {}", path.display()),
                    std::io::Error::other(e),
                )
            })?;
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.router.cmp(&b.router));
    Ok(out)
}
