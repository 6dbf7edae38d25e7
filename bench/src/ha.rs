//! HA routers (`--only ha`, `docs/ha.md`): on the two-node pair of `router_tests::ha`,
//!
//! - **the session sync under load**: new SNAT sessions made at a fixed rate (one UDP
//!   datagram from a new source port each, from a VM to the external host); the sync lag
//!   (a session's creation in the active's fast path to a standby's acknowledgement of the
//!   batch that carried it, p99 over the run's batches, as the active measures it) and the
//!   bytes of session frames sent per session made (its creation report and the refreshes
//!   while it lived in the run), which gives the bandwidth per 1,000 new sessions/s;
//! - **a node lost**: 200 SNATed TCP connections, 50 opened from outside to a floating IP
//!   and 50 opened by the VM behind it, all talking every 100 ms,
//!   the active's routerd killed with -9 and its links taken down: the time until the
//!   standby reports itself active, the connections that survive, the longest gap an
//!   application saw; then a planned switchover back, and its longest gap.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use router_tests::{
    ha::{HaPair, Traffic, TrafficReport, ha_status, sessions_on, set_links, wait_for},
    held::{ConnReport, Held},
    netns,
};
use serde::{Deserialize, Serialize};

/// The new-session rate the sync lag is measured at.
pub const SESSIONS_PER_S: u64 = 5_000;
/// The target for the sync lag at that rate, p99 in ms.
pub const LAG_P99_MS: f64 = 50.0;

/// One path's figures: ours in one mode, or a baseline.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct HaResult {
    /// "xdp", "tc", or the baseline's name.
    pub mode: String,
    /// Neutron's L3 HA (keepalived), with conntrackd or without.
    #[serde(default)]
    pub baseline: bool,
    pub offered_sessions_per_s: u64,
    pub sessions_made: u64,
    pub sync_lag_p99_ms: Option<f64>,
    pub sync_bytes_per_session: Option<f64>,
    pub takeover_ms: f64,
    pub snat_connections: usize,
    pub snat_survived: usize,
    /// Opened from outside to the floating IP.
    pub fip_connections: usize,
    pub fip_survived: usize,
    /// Opened by the VM behind the floating IP, to the outside.
    #[serde(default)]
    pub fip_out_connections: usize,
    #[serde(default)]
    pub fip_out_survived: usize,
    /// Among the connections that survived.
    pub longest_gap_ms: f64,
    pub switchover_ms: Option<f64>,
    pub switchover_gap_ms: Option<f64>,
}

