//! Interfaces as a real node has them: jumbo frames (MTU 9000, as Neutron's
//! `global_physnet_mtu` often is) forwarded by the fast path in both modes, frag-needed for
//! what does not fit the egress, and an interface without native XDP (a macvlan device)
//! that runs the TC entry instead of keeping its router from starting.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::Command,
    sync::mpsc,
    time::Duration,
};

use router_tests::{
    desired::RouterText,
    topo::ip,
    topology::{Builder, Host, Topology},
    traffic::{self, in_ns, join},
};
use router_user::router::RouterInfo;

const FIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const EXT: [u8; 4] = [198, 18, 0, 1];
const VM_A: [u8; 4] = [10, 0, 1, 5];
const VM_B: [u8; 4] = [10, 0, 2, 5];
/// An IP datagram of 8,900 bytes: 8,872 bytes of UDP payload.
const JUMBO_PAYLOAD: usize = 8_900 - 28;

fn topology() -> Topology {
    Builder::new("jb")
        .external(
            "qg-ext",
            "198.18.0.2/24",
            "198.18.0.1",
            [Host::new("ext", "198.18.0.1/24")],
        )
        .internal(
            "qr-a",
            "10.0.1.1/24",
            [Host::new("vma", "10.0.1.5/24").via("10.0.1.1")],
        )
        .internal(
            "qr-b",
            "10.0.2.1/24",
            [Host::new("vmb", "10.0.2.5/24").via("10.0.2.1")],
        )
        .route("ext", "10.0.0.0/8 via 198.18.0.2")
        .build()
}

fn set_mtu(ns: &str, dev: &str, mtu: u32) {
    ip(&["-n", ns, "link", "set", dev, "mtu", &mtu.to_string()]);
}

fn info(router: &str) -> RouterInfo {
    let path = router_user::paths::router_info_file(router);
    let text = std::fs::read_to_string(&path).expect("the router's info file");
    serde_json::from_str(&text).expect("router info")
}

/// A payload whose bytes say where they are, so a reordered or truncated copy shows.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Sends one datagram of `data` from `from_ns` to `to`:`port` in `to_ns`; returns the
/// source address it arrived from and what arrived, or `None` within 3 s.
fn udp_exchange(
    from_ns: &str,
    to_ns: &str,
    to: Ipv4Addr,
    port: u16,
    data: Vec<u8>,
) -> Option<(Ipv4Addr, Vec<u8>)> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_ns(to_ns, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = vec![0u8; 65_536];
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        let std::net::SocketAddr::V4(from) = from else {
            return None;
        };
        buf.truncate(n);
        Some((*from.ip(), buf))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    join(in_ns(from_ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.send_to(&data, SocketAddrV4::new(to, port))
            .expect("send");
    }));
    join(server)
}

