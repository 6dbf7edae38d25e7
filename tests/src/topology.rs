//! One way to build the topology of a test: a router's namespace, its interfaces leading
//! to hosts (a namespace each) point to point or over a bridge, links between hosts, the
//! hosts' addresses and routes, the desired-state file and the routerd serving it.
//!
//! ```ignore
//! let mut topo = Builder::new("t")
//!     .external("qg-ext", "198.18.0.2/24", "198.18.0.1", [Host::new("ext", "198.18.0.1/24")])
//!     .internal("qr-a", "10.0.1.1/24", [Host::new("vma", "10.0.1.5/24").via("10.0.1.1")])
//!     .route("ext", "10.0.0.0/8 via 198.18.0.2")
//!     .build();
//! topo.write_config(&topo.router_text("xdp").render());
//! topo.start_routerd();
//! traffic::ping(topo.ns("vma"), [198, 18, 0, 1], 3);
//! ```
//!
//! Every name derives from one tag unique to the run (`qrouter-<tag>`, `<host>-<tag>`), so
//! tests run side by side. With [`Builder::ovs`] the segments are Open vSwitch bridges as on
//! a Neutron node (`br-int` with a VLAN tag per segment, `br-ex` for the gateway's), every
//! end an internal port moved into its namespace (see [`crate::ovs`]); otherwise a segment
//! is a veth pair, or a Linux bridge in a namespace of its own for more than two ends. The router's interfaces are left down and without addresses:
//! routerd (or a test playing Neutron's agent) configures them. Dropping the topology
//! stops routerd and removes its fast paths, then the desired-state file, then every
//! namespace, and with them every link.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use crate::{
    desired::RouterText,
    ovs,
    routerd::Routerd,
    topo::{Namespaces, ip, run, unique, veth},
    traffic::wait_for,
};

/// A host: a namespace named after it, and its end of one link.
#[derive(Clone, Debug)]
pub struct Host {
    name: String,
    dev: String,
    address: String,
    gateway: Option<String>,
    /// On OVS: plugged by a veth pair rather than as an internal port.
    veth_plug: bool,
}

impl Host {
    /// Host `name` with `address` (with prefix length) on its `eth0`, and no default route.
    pub fn new(name: &str, address: &str) -> Self {
        Self {
            name: name.to_string(),
            dev: "eth0".to_string(),
            address: address.to_string(),
            gateway: None,
            veth_plug: false,
        }
    }

    /// With [`Builder::ovs`]: the host is plugged into its bridge the hybrid way, by a veth
    /// pair whose peer is an OVS port (see [`ovs::Bridge::veth_port`]), not as an internal
    /// port. Nothing changes without OVS (a segment's ends are veths there already).
    pub fn veth_plug(self) -> Self {
        Self {
            veth_plug: true,
            ..self
        }
    }

    /// The host's end of the link is `dev` rather than `eth0`.
    pub fn dev(self, dev: &str) -> Self {
        Self {
            dev: dev.to_string(),
            ..self
        }
    }

    /// A default route via `gateway` (a VM's router).
    pub fn via(self, gateway: &str) -> Self {
        Self {
            gateway: Some(gateway.to_string()),
            ..self
        }
    }
}

/// One of the router's interfaces, as the desired state declares it.
#[derive(Clone, Debug)]
struct RouterPort {
    name: String,
    /// With prefix length.
    address: String,
}

/// One L2 segment: the router's interface (if it is on it) and the hosts on it.
struct Segment {
    router_port: Option<String>,
    /// The gateway interface's segment (the external network).
    external: bool,
    hosts: Vec<Host>,
}

/// The plan of a topology; [`Builder::build`] makes it.
pub struct Builder {
    tag: String,
    xdp_egress: bool,
    ovs: bool,
    gateway: Option<(RouterPort, String)>,
    interfaces: Vec<RouterPort>,
    segments: Vec<Segment>,
    /// (host, device, address with prefix length).
    addresses: Vec<(String, String, String)>,
    routes: Vec<(String, String)>,
}

