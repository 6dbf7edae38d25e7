//! `cargo xtask demo`: the reference router (an external network, one internal subnet with one
//! VM) in namespaces, routerd attached, real traffic through it, and the counters table.
//!
//! Usage: demo <dir holding routerd and routerctl>

use std::{path::PathBuf, process::Command, time::Duration};

use router_tests::{
    routerd::Routerd,
    topo::{Namespaces, ip, unique, veth},
    traffic,
};

const EXT_GW: [u8; 4] = [192, 168, 101, 1];
const FIP: [u8; 4] = [192, 168, 101, 10];

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
    let vm2_ns = ns.add(&format!("vm2-{tag}"));
    println!("== reference router: router1 in {router_ns}");
    println!(
        "   ext-net 192.168.101.0/24: gateway host 192.168.101.1 ({ext_ns}), router qg 192.168.101.2"
    );
    println!("   sub1 172.17.17.0/24: router qr 172.17.17.1, VM 172.17.17.3 ({vm_ns}) with");
    println!(
        "   floating IP 192.168.101.10; sub2 172.17.18.0/24: VM 172.17.18.3 ({vm2_ns}), default SNAT"
    );
    for (port, host_ns) in [
        ("qg-1423ba35-7c", &ext_ns),
        ("qr-9f1fa61e-1e", &vm_ns),
        ("qr-5d2c0b7a-2a", &vm2_ns),
    ] {
        veth(port, &router_ns, "eth0", host_ns);
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
    ip(&["-n", &vm_ns, "addr", "add", "172.17.17.3/24", "dev", "eth0"]);
    ip(&[
        "-n",
        &vm2_ns,
        "addr",
        "add",
        "172.17.18.3/24",
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &vm2_ns,
        "route",
        "add",
        "default",
        "via",
        "172.17.18.1",
    ]);
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
    let text = router_tests::desired::RouterText {
        id: router_id.clone(),
        namespace: router_ns.clone(),
        mode: "xdp".into(),
        gateway: Some((
            "qg-1423ba35-7c".into(),
            "192.168.101.2/24".into(),
            "192.168.101.1".into(),
            None,
        )),
        interfaces: vec![
            ("qr-9f1fa61e-1e".into(), "172.17.17.1/24".into(), None),
            ("qr-5d2c0b7a-2a".into(), "172.17.18.1/24".into(), None),
        ],
        floating_ips: vec![(
            std::net::Ipv4Addr::from(FIP),
            std::net::Ipv4Addr::new(172, 17, 17, 3),
        )],
        extra: String::new(),
    }
    .render();
    std::fs::write(&config, &text).expect("writing the demo config");
    println!("\n== desired state ({})\n{text}", config.display());

    let mut routerd = Routerd::start(&config, &router_id);
    println!("== routerd attached (XDP mode; TC forwards into veths whose far end has no XDP)");

    let ping_out = traffic::ping(&vm_ns, EXT_GW, 5);
    let ping_in = traffic::ping(&ext_ns, FIP, 5);
    let ping_snat = traffic::ping(&vm2_ns, EXT_GW, 5);
    let say = |ok: bool| if ok { "ok" } else { "FAILED" };
    println!(
        "   ping VM1 -> external gateway (as its floating IP): {}",
        say(ping_out)
    );
    println!(
        "   ping external gateway -> floating IP of VM1: {}",
        say(ping_in)
    );
    println!(
        "   ping VM2 -> external gateway (default SNAT): {}",
        say(ping_snat)
    );
    let snat_bytes = traffic::tcp_transfer(&vm2_ns, &ext_ns, EXT_GW, 5202, 5 * 1024 * 1024);
    println!(
        "   TCP VM2 -> external gateway through SNAT: {} MiB sent and verified",
        snat_bytes / (1024 * 1024)
    );
    let bytes = traffic::tcp_transfer(&vm_ns, &ext_ns, EXT_GW, 5201, 20 * 1024 * 1024);
    println!(
        "   TCP VM1 -> external gateway (as its floating IP): {} MiB sent and verified",
        bytes / (1024 * 1024)
    );
    let hop1 = traffic::udp_probe(&vm_ns, EXT_GW, 1);
    println!("   traceroute hop 1: {:?}", hop1.as_ref().map(|e| e.from));

    let mut ok = ping_out && ping_in && ping_snat && hop1.is_some();
    for args in [&["stats"][..], &["nat", "list"], &["ct", "list"]] {
        println!("\n== routerctl {}", args.join(" "));
        let status = Command::new(bin_dir.join("routerctl")).args(args).status();
        ok &= status.is_ok_and(|s| s.success());
    }

    let clean = routerd.stop();
    println!(
        "\n== routerd stopped with SIGTERM: {} (the fast path keeps running until torn down)",
        if clean { "exited cleanly" } else { "FAILED" }
    );
    routerd.teardown();
    println!("== routerd --teardown: the demo router's fast path removed");
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
