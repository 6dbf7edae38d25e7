//! One router's eBPF programs and maps in the kernel: loading, pinning, adoption of what an
//! earlier routerd pinned, attachment to interfaces (XDP, TC) and pin repair. What the maps
//! hold is written and read through the rooms of [`crate::maps`]; a `Datapath` is one of
//! their map sources.

mod attach;
pub mod features;
mod object;
pub use self::attach::{Attached, TC_HANDLE_MAJOR, TC_HANDLE_MINOR, TC_PRIORITY};
pub use self::object::EBPF_OBJECT;
mod owner;
mod sessions;

use std::{
    collections::{BTreeMap, HashSet},
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, MapError},
    programs::{SchedClassifier, Xdp, tc::SchedClassifierLinkId, xdp::XdpLinkId},
};
use aya_obj::programs::XdpAttachType;
use router_common::{map_names, prog_names};

pub use self::owner::{
    Owner, TableSizes, maps_pinned, object_digest, owner_of, pinned_routers, pinned_routers_of,
    set_daemon_config, teardown, would_adopt,
};
use self::owner::{links_dir, owner_file};
use crate::{config::Mode, error::Error, maps::MapSource};

pub struct Datapath {
    /// The loaded object: a datapath of tests and benchmarks uses its programs and maps. A
    /// persistent datapath lets it go once its programs and maps are pinned (it works from
    /// the pins), so that routerd keeps no copy of the programs' instructions and line
    /// information per router (~0.5 MiB each).
    ebpf: Option<Ebpf>,
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
    /// A persistent datapath's programs, opened from their pins: loaded by this routerd,
    /// or by a previous one from this same object (then not verified again). No XDP
    /// program in TC mode.
    pinned_programs: Option<(Option<Xdp>, SchedClassifier)>,
    /// Whether the pinned programs are a previous routerd's.
    programs_adopted: bool,
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

/// The programs on one interface. A persistent datapath holds no link descriptors (the XDP
/// link's pin and the TC filter outlive it: 8 descriptors a router less), so its link ids
/// are `None`.
struct Attachment {
    name: String,
    xdp: bool,
    xdp_link: Option<XdpLinkId>,
    tc_link: Option<SchedClassifierLinkId>,
}

/// Maps only the XDP entry uses: in TC mode no program holds them.
const XDP_ONLY_MAPS: [&str; 1] = [map_names::EGRESS_DEVS];

/// What loading a program cost: the instructions the verifier went through (the kernel's
/// count) and the time the load took.
fn cost(
    what: &str,
    info: Option<aya::programs::ProgramInfo>,
    started: std::time::Instant,
) -> String {
    let ms = started.elapsed().as_millis();
    match info.and_then(|i| i.verified_instruction_count()) {
        Some(n) => format!("{what} {n} instructions in {ms} ms"),
        None => format!("{what} in {ms} ms"),
    }
}

/// Entries of `SNAT_SOURCES` (SNAT sessions per internal address) for a session table of
/// `session_entries`: no more addresses can hold sessions than there are sessions. Its
/// hash buckets are allocated whole even though entries are not (16 bytes each): at the
/// object's limit, 16,384, that was 256 KiB of every router.
fn snat_sources(session_entries: u32) -> u32 {
    (session_entries / 2).clamp(1, router_common::MAX_FLOATING_IPS)
}

/// Loaders of `load_pinned`, kept for the next router: `EbpfLoader::new` parses the
/// kernel's BTF (~5 % of a router's start), so a process does it once per concurrent load
/// instead of once per router. Each load sets the pin paths and sizes of the same maps, so
/// no router's settings carry over to the next.
static PINNED_LOADERS: std::sync::Mutex<Vec<EbpfLoader<'static>>> =
    std::sync::Mutex::new(Vec::new());

/// The kernel's BTF, parsed once and shared by the loaders (~13 MB parsed: one copy, not
/// one per loader).
fn kernel_btf() -> Option<&'static aya::Btf> {
    static KERNEL_BTF: std::sync::OnceLock<Option<aya::Btf>> = std::sync::OnceLock::new();
    KERNEL_BTF
        .get_or_init(|| aya::Btf::from_sys_fs().ok())
        .as_ref()
}

