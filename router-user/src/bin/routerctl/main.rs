//! `routerctl`: the operator's command line. One file per subcommand.
//!
//! `stats`, `ct` and `nat` read the running routers' pinned maps; `apply`, `state`,
//! `router`, `fip`, `route`, `rule` and `fw` talk to routerd over its API socket
//! (`docs/api.md`).

mod apply;
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

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "routerctl",
    version = router_user::version::long(),
    about = "eBPF fast path for Neutron-style routers: the command line"
)]
struct Cli {
    /// routerd's API socket.
    #[arg(long, global = true, default_value = router_user::paths::API_SOCKET)]
    socket: PathBuf,
    /// Output of the API verbs (apply, state, router, fip, route, rule, fw): aligned
    /// columns, or the result as JSON.
    #[arg(long, global = true, value_enum, default_value_t = output::Output::Table)]
    output: output::Output,
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
    /// reason; --json for one object per line).
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
    router_user::generate::exit_if_asked(<Cli as clap::CommandFactory>::command);
    let cli = Cli::parse();
    let api = output::Api {
        socket: cli.socket,
        output: cli.output,
    };
    let result = match cli.command {
        Command::Stats(args) => stats::run(args),
        Command::Ct(command) => ct::run(command),
        Command::Nat(command) => nat::run(command),
        Command::Monitor(args) => monitor::run(args),
        Command::Apply(args) => apply::run(&api, args),
        Command::State => apply::show(&api),
        Command::Router(command) => router::run(&api, command),
        Command::Fip(command) => fip::run(&api, command),
        Command::Route(command) => route::run(&api, command),
        Command::Rule(command) => rule::run(&api, command),
        Command::Fw(command) => fw::run(&api, command),
        Command::Trace(args) => trace::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routerctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
