//! Nothing stale: pins of routers whose namespace is gone and that no desired state has are
//! removed by routerd (at start and every `--sweep-interval`), and `routerctl` does not show
//! them; a router that is desired but waits keeps its pins, and so does a router of another
//! routerd that runs; a router whose start fails leaves nothing of that attempt.

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use router_tests::{
    routerd::{Routerd, routerd_path},
    topo::{Namespaces, ip, unique},
    traffic::wait_for,
};

fn routerctl(args: &[&str]) -> Output {
    Command::new(routerd_path().with_file_name("routerctl"))
        .args(args)
        .output()
        .expect("routerctl")
}

/// A router namespace `ns` with a port `qr-a` (a veth whose peer stays in it).
fn router_namespace(namespaces: &mut Namespaces, ns: &str) {
    namespaces.add(ns);
    ip(&[
        "-n", ns, "link", "add", "qr-a", "type", "veth", "peer", "name", "qr-a-p",
    ]);
    ip(&["-n", ns, "link", "set", "qr-a-p", "up"]);
}

fn router_text(id: &str, ns: &str, mode: &str) -> String {
    format!(
        "[[router]]\nid = \"{id}\"\nnamespace = \"{ns}\"\nmode = \"{mode}\"\n\
         [[router.interface]]\nname = \"qr-a\"\naddress = \"10.0.1.1/24\"\n"
    )
}

fn write(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("writing the desired state");
    std::fs::rename(&tmp, path).expect("renaming the desired state");
}

fn pinned(id: &str) -> bool {
    router_user::datapath::pinned_routers()
        .iter()
        .any(|r| r == id)
}

/// Files the test wrote, removed at the end whatever happens.
struct Files(Vec<PathBuf>);

