//! NAT: the gateway and SNAT settings (`NAT_CONFIG`), the floating IPs in both directions
//! (`FIP_BY_ADDRESS`: floating -> fixed, for DNAT; `FIP_BY_FIXED`: fixed -> floating, for the
//! source rewrite) with their counters (`FIP_STATS`) and the filter in front of them
//! (`FIP_FILTER`), the SNAT counters (`SNAT_STATS`), and the SNAT sessions per source address
//! that enforce the per-source quota (`SNAT_SOURCES`).

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{Array, HashMap, MapError, PerCpuArray, PerCpuHashMap};
use router_common::{FipEntry, FipFilter, FipStats, NatConfig, SnatStats, map_names, nat_flags};

use super::{EntryDiff, MapSource, retry_short_of_memory, typed, zeroed};
use crate::{config::Router, error::Error};

/// The fast path's NAT settings for `router`, its gateway at `gateway_ifindex`.
pub fn config(router: &Router, gateway_ifindex: Option<u32>) -> NatConfig {
    let mut cfg = NatConfig {
        port_min: router.nat.snat_ports.min,
        port_max: router.nat.snat_ports.max,
        source_quota: router.nat.snat_sessions_per_source,
        ..NatConfig::default()
    };
    if let (Some(g), Some(index)) = (&router.gateway, gateway_ifindex) {
        cfg.gateway_ip = g.address.addr.octets();
        cfg.gateway_ifindex = index;
        cfg.flags = nat_flags::GATEWAY | if g.snat { nat_flags::SNAT } else { 0 };
    }
    cfg
}

/// The floating IPs of `router`: floating -> fixed.
pub fn floating_ips(router: &Router) -> BTreeMap<[u8; 4], [u8; 4]> {
    router
        .floating_ips
        .iter()
        .map(|f| (f.address.octets(), f.fixed.octets()))
        .collect()
}

/// What the NAT maps hold: the settings, the floating IPs (floating -> fixed) and the
/// filter in front of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatTables {
    pub config: NatConfig,
    pub floating_ips: BTreeMap<[u8; 4], [u8; 4]>,
    pub filter: FipFilter,
}

/// What the NAT maps should hold for `router`, its gateway at `gateway_ifindex`.
pub fn tables(router: &Router, gateway_ifindex: Option<u32>) -> NatTables {
    let floating_ips = floating_ips(router);
    NatTables {
        config: config(router, gateway_ifindex),
        filter: filter_of(&floating_ips),
        floating_ips,
    }
}

/// The filter of `floating_ips` (floating -> fixed): both addresses of each.
pub fn filter_of(floating_ips: &BTreeMap<[u8; 4], [u8; 4]>) -> FipFilter {
    FipFilter::of(floating_ips.iter().flat_map(|(fip, fixed)| [fip, fixed]))
}

/// Writes to the NAT maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatChanges {
    /// The new settings, when they differ.
    pub config: Option<NatConfig>,
    /// Floating IPs to remove (first) and to add; one whose fixed IP changes is removed and
    /// added again, so no stale fixed -> floating entry stays behind.
    pub floating_ips: EntryDiff<[u8; 4], [u8; 4]>,
    /// The new filter, when it differs: written after the floating IPs (a bit set early
    /// only costs a lookup; a bit cleared late the same).
    pub filter: Option<FipFilter>,
}

impl NatChanges {
    /// What turns `current` into `wanted` (whose filter is that of its floating IPs).
    pub fn between(current: &NatTables, wanted: &NatTables) -> Self {
        let filter = filter_of(&wanted.floating_ips);
        let mut diff = EntryDiff::between(&current.floating_ips, &wanted.floating_ips);
        // A changed floating IP is removed first (see `floating_ips`).
        for (fip, _) in &diff.set {
            if current.floating_ips.contains_key(fip) {
                diff.remove.push(*fip);
            }
        }
        Self {
            config: (current.config != wanted.config).then_some(wanted.config),
            floating_ips: diff,
            filter: (current.filter != filter).then_some(filter),
        }
    }

    /// `tables` as they are once these changes are written.
    pub fn apply_to(&self, tables: &mut NatTables) {
        if let Some(cfg) = self.config {
            tables.config = cfg;
        }
        self.floating_ips.apply_to(&mut tables.floating_ips);
        if let Some(filter) = self.filter {
            tables.filter = filter;
        }
    }

    /// Each floating IP is two entries (its counters are created with them).
    pub fn writes(&self) -> usize {
        usize::from(self.config.is_some())
            + 2 * (self.floating_ips.set.len() + self.floating_ips.remove.len())
            + usize::from(self.filter.is_some())
    }
}

/// A floating IP, its fixed IP, and its counters summed over CPUs.
pub type FloatingIpCounters = ([u8; 4], [u8; 4], FipStats);

/// The NAT maps of one router.
pub struct NatMaps<'a> {
    maps: &'a mut dyn MapSource,
}

