//! Control-plane faults: pins removed by hand, `kill -9` during an apply and after an
//! answered edit the file does not hold yet, a
//! router namespace deleted under a running router, an interface flapping. Each ends in a
//! consistent state that routerd repairs and reports, and the fast path keeps forwarding.

use router_user::maps::Rooms as _;
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use router_tests::{
    probe::UdpStream,
    routerd::Routerd,
    topo::{EXT_HOST, RouterTopology, VM_A, VM_B, ip},
    traffic,
};
use router_user::{api::Client, config::DesiredState};

fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn pins_of(router: &str) -> BTreeSet<String> {
    let dir = router_user::paths::router_pin_dir(router);
    let mut out = BTreeSet::new();
    for d in [dir.clone(), dir.join("links")] {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    out.insert(e.path().display().to_string());
                }
            }
        }
    }
    out
}

/// Pins removed by hand come back; then `kill -9` leaves a fast path that still forwards.
#[test]
fn pins_removed_by_hand_are_restored() {
    let topo = RouterTopology::build("tc");
    let mut routerd = Routerd::start(&topo.config, &topo.router_id);
    let pins = pins_of(&topo.router_id);
    assert!(pins.len() > 10, "pins: {pins:?}");
    for p in &pins {
        std::fs::remove_file(p).expect("removing a pin");
    }
    assert!(
        within(Duration::from_secs(3), || pins_of(&topo.router_id) == pins),
        "pins not restored:\n{}",
        routerd.log_text()
    );
    assert!(
        routerd.log_text().contains("pins removed by hand restored"),
        "not reported"
    );
    // The links' directory removed whole: made again, with every link pin in it.
    std::fs::remove_dir_all(router_user::paths::router_pin_dir(&topo.router_id).join("links"))
        .expect("removing the links' directory");
    assert!(
        within(Duration::from_secs(3), || pins_of(&topo.router_id) == pins),
        "link pins not restored:\n{}",
        routerd.log_text()
    );
    // The restored link pins are what keeps the fast path attached without routerd.
    routerd.kill9();
    assert!(traffic::ping(&topo.vm_a_ns, VM_B, 1), "after kill -9");
    let before = traffic::forwarded_by_kernel(&topo.router_ns);
    assert!(
        traffic::ping(&topo.vm_a_ns, VM_B, 3),
        "fast path after kill -9"
    );
    assert_eq!(traffic::forwarded_by_kernel(&topo.router_ns), before);
}

/// `kill -9` while an apply of 200 floating IPs is under way: what is persisted (the file
/// and its journal) is the old or the new state, never a mix, the next routerd runs
/// exactly that, and writes it into the file.
#[test]
fn kill9_during_an_apply_leaves_old_or_new() {
    let topo = RouterTopology::build("tc");
    let socket = std::env::temp_dir().join(format!("routerd-{}-faults.sock", topo.router_id));
    let mut routerd = Routerd::start_with_socket(&topo.config, &topo.router_id, &socket);
    let old_text = std::fs::read_to_string(&topo.config).expect("config");
    // 200 floating IPs (the gateway's /24 has room for that many).
    let mut new_text = old_text.clone();
    for i in 0..200u32 {
        new_text.push_str(&format!(
            "\n[[router.floating_ip]]\naddress = \"198.18.0.{}\"\nfixed = \"10.0.1.{}\"\n",
            20 + i,
            20 + i
        ));
    }
    let text = new_text.clone();
    let sock = socket.clone();
    let applier = std::thread::spawn(move || {
        let Ok(mut client) = Client::connect(&sock) else {
            return;
        };
        let _ = client.call_line(&serde_json::json!({"op": "apply", "text": text}).to_string());
    });
    std::thread::sleep(Duration::from_millis(15));
    routerd.kill9();
    let _ = applier.join();

    // What a start reads: the file, and the API edit its journal may hold.
    let state = router_user::node::StateFile::new(&topo.config)
        .load()
        .expect("the file and its journal are a valid state");
    let fips = state.routers[0].floating_ips.len();
    assert!(
        fips == 0 || fips == 200,
        "a mix: {fips} floating IPs persisted"
    );
    eprintln!("persisted after kill -9: {fips} floating IPs");

    let routerd = Routerd::start_with_socket(&topo.config, &topo.router_id, &socket);
    let running: BTreeSet<[u8; 4]> = {
        router_user::maps::Pinned::open(&topo.router_id)
            .and_then(|mut m| m.nat().floating_ips())
            .expect("floating IP map")
            .into_keys()
            .collect()
    };
    let wanted: BTreeSet<[u8; 4]> = state.routers[0]
        .floating_ips
        .iter()
        .map(|f| f.address.octets())
        .collect();
    assert_eq!(
        running,
        wanted,
        "the fast path does not run what the file says:\n{}",
        routerd.log_text()
    );
    assert!(
        traffic::ping(&topo.vm_a_ns, VM_B, 2),
        "forwarding after the restart"
    );
    // The edit the journal held is written into the file soon after the start.
    let journal = topo.config.with_extension("toml.journal");
    assert!(
        within(Duration::from_secs(5), || !journal.exists()),
        "the journal was not folded:\n{}",
        routerd.log_text()
    );
    let on_disk = std::fs::read_to_string(&topo.config).expect("config after the restart");
    assert_eq!(
        DesiredState::parse(&on_disk).expect("the file is a valid state"),
        state
    );
}

