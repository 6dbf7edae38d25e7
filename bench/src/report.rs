//! The results as JSON, a Markdown report and SVG plots.

use std::{fmt::Write as _, path::Path};

use crate::{Results, rate, rate::RateResult};

/// A line describing this machine.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let features = router_user::datapath::features::kernel();
    let (meta, generator) = (
        if features.xdp_meta {
            "XDP programs may tag frames for TC (bpf_xdp_adjust_meta)"
        } else {
            "XDP programs may not tag frames for TC (bpf_xdp_adjust_meta refused)"
        },
        if features.xdp_live_frames {
            "the generator sends XDP live frames"
        } else {
            "live frames refused: the generator sends from an AF_PACKET socket"
        },
    );
    format!(
        "{cpus} CPUs ({model}), Linux {}; {meta}; {generator}",
        kernel.trim()
    )
}

/// Writes benchmarks.json, benchmarks.md and the plots to `dir`; when `dir` is the
/// repository's docs/, README.md's figures block too, so the README quotes this run.
pub fn write(dir: &Path, results: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("benchmarks.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    let docs = repo().join("docs").canonicalize();
    if docs.is_ok() && dir.canonicalize().ok() == docs.ok() {
        update_readme(results)?;
    }
    let md = dir.join("benchmarks.md");
    let old = std::fs::read_to_string(&md).unwrap_or_default();
    std::fs::write(&md, markdown(results, &old))?;
    if !results.scale.is_empty() {
        let mut series = Vec::new();
        for path in SCALE_PATHS {
            let points: Vec<(f64, f64)> = results
                .scale
                .iter()
                .filter(|x| x.path == path && x.flows == 60_000)
                .map(|x| (x.floating_ips as f64, x.delivered_pps / 1e6))
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    name: path.name().into(),
                    points,
                });
            }
        }
        std::fs::write(
            dir.join("rate-vs-floating-ips.svg"),
            svg_chart(
                "New connections to a floating IP (64 B, 60,000 flows)",
                "floating IPs",
                "delivered Mpps",
                &series,
            ),
        )?;
    }
    if !results.floating_ip_connections.is_empty() {
        let series: Vec<Series> = SCALE_PATHS
            .into_iter()
            .map(|path| Series {
                name: path.name().into(),
                points: results
                    .floating_ip_connections
                    .iter()
                    .filter(|c| c.path == path)
                    .map(|c| (c.floating_ips as f64, c.connections_per_sec / 1e3))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        std::fs::write(
            dir.join("connections-vs-floating-ips.svg"),
            svg_chart(
                "New TCP connections to a floating IP",
                "floating IPs",
                "thousand connections/s",
                &series,
            ),
        )?;
    }
    if !results.micro.is_empty() {
        let mut series = Vec::new();
        for dim in ["routes", "floating_ips", "sessions"] {
            for scenario in ["route_only", "fip_in", "snat_established"] {
                let points: Vec<(f64, f64)> = results
                    .micro
                    .iter()
                    .filter(|m| {
                        m.dimension == dim
                            && m.scenario == scenario
                            && m.entry == "xdp"
                            && m.method == "single-runs"
                    })
                    .map(|m| (m.size as f64, m.ns_per_packet))
                    .collect();
                if points.len() > 1 {
                    series.push(Series {
                        name: format!("{scenario} / {dim}"),
                        points,
                    });
                }
            }
        }
        std::fs::write(
            dir.join("ns-per-packet-vs-table-size.svg"),
            svg_chart(
                "XDP entry: ns per packet (single runs) as tables grow",
                "entries in the table varied",
                "ns / packet",
                &series,
            ),
        )?;
    }
    Ok(())
}

/// The paths measured as floating IPs grow.
const SCALE_PATHS: [rate::Path; 4] = [
    rate::Path::Xdp,
    rate::Path::Tc,
    rate::Path::Neutron,
    rate::Path::Nftables,
];

fn mpps(pps: f64) -> String {
    format!("{:.3}", pps / 1e6)
}

/// Text between `<!-- kept: NAME -->` and `<!-- /kept -->` in `old`, markers included:
/// hand-written text that a regenerated file carries over.
pub fn kept_block(old: &str, name: &str) -> Option<String> {
    let start_marker = format!("<!-- kept: {name} -->");
    let start = old.find(&start_marker)?;
    let end = old[start..].find("<!-- /kept -->")? + start + "<!-- /kept -->".len();
    Some(old[start..end].to_string())
}

/// The report; `old` is the file it replaces, whose kept blocks it carries over.
fn markdown(r: &Results, old: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(s, "Command: `{}`  \nMachine: {}\n", r.command, r.machine);
    targets(&mut s, r);
    let _ = writeln!(
        s,
        "Where the time goes, from `perf` profiles of these same workloads \
         (`cargo xtask bench --profile`): [profile.md](profile.md).\n"
    );
    if let Some(block) = kept_block(old, "targets") {
        let _ = writeln!(s, "{block}\n");
    }
    if !r.micro.is_empty() {
        let _ = writeln!(
            s,
            "## Per-packet cost (BPF_PROG_TEST_RUN)\n\n\
             Each table is grown alone from the baseline (10 routes, 1 floating IP, 1k sessions), \
             whose row (`baseline`) stands for every table at that size. \
             `repeat`: one frame run many times in the kernel (only where the rewritten frame is a \
             valid input again); `single-runs`: the mean of many runs of one repetition each, \
             which adds about 45-90 ns of per-run overhead (compare the two rows of a scenario). \
             Every other scenario finds its route in each CPU's route cache (`ROUTE_CACHE`), as \
             a flow's packets after its first do; `route_only_cold`: `route_only` with the \
             routes' epoch at 0, which no cached lookup is used at, so its lookup misses the \
             cache, goes to the trie and writes the cache, as a flow's first packet does. \
             `steering`: an `iif` policy rule's table sends the packet to a firewall on another \
             internal interface. `firewall_established` and `firewall_new`: the firewall on with \
             10 rules; a packet of an existing SNAT session (compare `snat_established`), and a \
             new flow from a floating IP's fixed address that walks every rule to the allow at \
             the end and creates a forward session (compare `fip_out` and `snat_new`).\n"
        );
        let _ = writeln!(
            s,
            "| scenario | entry | table grown | entries | ns/packet | method |\n|---|---|---|---|---|---|"
        );
        // The baseline is one measurement per scenario, entry and method: shown once.
        let mut baselines_shown = std::collections::BTreeSet::new();
        for m in &r.micro {
            let (grown, entries) = if m.is_baseline() {
                if !baselines_shown.insert((&m.scenario, &m.entry, &m.method)) {
                    continue;
                }
                ("baseline", "-".to_string())
            } else {
                (m.dimension.as_str(), m.size.to_string())
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} | {} |",
                m.scenario, m.entry, grown, entries, m.ns_per_packet, m.method
            );
        }
        let _ = writeln!(
            s,
            "\n![ns per packet vs table size](ns-per-packet-vs-table-size.svg)\n"
        );
    }
    crate::live::markdown(&mut s, r);
    if !r.rate.is_empty() {
        let _ = writeln!(
            s,
            "## Forwarding rate (external host -> floating IP -> VM)\n"
        );
        let _ = writeln!(
            s,
            "The last column is the router programs' own time per frame under this load, from \
             the kernel's BPF run statistics, taken in a second run (they slow every program, \
             so the rates are measured with them off; the figure includes their own clock \
             reads).\n\n\
             | path | frame | flows | offered Mpps | delivered Mpps | vs Neutron | vs nftables maps | vs ceiling | router program ns/frame |\n|---|---|---|---|---|---|---|---|---|"
        );
        for x in &r.rate {
            let find = |p: rate::Path| {
                r.rate
                    .iter()
                    .find(|y| y.path == p && y.frame_bytes == x.frame_bytes && y.flows == x.flows)
                    .map(|y| y.delivered_pps)
            };
            let ratio = |base: Option<f64>| match base {
                Some(b) if b > 0.0 => format!("{:.2}x", x.delivered_pps / b),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} B | {} | {} | {} | {} | {} | {} | {} |",
                x.path.name(),
                x.frame_bytes,
                x.flows,
                mpps(x.offered_pps),
                mpps(x.delivered_pps),
                ratio(find(rate::Path::Neutron)),
                ratio(find(rate::Path::Nftables)),
                ratio(find(rate::Path::Ceiling)),
                x.router_program_ns
                    .map_or("-".into(), |ns| format!("{ns:.0}")),
            );
        }
    }
    if !r.tcp.is_empty() {
        let nftables_ports = if r.tcp.iter().any(|t| t.path == rate::Path::Nftables) {
            " The nftables path's gateway SNAT takes ports 1024-65535 (routerd's slow path, with \
             no fast path beside it, gets the range Neutron's rules give the kernel)."
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "\n## TCP\n\nNew connections: {} clients at once, each connecting and closing in a loop; \
             a SYN sent again costs its client a second.{nftables_ports}\n\n\
             | path | iperf3 VM -> external (Gbit/s) | new SNAT connections/s | SYNs sent again | router: not forwarded |\n|---|---|---|---|---|",
            rate::CONNECTING_CLIENTS
        );
        for t in &r.tcp {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.0} | {} | {} |",
                t.path.name(),
                t.throughput_gbps,
                t.snat_connections_per_sec,
                t.syn_retransmits,
                by_reason(t.path, &t.not_forwarded)
            );
        }
    }
    cpu_section(&mut s, r);
    if !r.scale.is_empty() {
        let _ = writeln!(
            s,
            "\n## Floating IPs: rate as their number grows (64-byte frames)\n"
        );
        let _ = writeln!(
            s,
            "![rate vs floating IPs](rate-vs-floating-ips.svg)\n\n| path | floating IPs | flows | delivered Mpps |\n|---|---|---|---|"
        );
        for x in &r.scale {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                x.path.name(),
                x.floating_ips,
                x.flows,
                mpps(x.delivered_pps)
            );
        }
    }
    if !r.floating_ip_connections.is_empty() {
        let _ = writeln!(
            s,
            "\n## Floating IPs: new TCP connections as their number grows\n\n\
             ![connections vs floating IPs](connections-vs-floating-ips.svg)\n\n\
             External host -> the last floating IP configured -> VM, {} clients at once.\n\n\
             | path | floating IPs | new connections/s | SYNs sent again | router: not forwarded |\n|---|---|---|---|---|",
            rate::CONNECTING_CLIENTS
        );
        for c in &r.floating_ip_connections {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} |",
                c.path.name(),
                c.floating_ips,
                c.connections_per_sec,
                c.syn_retransmits,
                by_reason(c.path, &c.not_forwarded)
            );
        }
    }
    if !r.updates.is_empty() {
        let _ = writeln!(
            s,
            "\n## Forwarding while floating IPs change (64 B, 1024 flows)\n\n| path | floating IPs | applies during the run | offered Mpps | delivered Mpps | lost | router: forwarded / not forwarded |\n|---|---|---|---|---|---|---|"
        );
        for u in &r.updates {
            let lost = (u.offered_pps - u.delivered_pps).max(0.0) / u.offered_pps.max(1.0);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.4}% | {} / {} |",
                u.path,
                u.floating_ips,
                u.applies,
                mpps(u.offered_pps),
                mpps(u.delivered_pps),
                lost * 100.0,
                u.router_forwarded,
                u.router_not_forwarded
            );
        }
    }
    if !r.control.is_empty() {
        let _ = writeln!(
            s,
            "\n## Control plane\n\n| what | path | floating IPs | ms |\n|---|---|---|---|"
        );
        for c in &r.control {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} |",
                c.what, c.path, c.floating_ips, c.millis
            );
        }
    }
    crate::cluster_report::section(&mut s, r);
    crate::ha::section(&mut s, &r.ha);
    crate::dvr::section(&mut s, &r.dvr, &r.dvr_objects);
    s
}

