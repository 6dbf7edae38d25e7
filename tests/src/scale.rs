//! Many routers on one node, as a Neutron network node hosts them: N router namespaces,
//! each with a gateway port and three internal ports, every router with the same (tenant)
//! subnets and a floating IP of its own, all served by one routerd.
//!
//! Built with `ip -batch` (thousands of `ip` processes would take minutes). The ports'
//! peers wait in one fabric namespace, except the sampled routers', whose first internal
//! port leads to a VM and whose gateway leads to an external host, for real traffic.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    desired::RouterText,
    routerd::Routerd,
    topo::{Namespaces, ip_batch, unique},
};

/// The external network's gateway: the external host of every sampled router.
pub const EXT_HOST: [u8; 4] = [172, 16, 0, 1];
/// The VM behind every sampled router's first internal port.
pub const VM: [u8; 4] = [10, 0, 1, 10];
/// Internal ports of every router (the gateway is `qg`).
pub const INTERNAL: [&str; 3] = ["qr-a", "qr-b", "qr-c"];

/// A router whose ports lead to hosts of its own.
pub struct Sample {
    pub router: usize,
    pub vm_ns: String,
    pub ext_ns: String,
}

pub struct ScaleTopology {
    pub prefix: String,
    /// Routers built (namespaces and ports); the desired state may hold fewer.
    pub count: usize,
    pub mode: String,
    pub max_sessions: u32,
    /// `nat.preallocate_sessions` of every router (true unless set otherwise before the
    /// desired state is written).
    pub preallocate_sessions: bool,
    /// `nat.max_floating_ips` of every router (the router's default unless set otherwise
    /// before the desired state is written).
    pub max_floating_ips: u32,
    pub samples: Vec<Sample>,
    pub config: PathBuf,
    /// The fabric namespace and the port ends in it.
    fabric: String,
    fabric_ports: Vec<String>,
    /// Declared last: namespaces go after everything that lives in them.
    namespaces: Namespaces,
}

