//! Per-packet cost of the router's own programs under live load: a routerd router in
//! namespaces, the generator (`bench::traffic::Generator`) sending 64-byte UDP frames at a
//! fixed moderate rate, the kernel's BPF statistics on (`kernel.bpf_stats_enabled`), and
//! the change of `run_time_ns` and `run_cnt` over every program routerd holds (its fdinfo)
//! divided into time per program run and time per delivered frame. These are the scenarios
//! of the `BPF_PROG_TEST_RUN` section (`micro.rs`) on a running router, with real redirects,
//! real neighbours and the caches a steady stream leaves.
//!
//! ```text
//!  ext 198.18.0.1 ── qg-live 198.18.0.2 (FIP 198.18.1.10 -> 10.0.1.5)
//!                     router
//!  vm 10.0.1.5 (FIP), 10.0.1.6 (none) ── qr-vm 10.0.1.1
//!  steered 10.0.2.5 ── qr-st 10.0.2.1        (steered to 10.99.0.2)
//!  fw 10.99.0.2 ── qr-fw 10.99.0.1
//! ```
//!
//! A sink counts the frames arriving in `ext`, `vm` and `fw`. Scenarios (the generator's
//! namespace -> the sink's):
//!
//! - `route_only`: ext -> 10.0.1.6 (no floating IP: routed, untranslated);
//! - `fip_in`: ext -> the floating IP (DNAT to 10.0.1.5);
//! - `fip_out`: vm, from 10.0.1.5 -> ext (leaves as the floating IP);
//! - `snat_established`: vm, from 10.0.1.6 -> ext over [`FLOWS`] flows whose sessions the
//!   warm-up created;
//! - `snat_new`: the same from ever-new source ports: every frame a new session;
//! - `steering`: steered -> ext, sent by `[router.steering]` to the firewall host `fw`
//!   (untranslated; the firewall host is only the sink: the router's cost is what counts);
//! - `firewall_established`, `firewall_new`: the firewall on (10 rules, default deny, the
//!   same rules as `micro.rs`'s, on this topology's addresses), as `snat_established` from
//!   10.0.1.6 and as `snat_new` from 10.0.1.5 (a forward session per frame, leaving as the
//!   floating IP). The firewall applies to every internal interface, so these two run on a
//!   second router of the same topology.
//!
//! The new-flow scenarios send at most [`RATE`] x (run + warm-up) frames from one source
//! address, each with its own source port (the generator's thread is pinned to one CPU: its
//! flow counter is per CPU), under [`NEW_FLOWS`] and under the session table's size
//! ([`MAX_SESSIONS`]): no frame repeats a flow and no session is refused.
//!
//! Each run is measured in [`SLICES`] equal slices, and a row's time per program run is the
//! median slice's.
//!
//! The statistics cost every program a clock read on each side of its run; they are in the
//! figures, as in the forwarding-rate section's last column.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use router_common::bench::GenConfig;
use router_tests::{
    desired::{FirewallText, FwRuleText, PolicyText, RouterText, SteeringText},
    netns::within,
    routerd::{Routerd, fast_path_has_neighbor},
    topo::{Namespaces, ip, unique, veth},
};
use serde::{Deserialize, Serialize};

use bench::traffic::{Generator, Sink};

/// One scenario measured on one entry under live load.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LiveResult {
    pub scenario: String,
    /// routerd's mode: `"xdp"` or `"tc"`.
    pub entry: String,
    pub frame_bytes: u32,
    /// Distinct flows the generator cycled through (new-flow scenarios: more than it sent).
    pub flows: u32,
    /// Frames the generator sent per second.
    pub offered_pps: f64,
    /// Frames the sink counted per second.
    pub delivered_pps: f64,
    /// Runs of routerd's programs meanwhile (`run_cnt`).
    pub program_runs: u64,
    /// `run_time_ns` / `run_cnt` over routerd's programs.
    pub ns_per_run: Option<f64>,
    /// `run_time_ns` / frames delivered.
    pub ns_per_delivered_frame: Option<f64>,
    /// Packets the router did not forward meanwhile, by reason, over its interfaces.
    pub not_forwarded: BTreeMap<String, u64>,
    /// Sessions the table gained meanwhile (its entries' growth, halved): the frames sent,
    /// in the new-flow scenarios.
    pub sessions_added: u64,
}

