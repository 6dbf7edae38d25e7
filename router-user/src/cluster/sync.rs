//! From etcd to this node's desired state: read everything under the prefix at one
//! revision (one range request), watch from the next revision, and turn each batch of
//! events into the desired state of the routers placed on this node.
//!
//! - [`Snapshot`] is the store's content under the prefix as of one revision (routers and
//!   placements; the keys nodes write are not part of the desired state) and
//!   [`Snapshot::desired_for`] the part placed on one node, validated. Pure: no etcd here.
//! - [`run`] is the loop: connect, read, watch; events that arrive together (one watch
//!   response, or responses less than [`Options::debounce`] apart, [`DEBOUNCE`] by default,
//!   for at most ten times that) become one [`Update`]. A watch
//!   cancelled because its revision was compacted reads everything again; a lost connection
//!   is retried with a growing delay ([`Backoff`]), logged, and read again whole when it is
//!   back. The node applies each update as a difference, so reading again changes only what
//!   changed meanwhile.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::{Notify, mpsc};

use super::{
    Options,
    keys::{Key, Keys, Placement},
};
use crate::{
    Error,
    config::{DesiredState, Router},
};

/// How long a batch of watch responses stays open for more: events written together (a
/// transaction, a script's few puts) are applied as one desired state.
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// The most watch responses one batch takes; with the batch's time limit (ten debounce
/// windows), a busy store cannot hold a batch open.
const BATCH_MOST: usize = 1000;
/// How long one request to etcd may take before the connection counts as lost.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A value under the prefix and the revision it was last written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) value: Vec<u8>,
    pub(super) mod_revision: i64,
}

/// The routers and placements under the prefix, as of one revision of the store.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub(super) routers: BTreeMap<String, Entry>,
    pub(super) placements: BTreeMap<String, Entry>,
    /// The store's revision this snapshot is at.
    pub revision: i64,
}

/// This node's share of a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// The store's revision the state is at.
    pub revision: i64,
    /// The routers placed on this node, validated whole, in id order.
    pub state: DesiredState,
    /// Each router's revision ([`super::keys::RouterStatus::revision`]).
    pub revisions: BTreeMap<String, i64>,
    /// Routers whose latest desired state was refused, and why (they keep the one before
    /// if they had one, or are left out).
    pub refused: BTreeMap<String, String>,
}

impl Snapshot {
    /// Takes a key and its value (a put, or a key of a range read); other keys are ignored.
    pub fn put(&mut self, keys: &Keys, key: &[u8], value: &[u8], mod_revision: i64) {
        let entry = Entry {
            value: value.to_vec(),
            mod_revision,
        };
        match keys.parse(key) {
            Some(Key::Router(id)) => {
                self.routers.insert(id, entry);
            }
            Some(Key::Placement(id)) => {
                self.placements.insert(id, entry);
            }
            _ => {}
        }
    }

    /// Forgets a deleted key.
    pub fn delete(&mut self, keys: &Keys, key: &[u8]) {
        match keys.parse(key) {
            Some(Key::Router(id)) => {
                self.routers.remove(&id);
            }
            Some(Key::Placement(id)) => {
                self.placements.remove(&id);
            }
            _ => {}
        }
    }

