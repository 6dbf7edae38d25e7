//! The edit verbs through etcd (`routerctl --etcd URL ...`): each plans its change from one
//! read of the cluster's desired state, writes it in one transaction guarded by everything
//! it read (a concurrent edit is a `conflict`, exit code 4, and nothing is written), and
//! with `--wait` waits until the nodes hosting it report it applied (exit code 8 if they do
//! not within `--timeout`). `docs/etcd.md` says what each writes.

use std::time::{Duration, Instant};

use router_user::{
    Error,
    api::Request,
    cluster::{
        Keys,
        sync::{Snapshot, connect},
        wait,
        write::{self, Change, Cloud, Written},
    },
};
use serde::Serialize;

use crate::output::{Failure, Output};

/// Where and how the edit verbs write with `--etcd`.
pub struct Writer {
    pub endpoints: Vec<String>,
    /// TLS files for https:// endpoints.
    pub credentials: router_user::cluster::Credentials,
    pub keys: Keys,
    /// Wait until the nodes report the change applied (`--wait`).
    pub wait: bool,
    /// How long `--wait` waits (`--timeout`); `None`: as long as it takes.
    pub timeout: Option<Duration>,
    /// Plan from the store as of this revision instead of the latest (`--read-revision`).
    pub read_revision: Option<i64>,
}

/// What `-f json` prints for a change written to etcd.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    written: Written,
    /// The store's revision the change was planned from.
    read_revision: i64,
    /// With `--wait`: the nodes that reported it applied, and how long that took.
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<Applied>,
}

#[derive(Serialize)]
struct Applied {
    nodes: Vec<String>,
    seconds: f64,
}

impl Writer {
    fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("building the runtime", e))?)
    }

    /// Plans a change with `plan` from one read, writes it, and waits if asked.
    fn write(
        &self,
        output: &Output,
        plan: impl FnOnce(&Snapshot, &Keys) -> Result<Change, Error>,
    ) -> Result<(), Failure> {
        Self::runtime()?.block_on(async {
            let mut client = connect(&self.endpoints, &self.credentials).await?;
            let snapshot = write::read(&mut client, &self.keys, self.read_revision).await?;
            let change = plan(&snapshot, &self.keys)?;
            let written = write::commit(&mut client, &self.keys, &change).await?;
            let applied = if self.wait && !written.unchanged {
                let started = Instant::now();
                wait::applied(
                    &mut client,
                    &self.keys,
                    &written,
                    &change.targets,
                    self.timeout,
                )
                .await?;
                let mut nodes: Vec<String> = change
                    .targets
                    .values()
                    .flat_map(|m| m.before.iter().chain(&m.after).cloned())
                    .collect();
                nodes.sort();
                nodes.dedup();
                Some(Applied {
                    nodes,
                    seconds: started.elapsed().as_secs_f64(),
                })
            } else {
                None
            };
            print(
                output,
                &Report {
                    written,
                    read_revision: change.read_revision,
                    applied,
                },
            )
        })
    }

    /// An edit verb's request (planned as routerd plans it, on the router as stored); `node`
    /// places the router there too.
    pub fn edit(
        &self,
        output: &Output,
        request: &Request,
        node: Option<&str>,
    ) -> Result<(), Failure> {
        self.write(output, |snapshot, keys| {
            write::plan_request(snapshot, keys, request, node)
        })
    }

    /// `router move ROUTER --node N`.
    pub fn move_router(
        &self,
        output: &Output,
        router: &str,
        nodes: &[String],
    ) -> Result<(), Failure> {
        self.write(output, |snapshot, keys| {
            write::plan_move(snapshot, keys, router, nodes)
        })
    }

    /// `apply FILE`: the store made the file's cloud, in one transaction.
    pub fn apply(&self, output: &Output, cloud: &Cloud) -> Result<(), Failure> {
        self.write(output, |snapshot, keys| {
            write::plan_apply(snapshot, keys, cloud)
        })
    }

    /// `import neutron --etcd`: `state`'s routers stored (the others left alone), placed
    /// on `node` if given.
    pub fn merge(
        &self,
        output: &Output,
        state: &router_user::config::DesiredState,
        node: Option<&str>,
    ) -> Result<(), Failure> {
        self.write(output, |snapshot, keys| {
            write::plan_merge(snapshot, keys, state, node)
        })
    }

    /// `state`: the cloud as stored, as a file `apply` takes.
    pub fn state(&self, output: &Output) -> Result<(), Failure> {
        Self::runtime()?.block_on(async {
            let mut client = connect(&self.endpoints, &self.credentials).await?;
            let snapshot = write::read(&mut client, &self.keys, self.read_revision).await?;
            let (cloud, refused) = Cloud::of(&snapshot);
            let mut text = format!("# etcd revision {}\n", snapshot.revision);
            for (id, problem) in &refused {
                text.push_str(&format!("# not shown: {problem}\n"));
                eprintln!("routerctl: router {id} not shown: {problem}");
            }
            text.push_str(&cloud.to_toml());
            output.print(
                "state",
                &serde_json::json!({"text": text, "revision": snapshot.revision}),
                || text.clone(),
            )
        })
    }
}

