//! The stateful firewall (FWaaS), on the router's internal interfaces in both
//! directions: invalid packets dropped, packets of a session accepted, then the rules in
//! order, then the default policy.

use std::fmt;

use router_common::{FwRule, MAX_FW_RULES, fw_action};
use serde::Deserialize;

use super::{
    Ctx, NeutronId, PortRange, Prefix,
    file::{parse_id, parse_prefix_or_addr, read, value_text},
};
use crate::error::ConfigError;

/// `[router.firewall]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firewall {
    /// What happens to packets no rule matches (`default = "allow"`); Neutron's default is
    /// to drop them.
    pub default_allow: bool,
    /// In order: the first match decides.
    pub rules: Vec<FirewallRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FwAction {
    Allow,
    Deny,
    /// Deny and answer (TCP RST, or ICMP port unreachable).
    Reject,
}

impl fmt::Display for FwAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FwAction::Allow => "allow",
            FwAction::Deny => "deny",
            FwAction::Reject => "reject",
        })
    }
}

impl FwAction {
    /// The action as [`FwRule::action`] holds it.
    pub fn code(self) -> u8 {
        match self {
            FwAction::Allow => fw_action::ALLOW,
            FwAction::Deny => fw_action::DENY,
            FwAction::Reject => fw_action::REJECT,
        }
    }
}

/// One `[[router.firewall.rule]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallRule {
    pub action: FwAction,
    /// IP protocol number; 0 = any.
    pub protocol: u8,
    pub source: Prefix,
    pub destination: Prefix,
    /// Destination ports (TCP or UDP rules only); `None` = every port.
    pub ports: Option<PortRange>,
    pub description: Option<String>,
    /// Neutron's id of the rule (`id`), unique among the router's firewall rules; `None`:
    /// addressed by its position only.
    pub id: Option<NeutronId>,
}

impl FirewallRule {
    /// The rule as the fast path matches it, counted in `FW_STATS` slot `slot`.
    pub fn to_fw_rule(&self, slot: u8) -> FwRule {
        let ports = self.ports.unwrap_or(PortRange { min: 0, max: 65535 });
        FwRule {
            source: self.source.to_net(),
            destination: self.destination.to_net(),
            port_min: ports.min,
            port_max: ports.max,
            proto: self.protocol,
            action: self.action.code(),
            slot,
            _pad: 0,
        }
    }
}

pub(super) const PROTO_ICMP: u8 = 1;
pub(super) const PROTO_TCP: u8 = 6;
pub(super) const PROTO_UDP: u8 = 17;

/// A protocol as the file writes it (`None` = any: the key is left out).
pub(super) fn protocol_name(proto: u8) -> Option<String> {
    match proto {
        0 => None,
        PROTO_ICMP => Some("\"icmp\"".into()),
        PROTO_TCP => Some("\"tcp\"".into()),
        PROTO_UDP => Some("\"udp\"".into()),
        n => Some(n.to_string()),
    }
}

/// Ports as the file writes them: `80` or `1000-2000`.
pub(super) fn ports_text(p: PortRange) -> String {
    if p.min == p.max {
        p.min.to_string()
    } else {
        p.to_string()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFirewall {
    default: Option<String>,
    #[serde(default)]
    rule: Vec<FileFwRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFwRule {
    action: Option<String>,
    protocol: Option<toml::Value>,
    source: Option<String>,
    destination: Option<String>,
    destination_ports: Option<toml::Value>,
    description: Option<String>,
    id: Option<String>,
}

/// A firewall rule as an edit gives it (a request's fields), for
/// [`super::RouterText::firewall_rule`].
#[derive(Clone, Copy, Debug)]
pub struct FirewallRuleText<'a> {
    /// `"allow"`, `"deny"` or `"reject"`.
    pub action: &'a str,
    /// `"tcp"`, `"udp"`, `"icmp"`, `"any"` or a number; `None`: any.
    pub protocol: Option<&'a str>,
    /// A prefix or an address; `None`: any.
    pub source: Option<&'a str>,
    pub destination: Option<&'a str>,
    /// `"80"`, `"1000-2000"` or `"1000:2000"`; `None`: every port.
    pub destination_ports: Option<&'a str>,
    pub description: Option<&'a str>,
    /// Neutron's id of the rule; `None`: none.
    pub id: Option<&'a str>,
}

impl FirewallRuleText<'_> {
    pub(super) fn to_file(self) -> FileFwRule {
        let text = |v: Option<&str>| v.map(|s| toml::Value::String(s.to_string()));
        FileFwRule {
            action: Some(self.action.to_string()),
            protocol: text(self.protocol),
            source: self.source.map(str::to_string),
            destination: self.destination.map(str::to_string),
            destination_ports: text(self.destination_ports),
            description: self.description.map(str::to_string),
            id: self.id.map(str::to_string),
        }
    }
}

/// Neutron's limit on descriptions.
const DESCRIPTION_MAX: usize = 255;

pub(super) fn read_firewall(
    at: &Ctx,
    file: Option<&FileFirewall>,
) -> Result<Option<Firewall>, ConfigError> {
    let Some(f) = file else {
        return Ok(None);
    };
    let default_allow = match f.default.as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(other) => {
            return Err(at.bad("firewall.default", other, "must be \"deny\" or \"allow\""));
        }
    };
    let rules = f
        .rule
        .iter()
        .enumerate()
        .map(|(i, r)| read_rule(at, &format!("firewall.rule[{i}]"), r))
        .collect::<Result<_, _>>()?;
    Ok(Some(Firewall {
        default_allow,
        rules,
    }))
}