/// An API edit answered, then `kill -9` before routerd wrote it into the file (it does once
/// the API is quiet): the edit is in the file's journal, the next routerd starts with it,
/// runs it in the fast path, and writes it into the file.
#[test]
fn an_answered_edit_survives_kill9_before_the_file_has_it() {
    let topo = RouterTopology::build("tc");
    let socket = std::env::temp_dir().join(format!("routerd-{}-journal.sock", topo.router_id));
    let mut routerd = Routerd::start_with_socket(&topo.config, &topo.router_id, &socket);
    let before = std::fs::read(&topo.config).expect("config");
    let mut client = Client::connect(&socket).expect("the API");
    client
        .call(&router_user::api::Request::FipCreate {
            router: topo.router_id.clone(),
            address: "198.18.0.250".into(),
            fixed: "10.0.1.250".into(),
            id: None,
            may_exist: false,
        })
        .expect("fip_create answered");
    routerd.kill9();
    let journal = topo.config.with_extension("toml.journal");
    assert!(journal.exists(), "no journal after the answer");
    assert_eq!(
        std::fs::read(&topo.config).expect("config"),
        before,
        "the file was written before the API was quiet"
    );

    let routerd = Routerd::start_with_socket(&topo.config, &topo.router_id, &socket);
    let running: BTreeSet<[u8; 4]> = router_user::maps::Pinned::open(&topo.router_id)
        .and_then(|mut m| m.nat().floating_ips())
        .expect("floating IP map")
        .into_keys()
        .collect();
    assert!(
        running.contains(&[198, 18, 0, 250]),
        "the answered edit is not running after the restart:\n{}",
        routerd.log_text()
    );
    assert!(
        within(Duration::from_secs(5), || !journal.exists()),
        "the journal was not folded:\n{}",
        routerd.log_text()
    );
    let state = DesiredState::parse(&std::fs::read_to_string(&topo.config).expect("config"))
        .expect("the file is a valid state");
    assert!(
        state.routers[0]
            .floating_ips
            .iter()
            .any(|f| f.address == Ipv4Addr::new(198, 18, 0, 250)),
        "the file does not hold the edit"
    );
    assert!(
        routerd.log_text().contains("API edit(s) from"),
        "the replay is not logged:\n{}",
        routerd.log_text()
    );
}

/// A router's namespace deleted under it: the router keeps forwarding, routerd binds the
/// name again and says so, and another router of the same routerd is not disturbed.
#[test]
fn a_deleted_namespace_is_bound_again_and_others_are_undisturbed() {
    let one = RouterTopology::build("tc");
    let two = RouterTopology::build("tc");
    let config = std::env::temp_dir().join(format!("faults-two-{}.toml", one.router_id));
    let text = format!(
        "{}\n{}",
        std::fs::read_to_string(&one.config).expect("config one"),
        std::fs::read_to_string(&two.config).expect("config two")
    );
    std::fs::write(&config, text).expect("writing config");
    let routerd = Routerd::start(&config, &one.router_id);
    assert!(
        within(Duration::from_secs(10), || {
            router_user::paths::router_info_file(&two.router_id).exists()
        }),
        "second router not up"
    );
    // Router two carries a stream throughout.
    let stream = UdpStream::start(
        &two.vm_a_ns,
        42001,
        SocketAddrV4::new(Ipv4Addr::from(EXT_HOST), 6001),
        &two.ext_ns,
        6001,
        Duration::from_millis(5),
    );
    std::thread::sleep(Duration::from_millis(300));
    ip(&["netns", "del", &one.router_ns]);
    assert!(
        within(Duration::from_secs(3), || router_user::paths::netns_path(
            &one.router_ns
        )
        .exists()),
        "namespace not bound again:\n{}",
        routerd.log_text()
    );
    assert!(
        routerd
            .log_text()
            .contains("was deleted under the router; bound again"),
        "not reported"
    );
    assert!(traffic::ping(&one.vm_a_ns, VM_B, 2), "router one forwards");
    let report = stream.finish();
    assert!(
        report.sent > 100 && report.lost.is_empty(),
        "router two lost {} of {}",
        report.lost.len(),
        report.sent
    );
    let _ = std::fs::remove_file(&config);
}

