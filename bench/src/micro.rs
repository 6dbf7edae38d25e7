//! Per-packet cost of the router's own programs (`router_xdp`, `router_tc`), measured in the
//! kernel with `BPF_PROG_TEST_RUN`, as the routing, floating-IP and session tables grow.
//!
//! # Setup
//!
//! One private network namespace ([`NetnsGuard`]) with three veth pairs: `in0` (internal,
//! 10.0.0.0/16, router 10.0.0.1), `fw0` (internal, 10.99.0.0/24, router 10.99.0.1, a
//! firewall at 10.99.0.2: the steering target) and `out0` (gateway interface,
//! 198.18.0.0/16, gateway IP 198.18.0.2, default route via 198.18.0.1). The maps are
//! written the way the controller writes them (`Datapath`'s setters), with XDP redirects
//! allowed into every interface.
//!
//! The policy is written as `Datapath::set_policy` writes it, once: one policy rule
//! (`iif in0 lookup 100`, table 100 holding only a default route via the firewall on `fw0`)
//! and [`FW_RULE_COUNT`] firewall rules, each in the first half of its array. Only the
//! steering and firewall rows turn them on: each row names the `POLICY_CONFIG` it runs
//! under (rule counts and firewall flags), written before its runs when it differs from
//! the live one (one map write, outside the timed runs), so every other row runs with no
//! rules and no firewall, as before.
//!
//! The object is loaded here rather than through `Datapath::load` because the route trie
//! must hold 100,000 routes and `Datapath::load` keeps the object's capacity
//! (`MAX_ROUTES` = 65,536): this module loads the same object
//! ([`router_user::datapath::EBPF_OBJECT`]) with `ROUTES` and `SESSIONS` sized for the run.
//! The programs, and how an LPM trie or a preallocated hash map is looked up, do not depend
//! on the capacity; a production router cannot hold more than 65,536 routes today.
//!
//! Table sizes vary one at a time from a baseline of 10 routes, 1 floating IP and 1,000
//! sessions: routes 1,000 and 100,000 (random /24 and /32 unicast routes via the upstream
//! gateway, outside every prefix the scenarios use, on top of the 8 the router needs; the
//! size is the trie's total), 10,000 floating IPs, 1,000,000 sessions (two `SESSIONS`
//! entries each, well-formed SNAT pairs in a zone no interface uses, so they are only ever
//! bucket neighbours of the measured flows). The baseline is measured once and reported
//! under each of the three dimensions.
//!
//! # Scenarios (60-byte UDP frames, except the floor)
//!
//! - `route_only`: external host -> internal host without a floating IP (routed, untranslated);
//! - `route_only_cold`: the same with the routes' epoch at 0, which no cached lookup is used
//!   at: the route lookup misses each CPU's route cache, goes to the trie and writes the
//!   cache, as a flow's first packet does;
//! - `fip_in`: external host -> floating IP (DNAT to the fixed IP);
//! - `fip_out`: fixed IP with a floating IP -> external host (stateless SNAT to the floating IP);
//! - `snat_established`: internal host without a floating IP -> external host, its session
//!   created by one earlier run of the same frame;
//! - `snat_new`: the same, with a new source port (so a new session, two inserts) each packet;
//! - `steering`: internal host -> external host, matched by the `iif in0` policy rule, whose
//!   table sends it to the firewall's address on `fw0` (forwarded there untranslated: two
//!   lookups in table 100, the rule's check and the route's);
//! - `firewall_established`: the firewall on (10 rules, default deny), internal host without
//!   a floating IP -> external host, its SNAT session created by one earlier run of the same
//!   frame (which walked the rules): accepted as established (compare `snat_established`);
//! - `firewall_new`: the firewall on, the fixed IP with a floating IP -> external host with a
//!   new source port each packet: no rule matches but the last (an allow), so every packet
//!   walks all 10 and creates a forward session (two inserts), and leaves as the floating IP
//!   (compare `fip_out`, the same packet untracked, and `snat_new`);
//! - `floor_arp_pass`: an ARP request on the internal interface, handed to the kernel at
//!   once (parse, one interface lookup, counters): the floor under every other row.
//!
//! Every forwarding scenario is first run once with its output checked (verdict redirect,
//! addresses, destination MAC, checksums by etherparse), and every measurement then checks
//! each run's verdict and that the interface's forwarded (or passed) counter grew by exactly
//! the number of runs (and, for the firewall rows, that the firewall counted every run in
//! the expected slot: established, or the allow rule), so a misconfigured scenario fails
//! loudly instead of timing a pass.
//!
//! # Methods: why most rows are "single-runs"
//!
//! `BPF_PROG_TEST_RUN` with `repeat = N` runs the program N times **on the same buffer**:
//! the kernel does not restore the frame between repetitions. A router rewrites every frame
//! it forwards (MACs, TTL, addresses, ports), so from the second repetition on it would be
//! timing a different packet: a frame whose destination MAC is no longer the router's
//! (`NotRouterMac`), after 63 repetitions one whose TTL expired, after a DNAT one already
//! translated, after a SNAT a packet from the gateway IP that would create a new session
//! every repetition. So:
//!
//! - `single-runs` (every scenario): the mean of many runs with `repeat = 1`, each on a
//!   fresh copy of the frame. Each run's `duration` is the kernel's own measurement around
//!   the program (no syscall, no copying of the frame), but it includes one clock read and
//!   the test loop's per-run bookkeeping, and the program starts with caches the syscall
//!   path has partly disturbed. `snat_new` and `firewall_new` can only be measured this way
//!   (a new flow per packet needs a new frame per packet; their sessions are removed after
//!   each pass, so the table keeps its nominal size), and the established scenarios are
//!   measured the same way so that they are directly comparable. Means drop the slowest
//!   1 % of runs (a hypervisor preempting a 100 ns run for a millisecond would otherwise
//!   dominate them).
//! - `repeat` (only where it is valid): `floor_arp_pass` (the frame is never written), and
//!   `route_only`, whose frame is made to survive its own rewrite: TTL 255 and repeat 250
//!   per call (so the TTL never expires), and the internal host's MAC set to the router's
//!   external MAC (so the rewritten frame is again addressed to the router). Calls are
//!   repeated until the total reaches 1,000,000 (100,000 in quick mode). These rows are the
//!   hot-cache cost without per-run overhead. The gap between the two methods on these two
//!   scenarios is that overhead: it grows with what the program touches (the caches the
//!   syscall path disturbed), so the floor's gap is its lower bound and `route_only`'s a
//!   fair estimate for the other scenarios.
//!
//! Every setup is loaded and checked first, each router with its own maps; then the runs
//! of each row are made in [`BLOCKS`] passes over every row of every setup, and the row is
//! its median pass (each pass's mean). The passes of one row thus lie seconds apart, and a
//! disturbance shorter than that moves no row. Such disturbances are common on a shared
//! virtual machine: while this was written, with nothing else running in the VM, the host
//! slowed this vCPU down (to about half speed) a dozen times in 20 s, for up to 1.5 s each.
//! To keep them out of the passes too, each pass is bracketed by two probes of the host's
//! speed (the floor, [`PROBE_RUNS`] repeated runs, under 0.5 ms) and made again, up to
//! [`MAX_ATTEMPTS`] times, when either probe is more than [`SLOW_FACTOR`] times slower than
//! the fastest probe so far; `progress` reports how many passes that took (a fifth to a
//! quarter of them then). With both, three full runs agreed within about 3 % per row
//! (`snat_new`, with fewer runs, within about 10 %).

//! The XDP program is attached (to a spare veth no router interface uses) for the whole
//! run, as a running router's is. That matters twice: the kernel then calls it directly
//! through its XDP dispatcher, in test runs as on a NIC (unattached, every run would go
//! through an indirect call, a retpoline on this kind of host); and a test run with
//! `repeat > 1` of an unattached XDP program re-patches the dispatcher twice per call
//! (about 25 ms per call here, which made the batched `route_only` rows take minutes).
//! TC programs are always called indirectly, in test runs as under tcx.
//!
//! Nothing here is an absolute NIC-to-NIC figure: the XDP rows exclude the driver and the
//! redirect itself (test runs only record the redirect target), the TC rows exclude the
//! skb allocation and the redirect.

use std::collections::HashSet;