/// Offered frames per second: moderate, far under what either entry forwards here, so every
/// frame is handled and the figure is the program's cost, not a queue's.
const RATE: u64 = 50_000;
/// Flows of the steady scenarios.
const FLOWS: u32 = 64;
/// Flows of the new-flow scenarios: source ports `NEW_PORT_BASE..NEW_PORT_BASE + NEW_FLOWS`,
/// inside routerd's SNAT port range (1024-64511), so each keeps its port.
const NEW_FLOWS: u32 = 60_000;
const NEW_PORT_BASE: u16 = 2_000;
const STEADY_PORT_BASE: u16 = 40_000;
/// The session table: room for a new-flow run and everything before it.
const MAX_SESSIONS: u32 = 131_072;
const FRAME_BYTES: u32 = 64;
const WARM_UP: Duration = Duration::from_millis(100);
/// The run is measured in this many equal slices and the median slice's time per program
/// run taken: the host of a shared virtual machine slows a vCPU down now and then for
/// hundreds of milliseconds, which would otherwise move a whole row.
const SLICES: u32 = 5;
/// UDP destination port of every frame (the firewall rules allow it).
const PORT: u16 = 53;

const EXT_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const FIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const VM_FIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const VM_PLAIN: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 6);
const STEERED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);
const FIREWALL: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const QG: &str = "qg-live";
const QR_VM: &str = "qr-vm";
const QR_STEERED: &str = "qr-st";
const QR_FW: &str = "qr-fw";
/// A spare veth pair in each generating host's namespace, for `Generator::attach`.
const SPARE: &str = "gen-spare0";
const SPARE_PEER: &str = "gen-spare1";

/// Every scenario on the XDP and the TC entry. `progress` hears of each step first.
pub fn run_all(quick: bool, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<LiveResult>> {
    let duration = if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(1)
    };
    let mut results = Vec::new();
    crate::rate::with_bpf_stats(|| -> anyhow::Result<()> {
        for mode in ["xdp", "tc"] {
            for firewall in [false, true] {
                let what = if firewall {
                    "the firewall on"
                } else {
                    "steering, no firewall"
                };
                progress(&format!("live: setting up a {mode} router, {what}"));
                let mut setup = Setup::new(mode, firewall)?;
                for scenario in Scenario::ALL.iter().filter(|s| s.firewall == firewall) {
                    progress(&format!("live: {mode}, {}", scenario.name));
                    results.push(setup.measure(scenario, duration)?);
                }
            }
        }
        Ok(())
    })?;
    Ok(results)
}

/// Where a scenario's frames start and end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Host {
    Ext,
    Vm,
    Steered,
    Firewall,
}

struct Scenario {
    name: &'static str,
    /// Whether it runs on the router with the firewall on.
    firewall: bool,
    from: Host,
    src: Ipv4Addr,
    to: Host,
    dst: Ipv4Addr,
    /// Every frame a new flow.
    new_flows: bool,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::steady("route_only", Host::Ext, EXT_HOST, Host::Vm, VM_PLAIN),
        Scenario::steady("fip_in", Host::Ext, EXT_HOST, Host::Vm, FIP),
        Scenario::steady("fip_out", Host::Vm, VM_FIP, Host::Ext, EXT_HOST),
        Scenario::steady("snat_established", Host::Vm, VM_PLAIN, Host::Ext, EXT_HOST),
        Scenario {
            new_flows: true,
            ..Scenario::steady("snat_new", Host::Vm, VM_PLAIN, Host::Ext, EXT_HOST)
        },
        Scenario::steady("steering", Host::Steered, STEERED, Host::Firewall, EXT_HOST),
        Scenario {
            firewall: true,
            ..Scenario::steady(
                "firewall_established",
                Host::Vm,
                VM_PLAIN,
                Host::Ext,
                EXT_HOST,
            )
        },
        Scenario {
            firewall: true,
            new_flows: true,
            ..Scenario::steady("firewall_new", Host::Vm, VM_FIP, Host::Ext, EXT_HOST)
        },
    ];

    const fn steady(
        name: &'static str,
        from: Host,
        src: Ipv4Addr,
        to: Host,
        dst: Ipv4Addr,
    ) -> Self {
        Self {
            name,
            firewall: false,
            from,
            src,
            to,
            dst,
            new_flows: false,
        }
    }
}

