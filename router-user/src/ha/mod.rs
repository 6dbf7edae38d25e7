//! HA routers: a router placed on several nodes runs on each, one active and the others
//! standing by, attached and silent (`docs/ha.md`).
//!
//! - **Election and fencing through etcd**: the active node holds `<prefix>/ha/<router>`
//!   ([`HaHolder`]) under an HA lease of its own; the key's mod revision is the epoch. A
//!   node that sees a holder with a higher epoch than its own stops answering at once.
//! - **Detection between the nodes**: each standby keeps a TCP connection to the active
//!   (`routerd --ha-listen`), which carries a heartbeat every [`HEARTBEAT`] and the session
//!   sync ([`wire`]). A standby that hears nothing for [`DEAD_AFTER`] takes the key over
//!   with a compare-and-swap on the epoch it followed, so exactly one standby wins. An
//!   active whose HA lease is surely gone (unrenewed for its TTL) and that no standby
//!   follows any more stands by.
//! - **Fencing in the fast path**: the active's fast path forwards only until
//!   `HaState::fence_at_ns`, which this thread moves forward every [`HEARTBEAT`]; a
//!   routerd that dies or hangs leaves a silent router within [`FENCE`], never a second
//!   active.
//! - **Session sync**: the active's fast path reports each session it makes and each TCP
//!   state change (`SYNC` ring); [`agent`] streams them in batches ([`feed`] makes the
//!   frames and holds the standbys' connections), acknowledged, with a
//!   refresh every [`REFRESH`] of what saw traffic and a bulk resync when a standby
//!   connects. The standby writes them into its own session table (SNAT port claims
//!   included), its ages following the active's last-seen times.
//! - **Takeover**: the new active sets its fast path active and sends gratuitous ARP for
//!   every address it answers for ([`garp`]); the synced sessions forward at once.
//!
//! All of it runs on a thread of its own (its own runtime), so nothing routerd's loop does
//! delays a heartbeat or the fence's renewal.

pub mod agent;
pub mod feed;
pub mod garp;
pub mod status;
pub mod wire;

use std::{cell::RefCell, collections::BTreeMap, net::SocketAddr, rc::Rc, time::Duration};

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};

use crate::{
    cluster::{Credentials, HaHolder, Keys, Switchover},
    config::Router,
    error::Error,
};

/// How often the active speaks to each standby when it has nothing else to say, and how
/// often it moves its fast path's fence forward.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// A standby that hears nothing from the active for this long takes over.
pub const DEAD_AFTER: Duration = Duration::from_millis(400);
/// How far ahead of now the active's fast path may forward without a renewal.
pub const FENCE: Duration = Duration::from_millis(500);
/// How often the active sends its standbys the entries that saw traffic since the last time.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The HA lease's time to live: a holder key outlives its node's routerd this long.
pub const LEASE_TTL: i64 = 3;

/// How routerd takes part in HA.
#[derive(Clone, Debug)]
pub struct Options {
    pub endpoints: Vec<String>,
    pub credentials: Credentials,
    pub prefix: String,
    pub node: String,
    /// Where standbys connect to this node (also what it advertises in its holder key).
    pub listen: SocketAddr,
}

/// The node's HA side, as routerd holds it.
pub struct Ha {
    routers: watch::Sender<BTreeMap<String, Router>>,
}

/// A holder as seen in etcd: who, where, and the epoch (the key's mod revision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub sync: String,
    pub epoch: i64,
    pub lease: i64,
}

/// What the etcd side gives the agents: a client, the node's HA lease, and each router's
/// holder (`None`: no key).
#[derive(Clone)]
pub struct Store {
    pub client: Client,
    pub lease: i64,
}

/// Until when this node's HA lease surely lives (its last renewal plus its TTL); `None`
/// before the first. Past it, etcd may have let the lease go, and with it the holder key.
pub type LeaseUntil = watch::Receiver<Option<std::time::Instant>>;

impl Ha {
    /// Starts the HA thread: binds `options.listen` now (an address in use stops routerd
    /// here, named), and from then on follows the HA routers given by [`Ha::set_routers`].
    pub fn start(options: Options) -> Result<Self, Error> {
        let listener = std::net::TcpListener::bind(options.listen)
            .map_err(|e| Error::io(format!("listening on {} for HA", options.listen), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("HA listener", e))?;
        let (routers, routers_rx) = watch::channel(BTreeMap::new());
        std::thread::Builder::new()
            .name("ha".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("routerd: the HA thread's runtime: {e}");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, run(options, listener, routers_rx));
            })
            .map_err(|e| Error::io("starting the HA thread", e))?;
        Ok(Self { routers })
    }

    /// The HA routers of this node now (those of the node's routers placed on several
    /// nodes): agents start for new ones and stop for those gone.
    pub fn set_routers<'a>(&self, routers: impl IntoIterator<Item = &'a Router>) {
        let set: BTreeMap<String, Router> = routers
            .into_iter()
            .filter(|r| r.ha)
            .map(|r| (r.id.clone(), r.clone()))
            .collect();
        self.routers.send_if_modified(|current| {
            if *current == set {
                return false;
            }
            *current = set;
            true
        });
    }
}

