//! `routerctl --etcd URL node list`: the nodes of a cluster that follows etcd
//! (`docs/etcd.md`), read from etcd itself (no routerd is asked).

use router_user::cluster::{NodeView, RunState};

use crate::output::{Failure, Output, table};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Every node etcd knows: alive (its lease is renewed) or down (a placement names it
    /// but it has no record), what it runs, and what is placed on it but does not run.
    List,
}

/// Where the cluster's state is: `--etcd` and `--etcd-prefix`.
pub struct Store<'a> {
    pub endpoints: Option<&'a [String]>,
    pub credentials: &'a router_user::cluster::Credentials,
    pub prefix: &'a str,
}

pub fn run(output: &Output, store: Store<'_>, command: Command) -> Result<(), Failure> {
    let Some(endpoints) = store.endpoints.filter(|e| !e.is_empty()) else {
        return Err(Failure::Usage(
            "node verbs read etcd: give --etcd URL[,URL...]".into(),
        ));
    };
    match command {
        Command::List => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| router_user::Error::io("building the runtime", e))?;
            let nodes = runtime.block_on(router_user::cluster::nodes(
                endpoints,
                store.credentials,
                store.prefix,
            ))?;
            output.print("nodes", &nodes, || list(&nodes))
        }
    }
}

fn list(nodes: &[NodeView]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            // Placed here but not running: waiting (with its error), or not reported yet.
            let not_running: Vec<String> = n
                .placed
                .iter()
                .filter(|(id, _)| !n.running.contains(id))
                .map(|(id, status)| match status {
                    Some(s) if s.state == RunState::Waiting => match &s.error {
                        Some(e) => format!("{id} (waiting: {e})"),
                        None => format!("{id} (waiting)"),
                    },
                    Some(_) => id.clone(),
                    None => format!("{id} (no status)"),
                })
                .collect();
            vec![
                n.node.clone(),
                if n.alive { "alive" } else { "down" }.into(),
                n.lease_left.map_or_else(|| "-".into(), |s| format!("{s}s")),
                n.version.clone().unwrap_or_else(|| "-".into()),
                n.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                dash_if_empty(&n.running),
                dash_if_empty(&not_running),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "STATE",
            "LEASE",
            "VERSION",
            "PID",
            "RUNNING",
            "NOT_RUNNING",
        ],
        &rows,
    )
}

fn dash_if_empty(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}
