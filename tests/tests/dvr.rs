//! Distributed routers (`docs/dvr.md`) on three nodes (`router_tests::dvr`): east-west
//! routed once on the sender's node and carried in the destination network's VXLAN from
//! that node's DVR MAC; same-node traffic never on the underlay; a VM's floating IP on its
//! own node's external link only; other external traffic through the network node's SNAT
//! part; no ARP on the underlay; a VM that moves is followed, its floating IP announced by
//! its new node and forgotten by its old one; the kernel forwards nothing on any node. XDP
//! and TC modes.

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use router_tests::{
    dvr::{BEHIND_SUBNET2, Capture, Cloud, FIP, FIP2, Overlay, SG_MAC2, VNI1, VNI2, qg_mac},
    probe,
};
use router_user::config::dvr_mac;

const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn echo_all(ns: &str, dst: Ipv4Addr, id: u16, count: u16, cloud: &Cloud) {
    let r = probe::echo(ns, dst, id, count, Duration::from_secs(1));
    assert_eq!(
        r.replies.len(),
        usize::from(count),
        "{ns} -> {dst}: {} of {count} echo replies (errors {:?})\n{}",
        r.replies.len(),
        r.errors,
        cloud.logs()
    );
}

/// The frames of the flow `src -> dst`.
fn flow(frames: &[Overlay], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<&Overlay> {
    frames
        .iter()
        .filter(|f| f.inner_ip.is_some_and(|(s, d, _)| s == src && d == dst))
        .collect()
}

/// The IPv4 source and destination of an Ethernet frame.
fn ipv4(f: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    (f.len() >= 34 && f[12..14] == [0x08, 0x00]).then(|| {
        (
            Ipv4Addr::new(f[26], f[27], f[28], f[29]),
            Ipv4Addr::new(f[30], f[31], f[32], f[33]),
        )
    })
}

/// The ports of the external switch that frames from `src` came in by.
fn ports_from(frames: &[(String, Vec<u8>)], src: Ipv4Addr) -> Vec<&str> {
    let mut ports: Vec<&str> = frames
        .iter()
        .filter(|(port, f)| port.starts_with("g-") && ipv4(f).is_some_and(|(s, _)| s == src))
        .map(|(port, _)| port.as_str())
        .collect();
    ports.dedup();
    ports
}

/// The overlay forwarding entries of `device` in `ns`: (MAC, remote address).
fn fdb(ns: &str, device: &str) -> Vec<(String, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "bridge", "fdb", "show", "dev", device])
        .output()
        .expect("bridge fdb");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let mac = words.next()?.to_string();
            let dst = l
                .split(" dst ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_string();
            Some((mac, dst))
        })
        .collect()
}

