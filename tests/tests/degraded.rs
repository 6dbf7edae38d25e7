//! The degraded mode: while a router's fast path is not attached (its start fails and is
//! retried), the kernel alone serves the router as Neutron's would: floating IPs answered,
//! translated and firewalled, SNAT, nothing leaving untranslated. When the fast path
//! attaches, an established TCP connection through a floating IP carries on.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use router_tests::{
    desired::{FirewallText, FwRuleText, PolicyText},
    routerd::Routerd,
    topology::{Builder, Host},
    traffic::{self, in_ns, join},
};

const FIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const VM_A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
/// The firewall drops UDP to this port.
const DENIED_PORT: u16 = 7000;

/// One UDP datagram from `from_ns` to `to`:`port` (received in `to_ns`): the source it
/// arrived from, or `None` within 2 s.
fn udp_source(from_ns: &str, to_ns: &str, to: Ipv4Addr, port: u16) -> Option<Ipv4Addr> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_ns(to_ns, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 64];
        match sock.recv_from(&mut buf) {
            Ok((_, std::net::SocketAddr::V4(from))) => Some(*from.ip()),
            _ => None,
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    join(in_ns(from_ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.send_to(b"probe", SocketAddrV4::new(to, port))
            .expect("send");
    }));
    join(server)
}

/// Sends `round` over `conn` and checks the echo.
fn echo_round(conn: &mut TcpStream, round: u8) {
    let msg = [round; 1000];
    conn.write_all(&msg).expect("send on the connection");
    let mut back = [0u8; 1000];
    conn.read_exact(&mut back).expect("the echo");
    assert_eq!(back, msg, "round {round}: the echo differs");
}

#[test]
fn the_kernel_serves_a_router_until_its_fast_path_attaches() {
    let topo = Builder::new("dg")
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
        .build();
    let mut text = topo.router_text("xdp");
    text.floating_ips.push((FIP, VM_A));
    text.extra = PolicyText {
        firewall: Some(FirewallText {
            default: "allow".into(),
            rules: vec![FwRuleText::new("deny", "udp").ports(&DENIED_PORT.to_string())],
        }),
        ..PolicyText::default()
    }
    .render();
    topo.write_config(&text.render());
    let tag = topo.tag.clone();
    let (rns, ext, vma, vmb) = (
        topo.router_ns.clone(),
        topo.ns("ext").to_string(),
        topo.ns("vma").to_string(),
        topo.ns("vmb").to_string(),
    );

    // A directory (not empty) where the router's map pin belongs: routerd can neither pin
    // there nor clear it, so building the fast path fails until it goes, as any start
    // failure after the kernel's part would.
    let obstacle = router_user::paths::router_pin_dir(&tag).join("ROUTES");
    std::fs::create_dir_all(obstacle.join("x")).expect("the obstacle");
    struct Obstacle(std::path::PathBuf);
    impl Drop for Obstacle {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let guard = Obstacle(obstacle);
    let routerd = Routerd::start_unattached(&topo.config, &tag);
    traffic::wait_for(
        "routerd to hand the router to the kernel",
        Duration::from_secs(15),
        || {
            routerd
                .log_text()
                .contains("the kernel path serves the router")
        },
    );
    let kernel_before = traffic::forwarded_by_kernel(&rns);

    // The floating IP is answered and translated by the kernel, both ways.
    assert!(
        traffic::ping(&ext, FIP.octets(), 2),
        "degraded: the floating IP does not answer:\n{}",
        routerd.log_text()
    );
    assert_eq!(
        udp_source(&ext, &vma, FIP, 7001),
        Some(EXT),
        "degraded: to the FIP"
    );
    assert_eq!(
        udp_source(&vma, &ext, EXT, 7002),
        Some(FIP),
        "degraded: from the FIP's VM"
    );
    // SNAT.
    assert_eq!(
        udp_source(&vmb, &ext, EXT, 7003),
        Some(GATEWAY),
        "degraded: SNAT"
    );
    // The firewall.
    assert_eq!(
        udp_source(&ext, &vma, FIP, DENIED_PORT),
        None,
        "degraded: the firewall let a denied datagram through"
    );
    assert!(
        traffic::forwarded_by_kernel(&rns) > kernel_before,
        "the kernel forwarded nothing: not degraded?"
    );

    // A TCP connection through the floating IP, made while degraded.
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_ns(&vma, move || {
        let listener = TcpListener::bind(SocketAddrV4::new(VM_A, 5001)).expect("bind");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    let mut conn = join(in_ns(&ext, || {
        TcpStream::connect_timeout(
            &std::net::SocketAddr::V4(SocketAddrV4::new(FIP, 5001)),
            Duration::from_secs(5),
        )
        .expect("connect through the floating IP")
    }));
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    echo_round(&mut conn, 1);

    let info = router_user::paths::router_info_file(&tag);
    assert!(
        !info.exists(),
        "the fast path attached while the obstacle stood"
    );
    // The obstacle goes: the retry attaches the fast path.
    drop(guard);
    traffic::wait_for("the fast path to attach", Duration::from_secs(40), || {
        info.exists()
    });
    assert!(
        routerd
            .log_text()
            .contains("the fast path answers for the floating IPs again"),
        "{}",
        routerd.log_text()
    );

    // The connection carries on, through the fast path now.
    let kernel_after = traffic::forwarded_by_kernel(&rns);
    for round in 2..6 {
        echo_round(&mut conn, round);
    }
    assert!(traffic::ping(&ext, FIP.octets(), 2), "attached: the FIP");
    assert_eq!(
        udp_source(&vmb, &ext, EXT, 7004),
        Some(GATEWAY),
        "attached: SNAT"
    );
    assert_eq!(
        traffic::forwarded_by_kernel(&rns),
        kernel_after,
        "attached: the kernel still forwards"
    );
    drop(conn);
    join(server);
    drop(routerd);
}
