//! `routerctl`: the operator's command line. One file per subcommand.
//!
//! `stats`, `ct`, `nat`, `monitor` and `trace` read the running routers' pinned maps;
//! `apply`, `state`, `router`, `fip`, `route`, `rule` and `fw` talk to routerd over its API
//! socket (`docs/api.md`). Every verb prints a table (`-f table`, `-c` to pick columns) or
//! one JSON document `{"kind", "version", "items"}` (`-f json`), and exits with a code
//! saying what kind of failure it met ([`output::EXIT_CODES_HELP`]).

mod apply;
mod args;
mod ct;
mod fip;
mod fw;
mod monitor;
mod nat;
mod output;
mod route;
mod router;
mod rule;
mod stats;
mod trace;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::output::{Failure, Format, Output};

#[derive(Parser)]
#[command(
    version,
    about = "eBPF fast path for Neutron-style routers: the command line",
    after_help = output::EXIT_CODES_HELP
)]
struct Cli {
    /// routerd's API socket.
    #[arg(long, global = true, default_value = router_user::paths::API_SOCKET)]
    socket: PathBuf,
    /// Output format of every verb: aligned columns, or one JSON document
    /// {"kind": ..., "version": 1, "items": ...} (`--output` is the same).
    #[arg(
        short = 'f',
        long = "format",
        visible_alias = "output",
        global = true,
        value_enum,
        default_value_t = Format::Table
    )]
    format: Format,
    /// The same as `-f json`.
    #[arg(long, global = true, hide = true)]
    json: bool,
    /// A column to show (its header, any case), repeatable, in this order; default: all.
    #[arg(short = 'c', long = "column", value_name = "COLUMN", global = true)]
    columns: Vec<String>,
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
    /// Packets the fast path drops or hands to the kernel, live (filter by router and
    /// reason; -f json for one document per line).
    Monitor(monitor::Args),
    /// Replaces the whole desired state with a file (checked whole; nothing changes if
    /// it is invalid).
    Apply(apply::Args),
    /// The desired state routerd runs, as a file.
    State,
    /// Routers: create, delete, list, show, interfaces, gateway (Neutron's router verbs).
    #[command(subcommand)]
    Router(router::Command),
    /// Floating IPs: create, delete, list, associate, disassociate.
    #[command(subcommand)]
    Fip(fip::Command),
    /// Static routes of a router: add, del, list.
    #[command(subcommand)]
    Route(route::Command),
    /// Policy rules of a router: add, del, list.
    #[command(subcommand)]
    Rule(rule::Command),
    /// The firewall: rules, default policy, steering.
    #[command(subcommand)]
    Fw(fw::Command),
    /// One made-up packet through a router's real programs, changing nothing (ovn-trace).
    Trace(trace::Args),
}

fn main() -> std::process::ExitCode {
    let args = args::router_flag_as_positional(std::env::args_os().collect(), &Cli::command());
    let cli = Cli::parse_from(args);
    let output = Output {
        format: if cli.json { Format::Json } else { cli.format },
        columns: cli.columns,
    };
    let result = run(cli.command, cli.socket, output);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routerctl: {e}");
            if let Failure::Error(router_user::Error::Api(a)) = &e {
                match &a.object {
                    Some(object) => eprintln!("routerctl: error code {} ({object})", a.code),
                    None => eprintln!("routerctl: error code {}", a.code),
                }
            }
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

fn run(command: Command, socket: PathBuf, output: Output) -> Result<(), Failure> {
    let api = output::Api { socket, output };
    let output = &api.output;
    match command {
        Command::Stats(args) => stats::run(output, args),
        Command::Ct(command) => ct::run(output, command),
        Command::Nat(command) => nat::run(output, command),
        Command::Monitor(args) => monitor::run(output, args),
        Command::Apply(args) => apply::run(&api, args),
        Command::State => apply::show(&api),
        Command::Router(command) => router::run(&api, command),
        Command::Fip(command) => fip::run(&api, command),
        Command::Route(command) => route::run(&api, command),
        Command::Rule(command) => rule::run(&api, command),
        Command::Fw(command) => fw::run(&api, command),
        Command::Trace(args) => trace::run(output, args),
    }
}