/// Each router's agent, as the thread keeps them.
struct Running {
    router: watch::Sender<Router>,
    holder: watch::Sender<Option<Holder>>,
    switchover: watch::Sender<Option<Switchover>>,
    conns: mpsc::Sender<(TcpStream, String)>,
    task: tokio::task::JoinHandle<()>,
}

type Agents = Rc<RefCell<BTreeMap<String, Running>>>;

async fn run(
    options: Options,
    listener: std::net::TcpListener,
    mut routers: watch::Receiver<BTreeMap<String, Router>>,
) {
    let agents: Agents = Rc::new(RefCell::new(BTreeMap::new()));
    let (store_tx, store) = watch::channel::<Option<Store>>(None);
    let (lease_tx, lease_until) = watch::channel::<Option<std::time::Instant>>(None);
    match TcpListener::from_std(listener) {
        Ok(listener) => {
            tokio::task::spawn_local(accept(listener, agents.clone()));
        }
        Err(e) => tracing::error!("routerd: HA listener: {e}"),
    }
    tokio::task::spawn_local(follow_etcd(
        options.clone(),
        store_tx,
        lease_tx,
        agents.clone(),
    ));
    loop {
        let wanted = routers.borrow_and_update().clone();
        {
            let mut running = agents.borrow_mut();
            running.retain(|id, agent| {
                let keep = wanted.contains_key(id);
                if !keep {
                    agent.task.abort();
                    status::forget(id);
                }
                keep
            });
            for (id, router) in wanted {
                match running.get(&id) {
                    Some(agent) => {
                        agent.router.send_if_modified(|r| {
                            let changed = *r != router;
                            *r = router.clone();
                            changed
                        });
                    }
                    None => {
                        let (router_tx, router_rx) = watch::channel(router);
                        let (holder_tx, holder_rx) = watch::channel(None);
                        let (switchover_tx, switchover_rx) = watch::channel(None);
                        let (conns_tx, conns_rx) = mpsc::channel(8);
                        let agent = agent::Agent::new(
                            &options,
                            router_rx,
                            holder_rx,
                            switchover_rx,
                            conns_rx,
                            store.clone(),
                            lease_until.clone(),
                        );
                        let task = tokio::task::spawn_local(agent.run());
                        running.insert(
                            id,
                            Running {
                                router: router_tx,
                                holder: holder_tx,
                                switchover: switchover_tx,
                                conns: conns_tx,
                                task,
                            },
                        );
                    }
                }
            }
        }
        // A new agent needs the holders read again: the etcd side rereads on this.
        if let Some(s) = store.borrow().clone() {
            let keys = Keys::new(&options.prefix);
            let _ = read_holders(&mut s.client.clone(), &keys, &agents).await;
        }
        if routers.changed().await.is_err() {
            return;
        }
    }
}

/// Hands each standby's connection to its router's agent, by the router its hello names.
async fn accept(listener: TcpListener, agents: Agents) {
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let agents = agents.clone();
        tokio::task::spawn_local(async move {
            let _ = stream.set_nodelay(true);
            let hello = tokio::time::timeout(Duration::from_secs(1), read_frame(&mut stream)).await;
            let (router, node) = match hello {
                Ok(Ok(wire::Frame::Hello { router, node, .. })) => {
                    tracing::debug!("routerd: HA: {node} ({peer}) follows router {router}");
                    (router, node)
                }
                Ok(Ok(other)) => {
                    tracing::warn!("routerd: HA: {peer} opened with {other:?}, not a hello");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!("routerd: HA: {peer}: {e}");
                    return;
                }
                Err(_) => return,
            };
            let conns = agents.borrow().get(&router).map(|a| a.conns.clone());
            match conns {
                Some(conns) => {
                    let _ = conns.send((stream, node)).await;
                }
                None => tracing::warn!(
                    "routerd: HA: {peer} asks for router {router}, which is not an HA router here"
                ),
            }
        });
    }
}

/// Reads one frame; an error names what was wrong (the connection is then dropped).
pub async fn read_frame(stream: &mut TcpStream) -> Result<wire::Frame, Error> {
    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|e| Error::io("reading from the HA peer", e))?;
    let n = wire::Frame::body_length(prefix).map_err(bad_frame)?;
    let mut body = vec![0u8; n];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| Error::io("reading from the HA peer", e))?;
    wire::Frame::decode(&body).map_err(bad_frame)
}

fn bad_frame(e: wire::WireError) -> Error {
    Error::io(
        "a frame from the HA peer",
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    )
}

