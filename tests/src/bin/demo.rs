//! `cargo xtask demo`: the reference router (an external network, one internal subnet with one
//! VM) in namespaces, routerd attached, real traffic through it, and the counters table.
//!
//! Usage: demo <dir holding routerd and routerctl>

use std::{net::Ipv4Addr, path::PathBuf, process::Command, time::Duration};

use router_tests::{
    desired::RouterText,
    routerd::Routerd,
    topology::{Builder, Host},
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

    let (qg, qr1, qr2) = ("qg-1423ba35-7c", "qr-9f1fa61e-1e", "qr-5d2c0b7a-2a");
    let topo = Builder::new("demo")
        .external(
            qg,
            "192.168.101.2/24",
            "192.168.101.1",
            [Host::new("ext", "192.168.101.1/24")],
        )
        .internal(
            qr1,
            "172.17.17.1/24",
            [Host::new("vm1", "172.17.17.3/24").via("172.17.17.1")],
        )
        .internal(
            qr2,
            "172.17.18.1/24",
            [Host::new("vm2", "172.17.18.3/24").via("172.17.18.1")],
        )
        .build();
    let (router_ns, ext_ns) = (&topo.router_ns, topo.ns("ext"));
    let (vm_ns, vm2_ns) = (topo.ns("vm1"), topo.ns("vm2"));
    println!("== reference router: router {} in {router_ns}", topo.tag);
    println!(
        "   ext-net 192.168.101.0/24: gateway host 192.168.101.1 ({ext_ns}), router qg 192.168.101.2"
    );
    println!("   sub1 172.17.17.0/24: router qr 172.17.17.1, VM 172.17.17.3 ({vm_ns}) with");
    println!(
        "   floating IP 192.168.101.10; sub2 172.17.18.0/24: VM 172.17.18.3 ({vm2_ns}), default SNAT"
    );

    let text = RouterText {
        floating_ips: vec![(Ipv4Addr::from(FIP), Ipv4Addr::new(172, 17, 17, 3))],
        ..topo.router_text("xdp")
    }
    .render();
    topo.write_config(&text);
    println!("\n== desired state ({})\n{text}", topo.config.display());

    let mut routerd = Routerd::start(&topo.config, &topo.tag);
    println!("== routerd attached (XDP mode; TC forwards into veths whose far end has no XDP)");

    let ping_out = traffic::ping(vm_ns, EXT_GW, 5);
    let ping_in = traffic::ping(ext_ns, FIP, 5);
    let ping_snat = traffic::ping(vm2_ns, EXT_GW, 5);
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
    let snat_bytes = traffic::tcp_transfer(vm2_ns, ext_ns, EXT_GW, 5202, 5 * 1024 * 1024);
    println!(
        "   TCP VM2 -> external gateway through SNAT: {} MiB sent and verified",
        snat_bytes / (1024 * 1024)
    );
    let bytes = traffic::tcp_transfer(vm_ns, ext_ns, EXT_GW, 5201, 20 * 1024 * 1024);
    println!(
        "   TCP VM1 -> external gateway (as its floating IP): {} MiB sent and verified",
        bytes / (1024 * 1024)
    );
    let hop1 = traffic::udp_probe(vm_ns, EXT_GW, 1);
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
    drop(topo);
    std::thread::sleep(Duration::from_millis(10));
    if !(ok && clean) {
        eprintln!(
            "demo: something failed; routerd log:\n{}",
            routerd.log_text()
        );
        std::process::exit(1);
    }
}
