//! PolicyMaps routing and the firewall: the policy rules (`RULES`, interfaces as ifindexes),
//! the external source tables (`SOURCE_TABLES`: after NAT a packet from an external
//! subnet's address leaves by that subnet's table), the FWaaS rules on internal interfaces
//! (`FW_RULES`) with their counters (`FW_STATS`, one slot per rule and the fixed slots), the
//! anti-spoofing prefixes (`ALLOWED_SOURCES`), and `POLICY_CONFIG`, which says which half of
//! the rule arrays is live.
//!
//! Changed rule lists are written to the half of their array not in use and take effect with
//! one write of `POLICY_CONFIG`, so a packet sees the old list or the new one, never a mix.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key};
use router_common::{
    FwRule, FwStats, MAX_FW_RULES, MAX_RULES, PolicyConfig, PolicyRule, SourceKey, fw_action,
    fw_slot, map_names,
};
use serde::Serialize;

use super::{EntryDiff, MapSource, typed, zeroed};
use crate::{config::Router, error::Error};

/// What the policy maps should hold for a router.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyTables {
    pub rules: Vec<PolicyRule>,
    pub fw_rules: Vec<FwRule>,
    pub fw_flags: u32,
    /// Bits of `router_common::policy_flags`.
    pub flags: u32,
    /// Counter slots given to new firewall rules (zeroed before the rules go live).
    pub fresh_slots: Vec<u8>,
    /// External subnet -> its table.
    pub source_tables: BTreeMap<([u8; 4], u8), u32>,
    /// (trie prefix length, key) of every allowed source prefix per interface.
    pub allowed_sources: BTreeSet<(u32, SourceKey)>,
}

/// The fast path's policy for `router`, its interfaces resolved to ifindexes (`ifindex`),
/// keeping the counter slots of the firewall rules the fast path runs now (`live_fw`).
pub fn tables(
    router: &Router,
    ifindex: &BTreeMap<String, u32>,
    live_fw: &[FwRule],
) -> PolicyTables {
    let p = crate::policy::of(router);
    let rules = p
        .rules
        .iter()
        .filter(|r| r.in_fast_path())
        .filter_map(|r| {
            let iif = match &r.iif {
                None => 0,
                // A rule for an interface the router does not drive matches nothing here.
                Some(name) => *ifindex.get(name)?,
            };
            Some(PolicyRule {
                iif,
                from: r.from.to_net(),
                to: r.to.to_net(),
                table: r.table,
            })
        })
        .collect();
    let fw = crate::policy::firewall(router, live_fw);
    let source_tables = p
        .source_tables
        .iter()
        .map(|(prefix, table)| ((prefix.addr.octets(), prefix.len), *table))
        .collect();
    let mut allowed_sources = BTreeSet::new();
    for (name, prefixes) in crate::policy::allowed_sources(router) {
        let Some(index) = ifindex.get(&name) else {
            continue;
        };
        for prefix in prefixes {
            allowed_sources.insert((
                SourceKey::IFINDEX_BITS + u32::from(prefix.len),
                SourceKey::new(*index, prefix.addr.octets()),
            ));
        }
    }
    PolicyTables {
        rules,
        fw_rules: fw.rules,
        fw_flags: fw.flags,
        flags: crate::dvr::policy_flags(router),
        fresh_slots: fw.fresh,
        source_tables,
        allowed_sources,
    }
}

/// What the policy maps hold: the settings (which half of each rule array is live) and the
/// live lists and tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    pub config: PolicyConfig,
    pub rules: Vec<PolicyRule>,
    pub fw_rules: Vec<FwRule>,
    pub source_tables: BTreeMap<([u8; 4], u8), u32>,
    pub allowed_sources: BTreeSet<(u32, SourceKey)>,
}

/// Writes to the policy maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    /// The new rule list, when it differs (written to the idle half).
    pub rules: Option<Vec<PolicyRule>>,
    pub fw_rules: Option<Vec<FwRule>>,
    pub fresh_slots: Vec<u8>,
    pub source_tables: EntryDiff<([u8; 4], u8), u32>,
    /// The new `POLICY_CONFIG`, when it differs.
    pub config: Option<PolicyConfig>,
    pub allowed_sources: EntryDiff<(u32, SourceKey), ()>,
}

