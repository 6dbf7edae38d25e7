//! `routerctl monitor`: packets the fast path drops or hands to the kernel, live, from each
//! running router's `EVENTS` ring buffer. The programs only send events while the
//! deadline in `MONITOR` lies ahead; a monitor moves it forward every second and clears it
//! when it ends (a monitor that dies stops the events a few seconds later).

use std::{net::Ipv4Addr, time::Duration};

use router_common::{Event, Reason};
use serde::Serialize;

use crate::{
    conntrack::monotonic_ns,
    error::Error,
    maps::{Pinned, Rooms as _, events::Ring},
    router::RouterInfo,
};

/// How far ahead each refresh moves the deadline.
const LEASE: Duration = Duration::from_secs(3);

/// One dropped or passed packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
