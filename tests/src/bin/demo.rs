//! `cargo xtask demo`: seed 003's router (an external network, one internal subnet with one
//! VM) in namespaces, routerd attached, real traffic through it, and the counters table.
//!
//! Usage: demo <dir holding routerd and routerctl>

use std::{path::PathBuf, process::Command, time::Duration};

use router_tests::{
    routerd::Routerd,
    topo::{Namespaces, ip, unique},
    traffic,
};

const EXT_GW: [u8; 4] = [192, 168, 101, 1];
const VM: [u8; 4] = [172, 17, 17, 3];

fn main() {
    let bin_dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/release".into()),
    );
    // SAFETY: set before any thread starts.
    unsafe { std::env::set_var("ROUTERD_BIN", bin_dir.join("routerd")) };

    let tag = unique("demo");
    let mut ns = Namespaces::default();
    let router_ns = ns.add(&format!("qrouter-{tag}"));
    let ext_ns = ns.add(&format!("ext-{tag}"));
    let vm_ns = ns.add(&format!("vm1-{tag}"));
    println!("== seed 003: router1 in {router_ns}");
    println!(
        "   ext-net 192.168.101.0/24: gateway host 192.168.101.1 ({ext_ns}), router qg 192.168.101.2"
    );
    println!("   sub1 172.17.17.0/24: router qr 172.17.17.1, VM 172.17.17.3 ({vm_ns})");
    for (port, host_ns) in [("qg-1423ba35-7c", &ext_ns), ("qr-9f1fa61e-1e", &vm_ns)] {
        ip(&[
            "link", "add", port, "netns", &router_ns, "type", "veth", "peer", "name", "eth0",
            "netns", host_ns,
        ]);
        ip(&["-n", host_ns, "link", "set", "eth0", "up"]);
    }
    ip(&[
        "-n",
        &ext_ns,
        "addr",
        "add",
        "192.168.101.1/24",
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &ext_ns,
        "route",
        "add",
        "172.17.17.0/24",
        "via",
        "192.168.101.2",
    ]);
    ip(&["-n", &vm_ns, "addr", "add", "172.17.17.3/24", "dev", "eth0"]);
    ip(&[
        "-n",
        &vm_ns,
        "route",
        "add",
        "default",
        "via",
        "172.17.17.1",
    ]);

    let router_id = format!("router1-{tag}");
    let config = std::env::temp_dir().join(format!("{tag}.toml"));
    let text = format!(
        r#"[[router]]
id = "{router_id}"
namespace = "{router_ns}"
mode = "xdp"

[router.gateway]
interface = "qg-1423ba35-7c"
address = "192.168.101.2/24"
nexthop = "192.168.101.1"
snat = true

[[router.interface]]
name = "qr-9f1fa61e-1e"
address = "172.17.17.1/24"
"#
    );
    std::fs::write(&config, &text).expect("writing the demo config");
    println!("\n== desired state ({})\n{text}", config.display());

    let mut routerd = Routerd::start(&config, &router_id);
    println!("== routerd attached (XDP mode; TC forwards into veths whose far end has no XDP)");

    let ping_out = traffic::ping(&vm_ns, EXT_GW, 5);
    let ping_in = traffic::ping(&ext_ns, VM, 5);
    println!(
        "   ping VM -> external gateway: {}",
        if ping_out { "ok" } else { "FAILED" }
    );
    println!(
        "   ping external gateway -> VM: {}",
        if ping_in { "ok" } else { "FAILED" }
    );
    let bytes = traffic::tcp_transfer(&vm_ns, &ext_ns, EXT_GW, 5201, 20 * 1024 * 1024);
    println!(
        "   TCP VM -> external gateway: {} MiB sent and verified",
        bytes / (1024 * 1024)
    );
    let hop1 = traffic::udp_probe(&vm_ns, EXT_GW, 1);
    println!("   traceroute hop 1: {:?}", hop1.as_ref().map(|e| e.from));

    println!("\n== routerctl stats");
    let status = Command::new(bin_dir.join("routerctl"))
        .arg("stats")
        .status();
    let ok = ping_out && ping_in && hop1.is_some() && status.is_ok_and(|s| s.success());

    let clean = routerd.stop();
    println!(
        "\n== routerd stopped with SIGTERM: {}",
        if clean { "detached cleanly" } else { "FAILED" }
    );
    let _ = std::fs::remove_file(&config);
    drop(ns);
    std::thread::sleep(Duration::from_millis(10));
    if !(ok && clean) {
        eprintln!(
            "demo: something failed; routerd log:\n{}",
            routerd.log_text()
        );
        std::process::exit(1);
    }
}