impl PolicyChanges {
    /// What turns `current` into `wanted`: a changed list goes to the idle half of its
    /// array, and the settings switch to it.
    pub fn between(current: &PolicyState, wanted: &PolicyTables) -> Self {
        let old = current.config;
        let mut new = old;
        let mut changes = PolicyChanges::default();
        if current.rules != wanted.rules {
            new.rules_base = if old.rules_base == 0 { MAX_RULES } else { 0 };
            new.rule_count = wanted.rules.len() as u32;
            changes.rules = Some(wanted.rules.clone());
        }
        if current.fw_rules != wanted.fw_rules {
            new.fw_base = if old.fw_base == 0 { MAX_FW_RULES } else { 0 };
            new.fw_rule_count = wanted.fw_rules.len() as u32;
            changes.fw_rules = Some(wanted.fw_rules.clone());
        }
        new.fw_flags = wanted.fw_flags;
        new.flags = wanted.flags;
        new.source_tables = wanted.source_tables.len() as u32;
        changes.config = (new != old).then_some(new);
        changes.fresh_slots = wanted.fresh_slots.clone();
        changes.source_tables = EntryDiff::between(&current.source_tables, &wanted.source_tables);
        changes.allowed_sources =
            EntryDiff::between_sets(&current.allowed_sources, &wanted.allowed_sources);
        changes
    }

    /// `state` as it is once these changes are written.
    pub fn apply_to(&self, state: &mut PolicyState) {
        if let Some(cfg) = self.config {
            state.config = cfg;
        }
        if let Some(rules) = &self.rules {
            state.rules = rules.clone();
        }
        if let Some(rules) = &self.fw_rules {
            state.fw_rules = rules.clone();
        }
        self.source_tables.apply_to(&mut state.source_tables);
        self.allowed_sources
            .apply_to_set(&mut state.allowed_sources);
    }

    pub fn writes(&self) -> usize {
        self.rules.as_ref().map_or(0, Vec::len)
            + self.fw_rules.as_ref().map_or(0, Vec::len)
            + self.fresh_slots.len()
            + self.source_tables.len()
            + usize::from(self.config.is_some())
            + self.allowed_sources.len()
    }
}

/// Counters of the firewall rule at `index` (0-based position in the configured list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleCounters {
    pub index: usize,
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of the firewall's fixed steps, as (packets, bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FixedCounters {
    /// Packets of a session (established or related), accepted.
    pub established: (u64, u64),
    /// Invalid packets, dropped.
    pub invalid: (u64, u64),
    /// Packets no rule matched, given the default policy.
    pub default: (u64, u64),
}

pub fn action_name(action: u8) -> &'static str {
    match action {
        fw_action::ALLOW => "allow",
        fw_action::REJECT => "reject",
        _ => "deny",
    }
}

/// Entries in use of the policy arrays (the live half of a rule array; one counter slot per
/// live rule and the three fixed slots); `None` for maps of other rooms.
pub fn slots_in_use(map: &str, config: &PolicyConfig) -> Option<u64> {
    match map {
        map_names::RULES => Some(u64::from(config.rule_count)),
        map_names::FW_RULES => Some(u64::from(config.fw_rule_count)),
        map_names::FW_STATS => Some(u64::from(config.fw_rule_count) + 3),
        _ => None,
    }
}

/// The policy maps of one router.
pub struct PolicyMaps<'a> {
    maps: &'a mut dyn MapSource,
}

impl<'a> PolicyMaps<'a> {
    pub fn new(maps: &'a mut dyn MapSource) -> Self {
        Self { maps }
    }

    /// The policy settings the fast path runs with.
    pub fn config(&mut self) -> Result<PolicyConfig, Error> {
        let map: Array<_, PolicyConfig> = typed(self.maps, map_names::POLICY_CONFIG)?;
        map.get(&0, 0)
            .map_err(|e| Error::map("reading POLICY_CONFIG", e))
    }

