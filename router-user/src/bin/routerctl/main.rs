//! `routerctl`: the operator's command line. One file per subcommand.
//!
//! `stats`, `ct`, `nat` and `trace` read the running routers' pinned maps; `monitor`,
//! `apply`, `state`, `router`, `fip`, `route`, `rule` and `fw` talk to routerd over its API
//! socket (`docs/api.md`); `import` reads files only. Every verb prints a table (`-f table`, `-c` to pick columns) or
//! one JSON document `{"kind", "version", "items"}` (`-f json`), and exits with a code
//! saying what kind of failure it met ([`output::EXIT_CODES_HELP`]).

mod apply;
mod args;
mod ct;
mod etcd;
mod fip;
mod fw;
mod import;
mod monitor;
mod nat;
mod node;
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
    name = "routerctl",
    version = router_user::version::long(),
    about = "eBPF fast path for Neutron-style routers: the command line",
    after_help = output::EXIT_CODES_HELP
)]
struct Cli {
    /// routerd's API socket.
    #[arg(long, global = true, env = router_user::paths::API_SOCKET_ENV, default_value = router_user::paths::API_SOCKET)]
    socket: PathBuf,
    /// Seconds to wait for routerd's answer before giving up (exit code 7); 0: wait as
    /// long as it takes.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = router_user::api::DEFAULT_TIMEOUT.as_secs_f64())]
    timeout: f64,
    /// etcd endpoints, comma-separated: the cluster's desired state. `node` reads it; the
    /// edit verbs (`apply`, `router`, `fip`, `route`, `rule`, `fw`) write it there instead
    /// of to routerd, and `state` prints it (docs/etcd.md).
    #[arg(
        long,
        global = true,
        value_name = "URL[,URL...]",
        value_delimiter = ','
    )]
    etcd: Option<Vec<String>>,
    /// With --etcd: after writing, wait until every node hosting the change reports it
    /// applied, at most --timeout seconds (exit code 8 if not).
    #[arg(long, global = true, requires = "etcd")]
    wait: bool,
    /// With --etcd: plan the change from the desired state as it was at this etcd revision
    /// (as a review saw it); anything it reads that changed since is a conflict (exit code 4).
    #[arg(long, global = true, value_name = "REVISION", requires = "etcd")]
    read_revision: Option<i64>,
    /// The prefix of the cluster's keys in etcd.
    #[arg(long, global = true, value_name = "PREFIX", default_value = router_user::cluster::DEFAULT_PREFIX)]
    etcd_prefix: String,
    #[command(flatten)]
    etcd_credentials: router_user::cluster::Credentials,
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
    /// The nodes of a cluster that follows etcd (needs --etcd): list.
    #[command(subcommand)]
    Node(node::Command),
    /// One made-up packet through a router's real programs, changing nothing (ovn-trace).
    Trace(trace::Args),
    /// A desired state from another source's objects: neutron (`openstack ... -f json`).
    #[command(subcommand)]
    Import(import::Command),
}

fn main() -> std::process::ExitCode {
    router_user::generate::exit_if_asked(<Cli as clap::CommandFactory>::command);
    let args = args::router_flag_as_positional(std::env::args_os().collect(), &Cli::command());
    let cli = Cli::parse_from(args);
    let output = Output {
        format: if cli.json { Format::Json } else { cli.format },
        columns: cli.columns,
    };
    let timeout = match std::time::Duration::try_from_secs_f64(cli.timeout) {
        Ok(t) if !t.is_zero() => Some(t),
        Ok(_) => None,
        Err(e) => {
            eprintln!("routerctl: --timeout {}: {e}", cli.timeout);
            return std::process::ExitCode::from(output::exit::INVALID);
        }
    };
    let store = node::Store {
        endpoints: cli.etcd.as_deref(),
        credentials: &cli.etcd_credentials,
        prefix: &cli.etcd_prefix,
    };
    let writer = cli.etcd.as_ref().map(|endpoints| etcd::Writer {
        endpoints: endpoints.clone(),
        credentials: cli.etcd_credentials.clone(),
        keys: router_user::cluster::Keys::new(&cli.etcd_prefix),
        wait: cli.wait,
        timeout,
        read_revision: cli.read_revision,
    });
    let result = run(cli.command, cli.socket, timeout, store, writer, output);
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

fn run(
    command: Command,
    socket: PathBuf,
    timeout: Option<std::time::Duration>,
    store: node::Store<'_>,
    etcd: Option<etcd::Writer>,
    output: Output,
) -> Result<(), Failure> {
    let api = output::Api {
        socket,
        output,
        timeout,
        etcd,
    };
    let output = &api.output;
    match command {
        Command::Stats(args) => stats::run(output, args),
        Command::Ct(command) => ct::run(output, command),
        Command::Nat(command) => nat::run(output, command),
        Command::Monitor(args) => monitor::run(&api, args),
        Command::Apply(args) => apply::run(&api, args),
        Command::State => apply::show(&api),
        Command::Router(command) => router::run(&api, command),
        Command::Fip(command) => fip::run(&api, command),
        Command::Route(command) => route::run(&api, command),
        Command::Rule(command) => rule::run(&api, command),
        Command::Fw(command) => fw::run(&api, command),
        Command::Trace(args) => trace::run(output, args),
        Command::Import(command) => import::run(output, api.etcd.as_ref(), command),
        Command::Node(command) => node::run(output, store, command),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    /// Every verb and every argument says what it is in `--help`.
    #[test]
    fn every_verb_and_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "routerctl", &mut missing);
        assert!(missing.is_empty(), "no help: {missing:?}");
        Cli::command().debug_assert();
    }

    /// `--router R` lands where the verb takes its positional router; other verbs are left
    /// as they are.
    #[test]
    fn the_router_flag_is_the_positional_router() {
        let rewrite = |args: &[&str]| -> Vec<String> {
            let args = args.iter().map(std::ffi::OsString::from).collect();
            crate::args::router_flag_as_positional(args, &Cli::command())
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            rewrite(&[
                "routerctl",
                "-f",
                "json",
                "route",
                "add",
                "--router",
                "r1",
                "10.0.0.0/8",
                "10.0.1.1"
            ]),
            [
                "routerctl",
                "-f",
                "json",
                "route",
                "add",
                "r1",
                "10.0.0.0/8",
                "10.0.1.1"
            ]
        );
        assert_eq!(
            rewrite(&["routerctl", "fw", "default", "--router=r1", "deny"]),
            ["routerctl", "fw", "default", "r1", "deny"]
        );
        assert_eq!(
            rewrite(&[
                "routerctl",
                "--socket",
                "/s",
                "stats",
                "--json",
                "--router",
                "r1"
            ]),
            ["routerctl", "--socket", "/s", "stats", "r1", "--json"]
        );
        // router list takes no router: left for clap to refuse.
        assert_eq!(
            rewrite(&["routerctl", "router", "list", "--router", "r1"]),
            ["routerctl", "router", "list", "--router", "r1"]
        );
        let parsed = Cli::try_parse_from(rewrite(&[
            "routerctl",
            "route",
            "del",
            "--router",
            "r1",
            "10.0.0.0/8",
        ]));
        assert!(parsed.is_ok());
        assert!(Cli::try_parse_from(["routerctl", "route", "del", "r1", "10.0.0.0/88"]).is_err());
    }
}