/// One router and its hosts; routerd stopped and everything removed on drop.
struct Setup {
    mode: &'static str,
    tag: String,
    /// (host, namespace, its eth0's MAC, the router port's MAC).
    hosts: Vec<(Host, String, [u8; 6], [u8; 6])>,
    sinks: Vec<(Host, Sink)>,
    routerd: Option<Routerd>,
    config: PathBuf,
    /// Declared last: the namespaces go after everything in them.
    _namespaces: Namespaces,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut r) = self.routerd.take() {
            r.stop();
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

impl Setup {
    fn new(mode: &'static str, firewall: bool) -> anyhow::Result<Self> {
        let mut namespaces = Namespaces::default();
        let tag = unique("l");
        let router_ns = namespaces.add(&format!("qrouter-{tag}"));
        // (host, router port, router address, host addresses).
        let plan: [(Host, &str, &str, &[Ipv4Addr]); 4] = [
            (Host::Ext, QG, "198.18.0.2/16", &[EXT_HOST]),
            (Host::Vm, QR_VM, "10.0.1.1/24", &[VM_FIP, VM_PLAIN]),
            (Host::Steered, QR_STEERED, "10.0.2.1/24", &[STEERED]),
            (Host::Firewall, QR_FW, "10.99.0.1/24", &[FIREWALL]),
        ];
        let mut hosts = Vec::new();
        for (i, (host, port, router_addr, addrs)) in plan.iter().enumerate() {
            let ns = namespaces.add(&format!("lh{i}-{tag}"));
            veth(port, &router_ns, "eth0", &ns);
            let prefix = router_addr.split('/').nth(1).unwrap_or("24");
            for a in *addrs {
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{a}/{prefix}"),
                    "dev",
                    "eth0",
                ]);
            }
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            let via = router_addr.split('/').next().unwrap_or_default();
            if *host != Host::Ext {
                ip(&["-n", &ns, "route", "add", "default", "via", via]);
            }
            if *host != Host::Firewall {
                // Down, so no frame reaches it: see `Setup::measure`.
                veth(SPARE, &ns, SPARE_PEER, &ns);
            }
            hosts.push((*host, ns, [0u8; 6], [0u8; 6]));
        }
        let config = std::env::temp_dir().join(format!("{tag}.toml"));
        std::fs::write(&config, routerd_config(&tag, &router_ns, mode, firewall))?;
        let routerd = Routerd::start(&config, &tag);
        for ((_, ns, host_mac, port_mac), (_, port, _, _)) in hosts.iter_mut().zip(plan.iter()) {
            *host_mac = mac_of(ns, "eth0")?;
            *port_mac = mac_of(&router_ns, port)?;
            // Frames the generator XDP_TXes are only delivered into a veth that runs XDP
            // (routerd's, in XDP mode) or GRO.
            if mode != "xdp" {
                crate::rate::gro_on(&router_ns, port);
            }
        }
        // The router learns the neighbours the scenarios send to, without forwarding.
        for (port, addr) in [
            (QG, EXT_HOST),
            (QR_VM, VM_FIP),
            (QR_VM, VM_PLAIN),
            (QR_FW, FIREWALL),
        ] {
            crate::rate::learn_neighbor(&router_ns, addr);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !fast_path_has_neighbor(&tag, port, addr.octets()) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the fast path never learnt {addr} on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut sinks = Vec::new();
        for (host, ns, _, _) in &hosts {
            if *host != Host::Steered {
                sinks.push((*host, within(ns, || Sink::attach("eth0", PORT))?));
            }
        }
        Ok(Self {
            mode,
            tag,
            hosts,
            sinks,
            routerd: Some(routerd),
            config,
            _namespaces: namespaces,
        })
    }

    fn host(&self, host: Host) -> anyhow::Result<&(Host, String, [u8; 6], [u8; 6])> {
        self.hosts
            .iter()
            .find(|h| h.0 == host)
            .ok_or_else(|| anyhow::anyhow!("no such host"))
    }

    fn delivered(&mut self, host: Host) -> anyhow::Result<u64> {
        self.sinks
            .iter_mut()
            .find(|s| s.0 == host)
            .ok_or_else(|| anyhow::anyhow!("no sink there"))?
            .1
            .packets()
    }

    fn not_forwarded(&self) -> BTreeMap<String, u64> {
        let mut by_reason = BTreeMap::new();
        for row in router_user::stats::collect(Some(&self.tag)).unwrap_or_default() {
            for (reason, n) in row.reasons {
                *by_reason.entry(reason).or_default() += n;
            }
        }
        by_reason
    }

    fn measure(&mut self, s: &Scenario, duration: Duration) -> anyhow::Result<LiveResult> {
        let (_, from_ns, from_mac, port_mac) = self.host(s.from)?.clone();
        let (flows, src_port) = if s.new_flows {
            (NEW_FLOWS, NEW_PORT_BASE)
        } else {
            (FLOWS, STEADY_PORT_BASE)
        };
        let cfg = GenConfig {
            dst_mac: port_mac,
            src_mac: from_mac,
            src_ip: s.src.octets(),
            dst_ip: s.dst.octets(),
            src_port,
            dst_port: PORT,
            flows,
            frame_len: FRAME_BYTES,
        };
        let frames = RATE as f64 * (duration + WARM_UP).as_secs_f64();
        anyhow::ensure!(
            !s.new_flows || frames < f64::from(NEW_FLOWS.min(MAX_SESSIONS / 2)),
            "{}: {frames} new flows would repeat or overfill the session table",
            s.name
        );
        let pid = self
            .routerd
            .as_ref()
            .and_then(Routerd::pid)
            .ok_or_else(|| anyhow::anyhow!("routerd is not running"))?;
        let mut generator = within(&from_ns, || -> anyhow::Result<Generator> {
            let mut generator = Generator::new("eth0", cfg)?;
            // Attached (to an interface no frame reaches), each test run of the paced
            // generator takes about 1 ms instead of tens: the router sees bursts of about 50
            // frames rather than of a thousand, and the rate is kept to the end of the run.
            generator.attach(SPARE)?;
            Ok(generator)
        })?;
        let slice = duration / SLICES;
        let (sent, secs, slices, delivered, (nf_before, nf_after), sessions_added) =
            on_one_cpu(|| -> anyhow::Result<_> {
                // The warm-up, at the same rate: caches, and the steady flows' sessions.
                within(&from_ns, || generator.run_for(WARM_UP, Some(RATE)))?;
                std::thread::sleep(Duration::from_millis(50));
                let delivered_before = self.delivered(s.to)?;
                let nf_before = self.not_forwarded();
                let sessions_before = self.sessions()?;
                let (mut sent, mut secs) = (0, 0.0);
                let mut slices = Vec::new();
                for _ in 0..SLICES {
                    let before = program_stats(pid);
                    let (n, t) = within(&from_ns, || generator.run_for(slice, Some(RATE)))?;
                    slices.push(program_stats(pid).since(before));
                    sent += n;
                    secs += t;
                }
                // Frames still in flight arrive within milliseconds.
                std::thread::sleep(Duration::from_millis(50));
                let delivered = self.delivered(s.to)? - delivered_before;
                let sessions_added = self.sessions()?.saturating_sub(sessions_before);
                Ok((
                    sent,
                    secs,
                    slices,
                    delivered,
                    (nf_before, self.not_forwarded()),
                    sessions_added,
                ))
            })?;
        if s.new_flows && sessions_added < sent * 95 / 100 {
            eprintln!(
                "live: {} ({}): {sent} frames made only {sessions_added} sessions",
                s.name, self.mode
            );
        }
        let runs: u64 = slices.iter().map(|x| x.runs).sum();
        let mut per_run: Vec<f64> = slices
            .iter()
            .filter(|x| x.runs > 0)
            .map(|x| x.run_time_ns as f64 / x.runs as f64)
            .collect();
        per_run.sort_by(f64::total_cmp);
        let ns_per_run = per_run.get(per_run.len() / 2).copied();
        let mut not_forwarded = BTreeMap::new();
        for (reason, n) in nf_after {
            let n = n.saturating_sub(nf_before.get(&reason).copied().unwrap_or(0));
            if n > 0 {
                not_forwarded.insert(reason, n);
            }
        }
        Ok(LiveResult {
            scenario: s.name.into(),
            entry: self.mode.into(),
            frame_bytes: FRAME_BYTES,
            flows,
            offered_pps: sent as f64 / secs,
            delivered_pps: delivered as f64 / secs,
            program_runs: runs,
            ns_per_run,
            // The median run's time, times the runs each delivered frame took.
            ns_per_delivered_frame: ns_per_run
                .filter(|_| delivered > 0)
                .map(|ns| ns * runs as f64 / delivered as f64),
            not_forwarded,
            sessions_added,
        })
    }

    /// Sessions in the router's table now.
    fn sessions(&self) -> anyhow::Result<u64> {
        let entries = router_user::stats::session_count(&self.tag)
            .map_err(|e| anyhow::anyhow!("the session table of {}: {e}", self.tag))?;
        Ok(entries as u64 / 2)
    }
}