use anyhow::{Context, anyhow, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, Map, PerCpuArray, PerCpuHashMap, PerCpuValues,
        lpm_trie::Key,
    },
    programs::{SchedClassifier, Xdp, XdpMode},
    util::nr_cpus,
};
use router_common::{
    CtEntry, CtKey, FipEntry, FipFilter, FipStats, FwRule, FwStats, IfaceEntry, IfaceForwarded,
    IfaceIndexed, IfaceStats, MAX_IFACES, NatConfig, NeighborCopy, NeighborEntry, NeighborKey, Net,
    PolicyConfig, PolicyRule, Reason, RouteEntry, RouteKey, TABLE_MAIN, ct_dir, ct_kind, fw_action,
    fw_flags, fw_slot, iface_flags, iface_role, map_names, nat_flags, prog_names, route_kind,
};
use router_tests::{
    fixture::{iface, route, veth_pairs},
    frames::{Addresses, BROADCAST_MAC, ROUTER_IN_MAC, ROUTER_OUT_MAC, eth},
    netns::NetnsGuard,
    topo::ifindex,
};
use router_user::{
    datapath::EBPF_OBJECT,
    testrun::{self, Entry, Run},
};

/// One measurement: the program `entry` on `scenario` with one table at `size`.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct MicroResult {
    pub scenario: String,
    /// `"xdp"` or `"tc"`.
    pub entry: String,
    /// `"routes"`, `"floating_ips"` or `"sessions"`: the table that was varied.
    pub dimension: String,
    pub size: u64,
    pub ns_per_packet: f64,
    /// `"repeat"` or `"single-runs"` (see the module documentation).
    pub method: String,
}

/// The tables every scenario starts from; each is grown alone from here.
const BASELINE: Tables = Tables {
    routes: 10,
    fips: 1,
    sessions: 1_000,
};

impl MicroResult {
    /// Whether this row measured the baseline tables: the same measurement stands for every
    /// table at its baseline size.
    pub fn is_baseline(&self) -> bool {
        let size = match self.dimension.as_str() {
            "routes" => BASELINE.routes,
            "floating_ips" => BASELINE.fips,
            "sessions" => BASELINE.sessions,
            _ => return false,
        };
        self.size == u64::from(size)
    }
}

/// Runs every measurement (see the module documentation) and returns one row per
/// (scenario, entry, method, dimension, size). `progress` hears of each step before it runs.
pub fn run_all(quick: bool, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<MicroResult>> {
    let plan = Plan::new(quick);
    let base = BASELINE;
    let setups = [
        (
            base,
            vec![
                ("routes", u64::from(base.routes)),
                ("floating_ips", u64::from(base.fips)),
                ("sessions", u64::from(base.sessions)),
            ],
        ),
        (
            Tables {
                routes: 1_000,
                ..base
            },
            vec![("routes", 1_000)],
        ),
        (
            Tables {
                routes: 100_000,
                ..base
            },
            vec![("routes", 100_000)],
        ),
        (
            Tables {
                fips: 10_000,
                ..base
            },
            vec![("floating_ips", 10_000)],
        ),
        (
            Tables {
                sessions: 1_000_000,
                ..base
            },
            vec![("sessions", 1_000_000)],
        ),
    ];
    let _ns = private_namespace(setups.len());
    // Every setup is loaded and checked first; then each pass measures every row of every
    // setup, so that the passes of one row lie seconds apart.
    let mut loaded = Vec::new();
    for (index, (tables, dims)) in setups.iter().enumerate() {
        let label = match dims.as_slice() {
            [_, _, _] => "baseline".to_string(),
            [(dim, size)] => format!("{} {}", human(*size), dim_label(dim)),
            _ => unreachable!("one dimension or the baseline"),
        };
        let mut router = Router::new(tables, &plan, &label, &spare_dev(index), progress)?;
        let mut entries = Vec::new();
        for entry in [Entry::Xdp, Entry::Tc] {
            progress(&format!(
                "micro: checking every scenario, {} ({label})",
                entry.name()
            ));
            let rows = router.check_scenarios(entry, &plan)?;
            let values = vec![Vec::with_capacity(BLOCKS); rows.len()];
            entries.push((entry, rows, values));
        }
        loaded.push((router, label, entries));
    }
    // The fastest probes before measuring anything, so that the first passes are judged
    // too (spread over a few hundred milliseconds: a slowdown lasts up to about 1.5 s).
    let mut speed = Speed::default();
    if let Some((router, _, _)) = loaded.first_mut() {
        progress("micro: probing the host's speed");
        for _ in 0..CALIBRATION_PROBES {
            for entry in [Entry::Xdp, Entry::Tc] {
                let probe = router.probe(entry)?;
                speed.normal(entry, probe);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    for pass in 0..BLOCKS {
        for (router, label, entries) in &mut loaded {
            for (entry, rows, values) in entries.iter_mut() {
                let entry = *entry;
                if pass > 0 {
                    progress(&format!(
                        "micro: {} rows, {label}, pass {} of {BLOCKS}",
                        entry.name(),
                        pass + 1
                    ));
                }
                for (row, values) in rows.iter().zip(values.iter_mut()) {
                    if pass == 0 {
                        progress(&format!(
                            "micro: {}, {} {}, {label}",
                            row.scenario,
                            entry.name(),
                            row.kind.method()
                        ));
                    }
                    let ns = router
                        .measure_row_gated(entry, row, &mut speed)
                        .with_context(|| format!("{} ({}, {label})", row.scenario, entry.name()))?;
                    values.push(ns);
                }
            }
        }
    }
    if speed.retries > 0 {
        progress(&format!(
            "micro: {} passes measured again because the host had slowed down ({} kept anyway)",
            speed.retries, speed.kept_slow
        ));
    }
    let mut results = Vec::new();
    for ((_, _, entries), (_, dims)) in loaded.into_iter().zip(&setups) {
        for (entry, rows, values) in entries {
            for (row, mut values) in rows.iter().zip(values) {
                let ns = median(&mut values);
                for (dimension, size) in dims {
                    results.push(MicroResult {
                        scenario: row.scenario.to_string(),
                        entry: entry.name().to_string(),
                        dimension: dimension.to_string(),
                        size: *size,
                        ns_per_packet: ns,
                        method: row.kind.method().to_string(),
                    });
                }
            }
        }
    }
    Ok(results)
}

/// One row looped for `routerbench --profile`: what it ran, and the kernel's own timing of
/// those runs (the same figure the benchmark's row reports, here over the whole loop).
#[derive(serde::Serialize, Clone, Debug)]
pub struct LoopStats {
    pub scenario: String,
    pub entry: String,
    pub method: String,
    /// Program runs made in the loop.
    pub runs: u64,
    /// The kernel's mean time per run over the loop (`repeat`: per call / batch; single
    /// runs: the mean of the runs, the slowest 1 % of each pass left out).
    pub ns_per_packet: f64,
    pub seconds: f64,
}

/// What [`profile_loops`] hands each row to: its label, and the loop to run.
pub type ProfileHook<'a> =
    dyn FnMut(&str, &mut dyn FnMut() -> anyhow::Result<LoopStats>) -> anyhow::Result<()> + 'a;

/// For `routerbench --profile`: the baseline router of [`run_all`] (10 routes, 1 floating
/// IP, 1,000 sessions; its own namespace, gone on return), every scenario checked as there,
/// then each of `wanted` (scenario, `"xdp"`/`"tc"`, `"repeat"`/`"single-runs"`) run in a
/// loop of whole passes for about `duration`, inside `around`, which is handed the row's
/// label and the loop to call (a profiler starts before and stops after it). The runs are
/// the benchmark's own (`Router::measure_row`: verdicts and counters checked on every pass);
/// the host-speed probes are left out.
pub fn profile_loops(
    wanted: &[(&str, &str, &str)],
    duration: std::time::Duration,
    progress: &mut dyn FnMut(&str),
    around: &mut ProfileHook<'_>,
) -> anyhow::Result<()> {
    let plan = Plan::new(false);
    let tables = Tables {
        routes: 10,
        fips: 1,
        sessions: 1_000,
    };
    let _ns = private_namespace(1);
    let mut router = Router::new(&tables, &plan, "baseline", &spare_dev(0), progress)?;
    let mut rows = Vec::new();
    for entry in [Entry::Xdp, Entry::Tc] {
        progress(&format!(
            "profile: checking every scenario, {} (baseline)",
            entry.name()
        ));
        rows.push((entry, router.check_scenarios(entry, &plan)?));
    }
    for &(scenario, entry_name, method) in wanted {
        let (entry, row) = rows
            .iter()
            .filter(|(e, _)| e.name() == entry_name)
            .flat_map(|(e, rows)| rows.iter().map(move |r| (*e, r)))
            .find(|(_, r)| r.scenario == scenario && r.kind.method() == method)
            .ok_or_else(|| anyhow!("no micro row {scenario} {entry_name} {method}"))?;
        let label = format!("{scenario} {entry_name} {method}");
        let router = &mut router;
        let mut run_loop = || -> anyhow::Result<LoopStats> {
            let start = std::time::Instant::now();
            let (mut runs, mut ns_total) = (0u64, 0.0);
            while start.elapsed() < duration {
                let ns = router
                    .measure_row(entry, row)
                    .with_context(|| format!("{scenario} ({entry_name})"))?;
                let made = row.kind.runs_made();
                runs += made;
                ns_total += ns * made as f64;
            }
            Ok(LoopStats {
                scenario: scenario.into(),
                entry: entry_name.into(),
                method: method.into(),
                runs,
                ns_per_packet: ns_total / runs.max(1) as f64,
                seconds: start.elapsed().as_secs_f64(),
            })
        };
        around(&label, &mut run_loop)?;
    }
    Ok(())
}

/// A fresh namespace with the routers' three veth pairs and `spares` spare ones; the thread
/// returns to its namespace, and everything in this one vanishes, when the guard drops.
fn private_namespace(spares: usize) -> NetnsGuard {
    let ns = NetnsGuard::new();
    veth_pairs(&[("in0", "in1"), ("fw0", "fw1"), ("out0", "out1")]);
    for index in 0..spares {
        let (dev, peer) = (spare_dev(index), format!("xdppeer{index}"));
        veth_pairs(&[(dev.as_str(), peer.as_str())]);
    }
    ns
}

/// The veth the XDP program of router `index` is attached to: not one of the router's
/// interfaces, and one per router, as a device takes one XDP program. It is attached only
/// so that the kernel's XDP dispatcher calls the program directly (see "Methods"); whatever
/// arrives there is an unknown ingress, passed and not counted.
fn spare_dev(index: usize) -> String {
    format!("xdpspare{index}")
}

/// How long each measurement runs.
struct Plan {
    /// Program runs of a `repeat` row, all passes together.
    repeat: u32,
    /// Runs of a single-run row of a steady scenario, all passes together.
    single_runs: u32,
    /// Runs (new sessions) of a `snat_new` or `firewall_new` row, all passes together.
    new_flows: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                repeat: 100_000,
                single_runs: 2_000,
                new_flows: 200,
            }
        } else {
            Self {
                repeat: 1_000_000,
                single_runs: 100_000,
                new_flows: 2_000,
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Tables {
    /// Routes in the trie, the 5 the router needs included.
    routes: u32,
    /// Floating IPs, the measured one included.
    fips: u32,
    /// Synthetic SNAT sessions (two entries each).
    sessions: u32,
}

/// What every run of a measurement must do with its packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Forward,
    Pass,
}

const GW: [u8; 4] = [198, 18, 0, 2];
const UPSTREAM: [u8; 4] = [198, 18, 0, 1];
const ROUTER_IN_IP: [u8; 4] = [10, 0, 0, 1];
const FIP: [u8; 4] = [198, 18, 0, 10];
const FIXED: [u8; 4] = [10, 0, 1, 5];
/// Internal host of `snat_established`.
const VM_EST: [u8; 4] = [10, 0, 1, 6];
/// Internal host of `snat_new`.
const VM_NEW: [u8; 4] = [10, 0, 1, 7];
/// Internal host of `route_only` (no floating IP).
const ROUTE_HOST: [u8; 4] = [10, 0, 1, 20];
/// Internal host of `steering` (no floating IP).
const STEER_HOST: [u8; 4] = [10, 0, 1, 8];
/// Internal host of `firewall_established` (no floating IP: SNAT).
const VM_FW_EST: [u8; 4] = [10, 0, 1, 9];
const ROUTER_FW_IP: [u8; 4] = [10, 99, 0, 1];
const ROUTER_FW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x40];
/// The firewall on `fw0` that steered packets are sent to.
const FIREWALL: [u8; 4] = [10, 99, 0, 2];
const FIREWALL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xf2];
/// The table of the steering rule: only a default route via [`FIREWALL`].
const T_STEER: u32 = 100;
/// Firewall rules of the firewall rows (see [`firewall_rules`]).
const FW_RULE_COUNT: u32 = 10;
const REMOTE: [u8; 4] = [203, 0, 113, 9];
const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x55];
const UPSTREAM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];
/// `ROUTE_HOST`'s MAC is the router's external MAC, so that a `route_only` frame, once
/// rewritten, is again addressed to the router (see "Methods" above).
const ROUTE_HOST_MAC: [u8; 6] = ROUTER_OUT_MAC;
/// Zone of the synthetic sessions: no interface has it, so no packet ever matches them.
const SYNTH_ZONE: u16 = 0x5a5a;
const EST_SPORT: u16 = 5555;
/// Source port of `firewall_established` (its SNAT keeps it: `EST_SPORT` is taken).
const FW_EST_SPORT: u16 = 5556;
/// First source port of the new-flow rows (each setup counts up from here).
const NEW_SPORT_BASE: u16 = 20_000;
/// Repetitions per call of the `route_only` repeat rows: the TTL (255) never expires.
const ROUTE_REPEAT_BATCH: u32 = 250;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Routes every setup has: connected and local routes of the three interfaces, the
/// default, and the steering table's default.
const NEEDED_ROUTES: u32 = 8;
/// Repeated runs of the floor that probe the host's speed before and after each pass.
const PROBE_RUNS: u32 = 10_000;
/// Probes of each entry before the first pass (10 ms apart).
const CALIBRATION_PROBES: u32 = 200;
/// A probe this much slower than the fastest one means the host slowed down.
const SLOW_FACTOR: f64 = 1.25;
/// Attempts at one pass before it is kept however slow the host was.
const MAX_ATTEMPTS: u32 = 5;
/// Interleaved passes each row's runs are split into; the row is the median pass.
const BLOCKS: usize = 5;

