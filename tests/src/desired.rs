//! routerd desired-state files for tests, the demo and the benchmarks, written one way.

use std::{fmt::Write as _, net::Ipv4Addr};

/// One `[[router]]` of a desired-state file.
#[derive(Clone, Debug, Default)]
pub struct RouterText {
    pub id: String,
    pub namespace: String,
    pub mode: String,
    /// (interface, address with prefix length, next hop, xdp_egress); SNAT on.
    pub gateway: Option<(String, String, String, Option<bool>)>,
    /// (interface, address with prefix length, xdp_egress).
    pub interfaces: Vec<(String, String, Option<bool>)>,
    /// (floating IP, fixed IP).
    pub floating_ips: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Further keys of this router, appended verbatim (routes, `[router.nat]`, ...).
    pub extra: String,
}

impl RouterText {
    pub fn render(&self) -> String {
        let mut s = format!(
            "[[router]]\nid = \"{}\"\nnamespace = \"{}\"\nmode = \"{}\"\n",
            self.id, self.namespace, self.mode
        );
        if let Some((iface, address, nexthop, xdp_egress)) = &self.gateway {
            let _ = write!(
                s,
                "\n[router.gateway]\ninterface = \"{iface}\"\naddress = \"{address}\"\nnexthop = \"{nexthop}\"\nsnat = true\n"
            );
            if let Some(x) = xdp_egress {
                let _ = writeln!(s, "xdp_egress = {x}");
            }
        }
        for (name, address, xdp_egress) in &self.interfaces {
            let _ = write!(
                s,
                "\n[[router.interface]]\nname = \"{name}\"\naddress = \"{address}\"\n"
            );
            if let Some(x) = xdp_egress {
                let _ = writeln!(s, "xdp_egress = {x}");
            }
        }
        for (floating, fixed) in &self.floating_ips {
            let _ = write!(
                s,
                "\n[[router.floating_ip]]\naddress = \"{floating}\"\nfixed = \"{fixed}\"\n"
            );
        }
        if !self.extra.is_empty() {
            let _ = write!(s, "\n{}", self.extra);
        }
        s
    }
}

/// The policy-routing, steering, external-subnet and firewall keys of one router, rendered
/// as TOML to append to [`RouterText::extra`] (tables and arrays of tables may follow the
/// router's other keys in any order).
#[derive(Clone, Debug, Default)]
pub struct PolicyText {
    /// `[[router.gateway.subnet]]`: (router's address with prefix length, that subnet's
    /// gateway).
    pub gateway_subnets: Vec<(String, String)>,
    /// `[[router.table]]`: (name, id).
    pub tables: Vec<(String, u32)>,
    /// `[[router.route]]` with a table: (destination, next hop, table).
    pub table_routes: Vec<(String, String, String)>,
    /// `[[router.rule]]`.
    pub rules: Vec<PolicyRuleText>,
    /// `[router.steering]`.
    pub steering: Option<SteeringText>,
    /// `[router.firewall]`.
    pub firewall: Option<FirewallText>,
}

/// One `[[router.rule]]` (like `ip rule`).
#[derive(Clone, Debug, Default)]
pub struct PolicyRuleText {
    pub priority: u32,
    pub iif: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub table: String,
}

/// `[router.steering]`.
#[derive(Clone, Debug, Default)]
pub struct SteeringText {
    pub nexthop: String,
    pub gateway_nexthop: Option<String>,
    pub interfaces: Vec<String>,
}

/// `[router.firewall]`: `default` is "allow" or "deny".
#[derive(Clone, Debug, Default)]
pub struct FirewallText {
    pub default: String,
    pub rules: Vec<FwRuleText>,
}

/// One `[[router.firewall.rule]]`.
#[derive(Clone, Debug, Default)]
pub struct FwRuleText {
    /// allow | deny | reject
    pub action: String,
    /// tcp | udp | icmp | any
    pub protocol: String,
    pub source: Option<String>,
    pub destination: Option<String>,
    /// "N" or "N:M".
    pub destination_ports: Option<String>,
}

impl FwRuleText {
    pub fn new(action: &str, protocol: &str) -> Self {
        Self {
            action: action.into(),
            protocol: protocol.into(),
            ..Self::default()
        }
    }

    pub fn source(mut self, net: &str) -> Self {
        self.source = Some(net.into());
        self
    }

    pub fn destination(mut self, net: &str) -> Self {
        self.destination = Some(net.into());
        self
    }

    pub fn ports(mut self, ports: &str) -> Self {
        self.destination_ports = Some(ports.into());
        self
    }
}

fn quoted_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", items.join(", "))
}

impl PolicyText {
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (address, nexthop) in &self.gateway_subnets {
            let _ = write!(
                s,
                "\n[[router.gateway.subnet]]\naddress = \"{address}\"\nnexthop = \"{nexthop}\"\n"
            );
        }
        for (name, id) in &self.tables {
            let _ = write!(s, "\n[[router.table]]\nname = \"{name}\"\nid = {id}\n");
        }
        for (destination, nexthop, table) in &self.table_routes {
            let _ = write!(
                s,
                "\n[[router.route]]\ndestination = \"{destination}\"\nnexthop = \"{nexthop}\"\ntable = \"{table}\"\n"
            );
        }
        for r in &self.rules {
            let _ = write!(s, "\n[[router.rule]]\npriority = {}\n", r.priority);
            for (key, value) in [("iif", &r.iif), ("from", &r.from), ("to", &r.to)] {
                if let Some(v) = value {
                    let _ = writeln!(s, "{key} = \"{v}\"");
                }
            }
            let _ = writeln!(s, "table = \"{}\"", r.table);
        }
        if let Some(st) = &self.steering {
            let _ = write!(s, "\n[router.steering]\nnexthop = \"{}\"\n", st.nexthop);
            if let Some(g) = &st.gateway_nexthop {
                let _ = writeln!(s, "gateway_nexthop = \"{g}\"");
            }
            let _ = writeln!(s, "interfaces = {}", quoted_list(&st.interfaces));
        }
        if let Some(fw) = &self.firewall {
            let _ = write!(s, "\n[router.firewall]\ndefault = \"{}\"\n", fw.default);
            for r in &fw.rules {
                let _ = write!(
                    s,
                    "\n[[router.firewall.rule]]\naction = \"{}\"\nprotocol = \"{}\"\n",
                    r.action, r.protocol
                );
                for (key, value) in [
                    ("source", &r.source),
                    ("destination", &r.destination),
                    ("destination_ports", &r.destination_ports),
                ] {
                    if let Some(v) = value {
                        let _ = writeln!(s, "{key} = \"{v}\"");
                    }
                }
            }
        }
        s
    }
}
