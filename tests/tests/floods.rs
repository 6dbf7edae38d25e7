//! Floods and exhaustion against the real routerd in namespaces.
//!
//! - `syn_flood_*`: a router with a small session table (`max_sessions`), short SYN
//!   timeouts and the firewall on (default deny, TCP 80 to a VM allowed, so every new flow
//!   from outside to its floating IP takes a session). Two established connections (outside
//!   -> floating IP:80, and a VM behind default SNAT -> outside) echo a counter throughout.
//!   A flood of SYNs from distinct random-looking sources (the XDP live-frames generator of
//!   `router_tests::flood`, several times the table's capacity in distinct tuples) hits the
//!   floating IP:80. The established connections must not miss a beat, new flows beyond
//!   the capacity must be dropped and counted `session_table_full` (and nothing else may be
//!   dropped on the gateway), the table must never hold more than its capacity, routerd's
//!   resident memory must stay flat, and once the flood stops the table must drain back to
//!   the two established sessions (aging by routerd) and a new connection must succeed.
//!   Once with a preallocated table (XDP) and once with one made as sessions come
//!   (`nat.preallocate_sessions = false`, TC): both hold and refuse alike.
//! - `snat_port_exhaustion_*`: a tiny `snat_ports` range. One VM opens UDP flows to two
//!   destinations until each destination's ports are all taken: new flows are dropped and
//!   counted `no_snat_port`, no two flows ever leave with the same translated tuple, every
//!   admitted flow keeps its translation and gets its echoes back. Ports are claimed per
//!   (gateway IP, destination address, destination port): a second VM is refused towards an
//!   exhausted destination but gets ports towards another. After the UDP timeout the
//!   sessions end and the ports are given out again.
//!
//! "Never more than its capacity": the kernel bounds the table (`max_entries`, checked to
//! be 2 x `max_sessions`); the test counts it too, but a walk of a hash map is not a
//! snapshot (when aging deletes the key a walk stands on, the kernel restarts it from the
//! first bucket), so only walks during which nothing is inserted (from the moment the flood
//! stops) are held to the capacity; walks during the flood are reported.
//!
//! The default variants take about 20 s together (each flood test ~8 s, the exhaustion test
//! ~4 s); `ROUTER_LONG_TESTS=1` adds two 15 s floods on a 65,536-session table in XDP and
//! in TC mode (~45 s each) and a 1,024-port exhaustion (~7 s). Figures (flood rate, drops
//! by reason, table, memory and CPU of routerd) are printed with `eprintln!` (`--nocapture`
//! shows them).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use router_tests::{
    flood::{
        self, Chatter, EchoServer, ReceivedDatagram, SynFlood, SynFloodSpec, UdpCollector,
        UdpFlows, check_syn_frame, cpu_time, rss_kib, syn_frame, tcp_round_trip,
    },
    routerd::Routerd,
    topo::{EXT_HOST, RouterTopology, ip, run},
    traffic::wait_for,
};
use router_user::maps::Rooms as _;

const EXT: Ipv4Addr = Ipv4Addr::new(EXT_HOST[0], EXT_HOST[1], EXT_HOST[2], EXT_HOST[3]);
const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const FIP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const VM_A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const VM_B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);
/// The flood's sources: 100.64.0.0/16, never routed anywhere.
const FLOOD_NET: [u8; 2] = [100, 64];

fn long_tests() -> bool {
    std::env::var("ROUTER_LONG_TESTS").is_ok_and(|v| v == "1")
}

fn skip_unless_long(name: &str) -> bool {
    if long_tests() {
        return false;
    }
    eprintln!("{name}: skipped (set ROUTER_LONG_TESTS=1 to run it)");
    true
}

/// Appends router keys to the topology's desired state (TOML tables may follow the
/// router's other keys in any order).
fn append_config(topo: &RouterTopology, extra: &str) {
    let mut text = std::fs::read_to_string(&topo.config).expect("reading the config");
    text.push('\n');
    text.push_str(extra);
    std::fs::write(&topo.config, text).expect("writing the config");
}

/// Counters of every interface, summed: (reason -> packets), and per interface
/// (forwarded, passed, dropped).
#[derive(Clone, Debug, Default)]
struct Counters {
    reasons: BTreeMap<String, u64>,
    by_iface: BTreeMap<String, (u64, u64, u64)>,
}

fn counters(router: &str) -> Counters {
    let mut c = Counters::default();
    for s in router_user::stats::collect(Some(router))
        .unwrap_or_else(|e| panic!("reading router {router}'s counters: {e}"))
    {
        for (r, n) in &s.reasons {
            *c.reasons.entry(r.clone()).or_default() += n;
        }
        let e = c.by_iface.entry(s.interface.clone()).or_default();
        e.0 += s.forwarded_packets;
        e.1 += s.passed_packets;
        e.2 += s.dropped_packets;
    }
    c
}

impl Counters {
    fn reason(&self, r: &str) -> u64 {
        self.reasons.get(r).copied().unwrap_or(0)
    }

    fn iface(&self, name: &str) -> (u64, u64, u64) {
        self.by_iface.get(name).copied().unwrap_or_default()
    }

