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
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
        xdp::{XdpLink, XdpLinkId},
    },
    util::nr_cpus,
};
use aya_obj::programs::XdpAttachType;
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
    /// routerd's datapaths outlive the process: maps and links stay pinned when it exits
    /// (or is killed), and the next routerd adopts them. Others (tests, benchmarks) go
    /// with the value.
    persistent: bool,
    /// Whether `open` found this router's maps pinned and took them over.
    adopted: bool,
    /// Map entries written or removed since load: a routerd that adopts an unchanged
    /// router writes none.
    writes: usize,
    /// The attachments of each interface by ifindex, to detach one interface alone.
    links: BTreeMap<u32, Attachment>,
    /// Programs a previous routerd loaded from this same object, taken from their pins
    /// instead of being verified again (the object's own copies then stay unloaded). No
    /// XDP program in TC mode.
    pinned_programs: Option<(Option<Xdp>, SchedClassifier)>,
    /// Whether the XDP program is loaded (from the object or a pin). A TC-mode router runs
    /// only the TC entry, so it skips the XDP program's verification (about 40% of a
    /// router's start).
    xdp_loaded: bool,
    /// The sizes `open` made the configuration-sized maps with.
    sizes: TableSizes,
    /// A persistent datapath's maps, opened from their pins for the operation under way and
    /// closed by `release_maps`: routerd holds no map descriptors between events, or a node
    /// of 1,000 routers would need 20 per router more than many systems allow a process.
    open_maps: BTreeMap<&'static str, Map>,
}

/// The programs on one interface. A persistent datapath holds no link descriptors (the
/// pins hold the links: 8 descriptors a router less), so its link ids are `None`.
struct Attachment {
    name: String,
    xdp: bool,
    xdp_link: Option<XdpLinkId>,
    tc_link: Option<SchedClassifierLinkId>,
}

/// Sizes of the maps the configuration sizes, fixed when the maps are created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSizes {
    /// Entries of the session table (two per session).
    pub session_entries: u32,
    /// Entries of the floating-IP tables and their (preallocated, per-CPU) counters.
    pub floating_ips: u32,
}

/// Who a router's pins belong to: adopted only by a routerd running the same router in the
/// same namespace with the same map layouts. Kept beside the router's info file (bpffs holds
/// only BPF objects).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub namespace: String,
    /// Inode of the network namespace (a namespace deleted and created again under the same
    /// name is another one).
    pub netns_inode: u64,
    /// Changes whenever a shared map type changes size.
    pub layout: String,
    /// Sizes of the tables sized by the configuration (set at creation: another size is
    /// another table).
    #[serde(default)]
    pub sizes: TableSizes,
    /// The eBPF object the pinned programs were loaded from (see [`object_digest`]): the
    /// same object's programs are adopted without loading them again.
    #[serde(default)]
    pub object: String,
    /// The desired-state file of the routerd that pinned the router (not part of what
    /// adoption compares): a routerd removes pinned routers its own file no longer has,
    /// never another daemon's.
    #[serde(default)]
    pub config: String,
}

static DAEMON_CONFIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the desired-state file of this routerd (see [`Owner::config`]).
pub fn set_daemon_config(path: &Path) {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let _ = DAEMON_CONFIG.set(path.display().to_string());
}

impl Owner {
    /// The owner record of the calling thread's namespace.
    pub fn current(namespace: &str, sizes: TableSizes) -> Result<Self, Error> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(|e| Error::io("reading the network namespace", e))?;
        Ok(Self {
            namespace: namespace.to_string(),
            netns_inode: meta.ino(),
            layout: layout_signature(),
            sizes,
            object: object_digest(),
            config: DAEMON_CONFIG.get().cloned().unwrap_or_default(),
        })
    }

    /// Whether a datapath pinned by `self` may be adopted by `other`.
    fn same_datapath(&self, other: &Owner) -> bool {
        (&self.namespace, self.netns_inode, &self.layout, self.sizes)
            == (
                &other.namespace,
                other.netns_inode,
                &other.layout,
                other.sizes,
            )
    }
}

/// A digest of [`EBPF_OBJECT`] (FNV-1a): programs pinned from another build are replaced.
pub fn object_digest() -> String {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST
        .get_or_init(|| {
            let hash = EBPF_OBJECT.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
            format!("{hash:016x}-{}", EBPF_OBJECT.len())
        })
        .clone()
}

/// Maps only the XDP entry uses: in TC mode no program holds them.
const XDP_ONLY_MAPS: [&str; 1] = [map_names::EGRESS_DEVS];

/// Pin names of the programs in a router's pin directory.
const PROGRAM_PINS: [&str; 2] = ["prog_xdp", "prog_tc"];

/// Routers pinned by the routerd whose desired-state file is `config`.
pub fn pinned_routers_of(config: &Path) -> Vec<String> {
    let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    pinned_routers()
        .into_iter()
        .filter(|id| {
            std::fs::read(owner_file(id))
                .ok()
                .and_then(|b| serde_json::from_slice::<Owner>(&b).ok())
                .is_some_and(|o| o.config == config.display().to_string())
        })
        .collect()
}