/// A loader for `load_pinned`: one of the pool's, or a new one.
fn pinned_loader() -> EbpfLoader<'static> {
    let reused = PINNED_LOADERS.lock().ok().and_then(|mut pool| pool.pop());
    reused.unwrap_or_else(|| {
        let mut loader = EbpfLoader::new();
        loader.btf(kernel_btf());
        features::configure(&mut loader);
        loader
    })
}

/// Pin names of the programs in a router's pin directory.
const PROGRAM_PINS: [&str; 2] = ["prog_xdp", "prog_tc"];

/// The names in directory `dir`; `None` if it cannot be listed (it is gone).
fn names_in(dir: &Path) -> Option<HashSet<OsString>> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect(),
    )
}

impl Datapath {
    /// Loads the object and both programs into the kernel (nothing is attached), with a
    /// session table of `session_entries` entries (two per session).
    pub fn load(router: &str, session_entries: u32) -> Result<Self, Error> {
        let mut loader = EbpfLoader::new();
        features::configure(&mut loader);
        let ebpf = loader
            .map_max_entries(map_names::SESSIONS, session_entries)
            .map_max_entries(map_names::SNAT_SOURCES, snat_sources(session_entries))
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
            ebpf: Some(ebpf),
            router: router.to_string(),
            pin_dir: None,
            persistent: false,
            adopted: false,
            writes: 0,
            links: BTreeMap::new(),
            pinned_programs: None,
            programs_adopted: false,
            xdp_loaded: false,
            sizes: TableSizes::default(),
            open_maps: BTreeMap::new(),
        }
    }

    /// Loads (and so verifies) the TC program of the object, and the XDP program `with_xdp`.
    fn load_programs(&mut self, with_xdp: bool) -> Result<(), Error> {
        let router = self.router.as_str();
        let ebpf = loaded(&mut self.ebpf, router)?;
        let program_error = |what: &str| {
            let what = what.to_string();
            let router = router.to_string();
            move |source| Error::Program {
                router,
                what,
                source: Box::new(source),
            }
        };
        let mut verified = Vec::new();
        if with_xdp {
            let xdp: &mut Xdp = program(ebpf, prog_names::XDP)?
                .try_into()
                .map_err(program_error("XDP program type"))?;
            let started = std::time::Instant::now();
            load_retrying_eagain(|| xdp.load())
                .map_err(program_error("loading the XDP program"))?;
            verified.push(cost("XDP", xdp.info().ok(), started));
        }
        let tc: &mut SchedClassifier = program(ebpf, prog_names::TC)?
            .try_into()
            .map_err(program_error("TC program type"))?;
        let started = std::time::Instant::now();
        load_retrying_eagain(|| tc.load()).map_err(program_error("loading the TC program"))?;
        verified.push(cost("TC", tc.info().ok(), started));
        tracing::info!(
            "router {router}: programs verified: {}",
            verified.join(", ")
        );
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
            program(loaded(&mut self.ebpf, &self.router)?, name)?
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
        let with_xdp = mode.runs_xdp();
        let dir = crate::paths::router_pin_dir(router);
        let recorded: Option<Owner> = std::fs::read(owner_file(router))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let adopt = dir.join(map_names::NAT_CONFIG).exists()
            && recorded.as_ref().is_some_and(|r| r.same_datapath(owner));
        // Adopted tables keep the ring they were made with (see `TableSizes::serves`).
        let mut owner = owner.clone();
        if let (true, Some(r)) = (adopt, &recorded) {
            owner.sizes.sync_bytes = r.sizes.sync_ring();
        }
        let sizes = TableSizes {
            sync_bytes: owner.sizes.sync_bytes,
            ..sizes
        };
        if !adopt && dir.exists() {
            tracing::info!("router {router}: removing pins of another owner ({recorded:?})");
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
        dp.programs_adopted = dp.pinned_programs.is_some();
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
                dp.pinned_programs =
                    Some(Self::programs_from_pins(&dir, with_xdp).ok_or_else(|| {
                        Error::Program {
                            router: router.to_string(),
                            what: format!("opening the programs just pinned in {}", dir.display()),
                            source: Box::new(aya::programs::ProgramError::NotLoaded),
                        }
                    })?);
            }
        }
        // Kept for now (setup writes them all); `release_maps` closes them. The rest
        // (per-CPU scratch, constants) only the programs use: they hold them.
        if let Some(mut ebpf) = dp.ebpf.take() {
            for name in map_names::ALL {
                if let Some(map) = ebpf.take_map(name) {
                    dp.open_maps.insert(name, map);
                }
            }
        }
        dp.pin_dir = Some(dir);
        dp.persistent = true;
        dp.adopted = adopt;
        if recorded.as_ref() != Some(&owner) {
            let text = serde_json::to_vec(&owner)
                .map_err(|e| Error::io("encoding the owner record", std::io::Error::other(e)))?;
            std::fs::create_dir_all(crate::paths::run_dir()).map_err(|e| {
                Error::io(format!("creating {}", crate::paths::run_dir().display()), e)
            })?;
            std::fs::write(owner_file(router), text)
                .map_err(|e| Error::io("writing the owner record", e))?;
        }
        Ok(dp)
    }

    /// Loads the object (not its programs) with every map pinned in `dir`: maps pinned
    /// there already are reused, the others are made (`sizes` for those sized by the
    /// configuration) and pinned.
    fn load_pinned(dir: &Path, sizes: TableSizes) -> Result<Ebpf, Error> {
        let sessions = dir.join(map_names::SESSIONS);
        if sizes.sessions_on_demand && !sessions.exists() {
            sessions::create_on_demand(&sessions, sizes.session_entries)?;
        }
        let mut loader = pinned_loader();
        loader.map_max_entries(map_names::SESSIONS, sizes.session_entries);
        loader.map_max_entries(map_names::SNAT_SOURCES, snat_sources(sizes.session_entries));
        for name in [
            map_names::FIP_BY_ADDRESS,
            map_names::FIP_BY_FIXED,
            map_names::FIP_STATS,
        ] {
            loader.map_max_entries(name, sizes.floating_ips);
        }
        loader.map_max_entries(map_names::SYNC, sizes.sync_ring());
        for name in map_names::ALL {
            loader.map_pin_path(name, dir.join(name));
        }
        let loaded = loader.load(object::without_line_info()).map_err(Box::new);
        if let Ok(mut pool) = PINNED_LOADERS.lock() {
            pool.push(loader);
        }
        Ok(loaded?)
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
            .as_ref()?
            .program(prog_names::XDP)
            .and_then(|p| p.try_into().ok())
    }

    pub fn tc(&self) -> &SchedClassifier {
        if let Some((_, tc)) = &self.pinned_programs {
            return tc;
        }
        let prog = self.ebpf.as_ref().and_then(|e| e.program(prog_names::TC));
        prog.and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| unreachable!("load() checked the TC program"))
    }

    /// Whether the programs were taken from a previous routerd's pins (not verified again).
    pub fn programs_adopted(&self) -> bool {
        self.programs_adopted
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
            _ => program(loaded(&mut self.ebpf, &self.router)?, prog_names::XDP)?
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
            None => program(loaded(&mut self.ebpf, &self.router)?, prog_names::TC)?
                .try_into()
                .map_err(|source| Error::Program {
                    router: self.router.clone(),
                    what: "TC program type".into(),
                    source: Box::new(source),
                }),
        }
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
        // Each directory is listed once, rather than each pin looked up by its path: every
        // router checks every second, and a node runs a thousand of them.
        let links = links_dir(&self.router);
        let link_pins = match names_in(&links) {
            Some(names) => names,
            None => {
                std::fs::create_dir_all(&links)
                    .map_err(|e| Error::io(format!("creating {}", links.display()), e))?;
                HashSet::new()
            }
        };
        let pins = names_in(&dir).unwrap_or_default();
        let mut unheld = Vec::new();
        for name in map_names::ALL {
            let path = dir.join(name);
            if pins.contains(OsStr::new(name)) {
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
            if pins.contains(OsStr::new(pin)) || (i == 0 && !self.xdp_loaded) {
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
        // An XDP link pin removed by hand took the link with it (routerd holds no
        // descriptor): the interface is attached again. Until then the TC entry forwards.
        let attached: Vec<(u32, String)> = self
            .links
            .iter()
            .filter(|(_, a)| a.xdp)
            .map(|(i, a)| (*i, a.name.clone()))
            .collect();
        for (index, name) in attached {
            if !link_pins.contains(OsStr::new(&format!("{index}_xdp"))) {
                self.attach_xdp(&name, index)?;
                repaired.push(format!("{index}_xdp"));
            }
        }
        Ok(repaired)
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
            features::configure(&mut loader);
            loader.map_max_entries(map_names::SESSIONS, session_entries);
            loader.map_max_entries(map_names::SNAT_SOURCES, snat_sources(session_entries));
            for (name, path) in &paths {
                loader.map_pin_path(name, path.as_path());
            }
            let ebpf = loader.load(EBPF_OBJECT).map_err(Box::new)?;
            let mut dp = Self::with_programs(ebpf, router)?;
            let private = map_names::ALL
                .iter()
                .filter(|name| !shared.contains(name))
                .filter_map(|name| {
                    let map = dp.ebpf.as_mut()?.take_map(name)?;
                    Some((*name, map))
                })
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

impl MapSource for Datapath {
    /// A persistent datapath opens its maps from their pins (see `open_maps`); a datapath
    /// of tests and benchmarks uses the loaded object's.
    fn map(&mut self, name: &'static str) -> Result<&mut Map, Error> {
        let invalid = || Error::map(name, MapError::InvalidName { name: name.into() });
        let (Some(dir), true) = (&self.pin_dir, self.persistent) else {
            return self
                .ebpf
                .as_mut()
                .and_then(|e| e.map_mut(name))
                .ok_or_else(invalid);
        };
        if !self.open_maps.contains_key(name) {
            let path = dir.join(name);
            // A pin removed by hand (until `repair_pins` puts it back) still has its map
            // held by the loaded programs: reached through them instead.
            let map = match MapData::from_pin(&path).and_then(Map::from_map_data) {
                Ok(map) => map,
                Err(e) => self
                    .map_of_programs(name)
                    .map_err(|_| Error::map(format!("opening {}", path.display()), e))?,
            };
            self.open_maps.insert(name, map);
        }
        self.open_maps.get_mut(name).ok_or_else(invalid)
    }

    fn take(&mut self, name: &'static str) -> Result<Map, Error> {
        let invalid = || Error::map(name, MapError::InvalidName { name: name.into() });
        if !self.persistent {
            return self
                .ebpf
                .as_mut()
                .and_then(|e| e.take_map(name))
                .ok_or_else(invalid);
        }
        self.map(name)?;
        self.open_maps.remove(name).ok_or_else(invalid)
    }

    fn count_writes(&mut self, n: usize) {
        self.writes += n;
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

/// The loaded object of a datapath that still holds it (all but a persistent one once open).
fn loaded<'a>(ebpf: &'a mut Option<Ebpf>, router: &str) -> Result<&'a mut Ebpf, Error> {
    ebpf.as_mut().ok_or_else(|| Error::Program {
        router: router.to_string(),
        what: "the loaded object (its programs are pinned)".into(),
        source: Box::new(aya::programs::ProgramError::NotLoaded),
    })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program, Error> {
    ebpf.program_mut(name).ok_or_else(|| {
        Error::io(
            format!("the eBPF object has no program {name}"),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

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
                tracing::info!(
                    "loading a program: interrupted by a signal (EAGAIN), loading again"
                );
            }
            other => return other,
        }
    }
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