/// The programs and maps of one router, configured for one setup.
struct Router {
    ebpf: Ebpf,
    inside: u32,
    /// The firewall's leg (internal), the steering target.
    fw: u32,
    outside: u32,
    /// Next source port of a new-flow row.
    next_sport: u16,
    /// The `POLICY_CONFIG` last written.
    live_policy: PolicyConfig,
}

impl Router {
    fn new(
        t: &Tables,
        plan: &Plan,
        label: &str,
        spare: &str,
        progress: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Self> {
        progress(&format!("micro: loading the router ({label})"));
        // Two entries per synthetic session, and more than enough for the new flows of one
        // pass (removed after it) and the few sessions the checks create.
        let session_entries = 2 * t.sessions + 4 * plan.new_flows + 1_024;
        let route_entries = router_common::MAX_ROUTES.max(t.routes + 1_024);
        let mut loader = EbpfLoader::new();
        router_user::datapath::features::configure(&mut loader);
        let mut ebpf = loader
            .map_max_entries(map_names::SESSIONS, session_entries)
            .map_max_entries(map_names::ROUTES, route_entries)
            .load(EBPF_OBJECT)
            .context("loading the router's eBPF object")?;
        let xdp: &mut Xdp = program_mut(&mut ebpf, prog_names::XDP)?.try_into()?;
        xdp.load().context("loading the XDP program")?;
        // Attached, the program sits in the kernel's XDP dispatcher (see "Methods").
        xdp.attach_to_if_index(ifindex(spare), XdpMode::Driver)
            .with_context(|| format!("attaching the XDP program to {spare}"))?;
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, prog_names::TC)?.try_into()?;
        tc.load().context("loading the TC program")?;
        let mut router = Self {
            ebpf,
            inside: ifindex("in0"),
            fw: ifindex("fw0"),
            outside: ifindex("out0"),
            next_sport: NEW_SPORT_BASE,
            live_policy: PolicyConfig::default(),
        };
        router.configure(t, label, progress)?;
        Ok(router)
    }

