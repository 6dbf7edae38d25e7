//! The firewall's counters as `routerctl` and the tests read them from a running router's
//! pinned maps: one line per configured rule (by position), and the fixed slots.

use aya::maps::{Array, MapData, PerCpuArray};
use router_common::{FwRule, FwStats, PolicyConfig, fw_action, fw_slot, map_names};

use crate::{datapath::open_pinned, error::Error};

/// Counters of the rule at `index` (0-based position in the configured list).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleCounters {
    pub index: usize,
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of the firewall's fixed steps, as (packets, bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FixedCounters {
    /// Packets of a session (established or related), accepted.
    pub established: (u64, u64),
    /// Invalid packets, dropped.
    pub invalid: (u64, u64),
    /// Packets no rule matched, given the default policy.
    pub default: (u64, u64),
}

/// The live rules' counters of running router `router`, in rule order.
pub fn rule_counters(router: &str) -> Result<Vec<RuleCounters>, Error> {
    let config: Array<MapData, PolicyConfig> = open_pinned(router, map_names::POLICY_CONFIG)?;
    let rules: Array<MapData, FwRule> = open_pinned(router, map_names::FW_RULES)?;
    let stats: PerCpuArray<MapData, FwStats> = open_pinned(router, map_names::FW_STATS)?;
    let policy = config
        .get(&0, 0)
        .map_err(|e| Error::map("POLICY_CONFIG[0]", e))?;
    let mut out = Vec::with_capacity(policy.fw_rule_count as usize);
    for i in 0..policy.fw_rule_count {
        let rule = rules
            .get(&(policy.fw_base + i), 0)
            .map_err(|e| Error::map(format!("FW_RULES[{}]", policy.fw_base + i), e))?;
        let (packets, bytes) = slot_total(&stats, u32::from(rule.slot))?;
        out.push(RuleCounters {
            index: i as usize,
            action: action_name(rule.action).to_string(),
            packets,
            bytes,
        });
    }
    Ok(out)
}

/// The fixed counters of running router `router`.
pub fn fixed_counters(router: &str) -> Result<FixedCounters, Error> {
    let stats: PerCpuArray<MapData, FwStats> = open_pinned(router, map_names::FW_STATS)?;
    Ok(FixedCounters {
        established: slot_total(&stats, fw_slot::ESTABLISHED)?,
        invalid: slot_total(&stats, fw_slot::INVALID)?,
        default: slot_total(&stats, fw_slot::DEFAULT)?,
    })
}

/// The per-CPU sum of one counter slot.
pub fn slot_total<T: std::borrow::Borrow<MapData>>(
    stats: &PerCpuArray<T, FwStats>,
    slot: u32,
) -> Result<(u64, u64), Error> {
    let values = stats
        .get(&slot, 0)
        .map_err(|e| Error::map(format!("FW_STATS[{slot}]"), e))?;
    let mut total = FwStats::default();
    for v in values.iter() {
        total.accumulate(v);
    }
    Ok((total.packets, total.bytes))
}

pub fn action_name(action: u8) -> &'static str {
    match action {
        fw_action::ALLOW => "allow",
        fw_action::REJECT => "reject",
        _ => "deny",
    }
}
