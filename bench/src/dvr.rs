//! Distributed routers (`--only dvr`, `docs/dvr.md`): on the three nodes of
//! `router_tests::dvr`, a VM on compute node 1 (network 1) sending to a VM on compute node
//! 2 (network 2),
//!
//! - **distributed**: routed on compute node 1 and carried once over the overlay;
//! - **centralised**: the same router placed on the network node alone, as Neutron's legacy
//!   router: over the overlay to the network node, routed there, over the overlay again;
//!
//! each measured in the same run with the same generator and sink: UDP packets/s (64 B, 64
//! flows, the generator (live frames, or an `AF_PACKET` socket where the kernel refuses
//! them) in the sender's namespace, the XDP sink in the
//! receiver's) and the round-trip time of a UDP echo (median and p99 of one at a time).
//! And the kernel objects each node holds for the distributed router, counted on the
//! running nodes, beside what Neutron's DVR would make for the same topology.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use router_common::bench::GenConfig;
use router_tests::{
    dvr::{Cloud, GW_MAC1, SG_MAC1},
    netns::within,
    traffic::{in_ns, join},
};
use serde::{Deserialize, Serialize};

use bench::traffic::{Generator, Sink};

const SINK_PORT: u16 = 9_999;
const ECHO_PORT: u16 = 7_007;

/// One path's figures.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct DvrResult {
    pub mode: String,
    /// "distributed" or "centralised".
    pub path: String,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    pub rtt_median_us: f64,
    pub rtt_p99_us: f64,
}

/// The kernel objects of one node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    pub namespaces: usize,
    pub interfaces: usize,
    pub addresses: usize,
    /// Of `addresses`, on the external network.
    pub external_addresses: usize,
    pub rules: usize,
    pub neighbours: usize,
}

/// One node's objects: ours, counted, and Neutron DVR's, from its design.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct NodeObjects {
    pub node: String,
    pub ours: Objects,
    pub neutron: Objects,
}

pub fn run(
    quick: bool,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<(Vec<DvrResult>, Vec<NodeObjects>)> {
    let modes: &[&str] = if quick { &["xdp"] } else { &["xdp", "tc"] };
    let duration = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(2)
    };
    let echoes = if quick { 200 } else { 1000 };
    let mut results = Vec::new();
    let mut objects = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        say(&format!("dvr: {mode}: three nodes, a distributed router"));
        let mut cloud = Cloud::build();
        cloud.start(mode);
        if i == 0 {
            objects = count_objects(&cloud);
        }
        results.push(measure(
            &cloud,
            mode,
            "distributed",
            GW_MAC1,
            duration,
            echoes,
        )?);
        say(&format!(
            "dvr: {mode}: the same router centralised on the network node"
        ));
        let revision = cloud.put_toml(&cloud.centralised_toml(mode));
        let net = cloud.net().name.clone();
        cloud
            .etcd()
            .wait_running(&net, &cloud.id, revision, Duration::from_secs(60));
        for node in &cloud.routerd[..2] {
            let deadline = Instant::now() + Duration::from_secs(20);
            while node.runs(&cloud.id) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cloud.centralise_l2();
        results.push(measure(
            &cloud,
            mode,
            "centralised",
            SG_MAC1,
            duration,
            echoes,
        )?);
    }
    Ok((results, objects))
}

