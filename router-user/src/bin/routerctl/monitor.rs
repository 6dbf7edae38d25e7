//! `routerctl monitor`: dropped and passed packets, live.

use std::time::{Duration, Instant};

use router_user::{Error, monitor::Monitor};

#[derive(clap::Args)]
pub struct Args {
    /// Only this router.
    #[arg(long)]
    router: Option<String>,
    /// Only these reasons (names as `routerctl stats` shows them), repeatable.
    #[arg(long)]
    reason: Vec<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
}

pub fn run(args: Args) -> Result<(), Error> {
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
            if args.json {
                let text = serde_json::to_string(&e)
                    .map_err(|e| Error::io("encoding JSON", std::io::Error::other(e)))?;
                println!("{text}");
            } else {
                println!(
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
                );
            }
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
