//! A running router following the kernel and the desired state: the routes and neighbours
//! mirrored into the maps from rtnetlink events, drift repaired, sessions aged out, pins
//! and the namespace kept.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use router_common::{RouteEntry, TABLE_MAIN};
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::{
    Change,
    state::{MirrorEnd, RouterState, sync_kernel_policy},
};
use crate::{
    config::IfAddr,
    error::Error,
    maps::{Rooms as _, routes::RouteSlot},
    netlink, paths, reconcile, slowpath,
};

/// When the slow path settles what a change of floating IPs left for later
/// (`slowpath::Pending`: removed elements, its record): this long after the first change
/// that left it, so that the changes of a burst do not wait behind it and it is done once
/// for them.
const SLOWPATH_SETTLE_DELAY: Duration = Duration::from_millis(500);

/// How long route/address events are gathered before the routes are mirrored again.
const RESYNC_DELAY: Duration = Duration::from_millis(20);
/// A full re-read of routes and neighbours, in case a netlink event was lost.
const SAFETY_RESYNC: Duration = Duration::from_secs(10);
/// How often the pins are checked (someone may remove them by hand).
const PIN_CHECK: Duration = Duration::from_secs(1);
/// How often expired sessions are collected.
const GC_INTERVAL: Duration = Duration::from_secs(1);