/// The sizes of every shared map key and value: maps pinned by a build with other layouts
/// are not adopted.
fn layout_signature() -> String {
    use std::mem::size_of;
    format!(
        "v2:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}",
        size_of::<RouteKey>(),
        size_of::<RouteEntry>(),
        size_of::<IfaceEntry>(),
        size_of::<IfaceStats>(),
        size_of::<NatConfig>(),
        size_of::<CtKey>(),
        size_of::<CtEntry>(),
        size_of::<PolicyConfig>(),
        size_of::<PolicyRule>(),
        size_of::<FwRule>(),
        size_of::<FwStats>(),
        size_of::<SourceKey>(),
    )
}

fn owner_file(router: &str) -> PathBuf {
    PathBuf::from(crate::paths::RUN_DIR).join(format!("{router}.owner"))
}

fn links_dir(router: &str) -> PathBuf {
    crate::paths::router_pin_dir(router).join("links")
}

/// Removes everything a router pinned (links first, which detaches them, then maps) and its
/// owner record. Nothing of the router stays in the kernel once its last file descriptor
/// closes.
pub fn teardown(router: &str) -> Result<(), Error> {
    let dir = crate::paths::router_pin_dir(router);
    for sub in [links_dir(router), dir.clone()] {
        if let Ok(entries) = std::fs::read_dir(&sub) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    remove_pin(&entry.path())?;
                }
            }
        }
    }
    for d in [links_dir(router), dir] {
        match std::fs::remove_dir(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("removing {}", d.display()), e));
            }
            _ => {}
        }
    }
    remove_pin(&owner_file(router))?;
    // The slow path's record of the rules it applied (slowpath.rs).
    remove_pin(&PathBuf::from(crate::paths::RUN_DIR).join(format!("{router}.nft")))
}

