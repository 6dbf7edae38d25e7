//! Two network nodes holding one HA router (`docs/ha.md`), for the HA tests and the
//! benchmark: each node its own routerd following a real etcd and its own router
//! namespace, joined by a switch namespace (an internal and an external bridge) with two
//! VMs and the external host.
//!
//! ```text
//!            vm1 10.0.1.5   vm2 10.0.1.6 (floating IP 198.18.0.10)
//!                 \          /
//!                  br-int (sw)  ── qr0 of node a, qr0 of node b (same MAC, 10.0.1.1)
//!                  br-ext (sw)  ── qg0 of node a, qg0 of node b (same MAC, 198.18.0.2)
//!                     |
//!               ext 198.18.0.1
//! ```
//!
//! Each node's router namespace is `<node prefix>qr-<tag>` (`ROUTERD_NETNS_PREFIX`), as
//! two machines would both call it `qr-<tag>`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use router_user::{
    ha::status::HaStatus,
    maps::{Pinned, Rooms as _},
};

use crate::{
    etcd::{Etcd, Node},
    held::{ConnReport, Held},
    probe,
    topo::{Namespaces, ip_batch, run, unique},
};

pub const FIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

/// The switch and the hosts around two router namespaces: `sw-<tag>` with `br-int` (each
/// router's `qr0`, vm1, vm2) and `br-ext` (each router's `qg0`, ext), IPv6 off in all four.
/// Both routers' ports have the same MACs, as an HA router's ports on two nodes do; the
/// switch ports are `aqr`, `aqg` (first router) and `bqr`, `bqg` (second).
pub struct Site {
    pub sw: String,
    pub vm1: String,
    pub vm2: String,
    pub ext: String,
}

impl Site {
    /// Makes the site in `ns` (the router namespaces exist already); `links` and
    /// `switch_lines` are more `ip` lines for the links and the switch (an HA network).
    pub fn build(
        ns: &mut Namespaces,
        tag: &str,
        router_ns: &[String; 2],
        links: &str,
        switch_lines: &str,
    ) -> Self {
        let name = |what: &str| format!("{what}-{tag}");
        let (sw, vm1, vm2, ext) = (name("sw"), name("vm1"), name("vm2"), name("ext"));
        for n in [&sw, &vm1, &vm2, &ext] {
            ns.add(n);
            probe::sysctl(
                n,
                &[
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            );
        }
        let mut all = String::new();
        for (r, node) in router_ns.iter().zip(["a", "b"]) {
            all += &format!(
                "link add qr0 netns {r} address 02:00:00:aa:00:01 type veth peer name {node}qr netns {sw}\n\
                 link add qg0 netns {r} address 02:00:00:aa:00:02 type veth peer name {node}qg netns {sw}\n"
            );
        }
        all += &format!(
            "link add eth0 netns {vm1} type veth peer name v1 netns {sw}\n\
             link add eth0 netns {vm2} type veth peer name v2 netns {sw}\n\
             link add eth0 netns {ext} type veth peer name e0 netns {sw}\n{links}"
        );
        ip_batch(None, &all);
        ip_batch(
            Some(&sw),
            &format!(
                "link add br-int type bridge stp_state 0\nlink add br-ext type bridge stp_state 0\n\
                 link set aqr master br-int\nlink set bqr master br-int\nlink set v1 master br-int\nlink set v2 master br-int\n\
                 link set aqg master br-ext\nlink set bqg master br-ext\nlink set e0 master br-ext\n\
                 link set br-int up\nlink set br-ext up\nlink set aqr up\nlink set bqr up\nlink set v1 up\n\
                 link set v2 up\nlink set aqg up\nlink set bqg up\nlink set e0 up\n{switch_lines}"
            ),
        );
        for (host, addr, gw) in [
            (&vm1, "10.0.1.5/24", "10.0.1.1"),
            (&vm2, "10.0.1.6/24", "10.0.1.1"),
            (&ext, "198.18.0.1/24", ""),
        ] {
            let mut lines = format!("link set eth0 up\naddress add {addr} dev eth0\n");
            if !gw.is_empty() {
                lines += &format!("route add default via {gw}\n");
            }
            ip_batch(Some(host), &lines);
        }
        Self { sw, vm1, vm2, ext }
    }
}

/// The connections an HA test or benchmark holds through the router while it fails over:
/// SNATed ones from vm1 to ext, ones from ext to vm2's floating IP, and (optionally) ones
/// vm2 opens to ext through its floating IP; each side sends every 100 ms.
pub struct Traffic {
    pub snat: Held,
    pub fip_in: Held,
    pub fip_out: Option<Held>,
}

/// What [`Traffic`] lived through, per group.
pub struct TrafficReport {
    pub snat: Vec<ConnReport>,
    pub fip_in: Vec<ConnReport>,
    pub fip_out: Vec<ConnReport>,
}

impl TrafficReport {
    /// Every connection's report.
    pub fn all(&self) -> impl Iterator<Item = &ConnReport> {
        self.snat.iter().chain(&self.fip_in).chain(&self.fip_out)
    }
}

impl Traffic {
    pub fn start(
        vm1: &str,
        vm2: &str,
        ext: &str,
        snat: usize,
        fip_in: usize,
        fip_out: usize,
    ) -> Self {
        let period = Duration::from_millis(100);
        let ext_at = |port| SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), port);
        Self {
            snat: Held::start(ext, ext_at(5001), vm1, ext_at(5001), snat, period),
            fip_in: Held::start(
                vm2,
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 6), 5002),
                ext,
                SocketAddrV4::new(FIP, 5002),
                fip_in,
                period,
            ),
            fip_out: (fip_out > 0)
                .then(|| Held::start(ext, ext_at(5003), vm2, ext_at(5003), fip_out, period)),
        }
    }

    /// When the connections started (gaps are timed from it).
    pub fn started(&self) -> Instant {
        self.snat.started
    }

    pub fn finish(self) -> TrafficReport {
        TrafficReport {
            snat: self.snat.finish(),
            fip_in: self.fip_in.finish(),
            fip_out: self.fip_out.map(Held::finish).unwrap_or_default(),
        }
    }
}