    fn configure(
        &mut self,
        t: &Tables,
        label: &str,
        progress: &mut dyn FnMut(&str),
    ) -> anyhow::Result<()> {
        let (inside, fw, outside) = (self.inside, self.fw, self.outside);
        let entry = |mac, role| iface(mac, role, iface_flags::XDP_EGRESS);
        self.set_iface(inside, entry(ROUTER_IN_MAC, iface_role::INTERNAL))?;
        self.set_iface(fw, entry(ROUTER_FW_MAC, iface_role::INTERNAL))?;
        self.set_iface(outside, entry(ROUTER_OUT_MAC, iface_role::EXTERNAL))?;
        {
            let mut devs: DevMapHash<_> = typed(&mut self.ebpf, map_names::EGRESS_DEVS)?;
            for dev in [inside, fw, outside] {
                devs.insert(dev, dev, None, 0)
                    .map_err(|e| anyhow!("EGRESS_DEVS[{dev}]: {e}"))?;
            }
        }
        {
            let mut known = vec![
                (outside, UPSTREAM, UPSTREAM_MAC),
                (fw, FIREWALL, FIREWALL_MAC),
            ];
            for vm in [FIXED, VM_EST, VM_NEW, STEER_HOST, VM_FW_EST] {
                known.push((inside, vm, VM_MAC));
            }
            known.push((inside, ROUTE_HOST, ROUTE_HOST_MAC));
            let known: Vec<_> = known
                .into_iter()
                .map(|(ifindex, addr, mac)| {
                    let entry = NeighborEntry { mac, _pad: [0; 2] };
                    (NeighborKey { ifindex, addr }, entry)
                })
                .collect();
            let mut neighbors: HashMap<_, NeighborKey, NeighborEntry> =
                typed(&mut self.ebpf, map_names::NEIGHBORS)?;
            for (key, entry) in &known {
                neighbors.insert(key, entry, 0)?;
            }
            // Each neighbour's copy where its slot is free, as the controller writes them.
            let mut copies: Array<_, NeighborCopy> =
                typed(&mut self.ebpf, map_names::NEIGHBOR_COPIES)?;
            for (key, entry) in known {
                if copies.get(&key.copy_slot(), 0)?.key.ifindex == 0 {
                    copies.set(key.copy_slot(), NeighborCopy { key, entry }, 0)?;
                }
            }
        }
        {
            let mut cfg: Array<_, NatConfig> = typed(&mut self.ebpf, map_names::NAT_CONFIG)?;
            let nat = NatConfig {
                gateway_ip: GW,
                gateway_ifindex: outside,
                flags: nat_flags::GATEWAY | nat_flags::SNAT,
                port_min: 1024,
                port_max: 65535,
                ..NatConfig::default()
            };
            cfg.set(0, nat, 0)?;
        }
        if t.routes >= 1_000 {
            progress(&format!(
                "micro: writing {} routes ({label})",
                human(t.routes.into())
            ));
        }
        self.write_routes(t.routes)?;
        if t.fips >= 1_000 {
            progress(&format!(
                "micro: writing {} floating IPs ({label})",
                human(t.fips.into())
            ));
        }
        self.write_floating_ips(t.fips)?;
        self.write_policy()?;
        if t.sessions >= 100_000 {
            progress(&format!(
                "micro: writing {} sessions ({label})",
                human(t.sessions.into())
            ));
        }
        self.write_sessions(t.sessions)
    }

    /// Sets interface `ifindex`, in the next free counter slot (as routerd gives them).
    fn set_iface(&mut self, ifindex: u32, entry: IfaceEntry) -> anyhow::Result<()> {
        let mut ifaces: HashMap<_, u32, IfaceEntry> = typed(&mut self.ebpf, map_names::IFACES)?;
        let slot = ifaces.keys().count() as u16;
        let entry = IfaceEntry { slot, ..entry };
        ifaces.insert(ifindex, entry, 0)?;
        // The copy at the ifindex, as the controller writes it.
        if ifindex < MAX_IFACES {
            let mut copies: Array<_, IfaceIndexed> =
                typed(&mut self.ebpf, map_names::IFACES_BY_INDEX)?;
            copies.set(ifindex, IfaceIndexed { ifindex, entry }, 0)?;
        }
        let mut stats: PerCpuHashMap<_, u32, IfaceStats> =
            typed(&mut self.ebpf, map_names::IFACE_STATS)?;
        stats.insert(ifindex, per_cpu_zero::<IfaceStats>()?, 0)?;
        Ok(())
    }

    /// The routes the router needs, plus random /24 and /32 routes via the upstream gateway
    /// up to `total`, none of them inside a prefix the scenarios use.
    fn write_routes(&mut self, total: u32) -> anyhow::Result<()> {
        let (inside, fw, outside) = (self.inside, self.fw, self.outside);
        let mut trie: LpmTrie<_, RouteKey, RouteEntry> = typed(&mut self.ebpf, map_names::ROUTES)?;
        let mut add_to = |table: u32, addr: [u8; 4], len: u32, entry: RouteEntry| {
            let key = Key::new(RouteKey::TABLE_BITS + len, RouteKey::new(table, addr));
            trie.insert(&key, entry, 0)
        };
        add_to(T_STEER, [0; 4], 0, route(route_kind::UNICAST, fw, FIREWALL))?;
        let mut add = |addr, len, entry| add_to(TABLE_MAIN, addr, len, entry);
        add(
            [10, 0, 0, 0],
            16,
            route(route_kind::UNICAST, inside, [0; 4]),
        )?;
        add(ROUTER_IN_IP, 32, route(route_kind::LOCAL, 0, [0; 4]))?;
        add([10, 99, 0, 0], 24, route(route_kind::UNICAST, fw, [0; 4]))?;
        add(ROUTER_FW_IP, 32, route(route_kind::LOCAL, 0, [0; 4]))?;
        add(
            [198, 18, 0, 0],
            16,
            route(route_kind::UNICAST, outside, [0; 4]),
        )?;
        add(GW, 32, route(route_kind::LOCAL, 0, [0; 4]))?;
        add([0; 4], 0, route(route_kind::UNICAST, outside, UPSTREAM))?;
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut seen = HashSet::new();
        let via_upstream = route(route_kind::UNICAST, outside, UPSTREAM);
        while (seen.len() as u32) < total.saturating_sub(NEEDED_ROUTES) {
            let addr = (rng.next() >> 32) as u32;
            let len = if seen.len() % 2 == 0 { 24 } else { 32 };
            let addr = (if len == 24 { addr & !0xff } else { addr }).to_be_bytes();
            if reserved(addr) || !seen.insert((addr, len)) {
                continue;
            }
            add(addr, len, via_upstream)?;
        }
        // The routes changed: a new epoch, as the controller writes it.
        self.next_route_epoch()
    }

    /// Moves the routes' epoch on, as the controller does after it changes `ROUTES`.
    fn next_route_epoch(&mut self) -> anyhow::Result<()> {
        let next = self.route_epoch()?.wrapping_add(1).max(1);
        self.set_route_epoch(next)
    }

    fn route_epoch(&mut self) -> anyhow::Result<u32> {
        let epoch: Array<_, u32> = typed(&mut self.ebpf, map_names::ROUTE_EPOCH)?;
        Ok(epoch.get(&0, 0)?)
    }

    fn set_route_epoch(&mut self, value: u32) -> anyhow::Result<()> {
        let mut epoch: Array<_, u32> = typed(&mut self.ebpf, map_names::ROUTE_EPOCH)?;
        epoch.set(0, value, 0)?;
        Ok(())
    }

    /// The measured floating IP (`FIP` for `FIXED`) and `total - 1` others, written as
    /// `Datapath::set_floating_ip` writes them (counters included).
    fn write_floating_ips(&mut self, total: u32) -> anyhow::Result<()> {
        let mut pairs = vec![(FIP, FIXED)];
        for k in 1..total {
            let (hi, lo) = ((k / 250) as u8, (k % 250) as u8);
            pairs.push(([198, 18, 1 + hi, 1 + lo], [10, 0, 100 + hi, 1 + lo]));
        }
        {
            let cpus = nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
            let mut stats: PerCpuHashMap<_, [u8; 4], FipStats> =
                typed(&mut self.ebpf, map_names::FIP_STATS)?;
            for (fip, _) in &pairs {
                let zero = PerCpuValues::try_from(vec![FipStats::default(); cpus])?;
                stats.insert(fip, zero, 0)?;
            }
        }
        let entry = |addr| FipEntry { addr, _pad: 0 };
        {
            let mut by_fixed: HashMap<_, [u8; 4], FipEntry> =
                typed(&mut self.ebpf, map_names::FIP_BY_FIXED)?;
            for (fip, fixed) in &pairs {
                by_fixed.insert(fixed, entry(*fip), 0)?;
            }
        }
        let mut by_address: HashMap<_, [u8; 4], FipEntry> =
            typed(&mut self.ebpf, map_names::FIP_BY_ADDRESS)?;
        for (fip, fixed) in &pairs {
            by_address.insert(fip, entry(*fixed), 0)?;
        }
        // The filter in front of both tables, as the controller writes it after them.
        let filter = router_user::maps::nat::filter_of(&pairs.iter().copied().collect());
        let mut map: Array<_, FipFilter> = typed(&mut self.ebpf, map_names::FIP_FILTER)?;
        map.set(0, filter, 0)?;
        Ok(())
    }