/// What `router switchover` prints.
#[derive(Serialize)]
struct Handed {
    router: String,
    from: String,
    to: String,
    epoch: i64,
    seconds: f64,
}

/// How long `router switchover` waits for a standby to take over.
const SWITCHOVER_WAIT: Duration = Duration::from_secs(10);

impl Writer {
    /// `router switchover ROUTER [--to NODE]`: asks the active node of an HA router to hand
    /// it over (to `to`, or any connected standby) and waits until another node holds it.
    pub fn switchover(
        &self,
        output: &Output,
        router: &str,
        to: Option<&str>,
    ) -> Result<(), Failure> {
        use router_user::{
            api::{ApiError, ErrorCode},
            cluster::{HaHolder, Switchover},
        };
        Self::runtime()?.block_on(async {
            let mut client = connect(&self.endpoints, &self.credentials).await?;
            let holder_key = self.keys.holder(router);
            let read = |client: &mut etcd_client::Client| {
                let mut client = client.clone();
                let key = holder_key.clone();
                async move {
                    let response = client
                        .get(key, None)
                        .await
                        .map_err(|e| Error::etcd("reading the router's active node", e))?;
                    Ok::<_, Error>(response.kvs().first().and_then(|kv| {
                        HaHolder::from_json(kv.value())
                            .ok()
                            .map(|h| (h, kv.mod_revision()))
                    }))
                }
            };
            let Some((from, epoch)) = read(&mut client).await? else {
                return Err(Error::Api(ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "router {router} has no active node: it is not placed on several nodes, \
                         or none of them runs routerd --ha-listen"
                    ),
                ))
                .into());
            };
            if to == Some(from.node.as_str()) {
                return Err(Failure::Usage(format!(
                    "router {router} is active on {} already",
                    from.node
                )));
            }
            let request = Switchover {
                epoch,
                to: to.map(String::from),
            };
            let request_key = self.keys.switchover(router);
            client
                .put(request_key.as_str(), request.to_json(), None)
                .await
                .map_err(|e| Error::etcd("writing the switchover request", e))?;
            let started = Instant::now();
            let taken = loop {
                match read(&mut client).await? {
                    Some((h, e)) if e != epoch => break Some((h, e)),
                    _ if started.elapsed() > SWITCHOVER_WAIT => break None,
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            // Done or not, the request goes: its epoch makes it stale anyway.
            let _ = client.delete(request_key.as_str(), None).await;
            let Some((now, new_epoch)) = taken else {
                return Err(Error::Api(ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "no standby of router {router} took over within {} s (is one connected \
                         to {}? routerctl router show {router} on it says)",
                        SWITCHOVER_WAIT.as_secs(),
                        from.node
                    ),
                ))
                .into());
            };
            let handed = Handed {
                router: router.to_string(),
                from: from.node,
                to: now.node,
                epoch: new_epoch,
                seconds: started.elapsed().as_secs_f64(),
            };
            output.print("switchover", &handed, || {
                format!(
                    "router {}: active on {} (epoch {}) after {:.3} s; was {}\n",
                    handed.router, handed.to, handed.epoch, handed.seconds, handed.from
                )
            })
        })
    }
}

fn print(output: &Output, report: &Report) -> Result<(), Failure> {
    output.print("change", report, || {
        let w = &report.written;
        let mut text = if w.unchanged {
            format!(
                "unchanged: etcd already as asked at revision {}, nothing written\n",
                w.revision
            )
        } else {
            format!(
                "written to etcd at revision {}: router(s) {}\n",
                w.revision,
                w.changed_routers.join(", ")
            )
        };
        if let Some(a) = &report.applied {
            text.push_str(&format!(
                "applied on node(s) {} in {:.3} s\n",
                if a.nodes.is_empty() {
                    "-".to_string()
                } else {
                    a.nodes.join(", ")
                },
                a.seconds
            ));
        }
        text
    })
}
