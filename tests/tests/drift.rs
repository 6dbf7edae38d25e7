//! Drift repair: what someone changes by hand in a router namespace goes back to
//! the desired state within a second, and routerd says so in its log. An interface that
//! disappears and comes back (with a new ifindex) is re-attached, and the fast path
//! forwards for it again.

use std::time::{Duration, Instant};

use router_tests::{
    routerd::Routerd,
    topo::{RouterTopology, VM_A, VM_B, ip, veth},
    traffic,
};

/// Waits up to `limit` for `cond`; returns how long it took.
fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn output(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn drift_is_repaired(mode: &str) {
    let topo = RouterTopology::build(mode);
    let routerd = Routerd::start(&topo.config, &topo.router_id);
    let ns = topo.router_ns.as_str();

    // An address removed by hand.
    ip(&["-n", ns, "addr", "del", "10.0.1.1/24", "dev", "qr-a"]);
    let took = within(Duration::from_secs(1), || {
        output(&["-n", ns, "-4", "addr", "show", "dev", "qr-a"]).contains("10.0.1.1/24")
    })
    .unwrap_or_else(|| {
        panic!(
            "{mode}: address not repaired in 1 s:\n{}",
            routerd.log_text()
        )
    });
    eprintln!("{mode}: address repaired in {took:?}");
    // The log line follows the repair (routerd writes it once the address is back).
    assert!(
        within(Duration::from_secs(1), || routerd
            .log_text()
            .contains("repaired: 10.0.1.1/24 re-added to qr-a"))
        .is_some(),
        "{mode}: repair not logged:\n{}",
        routerd.log_text()
    );

    // A route removed by hand.
    ip(&["-n", ns, "route", "del", "10.20.0.0/16"]);
    let took = within(Duration::from_secs(1), || {
        output(&["-n", ns, "route", "show", "10.20.0.0/16"]).contains("via 10.0.1.254")
    })
    .unwrap_or_else(|| panic!("{mode}: route not repaired in 1 s:\n{}", routerd.log_text()));
    eprintln!("{mode}: route repaired in {took:?}");
    assert!(
        within(Duration::from_secs(1), || routerd
            .log_text()
            .contains("route or rule changes restored"))
        .is_some(),
        "{mode}: route repair not logged:\n{}",
        routerd.log_text()
    );

    // The TC entry's filter deleted by hand, then the interface's `clsact` qdisc (and the
    // filter with it): attached again each time (the end of the test checks that the fast
    // path forwards what enters qr-a, with the kernel idle).
    let filter_del = [
        "-n",
        ns,
        "filter",
        "del",
        "dev",
        "qr-a",
        "ingress",
        "prio",
        "1",
        "handle",
        "0x52540001",
        "bpf",
    ];
    let qdisc_del = ["-n", ns, "qdisc", "del", "dev", "qr-a", "clsact"];
    for (what, args) in [("filter", &filter_del[..]), ("qdisc", &qdisc_del[..])] {
        let repaired = |log: &str| log.matches("the TC entry's filter on ifindex").count();
        let before = repaired(&routerd.log_text());
        let out = std::process::Command::new("tc")
            .args(args)
            .output()
            .expect("tc");
        assert!(out.status.success(), "{mode}: tc {args:?}: {out:?}");
        let filters = || {
            let out = std::process::Command::new("tc")
                .args(["-n", ns, "filter", "show", "dev", "qr-a", "ingress"])
                .output()
                .expect("tc");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let took = within(Duration::from_secs(1), || {
            filters().contains("handle 0x52540001") && repaired(&routerd.log_text()) > before
        })
        .unwrap_or_else(|| {
            panic!(
                "{mode}: the TC entry not back after its {what} was deleted: {}\n{}",
                filters(),
                routerd.log_text()
            )
        });
        eprintln!("{mode}: TC entry back {took:?} after its {what} was deleted");
    }

    // An interface that goes away and comes back with a new ifindex.
    let old_index = output(&["-n", ns, "-o", "link", "show", "qr-b"]);
    ip(&["-n", ns, "link", "del", "qr-b"]);
    assert!(
        within(Duration::from_secs(1), || routerd
            .log_text()
            .contains("interface qr-b is gone"))
        .is_some(),
        "{mode}: the missing interface was not reported"
    );
    veth("qr-b", ns, "eth0", &topo.vm_b_ns);
    ip(&["-n", &topo.vm_b_ns, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        &topo.vm_b_ns,
        "addr",
        "add",
        "10.0.2.5/24",
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &topo.vm_b_ns,
        "route",
        "add",
        "default",
        "via",
        "10.0.2.1",
    ]);
    let took = within(Duration::from_secs(2), || {
        routerd.log_text().contains("repaired: re-attached")
    })
    .unwrap_or_else(|| panic!("{mode}: not re-attached:\n{}", routerd.log_text()));
    eprintln!("{mode}: interface re-attached {took:?} after it came back");
    let new_index = output(&["-n", ns, "-o", "link", "show", "qr-b"]);
    assert_ne!(old_index, new_index, "{mode}: the same interface?");
    assert!(
        output(&["-n", ns, "-4", "addr", "show", "dev", "qr-b"]).contains("10.0.2.1/24"),
        "{mode}: qr-b's address not restored"
    );
    // The fast path forwards for the new interface: VM-a <-> VM-b with the kernel idle
    // (after one round for neighbour resolution).
    assert!(
        traffic::ping(&topo.vm_a_ns, VM_B, 2),
        "{mode}: VM-a -> VM-b"
    );
    let before = traffic::forwarded_by_kernel(ns);
    assert!(
        traffic::ping(&topo.vm_b_ns, VM_A, 5),
        "{mode}: VM-b -> VM-a"
    );
    assert_eq!(
        traffic::forwarded_by_kernel(ns),
        before,
        "{mode}: the kernel forwarded for the re-attached interface"
    );
}

#[test]
fn drift_is_repaired_xdp() {
    drift_is_repaired("xdp");
}

#[test]
fn drift_is_repaired_tc() {
    drift_is_repaired("tc");
}
