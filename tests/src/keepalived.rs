//! The baseline HA routers are measured against: Neutron's L3 HA, two kernel routers with
//! the L3 agent's iptables rules (`neutron.rs`, SNAT with `--random-fully` as the agent
//! writes it where iptables has it) and keepalived in each router namespace with the
//! agent's VRRP settings (`advert_int 2`, `nopreempt`, both `BACKUP` at priority 50, the
//! router's addresses and default route as excluded VIPs and virtual routes); optionally
//! conntrackd beside it (FTFW over the HA network, committed by keepalived's notify script
//! on becoming master), the way operators add connection-tracking sync.
//!
//! Same switch, hosts and addresses as `ha.rs`'s pair, plus an HA network: a veth between
//! the two router namespaces (169.254.192.1 and .2/18, as Neutron's HA network).

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    ha::Site,
    neutron::{NeutronFloatingIp, iptables_rules, set_ip_forward},
    probe,
    topo::{Namespaces, ip_batch, run, unique},
};

/// Whether keepalived (and conntrackd, for the second variant) can run here.
pub fn available(conntrackd: bool) -> bool {
    let has = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    has("keepalived") && (!conntrackd || has("conntrackd"))
}

/// Two Neutron HA router namespaces and their hosts.
pub struct KeepalivedPair {
    daemons: Vec<Child>,
    dir: PathBuf,
    sw: String,
    pub vm1: String,
    pub vm2: String,
    pub ext: String,
    pub router_ns: [String; 2],
    _ns: Namespaces,
}