impl Builder {
    /// A topology whose names end in a tag made of `prefix` and numbers unique to the run;
    /// the router lives in namespace `qrouter-<tag>` and is router `<tag>` for routerd.
    pub fn new(prefix: &str) -> Self {
        crate::require_root();
        Self {
            tag: unique(prefix),
            xdp_egress: false,
            ovs: false,
            gateway: None,
            interfaces: Vec::new(),
            segments: Vec::new(),
            addresses: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// As [`Builder::new`], with a tag that is a UUID unique to the run: the router is
    /// named as Neutron names one (router `<uuid>` in namespace `qrouter-<uuid>`).
    pub fn neutron() -> Self {
        Self {
            tag: unique_uuid(),
            ..Self::new("n")
        }
    }

    /// The router's interfaces send by XDP redirect (`xdp_egress`): the hosts' ends of
    /// their links run GRO, so the frames redirected into them are delivered (and transmit
    /// checksum offload is off, so what the hosts send carries its checksums).
    pub fn xdp_egress(self) -> Self {
        Self {
            xdp_egress: true,
            ..self
        }
    }

    /// The segments are Open vSwitch bridges of the userspace datapath, as on a Neutron
    /// node: the gateway's segment is `br-ex` (`bx-<tag>`, untagged), every other segment
    /// a VLAN of `br-int` (`bi-<tag>`, tag 101 for the first such segment, 102 for the
    /// second, ...). Every end, the router's `qr-`/`qg-` ports and the hosts' devices alike,
    /// is an internal port (a tap device) moved into its namespace, but a host declared with
    /// [`Host::veth_plug`]. OVS is started if it is not running; the bridges are deleted
    /// with the topology.
    pub fn ovs(self) -> Self {
        Self { ovs: true, ..self }
    }

    /// The router's gateway interface `port` with `address`, its default route via
    /// `nexthop`, on a segment with `hosts` (point to point for one host, a bridge for
    /// several).
    pub fn external(
        mut self,
        port: &str,
        address: &str,
        nexthop: &str,
        hosts: impl IntoIterator<Item = Host>,
    ) -> Self {
        assert!(self.gateway.is_none(), "a router has one gateway interface");
        self.gateway = Some((router_port(port, address), nexthop.to_string()));
        let mut me = self.segment(Some(port), hosts);
        me.segments.last_mut().expect("just added").external = true;
        me
    }

    /// An internal interface `port` of the router with `address`, on a segment with
    /// `hosts` (point to point for one host, a bridge for several).
    pub fn internal(
        mut self,
        port: &str,
        address: &str,
        hosts: impl IntoIterator<Item = Host>,
    ) -> Self {
        self.interfaces.push(router_port(port, address));
        self.segment(Some(port), hosts)
    }

    /// A link between two hosts, the router not on it.
    pub fn link(self, a: Host, b: Host) -> Self {
        self.segment(None, [a, b])
    }

    /// A further address on `host` (with prefix length), on `dev` (a link's end, or `lo`).
    pub fn address(mut self, host: &str, dev: &str, address: &str) -> Self {
        self.addresses
            .push((host.to_string(), dev.to_string(), address.to_string()));
        self
    }

    /// A route on `host`, as `ip route add` takes it (`"10.0.0.0/8 via 198.18.0.2"`).
    pub fn route(mut self, host: &str, route: &str) -> Self {
        self.routes.push((host.to_string(), route.to_string()));
        self
    }

    fn segment(mut self, router_port: Option<&str>, hosts: impl IntoIterator<Item = Host>) -> Self {
        let hosts: Vec<Host> = hosts.into_iter().collect();
        assert!(
            usize::from(router_port.is_some()) + hosts.len() >= 2,
            "a segment joins two ends at least"
        );
        self.segments.push(Segment {
            router_port: router_port.map(String::from),
            external: false,
            hosts,
        });
        self
    }

    /// Creates the namespaces, then the links and bridges with the hosts' addresses and
    /// default routes, then the further addresses, then the routes. A failure halfway
    /// removes what was made.
    pub fn build(self) -> Topology {
        let mut namespaces = Namespaces::default();
        // Declared after the namespaces, so dropped first on a failure halfway.
        let mut switches = Switches::new(self.ovs, &self.tag);
        let router_ns = namespaces.add(&format!("qrouter-{}", self.tag));
        let mut hosts: BTreeMap<String, String> = BTreeMap::new();
        for host in self.segments.iter().flat_map(|s| &s.hosts) {
            if !hosts.contains_key(&host.name) {
                let ns = namespaces.add(&format!("{}-{}", host.name, self.tag));
                hosts.insert(host.name.clone(), ns);
            }
        }
        for (n, segment) in self.segments.iter().enumerate() {
            let router_end = segment
                .router_port
                .as_ref()
                .map(|p| (router_ns.as_str(), p));
            let ends: Vec<(&str, &String)> = router_end
                .into_iter()
                .chain(
                    segment
                        .hosts
                        .iter()
                        .map(|h| (hosts[&h.name].as_str(), &h.dev)),
                )
                .collect();
            if let Switches::Ovs {
                int,
                ex,
                vlans,
                ports,
                ..
            } = &mut switches
            {
                let (bridge, tag) = if segment.external {
                    (&*ex, None)
                } else {
                    *vlans += 1;
                    (&*int, Some(100 + *vlans))
                };
                let veth_plugged = segment
                    .router_port
                    .as_ref()
                    .map(|_| false)
                    .into_iter()
                    .chain(segment.hosts.iter().map(|h| h.veth_plug));
                for ((ns, dev), veth_plug) in ends.into_iter().zip(veth_plugged) {
                    let port = if veth_plug {
                        bridge.veth_port(tag, ns, dev)
                    } else {
                        bridge.internal_port(tag, ns, dev)
                    };
                    ports.push(OvsPort {
                        ns: ns.to_string(),
                        dev: dev.clone(),
                        port,
                        bridge: bridge.name.clone(),
                        tag,
                    });
                }
            } else if let [(a_ns, a), (b_ns, b)] = ends[..] {
                veth(a, a_ns, b, b_ns);
            } else {
                let switch = namespaces.add(&format!("sw{n}-{}", self.tag));
                let ports = segment
                    .router_port
                    .iter()
                    .map(|p| format!("p-{p}"))
                    .chain(segment.hosts.iter().map(|h| format!("p-{}", h.name)));
                bridge(&switch, ends.into_iter().zip(ports));
            }
            for host in &segment.hosts {
                let faces_router = segment.router_port.is_some();
                // An OVS tap's reader is ovs-vswitchd, which takes redirected frames as
                // they are: nothing to set up on the host's end.
                let gro = self.xdp_egress && faces_router && !self.ovs;
                configure(&hosts[&host.name], host, gro);
            }
        }
        let ns_of = |host: &str| {
            hosts
                .get(host)
                .unwrap_or_else(|| panic!("{host} is on no link"))
                .as_str()
        };
        for (host, dev, address) in &self.addresses {
            ip(&["-n", ns_of(host), "addr", "add", address, "dev", dev]);
        }
        for (host, route) in &self.routes {
            let mut args = vec!["-n", ns_of(host), "route", "add"];
            args.extend(route.split_whitespace());
            ip(&args);
        }
        Topology {
            config: std::env::temp_dir().join(format!("{}.toml", self.tag)),
            tag: self.tag,
            router_ns,
            gateway: self.gateway,
            interfaces: self.interfaces,
            xdp_egress: self.xdp_egress,
            hosts,
            routerd: None,
            switches,
            namespaces,
        }
    }
}

/// What the segments are made of beyond veths and namespaces.
enum Switches {
    /// veth pairs, and Linux bridges in namespaces of their own (gone with them).
    Kernel,
    /// `br-int` and `br-ex`, and the ports made on them.
    Ovs {
        int: ovs::Bridge,
        ex: ovs::Bridge,
        /// The VLANs of `br-int` given out so far.
        vlans: u16,
        ports: Vec<OvsPort>,
        /// OVS's configuration stays as it is while the topology uses it; let go after the
        /// bridges are deleted (fields drop in order).
        _config: ovs::SharedConfig,
    },
}

impl Switches {
    fn new(ovs: bool, tag: &str) -> Self {
        if !ovs {
            return Self::Kernel;
        }
        // Bridge names are interface names (15 characters at most): a UUID tag is too long.
        let suffix = if tag.len() <= 12 {
            tag.to_string()
        } else {
            unique("o")
        };
        ovs::ensure_running();
        let config = ovs::shared_config();
        let int = ovs::Bridge::new(&format!("bi-{suffix}"));
        let ex = ovs::Bridge::new(&format!("bx-{suffix}"));
        Self::Ovs {
            int,
            ex,
            vlans: 0,
            ports: Vec::new(),
            _config: config,
        }
    }
}

/// One end of a segment on an OVS bridge.
#[derive(Clone, Debug)]
pub struct OvsPort {
    /// Where the internal port's tap device is, and its name there.
    pub ns: String,
    pub dev: String,
    /// The port's name in OVS.
    pub port: String,
    pub bridge: String,
    /// Its VLAN (access port), `None` when untagged.
    pub tag: Option<u16>,
}

/// A UUID no other test run uses at the same time: the process id, a counter and the
/// clock's nanoseconds in its fields.
pub fn unique_uuid() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        std::process::id(),
        n & 0xffff,
        (nanos >> 48) as u32 & 0xfff,
        (nanos >> 36) as u32 & 0xfff,
        nanos as u64 & 0xffff_ffff_ffff
    )
}