/// CPU time at a fixed offered load: the machine's, and the same minus the ceiling's (what
/// the router adds to moving the frames from generator to sink).
fn cpu_section(s: &mut String, r: &Results) {
    let Some(first) = r.cpu.first() else {
        return;
    };
    let _ = writeln!(
        s,
        "\n## CPU at a fixed load ({} frames/s offered, {} B, {} flows)\n\n\
         CPU time over the run, per second of traffic and per delivered frame, two ways. \
         **Machine**: every CPU's wall time minus its idle and iowait time (`/proc/stat`, in \
         10 ms units); anything else the machine runs meanwhile counts too, so on a shared \
         machine compare paths within a run. **Sender**: the generator thread's and the \
         `ksoftirqd` threads' time on the scheduler's clock: each send carries its frames \
         through the router and into the sink in softirq on the sending CPU, so this is the \
         path's work without other processes' (softirq work that interrupts another process \
         is missed). The generator and the sink count in both; the router's share is the \
         figure minus the veth ceiling's (the generator straight into the sink).\n\n\
         | path | offered kframes/s | delivered kframes/s | machine CPU ms per s | machine CPU ns per frame | router's share (machine), ns per frame | sender CPU ms per s | sender CPU ns per frame | router's share (sender), ns per frame |\n|---|---|---|---|---|---|---|---|---|",
        thousands(first.paced_pps as f64),
        first.frame_bytes,
        first.flows
    );
    let ceiling = r.cpu.iter().find(|c| c.path == rate::Path::Ceiling);
    let ns = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    for c in &r.cpu {
        let share = |of: fn(&rate::CpuResult) -> Option<f64>| match ceiling {
            Some(base) if c.path != rate::Path::Ceiling => {
                ns(of(c).zip(of(base)).map(|(a, b)| a - b))
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.0} | {} | {} | {:.0} | {} | {} |",
            c.path.name(),
            c.offered_pps / 1e3,
            c.delivered_pps / 1e3,
            c.cpu_ms_per_sec,
            ns(c.cpu_ns_per_frame),
            share(|c| c.cpu_ns_per_frame),
            c.sending_ms_per_sec,
            ns(c.sending_ns_per_frame),
            share(|c| c.sending_ns_per_frame),
        );
    }
}