    /// Reasons that moved since `before`, with how much.
    fn reasons_since(&self, before: &Counters) -> BTreeMap<String, u64> {
        self.reasons
            .iter()
            .map(|(r, n)| (r.clone(), n - before.reason(r)))
            .filter(|(_, d)| *d > 0)
            .collect()
    }
}

fn session_entries(router: &str) -> usize {
    router_user::stats::session_count(router)
        .unwrap_or_else(|e| panic!("counting router {router}'s sessions: {e}"))
}

fn session_maps(router: &str) -> router_user::maps::Pinned {
    router_user::maps::Pinned::open(router)
        .unwrap_or_else(|e| panic!("opening router {router}'s maps: {e}"))
}

/// Distinct keys met in one walk of the session table. A walk is not a snapshot: when the
/// key it stands on is deleted (aging), the kernel restarts it from the first bucket and
/// yields some keys twice while sessions end. Distinct keys are exact while nothing is
/// inserted during the walk, and otherwise at most the keys present at some moment of it.
fn distinct_entries(maps: &mut router_user::maps::Pinned) -> usize {
    maps.sessions().entries().expect("walking SESSIONS")
}

/// The table's size in the kernel (`max_entries`): what no insert can go beyond.
fn table_capacity(router: &str) -> usize {
    session_maps(router)
        .sessions()
        .capacity()
        .expect("SESSIONS map info") as usize
}

