//! `routerd --config FILE`: applies a desired state to the routers of this node and keeps
//! their fast paths running until SIGTERM or SIGINT, then detaches them cleanly. SIGHUP
//! re-reads the file and applies the difference (an invalid file changes nothing).

use std::path::PathBuf;

use clap::Parser;
use router_user::{config::DesiredState, router::RunningRouter};

#[derive(Parser)]
#[command(
    version,
    about = "eBPF fast path for Neutron-style routers: the daemon"
)]
struct Args {
    /// Desired state (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the file and exit without touching anything.
    #[arg(long)]
    check: bool,
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("routerd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), router_user::Error> {
    let state = DesiredState::load(&args.config)?;
    if args.check {
        println!(
            "{}: valid, {} router(s)",
            args.config.display(),
            state.routers.len()
        );
        return Ok(());
    }
    // Checked before anything is changed, like the configuration.
    if !router_user::paths::bpffs_mounted() {
        return Err(router_user::Error::NoBpffs(router_user::paths::BPFFS));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| router_user::Error::io("building the runtime", e))?;
    // Routers started so far are stopped (dropped) if a later one fails.
    let mut running = Vec::new();
    for router in state.routers {
        running.push(RunningRouter::start(router)?);
    }
    log::info!("routerd: {} router(s) running", running.len());
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| router_user::Error::io("SIGTERM handler", e))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| router_user::Error::io("SIGINT handler", e))?;
        let mut hup = signal(SignalKind::hangup())
            .map_err(|e| router_user::Error::io("SIGHUP handler", e))?;
        loop {
            tokio::select! {
                _ = term.recv() => { log::info!("routerd: SIGTERM, detaching"); break }
                _ = int.recv() => { log::info!("routerd: SIGINT, detaching"); break }
                _ = hup.recv() => match (std::time::Instant::now(), DesiredState::load(&args.config)) {
                    (started, Ok(new)) => reload(&mut running, new, started).await,
                    (_, Err(e)) => log::error!("routerd: SIGHUP: {e}; nothing changed"),
                },
            }
        }
        Ok::<(), router_user::Error>(())
    })?;
    for router in running {
        router.stop();
    }
    Ok(())
}

/// Brings the running routers to `new`: live changes where possible, a restart of one
/// router where not (a new interface, another mode), start and stop for added and removed
/// routers. A router that fails keeps running as it was.
/// `started`: when the file began to be read (the reload time reported includes parsing).
async fn reload(running: &mut Vec<RunningRouter>, new: DesiredState, started: std::time::Instant) {
    let mut kept = Vec::new();
    for mut router in std::mem::take(running) {
        match new.router(&router.desired.id).cloned() {
            None => {
                log::info!("routerd: router {} removed", router.desired.id);
                router.stop();
            }
            Some(wanted) if wanted == router.desired => {
                log::info!("routerd: router {} unchanged, nothing written", wanted.id);
                kept.push(router);
            }
            Some(wanted) if router.can_apply(&wanted) => {
                if let Err(e) = router.apply(wanted).await {
                    log::error!("routerd: {e}");
                }
                kept.push(router);
            }
            Some(wanted) => {
                log::info!(
                    "routerd: router {} restarts for its new interfaces",
                    wanted.id
                );
                let old = router.desired.clone();
                router.stop();
                match RunningRouter::start(wanted) {
                    Ok(r) => kept.push(r),
                    Err(e) => {
                        log::error!("routerd: {e}; restoring the previous state");
                        match RunningRouter::start(old) {
                            Ok(r) => kept.push(r),
                            Err(e) => log::error!("routerd: {e}"),
                        }
                    }
                }
            }
        }
    }
    for wanted in &new.routers {
        if !kept.iter().any(|r| r.desired.id == wanted.id) {
            match RunningRouter::start(wanted.clone()) {
                Ok(r) => kept.push(r),
                Err(e) => log::error!("routerd: {e}"),
            }
        }
    }
    *running = kept;
    log::info!(
        "routerd: reloaded in {} us; {} router(s) running",
        started.elapsed().as_micros(),
        running.len()
    );
}
