//! `routerctl router ...`: Neutron's router verbs (create, delete, list, show, interface
//! add/remove, gateway set/clear) over routerd's API.

use std::{fmt::Write as _, net::Ipv4Addr};

use router_user::api::{FloatingIpEntry, GatewayEntry, Request, RouterDetail, RouterSummary};

use crate::{
    args::Cidr,
    output::{Api, Failure, table},
};

/// The `--mode` argument of `router create`: where the router's fast path attaches (sent
/// to routerd as the name of a `router_user::config::Mode`).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AttachModeArg {
    Auto,
    Xdp,
    Tc,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// A new router in an existing namespace; routerd starts it.
    #[command(visible_alias = "add")]
    Create {
        /// The router (its id).
        router: String,
        /// The network namespace holding the router's interfaces (it must exist).
        #[arg(long)]
        namespace: String,
        /// Where the fast path attaches: auto (native XDP, TC alone on veths), native XDP
        /// (with TC beside it) everywhere, or TC only (default: auto).
        #[arg(long, value_enum)]
        mode: Option<AttachModeArg>,
        /// A router with this id, namespace and mode already there is not an error.
        #[arg(long)]
        may_exist: bool,
        /// With --etcd: the node to place it on (without: it is stored, placed nowhere).
        #[arg(long)]
        node: Option<String>,
    },
    /// Removes a router: its fast path is detached and its pins removed.
    #[command(visible_alias = "del")]
    Delete {
        /// The router (its id).
        router: String,
        /// No such router is not an error.
        #[arg(long)]
        if_exists: bool,
    },
    /// With --etcd: places the router on other node(s) (the nodes it leaves tear it down).
    Move {
        /// The router (its id).
        router: String,
        /// The node to run it on (repeatable: several nodes).
        #[arg(long = "node", value_name = "NODE", required = true)]
        nodes: Vec<String>,
    },
    /// With --etcd: asks the active node of an HA router to hand it over to a standby (a
    /// planned switchover), and waits until one holds it.
    Switchover {
        /// The router (its id).
        router: String,
        /// The standby to take over; default: any connected one.
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
    },
    /// Every router: id, namespace, mode, interfaces, gateway, floating IPs, running.
    List,
    /// Everything about one router.
    Show {
        /// The router (its id).
        router: String,
    },
    /// Internal interfaces (qr ports): add, remove.
    #[command(subcommand)]
    Interface(InterfaceCommand),
    /// The external gateway (qg port): set, clear.
    #[command(subcommand)]
    Gateway(GatewayCommand),
}