fn mac_of(ns: &str, ifname: &str) -> anyhow::Result<[u8; 6]> {
    router_tests::topo::try_mac_of(Some(ns), ifname)
        .map_err(|e| anyhow::anyhow!("the MAC of {ifname} in {ns}: {e}"))
}

/// The router: SNAT on the gateway, one floating IP, `qr-st` steered to the firewall host;
/// with `firewall`, the firewall on instead of steering.
fn routerd_config(id: &str, ns: &str, mode: &str, firewall: bool) -> String {
    let mut policy = PolicyText::default();
    if firewall {
        policy.firewall = Some(FirewallText {
            default: "deny".into(),
            rules: firewall_rules(),
        });
    } else {
        policy.steering = Some(SteeringText {
            nexthop: FIREWALL.to_string(),
            gateway_nexthop: None,
            interfaces: vec![QR_STEERED.into()],
        });
    }
    RouterText {
        id: id.into(),
        namespace: ns.into(),
        mode: mode.into(),
        // Every host with a sink runs XDP, so each of its ports takes XDP frames.
        gateway: Some((
            QG.into(),
            format!("{GW}/16"),
            EXT_HOST.to_string(),
            Some(true),
        )),
        interfaces: vec![
            (QR_VM.into(), "10.0.1.1/24".into(), Some(true)),
            (QR_STEERED.into(), "10.0.2.1/24".into(), None),
            (QR_FW.into(), "10.99.0.1/24".into(), Some(true)),
        ],
        floating_ips: vec![(FIP, VM_FIP)],
        extra: format!(
            "[router.nat]\nmax_sessions = {MAX_SESSIONS}\n{}",
            policy.render()
        ),
    }
    .render()
}

