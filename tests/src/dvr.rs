//! Three nodes of a cloud on one machine for the distributed-router tests and benchmark
//! (`docs/dvr.md`): a network node and two compute nodes, each with its own routerd
//! following one etcd, joined by an underlay switch; two tenant networks carried between
//! them in VXLAN; an external network behind the network node.
//!
//! ```text
//!        vm1 10.0.1.5  vm2 10.0.2.5            vm4 10.0.1.6  vm3 10.0.2.6
//!              \        /                           \        /
//!         c1: br1, br2 + vxlan-1001/1002       c2: br1, br2 + vxlan-1001/1002
//!         router copy (qr1 10.0.1.1, qr2 ...)  router copy (the same addresses and MACs)
//!              |  ul0 192.0.2.11                     |  ul0 192.0.2.12
//!              +------------- br-ul (underlay) -------------+
//!                              |  ul0 192.0.2.10
//!                     net: br1, br2 + vxlan devices, the SNAT part
//!                     (qr1 10.0.1.3, qr2 10.0.2.3, qg0 198.18.0.2)
//!
//!   every node's qg0 -- br-ex (ext, 198.18.0.1): the external network; the compute
//!   nodes' have no address, and answer for their own VMs' floating IPs
//! ```
//!
//! Each node has a host namespace (`h<node>-<tag>`, routerd's `--overlay-netns`) with its
//! bridges, overlay devices and underlay port, and a router namespace
//! (`<node>-qr-<tag>`, `ROUTERD_NETNS_PREFIX`).

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    etcd::{Etcd, Node},
    ha::free_port,
    probe,
    topo::{Namespaces, ip_batch, run, unique},
};

pub const VNI1: u32 = 1001;
pub const VNI2: u32 = 1002;
pub const FIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// With a second external subnet ([`Cloud::build_with`]): vm1's floating IP on it, its
/// gateway (in namespace `x2-<tag>`, on the external switch), and an address behind that
/// gateway only.
pub const FIP2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const SUBNET2_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const BEHIND_SUBNET2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// One compute or network node.
pub struct NodeSpec {
    /// `c1`, `c2` or `net`.
    pub short: &'static str,
    pub vtep: Ipv4Addr,
    pub host_ns: String,
    pub router_ns: String,
    /// Its name in etcd.
    pub name: String,
}

/// A VM: its namespace, address, MAC and network (1 or 2).
pub struct Vm {
    pub ns: String,
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
    pub net: u8,
}

pub struct Cloud {
    pub id: String,
    pub nodes: [NodeSpec; 3],
    pub vms: [Vm; 4],
    pub ul: String,
    pub ext: String,
    /// The second external subnet's gateway, if built with one.
    pub x2: Option<String>,
    /// The routerds, by node index; dropped before the namespaces.
    pub routerd: Vec<Node>,
    pub etcd: Option<Etcd>,
    /// The nodes' desired-state files ([`Cloud::start_from_files`]).
    files: Vec<std::path::PathBuf>,
    _ns: Namespaces,
}

pub const GW_MAC1: [u8; 6] = [0xfa, 0x16, 0x3e, 0xaa, 0, 1];
pub const GW_MAC2: [u8; 6] = [0xfa, 0x16, 0x3e, 0xaa, 0, 2];
pub const SG_MAC1: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 1, 3];
pub const SG_MAC2: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 2, 3];

/// The MAC of node `short`'s external interface (its own on every node).
pub fn qg_mac(short: &str) -> [u8; 6] {
    let last = match short {
        "c1" => 1,
        "c2" => 2,
        _ => 0x10,
    };
    [0xfa, 0x16, 0x3e, 0xbb, 0, last]
}

pub fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

const C1: usize = 0;
const C2: usize = 1;
const NET: usize = 2;

impl Cloud {
    /// Builds the three nodes' namespaces and links (no routerd yet).
    pub fn build() -> Self {
        Self::build_with(false)
    }

