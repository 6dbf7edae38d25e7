//! The commands topologies are built with (iproute2; only used to build: results are read
//! from the kernel, never by matching their output), unique names, and the two-VM router
//! most topology tests share ([`RouterTopology`], built with [`crate::topology`]).

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    desired::RouterText,
    topology::{Builder, Host, Topology},
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

/// Runs `ip [-n NS] -batch -` with `lines` (one process for many commands), and panics
/// with its stderr if any fails.
pub fn ip_batch(ns: Option<&str>, lines: &str) {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running ip -batch: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("writing the batch");
    let out = child.wait_with_output().expect("ip -batch");
    assert!(
        out.status.success(),
        "ip -batch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Named network namespaces (`ip netns add`), deleted on drop whatever happened (the
/// links in them with them).
#[derive(Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates namespace `name` with its loopback up.
    pub fn add(&mut self, name: &str) -> String {
        ip(&["netns", "add", name]);
        self.names.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
        name.to_string()
    }

    /// Creates every namespace of `names` with one `ip -batch` (hundreds take a fraction
    /// of a second), loopbacks left down.
    pub fn add_all(&mut self, names: &[String]) {
        // Recorded first: a failure halfway still removes what exists.
        self.names.extend(names.iter().cloned());
        let batch: String = names.iter().map(|ns| format!("netns add {ns}\n")).collect();
        ip_batch(None, &batch);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // One process for all of them; -force goes on past a namespace that is not there.
        let batch: String = self
            .names
            .drain(..)
            .rev()
            .map(|ns| format!("netns del {ns}\n"))
            .collect();
        let _ = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(batch.as_bytes());
                }
                child.wait()
            });
    }
}

/// A router with a gateway port to an external host and two internal ports, one VM on each
/// internal subnet. The VMs' interfaces are left as a VM's would be: no XDP program,
/// default offloads.
///
/// ```text
///  ext 198.18.0.1 ── qg-ext (198.18.0.2)
///                     router (route 10.20.0.0/16 via 10.0.1.254)
///  vm-a 10.0.1.5 ──── qr-a 10.0.1.1
///  vm-b 10.0.2.5 ──── qr-b 10.0.2.1
/// ```
/// The external host routes 10.0.0.0/8 through the router.
pub struct RouterTopology {
    pub router_id: String,
    pub router_ns: String,
    pub ext_ns: String,
    pub vm_a_ns: String,
    pub vm_b_ns: String,
    pub qg: String,
    pub config: PathBuf,
    /// Owns the namespaces and the desired-state file.
    pub topology: Topology,
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
        let qg = "qg-ext";
        let mut builder = Builder::new("t")
            .external(
                qg,
                "198.18.0.2/24",
                "198.18.0.1",
                [Host::new("ext", "198.18.0.1/24")],
            )
            .internal(
                "qr-a",
                "10.0.1.1/24",
                [Host::new("vma", "10.0.1.5/24").via("10.0.1.1")],
            )
            .internal(
                "qr-b",
                "10.0.2.1/24",
                [Host::new("vmb", "10.0.2.5/24").via("10.0.2.1")],
            )
            .route("ext", "10.0.0.0/8 via 198.18.0.2");
        if xdp_egress {
            builder = builder.xdp_egress();
        }
        let topology = builder.build();
        let text = RouterText {
            extra: "[[router.route]]\ndestination = \"10.20.0.0/16\"\nnexthop = \"10.0.1.254\"\n"
                .into(),
            ..topology.router_text(mode)
        };
        topology.write_config(&text.render());
        Self {
            router_id: topology.tag.clone(),
            router_ns: topology.router_ns.clone(),
            ext_ns: topology.ns("ext").to_string(),
            vm_a_ns: topology.ns("vma").to_string(),
            vm_b_ns: topology.ns("vmb").to_string(),
            qg: qg.to_string(),
            config: topology.config.clone(),
            topology,
        }
    }
}