/// Keeps a client, the HA lease and every agent's holder current; reconnects with a
/// growing delay. etcd away changes nothing for the routers: the active stays active (no
/// standby can take the key over without etcd either).
async fn follow_etcd(
    options: Options,
    store: watch::Sender<Option<Store>>,
    lease_until: watch::Sender<Option<std::time::Instant>>,
    agents: Agents,
) {
    let keys = Keys::new(&options.prefix);
    let mut delay = Duration::from_millis(100);
    loop {
        match etcd_session(&options, &keys, &store, &lease_until, &agents).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("routerd: HA: etcd: {e}; again in {} ms", delay.as_millis());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn etcd_session(
    options: &Options,
    keys: &Keys,
    store: &watch::Sender<Option<Store>>,
    lease_until: &watch::Sender<Option<std::time::Instant>>,
    agents: &Agents,
) -> Result<(), Error> {
    let mut client =
        crate::cluster::sync::connect(&options.endpoints, &options.credentials).await?;
    let granted = std::time::Instant::now();
    let lease = client
        .lease_grant(LEASE_TTL, None)
        .await
        .map_err(|e| Error::etcd("granting the HA lease", e))?
        .id();
    let (mut keeper, mut answers) = client
        .lease_keep_alive(lease)
        .await
        .map_err(|e| Error::etcd("keeping the HA lease", e))?;
    let mut events = client
        .watch(keys.holders(), Some(WatchOptions::new().with_prefix()))
        .await
        .map_err(|e| Error::etcd("watching the HA holders", e))?;
    let mut requests = client
        .watch(keys.switchovers(), Some(WatchOptions::new().with_prefix()))
        .await
        .map_err(|e| Error::etcd("watching the switchover requests", e))?;
    store.send_replace(Some(Store {
        client: client.clone(),
        lease,
    }));
    lease_until.send_replace(Some(granted + Duration::from_secs(LEASE_TTL as u64)));
    read_holders(&mut client, keys, agents).await?;
    let mut renewal = tokio::time::interval(Duration::from_millis(LEASE_TTL as u64 * 1000 / 3));
    let result = loop {
        tokio::select! {
            _ = renewal.tick() => {
                if let Err(e) = keeper.keep_alive().await {
                    break Err(Error::etcd("renewing the HA lease", e));
                }
                let asked = std::time::Instant::now();
                match tokio::time::timeout(Duration::from_secs(1), answers.message()).await {
                    Ok(Ok(Some(a))) if a.ttl() > 0 => {
                        // Counted from the asking: the lease lives at least its TTL from then.
                        lease_until.send_replace(Some(asked + Duration::from_secs(a.ttl() as u64)));
                    }
                    Ok(Err(e)) => break Err(Error::etcd("renewing the HA lease", e)),
                    _ => break Err(Error::etcd(
                        "renewing the HA lease",
                        etcd_client::Error::LeaseKeepAliveError("the lease has expired".into()),
                    )),
                }
            }
            message = events.message() => match message {
                Ok(Some(response)) => {
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Some(router) = keys.holder_router(kv.key()) else { continue };
                        let holder = match event.event_type() {
                            EventType::Put => holder_of(kv),
                            EventType::Delete => None,
                        };
                        if let Some(agent) = agents.borrow().get(&router) {
                            agent.holder.send_replace(holder);
                        }
                    }
                }
                Ok(None) => break Err(Error::etcd("watching the HA holders", etcd_client::Error::WatchError("the watch ended".into()))),
                Err(e) => break Err(Error::etcd("watching the HA holders", e)),
            },
            message = requests.message() => match message {
                Ok(Some(response)) => {
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        if event.event_type() != EventType::Put {
                            continue;
                        }
                        let Some(router) = keys.switchover_router(kv.key()) else { continue };
                        match Switchover::from_json(kv.value()) {
                            Ok(request) => {
                                if let Some(agent) = agents.borrow().get(&router) {
                                    agent.switchover.send_replace(Some(request));
                                }
                            }
                            Err(e) => tracing::warn!("routerd: HA: router {router}: a switchover request that cannot be read: {e}"),
                        }
                    }
                }
                Ok(None) => break Err(Error::etcd("watching the switchover requests", etcd_client::Error::WatchError("the watch ended".into()))),
                Err(e) => break Err(Error::etcd("watching the switchover requests", e)),
            }
        }
    };
    // The agents keep their role; a new lease comes with the next session.
    store.send_replace(None);
    result
}

fn holder_of(kv: &etcd_client::KeyValue) -> Option<Holder> {
    let h = HaHolder::from_json(kv.value()).ok()?;
    Some(Holder {
        node: h.node,
        sync: h.sync,
        epoch: kv.mod_revision(),
        lease: kv.lease(),
    })
}

/// Reads every holder and gives each agent its own (`None` where there is no key).
async fn read_holders(client: &mut Client, keys: &Keys, agents: &Agents) -> Result<(), Error> {
    let response = client
        .get(keys.holders(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| Error::etcd("reading the HA holders", e))?;
    let mut found: BTreeMap<String, Holder> = BTreeMap::new();
    for kv in response.kvs() {
        if let (Some(router), Some(holder)) = (keys.holder_router(kv.key()), holder_of(kv)) {
            found.insert(router, holder);
        }
    }
    for (id, agent) in agents.borrow().iter() {
        let holder = found.get(id).cloned();
        agent.holder.send_if_modified(|h| {
            let changed = *h != holder;
            *h = holder;
            changed
        });
    }
    Ok(())
}