    /// The desired state of the routers placed on `node`: each router's JSON read and
    /// checked as a file's `[[router]]` would be, then the routers checked together
    /// (namespaces unique), in id order. A router whose latest value is refused, or whose
    /// placement cannot be read, keeps its value in `previous` (what the node applies now)
    /// rather than being torn down for a bad write; without one it is left out. Either way
    /// the refusal is in [`Update::refused`].
    ///
    /// A distributed router (`[router.distributed]`) runs here too where the node holds
    /// one of its ports, and each router is the node's copy of it ([`crate::dvr::local_copy`]);
    /// its overlay devices are in `overlay_netns` (`None`: routerd's own namespace).
    pub fn desired_for(
        &self,
        node: &str,
        overlay_netns: Option<&str>,
        previous: &Update,
    ) -> Update {
        let mut update = Update {
            revision: self.revision,
            ..Update::default()
        };
        let kept = |id: &str| {
            previous
                .state
                .router(id)
                .map(|r| (r.clone(), previous.revisions.get(id).copied().unwrap_or(0)))
        };
        let mut candidates: Vec<(Router, i64)> = Vec::new();
        // A router the node runs whose placement went away is not placed here any more.
        for (id, placement) in &self.placements {
            let ha = match Placement::from_json(&placement.value) {
                Ok(p) if !p.has(node) => continue,
                Ok(p) => p.nodes.len() > 1,
                Err(e) => {
                    if let Some(old) = kept(id) {
                        update.refused.insert(id.clone(), e.to_string());
                        candidates.push(old);
                    }
                    continue;
                }
            };
            let read = match self.routers.get(id) {
                None => Err(format!("placed on {node} but {id} has no desired state")),
                Some(entry) => match Router::from_json(&entry.value) {
                    Ok(r) if r.id != *id => {
                        Err(format!("the value under routers/{id} has id \"{}\"", r.id))
                    }
                    Ok(mut r) => {
                        r.ha = ha;
                        let revision = entry.mod_revision.max(placement.mod_revision);
                        crate::dvr::local_copy(&r, node, true, overlay_netns)
                            .map(|copy| copy.map(|c| (c, revision)))
                    }
                    Err(e) => Err(e.to_string()),
                },
            };
            let read = match read {
                Ok(Some(candidate)) => Ok(candidate),
                Ok(None) => continue,
                Err(problem) => Err(problem),
            };
            match read {
                Ok(candidate) => candidates.push(candidate),
                Err(problem) => {
                    update.refused.insert(id.clone(), problem);
                    if let Some(old) = kept(id) {
                        candidates.push(old);
                    }
                }
            }
        }
        // Distributed routers not placed here whose ports are here: their distributed part.
        for (id, entry) in &self.routers {
            let placed_here = self
                .placements
                .get(id)
                .and_then(|p| Placement::from_json(&p.value).ok())
                .is_some_and(|p| p.has(node));
            if placed_here || !might_be_distributed(&entry.value) {
                continue;
            }
            let read = Router::from_json(&entry.value)
                .map_err(|e| e.to_string())
                .and_then(|r| crate::dvr::local_copy(&r, node, false, overlay_netns));
            match read {
                Ok(Some(copy)) => candidates.push((copy, entry.mod_revision)),
                Ok(None) => {}
                Err(problem) => {
                    if let Some(old) = kept(id) {
                        update.refused.insert(id.clone(), problem);
                        candidates.push(old);
                    }
                }
            }
        }
        // Together: a router that clashes with the ones before it (a namespace used twice)
        // falls back to its previous value if that fits, or is left out.
        let mut namespaces = HashSet::new();
        for (router, revision) in candidates {
            let (router, revision) = if namespaces.contains(&router.namespace) {
                let problem = format!(
                    "namespace {} is used by another router placed on {node}",
                    router.namespace
                );
                update.refused.insert(router.id.clone(), problem);
                match kept(&router.id) {
                    Some(old) if !namespaces.contains(&old.0.namespace) => old,
                    _ => continue,
                }
            } else {
                (router, revision)
            };
            namespaces.insert(router.namespace.clone());
            update.revisions.insert(router.id.clone(), revision);
            update.state.routers.push(router);
        }
        update
    }
}

/// Whether a router's JSON may be a distributed router's (read whole only then).
fn might_be_distributed(value: &[u8]) -> bool {
    value
        .windows(b"\"distributed\"".len())
        .any(|w| w == b"\"distributed\"")
}

/// A growing delay between attempts to reach etcd: 200 ms, doubling up to 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const LONGEST: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The delay before the next attempt (and the one after is longer).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::LONGEST);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Connects to the first etcd endpoint, in the order given, that answers a status request
/// and has a leader: one member at a time, so a dead member is never picked again while
/// others answer (a client balanced over every endpoint keeps sending a share of the
/// requests to a dead one). Requests then need a leader (a member cut off from the others
/// refuses them, and its watches are cancelled, rather than serving old data). The
/// connection is checked with HTTP/2 pings every 10 s (etcd refuses clients that ping more
/// often than every 5 s), so a member that went away without closing the connection is
/// noticed within 15 s; one that stops (its socket closes) is noticed at once.
/// `credentials` are the TLS files for https:// endpoints.
pub async fn connect(
    endpoints: &[String],
    credentials: &super::Credentials,
) -> Result<Client, Error> {
    let options = credentials.apply(
        etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true),
    )?;
    let mut last = None;
    for endpoint in endpoints {
        let attempt = async {
            let mut client = timed(
                "connecting",
                Client::connect([endpoint], Some(options.clone())),
            )
            .await?;
            let status = timed("asking for the member's status", client.status()).await?;
            if status.leader() == 0 {
                return Err(Error::etcd(
                    "asking for the member's status",
                    etcd_client::Error::InvalidArgs(format!("{endpoint} has no leader")),
                ));
            }
            Ok::<_, Error>(client)
        };
        match attempt.await {
            Ok(client) => return Ok(client),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::etcd(
            "connecting",
            etcd_client::Error::InvalidArgs("no endpoint".into()),
        )
    }))
}