#[derive(clap::Subcommand)]
pub enum InterfaceCommand {
    /// Adds an internal interface with the subnet's gateway address (the router restarts
    /// to attach it; its fast path keeps forwarding meanwhile).
    Add {
        /// The router (its id).
        router: String,
        /// An interface in the router's namespace.
        #[arg(long)]
        interface: String,
        /// The router's address on the subnet, e.g. 10.0.1.1/24.
        #[arg(long, value_parser = Cidr::prefix)]
        address: Cidr,
        /// The same interface with the same address already there is not an error.
        #[arg(long)]
        may_exist: bool,
    },
    /// Removes an internal interface (live: its sessions end, its address goes).
    Remove {
        /// The router (its id).
        router: String,
        /// The internal interface to remove.
        #[arg(long)]
        interface: String,
        /// No such interface is not an error.
        #[arg(long)]
        if_exists: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum GatewayCommand {
    /// Sets the external gateway: interface, the router's address on the external subnet,
    /// the default route's next hop, default SNAT.
    Set {
        /// The router (its id).
        router: String,
        /// The gateway interface (qg port) in the router's namespace.
        #[arg(long)]
        interface: String,
        /// The gateway IP with the subnet's length, e.g. 198.18.0.2/24.
        #[arg(long, value_parser = Cidr::prefix)]
        address: Cidr,
        /// The external subnet's gateway (the default route).
        #[arg(long)]
        nexthop: Ipv4Addr,
        /// Default SNAT to the gateway IP (the default for a new gateway).
        #[arg(long, conflicts_with = "no_snat")]
        snat: bool,
        /// No default SNAT.
        #[arg(long)]
        no_snat: bool,
    },
    /// Removes the external gateway.
    Clear {
        /// The router (its id).
        router: String,
        /// No gateway is not an error.
        #[arg(long)]
        if_exists: bool,
    },
}

pub fn run(api: &Api, command: Command) -> Result<(), Failure> {
    match command {
        Command::Create {
            router,
            namespace,
            mode,
            may_exist,
            node,
        } => {
            let request = Request::RouterCreate {
                router,
                namespace,
                mode: mode.map(|m| {
                    match m {
                        AttachModeArg::Auto => "auto",
                        AttachModeArg::Xdp => "xdp",
                        AttachModeArg::Tc => "tc",
                    }
                    .to_string()
                }),
                may_exist,
            };
            match (&api.etcd, node) {
                (Some(etcd), node) => etcd.edit(&api.output, &request, node.as_deref()),
                (None, Some(_)) => Err(Failure::Usage(
                    "router create --node places the router in etcd: give --etcd URL".into(),
                )),
                (None, None) => api.change(&request),
            }
        }
        Command::Move { router, nodes } => match &api.etcd {
            Some(etcd) => etcd.move_router(&api.output, &router, &nodes),
            None => Err(Failure::Usage(
                "router move places the router in etcd: give --etcd URL".into(),
            )),
        },
        Command::Switchover { router, to } => match &api.etcd {
            Some(etcd) => etcd.switchover(&api.output, &router, to.as_deref()),
            None => Err(Failure::Usage(
                "router switchover asks through etcd: give --etcd URL".into(),
            )),
        },
        Command::Delete { router, if_exists } => {
            api.change(&Request::RouterDelete { router, if_exists })
        }
        Command::List => api.show("routers", &Request::RouterList, list),
        Command::Show { router } => api.show("router", &Request::RouterShow { router }, show),
        Command::Interface(InterfaceCommand::Add {
            router,
            interface,
            address,
            may_exist,
        }) => api.change(&Request::RouterInterfaceAdd {
            router,
            interface,
            address: address.to_string(),
            may_exist,
        }),
        Command::Interface(InterfaceCommand::Remove {
            router,
            interface,
            if_exists,
        }) => api.change(&Request::RouterInterfaceRemove {
            router,
            interface,
            if_exists,
        }),
        Command::Gateway(GatewayCommand::Set {
            router,
            interface,
            address,
            nexthop,
            snat,
            no_snat,
        }) => api.change(&Request::RouterGatewaySet {
            router,
            interface,
            address: address.to_string(),
            nexthop: nexthop.to_string(),
            snat: match (snat, no_snat) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        }),
        Command::Gateway(GatewayCommand::Clear { router, if_exists }) => {
            api.change(&Request::RouterGatewayClear { router, if_exists })
        }
    }
}

fn dash_if_empty(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// The RUNNING column: yes, no, or "waiting: ERROR" when the start failed and is retried.
fn running_text(running: bool, start_error: Option<&str>, starting: bool) -> String {
    match (running, start_error) {
        (false, Some(e)) => format!("waiting: {e}"),
        (false, None) if starting => "starting".into(),
        _ => yes_no(running),
    }
}

fn gateway_text(g: &Option<GatewayEntry>) -> String {
    g.as_ref().map_or_else(|| "-".into(), |g| g.address.clone())
}

fn list(routers: Vec<RouterSummary>) -> String {
    let rows: Vec<Vec<String>> = routers
        .into_iter()
        .map(|r| {
            vec![
                r.id,
                r.namespace,
                r.mode,
                dash_if_empty(&r.interfaces),
                gateway_text(&r.gateway),
                r.floating_ips.to_string(),
                running_text(r.running, r.start_error.as_deref(), r.starting),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAMESPACE",
            "MODE",
            "INTERFACES",
            "GATEWAY",
            "FLOATING_IPS",
            "RUNNING",
        ],
        &rows,
    )
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The floating IP rows `fip list` and `router show` print.
pub fn fip_table(fips: &[FloatingIpEntry]) -> String {
    // The ids' column only when a floating IP has one (those Neutron made do).
    let ids = fips.iter().any(|f| f.id.is_some());
    let rows: Vec<Vec<String>> = fips
        .iter()
        .map(|f| {
            let mut row = vec![
                f.router.clone(),
                f.address.clone(),
                f.fixed.clone(),
                opt(f.in_packets),
                opt(f.in_bytes),
                opt(f.out_packets),
                opt(f.out_bytes),
            ];
            if ids {
                row.push(f.id.clone().unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut columns = vec![
        "ROUTER",
        "FLOATING_IP",
        "FIXED_IP",
        "IN_PKTS",
        "IN_BYTES",
        "OUT_PKTS",
        "OUT_BYTES",
    ];
    if ids {
        columns.push("ID");
    }
    table(&columns, &rows)
}

fn show(r: RouterDetail) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "router {}: namespace {}, mode {}, {}",
        r.id,
        r.namespace,
        r.mode,
        match (r.running, &r.start_error) {
            (true, _) => "running".to_string(),
            (false, Some(e)) => format!("waiting to start (tried again; last error: {e})"),
            (false, None) if r.starting => "starting (routerd has not tried it yet)".to_string(),
            (false, None) => "not running".to_string(),
        }
    );
    if let Some(ha) = &r.ha {
        out.push_str(&ha_lines(ha));
    }
    if let Some(d) = &r.distributed {
        let networks: Vec<String> = d
            .networks
            .iter()
            .map(|(name, vni)| format!("{name} vni {vni}"))
            .collect();
        let part = match &d.node {
            Some(node) => format!(
                "{} part on {node}{}",
                d.part,
                d.dvr_mac
                    .as_ref()
                    .map(|m| format!(" (DVR MAC {m})"))
                    .unwrap_or_default()
            ),
            None => "each node runs its own part".into(),
        };
        let _ = writeln!(
            out,
            "distributed: {part}; networks {}; {} ports, {} here",
            networks.join(", "),
            d.ports,
            d.ports_here
        );
    }
    let xdp = |x: Option<bool>| {
        x.map_or_else(
            || "auto".into(),
            |x| if x { "yes" } else { "no" }.to_string(),
        )
    };
    // Which program entry runs on a running interface: XDP (with TC beside it) unless the
    // router runs TC only, or the TC entry alone where XDP is not used (`*`, the reason said
    // below the table).
    let mode = if r.mode == "tc" { "tc" } else { "xdp" };
    let entry = |ifindex: Option<u32>, unavailable: &Option<String>| match (ifindex, unavailable) {
        (None, _) => "-".to_string(),
        (Some(_), Some(_)) => "tc*".to_string(),
        (Some(_), None) => mode.to_string(),
    };
    let mut rows = Vec::new();
    if let Some(g) = &r.gateway {
        rows.push(vec![
            g.interface.clone(),
            "external".into(),
            g.address.clone(),
            opt(g.ifindex),
            entry(g.ifindex, &g.xdp_unavailable),
            xdp(g.xdp_egress),
            "-".into(),
        ]);
    }
    for i in &r.interfaces {
        rows.push(vec![
            i.name.clone(),
            "internal".into(),
            i.address.clone(),
            opt(i.ifindex),
            entry(i.ifindex, &i.xdp_unavailable),
            xdp(i.xdp_egress),
            if i.source_check {
                if i.allowed_sources.is_empty() {
                    "on".into()
                } else {
                    format!("on +{}", i.allowed_sources.join(","))
                }
            } else {
                "off".into()
            },
        ]);
    }
    out.push_str(&table(
        &[
            "INTERFACE",
            "ROLE",
            "ADDRESS",
            "IFINDEX",
            "ENTRY",
            "XDP_EGRESS",
            "SOURCE_CHECK",
        ],
        &rows,
    ));
    let fallbacks = r
        .gateway
        .iter()
        .map(|g| (&g.interface, &g.xdp_unavailable))
        .chain(r.interfaces.iter().map(|i| (&i.name, &i.xdp_unavailable)));
    for (name, reason) in fallbacks {
        if let Some(reason) = reason {
            let _ = writeln!(out, "* {name}: runs the TC entry alone ({reason})");
        }
    }
    match &r.gateway {
        None => out.push_str("gateway: none\n"),
        Some(g) => {
            let _ = writeln!(
                out,
                "gateway: {} {} via {}, snat {}",
                g.interface,
                g.address,
                g.nexthop,
                if g.snat { "on" } else { "off" }
            );
            let rows: Vec<Vec<String>> = r
                .external_subnets
                .iter()
                .map(|s| vec![s.subnet.clone(), s.address.clone(), s.nexthop.clone()])
                .collect();
            out.push_str(&table(&["EXTERNAL_SUBNET", "ADDRESS", "NEXTHOP"], &rows));
        }
    }
    if r.routes.is_empty() {
        out.push_str("routes: none\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .routes
            .iter()
            .map(|x| vec![x.table.clone(), x.destination.clone(), x.nexthop.clone()])
            .collect();
        out.push_str(&table(&["TABLE", "DESTINATION", "NEXTHOP"], &rows));
    }
    if r.rules.is_empty() {
        out.push_str("rules: none\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .rules
            .iter()
            .map(|x| {
                vec![
                    x.priority.to_string(),
                    x.iif.clone().unwrap_or_else(|| "any".into()),
                    x.from.clone(),
                    x.to.clone(),
                    x.table.clone(),
                    x.origin.clone(),
                    x.extra_text(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["PRIORITY", "IIF", "FROM", "TO", "TABLE", "ORIGIN", "ALSO"],
            &rows,
        ));
    }
    if r.floating_ips.is_empty() {
        out.push_str("floating IPs: none\n");
    } else {
        out.push_str(&fip_table(&r.floating_ips));
    }
    match &r.firewall.default {
        None => out.push_str("firewall: none"),
        Some(d) => {
            let _ = write!(out, "firewall: default {d}, {} rule(s)", r.firewall.rules);
        }
    }
    match &r.firewall.steering {
        None => out.push_str("; steering: none\n"),
        Some(s) => {
            let _ = writeln!(
                out,
                "; steering: nexthop {}{}, interfaces {}",
                s.nexthop,
                s.gateway_nexthop
                    .as_ref()
                    .map(|g| format!(", gateway_nexthop {g}"))
                    .unwrap_or_default(),
                dash_if_empty(&s.interfaces)
            );
        }
    }
    let _ = writeln!(
        out,
        "nat: snat_ports {}, slow_path_snat_ports {}, max_sessions {}, metadata_port {}",
        r.nat.snat_ports, r.nat.slow_path_snat_ports, r.nat.max_sessions, r.nat.metadata_port
    );
    out
}

/// An HA router's state on this node, for `router show`.
fn ha_lines(ha: &router_user::ha::status::HaStatus) -> String {
    let active = ha.active_node.as_deref().unwrap_or("nobody yet");
    let mut out = format!(
        "ha: {} on {} (epoch {}); active: {active}; takeovers here: {}\n",
        ha.role, ha.node, ha.epoch, ha.takeovers
    );
    match ha.role.as_str() {
        "active" => {
            let standbys = if ha.standbys.is_empty() {
                "none connected".to_string()
            } else {
                ha.standbys.join(", ")
            };
            out += &format!(
                "ha sync: standbys {standbys}; {} entries sent, {} resyncs; lag last {:.1} ms, p99 {:.1} ms\n",
                ha.entries_sent,
                ha.resyncs,
                ha.lag_us_last as f64 / 1e3,
                ha.lag_us_p99 as f64 / 1e3
            );
        }
        _ => {
            out += &format!(
                "ha sync: {}; {} entries received, {} resyncs\n",
                if ha.synced {
                    "in sync (whole table received)"
                } else {
                    "not in sync yet"
                },
                ha.entries_received,
                ha.resyncs
            );
        }
    }
    out
}
