//! Forwarding rate through a router namespace: the same generator and the same sink, on
//! these paths: the veth ceiling (generator straight into the sink), the fast path in XDP
//! mode, in TC mode and in its default mode, and two kernel baselines on the same router:
//! the Neutron iptables path (kernel forwarding, conntrack, one DNAT and one SNAT rule per
//! floating IP) and the nftables path (the same, translated by routerd's own slow-path
//! ruleset: one map lookup per packet whatever the number of floating IPs).
//!
//! Traffic goes from an external host to a floating IP and arrives at a VM, the way the
//! baseline in shared/neutron-baseline.md was measured; the target floating IP is the last
//! one configured (last in Neutron's chains).

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use router_common::bench::GenConfig;
use router_tests::{
    netns::within,
    neutron::{NeutronFloatingIp, NeutronRouter},
    routerd::{Routerd, fast_path_has_neighbor},
    topo::{Namespaces, ip, run, unique, veth},
};
use serde::{Deserialize, Serialize};

use bench::traffic::{Generator, Sink};

pub const SINK_PORT: u16 = 9;
const EXT_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const QR_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VM: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 250);
const VM_NO_FIP: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 251);
const QG: &str = "qg-bench";
const QR: &str = "qr-bench";
/// A spare veth pair in the generator's namespace (`Setup::attach_generator`).
const SPARE: &str = "gen-spare0";
const SPARE_PEER: &str = "gen-spare1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    Ceiling,
    Xdp,
    Tc,
    /// routerd's default mode (`auto`): here, where every interface is a veth, the TC entry.
    Auto,
    Neutron,
    /// Kernel forwarding with routerd's slow-path nftables ruleset (floating IPs in maps).
    Nftables,
}