/// Runs `request` with [`REQUEST_TIMEOUT`]; the error says `what` failed.
pub async fn timed<T>(
    what: &str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(|e| Error::etcd(what, e)),
        Err(_) => Err(Error::etcd(
            what,
            etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer in {} s", REQUEST_TIMEOUT.as_secs()),
            )),
        )),
    }
}

/// Reads everything under the prefix at one revision (one range request).
pub async fn read_all(client: &mut Client, keys: &Keys) -> Result<Snapshot, Error> {
    let response = timed(
        "reading the desired state",
        client.get(keys.all(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut snapshot = Snapshot {
        revision: response.header().map_or(0, |h| h.revision()),
        ..Snapshot::default()
    };
    for kv in response.kvs() {
        snapshot.put(keys, kv.key(), kv.value(), kv.mod_revision());
    }
    Ok(snapshot)
}

/// Why a watch ended.
enum Ended {
    /// The watch's revision was compacted: read everything again, at once.
    Compacted(i64),
    /// The connection failed or the stream closed: reconnect after a delay.
    Lost(Error),
    /// Someone asked for a full read (SIGHUP).
    Reread,
    /// The receiver of updates is gone (routerd stops).
    Stopped,
}

/// The sync loop (see the module docs): sends this node's desired state on `updates` after
/// every full read and every batch of events that changes it. `first` is what the node
/// runs at start. `reread` makes it read everything again. Returns when `updates` closes.
pub async fn run(
    options: Options,
    first: Update,
    updates: mpsc::Sender<Update>,
    reread: std::sync::Arc<Notify>,
) {
    let keys = Keys::new(&options.prefix);
    let mut sent = first;
    let mut backoff = Backoff::new();
    loop {
        let ended = match connect(&options.endpoints, &options.credentials).await {
            Ok(mut client) => {
                follow(
                    &options,
                    &keys,
                    &mut client,
                    &mut sent,
                    &updates,
                    &reread,
                    &mut backoff,
                )
                .await
            }
            Err(e) => Ended::Lost(e),
        };
        match ended {
            Ended::Stopped => return,
            Ended::Compacted(at) => tracing::warn!(
                "routerd: etcd compacted the watch's revision (now {at}); reading everything again"
            ),
            Ended::Reread => tracing::info!("routerd: reading the desired state from etcd again"),
            Ended::Lost(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    "routerd: etcd {}: {e}; the routers keep their state, retrying in {} ms",
                    options.endpoints.join(","),
                    delay.as_millis()
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = updates.closed() => return,
                }
            }
        }
    }
}

/// One connection's read and watch (see [`run`]).
async fn follow(
    options: &Options,
    keys: &Keys,
    client: &mut Client,
    sent: &mut Update,
    updates: &mpsc::Sender<Update>,
    reread: &Notify,
    backoff: &mut Backoff,
) -> Ended {
    let mut snapshot = match read_all(client, keys).await {
        Ok(s) => s,
        Err(e) => return Ended::Lost(e),
    };
    backoff.reset();
    tracing::info!(
        "routerd: read the desired state from etcd at revision {}",
        snapshot.revision
    );
    let update = snapshot.desired_for(&options.node, options.overlay_netns.as_deref(), sent);
    // Sent even when unchanged: the node learns the revision it is in step with.
    if updates.send(update.clone()).await.is_err() {
        return Ended::Stopped;
    }
    *sent = update;
    let watch = WatchOptions::new()
        .with_prefix()
        .with_start_revision(snapshot.revision + 1);
    let mut stream = match timed("watching", client.watch(keys.all(), Some(watch))).await {
        Ok(s) => s,
        Err(e) => return Ended::Lost(e),
    };
    loop {
        let first = tokio::select! {
            m = stream.message() => m,
            _ = reread.notified() => return Ended::Reread,
            _ = updates.closed() => return Ended::Stopped,
        };
        let mut batch = vec![first];
        let closes = tokio::time::Instant::now() + options.debounce * 10;
        while batch.len() < BATCH_MOST {
            let window = options
                .debounce
                .min(closes.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(window, stream.message()).await {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut events = 0;
        for message in batch {
            let response = match message {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Ended::Lost(Error::etcd(
                        "watching",
                        etcd_client::Error::WatchError("the server closed the watch".into()),
                    ));
                }
                Err(e) => return Ended::Lost(Error::etcd("watching", e)),
            };
            if response.compact_revision() > 0 {
                return Ended::Compacted(response.compact_revision());
            }
            if response.canceled() {
                return Ended::Lost(Error::etcd(
                    "watching",
                    etcd_client::Error::WatchError(format!(
                        "the server cancelled the watch: {}",
                        response.cancel_reason()
                    )),
                ));
            }
            if let Some(h) = response.header() {
                snapshot.revision = snapshot.revision.max(h.revision());
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                events += 1;
                snapshot.revision = snapshot.revision.max(kv.mod_revision());
                match event.event_type() {
                    EventType::Put => snapshot.put(keys, kv.key(), kv.value(), kv.mod_revision()),
                    EventType::Delete => snapshot.delete(keys, kv.key()),
                }
            }
        }
        if events == 0 {
            continue;
        }
        let update = snapshot.desired_for(&options.node, options.overlay_netns.as_deref(), sent);
        if update.state == sent.state
            && update.revisions == sent.revisions
            && update.refused == sent.refused
        {
            // Another node's routers changed: nothing for this one.
            sent.revision = update.revision;
            continue;
        }
        tracing::debug!(
            "routerd: {events} event(s) from etcd up to revision {}",
            update.revision
        );
        if updates.send(update.clone()).await.is_err() {
            return Ended::Stopped;
        }
        *sent = update;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::{router, router_with};

    fn keys() -> Keys {
        Keys::new(super::super::keys::DEFAULT_PREFIX)
    }

    fn place(s: &mut Snapshot, id: &str, nodes: &[&str], rev: i64) {
        let p = Placement {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        };
        s.put(
            &keys(),
            keys().placement(id).as_bytes(),
            p.to_json().as_bytes(),
            rev,
        );
    }

    fn put_router(s: &mut Snapshot, r: &Router, rev: i64) {
        s.put(
            &keys(),
            keys().router(&r.id).as_bytes(),
            r.to_json().as_bytes(),
            rev,
        );
    }

    fn ids(u: &Update) -> Vec<&str> {
        u.state.routers.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn a_node_gets_the_routers_placed_on_it() {
        let mut s = Snapshot::default();
        put_router(&mut s, &router("r1", "ns1"), 2);
        put_router(&mut s, &router("r2", "ns2"), 3);
        put_router(&mut s, &router("r3", "ns3"), 4);
        place(&mut s, "r2", &["n1"], 5);
        place(&mut s, "r1", &["n1", "n2"], 6);
        place(&mut s, "r3", &["n2"], 7);
        // A key a node writes is not desired state.
        s.put(&keys(), keys().node("n1").as_bytes(), b"{}", 8);
        let u = s.desired_for("n1", None, &Update::default());
        assert_eq!(ids(&u), ["r1", "r2"]);
        assert_eq!(u.revisions.get("r1"), Some(&6));
        assert_eq!(u.revisions.get("r2"), Some(&5));
        assert!(u.refused.is_empty());
        assert_eq!(
            ids(&s.desired_for("n2", None, &Update::default())),
            ["r1", "r3"]
        );
        assert!(
            s.desired_for("n3", None, &Update::default())
                .state
                .routers
                .is_empty()
        );
        // Deleting the placement takes the router away; deleting only the router is a
        // placement without a desired state (refused, nothing to keep).
        s.delete(&keys(), keys().placement("r2").as_bytes());
        assert_eq!(ids(&s.desired_for("n1", None, &u)), ["r1"]);
        s.delete(&keys(), keys().router("r1").as_bytes());
        let gone = s.desired_for("n1", None, &Update::default());
        assert!(gone.state.routers.is_empty());
        assert!(gone.refused.contains_key("r1"));
    }

    #[test]
    fn a_refused_router_keeps_what_it_ran() {
        let mut s = Snapshot::default();
        let r1 = router("r1", "ns1");
        put_router(&mut s, &r1, 2);
        place(&mut s, "r1", &["n1"], 3);
        let before = s.desired_for("n1", None, &Update::default());
        assert_eq!(ids(&before), ["r1"]);
        // A route through a next hop on no interface: refused as the file refuses it.
        let bad = br#"{"id": "r1", "namespace": "ns1",
            "interface": [{"name": "qr-a", "address": "10.0.1.1/24"}],
            "route": [{"destination": "10.20.0.0/16", "nexthop": "10.9.9.9"}]}"#;
        s.put(&keys(), keys().router("r1").as_bytes(), bad, 9);
        let after = s.desired_for("n1", None, &before);
        assert_eq!(after.state, before.state);
        assert_eq!(after.revisions.get("r1"), Some(&3));
        assert!(
            after.refused["r1"].contains("nexthop"),
            "{:?}",
            after.refused
        );
        // A placement that is not JSON keeps the router too.
        put_router(&mut s, &r1, 10);
        s.put(&keys(), keys().placement("r1").as_bytes(), b"n1", 11);
        let after = s.desired_for("n1", None, &before);
        assert_eq!(after.state, before.state);
        assert!(after.refused.contains_key("r1"));
        // Without a previous value, a refused router is left out.
        assert!(
            s.desired_for("n1", None, &Update::default())
                .state
                .routers
                .is_empty()
        );
    }

    #[test]
    fn routers_placed_together_must_fit_together() {
        let mut s = Snapshot::default();
        put_router(&mut s, &router("r1", "ns1"), 2);
        put_router(&mut s, &router("r2", "ns1"), 3);
        place(&mut s, "r1", &["n1"], 4);
        place(&mut s, "r2", &["n1"], 5);
        let u = s.desired_for("n1", None, &Update::default());
        assert_eq!(ids(&u), ["r1"]);
        assert!(u.refused["r2"].contains("namespace ns1"));
        assert!(u.state.validate().is_ok());
        // An id that differs from the key's is refused.
        put_router(&mut s, &router_with("r3", "ns3", ""), 6);
        let wrong = router("other", "ns4").to_json();
        s.put(&keys(), keys().router("r3").as_bytes(), wrong.as_bytes(), 7);
        place(&mut s, "r3", &["n1"], 8);
        assert!(s.desired_for("n1", None, &u).refused["r3"].contains("\"other\""));
    }

    #[test]
    fn a_distributed_router_runs_where_its_ports_are_and_where_it_is_placed() {
        use crate::dvr::{
            Role,
            tests::{ROUTER, router},
        };
        let mut s = Snapshot::default();
        put_router(&mut s, &router(ROUTER), 10);
        place(&mut s, "r1", &["net"], 11);
        let role = |node: &str, s: &Snapshot| {
            let u = s.desired_for(node, Some("host"), &Update::default());
            assert!(u.refused.is_empty(), "{:?}", u.refused);
            u.state.routers.first().and_then(|r| r.part.clone())
        };
        let c1 = role("c1", &s).expect("c1 holds a port");
        assert_eq!(
            (c1.role, c1.overlay_netns.as_deref()),
            (Role::Compute, Some("host"))
        );
        assert_eq!(role("net", &s).map(|p| p.role), Some(Role::Snat));
        assert_eq!(role("c9", &s), None);
        // The port on c1 moves to c9: c9 runs the distributed part, c1 nothing.
        let moved = ROUTER
            .replacen("node = \"c1\"", "node = \"c9\"", 1)
            .replacen(
                "nodes = { c1 = \"192.0.2.11\",",
                "nodes = { c1 = \"192.0.2.11\", c9 = \"192.0.2.19\",",
                1,
            );
        put_router(&mut s, &router(&moved), 12);
        assert_eq!(role("c1", &s), None);
        assert_eq!(role("c9", &s).map(|p| p.role), Some(Role::Compute));
        // Placed where it holds ports: refused there, named.
        place(&mut s, "r1", &["c9"], 13);
        let u = s.desired_for("c9", None, &Update::default());
        assert!(u.refused["r1"].contains("node c9"), "{:?}", u.refused);
    }

    #[test]
    fn backoff_grows_to_a_bound_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 200);
    }
}
