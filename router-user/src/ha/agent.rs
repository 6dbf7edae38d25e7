//! One HA router on this node: elected active (it holds the router's key in etcd), or a
//! standby following the holder. The active feeds its standbys; a standby writes what it
//! is fed and takes over when the active goes quiet.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use router_common::{CtEntry, CtKey, HaState, ha_role};
use tokio::{
    io::AsyncWriteExt as _,
    net::TcpStream,
    sync::{mpsc, watch},
};

use super::feed::{Link, broadcast, drained_frames, entry_frames, from_ages, open_link};
use super::{
    DEAD_AFTER, FENCE, HEARTBEAT, Holder, LeaseUntil, Options, REFRESH, Store, garp, read_frame,
    status::HaStatus,
    wire::{Frame, MAX_BATCH},
};
use crate::{
    cluster::{HaHolder, Keys, Switchover},
    config::Router,
    conntrack::monotonic_ns,
    maps::{Pinned, Rooms as _},
};

/// How long a node that handed the router over keeps forwarding (from its own MAC) after
/// the new holder took it: the new active's gratuitous ARPs reach the switches meanwhile,
/// so no packet arrives at a node that already fell silent.
pub const HANDOVER_GRACE: Duration = Duration::from_secs(1);

/// This node's own MAC for what it forwards while handing a router over: locally
/// administered, unicast, from a hash of the node's name (FNV-1a), the same on every start.
pub fn node_mac(node: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}
/// How often the active drains its fast path's session reports.
const DRAIN: Duration = Duration::from_millis(5);

/// A refresh's walk of the session table, under way on a blocking thread.
struct Walk {
    /// When it began (fast-path clock).
    began: u64,
    /// The keys the standbys had been sent when it began.
    known_before: std::collections::BTreeSet<CtKey>,
    /// The walk: its maps back, and the table.
    table: tokio::task::JoinHandle<(
        Pinned,
        Result<std::collections::BTreeMap<CtKey, CtEntry>, crate::Error>,
    )>,
}

pub struct Agent {
    node: String,
    sync: String,
    keys: Keys,
    router: watch::Receiver<Router>,
    holder: watch::Receiver<Option<Holder>>,
    switchover: watch::Receiver<Option<Switchover>>,
    conns: mpsc::Receiver<(TcpStream, String)>,
    store: watch::Receiver<Option<Store>>,
    lease_until: LeaseUntil,
    status: HaStatus,
}

impl Agent {
    pub fn new(
        options: &Options,
        router: watch::Receiver<Router>,
        holder: watch::Receiver<Option<Holder>>,
        switchover: watch::Receiver<Option<Switchover>>,
        conns: mpsc::Receiver<(TcpStream, String)>,
        store: watch::Receiver<Option<Store>>,
        lease_until: LeaseUntil,
    ) -> Self {
        let id = router.borrow().id.clone();
        Self {
            node: options.node.clone(),
            sync: options.listen.to_string(),
            keys: Keys::new(&options.prefix),
            router,
            holder,
            switchover,
            conns,
            store,
            lease_until,
            status: HaStatus::new(&id, &options.node),
        }
    }

    fn id(&self) -> String {
        self.router.borrow().id.clone()
    }