/// `ping -M do` (DF set) of `size` bytes of payload; returns what ping printed.
fn ping_df(ns: &str, dst: [u8; 4], size: u32) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "2", "-M", "do",
        ])
        .arg("-s")
        .arg(size.to_string())
        .arg(Ipv4Addr::from(dst).to_string())
        .output()
        .expect("ping runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn jumbo_frames(mode: &str) {
    let mut topo = topology();
    let rns = topo.router_ns.clone();
    for (ns, dev) in [
        (rns.as_str(), "qg-ext"),
        (rns.as_str(), "qr-a"),
        (rns.as_str(), "qr-b"),
        (topo.ns("ext"), "eth0"),
        (topo.ns("vma"), "eth0"),
        (topo.ns("vmb"), "eth0"),
    ] {
        set_mtu(ns, dev, 9000);
    }
    let mut text = topo.router_text(mode);
    text.floating_ips.push((FIP, Ipv4Addr::from(VM_A)));
    topo.write_config(&text.render());
    topo.start_routerd();
    let tag = topo.tag.clone();
    // Native XDP took every interface of MTU 9000.
    for i in info(&tag).interfaces {
        assert_eq!(i.xdp_unavailable, None, "{mode}: {}", i.name);
    }
    let (ext, vma, vmb) = (
        topo.ns("ext").to_string(),
        topo.ns("vma").to_string(),
        topo.ns("vmb").to_string(),
    );
    // Neighbours resolved first: the first packet of a flow may wait on ARP.
    assert!(traffic::ping(&ext, FIP.octets(), 1), "{mode}: ext -> FIP");
    assert!(traffic::ping(&vmb, EXT, 1), "{mode}: vmb -> ext");
    assert!(traffic::ping(&vma, VM_B, 1), "{mode}: vma -> vmb");
    let kernel = traffic::forwarded_by_kernel(&rns);

    // To the floating IP: arrives at the VM whole, from the outside host.
    let data = payload(JUMBO_PAYLOAD, 1);
    let got = udp_exchange(&ext, &vma, FIP, 7001, data.clone());
    assert_eq!(got, Some((Ipv4Addr::from(EXT), data)), "{mode}: to the FIP");
    // From the VM with the floating IP: leaves as the floating IP.
    let data = payload(JUMBO_PAYLOAD, 2);
    let got = udp_exchange(&vma, &ext, Ipv4Addr::from(EXT), 7002, data.clone());
    assert_eq!(got, Some((FIP, data)), "{mode}: from the FIP's VM");
    // Through SNAT: leaves as the gateway.
    let data = payload(JUMBO_PAYLOAD, 3);
    let got = udp_exchange(&vmb, &ext, Ipv4Addr::from(EXT), 7003, data.clone());
    assert_eq!(got, Some((GATEWAY, data)), "{mode}: SNAT");
    // East-west.
    let data = payload(JUMBO_PAYLOAD, 4);
    let got = udp_exchange(&vma, &vmb, Ipv4Addr::from(VM_B), 7004, data.clone());
    assert_eq!(got, Some((Ipv4Addr::from(VM_A), data)), "{mode}: east-west");
    assert_eq!(
        traffic::forwarded_by_kernel(&rns),
        kernel,
        "{mode}: the kernel forwarded jumbo frames"
    );

    // What does not fit the egress gets frag-needed with the egress's MTU.
    set_mtu(&rns, "qr-b", 1500);
    set_mtu(&vmb, "eth0", 1500);
    traffic::wait_for(
        "the fast path to learn qr-b's MTU",
        Duration::from_secs(5),
        || ping_df(&vma, VM_B, 4000).contains("mtu = 1500"),
    );
    let out = ping_df(&vma, VM_B, 1400);
    assert!(
        out.contains(" 0% packet loss"),
        "{mode}: 1,428 bytes fit:\n{out}"
    );
}

#[test]
fn jumbo_frames_xdp() {
    jumbo_frames("xdp");
}

#[test]
fn jumbo_frames_tc() {
    jumbo_frames("tc");
}

/// A macvlan device has no native XDP: in XDP mode the router starts anyway, that interface
/// runs the TC entry (logged, in `router show`, counted), and traffic through it is
/// forwarded by the fast path.
#[test]
fn an_interface_without_native_xdp_runs_the_tc_entry() {
    let mut topo = topology();
    let (rns, vmb) = (topo.router_ns.clone(), topo.ns("vmb").to_string());
    // The router's port to vmb is a macvlan on its end of the link.
    ip(&["-n", &rns, "link", "set", "qr-b", "up"]);
    ip(&[
        "-n", &rns, "link", "add", "link", "qr-b", "name", "qr-v", "type", "macvlan", "mode",
        "bridge",
    ]);
    let mut text: RouterText = topo.router_text("xdp");
    text.interfaces.retain(|(name, ..)| name.as_str() != "qr-b");
    text.interfaces
        .push(("qr-v".into(), "10.0.2.1/24".into(), None));
    topo.write_config(&text.render());
    topo.start_routerd();
    let tag = topo.tag.clone();

    let interfaces = info(&tag).interfaces;
    let of = |name: &str| {
        interfaces
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("{name} in {interfaces:?}"))
    };
    let reason = of("qr-v").xdp_unavailable.clone().expect("qr-v falls back");
    assert!(!of("qr-v").xdp_egress, "XDP must not redirect into qr-v");
    assert_eq!(of("qr-a").xdp_unavailable, None);
    assert!(
        topo.routerd()
            .log_text()
            .contains("native XDP unavailable on qr-v"),
        "not logged:\n{}",
        topo.routerd().log_text()
    );
    let socket = std::env::temp_dir().join(format!("routerd-{tag}.sock"));
    let show = Command::new(router_tests::routerd::routerd_path().with_file_name("routerctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["router", "show", &tag])
        .output()
        .expect("routerctl runs");
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("tc*"), "{show}");
    assert!(
        show.contains(&format!("qr-v: runs the TC entry alone ({reason})")),
        "{show}"
    );

    let vma = topo.ns("vma").to_string();
    assert!(traffic::ping(&vma, VM_B, 1), "vma -> vmb over the macvlan");
    let kernel = traffic::forwarded_by_kernel(&rns);
    assert!(traffic::ping(&vma, VM_B, 3), "vma -> vmb");
    assert!(traffic::ping(&vmb, VM_A, 3), "vmb -> vma");
    assert_eq!(
        traffic::forwarded_by_kernel(&rns),
        kernel,
        "the kernel forwarded what the fast path should have"
    );
}

