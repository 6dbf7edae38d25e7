use std::{fmt::Write as _, net::Ipv4Addr};

use router_user::api::{Counter, FirewallListing, Request};

use crate::{
    args::Cidr,
    output::{Api, Failure, table},
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// The firewall's rules (`[[router.firewall.rule]]`): add, del, list.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// The default policy for packets no rule matches; creates the firewall if the router
    /// has none.
    Default {
        /// The router (its id).
        router: String,
        /// The policy for packets no rule matches.
        policy: DefaultPolicy,
    },
    /// Steering through a virtual firewall (`[router.steering]`): set, clear.
    #[command(subcommand)]
    Steer(SteerCommand),
}

/// `fw rule add --action`: sent to routerd by its name.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RuleAction {
    Allow,
    Deny,
    Reject,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DefaultPolicy {
    Allow,
    Deny,
}

#[derive(clap::Subcommand)]
pub enum RuleCommand {
    /// Inserts a rule (at the end, or at --position).
    Add {
        /// The router (its id).
        router: String,
        /// 1-based position to insert at (default: after the last rule).
        #[arg(long)]
        position: Option<usize>,
        /// What a matching packet gets.
        #[arg(long, value_enum)]
        action: RuleAction,
        /// tcp, udp, icmp, any or a protocol number (default: any).
        #[arg(long)]
        protocol: Option<String>,
        /// Source prefix or address (default: any).
        #[arg(long, value_parser = Cidr::prefix_or_address)]
        source: Option<Cidr>,
        /// Destination prefix or address (default: any).
        #[arg(long, value_parser = Cidr::prefix_or_address)]
        destination: Option<Cidr>,
        /// "80", "1000-2000" or "1000:2000" (tcp and udp only; default: every port).
        #[arg(long)]
        destination_ports: Option<String>,
        /// Free text kept with the rule.
        #[arg(long)]
        description: Option<String>,
        /// Neutron's id of the rule (a UUID), unique among the router's rules.
        #[arg(long)]
        id: Option<String>,
        /// An identical rule already there is not an error: the rule with this --id, or,
        /// without --id, an identical rule without one at --position (or anywhere).
        #[arg(long)]
        may_exist: bool,
    },
    /// Removes the rule at --position (1-based) or with --id.
    Del {
        /// The router (its id).
        router: String,
        /// The rule's position (1-based, as `fw rule list` numbers them).
        #[arg(long, required_unless_present = "id")]
        position: Option<usize>,
        /// Neutron's id of the rule (with --position too: both must name it).
        #[arg(long)]
        id: Option<String>,
        /// No such rule is not an error.
        #[arg(long)]
        if_exists: bool,
    },
    /// The rules in order with their counters, the fixed steps' counters and the steering.
    List {
        /// The router (its id).
        router: String,
    },
}

#[derive(clap::Subcommand)]
pub enum SteerCommand {
    /// Steers an interface's traffic to the firewall and/or sets the firewall's addresses
    /// (--nexthop is needed when the router has no steering yet).
    Set {
        /// The router (its id).
        router: String,
        /// An internal interface whose traffic goes through the firewall.
        #[arg(long)]
        interface: Option<String>,
        /// The firewall's address for traffic from the steered interfaces.
        #[arg(long)]
        nexthop: Option<Ipv4Addr>,
        /// The firewall's address for traffic from the gateway interface.
        #[arg(long)]
        gateway_nexthop: Option<Ipv4Addr>,
    },
    /// Stops steering --interface, or, without it, removes the steering altogether.
    Clear {
        /// The router (its id).
        router: String,
        /// The interface to stop steering (default: remove the steering altogether).
        #[arg(long)]
        interface: Option<String>,
    },
}