    /// The policy rules the fast path runs with, in order.
    pub fn rules(&mut self) -> Result<Vec<PolicyRule>, Error> {
        let cfg = self.config()?;
        let map: Array<_, PolicyRule> = typed(self.maps, map_names::RULES)?;
        (cfg.rules_base..cfg.rules_base + cfg.rule_count)
            .map(|i| map.get(&i, 0).map_err(|e| Error::map("reading RULES", e)))
            .collect()
    }

    /// The firewall rules the fast path runs with, in order.
    pub fn fw_rules(&mut self) -> Result<Vec<FwRule>, Error> {
        let cfg = self.config()?;
        let map: Array<_, FwRule> = typed(self.maps, map_names::FW_RULES)?;
        (cfg.fw_base..cfg.fw_base + cfg.fw_rule_count)
            .map(|i| {
                map.get(&i, 0)
                    .map_err(|e| Error::map("reading FW_RULES", e))
            })
            .collect()
    }

    /// The external source tables: subnet -> table.
    pub fn source_tables(&mut self) -> Result<BTreeMap<([u8; 4], u8), u32>, Error> {
        let trie: LpmTrie<_, [u8; 4], u32> = typed(self.maps, map_names::SOURCE_TABLES)?;
        let mut out = BTreeMap::new();
        for item in trie.iter() {
            let (key, table) = item.map_err(|e| Error::map("reading SOURCE_TABLES", e))?;
            out.insert((key.data(), key.prefix_len() as u8), table);
        }
        Ok(out)
    }

    /// The anti-spoofing trie's entries: (prefix length, key).
    pub fn allowed_sources(&mut self) -> Result<BTreeSet<(u32, SourceKey)>, Error> {
        let map: LpmTrie<_, SourceKey, u8> = typed(self.maps, map_names::ALLOWED_SOURCES)?;
        let mut out = BTreeSet::new();
        for item in map.iter() {
            let (key, _) = item.map_err(|e| Error::map("reading ALLOWED_SOURCES", e))?;
            out.insert((key.prefix_len(), key.data()));
        }
        Ok(out)
    }

    /// What the policy maps hold now.
    pub fn read(&mut self) -> Result<PolicyState, Error> {
        Ok(PolicyState {
            config: self.config()?,
            rules: self.rules()?,
            fw_rules: self.fw_rules()?,
            source_tables: self.source_tables()?,
            allowed_sources: self.allowed_sources()?,
        })
    }

    /// Carries out `plan`: fresh counters and new lists first, then the switch, then the
    /// removal of source tables no longer wanted.
    pub fn write(&mut self, plan: &PolicyChanges) -> Result<(), Error> {
        let mut stats: PerCpuArray<_, FwStats> = typed(self.maps, map_names::FW_STATS)?;
        for slot in &plan.fresh_slots {
            zeroed::<FwStats>()
                .and_then(|zero| stats.set(u32::from(*slot), zero, 0))
                .map_err(|e| Error::map("writing FW_STATS", e))?;
        }
        if let (Some(rules), Some(cfg)) = (&plan.rules, &plan.config) {
            let mut map: Array<_, PolicyRule> = typed(self.maps, map_names::RULES)?;
            for (i, rule) in rules.iter().enumerate() {
                map.set(cfg.rules_base + i as u32, rule, 0)
                    .map_err(|e| Error::map("writing RULES", e))?;
            }
        }
        if let (Some(rules), Some(cfg)) = (&plan.fw_rules, &plan.config) {
            let mut map: Array<_, FwRule> = typed(self.maps, map_names::FW_RULES)?;
            for (i, rule) in rules.iter().enumerate() {
                map.set(cfg.fw_base + i as u32, rule, 0)
                    .map_err(|e| Error::map("writing FW_RULES", e))?;
            }
        }
        // Source tables: new entries before the switch, stale ones after it.
        let mut trie: LpmTrie<_, [u8; 4], u32> = typed(self.maps, map_names::SOURCE_TABLES)?;
        for ((addr, len), table) in &plan.source_tables.set {
            trie.insert(&Key::new(u32::from(*len), *addr), table, 0)
                .map_err(|e| Error::map("writing SOURCE_TABLES", e))?;
        }
        if let Some(cfg) = plan.config {
            let mut map: Array<_, PolicyConfig> = typed(self.maps, map_names::POLICY_CONFIG)?;
            map.set(0, cfg, 0)
                .map_err(|e| Error::map("writing POLICY_CONFIG", e))?;
        }
        let mut trie: LpmTrie<_, [u8; 4], u32> = typed(self.maps, map_names::SOURCE_TABLES)?;
        for (addr, len) in &plan.source_tables.remove {
            trie.remove(&Key::new(u32::from(*len), *addr))
                .map_err(|e| Error::map("removing from SOURCE_TABLES", e))?;
        }
        let mut sources: LpmTrie<_, SourceKey, u8> = typed(self.maps, map_names::ALLOWED_SOURCES)?;
        for ((len, key), ()) in &plan.allowed_sources.set {
            sources
                .insert(&Key::new(*len, *key), 1, 0)
                .map_err(|e| Error::map("writing ALLOWED_SOURCES", e))?;
        }
        for (len, key) in &plan.allowed_sources.remove {
            sources
                .remove(&Key::new(*len, *key))
                .map_err(|e| Error::map("removing from ALLOWED_SOURCES", e))?;
        }
        if plan.writes() > 0 {
            super::routes::next_epoch(self.maps)?;
        }
        self.maps.count_writes(plan.writes());
        Ok(())
    }