impl RouterState {
    /// Mirrors the kernel's routes and neighbours into the maps, writing only differences.
    pub(super) async fn resync(&mut self, handle: &Handle) -> Result<(), Error> {
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
            tracing::debug!("router {}: {writes} route writes", self.id);
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
    pub(super) async fn mirror(
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
            MulticastGroup::Tc,
        ];
        let (conn, _, mut events) = rtnetlink::new_multicast_connection(&groups)
            .map_err(|e| Error::io("subscribing to rtnetlink events", e))?;
        tokio::spawn(conn);
        // Events between setup's dump and the subscription would be lost: read again.
        self.resync(handle).await?;
        let mut dirty = false;
        // A repair that failed (the kernel changed under it: a route's gateway went with an
        // address removed meanwhile) is tried again shortly; the mirror goes on.
        let mut failing = false;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut safety = tokio::time::interval(SAFETY_RESYNC);
        let mut gc = tokio::time::interval(GC_INTERVAL);
        let mut pins = tokio::time::interval(PIN_CHECK);
        let mut settle_at = self
            .slowpath_pending
            .is_due()
            .then(|| tokio::time::Instant::now() + SLOWPATH_SETTLE_DELAY);
        loop {
            // Maps are opened per event and closed here (see `Datapath::release_maps`).
            self.datapath.release_maps();
            tokio::select! {
                teardown = &mut *stop => {
                    self.settle_slowpath();
                    return Ok(MirrorEnd::Stop { teardown: teardown.unwrap_or(false) });
                }
                _ = tokio::time::sleep_until(settle_at.unwrap_or_else(tokio::time::Instant::now)), if settle_at.is_some() => {
                    settle_at = None;
                    self.settle_slowpath();
                }
                Some(change) = changes.recv() => {
                    let result = self.reconfigure(handle, change.router).await;
                    if let Err(e) = &result {
                        tracing::error!("router {}: applying the new desired state: {e}", self.id);
                    }
                    let _ = change.done.send(result);
                    // Not put off by the changes that follow: at most this long after
                    // the first.
                    if self.slowpath_pending.is_due() && settle_at.is_none() {
                        settle_at = Some(tokio::time::Instant::now() + SLOWPATH_SETTLE_DELAY);
                    }
                }
                _ = pins.tick() => {
                    self.check_pins();
                    self.check_namespace();
                }
                _ = gc.tick() => {
                    if let Err(e) = self.collect_garbage() {
                        tracing::warn!("router {}: session gc: {e}", self.id);
                    }
                }
                event = events.next() => {
                    let Some((msg, _)) = event else {
                        tracing::warn!("router {}: rtnetlink event stream ended; resubscribing", self.id);
                        return Box::pin(self.mirror(handle, stop, changes)).await;
                    };
                    match msg.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n))
                        | NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                            self.apply_neighbor(&n)?;
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelTrafficFilter(m))
                            if is_tc_entry_filter(&m) =>
                        {
                            self.restore_tc_filter(&m);
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelQueueDiscipline(m)) => {
                            self.restore_tc_filter(&m);
                        }
                        // Filters and qdiscs made (ours among them) or another's deleted change no route.
                        NetlinkPayload::InnerMessage(
                            RouteNetlinkMessage::NewTrafficFilter(_)
                            | RouteNetlinkMessage::DelTrafficFilter(_)
                            | RouteNetlinkMessage::NewQueueDiscipline(_)
                            | RouteNetlinkMessage::NewTrafficChain(_)
                            | RouteNetlinkMessage::DelTrafficChain(_)
                            | RouteNetlinkMessage::NewTrafficClass(_)
                            | RouteNetlinkMessage::DelTrafficClass(_),
                        ) => {}
                        NetlinkPayload::InnerMessage(_) => dirty = true,
                        // An overrun (ENOBUFS) loses events: read everything again.
                        NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_) => {
                            tracing::warn!(
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
                    match self.repair_and_resync(handle).await {
                        Ok(true) => return Ok(MirrorEnd::Rebuild),
                        Ok(false) => failing = false,
                        Err(e) => failed(&mut failing, &mut retry_at, &self.id, &e),
                    }
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                    retry_at = None;
                    dirty = true;
                }
                _ = safety.tick() => {
                    match self.repair_and_resync(handle).await {
                        Ok(true) => return Ok(MirrorEnd::Rebuild),
                        Ok(false) => failing = false,
                        Err(e) => failed(&mut failing, &mut retry_at, &self.id, &e),
                    }
                }
            }
        }
    }

    /// Does what the slow path left for after a change was answered.
    fn settle_slowpath(&mut self) {
        if let Err(e) = slowpath::settle(&self.router, &mut self.slowpath_pending) {
            tracing::error!("router {}: the slow path's rules: {e}", self.id);
        }
    }

    /// Drift repaired, then the routes and neighbours mirrored again. Returns whether the
    /// router must be set up again (see [`RouterState::repair`]).
    async fn repair_and_resync(&mut self, handle: &Handle) -> Result<bool, Error> {
        if self.repair(handle).await? {
            return Ok(true);
        }
        self.resync(handle).await?;
        Ok(false)
    }

    /// Drift repair: what someone changed by hand in the namespace goes back to the desired
    /// state (addresses, links down, routes and rules), and is logged. Returns whether an
    /// interface came back under a new ifindex (the router must be set up again).
    pub(super) async fn repair(&mut self, handle: &Handle) -> Result<bool, Error> {
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
            // A distributed router's compute copy holds no external address.
            let mut addrs = vec![g.address];
            addrs.extend(g.subnets.iter().map(|s| s.address));
            if crate::dvr::is_compute(&self.router) {
                addrs.clear();
            }
            wanted.push((g.interface.clone(), addrs));
        }
        for i in &self.router.interfaces {
            wanted.push((i.name.clone(), vec![i.address]));
        }
        let mut ports_changed = false;
        for (name, addrs) in &wanted {
            let link = netlink::link_by_name(handle, name)
                .await
                .map_err(nl(format!("looking up {name}")))?;
            let Some(link) = link else {
                if self.missing.insert(name.clone()) {
                    tracing::warn!(
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
                tracing::warn!(
                    "router {}: interface {name} is back as ifindex {}; re-attaching",
                    self.id,
                    link.index
                );
                return Ok(true);
            }
            if self.missing.remove(name) {
                tracing::info!("router {}: interface {name} is back", self.id);
            }
            // The fast path checks sizes against the egress's MTU and writes its MAC as
            // the source: it follows what the interface has now.
            if let Some(port) = self.ports.get_mut(&link.index)
                && (port.iface.mtu != link.mtu || port.iface.mac != link.mac)
            {
                tracing::info!(
                    "router {}: {name} changed (MTU {}, was {}; MAC {:02x?}); the fast path follows",
                    self.id,
                    link.mtu,
                    port.iface.mtu,
                    link.mac
                );
                port.iface.mtu = link.mtu;
                port.iface.mac = link.mac;
                port.iface.src_mac =
                    crate::dvr::source_mac(&self.router, link.mac, port.iface.external);
                ports_changed = true;
            }
            if !link.up {
                netlink::set_up(handle, link.index)
                    .await
                    .map_err(nl(format!("setting {name} up")))?;
                tracing::warn!("router {}: repaired: {name} was down, set up", self.id);
            }
            for addr in addrs {
                if netlink::ensure_address(handle, link.index, *addr)
                    .await
                    .map_err(nl(format!("adding {addr} to {name}")))?
                {
                    tracing::warn!("router {}: repaired: {addr} re-added to {name}", self.id);
                }
            }
        }
        if ports_changed {
            reconcile::reconcile(
                &mut self.datapath,
                &mut self.tables,
                &self.router,
                &self.ports,
            )?;
        }
        self.check_pins();
        let writes = sync_kernel_policy(handle, &self.router).await?
            + crate::dvr::kernel::refresh_next_hop(handle, &self.router).await?;
        if writes > 0 {
            tracing::warn!(
                "router {}: repaired: {writes} route or rule changes restored the desired state",
                self.id
            );
        }
        Ok(false)
    }

    /// A router namespace deleted by hand (`ip netns del`) lives on while this thread is in
    /// it, interfaces and all, and keeps forwarding; its name is bound again so that
    /// operators (and the next routerd) find it.
    pub(super) fn check_namespace(&self) {
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
            Ok(()) => tracing::warn!(
                "router {}: repaired: namespace {} was deleted under the router; bound again",
                self.id,
                self.router.namespace
            ),
            Err(e) => tracing::error!(
                "router {}: namespace {} was deleted and cannot be bound again: {e}",
                self.id,
                self.router.namespace
            ),
        }
    }

    /// Pins removed from bpffs by hand are restored (the fast path would otherwise detach
    /// when routerd ends).
    /// Puts back pins removed by hand. A failure is not the mirror's end: a link whose pin
    /// was just removed may still be on its way out of the kernel (attaching again then
    /// fails as "already attached"), so what is left is tried again at the next check.
    pub(super) fn check_pins(&mut self) {
        match self.datapath.repair_pins() {
            Ok(repinned) if !repinned.is_empty() => tracing::warn!(
                "router {}: repaired: pins removed by hand restored: {}",
                self.id,
                repinned.join(", ")
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "router {}: restoring pins removed by hand: {e}; tried again in {PIN_CHECK:?}",
                self.id
            ),
        }
    }

    /// Puts the TC entry back on the interface of `msg` (a deleted filter of ours, or a
    /// deleted qdisc) if it is missing there: without it the kernel forwards that
    /// interface's packets.
    fn restore_tc_filter(&mut self, msg: &netlink_packet_route::tc::TcMessage) {
        let Ok(ifindex) = u32::try_from(msg.header.index) else {
            return;
        };
        match self.datapath.restore_tc_filter(ifindex) {
            Ok(true) => tracing::warn!(
                "router {}: repaired: the TC entry's filter on ifindex {ifindex} was deleted; attached again",
                self.id
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "router {}: the TC entry's filter on ifindex {ifindex} was deleted and could not be attached again: {e}",
                self.id
            ),
        }
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
        tracing::debug!("router {}: neighbour {:?} -> {:?}", self.id, key, entry);
        self.datapath.routes().set_neighbor(key, entry)
    }
}

/// How long after a failed repair it is tried again.
const REPAIR_RETRY: Duration = Duration::from_millis(250);

/// Notes a failed repair: logged once per run of failures, tried again after
/// [`REPAIR_RETRY`].
fn failed(
    failing: &mut bool,
    retry_at: &mut Option<tokio::time::Instant>,
    router: &str,
    e: &Error,
) {
    if !*failing {
        tracing::warn!("router {router}: repairing drift: {e}; trying again");
    } else {
        tracing::debug!("router {router}: repairing drift: {e}; trying again");
    }
    *failing = true;
    *retry_at = Some(tokio::time::Instant::now() + REPAIR_RETRY);
}

/// Whether a filter message is about the TC entry's filter (its priority and handle).
fn is_tc_entry_filter(msg: &netlink_packet_route::tc::TcMessage) -> bool {
    let handle = msg.header.handle;
    msg.header.info >> 16 == u32::from(crate::datapath::TC_PRIORITY)
        && handle.major == crate::datapath::TC_HANDLE_MAJOR
        && handle.minor == crate::datapath::TC_HANDLE_MINOR
}
