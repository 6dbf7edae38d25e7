use router_user::{
    conntrack::{self, Session, Tuple},
    maps::{Pinned, Rooms as _},
    stats,
};
use serde::Serialize;

use crate::output::{Failure, Output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Sessions with their translation, state, age and counters (JSON: the document
    /// `sessions`).
    List {
        /// Only this router (its id); default: every running router.
        router: Option<String>,
    },
    /// Removes every session of a router (established flows get new ones, possibly other
    /// ports); of every running router with --all.
    Flush {
        /// The router (its id); without one, --all is required.
        router: Option<String>,
        /// Every running router (required when no router is named).
        #[arg(long, conflicts_with = "router")]
        all: bool,
    },
}

#[derive(Serialize)]
struct Row {
    router: String,
    #[serde(flatten)]
    session: Session,
}

pub fn run(output: &Output, command: Command) -> Result<(), Failure> {
    match command {
        Command::List { router } => list(output, router.as_deref()),
        Command::Flush { router, all } => flush(router.as_deref(), all),
    }
}

fn list(output: &Output, only: Option<&str>) -> Result<(), Failure> {
    crate::output::note_stale(only);
    let mut rows = Vec::new();
    for info in stats::selected_routers(only)? {
        let timeouts = conntrack::running_timeouts(&info.router);
        let now = conntrack::monotonic_ns();
        for session in Pinned::open(&info.router)?
            .sessions()
            .list(now, &timeouts)?
        {
            rows.push(Row {
                router: info.router.clone(),
                session,
            });
        }
    }
    output.print("sessions", &rows, || table(&rows))
}

/// Flushes one router's sessions, or with `all` every running router's: a router that
/// fails is reported and the others flushed (then a partial failure).
fn flush(only: Option<&str>, all: bool) -> Result<(), Failure> {
    if only.is_none() && !all {
        // Flushing every router resets every translated flow on the node: only when asked.
        return Err(Failure::Usage(
            "ct flush: name a router, or give --all to flush every running router".into(),
        ));
    }
    let mut failed = Vec::new();
    for info in stats::selected_routers(only)? {
        let flushed = Pinned::open(&info.router).and_then(|mut maps| maps.sessions().flush());
        match flushed {
            Ok(removed) => println!("router {}: {removed} session(s) removed", info.router),
            Err(e) if only.is_some() => return Err(e.into()),
            Err(e) => {
                eprintln!("routerctl: router {}: {e}", info.router);
                failed.push(info.router.clone());
            }
        }
    }
    if !failed.is_empty() {
        return Err(Failure::Partial(format!(
            "ct flush: failed for router(s) {}",
            failed.join(", ")
        )));
    }
    Ok(())
}

fn table(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|Row { router, session: s }| {
            vec![
                router.clone(),
                s.proto.to_string(),
                s.zone.to_string(),
                s.kind.to_string(),
                s.state.to_string(),
                tuple(&s.proto, &s.original),
                tuple(&s.proto, &s.translated),
                s.age_secs.to_string(),
                s.idle_secs.to_string(),
                s.expires_in_secs.to_string(),
                format!("{}/{}", s.original_packets, s.reply_packets),
                format!("{}/{}", s.original_bytes, s.reply_bytes),
            ]
        })
        .collect();
    crate::output::table(
        &[
            "ROUTER",
            "PROTO",
            "ZONE",
            "KIND",
            "STATE",
            "ORIGINAL",
            "TRANSLATED",
            "AGE",
            "IDLE",
            "EXPIRES",
            "PACKETS(ORIG/REP)",
            "BYTES(ORIG/REP)",
        ],
        &cells,
    )
}

fn tuple(proto: &str, t: &Tuple) -> String {
    if proto == "icmp" {
        format!("{} > {} id={}", t.src, t.dst, t.sport)
    } else {
        format!("{}:{} > {}:{}", t.src, t.sport, t.dst, t.dport)
    }
}