    /// The steering rule and the firewall rules, in the first half of `RULES` and
    /// `FW_RULES`, as `Datapath::set_policy` writes them; live only while a row's
    /// `POLICY_CONFIG` counts them (see [`Router::use_policy`]).
    fn write_policy(&mut self) -> anyhow::Result<()> {
        let steer = PolicyRule {
            iif: self.inside,
            from: Net::ANY,
            to: Net::ANY,
            table: T_STEER,
        };
        let mut rules: Array<_, PolicyRule> = typed(&mut self.ebpf, map_names::RULES)?;
        rules.set(0, steer, 0)?;
        let mut fw: Array<_, FwRule> = typed(&mut self.ebpf, map_names::FW_RULES)?;
        for (i, rule) in firewall_rules().into_iter().enumerate() {
            fw.set(i as u32, rule, 0)?;
        }
        self.use_policy(PolicyConfig::default())
    }

    /// Makes `policy` the live `POLICY_CONFIG` (one write, only when it changes).
    fn use_policy(&mut self, policy: PolicyConfig) -> anyhow::Result<()> {
        if policy != self.live_policy {
            let mut cfg: Array<_, PolicyConfig> = typed(&mut self.ebpf, map_names::POLICY_CONFIG)?;
            cfg.set(0, policy, 0)?;
            self.live_policy = policy;
        }
        Ok(())
    }

    /// `count` synthetic SNAT sessions in [`SYNTH_ZONE`], both entries of each.
    fn write_sessions(&mut self, count: u32) -> anyhow::Result<()> {
        let mut sessions: HashMap<_, CtKey, CtEntry> = typed(&mut self.ebpf, map_names::SESSIONS)?;
        for i in 0..count {
            let [(k1, e1), (k2, e2)] = synthetic_session(i);
            sessions
                .insert(k1, e1, 0)
                .with_context(|| format!("synthetic session {i}"))?;
            sessions
                .insert(k2, e2, 0)
                .with_context(|| format!("synthetic session {i}"))?;
        }
        Ok(())
    }

    /// Runs every scenario once with its output checked, and returns the rows to measure,
    /// each with the runs of one pass.
    fn check_scenarios(&mut self, entry: Entry, plan: &Plan) -> anyhow::Result<Vec<Row>> {
        let (inside, outside) = (self.inside, self.outside);
        let per_pass = |n: u32| (n / BLOCKS as u32).max(1);
        let single = |n: u32| Kind::Single { runs: per_pass(n) };
        let mut rows = Vec::new();

        // The floor: an ARP request on the internal interface goes to the kernel at once.
        let arp = arp_request(ROUTE_HOST, ROUTER_IN_IP);
        let floor = |kind| Row {
            expect: Expect::Pass,
            ..Row::forward("floor_arp_pass", inside, arp.clone(), kind)
        };
        let runs = per_pass(plan.repeat);
        rows.push(floor(Kind::Repeat { runs, batch: runs }));
        rows.push(floor(single(plan.single_runs)));

        // route_only: external host -> internal host without a floating IP.
        let f = udp(ROUTER_OUT_MAC, REMOTE, 53, ROUTE_HOST, 5000, 64);
        let want = Addresses::new(ROUTE_HOST_MAC, REMOTE, 53, ROUTE_HOST, 5000);
        self.check_forward("route_only", entry, outside, &f, &want)?;
        rows.push(Row::forward(
            "route_only",
            outside,
            // TTL 255: survives the `ROUTE_REPEAT_BATCH` rewrites of one call.
            udp(ROUTER_OUT_MAC, REMOTE, 53, ROUTE_HOST, 5000, 255),
            Kind::Repeat {
                runs: per_pass(plan.repeat),
                batch: ROUTE_REPEAT_BATCH,
            },
        ));
        rows.push(Row::forward(
            "route_only",
            outside,
            f.clone(),
            single(plan.single_runs),
        ));
        // route_only_cold: the same with the routes' epoch at 0, so every route lookup
        // misses the programs' cache, goes to the trie and writes the cache.
        rows.push(Row::forward(
            "route_only_cold",
            outside,
            f,
            Kind::ColdRoutes {
                runs: plan.single_runs,
            },
        ));

        // fip_in: external host -> floating IP, DNAT to the fixed IP.
        let f = udp(ROUTER_OUT_MAC, REMOTE, 53, FIP, 5000, 64);
        let want = Addresses::new(VM_MAC, REMOTE, 53, FIXED, 5000);
        self.check_forward("fip_in", entry, outside, &f, &want)?;
        rows.push(Row::forward("fip_in", outside, f, single(plan.single_runs)));

        // fip_out: the fixed IP leaves as its floating IP.
        let f = udp(ROUTER_IN_MAC, FIXED, 5000, REMOTE, 53, 64);
        let want = Addresses::new(UPSTREAM_MAC, FIP, 5000, REMOTE, 53);
        self.check_forward("fip_out", entry, inside, &f, &want)?;
        rows.push(Row::forward("fip_out", inside, f, single(plan.single_runs)));

        // snat_established: the check's run creates the session (or, for the second
        // entry, finds the one the first created); every timed run then uses it.
        let f = udp(ROUTER_IN_MAC, VM_EST, EST_SPORT, REMOTE, 53, 64);
        let want = Addresses::new(UPSTREAM_MAC, GW, EST_SPORT, REMOTE, 53);
        self.check_forward("snat_established", entry, inside, &f, &want)?;
        ensure!(
            self.session(&flow_key(VM_EST, EST_SPORT))?.is_some(),
            "snat_established: the first packet created no session"
        );
        rows.push(Row::forward(
            "snat_established",
            inside,
            f,
            single(plan.single_runs),
        ));

        // snat_new: a new source port, hence a new session, every packet. Single runs only:
        // a repeated run would see its own rewritten frame (see "Methods").
        let first = self.take_sports(1)?;
        let f = udp(ROUTER_IN_MAC, VM_NEW, first, REMOTE, 53, 64);
        let want = Addresses::new(UPSTREAM_MAC, GW, first, REMOTE, 53);
        self.check_forward("snat_new", entry, inside, &f, &want)?;
        self.remove_sessions(&[flow_key(VM_NEW, first)])?;
        let kind = Kind::NewFlows {
            runs: per_pass(plan.new_flows),
            host: VM_NEW,
        };
        rows.push(Row::forward("snat_new", inside, f, kind));

        // steering: the `iif in0` rule's table sends the packet to the firewall on `fw0`.
        self.use_policy(steering_policy())?;
        let f = udp(ROUTER_IN_MAC, STEER_HOST, 5000, REMOTE, 53, 64);
        let want = Addresses::new(FIREWALL_MAC, STEER_HOST, 5000, REMOTE, 53);
        self.check_forward("steering", entry, inside, &f, &want)?;
        let row = Row::forward("steering", inside, f, single(plan.single_runs));
        rows.push(row.under(steering_policy(), None));

        // firewall_established: as snat_established, the firewall on; the check's run walks
        // the rules and creates the session (or, for the second entry, is established).
        self.use_policy(firewall_policy())?;
        let f = udp(ROUTER_IN_MAC, VM_FW_EST, FW_EST_SPORT, REMOTE, 53, 64);
        let want = Addresses::new(UPSTREAM_MAC, GW, FW_EST_SPORT, REMOTE, 53);
        self.check_forward("firewall_established", entry, inside, &f, &want)?;
        ensure!(
            self.session(&flow_key(VM_FW_EST, FW_EST_SPORT))?
                .is_some_and(|s| s.kind == ct_kind::SNAT),
            "firewall_established: the first packet created no SNAT session"
        );
        let row = Row::forward("firewall_established", inside, f, single(plan.single_runs));
        rows.push(row.under(firewall_policy(), Some(fw_slot::ESTABLISHED)));

        // firewall_new: a new flow from the fixed IP every packet, through every rule to the
        // allow at the end; a forward session each (removed after every pass).
        let first = self.take_sports(1)?;
        let f = udp(ROUTER_IN_MAC, FIXED, first, REMOTE, 53, 64);
        let want = Addresses::new(UPSTREAM_MAC, FIP, first, REMOTE, 53);
        let allowed = self.fw_packets(FW_ALLOW_SLOT)?;
        self.check_forward("firewall_new", entry, inside, &f, &want)?;
        ensure!(
            self.fw_packets(FW_ALLOW_SLOT)? == allowed + 1,
            "firewall_new: not accepted by the last rule"
        );
        ensure!(
            self.session(&flow_key(FIXED, first))?
                .is_some_and(|s| s.kind == ct_kind::FORWARD),
            "firewall_new: the packet created no forward session"
        );
        self.remove_sessions(&[flow_key(FIXED, first)])?;
        let kind = Kind::NewFlows {
            runs: per_pass(plan.new_flows),
            host: FIXED,
        };
        let row = Row::forward("firewall_new", inside, f, kind);
        rows.push(row.under(firewall_policy(), Some(FW_ALLOW_SLOT)));
        self.use_policy(PolicyConfig::default())?;
        Ok(rows)
    }