pub fn run(api: &Api, command: Command) -> Result<(), Failure> {
    match command {
        Command::Rule(RuleCommand::Add {
            router,
            position,
            action,
            protocol,
            source,
            destination,
            destination_ports,
            description,
            id,
            may_exist,
        }) => api.change(&Request::FwRuleAdd {
            router,
            position,
            action: match action {
                RuleAction::Allow => "allow",
                RuleAction::Deny => "deny",
                RuleAction::Reject => "reject",
            }
            .into(),
            protocol,
            source: source.map(|c| c.to_string()),
            destination: destination.map(|c| c.to_string()),
            destination_ports,
            description,
            id,
            may_exist,
        }),
        Command::Rule(RuleCommand::Del {
            router,
            position,
            id,
            if_exists,
        }) => api.change(&Request::FwRuleDel {
            router,
            position,
            id,
            if_exists,
        }),
        Command::Rule(RuleCommand::List { router }) => {
            api.show("firewall", &Request::FwRuleList { router }, listing)
        }
        Command::Default { router, policy } => api.change(&Request::FwDefault {
            router,
            policy: match policy {
                DefaultPolicy::Allow => "allow",
                DefaultPolicy::Deny => "deny",
            }
            .into(),
        }),
        Command::Steer(SteerCommand::Set {
            router,
            interface,
            nexthop,
            gateway_nexthop,
        }) => api.change(&Request::FwSteerSet {
            router,
            interface,
            nexthop: nexthop.map(|a| a.to_string()),
            gateway_nexthop: gateway_nexthop.map(|a| a.to_string()),
        }),
        Command::Steer(SteerCommand::Clear { router, interface }) => {
            api.change(&Request::FwSteerClear { router, interface })
        }
    }
}

fn listing(fw: FirewallListing) -> String {
    let mut out = String::new();
    let count = |v: Option<u64>| v.map_or_else(|| "-".into(), |n| n.to_string());
    match &fw.default {
        None => out.push_str("firewall: none\n"),
        Some(default) => {
            let _ = writeln!(out, "firewall: default {default}");
            // The ids' column only when a rule has one: most routers' rules have none.
            let ids = fw.rules.iter().any(|r| r.id.is_some());
            let rows: Vec<Vec<String>> = fw
                .rules
                .iter()
                .map(|r| {
                    let mut row = vec![
                        r.position.to_string(),
                        r.action.clone(),
                        r.protocol.clone(),
                        r.source.clone(),
                        r.destination.clone(),
                        r.destination_ports.clone().unwrap_or_else(|| "any".into()),
                        count(r.packets),
                        count(r.bytes),
                        r.description.clone().unwrap_or_default(),
                    ];
                    if ids {
                        row.push(r.id.clone().unwrap_or_else(|| "-".into()));
                    }
                    row
                })
                .collect();
            let mut columns = vec![
                "POS",
                "ACTION",
                "PROTO",
                "SOURCE",
                "DESTINATION",
                "PORTS",
                "PACKETS",
                "BYTES",
                "DESCRIPTION",
            ];
            if ids {
                columns.push("ID");
            }
            out.push_str(&table(&columns, &rows));
            if let Some(c) = &fw.counters {
                let line = |name: &str, c: &Counter| {
                    vec![name.to_string(), c.packets.to_string(), c.bytes.to_string()]
                };
                out.push_str(&table(
                    &["STEP", "PACKETS", "BYTES"],
                    &[
                        line("established", &c.established),
                        line("invalid", &c.invalid),
                        line(&format!("default ({default})"), &c.default),
                    ],
                ));
            }
        }
    }
    match &fw.steering {
        None => out.push_str("steering: none\n"),
        Some(s) => {
            let _ = write!(out, "steering: nexthop {}", s.nexthop);
            if let Some(g) = &s.gateway_nexthop {
                let _ = write!(out, ", gateway_nexthop {g}");
            }
            let _ = writeln!(
                out,
                ", interfaces {}",
                if s.interfaces.is_empty() {
                    "none".into()
                } else {
                    s.interfaces.join(", ")
                }
            );
        }
    }
    out
}
