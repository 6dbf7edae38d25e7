//! Differential NAT test: the same topology and the same traffic, once through a router
//! namespace configured the way Neutron's L3 agent does it (kernel forwarding, the exact
//! iptables rules of `neutron-baseline.md`), once through routerd's fast path. Every
//! endpoint records what it saw; the two runs must agree exchange by exchange (the only
//! allowed difference: the source port, or echo identifier, chosen by default SNAT to the
//! gateway), and both must match the reference table, so two equally wrong runs still fail.
//! The fast-path run must also leave the kernel's forwarding counter untouched. Both runs
//! are made twice: over veths and Linux bridges, and over Open vSwitch as a Neutron node
//! has it (`NatTopology::build_ovs`).
//!
//! Run the Neutron half alone (it proves the harness):
//! `cargo test -p router-tests --test nat_topology -- --test-threads=1 neutron`.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use router_tests::{
    nat_topo::{
        EXT, Endpoint, FIP1, FIP2, GW, NatTopology, QG, QR_A, QR_A_IP, QR_B, VM1, VM2, VM3,
    },
    neutron::{METADATA_IP, METADATA_PORT},
    observe::{self, Answer, Observation, Protocol, Received},
    routerd::{Routerd, fast_path_has_neighbor},
    traffic,
};

/// A row of the reference table as traffic between two endpoints of the topology.
struct Case {
    name: &'static str,
    from: Endpoint,
    to: Endpoint,
    /// The address the sender sends to.
    target: Ipv4Addr,
    /// The source and destination address the receiver must see.
    sees_src: Ipv4Addr,
    sees_dst: Ipv4Addr,
    /// Default SNAT to the gateway address: the source port (echo identifier) may change.
    gateway_snat: bool,
}

const CASES: [Case; 6] = [
    Case {
        name: "1 ext -> FIP of vm1",
        from: Endpoint::Ext,
        to: Endpoint::Vm1,
        target: FIP1,
        sees_src: EXT,
        sees_dst: VM1,
        gateway_snat: false,
    },
    Case {
        name: "2 vm1 (FIP) -> ext",
        from: Endpoint::Vm1,
        to: Endpoint::Ext,
        target: EXT,
        sees_src: FIP1,
        sees_dst: EXT,
        gateway_snat: false,
    },
    Case {
        name: "3 vm3 (no FIP) -> ext",
        from: Endpoint::Vm3,
        to: Endpoint::Ext,
        target: EXT,
        sees_src: GW,
        sees_dst: EXT,
        gateway_snat: true,
    },
    Case {
        name: "4 vm1 -> vm2 (east-west)",
        from: Endpoint::Vm1,
        to: Endpoint::Vm2,
        target: VM2,
        sees_src: VM1,
        sees_dst: VM2,
        gateway_snat: false,
    },
    Case {
        name: "5 hairpin vm3 (no FIP) -> FIP vm2",
        from: Endpoint::Vm3,
        to: Endpoint::Vm2,
        target: FIP2,
        sees_src: GW,
        sees_dst: VM2,
        gateway_snat: true,
    },
    Case {
        name: "6 hairpin vm1 (FIP) -> FIP vm2",
        from: Endpoint::Vm1,
        to: Endpoint::Vm2,
        target: FIP2,
        sees_src: FIP1,
        sees_dst: VM2,
        gateway_snat: false,
    },
];

const METADATA_CASE: &str = "7 metadata vm1 -> 169.254.169.254";
const PROTOS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp];

/// One exchange of the plan: who talks to whom, on which fixed ports (so that two runs are
/// comparable value by value), and what the reference table says must be observed.
struct Step {
    case: &'static str,
    proto: Protocol,
    from: Endpoint,
    to: Endpoint,
    /// The sender's destination (port 0 for ICMP).
    target: SocketAddrV4,
    /// The sender's source port (the echo identifier for ICMP).
    client_port: u16,
    /// The receiver's listening port (unused for ICMP).
    listen_port: u16,
    gateway_snat: bool,
    metadata: bool,
    expected: Observation,
}

