//! Anti-spoofing through the real routerd, watched with `routerctl monitor`: a VM sending
//! from an address that is not its subnet's is dropped on its `qr` interface and counted
//! (`spoofed_source`); the monitor streams those drops live; spoofed fragments, which the
//! fast path hands to the kernel, are dropped by the slow path's source check. Two monitors
//! at once each see every event (routerd alone reads the ring and hands them out).

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
    let routerd = Routerd::start(&topo.config, &topo.router_id);
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
        .arg("--socket")
        .arg(&routerd.socket)
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

/// Two monitors at once: each sees every one of N events, told apart by their lengths
/// (routerd reads the ring once and hands every event to both).
#[test]
fn two_monitors_each_see_every_event() {
    const N: usize = 8;
    let topo = RouterTopology::build("tc");
    let routerd = Routerd::start(&topo.config, &topo.router_id);
    ip(&[
        "-n",
        &topo.vm_a_ns,
        "addr",
        "add",
        "10.0.9.5/32",
        "dev",
        "eth0",
    ]);
    let monitor = || {
        Command::new(routerctl())
            .arg("--socket")
            .arg(&routerd.socket)
            .args([
                "monitor",
                &topo.router_id,
                "--reason",
                "spoofed_source",
                "-f",
                "json",
                "--count",
                &N.to_string(),
                "--duration",
                "20",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("routerctl monitor")
    };
    let monitors = [monitor(), monitor()];
    // Both subscribed before the first packet.
    std::thread::sleep(Duration::from_millis(1000));
    join(in_ns(&topo.vm_a_ns, move || {
        let sock = UdpSocket::bind((std::net::Ipv4Addr::from(SPOOFED), 0)).expect("bind");
        let to = SocketAddrV4::new(EXT_HOST.into(), 9999);
        for i in 0..N {
            let _ = sock.send_to(&vec![7u8; 40 + i], to);
            std::thread::sleep(Duration::from_millis(20));
        }
    }));
    let seen: Vec<std::collections::BTreeSet<u64>> = monitors
        .into_iter()
        .map(|m| {
            let out = m.wait_with_output().expect("monitor output");
            assert!(out.status.success(), "monitor failed: {out:?}");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| {
                    let doc: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                    doc["items"]["bytes"].as_u64().expect("bytes")
                })
                .collect()
        })
        .collect();
    assert_eq!(seen[0].len(), N, "first monitor: {:?}", seen[0]);
    assert_eq!(seen[0], seen[1], "the monitors saw different events");
}

/// A monitor that does not read loses events once its queue is full, and is told how many;
/// a monitor that reads meanwhile sees every event.
#[test]
fn a_slow_monitor_loses_events_counted_and_slows_no_other() {
    use router_user::api::{Client, MonitorLine};
    // More than the slow monitor's queue (4096) and the socket's buffers hold.
    const N: usize = 10_000;
    let topo = RouterTopology::build("tc");
    let routerd = Routerd::start(&topo.config, &topo.router_id);
    ip(&[
        "-n",
        &topo.vm_a_ns,
        "addr",
        "add",
        "10.0.9.5/32",
        "dev",
        "eth0",
    ]);
    let fast = Command::new(routerctl())
        .arg("--socket")
        .arg(&routerd.socket)
        .args([
            "monitor",
            &topo.router_id,
            "--reason",
            "spoofed_source",
            "-f",
            "json",
            "--count",
            &N.to_string(),
            "--duration",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("routerctl monitor");
    // Its output is read as it comes (a full pipe would make it a slow monitor too).
    let fast = std::thread::spawn(move || fast.wait_with_output());
    let mut slow = Client::connect_within(&routerd.socket, Some(Duration::from_secs(10)))
        .expect("connects")
        .monitor(Some(topo.router_id.clone()))
        .expect("a monitor");
    std::thread::sleep(Duration::from_millis(1000));
    // About 4,000 a second: the reading monitor keeps up, the other is not read.
    join(in_ns(&topo.vm_a_ns, move || {
        let sock = UdpSocket::bind((std::net::Ipv4Addr::from(SPOOFED), 0)).expect("bind");
        let to = SocketAddrV4::new(EXT_HOST.into(), 9999);
        for i in 0..N {
            let _ = sock.send_to(&[7u8; 16], to);
            if i % 16 == 15 {
                std::thread::sleep(Duration::from_millis(4));
            }
        }
    }));
    let out = fast
        .join()
        .expect("the reader thread")
        .expect("monitor output");
    assert!(out.status.success(), "reading monitor failed: {out:?}");
    let fast_events = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(fast_events, N, "the reading monitor missed events");
    let (mut events, mut dropped) = (0u64, 0u64);
    while let Some(line) = slow
        .next(Duration::from_millis(500))
        .expect("reading events")
    {
        match line {
            MonitorLine::Event(e) if e.reason == "spoofed_source" => events += 1,
            MonitorLine::Event(_) => {}
            MonitorLine::Dropped(n) => dropped += n,
        }
    }
    eprintln!("slow monitor: {events} events, {dropped} dropped");
    assert!(
        dropped > 0,
        "the slow monitor lost nothing: {events} events"
    );
    assert!(
        events + dropped >= N as u64,
        "{events} events + {dropped} dropped < {N}"
    );
    assert!(events < N as u64);
}
