//! `routerctl monitor [ROUTER]`: dropped and passed packets, live.

use std::time::{Duration, Instant};

use router_user::monitor::Monitor;

use crate::output::{Failure, Output};

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
/// `monitor_event` per line.
pub fn run(output: &Output, args: Args) -> Result<(), Failure> {
    let mut monitor = Monitor::open(args.router.as_deref())?;
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs_f64(s));
    let mut refreshed = Instant::now();
    let mut shown = 0;
    loop {
        for e in monitor.drain() {
            if !args.reason.is_empty() && !args.reason.contains(&e.reason) {
                continue;
            }
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
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        if refreshed.elapsed() >= Duration::from_secs(1) {
            monitor.refresh()?;
            refreshed = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