/// vm1 (c1, network 1) to vm3 (c2, network 2): packets/s through the first hop `gw_mac`,
/// then UDP echoes one at a time.
fn measure(
    cloud: &Cloud,
    mode: &str,
    path: &str,
    gw_mac: [u8; 6],
    duration: Duration,
    echoes: usize,
) -> anyhow::Result<DvrResult> {
    let (from, to) = (&cloud.vms[0], &cloud.vms[2]);
    // XDP frames sent from the VM's interface arrive where its far end takes them.
    crate::rate::gro_on(&cloud.c1().host_ns, "tap0");
    let cfg = GenConfig {
        dst_mac: gw_mac,
        src_mac: from.mac,
        src_ip: from.addr.octets(),
        dst_ip: to.addr.octets(),
        src_port: 10_000,
        dst_port: SINK_PORT,
        flows: 64,
        frame_len: 64,
    };
    let mut sink = within(&to.ns, || Sink::attach("eth0", SINK_PORT))?;
    let mut generator = within(&from.ns, || Generator::new("eth0", cfg))?;
    within(&from.ns, || {
        generator.run_for(Duration::from_millis(100), None)
    })?;
    std::thread::sleep(Duration::from_millis(50));
    let before = sink.packets()?;
    let (sent, secs) = within(&from.ns, || generator.run_for(duration, None))?;
    std::thread::sleep(Duration::from_millis(50));
    let delivered = sink.packets()? - before;
    drop(sink);
    let (median, p99) = round_trips(&from.ns, &to.ns, to.addr, echoes)?;
    Ok(DvrResult {
        mode: mode.to_string(),
        path: path.to_string(),
        offered_pps: sent as f64 / secs,
        delivered_pps: delivered as f64 / secs,
        rtt_median_us: median,
        rtt_p99_us: p99,
    })
}

/// `count` UDP echoes from `client_ns` to `server` (in `server_ns`), one at a time: the
/// median and p99 round trip in microseconds. A lost echo counts as 200 ms.
fn round_trips(
    client_ns: &str,
    server_ns: &str,
    server: Ipv4Addr,
    count: usize,
) -> anyhow::Result<(f64, f64)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let echo = in_ns(server_ns, move || -> std::io::Result<()> {
        let socket = UdpSocket::bind(("0.0.0.0", ECHO_PORT))?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 64];
        // Ends when the client has been quiet for 2 s (its last echo answered).
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            socket.send_to(&buf[..n], peer)?;
        }
        Ok(())
    });
    ready_rx.recv_timeout(Duration::from_secs(5))?;
    let client = in_ns(client_ns, move || -> std::io::Result<Vec<f64>> {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        socket.connect(SocketAddrV4::new(server, ECHO_PORT))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut rtts = Vec::with_capacity(count);
        let mut buf = [0u8; 64];
        for i in 0..count as u64 {
            let t = Instant::now();
            socket.send(&i.to_be_bytes())?;
            let answered = loop {
                match socket.recv(&mut buf) {
                    Ok(8) if buf[..8] == i.to_be_bytes() => break true,
                    Ok(_) => continue,
                    Err(_) => break false,
                }
            };
            rtts.push(if answered {
                t.elapsed().as_secs_f64() * 1e6
            } else {
                200_000.0
            });
        }
        Ok(rtts)
    });
    let mut rtts = join(client)?;
    join(echo)?;
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    anyhow::ensure!(!rtts.is_empty(), "no echo measured");
    Ok((at(0.5), at(0.99)))
}

/// The lines `args` prints in namespace `ns`.
fn lines(ns: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines().map(str::to_string).collect()
}

