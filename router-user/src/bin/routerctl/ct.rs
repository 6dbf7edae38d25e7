use router_user::{
    Error,
    conntrack::{self, Session, Tuple},
    maps::{Pinned, Rooms as _},
    stats,
};
use serde::Serialize;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Sessions with their translation, state, age and counters.
    List {
        /// Only this router.
        #[arg(long)]
        router: Option<String>,
        /// Machine-readable output (a JSON array).
        #[arg(long)]
        json: bool,
    },
    /// Removes every session (established flows get new ones, possibly other ports).
    Flush {
        /// Only this router.
        #[arg(long)]
        router: Option<String>,
    },
}

#[derive(Serialize)]
struct Row {
    router: String,
    #[serde(flatten)]
    session: Session,
}

pub fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::List { router, json } => list(router.as_deref(), json),
        Command::Flush { router } => flush(router.as_deref()),
    }
}

fn list(only: Option<&str>, json: bool) -> Result<(), Error> {
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
    if json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Error::io("encoding JSON", std::io::Error::other(e)))?;
        println!("{text}");
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

fn flush(only: Option<&str>) -> Result<(), Error> {
    for info in stats::selected_routers(only)? {
        let removed = Pinned::open(&info.router)?.sessions().flush()?;
        println!("router {}: {removed} session(s) removed", info.router);
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