/// One line of a plot: a name and its (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// A line chart as SVG, x on a log10 axis (table sizes, floating IPs span decades).
pub fn svg_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 200.0, 40.0, 50.0);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_min = all()
        .map(|p| p.0.max(1.0).log10())
        .fold(f64::INFINITY, f64::min);
    let x_max = all()
        .map(|p| p.0.max(1.0).log10())
        .fold(f64::NEG_INFINITY, f64::max);
    let y_max = all().map(|p| p.1).fold(0.0, f64::max) * 1.1;
    let x_span = if x_max > x_min { x_max - x_min } else { 1.0 };
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let px = |x: f64| left + (x.max(1.0).log10() - x_min) / x_span * (w - left - right);
    let py = |y: f64| h - bottom - y / y_max * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{title}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{y_label}</text>\n",
        (w - right + left) / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (w - right + left) / 2.0,
        h - 12.0,
        (h - bottom + top) / 2.0,
        (h - bottom + top) / 2.0,
    );
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let (label_x, label_y, grid_y, grid_end) = (left - 6.0, py(y) + 4.0, py(y), w - right);
        let label = if y_max >= 10.0 {
            format!("{y:.0}")
        } else {
            format!("{y:.2}")
        };
        let _ = writeln!(
            s,
            "<text x=\"{label_x}\" y=\"{label_y}\" text-anchor=\"end\">{label}</text><line x1=\"{left}\" y1=\"{grid_y}\" x2=\"{grid_end}\" y2=\"{grid_y}\" stroke=\"#ddd\"/>"
        );
    }
    let mut ticks: Vec<f64> = all().map(|p| p.0).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x}</text>",
            px(x),
            h - bottom + 16.0
        );
    }
    for (i, series) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = series
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        for p in &points {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                s,
                "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
        let ly = top + 18.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            w - right + 12.0,
            ly,
            w - right + 30.0,
            ly + 10.0,
            series.name
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The targets against this run's figures, as the report's section.
fn targets(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Targets\n");
    targets_table(s, r);
    let _ = writeln!(s);
    if let Some(note) = crate::scale_runs::note(&crate::scale_runs::runs(&repo().join("docs"))) {
        let _ = writeln!(
            s,
            "{note}
"
        );
    }
    if let Some(probe) = &r.flowtable {
        let _ = writeln!(s, "{}\n", flowtable_note(probe));
    }
}

/// Why the kernel baselines are iptables and nftables maps, and not the nftables flowtable
/// as well, from this run's probe of the kernel.
fn flowtable_note(probe: &rate::FlowtableProbe) -> String {
    let config = probe.kernel_config.as_ref().map_or(String::new(), |line| {
        format!(" (its configuration: `{line}`)")
    });
    if probe.available {
        format!(
            "The nftables flowtable (the kernel's own fast path for established flows) would be \
             the natural third kernel baseline; this kernel makes one{config}, but this run does \
             not measure it."
        )
    } else {
        format!(
            "The nftables flowtable (the kernel's own fast path for established flows) would be \
             the natural third kernel baseline, but this kernel is built without \
             `CONFIG_NF_FLOW_TABLE`{config}: `nft add flowtable` in a scratch namespace fails \
             (\"{}\"), so the kernel baselines are Neutron's iptables rules and routerd's \
             slow-path nftables maps.",
            probe.nft_said.trim()
        )
    }
}

/// The targets table: each target, what was wanted, this run's value and whether it is met.
fn targets_table(s: &mut String, r: &Results) {
    let micro = |scenario: &str, method: &str, dim: &str, size: u64| {
        r.micro
            .iter()
            .find(|m| {
                m.scenario == scenario
                    && m.entry == "xdp"
                    && m.method == method
                    && m.dimension == dim
                    && m.size == size
            })
            .map(|m| m.ns_per_packet)
    };
    let rate = |path: rate::Path| {
        r.rate
            .iter()
            .find(|x| x.path == path && x.frame_bytes == 64 && x.flows == 1024)
            .map(|x| x.delivered_pps)
    };
    let tcp = |path: rate::Path| {
        r.tcp
            .iter()
            .find(|t| t.path == path)
            .map(|t| t.throughput_gbps)
    };
    let snat_connections = |path: rate::Path| {
        r.tcp
            .iter()
            .find(|t| t.path == path)
            .map(|t| t.snat_connections_per_sec)
    };
    // The nftables baseline's targets, for runs that measured it.
    let nftables = r
        .rate
        .iter()
        .map(|x| x.path)
        .chain(r.tcp.iter().map(|t| t.path))
        .any(|p| p == rate::Path::Nftables);
    let control = r
        .control
        .iter()
        .find(|c| c.what.contains("from none"))
        .map(|c| c.millis);
    let mut rows: Vec<(String, String, Option<f64>, bool)> = Vec::new();
    let mut row = |what: &str, target: &str, value: Option<f64>, ok: fn(f64) -> bool| {
        rows.push((what.into(), target.into(), value, value.is_some_and(ok)));
    };
    row(
        "route only, XDP, ns/packet (repeat, 10 routes)",
        "<= 70",
        micro("route_only", "repeat", "routes", 10),
        |v| v <= 70.0,
    );
    row(
        "floating IP in, XDP, ns/packet (single runs)",
        "<= 90",
        micro("fip_in", "single-runs", "routes", 10),
        |v| v <= 90.0,
    );
    row(
        "SNAT established, XDP, ns/packet (single runs)",
        "<= 110",
        micro("snat_established", "single-runs", "routes", 10),
        |v| v <= 110.0,
    );
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    row(
        "XDP / Neutron, 64 B, 1024 flows",
        ">= 5x",
        ratio(rate(rate::Path::Xdp), rate(rate::Path::Neutron)),
        |v| v >= 5.0,
    );
    row(
        "TC / Neutron, 64 B, 1024 flows",
        ">= 2x",
        ratio(rate(rate::Path::Tc), rate(rate::Path::Neutron)),
        |v| v >= 2.0,
    );
    row(
        "TCP throughput, TC / Neutron",
        ">= 1x",
        ratio(tcp(rate::Path::Tc), tcp(rate::Path::Neutron)),
        |v| v >= 1.0,
    );
    row(
        "TCP throughput, default mode (auto) / Neutron",
        ">= 1x",
        ratio(tcp(rate::Path::Auto), tcp(rate::Path::Neutron)),
        |v| v >= 1.0,
    );
    if nftables {
        row(
            "TC / nftables maps, 64 B, 1024 flows, packets/s",
            ">= 1x",
            ratio(rate(rate::Path::Tc), rate(rate::Path::Nftables)),
            |v| v >= 1.0,
        );
        row(
            "TC / nftables maps, new connections/s",
            ">= 1x",
            ratio(
                snat_connections(rate::Path::Tc),
                snat_connections(rate::Path::Nftables),
            ),
            |v| v >= 1.0,
        );
        row(
            "XDP / nftables maps, 64 B, 1024 flows, packets/s",
            ">= 4x",
            ratio(rate(rate::Path::Xdp), rate(rate::Path::Nftables)),
            |v| v >= 4.0,
        );
    }
    row("10k floating IPs applied, ms", "<= 100", control, |v| {
        v <= 100.0
    });
    let one_beside = r
        .control
        .iter()
        .find(|c| c.what.contains("through the API"))
        .map(|c| c.millis);
    row(
        "one floating IP beside 10k applied (API, median), ms",
        "<= 10",
        one_beside,
        |v| v <= 10.0,
    );
    use crate::cluster_report::{BULK_MS, ONE_FIP_P99_MS, bulk_max, one_fip_p99};
    row(
        "one floating IP through etcd to the fast path, p99 ms",
        "<= 100",
        one_fip_p99(r),
        |v| v <= ONE_FIP_P99_MS,
    );
    let (bulk, fips, nodes) = bulk_max(r).map_or((None, 10_000, 3), |(v, f, n)| (Some(v), f, n));
    row(
        &format!("{fips} floating IPs over {nodes} nodes through etcd, ms (slowest round)"),
        "<= 2000",
        bulk,
        |v| v <= BULK_MS,
    );
    // HA: the worst of the modes measured.
    let ha = |f: fn(&crate::ha::HaResult) -> f64, worst: fn(f64, f64) -> f64| {
        r.ha.iter().filter(|h| !h.baseline).map(f).reduce(worst)
    };
    row(
        &format!(
            "HA: sync lag at {} new sessions/s, p99 ms",
            crate::ha::SESSIONS_PER_S
        ),
        "<= 50",
        ha(|h| h.sync_lag_p99_ms.unwrap_or(f64::INFINITY), f64::max),
        |v| v <= crate::ha::LAG_P99_MS,
    );
    row(
        "HA: connections surviving the loss of the active node, %",
        ">= 99.9",
        ha(
            |h| {
                100.0 * (h.snat_survived + h.fip_survived + h.fip_out_survived) as f64
                    / (h.snat_connections + h.fip_connections + h.fip_out_connections).max(1) as f64
            },
            f64::min,
        ),
        |v| v >= 99.9,
    );
    row(
        "HA: longest gap an application saw when the active node was lost, ms",
        "<= 1000",
        ha(|h| h.longest_gap_ms, f64::max),
        |v| v <= 1000.0,
    );
    row(
        "HA: longest gap in a planned switchover, ms",
        "<= 200",
        ha(|h| h.switchover_gap_ms.unwrap_or(f64::INFINITY), f64::max),
        |v| v <= 200.0,
    );
    // Distributed routers: the worse mode of the run.
    let dvr = |what: fn(&crate::dvr::DvrResult) -> f64, worst: fn(f64, f64) -> f64| {
        ["xdp", "tc"]
            .iter()
            .filter_map(|mode| {
                let of = |path: &str| r.dvr.iter().find(|d| d.mode == *mode && d.path == path);
                Some(what(of("distributed")?) / what(of("centralised")?).max(1e-9))
            })
            .reduce(worst)
    };
    row(
        "DVR: cross-node east-west packets/s, distributed / centralised",
        ">= 1",
        dvr(|d| d.delivered_pps, f64::min),
        |v| v >= 1.0,
    );
    row(
        "DVR: cross-node east-west round trip (median), distributed / centralised",
        "<= 1",
        dvr(|d| d.rtt_median_us, f64::max),
        |v| v <= 1.0,
    );
    rows.extend(crate::scale_runs::rows(&crate::scale_runs::runs(
        &repo().join("docs"),
    )));
    let _ = writeln!(s, "| target | wanted | this run | met |\n|---|---|---|---|");
    for (what, target, value, ok) in rows {
        let value = value.map_or("-".to_string(), |v| format!("{v:.2}"));
        let _ = writeln!(
            s,
            "| {what} | {target} | {value} | {} |",
            if ok { "yes" } else { "no" }
        );
    }
}

/// The first line of the README's figures block; the block ends at [`FIGURES_END`].
pub const FIGURES_START: &str =
    "<!-- figures: generated from docs/benchmarks.json by routerbench; do not edit -->";
pub const FIGURES_END: &str = "<!-- /figures -->";

/// The README's figures block (markers included): this run's targets and headline figures,
/// the ones `docs/benchmarks.md` has in full.
pub fn readme_figures(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{FIGURES_START}\nThe latest `cargo xtask bench` run, on {} (`docs/benchmarks.md` has \
         every row; numbers move by 10-30% between runs on these machines, ratios less):\n",
        r.machine
    );
    targets_table(&mut s, r);
    let paths = [rate::Path::Xdp, rate::Path::Tc, rate::Path::Neutron];
    let rate = |list: &[RateResult], path, flows, fips: Option<usize>| {
        list.iter()
            .find(|x| {
                x.path == path
                    && x.frame_bytes == 64
                    && x.flows == flows
                    && fips.is_none_or(|n| x.floating_ips == n)
            })
            .map(|x| x.delivered_pps)
    };
    let neutron = rate(&r.rate, rate::Path::Neutron, 1024, None);
    let ceiling = rate(&r.rate, rate::Path::Ceiling, 1024, None);
    let _ = writeln!(
        s,
        "\n| | fast path XDP | fast path TC | Neutron iptables |\n|---|---|---|---|"
    );
    let mut row = |what: String, cells: [String; 3]| {
        let _ = writeln!(s, "| {what} | {} | {} | {} |", cells[0], cells[1], cells[2]);
    };
    row(
        format!(
            "64 B UDP to a floating IP, 1024 flows (generator and sink share the CPUs; veth \
             ceiling {})",
            or_dash(ceiling.map(|c| format!("{:.1} Mpps", c / 1e6)))
        ),
        paths.map(|p| {
            let v = rate(&r.rate, p, 1024, None);
            let ratio = match (p, v, neutron) {
                (rate::Path::Neutron, ..) => String::new(),
                (_, Some(v), Some(n)) if n > 0.0 => format!(" ({:.2}x)", v / n),
                _ => String::new(),
            };
            or_dash(v.map(|v| format!("{:.2} Mpps{ratio}", v / 1e6)))
        }),
    );
    row(
        "the router programs' own time per frame under that load (kernel BPF statistics)".into(),
        paths.map(|p| {
            r.rate
                .iter()
                .find(|x| x.path == p && x.frame_bytes == 64 && x.flows == 1024)
                .and_then(|x| x.router_program_ns)
                .map_or(String::new(), |ns| format!("{ns:.0} ns"))
        }),
    );
    row(
        "same, 60,000 flows (a new connection per packet), 10,000 floating IPs".into(),
        paths.map(|p| {
            let v = rate(&r.scale, p, 60_000, Some(10_000));
            or_dash(v.map(|v| format!("{:.3} Mpps", v / 1e6)))
        }),
    );
    let tcp = |p: rate::Path| r.tcp.iter().find(|t| t.path == p);
    row(
        "iperf3 VM → external".into(),
        paths.map(|p| or_dash(tcp(p).map(|t| format!("{:.1} Gbit/s", t.throughput_gbps)))),
    );
    row(
        format!(
            "new TCP connections/s through SNAT ({} clients connecting and closing in a loop)",
            rate::CONNECTING_CLIENTS
        ),
        paths.map(|p| or_dash(tcp(p).map(|t| hundreds(t.snat_connections_per_sec)))),
    );
    let fip = |p: rate::Path, n: usize| {
        r.floating_ip_connections
            .iter()
            .find(|c| c.path == p && c.floating_ips == n)
            .map(|c| hundreds(c.connections_per_sec))
    };
    row(
        "new TCP connections/s to a floating IP, 1 → 10,000 floating IPs".into(),
        paths.map(|p| match (fip(p, 1), fip(p, 10_000)) {
            (Some(a), Some(b)) => format!("{a} → {b}"),
            _ => "-".into(),
        }),
    );
    let updates = |p: rate::Path| {
        r.updates
            .iter()
            .find(|u| u.path == p.name())
            .map_or(String::new(), |u| {
                let lost = (u.offered_pps - u.delivered_pps).max(0.0);
                format!("{lost:.0} lost ({} applies)", u.applies)
            })
    };
    if let Some(u) = r.updates.first() {
        row(
            format!(
                "64 B frames lost while floating IPs are applied, {} configured",
                thousands(u.floating_ips as f64)
            ),
            paths.map(|p| {
                if p == rate::Path::Neutron {
                    String::new()
                } else {
                    updates(p)
                }
            }),
        );
    }
    let control = |what: &str| {
        r.control
            .iter()
            .find(|c| c.what.contains(what))
            .map(|c| c.millis)
    };
    let bulk = [
        control("from none").map(|ms| format!("{ms:.0} ms (SIGHUP, parse included)")),
        control("the router's own apply of 10")
            .map(|ms| format!("of which the router's own apply {ms:.0} ms")),
        r.control
            .iter()
            .find(|c| c.what.contains("routerctl") && c.what.contains("from none"))
            .map(|c| {
                let command = c.what.split('`').nth(1).unwrap_or("routerctl");
                format!(
                    "{:.0} ms with `{command}` (command start to exit: API, validation, \
                     the edit fsync'd in the state file's journal)",
                    c.millis
                )
            }),
    ];
    let bulk: Vec<String> = bulk.into_iter().flatten().collect();
    let iptables = r
        .control
        .iter()
        .find(|c| c.what.contains("iptables-restore") && c.floating_ips == 10_000)
        .map_or(String::new(), |c| {
            format!("{:.0} ms (`iptables-restore`)", c.millis)
        });
    row(
        "apply 10,000 floating IPs".into(),
        [
            or_dash(Some(bulk.join("; ")).filter(|b| !b.is_empty())),
            String::new(),
            iptables,
        ],
    );
    let single = [
        control("through the API")
            .map(|ms| format!("{ms:.1} ms through the API (`fip_create`/`fip_delete`, median)")),
        control("median of the next")
            .map(|ms| format!("{ms:.0} ms by SIGHUP (median of the changes after the first)")),
        control("the router's own apply of one floating IP").map(|ms| {
            format!("of which the router's own apply {ms:.1} ms (maps, slow-path rules)")
        }),
        control("adds one floating IP to")
            .map(|ms| format!("the first change after a bulk apply {ms:.0} ms")),
    ];
    let single: Vec<String> = single.into_iter().flatten().collect();
    row(
        "one floating IP added or removed beside 10,000 (to applied)".into(),
        [
            or_dash(Some(single.join("; ")).filter(|b| !b.is_empty())),
            String::new(),
            String::new(),
        ],
    );
    let ns = |scenario: &str, method: &str| {
        r.micro
            .iter()
            .find(|m| {
                m.scenario == scenario
                    && m.entry == "xdp"
                    && m.method == method
                    && m.dimension == "routes"
                    && m.size == 10
            })
            .map_or("-".to_string(), |m| format!("{:.0}", m.ns_per_packet))
    };
    if !r.micro.is_empty() {
        let _ = writeln!(
            s,
            "\nPer packet (BPF_PROG_TEST_RUN, XDP entry, 10 routes): route only {} ns repeated in \
             the kernel (the floor of an XDP run: {} ns); as single runs (which include ~45-90 ns \
             of per-run overhead): route only {}, floating IP in {}, established SNAT {}, \
             steering {}, an established packet with the firewall on {}, a new flow through 10 \
             firewall rules {}, a new SNAT session {} ns.",
            ns("route_only", "repeat"),
            ns("floor_arp_pass", "repeat"),
            ns("route_only", "single-runs"),
            ns("fip_in", "single-runs"),
            ns("snat_established", "single-runs"),
            ns("steering", "single-runs"),
            ns("firewall_established", "single-runs"),
            ns("firewall_new", "single-runs"),
            ns("snat_new", "single-runs"),
        );
    }
    s.push_str(FIGURES_END);
    s.push('\n');
    s
}

