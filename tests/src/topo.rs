//! Building topologies of network namespaces and veth pairs with iproute2. Commands are
//! only used to build; results are read from the kernel, never by matching their output.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Runs `ip ARGS` and panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// A veth pair: `a` in namespace `a_ns`, its peer `b` in `b_ns`.
pub fn veth(a: &str, a_ns: &str, b: &str, b_ns: &str) {
    ip(&[
        "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
    ]);
}

/// Runs a command and panics with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The MAC address of `ifname` in namespace `ns` (`ip netns`), or in the calling thread's
/// when `None`; the error says what `ip` said.
pub fn try_mac_of(ns: Option<&str>, ifname: &str) -> Result<[u8; 6], String> {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["-j", "link", "show", "dev", ifname]);
    let out = Command::new("ip")
        .args(&args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("ip -j output: {e}"))?;
    let text = json[0]["address"]
        .as_str()
        .ok_or_else(|| format!("no MAC address for {ifname}"))?;
    router_user::trace::parse_mac(text)
}

/// ifindex of `name` in the current thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "interface {name} does not exist");
    index
}

/// A name no other test run uses at the same time: `<prefix><pid>n<counter>`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}n{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Named network namespaces (`ip netns add`), deleted on drop whatever happened.
#[derive(Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    pub fn add(&mut self, name: &str) -> String {
        ip(&["netns", "add", name]);
        self.names.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
        name.to_string()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// The router of the example: an external host on the gateway subnet, a router
/// namespace with `qg` and two `qr` ports, and one VM on each internal subnet. The VMs'
/// interfaces are left as a VM's would be: no XDP program, default offloads.
pub struct RouterTopology {
    pub router_id: String,
    pub router_ns: String,
    pub ext_ns: String,
    pub vm_a_ns: String,
    pub vm_b_ns: String,
    pub qg: String,
    pub config: PathBuf,
    /// Declared last: namespaces go after everything that lives in them.
    pub namespaces: Namespaces,
}

pub const EXT_HOST: [u8; 4] = [198, 18, 0, 1];
pub const GATEWAY_IP: [u8; 4] = [198, 18, 0, 2];
pub const VM_A: [u8; 4] = [10, 0, 1, 5];
pub const VM_B: [u8; 4] = [10, 0, 2, 5];
pub const QR_A_IP: [u8; 4] = [10, 0, 1, 1];

impl RouterTopology {
    /// Builds the namespaces and links, and writes the desired-state file for `mode`.
    pub fn build(mode: &str) -> Self {
        Self::build_with(mode, false)
    }

    /// As `build`; with `xdp_egress` the hosts' ends run GRO (so XDP frames redirected into
    /// the router's veths are delivered) and the configuration declares it.
    pub fn build_with(mode: &str, xdp_egress: bool) -> Self {
        crate::require_root();
        let mut namespaces = Namespaces::default();
        let tag = unique("t");
        let router_ns = namespaces.add(&format!("qrouter-{tag}"));
        let ext_ns = namespaces.add(&format!("ext-{tag}"));
        let vm_a_ns = namespaces.add(&format!("vma-{tag}"));
        let vm_b_ns = namespaces.add(&format!("vmb-{tag}"));
        let qg = "qg-ext".to_string();

        for (port, host_ns) in [
            (qg.as_str(), &ext_ns),
            ("qr-a", &vm_a_ns),
            ("qr-b", &vm_b_ns),
        ] {
            veth(port, &router_ns, "eth0", host_ns);
            ip(&["-n", host_ns, "link", "set", "eth0", "up"]);
            if xdp_egress {
                run(
                    "ip",
                    &[
                        "netns", "exec", host_ns, "ethtool", "-K", "eth0", "gro", "on", "tx", "off",
                    ],
                );
            }
        }
        ip(&["-n", &ext_ns, "addr", "add", "198.18.0.1/24", "dev", "eth0"]);
        ip(&[
            "-n",
            &ext_ns,
            "route",
            "add",
            "10.0.0.0/8",
            "via",
            "198.18.0.2",
        ]);
        ip(&["-n", &vm_a_ns, "addr", "add", "10.0.1.5/24", "dev", "eth0"]);
        ip(&["-n", &vm_a_ns, "route", "add", "default", "via", "10.0.1.1"]);
        ip(&["-n", &vm_b_ns, "addr", "add", "10.0.2.5/24", "dev", "eth0"]);
        ip(&["-n", &vm_b_ns, "route", "add", "default", "via", "10.0.2.1"]);

        let router_id = tag.clone();
        let config = std::env::temp_dir().join(format!("{tag}.toml"));
        let egress = xdp_egress.then_some(true);
        let text = crate::desired::RouterText {
            id: router_id.clone(),
            namespace: router_ns.clone(),
            mode: mode.into(),
            gateway: Some((
                qg.clone(),
                "198.18.0.2/24".into(),
                "198.18.0.1".into(),
                egress,
            )),
            interfaces: vec![
                ("qr-a".into(), "10.0.1.1/24".into(), egress),
                ("qr-b".into(), "10.0.2.1/24".into(), egress),
            ],
            floating_ips: vec![],
            extra: "[[router.route]]\ndestination = \"10.20.0.0/16\"\nnexthop = \"10.0.1.254\"\n"
                .into(),
        }
        .render();
        std::fs::write(&config, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        Self {
            router_id,
            router_ns,
            ext_ns,
            vm_a_ns,
            vm_b_ns,
            qg,
            config,
            namespaces,
        }
    }
}

impl Drop for RouterTopology {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}
