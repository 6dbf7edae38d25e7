//! `routerctl monitor [ROUTER]`: dropped and passed packets, live, from routerd (which
//! alone reads the routers' event rings and hands every monitor every event).

use std::time::{Duration, Instant};

use router_user::api::{Client, MonitorLine};

use crate::output::{Api, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// Only this router (its id); default: every running router.
    router: Option<String>,
    /// Only these reasons (names as `routerctl stats` shows them), repeatable.
    #[arg(long)]
    reason: Vec<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
}

/// Prints events as they come: a line of text each, or with `-f json` one document
/// `monitor_event` per line. Events this monitor lost because it read too slowly are
/// counted on stderr.
pub fn run(api: &Api, args: Args) -> Result<(), Failure> {
    let output = &api.output;
    let mut stream = Client::connect_within(&api.socket, api.timeout)?.monitor(args.router)?;
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs_f64(s));
    let mut shown = 0;
    loop {
        let wait = deadline.map_or(Duration::from_millis(500), |d| {
            d.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500))
        });
        match stream.next(wait)? {
            Some(MonitorLine::Event(e))
                if args.reason.is_empty() || args.reason.contains(&e.reason) =>
            {
                output.line("monitor_event", &e, || {
                    format!(
                        "{:>12.6} {} {} {} {} proto {} {} -> {} {} bytes",
                        e.ts_ns as f64 / 1e9,
                        e.router,
                        e.interface,
                        e.verdict,
                        e.reason,
                        e.protocol,
                        e.source,
                        e.destination,
                        e.bytes
                    )
                })?;
                shown += 1;
                if args.count.is_some_and(|c| shown >= c) {
                    return Ok(());
                }
            }
            Some(MonitorLine::Dropped(n)) => {
                eprintln!(
                    "routerctl: monitor: {n} event(s) lost: this monitor read more slowly than they came"
                );
            }
            Some(MonitorLine::Event(_)) | None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
    }
}