    /// As [`Cloud::build`]; `second_subnet`: the external network has a second subnet
    /// with its own gateway and vm1's floating IP [`FIP2`] on it.
    pub fn build_with(second_subnet: bool) -> Self {
        crate::require_root();
        let tag = unique("dv");
        let mut ns = Namespaces::default();
        let spec = |short: &'static str, last: u8| NodeSpec {
            short,
            vtep: Ipv4Addr::new(192, 0, 2, last),
            host_ns: format!("h{short}-{tag}"),
            router_ns: format!("{short}-qr-{tag}"),
            name: unique(&format!("{short}node")),
        };
        let nodes = [spec("c1", 11), spec("c2", 12), spec("net", 10)];
        let vm = |name: &str, addr: [u8; 4], net: u8| Vm {
            ns: format!("{name}-{tag}"),
            addr: Ipv4Addr::from(addr),
            mac: [0xfa, 0x16, 0x3e, 0, addr[2], addr[3]],
            net,
        };
        let vms = [
            vm("vm1", [10, 0, 1, 5], 1),
            vm("vm2", [10, 0, 2, 5], 2),
            vm("vm3", [10, 0, 2, 6], 2),
            vm("vm4", [10, 0, 1, 6], 1),
        ];
        let ul = format!("ul-{tag}");
        let ext = format!("ext-{tag}");
        let x2 = second_subnet.then(|| format!("x2-{tag}"));
        let quiet = [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ];
        let mut all: Vec<String> = vec![ul.clone(), ext.clone()];
        all.extend(x2.clone());
        for n in &nodes {
            all.push(n.host_ns.clone());
            all.push(n.router_ns.clone());
        }
        all.extend(vms.iter().map(|v| v.ns.clone()));
        for n in &all {
            ns.add(n);
            probe::sysctl(n, &quiet);
        }
        ip_batch(
            Some(&ul),
            "link add br-ul type bridge stp_state 0\nlink set br-ul up\n",
        );
        for n in &nodes {
            let (h, r) = (&n.host_ns, &n.router_ns);
            let port = format!("u-{}", n.short);
            let (qr1_mac, qr2_mac) = if n.short == "net" {
                (SG_MAC1, SG_MAC2)
            } else {
                (GW_MAC1, GW_MAC2)
            };
            let mut links = format!(
                "link add ul0 netns {h} mtu 1600 type veth peer name {port} netns {ul}\n\
                 link add qr1 netns {r} address {} type veth peer name r1 netns {h}\n\
                 link add qr2 netns {r} address {} type veth peer name r2 netns {h}\n",
                mac_text(qr1_mac),
                mac_text(qr2_mac),
            );
            links += &format!(
                "link add qg0 netns {r} address {} type veth peer name g-{} netns {ext}\n",
                mac_text(qg_mac(n.short)),
                n.short
            );
            ip_batch(None, &links);
            ip_batch(
                Some(&ul),
                &format!(
                    "link set {port} mtu 1600\nlink set {port} master br-ul\nlink set {port} up\n"
                ),
            );
            let mut host = format!(
                "link set ul0 up\naddress add {}/24 dev ul0\n\
                 link add br1 type bridge stp_state 0\nlink add br2 type bridge stp_state 0\n",
                n.vtep
            );
            for vni in [VNI1, VNI2] {
                let br = if vni == VNI1 { "br1" } else { "br2" };
                host += &format!(
                    "link add vxlan-{vni} type vxlan id {vni} local {} dev ul0 dstport 4789 nolearning proxy\n\
                     link set vxlan-{vni} master {br}\nlink set vxlan-{vni} type bridge_slave learning off\n\
                     link set vxlan-{vni} up\n",
                    n.vtep
                );
            }
            host += "link set r1 master br1\nlink set r2 master br2\nlink set r1 up\nlink set r2 up\n\
                     link set br1 up\nlink set br2 up\n";
            ip_batch(Some(h), &host);
            // XDP redirects into a veth arrive only where its far end takes them.
            for port in ["r1", "r2"] {
                run(
                    "ip",
                    &["netns", "exec", h, "ethtool", "-K", port, "gro", "on"],
                );
            }
        }
        let mut switch = String::from("link add br-ex type bridge stp_state 0\n");
        for n in &nodes {
            let port = format!("g-{}", n.short);
            switch += &format!("link set {port} master br-ex\nlink set {port} up\n");
        }
        switch += "link set br-ex up\naddress add 198.18.0.1/24 dev br-ex\n";
        if let Some(x2) = &x2 {
            ip_batch(
                None,
                &format!("link add eth0 netns {x2} type veth peer name g-x2 netns {ext}\n"),
            );
            switch += "link set g-x2 master br-ex\nlink set g-x2 up\n";
            ip_batch(
                Some(x2),
                &format!(
                    "link set eth0 up\naddress add {SUBNET2_GATEWAY}/24 dev eth0\n\
                     address add {BEHIND_SUBNET2}/32 dev lo\n"
                ),
            );
        }
        ip_batch(Some(&ext), &switch);
        for n in &nodes {
            let port = format!("g-{}", n.short);
            run(
                "ip",
                &["netns", "exec", &ext, "ethtool", "-K", &port, "gro", "on"],
            );
        }
        let cloud = Self {
            id: tag,
            nodes,
            vms,
            ul,
            ext,
            x2,
            routerd: Vec::new(),
            etcd: None,
            files: Vec::new(),
            _ns: ns,
        };
        for (i, host) in [C1, C1, C2, C2].into_iter().enumerate() {
            cloud.plug(i, host);
        }
        cloud
    }

    /// Connects VM `vm` to node `node`'s bridge of its network (a fresh tap each time, as
    /// a VM that moves gets one on its new node).
    pub fn plug(&self, vm: usize, node: usize) {
        let v = &self.vms[vm];
        let h = &self.nodes[node].host_ns;
        let tap = format!("tap{vm}");
        let gw = if v.net == 1 { "10.0.1.1" } else { "10.0.2.1" };
        ip_batch(
            None,
            &format!(
                "link add eth0 netns {} address {} type veth peer name {tap} netns {h}\n",
                v.ns,
                mac_text(v.mac)
            ),
        );
        ip_batch(
            Some(h),
            &format!("link set {tap} master br{}\nlink set {tap} up\n", v.net),
        );
        ip_batch(
            Some(&v.ns),
            &format!(
                "link set eth0 up\naddress add {}/24 dev eth0\nroute add default via {gw}\n",
                v.addr
            ),
        );
    }

    /// Takes VM `vm` off node `node` (its tap goes, and with it the VM's interface).
    pub fn unplug(&self, vm: usize, node: usize) {
        ip_batch(
            Some(&self.nodes[node].host_ns),
            &format!("link del tap{vm}\n"),
        );
    }

    /// The router's desired state with each VM on `placement[vm]` (a node index).
    pub fn router_toml(&self, mode: &str, placement: [usize; 4]) -> String {
        let n = |i: usize| &self.nodes[i];
        let mut t = format!(
            "[[router]]\nid = \"{id}\"\nnamespace = \"qr-{id}\"\nmode = \"{mode}\"\n\n\
             [router.gateway]\ninterface = \"qg0\"\naddress = \"198.18.0.2/24\"\nnexthop = \"198.18.0.1\"\n\n\
             [[router.interface]]\nname = \"qr1\"\naddress = \"10.0.1.1/24\"\n\n\
             [[router.interface]]\nname = \"qr2\"\naddress = \"10.0.2.1/24\"\n\n\
             {subnet2}\
             [[router.floating_ip]]\naddress = \"{FIP}\"\nfixed = \"10.0.1.6\"\n\n{fip2}\
             [router.distributed]\nnodes = {{ \"{}\" = \"{}\", \"{}\" = \"{}\", \"{}\" = \"{}\" }}\n\n\
             [[router.distributed.network]]\ninterface = \"qr1\"\nvni = {VNI1}\nsnat_address = \"10.0.1.3\"\n\n\
             [[router.distributed.network]]\ninterface = \"qr2\"\nvni = {VNI2}\nsnat_address = \"10.0.2.3\"\n",
            n(C1).name,
            n(C1).vtep,
            n(C2).name,
            n(C2).vtep,
            n(NET).name,
            n(NET).vtep,
            id = self.id,
            subnet2 = if self.x2.is_some() {
                format!(
                    "[[router.gateway.subnet]]\naddress = \"198.51.100.2/24\"\nnexthop = \"{SUBNET2_GATEWAY}\"\n\n"
                )
            } else {
                String::new()
            },
            fip2 = if self.x2.is_some() {
                format!("[[router.floating_ip]]\naddress = \"{FIP2}\"\nfixed = \"10.0.1.5\"\n\n")
            } else {
                String::new()
            },
        );
        let port = |iface: &str, addr: Ipv4Addr, mac: [u8; 6], node: usize| {
            format!(
                "\n[[router.distributed.port]]\ninterface = \"{iface}\"\naddress = \"{addr}\"\nmac = \"{}\"\nnode = \"{}\"\n",
                mac_text(mac),
                n(node).name
            )
        };
        for (v, node) in self.vms.iter().zip(placement) {
            t += &port(if v.net == 1 { "qr1" } else { "qr2" }, v.addr, v.mac, node);
        }
        t += &port("qr1", Ipv4Addr::new(10, 0, 1, 3), SG_MAC1, NET);
        t += &port("qr2", Ipv4Addr::new(10, 0, 2, 3), SG_MAC2, NET);
        t
    }

    /// The same router centralised on the network node (for the benchmark's comparison):
    /// no `[router.distributed]`, its gateway addresses on the network node's interfaces.
    pub fn centralised_toml(&self, mode: &str) -> String {
        let full = self.router_toml(mode, [C1, C1, C2, C2]);
        full.split("\n[router.distributed]")
            .next()
            .unwrap_or(&full)
            .to_string()
    }

    /// What a centralised router on the network node needs of the overlay, written by hand
    /// (Neutron's l2population for it): the compute nodes send the gateways' MACs to the
    /// network node and answer ARP for the gateways; the network node sends each VM's MAC
    /// to its node and knows it as a neighbour. The compute nodes' router namespaces lose
    /// their addresses, and the VMs forget the distributed gateway's MAC.
    pub fn centralise_l2(&self) {
        let net = &self.nodes[NET];
        for n in &self.nodes[..NET] {
            ip_batch(
                Some(&n.host_ns),
                &format!(
                    "neigh replace 10.0.1.1 lladdr {m1} dev vxlan-{VNI1} nud permanent\n\
                     neigh replace 10.0.2.1 lladdr {m2} dev vxlan-{VNI2} nud permanent\n",
                    m1 = mac_text(SG_MAC1),
                    m2 = mac_text(SG_MAC2),
                ),
            );
            for (mac, vni) in [(SG_MAC1, VNI1), (SG_MAC2, VNI2)] {
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &n.host_ns,
                        "bridge",
                        "fdb",
                        "replace",
                        &mac_text(mac),
                        "dev",
                        &format!("vxlan-{vni}"),
                        "dst",
                        &net.vtep.to_string(),
                        "self",
                        "permanent",
                    ],
                );
            }
            ip_batch(
                Some(&n.router_ns),
                "address flush dev qr1\naddress flush dev qr2\n",
            );
        }
        let hosts = [C1, C1, C2, C2];
        for (v, node) in self.vms.iter().zip(hosts) {
            let vni = if v.net == 1 { VNI1 } else { VNI2 };
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &net.host_ns,
                    "bridge",
                    "fdb",
                    "replace",
                    &mac_text(v.mac),
                    "dev",
                    &format!("vxlan-{vni}"),
                    "dst",
                    &self.nodes[node].vtep.to_string(),
                    "self",
                    "permanent",
                ],
            );
            ip_batch(
                Some(&net.router_ns),
                &format!(
                    "neigh replace {} lladdr {} dev qr{} nud permanent\n",
                    v.addr,
                    mac_text(v.mac),
                    v.net
                ),
            );
            let (gw, mac) = if v.net == 1 {
                ("10.0.1.1", SG_MAC1)
            } else {
                ("10.0.2.1", SG_MAC2)
            };
            ip_batch(
                Some(&v.ns),
                &format!(
                    "neigh replace {gw} lladdr {} dev eth0 nud permanent\n",
                    mac_text(mac)
                ),
            );
        }
    }

    /// Starts etcd and the three routerds, puts the router (VMs as built: vm1, vm2 on c1;
    /// vm3, vm4 on c2) placed on the network node, and waits until every node runs it.
    pub fn start(&mut self, mode: &str) {
        let etcd = Etcd::start();
        for n in &self.nodes {
            let listen = format!("127.0.0.1:{}", free_port());
            let prefix = format!("{}-", n.short);
            self.routerd.push(Node::start_with(
                &etcd.endpoint(),
                &n.name,
                &[
                    "--ha-listen".into(),
                    listen,
                    "--overlay-netns".into(),
                    n.host_ns.clone(),
                ],
                &[("ROUTERD_NETNS_PREFIX", &prefix)],
            ));
        }
        self.etcd = Some(etcd);
        self.put(mode, [C1, C1, C2, C2]);
        self.etcd().place(&self.id, &[&self.nodes[NET].name]);
        for node in &self.routerd {
            node.wait_runs(&self.id, Duration::from_secs(60));
        }
    }

    /// As [`Cloud::start`] without etcd: each node's routerd follows its own copy of one
    /// desired-state file (`routerd --config FILE --node NAME`), which places nothing: a
    /// node that holds no port runs the SNAT part.
    pub fn start_from_files(&mut self, mode: &str) {
        let toml = self.router_toml(mode, [C1, C1, C2, C2]);
        for n in &self.nodes {
            let file = std::env::temp_dir().join(format!("{}.toml", n.name));
            std::fs::write(&file, &toml).expect("the node's desired-state file");
            let prefix = format!("{}-", n.short);
            self.files.push(file.clone());
            self.routerd.push(Node::start_file(
                &file,
                &n.name,
                &["--overlay-netns".into(), n.host_ns.clone()],
                &[("ROUTERD_NETNS_PREFIX", &prefix)],
            ));
        }
        for node in &self.routerd {
            node.wait_runs(&self.id, Duration::from_secs(60));
        }
    }

    pub fn etcd(&self) -> &Etcd {
        self.etcd.as_ref().expect("started")
    }

    /// Puts the router with the VMs on `placement`; returns the revision.
    pub fn put(&self, mode: &str, placement: [usize; 4]) -> i64 {
        self.put_toml(&self.router_toml(mode, placement))
    }

    /// Puts the router as `toml` says; returns the revision.
    pub fn put_toml(&self, toml: &str) -> i64 {
        let state =
            router_user::config::DesiredState::parse(toml).expect("the router's desired state");
        let router = state.routers.into_iter().next().expect("one router");
        self.etcd().put_router(&router)
    }

    /// Waits until every node reports the router running at `revision`.
    pub fn wait_applied(&self, revision: i64) {
        for n in &self.nodes {
            self.etcd()
                .wait_running(&n.name, &self.id, revision, Duration::from_secs(20));
        }
    }

    /// What the kernels of the three router namespaces forwarded, summed.
    pub fn kernel_forwarded(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| crate::traffic::forwarded_by_kernel(&n.router_ns))
            .sum()
    }

    /// Each routerd's log, for failure messages.
    pub fn logs(&self) -> String {
        self.routerd
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn c1(&self) -> &NodeSpec {
        &self.nodes[C1]
    }
    pub fn c2(&self) -> &NodeSpec {
        &self.nodes[C2]
    }
    pub fn net(&self) -> &NodeSpec {
        &self.nodes[NET]
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        // The routerds stop (and etcd after them) before the namespaces go.
        self.routerd.clear();
        self.etcd = None;
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

// ---- the underlay, captured ---------------------------------------------------------------

/// A frame the underlay switch received from a node, VXLAN-decoded.
#[derive(Clone, Debug)]
pub struct Overlay {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub vni: u32,
    pub inner_dst_mac: [u8; 6],
    pub inner_src_mac: [u8; 6],
    pub inner_type: u16,
    /// For inner IPv4: source, destination, TTL.
    pub inner_ip: Option<(Ipv4Addr, Ipv4Addr, u8)>,
    /// For inner ARP: the requested address (a request) or the answered one.
    pub arp_target: Option<Ipv4Addr>,
}

/// A frame and the index of the interface it came in by.
type Frame = (i32, Vec<u8>);

/// Every frame the interfaces of a namespace receive (a switch's ports: what each node
/// sends), until [`Capture::finish`] (bounded by `limit`).
pub struct Capture {
    ns: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Vec<Frame>>>,
}

impl Capture {
    pub fn start(ul_ns: &str, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ul_ns.to_string();
        let here = ns.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread =
            thread::spawn(move || crate::netns::within(&ns, || capture(&flag, limit, &ready_tx)));
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        Self {
            ns: here,
            stop,
            thread: Some(thread),
        }
    }

    /// The VXLAN frames seen, decoded.
    pub fn finish(self) -> Vec<Overlay> {
        self.frames()
            .iter()
            .filter_map(|(_, f)| decode(f))
            .collect()
    }

    /// Every frame seen, with the name of the interface it came in by.
    pub fn frames(mut self) -> Vec<(String, Vec<u8>)> {
        self.stop.store(true, Ordering::Relaxed);
        let frames = self
            .thread
            .take()
            .map(|t| t.join().expect("the capture thread"))
            .unwrap_or_default();
        let indexes: std::collections::BTreeSet<i32> = frames.iter().map(|(i, _)| *i).collect();
        let names: std::collections::BTreeMap<i32, String> = crate::netns::within(&self.ns, || {
            indexes.into_iter().map(|i| (i, if_name(i))).collect()
        });
        frames
            .into_iter()
            .map(|(i, f)| (names.get(&i).cloned().unwrap_or_default(), f))
            .collect()
    }
}

/// The name of interface `index` in the calling thread's namespace ("" if none).
fn if_name(index: i32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE long, as the call needs.
    let p = unsafe { libc::if_indextoname(index as u32, buf.as_mut_ptr()) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: filled with a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn capture(stop: &AtomicBool, limit: Duration, ready: &std::sync::mpsc::Sender<()>) -> Vec<Frame> {
    const ETH_P_ALL: u16 = 0x0003;
    let mut frames = Vec::new();
    // SAFETY: plain socket calls on a descriptor owned below; buffers outlive the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        );
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let socket = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let _ = ready.send(());
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && frames.len() < 200_000 {
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            let n = libc::recvfrom(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut len,
            );
            // What a port receives from its node, once (not again as the switch sends it
            // out of the destination's port).
            if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                frames.push((from.sll_ifindex, buf[..n as usize].to_vec()));
            }
        }
    }
    frames
}

fn decode(f: &[u8]) -> Option<Overlay> {
    let ip4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    if f.len() < 14 + 20 + 8 + 8 + 14 || f[12..14] != [0x08, 0x00] || f[23] != 17 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    if u16::from_be_bytes([f[udp + 2], f[udp + 3]]) != 4789 {
        return None;
    }
    let vx = udp + 8;
    let inner = vx + 8;
    let g = f.get(inner..)?;
    if g.len() < 14 {
        return None;
    }
    let inner_type = u16::from_be_bytes([g[12], g[13]]);
    let inner_ip =
        (inner_type == 0x0800 && g.len() >= 34).then(|| (ip4(&g[26..30]), ip4(&g[30..34]), g[22]));
    let arp_target = (inner_type == 0x0806 && g.len() >= 42).then(|| ip4(&g[38..42]));
    Some(Overlay {
        outer_src: ip4(&f[26..30]),
        outer_dst: ip4(&f[30..34]),
        vni: u32::from_be_bytes([0, f[vx + 4], f[vx + 5], f[vx + 6]]),
        inner_dst_mac: g[0..6].try_into().ok()?,
        inner_src_mac: g[6..12].try_into().ok()?,
        inner_type,
        inner_ip,
        arp_target,
    })
}