/// Routers with pins on this node.
pub fn pinned_routers() -> Vec<String> {
    std::fs::read_dir(crate::paths::PIN_ROOT)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl Datapath {
    /// Loads the object and both programs into the kernel (nothing is attached), with a
    /// session table of `session_entries` entries (two per session).
    pub fn load(router: &str, session_entries: u32) -> Result<Self, Error> {
        let ebpf = EbpfLoader::new()
            .map_max_entries(map_names::SESSIONS, session_entries)
            .load(EBPF_OBJECT)
            .map_err(Box::new)?;
        Self::with_programs(ebpf, router)
    }

    /// Loads both programs of `ebpf` into the kernel.
    fn with_programs(ebpf: Ebpf, router: &str) -> Result<Self, Error> {
        let mut dp = Self::without_programs(ebpf, router);
        dp.load_programs(true)?;
        Ok(dp)
    }

    fn without_programs(ebpf: Ebpf, router: &str) -> Self {
        Self {
            ebpf,
            router: router.to_string(),
            pin_dir: None,
            persistent: false,
            adopted: false,
            writes: 0,
            links: BTreeMap::new(),
            pinned_programs: None,
            xdp_loaded: false,
            sizes: TableSizes::default(),
            open_maps: BTreeMap::new(),
        }
    }

    /// Loads (and so verifies) the TC program of the object, and the XDP program `with_xdp`.
    fn load_programs(&mut self, with_xdp: bool) -> Result<(), Error> {
        let router = self.router.as_str();
        let ebpf = &mut self.ebpf;
        let program_error = |what: &str| {
            let what = what.to_string();
            let router = router.to_string();
            move |source| Error::Program {
                router,
                what,
                source: Box::new(source),
            }
        };
        if with_xdp {
            let xdp: &mut Xdp = program(ebpf, prog_names::XDP)?
                .try_into()
                .map_err(program_error("XDP program type"))?;
            load_retrying_eagain(|| xdp.load())
                .map_err(program_error("loading the XDP program"))?;
        }
        let tc: &mut SchedClassifier = program(ebpf, prog_names::TC)?
            .try_into()
            .map_err(program_error("TC program type"))?;
        load_retrying_eagain(|| tc.load()).map_err(program_error("loading the TC program"))?;
        self.xdp_loaded = with_xdp;
        Ok(())
    }

    /// Takes the programs pinned in `dir` (loaded from this same object by an earlier
    /// routerd, with these same maps): the TC program, and the XDP program `with_xdp`.
    /// `None` if one of those is missing or unusable.
    fn programs_from_pins(dir: &Path, with_xdp: bool) -> Option<(Option<Xdp>, SchedClassifier)> {
        let xdp = if with_xdp {
            Some(Xdp::from_pin(dir.join(PROGRAM_PINS[0]), XdpAttachType::Interface).ok()?)
        } else {
            None
        };
        let tc = SchedClassifier::from_pin(dir.join(PROGRAM_PINS[1])).ok()?;
        Some((xdp, tc))
    }

    /// Pins the (freshly loaded) programs in `dir`, replacing older pins, so that the next
    /// routerd can adopt them. Without an XDP program its old pin goes.
    fn pin_programs(&mut self, dir: &Path) -> Result<(), Error> {
        for (name, pin) in [prog_names::XDP, prog_names::TC].iter().zip(PROGRAM_PINS) {
            let path = dir.join(pin);
            remove_pin(&path)?;
            if *name == prog_names::XDP && !self.xdp_loaded {
                continue;
            }
            program(&mut self.ebpf, name)?
                .pin(&path)
                .map_err(|source| Error::Pin {
                    what: format!("pinning program {name} at {}", path.display()),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    /// Loads the programs for routerd with every map pinned under the router's pin
    /// directory: maps a previous routerd pinned for the same `owner` are taken over as they
    /// are (sessions, counters and all); pins of another owner are removed first. Nothing is
    /// attached yet (see `attach`, which adopts pinned links). `mode`: TC mode loads only
    /// the TC program.
    pub fn open(router: &str, sizes: TableSizes, owner: &Owner, mode: Mode) -> Result<Self, Error> {
        let with_xdp = mode == Mode::Xdp;
        let dir = crate::paths::router_pin_dir(router);
        let recorded: Option<Owner> = std::fs::read(owner_file(router))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let adopt = dir.join(map_names::NAT_CONFIG).exists()
            && recorded.as_ref().is_some_and(|r| r.same_datapath(owner));
        if !adopt && dir.exists() {
            log::info!("router {router}: removing pins of another owner ({recorded:?})");
            teardown(router)?;
        }
        std::fs::create_dir_all(links_dir(router))
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let ebpf = Self::load_pinned(&dir, sizes)?;
        let mut dp = Self::without_programs(ebpf, router);
        dp.sizes = sizes;
        // Programs verified once per build: a restart of routerd with the same object takes
        // them from their pins (they hold these same maps) instead of loading them again.
        let same_object = adopt && recorded.as_ref().is_some_and(|r| r.object == owner.object);
        dp.pinned_programs = same_object
            .then(|| Self::programs_from_pins(&dir, with_xdp))
            .flatten();
        match &dp.pinned_programs {
            Some((xdp, _)) => {
                dp.xdp_loaded = xdp.is_some();
                if !with_xdp {
                    // An XDP-mode run's program, not needed now.
                    remove_pin(&dir.join(PROGRAM_PINS[0]))?;
                }
            }
            None => {
                dp.load_programs(with_xdp)?;
                dp.pin_programs(&dir)?;
            }
        }
        // Kept for now (setup writes them all); `release_maps` closes them.
        for name in map_names::ALL {
            if let Some(map) = dp.ebpf.take_map(name) {
                dp.open_maps.insert(name, map);
            }
        }
        // The rest (per-CPU scratch, constants) only the programs use: they hold them.
        let rest: Vec<String> = dp.ebpf.maps().map(|(name, _)| name.to_string()).collect();
        for name in rest {
            drop(dp.ebpf.take_map(&name));
        }
        dp.pin_dir = Some(dir);
        dp.persistent = true;
        dp.adopted = adopt;
        if recorded.as_ref() != Some(owner) {
            let text = serde_json::to_vec(owner)
                .map_err(|e| Error::io("encoding the owner record", std::io::Error::other(e)))?;
            std::fs::create_dir_all(crate::paths::RUN_DIR)
                .map_err(|e| Error::io(format!("creating {}", crate::paths::RUN_DIR), e))?;
            std::fs::write(owner_file(router), text)
                .map_err(|e| Error::io("writing the owner record", e))?;
        }
        Ok(dp)
    }

    /// Loads the object (not its programs) with every map pinned in `dir`: maps pinned
    /// there already are reused, the others are made (`sizes` for those sized by the
    /// configuration) and pinned.
    fn load_pinned(dir: &Path, sizes: TableSizes) -> Result<Ebpf, Error> {
        let paths: Vec<(&str, PathBuf)> =
            map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(map_names::SESSIONS, sizes.session_entries);
        for name in [
            map_names::FIP_BY_ADDRESS,
            map_names::FIP_BY_FIXED,
            map_names::FIP_STATS,
        ] {
            loader.map_max_entries(name, sizes.floating_ips);
        }
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        Ok(loader.load(EBPF_OBJECT).map_err(Box::new)?)
    }

    /// Whether `open` took over a running router's maps.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Map writes since load (entries written or removed).
    pub fn writes(&self) -> usize {
        self.writes
    }

    /// The XDP program, when loaded (always by `load`; by `open` in XDP mode).
    pub fn xdp(&self) -> Option<&Xdp> {
        if !self.xdp_loaded {
            return None;
        }
        if let Some((xdp, _)) = &self.pinned_programs {
            return xdp.as_ref();
        }
        self.ebpf
            .program(prog_names::XDP)
            .and_then(|p| p.try_into().ok())
    }

    pub fn tc(&self) -> &SchedClassifier {
        if let Some((_, tc)) = &self.pinned_programs {
            return tc;
        }
        let prog = self.ebpf.program(prog_names::TC);
        prog.and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| unreachable!("load() checked the TC program"))
    }

    /// Whether the programs were taken from a previous routerd's pins (not verified again).
    pub fn programs_adopted(&self) -> bool {
        self.pinned_programs.is_some()
    }

    fn xdp_mut(&mut self) -> Result<&mut Xdp, Error> {
        if !self.xdp_loaded {
            return Err(Error::Program {
                router: self.router.clone(),
                what: "the XDP program (not loaded in TC mode)".into(),
                source: Box::new(aya::programs::ProgramError::NotLoaded),
            });
        }
        match &mut self.pinned_programs {
            Some((Some(xdp), _)) => Ok(xdp),
            _ => program(&mut self.ebpf, prog_names::XDP)?
                .try_into()
                .map_err(|source| Error::Program {
                    router: self.router.clone(),
                    what: "XDP program type".into(),
                    source: Box::new(source),
                }),
        }
    }

    fn tc_mut(&mut self) -> Result<&mut SchedClassifier, Error> {
        match &mut self.pinned_programs {
            Some((_, tc)) => Ok(tc),
            None => program(&mut self.ebpf, prog_names::TC)?
                .try_into()
                .map_err(|source| Error::Program {
                    router: self.router.clone(),
                    what: "TC program type".into(),
                    source: Box::new(source),
                }),
        }
    }

    /// Attaches the programs to `interfaces` (by name, in the calling thread's namespace).
    /// XDP mode attaches native XDP and the TC entry beside it (the TC entry forwards what
    /// XDP cannot redirect); TC mode attaches only the TC entry.
    ///
    /// A persistent datapath pins every link. Where a previous routerd left a link pinned for
    /// the interface, this program replaces the one in it atomically (`bpf_link_update`):
    /// no packet meets an interface without a program. Pinned links of interfaces no longer
    /// wanted are removed. Returns how many links were adopted.
    pub fn attach(&mut self, mode: Mode, interfaces: &[(String, u32)]) -> Result<usize, Error> {
        let mut adopted = 0;
        for (name, index) in interfaces {
            let xdp_link = if mode == Mode::Xdp {
                let (id, reused) = self.attach_xdp(name, *index)?;
                adopted += usize::from(reused);
                id
            } else {
                self.drop_link_pin(*index, "xdp")?;
                None
            };
            let (tc_link, reused) = self.attach_tc(name, *index)?;
            adopted += usize::from(reused);
            self.links.insert(
                *index,
                Attachment {
                    name: name.clone(),
                    xdp: mode == Mode::Xdp,
                    xdp_link,
                    tc_link,
                },
            );
        }
        if self.persistent {
            let wanted: Vec<String> = interfaces
                .iter()
                .flat_map(|(_, i)| [format!("{i}_xdp"), format!("{i}_tc")])
                .collect();
            if let Ok(entries) = std::fs::read_dir(links_dir(&self.router)) {
                for e in entries.flatten() {
                    let file = e.file_name().to_string_lossy().to_string();
                    if !wanted.contains(&file) {
                        log::info!("router {}: removing stale link pin {file}", self.router);
                        remove_pin(&e.path())?;
                    }
                }
            }
        }
        Ok(adopted)
    }

    fn link_pin(&self, ifindex: u32, kind: &str) -> Option<PathBuf> {
        self.persistent
            .then(|| links_dir(&self.router).join(format!("{ifindex}_{kind}")))
    }

    fn drop_link_pin(&self, ifindex: u32, kind: &str) -> Result<(), Error> {
        match self.link_pin(ifindex, kind) {
            Some(path) => remove_pin(&path),
            None => Ok(()),
        }
    }

    /// Native XDP on `name`: the pinned link's program replaced, or a new link (pinned).
    /// Returns the link (`None` for a persistent datapath: its pin holds it) and whether it
    /// was adopted.
    fn attach_xdp(&mut self, name: &str, index: u32) -> Result<(Option<XdpLinkId>, bool), Error> {
        let pin = self.link_pin(index, "xdp");
        let router = self.router.clone();
        let xdp = self.xdp_mut()?;
        if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
            let adopted = PinnedLink::from_pin(path)
                .ok()
                .map(FdLink::from)
                .and_then(|fd| XdpLink::try_from(fd).ok())
                .and_then(|link| xdp.attach_to_link(link).ok());
            match adopted {
                // Its pin holds it: our descriptor is closed.
                Some(id) => {
                    drop(xdp.take_link(id));
                    return Ok((None, true));
                }
                None => {
                    log::info!(
                        "router {router}: pinned XDP link of {name} is gone; attaching anew"
                    );
                    remove_pin(path)?;
                }
            }
        }
        let id = xdp
            .attach_to_if_index(index, XdpMode::Driver)
            .map_err(|source| Error::Program {
                router: router.clone(),
                what: format!(
                    "attaching native XDP to {name} (use mode = \"tc\" for interfaces without native XDP)"
                ),
                source: Box::new(source),
            })?;
        let Some(path) = pin else {
            return Ok((Some(id), false));
        };
        pin_link(xdp.take_link(id), &path)?;
        Ok((None, false))
    }

    /// The TC entry on `name` (tcx ingress), adopted or new, like `attach_xdp`.
    fn attach_tc(
        &mut self,
        name: &str,
        index: u32,
    ) -> Result<(Option<SchedClassifierLinkId>, bool), Error> {
        let pin = self.link_pin(index, "tc");
        let router = self.router.clone();
        let tc = self.tc_mut()?;
        if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
            let adopted = PinnedLink::from_pin(path)
                .ok()
                .map(FdLink::from)
                .and_then(|fd| SchedClassifierLink::try_from(fd).ok())
                .and_then(|link| tc.attach_to_link(link).ok());
            match adopted {
                Some(id) => {
                    drop(tc.take_link(id));
                    return Ok((None, true));
                }
                None => {
                    log::info!("router {router}: pinned TC link of {name} is gone; attaching anew");
                    remove_pin(path)?;
                }
            }
        }
        let id = tc
            .attach_with_options(
                name,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| Error::Program {
                router: router.clone(),
                what: format!("attaching TC (tcx ingress) to {name}"),
                source: Box::new(source),
            })?;
        let Some(path) = pin else {
            return Ok((Some(id), false));
        };
        pin_link(tc.take_link(id), &path)?;
        Ok((None, false))
    }

    /// Detaches the programs from one interface and forgets it (the interface was removed
    /// from the router).
    pub fn detach_iface(&mut self, ifindex: u32) -> Result<(), Error> {
        // A pinned link goes with its pin (routerd keeps no descriptor of it).
        self.drop_link_pin(ifindex, "xdp")?;
        self.drop_link_pin(ifindex, "tc")?;
        if let Some(attached) = self.links.remove(&ifindex) {
            if let Some(link) = attached.xdp_link {
                let _ = self.xdp_mut()?.detach(link);
            }
            if let Some(link) = attached.tc_link {
                let _ = self.tc_mut()?.detach(link);
            }
        }
        self.remove_iface(ifindex)
    }

    pub fn set_nat_config(&mut self, cfg: NatConfig) -> Result<(), Error> {
        let mut map: Array<_, NatConfig> = typed(self.map(map_names::NAT_CONFIG)?, "NAT_CONFIG")?;
        if map.get(&0, 0).ok() == Some(cfg) {
            return Ok(());
        }
        let result = map
            .set(0, cfg, 0)
            .map_err(|e| Error::map("writing NAT_CONFIG", e));
        self.writes += 1;
        result
    }

    /// Adds (or changes) floating IP `fip` for `fixed`, with zeroed counters for a new one.
    pub fn set_floating_ip(&mut self, fip: [u8; 4], fixed: [u8; 4]) -> Result<(), Error> {
        self.writes += 2;
        let mut stats: PerCpuHashMap<_, [u8; 4], FipStats> =
            typed(self.map(map_names::FIP_STATS)?, "FIP_STATS")?;
        if stats.get(&fip, 0).is_err() {
            let cpus = nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
            let zero = vec![FipStats::default(); cpus];
            retry_short_of_memory(|| stats.insert(fip, PerCpuValues::try_from(zero.clone())?, 0))
                .map_err(|e| Error::map("writing FIP_STATS", e))?;
        }
        let entry = |addr| FipEntry { addr, _pad: 0 };
        let mut by_fixed: HashMap<_, [u8; 4], FipEntry> =
            typed(self.map(map_names::FIP_BY_FIXED)?, "FIP_BY_FIXED")?;
        retry_short_of_memory(|| by_fixed.insert(fixed, entry(fip), 0))
            .map_err(|e| Error::map("writing FIP_BY_FIXED", e))?;
        let mut by_address: HashMap<_, [u8; 4], FipEntry> =
            typed(self.map(map_names::FIP_BY_ADDRESS)?, "FIP_BY_ADDRESS")?;
        retry_short_of_memory(|| by_address.insert(fip, entry(fixed), 0))
            .map_err(|e| Error::map("writing FIP_BY_ADDRESS", e))
    }

    /// Removes floating IP `fip`: from then on no packet is translated by it.
    pub fn remove_floating_ip(&mut self, fip: [u8; 4]) -> Result<(), Error> {
        self.writes += 2;
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

    /// Makes the floating IPs these (floating IP -> fixed IP), writing only differences.
    pub fn sync_floating_ips(&mut self, wanted: &BTreeMap<[u8; 4], [u8; 4]>) -> Result<(), Error> {
        let current = self.floating_ips()?;
        for (fip, fixed) in wanted {
            if current.get(fip) != Some(fixed) {
                self.set_floating_ip(*fip, *fixed)?;
            }
        }
        for fip in current.keys().filter(|f| !wanted.contains_key(*f)) {
            self.remove_floating_ip(*fip)?;
        }
        Ok(())
    }

    /// Zeroed SNAT counters (the array entry exists from load; this makes it explicit).
    pub fn reset_snat_stats(&mut self) -> Result<(), Error> {
        self.writes += 1;
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
            .map(|i| {
                map.get(&i, 0)
                    .map_err(|e| Error::map("reading FW_RULES", e))
            })
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
            if !source_tables
                .iter()
                .any(|((a, l), _)| a == addr && l == len)
            {
                trie.remove(&Key::new(u32::from(*len), *addr))
                    .map_err(|e| Error::map("removing from SOURCE_TABLES", e))?;
                writes += 1;
            }
        }
        self.writes += writes;
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
        self.writes += writes;
        Ok(writes)
    }

    /// Makes the per-source SNAT session counts these (addresses without sessions go).
    pub fn sync_snat_sources(
        &mut self,
        counts: &std::collections::HashMap<[u8; 4], u32>,
    ) -> Result<(), Error> {
        let mut map: HashMap<_, [u8; 4], u32> =
            typed(self.map(map_names::SNAT_SOURCES)?, "SNAT_SOURCES")?;
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

    /// Zeroes the firewall counters of `slots` (given to new rules).
    pub fn reset_fw_slots(&mut self, slots: &[u8]) -> Result<(), Error> {
        if slots.is_empty() {
            return Ok(());
        }
        self.writes += slots.len();
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
            // Through the programs: `map` would look for the missing pin.
            let map = match self.open_maps.remove(name) {
                Some(map) => map,
                None => self.map_of_programs(name)?,
            };
            map.pin(&path).map_err(|source| Error::Pin {
                what: format!("pinning {name} at {}", path.display()),
                source: Box::new(source),
            })?;
        }
        self.pin_dir = Some(dir.to_path_buf());
        Ok(())
    }

    /// Pins again what someone removed from bpffs by hand (maps, links): without its pins a
    /// persistent datapath would detach when this process ends. Returns what was re-pinned.
    pub fn repair_pins(&mut self) -> Result<Vec<String>, Error> {
        let Some(dir) = self.pin_dir.clone().filter(|_| self.persistent) else {
            return Ok(Vec::new());
        };
        let mut repaired = Vec::new();
        std::fs::create_dir_all(links_dir(&self.router))
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut unheld = Vec::new();
        for name in map_names::ALL {
            let path = dir.join(name);
            if path.exists() {
                continue;
            }
            // Through the programs: `map` would look for the missing pin.
            let map = match self.open_maps.remove(name) {
                Some(map) => map,
                // No loaded program holds it (TC mode: the XDP entry's redirect map), so it
                // went with its pin: made again below, empty, as it is unused.
                None if !self.xdp_loaded && XDP_ONLY_MAPS.contains(&name) => {
                    unheld.push(name.to_string());
                    continue;
                }
                None => self.map_of_programs(name)?,
            };
            map.pin(&path).map_err(|source| Error::Pin {
                what: format!("pinning {name} at {}", path.display()),
                source: Box::new(source),
            })?;
            repaired.push(name.to_string());
        }
        if !unheld.is_empty() {
            drop(Self::load_pinned(&dir, self.sizes)?);
            repaired.extend(unheld);
        }
        for (i, pin) in PROGRAM_PINS.iter().enumerate() {
            let path = dir.join(pin);
            if path.exists() || (i == 0 && !self.xdp_loaded) {
                continue;
            }
            let pinned = if i == 0 {
                self.xdp_mut()?.pin(&path)
            } else {
                self.tc_mut()?.pin(&path)
            };
            pinned.map_err(|source| Error::Pin {
                what: format!("pinning {pin} at {}", path.display()),
                source: Box::new(source),
            })?;
            repaired.push(pin.to_string());
        }
        // A link pin removed by hand took the link with it (routerd holds no descriptor):
        // the interface is attached again. Until then the kernel's slow path forwards.
        let attached: Vec<(u32, String, bool)> = self
            .links
            .iter()
            .map(|(i, a)| (*i, a.name.clone(), a.xdp))
            .collect();
        for (index, name, xdp) in attached {
            if xdp
                && !links_dir(&self.router)
                    .join(format!("{index}_xdp"))
                    .exists()
            {
                self.attach_xdp(&name, index)?;
                repaired.push(format!("{index}_xdp"));
            }
            if !links_dir(&self.router).join(format!("{index}_tc")).exists() {
                self.attach_tc(&name, index)?;
                repaired.push(format!("{index}_tc"));
            }
        }
        Ok(repaired)
    }

    fn map(&mut self, name: &str) -> Result<&mut Map, Error> {
        let invalid = || {
            Error::map(
                name.to_string(),
                aya::maps::MapError::InvalidName { name: name.into() },
            )
        };
        let pinned = map_names::ALL.iter().copied().find(|n| *n == name);
        let (Some(name), Some(dir), true) = (pinned, &self.pin_dir, self.persistent) else {
            return self.ebpf.map_mut(name).ok_or_else(invalid);
        };
        if !self.open_maps.contains_key(name) {
            let path = dir.join(name);
            let map = MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|e| Error::map(format!("opening {}", path.display()), e))?;
            self.open_maps.insert(name, map);
        }
        self.open_maps.get_mut(name).ok_or_else(invalid)
    }

    /// Closes the maps opened since the last call (see `open_maps`); the next operation
    /// opens what it needs from the pins again.
    pub fn release_maps(&mut self) {
        self.open_maps.clear();
    }

    /// Map `name` found through the programs that use it (its pin is gone).
    fn map_of_programs(&self, name: &str) -> Result<Map, Error> {
        let infos = [self.xdp().map(Xdp::info), Some(self.tc().info())];
        for info in infos.into_iter().flatten().flatten() {
            for id in info.map_ids().ok().flatten().unwrap_or_default() {
                let named =
                    aya::maps::MapInfo::from_id(id).is_ok_and(|m| m.name_as_str() == Some(name));
                if named {
                    return MapData::from_id(id)
                        .and_then(Map::from_map_data)
                        .map_err(|e| Error::map(format!("opening map {name} (id {id})"), e));
                }
            }
        }
        Err(Error::map(
            name.to_string(),
            aya::maps::MapError::InvalidName { name: name.into() },
        ))
    }

    pub fn set_iface(&mut self, ifindex: u32, entry: IfaceEntry) -> Result<(), Error> {
        let mut map: HashMap<_, u32, IfaceEntry> = typed(self.map(map_names::IFACES)?, "IFACES")?;
        if map.get(&ifindex, 0).ok() != Some(entry) {
            map.insert(ifindex, entry, 0)
                .map_err(|e| Error::map(format!("IFACES[{ifindex}]"), e))?;
            self.writes += 1;
        }
        // Counters exist from the start, so the programs only ever update them.
        let mut stats: PerCpuHashMap<_, u32, IfaceStats> =
            typed(self.map(map_names::IFACE_STATS)?, "IFACE_STATS")?;
        if stats.get(&ifindex, 0).is_err() {
            let cpus = nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
            let zero = vec![IfaceStats::default(); cpus];
            retry_short_of_memory(|| {
                stats.insert(ifindex, PerCpuValues::try_from(zero.clone())?, 0)
            })
            .map_err(|e| Error::map(format!("IFACE_STATS[{ifindex}]"), e))?;
            self.writes += 1;
        }
        Ok(())
    }

    /// The ifindexes in `IFACES`.
    pub fn iface_indexes(&mut self) -> Result<Vec<u32>, Error> {
        let map: HashMap<_, u32, IfaceEntry> = typed(self.map(map_names::IFACES)?, "IFACES")?;
        Ok(map.keys().filter_map(Result::ok).collect())
    }

    pub fn remove_iface(&mut self, ifindex: u32) -> Result<(), Error> {
        let mut map: HashMap<_, u32, IfaceEntry> = typed(self.map(map_names::IFACES)?, "IFACES")?;
        let _ = map.remove(&ifindex);
        let mut devs: DevMapHash<_> = typed(self.map(map_names::EGRESS_DEVS)?, "EGRESS_DEVS")?;
        let _ = devs.remove(ifindex);
        self.writes += 2;
        Ok(())
    }

    /// Lets XDP redirect into `ifindex` (call only for egresses that deliver XDP frames).
    pub fn set_xdp_egress(&mut self, ifindex: u32) -> Result<(), Error> {
        let mut devs: DevMapHash<_> = typed(self.map(map_names::EGRESS_DEVS)?, "EGRESS_DEVS")?;
        if devs.get(ifindex, 0).is_ok() {
            return Ok(());
        }
        let result = devs.insert(ifindex, ifindex, None, 0).map_err(|e| match e {
            aya::maps::xdp::XdpMapError::MapError(e) => {
                Error::map(format!("EGRESS_DEVS[{ifindex}]"), e)
            }
            other => Error::io(
                format!("EGRESS_DEVS[{ifindex}]"),
                std::io::Error::other(other.to_string()),
            ),
        });
        self.writes += 1;
        result
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
        self.writes += writes;
        Ok(writes)
    }

    pub fn set_neighbor(
        &mut self,
        key: NeighborKey,
        entry: Option<NeighborEntry>,
    ) -> Result<(), Error> {
        let mut map: HashMap<_, NeighborKey, NeighborEntry> =
            typed(self.map(map_names::NEIGHBORS)?, "NEIGHBORS")?;
        let result = match entry {
            Some(entry) => retry_short_of_memory(|| map.insert(key, entry, 0))
                .map_err(|e| Error::map("writing NEIGHBORS", e)),
            None => {
                let _ = map.remove(&key);
                Ok(())
            }
        };
        self.writes += 1;
        result
    }

    /// Makes the neighbour map equal to `wanted`.
    pub fn sync_neighbors(&mut self, wanted: &[(NeighborKey, NeighborEntry)]) -> Result<(), Error> {
        let mut map: HashMap<_, NeighborKey, NeighborEntry> =
            typed(self.map(map_names::NEIGHBORS)?, "NEIGHBORS")?;
        let current: std::collections::HashMap<NeighborKey, NeighborEntry> =
            map.iter().filter_map(Result::ok).collect();
        let mut writes = 0;
        for key in current.keys() {
            if !wanted.iter().any(|(k, _)| k == key) {
                let _ = map.remove(key);
                writes += 1;
            }
        }
        for (key, entry) in wanted {
            if current.get(key) != Some(entry) {
                map.insert(key, entry, 0)
                    .map_err(|e| Error::map("writing NEIGHBORS", e))?;
                writes += 1;
            }
        }
        self.writes += writes;
        Ok(())
    }

    /// Counters of `ifindex`, summed over CPUs.
    pub fn stats(&mut self, ifindex: u32) -> Result<IfaceStats, Error> {
        let map: PerCpuHashMap<_, u32, IfaceStats> =
            typed(self.map(map_names::IFACE_STATS)?, "IFACE_STATS")?;
        sum_stats(&map, ifindex)
    }

    /// For `routerctl trace` (`trace.rs`): the programs loaded once more, attached nowhere,
    /// sharing running router `router`'s maps named in `shared` (its configuration), with new
    /// private maps for every other one (counters; the session table, of `session_entries`
    /// entries). The shared maps are reached through pins of their own in a temporary
    /// directory beside the routers' (removed before this returns), so nothing is ever
    /// created or pinned under the router's directory, even if the router goes away
    /// meanwhile. The private maps are taken out of the object and returned by name for the
    /// caller to fill and read; the programs keep using them. Dropping everything leaves
    /// nothing behind in the kernel.
    #[allow(clippy::type_complexity)]
    pub fn open_for_trace(
        router: &str,
        shared: &[&'static str],
        session_entries: u32,
    ) -> Result<(Self, Vec<(&'static str, Map)>), Error> {
        let live = crate::paths::router_pin_dir(router);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = PathBuf::from(crate::paths::BPFFS).join(format!(
            "neutron-router-trace-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let result = (|| {
            let mut paths = Vec::with_capacity(shared.len());
            for name in shared {
                let data = MapData::from_pin(live.join(name)).map_err(|_| {
                    Error::NotRunning(router.to_string(), live.display().to_string())
                })?;
                let path = tmp.join(name);
                data.pin(&path).map_err(|source| Error::Pin {
                    what: format!("pinning {name} at {}", path.display()),
                    source: Box::new(source),
                })?;
                paths.push((*name, path));
            }
            let mut loader = EbpfLoader::new();
            loader.map_max_entries(map_names::SESSIONS, session_entries);
            for (name, path) in &paths {
                loader.map_pin_path(name, path.as_path());
            }
            let ebpf = loader.load(EBPF_OBJECT).map_err(Box::new)?;
            let mut dp = Self::with_programs(ebpf, router)?;
            let private = map_names::ALL
                .iter()
                .filter(|name| !shared.contains(name))
                .filter_map(|name| dp.ebpf.take_map(name).map(|map| (*name, map)))
                .collect();
            Ok((dp, private))
        })();
        for name in shared {
            let _ = std::fs::remove_file(tmp.join(name));
        }
        let _ = std::fs::remove_dir(&tmp);
        result
    }
}

impl Drop for Datapath {
    /// A datapath of tests and benchmarks goes entirely: dropping the `Ebpf` detaches every
    /// link and the pins are removed. routerd's (persistent) stays pinned and attached for
    /// the next routerd; `teardown` removes it.
    fn drop(&mut self) {
        if self.persistent {
            return;
        }
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

/// Runs a map write again while the kernel answers ENOMEM, for up to a second. Entries of
/// the maps that are not preallocated come from caches the kernel refills in the
/// background (per-CPU counters from the per-CPU allocator's atomic reserve): setting up
/// hundreds of routers at once can find one empty for a moment (seen at about 800 routers:
/// "percpu: allocation failed ... atomic alloc failed").
/// Program loads this process repeated because the verifier was interrupted (EAGAIN).
static LOADS_INTERRUPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many program loads this process has repeated because a signal interrupted the
/// verifier (see `load_retrying_eagain`).
pub fn loads_interrupted() -> u64 {
    LOADS_INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Loads a program, again when the kernel answers EAGAIN: the verifier gives up when a
/// signal arrives while it works (a SIGHUP to routerd during a router's start, say).
fn load_retrying_eagain(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut tries = 0;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 10 =>
            {
                tries += 1;
                LOADS_INTERRUPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::info!("loading a program: interrupted by a signal (EAGAIN), loading again");
            }
            other => return other,
        }
    }
}

fn retry_short_of_memory(
    mut write: impl FnMut() -> Result<(), aya::maps::MapError>,
) -> Result<(), aya::maps::MapError> {
    let mut tries = 0;
    loop {
        match write() {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOMEM) && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => {
                if tries > 0 {
                    log::info!(
                        "a per-CPU map write needed {tries} retries (kernel short of per-CPU memory)"
                    );
                }
                return other;
            }
        }
    }
}

/// Pins a link just taken from its program at `path`. The pin holds the link; dropping the
/// handle afterwards only closes our descriptor.
fn pin_link<L>(link: Result<L, aya::programs::ProgramError>, path: &Path) -> Result<(), Error>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let what = |e: String| {
        Error::io(
            format!("pinning {}", path.display()),
            std::io::Error::other(e),
        )
    };
    let link = link.map_err(|e| what(e.to_string()))?;
    let fd = FdLink::try_from(link).map_err(|e| what(e.to_string()))?;
    fd.pin(path).map_err(|e| what(e.to_string()))?;
    Ok(())
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