impl Drop for KeepalivedPair {
    fn drop(&mut self) {
        // keepalived's VRRP process is a child of the one started: every process in the
        // namespaces goes.
        for r in &self.router_ns {
            kill_all_in(r);
        }
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `kill -9` to every process in namespace `ns`.
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: signalling a process of our own test namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

const HA_ADDR: [&str; 2] = ["169.254.192.1", "169.254.192.2"];

impl KeepalivedPair {
    /// Builds the pair and starts keepalived (and conntrackd) in both router namespaces;
    /// returns once one of them holds the router's addresses.
    pub fn start(conntrackd: bool) -> Self {
        crate::require_root();
        let tag = unique("ka");
        // Under /run, not /tmp: keepalived refuses notify scripts on a path a user other
        // than root may write to.
        let dir = PathBuf::from("/run").join(format!("keepalived-{tag}"));
        std::fs::create_dir_all(&dir).expect("keepalived's directory");
        let mut ns = Namespaces::default();
        let router_ns = [format!("a-qr-{tag}"), format!("b-qr-{tag}")];
        for n in &router_ns {
            ns.add(n);
            probe::sysctl(
                n,
                &[
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            );
        }
        // The HA network through the switch, as on real nodes: a node's link going down
        // takes no carrier from the other.
        let sw = format!("sw-{tag}");
        let ha_links = format!(
            "link add ha0 netns {} type veth peer name aha netns {sw}\n\
             link add ha0 netns {} type veth peer name bha netns {sw}\n",
            router_ns[0], router_ns[1]
        );
        let Site { sw, vm1, vm2, ext } = Site::build(
            &mut ns,
            &tag,
            &router_ns,
            &ha_links,
            "link add br-ha type bridge stp_state 0\nlink set aha master br-ha\n\
             link set bha master br-ha\nlink set br-ha up\nlink set aha up\nlink set bha up\n",
        );
        let fips = [NeutronFloatingIp {
            floating: crate::ha::FIP,
            fixed: "10.0.1.6".parse().expect("an address"),
        }];
        let gateway = "198.18.0.2".parse().expect("an address");
        // SNAT as the agent writes it where iptables has --random-fully.
        let rules = iptables_rules("qg0", gateway, &fips, "qr").replace(
            "-o qg0 -j SNAT --to-source 198.18.0.2\n",
            "-o qg0 -j SNAT --to-source 198.18.0.2 --random-fully\n",
        );
        let mut pair = Self {
            daemons: Vec::new(),
            dir,
            sw: sw.clone(),
            vm1,
            vm2,
            ext,
            router_ns: router_ns.clone(),
            _ns: ns,
        };
        for (i, r) in router_ns.iter().enumerate() {
            ip_batch(
                Some(r),
                &format!(
                    "link set qr0 up\nlink set qg0 up\nlink set ha0 up\naddress add {}/18 dev ha0\n",
                    HA_ADDR[i]
                ),
            );
            set_ip_forward(r);
            let file = pair.dir.join(format!("rules-{i}"));
            std::fs::write(&file, &rules).expect("writing the rules");
            run(
                "sh",
                &[
                    "-c",
                    &format!("ip netns exec {r} iptables-restore < {}", file.display()),
                ],
            );
            if conntrackd {
                pair.start_conntrackd(i, r);
            }
            pair.start_keepalived(i, r, conntrackd);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while pair.master().is_none() {
            assert!(Instant::now() < deadline, "no keepalived became master");
            std::thread::sleep(Duration::from_millis(100));
        }
        pair
    }

    /// keepalived's log in namespace `i` (its console output).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("keepalived-{i}.log"))).unwrap_or_default()
    }

    /// The namespace index that holds the router's addresses now.
    pub fn master(&self) -> Option<usize> {
        (0..2).find(|&i| {
            Command::new("ip")
                .args(["-n", &self.router_ns[i], "-4", "addr", "show", "dev", "qg0"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("198.18.0.2/"))
        })
    }

    /// The node is lost: its switch ports go down first (so no farewell of keepalived's,
    /// a priority-0 advert, reaches the peer: a lost node says nothing), then every
    /// process in its namespace is killed with -9 and its own links go down.
    pub fn lose(&mut self, i: usize) {
        let n = ["a", "b"][i];
        ip_batch(
            Some(&self.sw),
            &format!("link set {n}ha down\nlink set {n}qr down\nlink set {n}qg down\n"),
        );
        let r = &self.router_ns[i];
        kill_all_in(r);
        ip_batch(
            Some(r),
            "link set qr0 down\nlink set qg0 down\nlink set ha0 down\n",
        );
    }

    fn start_keepalived(&mut self, i: usize, ns: &str, conntrackd: bool) {
        let dir = &self.dir;
        let notify = if conntrackd {
            let conf = dir.join(format!("conntrackd-{i}.conf"));
            let c = conf.display();
            let script = dir.join(format!("notify-{i}.sh"));
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\n\
                     case \"$3\" in\n\
                     MASTER) conntrackd -C {c} -c; conntrackd -C {c} -f; conntrackd -C {c} -R; conntrackd -C {c} -B ;;\n\
                     BACKUP|FAULT) conntrackd -C {c} -t; conntrackd -C {c} -n ;;\n\
                     esac\n"
                ),
            )
            .expect("the notify script");
            run("chmod", &["755", &script.display().to_string()]);
            format!("    notify \"{}\"\n", script.display())
        } else {
            String::new()
        };
        let mut conf = String::new();
        let _ = write!(
            conf,
            "global_defs {{\n    router_id neutron-{i}\n    script_user root\n    enable_script_security\n}}\n\
             vrrp_instance VR_1 {{\n    state BACKUP\n    interface ha0\n    virtual_router_id 1\n\
             \x20   priority 50\n    garp_master_delay 60\n    nopreempt\n    advert_int 2\n\
             \x20   track_interface {{\n        ha0\n    }}\n\
             \x20   virtual_ipaddress {{\n        169.254.0.1/24 dev ha0\n    }}\n\
             \x20   virtual_ipaddress_excluded {{\n        10.0.1.1/24 dev qr0\n        198.18.0.2/24 dev qg0\n\
             \x20       {}/32 dev qg0\n    }}\n\
             \x20   virtual_routes {{\n        0.0.0.0/0 via 198.18.0.1 dev qg0\n    }}\n{notify}}}\n",
            crate::ha::FIP
        );
        let file = dir.join(format!("keepalived-{i}.conf"));
        std::fs::write(&file, conf).expect("keepalived.conf");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "keepalived",
                "--dont-fork",
                "--vrrp",
                "--log-console",
            ])
            .arg("-f")
            .arg(&file)
            .arg("-p")
            .arg(dir.join(format!("keepalived-{i}.pid")))
            .arg("-r")
            .arg(dir.join(format!("vrrp-{i}.pid")))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join(format!("keepalived-{i}.log")))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("starting keepalived");
        self.daemons.push(child);
    }

    fn start_conntrackd(&mut self, i: usize, ns: &str) {
        let dir = &self.dir;
        let conf = dir.join(format!("conntrackd-{i}.conf"));
        let (me, peer) = (HA_ADDR[i], HA_ADDR[1 - i]);
        std::fs::write(
            &conf,
            format!(
                "Sync {{\n    Mode FTFW {{\n        DisableExternalCache Off\n    }}\n\
                 \x20   UDP {{\n        IPv4_address {me}\n        IPv4_Destination_Address {peer}\n\
                 \x20       Port 3780\n        Interface ha0\n        Checksum on\n    }}\n}}\n\
                 General {{\n    HashSize 32768\n    HashLimit 131072\n    Syslog off\n\
                 \x20   LogFile {log}\n    LockFile {lock}\n\
                 \x20   UNIX {{\n        Path {sock}\n        Backlog 20\n    }}\n\
                 \x20   NetlinkBufferSize 2097152\n    NetlinkBufferSizeMaxGrowth 8388608\n\
                 \x20   Filter From Userspace {{\n        Address Ignore {{\n            IPv4_address 127.0.0.1\n\
                 \x20           IPv4_address {me}\n            IPv4_address {peer}\n        }}\n    }}\n}}\n",
                log = dir.join(format!("conntrackd-{i}.log")).display(),
                lock = dir.join(format!("conntrackd-{i}.lock")).display(),
                sock = dir.join(format!("conntrackd-{i}.sock")).display(),
            ),
        )
        .expect("conntrackd.conf");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "conntrackd", "-C"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting conntrackd");
        self.daemons.push(child);
    }
}
