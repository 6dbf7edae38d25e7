//! `routerctl nat list [ROUTER]`: the gateways and floating IPs of the running routers.

use router_user::stats;

use crate::output::{Failure, Output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// The gateway (SNAT) and floating IPs of each router, with their counters (JSON: the
    /// document `nat`, items `gateways` and `floating_ips`).
    List {
        /// Only this router (its id); default: every running router.
        router: Option<String>,
    },
}

pub fn run(output: &Output, command: Command) -> Result<(), Failure> {
    match command {
        Command::List { router } => {
            crate::output::note_stale(router.as_deref());
            let nat = stats::collect_nat(router.as_deref())?;
            output.print("nat", &nat, || stats::nat_table(&nat))
        }
    }
}