    /// One pass of `row` (ns per packet) between two probes of the host's speed, made
    /// again (up to [`MAX_ATTEMPTS`] times) while either probe is slow.
    fn measure_row_gated(
        &mut self,
        entry: Entry,
        row: &Row,
        speed: &mut Speed,
    ) -> anyhow::Result<f64> {
        let mut attempt = 1;
        loop {
            let before = self.probe(entry)?;
            let ns = self.measure_row(entry, row)?;
            let after = self.probe(entry)?;
            if speed.normal(entry, before) && speed.normal(entry, after) {
                return Ok(ns);
            }
            if attempt == MAX_ATTEMPTS {
                speed.kept_slow += 1;
                return Ok(ns);
            }
            speed.retries += 1;
            attempt += 1;
        }
    }

    /// The floor's cost per packet over [`PROBE_RUNS`] repeated runs: the host's speed.
    fn probe(&mut self, entry: Entry) -> anyhow::Result<f64> {
        let arp = arp_request(ROUTE_HOST, ROUTER_IN_IP);
        let result = self.test_run(entry, self.inside, &arp, PROBE_RUNS)?;
        ensure!(
            result.verdict == entry.pass(),
            "probe: verdict {}",
            result.verdict
        );
        Ok(result.duration_ns as f64)
    }

    /// One pass of `row`, under its policy: ns per packet.
    fn measure_row(&mut self, entry: Entry, row: &Row) -> anyhow::Result<f64> {
        self.use_policy(row.policy)?;
        let counted_before = match row.fw_counted {
            Some(slot) => self.fw_packets(slot)?,
            None => 0,
        };
        let ns = self.measure_row_runs(entry, row)?;
        if let Some(slot) = row.fw_counted {
            let counted = self.fw_packets(slot)? - counted_before;
            ensure!(
                counted == row.kind.runs_made(),
                "the firewall counted {counted} of {} runs in slot {slot}",
                row.kind.runs_made()
            );
        }
        Ok(ns)
    }

    /// The runs of one pass of `row`: ns per packet.
    fn measure_row_runs(&mut self, entry: Entry, row: &Row) -> anyhow::Result<f64> {
        let (ingress, expect) = (row.ingress, row.expect);
        match row.kind {
            Kind::Repeat { runs, batch } => {
                self.repeat_runs(entry, ingress, &row.frame, runs, batch, expect)
            }
            Kind::Single { runs } => {
                self.single_runs(entry, ingress, &|_| row.frame.clone(), runs, expect, false)
            }
            Kind::ColdRoutes { runs } => {
                self.single_runs(entry, ingress, &|_| row.frame.clone(), runs, expect, true)
            }
            Kind::NewFlows { runs, host } => {
                let base = self.take_sports(runs)?;
                let frame = |i: u32| udp(ROUTER_IN_MAC, host, base + i as u16, REMOTE, 53, 64);
                let ns = self.single_runs(entry, ingress, &frame, runs, expect, false)?;
                // Back to the table's nominal size for the next row.
                let keys: Vec<CtKey> = (0..runs).map(|i| flow_key(host, base + i as u16)).collect();
                let removed = self.remove_sessions(&keys)?;
                ensure!(
                    removed == keys.len(),
                    "{removed} sessions created for {} packets",
                    keys.len()
                );
                Ok(ns)
            }
        }
    }

    /// `count` fresh source ports for new flows; returns the first.
    /// Every new-flow session is removed after its pass, so the ports start over when
    /// they run out.
    fn take_sports(&mut self, count: u32) -> anyhow::Result<u16> {
        let span = 65_535 - u32::from(NEW_SPORT_BASE);
        ensure!(count <= span, "{count} snat_new flows in one pass");
        if u32::from(self.next_sport) + count > 65_535 {
            self.next_sport = NEW_SPORT_BASE;
        }
        let first = self.next_sport;
        self.next_sport = (u32::from(first) + count) as u16;
        Ok(first)
    }

    /// One run with the output checked against `want`.
    fn check_forward(
        &mut self,
        what: &str,
        entry: Entry,
        ingress: u32,
        frame: &[u8],
        want: &Addresses,
    ) -> anyhow::Result<()> {
        let before = self.iface_stats(ingress)?;
        let result = self.test_run(entry, ingress, frame, 1)?;
        if result.verdict != entry.redirect() {
            let after = self.iface_stats(ingress)?;
            bail!(
                "{what} ({}): verdict {} instead of a redirect; reasons: {}",
                entry.name(),
                result.verdict,
                reasons_between(&before, &after)
            );
        }
        let out = result.frame;
        ensure!(
            out.len() >= 42,
            "{what}: output frame of {} bytes",
            out.len()
        );
        let parsed = router_tests::frames::parse(&out);
        ensure!(
            parsed.ip_checksum_ok && parsed.l4_checksum_ok,
            "{what} ({}): bad checksum in the output",
            entry.name()
        );
        let seen = parsed.addresses;
        ensure!(
            seen == *want,
            "{what} ({}): forwarded as {seen:?}, expected {want:?}",
            entry.name()
        );
        Ok(())
    }

    /// Mean in-kernel time of `runs` runs with `repeat = 1`, run `i` on `frame(i)`, the
    /// slowest 1 % left out; `cold_routes`: with the routes' epoch at 0 meanwhile, which no
    /// cached lookup is used at (each run's lookup misses the route cache).
    fn single_runs(
        &mut self,
        entry: Entry,
        ingress: u32,
        frame: &dyn Fn(u32) -> Vec<u8>,
        runs: u32,
        expect: Expect,
        cold_routes: bool,
    ) -> anyhow::Result<f64> {
        let before = self.iface_stats(ingress)?;
        let want = match expect {
            Expect::Forward => entry.redirect(),
            Expect::Pass => entry.pass(),
        };
        // Epoch 0 is never cached at: every lookup misses and goes to the trie.
        let epoch = self.route_epoch()?;
        if cold_routes {
            self.set_route_epoch(0)?;
        }
        let mut times = Vec::with_capacity(runs as usize);
        for i in 0..runs {
            let data = frame(i);
            let result = self.test_run(entry, ingress, &data, 1)?;
            if result.verdict != want {
                let after = self.iface_stats(ingress)?;
                bail!(
                    "run {i} ({}): verdict {} instead of {want}; reasons: {}",
                    entry.name(),
                    result.verdict,
                    reasons_between(&before, &after)
                );
            }
            times.push(result.duration_ns);
        }
        self.set_route_epoch(epoch)?;
        self.check_counted(entry, ingress, &before, u64::from(runs), expect)?;
        Ok(trimmed_mean(&mut times))
    }

    /// Mean in-kernel time over `total` runs, made as calls of `repeat = batch`.
    fn repeat_runs(
        &mut self,
        entry: Entry,
        ingress: u32,
        frame: &[u8],
        total: u32,
        batch: u32,
        expect: Expect,
    ) -> anyhow::Result<f64> {
        let before = self.iface_stats(ingress)?;
        let want = match expect {
            Expect::Forward => entry.redirect(),
            Expect::Pass => entry.pass(),
        };
        let calls = total.div_ceil(batch);
        let mut per_call = Vec::with_capacity(calls as usize);
        for _ in 0..calls {
            let result = self.test_run(entry, ingress, frame, batch)?;
            // The last repetition's verdict; the counters below cover all of them.
            ensure!(
                result.verdict == want,
                "repeat ({}): verdict {} instead of {want}",
                entry.name(),
                result.verdict
            );
            per_call.push(result.duration_ns as f64);
        }
        self.check_counted(
            entry,
            ingress,
            &before,
            u64::from(calls) * u64::from(batch),
            expect,
        )?;
        Ok(per_call.iter().sum::<f64>() / per_call.len() as f64)
    }

    /// Fails unless exactly `runs` packets were forwarded (or passed) since `before`. Where
    /// the kernel refuses the XDP entry its tags, the TC entry behind it counts what the XDP
    /// entry passes, so an XDP pass counts nothing here.
    fn check_counted(
        &mut self,
        entry: Entry,
        ingress: u32,
        before: &IfaceStats,
        runs: u64,
        expect: Expect,
    ) -> anyhow::Result<()> {
        let untagged = !router_user::datapath::features::kernel().xdp_meta;
        let runs = if entry == Entry::Xdp && expect == Expect::Pass && untagged {
            0
        } else {
            runs
        };
        let after = self.iface_stats(ingress)?;
        let (done, what) = match expect {
            Expect::Forward => (after.fwd_packets - before.fwd_packets, "forwarded"),
            Expect::Pass => (after.pass_packets - before.pass_packets, "passed"),
        };
        ensure!(
            done == runs,
            "{done} of {runs} runs {what}; reasons: {}",
            reasons_between(before, &after)
        );
        Ok(())
    }