impl Path {
    /// routerd's `mode` for this path (`xdp` where routerd does not run).
    pub fn mode(self) -> &'static str {
        match self {
            Path::Tc => "tc",
            Path::Auto => "auto",
            Path::Ceiling | Path::Xdp | Path::Neutron | Path::Nftables => "xdp",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Path::Ceiling => "veth ceiling",
            Path::Xdp => "fast path, XDP",
            Path::Tc => "fast path, TC",
            Path::Auto => "fast path, auto (default)",
            Path::Neutron => "Neutron iptables",
            Path::Nftables => "nftables maps",
        }
    }

    /// Whether the kernel forwards and translates on this path (no routerd, no fast path
    /// counters).
    pub fn is_kernel_baseline(self) -> bool {
        matches!(self, Path::Neutron | Path::Nftables)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RateResult {
    pub path: Path,
    pub frame_bytes: u32,
    pub flows: u32,
    pub floating_ips: usize,
    /// Frames the generator sent per second.
    pub offered_pps: f64,
    /// Frames the sink counted per second.
    pub delivered_pps: f64,
    /// Time the router's programs spent per delivered frame under this load, from the
    /// kernel's own BPF run statistics (`kernel.bpf_stats_enabled`, fdinfo `run_time_ns`).
    pub router_program_ns: Option<f64>,
}

/// The i-th floating IP and its fixed IP; the last one is the VM's.
fn floating_ip(i: usize, count: usize) -> NeutronFloatingIp {
    let floating = Ipv4Addr::new(198, 18, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
    let fixed = if i + 1 == count {
        VM
    } else {
        Ipv4Addr::new(10, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
    };
    NeutronFloatingIp { floating, fixed }
}

/// One path set up and ready for traffic.
pub struct Setup {
    pub path: Path,
    vm_ns: String,
    pub floating_ips: usize,
    gen_ns: String,
    gen_mac: [u8; 6],
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
    sink: Option<Sink>,
    routerd: Option<Routerd>,
    router_id: String,
    router_ns: String,
    mode: String,
    config: Option<PathBuf>,
    /// How long `iptables-restore` took (Neutron path).
    pub iptables_restore: Option<Duration>,
    /// How long libnftables took to apply routerd's slow-path ruleset (nftables path).
    pub nftables_apply: Option<Duration>,
    /// The record `slowpath::apply` keeps under the run directory (nftables path).
    _slow_path_record: Option<SlowPathRecord>,
    /// Whether `measure` attaches the generator's program to a spare interface first (see
    /// `Generator::attach`; `routerbench --profile` only).
    attach_generator: bool,
    /// Declared last: the namespaces go after everything in them.
    _namespaces: Namespaces,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut r) = self.routerd.take() {
            r.stop();
        }
        if let Some(c) = &self.config {
            let _ = std::fs::remove_file(c);
        }
    }
}

/// A router whose slow-path ruleset was applied: its record under the run directory goes
/// on drop (the table goes with the namespace).
struct SlowPathRecord(String);

impl Drop for SlowPathRecord {
    fn drop(&mut self) {
        router_user::slowpath::forget(&self.0);
    }
}

fn mac_of(ns: &str, ifname: &str) -> anyhow::Result<[u8; 6]> {
    router_tests::topo::try_mac_of(Some(ns), ifname)
        .map_err(|e| anyhow::anyhow!("the MAC of {ifname} in {ns}: {e}"))
}

/// Builds `path` with `fips` floating IPs (at least 1).
pub fn setup(path: Path, fips: usize) -> anyhow::Result<Setup> {
    let fips = fips.max(1);
    let mut namespaces = Namespaces::default();
    let tag = unique("b");
    let gen_ns = namespaces.add(&format!("gen-{tag}"));
    let vm_ns = namespaces.add(&format!("vm-{tag}"));
    if path == Path::Ceiling {
        veth("eth0", &gen_ns, "eth0", &vm_ns);
        for ns in [&gen_ns, &vm_ns] {
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        let sink = within(&vm_ns, || Sink::attach("eth0", SINK_PORT))?;
        return Ok(Setup {
            path,
            floating_ips: 0,
            gen_mac: mac_of(&gen_ns, "eth0")?,
            target_mac: mac_of(&vm_ns, "eth0")?,
            vm_ns,
            target_ip: VM,
            gen_ns,
            sink: Some(sink),
            routerd: None,
            router_id: String::new(),
            router_ns: String::new(),
            mode: String::new(),
            config: None,
            iptables_restore: None,
            nftables_apply: None,
            _slow_path_record: None,
            attach_generator: false,
            _namespaces: namespaces,
        });
    }
    let router_ns = namespaces.add(&format!("qrouter-{tag}"));
    veth(QG, &router_ns, "eth0", &gen_ns);
    veth(QR, &router_ns, "eth0", &vm_ns);
    ip(&[
        "-n",
        &gen_ns,
        "addr",
        "add",
        &format!("{EXT_HOST}/16"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", &gen_ns, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        &vm_ns,
        "addr",
        "add",
        &format!("{VM}/16"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", &vm_ns, "link", "set", "eth0", "up"]);
    // A second address without a floating IP: its connections go out by default SNAT.
    ip(&[
        "-n",
        &vm_ns,
        "addr",
        "add",
        &format!("{VM_NO_FIP}/16"),
        "dev",
        "eth0",
    ]);
    // TCP from the external host reaches the VM by XDP redirect, which cannot carry a
    // partial checksum: the external host sends complete ones.
    run(
        "ip",
        &[
            "netns", "exec", &gen_ns, "ethtool", "-K", "eth0", "tx", "off",
        ],
    );
    ip(&[
        "-n",
        &vm_ns,
        "route",
        "add",
        "default",
        "via",
        &QR_IP.to_string(),
    ]);
    let list: Vec<NeutronFloatingIp> = (0..fips).map(|i| floating_ip(i, fips)).collect();
    let mut routerd = None;
    let mut config = None;
    let mut iptables_restore = None;
    let mut nftables_apply = None;
    let mut slow_path_record = None;
    let neutron = NeutronRouter {
        qg: QG.into(),
        gateway: GW,
        gateway_prefix_len: 16,
        nexthop: EXT_HOST,
        internal: vec![(QR.into(), QR_IP, 16)],
        floating_ips: list.clone(),
    };
    match path {
        Path::Neutron => {
            iptables_restore = Some(neutron.configure(&router_ns));
        }
        Path::Nftables => {
            neutron.configure_forwarding(&router_ns);
            let router = slow_path_router(&tag, &router_ns, &list)?;
            slow_path_record = Some(SlowPathRecord(tag.clone()));
            let started = Instant::now();
            within(&router_ns, || router_user::slowpath::apply(&router))
                .map_err(|e| anyhow::anyhow!("routerd's slow-path ruleset in {router_ns}: {e}"))?;
            nftables_apply = Some(started.elapsed());
        }
        Path::Xdp | Path::Tc | Path::Auto => {
            let mode = path.mode();
            let file = std::env::temp_dir().join(format!("{tag}.toml"));
            std::fs::write(&file, routerd_config(&tag, &router_ns, mode, &list))?;
            routerd = Some(Routerd::start(&file, &tag));
            config = Some(file);
        }
        Path::Ceiling => unreachable!("handled above"),
    }
    // Frames XDP_TX'd by the generator are only delivered into a veth that runs XDP or GRO.
    if path != Path::Xdp {
        gro_on(&router_ns, QG);
    }
    // The router learns the VM's MAC without forwarding anything.
    learn_neighbor(&router_ns, VM);
    if routerd.is_some() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !fast_path_has_neighbor(&tag, QR, VM.octets()) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the fast path never learnt the VM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let sink = within(&vm_ns, || Sink::attach("eth0", SINK_PORT))?;
    let target_ip = list.last().map_or(VM, |f| f.floating);
    Ok(Setup {
        path,
        floating_ips: fips,
        gen_mac: mac_of(&gen_ns, "eth0")?,
        target_mac: mac_of(&router_ns, QG)?,
        vm_ns,
        target_ip,
        gen_ns,
        sink: Some(sink),
        routerd,
        router_id: tag,
        router_ns,
        mode: path.mode().into(),
        config,
        iptables_restore,
        nftables_apply,
        _slow_path_record: slow_path_record,
        attach_generator: false,
        _namespaces: namespaces,
    })
}

/// The benchmark's router as routerd would hold it (gateway, the one internal interface,
/// the floating IPs), checked as routerd checks a desired state: its slow-path ruleset is
/// the nftables baseline.
fn slow_path_router(
    id: &str,
    ns: &str,
    fips: &[NeutronFloatingIp],
) -> anyhow::Result<router_user::config::Router> {
    use router_user::config::{DesiredState, FloatingIp, Gateway, IfAddr, Interface, Mode, Router};
    let mut router = Router::new(id, ns, Mode::Tc);
    router.gateway = Some(Gateway {
        interface: QG.into(),
        address: IfAddr { addr: GW, len: 16 },
        nexthop: EXT_HOST,
        snat: true,
        xdp_egress: None,
        subnets: Vec::new(),
    });
    router.interfaces = vec![Interface {
        name: QR.into(),
        address: IfAddr {
            addr: QR_IP,
            len: 16,
        },
        xdp_egress: None,
        source_check: true,
        allowed_sources: Vec::new(),
    }];
    router.floating_ips = fips
        .iter()
        .map(|f| FloatingIp {
            address: f.floating,
            fixed: f.fixed,
            id: None,
        })
        .collect();
    // Room for the largest run, as routerd's paths have (`routerd_config`).
    router.nat.max_floating_ips = 16_384;
    // No fast path runs here, so the kernel's SNAT gets the whole port range, as Neutron's
    // rules give it (routerd keeps the two ranges disjoint; the fast path's is parked on
    // port 1, which nothing uses).
    router.nat.snat_ports = router_user::config::PortRange { min: 1, max: 1 };
    router.nat.slow_path_snat_ports = router_user::config::PortRange {
        min: 1024,
        max: 65535,
    };
    let state = DesiredState {
        routers: vec![router],
    };
    state
        .validate()
        .map_err(|e| anyhow::anyhow!("the nftables baseline's router: {e}"))?;
    let DesiredState { mut routers } = state;
    routers
        .pop()
        .ok_or_else(|| anyhow::anyhow!("the nftables baseline's router vanished"))
}

/// GRO on `dev` in `ns`: frames the generator XDP_TXes into a veth are only delivered if
/// its far end runs XDP or GRO.
pub fn gro_on(ns: &str, dev: &str) {
    run(
        "ip",
        &["netns", "exec", ns, "ethtool", "-K", dev, "gro", "on"],
    );
}

/// One ping from the router namespace `ns` to `addr`: the router (and the fast path's
/// mirror) learns its neighbour without forwarding anything.
pub fn learn_neighbor(ns: &str, addr: Ipv4Addr) {
    let addr = addr.to_string();
    run(
        "ip",
        &["netns", "exec", ns, "ping", "-c", "1", "-W", "1", &addr],
    );
}

fn routerd_config(id: &str, ns: &str, mode: &str, fips: &[NeutronFloatingIp]) -> String {
    router_tests::desired::RouterText {
        id: id.into(),
        namespace: ns.into(),
        mode: mode.into(),
        gateway: Some((QG.into(), format!("{GW}/16"), EXT_HOST.to_string(), None)),
        // The sink's XDP program makes the far end take XDP frames.
        interfaces: vec![(QR.into(), format!("{QR_IP}/16"), Some(true))],
        floating_ips: fips.iter().map(|f| (f.floating, f.fixed)).collect(),
        // Room for the largest run (10,001) whatever this one holds: the size is fixed
        // when the maps are made, and a change of it would restart the router.
        extra: "[router.nat]\nmax_floating_ips = 16384\n".into(),
    }
    .render()
}

/// TCP through a path: bulk throughput (iperf3) and new connections per second.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TcpResult {
    pub path: Path,
    /// iperf3, VM (as its floating IP) -> external host.
    pub throughput_gbps: f64,
    /// Connections opened and closed per second, VM address without a floating IP (default
    /// SNAT) -> external host, `CONNECTING_CLIENTS` clients at once.
    pub snat_connections_per_sec: f64,
    /// SYNs the clients sent again meanwhile (each costs its client a second).
    pub syn_retransmits: u64,
    /// Packets the router did not forward meanwhile, by reason (fast paths only).
    pub not_forwarded: std::collections::BTreeMap<String, u64>,
}

impl Setup {
    /// iperf3 from the VM to the external host, then a connect/close loop through SNAT.
    /// Call it last: see `tcp_ready`.
    pub fn tcp(&mut self, duration: Duration) -> anyhow::Result<TcpResult> {
        self.tcp_ready();
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.gen_ns,
                "iperf3",
                "-s",
                "-1",
                "-p",
                "5299",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _server = Reap(server);
        std::thread::sleep(Duration::from_millis(300));
        let secs = duration.as_secs().max(1).to_string();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.vm_ns,
                "iperf3",
                "-c",
                &EXT_HOST.to_string(),
            ])
            .args(["-p", "5299", "-J", "-t", &secs])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            anyhow::anyhow!(
                "iperf3 output: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        let connections =
            self.connections_through((&self.vm_ns, VM_NO_FIP), (&self.gen_ns, EXT_HOST), duration)?;
        Ok(TcpResult {
            path: self.path,
            throughput_gbps: bps / 1e9,
            snat_connections_per_sec: connections.per_sec,
            syn_retransmits: connections.syn_retransmits,
            not_forwarded: connections.not_forwarded,
        })
    }

    /// New TCP connections per second from the external host to the VM's floating IP (the
    /// last configured, last in Neutron's chains). Call it last: see `tcp_ready`.
    pub fn floating_ip_connections(
        &mut self,
        duration: Duration,
    ) -> anyhow::Result<FipConnectionResult> {
        self.tcp_ready();
        let connections = self.connections_through(
            (&self.gen_ns, EXT_HOST),
            (&self.vm_ns, self.target_ip),
            duration,
        )?;
        Ok(FipConnectionResult {
            path: self.path,
            floating_ips: self.floating_ips,
            connections_per_sec: connections.per_sec,
            syn_retransmits: connections.syn_retransmits,
            not_forwarded: connections.not_forwarded,
        })
    }

    /// What the router did not forward, by reason, summed over its interfaces (empty for
    /// the Neutron path).
    fn not_forwarded(&self) -> std::collections::BTreeMap<String, u64> {
        let mut by_reason = std::collections::BTreeMap::new();
        if self.routerd.is_some() {
            for row in router_user::stats::collect(Some(&self.router_id)).unwrap_or_default() {
                for (reason, n) in row.reasons {
                    *by_reason.entry(reason).or_default() += n;
                }
            }
        }
        by_reason
    }

    /// `connection_rate`, with what the router did not forward meanwhile.
    fn connections_through(
        &self,
        client: (&str, Ipv4Addr),
        server: (&str, Ipv4Addr),
        duration: Duration,
    ) -> anyhow::Result<ConnectionRate> {
        let before = self.not_forwarded();
        let mut rate = connection_rate(client, server, duration)?;
        for (reason, n) in self.not_forwarded() {
            let n = n.saturating_sub(before.get(&reason).copied().unwrap_or(0));
            if n > 0 {
                rate.not_forwarded.insert(reason, n);
            }
        }
        Ok(rate)
    }

    /// Detaches the sink and gives the VM's veth GRO instead, as a VM's port would look:
    /// an XDP program on the VM's veth (the sink) makes TCP through it far slower (seen:
    /// 388 instead of 7,670 connections/s in XDP mode). `measure` has no sink afterwards.
    fn tcp_ready(&mut self) {
        self.sink = None;
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.vm_ns,
                "ethtool",
                "-K",
                "eth0",
                "gro",
                "on",
            ],
        );
    }

    /// From now on, `measure` attaches the generator's program to a spare interface of the
    /// generator's namespace (made here, down, so no frame reaches it) before sending: see
    /// `Generator::attach`. For `routerbench --profile`.
    pub fn attach_generator(&mut self) {
        if !self.attach_generator {
            veth(SPARE, &self.gen_ns, SPARE_PEER, &self.gen_ns);
            self.attach_generator = true;
        }
    }

    /// Offers `frame_bytes`-byte UDP frames in `flows` flows for `duration`.
    pub fn measure(
        &mut self,
        frame_bytes: u32,
        flows: u32,
        duration: Duration,
    ) -> anyhow::Result<RateResult> {
        self.measure_observed(frame_bytes, flows, duration, &mut |_| Ok(()))
    }

    /// As `measure`, calling `observe(true)` just before the measured traffic starts (after
    /// the warm-up) and `observe(false)` once it has stopped: `routerbench --profile` turns
    /// its profiler on and off there.
    pub fn measure_observed(
        &mut self,
        frame_bytes: u32,
        flows: u32,
        duration: Duration,
        observe: &mut dyn FnMut(bool) -> anyhow::Result<()>,
    ) -> anyhow::Result<RateResult> {
        self.measure_paced(frame_bytes, flows, duration, None, observe)
    }

    /// As `measure_observed`, offering `pace` frames per second when given (as many as the
    /// generator can otherwise).
    pub fn measure_paced(
        &mut self,
        frame_bytes: u32,
        flows: u32,
        duration: Duration,
        pace: Option<u64>,
        observe: &mut dyn FnMut(bool) -> anyhow::Result<()>,
    ) -> anyhow::Result<RateResult> {
        let cfg = GenConfig {
            dst_mac: self.target_mac,
            src_mac: self.gen_mac,
            src_ip: EXT_HOST.octets(),
            dst_ip: self.target_ip.octets(),
            src_port: 10_000,
            dst_port: SINK_PORT,
            flows,
            frame_len: frame_bytes,
        };
        let mut generator = within(&self.gen_ns, || Generator::new("eth0", cfg))?;
        if self.attach_generator {
            within(&self.gen_ns, || generator.attach(SPARE))?;
        }
        // A short warm-up: caches, neighbour and conntrack state of a steady flow set.
        within(&self.gen_ns, || {
            generator.run_for(Duration::from_millis(100), pace)
        })?;
        std::thread::sleep(Duration::from_millis(50));
        let sink = self
            .sink
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the sink was detached"))?;
        let pid = self.routerd.as_ref().and_then(Routerd::pid);
        let before = sink.packets()?;
        let run_before = pid.map(program_run_time);
        observe(true)?;
        let sent = within(&self.gen_ns, || generator.run_for(duration, pace));
        observe(false)?;
        let (sent, secs) = sent?;
        // Frames still in flight arrive within milliseconds.
        std::thread::sleep(Duration::from_millis(50));
        let delivered = sink.packets()? - before;
        let router_program_ns = pid
            .map(program_run_time)
            .zip(run_before)
            .and_then(|(a, b)| (delivered > 0 && a > b).then(|| (a - b) as f64 / delivered as f64));
        Ok(RateResult {
            path: self.path,
            frame_bytes,
            flows,
            floating_ips: self.floating_ips,
            offered_pps: sent as f64 / secs,
            delivered_pps: delivered as f64 / secs,
            router_program_ns,
        })
    }

    /// CPU time while `rate` frames per second of `frame_bytes` bytes in `flows` flows are
    /// offered for `duration`, from just before the measured traffic starts to just after it
    /// stops, two ways:
    /// - the machine's busy time (every CPU's time but its idle and iowait, see
    ///   `idle_cpu_time`): everything the machine runs counts, other work too;
    /// - the generator thread's and the kernel's softirq threads' (`sending_cpu_time`): a
    ///   send carries each frame through the router and into the sink in softirq, on the
    ///   sending CPU, in the sender's context or, when softirqs pile up, in ksoftirqd; this
    ///   leaves out other processes on a shared machine.
    ///
    /// The generator and the sink count in both: the ceiling's figures are what the router
    /// adds to.
    pub fn cpu_at_rate(
        &mut self,
        frame_bytes: u32,
        flows: u32,
        rate: u64,
        duration: Duration,
    ) -> anyhow::Result<CpuResult> {
        let started = std::cell::Cell::new(None);
        let spent = std::cell::Cell::new(None);
        let result = self.measure_paced(frame_bytes, flows, duration, Some(rate), &mut |on| {
            let ((idle, cpus), sending, now) =
                (idle_cpu_time()?, sending_cpu_time()?, Instant::now());
            if on {
                started.set(Some((idle, sending, now)));
            } else if let Some((idle_before, sending_before, at)) = started.get() {
                let wall = now - at;
                let idle = idle.saturating_sub(idle_before);
                spent.set(Some((
                    (wall * cpus).saturating_sub(idle),
                    sending.saturating_sub(sending_before),
                    wall,
                )));
            }
            Ok(())
        })?;
        let (busy, sending, wall) = spent
            .get()
            .ok_or_else(|| anyhow::anyhow!("the paced run was not observed"))?;
        let per_sec = |cpu: Duration| cpu.as_secs_f64() * 1e3 / wall.as_secs_f64().max(1e-3);
        // Frames delivered over the same wall time (the rate is per second of traffic).
        let delivered = result.delivered_pps * wall.as_secs_f64();
        let per_frame =
            |cpu: Duration| (delivered >= 1.0).then(|| cpu.as_secs_f64() * 1e9 / delivered);
        Ok(CpuResult {
            path: self.path,
            frame_bytes,
            flows,
            paced_pps: rate,
            offered_pps: result.offered_pps,
            delivered_pps: result.delivered_pps,
            cpu_ms_per_sec: per_sec(busy),
            cpu_ns_per_frame: per_frame(busy),
            sending_ms_per_sec: per_sec(sending),
            sending_ns_per_frame: per_frame(sending),
        })
    }

    /// As `measure`, while another thread keeps changing the floating IPs (adding and
    /// removing one beside the `fips` configured, one apply after another). Returns the
    /// rate, how many applies happened during it, and what the router's gateway port counted
    /// meanwhile (forwarded; dropped or passed), to tell router losses from queue overflows.
    pub fn measure_during_updates(
        &mut self,
        frame_bytes: u32,
        flows: u32,
        duration: Duration,
    ) -> anyhow::Result<(RateResult, u64, u64, u64)> {
        let (Some(routerd), Some(config)) = (&self.routerd, &self.config) else {
            anyhow::bail!("not a routerd path");
        };
        let pid = routerd
            .pid()
            .ok_or_else(|| anyhow::anyhow!("routerd is not running"))?;
        let fips = self.floating_ips;
        // The configured list, with or without one extra floating IP beside it.
        let render = |extra: bool| {
            let mut list: Vec<NeutronFloatingIp> =
                (0..fips).map(|i| floating_ip(i, fips)).collect();
            if extra {
                list.push(NeutronFloatingIp {
                    floating: Ipv4Addr::new(198, 18, 250, 250),
                    fixed: Ipv4Addr::new(10, 0, 250, 250),
                });
            }
            routerd_config(&self.router_id, &self.router_ns, &self.mode, &list)
        };
        let (a, b) = (render(false), render(true));
        let path = config.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let changer = std::thread::spawn(move || {
            let mut applies = 0u64;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let next = if applies.is_multiple_of(2) { &b } else { &a };
                if write_atomically(&path, next).is_ok() {
                    // SAFETY: signalling our own child process.
                    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
                    applies += 1;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = write_atomically(&path, &a);
            applies
        });
        let id = self.router_id.clone();
        let qg_counters = move || -> (u64, u64) {
            router_user::stats::collect(Some(&id))
                .ok()
                .and_then(|rows| rows.into_iter().find(|r| r.interface == QG))
                .map_or((0, 0), |r| {
                    (r.forwarded_packets, r.dropped_packets + r.passed_packets)
                })
        };
        let before = qg_counters();
        let result = self.measure(frame_bytes, flows, duration);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let applies = changer
            .join()
            .map_err(|_| anyhow::anyhow!("changer thread panicked"))?;
        let after = qg_counters();
        Ok((
            result?,
            applies,
            after.0.saturating_sub(before.0),
            after.1.saturating_sub(before.1),
        ))
    }

    /// SIGHUP-applies `fips` floating IPs and `plus` more (at most 250) to the running
    /// routerd; returns the time
    /// routerd reports for the reload (reading and validating the file included).
    pub fn apply_floating_ips(&mut self, fips: usize, plus: usize) -> anyhow::Result<Duration> {
        self.apply_floating_ips_observed(fips, plus, &mut |_| Ok(()))
    }

    /// The process id of this path's routerd, if it has one.
    pub fn routerd_pid(&self) -> Option<u32> {
        self.routerd.as_ref().and_then(Routerd::pid)
    }

    /// As `apply_floating_ips`, calling `observe(true)` just before the SIGHUP (the file is
    /// written) and `observe(false)` as soon as routerd's log reports the reload (checked
    /// every 10 ms): `routerbench --profile` turns its profiler on and off there.
    pub fn apply_floating_ips_observed(
        &mut self,
        fips: usize,
        plus: usize,
        observe: &mut dyn FnMut(bool) -> anyhow::Result<()>,
    ) -> anyhow::Result<Duration> {
        let (Some(routerd), Some(config)) = (&self.routerd, &self.config) else {
            anyhow::bail!("not a routerd path");
        };
        // The `fips` of `setup` (the VM's last), then `plus` more beside them.
        let mut list: Vec<NeutronFloatingIp> = (0..fips).map(|i| floating_ip(i, fips)).collect();
        list.extend((0..plus).map(|i| NeutronFloatingIp {
            floating: Ipv4Addr::new(198, 18, 250, 250 - i as u8),
            fixed: Ipv4Addr::new(10, 0, 250, 250 - i as u8),
        }));
        let new = routerd_config(&self.router_id, &self.router_ns, &self.mode, &list);
        write_atomically(config, &new)?;
        let marker = "routerd: reloaded in ";
        let applied = |log: &str| log.matches(marker).count();
        let before = applied(&routerd.log_text());
        observe(true)?;
        routerd.reload();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = routerd.log_text();
            if applied(&log) > before {
                observe(false)?;
                let line = log
                    .lines()
                    .rev()
                    .find(|l| l.contains(marker))
                    .unwrap_or_default();
                let us: u64 = line
                    .split(marker)
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("unparsable log line {line}"))?;
                return Ok(Duration::from_micros(us));
            }
            if Instant::now() >= deadline {
                observe(false)?;
                anyhow::bail!("routerd did not apply: {log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Setup {
    /// The router's own part of routerd's last apply (its maps, kernel state and slow-path
    /// rules, after the file was read and checked), from routerd's log.
    pub fn last_router_apply(&self) -> anyhow::Result<Duration> {
        let Some(routerd) = &self.routerd else {
            anyhow::bail!("not a routerd path");
        };
        let marker = "applied new desired state in ";
        let log = routerd.log_text();
        let us: u64 = log
            .lines()
            .rev()
            .find_map(|l| l.split(marker).nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no \"{marker}\" in routerd's log"))?;
        Ok(Duration::from_micros(us))
    }

    /// Adds one floating IP beside those loaded and removes it again, through routerd's
    /// API (`fip_create`, `fip_delete`), `changes` requests in all, each timed from the
    /// request to the answer, which comes once the change is recorded in the state file's
    /// journal and applied. Each pair takes another address and fixed IP, so that no
    /// request finds the elements of one removed just before.
    pub fn api_floating_ip_changes(&mut self, changes: usize) -> anyhow::Result<Vec<Duration>> {
        use router_user::api::{Client, Request};
        let Some(routerd) = &self.routerd else {
            anyhow::bail!("not a routerd path");
        };
        let mut client = Client::connect(&routerd.socket)?;
        let mut times = Vec::with_capacity(changes);
        for i in 0..changes {
            let last = 240 - (i / 2) as u8;
            let address = format!("198.18.250.{last}");
            let request = if i % 2 == 0 {
                Request::FipCreate {
                    router: self.router_id.clone(),
                    address,
                    fixed: format!("10.0.250.{last}"),
                    id: None,
                    may_exist: false,
                }
            } else {
                Request::FipDelete {
                    router: self.router_id.clone(),
                    address: Some(address),
                    id: None,
                    if_exists: false,
                }
            };
            let started = Instant::now();
            client.call(&request)?;
            times.push(started.elapsed());
        }
        Ok(times)
    }

    /// `routerctl apply FILE` of a desired state with `fips` floating IPs, timed from
    /// the command's start to its exit (process start, the API round trip, validation, the
    /// append to the state file's journal and the apply). Returns the wall time.
    pub fn routerctl_apply(&mut self, fips: usize) -> anyhow::Result<Duration> {
        let (Some(routerd), Some(config)) = (&self.routerd, &self.config) else {
            anyhow::bail!("not a routerd path");
        };
        let list: Vec<NeutronFloatingIp> = (0..fips).map(|i| floating_ip(i, fips)).collect();
        let file = config.with_extension("apply.toml");
        std::fs::write(
            &file,
            routerd_config(&self.router_id, &self.router_ns, &self.mode, &list),
        )?;
        let routerctl = router_tests::routerd::routerd_path().with_file_name("routerctl");
        let started = Instant::now();
        let out = std::process::Command::new(&routerctl)
            .arg("--socket")
            .arg(&routerd.socket)
            .args(["apply", "--file"])
            .arg(&file)
            .output()?;
        let took = started.elapsed();
        let _ = std::fs::remove_file(&file);
        if !out.status.success() {
            anyhow::bail!(
                "{} apply failed: {}",
                routerctl.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    }
}

/// The machine's CPU time at a fixed offered load (`Setup::cpu_at_rate`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CpuResult {
    pub path: Path,
    pub frame_bytes: u32,
    pub flows: u32,
    /// The rate the generator was asked for.
    pub paced_pps: u64,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    /// Busy CPU time of the whole machine, summed over its CPUs, per second of traffic.
    pub cpu_ms_per_sec: f64,
    /// The same per delivered frame (`None`: nothing was delivered).
    pub cpu_ns_per_frame: Option<f64>,
    /// CPU time of the generator's thread and the softirq threads, per second of traffic.
    pub sending_ms_per_sec: f64,
    /// The same per delivered frame.
    pub sending_ns_per_frame: Option<f64>,
}

/// CPU time of the calling thread and of every `ksoftirqd` thread, from the scheduler's
/// own clock (`schedstat`, in ns; softirqs count to the thread they interrupt).
fn sending_cpu_time() -> anyhow::Result<Duration> {
    let runtime = |path: &str| -> Option<u64> {
        std::fs::read_to_string(path)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut ns = runtime("/proc/thread-self/schedstat")
        .ok_or_else(|| anyhow::anyhow!("no /proc/thread-self/schedstat"))?;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.starts_with("ksoftirqd/") {
            ns += runtime(&format!("/proc/{pid}/schedstat")).unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(ns))
}

/// Idle and iowait time since boot summed over every CPU (`/proc/stat`'s first line), and
/// the number of CPUs (its `cpuN` lines). Busy time is the CPUs' wall time minus this, not
/// the sum of `/proc/stat`'s busy fields: the kernel measures idle time exactly (a tickless
/// CPU notes when it goes idle and wakes) but busy time only by sampling at its tick, which
/// misses bursts shorter than a tick (seen: the paced XDP path's busy fields no higher than
/// the ceiling's).
fn idle_cpu_time() -> anyhow::Result<(Duration, u32)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .ok_or_else(|| anyhow::anyhow!("/proc/stat has no cpu line"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    anyhow::ensure!(
        ticks.len() >= 5,
        "/proc/stat's cpu line is short: {ticks:?}"
    );
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let cpus = u32::try_from(cpus)?;
    anyhow::ensure!(cpus > 0, "/proc/stat lists no CPU");
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(hz > 0, "sysconf(_SC_CLK_TCK) = {hz}");
    let idle = ticks[3] + ticks[4];
    Ok((Duration::from_secs_f64(idle as f64 / hz as f64), cpus))
}

/// Clients opening connections at once: one client's rate is bound by its round trips
/// (handshake, then close), not by the path.
pub const CONNECTING_CLIENTS: usize = 4;
/// Threads accepting them: one alone falls behind four clients.
const ACCEPTING_THREADS: usize = 2;

/// New TCP connections per second to a floating IP, with this many configured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FipConnectionResult {
    pub path: Path,
    pub floating_ips: usize,
    /// `CONNECTING_CLIENTS` clients at once, external host -> floating IP -> VM.
    pub connections_per_sec: f64,
    /// SYNs the clients sent again meanwhile (each costs its client a second).
    pub syn_retransmits: u64,
    /// Packets the router did not forward meanwhile, by reason (fast paths only).
    pub not_forwarded: std::collections::BTreeMap<String, u64>,
}

/// A new-connection rate and the SYNs the clients had to send again.
struct ConnectionRate {
    per_sec: f64,
    syn_retransmits: u64,
    not_forwarded: std::collections::BTreeMap<String, u64>,
}

/// Opens and closes TCP connections from `client` (namespace, source address) to a
/// listener in `server`'s namespace at `server`'s address, `CONNECTING_CLIENTS` at once,
/// for `duration`.
///
/// The client closes first and the listener closes when it reads the client's end, so the
/// TIME_WAIT is the client's: a listener closing first keeps each 4-tuple in TIME_WAIT, and
/// a later SYN that reuses one (the translated source ports repeat) waits out a 1 s SYN
/// retransmit, which made one-second runs vary several-fold on any path.
fn connection_rate(
    client: (&str, Ipv4Addr),
    server: (&str, Ipv4Addr),
    duration: Duration,
) -> anyhow::Result<ConnectionRate> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};
    use router_tests::traffic::{in_ns, join};
    use std::io::Read;
    use std::net::{SocketAddrV4, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let ((client_ns, client_addr), (server_ns, server_addr)) = (client, server);
    let port = 5300;
    let listener = join(in_ns(server_ns, move || -> nix::Result<TcpListener> {
        let sock = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        socket::setsockopt(&sock, sockopt::ReuseAddr, &true)?;
        socket::bind(
            sock.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
        )?;
        // The clients outrun the listener at times; an accept queue that overflows drops a
        // SYN, and every client waits out a 1 s retransmit.
        socket::listen(&sock, socket::Backlog::MAXCONN)?;
        // Accept wakes every 100 ms to see `stop`.
        let tick = nix::sys::time::TimeVal::new(0, 100_000);
        socket::setsockopt(&sock, sockopt::ReceiveTimeout, &tick)?;
        Ok(TcpListener::from(sock))
    }))
    .map_err(|e| anyhow::anyhow!("the connection-rate listener in {server_ns}: {e}"))?;
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let acceptors: Vec<_> = (0..ACCEPTING_THREADS)
        .map(|_| {
            let (listener, stop) = (listener.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((mut s, _)) = listener.accept() {
                        // Until the client's FIN (or a stalled client's 100 ms).
                        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    }
                }
            })
        })
        .collect();
    let syn_retransmits = || -> anyhow::Result<u64> {
        let ns = client_ns.to_string();
        join(in_ns(client_ns, move || tcp_ext_counter("TCPSynRetrans")))
            .map_err(|e| anyhow::anyhow!("reading {ns}'s TCP counters: {e}"))
    };
    // Every client port lingers in TIME_WAIT for a minute; at tens of thousands of
    // connections a second the default 28,000 ephemeral ports would run out within the run.
    join(in_ns(client_ns, || -> std::io::Result<()> {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")
    }))
    .map_err(|e| anyhow::anyhow!("widening {client_ns}'s ports: {e}"))?;
    let retransmits_before = syn_retransmits()?;
    let to = SockaddrIn::from(SocketAddrV4::new(server_addr, port));
    let from = SockaddrIn::from(SocketAddrV4::new(client_addr, 0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTING_CLIENTS)
        .map(|_| {
            in_ns(client_ns, move || -> nix::Result<u64> {
                let mut done = 0u64;
                while started.elapsed() < duration {
                    let sock = socket::socket(
                        AddressFamily::Inet,
                        SockType::Stream,
                        SockFlag::empty(),
                        None,
                    )?;
                    // The port is picked at connect, where TIME_WAIT ports may be reused.
                    socket::setsockopt(&sock, sockopt::IpBindAddressNoPort, &true)?;
                    socket::bind(sock.as_raw_fd(), &from)?;
                    if socket::connect(sock.as_raw_fd(), &to).is_ok() {
                        done += 1;
                    }
                    drop(TcpStream::from(sock));
                }
                Ok(done)
            })
        })
        .collect();
    let mut done = 0u64;
    let mut failed = None;
    for client in clients {
        match join(client) {
            Ok(n) => done += n,
            Err(e) => failed = Some(e),
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    acceptors.into_iter().for_each(join);
    if let Some(e) = failed {
        anyhow::bail!("a connecting client failed: {e}");
    }
    Ok(ConnectionRate {
        per_sec: done as f64 / elapsed.as_secs_f64(),
        syn_retransmits: syn_retransmits()?.saturating_sub(retransmits_before),
        not_forwarded: Default::default(),
    })
}

/// A `TcpExt` counter of the calling thread's network namespace (`/proc/thread-self`: the
/// thread may have entered another namespace than the process's).
fn tcp_ext_counter(name: &str) -> std::io::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat")?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        if let Some((_, v)) = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
        {
            return v.parse().map_err(std::io::Error::other);
        }
    }
    Err(std::io::Error::other(format!("no TcpExt {name}")))
}

/// Replaces `path` by renaming a complete temporary file over it, so routerd never reads a
/// half-written desired state (a truncated file is valid TOML with fewer routers).
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Runs `f` with `kernel.bpf_stats_enabled` on, and restores it after, whichever way `f`
/// ends: left on, the statistics would slow every BPF program on the machine (two clock
/// reads a run) and every later measurement with them.
pub fn with_bpf_stats<T>(f: impl FnOnce() -> T) -> T {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";
    /// Puts the knob back as it was when dropped, on a panic's unwinding too.
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(KNOB, self.0.trim());
        }
    }
    let _restore = Restore(std::fs::read_to_string(KNOB).unwrap_or_else(|_| "0".into()));
    let _ = std::fs::write(KNOB, "1");
    f()
}

/// Total `run_time_ns` of every BPF program process `pid` holds (counted only while
/// `kernel.bpf_stats_enabled` is 1, see `with_bpf_stats`).
fn program_run_time(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("prog_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("run_time_ns:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Whether this kernel makes nftables flowtables (the kernel's own fast path for
/// established flows, the natural third baseline).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowtableProbe {
    /// `nft add flowtable` succeeded in a scratch namespace.
    pub available: bool,
    /// What `nft` said on failure (its first line).
    pub nft_said: String,
    /// The `CONFIG_NF_FLOW_TABLE` line of the kernel's configuration (`/proc/config.gz`),
    /// when the kernel exposes it.
    pub kernel_config: Option<String>,
}

/// Adds a table and a flowtable on `lo` in a scratch network namespace (`unshare --net`:
/// it goes when `nft` exits).
pub fn probe_flowtable() -> FlowtableProbe {
    let out = Command::new("unshare")
        .args([
            "--net",
            "nft",
            "add table inet probe; \
             add flowtable inet probe ft { hook ingress priority 0; devices = { lo }; }",
        ])
        .output();
    let (available, nft_said) = match out {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        Err(e) => (false, format!("unshare/nft did not run: {e}")),
    };
    let kernel_config = Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| {
                    l.starts_with("CONFIG_NF_FLOW_TABLE=")
                        || l.starts_with("# CONFIG_NF_FLOW_TABLE is not set")
                })
                .map(str::to_string)
        });
    FlowtableProbe {
        available,
        nft_said,
        kernel_config,
    }
}
