//! routerd's API socket against a real routerd running a router in real namespaces:
//! permissions, every verb of routes, rules, the firewall and steering (through the JSON
//! protocol and through routerctl), idempotence, rejected requests that change nothing, and
//! what routerd persists (the desired-state file and its journal) kept equal to the state
//! it runs, the file alone once the API is quiet.
//!
//! Neutron's imperative verbs (routers, their interfaces and gateway, floating IPs) from an
//! empty routerd, with traffic after each that matters; a change that fails to apply
//! (an interface missing in the namespace) rolled back in the journal and in the running
//! routers; the writes an apply reports, and none for the same file applied again.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, SystemTime},
};

use router_tests::{
    routerd::{Routerd, routerd_path},
    topo::{Namespaces, ip, unique, veth},
    topology::{Builder, Host},
    traffic::{ping, wait_for},
};
use router_user::{
    api::{Client, Response},
    config::DesiredState,
    node::StateFile,
};
use serde_json::{Value, json};

/// A directory removed with everything in it on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("api-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The desired-state file, the socket and the router, with checks after every request.
struct Api {
    socket: PathBuf,
    config: PathBuf,
    router: String,
    /// Lines the test wrote into the file, in parts its edits leave alone: every edit must
    /// keep them as they are.
    comments: Vec<&'static str>,
}

impl Api {
    fn send_line(&self, line: &str) -> Response {
        let mut client = Client::connect(&self.socket).expect("connecting to routerd");
        client.call_line(line).expect("a response")
    }

    fn send(&self, request: Value) -> Response {
        self.send_line(&request.to_string())
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.config).expect("reading the desired-state file")
    }

    fn modified(&self) -> SystemTime {
        std::fs::metadata(&self.config)
            .and_then(|m| m.modified())
            .expect("mtime")
    }

    fn state(&self) -> String {
        let r = self.send(json!({"op": "show_state"}));
        assert!(r.ok, "show_state: {r:?}");
        r.result.expect("result")["text"]
            .as_str()
            .expect("text")
            .to_string()
    }

    /// A query's result.
    fn query(&self, request: Value) -> Value {
        let r = self.send(request.clone());
        assert!(r.ok, "{request} failed: {r:?}");
        r.result.expect("result")
    }

    /// A mutation that must change the router: the file now holds what routerd runs, and
    /// routerd --check accepts it.
    fn change(&self, request: Value) {
        let r = self.send(request.clone());
        assert!(r.ok, "{request} failed: {r:?}");
        let result = r.result.expect("result");
        assert_eq!(
            (&result["changed_routers"], &result["unchanged"]),
            (&json!([self.router]), &json!(false)),
            "{request}"
        );
        assert!(
            result["writes"]["map"].is_u64() && result["writes"]["kernel"].is_u64(),
            "{request}: no write counts in {result}"
        );
        self.assert_persisted();
    }

    /// The state a routerd started now would read: the file, and the API edits its
    /// journal holds that are not written into it yet.
    fn persisted(&self) -> DesiredState {
        // Read again if routerd rewrote the file meanwhile (a fold, which replaces the
        // file before it removes the journal).
        loop {
            let file = self.file();
            let state = StateFile::new(&self.config)
                .load()
                .expect("the file and its journal are a valid desired state");
            if self.file() == file {
                return state;
            }
        }
    }

    /// Waits until routerd has written the API's edits into the file (its journal is
    /// gone): it does once the API has been quiet for a moment.
    fn settle(&self) {
        let journal = self.config.with_extension("toml.journal");
        wait_for(
            "the API's edits written into the file",
            Duration::from_secs(5),
            || !journal.exists(),
        );
    }

    /// A mutation asking for what already is: success, and nothing written.
    fn unchanged(&self, request: Value) {
        self.settle();
        let (before, mtime) = (self.file(), self.modified());
        let r = self.send(request.clone());
        assert!(r.ok, "{request} failed: {r:?}");
        assert_eq!(
            r.result.expect("result"),
            json!({"changed_routers": [], "unchanged": true, "writes": {"map": 0, "kernel": 0}}),
            "{request}"
        );
        assert_eq!(self.file(), before, "{request} rewrote the file");
        assert_eq!(self.modified(), mtime, "{request} wrote the file");
        assert!(
            !self.config.with_extension("toml.journal").exists(),
            "{request} was recorded"
        );
    }

    /// A rejected request: an error containing `expected`, nothing changed.
    fn rejected_line(&self, line: &str, expected: &str) -> String {
        let (before, state) = (self.persisted(), self.state());
        let r = self.send_line(line);
        assert!(!r.ok, "{line} was accepted: {r:?}");
        assert_eq!(r.version, router_user::api::API_VERSION, "{line}: {r:?}");
        let error = r.error.expect("an error message").message;
        assert!(
            error.contains(expected),
            "{line}: error {error:?} does not say {expected:?}"
        );
        assert_eq!(
            self.persisted(),
            before,
            "{line} changed the persisted state"
        );
        assert_eq!(self.state(), state, "{line} changed the state");
        error
    }

    fn rejected(&self, request: Value, expected: &str) -> String {
        self.rejected_line(&request.to_string(), expected)
    }

    /// routerctl that must fail with exit code `code`: its stderr.
    fn ctl_exit(&self, code: i32, args: &[&str]) -> String {
        let out = self.ctl(args);
        let stderr = String::from_utf8(out.stderr).expect("UTF-8");
        assert_eq!(
            out.status.code(),
            Some(code),
            "routerctl {args:?}: {stderr}"
        );
        stderr
    }

    /// routerctl printing one JSON document of `kind`: its items.
    fn ctl_items(&self, kind: &str, args: &[&str]) -> Value {
        let doc: Value = serde_json::from_str(&self.ctl_ok(args)).expect("JSON");
        assert_eq!(
            (&doc["kind"], &doc["version"]),
            (&json!(kind), &json!(1)),
            "routerctl {args:?}: {doc}"
        );
        doc["items"].clone()
    }

    /// What routerd persisted (the file and its journal) is the state it runs, the file
    /// keeps the comments written into it, and routerd --check accepts it.
    fn assert_persisted(&self) {
        let state = self.state();
        assert_eq!(
            self.persisted(),
            DesiredState::parse(&state).expect("show_state is a valid desired state"),
            "what routerd persisted is not the state it runs; it runs:\n{state}"
        );
        self.assert_comments_and_check();
    }

    /// Once the API is quiet, the file alone holds the state routerd runs: the operator's
    /// file edited where the state changed, so it keeps the comments written into it.
    fn assert_folded(&self) {
        self.settle();
        let file = String::from_utf8(self.file()).expect("UTF-8");
        let state = self.state();
        assert_eq!(
            DesiredState::parse(&file).expect("the file is a valid desired state"),
            DesiredState::parse(&state).expect("show_state is a valid desired state"),
            "the file is not the state routerd runs:\n{file}\nrouterd runs:\n{state}"
        );
        self.assert_comments_and_check();
    }

    fn assert_comments_and_check(&self) {
        let file = String::from_utf8(self.file()).expect("UTF-8");
        for comment in &self.comments {
            assert!(
                file.contains(comment),
                "an API edit dropped {comment:?} from the file:\n{file}"
            );
        }
        let out = Command::new(routerd_path())
            .args(["--check", "-c"])
            .arg(&self.config)
            .output()
            .expect("routerd --check");
        assert!(
            out.status.success(),
            "routerd --check rejects the written file: {}\n{file}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// routerctl with this socket.
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(routerctl())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running routerctl")
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "routerctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    fn rules(&self) -> Vec<(u64, String, String)> {
        self.query(json!({"op": "rule_list", "router": self.router}))
            .as_array()
            .expect("an array")
            .iter()
            .map(|r| {
                (
                    r["priority"].as_u64().expect("priority"),
                    r["origin"].as_str().expect("origin").to_string(),
                    r["iif"].as_str().unwrap_or("any").to_string(),
                )
            })
            .collect()
    }

    fn fw_actions(&self) -> Vec<(u64, String, String)> {
        let fw = self.query(json!({"op": "fw_rule_list", "router": self.router}));
        fw["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| {
                (
                    r["position"].as_u64().expect("position"),
                    r["action"].as_str().expect("action").to_string(),
                    r["protocol"].as_str().expect("protocol").to_string(),
                )
            })
            .collect()
    }
}