fn plan() -> Vec<Step> {
    let mut steps = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        for (k, &proto) in PROTOS.iter().enumerate() {
            let n = (i + 1) as u16 * 10 + k as u16;
            let client_port = if proto == Protocol::Icmp {
                0x4e00 + n
            } else {
                40000 + n
            };
            let listen_port = 7000 + n;
            let service_port = if proto == Protocol::Icmp {
                0
            } else {
                listen_port
            };
            let token = format!("case{}-{proto}", i + 1);
            let expected = Observation {
                case: c.name,
                proto,
                seen: Some(Received {
                    src: SocketAddrV4::new(
                        c.sees_src,
                        if c.gateway_snat { 0 } else { client_port },
                    ),
                    dst: SocketAddrV4::new(c.sees_dst, service_port),
                }),
                answer: Some(Answer {
                    // The exact reverse translation: the answer comes from where the
                    // sender sent to (for ICMP with the sender's own identifier).
                    from: SocketAddrV4::new(
                        c.target,
                        if proto == Protocol::Icmp {
                            client_port
                        } else {
                            listen_port
                        },
                    ),
                    data: token,
                }),
            };
            steps.push(Step {
                case: c.name,
                proto,
                from: c.from,
                to: c.to,
                target: SocketAddrV4::new(c.target, service_port),
                client_port,
                listen_port,
                gateway_snat: c.gateway_snat,
                metadata: false,
                expected,
            });
        }
    }
    // Metadata: REDIRECT delivers to the proxy on the address of the qr port it came in on.
    let client_port = 40070;
    steps.push(Step {
        case: METADATA_CASE,
        proto: Protocol::Tcp,
        from: Endpoint::Vm1,
        to: Endpoint::Router,
        target: SocketAddrV4::new(METADATA_IP, 80),
        client_port,
        listen_port: METADATA_PORT,
        gateway_snat: false,
        metadata: true,
        expected: Observation {
            case: METADATA_CASE,
            proto: Protocol::Tcp,
            seen: Some(Received {
                src: SocketAddrV4::new(VM1, client_port),
                dst: SocketAddrV4::new(QR_A_IP, METADATA_PORT),
            }),
            answer: Some(Answer {
                from: SocketAddrV4::new(METADATA_IP, 80),
                data: SocketAddrV4::new(VM1, client_port).to_string(),
            }),
        },
    });
    steps
}

fn run_step(topo: &NatTopology, step: &Step) -> Observation {
    let (from, to) = (topo.ns(step.from), topo.ns(step.to));
    let token = step
        .expected
        .answer
        .as_ref()
        .map(|a| a.data.clone())
        .unwrap_or_default();
    let exchange = if step.metadata {
        observe::metadata(from, step.client_port, step.target, to, step.listen_port)
    } else {
        match step.proto {
            Protocol::Tcp => observe::tcp(
                from,
                step.client_port,
                step.target,
                to,
                step.listen_port,
                &token,
            ),
            Protocol::Udp => observe::udp(
                from,
                step.client_port,
                step.target,
                to,
                step.listen_port,
                &token,
            ),
            Protocol::Icmp => {
                observe::icmp_echo(from, step.client_port, *step.target.ip(), to, &token)
            }
        }
    };
    Observation {
        case: step.case,
        proto: step.proto,
        seen: exchange.seen,
        answer: exchange.answer,
    }
}

/// The observation with what may legitimately differ blanked: the source port (echo
/// identifier) that default SNAT to the gateway picks.
fn comparable(step: &Step, obs: &Observation) -> Observation {
    let mut obs = obs.clone();
    if step.gateway_snat
        && let Some(seen) = &mut obs.seen
    {
        seen.src.set_port(0);
    }
    obs
}

struct Run {
    label: String,
    observations: Vec<Observation>,
    /// IpForwDatagrams growth over the forwarded exchanges (from their first packet on).
    kernel_forwarded: u64,
    /// Problems found while preparing the run (not observations).
    problems: Vec<String>,
}