impl<'a> NatMaps<'a> {
    pub fn new(maps: &'a mut dyn MapSource) -> Self {
        Self { maps }
    }

    /// The NAT settings the fast path runs with.
    pub fn config(&mut self) -> Result<NatConfig, Error> {
        let map: Array<_, NatConfig> = typed(self.maps, map_names::NAT_CONFIG)?;
        map.get(&0, 0)
            .map_err(|e| Error::map("reading NAT_CONFIG", e))
    }

    /// Floating IP -> fixed IP, as the fast path has them.
    pub fn floating_ips(&mut self) -> Result<BTreeMap<[u8; 4], [u8; 4]>, Error> {
        let map: HashMap<_, [u8; 4], FipEntry> = typed(self.maps, map_names::FIP_BY_ADDRESS)?;
        map.iter()
            .map(|item| {
                item.map(|(k, v)| (k, v.addr))
                    .map_err(|e| Error::map("reading FIP_BY_ADDRESS", e))
            })
            .collect()
    }

    /// The floating-IP filter the fast path runs with.
    pub fn filter(&mut self) -> Result<FipFilter, Error> {
        let map: Array<_, FipFilter> = typed(self.maps, map_names::FIP_FILTER)?;
        map.get(&0, 0)
            .map_err(|e| Error::map("reading FIP_FILTER", e))
    }

    /// What the NAT maps hold now.
    pub fn read(&mut self) -> Result<NatTables, Error> {
        Ok(NatTables {
            config: self.config()?,
            floating_ips: self.floating_ips()?,
            filter: self.filter()?,
        })
    }

    /// Carries out `plan`.
    pub fn write(&mut self, plan: &NatChanges) -> Result<(), Error> {
        if let Some(cfg) = plan.config {
            let mut map: Array<_, NatConfig> = typed(self.maps, map_names::NAT_CONFIG)?;
            map.set(0, cfg, 0)
                .map_err(|e| Error::map("writing NAT_CONFIG", e))?;
        }
        for fip in &plan.floating_ips.remove {
            self.remove_floating_ip(*fip)?;
        }
        for (fip, fixed) in &plan.floating_ips.set {
            self.insert_floating_ip(*fip, *fixed)?;
        }
        if let Some(filter) = plan.filter {
            self.write_filter(filter)?;
        }
        if plan.writes() > 0 {
            super::routes::next_epoch(self.maps)?;
        }
        self.maps.count_writes(plan.writes());
        Ok(())
    }

    /// Makes the filter `filter`. The array's value is copied in place, so a packet may
    /// see part old words and part new: a bit is either its old or its new value, and an
    /// address that stays keeps its bit in both. A filter not yet ready is first written
    /// whole still unready, so that none is trusted half written.
    fn write_filter(&mut self, filter: FipFilter) -> Result<(), Error> {
        let mut map: Array<_, FipFilter> = typed(self.maps, map_names::FIP_FILTER)?;
        let ready = map
            .get(&0, 0)
            .map_err(|e| Error::map("reading FIP_FILTER", e))?
            .ready;
        if ready == 0 && filter.ready != 0 {
            let unready = FipFilter { ready: 0, ..filter };
            map.set(0, unready, 0)
                .map_err(|e| Error::map("writing FIP_FILTER", e))?;
        }
        map.set(0, filter, 0)
            .map_err(|e| Error::map("writing FIP_FILTER", e))
    }

    /// Zeroed counters for floating IP `fip` (the programs only update existing ones).
    pub fn create_floating_ip_counters(&mut self, fip: [u8; 4]) -> Result<(), Error> {
        let mut stats: PerCpuHashMap<_, [u8; 4], FipStats> =
            typed(self.maps, map_names::FIP_STATS)?;
        retry_short_of_memory(|| stats.insert(fip, zeroed::<FipStats>()?, 0))
            .map_err(|e| Error::map("writing FIP_STATS", e))
    }

    /// Sets the NAT settings (one write, none if they are these already).
    pub fn set_config(&mut self, config: NatConfig) -> Result<(), Error> {
        let current = self.read()?;
        let wanted = NatTables {
            config,
            ..current.clone()
        };
        self.write(&NatChanges::between(&current, &wanted))
    }

    /// Adds (or changes) floating IP `fip` for `fixed`.
    pub fn add_floating_ip(&mut self, fip: [u8; 4], fixed: [u8; 4]) -> Result<(), Error> {
        let current = self.read()?;
        let mut wanted = current.clone();
        wanted.floating_ips.insert(fip, fixed);
        self.write(&NatChanges::between(&current, &wanted))
    }