/// `micro.rs`'s ten rules on this topology's addresses: nine the measured flows (UDP from
/// 10.0.1.0/24 to the external host, port 53) do not match, each failing on a different
/// field, then the allow they match.
fn firewall_rules() -> Vec<FwRuleText> {
    let vms = "10.0.1.0/24";
    vec![
        FwRuleText::new("deny", "tcp").ports("22"),
        FwRuleText::new("deny", "any").source("10.0.2.0/24"),
        FwRuleText::new("allow", "tcp").source(vms).ports("80"),
        FwRuleText::new("allow", "tcp").source(vms).ports("443"),
        FwRuleText::new("reject", "udp").ports("123"),
        FwRuleText::new("deny", "icmp").source("10.0.1.128/25"),
        FwRuleText::new("allow", "udp")
            .source(vms)
            .destination("198.51.100.0/24")
            .ports("53"),
        FwRuleText::new("deny", "udp").source(vms).ports("1:52"),
        FwRuleText::new("allow", "tcp").destination(vms).ports("22"),
        FwRuleText::new("allow", "udp").source(vms).ports("53"),
    ]
}

/// Totals over every BPF program a process holds.
#[derive(Clone, Copy, Default)]
struct ProgramStats {
    run_time_ns: u64,
    runs: u64,
}

impl ProgramStats {
    fn since(self, before: Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
            runs: self.runs.saturating_sub(before.runs),
        }
    }
}

/// `run_time_ns` and `run_cnt` summed over the BPF programs process `pid` holds (counted
/// only while `kernel.bpf_stats_enabled` is 1).
fn program_stats(pid: u32) -> ProgramStats {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ProgramStats::default();
    };
    let field = |info: &str, name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("prog_type:"))
        .fold(ProgramStats::default(), |all, info| ProgramStats {
            run_time_ns: all.run_time_ns + field(&info, "run_time_ns:"),
            runs: all.runs + field(&info, "run_cnt:"),
        })
}