/// Each node's objects for the distributed router: ours counted in its router namespace,
/// Neutron DVR's from its design for the same node (see `docs/dvr.md`).
fn count_objects(cloud: &Cloud) -> Vec<NodeObjects> {
    // The router's networks and their ports (4 VMs, 2 SNAT ports).
    let (subnets, ports) = (2, 6);
    let ours = |ns: &str| {
        let addresses = lines(ns, &["ip", "-4", "-o", "addr", "show"]);
        Objects {
            namespaces: 1,
            interfaces: lines(ns, &["ip", "-o", "link", "show"])
                .iter()
                .filter(|l| !l.contains(" lo:"))
                .count(),
            addresses: addresses.iter().filter(|l| !l.contains(" lo ")).count(),
            external_addresses: addresses.iter().filter(|l| l.contains(" qg0 ")).count(),
            rules: lines(ns, &["ip", "rule", "show"])
                .iter()
                .filter(|l| !["0:", "32766:", "32767:"].iter().any(|p| l.starts_with(p)))
                .count(),
            neighbours: lines(ns, &["ip", "neigh", "show", "nud", "permanent"]).len(),
        }
    };
    // Neutron DVR: a compute node runs a qrouter namespace (a qr- port and gateway address
    // per subnet, an ARP entry per port of the subnets, a rule per subnet sending SNAT
    // traffic to the sg- port) and, with a floating IP, a fip namespace: the fg- port with
    // an external address of its own, the rfp-/fpr- veth pair and its link-local addresses,
    // a rule per floating IP. A network node runs the snat namespace (sg- per subnet, qg-)
    // and a qrouter namespace (qr- per subnet).
    let compute = |fips: usize| {
        let fip = usize::from(fips > 0);
        Objects {
            namespaces: 1 + fip,
            interfaces: subnets + 3 * fip,
            addresses: subnets + 3 * fip,
            external_addresses: fip,
            rules: subnets + fips,
            neighbours: ports,
        }
    };
    let network = Objects {
        namespaces: 2,
        interfaces: 2 * subnets + 1,
        addresses: 2 * subnets + 1,
        external_addresses: 1,
        rules: 0,
        neighbours: ports,
    };
    vec![
        NodeObjects {
            node: "compute 1 (vm1, vm2; no floating IP)".into(),
            ours: ours(&cloud.c1().router_ns),
            neutron: compute(0),
        },
        NodeObjects {
            node: "compute 2 (vm3, vm4; vm4's floating IP)".into(),
            ours: ours(&cloud.c2().router_ns),
            neutron: compute(1),
        },
        NodeObjects {
            node: "network (SNAT)".into(),
            ours: ours(&cloud.net().router_ns),
            neutron: network,
        },
    ]
}

pub fn section(s: &mut String, results: &[DvrResult], objects: &[NodeObjects]) {
    use std::fmt::Write as _;
    if results.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## Distributed routers: east-west across compute nodes (`docs/dvr.md`)\n\n\
         Three nodes on one machine (a network node, two compute nodes, VXLAN over an \
         underlay switch). A VM on compute node 1 (network 1) to a VM on compute node 2 \
         (network 2): distributed = routed on compute node 1, over the overlay once; \
         centralised = the same router on the network node alone, over the overlay there and \
         back. Packets/s: 64 B UDP in 64 flows, the generator (live frames, or an `AF_PACKET` socket where the kernel refuses them) in the sender's \
         namespace, the XDP sink in the receiver's, as fast as the generator sends. Round \
         trip: UDP echoes one at a time (median, p99).\n\n\
         | mode | path | offered Mpps | delivered Mpps | RTT median us | RTT p99 us |\n\
         |---|---|---|---|---|---|"
    );
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} | {:.0} | {:.0} |",
            r.mode,
            r.path,
            r.offered_pps / 1e6,
            r.delivered_pps / 1e6,
            r.rtt_median_us,
            r.rtt_p99_us
        );
    }
    for mode in ["xdp", "tc"] {
        let of = |path: &str| results.iter().find(|r| r.mode == mode && r.path == path);
        if let (Some(d), Some(c)) = (of("distributed"), of("centralised")) {
            let _ = writeln!(
                s,
                "\n{mode}: distributed / centralised = {:.2}x the packets/s, {:.2}x the median round trip.",
                d.delivered_pps / c.delivered_pps.max(1.0),
                d.rtt_median_us / c.rtt_median_us.max(1.0)
            );
        }
    }
    if objects.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nKernel objects per node for the router (ours counted in each node's router \
         namespace; Neutron DVR's from its design for the same topology: 2 subnets, 6 ports, \
         one floating IP on compute node 2). Overlay forwarding entries are left out of both \
         (ours on the nodes' `vxlan-<vni>` devices, Neutron's as flows in `br-tun`).\n\n\
         | node | namespaces | interfaces | addresses (external) | ip rules | permanent neighbours |\n\
         |---|---|---|---|---|---|"
    );
    for n in objects {
        for (who, o) in [("ours", n.ours), ("Neutron DVR", n.neutron)] {
            let _ = writeln!(
                s,
                "| {}, {who} | {} | {} | {} ({}) | {} | {} |",
                n.node,
                o.namespaces,
                o.interfaces,
                o.addresses,
                o.external_addresses,
                o.rules,
                o.neighbours
            );
        }
    }
}
