//! `routerctl`: the operator's command line. One file per subcommand.

mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "eBPF fast path for Neutron-style routers: the command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Counters of every attached interface (forwarded, passed to the kernel, dropped, by reason).
    Stats(stats::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Stats(args) => stats::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routerctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