impl Run {
    fn table(&self) -> String {
        let mut s = format!("--- {} ---\n", self.label);
        for o in &self.observations {
            let _ = writeln!(s, "{o}");
        }
        let _ = writeln!(s, "kernel forwarded {} datagrams", self.kernel_forwarded);
        s
    }
}

/// Has the router namespace resolve every endpoint it forwards to (its own pings are local
/// traffic, not forwarded), so no first packet has to wait in the kernel for ARP.
fn resolve_neighbours(topo: &NatTopology, problems: &mut Vec<String>) {
    for addr in [EXT, VM1, VM3, VM2] {
        if !traffic::ping(&topo.router_ns, addr.octets(), 1) {
            problems.push(format!("the router namespace cannot ping {addr}"));
        }
    }
}

fn run_all(topo: &NatTopology, label: String, problems: Vec<String>) -> Run {
    let steps = plan();
    let before = traffic::forwarded_by_kernel(&topo.router_ns);
    let mut observations: Vec<Observation> = steps
        .iter()
        .filter(|s| !s.metadata)
        .map(|s| run_step(topo, s))
        .collect();
    let kernel_forwarded = traffic::forwarded_by_kernel(&topo.router_ns) - before;
    // Metadata is local delivery to the proxy, not forwarding: after the reading.
    observations.extend(
        steps
            .iter()
            .filter(|s| s.metadata)
            .map(|s| run_step(topo, s)),
    );
    Run {
        label,
        observations,
        kernel_forwarded,
        problems,
    }
}

/// The reference run: the router namespace as Neutron's L3 agent sets it up, no eBPF.
fn neutron_run(wiring: Wiring) -> Run {
    neutron_run_without(wiring, None)
}

/// How the topology is wired: veths and Linux bridges, or Open vSwitch as on a Neutron node
/// (`NatTopology::build_ovs`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wiring {
    Kernel,
    Ovs,
}

impl Wiring {
    fn build(self) -> NatTopology {
        match self {
            Wiring::Kernel => NatTopology::build(),
            Wiring::Ovs => NatTopology::build_ovs(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Wiring::Kernel => "",
            Wiring::Ovs => ", on OVS",
        }
    }
}

/// As `neutron_run`, with one of the rules deleted again (`iptables -t TABLE -D ...`).
fn neutron_run_without(wiring: Wiring, rule: Option<(&str, &str)>) -> Run {
    let topo = wiring.build();
    topo.configure_neutron();
    let mut label = format!("neutron (iptables){}", wiring.label());
    if let Some((table, spec)) = rule {
        let mut args = vec![
            "netns",
            "exec",
            &topo.router_ns,
            "iptables",
            "-t",
            table,
            "-D",
        ];
        args.extend(spec.split_whitespace());
        router_tests::topo::run("ip", &args);
        label = format!("neutron without `-t {table} -A {spec}`");
    }
    let mut problems = Vec::new();
    resolve_neighbours(&topo, &mut problems);
    run_all(&topo, label, problems)
}

/// The fast-path run: a fresh topology, the router run by routerd, no rules from the test.
fn fast_path_run(mode: &str, wiring: Wiring, sessions: Sessions) -> (Run, String) {
    let mut topo = wiring.build();
    let config = match sessions {
        Sessions::Preallocated => topo.routerd_config(mode),
        Sessions::OnDemand => topo.routerd_config_with(mode, "preallocate_sessions = false\n"),
    };
    let routerd = Routerd::start(&config, topo.router_id());
    let mut problems = Vec::new();
    // BPF_F_NO_PREALLOC in the pinned table's flags.
    let table = router_user::paths::router_pin_dir(topo.router_id()).join("SESSIONS");
    let flags = router_tests::scale::pin_fdinfo(&table).and_then(|i| i.get("map_flags").copied());
    if flags.map(|f| f & 1 != 0) != Some(sessions == Sessions::OnDemand) {
        problems.push(format!(
            "the session table's flags are {flags:?}, wanted {sessions:?}"
        ));
    }
    resolve_neighbours(&topo, &mut problems);
    let id = topo.router_id().to_string();
    let wanted = [(QG, EXT), (QR_A, VM1), (QR_A, VM3), (QR_B, VM2)];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !wanted
        .iter()
        .all(|(ifname, addr)| fast_path_has_neighbor(&id, ifname, addr.octets()))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (ifname, addr) in wanted {
        if !fast_path_has_neighbor(&id, ifname, addr.octets()) {
            problems.push(format!(
                "neighbour {addr} on {ifname} not in the fast path's map"
            ));
        }
    }
    let run = run_all(
        &topo,
        format!("fast path ({mode}{})", wiring.label()),
        problems,
    );
    let log = routerd.log_text();
    drop(routerd);
    (run, log)
}

/// Differences from the reference table, one line each.
fn table_mismatches(run: &Run) -> Vec<String> {
    let mut out = Vec::new();
    let steps = plan();
    assert_eq!(
        steps.len(),
        run.observations.len(),
        "one observation per step"
    );
    for (step, obs) in steps.iter().zip(&run.observations) {
        let got = comparable(step, obs);
        if got != step.expected {
            out.push(format!(
                "{}: {} {}: expected (a source port or id of 0: any)\n      {}\n    got {}",
                run.label, step.case, step.proto, step.expected, obs
            ));
        }
    }
    out.extend(run.problems.iter().map(|p| format!("{}: {p}", run.label)));
    out
}

/// The cases with at least one exchange that differs from the reference table.
fn mismatched_cases(run: &Run) -> BTreeSet<&'static str> {
    plan()
        .iter()
        .zip(&run.observations)
        .filter(|(step, obs)| comparable(step, obs) != step.expected)
        .map(|(step, _)| step.case)
        .collect()
}

