//! `routergen` through a real veth pair: the rate it is asked for, every frame counted by
//! the sink, frames of the size and flows asked for as the receiving kernel sees them, and
//! bad arguments refused with the option named.

use std::{
    collections::BTreeSet,
    net::{SocketAddrV4, UdpSocket},
    process::{Command, Output},
    time::Duration,
};

use router_tests::{
    topo::{Namespaces, ip, run, unique, veth},
    traffic::{in_ns, join},
};
use serde_json::Value;

const SENDER: &str = "10.99.0.1";
const RECEIVER: [u8; 4] = [10, 99, 0, 2];

/// Two namespaces joined by a veth pair: (namespaces, sender's, receiver's, receiver MAC).
fn pair() -> (Namespaces, String, String, String) {
    let mut namespaces = Namespaces::default();
    let tag = unique("g");
    let a = namespaces.add(&format!("gen-{tag}"));
    let b = namespaces.add(&format!("rcv-{tag}"));
    veth("eth0", &a, "eth0", &b);
    ip(&[
        "-n",
        &a,
        "addr",
        "add",
        &format!("{SENDER}/24"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", &b, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    for ns in [&a, &b] {
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
    }
    let out = Command::new("ip")
        .args(["-n", &b, "-br", "link", "show", "dev", "eth0"])
        .output()
        .expect("ip link");
    let mac = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .expect("a MAC")
        .to_string();
    (namespaces, a, b, mac)
}

fn routergen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_routergen"))
        .args(args)
        .output()
        .expect("running routergen")
}

/// `routergen` from the sender's eth0 to the receiver, with `more` arguments.
fn routergen_to_receiver(sender_ns: &str, receiver_mac: &str, more: &[&str]) -> Output {
    let mut args = vec![
        "--netns",
        sender_ns,
        "--dev",
        "eth0",
        "--dst-mac",
        receiver_mac,
        "--src",
        SENDER,
        "--dst",
        "10.99.0.2",
    ];
    args.extend_from_slice(more);
    routergen(&args)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// At a set rate the generator sends about rate x duration frames, and the sink counts
/// every one, of the size asked for.
#[test]
fn the_rate_and_size_asked_for_and_every_frame_counted() {
    let (_namespaces, a, b, mac) = pair();
    let out = routergen_to_receiver(
        &a,
        &mac,
        &[
            "--flows",
            "16",
            "--size",
            "128",
            "--rate",
            "20000",
            "--duration",
            "0.5",
            "--sink-netns",
            &b,
            "--sink-dev",
            "eth0",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let sent = u(&report["sent"]);
    // 10,000 due by the end (one more at most); a last burst that starts late on a busy
    // machine sends less (unpaced it would be millions).
    assert!((8_000..=10_001).contains(&sent), "sent {sent}: {report}");
    assert_eq!(u(&report["delivered"]), sent, "{report}");
    assert_eq!(u(&report["lost"]), 0, "{report}");
    assert_eq!(u(&report["delivered_bytes"]), sent * 128, "{report}");
    // Live frames where the kernel allows them, the packet socket where it refuses them.
    let sending = if router_user::datapath::features::kernel().xdp_live_frames {
        "live_frames"
    } else {
        "packet_socket"
    };
    assert_eq!(report["sending"], sending, "{report}");
}

/// The receiving kernel sees UDP from the sender's address to its own, one source port
/// per flow from `--src-port` up, with the payload the frame size leaves.
#[test]
fn flows_and_size_as_the_receiving_kernel_sees_them() {
    let (_namespaces, a, b, mac) = pair();
    // Frames redirected into a veth without an XDP program need its peer's NAPI (GRO).
    run(
        "ip",
        &["netns", "exec", &b, "ethtool", "-K", "eth0", "gro", "on"],
    );
    let socket = join(in_ns(&b, || {
        UdpSocket::bind(SocketAddrV4::new(RECEIVER.into(), 7000)).expect("bind")
    }));
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    // Room for every datagram until the run is over and they are read.
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20))
        .expect("SO_RCVBUFFORCE");
    let out = routergen_to_receiver(
        &a,
        &mac,
        &[
            "--src-port",
            "20000",
            "--dst-port",
            "7000",
            "--flows",
            "16",
            "--size",
            "100",
            "--rate",
            "1000",
            "--duration",
            "0.2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("frames of 100 B in 16 flow(s)"), "{text}");
    let sent: usize = text
        .strip_prefix("sent ")
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in: {text}"));
    let mut ports = BTreeSet::new();
    let mut received = 0;
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        received += 1;
        assert_eq!(
            n,
            100 - 42,
            "payload: the frame less Ethernet, IPv4 and UDP headers"
        );
        assert_eq!(from.ip().to_string(), SENDER);
        ports.insert(from.port());
    }
    assert_eq!(received, sent, "every frame sent arrives");
    assert!(sent >= 16, "sent {sent}: fewer than the flows");
    assert_eq!(ports, (20_000..20_016).collect::<BTreeSet<u16>>());
}

/// Bad arguments: refused before anything is sent, naming the option.
#[test]
fn bad_arguments_name_the_option() {
    let (_namespaces, a, _b, mac) = pair();
    let base = ["--netns", &a, "--src", SENDER, "--dst", "10.99.0.2"];
    for (extra, named) in [
        (
            vec!["--dev", "eth0", "--dst-mac", "02:00:zz:00:00:01"],
            "--dst-mac",
        ),
        (
            vec!["--dev", "no-such-dev", "--dst-mac", &mac],
            "--dev no-such-dev",
        ),
        (
            vec!["--dev", "eth0", "--dst-mac", &mac, "--size", "20"],
            "--size",
        ),
        (
            vec!["--dev", "eth0", "--dst-mac", &mac, "--flows", "0"],
            "--flows",
        ),
        (
            vec!["--dev", "eth0", "--dst-mac", &mac, "--rate", "0"],
            "--rate",
        ),
        (
            vec!["--dev", "eth0", "--dst-mac", &mac, "--duration", "0"],
            "--duration",
        ),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let out = routergen(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(named), "{args:?}: {err}");
    }
}