pub(super) fn check_firewall(at: &Ctx, firewall: Option<&Firewall>) -> Result<(), ConfigError> {
    let Some(f) = firewall else {
        return Ok(());
    };
    if f.rules.len() > MAX_FW_RULES as usize {
        return Err(at.bad(
            "firewall.rule",
            &f.rules.len().to_string(),
            &format!(
                "{} firewall rules, more than the {MAX_FW_RULES} the fast path holds",
                f.rules.len()
            ),
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for (i, r) in f.rules.iter().enumerate() {
        let key = format!("firewall.rule[{i}]");
        if let Some(id) = r.id
            && !ids.insert(id)
        {
            return Err(at.bad(
                &format!("{key}.id"),
                &id.to_string(),
                "another firewall rule of this router has this id",
            ));
        }
        if let Some(ports) = r.ports
            && r.protocol != PROTO_TCP
            && r.protocol != PROTO_UDP
        {
            return Err(at.bad(
                &format!("{key}.destination_ports"),
                &ports_text(ports),
                "ports need protocol \"tcp\" or \"udp\"",
            ));
        }
        if let Some(d) = &r.description
            && d.len() > DESCRIPTION_MAX
        {
            return Err(at.bad(
                &format!("{key}.description"),
                d,
                "must be at most 255 bytes",
            ));
        }
    }
    Ok(())
}

/// The rule at `key` (`firewall.rule[i]`).
pub(super) fn read_rule(at: &Ctx, key: &str, r: &FileFwRule) -> Result<FirewallRule, ConfigError> {
    let action = match r.action.as_deref() {
        Some("allow") => FwAction::Allow,
        Some("deny") => FwAction::Deny,
        Some("reject") => FwAction::Reject,
        other => {
            return Err(at.bad(
                &format!("{key}.action"),
                other.unwrap_or(""),
                "is required: \"allow\", \"deny\" or \"reject\"",
            ));
        }
    };
    let protocol = match &r.protocol {
        None => 0,
        Some(v) => parse_protocol(v).ok_or_else(|| {
            at.bad(
                &format!("{key}.protocol"),
                &value_text(v),
                "must be \"tcp\", \"udp\", \"icmp\", \"any\" or a protocol number 0-255",
            )
        })?,
    };
    let prefix = |name: &str, value: &Option<String>| match value {
        None => Ok(Prefix::ANY),
        Some(s) => read(at, &format!("{key}.{name}"), s, parse_prefix_or_addr),
    };
    let source = prefix("source", &r.source)?;
    let destination = prefix("destination", &r.destination)?;
    let ports = match &r.destination_ports {
        None => None,
        Some(v) => {
            let text = value_text(v);
            let ports = match v {
                toml::Value::String(s) => parse_fw_ports(s),
                toml::Value::Integer(_) => parse_fw_ports(&text),
                _ => Err("must be a port (\"80\") or a range (\"1000-2000\", \"1:65535\")"),
            }
            .map_err(|problem| at.bad(&format!("{key}.destination_ports"), &text, problem))?;
            Some(ports)
        }
    };
    let id =
        r.id.as_deref()
            .map(|text| read(at, &format!("{key}.id"), text, parse_id))
            .transpose()?;
    Ok(FirewallRule {
        action,
        protocol,
        source,
        destination,
        ports,
        description: r.description.clone(),
        id,
    })
}

fn parse_protocol(v: &toml::Value) -> Option<u8> {
    match v {
        toml::Value::String(s) => match s.as_str() {
            "any" => Some(0),
            "icmp" => Some(PROTO_ICMP),
            "tcp" => Some(PROTO_TCP),
            "udp" => Some(PROTO_UDP),
            n => n.parse().ok(),
        },
        toml::Value::Integer(n) => u8::try_from(*n).ok(),
        _ => None,
    }
}

/// `80`, `1000-2000` or `1000:2000` (iptables); `0:65535` (or `0-65535`) is every port.
fn parse_fw_ports(s: &str) -> Result<PortRange, &'static str> {
    const BAD: &str = "not a port (\"80\") or a range (\"1000-2000\", \"1:65535\")";
    let s = s.trim();
    let (a, b) = s.split_once(['-', ':']).unwrap_or((s, s));
    let min: u16 = a.trim().parse().map_err(|_| BAD)?;
    let max: u16 = b.trim().parse().map_err(|_| BAD)?;
    if (min, max) == (0, u16::MAX) {
        return Ok(PortRange { min, max });
    }
    if min == 0 || max < min {
        return Err(
            "must be a port 1-65535 or a range low-high with 1 <= low <= high (or 0:65535)",
        );
    }
    Ok(PortRange { min, max })
}
