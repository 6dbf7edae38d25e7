//! `routerctl`: the operator's command line. One file per subcommand.

mod ct;
mod nat;
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
    /// Sessions of the fast path (default SNAT and hairpin): list, flush.
    #[command(subcommand)]
    Ct(ct::Command),
    /// Floating IPs and the SNAT gateway with their counters.
    #[command(subcommand)]
    Nat(nat::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Stats(args) => stats::run(args),
        Command::Ct(command) => ct::run(command),
        Command::Nat(command) => nat::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routerctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