fn or_dash(cell: Option<String>) -> String {
    cell.unwrap_or_else(|| "-".into())
}

/// A rate rounded to hundreds, with thousands separators: `32,300`.
fn hundreds(v: f64) -> String {
    thousands((v / 100.0).round() * 100.0)
}

/// An integer with thousands separators: `10,000`.
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

/// The repository this crate was built from (README.md and docs/ are there).
pub fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Rewrites README.md's figures block from `results`.
pub fn update_readme(results: &Results) -> anyhow::Result<()> {
    let path = repo().join("README.md");
    let readme = std::fs::read_to_string(&path)?;
    let updated = with_figures(&readme, &readme_figures(results)).ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no figures block ({FIGURES_START} ... {FIGURES_END})",
            path.display()
        )
    })?;
    if updated != readme {
        std::fs::write(&path, updated)?;
    }
    Ok(())
}

/// `readme` with its figures block (from [`FIGURES_START`] to [`FIGURES_END`]) replaced by
/// `block`; `None` when it has no such block.
pub fn with_figures(readme: &str, block: &str) -> Option<String> {
    let start = readme.find(FIGURES_START)?;
    let end = readme[start..].find(FIGURES_END)? + start + FIGURES_END.len();
    let end = if readme[end..].starts_with('\n') {
        end + 1
    } else {
        end
    };
    Some(format!("{}{block}{}", &readme[..start], &readme[end..]))
}