/// Whether `dev` in `ns` takes TCP segmentation offload (`ethtool -k`): the stack hands it
/// super-packets rather than segmenting them first.
fn segments_offloaded(ns: &str, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-k", dev])
        .output()
        .expect("ethtool runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "tcp-segmentation-offload: on")
}

/// The default mode (`auto`, the file says no mode): veths run the TC entry alone, so
/// their peers keep segmentation offload (XDP on a veth turns it off on the peer: checked
/// in XDP mode here too), while a tap takes native XDP. Traffic through the veths is the
/// fast path's.
#[test]
fn the_default_mode_runs_the_tc_entry_on_veths_and_xdp_elsewhere() {
    let mut topo = topology();
    let (rns, vma) = (topo.router_ns.clone(), topo.ns("vma").to_string());
    ip(&["-n", &rns, "tuntap", "add", "dev", "qr-t", "mode", "tap"]);
    let mut text: RouterText = topo.router_text("auto");
    text.interfaces
        .push(("qr-t".into(), "10.0.3.1/24".into(), None));
    text.floating_ips.push((FIP, Ipv4Addr::from(VM_A)));
    let rendered = text.render();
    let without_mode = rendered.replace("mode = \"auto\"\n", "");
    assert_ne!(without_mode, rendered, "the mode line is left out");
    topo.write_config(&without_mode);
    topo.start_routerd();
    let tag = topo.tag.clone();

    let interfaces = info(&tag).interfaces;
    for i in &interfaces {
        match i.name.as_str() {
            "qr-t" => assert_eq!(i.xdp_unavailable, None, "the tap takes native XDP"),
            name => assert!(
                i.xdp_unavailable
                    .as_deref()
                    .is_some_and(|r| r.starts_with("mode auto: a veth")),
                "{name} runs the TC entry alone: {i:?}"
            ),
        }
    }
    assert!(
        segments_offloaded(&vma, "eth0"),
        "vma's end of the veth keeps segmentation offload"
    );
    let socket = std::env::temp_dir().join(format!("routerd-{tag}.sock"));
    let show = Command::new(router_tests::routerd::routerd_path().with_file_name("routerctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["router", "show", &tag])
        .output()
        .expect("routerctl runs");
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains("qr-a: runs the TC entry alone (mode auto: a veth"),
        "{show}"
    );

    let ext = topo.ns("ext").to_string();
    assert!(traffic::ping(&ext, FIP.octets(), 1), "ext -> FIP");
    assert!(traffic::ping(&vma, EXT, 1), "vma -> ext");
    let kernel = traffic::forwarded_by_kernel(&rns);
    let bytes = 8 * 1024 * 1024;
    assert_eq!(
        traffic::tcp_transfer(&vma, &ext, EXT, 7101, bytes),
        bytes,
        "TCP from the floating IP's VM"
    );
    assert_eq!(
        traffic::tcp_transfer(&ext, &vma, FIP.octets(), 7102, bytes),
        bytes,
        "TCP to the floating IP"
    );
    assert_eq!(
        traffic::forwarded_by_kernel(&rns),
        kernel,
        "the kernel forwarded what the fast path should have"
    );

    // The same router in XDP mode: the veth's peer loses segmentation offload, which is
    // why the default leaves veths to the TC entry.
    topo.routerd_mut().stop();
    topo.write_config(&rendered.replace("mode = \"auto\"", "mode = \"xdp\""));
    let _xdp = router_tests::routerd::Routerd::start(&topo.config, &tag);
    assert!(
        !segments_offloaded(&vma, "eth0"),
        "under XDP on qr-a, vma's end of the veth segments nothing"
    );
}
