//! Anti-spoofing through the real routerd, watched with `routerctl monitor`: a VM sending
//! from an address that is not its subnet's is dropped on its `qr` interface and counted
//! (`spoofed_source`); the monitor streams those drops live; spoofed fragments, which the
//! fast path hands to the kernel, are dropped by the slow path's source check.

use std::{
    net::{SocketAddrV4, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use router_tests::{
    routerd::Routerd,
    topo::{EXT_HOST, RouterTopology, ip},
    traffic::{in_ns, join},
};

const SPOOFED: [u8; 4] = [10, 0, 9, 5];

fn routerctl() -> std::path::PathBuf {
    router_tests::routerd::routerd_path().with_file_name("routerctl")
}

/// Sends `count` datagrams of `len` bytes from `SPOOFED` in the VM's namespace.
fn send_spoofed(ns: &str, count: usize, len: usize) {
    join(in_ns(ns, move || {
        let sock = UdpSocket::bind((std::net::Ipv4Addr::from(SPOOFED), 0)).expect("bind");
        let to = SocketAddrV4::new(EXT_HOST.into(), 9999);
        for _ in 0..count {
            let _ = sock.send_to(&vec![7u8; len], to);
            std::thread::sleep(Duration::from_millis(20));
        }
    }));
}

/// Whether anything arrives on port 9999 of the external host within `wait`.
fn external_receives(ns: &str, wait: Duration) -> std::thread::JoinHandle<usize> {
    in_ns(ns, move || {
        let sock = UdpSocket::bind(("0.0.0.0", 9999)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let deadline = std::time::Instant::now() + wait;
        let mut got = 0;
        let mut buf = vec![0u8; 65536];
        while std::time::Instant::now() < deadline {
            if sock.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    })
}

fn spoofing_is_dropped_and_monitored(mode: &str) {
    let topo = RouterTopology::build(mode);
    let _routerd = Routerd::start(&topo.config, &topo.router_id);
    ip(&[
        "-n",
        &topo.vm_a_ns,
        "addr",
        "add",
        "10.0.9.5/32",
        "dev",
        "eth0",
    ]);

    let monitor = Command::new(routerctl())
        .args([
            "monitor",
            &topo.router_id,
            "--reason",
            "spoofed_source",
            "-f",
            "json",
            "--count",
            "3",
            "--duration",
            "15",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("routerctl monitor");
    std::thread::sleep(Duration::from_millis(500));

    let receiver = external_receives(&topo.ext_ns, Duration::from_secs(2));
    send_spoofed(&topo.vm_a_ns, 5, 32);
    // Fragments (3000-byte datagrams, three fragments each at MTU 1500): the fast path's
    // source check drops every one, as it drops unfragmented packets.
    send_spoofed(&topo.vm_a_ns, 2, 3000);
    assert_eq!(
        join(receiver),
        0,
        "{mode}: a spoofed datagram reached the outside"
    );

    let out = monitor.wait_with_output().expect("monitor output");
    assert!(out.status.success(), "{mode}: monitor failed: {out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            // One document per event.
            let doc: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            assert_eq!(
                (&doc["kind"], &doc["version"]),
                (&serde_json::json!("monitor_event"), &serde_json::json!(1)),
                "{mode}: {doc}"
            );
            doc["items"].clone()
        })
        .collect();
    assert_eq!(lines.len(), 3, "{mode}: monitor lines {lines:?}");
    for l in &lines {
        assert_eq!(l["reason"], "spoofed_source", "{mode}: {l}");
        assert_eq!(l["verdict"], "dropped", "{mode}: {l}");
        assert_eq!(l["interface"], "qr-a", "{mode}: {l}");
        assert_eq!(l["protocol"], 17, "{mode}: {l}");
        assert!(
            l["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("10.0.9.5:")),
            "{mode}: {l}"
        );
        assert_eq!(l["destination"], "198.18.0.1:9999", "{mode}: {l}");
    }

    let stats = router_user::stats::collect(Some(&topo.router_id)).expect("stats");
    let qr_a = stats
        .iter()
        .find(|s| s.interface == "qr-a")
        .expect("qr-a counters");
    assert_eq!(
        qr_a.reasons.get("spoofed_source").copied().unwrap_or(0),
        5 + 2 * 3,
        "{mode}: spoofed_source counter (5 datagrams, and 2 of 3 fragments each): {:?}",
        qr_a.reasons
    );
    assert_eq!(
        qr_a.reasons.get("fragment").copied().unwrap_or(0),
        0,
        "{mode}: fragments went to the kernel: {:?}",
        qr_a.reasons
    );
}

#[test]
fn spoofing_is_dropped_and_monitored_xdp() {
    spoofing_is_dropped_and_monitored("xdp");
}

#[test]
fn spoofing_is_dropped_and_monitored_tc() {
    spoofing_is_dropped_and_monitored("tc");
}
