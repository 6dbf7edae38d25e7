//! One router's running state: its setup in the namespace (kernel forwarding, addresses,
//! routes and rules, the fast path loaded or adopted and reconciled, the slow path's rules)
//! and how a new desired state is applied to it.

use std::collections::BTreeMap;

use router_common::{CtEntry, CtKey, TABLE_MAIN, iface_role};
use rtnetlink::Handle;

use super::{InterfaceInfo, RouterInfo, Writes, write_info};
use crate::{
    config::{IfAddr, Router},
    conntrack,
    datapath::Datapath,
    error::Error,
    maps::{Rooms as _, ifaces},
    netlink, netns, policy,
    reconcile::{self, RouterPort, RouterTables},
    slowpath,
};

/// Why `RouterState::mirror` returned.
pub(super) enum MirrorEnd {
    /// Stopped by the daemon; `teardown`: detach and remove everything.
    Stop { teardown: bool },
    /// An interface came back under a new ifindex: set the router up again.
    Rebuild,
}

pub(super) struct RouterState {
    pub(super) id: String,
    /// Desired interfaces that are gone from the namespace (logged once).
    pub(super) missing: std::collections::BTreeSet<String>,
    /// The desired state being run.
    pub(super) router: Router,
    pub(super) info: RouterInfo,
    pub(super) datapath: Datapath,
    /// What the maps hold of what the controller writes (see `reconcile`).
    pub(super) tables: RouterTables,
    /// The interfaces the router drives, by ifindex.
    pub(super) ports: BTreeMap<u32, RouterPort>,
    /// What `setup` wrote.
    pub(super) start_writes: Writes,
    /// What the slow path left for after the answer (`slowpath::Pending`).
    pub(super) slowpath_pending: slowpath::Pending,
}

/// What one start attempt made of the fast path that was not there before it, so that a
/// start that fails leaves no pins or links behind. The kernel's part (addresses, routes,
/// rules, the slow path's table) stays: the router is still desired, and while it waits the
/// kernel serves it alone (`degraded`). What the attempt found and adopted stays too.
#[derive(Default)]
pub(super) struct Made {
    /// The pins (maps, programs, links) are its own: it did not adopt them.
    pins: bool,
    /// The interfaces whose kernel was told to answer no ARP until the fast path attached
    /// (an HA router's first start): a failed start gives the kernel its voice back, as
    /// it serves the router alone meanwhile.
    arp_quiet: Vec<String>,
}

impl Made {
    /// Removes the fast path the attempt made. The datapath must have been dropped: its
    /// pins are removed here.
    pub(super) fn undo(self, router: &Router) {
        if let Err(e) = set_arp_ignore(router, &self.arp_quiet, ARP_ANSWER) {
            tracing::error!("{e}");
        }
        if self.pins {
            match crate::datapath::teardown(&router.id) {
                Ok(()) => tracing::info!(
                    "router {}: start failed: its pins and links removed",
                    router.id
                ),
                Err(e) => tracing::error!("router {}: removing its pins: {e}", router.id),
            }
        }
    }
}

/// Sets the router up (see [`setup_recording`]); a setup that fails removes what it made
/// ([`Made`]) before returning the error.
pub(super) async fn setup(router: &Router, handle: &Handle) -> Result<RouterState, Error> {
    let mut made = Made::default();
    match setup_recording(router, handle, &mut made).await {
        Ok(state) => Ok(state),
        Err(e) => {
            made.undo(router);
            Err(e)
        }
    }
}