    /// `entry` run `repeat` times on `frame` arriving on `ingress`.
    fn test_run(
        &self,
        entry: Entry,
        ingress: u32,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<Run> {
        let prog = self
            .ebpf
            .program(match entry {
                Entry::Xdp => prog_names::XDP,
                Entry::Tc => prog_names::TC,
            })
            .ok_or_else(|| anyhow!("no {} program", entry.name()))?;
        Ok(match entry {
            Entry::Xdp => testrun::run_xdp(<&Xdp>::try_from(prog)?, ingress, frame, repeat)?,
            Entry::Tc => {
                testrun::run_tc(<&SchedClassifier>::try_from(prog)?, ingress, frame, repeat)?
            }
        })
    }

    /// Counters of interface `ifindex`, with what it forwarded (counted by its slot).
    fn iface_stats(&mut self, ifindex: u32) -> anyhow::Result<IfaceStats> {
        let ifaces: HashMap<_, u32, IfaceEntry> = typed(&mut self.ebpf, map_names::IFACES)?;
        let slot = u32::from(ifaces.get(&ifindex, 0)?.slot);
        let map: PerCpuHashMap<_, u32, IfaceStats> = typed(&mut self.ebpf, map_names::IFACE_STATS)?;
        let mut total = IfaceStats::default();
        for v in map.get(&ifindex, 0)?.iter() {
            total.accumulate(v);
        }
        let fwd: PerCpuArray<_, IfaceForwarded> =
            typed(&mut self.ebpf, map_names::IFACE_FORWARDED)?;
        for v in fwd.get(&slot, 0)?.iter() {
            total.fwd_packets += v.packets;
            total.fwd_bytes += v.bytes;
        }
        Ok(total)
    }

    /// Packets the firewall counted in `slot` (a rule's, or one of [`fw_slot`]).
    fn fw_packets(&mut self, slot: u32) -> anyhow::Result<u64> {
        let map: PerCpuArray<_, FwStats> = typed(&mut self.ebpf, map_names::FW_STATS)?;
        let mut total = FwStats::default();
        for v in map.get(&slot, 0)?.iter() {
            total.accumulate(v);
        }
        Ok(total.packets)
    }

    fn session(&mut self, key: &CtKey) -> anyhow::Result<Option<CtEntry>> {
        let map: HashMap<_, CtKey, CtEntry> = typed(&mut self.ebpf, map_names::SESSIONS)?;
        Ok(map.get(key, 0).ok())
    }

    /// Removes the sessions whose original-direction keys are `keys` (both entries);
    /// returns how many there were.
    fn remove_sessions(&mut self, keys: &[CtKey]) -> anyhow::Result<usize> {
        let mut map: HashMap<_, CtKey, CtEntry> = typed(&mut self.ebpf, map_names::SESSIONS)?;
        let mut found = 0;
        for key in keys {
            if let Ok(entry) = map.get(key, 0) {
                found += 1;
                map.remove(&entry.peer)?;
                map.remove(key)?;
            }
        }
        Ok(found)
    }
}

/// The fastest probe seen for each entry, and how often a slow one made a pass count for
/// nothing.
#[derive(Default)]
struct Speed {
    best: [Option<f64>; 2],
    retries: u32,
    kept_slow: u32,
}

impl Speed {
    /// Whether `probe` is within [`SLOW_FACTOR`] of the fastest probe of `entry` so far.
    fn normal(&mut self, entry: Entry, probe: f64) -> bool {
        let best = &mut self.best[entry as usize];
        let fastest = best.map_or(probe, |b| b.min(probe));
        *best = Some(fastest);
        probe <= fastest * SLOW_FACTOR
    }
}

/// One row of measurements: a scenario, measured one way, on one frame.
struct Row {
    scenario: &'static str,
    ingress: u32,
    frame: Vec<u8>,
    expect: Expect,
    kind: Kind,
    /// The `POLICY_CONFIG` the row runs under (none: no rules, no firewall).
    policy: PolicyConfig,
    /// The firewall counter slot every run must be counted in.
    fw_counted: Option<u32>,
}

impl Row {
    fn forward(scenario: &'static str, ingress: u32, frame: Vec<u8>, kind: Kind) -> Self {
        Self {
            scenario,
            ingress,
            frame,
            expect: Expect::Forward,
            kind,
            policy: PolicyConfig::default(),
            fw_counted: None,
        }
    }

    /// The row, run under `policy`, every run counted by the firewall in `fw_counted`.
    fn under(self, policy: PolicyConfig, fw_counted: Option<u32>) -> Self {
        Self {
            policy,
            fw_counted,
            ..self
        }
    }
}

/// Steering on: the `iif in0` rule (no firewall).
fn steering_policy() -> PolicyConfig {
    PolicyConfig {
        rule_count: 1,
        ..PolicyConfig::default()
    }
}

/// The firewall on with its [`FW_RULE_COUNT`] rules, default deny (no policy rules).
fn firewall_policy() -> PolicyConfig {
    PolicyConfig {
        fw_rule_count: FW_RULE_COUNT,
        fw_flags: fw_flags::ENABLED,
        ..PolicyConfig::default()
    }
}

/// Counter slot of the last firewall rule, the allow the measured flows match.
const FW_ALLOW_SLOT: u32 = FW_RULE_COUNT - 1;

/// The firewall rules, in order: nine that the measured flows (UDP from 10.0.1.0/24 to
/// `REMOTE:53`) do not match, each failing on a different field (protocol, source,
/// destination, port), then the allow they match. Rule `i` counts in slot `i`.
fn firewall_rules() -> Vec<FwRule> {
    const ANY: ([u8; 4], u8) = ([0; 4], 0);
    const VMS: ([u8; 4], u8) = ([10, 0, 1, 0], 24);
    const ALL_PORTS: (u16, u16) = (0, u16::MAX);
    let rules = [
        (fw_action::DENY, IPPROTO_TCP, ANY, ANY, (22, 22)),
        (fw_action::DENY, 0, ([10, 0, 2, 0], 24), ANY, ALL_PORTS),
        (fw_action::ALLOW, IPPROTO_TCP, VMS, ANY, (80, 80)),
        (fw_action::ALLOW, IPPROTO_TCP, VMS, ANY, (443, 443)),
        (fw_action::REJECT, IPPROTO_UDP, ANY, ANY, (123, 123)),
        (fw_action::DENY, 1, ([10, 0, 1, 128], 25), ANY, ALL_PORTS),
        (
            fw_action::ALLOW,
            IPPROTO_UDP,
            VMS,
            ([198, 51, 100, 0], 24),
            (53, 53),
        ),
        (fw_action::DENY, IPPROTO_UDP, VMS, ANY, (1, 52)),
        (fw_action::ALLOW, IPPROTO_TCP, ANY, VMS, (22, 22)),
        (fw_action::ALLOW, IPPROTO_UDP, VMS, ANY, (53, 53)),
    ];
    let rules: Vec<FwRule> = rules
        .into_iter()
        .enumerate()
        .map(|(slot, (action, proto, src, dst, ports))| FwRule {
            source: Net::new(src.0, src.1),
            destination: Net::new(dst.0, dst.1),
            port_min: ports.0,
            port_max: ports.1,
            proto,
            action,
            slot: slot as u8,
            _pad: 0,
        })
        .collect();
    debug_assert_eq!(rules.len() as u32, FW_RULE_COUNT);
    rules
}

/// How a row is measured, with the runs of one pass.
enum Kind {
    /// `runs` runs, as calls of `repeat = batch` on the same frame.
    Repeat { runs: u32, batch: u32 },
    /// `runs` calls of `repeat = 1`, each on a fresh copy of the frame.
    Single { runs: u32 },
    /// `runs` calls of `repeat = 1` on fresh copies of the frame, with the routes' epoch at
    /// 0 (a lookup the route cache cannot answer).
    ColdRoutes { runs: u32 },
    /// `runs` calls of `repeat = 1`, each a new flow from internal `host` to `REMOTE:53`
    /// (a new source port; the row's frame is the checked one, not reused).
    NewFlows { runs: u32, host: [u8; 4] },
}

impl Kind {
    fn method(&self) -> &'static str {
        match self {
            Kind::Repeat { .. } => "repeat",
            Kind::Single { .. } | Kind::ColdRoutes { .. } | Kind::NewFlows { .. } => "single-runs",
        }
    }

