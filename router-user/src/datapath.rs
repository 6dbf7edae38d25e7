//! One router's eBPF programs and maps: loading, map writes, attachment and pinning.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap,
        PerCpuValues, lpm_trie::Key,
    },
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId,
        tc::TcAttachOptions, xdp::XdpLinkId,
    },
    util::nr_cpus,
};
use router_common::{
    CtEntry, CtKey, FipEntry, FipStats, FwRule, FwStats, IfaceEntry, IfaceStats, MAX_FW_RULES,
    MAX_RULES, NatConfig, NeighborEntry, NeighborKey, PolicyConfig, PolicyRule, RouteEntry,
    RouteKey, SnatStats, SourceKey, map_names, prog_names,
};

use crate::{config::Mode, error::Error};

/// The eBPF object built by build.rs.
pub static EBPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf"));

/// A route as the LPM trie stores it: (trie prefix length, key).
pub type RouteSlot = (u32, RouteKey);

pub struct Datapath {
    ebpf: Ebpf,
    router: String,
    pin_dir: Option<PathBuf>,
    /// The attachments of each interface, to detach one interface alone.
    links: BTreeMap<u32, (Option<XdpLinkId>, SchedClassifierLinkId)>,
}

impl Datapath {
    /// Loads the object and both programs into the kernel (nothing is attached), with a
    /// session table of `session_entries` entries (two per session).
    pub fn load(router: &str, session_entries: u32) -> Result<Self, Error> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::SESSIONS, session_entries)
            .load(EBPF_OBJECT)
            .map_err(Box::new)?;
        let program_error = |what: &str| {
            let what = what.to_string();
            let router = router.to_string();
            move |source| Error::Program {
                router,
                what,
                source: Box::new(source),
            }
        };
        let xdp: &mut Xdp = program(&mut ebpf, prog_names::XDP)?
            .try_into()
            .map_err(program_error("XDP program type"))?;
        xdp.load()
            .map_err(program_error("loading the XDP program"))?;
        let tc: &mut SchedClassifier = program(&mut ebpf, prog_names::TC)?
            .try_into()
            .map_err(program_error("TC program type"))?;
        tc.load().map_err(program_error("loading the TC program"))?;
        Ok(Self {
            ebpf,
            router: router.to_string(),
            pin_dir: None,
            links: BTreeMap::new(),
        })
    }

    pub fn xdp(&self) -> &Xdp {
        let prog = self.ebpf.program(prog_names::XDP);
        prog.and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| unreachable!("load() checked the XDP program"))
    }

    pub fn tc(&self) -> &SchedClassifier {
        let prog = self.ebpf.program(prog_names::TC);
        prog.and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| unreachable!("load() checked the TC program"))
    }

    /// Attaches the programs to `interfaces` (by name, in the calling thread's namespace).
    /// XDP mode attaches native XDP and the TC entry beside it (the TC entry forwards what
    /// XDP cannot redirect); TC mode attaches only the TC entry.
    pub fn attach(&mut self, mode: Mode, interfaces: &[(String, u32)]) -> Result<(), Error> {
        let router = self.router.clone();
        let type_error = |what: &str| {
            let router = router.clone();
            let what = what.to_string();
            move |source| Error::Program {
                router,
                what,
                source: Box::new(source),
            }
        };
        for (name, index) in interfaces {
            let mut xdp_link = None;
            if mode == Mode::Xdp {
                let xdp: &mut Xdp = program(&mut self.ebpf, prog_names::XDP)?
                    .try_into()
                    .map_err(type_error("XDP program type"))?;
                let result = xdp.attach_to_if_index(*index, XdpMode::Driver);
                xdp_link = Some(result.map_err(|source| Error::Program {
                    router: router.clone(),
                    what: format!("attaching native XDP to {name} (use mode = \"tc\" for interfaces without native XDP)"),
                    source: Box::new(source),
                })?);
            }
            let tc: &mut SchedClassifier = program(&mut self.ebpf, prog_names::TC)?
                .try_into()
                .map_err(type_error("TC program type"))?;
            let result = tc.attach_with_options(
                name,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            );
            let tc_link = result.map_err(|source| Error::Program {
                router: router.clone(),
                what: format!("attaching TC (tcx ingress) to {name}"),
                source: Box::new(source),
            })?;
            self.links.insert(*index, (xdp_link, tc_link));
        }
        Ok(())
    }

    /// Detaches the programs from one interface and forgets it (the interface was removed
    /// from the router).
    pub fn detach_iface(&mut self, ifindex: u32) -> Result<(), Error> {
        if let Some((xdp_link, tc_link)) = self.links.remove(&ifindex) {
            let router = self.router.clone();
            let type_error = |source| Error::Program {
                router: router.clone(),
                what: "program type".into(),
                source: Box::new(source),
            };
            if let Some(link) = xdp_link {
                let xdp: &mut Xdp = program(&mut self.ebpf, prog_names::XDP)?
                    .try_into()
                    .map_err(type_error)?;
                let _ = xdp.detach(link);
            }
            let tc: &mut SchedClassifier = program(&mut self.ebpf, prog_names::TC)?
                .try_into()
                .map_err(type_error)?;
            let _ = tc.detach(tc_link);
        }
        self.remove_iface(ifindex)
    }

    pub fn set_nat_config(&mut self, cfg: NatConfig) -> Result<(), Error> {
        let mut map: Array<_, NatConfig> = typed(self.map(map_names::NAT_CONFIG)?, "NAT_CONFIG")?;
        map.set(0, cfg, 0)
            .map_err(|e| Error::map("writing NAT_CONFIG", e))
    }

    /// Adds (or changes) floating IP `fip` for `fixed`, with zeroed counters for a new one.
    pub fn set_floating_ip(&mut self, fip: [u8; 4], fixed: [u8; 4]) -> Result<(), Error> {
        let mut stats: PerCpuHashMap<_, [u8; 4], FipStats> =
            typed(self.map(map_names::FIP_STATS)?, "FIP_STATS")?;
        if stats.get(&fip, 0).is_err() {
            let cpus = nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
            let zero = PerCpuValues::try_from(vec![FipStats::default(); cpus])
                .map_err(|e| Error::io("per-CPU values", e))?;
            stats
                .insert(fip, zero, 0)
                .map_err(|e| Error::map("writing FIP_STATS", e))?;
        }
        let entry = |addr| FipEntry { addr, _pad: 0 };
        let mut by_fixed: HashMap<_, [u8; 4], FipEntry> =
            typed(self.map(map_names::FIP_BY_FIXED)?, "FIP_BY_FIXED")?;
        by_fixed
            .insert(fixed, entry(fip), 0)
            .map_err(|e| Error::map("writing FIP_BY_FIXED", e))?;
        let mut by_address: HashMap<_, [u8; 4], FipEntry> =
            typed(self.map(map_names::FIP_BY_ADDRESS)?, "FIP_BY_ADDRESS")?;
        by_address
            .insert(fip, entry(fixed), 0)
            .map_err(|e| Error::map("writing FIP_BY_ADDRESS", e))
    }

    /// Removes floating IP `fip`: from then on no packet is translated by it.
    pub fn remove_floating_ip(&mut self, fip: [u8; 4]) -> Result<(), Error> {
        let mut by_address: HashMap<_, [u8; 4], FipEntry> =
            typed(self.map(map_names::FIP_BY_ADDRESS)?, "FIP_BY_ADDRESS")?;
        let fixed = by_address.get(&fip, 0).ok().map(|e| e.addr);
        let _ = by_address.remove(&fip);
        if let Some(fixed) = fixed {
            let mut by_fixed: HashMap<_, [u8; 4], FipEntry> =
                typed(self.map(map_names::FIP_BY_FIXED)?, "FIP_BY_FIXED")?;
            if by_fixed.get(&fixed, 0).is_ok_and(|e| e.addr == fip) {
                let _ = by_fixed.remove(&fixed);
            }
        }
        let mut stats: PerCpuHashMap<_, [u8; 4], FipStats> =
            typed(self.map(map_names::FIP_STATS)?, "FIP_STATS")?;
        let _ = stats.remove(&fip);
        Ok(())
    }

    /// Floating IP -> fixed IP, as the fast path has them.
    pub fn floating_ips(&mut self) -> Result<BTreeMap<[u8; 4], [u8; 4]>, Error> {
        let map: HashMap<_, [u8; 4], FipEntry> =
            typed(self.map(map_names::FIP_BY_ADDRESS)?, "FIP_BY_ADDRESS")?;
        map.iter()
            .map(|item| {
                item.map(|(k, v)| (k, v.addr))
                    .map_err(|e| Error::map("reading FIP_BY_ADDRESS", e))
            })
            .collect()
    }

    /// Zeroed SNAT counters (the array entry exists from load; this makes it explicit).
    pub fn reset_snat_stats(&mut self) -> Result<(), Error> {
        let mut map: PerCpuArray<_, SnatStats> =
            typed(self.map(map_names::SNAT_STATS)?, "SNAT_STATS")?;
        let cpus = nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
        let zero = PerCpuValues::try_from(vec![SnatStats::default(); cpus])
            .map_err(|e| Error::io("per-CPU values", e))?;
        map.set(0, zero, 0)
            .map_err(|e| Error::map("writing SNAT_STATS", e))
    }

    /// The policy settings the fast path runs with.
    pub fn policy_config(&mut self) -> Result<PolicyConfig, Error> {
        let map: Array<_, PolicyConfig> =
            typed(self.map(map_names::POLICY_CONFIG)?, "POLICY_CONFIG")?;
        map.get(&0, 0)
            .map_err(|e| Error::map("reading POLICY_CONFIG", e))
    }

    /// The firewall rules the fast path runs with.
    pub fn fw_rules(&mut self) -> Result<Vec<FwRule>, Error> {
        let cfg = self.policy_config()?;
        let map: Array<_, FwRule> = typed(self.map(map_names::FW_RULES)?, "FW_RULES")?;
        (cfg.fw_base..cfg.fw_base + cfg.fw_rule_count)
            .map(|i| map.get(&i, 0).map_err(|e| Error::map("reading FW_RULES", e)))
            .collect()
    }

    fn live_rules(&mut self, cfg: &PolicyConfig) -> Result<Vec<PolicyRule>, Error> {
        let map: Array<_, PolicyRule> = typed(self.map(map_names::RULES)?, "RULES")?;
        (cfg.rules_base..cfg.rules_base + cfg.rule_count)
            .map(|i| map.get(&i, 0).map_err(|e| Error::map("reading RULES", e)))
            .collect()
    }

    /// Makes the fast path's policy rules, firewall and external source tables these.
    /// Changed rule lists are written to the half of their array not in use and take effect
    /// with one write of `POLICY_CONFIG`, so a packet sees the old list or the new one,
    /// never a mix. Returns the number of map writes (0 when nothing differs).
    pub fn set_policy(
        &mut self,
        rules: &[PolicyRule],
        fw_rules: &[FwRule],
        fw_flags: u32,
        source_tables: &[(([u8; 4], u8), u32)],
    ) -> Result<usize, Error> {
        let old = self.policy_config()?;
        let mut new = old;
        let mut writes = 0;
        if self.live_rules(&old)? != rules {
            let base = if old.rules_base == 0 { MAX_RULES } else { 0 };
            let mut map: Array<_, PolicyRule> = typed(self.map(map_names::RULES)?, "RULES")?;
            for (i, rule) in rules.iter().enumerate() {
                map.set(base + i as u32, rule, 0)
                    .map_err(|e| Error::map("writing RULES", e))?;
                writes += 1;
            }
            new.rules_base = base;
            new.rule_count = rules.len() as u32;
        }
        if self.fw_rules()? != fw_rules {
            let base = if old.fw_base == 0 { MAX_FW_RULES } else { 0 };
            let mut map: Array<_, FwRule> = typed(self.map(map_names::FW_RULES)?, "FW_RULES")?;
            for (i, rule) in fw_rules.iter().enumerate() {
                map.set(base + i as u32, rule, 0)
                    .map_err(|e| Error::map("writing FW_RULES", e))?;
                writes += 1;
            }
            new.fw_base = base;
            new.fw_rule_count = fw_rules.len() as u32;
        }
        new.fw_flags = fw_flags;
        // Source tables: new entries before the switch, stale ones after it.
        let mut trie: LpmTrie<_, [u8; 4], u32> =
            typed(self.map(map_names::SOURCE_TABLES)?, "SOURCE_TABLES")?;
        let mut current = BTreeMap::new();
        for item in trie.iter() {
            let (key, table) = item.map_err(|e| Error::map("reading SOURCE_TABLES", e))?;
            current.insert((key.data(), key.prefix_len() as u8), table);
        }
        for ((addr, len), table) in source_tables {
            if current.get(&(*addr, *len)) != Some(table) {
                trie.insert(&Key::new(u32::from(*len), *addr), table, 0)
                    .map_err(|e| Error::map("writing SOURCE_TABLES", e))?;
                writes += 1;
            }
        }
        new.source_tables = source_tables.len() as u32;
        if new != old {
            let mut map: Array<_, PolicyConfig> =
                typed(self.map(map_names::POLICY_CONFIG)?, "POLICY_CONFIG")?;
            map.set(0, new, 0)
                .map_err(|e| Error::map("writing POLICY_CONFIG", e))?;
            writes += 1;
        }
        let mut trie: LpmTrie<_, [u8; 4], u32> =
            typed(self.map(map_names::SOURCE_TABLES)?, "SOURCE_TABLES")?;
        for (addr, len) in current.keys() {
            if !source_tables.iter().any(|((a, l), _)| a == addr && l == len) {
                trie.remove(&Key::new(u32::from(*len), *addr))
                    .map_err(|e| Error::map("removing from SOURCE_TABLES", e))?;
                writes += 1;
            }
        }
        Ok(writes)
    }

    /// Makes the anti-spoofing trie equal to `wanted` (prefix length, key), touching only
    /// entries that differ. Returns the number of writes.
    pub fn sync_allowed_sources(
        &mut self,
        wanted: &std::collections::BTreeSet<(u32, SourceKey)>,
    ) -> Result<usize, Error> {
        let mut map: LpmTrie<_, SourceKey, u8> =
            typed(self.map(map_names::ALLOWED_SOURCES)?, "ALLOWED_SOURCES")?;
        let mut current = std::collections::BTreeSet::new();
        for item in map.iter() {
            let (key, _) = item.map_err(|e| Error::map("reading ALLOWED_SOURCES", e))?;
            current.insert((key.prefix_len(), key.data()));
        }
        let mut writes = 0;
        for (len, key) in wanted.difference(&current) {
            map.insert(&Key::new(*len, *key), 1, 0)
                .map_err(|e| Error::map("writing ALLOWED_SOURCES", e))?;
            writes += 1;
        }
        for (len, key) in current.difference(wanted) {
            map.remove(&Key::new(*len, *key))
                .map_err(|e| Error::map("removing from ALLOWED_SOURCES", e))?;
            writes += 1;
        }
        Ok(writes)
    }

    /// Zeroes the firewall counters of `slots` (given to new rules).
    pub fn reset_fw_slots(&mut self, slots: &[u8]) -> Result<(), Error> {
        if slots.is_empty() {
            return Ok(());
        }
        let mut map: PerCpuArray<_, FwStats> = typed(self.map(map_names::FW_STATS)?, "FW_STATS")?;
        let cpus = nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
        for slot in slots {
            let zero = PerCpuValues::try_from(vec![FwStats::default(); cpus])
                .map_err(|e| Error::io("per-CPU values", e))?;
            map.set(u32::from(*slot), zero, 0)
                .map_err(|e| Error::map("writing FW_STATS", e))?;
        }
        Ok(())
    }

    /// The session table, for aging, purging and listing.
    pub fn sessions(&mut self) -> Result<HashMap<&mut MapData, CtKey, CtEntry>, Error> {
        typed(self.map(map_names::SESSIONS)?, "SESSIONS")
    }

    /// Pins every map under `dir` (replacing pins a previous run left behind).
    pub fn pin_maps(&mut self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        for name in map_names::ALL {
            let path = dir.join(name);
            remove_pin(&path)?;
            let map = self.map(name)?;
            map.pin(&path).map_err(|source| Error::Pin {
                what: format!("pinning {name} at {}", path.display()),
                source: Box::new(source),
            })?;
        }
        self.pin_dir = Some(dir.to_path_buf());
        Ok(())
    }

    fn map(&mut self, name: &str) -> Result<&mut Map, Error> {
        self.ebpf.map_mut(name).ok_or_else(|| {
            Error::map(
                name.to_string(),
                aya::maps::MapError::InvalidName { name: name.into() },
            )
        })
    }

    pub fn set_iface(&mut self, ifindex: u32, entry: IfaceEntry) -> Result<(), Error> {
        let mut map: HashMap<_, u32, IfaceEntry> = typed(self.map(map_names::IFACES)?, "IFACES")?;
        map.insert(ifindex, entry, 0)
            .map_err(|e| Error::map(format!("IFACES[{ifindex}]"), e))?;
        // Counters exist from the start, so the programs only ever update them.
        let mut stats: PerCpuHashMap<_, u32, IfaceStats> =
            typed(self.map(map_names::IFACE_STATS)?, "IFACE_STATS")?;
        if stats.get(&ifindex, 0).is_err() {
            let cpus = nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
            let zero = PerCpuValues::try_from(vec![IfaceStats::default(); cpus])
                .map_err(|e| Error::io("per-CPU values", e))?;
            stats
                .insert(ifindex, zero, 0)
                .map_err(|e| Error::map(format!("IFACE_STATS[{ifindex}]"), e))?;
        }
        Ok(())
    }

    pub fn remove_iface(&mut self, ifindex: u32) -> Result<(), Error> {
        let mut map: HashMap<_, u32, IfaceEntry> = typed(self.map(map_names::IFACES)?, "IFACES")?;
        let _ = map.remove(&ifindex);
        let mut devs: DevMapHash<_> = typed(self.map(map_names::EGRESS_DEVS)?, "EGRESS_DEVS")?;
        let _ = devs.remove(ifindex);
        Ok(())
    }

    /// Lets XDP redirect into `ifindex` (call only for egresses that deliver XDP frames).
    pub fn set_xdp_egress(&mut self, ifindex: u32) -> Result<(), Error> {
        let mut devs: DevMapHash<_> = typed(self.map(map_names::EGRESS_DEVS)?, "EGRESS_DEVS")?;
        devs.insert(ifindex, ifindex, None, 0).map_err(|e| match e {
            aya::maps::xdp::XdpMapError::MapError(e) => {
                Error::map(format!("EGRESS_DEVS[{ifindex}]"), e)
            }
            other => Error::io(
                format!("EGRESS_DEVS[{ifindex}]"),
                std::io::Error::other(other.to_string()),
            ),
        })
    }

    pub fn routes(&mut self) -> Result<BTreeMap<RouteSlot, RouteEntry>, Error> {
        let map: LpmTrie<_, RouteKey, RouteEntry> = typed(self.map(map_names::ROUTES)?, "ROUTES")?;
        let mut out = BTreeMap::new();
        for item in map.iter() {
            let (key, value) = item.map_err(|e| Error::map("reading ROUTES", e))?;
            out.insert((key.prefix_len(), key.data()), value);
        }
        Ok(out)
    }

    /// Makes the route trie equal to `wanted`, touching only entries that differ.
    /// Returns the number of writes.
    pub fn sync_routes(
        &mut self,
        wanted: &BTreeMap<RouteSlot, RouteEntry>,
    ) -> Result<usize, Error> {
        let current = self.routes()?;
        let mut map: LpmTrie<_, RouteKey, RouteEntry> =
            typed(self.map(map_names::ROUTES)?, "ROUTES")?;
        let mut writes = 0;
        for (slot, entry) in wanted {
            if current.get(slot) != Some(entry) {
                map.insert(&Key::new(slot.0, slot.1), entry, 0)
                    .map_err(|e| Error::map("writing ROUTES", e))?;
                writes += 1;
            }
        }
        for slot in current.keys().filter(|s| !wanted.contains_key(*s)) {
            map.remove(&Key::new(slot.0, slot.1))
                .map_err(|e| Error::map("removing from ROUTES", e))?;
            writes += 1;
        }
        Ok(writes)
    }

    pub fn set_neighbor(
        &mut self,
        key: NeighborKey,
        entry: Option<NeighborEntry>,
    ) -> Result<(), Error> {
        let mut map: HashMap<_, NeighborKey, NeighborEntry> =
            typed(self.map(map_names::NEIGHBORS)?, "NEIGHBORS")?;
        match entry {
            Some(entry) => map
                .insert(key, entry, 0)
                .map_err(|e| Error::map("writing NEIGHBORS", e)),
            None => {
                let _ = map.remove(&key);
                Ok(())
            }
        }
    }

    /// Makes the neighbour map equal to `wanted`.
    pub fn sync_neighbors(&mut self, wanted: &[(NeighborKey, NeighborEntry)]) -> Result<(), Error> {
        let mut map: HashMap<_, NeighborKey, NeighborEntry> =
            typed(self.map(map_names::NEIGHBORS)?, "NEIGHBORS")?;
        let current: Vec<NeighborKey> = map.keys().filter_map(Result::ok).collect();
        for key in current {
            if !wanted.iter().any(|(k, _)| *k == key) {
                let _ = map.remove(&key);
            }
        }
        for (key, entry) in wanted {
            map.insert(key, entry, 0)
                .map_err(|e| Error::map("writing NEIGHBORS", e))?;
        }
        Ok(())
    }

    /// Counters of `ifindex`, summed over CPUs.
    pub fn stats(&mut self, ifindex: u32) -> Result<IfaceStats, Error> {
        let map: PerCpuHashMap<_, u32, IfaceStats> =
            typed(self.map(map_names::IFACE_STATS)?, "IFACE_STATS")?;
        sum_stats(&map, ifindex)
    }
}

