//! A real etcd for tests, and routerd nodes that follow it.
//!
//! - [`Etcd`]: the `etcd` binary (Debian's etcd-server, installed by `cargo xtask setup`)
//!   on loopback ports chosen free for the run, with a data directory of its own under
//!   /tmp; killed and its directory removed on drop. It can be killed (-9) and started
//!   again on the same ports and data. Writes and reads go through the etcd-client crate,
//!   the same client routerd uses, with helpers that put routers and placements in the
//!   layout of `docs/etcd.md`.
//! - [`Node`]: a `routerd --etcd ... --node NAME` with its own pin root, run directory,
//!   state directory and API socket, so several run side by side on one machine. Dropping
//!   it stops the daemon and removes the fast paths it pinned (`routerd --teardown --all`
//!   on its pin root) and its directories. Drop a node before the namespaces of its routers
//!   (make the topologies first): a running routerd binds a namespace deleted under its
//!   router again.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use etcd_client::{Client, GetOptions};
use router_user::{
    cluster::{Credentials, Keys, Placement, RouterStatus},
    config::Router,
};

use crate::{pki::Pki, routerd::routerd_path, topo::unique};

/// A loopback port nothing listens on now (bound and released), never handed out before
/// in this process: the kernel may give a released port again at once, and two members of
/// one etcd (or two tests running side by side) must not get the same one. A clash with
/// another process in the moment between is unlikely and fails the start loudly.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

