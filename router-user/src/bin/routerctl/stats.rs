use router_user::{Error, stats};

#[derive(clap::Args)]
pub struct Args {
    /// Only this router.
    #[arg(long)]
    router: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Error> {
    let rows = stats::collect(args.router.as_deref())?;
    let nat = stats::collect_nat(args.router.as_deref())?;
    if args.json {
        let text = serde_json::to_string_pretty(&stats::rows(&rows, &nat))
            .map_err(|e| Error::io("encoding JSON", std::io::Error::other(e)))?;
        println!("{text}");
    } else {
        print!("{}", stats::table(&rows));
        // Routers without a gateway or floating IPs have nothing to show here.
        if nat.gateways.iter().any(|g| g.gateway_ip.is_some()) || !nat.floating_ips.is_empty() {
            print!("\n{}", stats::nat_table(&nat));
        }
    }
    Ok(())
}