    pub async fn run(mut self) {
        let id = self.id();
        // The router's pins appear once its start has made them.
        let mut maps = loop {
            match Pinned::open(&id) {
                Ok(m) => break m,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let mut promoted = None;
        loop {
            let epoch = match promoted.take() {
                Some(e) => Some(e),
                None => self.decide().await,
            };
            match epoch {
                Some(epoch) => self.active(&mut maps, epoch).await,
                None => promoted = self.standby(&mut maps).await,
            }
        }
    }

    /// `Some(epoch)` when this node holds the router (or just took a free key); `None` to
    /// stand by.
    async fn decide(&mut self) -> Option<i64> {
        let holder = self.holder.borrow_and_update().clone();
        let store = self.store.borrow().clone();
        match (holder, store) {
            (Some(h), Some(s)) if h.node == self.node && h.lease == s.lease => Some(h.epoch),
            // This node's key from an earlier routerd (another lease): take it back.
            (Some(h), Some(_)) if h.node == self.node => self.take_over(Some(h.epoch)).await,
            // etcd away, but the key last seen is ours and our lease lives: stay active.
            (Some(h), None) if h.node == self.node && self.lease_alive() => Some(h.epoch),
            (None, Some(_)) => self.take_over(None).await,
            _ => None,
        }
    }

    /// Writes this node as the holder if the key is as `expected` (its epoch, or absent):
    /// the new epoch, or `None` when another node got there first or etcd is away.
    async fn take_over(&mut self, expected: Option<i64>) -> Option<i64> {
        let store = self.store.borrow().clone()?;
        let key = self.keys.holder(&self.id());
        let value = HaHolder {
            node: self.node.clone(),
            sync: self.sync.clone(),
        }
        .to_json();
        let guard = match expected {
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Some(epoch) => Compare::mod_revision(key.as_str(), CompareOp::Equal, epoch),
        };
        let txn = Txn::new().when([guard]).and_then([TxnOp::put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(store.lease)),
        )]);
        let mut client = store.client.clone();
        match tokio::time::timeout(Duration::from_secs(1), client.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded() => r.header().map(|h| h.revision()),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::warn!("router {}: HA: taking over: {e}", self.id());
                None
            }
            Err(_) => None,
        }
    }

    /// Whether this node's HA lease surely still lives.
    fn lease_alive(&self) -> bool {
        self.lease_until
            .borrow()
            .is_some_and(|until| Instant::now() < until)
    }

    /// The holder as etcd has it now (`None`: no key, or etcd did not answer in time).
    async fn holder_now(&self) -> Option<Holder> {
        let store = self.store.borrow().clone()?;
        let mut client = store.client.clone();
        let key = self.keys.holder(&self.id());
        let response = tokio::time::timeout(Duration::from_millis(500), client.get(key, None))
            .await
            .ok()?
            .ok()?;
        let kv = response.kvs().first()?;
        let h = HaHolder::from_json(kv.value()).ok()?;
        Some(Holder {
            node: h.node,
            sync: h.sync,
            epoch: kv.mod_revision(),
            lease: kv.lease(),
        })
    }

    fn set_role(&mut self, maps: &mut Pinned, role: u32) {
        let state = HaState {
            role,
            sync: u32::from(role == ha_role::ACTIVE),
            fence_at_ns: if role == ha_role::ACTIVE {
                monotonic_ns() + FENCE.as_nanos() as u64
            } else {
                0
            },
            handover_mac: node_mac(&self.node),
            _pad: [0; 2],
        };
        if let Err(e) = maps.ha().set(state) {
            tracing::error!(
                "router {}: HA: setting the fast path's role: {e}",
                self.id()
            );
        }
        // What the status says follows what the fast path does.
        if role == ha_role::STANDBY && self.status.role == "active" {
            self.status.role = "standby".into();
            let _ = self.status.write();
        }
    }

    /// Serves as the active node until a holder with a higher epoch appears.
    async fn active(&mut self, maps: &mut Pinned, epoch: i64) {
        let id = self.id();
        self.set_role(maps, ha_role::ACTIVE);
        let was = self.status.role.clone();
        self.status.role = "active".into();
        self.status.epoch = epoch;
        self.status.active_node = Some(self.node.clone());
        self.status.standbys.clear();
        if was == "standby" {
            self.status.takeovers += 1;
        }
        let _ = self.status.write();
        tracing::info!("router {id}: HA: active on {} (epoch {epoch})", self.node);
        announce(self.router.borrow().clone());
        let mut ring = match maps.ha().ring() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(
                    "router {id}: HA: the session ring: {e}; standbys get refreshes only"
                );
                None
            }
        };
        let mut links: Vec<Link> = Vec::new();
        let (acks_tx, mut acks) = mpsc::unbounded_channel::<(String, u64)>();
        // Batches sent and the fast-path time of their oldest session, for the lag.
        let mut pending: std::collections::BTreeMap<u64, u64> = Default::default();
        let mut batch = 0u64;
        let mut fence = tokio::time::interval(HEARTBEAT);
        let mut drain = tokio::time::interval(DRAIN);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_refresh = monotonic_ns();
        // The refresh's walk of the table runs on a blocking thread with maps of its own:
        // at tens of thousands of entries it takes tens of milliseconds, and the drains
        // (and the fence) must not wait for it. `walk` is the one under way, with when it
        // began; `walker`, the maps when none is.
        let mut walker = Pinned::open(&id).ok();
        let mut walk: Option<Walk> = None;
        // When this node last handed the router over (a planned switchover).
        let mut handed_over: Option<Instant> = None;
        // The keys the standbys were sent (the table's at the last refresh, and every session
        // reported since): those gone from the table are removed on the standbys.
        let mut known: std::collections::BTreeSet<CtKey> = maps
            .sessions()
            .dump()
            .map(|all| all.into_keys().collect())
            .unwrap_or_default();
        loop {
            tokio::select! {
                _ = fence.tick() => {
                    // A lost lease (etcd may have dropped the key, and a standby taken it)
                    // is survivable only while a standby still follows this node: it would
                    // not take the key while it hears us.
                    let followed = links.iter().any(|l| l.heard.get().elapsed() < DEAD_AFTER);
                    if !self.lease_alive() && !followed {
                        tracing::warn!("router {id}: HA: the HA lease is lost (no renewal for its TTL) and no standby follows this node: standing by");
                        self.set_role(maps, ha_role::STANDBY);
                        return;
                    }
                    // A hold that lapsed (this thread stalled longer than the fence: the
                    // process was stopped, the machine froze) is renewed only once etcd
                    // says the router is still ours: a standby may have taken over meanwhile.
                    let lapsed = maps.ha().state().map(|s| s.fence_at_ns < monotonic_ns()).unwrap_or(true);
                    if lapsed {
                        match self.holder_now().await {
                            Some(h) if h.node == self.node && h.epoch == epoch => {
                                tracing::warn!("router {id}: HA: the hold lapsed (routerd stalled); still the holder: active again");
                            }
                            Some(h) if h.node != self.node => {
                                tracing::warn!("router {id}: HA: the hold lapsed and {} holds the router now (epoch {}): standing by", h.node, h.epoch);
                                self.set_role(maps, ha_role::STANDBY);
                                return;
                            }
                            _ => continue,
                        }
                    }
                    self.set_role(maps, ha_role::ACTIVE);
                }
                _ = drain.tick() => {
                    let Some(ring) = ring.as_mut() else { continue };
                    let frames = drained_frames(ring, &mut batch, &mut pending, &mut known);
                    self.status.entries_sent += frames.1 as u64;
                    self.status.bytes_sent += broadcast(&mut links, &frames.0);
                    if pending.len() > 10_000 {
                        // Nobody acknowledges (no standby): forget the oldest.
                        let cut = pending.len() - 10_000;
                        let old: Vec<u64> = pending.keys().take(cut).copied().collect();
                        for b in old { pending.remove(&b); }
                    }
                }
                _ = refresh.tick(), if walk.is_none() => {
                    let began = monotonic_ns();
                    let mut maps_of_walk = match walker.take() {
                        Some(m) => m,
                        None => match Pinned::open(&id) {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::warn!("router {id}: HA: refresh: {e}");
                                continue;
                            }
                        },
                    };
                    walk = Some(Walk {
                        began,
                        // What was sent before the walk; `known` gathers what is reported
                        // while it runs, which the walk may have missed.
                        known_before: std::mem::take(&mut known),
                        table: tokio::task::spawn_blocking(move || {
                            let all = maps_of_walk.sessions().dump();
                            (maps_of_walk, all)
                        }),
                    });
                }
                walked = async {
                    match walk.as_mut() {
                        Some(w) => (&mut w.table).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(Walk { began, known_before, .. }) = walk.take() else { continue };
                    // What saw traffic since the last refresh, and which keys went since
                    // then (aged out, flushed, ended).
                    match walked {
                        Ok((maps_of_walk, Ok(all))) => {
                            walker = Some(maps_of_walk);
                            let entries: Vec<(CtKey, CtEntry)> = all
                                .iter()
                                .filter(|(_, e)| e.last_seen_ns >= last_refresh)
                                .map(|(k, e)| (*k, *e))
                                .collect();
                            self.status.entries_sent += entries.len() as u64;
                            let mut frames = entry_frames(&entries, monotonic_ns(), &mut batch);
                            let gone: Vec<CtKey> = known_before
                                .iter()
                                .filter(|k| !all.contains_key(k) && !known.contains(k))
                                .copied()
                                .collect();
                            for chunk in gone.chunks(MAX_BATCH) {
                                batch += 1;
                                frames.push(Arc::new(Frame::Removed { batch, keys: chunk.to_vec() }.encode()));
                            }
                            self.status.entries_removed += gone.len() as u64;
                            self.status.bytes_sent += broadcast(&mut links, &frames);
                            known.extend(all.into_keys());
                        }
                        Ok((maps_of_walk, Err(e))) => {
                            walker = Some(maps_of_walk);
                            known.extend(known_before);
                            tracing::warn!("router {id}: HA: refresh: {e}");
                        }
                        Err(e) => {
                            known.extend(known_before);
                            tracing::warn!("router {id}: HA: refresh: {e}");
                        }
                    }
                    last_refresh = began.saturating_sub(HEARTBEAT.as_nanos() as u64);
                    self.status.standbys = links.iter().map(|l| l.node.clone()).collect();
                    let _ = self.status.write();
                }
                Some((stream, node)) = self.conns.recv() => {
                    match maps.sessions().seen_since(0) {
                        Ok(entries) => {
                            let link = open_link(stream, node.clone(), acks_tx.clone());
                            known.extend(entries.iter().map(|(k, _)| *k));
                            let mut frames = entry_frames(&entries, monotonic_ns(), &mut batch);
                            batch += 1;
                            frames.push(Arc::new(Frame::ResyncDone { batch }.encode()));
                            for f in &frames {
                                link.send(f);
                                self.status.bytes_sent += f.len() as u64;
                            }
                            self.status.entries_sent += entries.len() as u64;
                            self.status.resyncs += 1;
                            tracing::info!("router {id}: HA: standby {node} connected; resync of {} entries", entries.len());
                            links.retain(|l| l.node != node);
                            links.push(link);
                            self.status.standbys = links.iter().map(|l| l.node.clone()).collect();
                            let _ = self.status.write();
                        }
                        Err(e) => tracing::warn!("router {id}: HA: resync for {node}: {e}"),
                    }
                }
                Some((_node, acked)) = acks.recv() => {
                    let now = monotonic_ns();
                    let done: Vec<u64> = pending.range(..=acked).map(|(b, _)| *b).collect();
                    for b in done {
                        if let Some(created) = pending.remove(&b) {
                            self.status.lag(now.saturating_sub(created) / 1_000);
                        }
                    }
                }
                changed = self.holder.changed() => {
                    if changed.is_err() { return; }
                    let holder = self.holder.borrow_and_update().clone();
                    match holder {
                        Some(h) if h.node != self.node && h.epoch > epoch => {
                            if handed_over.is_some_and(|at| at.elapsed() < Duration::from_secs(5)) {
                                // Make before break: the standby we handed over to announces
                                // itself now; until the switches have heard it, what still
                                // arrives here is forwarded (both hold every session), from
                                // this node's own MAC, so the switches never learn the
                                // router's MAC back here.
                                self.set_role(maps, ha_role::HANDING_OVER);
                                tokio::time::sleep(HANDOVER_GRACE).await;
                            }
                            tracing::warn!("router {id}: HA: {} holds the router at epoch {} (ours {epoch}): standing by", h.node, h.epoch);
                            self.set_role(maps, ha_role::STANDBY);
                            return;
                        }
                        // Our key went (lease lost): claim it again, or stand by.
                        None if self.take_over(None).await.is_none() => {
                            self.set_role(maps, ha_role::STANDBY);
                            return;
                        }
                        _ => {}
                    }
                }
                changed = self.router.changed() => {
                    if changed.is_err() { return; }
                    announce(self.router.borrow_and_update().clone());
                }
                changed = self.switchover.changed() => {
                    if changed.is_err() { return; }
                    let request = self.switchover.borrow_and_update().clone();
                    let Some(request) = request.filter(|r| r.epoch == epoch) else { continue };
                    let target = links.iter().position(|l| request.to.as_ref().is_none_or(|to| *to == l.node));
                    let Some(target) = target else {
                        tracing::warn!("router {id}: HA: switchover asked to {:?}, but no such standby is connected", request.to);
                        continue;
                    };
                    // The last reports first, then the word: the standby has every session
                    // made until now when it takes over.
                    if let Some(ring) = ring.as_mut() {
                        let (frames, _) = drained_frames(ring, &mut batch, &mut pending, &mut known);
                        self.status.bytes_sent += broadcast(&mut links, &frames);
                    }
                    batch += 1;
                    let handover = Arc::new(Frame::Handover { batch }.encode());
                    if let Some(link) = links.get(target) {
                        tracing::info!("router {id}: HA: handing over to {} (switchover asked)", link.node);
                        link.send(&handover);
                        handed_over = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Stands by behind the holder: silent fast path, sessions written as the active sends
    /// them. Returns the new epoch when this node took over, `None` to decide again.
    async fn standby(&mut self, maps: &mut Pinned) -> Option<i64> {
        let id = self.id();
        self.set_role(maps, ha_role::STANDBY);
        let holder = self.holder.borrow_and_update().clone();
        let Some(h) = holder.filter(|h| h.node != self.node) else {
            // No holder known (etcd not read yet), or it is us: wait for news.
            let _ = tokio::time::timeout(Duration::from_millis(200), self.holder.changed()).await;
            return None;
        };
        if self.status.role != "standby" || self.status.epoch != h.epoch {
            tracing::info!(
                "router {id}: HA: standing by; {} is active (epoch {})",
                h.node,
                h.epoch
            );
        }
        self.status.role = "standby".into();
        self.status.epoch = h.epoch;
        self.status.active_node = Some(h.node.clone());
        self.status.standbys.clear();
        self.status.synced = false;
        let _ = self.status.write();
        let mut last_heard = Instant::now();
        let mut handover = false;
        loop {
            let connected =
                tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(&h.sync)).await;
            if let Ok(Ok(mut stream)) = connected {
                let _ = stream.set_nodelay(true);
                let hello = Frame::Hello {
                    router: id.clone(),
                    node: self.node.clone(),
                    epoch: h.epoch,
                }
                .encode();
                if stream.write_all(&hello).await.is_ok() {
                    last_heard = Instant::now();
                    match self.follow(maps, &mut stream, &h, &mut last_heard).await {
                        Followed::HolderChanged => return None,
                        Followed::Handover => handover = true,
                        Followed::Lost => {}
                    }
                }
            }
            self.status.synced = false;
            if handover || last_heard.elapsed() >= DEAD_AFTER {
                let why = if handover {
                    "handed over".to_string()
                } else {
                    format!(
                        "nothing from {} for {} ms",
                        h.node,
                        last_heard.elapsed().as_millis()
                    )
                };
                match self.take_over(Some(h.epoch)).await {
                    Some(epoch) => {
                        tracing::warn!("router {id}: HA: {why}: taking over (epoch {epoch})");
                        return Some(epoch);
                    }
                    None => {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(500), self.holder.changed())
                                .await;
                        return None;
                    }
                }
            }
            if tokio::time::timeout(Duration::from_millis(50), self.holder.changed())
                .await
                .is_ok()
            {
                return None;
            }
        }
    }

    /// Reads the active's frames until the connection ends, goes quiet, or the holder
    /// changes.
    async fn follow(
        &mut self,
        maps: &mut Pinned,
        stream: &mut TcpStream,
        h: &Holder,
        last_heard: &mut Instant,
    ) -> Followed {
        let mut written = Instant::now();
        loop {
            if written.elapsed() >= REFRESH {
                let _ = self.status.write();
                written = Instant::now();
            }
            let deadline = tokio::time::Instant::from_std(*last_heard + DEAD_AFTER);
            tokio::select! {
                frame = tokio::time::timeout_at(deadline, read_frame(stream)) => {
                    let frame = match frame {
                        Ok(Ok(f)) => f,
                        Ok(Err(e)) => {
                            tracing::debug!("router {}: HA: from {}: {e}", self.id(), h.node);
                            return Followed::Lost;
                        }
                        Err(_) => return Followed::Lost,
                    };
                    *last_heard = Instant::now();
                    let ack = match frame {
                        Frame::Entries { batch, entries } => {
                            let now = monotonic_ns();
                            let local: Vec<(CtKey, CtEntry)> = entries.iter().map(|(k, e)| (*k, from_ages(e, now))).collect();
                            match maps.sessions().upsert_synced(&local) {
                                Ok(n) => self.status.entries_received += n as u64,
                                Err(e) => tracing::warn!("router {}: HA: writing sessions: {e}", self.id()),
                            }
                            Some(batch)
                        }
                        Frame::TcpStates { batch, states } => {
                            if let Err(e) = maps.sessions().set_tcp_flags(&states) {
                                tracing::warn!("router {}: HA: writing TCP states: {e}", self.id());
                            }
                            Some(batch)
                        }
                        Frame::Removed { batch, keys } => {
                            match maps.sessions().remove_synced(&keys) {
                                Ok(n) => self.status.entries_removed += n as u64,
                                Err(e) => tracing::warn!("router {}: HA: removing sessions: {e}", self.id()),
                            }
                            Some(batch)
                        }
                        Frame::ResyncDone { batch } => {
                            self.status.synced = true;
                            self.status.resyncs += 1;
                            let _ = self.status.write();
                            Some(batch)
                        }
                        Frame::Handover { .. } => return Followed::Handover,
                        Frame::Heartbeat => None,
                        other => {
                            tracing::warn!("router {}: HA: unexpected {other:?} from {}", self.id(), h.node);
                            return Followed::Lost;
                        }
                    };
                    let reply = match ack {
                        Some(batch) => Frame::Ack { batch },
                        None => Frame::Heartbeat,
                    };
                    if stream.write_all(&reply.encode()).await.is_err() {
                        return Followed::Lost;
                    }
                }
                changed = self.holder.changed() => {
                    let now = self.holder.borrow_and_update().clone();
                    if changed.is_err() || now.as_ref().map(|n| n.epoch) != Some(h.epoch) {
                        return Followed::HolderChanged;
                    }
                }
            }
        }
    }
}

enum Followed {
    Lost,
    HolderChanged,
    Handover,
}

/// Sends the router's gratuitous ARPs without holding up the caller.
fn announce(router: Router) {
    tokio::task::spawn_blocking(move || match garp::announce(&router) {
        Ok(n) => tracing::info!("router {}: HA: {n} gratuitous ARP frames sent", router.id),
        Err(e) => tracing::warn!("router {}: HA: gratuitous ARP: {e}", router.id),
    });
}