/// One etcd process of an [`Etcd`].
struct Member {
    name: String,
    /// Clients connect with TLS (`https://`).
    https: bool,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Member {
    fn endpoint(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// etcd on loopback, one member or several (see the module docs).
pub struct Etcd {
    members: Vec<Member>,
    dir: PathBuf,
    /// With TLS: the certificates, and the credentials the harness acts with (etcd's root
    /// user once auth is on).
    pki: Option<(Pki, Credentials)>,
    runtime: tokio::runtime::Runtime,
    pub keys: Keys,
}

impl Etcd {
    /// Starts a one-member etcd and waits until it answers (up to 15 s).
    pub fn start() -> Self {
        Self::start_cluster(1)
    }

    /// Starts an etcd cluster of `size` members and waits until it answers (up to 15 s).
    pub fn start_cluster(size: usize) -> Self {
        let mut me = Self::new(size, false);
        for i in 0..size {
            me.spawn(i);
        }
        me.wait_answers();
        me
    }

    /// Starts a one-member etcd that requires TLS and a client certificate
    /// (`--client-cert-auth`: a certificate's common name is the etcd user), with auth on:
    /// user `root` (the harness), user `operator` (reads everything, writes routers and
    /// placements), and per node in `nodes` a user of its name that reads everything and
    /// writes only its own record and statuses (`docs/etcd.md`, "Security").
    pub fn start_secure(nodes: &[String]) -> Self {
        let mut me = Self::new(1, true);
        let pki = Pki::new(&me.dir.join("pki"));
        let root = pki.client("root");
        me.pki = Some((pki, root));
        me.spawn(0);
        me.wait_answers();
        let keys = me.keys.clone();
        let mut client = me.client().expect("connecting to etcd");
        let runtime = &me.runtime;
        let run = |what: &str, result: Result<(), etcd_client::Error>| {
            result.unwrap_or_else(|e| panic!("etcd auth setup: {what}: {e}"));
        };
        use etcd_client::{Permission, UserAddOptions};
        let user = |client: &mut Client, name: &str, role: &str, grants: Vec<Permission>| {
            runtime.block_on(async {
                let no_password = Some(UserAddOptions::new().with_no_pwd());
                client.user_add(name, "", no_password).await?;
                if role != "root" {
                    client.role_add(role).await?;
                    for grant in grants {
                        client.role_grant_permission(role, grant).await?;
                    }
                }
                client.user_grant_role(name, role).await.map(|_| ())
            })
        };
        run("user root", user(&mut client, "root", "root", vec![]));
        let everything = || Permission::read(keys.all()).with_prefix();
        run(
            "user operator",
            user(
                &mut client,
                "operator",
                "operator",
                vec![
                    everything(),
                    Permission::read_write(keys.routers()).with_prefix(),
                    Permission::read_write(keys.placements()).with_prefix(),
                ],
            ),
        );
        for node in nodes {
            let grants = vec![
                everything(),
                Permission::read_write(keys.node(node)),
                Permission::read_write(keys.statuses_of(node)).with_prefix(),
            ];
            run(
                node,
                user(&mut client, node, &format!("node-{node}"), grants),
            );
        }
        run(
            "enabling auth",
            runtime.block_on(client.auth_enable()).map(|_| ()),
        );
        me
    }

    /// The credentials of etcd user `user` (a client certificate with its name).
    pub fn credentials(&self, user: &str) -> Credentials {
        match &self.pki {
            Some((pki, _)) => pki.client(user),
            None => Credentials::default(),
        }
    }

    fn new(size: usize, https: bool) -> Self {
        crate::require_root();
        let name = unique("etcd");
        let dir = std::env::temp_dir().join(format!("{name}.d"));
        std::fs::create_dir_all(&dir).expect("etcd's directory");
        let members = (0..size)
            .map(|i| Member {
                name: format!("{name}-{i}"),
                https,
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        Self {
            members,
            dir,
            pki: None,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the etcd client"),
            keys: Keys::new(router_user::cluster::DEFAULT_PREFIX),
        }
    }

    /// The client URLs of the members, comma-separated (as `routerd --etcd` takes them).
    pub fn endpoint(&self) -> String {
        self.endpoints().join(",")
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    fn spawn(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer()))
            .collect();
        let member = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", member.name)))
            .expect("etcd's log");
        let mut command = Command::new("etcd");
        if let Some((pki, _)) = &self.pki {
            command
                .arg("--cert-file")
                .arg(pki.path("server.crt"))
                .arg("--key-file")
                .arg(pki.path("server.key"))
                .arg("--trusted-ca-file")
                .arg(pki.path("ca.crt"))
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(self.dir.join(&member.name))
            .args(["--listen-client-urls", &member.endpoint()])
            .args(["--advertise-client-urls", &member.endpoint()])
            .args(["--listen-peer-urls", &member.peer()])
            .args(["--initial-advertise-peer-urls", &member.peer()])
            .args(["--initial-cluster", &cluster.join(",")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting etcd: {e} (installed by `cargo xtask setup`)"));
        self.members[i].child = Some(child);
    }

    fn wait_answers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.try_revision().is_some() {
                return;
            }
            let exited = self.members.iter_mut().find_map(|m| {
                let status = m.child.as_mut()?.try_wait().ok().flatten()?;
                Some(format!("etcd {} exited with {status}", m.name))
            });
            if let Some(exited) = exited {
                panic!("{exited}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer in 15 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of the first member (while it runs): its CPU time and memory in
    /// /proc for the benchmarks.
    pub fn pid(&self) -> Option<u32> {
        self.members.first()?.child.as_ref().map(Child::id)
    }

    /// Every member's log.
    pub fn log_text(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(self.dir.join(format!("{}.log", m.name)));
                format!("--- {} ---\n{}", m.name, log.unwrap_or_default())
            })
            .collect()
    }

    /// `kill -9` of every member: etcd is gone at once (its connections close).
    pub fn kill9(&mut self) {
        for member in &mut self.members {
            member.kill9();
        }
    }

    /// Starts every member killed again, on the same ports and data, and waits until etcd
    /// answers.
    pub fn restart(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_answers();
    }

    /// Kills (-9) the member that leads the cluster now; returns its client URL.
    pub fn kill9_leader(&mut self) -> String {
        let leader = self
            .members
            .iter()
            .position(|m| {
                let Ok(mut client) = self.client_of(&[m.endpoint()]) else {
                    return false;
                };
                self.runtime
                    .block_on(client.status())
                    .is_ok_and(|s| s.header().is_some_and(|h| h.member_id() == s.leader()))
            })
            .expect("a member leads the cluster");
        self.members[leader].kill9();
        self.members[leader].endpoint()
    }

    fn client(&self) -> Result<Client, etcd_client::Error> {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::endpoint)
            .collect();
        self.client_of(&live)
    }

    fn client_of(&self, endpoints: &[String]) -> Result<Client, etcd_client::Error> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(5));
        if let Some((_, root)) = &self.pki {
            options = root
                .apply(options)
                .map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?;
        }
        self.runtime
            .block_on(Client::connect(endpoints, Some(options)))
    }

    fn try_revision(&self) -> Option<i64> {
        let mut client = self.client().ok()?;
        let response = self.runtime.block_on(client.get("/", None)).ok()?;
        response.header().map(|h| h.revision())
    }

    /// Puts `value` at `key` as etcd user `user` (its client certificate): the revision,
    /// or etcd's refusal.
    pub fn put_as(&self, user: &str, key: &str, value: &str) -> Result<i64, String> {
        let options = self
            .credentials(user)
            .apply(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        self.runtime.block_on(async {
            let mut client = Client::connect(self.endpoints(), Some(options))
                .await
                .map_err(|e| e.to_string())?;
            let response = client
                .put(key, value, None)
                .await
                .map_err(|e| e.to_string())?;
            Ok(response.header().map_or(0, |h| h.revision()))
        })
    }

    /// The store's revision now.
    pub fn revision(&self) -> i64 {
        self.try_revision().expect("etcd answers")
    }

    /// Puts `value` at `key`; returns the revision of the write.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let mut client = self.client().expect("connecting to etcd");
        let response = self
            .runtime
            .block_on(client.put(key, value, None))
            .unwrap_or_else(|e| panic!("etcd put {key}: {e}"));
        response.header().map_or(0, |h| h.revision())
    }

    /// Puts every `(key, value)` in one transaction (one revision, one watch response);
    /// returns its revision.
    pub fn put_all(&self, pairs: &[(String, String)]) -> i64 {
        let ops: Vec<etcd_client::TxnOp> = pairs
            .iter()
            .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        let mut client = self.client().expect("connecting to etcd");
        let response = self
            .runtime
            .block_on(client.txn(etcd_client::Txn::new().and_then(ops)))
            .unwrap_or_else(|e| panic!("etcd transaction: {e}"));
        response.header().map_or(0, |h| h.revision())
    }

    pub fn delete(&self, key: &str) -> i64 {
        let mut client = self.client().expect("connecting to etcd");
        let response = self
            .runtime
            .block_on(client.delete(key, None))
            .unwrap_or_else(|e| panic!("etcd delete {key}: {e}"));
        response.header().map_or(0, |h| h.revision())
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        self.get_prefix_of(key, false).into_values().next()
    }

    /// Every key under `prefix` with its value.
    pub fn get_prefix(&self, prefix: &str) -> BTreeMap<String, String> {
        self.get_prefix_of(prefix, true)
    }

    fn get_prefix_of(&self, key: &str, prefix: bool) -> BTreeMap<String, String> {
        let mut client = self.client().expect("connecting to etcd");
        let options = prefix.then(|| GetOptions::new().with_prefix());
        let response = self
            .runtime
            .block_on(client.get(key, options))
            .unwrap_or_else(|e| panic!("etcd get {key}: {e}"));
        response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    }

    /// Compacts the history up to the current revision (a watch from before it is
    /// cancelled as compacted). Returns the revision.
    pub fn compact(&self) -> i64 {
        let revision = self.revision();
        let mut client = self.client().expect("connecting to etcd");
        self.runtime
            .block_on(client.compact(revision, None))
            .unwrap_or_else(|e| panic!("etcd compact {revision}: {e}"));
        revision
    }

    /// Puts `router`'s desired state (its JSON form); returns the revision.
    pub fn put_router(&self, router: &Router) -> i64 {
        self.put(&self.keys.router(&router.id), &router.to_json())
    }

    /// Places router `id` on `nodes`; returns the revision.
    pub fn place(&self, id: &str, nodes: &[&str]) -> i64 {
        let placement = Placement {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        };
        self.put(&self.keys.placement(id), &placement.to_json())
    }

    /// What `node` reports for router `id`.
    pub fn status(&self, node: &str, id: &str) -> Option<RouterStatus> {
        self.get(&self.keys.status(node, id))
            .and_then(|v| serde_json::from_str(&v).ok())
    }

    /// Waits until `node` reports router `id` running at `revision` or later.
    pub fn wait_running(&self, node: &str, id: &str, revision: i64, timeout: Duration) {
        let mut last = None;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            last = self.status(node, id);
            if last.as_ref().is_some_and(|s| {
                s.revision >= revision && s.state == router_user::cluster::RunState::Running
            }) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node {node} does not report {id} running at revision {revision}: {last:?}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A routerd node following etcd (see the module docs).
pub struct Node {
    pub name: String,
    child: Option<Child>,
    endpoints: String,
    pub pin_root: PathBuf,
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
    stopped: bool,
    /// More arguments for routerd (`--etcd-cert ...`).
    extra: Vec<String>,
    /// More environment for routerd (`ROUTERD_NETNS_PREFIX`).
    envs: Vec<(String, String)>,
    /// Following a desired-state file instead of etcd (`routerd --config FILE --node NAME`).
    config: Option<PathBuf>,
}

impl Node {
    /// Starts `routerd --etcd ENDPOINTS --node <name>` (a unique name made of `name`), and
    /// waits until its API answers.
    pub fn start(endpoints: &str, name: &str) -> Self {
        Self::start_as(endpoints, &unique(name), &[])
    }

    /// Starts `routerd --etcd ENDPOINTS --node NAME EXTRA...` with `name` as it is (unique
    /// already), and waits until its API answers.
    pub fn start_as(endpoints: &str, name: &str, extra: &[String]) -> Self {
        Self::start_with(endpoints, name, extra, &[])
    }

    /// As [`Node::start_as`], with more environment for routerd.
    pub fn start_with(
        endpoints: &str,
        name: &str,
        extra: &[String],
        envs: &[(&str, &str)],
    ) -> Self {
        let name = name.to_string();
        let tmp = std::env::temp_dir();
        let mut node = Self {
            pin_root: Path::new(router_user::paths::BPFFS).join(format!("nr-{name}")),
            run_dir: tmp.join(format!("{name}.run")),
            state_dir: tmp.join(format!("{name}.state")),
            socket: tmp.join(format!("{name}.sock")),
            log: tmp.join(format!("{name}.log")),
            name,
            child: None,
            endpoints: endpoints.to_string(),
            stopped: false,
            extra: extra.to_vec(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            config: None,
        };
        node.spawn_until("API on");
        node
    }

    /// As [`Node::start_with`], following the desired-state file `config` instead of etcd
    /// (`routerd --config FILE --node NAME EXTRA...`).
    pub fn start_file(config: &Path, name: &str, extra: &[String], envs: &[(&str, &str)]) -> Self {
        let mut extra = extra.to_vec();
        extra.extend(["--config".to_string(), config.display().to_string()]);
        let tmp = std::env::temp_dir();
        let name = name.to_string();
        let mut node = Self {
            pin_root: Path::new(router_user::paths::BPFFS).join(format!("nr-{name}")),
            run_dir: tmp.join(format!("{name}.run")),
            state_dir: tmp.join(format!("{name}.state")),
            socket: tmp.join(format!("{name}.sock")),
            log: tmp.join(format!("{name}.log")),
            name,
            child: None,
            endpoints: String::new(),
            stopped: false,
            extra,
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            config: Some(config.to_path_buf()),
        };
        node.spawn_until("API on");
        node
    }

    /// The environment that points routerd and routerctl at this node's paths.
    pub fn env(&self) -> [(&'static str, &Path); 4] {
        use router_user::paths::*;
        [
            (PIN_ROOT_ENV, &self.pin_root),
            (RUN_DIR_ENV, &self.run_dir),
            (STATE_DIR_ENV, &self.state_dir),
            (API_SOCKET_ENV, &self.socket),
        ]
    }

    /// Starts routerd and waits until its log (of this start) says `marker`.
    fn spawn_until(&mut self, marker: &str) {
        // The log is appended to across restarts: this start's lines are after `skip`.
        let skip = self.log_text().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("routerd log file");
        let bin = routerd_path();
        let source: &[&str] = if self.config.is_some() {
            &[]
        } else {
            &["--etcd", &self.endpoints]
        };
        let child = Command::new(&bin)
            .args(source)
            .args(["--node", &self.name])
            .args(&self.extra)
            .envs(self.env())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        self.child = Some(child);
        self.stopped = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log_since(skip).contains(marker) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "routerd {} exited with {status}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "routerd {} did not start:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `routerctl ARGS` against this node: its paths and the rest of its environment
    /// (a namespace prefix), as an operator on that node would.
    pub fn routerctl(&self, args: &[&str]) -> std::process::Output {
        let routerctl = routerd_path().with_file_name("routerctl");
        Command::new(&routerctl)
            .args(args)
            .envs(self.env())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", routerctl.display()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// `kill -9`: the daemon dies at once; its fast paths stay pinned and forwarding.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts routerd again on the same paths (after [`Node::kill9`]) and waits until its
    /// API answers.
    pub fn restart(&mut self) {
        self.restart_until("API on");
    }

    /// As [`Node::restart`], waiting until the new routerd's log says `marker` instead.
    pub fn restart_until(&mut self, marker: &str) {
        assert!(self.child.is_none(), "routerd {} still runs", self.name);
        self.spawn_until(marker);
    }

    /// SIGSTOP: the process stays but does nothing (its lease is not renewed).
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
    }

    /// Whether router `id` runs here (routerd wrote its info file).
    pub fn runs(&self, id: &str) -> bool {
        self.run_dir.join(format!("{id}.json")).exists()
    }

    /// Whether router `id` has pins here.
    pub fn pinned(&self, id: &str) -> bool {
        self.pin_root.join(id).exists()
    }

    pub fn wait_runs(&self, id: &str, timeout: Duration) {
        let what = format!("router {id} to run on {}", self.name);
        wait_until(&what, timeout, || self.runs(id), || self.log_text());
    }

    /// The floating IPs in router `id`'s fast path here (floating -> fixed).
    pub fn floating_ips(&self, id: &str) -> BTreeMap<[u8; 4], [u8; 4]> {
        use router_user::maps::{Pinned, Rooms as _};
        let mut maps = Pinned::open_in(&self.pin_root, id)
            .unwrap_or_else(|e| panic!("router {id} on {}: {e}", self.name));
        maps.nat()
            .floating_ips()
            .unwrap_or_else(|e| panic!("router {id} on {}: {e}", self.name))
    }

    /// The log lines after the first `skip` bytes.
    pub fn log_since(&self, skip: usize) -> String {
        let log = self.log_text();
        log.get(skip..).unwrap_or_default().to_string()
    }
}

/// As [`wait_for`], with `context()` (a log) in the message on timeout.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}:\n{}",
        context()
    );
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.stopped {
            self.resume();
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let mut exited = false;
            wait_for_quietly(Duration::from_secs(5), || {
                exited = matches!(child.try_wait(), Ok(Some(_)));
                exited
            });
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Every router pinned under this node's root, removed by routerd itself.
        let _ = Command::new(routerd_path())
            .args(["--teardown", "--all"])
            .envs(self.env())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.log);
    }
}

fn wait_for_quietly(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !cond() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `routerctl --etcd ENDPOINT node list -f json`: the nodes' items.
pub fn node_list(endpoint: &str) -> Vec<serde_json::Value> {
    try_node_list(endpoint).unwrap_or_else(|e| panic!("routerctl node list: {e}"))
}

/// As [`node_list`], or routerctl's error (etcd may refuse a read while it elects a
/// leader).
pub fn try_node_list(endpoint: &str) -> Result<Vec<serde_json::Value>, String> {
    let routerctl = routerd_path().with_file_name("routerctl");
    let out = Command::new(&routerctl)
        .args(["--etcd", endpoint, "node", "list", "-f", "json"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", routerctl.display()));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("routerctl prints JSON");
    assert_eq!(doc["kind"], "nodes");
    Ok(doc["items"].as_array().cloned().unwrap_or_default())
}

/// Runs `routerctl ARGS` (the build's own) and returns what it did.
pub fn routerctl(args: &[&str]) -> std::process::Output {
    let routerctl = routerd_path().with_file_name("routerctl");
    Command::new(&routerctl)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", routerctl.display()))
}
