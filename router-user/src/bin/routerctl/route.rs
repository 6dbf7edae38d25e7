use router_user::api::{Request, RouteView};

use std::net::Ipv4Addr;

use crate::{
    args::Cidr,
    output::{Api, Failure, table},
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Adds a static route (`[[router.route]]`), to table main unless --table says otherwise.
    Add {
        /// The router (its id).
        router: String,
        /// "main" (default), a table's name or id.
        #[arg(long)]
        table: Option<String>,
        /// Destination prefix, e.g. 10.20.0.0/16.
        #[arg(value_parser = Cidr::prefix)]
        destination: Cidr,
        /// A host on a connected subnet of the router.
        nexthop: Ipv4Addr,
        /// An identical route already there is not an error.
        #[arg(long)]
        may_exist: bool,
    },
    /// Removes the route to DESTINATION of a table (main by default).
    Del {
        /// The router (its id).
        router: String,
        /// "main" (default), a table's name or id.
        #[arg(long)]
        table: Option<String>,
        /// The route's destination prefix, e.g. 10.20.0.0/16.
        #[arg(value_parser = Cidr::prefix)]
        destination: Cidr,
        /// No such route is not an error.
        #[arg(long)]
        if_exists: bool,
    },
    /// The configured routes (of one table with --table).
    List {
        /// The router (its id).
        router: String,
        /// Only this table: "main", a table's name or id (default: every table).
        #[arg(long)]
        table: Option<String>,
    },
}

pub fn run(api: &Api, command: Command) -> Result<(), Failure> {
    match command {
        Command::Add {
            router,
            table,
            destination,
            nexthop,
            may_exist,
        } => api.change(&Request::RouteAdd {
            router,
            destination: destination.to_string(),
            nexthop: nexthop.to_string(),
            table,
            may_exist,
        }),
        Command::Del {
            router,
            table,
            destination,
            if_exists,
        } => api.change(&Request::RouteDel {
            router,
            destination: destination.to_string(),
            table,
            if_exists,
        }),
        Command::List { router, table: t } => api.show(
            "routes",
            &Request::RouteList { router, table: t },
            |routes: Vec<RouteView>| {
                let rows: Vec<Vec<String>> = routes
                    .into_iter()
                    .map(|r| vec![r.table, r.destination, r.nexthop])
                    .collect();
                table(&["TABLE", "DESTINATION", "NEXTHOP"], &rows)
            },
        ),
    }
}