/// A bridge `br0` in namespace `switch`, each end (namespace, device) linked to a port
/// of it (named as given).
fn bridge<'a>(switch: &str, ends: impl IntoIterator<Item = ((&'a str, &'a String), String)>) {
    ip(&["-n", switch, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", switch, "link", "set", "br0", "up"]);
    for ((ns, dev), port) in ends {
        veth(dev, ns, &port, switch);
        ip(&["-n", switch, "link", "set", &port, "master", "br0"]);
        ip(&["-n", switch, "link", "set", &port, "up"]);
    }
}

/// Brings `host`'s end of its link up in namespace `ns`, with its address and default
/// route; with `gro`, the end runs GRO and sends without checksum offload (see
/// [`Builder::xdp_egress`]).
fn configure(ns: &str, host: &Host, gro: bool) {
    ip(&["-n", ns, "link", "set", &host.dev, "up"]);
    ip(&["-n", ns, "addr", "add", &host.address, "dev", &host.dev]);
    if let Some(gw) = &host.gateway {
        ip(&["-n", ns, "route", "add", "default", "via", gw]);
    }
    if gro {
        run(
            "ip",
            &[
                "netns", "exec", ns, "ethtool", "-K", &host.dev, "gro", "on", "tx", "off",
            ],
        );
    }
}

fn router_port(name: &str, address: &str) -> RouterPort {
    RouterPort {
        name: name.to_string(),
        address: address.to_string(),
    }
}

/// A built topology; see the module documentation.
pub struct Topology {
    /// The router's id for routerd, and the suffix of every name.
    pub tag: String,
    pub router_ns: String,
    /// routerd's desired-state file (written by [`Topology::write_config`]).
    pub config: PathBuf,
    gateway: Option<(RouterPort, String)>,
    interfaces: Vec<RouterPort>,
    xdp_egress: bool,
    /// Host name -> namespace.
    hosts: BTreeMap<String, String>,
    /// Stopped before the file and the namespaces go.
    routerd: Option<Routerd>,
    /// OVS bridges (deleted with their ports, after routerd has detached from the taps and
    /// before the namespaces go).
    switches: Switches,
    /// Declared last: namespaces go after everything that lives in them.
    namespaces: Namespaces,
}

impl Topology {
    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> &str {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no host {name} in topology {}", self.tag))
    }

    /// The OVS ports of the topology ([`Builder::ovs`]; none otherwise), in the order the
    /// segments were declared.
    pub fn ovs_ports(&self) -> &[OvsPort] {
        match &self.switches {
            Switches::Ovs { ports, .. } => ports,
            Switches::Kernel => &[],
        }
    }

    /// The OVS port whose tap is `dev` in namespace `ns`.
    pub fn ovs_port(&self, ns: &str, dev: &str) -> &OvsPort {
        self.ovs_ports()
            .iter()
            .find(|p| p.ns == ns && p.dev == dev)
            .unwrap_or_else(|| panic!("no OVS port {dev} in {ns}"))
    }

    /// A further namespace `<name>-<tag>`, removed with the topology.
    pub fn namespace(&mut self, name: &str) -> String {
        let ns = self.namespaces.add(&format!("{name}-{}", self.tag));
        self.hosts.insert(name.to_string(), ns.clone());
        ns
    }

    /// The router as routerd's desired state declares it in `mode`: its interfaces with
    /// their addresses, the gateway's next hop, SNAT on; no floating IPs, nothing extra.
    pub fn router_text(&self, mode: &str) -> RouterText {
        let egress = self.xdp_egress.then_some(true);
        RouterText {
            id: self.tag.clone(),
            namespace: self.router_ns.clone(),
            mode: mode.to_string(),
            gateway: self.gateway.as_ref().map(|(port, nexthop)| {
                (
                    port.name.clone(),
                    port.address.clone(),
                    nexthop.clone(),
                    egress,
                )
            }),
            interfaces: self
                .interfaces
                .iter()
                .map(|p| (p.name.clone(), p.address.clone(), egress))
                .collect(),
            ..RouterText::default()
        }
    }

    /// Writes `text` as the desired state (whole, then renamed into place: a routerd
    /// reading it never sees half a file).
    pub fn write_config(&self, text: &str) {
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &self.config)
            .unwrap_or_else(|e| panic!("renaming to {}: {e}", self.config.display()));
    }

    /// Starts routerd on the desired state and waits until the router is attached; the
    /// topology keeps it.
    pub fn start_routerd(&mut self) -> &mut Routerd {
        self.routerd.insert(Routerd::start(&self.config, &self.tag))
    }

    /// The routerd [`Topology::start_routerd`] started.
    pub fn routerd(&self) -> &Routerd {
        self.routerd.as_ref().expect("routerd was started")
    }

    pub fn routerd_mut(&mut self) -> &mut Routerd {
        self.routerd.as_mut().expect("routerd was started")
    }

    /// Writes `text` as the desired state, sends routerd SIGHUP and waits until it has
    /// applied it; panics with routerd's log if it refused the file, reported an error, or
    /// did not finish in time.
    pub fn reload(&self, text: &str) {
        let routerd = self.routerd();
        let count = |log: &str, what: &str| log.matches(what).count();
        let before = routerd.log_text();
        let (done0, refused0) = (
            count(&before, "routerd: reloaded in"),
            count(&before, "nothing changed"),
        );
        self.write_config(text);
        routerd.reload();
        wait_for(
            "routerd to apply the new desired state",
            Duration::from_secs(15),
            || {
                let log = routerd.log_text();
                count(&log, "routerd: reloaded in") > done0
                    || count(&log, "nothing changed") > refused0
            },
        );
        let log = routerd.log_text();
        let new = &log[before.len().min(log.len())..];
        assert!(
            count(&log, "nothing changed") == refused0,
            "routerd refused the new desired state:\n{new}\n--- file ---\n{text}"
        );
        assert!(
            !new.contains("ERROR"),
            "routerd reported an error applying the new desired state:\n{new}\n--- file ---\n{text}"
        );
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // routerd stops first: its teardown reads the desired-state file.
        drop(self.routerd.take());
        let _ = std::fs::remove_file(&self.config);
    }
}