    /// Program runs one pass makes (a repeat row's last call is a whole batch).
    fn runs_made(&self) -> u64 {
        match *self {
            Kind::Repeat { runs, batch } => u64::from(runs.div_ceil(batch) * batch),
            Kind::Single { runs } | Kind::ColdRoutes { runs } | Kind::NewFlows { runs, .. } => {
                u64::from(runs)
            }
        }
    }
}

/// The original-direction session key of a UDP flow from internal host `src` to
/// `REMOTE:53`, as the internal interface (zone 0) sees it.
fn flow_key(src: [u8; 4], sport: u16) -> CtKey {
    CtKey {
        zone: 0,
        proto: IPPROTO_UDP,
        _pad: 0,
        src,
        dst: REMOTE,
        sport: sport.to_be_bytes(),
        dport: 53u16.to_be_bytes(),
    }
}

/// Session `i` of the synthetic fill: a TCP or UDP flow from a distinct internal host in
/// 10.128.0.0/9 to a distinct remote in 100.64.0.0/10, SNATed to the gateway IP, both
/// entries cross-linked as the fast path links them.
fn synthetic_session(i: u32) -> [(CtKey, CtEntry); 2] {
    let b = i.to_be_bytes();
    let host = [10, 128 | (b[1] & 0x7f), b[2], b[3]];
    let remote = [100, 64 | (b[1] & 0x3f), b[2], b[3]];
    let proto = if i.is_multiple_of(2) {
        IPPROTO_TCP
    } else {
        IPPROTO_UDP
    };
    let sport = (32_768 + (i % 28_000) as u16).to_be_bytes();
    let dport = [443u16, 53, 80, 123][(i % 4) as usize].to_be_bytes();
    let port = (1_024 + (i % 64_000) as u16).to_be_bytes();
    let fwd = CtKey {
        zone: SYNTH_ZONE,
        proto,
        _pad: 0,
        src: host,
        dst: remote,
        sport,
        dport,
    };
    let reply = CtKey {
        zone: SYNTH_ZONE,
        proto,
        _pad: 0,
        src: remote,
        dst: GW,
        sport: dport,
        dport: port,
    };
    let fwd_entry = CtEntry {
        new_src: GW,
        new_dst: remote,
        new_sport: port,
        new_dport: dport,
        peer: reply,
        direction: ct_dir::ORIGINAL,
        kind: ct_kind::SNAT,
        ..CtEntry::default()
    };
    let reply_entry = CtEntry {
        new_src: remote,
        new_dst: host,
        new_sport: dport,
        new_dport: sport,
        peer: fwd,
        direction: ct_dir::REPLY,
        kind: ct_kind::SNAT,
        ..CtEntry::default()
    };
    [(fwd, fwd_entry), (reply, reply_entry)]
}

/// Ethernet + IPv4 + UDP with 18 bytes of payload (a 60-byte frame), from the client
/// host, checksums correct.
fn udp(dst_mac: [u8; 6], src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, ttl: u8) -> Vec<u8> {
    let payload: Vec<u8> = (0..18).collect();
    eth(dst_mac)
        .ipv4(src, dst)
        .ttl(ttl)
        .udp(sport, dport)
        .payload(&payload)
}

/// A broadcast ARP request from the VM's MAC and `sender` for `target`, padded to 60 bytes.
fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = eth(BROADCAST_MAC).src(VM_MAC).arp_request(sender, target);
    f.resize(60, 0);
    f
}

/// Prefixes no random route may take: those the scenarios and the synthetic sessions use,
/// and addresses the kernel never routes (0/8, loopback, link-local, multicast and above).
fn reserved(a: [u8; 4]) -> bool {
    matches!(a[0], 0 | 10 | 127 | 224..=255)
        || (a[0] == 100 && (64..128).contains(&a[1]))
        || (a[0] == 169 && a[1] == 254)
        || (a[0] == 198 && (a[1] == 18 || a[1] == 19))
        || a[..3] == REMOTE[..3]
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Mean of `times` without the slowest 1 %.
fn trimmed_mean(times: &mut [u64]) -> f64 {
    times.sort_unstable();
    let keep = times.len() - times.len() / 100;
    let kept = &times[..keep.max(1).min(times.len())];
    if kept.is_empty() {
        return f64::NAN;
    }
    kept.iter().map(|&t| t as f64).sum::<f64>() / kept.len() as f64
}

/// The reasons counted between two snapshots, for error messages.
fn reasons_between(before: &IfaceStats, after: &IfaceStats) -> String {
    let grown: Vec<String> = Reason::ALL
        .iter()
        .filter_map(|&r| {
            let n = after.reasons[r as usize] - before.reasons[r as usize];
            (n > 0).then(|| format!("{r:?} x{n}"))
        })
        .collect();
    if grown.is_empty() {
        "none".into()
    } else {
        grown.join(", ")
    }
}

fn per_cpu_zero<T: aya::Pod + Default + Clone>() -> anyhow::Result<PerCpuValues<T>> {
    let cpus = nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    Ok(PerCpuValues::try_from(vec![T::default(); cpus])?)
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the router object has no program {name}"))
}

fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| anyhow!("the router object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

/// `10`, `1k`, `100k`, `1M`.
fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn dim_label(dimension: &str) -> &'static str {
    match dimension {
        "routes" => "routes",
        "floating_ips" => "floating IPs",
        _ => "sessions",
    }
}

/// A small deterministic generator for the random routes (xorshift64*).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums() {
        let f = udp(ROUTER_IN_MAC, FIXED, 5000, REMOTE, 53, 64);
        assert_eq!(f.len(), 60);
        let parsed = router_tests::frames::parse(&f);
        assert!(parsed.ip_checksum_ok && parsed.l4_checksum_ok);
        assert_eq!(arp_request(ROUTE_HOST, ROUTER_IN_IP).len(), 60);
    }

    #[test]
    fn synthetic_sessions_are_distinct() {
        let mut keys = HashSet::new();
        let picked: std::collections::BTreeSet<u32> = (0..1_000_000)
            .step_by(997)
            .chain(999_990..1_000_000)
            .collect();
        for i in picked {
            for (k, _) in synthetic_session(i) {
                assert!(keys.insert(k), "session {i} repeats a key");
            }
        }
    }

    /// The reason most rows are single runs: with `repeat`, the kernel hands the program
    /// the frame its previous repetition rewrote.
    #[test]
    fn repeat_runs_on_the_rewritten_frame() {
        let _ns = private_namespace(1);
        let tables = Tables {
            routes: 10,
            fips: 1,
            sessions: 0,
        };
        let mut r = Router::new(
            &tables,
            &Plan::new(true),
            "check",
            &spare_dev(0),
            &mut |_| {},
        )
        .expect("router");
        let outside = r.outside;
        let f = udp(ROUTER_OUT_MAC, REMOTE, 53, FIP, 5000, 64);
        for entry in [Entry::Xdp, Entry::Tc] {
            let before = r.iface_stats(outside).expect("stats");
            let result = r.test_run(entry, outside, &f, 1_000).expect("test run");
            let after = r.iface_stats(outside).expect("stats");
            assert_eq!(result.verdict, entry.pass(), "the last repetition passes");
            assert_eq!(
                after.fwd_packets - before.fwd_packets,
                1,
                "only the first forwards"
            );
            let not_ours = Reason::NotRouterMac as usize;
            // Where the kernel refuses the XDP entry its tags, the TC entry behind it counts
            // what XDP passes.
            let tagged = router_user::datapath::features::kernel().xdp_meta;
            let passes = if entry == Entry::Xdp && !tagged {
                0
            } else {
                999
            };
            assert_eq!(after.reasons[not_ours] - before.reasons[not_ours], passes);
        }
    }

    /// The quick run, printed (root only: `cargo test -p bench --bin routerbench --
    /// --ignored micro_quick_run --nocapture`; `MICRO_FULL=1` for the full plan).
    #[test]
    #[ignore = "needs root; loads the router into a private namespace"]
    fn micro_quick_run() {
        let start = std::time::Instant::now();
        // MICRO_FULL=1 runs the full plan instead.
        let quick = std::env::var_os("MICRO_FULL").is_none();
        let rows = run_all(quick, &mut |msg| {
            eprintln!("[{:7.2}s] {msg}", start.elapsed().as_secs_f64())
        })
        .expect("micro benchmarks");
        for r in &rows {
            println!(
                "{:<18} {:<4} {:<12} {:>9} {:<12} {:>8.1} ns",
                r.scenario, r.entry, r.dimension, r.size, r.method, r.ns_per_packet
            );
        }
    }
}