pub fn run(quick: bool, say: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<HaResult>> {
    let modes: &[&str] = if quick { &["xdp"] } else { &["xdp", "tc"] };
    let load = if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let mut out = Vec::new();
    for mode in modes {
        say(&format!("ha: {mode}: two nodes, one HA router"));
        let HaPair {
            pair,
            etcd,
            mut nodes,
            active,
            standby,
        } = HaPair::start(mode);
        let mut r = HaResult {
            mode: mode.to_string(),
            offered_sessions_per_s: SESSIONS_PER_S,
            ..HaResult::default()
        };

        say(&format!(
            "ha: {mode}: {SESSIONS_PER_S} new sessions/s for {} s",
            load.as_secs_f64()
        ));
        let before = ha_status(&nodes[active], &pair.id).unwrap_or_default();
        let sessions_before = sessions_on(&nodes[active], &pair.id);
        make_sessions(&pair.vm1, SESSIONS_PER_S, load);
        // The last batches acknowledged and one refresh gone by.
        std::thread::sleep(Duration::from_millis(1500));
        let after = ha_status(&nodes[active], &pair.id).unwrap_or_default();
        r.sessions_made = sessions_on(&nodes[active], &pair.id).saturating_sub(sessions_before);
        r.sync_lag_p99_ms = Some(after.lag_us_p99 as f64 / 1e3);
        r.sync_bytes_per_session = Some(
            (after.bytes_sent.saturating_sub(before.bytes_sent)) as f64
                / r.sessions_made.max(1) as f64,
        );

        say(&format!(
            "ha: {mode}: the active node lost under 300 connections"
        ));
        let traffic = Traffic::start(&pair.vm1, &pair.vm2, &pair.ext, 200, 50, 50);
        std::thread::sleep(Duration::from_secs(2));
        let lost_at = Instant::now();
        nodes[active].kill9();
        set_links(&pair.router_ns[active], "down");
        wait_for("the standby to take over", Duration::from_secs(10), || {
            ha_status(&nodes[standby], &pair.id).filter(|s| s.role == "active")
        });
        r.takeover_ms = lost_at.elapsed().as_secs_f64() * 1e3;
        std::thread::sleep(Duration::from_secs(2));
        set_links(&pair.router_ns[active], "up");
        nodes[active].restart();
        wait_for(
            "the lost node to stand by again",
            Duration::from_secs(20),
            || ha_status(&nodes[active], &pair.id).filter(|s| s.role == "standby" && s.synced),
        );
        std::thread::sleep(Duration::from_secs(1));
        say(&format!("ha: {mode}: a planned switchover back"));
        let switch_at = traffic.started().elapsed();
        let asked = Instant::now();
        let switched = router_tests::etcd::routerctl(&[
            "--etcd",
            &etcd.endpoint(),
            "router",
            "switchover",
            &pair.id,
            "--to",
            &nodes[active].name,
        ]);
        anyhow::ensure!(
            switched.status.success(),
            "switchover: {}",
            String::from_utf8_lossy(&switched.stderr)
        );
        r.switchover_ms = Some(asked.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_secs(1));
        let report = traffic.finish();
        r.count(&report);
        let gaps = || report.all().flat_map(|c| c.gaps.iter());
        // A gap counts in every window it overlaps.
        r.longest_gap_ms = gaps()
            .filter(|(at, _)| *at < switch_at)
            .map(|g| g.1.as_secs_f64() * 1e3)
            .fold(0.0, f64::max);
        r.switchover_gap_ms = Some(
            gaps()
                .filter(|(at, d)| *at + *d > switch_at)
                .map(|g| g.1.as_secs_f64() * 1e3)
                .fold(0.0, f64::max),
        );
        out.push(r);
        drop(nodes);
        drop(etcd);
        drop(pair);
    }
    Ok(out)
}

/// The same loss of the active node under Neutron's L3 HA: keepalived in both router
/// namespaces (and conntrackd beside it with `conntrackd`), the same 250 connections.
pub fn run_baseline(conntrackd: bool, say: &mut dyn FnMut(&str)) -> anyhow::Result<HaResult> {
    use router_tests::keepalived::KeepalivedPair;
    let name = if conntrackd {
        "Neutron L3 HA + conntrackd"
    } else {
        "Neutron L3 HA (keepalived)"
    };
    say(&format!("ha: {name}: two router namespaces, VRRP electing"));
    let mut pair = KeepalivedPair::start(conntrackd);
    let master = pair
        .master()
        .ok_or_else(|| anyhow::anyhow!("no keepalived master"))?;
    say(&format!(
        "ha: {name}: the master lost under 300 connections"
    ));
    let traffic = Traffic::start(&pair.vm1, &pair.vm2, &pair.ext, 200, 50, 50);
    std::thread::sleep(Duration::from_secs(2));
    let lost_at = Instant::now();
    pair.lose(master);
    let backup = 1 - master;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pair.master() != Some(backup) {
        anyhow::ensure!(Instant::now() < deadline, "{name}: no takeover in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let takeover_ms = lost_at.elapsed().as_secs_f64() * 1e3;
    // Long enough for a connection to recover or to be counted broken (no echo for
    // `Held::GIVE_UP`).
    std::thread::sleep((Held::GIVE_UP + Duration::from_secs(2)).saturating_sub(lost_at.elapsed()));
    let report = traffic.finish();
    for c in report.all().filter(|c| c.broken.is_some()).take(2) {
        eprintln!("routerbench: {name}: e.g. {} broke: {:?}", c.from, c.broken);
    }
    let mut r = HaResult {
        mode: name.into(),
        baseline: true,
        takeover_ms,
        longest_gap_ms: report
            .all()
            .filter(|c| c.broken.is_none())
            .map(|c| c.longest_gap().as_secs_f64() * 1e3)
            .fold(0.0, f64::max),
        ..HaResult::default()
    };
    r.count(&report);
    Ok(r)
}

impl HaResult {
    /// The connections of each group and those that survived.
    fn count(&mut self, report: &TrafficReport) {
        let survived = |v: &[ConnReport]| v.iter().filter(|c| c.broken.is_none()).count();
        (self.snat_connections, self.snat_survived) = (report.snat.len(), survived(&report.snat));
        (self.fip_connections, self.fip_survived) = (report.fip_in.len(), survived(&report.fip_in));
        (self.fip_out_connections, self.fip_out_survived) =
            (report.fip_out.len(), survived(&report.fip_out));
    }
}

/// Sends one UDP datagram from each of `rate × duration` new source ports of the VM (a
/// new SNAT session each), paced over `duration`.
fn make_sessions(vm_ns: &str, rate: u64, duration: Duration) {
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let target = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 9);
    netns::within(vm_ns, || {
        let started = Instant::now();
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let port = 20_000 + (i % 40_000) as u16;
            if let Ok(socket) = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 5), port))
            {
                let _ = socket.send_to(b"ha-sync", target);
            }
        }
    });
}

