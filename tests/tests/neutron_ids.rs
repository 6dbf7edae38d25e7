//! A router named as Neutron names it, end to end: router id a UUID, namespace
//! `qrouter-<uuid>`, interfaces `qr-`/`qg-` and the first 11 characters of their port ids.
//! routerd starts it, pins it under its id, the fast path forwards its traffic,
//! routerctl's verbs reach it, and a second routerd adopts it; its floating IP and firewall
//! rule are named by Neutron's ids, idempotently (`--may-exist`, `--if-exists`). And
//! `routerctl import neutron` end to end on the fixtures.

use std::{path::PathBuf, process::Output};

use router_tests::{
    routerd::{Routerd, routerd_path},
    topology::{Builder, Host},
    traffic::ping,
};
use serde_json::Value;

const EXT_HOST: [u8; 4] = [198, 18, 0, 1];
const FIP: [u8; 4] = [198, 18, 0, 10];
const FIP_ID: &str = "2f245a7b-796b-4f26-9cf9-9e82d248fda7";
const RULE_ID: &str = "0b0e3c1c-8f6d-4d5e-a1c4-3f1d2b0a9c8e";
/// As Neutron names a router's ports: the prefix and the port id's first 11 characters.
const QG: &str = "qg-4d5e6f70-81";
const QR: &str = "qr-0a1b2c3d-4e";