/// Sets the router up in the calling thread's namespace: forwarding on, the addresses,
/// the static routes and rules, the fast path opened (adopted or new), reconciled and
/// attached, the slow path's rules. Records in `made` what it adds.
async fn setup_recording(
    router: &Router,
    handle: &Handle,
    made: &mut Made,
) -> Result<RouterState, Error> {
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
        let xdp_egress = router.mode.runs_xdp()
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
    // Sized and owned as below; needed here to know whether this is the router's first start.
    let sizes = crate::datapath::TableSizes::for_router(router);
    let owner = crate::datapath::Owner::current(&router.namespace, sizes)?;
    let adopting = crate::datapath::would_adopt(&router.id, &owner);
    if router.ha {
        kernel_writes += ipv6_off(router, &links)?;
        if !adopting {
            // A first start: until the fast path is attached (and silent), the kernel
            // would answer ARP for the router's addresses with the router's MAC, beside
            // the active node, and teach the switches to send its traffic here.
            let names: Vec<String> = links.iter().map(|(l, ..)| l.name.clone()).collect();
            kernel_writes += set_arp_ignore(router, &names, ARP_IGNORE_ALL)?;
            made.arp_quiet = names;
        }
    }
    for (link, addr, role, _) in &links {
        if !link.up {
            netlink::set_up(handle, link.index)
                .await
                .map_err(nl(format!("setting {} up", link.name)))?;
        }
        if *role == iface_role::EXTERNAL && crate::dvr::is_compute(router) {
            // A distributed router's compute copy holds no external address.
            kernel_writes +=
                usize::from(crate::dvr::kernel::on_link(handle, router, link.index).await?);
            continue;
        }
        if netlink::ensure_address(handle, link.index, *addr)
            .await
            .map_err(nl(format!("adding {addr} to {}", link.name)))?
        {
            tracing::info!("router {}: added {addr} to {}", router.id, link.name);
            kernel_writes += 1;
        }
    }
    if let (Some(g), Some((link, ..)), false) = (
        &router.gateway,
        links
            .iter()
            .find(|(_, _, role, _)| *role == iface_role::EXTERNAL),
        crate::dvr::is_compute(router),
    ) {
        for subnet in &g.subnets {
            if netlink::ensure_address(handle, link.index, subnet.address)
                .await
                .map_err(nl(format!("adding {} to {}", subnet.address, link.name)))?
            {
                tracing::info!(
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
    // A distributed router's ports, known before anything is forwarded to them.
    kernel_writes += crate::dvr::kernel::sync(handle, router).await?;

    // A routerd that ran this router before left its maps and links pinned: they are taken
    // over as they are (sessions, counters), and below only differences are written.
    // What `open` does not adopt, it makes: from here a failure removes it.
    made.pins = !adopting;
    let mut datapath = Datapath::open(&router.id, sizes, &owner, router.mode)?;
    let ports: BTreeMap<u32, RouterPort> = links
        .iter()
        .map(|(link, _, role, xdp_egress)| {
            let port = RouterPort {
                name: link.name.clone(),
                iface: ifaces::IfaceSpec {
                    mac: link.mac,
                    src_mac: crate::dvr::source_mac(
                        router,
                        link.mac,
                        *role == iface_role::EXTERNAL,
                    ),
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
    let mut tables = reconcile::read(&mut datapath)?;
    reconcile::reconcile(&mut datapath, &mut tables, router, &ports)?;
    // Before attaching: an HA router starts silent, until its node is elected.
    ha_role_follows(&mut datapath, router)?;
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
            xdp_unavailable: None,
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
        tables,
        ports,
        start_writes: Writes::default(),
        slowpath_pending: slowpath::Pending::default(),
    };
    state.resync(handle).await?;
    let attach: Vec<(String, u32)> = links
        .iter()
        .map(|(l, ..)| (l.name.clone(), l.index))
        .collect();
    let tc_only: Vec<(u32, String)> = links
        .iter()
        .filter_map(|(l, ..)| {
            let reason = netlink::tc_only(l).or_else(|| netlink::tc_by_choice(l, router.mode))?;
            Some((l.index, reason.to_string()))
        })
        .collect();
    let attached = state.datapath.attach(router.mode, &attach, &tc_only)?;
    // Attached: the fast path decides what of ARP the kernel sees (a standby, nothing).
    kernel_writes += set_arp_ignore(router, &made.arp_quiet, ARP_ANSWER)?;
    crate::dvr::kernel::announce_new(router, None);
    made.arp_quiet.clear();
    let adopted_links = attached.adopted;
    if !attached.xdp_unavailable.is_empty() {
        // XDP cannot send frames into an interface that runs no native XDP: the TC entry
        // forwards to it instead.
        for (ifindex, reason) in attached.xdp_unavailable {
            if let Some(port) = state.ports.get_mut(&ifindex) {
                port.iface.xdp_egress = false;
            }
            if let Some(info) = state
                .info
                .interfaces
                .iter_mut()
                .find(|i| i.ifindex == ifindex)
            {
                info.xdp_egress = false;
                info.xdp_unavailable = Some(reason);
            }
        }
        reconcile::reconcile(&mut state.datapath, &mut state.tables, router, &state.ports)?;
    }
    if state.datapath.adopted() {
        tracing::info!(
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
        tracing::info!(
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
pub(super) async fn sync_kernel_policy(handle: &Handle, router: &Router) -> Result<usize, Error> {
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
            fwmark: r.fwmark,
            suppress_prefixlength: r.suppress_prefixlength,
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
    pub(super) async fn reconfigure(
        &mut self,
        handle: &Handle,
        new: Router,
    ) -> Result<Writes, Error> {
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
        let changes =
            reconcile::reconcile(&mut self.datapath, &mut self.tables, &new, &self.ports)?;
        ha_role_follows(&mut self.datapath, &new)?;

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
        if let (Some(index), true) = (gateway_ifindex, crate::dvr::is_compute(&new)) {
            // A compute copy's external subnets are on-link, before their routes go in.
            address_writes += usize::from(crate::dvr::kernel::on_link(handle, &new, index).await?);
        } else if let (Some(index), Some(g)) = (gateway_ifindex, &new.gateway) {
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
        let kernel_writes = sync_kernel_policy(handle, &new).await?
            + crate::dvr::kernel::sync(handle, &new).await?;
        crate::dvr::kernel::announce_new(&new, Some(&old));
        slowpath::update(&old, &new, &mut self.slowpath_pending)?;
        // `update` writes one nftables transaction whenever the router changed (for a
        // floating IP removed alone, shortly after the answer: `slowpath::Pending`).
        let nft_writes = usize::from(old != new);
        self.router = new;
        write_info(&self.info)?;
        self.resync(handle).await?;
        tracing::info!(
            "router {}: applied new desired state in {} us; {ended} session(s) ended; {kernel_writes} kernel and {} map writes",
            self.id,
            started.elapsed().as_micros(),
            changes.writes()
        );
        Ok(Writes {
            map: self.datapath.writes() - map_writes_before,
            kernel: kernel_writes + address_writes + nft_writes,
        })
    }

    /// Ages sessions out.
    pub(super) fn collect_garbage(&mut self) -> Result<(), Error> {
        let timeouts = self.router.nat.timeouts.clone();
        let report = self
            .datapath
            .sessions()
            .collect_garbage(conntrack::monotonic_ns(), &timeouts)?;
        tracing::debug!("router {}: session gc {report:?}", self.id);
        if self.router.nat.snat_sessions_per_source != 0 {
            // The fast path only counts up; the table is the truth.
            self.datapath
                .nat()
                .sync_snat_sources(&report.snat_sources)?;
        }
        Ok(())
    }
}

/// The fast path's HA role as far as the desired state decides it: a router placed on
/// one node forwards as always; an HA router that has no role yet stands by (the HA agent
/// makes it active once this node is elected). A role the agent set is left alone.
fn ha_role_follows(datapath: &mut Datapath, router: &Router) -> Result<(), Error> {
    use router_common::{HaState, ha_role};
    let now = datapath.ha().state()?;
    let wanted = match (router.ha, now.role) {
        (false, ha_role::SINGLE) | (true, ha_role::ACTIVE | ha_role::STANDBY) => return Ok(()),
        (false, _) => ha_role::SINGLE,
        (true, _) => ha_role::STANDBY,
    };
    datapath.ha().set(HaState {
        role: wanted,
        ..HaState::default()
    })
}

/// `arp_ignore`: answer ARP for any local address (the kernel's default).
const ARP_ANSWER: &str = "0";
/// `arp_ignore`: answer no ARP at all.
const ARP_IGNORE_ALL: &str = "8";

/// Sets `arp_ignore` on the router's interfaces `names`. Returns the writes made.
fn set_arp_ignore(router: &Router, names: &[String], value: &str) -> Result<usize, Error> {
    let mut writes = 0;
    for name in names {
        // The path by hand: an interface name may hold dots, which sysctl's names cannot.
        let path = format!("/proc/sys/net/ipv4/conf/{name}/arp_ignore");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
            continue;
        }
        std::fs::write(&path, value).map_err(|e| {
            Error::io(
                format!("router {}: setting arp_ignore {value} on {name}", router.id),
                e,
            )
        })?;
        writes += 1;
    }
    Ok(writes)
}

/// Turns IPv6 off on an HA router's interfaces (before their addresses are added): on a
/// standby, the kernel's neighbour discovery and multicast reports would go out with the
/// router's MAC, and the switches would send the active's traffic to the silent standby.
/// Returns the writes made.
fn ipv6_off(router: &Router, links: &[(netlink::Link, IfAddr, u32, bool)]) -> Result<usize, Error> {
    let mut writes = 0;
    for (link, ..) in links {
        // The path by hand: an interface name may hold dots, which sysctl's names cannot.
        let path = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", link.name);
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            // No IPv6 in this kernel: nothing to turn off.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => {
                std::fs::write(&path, "1").map_err(|e| {
                    Error::io(
                        format!("router {}: turning IPv6 off on {}", router.id, link.name),
                        e,
                    )
                })?;
                writes += 1;
            }
        }
    }
    Ok(writes)
}