    /// Writes floating IP `fip` for `fixed`, with zeroed counters for a new one.
    fn insert_floating_ip(&mut self, fip: [u8; 4], fixed: [u8; 4]) -> Result<(), Error> {
        let stats: PerCpuHashMap<_, [u8; 4], FipStats> = typed(self.maps, map_names::FIP_STATS)?;
        if stats.get(&fip, 0).is_err() {
            self.create_floating_ip_counters(fip)?;
        }
        let entry = |addr| FipEntry { addr, _pad: 0 };
        let mut by_fixed: HashMap<_, [u8; 4], FipEntry> =
            typed(self.maps, map_names::FIP_BY_FIXED)?;
        retry_short_of_memory(|| by_fixed.insert(fixed, entry(fip), 0))
            .map_err(|e| Error::map("writing FIP_BY_FIXED", e))?;
        let mut by_address: HashMap<_, [u8; 4], FipEntry> =
            typed(self.maps, map_names::FIP_BY_ADDRESS)?;
        retry_short_of_memory(|| by_address.insert(fip, entry(fixed), 0))
            .map_err(|e| Error::map("writing FIP_BY_ADDRESS", e))
    }

    /// Removes floating IP `fip`: from then on no packet is translated by it.
    fn remove_floating_ip(&mut self, fip: [u8; 4]) -> Result<(), Error> {
        let mut by_address: HashMap<_, [u8; 4], FipEntry> =
            typed(self.maps, map_names::FIP_BY_ADDRESS)?;
        let fixed = by_address.get(&fip, 0).ok().map(|e| e.addr);
        let _ = by_address.remove(&fip);
        if let Some(fixed) = fixed {
            let mut by_fixed: HashMap<_, [u8; 4], FipEntry> =
                typed(self.maps, map_names::FIP_BY_FIXED)?;
            if by_fixed.get(&fixed, 0).is_ok_and(|e| e.addr == fip) {
                let _ = by_fixed.remove(&fixed);
            }
        }
        let mut stats: PerCpuHashMap<_, [u8; 4], FipStats> =
            typed(self.maps, map_names::FIP_STATS)?;
        let _ = stats.remove(&fip);
        Ok(())
    }

    /// Zeroed SNAT counters (the array entry exists from load; this makes it explicit).
    pub fn reset_snat_stats(&mut self) -> Result<(), Error> {
        let mut map: PerCpuArray<_, SnatStats> = typed(self.maps, map_names::SNAT_STATS)?;
        zeroed::<SnatStats>()
            .and_then(|zero| map.set(0, zero, 0))
            .map_err(|e| Error::map("writing SNAT_STATS", e))?;
        self.maps.count_writes(1);
        Ok(())
    }

    /// Makes the per-source SNAT session counts these (addresses without sessions go).
    pub fn sync_snat_sources(
        &mut self,
        counts: &std::collections::HashMap<[u8; 4], u32>,
    ) -> Result<(), Error> {
        let mut map: HashMap<_, [u8; 4], u32> = typed(self.maps, map_names::SNAT_SOURCES)?;
        let current: std::collections::HashMap<[u8; 4], u32> =
            map.iter().filter_map(Result::ok).collect();
        for (addr, n) in counts {
            if current.get(addr) != Some(n) {
                map.insert(addr, n, 0)
                    .map_err(|e| Error::map("writing SNAT_SOURCES", e))?;
            }
        }
        for addr in current.keys().filter(|a| !counts.contains_key(*a)) {
            let _ = map.remove(addr);
        }
        Ok(())
    }

    /// The SNAT counters, summed over CPUs.
    pub fn snat_stats(&mut self) -> Result<SnatStats, Error> {
        let counters: PerCpuArray<_, SnatStats> = typed(self.maps, map_names::SNAT_STATS)?;
        let mut s = SnatStats::default();
        let values = counters
            .get(&0, 0)
            .map_err(|e| Error::map("reading SNAT_STATS", e))?;
        values.iter().for_each(|v| s.accumulate(v));
        Ok(s)
    }

    /// The counters of floating IP `fip`, summed over CPUs (zero when it has none yet).
    pub fn floating_ip_counters(&mut self, fip: [u8; 4]) -> Result<FipStats, Error> {
        let counters: PerCpuHashMap<_, [u8; 4], FipStats> = typed(self.maps, map_names::FIP_STATS)?;
        let mut s = FipStats::default();
        match counters.get(&fip, 0) {
            Ok(values) => values.iter().for_each(|v| s.accumulate(v)),
            // Added a moment ago, counters not created yet: nothing counted.
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(Error::map(format!("FIP_STATS[{}]", Ipv4Addr::from(fip)), e)),
        }
        Ok(s)
    }

    /// Every floating IP with its fixed IP and counters, by address.
    pub fn floating_ip_counters_all(&mut self) -> Result<Vec<FloatingIpCounters>, Error> {
        let fips = self.floating_ips()?;
        let mut out = Vec::with_capacity(fips.len());
        for (fip, fixed) in fips {
            out.push((fip, fixed, self.floating_ip_counters(fip)?));
        }
        Ok(out)
    }
}