impl ScaleTopology {
    /// Builds `count` routers (`sampled` indexes get hosts) and writes a desired state with
    /// all of them.
    pub fn build(count: usize, mode: &str, max_sessions: u32, sampled: &[usize]) -> Self {
        crate::require_root();
        let prefix = unique("sc");
        let fabric = format!("{prefix}f");
        let mut me = Self {
            config: std::env::temp_dir().join(format!("{prefix}.toml")),
            prefix,
            count,
            mode: mode.to_string(),
            max_sessions,
            preallocate_sessions: true,
            max_floating_ips: router_user::config::NatSettings::default().max_floating_ips,
            samples: Vec::new(),
            fabric: fabric.clone(),
            fabric_ports: Vec::new(),
            namespaces: Namespaces::default(),
        };
        let mut names = vec![fabric.clone()];
        names.extend((0..count).map(|i| me.router_ns(i)));
        for &i in sampled.iter().filter(|&&i| i < count) {
            let sample = Sample {
                router: i,
                vm_ns: format!("{}v{i}", me.prefix),
                ext_ns: format!("{}x{i}", me.prefix),
            };
            names.push(sample.vm_ns.clone());
            names.push(sample.ext_ns.clone());
            me.samples.push(sample);
        }
        me.namespaces.add_all(&names);
        // The fabric stands for the switch the ports plug into, which has no IPv6 stack. With
        // IPv6 on, its thousands of port ends each run address autoconfiguration as they come
        // up, and each of their multicast packets is routed in one namespace of thousands of
        // devices (a walk over one route per device): kernel work that holds the RTNL lock the
        // routers' starts wait for, and that a real switch does not do.
        crate::probe::sysctl(
            &fabric,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
        let mut batch = String::new();
        let mut fabric_up = String::new();
        for i in 0..count {
            let router_ns = me.router_ns(i);
            let sample = me.samples.iter().find(|s| s.router == i);
            for (n, port) in ["qg"].iter().chain(INTERNAL.iter()).enumerate() {
                let peer_ns = match (sample, n) {
                    (Some(s), 0) => &s.ext_ns,
                    (Some(s), 1) => &s.vm_ns,
                    _ => &fabric,
                };
                let peer = format!("p{i}x{n}");
                let _ = writeln!(
                    batch,
                    "link add {port} netns {router_ns} type veth peer name {peer} netns {peer_ns}"
                );
                if peer_ns == &fabric {
                    let _ = writeln!(fabric_up, "link set {peer} up");
                    me.fabric_ports.push(peer);
                }
            }
        }
        ip_batch(None, &batch);
        ip_batch(Some(&fabric), &fabric_up);
        for s in &me.samples {
            let i = s.router;
            ip_batch(
                Some(&s.vm_ns),
                &format!(
                    "link set lo up\nlink set p{i}x1 up\naddress add {}/24 dev p{i}x1\n\
                     route add default via 10.0.1.1\n",
                    Ipv4Addr::from(VM)
                ),
            );
            ip_batch(
                Some(&s.ext_ns),
                &format!(
                    "link set lo up\nlink set p{i}x0 up\naddress add {}/16 dev p{i}x0\n",
                    Ipv4Addr::from(EXT_HOST)
                ),
            );
        }
        me.write_config(0..count);
        me
    }

    /// Sends one frame into every router port from its end in the fabric: a broadcast of the
    /// local experimental EtherType (0x88b5), which the routers pass to their namespace's
    /// kernel, which drops it. What a port takes once it carries traffic (in XDP mode, the
    /// veth's page pool) is then taken. Returns the frames sent.
    pub fn frame_into_every_port(&self) -> usize {
        let ports = self.fabric_ports.clone();
        crate::traffic::join(crate::traffic::in_ns(&self.fabric, move || {
            let mut frame = vec![0xff; 6];
            frame.extend([0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
            frame.resize(60, 0);
            ports
                .iter()
                .filter(|port| {
                    let index = crate::topo::ifindex(port);
                    crate::packet_socket::PacketSocket::bind(index)
                        .and_then(|socket| socket.send(&mut [frame.clone()]))
                        .is_ok_and(|sent| sent == 1)
                })
                .count()
        }))
    }

    pub fn router_id(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    pub fn router_ns(&self, i: usize) -> String {
        format!("{}r{i}", self.prefix)
    }

    /// Router `i`'s gateway address (all routers share the external network 172.16.0.0/16).
    pub fn gateway_address(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(172, 16, 1 + (i / 250) as u8, 2 + (i % 250) as u8)
    }

    /// Router `i`'s floating IP, for the VM at [`VM`].
    pub fn floating_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(172, 16, 100 + (i / 250) as u8, 2 + (i % 250) as u8)
    }

    fn router_text(&self, i: usize) -> RouterText {
        RouterText {
            id: self.router_id(i),
            namespace: self.router_ns(i),
            mode: self.mode.clone(),
            gateway: Some((
                "qg".into(),
                format!("{}/16", Self::gateway_address(i)),
                Ipv4Addr::from(EXT_HOST).to_string(),
                None,
            )),
            interfaces: INTERNAL
                .iter()
                .enumerate()
                .map(|(n, name)| (name.to_string(), format!("10.0.{}.1/24", n + 1), None))
                .collect(),
            floating_ips: vec![(Self::floating_ip(i), Ipv4Addr::from(VM))],
            extra: format!(
                "[router.nat]\nmax_sessions = {}\npreallocate_sessions = {}\n\
                 max_floating_ips = {}\n",
                self.max_sessions, self.preallocate_sessions, self.max_floating_ips
            ),
        }
    }

    /// Writes the desired state with routers `routers` (routerd reads it at start and on
    /// SIGHUP).
    pub fn write_config(&self, routers: impl IntoIterator<Item = usize>) {
        let text: String = routers
            .into_iter()
            .map(|i| self.router_text(i).render() + "\n")
            .collect();
        std::fs::write(&self.config, text).expect("writing the desired state");
    }

    /// Starts routerd on the desired state and waits (up to `timeout`) until it has started
    /// every router in it; returns it and the start time routerd reports, in ms.
    pub fn start_routerd(&self, timeout: Duration, args: &[&str]) -> (Routerd, u64) {
        let mut routerd =
            Routerd::start_waiting_with_args(&self.config, &self.router_id(0), timeout, args);
        let ms = wait_started(&mut routerd, timeout);
        (routerd, ms)
    }
}

/// Waits for routerd's "N router(s) started in M ms" and returns M.
pub fn wait_started(routerd: &mut Routerd, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let log = routerd.log_text();
        if let Some(ms) = log.lines().rev().find_map(|l| {
            let rest = l.split(" router(s) started in ").nth(1)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        }) {
            return ms;
        }
        assert!(
            !routerd.exited(),
            "routerd exited while starting its routers:\n{}",
            tail(&log, 40)
        );
        assert!(
            Instant::now() < deadline,
            "routerd did not start its routers in {timeout:?}:\n{}",
            tail(&log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Memory the kernel accounts to the BPF objects pinned for some routers.
#[derive(Debug, Default)]
pub struct PinnedMemory {
    /// The `memlock` of every map and program, as its fdinfo gives it, in bytes.
    pub bytes: u64,
    pub maps: usize,
    pub programs: usize,
    /// `bytes` by pin name (a map's or a program's name), largest first.
    pub by_name: Vec<(String, u64)>,
}

/// Memory the kernel accounts to the BPF maps and programs pinned for `routers`.
/// routerd keeps no map descriptors between events, so its own descriptors would miss them.
pub fn pinned_bpf_memory(routers: &[String]) -> PinnedMemory {
    let mut total = PinnedMemory::default();
    let mut by_name = std::collections::BTreeMap::<String, u64>::new();
    for router in routers {
        let dir = router_user::paths::router_pin_dir(router);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let Some(info) = pin_fdinfo(&entry.path()) else {
                continue;
            };
            if info.contains_key("map_type") {
                total.maps += 1;
            } else if info.contains_key("prog_type") {
                total.programs += 1;
            }
            let bytes = info.get("memlock").copied().unwrap_or(0);
            total.bytes += bytes;
            *by_name
                .entry(entry.file_name().to_string_lossy().into_owned())
                .or_default() += bytes;
        }
    }
    total.by_name = by_name.into_iter().collect();
    total
        .by_name
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    total
}

/// The numeric fields of the fdinfo of the BPF object pinned at `path` (`map_type`,
/// `max_entries`, `map_flags`, `memlock`, ...), if it can be opened.
pub fn pin_fdinfo(path: &Path) -> Option<std::collections::BTreeMap<String, u64>> {
    let fd = crate::pins::obj_get(path)?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    Some(
        info.lines()
            .filter_map(|l| {
                let (key, value) = l.split_once(':')?;
                let value = value.trim();
                let number = match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                    None => value.parse().ok()?,
                };
                Some((key.trim().to_string(), number))
            })
            .collect(),
    )
}

/// A line of /proc/meminfo, in bytes.
pub fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .unwrap_or(0)
        * 1024
}

/// Resident memory of process `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

impl Drop for ScaleTopology {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}