/// The report's section.
pub fn section(s: &mut String, results: &[HaResult]) {
    use std::fmt::Write as _;
    if results.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## HA: session sync and failover (two network nodes, `docs/ha.md`)\n\n\
         Sync: new SNAT sessions made at {SESSIONS_PER_S}/s (a UDP datagram from a new source \
         port each); lag = a session's creation in the active's fast path to a standby's \
         acknowledgement of its batch (p99 over the run, as the active measures it); bytes = \
         session frames sent per session made (its creation and the refreshes while it lived), \
         times 1,000 for the bandwidth per 1,000 new sessions/s. Failover: 200 SNATed TCP \
         connections, 50 opened from outside to a floating IP (`in`) and 50 opened by the VM \
         behind it (`out`), each side sending every 100 ms (an 8-byte message and its echo), the active's routerd killed with -9 \
         and its links taken down; takeover = until the standby reports itself active; gap = \
         the longest an application waited for an echo, among the connections that survived \
         (one with no echo for 20 s counts as broken); then a planned switchover back \
         (`routerctl router switchover`). The same loss under Neutron's L3 HA in the same run: \
         keepalived in both router namespaces with the L3 agent's settings (`advert_int 2`, \
         `nopreempt`, the addresses as excluded VIPs), the agent's iptables rules with \
         `--random-fully` SNAT; and the same with conntrackd (FTFW over the HA network, \
         committed by keepalived's notify script on becoming master); takeover = until the \
         backup holds the gateway address.\n\n\
         Gaps under 150 ms are not recorded (the connections send every 100 ms): 0 means none \
         over 150 ms.\n\n\
         | mode | sessions made | sync lag p99 ms | bytes/session (= KB/s per 1,000 new sessions/s) | takeover ms | SNAT survived | floating IP in / out survived | longest gap ms | switchover ms | switchover gap ms |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {}/{} | {}/{} / {}/{} | {:.0} | {} | {} |",
            r.mode,
            if r.baseline {
                "-".to_string()
            } else {
                r.sessions_made.to_string()
            },
            opt(r.sync_lag_p99_ms, 1),
            opt(r.sync_bytes_per_session, 0),
            r.takeover_ms,
            r.snat_survived,
            r.snat_connections,
            r.fip_survived,
            r.fip_connections,
            r.fip_out_survived,
            r.fip_out_connections,
            r.longest_gap_ms,
            opt(r.switchover_ms, 0),
            opt(r.switchover_gap_ms, 0)
        );
    }
}
