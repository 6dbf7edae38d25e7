//! Restart without loss: `kill -9` routerd while traffic flows and start it again.
//! The fast path must keep forwarding throughout, sessions must survive, the new routerd
//! must adopt the pinned maps and links and write nothing (the desired state did not
//! change), and its freshly loaded programs must replace the running ones in the same
//! links (`bpf_link_update`): same link, new program, no gap.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::programs::links::{FdLink, PinnedLink};
use router_tests::{
    probe::UdpStream,
    routerd::Routerd,
    topo::{EXT_HOST, RouterTopology},
    traffic::{self, in_ns, join},
};

const FIP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const EXT: Ipv4Addr = Ipv4Addr::new(EXT_HOST[0], EXT_HOST[1], EXT_HOST[2], EXT_HOST[3]);

/// A long-lived TCP connection from `client_ns` to `server_ns`:`port` that echoes an
/// 8-byte counter every 10 ms; any reset, timeout or wrong byte ends it with an error.
struct TcpChatter {
    stop: Arc<AtomicBool>,
    client: std::thread::JoinHandle<Result<u64, String>>,
    server: std::thread::JoinHandle<()>,
}

impl TcpChatter {
    fn start(client_ns: &str, server_ns: &str, server: Ipv4Addr, port: u16) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server_thread = in_ns(server_ns, move || {
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("listen");
            ready_tx.send(()).expect("ready");
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 8];
            while conn.read_exact(&mut buf).is_ok() {
                if conn.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server ready");
        let stop = Arc::new(AtomicBool::new(false));
        let client_stop = stop.clone();
        let client = in_ns(client_ns, move || {
            let target = SocketAddrV4::new(server, port);
            let mut conn = TcpStream::connect_timeout(&target.into(), Duration::from_secs(3))
                .map_err(|e| format!("connect: {e}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            let hard = Instant::now() + Duration::from_secs(60);
            let mut n = 0u64;
            while !client_stop.load(Ordering::Relaxed) && Instant::now() < hard {
                conn.write_all(&n.to_be_bytes())
                    .map_err(|e| format!("write #{n}: {e}"))?;
                let mut back = [0u8; 8];
                conn.read_exact(&mut back)
                    .map_err(|e| format!("read #{n}: {e}"))?;
                if u64::from_be_bytes(back) != n {
                    return Err(format!("echo #{n} came back as {back:?}"));
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(n)
        });
        Self {
            stop,
            client,
            server: server_thread,
        }
    }

    /// Stops the client; returns how many round trips completed, or the error.
    fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        let result = join(self.client);
        // The client's socket is closed: the server's read ends.
        join(self.server);
        result
    }
}

/// (link id, program id) of each pinned link of `router` (XDP), then (filter handle,
/// program id) of each TC filter in its namespace `ns`.
fn links(router: &str, ns: &str) -> Vec<(String, u32, u32)> {
    let mut out = pinned_links(router);
    out.extend(tc_filters(ns));
    out
}

/// The `bpf` filters on the `clsact` ingress of every interface of namespace `ns`, as
/// (interface, handle, program id), from `tc -j`.
fn tc_filters(ns: &str) -> Vec<(String, u32, u32)> {
    let links = std::process::Command::new("ip")
        .args(["-n", ns, "-j", "link", "show"])
        .output()
        .expect("ip link");
    let links: serde_json::Value = serde_json::from_slice(&links.stdout).expect("ip -j link");
    let mut out = Vec::new();
    for link in links.as_array().expect("links") {
        let name = link["ifname"].as_str().expect("ifname").to_string();
        let shown = std::process::Command::new("tc")
            .args(["-n", ns, "-j", "filter", "show", "dev", &name, "ingress"])
            .output()
            .expect("tc filter show");
        let Ok(filters) = serde_json::from_slice::<serde_json::Value>(&shown.stdout) else {
            continue;
        };
        for f in filters.as_array().into_iter().flatten() {
            let options = &f["options"];
            let (Some(handle), Some(prog)) =
                (options["handle"].as_str(), options["prog"]["id"].as_u64())
            else {
                continue;
            };
            let handle = u32::from_str_radix(handle.trim_start_matches("0x"), 16).expect("handle");
            out.push((format!("{name} tc filter"), handle, prog as u32));
        }
    }
    out.sort();
    out
}

/// (link id, program id) of each pinned link of `router`.
fn pinned_links(router: &str) -> Vec<(String, u32, u32)> {
    let dir = router_user::paths::router_pin_dir(router).join("links");
    let mut out: Vec<(String, u32, u32)> = std::fs::read_dir(&dir)
        .expect("pinned links")
        .flatten()
        .map(|e| {
            let link = FdLink::from(PinnedLink::from_pin(e.path()).expect("open pinned link"));
            let info = link.info().expect("link info");
            (
                e.file_name().to_string_lossy().to_string(),
                info.id(),
                info.program_id(),
            )
        })
        .collect();
    out.sort();
    out
}

fn with_floating_ip(config: &Path) {
    let mut text = std::fs::read_to_string(config).expect("config");
    text.push_str("\n[[router.floating_ip]]\naddress = \"198.18.0.10\"\nfixed = \"10.0.2.5\"\n");
    std::fs::write(config, text).expect("writing config");
}

fn restart_under_traffic(mode: &str) {
    let topo = RouterTopology::build(mode);
    with_floating_ip(&topo.config);
    let mut first = Routerd::start(&topo.config, &topo.router_id);
    let before = links(&topo.router_id, &topo.router_ns);
    assert!(
        before.iter().any(|(name, ..)| name.ends_with("tc filter")),
        "{mode}: no TC filters: {before:?}"
    );
    assert_eq!(
        before.iter().any(|(name, ..)| name.ends_with("_xdp")),
        mode == "xdp",
        "{mode}: pinned XDP links: {before:?}"
    );
    // routerd's routers run without line information (kernel memory each router would
    // hold for nothing), but with the function information the verifier needs.
    let pins = router_user::paths::router_pin_dir(&topo.router_id);
    for pin in ["prog_tc", "prog_xdp"]
        .iter()
        .take(if mode == "xdp" { 2 } else { 1 })
    {
        let (functions, lines) = router_tests::pins::program_btf_records(&pins.join(pin))
            .unwrap_or_else(|e| panic!("{mode}: {pin}: {e}"));
        assert!(
            functions > 1 && lines == 0,
            "{mode}: {pin}: {functions} function and {lines} line information records"
        );
    }

    // A continuous stream to the floating IP, one from a VM behind default SNAT, and a
    // long-lived TCP connection through SNAT.
    let interval = Duration::from_millis(2);
    let to_fip = UdpStream::start(
        &topo.ext_ns,
        41001,
        SocketAddrV4::new(FIP_B, 5001),
        &topo.vm_b_ns,
        5001,
        interval,
    );
    let via_snat = UdpStream::start(
        &topo.vm_a_ns,
        41002,
        SocketAddrV4::new(EXT, 5002),
        &topo.ext_ns,
        5002,
        interval,
    );
    let tcp = TcpChatter::start(&topo.vm_a_ns, &topo.ext_ns, EXT, 5003);
    std::thread::sleep(Duration::from_millis(800));
    let sessions_before = router_user::stats::session_count(&topo.router_id).expect("sessions");
    assert!(
        sessions_before >= 2,
        "{mode}: SNAT sessions before the restart"
    );

    first.kill9();
    // The next routerd is a new build: its programs must replace the running ones. (The
    // owner record names the object the pinned programs came from.)
    pretend_another_build(&topo.router_id);
    // No routerd at all for a while: the fast path forwards on its own.
    std::thread::sleep(Duration::from_millis(500));
    let mut second = Routerd::start(&topo.config, &topo.router_id);
    std::thread::sleep(Duration::from_millis(800));

    let fip = to_fip.finish();
    let snat = via_snat.finish();
    let round_trips = tcp.finish();
    let log = second.log_text();
    assert!(
        fip.sent > 500 && fip.lost.is_empty(),
        "{mode}: the stream to the floating IP lost {} of {} datagrams across the restart",
        fip.lost.len(),
        fip.sent
    );
    assert!(
        snat.sent > 500 && snat.lost.is_empty(),
        "{mode}: the SNAT stream lost {} of {} datagrams across the restart",
        snat.lost.len(),
        snat.sent
    );
    assert_eq!(
        snat.sources.len(),
        1,
        "{mode}: the SNAT stream changed its translation (session rebuilt?): {:?}",
        snat.sources
    );
    let round_trips = round_trips.unwrap_or_else(|e| panic!("{mode}: TCP connection broke: {e}"));
    assert!(
        round_trips > 100,
        "{mode}: only {round_trips} TCP round trips"
    );
    let sessions_after = router_user::stats::session_count(&topo.router_id).expect("sessions");
    assert!(
        sessions_after >= sessions_before,
        "{mode}: sessions lost across the restart ({sessions_before} -> {sessions_after})"
    );
    assert!(
        log.contains("adopted the running fast path")
            && log.contains("; 0 map writes, 0 kernel writes"),
        "{mode}: the new routerd did not adopt without writing:\n{log}"
    );
    // Same links, new programs: replaced in place, never detached.
    let after = links(&topo.router_id, &topo.router_ns);
    assert_eq!(
        after.len(),
        before.len(),
        "{mode}: links {before:?} -> {after:?}"
    );
    for ((name, link, prog), (name2, link2, prog2)) in before.iter().zip(&after) {
        assert_eq!((name, link), (name2, link2), "{mode}: link {name} replaced");
        assert_ne!(
            prog, prog2,
            "{mode}: link {name} still runs the old program"
        );
    }
    assert!(
        log.contains("programs of this build swapped in atomically"),
        "{mode}: {log}"
    );

    // The same build again: its programs are taken from their pins, not verified again.
    second.kill9();
    let third = Routerd::start(&topo.config, &topo.router_id);
    let log = third.log_text();
    assert!(
        log.contains("the same build's programs kept, not verified again")
            && log.contains("; 0 map writes, 0 kernel writes"),
        "{mode}: the same build did not keep its programs:\n{log}"
    );
    assert_eq!(
        links(&topo.router_id, &topo.router_ns),
        after,
        "{mode}: the same build's restart changed links or programs"
    );
    assert!(
        traffic::ping(&topo.vm_a_ns, EXT_HOST, 2),
        "{mode}: forwarding after the same build's restart"
    );
}

/// Rewrites the owner record of `router`'s pins as if another build had pinned them.
fn pretend_another_build(router: &str) {
    let path = router_user::paths::run_dir().join(format!("{router}.owner"));
    let text = std::fs::read_to_string(&path).expect("owner record");
    let mut owner: serde_json::Value = serde_json::from_str(&text).expect("owner JSON");
    owner["object"] = serde_json::Value::String("another-build".into());
    std::fs::write(&path, owner.to_string()).expect("writing the owner record");
}

#[test]
fn kill9_and_restart_loses_nothing_xdp() {
    restart_under_traffic("xdp");
}

#[test]
fn kill9_and_restart_loses_nothing_tc() {
    restart_under_traffic("tc");
}