/// An interface flapping (down, up) five times: routerd sets it up again each time it is
/// found down, and the fast path forwards afterwards.
#[test]
fn a_flapping_interface_is_repaired() {
    let topo = RouterTopology::build("xdp");
    let routerd = Routerd::start(&topo.config, &topo.router_id);
    for _ in 0..5 {
        ip(&["-n", &topo.router_ns, "link", "set", "qr-b", "down"]);
        assert!(
            within(Duration::from_secs(1), || {
                let out = std::process::Command::new("ip")
                    .args(["-n", &topo.router_ns, "-o", "link", "show", "qr-b"])
                    .output()
                    .expect("ip");
                String::from_utf8_lossy(&out.stdout).contains(",UP")
            }),
            "qr-b not set up again:\n{}",
            routerd.log_text()
        );
    }
    assert!(routerd.log_text().contains("qr-b was down, set up"));
    assert!(
        traffic::ping(&topo.vm_a_ns, VM_B, 2),
        "VM-a -> VM-b after the flaps"
    );
    let before = traffic::forwarded_by_kernel(&topo.router_ns);
    assert!(traffic::ping(&topo.vm_b_ns, VM_A, 3), "VM-b -> VM-a");
    assert_eq!(
        traffic::forwarded_by_kernel(&topo.router_ns),
        before,
        "the kernel forwarded after the flaps"
    );
}

/// Bursts of 20,000 route changes overrun routerd's netlink event socket: routerd says so,
/// reads everything again, and the fast path's routes converge to the kernel's.
#[test]
fn a_netlink_overrun_is_caught_up() {
    let topo = RouterTopology::build("tc");
    let routerd = Routerd::start(&topo.config, &topo.router_id);
    let batch = std::env::temp_dir().join(format!("routes-{}.batch", topo.router_id));
    let burst = |verb: &str| {
        let mut text = String::new();
        for i in 0..20_000u32 {
            let _ = std::fmt::Write::write_fmt(
                &mut text,
                format_args!(
                    "route {verb} 172.16.{}.{}/32 via 10.0.1.254\n",
                    i / 250,
                    i % 250
                ),
            );
        }
        std::fs::write(&batch, text).expect("batch file");
        ip(&[
            "-n",
            &topo.router_ns,
            "-batch",
            &batch.display().to_string(),
        ]);
    };
    let overrun = || routerd.log_text().contains("netlink events lost (overrun)");
    // Whether a burst overruns the socket depends on how fast routerd reads: repeat (add,
    // delete) until one does, a bounded number of times.
    for _ in 0..10 {
        burst("add");
        if overrun() {
            break;
        }
        burst("del");
        if overrun() {
            burst("add");
            break;
        }
    }
    if !router_user::paths::router_pin_dir(&topo.router_id).exists() {
        panic!("routerd lost its router:\n{}", routerd.log_text());
    }
    let _ = std::fs::remove_file(&batch);
    assert!(
        overrun(),
        "no overrun in 20 bursts of 20,000 route changes (or it was not reported)"
    );
    let count = || {
        router_user::maps::Pinned::open(&topo.router_id)
            .and_then(|mut m| m.routes().all())
            .expect("routes")
            .keys()
            .filter(|(_, k)| k.addr[0] == 172 && k.addr[1] == 16)
            .count()
    };
    assert!(
        within(Duration::from_secs(10), || count() == 20_000),
        "the fast path has {} of 20000 routes:\n{}",
        count(),
        routerd.log_text()
    );
}

