//! routerd during a long start (many routers): signals are handled from the first instant
//! (SIGHUP applied once the start ends, SIGTERM ends routerd leaving the started routers
//! running), the API socket answers (queries from what has started, edits refused with
//! "starting"); and `routerctl` gives up on a routerd that does not answer.

use std::{
    io::Read as _,
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use router_tests::{
    routerd::{Routerd, routerd_path},
    scale::ScaleTopology,
    traffic::wait_for,
};
use router_user::api::{Client, Request};

/// Routers in the desired state: enough that the start takes seconds here.
const ROUTERS: usize = 30;

fn routerctl() -> PathBuf {
    routerd_path().with_file_name("routerctl")
}

fn signal(routerd: &Routerd, signal: i32) {
    let pid = routerd.pid().expect("routerd runs");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, signal) };
}

fn started(log: &str) -> bool {
    log.contains(" router(s) started in ")
}

fn pinned(topo: &ScaleTopology) -> Vec<usize> {
    let pins = router_user::datapath::pinned_routers();
    (0..ROUTERS)
        .filter(|&i| pins.contains(&topo.router_id(i)))
        .collect()
}

#[test]
fn a_long_start_answers_queries_and_survives_signals() {
    let topo = ScaleTopology::build(ROUTERS, "tc", 1024, &[]);
    topo.write_config(0..ROUTERS);
    let socket = std::env::temp_dir().join(format!("{}-start.sock", topo.prefix));
    let name = format!("{}-start", topo.prefix);

    let mut routerd = Routerd::start_unready(&topo.config, &name, &socket);
    wait_for("routerd's API socket", Duration::from_secs(10), || {
        socket.exists()
    });
    // A SIGHUP now would have killed routerd when the handlers came after the routers;
    // the new file drops router 0 (among the first to start).
    topo.write_config(1..ROUTERS);
    signal(&routerd, libc::SIGHUP);
    // Queries answer during the start; edits are refused, saying why.
    let mut client =
        Client::connect_within(&socket, Some(Duration::from_secs(5))).expect("connects");
    let list = client
        .call(&Request::RouterList)
        .expect("router list during the start");
    let during = !started(&routerd.log_text());
    let routers = list.as_array().expect("a list").clone();
    assert_eq!(routers.len(), ROUTERS, "{list}");
    let starting = routers.iter().filter(|r| r["starting"] == true).count();
    eprintln!(
        "during the start: {starting} of {ROUTERS} routers not tried yet (start ended: {})",
        !during
    );
    assert!(
        during,
        "the start ended before the first query: make it longer (more routers)"
    );
    assert!(starting > 0, "{list}");
    let edit = Request::RouterDelete {
        router: topo.router_id(2),
        if_exists: false,
    };
    let refused = client.call(&edit).expect_err("an edit during the start");
    assert!(
        matches!(&refused, router_user::Error::Api(e)
            if e.code == router_user::api::ErrorCode::Unavailable && e.message.contains("starting")),
        "{refused}"
    );
    assert!(!started(&routerd.log_text()), "the start ended too soon");
    assert!(!routerd.exited(), "routerd died:\n{}", routerd.log_text());

    // The reload comes once the start is over: router 0 goes, the others run.
    wait_for("the start and the reload", Duration::from_secs(120), || {
        let log = routerd.log_text();
        started(&log) && log.contains("routerd: reloaded in")
    });
    let log = routerd.log_text();
    assert!(
        log.contains("SIGHUP during the start"),
        "SIGHUP not handled during the start:\n{log}"
    );
    assert!(!routerd.exited(), "routerd died:\n{log}");
    let list = Client::connect_within(&socket, Some(Duration::from_secs(10)))
        .expect("connects")
        .call(&Request::RouterList)
        .expect("router list");
    let routers = list.as_array().expect("a list");
    assert_eq!(routers.len(), ROUTERS - 1, "{list}");
    assert!(routers.iter().all(|r| r["running"] == true), "{list}");
    assert!(!pinned(&topo).contains(&0), "router 0 still pinned");

    // SIGTERM during a start: routerd ends cleanly, the routers it started keep running.
    assert!(routerd.stop(), "routerd did not stop cleanly");
    routerd.teardown();
    assert!(pinned(&topo).is_empty(), "pins left: {:?}", pinned(&topo));
    let mut routerd = Routerd::start_unready(&topo.config, &name, &socket);
    wait_for("a first router", Duration::from_secs(60), || {
        !pinned(&topo).is_empty() && socket.exists()
    });
    signal(&routerd, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !routerd.exited() {
        assert!(
            Instant::now() < deadline,
            "routerd did not end after SIGTERM during the start:\n{}",
            routerd.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = routerd.log_text();
    assert!(log.contains("SIGTERM during the start"), "{log}");
    let left = pinned(&topo);
    assert!(
        !left.is_empty() && left.len() < ROUTERS - 1,
        "{} routers pinned after a SIGTERM during the start:\n{log}",
        left.len()
    );
    // The started routers were left running, as a SIGTERM leaves them.
    assert!(
        log.matches("left running for the next routerd").count() >= left.len(),
        "{log}"
    );
    drop(routerd);
}

/// A socket that accepts connections and never answers: routerctl gives up after
/// `--timeout` with its own exit code.
#[test]
fn routerctl_gives_up_on_a_routerd_that_does_not_answer() {
    let socket = std::env::temp_dir().join(format!("routerctl-mute-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let held = std::thread::spawn(move || {
        // Keeps the connection open, reading, answering nothing.
        if let Ok((mut conn, _)) = listener.accept() {
            conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && conn.read(&mut buf).is_ok_and(|n| n > 0) {}
        }
    });
    let started = Instant::now();
    let out = Command::new(routerctl())
        .arg("--socket")
        .arg(&socket)
        .args(["--timeout", "1", "router", "list"])
        .output()
        .expect("routerctl");
    let took = started.elapsed();
    let _ = std::fs::remove_file(&socket);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit {:?} (signal {:?}): {stderr}",
        out.status.code(),
        out.status.signal()
    );
    assert!(stderr.contains("did not answer within 1 s"), "{stderr}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "gave up after {took:?}"
    );
    let _ = held.join();
}
