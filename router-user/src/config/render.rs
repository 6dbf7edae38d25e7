//! The desired state written back as TOML, for the API to persist: `DesiredState::parse`
//! reads it back to an equal value. Keys with their default value are left out (except the
//! router's `mode` and the gateway's `snat`), so a file keeps following the defaults.

use std::fmt::Write as _;

use router_common::TABLE_MAIN;

use super::{
    DesiredState, NatSettings, Prefix, Router,
    firewall::{ports_text, protocol_name},
};

impl DesiredState {
    /// The state as a desired-state file.
    pub fn to_toml(&self) -> String {
        self.routers
            .iter()
            .map(Router::to_toml)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Router {
    /// This router as one `[[router]]` of a desired-state file.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        // `write!` into a String cannot fail.
        let _ = self.write_toml(&mut s);
        s
    }

    fn write_toml(&self, s: &mut String) -> std::fmt::Result {
        writeln!(s, "[[router]]")?;
        writeln!(s, "id = {}", quote(&self.id))?;
        writeln!(s, "namespace = {}", quote(&self.namespace))?;
        writeln!(s, "mode = \"{}\"", self.mode)?;

        if let Some(g) = &self.gateway {
            writeln!(s, "\n[router.gateway]")?;
            writeln!(s, "interface = {}", quote(&g.interface))?;
            writeln!(s, "address = \"{}\"", g.address)?;
            writeln!(s, "nexthop = \"{}\"", g.nexthop)?;
            writeln!(s, "snat = {}", g.snat)?;
            if let Some(x) = g.xdp_egress {
                writeln!(s, "xdp_egress = {x}")?;
            }
            for sub in &g.subnets {
                writeln!(s, "\n[[router.gateway.subnet]]")?;
                writeln!(s, "address = \"{}\"", sub.address)?;
                writeln!(s, "nexthop = \"{}\"", sub.nexthop)?;
            }
        }
        for i in &self.interfaces {
            writeln!(s, "\n[[router.interface]]")?;
            writeln!(s, "name = {}", quote(&i.name))?;
            writeln!(s, "address = \"{}\"", i.address)?;
            if let Some(x) = i.xdp_egress {
                writeln!(s, "xdp_egress = {x}")?;
            }
            if !i.source_check {
                writeln!(s, "source_check = false")?;
            }
            if !i.allowed_sources.is_empty() {
                let list: Vec<String> = i
                    .allowed_sources
                    .iter()
                    .map(|p| format!("\"{p}\""))
                    .collect();
                writeln!(s, "allowed_sources = [{}]", list.join(", "))?;
            }
        }
        for t in &self.tables {
            writeln!(s, "\n[[router.table]]")?;
            writeln!(s, "name = {}", quote(&t.name))?;
            writeln!(s, "id = {}", t.id)?;
        }
        for r in &self.routes {
            writeln!(s, "\n[[router.route]]")?;
            writeln!(s, "destination = \"{}\"", r.destination)?;
            writeln!(s, "nexthop = \"{}\"", r.nexthop)?;
            if r.table != TABLE_MAIN {
                writeln!(s, "table = {}", self.table_ref(r.table))?;
            }
        }
        for r in &self.rules {
            writeln!(s, "\n[[router.rule]]")?;
            writeln!(s, "priority = {}", r.priority)?;
            if let Some(iif) = &r.iif {
                writeln!(s, "iif = {}", quote(iif))?;
            }
            if r.from != Prefix::ANY {
                writeln!(s, "from = \"{}\"", r.from)?;
            }
            if r.to != Prefix::ANY {
                writeln!(s, "to = \"{}\"", r.to)?;
            }
            writeln!(s, "table = {}", self.table_ref(r.table))?;
        }
        if let Some(st) = &self.steering {
            writeln!(s, "\n[router.steering]")?;
            writeln!(s, "nexthop = \"{}\"", st.nexthop)?;
            if let Some(g) = st.gateway_nexthop {
                writeln!(s, "gateway_nexthop = \"{g}\"")?;
            }
            let names: Vec<String> = st.interfaces.iter().map(|n| quote(n)).collect();
            writeln!(s, "interfaces = [{}]", names.join(", "))?;
        }
        if let Some(fw) = &self.firewall {
            writeln!(s, "\n[router.firewall]")?;
            writeln!(
                s,
                "default = \"{}\"",
                if fw.default_allow { "allow" } else { "deny" }
            )?;
            for r in &fw.rules {
                writeln!(s, "\n[[router.firewall.rule]]")?;
                // The id first: the file's edits match a rule by its first key.
                if let Some(id) = r.id {
                    writeln!(s, "id = \"{id}\"")?;
                }
                writeln!(s, "action = \"{}\"", r.action)?;
                if let Some(p) = protocol_name(r.protocol) {
                    writeln!(s, "protocol = {p}")?;
                }
                if r.source != Prefix::ANY {
                    writeln!(s, "source = \"{}\"", r.source)?;
                }
                if r.destination != Prefix::ANY {
                    writeln!(s, "destination = \"{}\"", r.destination)?;
                }
                if let Some(p) = r.ports {
                    writeln!(s, "destination_ports = \"{}\"", ports_text(p))?;
                }
                if let Some(d) = &r.description {
                    writeln!(s, "description = {}", quote(d))?;
                }
            }
        }
        for f in &self.floating_ips {
            writeln!(s, "\n[[router.floating_ip]]")?;
            if let Some(id) = f.id {
                writeln!(s, "id = \"{id}\"")?;
            }
            writeln!(s, "address = \"{}\"", f.address)?;
            writeln!(s, "fixed = \"{}\"", f.fixed)?;
        }
        write_nat(s, &self.nat)?;
        match &self.distributed {
            Some(d) => super::distributed::write_distributed(s, d),
            None => Ok(()),
        }
    }

    /// A table reference as `route.table` and `rule.table` write it.
    fn table_ref(&self, id: u32) -> String {
        if id == TABLE_MAIN {
            return "\"main\"".into();
        }
        match self.tables.iter().find(|t| t.id == id) {
            Some(t) => quote(&t.name),
            None => id.to_string(),
        }
    }
}

/// `[router.nat]` with the settings that differ from the defaults (nothing when none do).
fn write_nat(s: &mut String, nat: &NatSettings) -> std::fmt::Result {
    let d = NatSettings::default();
    let mut keys = Vec::new();
    if nat.snat_ports != d.snat_ports {
        keys.push(format!("snat_ports = \"{}\"", nat.snat_ports));
    }
    if nat.slow_path_snat_ports != d.slow_path_snat_ports {
        keys.push(format!(
            "slow_path_snat_ports = \"{}\"",
            nat.slow_path_snat_ports
        ));
    }
    if nat.max_floating_ips != d.max_floating_ips {
        keys.push(format!("max_floating_ips = {}", nat.max_floating_ips));
    }
    if nat.max_sessions != d.max_sessions {
        keys.push(format!("max_sessions = {}", nat.max_sessions));
    }
    if nat.preallocate_sessions != d.preallocate_sessions {
        keys.push(format!(
            "preallocate_sessions = {}",
            nat.preallocate_sessions
        ));
    }
    if nat.snat_sessions_per_source != d.snat_sessions_per_source {
        keys.push(format!(
            "snat_sessions_per_source = {}",
            nat.snat_sessions_per_source
        ));
    }
    if nat.metadata_port != d.metadata_port {
        keys.push(format!("metadata_port = {}", nat.metadata_port));
    }
    let (t, dt) = (&nat.timeouts, &d.timeouts);
    let timeouts: Vec<String> = [
        ("tcp_syn_sent", t.tcp_syn_sent, dt.tcp_syn_sent),
        ("tcp_syn_recv", t.tcp_syn_recv, dt.tcp_syn_recv),
        ("tcp_established", t.tcp_established, dt.tcp_established),
        ("tcp_fin_wait", t.tcp_fin_wait, dt.tcp_fin_wait),
        ("tcp_close_wait", t.tcp_close_wait, dt.tcp_close_wait),
        ("tcp_time_wait", t.tcp_time_wait, dt.tcp_time_wait),
        ("tcp_close", t.tcp_close, dt.tcp_close),
        ("udp", t.udp, dt.udp),
        ("udp_stream", t.udp_stream, dt.udp_stream),
        ("icmp", t.icmp, dt.icmp),
        ("generic", t.generic, dt.generic),
    ]
    .into_iter()
    .filter(|(_, v, default)| v != default)
    .map(|(name, v, _)| format!("{name} = {v}"))
    .collect();
    if !keys.is_empty() {
        writeln!(s, "\n[router.nat]")?;
        for k in &keys {
            writeln!(s, "{k}")?;
        }
    }
    if !timeouts.is_empty() {
        writeln!(s, "\n[router.nat.timeouts]")?;
        for k in &timeouts {
            writeln!(s, "{k}")?;
        }
    }
    Ok(())
}

/// A TOML basic string.
pub(super) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