/// A router whose port is missing when routerd starts (a node booting, an agent still
/// plugging ports) waits: routerd and the other router run, `router list` says why it
/// waits, an edit of the other router goes through meanwhile, and the router starts on its
/// own once the port appears, forwarding in the fast path.
#[test]
fn a_router_that_cannot_start_waits_and_starts_when_its_port_appears() {
    use router_user::api::Request;
    let one = RouterTopology::build("tc");
    let two = RouterTopology::build("tc");
    let config = std::env::temp_dir().join(format!("faults-wait-{}.toml", one.router_id));
    let text = format!(
        "{}\n{}",
        std::fs::read_to_string(&one.config).expect("config one"),
        std::fs::read_to_string(&two.config).expect("config two")
    );
    std::fs::write(&config, text).expect("writing config");
    // Router two's port qr-b is not there (under another name) when routerd starts.
    ip(&["-n", &two.router_ns, "link", "set", "qr-b", "down"]);
    ip(&[
        "-n",
        &two.router_ns,
        "link",
        "set",
        "qr-b",
        "name",
        "unplugged-b",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let routerd = Routerd::start_with_args(
        &config,
        &one.router_id,
        &["--metrics", &format!("127.0.0.1:{port}")],
    );
    // The socket `start_with_args` gives routerd.
    let socket = std::env::temp_dir().join(format!("routerd-{}.sock", one.router_id));
    let before = traffic::forwarded_by_kernel(&one.router_ns);
    assert!(traffic::ping(&one.vm_a_ns, VM_B, 2), "router one forwards");
    assert_eq!(
        traffic::forwarded_by_kernel(&one.router_ns),
        before,
        "router one forwards in the fast path"
    );

    let mut client = Client::connect(&socket).expect("connecting to routerd");
    let status_of_two = |client: &mut Client| {
        let list = client.call(&Request::RouterList).expect("router_list");
        list.as_array()
            .and_then(|routers| routers.iter().find(|r| r["id"] == two.router_id.as_str()))
            .cloned()
            .expect("router two listed")
    };
    let waiting = status_of_two(&mut client);
    assert_eq!(waiting["running"], false, "{waiting}");
    let why = waiting["start_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("qr-b"),
        "start_error names the port: {waiting}"
    );
    assert_eq!(routers_waiting(port), 1, "the metrics gauge");

    // An edit of router one is not held up by router two.
    let fip = serde_json::json!({
        "op": "fip_create", "router": one.router_id, "address": "198.18.0.10", "fixed": "10.0.1.5"
    });
    let response = client.call_line(&fip.to_string()).expect("fip_create");
    assert!(response.ok, "fip_create for router one: {response:?}");
    assert!(
        traffic::ping(&one.ext_ns, [198, 18, 0, 10], 2),
        "router one's new floating IP answers"
    );

    // The port appears: router two starts within its retry delay (1, 2, 4 s so far).
    ip(&[
        "-n",
        &two.router_ns,
        "link",
        "set",
        "unplugged-b",
        "name",
        "qr-b",
    ]);
    ip(&["-n", &two.router_ns, "link", "set", "qr-b", "up"]);
    assert!(
        within(
            Duration::from_secs(12),
            || status_of_two(&mut client)["running"] == true
        ),
        "router two did not start:\n{}",
        routerd.log_text()
    );
    assert_eq!(
        status_of_two(&mut client)["start_error"],
        serde_json::Value::Null
    );
    assert_eq!(routers_waiting(port), 0, "the metrics gauge");
    let before = traffic::forwarded_by_kernel(&two.router_ns);
    assert!(traffic::ping(&two.vm_a_ns, VM_B, 2), "router two forwards");
    assert_eq!(
        traffic::forwarded_by_kernel(&two.router_ns),
        before,
        "router two forwards in the fast path"
    );
    let log = routerd.log_text();
    assert!(
        log.contains(&format!(
            "router {}: interface qr-b does not exist in namespace {}; the router did not start",
            two.router_id, two.router_ns
        )) && log.contains(&format!("router {} started after", two.router_id)),
        "not reported:\n{log}"
    );
    drop(routerd);
    let _ = std::fs::remove_file(&config);
}

/// `routerd_routers_waiting` from routerd's metrics endpoint on `port`.
fn routers_waiting(port: u16) -> u64 {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut page = String::new();
    stream.read_to_string(&mut page).expect("response");
    page.lines()
        .find_map(|l| l.strip_prefix("routerd_routers_waiting "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no routerd_routers_waiting in:\n{page}"))
}