    /// Makes the policy maps hold `wanted` but for the allowed sources, which stay as they
    /// are. Returns the writes.
    pub fn sync_rules(&mut self, wanted: &PolicyTables) -> Result<usize, Error> {
        let current = self.read()?;
        let wanted = PolicyTables {
            allowed_sources: current.allowed_sources.clone(),
            ..wanted.clone()
        };
        let changes = PolicyChanges::between(&current, &wanted);
        self.write(&changes)?;
        Ok(changes.writes())
    }

    /// Makes the anti-spoofing trie hold `wanted` (prefix length, key), touching only
    /// entries that differ. Returns the writes.
    pub fn sync_allowed_sources(
        &mut self,
        wanted: &BTreeSet<(u32, SourceKey)>,
    ) -> Result<usize, Error> {
        let plan = PolicyChanges {
            allowed_sources: EntryDiff::between_sets(&self.allowed_sources()?, wanted),
            ..PolicyChanges::default()
        };
        self.write(&plan)?;
        Ok(plan.writes())
    }

    /// The per-CPU sum of one firewall counter slot, as (packets, bytes).
    pub fn slot_total(&mut self, slot: u32) -> Result<(u64, u64), Error> {
        let stats: PerCpuArray<_, FwStats> = typed(self.maps, map_names::FW_STATS)?;
        let values = stats
            .get(&slot, 0)
            .map_err(|e| Error::map(format!("FW_STATS[{slot}]"), e))?;
        let mut total = FwStats::default();
        for v in values.iter() {
            total.accumulate(v);
        }
        Ok((total.packets, total.bytes))
    }

    /// Every firewall counter slot, summed over CPUs (slot -> counters).
    pub fn all_slots(&mut self) -> Result<Vec<FwStats>, Error> {
        let stats: PerCpuArray<_, FwStats> = typed(self.maps, map_names::FW_STATS)?;
        (0..stats.len())
            .map(|slot| {
                let values = stats
                    .get(&slot, 0)
                    .map_err(|e| Error::map(format!("FW_STATS[{slot}]"), e))?;
                let mut total = FwStats::default();
                for v in values.iter() {
                    total.accumulate(v);
                }
                Ok(total)
            })
            .collect()
    }

    /// The live rules' counters, in rule order.
    pub fn rule_counters(&mut self) -> Result<Vec<RuleCounters>, Error> {
        let rules = self.fw_rules()?;
        let mut out = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let (packets, bytes) = self.slot_total(u32::from(rule.slot))?;
            out.push(RuleCounters {
                index,
                action: action_name(rule.action).to_string(),
                packets,
                bytes,
            });
        }
        Ok(out)
    }

    /// The counters of the firewall's fixed steps.
    pub fn fixed_counters(&mut self) -> Result<FixedCounters, Error> {
        Ok(FixedCounters {
            established: self.slot_total(fw_slot::ESTABLISHED)?,
            invalid: self.slot_total(fw_slot::INVALID)?,
            default: self.slot_total(fw_slot::DEFAULT)?,
        })
    }
}