/// Runs `f` with the calling thread pinned to the CPU it is on, then restores its
/// affinity: the generator counts its flows per CPU, and a thread that moved would start
/// another CPU's count from the first flow again.
fn on_one_cpu<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: plain syscalls on the calling thread with a zeroed, then filled, cpu_set_t.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        let saved = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old);
        let cpu = libc::sched_getcpu();
        if saved == 0 && cpu >= 0 {
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one);
        }
        let result = f();
        if saved == 0 {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old);
        }
        result
    }
}

/// The section of benchmarks.md: every live row, beside the test-run figure of the same
/// scenario and entry from the same run's micro results (its baseline single-runs row).
pub fn markdown(s: &mut String, r: &crate::Results) {
    if r.live.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## Per-packet cost under live load (kernel BPF statistics)\n\n\
         A running router in namespaces, {} 64-byte UDP frames/s from the generator for {} s \
         after a 0.1 s warm-up at the same rate, `kernel.bpf_stats_enabled` on: the change of \
         `run_time_ns` over every program routerd holds per program run (`run_cnt`), the \
         median of {SLICES} equal slices of the run, and that times the runs per frame the \
         sink counted. `route_only`: external host -> an internal address without a floating \
         IP; `fip_in`: external host -> floating IP; `fip_out`, `snat_established`, \
         `snat_new`: an internal address with, and one without, a floating IP -> external \
         host, {FLOWS} flows or a new source port per frame (a new session each, \
         `sessions_added` in the JSON; the run stays under the session table's size); \
         `steering`: a steered interface's host -> external host, sent to the firewall host; \
         `firewall_established`, `firewall_new`: the firewall on with 10 rules, default deny, \
         as `snat_established` and as `snat_new` from the address with a floating IP. The \
         statistics' own clock reads are in the figures. Test-run ns: the `single-runs` \
         baseline row of the section above, same scenario and entry (which adds its per-run \
         overhead).\n\n\
         | scenario | entry | offered frames/s | delivered frames/s | router ns per program run | router ns per delivered frame | test-run ns |\n\
         |---|---|---|---|---|---|---|",
        thousands(RATE as f64),
        if r.quick { "0.5" } else { "1" },
    );
    for x in &r.live {
        let test_run = r
            .micro
            .iter()
            .filter(|m| {
                m.scenario == x.scenario
                    && m.entry == x.entry
                    && m.method == "single-runs"
                    && m.dimension == "routes"
            })
            .min_by_key(|m| m.size)
            .map_or("-".into(), |m| format!("{:.0}", m.ns_per_packet));
        let ns = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            x.scenario,
            x.entry,
            thousands(x.offered_pps),
            thousands(x.delivered_pps),
            ns(x.ns_per_run),
            ns(x.ns_per_delivered_frame),
            test_run
        );
    }
    let _ = writeln!(s);
}

/// `12,345` for 12345.4.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sit_beside_the_test_run_baseline_of_their_scenario() {
        let micro = |entry: &str, size, ns| crate::micro::MicroResult {
            scenario: "fip_in".into(),
            entry: entry.into(),
            dimension: "routes".into(),
            size,
            ns_per_packet: ns,
            method: "single-runs".into(),
        };
        let live = |entry: &str| LiveResult {
            scenario: "fip_in".into(),
            entry: entry.into(),
            frame_bytes: FRAME_BYTES,
            flows: FLOWS,
            offered_pps: 50_000.4,
            delivered_pps: 49_876.0,
            program_runs: 50_000,
            ns_per_run: Some(412.3),
            ns_per_delivered_frame: Some(420.9),
            not_forwarded: BTreeMap::new(),
            sessions_added: 0,
        };
        let results = crate::Results {
            // The baseline (fewest routes) is the one quoted; the TC entry has no micro row.
            micro: vec![micro("xdp", 1_000, 552.0), micro("xdp", 10, 508.0)],
            live: vec![live("xdp"), live("tc")],
            ..Default::default()
        };
        let mut s = String::new();
        markdown(&mut s, &results);
        assert!(
            s.contains("| fip_in | xdp | 50,000 | 49,876 | 412 | 421 | 508 |\n"),
            "{s}"
        );
        assert!(
            s.contains("| fip_in | tc | 50,000 | 49,876 | 412 | 421 | - |\n"),
            "{s}"
        );
        assert!(
            s.ends_with("|\n\n"),
            "a blank line before the next section: {s}"
        );
        let mut empty = String::new();
        markdown(&mut empty, &crate::Results::default());
        assert!(empty.is_empty());
    }
}
