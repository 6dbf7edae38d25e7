//! Packets the fast path drops or hands to the kernel, live, from each running router's
//! `EVENTS` ring buffer. The programs only send events while the deadline in `MONITOR`
//! lies ahead; a [`Monitor`] moves it forward every second and clears it when it ends (a
//! monitor that dies stops the events a few seconds later).
//!
//! A ring has one reader: an event read is gone for every other reader. So routerd alone
//! reads the rings, through its [`Hub`], and hands every event to every `monitor` client of
//! its API socket (`routerctl monitor`); each client has a bounded queue, and one that
//! reads too slowly loses the oldest events, counted, instead of slowing the others.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use router_common::{Event, Reason};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    conntrack::monotonic_ns,
    error::Error,
    maps::{Pinned, Rooms as _, events::Ring},
    router::RouterInfo,
};

/// How far ahead each refresh moves the deadline.
const LEASE: Duration = Duration::from_secs(3);

/// One dropped or passed packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLine {
    pub router: String,
    pub interface: String,
    pub reason: String,
    /// "dropped" or "passed" (to the kernel).
    pub verdict: String,
    pub protocol: u8,
    pub source: String,
    pub destination: String,
    pub bytes: u32,
    /// Kernel monotonic time of the event, in nanoseconds.
    pub ts_ns: u64,
}

struct Watched {
    info: RouterInfo,
    maps: Pinned,
    ring: Ring,
}

/// Monitors of the selected running routers.
pub struct Monitor {
    routers: Vec<Watched>,
}

impl Monitor {
    /// Opens the rings of every running router (or only `only`) and starts the events.
    pub fn open(only: Option<&str>) -> Result<Self, Error> {
        let mut routers = Vec::new();
        for info in crate::stats::selected_routers(only)? {
            let mut maps = Pinned::open(&info.router)?;
            let ring = maps.events().ring()?;
            routers.push(Watched { info, maps, ring });
        }
        let mut me = Self { routers };
        me.refresh()?;
        Ok(me)
    }

    /// Opens the rings of the routers of `infos` that can be opened (the others are left
    /// out, logged) and starts their events.
    pub fn open_each(infos: &[RouterInfo]) -> Self {
        let mut routers = Vec::new();
        for info in infos {
            let opened = Pinned::open(&info.router).and_then(|mut maps| {
                let ring = maps.events().ring()?;
                Ok(Watched {
                    info: info.clone(),
                    maps,
                    ring,
                })
            });
            match opened {
                Ok(w) => routers.push(w),
                Err(e) => tracing::debug!("monitor: router {}: {e}", info.router),
            }
        }
        let mut me = Self { routers };
        if let Err(e) = me.refresh() {
            tracing::debug!("monitor: starting the events: {e}");
        }
        me
    }

    /// Moves every router's deadline `LEASE` ahead.
    pub fn refresh(&mut self) -> Result<(), Error> {
        let until = monotonic_ns() + LEASE.as_nanos() as u64;
        self.set(until)
    }

    fn set(&mut self, until_ns: u64) -> Result<(), Error> {
        for w in &mut self.routers {
            w.maps.events().send_until(until_ns)?;
        }
        Ok(())
    }

    /// Every event waiting in the rings.
    pub fn drain(&mut self) -> Vec<EventLine> {
        let mut out = Vec::new();
        for w in &mut self.routers {
            out.extend(w.ring.drain().iter().map(|e| line(&w.info, e)));
        }
        out
    }
}

/// How often the hub drains the rings while a client listens: a ring holds
/// [`router_common::EVENTS_BYTES`] of events, about 330, so up to 65,000 events a second
/// reach the clients before a busy router's ring overflows.
const DRAIN_EVERY: Duration = Duration::from_millis(5);

/// Events queued for each monitor client (see the module docs) before it loses some.
pub const QUEUE: usize = 4096;

/// routerd's reader of the rings (see the module docs): a thread that, while a client
/// listens, drains the rings of the routers this routerd pinned every [`DRAIN_EVERY`] and
/// sends every event to every client. Without clients it reads nothing and the programs send nothing.
#[derive(Clone)]
pub struct Hub {
    events: broadcast::Sender<Arc<EventLine>>,
}

impl Hub {
    /// Starts the reader for the routers pinned by the routerd of desired-state file
    /// `owner`. It runs as long as the process.
    pub fn start(owner: PathBuf) -> Result<Self, Error> {
        let (events, _) = broadcast::channel(QUEUE);
        let sender = events.clone();
        std::thread::Builder::new()
            .name("monitor-hub".into())
            .spawn(move || drain_for_clients(&sender, &owner))
            .map_err(|e| Error::io("spawning the monitor thread", e))?;
        Ok(Self { events })
    }

    /// A new client: every event from now on, or how many it lost
    /// ([`broadcast::error::RecvError::Lagged`]) when it falls [`QUEUE`] events behind.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventLine>> {
        self.events.subscribe()
    }
}

fn drain_for_clients(events: &broadcast::Sender<Arc<EventLine>>, owner: &std::path::Path) {
    let mut monitor: Option<(Vec<RouterInfo>, Monitor)> = None;
    let mut checked = Instant::now();
    loop {
        // The sender kept here is not a client.
        if events.receiver_count() == 0 {
            // Dropping the monitor stops the events at once.
            monitor = None;
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        if monitor.is_none() || checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            // Routers come and go: the rings of those that run now, the deadline moved on.
            let ours = crate::datapath::pinned_routers_of(owner);
            let mut infos = crate::stats::selected_routers(None).unwrap_or_default();
            infos.retain(|i| ours.contains(&i.router));
            match &mut monitor {
                Some((seen, m)) if *seen == infos => {
                    if let Err(e) = m.refresh() {
                        tracing::debug!("monitor: moving the deadline on: {e}");
                    }
                }
                _ => {
                    // The old one goes first: its drop clears the deadlines it set.
                    drop(monitor.take());
                    let m = Monitor::open_each(&infos);
                    monitor = Some((infos, m));
                }
            }
        }
        if let Some((_, m)) = &mut monitor {
            for e in m.drain() {
                let _ = events.send(Arc::new(e));
            }
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

impl Drop for Monitor {
    /// Stops the events at once rather than when the lease runs out.
    fn drop(&mut self) {
        let _ = self.set(0);
    }
}

fn line(info: &RouterInfo, e: &Event) -> EventLine {
    let reason = Reason::from_u32(e.reason);
    let interface = info
        .interfaces
        .iter()
        .find(|i| i.ifindex == e.ifindex)
        .map_or_else(|| format!("if{}", e.ifindex), |i| i.name.clone());
    let endpoint = |addr: [u8; 4], port: [u8; 2]| {
        let port = u16::from_be_bytes(port);
        if port == 0 {
            Ipv4Addr::from(addr).to_string()
        } else {
            format!("{}:{port}", Ipv4Addr::from(addr))
        }
    };
    EventLine {
        router: info.router.clone(),
        interface,
        reason: reason.map_or_else(|| format!("reason-{}", e.reason), |r| r.name().to_string()),
        verdict: if reason.is_some_and(|r| r.is_drop()) {
            "dropped"
        } else {
            "passed"
        }
        .to_string(),
        protocol: e.proto,
        source: endpoint(e.src, e.sport),
        destination: endpoint(e.dst, e.dport),
        bytes: e.len,
        ts_ns: e.ts_ns,
    }
}
