//! routerd's API socket against a real routerd running a router in real namespaces:
//! permissions, every verb of routes, rules, the firewall and steering (through the JSON
//! protocol and through routerctl), idempotence, rejected requests that change nothing, and
//! the desired-state file kept equal to the state routerd runs.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, SystemTime},
};

use router_tests::{
    routerd::{Routerd, routerd_path},
    topo::{Namespaces, ip, unique, veth},
    traffic::wait_for,
};
use router_user::api::{Client, Response};
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
            result,
            json!({"changed_routers": [self.router], "unchanged": false}),
            "{request}"
        );
        self.assert_persisted();
    }

    /// A mutation asking for what already is: success, and nothing written.
    fn unchanged(&self, request: Value) {
        let (before, mtime) = (self.file(), self.modified());
        let r = self.send(request.clone());
        assert!(r.ok, "{request} failed: {r:?}");
        assert_eq!(
            r.result.expect("result"),
            json!({"changed_routers": [], "unchanged": true}),
            "{request}"
        );
        assert_eq!(self.file(), before, "{request} rewrote the file");
        assert_eq!(self.modified(), mtime, "{request} wrote the file");
    }

    /// A rejected request: an error containing `expected`, nothing changed.
    fn rejected_line(&self, line: &str, expected: &str) -> String {
        let (before, state) = (self.file(), self.state());
        let r = self.send_line(line);
        assert!(!r.ok, "{line} was accepted: {r:?}");
        let error = r.error.expect("an error message");
        assert!(
            error.contains(expected),
            "{line}: error {error:?} does not say {expected:?}"
        );
        assert_eq!(self.file(), before, "{line} changed the file");
        assert_eq!(self.state(), state, "{line} changed the state");
        error
    }

    fn rejected(&self, request: Value, expected: &str) -> String {
        self.rejected_line(&request.to_string(), expected)
    }

    fn assert_persisted(&self) {
        let file = String::from_utf8(self.file()).expect("UTF-8");
        assert_eq!(file, self.state(), "the file is not the state routerd runs");
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
            r#"# written by the test; routerd rewrites it on the first change
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
name = "qr-b"
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
    let json_out: Value =
        serde_json::from_str(&api.ctl_ok(&["--output", "json", "route", "list", "--router", r]))
            .expect("JSON");
    assert_eq!(json_out.as_array().map(Vec::len), Some(3));
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
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
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
    let first: Value =
        serde_json::from_str(&api.ctl_ok(&["--output", "json", "apply", "-f", file_arg]))
            .expect("JSON");
    assert_eq!(first, json!({"changed_routers": [r], "unchanged": false}));
    api.assert_persisted();
    let second: Value =
        serde_json::from_str(&api.ctl_ok(&["--output", "json", "apply", "-f", file_arg]))
            .expect("JSON");
    assert_eq!(second, json!({"changed_routers": [], "unchanged": true}));
    let out = api.ctl_ok(&["apply", "-f", file_arg]);
    assert!(out.starts_with("unchanged"), "{out}");
    std::fs::write(&file, "[[router]]\nid = \"x\"\n").expect("writing");
    let out = api.ctl(&["apply", "-f", file_arg]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("routerctl: invalid configuration"),
        "{stderr}"
    );
    api.assert_persisted();
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
    assert_eq!(out.status.code(), Some(1));
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