fn routes_where_the_vm_is(mode: &str) {
    let mut cloud = Cloud::build_with(true);
    cloud.start(mode);
    let [vm1, vm2, vm3, vm4] = [0, 1, 2, 3].map(|i| (cloud.vms[i].ns.clone(), cloud.vms[i].addr));
    // Each node says which part it runs.
    let shown = |node: usize| {
        let out = cloud.routerd[node].routerctl(&["router", "show", &cloud.id]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let c1_mac = router_tests::dvr::mac_text(dvr_mac(cloud.c1().vtep));
    let c1_says = shown(0);
    assert!(
        c1_says.contains(&format!(
            "distributed: compute part on {} (DVR MAC {c1_mac})",
            cloud.c1().name
        )),
        "{c1_says}"
    );
    let net_says = shown(2);
    assert!(
        net_says.contains(&format!("distributed: snat part on {};", cloud.net().name)),
        "{net_says}"
    );
    // The first packets settle nothing here: every port is known from the desired state.
    let forwarded_before = cloud.kernel_forwarded();
    let capture = Capture::start(&cloud.ul, Duration::from_secs(60));
    let external = Capture::start(&cloud.ext, Duration::from_secs(60));
    echo_all(&vm1.0, vm3.1, 1, 20, &cloud);
    echo_all(&vm1.0, vm2.1, 2, 20, &cloud);
    echo_all(&vm2.0, EXT, 3, 10, &cloud);
    echo_all(&cloud.ext, FIP, 4, 10, &cloud);
    echo_all(&vm4.0, EXT, 5, 10, &cloud);
    // vm1's floating IP is on the second external subnet: it leaves by that subnet's
    // gateway, the only way to what is behind it.
    echo_all(&vm1.0, BEHIND_SUBNET2, 6, 10, &cloud);
    let frames = capture.finish();
    let outside = external.frames();

    let (c1, c2, net) = (cloud.c1().vtep, cloud.c2().vtep, cloud.net().vtep);
    // Cross-node east-west: routed once on the sender's node, straight to the receiver's,
    // in the destination network's VNI, from the sender node's DVR MAC.
    let there = flow(&frames, vm1.1, vm3.1);
    assert!(there.len() >= 20, "vm1 -> vm3 on the underlay: {there:?}");
    for f in &there {
        assert_eq!((f.outer_src, f.outer_dst), (c1, c2), "{f:?}");
        assert_eq!(f.vni, VNI2, "{f:?}");
        assert_eq!(f.inner_src_mac, dvr_mac(c1), "{f:?}");
        assert_eq!(f.inner_dst_mac, cloud.vms[2].mac, "{f:?}");
        assert_eq!(
            f.inner_ip.map(|i| i.2),
            Some(63),
            "TTL decremented once: {f:?}"
        );
    }
    let back = flow(&frames, vm3.1, vm1.1);
    assert!(back.len() >= 20, "vm3 -> vm1 on the underlay: {back:?}");
    for f in &back {
        assert_eq!((f.outer_src, f.outer_dst, f.vni), (c2, c1, VNI1), "{f:?}");
        assert_eq!(f.inner_src_mac, dvr_mac(c2), "{f:?}");
        assert_eq!(f.inner_ip.map(|i| i.2), Some(63), "{f:?}");
    }
    // Same node: nothing on the underlay.
    let local: Vec<_> = flow(&frames, vm1.1, vm2.1)
        .into_iter()
        .chain(flow(&frames, vm2.1, vm1.1))
        .collect();
    assert!(
        local.is_empty(),
        "same-node traffic on the underlay: {local:?}"
    );
    // External without a floating IP (vm2): to the network node's SNAT port on its
    // network, and back from it.
    let out = flow(&frames, vm2.1, EXT);
    assert!(out.len() >= 10, "vm2 -> ext: {out:?}");
    for f in &out {
        assert_eq!((f.outer_src, f.outer_dst, f.vni), (c1, net, VNI2), "{f:?}");
        assert_eq!(
            (f.inner_src_mac, f.inner_dst_mac),
            (dvr_mac(c1), SG_MAC2),
            "{f:?}"
        );
    }
    let back = flow(&frames, EXT, vm2.1);
    assert!(back.len() >= 10, "ext -> vm2 after SNAT: {back:?}");
    for f in &back {
        assert_eq!((f.outer_src, f.outer_dst, f.vni), (net, c1, VNI2), "{f:?}");
        assert_eq!(f.inner_src_mac, SG_MAC2, "{f:?}");
        assert_eq!(f.inner_ip.map(|i| i.2), Some(63), "{f:?}");
    }
    // vm4's floating IP is c2's alone: its traffic, both ways, on c2's external link and
    // never on the underlay; vm2's SNAT leaves by the network node's.
    let crossing: Vec<_> = frames
        .iter()
        .filter(|f| {
            f.inner_ip
                .is_some_and(|(s, d, _)| [s, d].contains(&vm4.1) && [s, d].contains(&EXT))
        })
        .collect();
    assert!(
        crossing.is_empty(),
        "floating-IP traffic on the underlay: {crossing:?}"
    );
    assert_eq!(
        ports_from(&outside, FIP),
        ["g-c2"],
        "vm4's floating IP leaves by c2 only"
    );
    assert_eq!(
        ports_from(&outside, Ipv4Addr::new(198, 18, 0, 2)),
        ["g-net"],
        "SNAT leaves by the network node only"
    );
    assert_eq!(
        ports_from(&outside, FIP2),
        ["g-c1"],
        "vm1's floating IP leaves by c1"
    );
    let x2 = cloud.x2.as_deref().expect("a second external subnet");
    let x2_mac = router_tests::topo::try_mac_of(Some(x2), "eth0").expect("its MAC");
    let to_x2 = outside
        .iter()
        .filter(|(port, f)| port == "g-c1" && ipv4(f).is_some_and(|(s, _)| s == FIP2))
        .all(|(_, f)| f[0..6] == x2_mac);
    assert!(
        to_x2,
        "vm1's floating-IP traffic goes to its subnet's gateway"
    );
    // No ARP crosses the overlay: every port is known.
    let arp: Vec<_> = frames.iter().filter(|f| f.inner_type == 0x0806).collect();
    assert!(arp.is_empty(), "ARP on the underlay: {arp:?}");

    // vm4 moves from c2 to c1 while vm3 (c2) and the external host ping it every 100 ms,
    // the latter by its floating IP.
    let pinger = |ns: String, dst: Ipv4Addr, first: u16| {
        std::thread::spawn(move || {
            let mut answered = 0;
            let start = Instant::now();
            for seq in 0..60u16 {
                let r = probe::echo(&ns, dst, first + seq, 1, Duration::from_millis(100));
                answered += r.replies.len();
                let next = start + Duration::from_millis(100) * u32::from(seq + 1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            answered
        })
    };
    let external = Capture::start(&cloud.ext, Duration::from_secs(60));
    let east_west = pinger(vm3.0.clone(), vm4.1, 100);
    let by_fip = pinger(cloud.ext.clone(), FIP, 200);
    std::thread::sleep(Duration::from_secs(1));
    cloud.unplug(3, 1);
    cloud.plug(3, 0);
    let revision = cloud.put(mode, [0, 0, 1, 0]);
    cloud.wait_applied(revision);
    let answered = east_west.join().expect("the pinger");
    assert!(
        answered >= 50,
        "vm3 -> vm4 across its move: {answered} of 60 answered\n{}",
        cloud.logs()
    );
    let answered = by_fip.join().expect("the pinger");
    assert!(
        answered >= 50,
        "ext -> vm4's floating IP across its move: {answered} of 60 answered\n{}",
        cloud.logs()
    );
    // c1 announced the floating IP (a gratuitous ARP from its external interface).
    let announced = external.frames().iter().any(|(port, f)| {
        port == "g-c1"
            && f.len() >= 42
            && f[12..14] == [0x08, 0x06]
            && f[6..12] == qg_mac("c1")
            && f[28..32] == FIP.octets()
            && f[38..42] == FIP.octets()
    });
    assert!(announced, "no gratuitous ARP for {FIP} from c1");
    // Only c1 answers for it now.
    let replies = probe::arp_replies(&cloud.ext, "br-ex", EXT, FIP, 5, Duration::from_millis(300));
    assert_eq!(replies, 5, "answers to 5 ARP requests for {FIP}");
    let vm4_mac = router_tests::dvr::mac_text(cloud.vms[3].mac);
    let on = |node: &router_tests::dvr::NodeSpec| {
        fdb(&node.host_ns, &format!("vxlan-{VNI1}"))
            .into_iter()
            .filter(|(mac, _)| *mac == vm4_mac)
            .map(|(_, dst)| dst)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        on(cloud.c1()),
        Vec::<String>::new(),
        "c1 holds vm4 now: no overlay entry\n{}",
        cloud.logs()
    );
    assert_eq!(
        on(cloud.c2()),
        [c1.to_string()],
        "c2 sends vm4's frames to c1"
    );
    assert_eq!(on(cloud.net()), [c1.to_string()], "the network node too");
    echo_all(&cloud.ext, FIP, 5, 10, &cloud);
    echo_all(&vm1.0, vm4.1, 6, 10, &cloud);

    let forwarded = cloud.kernel_forwarded() - forwarded_before;
    assert_eq!(
        forwarded,
        0,
        "the kernels forwarded {forwarded} packets\n{}",
        cloud.logs()
    );
}

#[test]
fn routes_where_the_vm_is_xdp() {
    routes_where_the_vm_is("xdp");
}

#[test]
fn routes_where_the_vm_is_tc() {
    routes_where_the_vm_is("tc");
}

/// The same router from a desired-state file on each node (`routerd --config --node`):
/// each node runs its part as with etcd.
#[test]
fn a_file_drives_a_distributed_router_too() {
    let mut cloud = Cloud::build();
    cloud.start_from_files("tc");
    let out = cloud.routerd[0].routerctl(&["router", "show", &cloud.id]);
    let c1_says = String::from_utf8_lossy(&out.stdout);
    assert!(
        c1_says.contains(&format!("distributed: compute part on {}", cloud.c1().name)),
        "{c1_says}"
    );
    let [vm1, vm2, vm3] = [0, 1, 2].map(|i| (cloud.vms[i].ns.clone(), cloud.vms[i].addr));
    let forwarded_before = cloud.kernel_forwarded();
    let capture = Capture::start(&cloud.ul, Duration::from_secs(30));
    echo_all(&vm1.0, vm3.1, 1, 10, &cloud);
    echo_all(&vm2.0, EXT, 2, 10, &cloud);
    echo_all(&cloud.ext, FIP, 3, 10, &cloud);
    let frames = capture.finish();
    let (c1, c2) = (cloud.c1().vtep, cloud.c2().vtep);
    let there = flow(&frames, vm1.1, vm3.1);
    assert!(there.len() >= 10, "vm1 -> vm3 on the underlay: {there:?}");
    for f in &there {
        assert_eq!((f.outer_src, f.outer_dst, f.vni), (c1, c2, VNI2), "{f:?}");
        assert_eq!(f.inner_src_mac, dvr_mac(c1), "{f:?}");
    }
    let forwarded = cloud.kernel_forwarded() - forwarded_before;
    assert_eq!(
        forwarded,
        0,
        "the kernels forwarded {forwarded} packets\n{}",
        cloud.logs()
    );
}
