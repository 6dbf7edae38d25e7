//! `routerctl stats [ROUTER]`: the counters of the running routers' fast paths.

use router_user::stats::{self, FloatingIpStats, GatewayStats, InterfaceStats};
use serde::Serialize;

use crate::output::{Failure, Output};

#[derive(clap::Args)]
pub struct Args {
    /// Only this router (its id); default: every running router.
    router: Option<String>,
}

/// The `stats` document: one list per kind of row.
#[derive(Serialize)]
struct Stats<'a> {
    interfaces: &'a [InterfaceStats],
    floating_ips: &'a [FloatingIpStats],
    gateways: &'a [GatewayStats],
}

pub fn run(output: &Output, args: Args) -> Result<(), Failure> {
    crate::output::note_stale(args.router.as_deref());
    let rows = stats::collect(args.router.as_deref())?;
    let nat = stats::collect_nat(args.router.as_deref())?;
    let document = Stats {
        interfaces: &rows,
        floating_ips: &nat.floating_ips,
        gateways: &nat.gateways,
    };
    output.print("stats", &document, || {
        let mut text = stats::table(&rows);
        // Routers without a gateway or floating IPs have nothing to show here.
        if nat.gateways.iter().any(|g| g.gateway_ip.is_some()) || !nat.floating_ips.is_empty() {
            text += "\n";
            text += &stats::nat_table(&nat);
        }
        text
    })
}
