use router_user::{
    Error,
    api::{Request, RouteView},
};

use crate::output::{Api, table};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Adds a static route (`[[router.route]]`), to table main unless --table says otherwise.
    Add {
        #[arg(long)]
        router: String,
        /// "main" (default), a table's name or id.
        #[arg(long)]
        table: Option<String>,
        /// Destination prefix, e.g. 10.20.0.0/16.
        destination: String,
        /// A host on a connected subnet of the router.
        nexthop: String,
        /// An identical route already there is not an error.
        #[arg(long)]
        may_exist: bool,
    },
    /// Removes the route to DESTINATION of a table (main by default).
    Del {
        #[arg(long)]
        router: String,
        #[arg(long)]
        table: Option<String>,
        destination: String,
        /// No such route is not an error.
        #[arg(long)]
        if_exists: bool,
    },
    /// The configured routes (of one table with --table).
    List {
        #[arg(long)]
        router: String,
        #[arg(long)]
        table: Option<String>,
    },
}

pub fn run(api: &Api, command: Command) -> Result<(), Error> {
    match command {
        Command::Add {
            router,
            table,
            destination,
            nexthop,
            may_exist,
        } => api.change(&Request::RouteAdd {
            router,
            destination,
            nexthop,
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
            destination,
            table,
            if_exists,
        }),
        Command::List { router, table: t } => api.show(
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