fn routerctl() -> PathBuf {
    routerd_path().with_file_name("routerctl")
}

/// `ip -n NS ARGS` output.
fn ip_out(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// routerctl as uid/gid 65534 with no groups.
fn ctl_as_nobody(socket: &Path, router: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(routerctl())
        .arg("--socket")
        .arg(socket)
        .args(["rule", "list", "--router", router])
        .output()
        .expect("setpriv")
}

#[test]
fn api_edits_are_checked_persisted_and_applied() {
    router_tests::require_root();
    let tag = unique("api");
    let dir = TempDir::new(&tag);
    let mut namespaces = Namespaces::default();
    let router_ns = namespaces.add(&format!("qrouter-{tag}"));
    let peer_ns = namespaces.add(&format!("peer-{tag}"));
    for (port, peer) in [
        ("qg-api", "p-qg"),
        ("qr-a", "p-a"),
        ("qr-b", "p-b"),
        ("qr-fw", "p-fw"),
    ] {
        veth(port, &router_ns, peer, &peer_ns);
        ip(&["-n", &peer_ns, "link", "set", peer, "up"]);
    }
    let config = dir.0.join("desired.toml");
    std::fs::write(
        &config,
        format!(
            r#"# written by the test; API edits keep this comment
[[router]]
id = "{tag}"
namespace = "{router_ns}"
mode = "tc"

[router.gateway]
interface = "qg-api"
address = "198.18.0.2/24"
nexthop = "198.18.0.1"

[[router.interface]]
name = "qr-a"
address = "10.0.1.1/24"

[[router.interface]]
name = "qr-b"                 # no API edit touches this interface
address = "10.0.2.1/24"

[[router.interface]]
name = "qr-fw"
address = "10.99.0.1/24"

[[router.table]]
name = "vfw"
id = 100

[[router.route]]
destination = "10.20.0.0/16"
nexthop = "10.0.1.254"

[[router.rule]]
priority = 1000
iif = "qr-a"
table = "vfw"
"#
        ),
    )
    .expect("writing the config");
    // In a directory routerd creates (0750).
    let socket_dir = dir.0.join("run");
    let socket = socket_dir.join("routerd.sock");
    let mut routerd = Routerd::start_with_socket(&config, &tag, &socket);
    let api = Api {
        socket: socket.clone(),
        config: config.clone(),
        router: tag.clone(),
        comments: vec![
            "# written by the test; API edits keep this comment\n",
            "name = \"qr-b\"                 # no API edit touches this interface\n",
        ],
    };
    let r = tag.as_str();

    // ---- permissions -----------------------------------------------------------------
    assert_eq!(mode(&socket), 0o660, "socket mode");
    assert_eq!(mode(&socket_dir), 0o750, "socket directory mode");
    let out = ctl_as_nobody(&socket, r);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "nobody was served: {stderr}");
    assert!(
        stderr.starts_with("routerctl: cannot reach routerd at")
            && stderr.contains("ermission denied"),
        "{stderr}"
    );
    // With the file permissions opened, routerd itself refuses by the peer's credentials.
    chmod(&socket_dir, 0o755);
    chmod(&socket, 0o666);
    let out = ctl_as_nobody(&socket, r);
    chmod(&socket, 0o660);
    chmod(&socket_dir, 0o750);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "nobody was served: {stderr}");
    assert!(
        stderr.starts_with("routerctl: permission denied: uid 65534"),
        "{stderr}"
    );

    // ---- a second routerd on the same socket refuses, touching nothing ---------------
    let out = Command::new(routerd_path())
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .output()
        .expect("second routerd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("another routerd is listening"), "{stderr}");
    assert!(
        socket.exists(),
        "the second routerd removed the live socket"
    );

    // ---- routes ----------------------------------------------------------------------
    api.change(
        json!({"op": "route_add", "router": r, "destination": "10.30.0.0/16",
        "nexthop": "10.99.0.2", "table": "vfw"}),
    );
    assert_eq!(
        api.query(json!({"op": "route_list", "router": r, "table": "vfw"})),
        json!([{"table": "vfw", "destination": "10.30.0.0/16", "nexthop": "10.99.0.2"}])
    );
    assert_eq!(
        api.query(json!({"op": "route_list", "router": r})),
        json!([
            {"table": "main", "destination": "10.20.0.0/16", "nexthop": "10.0.1.254"},
            {"table": "vfw", "destination": "10.30.0.0/16", "nexthop": "10.99.0.2"},
        ])
    );
    wait_for(
        "the table route in the kernel",
        Duration::from_secs(5),
        || {
            ip_out(&router_ns, &["route", "show", "table", "100"])
                .contains("10.30.0.0/16 via 10.99.0.2")
        },
    );
    let same = json!({"op": "route_add", "router": r, "destination": "10.30.0.0/16",
        "nexthop": "10.99.0.2", "table": 100});
    api.rejected(same.clone(), "(use --may-exist)");
    let mut may = same.clone();
    may["may_exist"] = json!(true);
    api.unchanged(may);
    api.rejected(
        json!({"op": "route_add", "router": r, "destination": "10.30.0.0/16",
            "nexthop": "10.99.0.3", "table": "vfw", "may_exist": true}),
        "via 10.99.0.2 already",
    );
    // A main-table route reaches the kernel, and goes again.
    let out = api.ctl_ok(&["route", "add", "--router", r, "10.40.0.0/16", "10.0.2.254"]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();
    wait_for(
        "the main route in the kernel",
        Duration::from_secs(5),
        || ip_out(&router_ns, &["route", "show", "10.40.0.0/16"]).contains("via 10.0.2.254"),
    );
    let out = api.ctl_ok(&["route", "list", "--router", r]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["TABLE", "DESTINATION", "NEXTHOP"], "{out}");
    assert_eq!(lines.len(), 4, "{out}");
    // Aligned: every row's second column starts where the header's does.
    let column = out
        .lines()
        .next()
        .and_then(|h| h.find("DESTINATION"))
        .expect("header");
    for line in out.lines().skip(1) {
        assert_ne!(line.as_bytes()[column], b' ', "{out}");
        assert_eq!(line.as_bytes()[column - 1], b' ', "{out}");
    }
    let json_out: Value = api.ctl_items("routes", &["-f", "json", "route", "list", r]);
    assert_eq!(json_out.as_array().map(Vec::len), Some(3));
    // -c picks columns, named in any case, in the asked order.
    let out = api.ctl_ok(&["route", "list", r, "-c", "nexthop", "-c", "DESTINATION"]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NEXTHOP", "DESTINATION"], "{out}");
    assert_eq!(out.lines().count(), 4, "{out}");
    let e = api.ctl_exit(2, &["route", "list", r, "-c", "GATEWAY"]);
    assert!(e.contains("no column GATEWAY"), "{e}");
    // A typo is reported as the CLI argument (exit code 2), and nothing is sent.
    api.settle();
    let (before, mtime) = (api.file(), api.modified());
    let e = api.ctl_exit(2, &["route", "add", r, "10.40.0.0/33", "10.0.2.254"]);
    assert!(e.contains("'10.40.0.0/33' for '<DESTINATION>'"), "{e}");
    let e = api.ctl_exit(
        2,
        &["route", "add", "--router", r, "10.40.0.0/16", "10.0.2.2544"],
    );
    assert!(e.contains("'10.0.2.2544' for '<NEXTHOP>'"), "{e}");
    assert_eq!((api.file(), api.modified()), (before, mtime));
    // No such router: exit code 3, and the object at fault.
    let e = api.ctl_exit(3, &["route", "list", "no-such-router"]);
    assert!(
        e.contains("routerctl: error code not_found (router no-such-router)"),
        "{e}"
    );
    let reply = api.send(json!({"op": "route_list", "router": "no-such-router"}));
    let error = reply.error.expect("an error");
    assert_eq!(
        (reply.version, error.code, error.object.as_deref()),
        (
            router_user::api::API_VERSION,
            router_user::api::ErrorCode::NotFound,
            Some("router no-such-router")
        )
    );
    api.change(json!({"op": "route_del", "router": r, "destination": "10.40.0.0/16"}));
    wait_for(
        "the main route to leave the kernel",
        Duration::from_secs(5),
        || ip_out(&router_ns, &["route", "show", "10.40.0.0/16"]).is_empty(),
    );
    api.change(
        json!({"op": "route_del", "router": r, "destination": "10.30.0.0/16", "table": "vfw"}),
    );
    api.rejected(
        json!({"op": "route_del", "router": r, "destination": "10.30.0.0/16", "table": "vfw"}),
        "has no route to 10.30.0.0/16 in table vfw",
    );
    api.unchanged(
        json!({"op": "route_del", "router": r, "destination": "10.30.0.0/16",
        "table": "vfw", "if_exists": true}),
    );
    let out = api.ctl_ok(&[
        "route",
        "del",
        "--router",
        r,
        "--table",
        "vfw",
        "10.30.0.0/16",
        "--if-exists",
    ]);
    assert!(out.starts_with("unchanged"), "{out}");

    // ---- rules -----------------------------------------------------------------------
    api.change(json!({"op": "rule_add", "router": r, "priority": 2000, "to": "10.30.0.0/16", "table": "vfw"}));
    let out = api.ctl_ok(&[
        "rule",
        "add",
        "--router",
        r,
        "--priority",
        "500",
        "--from",
        "10.0.2.0/24",
        "--table",
        "main",
    ]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();
    assert_eq!(
        api.rules(),
        [
            (500, "config".to_string(), "any".to_string()),
            (1000, "config".into(), "qr-a".into()),
            (2000, "config".into(), "any".into())
        ]
    );
    wait_for("rule 2000 in the kernel", Duration::from_secs(5), || {
        ip_out(&router_ns, &["rule", "show"])
            .lines()
            .any(|l| l.starts_with("2000:"))
    });
    let dup = json!({"op": "rule_add", "router": r, "priority": 2000, "to": "10.30.0.0/16", "table": 100});
    api.rejected(dup.clone(), "rule priority 2000 exists");
    let mut may = dup;
    may["may_exist"] = json!(true);
    api.unchanged(may);
    let out = api.ctl_ok(&[
        "rule",
        "add",
        "--router",
        r,
        "--priority",
        "2000",
        "--to",
        "10.30.0.0/16",
        "--table",
        "vfw",
        "--may-exist",
    ]);
    assert!(out.starts_with("unchanged"), "{out}");
    let out = api.ctl(&[
        "rule",
        "add",
        "--router",
        r,
        "--priority",
        "1000",
        "--table",
        "main",
    ]);
    // A conflict: exit code 4, the API's code on stderr.
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routerctl: error code conflict"),
        "{stderr}"
    );
    assert!(
        stderr.starts_with("routerctl: rule priority 1000 exists"),
        "{stderr}"
    );
    api.change(json!({"op": "rule_del", "router": r, "priority": 500}));
    api.rejected(
        json!({"op": "rule_del", "router": r, "priority": 500}),
        "has no rule with priority 500",
    );
    api.unchanged(json!({"op": "rule_del", "router": r, "priority": 500, "if_exists": true}));
    let out = api.ctl_ok(&["rule", "list", "--router", r]);
    assert!(
        out.lines()
            .next()
            .is_some_and(|h| h.starts_with("PRIORITY")),
        "{out}"
    );
    assert_eq!(out.lines().count(), 3, "{out}");

    // ---- the firewall ----------------------------------------------------------------
    api.rejected(
        json!({"op": "fw_rule_add", "router": r, "action": "deny"}),
        "has no firewall",
    );
    api.change(json!({"op": "fw_default", "router": r, "policy": "allow"}));
    api.unchanged(json!({"op": "fw_default", "router": r, "policy": "allow"}));
    api.change(json!({"op": "fw_rule_add", "router": r, "action": "deny", "protocol": "icmp"}));
    api.change(
        json!({"op": "fw_rule_add", "router": r, "position": 1, "action": "allow",
        "protocol": "tcp", "destination": "10.0.1.0/24", "destination_ports": "80",
        "description": "web"}),
    );
    let out = api.ctl_ok(&[
        "fw",
        "rule",
        "add",
        "--router",
        r,
        "--position",
        "2",
        "--action",
        "reject",
        "--protocol",
        "udp",
        "--source",
        "10.0.2.0/24",
    ]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();
    assert_eq!(
        api.fw_actions(),
        [
            (1, "allow".to_string(), "tcp".to_string()),
            (2, "reject".into(), "udp".into()),
            (3, "deny".into(), "icmp".into())
        ]
    );
    let fw = api.query(json!({"op": "fw_rule_list", "router": r}));
    assert_eq!(fw["default"], "allow");
    assert_eq!(fw["rules"][0]["destination_ports"], "80");
    assert_eq!(fw["rules"][0]["description"], "web");
    for rule in fw["rules"].as_array().expect("rules") {
        assert!(
            rule["packets"].is_u64() && rule["bytes"].is_u64(),
            "no counters: {fw}"
        );
    }
    assert!(fw["counters"]["established"]["packets"].is_u64(), "{fw}");
    api.rejected(
        json!({"op": "fw_rule_add", "router": r, "position": 5, "action": "allow"}),
        "position 5 is out of range",
    );
    api.change(json!({"op": "fw_rule_del", "router": r, "position": 2}));
    assert_eq!(
        api.fw_actions(),
        [
            (1, "allow".to_string(), "tcp".to_string()),
            (2, "deny".into(), "icmp".into())
        ]
    );
    api.rejected(
        json!({"op": "fw_rule_del", "router": r, "position": 3}),
        "no firewall rule at position 3",
    );
    let out = api.ctl_ok(&["fw", "rule", "list", "--router", r]);
    assert!(out.starts_with("firewall: default allow\nPOS"), "{out}");
    let out = api.ctl_ok(&["fw", "default", "--router", r, "deny"]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();

    // ---- steering --------------------------------------------------------------------
    api.rejected(
        json!({"op": "fw_steer_set", "router": r, "interface": "qr-a"}),
        "no steering yet",
    );
    api.change(
        json!({"op": "fw_steer_set", "router": r, "interface": "qr-a", "nexthop": "10.99.0.2"}),
    );
    let out = api.ctl_ok(&["fw", "steer", "set", "--router", r, "--interface", "qr-b"]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();
    api.unchanged(json!({"op": "fw_steer_set", "router": r, "interface": "qr-b"}));
    let steered: Vec<String> = api
        .rules()
        .into_iter()
        .filter(|(_, origin, _)| origin == "steering")
        .map(|(_, _, iif)| iif)
        .collect();
    assert_eq!(steered, ["qr-a", "qr-b"]);
    api.rejected(
        json!({"op": "fw_steer_set", "router": r, "interface": "qr-fw"}),
        "steering.nexthop",
    );
    api.change(json!({"op": "fw_steer_clear", "router": r, "interface": "qr-a"}));
    api.rejected(
        json!({"op": "fw_steer_clear", "router": r, "interface": "qr-a"}),
        "is not steered",
    );
    let out = api.ctl_ok(&["fw", "steer", "clear", "--router", r]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();
    assert!(api.rules().iter().all(|(_, origin, _)| origin == "config"));
    api.unchanged(json!({"op": "fw_steer_clear", "router": r}));

    // ---- every kind of bad request: an error naming it, nothing changed ---------------
    api.rejected(
        json!({"op": "route_add", "router": "r9", "destination": "10.50.0.0/16", "nexthop": "10.0.1.254"}),
        "router \"r9\" does not exist",
    );
    api.rejected(
        json!({"op": "route_add", "router": r, "destination": "10.50.0.0/16", "nexthop": "10.0.1.254", "table": "nope"}),
        ".table = \"nope\": is not \"main\" or a table",
    );
    api.rejected(
        json!({"op": "rule_add", "router": r, "priority": 10, "iif": "eth9", "table": "main"}),
        ".iif = \"eth9\": is not an interface of this router",
    );
    api.rejected(
        json!({"op": "route_add", "router": r, "destination": "10.50.0.0/16", "nexthop": "192.0.2.1"}),
        ".nexthop = \"192.0.2.1\": is on no subnet",
    );
    api.rejected(
        json!({"op": "rule_add", "router": r, "priority": 1000, "table": "main"}),
        "rule priority 1000 exists",
    );
    api.rejected(
        json!({"op": "route_add", "router": r, "destination": "10.50.0.5/16", "nexthop": "10.0.1.254"}),
        ".destination = \"10.50.0.5/16\": has host bits set",
    );
    api.rejected(
        json!({"op": "fw_rule_add", "router": r, "action": "deny", "protocol": "icmp", "destination_ports": "80"}),
        ".destination_ports = \"80\": ports need protocol \"tcp\" or \"udp\"",
    );
    api.rejected(
        json!({"op": "rule_add", "router": r, "priority": 40000, "table": "main"}),
        ".priority = \"40000\": must be 1 to 29999",
    );
    api.rejected_line("{\"op\": \"route_add\", \"router\": ", "malformed request");
    api.rejected_line("{\"op\": \"reboot\"}", "unknown variant `reboot`");
    api.rejected(
        json!({"op": "route_list", "router": r, "extra": 1}),
        "unknown field `extra`",
    );
    // Several requests on one connection, the bad ones included.
    let mut client = Client::connect(&socket).expect("connect");
    assert!(!client.call_line("not json").expect("response").ok);
    assert!(
        client
            .call_line(r#"{"op":"show_state"}"#)
            .expect("response")
            .ok
    );

    // ---- apply -f --------------------------------------------------------------------
    let file = dir.0.join("new.toml");
    std::fs::write(
        &file,
        format!(
            "{}\n[[router.route]]\ndestination = \"10.60.0.0/16\"\nnexthop = \"10.0.2.254\"\n",
            api.state()
        ),
    )
    .expect("writing the new file");
    let file_arg = file.to_str().expect("path");
    let first: Value = api.ctl_items("change", &["--output", "json", "apply", "--file", file_arg]);
    assert_eq!(
        (&first["changed_routers"], &first["unchanged"]),
        (&json!([r]), &json!(false))
    );
    // A route: one kernel write (and its nftables transaction); the fast path mirrors
    // routes from the kernel (its map writes follow).
    assert!(
        first["writes"]["kernel"].as_u64().is_some_and(|k| k >= 1),
        "{first}"
    );
    api.assert_persisted();
    let second: Value = api.ctl_items("change", &["--output", "json", "apply", file_arg]);
    assert_eq!(
        second,
        json!({"changed_routers": [], "unchanged": true, "writes": {"map": 0, "kernel": 0}})
    );
    let out = api.ctl_ok(&["apply", file_arg]);
    assert!(out.starts_with("unchanged"), "{out}");
    std::fs::write(&file, "[[router]]\nid = \"x\"\n").expect("writing");
    let out = api.ctl(&["apply", file_arg]);
    // An invalid state: exit code 2.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("routerctl: invalid configuration"),
        "{stderr}"
    );
    api.assert_folded();
    assert!(
        api.query(json!({"op": "route_list", "router": r}))
            .as_array()
            .is_some_and(|routes| routes.iter().any(|x| x["destination"] == "10.60.0.0/16"))
    );

    // SIGHUP re-reads the file routerd wrote: same state.
    let state = api.state();
    routerd.reload();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(api.state(), state);
    assert!(
        routerd.stop(),
        "routerd did not exit cleanly:\n{}",
        routerd.log_text()
    );
    assert!(!socket.exists(), "routerd left its socket behind");
}

#[test]
fn a_stale_socket_is_replaced_and_a_missing_routerd_is_reported() {
    router_tests::require_root();
    let tag = unique("apis");
    let dir = TempDir::new(&tag);
    let socket = dir.0.join("routerd.sock");
    // A socket file nobody listens on, as a killed routerd leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let out = Command::new(routerctl())
        .arg("--socket")
        .arg(&socket)
        .args(["state"])
        .output()
        .expect("routerctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // routerd unreachable: exit code 5.
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr.starts_with(&format!(
            "routerctl: cannot reach routerd at {}: ",
            socket.display()
        )),
        "{stderr}"
    );
    // No routers: nothing to attach, only the socket.
    let config = dir.0.join("empty.toml");
    std::fs::write(&config, "").expect("config");
    let mut child = Command::new(routerd_path())
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("routerd");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let child = Kill(&mut child);
    wait_for(
        "routerd to serve the replaced socket",
        Duration::from_secs(5),
        || {
            Client::connect(&socket)
                .and_then(|mut c| c.call_line(r#"{"op":"show_state"}"#))
                .is_ok_and(|r| r.ok)
        },
    );
    assert_eq!(mode(&socket), 0o660);
    drop(child);
    assert!(!socket.exists(), "routerd left its socket behind");
}

// ---- Neutron's verbs -----------------------------------------------------------------

/// routerd started on any desired state (even one without routers), stopped on drop with
/// the fast paths it pinned removed.
struct Daemon {
    child: Option<std::process::Child>,
    config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, socket: &Path, log: &Path) -> Self {
        let child = Command::new(routerd_path())
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(socket)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("starting routerd");
        let mut me = Self {
            child: Some(child),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Served, and every router tried: the socket answers queries during the start
            // already (routers not tried yet are "starting") and refuses edits then.
            let served = Client::connect(socket)
                .and_then(|mut c| c.call_line(r#"{"op":"router_list"}"#))
                .is_ok_and(|r| {
                    r.ok && r
                        .result
                        .as_ref()
                        .and_then(|v| v.as_array())
                        .is_some_and(|l| {
                            l.iter()
                                .all(|router| router["starting"] != serde_json::json!(true))
                        })
                });
            if served {
                return me;
            }
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("routerd exited with {status}:\n{}", me.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "routerd did not serve its socket in time:\n{}",
                me.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn hup(&self) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        }
    }

    /// SIGTERM; whether it exited cleanly.
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut ok = false;
        wait_for("routerd to exit", Duration::from_secs(10), || {
            match child.try_wait() {
                Ok(Some(status)) => {
                    ok = status.success();
                    true
                }
                _ => false,
            }
        });
        ok
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for id in router_user::datapath::pinned_routers_of(&self.config) {
            let _ = router_user::datapath::teardown(&id);
            let _ = std::fs::remove_file(router_user::paths::router_info_file(&id));
            router_user::slowpath::forget(&id);
        }
    }
}

/// Whether `ip -n NS addr show dev IF` lists `addr`.
fn has_address(ns: &str, ifname: &str, addr: &str) -> bool {
    ip_out(ns, &["-o", "addr", "show", "dev", ifname]).contains(&format!(" {addr}/"))
}

/// A host in namespace `ns` on `eth0` with `addr` (and a default route via `gateway`).
fn host(ns: &str, addr: &str, gateway: Option<&str>) {
    ip(&["-n", ns, "link", "set", "eth0", "up"]);
    ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
    if let Some(gw) = gateway {
        ip(&["-n", ns, "route", "add", "default", "via", gw]);
    }
}

/// Whether `ping -c count` from `ns` gets answers, tried up to 5 times (a loaded machine
/// may miss one 2-second window; a real failure misses all).
fn reaches(ns: &str, dst: [u8; 4], count: u32) -> bool {
    (0..5).any(|_| ping(ns, dst, count))
}

/// Packets the fast path forwarded on the running router's interfaces, summed.
fn fast_path_forwarded(router: &str) -> u64 {
    router_user::stats::collect(Some(router))
        .map(|rows| rows.iter().map(|r| r.forwarded_packets).sum())
        .unwrap_or(0)
}

const EXT_HOST: [u8; 4] = [198, 18, 0, 1];
const VM_A: [u8; 4] = [10, 0, 1, 5];
const FIP_A: [u8; 4] = [198, 18, 0, 10];
const FIP_B: [u8; 4] = [198, 18, 0, 11];

/// The Neutron workflow from an empty routerd: router create, interface add, gateway set,
/// floating IPs, then back down to router delete. Traffic proves each step the VMs feel;
/// every kind of bad request is refused with the file and the routers unchanged; each verb
/// is idempotent with --may-exist / --if-exists.
#[test]
fn neutron_router_and_floating_ip_verbs() {
    router_tests::require_root();
    // The external host has no route to the internal subnets: only SNAT and floating IPs
    // reach it, and it reaches the VMs only through floating IPs. The router itself is
    // made through the API below.
    let topo = Builder::new("apiv")
        .external(
            "qg-v",
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
        .build();
    let (tag, router_ns) = (topo.tag.clone(), topo.router_ns.clone());
    let (ext_ns, vma_ns, vmb_ns) = (topo.ns("ext"), topo.ns("vma"), topo.ns("vmb"));
    let dir = TempDir::new(&tag);
    let config = dir.0.join("desired.toml");
    std::fs::write(&config, "").expect("empty desired state");
    let socket = dir.0.join("routerd.sock");
    let mut daemon = Daemon::start(&config, &socket, &dir.0.join("routerd.log"));
    let api = Api {
        socket: socket.clone(),
        config: config.clone(),
        router: tag.clone(),
        comments: Vec::new(),
    };
    let r = tag.as_str();
    let pins = router_user::paths::router_pin_dir(r);
    let info = router_user::paths::router_info_file(r);

    // ---- router create / list --------------------------------------------------------
    assert_eq!(api.query(json!({"op": "router_list"})), json!([]));
    let out = api.ctl_ok(&["router", "list"]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        [
            "ID",
            "NAMESPACE",
            "MODE",
            "INTERFACES",
            "GATEWAY",
            "FLOATING_IPS",
            "RUNNING"
        ],
        "{out}"
    );
    let missing_ns = format!("nons-{tag}");
    api.rejected(
        json!({"op": "router_create", "router": r, "namespace": missing_ns}),
        &format!(
            "router \"{r}\": namespace \"{missing_ns}\" does not exist (no /run/netns/{missing_ns}"
        ),
    );
    // XDP mode named: the default (auto) runs the TC entry alone on these veths, and the
    // delete below checks that the XDP program goes.
    let out = api.ctl_ok(&[
        "router",
        "create",
        "--router",
        r,
        "--namespace",
        &router_ns,
        "--mode",
        "xdp",
    ]);
    assert!(
        out.starts_with(&format!("applied: router(s) {r} (")),
        "{out}"
    );
    assert!(
        out.contains(" map and ") && out.contains(" kernel writes)"),
        "{out}"
    );
    api.assert_persisted();
    assert!(pins.is_dir() && info.exists(), "router {r} was not started");
    assert_eq!(
        api.query(json!({"op": "router_list"})),
        json!([{"id": r, "namespace": router_ns, "mode": "xdp", "interfaces": [],
                "gateway": null, "floating_ips": 0, "running": true, "start_error": null}])
    );
    let out = api.ctl_ok(&["router", "list"]);
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .expect("a row")
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [r, router_ns.as_str(), "xdp", "-", "-", "0", "yes"],
        "{out}"
    );
    let create = json!({"op": "router_create", "router": r, "namespace": router_ns, "mode": "xdp"});
    api.rejected(
        create.clone(),
        &format!("router \"{r}\" exists (namespace \"{router_ns}\", mode xdp) (use --may-exist)"),
    );
    let mut may = create.clone();
    may["may_exist"] = json!(true);
    api.unchanged(may);
    let out = api.ctl_ok(&[
        "router",
        "create",
        "--router",
        r,
        "--namespace",
        &router_ns,
        "--mode",
        "xdp",
        "--may-exist",
    ]);
    assert!(out.starts_with("unchanged"), "{out}");
    api.rejected(
        json!({"op": "router_create", "router": r, "namespace": router_ns, "mode": "tc", "may_exist": true}),
        "mode xdp): delete it first or choose another id",
    );
    api.rejected(
        json!({"op": "router_create", "router": format!("{r}x"), "namespace": router_ns}),
        &format!("namespace \"{router_ns}\" is used by router \"{r}\""),
    );
    api.rejected(
        json!({"op": "router_create", "router": format!("{r}x"), "namespace": ext_ns, "mode": "ebpf"}),
        ".mode = \"ebpf\": must be \"auto\", \"xdp\" or \"tc\"",
    );
    let e = api.ctl_exit(
        2,
        &[
            "router",
            "create",
            "--router",
            "bad id",
            "--namespace",
            ext_ns,
        ],
    );
    assert!(
        e.contains(".id = \"bad id\": must be 1-64 characters"),
        "{e}"
    );

    // ---- router interface add: a VM on the new subnet reaches the other --------------
    api.change(
        json!({"op": "router_interface_add", "router": r, "interface": "qr-a", "address": "10.0.1.1/24"}),
    );
    let out = api.ctl_ok(&[
        "router",
        "interface",
        "add",
        "--router",
        r,
        "--interface",
        "qr-b",
        "--address",
        "10.0.2.1/24",
    ]);
    assert!(out.starts_with(&format!("applied: router(s) {r}")), "{out}");
    api.assert_persisted();
    assert!(has_address(&router_ns, "qr-b", "10.0.2.1"));
    let forwarded = fast_path_forwarded(r);
    assert!(
        reaches(vmb_ns, VM_A, 3),
        "vm b does not reach vm a through the router"
    );
    assert!(
        fast_path_forwarded(r) > forwarded,
        "the fast path did not forward the pings"
    );
    let add_a = json!({"op": "router_interface_add", "router": r, "interface": "qr-a", "address": "10.0.1.1/24"});
    api.rejected(
        add_a.clone(),
        &format!(
            "interface qr-a with address 10.0.1.1/24 exists on router \"{r}\" (use --may-exist)"
        ),
    );
    let mut may = add_a;
    may["may_exist"] = json!(true);
    api.unchanged(may);
    let out = api.ctl_ok(&[
        "router",
        "interface",
        "add",
        "--router",
        r,
        "--interface",
        "qr-b",
        "--address",
        "10.0.2.1/24",
        "--may-exist",
    ]);
    assert!(out.starts_with("unchanged"), "{out}");
    api.rejected(
        json!({"op": "router_interface_add", "router": r, "interface": "qr-a", "address": "10.0.5.1/24", "may_exist": true}),
        &format!("router \"{r}\" has interface qr-a with address 10.0.1.1/24 already"),
    );
    api.rejected(
        json!({"op": "router_interface_add", "router": r, "interface": "qr-c", "address": "10.0.1.9/24"}),
        "interface[2].address = \"10.0.1.9/24\": subnet 10.0.1.0/24 overlaps the subnet of interface qr-a",
    );
    api.rejected(
        json!({"op": "router_interface_add", "router": r, "interface": "qr-c", "address": "10.0.3.1"}),
        "interface[2].address = \"10.0.3.1\": not an IPv4 address with prefix length",
    );
    api.rejected(
        json!({"op": "router_interface_add", "router": "nope", "interface": "qr-c", "address": "10.0.3.1/24"}),
        "router \"nope\" does not exist",
    );
    // Missing in the namespace: routerd's own error, and everything as it was (the router
    // restarted on its previous state, adopting its fast path).
    let list = api.query(json!({"op": "router_list"}));
    let show = api.query(json!({"op": "router_show", "router": r}));
    let e = api.rejected(
        json!({"op": "router_interface_add", "router": r, "interface": "qr-x", "address": "10.0.3.1/24"}),
        &format!("router {r}: interface qr-x does not exist in namespace {router_ns}"),
    );
    assert!(
        e.contains("nothing changed") && e.contains("as before"),
        "{e}"
    );
    assert_eq!(api.query(json!({"op": "router_list"})), list);
    assert_eq!(api.query(json!({"op": "router_show", "router": r})), show);
    assert!(!ip_out(&router_ns, &["-o", "addr"]).contains("10.0.3.1"));
    assert!(reaches(vmb_ns, VM_A, 1), "the router stopped forwarding");
    // Applying failed and was rolled back: exit code 1.
    let e = api.ctl_exit(
        1,
        &[
            "router",
            "interface",
            "add",
            "--router",
            r,
            "--interface",
            "qr-x",
            "--address",
            "10.0.3.1/24",
        ],
    );
    assert!(
        e.starts_with(&format!(
            "routerctl: router {r}: interface qr-x does not exist in namespace"
        )),
        "{e}"
    );

    // ---- router gateway set: SNAT to the external host --------------------------------
    let set = json!({"op": "router_gateway_set", "router": r, "interface": "qg-v",
        "address": "198.18.0.2/24", "nexthop": "198.18.0.1"});
    api.change(set.clone());
    assert!(has_address(&router_ns, "qg-v", "198.18.0.2"));
    assert!(
        reaches(vma_ns, EXT_HOST, 2),
        "vm a does not reach the external host (SNAT)"
    );
    api.unchanged(set.clone());
    let gateway_args = |snat: &str| {
        let mut args = vec![
            "router",
            "gateway",
            "set",
            "--router",
            r,
            "--interface",
            "qg-v",
            "--address",
            "198.18.0.2/24",
            "--nexthop",
            "198.18.0.1",
        ];
        args.push(snat);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args = gateway_args("--no-snat");
    let out = api.ctl_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();
    assert!(
        !ping(vma_ns, EXT_HOST, 1),
        "without SNAT the external host cannot answer"
    );
    let args = gateway_args("--snat");
    let out = api.ctl_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.starts_with("applied"), "{out}");
    assert!(reaches(vma_ns, EXT_HOST, 1), "SNAT is back");
    let mut bad = set.clone();
    bad["nexthop"] = json!("192.0.2.1");
    api.rejected(
        bad,
        "gateway.nexthop = \"192.0.2.1\": must be another host on the gateway subnet 198.18.0.0/24",
    );
    let mut bad = set.clone();
    bad["interface"] = json!("qr-a");
    api.rejected(
        bad,
        &format!("interface qr-a is an internal interface of router \"{r}\""),
    );
    let mut bad = set.clone();
    bad["address"] = json!("10.0.2.200/16");
    bad["nexthop"] = json!("10.0.0.1");
    api.rejected(bad, "overlaps the subnet of");
    api.rejected(
        json!({"op": "router_interface_add", "router": r, "interface": "qg-v", "address": "10.0.3.1/24"}),
        &format!("interface qg-v is the gateway interface of router \"{r}\""),
    );

    // ---- floating IPs: the external host reaches the VMs -----------------------------
    assert!(
        !ping(ext_ns, FIP_A, 1),
        "198.18.0.10 answered before it existed"
    );
    let out = api.ctl_ok(&[
        "fip",
        "create",
        "--router",
        r,
        "--address",
        "198.18.0.10",
        "--fixed",
        "10.0.1.5",
    ]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();
    assert!(
        reaches(ext_ns, FIP_A, 3),
        "the external host does not reach vm a's floating IP"
    );
    let fips: Value = api.ctl_items("floating_ips", &["--json", "fip", "list", r]);
    let fip = &fips[0];
    assert_eq!(
        (&fip["router"], &fip["address"], &fip["fixed"]),
        (&json!(r), &json!("198.18.0.10"), &json!("10.0.1.5")),
        "{fips}"
    );
    for key in ["in_packets", "out_packets"] {
        assert!(fip[key].as_u64().is_some_and(|n| n >= 1), "{key}: {fips}");
    }
    assert!(fip["in_bytes"].as_u64().is_some_and(|n| n >= 84), "{fips}");
    let out = api.ctl_ok(&["fip", "list"]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "ROUTER",
            "FLOATING_IP",
            "FIXED_IP",
            "IN_PKTS",
            "IN_BYTES",
            "OUT_PKTS",
            "OUT_BYTES"
        ]
    );
    assert_eq!(lines[1][..3], [r, "198.18.0.10", "10.0.1.5"], "{out}");
    let fip_a =
        json!({"op": "fip_create", "router": r, "address": "198.18.0.10", "fixed": "10.0.1.5"});
    api.rejected(
        fip_a.clone(),
        &format!("floating IP 198.18.0.10 is already associated with 10.0.1.5 on router \"{r}\" (use --may-exist)"),
    );
    let mut may = fip_a;
    may["may_exist"] = json!(true);
    api.unchanged(may);
    for (request, expected) in [
        (
            json!({"op": "fip_create", "router": r, "address": "198.18.0.10", "fixed": "10.0.2.5", "may_exist": true}),
            format!("floating IP 198.18.0.10 is already associated with 10.0.1.5 on router \"{r}\" (disassociate it first)"),
        ),
        (
            json!({"op": "fip_create", "router": r, "address": "198.18.0.12", "fixed": "10.0.1.5"}),
            format!("fixed IP 10.0.1.5 already has floating IP 198.18.0.10 on router \"{r}\""),
        ),
        (
            json!({"op": "fip_create", "router": r, "address": "198.19.0.10", "fixed": "10.0.1.6"}),
            "floating_ip[1].address = \"198.19.0.10\": is in no external subnet of this router (198.18.0.0/24)".into(),
        ),
        (
            json!({"op": "fip_create", "router": r, "address": "198.18.0.12", "fixed": "10.0.9.6"}),
            "floating_ip[1].fixed = \"10.0.9.6\": is on no internal subnet of this router".into(),
        ),
        (
            json!({"op": "fip_create", "router": r, "address": "198.18.0.12", "fixed": "10.0.1.255"}),
            "floating_ip[1].fixed = \"10.0.1.255\": is not a VM address".into(),
        ),
        (
            json!({"op": "fip_create", "router": "nope", "address": "198.18.0.12", "fixed": "10.0.1.6"}),
            "router \"nope\" does not exist".into(),
        ),
        (
            json!({"op": "fip_list", "router": "nope"}),
            "router \"nope\" does not exist".into(),
        ),
        (
            json!({"op": "fip_create", "router": r, "address": "198.18.0.12"}),
            "missing field `fixed`".into(),
        ),
    ] {
        api.rejected(request, &expected);
    }
    let e = api.ctl_exit(
        4,
        &[
            "fip",
            "associate",
            "--router",
            r,
            "--address",
            "198.18.0.10",
            "--fixed",
            "10.0.1.6",
        ],
    );
    assert!(
        e.starts_with("routerctl: floating IP 198.18.0.10 is already associated with 10.0.1.5"),
        "{e}"
    );
    // associate creates (a floating IP exists only associated).
    let out = api.ctl_ok(&[
        "fip",
        "associate",
        "--router",
        r,
        "--address",
        "198.18.0.11",
        "--fixed",
        "10.0.2.5",
    ]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();
    assert!(
        reaches(ext_ns, FIP_B, 2),
        "the external host does not reach vm b's floating IP"
    );
    let assoc =
        json!({"op": "fip_associate", "router": r, "address": "198.18.0.11", "fixed": "10.0.2.5"});
    api.rejected(assoc.clone(), "is already associated with 10.0.2.5");
    let mut may = assoc;
    may["may_exist"] = json!(true);
    api.unchanged(may);

    // ---- router show: everything, in the documented shape ----------------------------
    let show = api.query(json!({"op": "router_show", "router": r}));
    let mut keys: Vec<&str> = show
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "external_subnets",
            "firewall",
            "floating_ips",
            "gateway",
            "id",
            "interfaces",
            "mode",
            "namespace",
            "nat",
            "routes",
            "rules",
            "running",
            "start_error",
            "tables"
        ]
    );
    assert_eq!(
        (&show["id"], &show["running"], &show["mode"]),
        (&json!(r), &json!(true), &json!("xdp"))
    );
    let names: Vec<&str> = show["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| i["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["qr-a", "qr-b"]);
    for i in show["interfaces"].as_array().expect("interfaces") {
        assert!(i["ifindex"].is_u64() && i["xdp_egress"].is_boolean(), "{i}");
    }
    assert_eq!(show["interfaces"][1]["subnet"], "10.0.2.0/24");
    assert_eq!(
        (
            &show["gateway"]["interface"],
            &show["gateway"]["address"],
            &show["gateway"]["nexthop"],
            &show["gateway"]["snat"]
        ),
        (
            &json!("qg-v"),
            &json!("198.18.0.2/24"),
            &json!("198.18.0.1"),
            &json!(true)
        )
    );
    assert!(show["gateway"]["ifindex"].is_u64());
    assert_eq!(
        show["external_subnets"],
        json!([{"subnet": "198.18.0.0/24", "address": "198.18.0.2/24", "nexthop": "198.18.0.1"}])
    );
    assert_eq!(show["floating_ips"].as_array().map(Vec::len), Some(2));
    assert!(
        show["floating_ips"][0]["in_packets"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    );
    assert_eq!(
        show["firewall"],
        json!({"enabled": false, "default": null, "rules": 0, "steering": null})
    );
    assert_eq!(
        (&show["routes"], &show["rules"], &show["tables"]),
        (&json!([]), &json!([]), &json!([]))
    );
    assert_eq!(show["nat"]["snat_ports"], "1024-64511");
    let out = api.ctl_ok(&["router", "show", "--router", r]);
    assert!(
        out.starts_with(&format!(
            "router {r}: namespace {router_ns}, mode xdp, running\nINTERFACE"
        )),
        "{out}"
    );
    assert!(
        out.contains("gateway: qg-v 198.18.0.2/24 via 198.18.0.1, snat on"),
        "{out}"
    );
    assert!(out.contains("firewall: none; steering: none"), "{out}");

    // ---- what depends on an interface or the gateway keeps it -------------------------
    api.rejected(
        json!({"op": "router_interface_remove", "router": r, "interface": "qr-b"}),
        &format!("router \"{r}\" still uses interface qr-b: invalid configuration: router[0] (id \"{r}\").floating_ip[1].fixed = \"10.0.2.5\""),
    );
    api.rejected(
        json!({"op": "router_gateway_clear", "router": r}),
        &format!("router \"{r}\" still uses its gateway: invalid configuration: router[0] (id \"{r}\").floating_ip[0].address"),
    );

    // ---- disassociate and delete -------------------------------------------------------
    let out = api.ctl_ok(&[
        "fip",
        "disassociate",
        "--router",
        r,
        "--address",
        "198.18.0.11",
    ]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();
    assert!(!ping(ext_ns, FIP_B, 1), "198.18.0.11 still answers");
    api.rejected(
        json!({"op": "fip_disassociate", "router": r, "address": "198.18.0.11"}),
        &format!("router \"{r}\" has no floating IP 198.18.0.11"),
    );
    api.unchanged(
        json!({"op": "fip_disassociate", "router": r, "address": "198.18.0.11", "if_exists": true}),
    );
    api.change(json!({"op": "fip_delete", "router": r, "address": "198.18.0.10"}));
    let out = api.ctl_ok(&[
        "fip",
        "delete",
        "--router",
        r,
        "--address",
        "198.18.0.10",
        "--if-exists",
    ]);
    assert!(out.starts_with("unchanged"), "{out}");
    api.rejected(
        json!({"op": "fip_delete", "router": r, "address": "198.18.0.10"}),
        "has no floating IP 198.18.0.10",
    );
    assert_eq!(api.query(json!({"op": "fip_list"})), json!([]));

    // ---- gateway clear, interface remove ----------------------------------------------
    let out = api.ctl_ok(&["router", "gateway", "clear", "--router", r]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_persisted();
    assert!(!has_address(&router_ns, "qg-v", "198.18.0.2"));
    api.rejected(
        json!({"op": "router_gateway_clear", "router": r}),
        &format!("router \"{r}\" has no gateway"),
    );
    api.unchanged(json!({"op": "router_gateway_clear", "router": r, "if_exists": true}));
    let out = api.ctl_ok(&[
        "router",
        "interface",
        "remove",
        "--router",
        r,
        "--interface",
        "qr-b",
    ]);
    assert!(out.starts_with("applied"), "{out}");
    api.assert_folded();
    assert!(!has_address(&router_ns, "qr-b", "10.0.2.1"));
    api.rejected(
        json!({"op": "router_interface_remove", "router": r, "interface": "qr-b"}),
        &format!("router \"{r}\" has no interface qr-b"),
    );
    api.unchanged(json!({"op": "router_interface_remove", "router": r, "interface": "qr-b", "if_exists": true}));
    assert_eq!(
        api.query(json!({"op": "router_list"}))[0]["interfaces"],
        json!(["qr-a"])
    );

    // ---- router delete: detached, pins gone --------------------------------------------
    assert!(pins.is_dir());
    assert!(
        ip_out(&router_ns, &["link", "show", "qr-a"]).contains("xdp"),
        "no XDP program on qr-a before the delete"
    );
    let out = api.ctl_ok(&["router", "delete", "--router", r]);
    assert!(out.starts_with(&format!("applied: router(s) {r}")), "{out}");
    api.assert_persisted();
    assert!(!pins.exists(), "{} is still there", pins.display());
    assert!(!info.exists(), "{} is still there", info.display());
    assert!(
        !ip_out(&router_ns, &["link", "show", "qr-a"]).contains("xdp"),
        "an XDP program is still attached to qr-a"
    );
    assert_eq!(api.query(json!({"op": "router_list"})), json!([]));
    api.settle();
    assert_eq!(std::fs::read_to_string(&config).expect("file"), "");
    api.rejected(
        json!({"op": "router_delete", "router": r}),
        &format!("router \"{r}\" does not exist"),
    );
    let out = api.ctl_ok(&["router", "delete", "--router", r, "--if-exists"]);
    assert!(out.starts_with("unchanged"), "{out}");
    assert!(
        daemon.stop(),
        "routerd did not exit cleanly:\n{}",
        daemon.log_text()
    );
}

/// Two routers: an apply reports the writes of the router that changed, the same file
/// again writes nothing (API and SIGHUP); a change that fails for one router (an interface
/// missing in its namespace) is rolled back for both, file and fast path.
#[test]
fn apply_counts_writes_and_a_failed_change_is_rolled_back() {
    router_tests::require_root();
    let tag = unique("apiw");
    let dir = TempDir::new(&tag);
    let mut namespaces = Namespaces::default();
    let r1_ns = namespaces.add(&format!("qrouter-{tag}a"));
    let r2_ns = namespaces.add(&format!("qrouter-{tag}b"));
    let ext_ns = namespaces.add(&format!("ext-{tag}"));
    let vma_ns = namespaces.add(&format!("vma-{tag}"));
    let vmc_ns = namespaces.add(&format!("vmc-{tag}"));
    veth("qg-w", &r1_ns, "eth0", &ext_ns);
    veth("qr-a", &r1_ns, "eth0", &vma_ns);
    veth("qr-c", &r2_ns, "eth0", &vmc_ns);
    host(&ext_ns, "198.18.0.1/24", None);
    host(&vma_ns, "10.0.1.5/24", Some("10.0.1.1"));
    host(&vmc_ns, "10.0.7.5/24", Some("10.0.7.1"));
    let (r1, r2) = (format!("{tag}a"), format!("{tag}b"));
    let config = dir.0.join("desired.toml");
    let r1_text = format!(
        r#"[[router]]
id = "{r1}"
namespace = "{r1_ns}"
mode = "tc"

[router.gateway]
interface = "qg-w"
address = "198.18.0.2/24"
nexthop = "198.18.0.1"

[[router.interface]]
name = "qr-a"
address = "10.0.1.1/24"
"#
    );
    let r2_text = format!(
        r#"[[router]]
id = "{r2}"
namespace = "{r2_ns}"
mode = "tc"

[[router.interface]]
name = "qr-c"
address = "10.0.7.1/24"
"#
    );
    let base = format!("{r1_text}\n{r2_text}");
    std::fs::write(&config, &base).expect("config");
    let socket = dir.0.join("routerd.sock");
    let daemon = Daemon::start(&config, &socket, &dir.0.join("routerd.log"));
    let api = Api {
        socket: socket.clone(),
        config: config.clone(),
        router: r1.clone(),
        comments: Vec::new(),
    };
    let running: Vec<Value> = api
        .query(json!({"op": "router_list"}))
        .as_array()
        .expect("list")
        .iter()
        .map(|x| x["running"].clone())
        .collect();
    assert_eq!(running, [json!(true), json!(true)]);

    // ---- a floating IP for r1: its writes, and none for r2 ----------------------------
    let fip_file = dir.0.join("fip.toml");
    let text = format!(
        "{r1_text}\n[[router.floating_ip]]\naddress = \"198.18.0.10\"\nfixed = \"10.0.1.5\"\n\n{r2_text}"
    );
    std::fs::write(&fip_file, &text).expect("fip file");
    let f = fip_file.to_str().expect("path");
    let unchanged_logs = |id: &str| {
        daemon
            .log_text()
            .matches(&format!("router {id} unchanged, nothing written"))
            .count()
    };
    let r2_before = unchanged_logs(&r2);
    let first: Value = api.ctl_items("change", &["--output", "json", "apply", f]);
    assert_eq!(
        (&first["changed_routers"], &first["unchanged"]),
        (&json!([r1]), &json!(false)),
        "{first}"
    );
    // FIP_BY_ADDRESS and FIP_BY_FIXED (counted as 2; its counters are created with them),
    // the filter in front of them (FIP_FILTER), and one nftables transaction for the slow
    // path's map elements.
    assert_eq!(first["writes"], json!({"map": 3, "kernel": 1}), "{first}");
    assert_eq!(unchanged_logs(&r2), r2_before + 1, "r2 was touched");
    api.assert_folded();
    assert!(
        reaches(&ext_ns, FIP_A, 2),
        "the floating IP does not answer"
    );
    // The same file again: nothing to write, nothing written.
    api.settle();
    let (bytes, mtime) = (api.file(), api.modified());
    let second: Value = api.ctl_items("change", &["--output", "json", "apply", f]);
    assert_eq!(
        second,
        json!({"changed_routers": [], "unchanged": true, "writes": {"map": 0, "kernel": 0}})
    );
    let out = api.ctl_ok(&["apply", f]);
    assert_eq!(out, "unchanged: already as asked, nothing written\n");
    assert_eq!((api.file(), api.modified()), (bytes.clone(), mtime));
    // SIGHUP re-reads the same state: each router unchanged, nothing written.
    let (r1_seen, r2_seen) = (unchanged_logs(&r1), unchanged_logs(&r2));
    daemon.hup();
    wait_for("the reload after SIGHUP", Duration::from_secs(5), || {
        unchanged_logs(&r1) > r1_seen && unchanged_logs(&r2) > r2_seen
    });

    // ---- a change that fails for r2 is undone for r1 too ------------------------------
    let state = api.state();
    let fast_path_fips = |id: &str| -> Vec<String> {
        router_user::stats::collect_nat(Some(id))
            .expect("r1's NAT maps")
            .floating_ips
            .iter()
            .map(|f| f.floating_ip.to_string())
            .collect()
    };
    assert_eq!(fast_path_fips(&r1), ["198.18.0.10"]);
    let bad = state
        .replace(
            "[[router.floating_ip]]",
            "[[router.floating_ip]]\naddress = \"198.18.0.11\"\nfixed = \"10.0.1.6\"\n\n[[router.floating_ip]]",
        )
        + "\n[[router.interface]]\nname = \"qr-gone\"\naddress = \"10.0.8.1/24\"\n";
    // The extra interface lands in the last router, r2.
    let bad_file = dir.0.join("bad.toml");
    std::fs::write(&bad_file, &bad).expect("bad file");
    let parsed = router_user::config::DesiredState::parse(&bad).expect("a valid file");
    assert_eq!(parsed.routers[0].floating_ips.len(), 2);
    assert_eq!(parsed.routers[1].interfaces.len(), 2);
    let list = api.query(json!({"op": "router_list"}));
    let e = api.rejected(
        json!({"op": "apply", "text": bad}),
        &format!("router {r2}: interface qr-gone does not exist in namespace {r2_ns}"),
    );
    assert!(e.contains("nothing changed"), "{e}");
    assert_eq!(api.file(), bytes, "the file was not restored byte for byte");
    assert_eq!(api.query(json!({"op": "router_list"})), list);
    assert_eq!(
        fast_path_fips(&r1),
        ["198.18.0.10"],
        "r1's change was not undone"
    );
    let nft = || {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &r1_ns,
                    "nft",
                    "list",
                    "map",
                    "ip",
                    "neutron_router",
                    "fip_dnat",
                ])
                .output()
                .expect("nft")
                .stdout,
        )
        .into_owned()
    };
    // The kernel's element of the floating IP taken back goes shortly after the answer
    // (deleting one waits for an RCU grace period, which no answer waits for).
    wait_for(
        "the slow path's element taken back",
        Duration::from_secs(3),
        || {
            let nft = nft();
            nft.contains("198.18.0.10") && !nft.contains("198.18.0.11")
        },
    );
    assert!(!has_address(&r2_ns, "qr-c", "10.0.8.1"));
    assert!(reaches(&ext_ns, FIP_A, 1), "r1 stopped translating");
    // r1 had taken the change before r2 failed, and gave it back.
    let log = daemon.log_text();
    let failed_at = log.find("applying failed").expect("the failure logged");
    assert!(
        log[..failed_at].contains(&format!("router {r1}: applied new desired state"))
            && log[failed_at..].contains(&format!("router {r1}: applied new desired state"))
            && log[failed_at..].contains("previous state restored"),
        "{log}"
    );
}