fn sessions(router: &str) -> Vec<router_user::conntrack::Session> {
    let timeouts = router_user::conntrack::running_timeouts(router);
    session_maps(router)
        .sessions()
        .list(router_user::conntrack::monotonic_ns(), &timeouts)
        .unwrap_or_else(|e| panic!("listing router {router}'s sessions: {e}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------
// The generator itself

/// The flood's frames, as the program writes them: valid SYNs (both checksums, checked by
/// etherparse), every header byte written whatever the page held, one distinct source
/// (address, port) per number, and the counter equal to the frames built.
#[test]
fn syn_generator_writes_valid_distinct_syns() {
    router_tests::require_root();
    let dst = SocketAddrV4::new(FIP_B, 80);
    let (dmac, smac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let runs = 300;
    let (frames, counter) = flood::syn_generator_output(dmac, smac, FLOOD_NET, dst, runs)
        .unwrap_or_else(|e| panic!("running the SYN generator: {e}"));
    assert_eq!(counter, u64::from(runs), "the generator's counter");
    let mut sources = BTreeSet::new();
    for (n, f) in frames.iter().enumerate() {
        assert_eq!(
            f,
            &syn_frame(dmac, smac, FLOOD_NET, dst, n as u32),
            "frame {n} differs from the expected one"
        );
        let (src, to) = check_syn_frame(f).unwrap_or_else(|e| panic!("frame {n}: {e}"));
        assert_eq!(to, dst, "frame {n}'s destination");
        assert_eq!(
            &src.ip().octets()[..2],
            &FLOOD_NET,
            "frame {n}'s source net"
        );
        assert_ne!(src.port(), 0, "frame {n}'s source port");
        sources.insert(src);
    }
    // Numbers 65536 apart share the address but not the port; check a few far ones too.
    for n in [
        65_535u32,
        65_536,
        1 << 20,
        (1 << 31) + 7,
        u32::MAX - 1024 * 65_536,
    ] {
        let f = syn_frame(dmac, smac, FLOOD_NET, dst, n);
        let (src, _) = check_syn_frame(&f).unwrap_or_else(|e| panic!("frame for {n}: {e}"));
        sources.insert(src);
    }
    assert_eq!(sources.len(), runs as usize + 5, "distinct sources");
}

// ---------------------------------------------------------------------------------------
// Point 3: SYN flood at several times the session table's capacity

/// What the watcher saw of the session table during a flood.
#[derive(Debug, Default)]
struct TableWatch {
    samples: u64,
    /// Most distinct keys in one walk.
    max_distinct: usize,
    /// Most keys `router_user::stats::session_count` reported.
    max_raw: usize,
    /// When the table first held capacity - 2 entries or more (from the flood's start).
    full_after: Option<Duration>,
}

/// Samples the session table until `go` is cleared.
fn watch_table(
    router: &str,
    capacity: usize,
    go: Arc<AtomicBool>,
) -> thread::JoinHandle<TableWatch> {
    let id = router.to_string();
    // Big tables take a while to walk (two walks per sample): sample less often.
    let pause = Duration::from_millis(if capacity > 10_000 { 250 } else { 50 });
    thread::spawn(move || {
        let mut map = session_maps(&id);
        let start = Instant::now();
        let mut seen = TableWatch::default();
        while go.load(Ordering::Relaxed) {
            let n = distinct_entries(&mut map);
            let raw = session_entries(&id);
            seen.samples += 1;
            seen.max_distinct = seen.max_distinct.max(n);
            seen.max_raw = seen.max_raw.max(raw);
            if seen.full_after.is_none() && n + 2 >= capacity {
                seen.full_after = Some(start.elapsed());
            }
            thread::sleep(pause);
        }
        seen
    })
}

struct FloodCase {
    mode: &'static str,
    max_sessions: u32,
    /// `nat.preallocate_sessions`: a table made as sessions come must hold and refuse the
    /// same as a preallocated one.
    preallocate_sessions: bool,
    /// Floods, each followed by the drain.
    rounds: u32,
    flood: Duration,
    /// tcp_syn_sent, tcp_syn_recv and tcp_close.
    syn_timeout: u64,
}

/// One flood and its drain, as measured.
struct Round {
    sent: flood::FloodReport,
    start: Instant,
    end: Instant,
    before: Counters,
    during: Counters,
    after_drain: Counters,
    watched: TableWatch,
    /// Distinct entries when the flood stopped, and the most while draining.
    at_end: usize,
    max_draining: usize,
    drained: Option<Duration>,
    rss_flood: u64,
    rss_after: u64,
    /// routerd's CPU time during the flood and during the drain.
    cpu_flood: Duration,
    cpu_drain: Duration,
}

fn syn_flood(case: &FloodCase) {
    let t_test = Instant::now();
    let mode = case.mode;
    let topo = RouterTopology::build(mode);
    let t = case.syn_timeout;
    append_config(
        &topo,
        &format!(
            "[[router.floating_ip]]\naddress = \"{FIP_B}\"\nfixed = \"{VM_B}\"\n\n\
             [router.nat]\nmax_sessions = {}\npreallocate_sessions = {}\n\n\
             [router.nat.timeouts]\ntcp_syn_sent = {t}\ntcp_syn_recv = {t}\ntcp_close = {t}\n\n\
             [router.firewall]\ndefault = \"deny\"\n\n\
             [[router.firewall.rule]]\naction = \"allow\"\nprotocol = \"tcp\"\n\
             destination = \"{VM_B}/32\"\ndestination_ports = \"80\"\n\n\
             [[router.firewall.rule]]\naction = \"allow\"\nprotocol = \"tcp\"\n\
             source = \"10.0.1.0/24\"\ndestination = \"{EXT}/32\"\ndestination_ports = \"5003\"\n",
            case.max_sessions, case.preallocate_sessions
        ),
    );
    let routerd = Routerd::start(&topo.config, &topo.router_id);
    if mode == "tc" {
        // No XDP program on qg in TC mode: GRO gives the (up) veth the NAPI context that
        // receives the generator's XDP frames (a NIC would not need it).
        run(
            "ip",
            &[
                "netns",
                "exec",
                &topo.router_ns,
                "ethtool",
                "-K",
                &topo.qg,
                "gro",
                "on",
            ],
        );
    }
    let router = topo.router_id.as_str();
    let pid = routerd.pid().expect("routerd pid");
    let capacity = 2 * case.max_sessions as usize;

    // The two established connections.
    let _vm_server = EchoServer::start(&topo.vm_b_ns, 80);
    let _ext_server = EchoServer::start(&topo.ext_ns, 5003);
    let interval = Duration::from_millis(10);
    let io_timeout = Duration::from_secs(10);
    let to_fip = Chatter::start(
        &topo.ext_ns,
        SocketAddrV4::new(FIP_B, 80),
        interval,
        io_timeout,
    );
    let via_snat = Chatter::start(
        &topo.vm_a_ns,
        SocketAddrV4::new(EXT, 5003),
        interval,
        io_timeout,
    );
    wait_for("both connections to echo", Duration::from_secs(5), || {
        to_fip.trips() > 10 && via_snat.trips() > 10
    });
    let base_entries = session_entries(router);
    assert_eq!(
        base_entries,
        4,
        "{mode}: two sessions (four entries) before the flood; got {base_entries} entries: {:#?}",
        sessions(router)
    );
    let rss_before = rss_kib(pid);
    let kernel_capacity = table_capacity(router);
    let mut map = session_maps(router);
    let spec = SynFloodSpec {
        ns: topo.ext_ns.clone(),
        ifname: "eth0".into(),
        dst_mac: flood::mac_of(&topo.router_ns, &topo.qg),
        src_net: FLOOD_NET,
        target: SocketAddrV4::new(FIP_B, 80),
    };

    let mut rounds = Vec::new();
    for _ in 0..case.rounds {
        let before = counters(router);
        let watching = Arc::new(AtomicBool::new(true));
        let watch = watch_table(router, capacity, watching.clone());
        let cpu0 = cpu_time(pid);
        let start = Instant::now();
        let syn = SynFlood::start(&spec, case.flood)
            .unwrap_or_else(|e| panic!("{mode}: starting the SYN flood: {e}"));
        thread::sleep(case.flood);
        let sent = syn
            .finish()
            .unwrap_or_else(|e| panic!("{mode}: the SYN flood failed: {e}"));
        let end = Instant::now();
        watching.store(false, Ordering::Relaxed);
        let watched = watch.join().expect("watcher");
        let during = counters(router);
        let rss_flood = rss_kib(pid);
        let cpu1 = cpu_time(pid);
        // Nothing is inserted any more (the flood stopped, the established sessions
        // exist): from here on a walk's distinct keys are never more than the table holds.
        let at_end = distinct_entries(&mut map);

        // Drain: the half-open sessions age out, the established ones stay.
        let drain_start = Instant::now();
        let drain_limit = Duration::from_secs(3 * t + 12);
        let (mut drained, mut max_draining) = (None, 0);
        while drain_start.elapsed() < drain_limit {
            let n = distinct_entries(&mut map);
            max_draining = max_draining.max(n);
            if n <= base_entries {
                drained = Some(drain_start.elapsed());
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        rounds.push(Round {
            sent,
            start,
            end,
            before,
            during,
            after_drain: counters(router),
            watched,
            at_end,
            max_draining,
            drained,
            rss_flood,
            rss_after: rss_kib(pid),
            cpu_flood: cpu1 - cpu0,
            cpu_drain: cpu_time(pid) - cpu1,
        });
        if drained.is_none() {
            break;
        }
    }
    let left = sessions(router);

    // A new legitimate connection, then the established ones end.
    let fresh = tcp_round_trip(
        &topo.ext_ns,
        SocketAddrV4::new(FIP_B, 80),
        Duration::from_secs(3),
    );
    let end = Instant::now();
    let fip_chat = to_fip.finish();
    let snat_chat = via_snat.finish();
    let chats = [
        ("outside -> floating IP:80", &fip_chat),
        ("VM (SNAT) -> outside", &snat_chat),
    ];

    // Figures.
    eprintln!(
        "== SYN flood, {mode} mode, max_sessions {} ({kernel_capacity} entries in the kernel), syn timeouts {t} s, {} round(s) of {:?}",
        case.max_sessions, case.rounds, case.flood
    );
    for (i, r) in rounds.iter().enumerate() {
        let secs = r.sent.secs;
        let stf = r.during.reason("session_table_full") - r.before.reason("session_table_full");
        let (f0, p0, d0) = r.before.iface(&topo.qg);
        let (f1, p1, d1) = r.during.iface(&topo.qg);
        let seen = (f1 + p1 + d1) - (f0 + p0 + d0);
        eprintln!(
            "  round {}: offered {} SYNs (distinct tuples) in {secs:.2} s = {:.0} pps ({:.0}x the table's sessions); {} reached the fast path on {} ({:.0} pps; the rest was lost on the veth before it)",
            i + 1,
            r.sent.frames,
            r.sent.rate(),
            r.sent.frames as f64 / f64::from(case.max_sessions),
            seen,
            topo.qg,
            seen as f64 / secs
        );
        eprintln!(
            "    {}: forwarded {}, passed {}, dropped {} = {:.0} drops/s; session_table_full {stf} ({:.0}/s)",
            topo.qg,
            f1 - f0,
            p1 - p0,
            d1 - d0,
            (d1 - d0) as f64 / secs,
            stf as f64 / secs
        );
        eprintln!(
            "    reasons during the flood: {:?}",
            r.during.reasons_since(&r.before)
        );
        eprintln!(
            "    reasons during the drain: {:?}",
            r.after_drain.reasons_since(&r.during)
        );
        eprintln!(
            "    table: full {:?} after the flood began; at most {} distinct entries per walk ({} as counted by stats::session_count) over {} samples; {} when the flood stopped; drained to {base_entries} {}",
            r.watched.full_after,
            r.watched.max_distinct,
            r.watched.max_raw,
            r.watched.samples,
            r.at_end,
            r.drained.map_or("NOT".to_string(), |d| format!(
                "{:.1} s after it",
                d.as_secs_f64()
            ))
        );
        eprintln!(
            "    routerd VmRSS: end of flood {:.1} MiB, after drain {:.1} MiB (before the first flood {:.1} MiB); routerd CPU {:.0}% of one CPU during the flood, {:.0}% during the drain (aging)",
            mib(r.rss_flood),
            mib(r.rss_after),
            mib(rss_before),
            100.0 * r.cpu_flood.as_secs_f64() / r.end.duration_since(r.start).as_secs_f64(),
            100.0 * r.cpu_drain.as_secs_f64() / r.drained.map_or(1.0, |d| d.as_secs_f64().max(0.1))
        );
        for (name, chat) in chats {
            eprintln!(
                "    {name}: {} round trips during the flood, longest gap {:?}, slowest round trip {:?}",
                chat.trips_between(r.start, r.end),
                chat.longest_gap(r.start, r.end),
                chat.max_rtt(r.start, r.end),
            );
        }
    }
    for (name, chat) in chats {
        eprintln!(
            "  {name}: {} round trips in all, error {:?}",
            chat.trips.len(),
            chat.error
        );
    }
    eprintln!("  new connection after the drain: {fresh:?}");
    eprintln!("  test time {:.1} s", t_test.elapsed().as_secs_f64());

    // Assertions.
    assert_eq!(
        kernel_capacity, capacity,
        "{mode}: the session table's size in the kernel (two entries per session)"
    );
    let cap_sessions = u64::from(case.max_sessions);
    let first_start = rounds.first().expect("a round").start;
    for (name, chat) in chats {
        assert!(
            chat.error.is_none(),
            "{mode}: the established connection {name} broke: {:?}",
            chat.error
        );
        let gap = chat.longest_gap(first_start, end);
        assert!(
            gap < Duration::from_secs(2),
            "{mode}: the established connection {name} stalled for {gap:?}"
        );
    }
    for (i, r) in rounds.iter().enumerate() {
        let round = i + 1;
        let stf = r.during.reason("session_table_full") - r.before.reason("session_table_full");
        let (f0, p0, d0) = r.before.iface(&topo.qg);
        let (f1, p1, d1) = r.during.iface(&topo.qg);
        let seen = (f1 + p1 + d1) - (f0 + p0 + d0);
        for (name, chat) in chats {
            assert!(
                chat.trips_between(r.start, r.end) > 0,
                "{mode}, round {round}: no round trip of {name} during the flood"
            );
        }
        assert!(
            r.sent.frames >= 2 * cap_sessions && seen >= 2 * cap_sessions,
            "{mode}, round {round}: the flood offered {} distinct SYNs and {seen} reached the fast path: need 2 x {cap_sessions}",
            r.sent.frames
        );
        assert!(
            stf > 0 && stf >= seen / 2,
            "{mode}, round {round}: new flows beyond the capacity must be dropped as session_table_full: {stf} of {seen} packets seen on {}; {:?}",
            topo.qg,
            r.during.reasons_since(&r.before)
        );
        assert_eq!(
            d1 - d0,
            stf,
            "{mode}, round {round}: drops on {} other than session_table_full: {:?}",
            topo.qg,
            r.during.reasons_since(&r.before)
        );
        assert!(
            r.watched.max_distinct + 2 >= capacity,
            "{mode}, round {round}: the table never filled: at most {} of {capacity} entries",
            r.watched.max_distinct
        );
        assert!(
            r.at_end <= capacity && r.max_draining <= capacity,
            "{mode}, round {round}: the table held more than its {capacity} entries: {} at the flood's end, up to {} while draining",
            r.at_end,
            r.max_draining
        );
        assert!(
            r.drained.is_some(),
            "{mode}, round {round}: the table did not drain back to {base_entries} entries: {} left",
            distinct_entries(&mut map)
        );
        let slack = 4096.max(rss_before / 10);
        assert!(
            r.rss_flood <= rss_before + slack && r.rss_after <= rss_before + slack,
            "{mode}, round {round}: routerd's memory grew: {rss_before} kB -> {} kB (flood) -> {} kB (drained)",
            r.rss_flood,
            r.rss_after
        );
        if i > 0 {
            let first = rounds[0].rss_after;
            assert!(
                r.rss_after <= first + 2048,
                "{mode}, round {round}: routerd's memory grows from flood to flood: {first} kB after the first, {} kB now",
                r.rss_after
            );
        }
    }
    let established: BTreeSet<(String, &str, Ipv4Addr, Ipv4Addr, u16)> = left
        .iter()
        .map(|s| {
            let o = &s.original;
            (s.kind.clone(), s.state, o.src, o.dst, o.dport)
        })
        .collect();
    assert_eq!(
        established,
        BTreeSet::from([
            ("forward".to_string(), "ESTABLISHED", EXT, FIP_B, 80),
            ("snat".to_string(), "ESTABLISHED", VM_A, EXT, 5003),
        ]),
        "{mode}: after the drain only the two established sessions must remain: {left:#?}"
    );
    fresh.unwrap_or_else(|e| panic!("{mode}: a new connection after the drain failed: {e}"));
    drop(routerd);
}

#[test]
fn syn_flood_at_twice_capacity_xdp() {
    syn_flood(&FloodCase {
        mode: "xdp",
        max_sessions: 2048,
        preallocate_sessions: true,
        rounds: 1,
        flood: Duration::from_secs(3),
        syn_timeout: 3,
    });
}

/// The same with the session table made as sessions come (a node of many routers).
#[test]
fn syn_flood_at_twice_capacity_on_demand_tc() {
    syn_flood(&FloodCase {
        mode: "tc",
        max_sessions: 2048,
        preallocate_sessions: false,
        rounds: 1,
        flood: Duration::from_secs(3),
        syn_timeout: 3,
    });
}

#[test]
fn syn_flood_long_xdp() {
    if skip_unless_long("syn_flood_long_xdp") {
        return;
    }
    syn_flood(&FloodCase {
        mode: "xdp",
        max_sessions: 65_536,
        preallocate_sessions: true,
        rounds: 2,
        flood: Duration::from_secs(15),
        syn_timeout: 5,
    });
}

#[test]
fn syn_flood_long_tc() {
    if skip_unless_long("syn_flood_long_tc") {
        return;
    }
    syn_flood(&FloodCase {
        mode: "tc",
        max_sessions: 65_536,
        preallocate_sessions: true,
        rounds: 2,
        flood: Duration::from_secs(15),
        syn_timeout: 5,
    });
}

// ---------------------------------------------------------------------------------------
// Point 4: SNAT port exhaustion from one internal address

struct SnatCase {
    mode: &'static str,
    /// `snat_ports` = first..=last.
    first: u16,
    last: u16,
    /// New flows VM A opens to each of its two destinations (enough to exhaust them).
    per_destination: u16,
    pace: Duration,
}

/// A flow id: who (1 = VM A, 2 = VM B), which batch, which flow in it.
fn flow_id(vm: u64, batch: u64, i: u64) -> u64 {
    (vm << 40) | (batch << 24) | i
}

/// What the receivers saw of flows `ids` (received at most once each in this phase):
/// the translated source of each flow that arrived.
fn translated(
    seen: &[ReceivedDatagram],
    ids: &BTreeSet<u64>,
) -> BTreeMap<u64, (SocketAddrV4, SocketAddrV4)> {
    seen.iter()
        .filter(|s| ids.contains(&s.flow))
        .map(|s| (s.flow, (s.from, s.at)))
        .collect()
}

/// No translated tuple (source, source port, destination, destination port) carries two
/// flows, and no flow appears with two translations. `epoch` datagrams only: sessions of an
/// earlier epoch have ended, and their ports may be given out again.
fn assert_unique_tuples(what: &str, epoch: &[ReceivedDatagram]) {
    let mut by_tuple: BTreeMap<(SocketAddrV4, SocketAddrV4), BTreeSet<u64>> = BTreeMap::new();
    let mut by_flow: BTreeMap<u64, BTreeSet<(SocketAddrV4, SocketAddrV4)>> = BTreeMap::new();
    for s in epoch {
        by_tuple.entry((s.from, s.at)).or_default().insert(s.flow);
        by_flow.entry(s.flow).or_default().insert((s.from, s.at));
    }
    let shared: Vec<_> = by_tuple.iter().filter(|(_, f)| f.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "{what}: translated tuples carrying several flows: {shared:?}"
    );
    let moved: Vec<_> = by_flow.iter().filter(|(_, t)| t.len() > 1).collect();
    assert!(
        moved.is_empty(),
        "{what}: flows seen with several translations: {moved:?}"
    );
}

fn snat_gateway(router: &str) -> router_user::stats::GatewayStats {
    router_user::stats::collect_nat(Some(router))
        .unwrap_or_else(|e| panic!("reading router {router}'s NAT counters: {e}"))
        .gateways
        .into_iter()
        .next()
        .expect("one gateway")
}

fn snat_port_exhaustion(case: &SnatCase) {
    let t_test = Instant::now();
    let mode = case.mode;
    let range = usize::from(case.last - case.first) + 1;
    let n = case.per_destination;
    flood::raise_fd_limit(4 * u64::from(n) + 4096);
    let topo = RouterTopology::build(mode);
    // A second destination address behind the external host (routed via the gateway's
    // next hop).
    const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
    ip(&[
        "-n",
        &topo.ext_ns,
        "addr",
        "add",
        "203.0.113.7/32",
        "dev",
        "eth0",
    ]);
    append_config(
        &topo,
        &format!(
            "[router.nat]\nsnat_ports = \"{}-{}\"\n\n[router.nat.timeouts]\nudp = 2\nudp_stream = 2\n",
            case.first, case.last
        ),
    );
    let routerd = Routerd::start(&topo.config, &topo.router_id);
    let router = topo.router_id.as_str();
    let pid = routerd.pid().expect("routerd pid");
    let rss_before = rss_kib(pid);
    let d1 = SocketAddrV4::new(EXT, 7001);
    let d2 = SocketAddrV4::new(EXT, 7002);
    let d3 = SocketAddrV4::new(FAR, 7001);
    let rx = UdpCollector::start(&topo.ext_ns, &[d1, d2, d3]);
    let in_range = |p: u16| (case.first..=case.last).contains(&p);
    let settle = Duration::from_millis(400);
    let c0 = counters(router);
    let g0 = snat_gateway(router);

    // Phase 1: VM A opens `n` flows to each of d1 and d2 (source ports outside the range,
    // so every port is a random candidate).
    let mut spec = Vec::new();
    for i in 0..n {
        spec.push((flow_id(1, 1, u64::from(i)), 20_000 + i, d1));
        spec.push((flow_id(1, 2, u64::from(i)), 20_000 + n + i, d2));
    }
    let vm_a = UdpFlows::open(&topo.vm_a_ns, spec);
    let t1 = Instant::now();
    vm_a.send_all(case.pace);
    let sent_secs = t1.elapsed().as_secs_f64();
    thread::sleep(settle);
    let seen1 = rx.seen();
    let c1 = counters(router);
    let g1 = snat_gateway(router);
    let echoes1 = vm_a.echoes();
    let all1: BTreeSet<u64> = vm_a.flows.iter().map(|f| f.id).collect();
    let got1 = translated(&seen1, &all1);
    let refused1 = c1.reason("no_snat_port") - c0.reason("no_snat_port");
    let mut admitted: BTreeMap<SocketAddrV4, BTreeSet<u64>> = BTreeMap::new();
    let mut ports: BTreeMap<SocketAddrV4, BTreeSet<u16>> = BTreeMap::new();
    for (flow, (from, at)) in &got1 {
        admitted.entry(*at).or_default().insert(*flow);
        ports.entry(*at).or_default().insert(from.port());
        assert_eq!(
            *from.ip(),
            GW,
            "{mode}: flow {flow:#x} left as {from}, not as the gateway IP"
        );
        assert!(
            in_range(from.port()),
            "{mode}: flow {flow:#x} got port {} outside {}-{}",
            from.port(),
            case.first,
            case.last
        );
    }
    eprintln!(
        "== SNAT port exhaustion, {mode} mode, snat_ports {}-{} ({range} ports)",
        case.first, case.last
    );
    eprintln!(
        "   phase 1: VM A opened {} flows ({n} to each of {d1} and {d2}) in {sent_secs:.2} s: admitted {} / {} ({} distinct ports / {} distinct ports), no_snat_port {refused1}, sessions created {}, port collisions {}",
        2 * n,
        admitted.get(&d1).map_or(0, BTreeSet::len),
        admitted.get(&d2).map_or(0, BTreeSet::len),
        ports.get(&d1).map_or(0, BTreeSet::len),
        ports.get(&d2).map_or(0, BTreeSet::len),
        g1.sessions_created - g0.sessions_created,
        g1.port_collisions - g0.port_collisions
    );
    for d in [d1, d2] {
        assert_eq!(
            ports.get(&d).map_or(0, BTreeSet::len),
            range,
            "{mode}: VM A's flows to {d} did not take every port of the range (exhaustion)"
        );
        assert_eq!(
            admitted.get(&d).map_or(0, BTreeSet::len),
            range,
            "{mode}: more flows to {d} admitted than there are ports"
        );
    }
    assert_eq!(
        refused1,
        u64::from(2 * n) - 2 * range as u64,
        "{mode}: every flow beyond the range must be dropped as no_snat_port (and nothing else lost); reasons {:?}",
        c1.reasons_since(&c0)
    );
    assert_eq!(
        g1.sessions_created - g0.sessions_created,
        2 * range as u64,
        "{mode}: SNAT sessions created"
    );
    // Replies come back to the right flow, from the destination itself.
    for f in &vm_a.flows {
        let echoed = echoes1.get(&f.id).cloned().unwrap_or_default();
        if got1.contains_key(&f.id) {
            assert_eq!(
                echoed,
                vec![f.dst],
                "{mode}: flow {:#x} (port {}) -> {}: its echo",
                f.id,
                f.sport,
                f.dst
            );
        } else {
            assert!(
                echoed.is_empty(),
                "{mode}: refused flow {:#x} got echoes {echoed:?}",
                f.id
            );
        }
    }

    // Phase 2: the range is exhausted towards d1: VM A's new flows there are refused.
    let extra = 32u16;
    let more = UdpFlows::open(
        &topo.vm_a_ns,
        (0..extra)
            .map(|i| (flow_id(1, 3, u64::from(i)), 20_000 + 2 * n + i, d1))
            .collect(),
    );
    more.send_all(case.pace);
    // Phase 3: VM B (another address): refused towards d1 too (ports are claimed per
    // gateway IP and destination), but towards d3 it gets ports.
    let b_far = (range / 2).min(64) as u16;
    let b_near = 16u16;
    let mut spec_b = Vec::new();
    for i in 0..b_far {
        spec_b.push((flow_id(2, 1, u64::from(i)), 20_000 + i, d3));
    }
    for i in 0..b_near {
        spec_b.push((flow_id(2, 2, u64::from(i)), 21_000 + i, d1));
    }
    let vm_b = UdpFlows::open(&topo.vm_b_ns, spec_b);
    vm_b.send_all(case.pace);
    // Phase 4: every admitted flow of VM A sends again: established flows keep their port.
    let admitted_a: BTreeSet<u64> = got1.keys().copied().collect();
    vm_a.send_only(&admitted_a, case.pace);
    thread::sleep(settle);
    let seen4 = rx.seen();
    let c4 = counters(router);
    let g4 = snat_gateway(router);
    let entries4 = session_entries(router);
    let more_ids: BTreeSet<u64> = more.flows.iter().map(|f| f.id).collect();
    let got_more = translated(&seen4, &more_ids);
    let b_far_ids: BTreeSet<u64> = (0..b_far).map(|i| flow_id(2, 1, u64::from(i))).collect();
    let b_near_ids: BTreeSet<u64> = (0..b_near).map(|i| flow_id(2, 2, u64::from(i))).collect();
    let got_b_far = translated(&seen4, &b_far_ids);
    let got_b_near = translated(&seen4, &b_near_ids);
    let refused4 = c4.reason("no_snat_port") - c1.reason("no_snat_port");
    let again: Vec<&ReceivedDatagram> = seen4[seen1.len()..]
        .iter()
        .filter(|s| admitted_a.contains(&s.flow))
        .collect();
    let b_ports: BTreeSet<u16> = got_b_far.values().map(|(from, _)| from.port()).collect();
    eprintln!(
        "   phase 2-4: VM A {extra} more to {d1}: {} admitted; VM B {b_far} to {d3}: {} admitted ({} distinct ports), {b_near} to {d1}: {} admitted; no_snat_port +{refused4}; VM A's {} admitted flows again: {} arrived; {entries4} session entries",
        got_more.len(),
        got_b_far.len(),
        b_ports.len(),
        got_b_near.len(),
        admitted_a.len(),
        again.len()
    );
    assert!(
        got_more.is_empty() && got_b_near.is_empty(),
        "{mode}: new flows to the exhausted {d1} got through: VM A {got_more:?}, VM B {got_b_near:?}"
    );
    assert_eq!(
        refused4,
        u64::from(extra + b_near),
        "{mode}: flows to the exhausted destination counted as no_snat_port; reasons {:?}",
        c4.reasons_since(&c1)
    );
    assert_eq!(
        got_b_far.len(),
        usize::from(b_far),
        "{mode}: VM B's flows to {d3}, whose ports are free, must all get one"
    );
    for (flow, (from, _)) in &got_b_far {
        assert!(
            *from.ip() == GW && in_range(from.port()),
            "{mode}: VM B's flow {flow:#x} left as {from}"
        );
    }
    assert_eq!(
        again.len(),
        admitted_a.len(),
        "{mode}: established flows lost datagrams after the exhaustion"
    );
    assert_eq!(
        g4.sessions_created - g1.sessions_created,
        u64::from(b_far),
        "{mode}: sessions created in phases 2-4 (VM B's to {d3} only)"
    );
    assert_eq!(
        entries4,
        2 * (2 * range + usize::from(b_far)),
        "{mode}: session entries"
    );
    // Every datagram of this epoch: one flow per translated tuple, one tuple per flow.
    assert_unique_tuples(mode, &seen4);

    // Phase 5: the UDP timeout (2 s) ends every session; the ports are given out again.
    let t5 = Instant::now();
    wait_for(
        "the SNAT sessions to time out",
        Duration::from_secs(12),
        || session_entries(router) == 0,
    );
    let expired_after = t5.elapsed();
    let c5 = counters(router);
    let g5 = snat_gateway(router);
    let reuse_n = range as u16;
    let reuse = UdpFlows::open(
        &topo.vm_a_ns,
        (0..reuse_n)
            .map(|i| (flow_id(1, 4, u64::from(i)), 30_000 + i, d1))
            .collect(),
    );
    let before_reuse = rx.seen().len();
    reuse.send_all(case.pace);
    thread::sleep(settle);
    let seen5 = rx.seen();
    let c6 = counters(router);
    let g6 = snat_gateway(router);
    let reuse_ids: BTreeSet<u64> = reuse.flows.iter().map(|f| f.id).collect();
    let got5 = translated(&seen5, &reuse_ids);
    let refused5 = c6.reason("no_snat_port") - c5.reason("no_snat_port");
    let old_d1_ports = ports.get(&d1).cloned().unwrap_or_default();
    let reused = got5
        .values()
        .filter(|(from, _)| old_d1_ports.contains(&from.port()))
        .count();
    let rss_after = rss_kib(pid);
    eprintln!(
        "   phase 5: sessions gone {:.1} s after the last datagram; {reuse_n} new flows to {d1}: {} admitted (ports of the exhausted epoch: {reused}), no_snat_port +{refused5}; collisions over the test {}; sessions created {}",
        expired_after.as_secs_f64(),
        got5.len(),
        g6.port_collisions - g0.port_collisions,
        g6.sessions_created - g0.sessions_created
    );
    eprintln!(
        "   drops by reason over the test: {:?}",
        c6.reasons_since(&c0)
    );
    eprintln!(
        "   routerd VmRSS {:.1} MiB -> {:.1} MiB; test time {:.1} s",
        mib(rss_before),
        mib(rss_after),
        t_test.elapsed().as_secs_f64()
    );
    assert!(
        got5.len() * 4 >= range * 3,
        "{mode}: after the timeout only {} of {reuse_n} new flows got a port",
        got5.len()
    );
    assert_eq!(
        got5.len() as u64 + refused5,
        u64::from(reuse_n),
        "{mode}: new flows after the timeout: admitted + no_snat_port"
    );
    assert_eq!(
        g6.sessions_created - g5.sessions_created,
        got5.len() as u64,
        "{mode}: sessions created after the timeout"
    );
    for (flow, (from, _)) in &got5 {
        assert!(
            *from.ip() == GW && in_range(from.port()),
            "{mode}: flow {flow:#x} after the timeout left as {from}"
        );
    }
    assert_unique_tuples(mode, &seen5[before_reuse..]);
    drop(routerd);
}

#[test]
fn snat_port_exhaustion_xdp() {
    snat_port_exhaustion(&SnatCase {
        mode: "xdp",
        first: 40_000,
        last: 40_063,
        per_destination: 256,
        pace: Duration::from_micros(300),
    });
}

#[test]
fn snat_port_exhaustion_long_tc() {
    if skip_unless_long("snat_port_exhaustion_long_tc") {
        return;
    }
    snat_port_exhaustion(&SnatCase {
        mode: "tc",
        first: 40_000,
        last: 41_023,
        per_destination: 3_000,
        pace: Duration::from_micros(100),
    });
}