impl Drop for Datapath {
    /// Dropping the `Ebpf` detaches every link; the pins go too, so nothing of this router
    /// stays in the kernel.
    fn drop(&mut self) {
        if let Some(dir) = &self.pin_dir {
            for name in map_names::ALL {
                let _ = std::fs::remove_file(dir.join(name));
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program, Error> {
    ebpf.program_mut(name).ok_or_else(|| {
        Error::io(
            format!("the eBPF object has no program {name}"),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

fn typed<'a, T>(map: &'a mut Map, name: &str) -> Result<T, Error>
where
    T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|e| Error::map(format!("map {name}"), e))
}

fn remove_pin(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("removing stale pin {}", path.display()),
            e,
        )),
    }
}

pub fn sum_stats<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuHashMap<T, u32, IfaceStats>,
    ifindex: u32,
) -> Result<IfaceStats, Error> {
    let values = map
        .get(&ifindex, 0)
        .map_err(|e| Error::map(format!("IFACE_STATS[{ifindex}]"), e))?;
    let mut total = IfaceStats::default();
    for v in values.iter() {
        total.accumulate(v);
    }
    Ok(total)
}

/// Opens map `name` pinned by a running router.
pub fn open_pinned<T>(router: &str, name: &str) -> Result<T, Error>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let dir = crate::paths::router_pin_dir(router);
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .map_err(|_| Error::NotRunning(router.to_string(), dir.display().to_string()))?;
    let map = Map::from_map_data(data).map_err(|e| Error::map(path.display().to_string(), e))?;
    T::try_from(map).map_err(|e| Error::map(path.display().to_string(), e))
}

/// Opens the pinned counters of a running router (for `routerctl`).
pub fn open_pinned_stats(router: &str) -> Result<PerCpuHashMap<MapData, u32, IfaceStats>, Error> {
    open_pinned(router, map_names::IFACE_STATS)
}