pub struct Pair {
    pub id: String,
    pub vm1: String,
    pub vm2: String,
    pub ext: String,
    /// Each node's router namespace, by node index.
    pub router_ns: [String; 2],
    // Dropped last: the nodes (declared after) stop before their namespaces go.
    _ns: Namespaces,
}

/// The switch, the hosts and both nodes' router namespaces.
pub fn pair(mode: &str) -> (Pair, String) {
    crate::require_root();
    let tag = unique("ha");
    let mut ns = Namespaces::default();
    let router_ns = [format!("a-qr-{tag}"), format!("b-qr-{tag}")];
    // IPv6 is left on in the router namespaces: routerd turns it off on an HA router's
    // interfaces itself.
    for n in &router_ns {
        ns.add(n);
    }
    let Site { sw, vm1, vm2, ext } = Site::build(&mut ns, &tag, &router_ns, "", "");
    // XDP redirects into a veth arrive only where its far end takes them (GRO on).
    for port in ["aqr", "bqr", "aqg", "bqg"] {
        run(
            "ip",
            &["netns", "exec", &sw, "ethtool", "-K", port, "gro", "on"],
        );
    }
    let toml = format!(
        "[[router]]\nid = \"{tag}\"\nnamespace = \"qr-{tag}\"\nmode = \"{mode}\"\n\n\
         [router.gateway]\ninterface = \"qg0\"\naddress = \"198.18.0.2/24\"\nnexthop = \"198.18.0.1\"\nsnat = true\n\n\
         [[router.interface]]\nname = \"qr0\"\naddress = \"10.0.1.1/24\"\n\n\
         [[router.floating_ip]]\naddress = \"{FIP}\"\nfixed = \"10.0.1.6\"\n"
    );
    (
        Pair {
            id: tag,
            vm1,
            vm2,
            ext,
            router_ns,
            _ns: ns,
        },
        toml,
    )
}

pub use crate::etcd::free_port;

pub fn node(etcd: &Etcd, prefix: &str) -> Node {
    node_named(etcd, prefix, &node_name(prefix))
}

/// A unique name for a node whose router namespaces are named with `prefix`.
pub fn node_name(prefix: &str) -> String {
    unique(&format!("net{prefix}"))
}

/// A routerd node called `name` (see [`node_name`]).
pub fn node_named(etcd: &Etcd, prefix: &str, name: &str) -> Node {
    let listen = format!("127.0.0.1:{}", free_port());
    Node::start_with(
        &etcd.endpoint(),
        name,
        &["--ha-listen".into(), listen],
        &[("ROUTERD_NETNS_PREFIX", prefix)],
    )
}

pub fn ha_status(node: &Node, id: &str) -> Option<HaStatus> {
    let bytes = std::fs::read(node.run_dir.join(format!("{id}.ha"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which node is active and which stands by with a whole resync, once they agree.
pub fn settled(nodes: &[Node; 2], id: &str) -> (usize, usize) {
    wait_for(
        "one active node and one synced standby",
        Duration::from_secs(30),
        || {
            let s: Vec<Option<HaStatus>> = nodes.iter().map(|n| ha_status(n, id)).collect();
            let role = |i: usize| s[i].as_ref().map(|s| (s.role.as_str(), s.synced, s.epoch));
            match (role(0), role(1)) {
                (Some(("active", _, e0)), Some(("standby", true, e1))) if e0 == e1 => Some((0, 1)),
                (Some(("standby", true, e0)), Some(("active", _, e1))) if e0 == e1 => Some((1, 0)),
                _ => None,
            }
        },
    )
}

pub fn sessions_on(node: &Node, id: &str) -> u64 {
    Pinned::open_in(&node.pin_root, id)
        .and_then(|mut m| m.sessions().counts())
        .map(|c| c.sessions)
        .unwrap_or(0)
}

pub fn set_links(ns: &str, state: &str) {
    ip_batch(
        Some(ns),
        &format!("link set qr0 {state}\nlink set qg0 {state}\n"),
    );
}

/// A started HA pair: the topology, etcd, both nodes and the router placed on both, with
/// one node active and the other a synced standby. Fields drop in order: the nodes stop
/// before etcd goes, and both before the namespaces.
pub struct HaPair {
    pub nodes: [Node; 2],
    pub etcd: Etcd,
    pub pair: Pair,
    pub active: usize,
    pub standby: usize,
}

impl HaPair {
    /// Builds and starts everything (`mode`: the router's mode) and waits until it settles.
    pub fn start(mode: &str) -> Self {
        let (pair, toml) = pair(mode);
        let etcd = Etcd::start();
        let state =
            router_user::config::DesiredState::parse(&toml).expect("the router's desired state");
        let router = state.routers.into_iter().next().expect("one router");
        let nodes = [node(&etcd, "a-"), node(&etcd, "b-")];
        etcd.put_router(&router);
        etcd.place(&pair.id, &[&nodes[0].name, &nodes[1].name]);
        let (active, standby) = settled(&nodes, &pair.id);
        Self {
            nodes,
            etcd,
            pair,
            active,
            standby,
        }
    }
}