fn routerctl(socket: &PathBuf, args: &[&str]) -> Output {
    std::process::Command::new(routerd_path().with_file_name("routerctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("running routerctl")
}

/// routerctl that must succeed: its stdout.
fn ctl_ok(socket: &PathBuf, args: &[&str]) -> String {
    let out = routerctl(socket, args);
    assert!(
        out.status.success(),
        "routerctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// routerctl that must fail with exit code `code`: its stderr.
fn ctl_fails(socket: &PathBuf, code: i32, args: &[&str]) -> String {
    let out = routerctl(socket, args);
    let stderr = String::from_utf8(out.stderr).expect("UTF-8");
    assert_eq!(
        out.status.code(),
        Some(code),
        "routerctl {args:?}: {stderr}"
    );
    stderr
}

/// The items of routerctl's JSON document.
fn items(socket: &PathBuf, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-f", "json"]);
    let doc: Value = serde_json::from_str(&ctl_ok(socket, &args)).expect("JSON");
    doc["items"].clone()
}

/// Packets the fast path forwarded on the router's interfaces, summed.
fn forwarded(router: &str) -> u64 {
    router_user::stats::collect(Some(router))
        .expect("the router's pinned counters")
        .iter()
        .map(|r| r.forwarded_packets)
        .sum()
}

/// Whether pings get through, tried up to 5 times (a loaded machine may miss one window).
fn reaches(ns: &str, dst: [u8; 4]) -> bool {
    (0..5).any(|_| ping(ns, dst, 2))
}

#[test]
fn a_router_named_by_its_neutron_uuid_forwards_and_answers_routerctl() {
    router_tests::require_root();
    // The external host has no route to the internal subnet: it reaches the VM through
    // the floating IP only.
    let mut topo = Builder::neutron()
        .external(
            QG,
            "198.18.0.2/24",
            "198.18.0.1",
            [Host::new("ext", "198.18.0.1/24")],
        )
        .internal(
            QR,
            "10.0.1.1/24",
            [Host::new("vma", "10.0.1.5/24").via("10.0.1.1")],
        )
        .build();
    let router = topo.tag.clone();
    assert_eq!(router.len(), 36, "{router} is a UUID");
    assert_eq!(topo.router_ns, format!("qrouter-{router}"));
    let mut text = topo.router_text("xdp");
    text.extra = format!(
        "[[router.floating_ip]]\nid = \"{FIP_ID}\"\naddress = \"198.18.0.10\"\nfixed = \"10.0.1.5\"\n"
    );
    topo.write_config(&text.render());
    let socket = topo.start_routerd().socket.clone();
    let (ext, vma) = (topo.ns("ext").to_string(), topo.ns("vma").to_string());

    // Its pins and run files are named by the UUID.
    assert!(router_user::paths::router_pin_dir(&router).is_dir());
    assert!(router_user::paths::router_info_file(&router).exists());

    // Traffic both ways through the floating IP, forwarded by the fast path.
    let before = forwarded(&router);
    assert!(
        reaches(&vma, EXT_HOST),
        "the VM does not reach the external host"
    );
    assert!(
        reaches(&ext, FIP),
        "the external host does not reach the floating IP"
    );
    let after = forwarded(&router);
    assert!(
        after >= before + 4,
        "the fast path forwarded {} packets, expected the pings' (4 or more)",
        after - before
    );

    // routerctl: the router, its floating IP by id, idempotent.
    let list = items(&socket, &["router", "list"]);
    assert_eq!(list[0]["id"], router.as_str(), "{list}");
    assert_eq!(list[0]["running"], true, "{list}");
    let show = items(&socket, &["router", "show", &router]);
    assert_eq!(show["namespace"], topo.router_ns.as_str(), "{show}");
    let fips = items(&socket, &["fip", "list", &router]);
    assert_eq!(fips[0]["id"], FIP_ID, "{fips}");
    assert_eq!(fips[0]["address"], "198.18.0.10", "{fips}");
    let table = ctl_ok(&socket, &["fip", "list", &router]);
    assert!(table.contains(FIP_ID), "{table}");
    let create = [
        "fip",
        "create",
        &router,
        "--address",
        "198.18.0.10",
        "--fixed",
        "10.0.1.5",
        "--id",
        FIP_ID,
    ];
    let e = ctl_fails(&socket, 4, &create);
    assert!(e.contains("(use --may-exist)"), "{e}");
    let mut again = create.to_vec();
    again.push("--may-exist");
    let out = ctl_ok(&socket, &again);
    assert!(out.contains("unchanged"), "{out}");
    let mut moved = again.clone();
    moved[6] = "10.0.1.6";
    let e = ctl_fails(&socket, 4, &moved);
    assert!(
        e.contains(&format!("floating IP id {FIP_ID} exists")),
        "{e}"
    );
    ctl_ok(&socket, &["fip", "delete", &router, "--id", FIP_ID]);
    assert!(
        !ping(&ext, FIP, 2),
        "the floating IP still answers after its delete by id"
    );
    let e = ctl_fails(&socket, 3, &["fip", "delete", &router, "--id", FIP_ID]);
    assert!(e.contains("has no floating IP id"), "{e}");
    ctl_ok(
        &socket,
        &["fip", "delete", &router, "--id", FIP_ID, "--if-exists"],
    );
    ctl_ok(&socket, &again);
    assert!(
        reaches(&ext, FIP),
        "the floating IP created again does not answer"
    );

    // A firewall rule by id: it drops the VM's pings, and goes again by id.
    ctl_ok(&socket, &["fw", "default", &router, "allow"]);
    let add = [
        "fw",
        "rule",
        "add",
        &router,
        "--action",
        "deny",
        "--protocol",
        "icmp",
        "--id",
        RULE_ID,
    ];
    ctl_ok(&socket, &add);
    let mut add_again = add.to_vec();
    add_again.push("--may-exist");
    let out = ctl_ok(&socket, &add_again);
    assert!(out.contains("unchanged"), "{out}");
    let fw = items(&socket, &["fw", "rule", "list", &router]);
    assert_eq!(fw["rules"][0]["id"], RULE_ID, "{fw}");
    assert!(!ping(&vma, EXT_HOST, 2), "the deny rule lets pings through");
    ctl_ok(&socket, &["fw", "rule", "del", &router, "--id", RULE_ID]);
    ctl_ok(
        &socket,
        &["fw", "rule", "del", &router, "--id", RULE_ID, "--if-exists"],
    );
    assert!(
        reaches(&vma, EXT_HOST),
        "pings do not pass once the rule is gone"
    );

    // The read-only verbs reach it through its pins; trace pins the maps it shares in a
    // temporary directory of its own, whatever the router's id.
    let stats = ctl_ok(&socket, &["stats", &router]);
    assert!(stats.contains(QG) && stats.contains(QR), "{stats}");
    let trace = items(
        &socket,
        &[
            "trace",
            &router,
            "--in",
            QR,
            "--src",
            "10.0.1.5",
            "--dst",
            "198.18.0.1",
            "--proto",
            "icmp",
        ],
    );
    assert_eq!(trace["verdict"], "forwarded", "{trace}");

    // A new routerd adopts the router by its id (its owner record, pins and links), and
    // writes nothing: the file it reads is what runs.
    // (The topology keeps the stopped one: dropping it would tear the router down.)
    assert!(topo.routerd_mut().stop(), "routerd did not stop cleanly");
    // What routerd persisted holds the ids: a routerd that stops writes the API's edits
    // into the file.
    let file = std::fs::read_to_string(&topo.config).expect("the desired state");
    assert!(
        file.contains(&format!("id = \"{FIP_ID}\"")),
        "the file lost the floating IP's id:\n{file}"
    );
    assert!(!topo.config.with_extension("toml.journal").exists());
    let second = Routerd::start(&topo.config, &router);
    let adopted = |log: &str| {
        log.contains("adopted the running fast path")
            && log.contains("; 0 map writes, 0 kernel writes")
    };
    // The line follows the router's start by a moment; bounded, it is there or never.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !adopted(&second.log_text()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = second.log_text();
    assert!(
        adopted(&log),
        "the new routerd did not adopt router {router} without writing:\n{log}"
    );
    assert!(
        reaches(&ext, FIP),
        "the floating IP does not answer after the restart"
    );
}

/// `routerctl import neutron` on the fixtures writes a file that routerd accepts, and lists
/// what it skipped; an input it cannot map exits 2 naming the object, writing nothing.
#[test]
fn the_neutron_import_writes_a_file_routerd_accepts() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/neutron");
    let dir = std::env::temp_dir().join(router_tests::topology::unique_uuid());
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let result = std::panic::catch_unwind(|| {
        let file = dir.join("imported.toml");
        let socket = dir.join("unused.sock");
        let out = routerctl(
            &socket,
            &[
                "import",
                "neutron",
                &fixtures.display().to_string(),
                "-o",
                &file.display().to_string(),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "import: {stderr}");
        assert!(
            stderr.contains("routerctl: skipped: floating IP 2c7990c7-bbfa-4fa3-a122-1b8e710450aa"),
            "{stderr}"
        );
        let written = std::fs::read_to_string(&file).expect("the imported file");
        let expected =
            std::fs::read_to_string(fixtures.join("expected.toml")).expect("expected.toml");
        assert_eq!(written, expected);
        let check = std::process::Command::new(routerd_path())
            .args(["--check", "--config"])
            .arg(&file)
            .output()
            .expect("routerd --check");
        assert!(
            check.status.success(),
            "routerd --check refuses the import: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        // One router's subnet missing: refused, naming it; the file is left as it was.
        let partial = dir.join("partial");
        std::fs::create_dir_all(&partial).expect("a directory");
        for entry in std::fs::read_dir(&fixtures)
            .expect("the fixtures")
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "subnet-96d46a1c-faa6-45b3-bea4-e7d52f751aff.json" {
                std::fs::copy(entry.path(), partial.join(&name)).expect("a copy");
            }
        }
        let e = ctl_fails(
            &socket,
            2,
            &[
                "import",
                "neutron",
                &partial.display().to_string(),
                "-o",
                &file.display().to_string(),
            ],
        );
        assert!(
            e.contains(
                "subnet 96d46a1c-faa6-45b3-bea4-e7d52f751aff of 192.168.10.1 is not in the input"
            ),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&file).expect("the file"), expected);
    });
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