/// Exchange-by-exchange differences between two runs.
fn differences(a: &Run, b: &Run) -> Vec<String> {
    plan()
        .iter()
        .zip(a.observations.iter().zip(&b.observations))
        .filter(|(step, (x, y))| comparable(step, x) != comparable(step, y))
        .map(|(step, (x, y))| {
            format!(
                "{} {}: {} and {} disagree\n    {}: {x}\n    {}: {y}",
                step.case, step.proto, a.label, b.label, a.label, b.label
            )
        })
        .collect()
}

/// The baseline harness on its own: Neutron's rules in the kernel produce exactly the
/// reference table (and the kernel did the forwarding).
#[test]
fn neutron_iptables_baseline_matches_the_reference_table() {
    let neutron = neutron_run(Wiring::Kernel);
    let mismatches = table_mismatches(&neutron);
    assert!(
        mismatches.is_empty(),
        "the Neutron baseline does not match the reference table:\n{}\n\n{}",
        mismatches.join("\n"),
        neutron.table()
    );
    assert!(
        neutron.kernel_forwarded > 0,
        "the Neutron baseline must be forwarded by the kernel\n{}",
        neutron.table()
    );
    eprintln!("{}", neutron.table());
}

/// The harness has teeth: with one rule of the baseline deleted, exactly the rows that rule
/// is responsible for differ from the reference table, and the test sees it. This is also
/// the record of which rule makes which observation.
#[test]
fn neutron_rule_ablations_change_exactly_their_rows() {
    let qg = QG;
    let case = |n: usize| CASES[n - 1].name;
    let ablations: [(&str, String, Vec<&str>); 6] = [
        // Without the mark, DNATed traffic from outside is also SNATed to GW (the VM sees
        // 198.18.0.2 instead of the external host).
        (
            "mangle",
            format!("neutron-l3-agent-mark -i {qg} -j MARK --set-xmark 0x2/0xffff"),
            vec![case(1)],
        ),
        // Without the ACCEPT, east-west traffic of a VM with a floating IP is float-SNATed
        // (vm2 sees 198.18.0.10 instead of 10.0.1.5).
        (
            "nat",
            format!(
                "neutron-l3-agent-POSTROUTING ! -i {qg} ! -o {qg} -m conntrack ! --ctstate DNAT -j ACCEPT"
            ),
            vec![case(4)],
        ),
        // Without float-snat, VMs with a floating IP leave as the gateway, also in hairpin.
        (
            "nat",
            "neutron-l3-agent-snat -j neutron-l3-agent-float-snat".to_string(),
            vec![case(2), case(6)],
        ),
        // Without the default SNAT, the internal source leaks out and nothing comes back
        // (the external host has no route to the internal subnets).
        (
            "nat",
            format!("neutron-l3-agent-snat -o {qg} -j SNAT --to-source {GW}"),
            vec![case(3)],
        ),
        // Without the hairpin SNAT, the receiver sees the sender's fixed address. The
        // replies still return (the VMs are on different subnets, both behind the router).
        (
            "nat",
            format!(
                "neutron-l3-agent-snat -m mark ! --mark 0x2/0xffff -m conntrack --ctstate DNAT -j SNAT --to-source {GW}"
            ),
            vec![case(5)],
        ),
        // The OUTPUT DNAT is for traffic the router namespace itself sends to a floating
        // IP; none of the cases does.
        (
            "nat",
            format!("neutron-l3-agent-OUTPUT -d {FIP1}/32 -j DNAT --to-destination {VM1}"),
            vec![],
        ),
    ];
    let mut failures = Vec::new();
    for (table, spec, rows) in ablations {
        let run = neutron_run_without(Wiring::Kernel, Some((table, &spec)));
        let want: BTreeSet<&str> = rows.into_iter().collect();
        let got = mismatched_cases(&run);
        if got != want || !run.problems.is_empty() {
            failures.push(format!(
                "{}: rows {got:?} differ from the table, expected {want:?}; {:?}\n{}",
                run.label,
                run.problems,
                run.table()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// How the router's session table is made (`nat.preallocate_sessions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sessions {
    Preallocated,
    OnDemand,
}

fn fast_path_agrees_with_neutron(mode: &str, wiring: Wiring, sessions: Sessions) {
    let neutron = neutron_run(wiring);
    let (fast, log) = fast_path_run(mode, wiring, sessions);
    let mut problems = table_mismatches(&neutron);
    problems.extend(table_mismatches(&fast));
    problems.extend(differences(&neutron, &fast));
    if fast.kernel_forwarded != 0 {
        problems.push(format!(
            "{}: the kernel forwarded {} datagrams (IpForwDatagrams grew): not everything went \
             through the fast path",
            fast.label, fast.kernel_forwarded
        ));
    }
    let tail: String = {
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n\n{}\n{}\n--- routerd log (tail) ---\n{tail}",
        problems.len(),
        problems.join("\n"),
        neutron.table(),
        fast.table()
    );
    eprintln!("{}\n{}", neutron.table(), fast.table());
}

#[test]
fn xdp_fast_path_agrees_with_the_iptables_baseline() {
    fast_path_agrees_with_neutron("xdp", Wiring::Kernel, Sessions::Preallocated);
}

#[test]
fn tc_fast_path_agrees_with_the_iptables_baseline() {
    fast_path_agrees_with_neutron("tc", Wiring::Kernel, Sessions::Preallocated);
}

/// The same on Open vSwitch as a Neutron node has it: the baseline and the fast path both
/// run over OVS internal ports (taps) and VLANs, the fast path with routerd's own choices
/// for taps. The XDP run's session table is made as sessions come
/// (`nat.preallocate_sessions = false`), as on a node of many routers.
#[test]
fn xdp_fast_path_agrees_with_the_iptables_baseline_on_ovs() {
    fast_path_agrees_with_neutron("xdp", Wiring::Ovs, Sessions::OnDemand);
}

#[test]
fn tc_fast_path_agrees_with_the_iptables_baseline_on_ovs() {
    fast_path_agrees_with_neutron("tc", Wiring::Ovs, Sessions::Preallocated);
}