/// `reason count, ...`, "none" when empty, "-" for the kernel baselines (no router counters).
fn by_reason(path: rate::Path, counts: &std::collections::BTreeMap<String, u64>) -> String {
    if path.is_kernel_baseline() {
        return "-".into();
    }
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written notes under the targets survive a regenerated report.
    /// Each grid line is drawn at its label's height (they once sat at the label's value).
    #[test]
    fn grid_lines_sit_at_their_labels() {
        let svg = svg_chart(
            "t",
            "x",
            "y",
            &[Series {
                name: "s".into(),
                points: vec![(1.0, 20.0), (10.0, 40.0)],
            }],
        );
        let grid: Vec<&str> = svg.lines().filter(|l| l.contains("#ddd")).collect();
        assert_eq!(grid.len(), 5);
        for line in grid {
            let attr = |name: &str| -> f64 {
                let at = line.find(&format!(" {name}=\"")).expect(name) + name.len() + 3;
                line[at..]
                    .split('"')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect(name)
            };
            assert_eq!(attr("y1"), attr("y") - 4.0, "{line}");
            assert_eq!(attr("y1"), attr("y2"), "{line}");
        }
    }

    /// README.md's figures block is what the renderer makes of docs/benchmarks.json (after a
    /// benchmark run that wrote only docs/, or a hand edit, `routerbench --readme` fixes it).
    #[test]
    fn the_readme_quotes_the_latest_benchmarks() {
        let json = std::fs::read_to_string(repo().join("docs/benchmarks.json"))
            .expect("docs/benchmarks.json");
        let results: Results = serde_json::from_str(&json).expect("docs/benchmarks.json parses");
        let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
        let start = readme
            .find(FIGURES_START)
            .expect("README.md has a figures block");
        let end = readme[start..]
            .find(FIGURES_END)
            .map(|e| start + e + FIGURES_END.len() + 1)
            .expect("the figures block ends");
        assert_eq!(
            &readme[start..end.min(readme.len())],
            readme_figures(&results),
            "README.md's figures differ from docs/benchmarks.json: run `routerbench --readme`"
        );
    }

    #[test]
    fn the_figures_block_is_replaced_and_the_text_around_it_kept() {
        let readme = format!("intro\n\n{FIGURES_START}\nold\n{FIGURES_END}\n\nafter\n");
        let block = readme_figures(&Results::default());
        assert_eq!(
            with_figures(&readme, &block),
            Some(format!("intro\n\n{block}\nafter\n"))
        );
        assert_eq!(with_figures("no block", &block), None);
    }

    fn rate_row(path: rate::Path, delivered_pps: f64) -> RateResult {
        RateResult {
            path,
            frame_bytes: 64,
            flows: 1024,
            floating_ips: 1,
            offered_pps: delivered_pps,
            delivered_pps,
            router_program_ns: None,
        }
    }

    fn tcp_row(path: rate::Path, snat_connections_per_sec: f64) -> rate::TcpResult {
        rate::TcpResult {
            path,
            throughput_gbps: 10.0,
            snat_connections_per_sec,
            syn_retransmits: 0,
            not_forwarded: Default::default(),
        }
    }

    /// The nftables baseline's targets are the fast path's figures over its, in the report
    /// and the README; a run (or an older results file) without it has none of them.
    #[test]
    fn nftables_targets_are_ratios_to_the_nftables_baseline() {
        let mut r = Results {
            rate: vec![
                rate_row(rate::Path::Xdp, 1_000_000.0),
                rate_row(rate::Path::Tc, 600_000.0),
                rate_row(rate::Path::Nftables, 400_000.0),
            ],
            tcp: vec![
                tcp_row(rate::Path::Tc, 20_000.0),
                tcp_row(rate::Path::Nftables, 25_000.0),
            ],
            ..Default::default()
        };
        let md = markdown(&r, "");
        for line in [
            "| TC / nftables maps, 64 B, 1024 flows, packets/s | >= 1x | 1.50 | yes |",
            "| TC / nftables maps, new connections/s | >= 1x | 0.80 | no |",
            "| XDP / nftables maps, 64 B, 1024 flows, packets/s | >= 4x | 2.50 | no |",
        ] {
            assert!(md.contains(line), "missing {line:?} in:\n{md}");
            assert!(readme_figures(&r).contains(line));
        }
        r.rate.retain(|x| x.path != rate::Path::Nftables);
        r.tcp.retain(|t| t.path != rate::Path::Nftables);
        assert!(!markdown(&r, "").contains("/ nftables maps"));
        assert!(!readme_figures(&r).contains("nftables"));
    }

    /// A results file written before the CPU section and the flowtable probe still loads
    /// (`routerbench --readme` re-renders the README from it).
    #[test]
    fn the_baseline_row_is_shown_once_per_scenario_entry_and_method() {
        let row = |dimension: &str, size, ns| crate::micro::MicroResult {
            scenario: "route_only".into(),
            entry: "xdp".into(),
            dimension: dimension.into(),
            size,
            ns_per_packet: ns,
            method: "repeat".into(),
        };
        let r = Results {
            micro: vec![
                row("routes", 10, 100.0),
                row("routes", 100_000, 140.0),
                row("floating_ips", 1, 100.0),
                row("sessions", 1000, 100.0),
                row("sessions", 1_000_000, 120.0),
            ],
            ..Results::default()
        };
        let text = markdown(&r, "");
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("| route_only |"))
            .collect();
        assert_eq!(
            rows,
            [
                "| route_only | xdp | baseline | - | 100.0 | repeat |",
                "| route_only | xdp | routes | 100000 | 140.0 | repeat |",
                "| route_only | xdp | sessions | 1000000 | 120.0 | repeat |",
            ]
        );
    }

    #[test]
    fn results_without_cpu_or_flowtable_load() {
        let mut json = serde_json::to_value(Results::default()).expect("serialises");
        let fields = json.as_object_mut().expect("an object");
        assert!(fields.remove("cpu").is_some() && fields.remove("flowtable").is_some());
        let r: Results = serde_json::from_value(json).expect("loads without them");
        assert!(r.cpu.is_empty() && r.flowtable.is_none());
    }

    /// The router's share of the CPU is each path's figure minus the ceiling's.
    #[test]
    fn cpu_share_is_the_path_minus_the_ceiling() {
        let cpu = |path, machine_ns: f64, sender_ns: f64| rate::CpuResult {
            path,
            frame_bytes: 64,
            flows: 1024,
            paced_pps: 150_000,
            offered_pps: 150_000.0,
            delivered_pps: 150_000.0,
            cpu_ms_per_sec: machine_ns * 0.15,
            cpu_ns_per_frame: Some(machine_ns),
            sending_ms_per_sec: sender_ns * 0.15,
            sending_ns_per_frame: Some(sender_ns),
        };
        let r = Results {
            cpu: vec![
                cpu(rate::Path::Ceiling, 300.0, 200.0),
                cpu(rate::Path::Nftables, 1800.0, 1500.0),
            ],
            ..Default::default()
        };
        let md = markdown(&r, "");
        assert!(
            md.contains("(150,000 frames/s offered, 64 B, 1024 flows)"),
            "{md}"
        );
        assert!(
            md.contains("| veth ceiling | 150.0 | 150.0 | 45 | 300 | - | 30 | 200 | - |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| nftables maps | 150.0 | 150.0 | 270 | 1800 | 1500 | 225 | 1500 | 1300 |"
            ),
            "{md}"
        );
    }

    /// The report says why the flowtable is not a baseline, in the probe's words.
    #[test]
    fn the_flowtable_note_quotes_the_probe() {
        let r = Results {
            flowtable: Some(rate::FlowtableProbe {
                available: false,
                nft_said: "Error: Could not process rule: No such file or directory".into(),
                kernel_config: Some("# CONFIG_NF_FLOW_TABLE is not set".into()),
            }),
            ..Default::default()
        };
        let md = markdown(&r, "");
        assert!(md.contains("built without `CONFIG_NF_FLOW_TABLE`"), "{md}");
        assert!(md.contains("(\"Error: Could not process rule: No such file or directory\")"));
        assert!(!readme_figures(&r).contains("FLOW_TABLE"));
    }

    #[test]
    fn targets_notes_are_carried_over() {
        let notes = "<!-- kept: targets -->\nwhy not met\n<!-- /kept -->";
        let old = format!("# Benchmarks\n\n## Targets\n\n| a |\n\n{notes}\n\n## Per-packet cost\n");
        let new = markdown(&Results::default(), &old);
        assert!(new.contains(&format!("[profile.md](profile.md).\n\n{notes}\n")));
        assert_eq!(kept_block(&new, "targets").as_deref(), Some(notes));
        assert!(!markdown(&Results::default(), "").contains("kept"));
    }
}
