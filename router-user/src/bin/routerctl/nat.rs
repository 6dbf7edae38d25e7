use router_user::{Error, stats};

#[derive(clap::Subcommand)]
pub enum Command {
    /// The gateway (SNAT) and floating IPs of each router, with their counters.
    List {
        /// Only this router.
        #[arg(long)]
        router: Option<String>,
        /// Machine-readable output (an object with `gateways` and `floating_ips` arrays).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::List { router, json } => {
            let nat = stats::collect_nat(router.as_deref())?;
            if json {
                let text = serde_json::to_string_pretty(&nat)
                    .map_err(|e| Error::io("encoding JSON", std::io::Error::other(e)))?;
                println!("{text}");
            } else {
                print!("{}", stats::nat_table(&nat));
            }
            Ok(())
        }
    }
}