impl Drop for Files {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[test]
fn stale_routers_are_removed_and_not_shown() {
    router_tests::require_root();
    let tag = unique("st");
    let mut namespaces = Namespaces::default();
    let id = |r: &str| format!("{tag}-{r}");
    let ns = |r: &str| format!("{tag}{r}");
    let config = |r: &str| std::env::temp_dir().join(format!("{tag}-{r}.toml"));
    let _files = Files(["a", "b", "c", "d"].iter().map(|r| config(r)).collect());

    // Router d runs under its own routerd and desires e too, whose namespace is gone:
    // e waits, and keeps its pins, which no other routerd may take (set up first: a
    // routerd started later sweeps what is stale by then).
    router_namespace(&mut namespaces, &ns("d"));
    router_namespace(&mut namespaces, &ns("e"));
    let both = router_text(&id("d"), &ns("d"), "tc") + &router_text(&id("e"), &ns("e"), "tc");
    write(&config("d"), &both);
    let mut routerd_d = Routerd::start(&config("d"), &id("e"));
    routerd_d.kill9();
    ip(&["netns", "del", &ns("e")]);
    let routerd_d = Routerd::start(&config("d"), &id("d"));
    wait_for("router e to wait", Duration::from_secs(10), || {
        routerd_d
            .log_text()
            .contains(&format!("router {}: namespace", id("e")))
    });

    // Routers a and c: pinned by routerds killed with -9, then their namespaces deleted
    // (a routerd started later would sweep the first one).
    let mut killed = Vec::new();
    for r in ["a", "c"] {
        router_namespace(&mut namespaces, &ns(r));
        write(&config(r), &router_text(&id(r), &ns(r), "tc"));
        killed.push(Routerd::start(&config(r), &id(r)));
    }
    for (routerd, r) in killed.iter_mut().zip(["a", "c"]) {
        routerd.kill9();
        ip(&["netns", "del", &ns(r)]);
    }
    assert!(pinned(&id("a")) && pinned(&id("c")));

    // routerctl shows neither, and says why on stderr.
    for args in [
        &["stats", "-f", "json"][..],
        &["ct", "list", "-f", "json"],
        &["nat", "list", "-f", "json"],
    ] {
        let out = routerctl(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{args:?}: {stderr}");
        for r in ["a", "c"] {
            assert!(
                !stdout.contains(&id(r)),
                "{args:?} shows {}: {stdout}",
                id(r)
            );
            assert!(
                stderr.contains(&format!("router {} not shown", id(r))),
                "{args:?}: no note for {}: {stderr}",
                id(r)
            );
        }
    }

    // Routerd b, desiring b and c: a goes at its start, c stays while desired.
    router_namespace(&mut namespaces, &ns("b"));
    write(
        &config("b"),
        &(router_text(&id("b"), &ns("b"), "tc") + &router_text(&id("c"), &ns("c"), "tc")),
    );
    let routerd_b = Routerd::start_with_args(&config("b"), &id("b"), &["--sweep-interval", "1"]);
    // The start's sweep comes once every router of the start has been tried.
    wait_for(
        "a removed at routerd b's start",
        Duration::from_secs(10),
        || !pinned(&id("a")),
    );
    let log = routerd_b.log_text();
    let removed_a = format!("router {} is stale", id("a"));
    assert_eq!(log.matches(&removed_a).count(), 1, "{log}");
    // Several sweeps later: c (desired, waiting) and e (another routerd's) are still there.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        pinned(&id("c")),
        "desired c lost its pins:\n{}",
        routerd_b.log_text()
    );
    assert!(
        pinned(&id("e")),
        "routerd b removed routerd d's router e:\n{}",
        routerd_b.log_text()
    );
    // c no longer desired: the next sweep removes it, once.
    write(&config("b"), &router_text(&id("b"), &ns("b"), "tc"));
    routerd_b.reload();
    let removed_c = format!("router {} is stale", id("c"));
    wait_for("c removed", Duration::from_secs(10), || !pinned(&id("c")));
    std::thread::sleep(Duration::from_millis(1500));
    let log = routerd_b.log_text();
    assert_eq!(log.matches(&removed_c).count(), 1, "{log}");
    assert!(pinned(&id("b")) && pinned(&id("d")) && pinned(&id("e")));
    drop(routerd_b);
    drop(routerd_d);
    drop(killed);
}

/// A start that fails (a directory stands where a map's pin belongs) leaves no fast path:
/// no pin but the obstacle, no program on its ports. The kernel's part stays and serves the
/// router while it waits (addresses, routes, rules, the slow path's table), and goes when
/// the router leaves the desired state.
#[test]
fn a_failed_start_leaves_no_fast_path_behind() {
    router_tests::require_root();
    let tag = unique("sf");
    let id = format!("{tag}-r");
    let ns = format!("{tag}r");
    let mut namespaces = Namespaces::default();
    router_namespace(&mut namespaces, &ns);
    ip(&[
        "-n", &ns, "link", "add", "qr-b", "type", "veth", "peer", "name", "qr-b-p",
    ]);
    ip(&["-n", &ns, "link", "set", "qr-b-p", "up"]);
    let config = std::env::temp_dir().join(format!("{tag}.toml"));
    let _files = Files(vec![config.clone()]);
    write(
        &config,
        &(router_text(&id, &ns, "xdp")
            + "[[router.interface]]\nname = \"qr-b\"\naddress = \"10.0.2.1/24\"\n"
            + "[[router.table]]\nname = \"vfw\"\nid = 100\n"
            + "[[router.route]]\ndestination = \"10.20.0.0/16\"\nnexthop = \"10.0.1.254\"\n"
            + "[[router.rule]]\npriority = 1000\niif = \"qr-a\"\ntable = \"vfw\"\n"),
    );
    let show = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["-n", &ns])
            .args(args)
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A directory (not empty) where a map's pin belongs: routerd can neither pin there nor
    // clear it, so every start attempt fails after the kernel's part, until it goes.
    let obstacle = router_user::paths::router_pin_dir(&id).join("ROUTES");
    std::fs::create_dir_all(obstacle.join("x")).expect("the obstacle");
    struct Obstacle(PathBuf);
    impl Drop for Obstacle {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _obstacle = Obstacle(router_user::paths::router_pin_dir(&id));
    let socket = std::env::temp_dir().join(format!("{tag}.sock"));
    let mut routerd = Routerd::start_unready(&config, &id, &socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !routerd
        .log_text()
        .contains("the kernel path serves the router")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the start did not fail:\n{}",
            routerd.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = routerd.log_text();
    // Nothing of the fast path but the obstacle itself.
    let mut left = Vec::new();
    let mut dirs = vec![router_user::paths::router_pin_dir(&id)];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.starts_with(&obstacle) {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else {
                left.push(path.display().to_string());
            }
        }
    }
    assert!(left.is_empty(), "pins left: {left:?}\n{log}");
    for port in ["qr-a", "qr-b"] {
        let link = show(&["link", "show", port]);
        assert!(!link.contains("xdp"), "XDP left on {port}: {link}");
        let filters = Command::new("tc")
            .args(["-n", &ns, "filter", "show", "dev", port, "ingress"])
            .output()
            .expect("tc");
        let filters = String::from_utf8_lossy(&filters.stdout);
        assert!(
            filters.trim().is_empty(),
            "TC filter left on {port}: {filters}"
        );
    }
    // The kernel's part serves the router while it waits.
    let addrs = show(&["-4", "addr", "show"]);
    assert!(
        addrs.contains("10.0.1.1") && addrs.contains("10.0.2.1"),
        "addresses: {addrs}\n{log}"
    );
    let routes = show(&["route", "show", "table", "all"]);
    assert!(routes.contains("10.20.0.0/16"), "routes: {routes}");
    let rules = show(&["rule", "show"]);
    assert!(rules.contains("1000:"), "rules: {rules}");
    let nft = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "list", "table", "ip"])
        .arg(router_user::slowpath::TABLE)
        .output()
        .expect("nft");
    assert!(nft.status.success(), "no nftables table:\n{log}");

    // The router leaves the desired state while it waits: the kernel's serving of it goes
    // (its table, its record of it).
    write(&config, "");
    routerd.reload();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !routerd
        .log_text()
        .contains("left the desired state while waiting")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiting router was not released:\n{}",
            routerd.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let nft = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "list", "table", "ip"])
        .arg(router_user::slowpath::TABLE)
        .output()
        .expect("nft");
    assert!(!nft.status.success(), "the nftables table stayed");
    let record = router_user::paths::run_dir().join(format!("{id}.nftables"));
    assert!(!record.exists(), "{} stayed", record.display());
    assert!(routerd.stop(), "routerd did not stop cleanly");
    drop(routerd);
}
