use router_user::api::{Request, RuleEntry};

use crate::{
    args::Cidr,
    output::{Api, Failure, table},
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Adds a policy rule (`[[router.rule]]`), like `ip rule add priority N ... lookup T`.
    Add {
        /// The router (its id).
        router: String,
        /// 1-29999, unique within the router.
        #[arg(long, allow_negative_numbers = true)]
        priority: i64,
        /// Ingress interface (default: any).
        #[arg(long)]
        iif: Option<String>,
        /// Source prefix or address (default: any).
        #[arg(long, value_parser = Cidr::prefix_or_address)]
        from: Option<Cidr>,
        /// Destination prefix or address (default: any).
        #[arg(long, value_parser = Cidr::prefix_or_address)]
        to: Option<Cidr>,
        /// "main", a table's name or id.
        #[arg(long)]
        table: String,
        /// An identical rule at this priority is not an error.
        #[arg(long)]
        may_exist: bool,
    },
    /// Removes the rule with this priority.
    Del {
        /// The router (its id).
        router: String,
        /// The rule's priority.
        #[arg(long, allow_negative_numbers = true)]
        priority: i64,
        /// No such rule is not an error.
        #[arg(long)]
        if_exists: bool,
    },
    /// The rules by priority, the configured ones and those the router generates.
    List {
        /// The router (its id).
        router: String,
    },
}

pub fn run(api: &Api, command: Command) -> Result<(), Failure> {
    match command {
        Command::Add {
            router,
            priority,
            iif,
            from,
            to,
            table,
            may_exist,
        } => api.change(&Request::RuleAdd {
            router,
            priority,
            iif,
            from: from.map(|c| c.to_string()),
            to: to.map(|c| c.to_string()),
            table,
            may_exist,
        }),
        Command::Del {
            router,
            priority,
            if_exists,
        } => api.change(&Request::RuleDel {
            router,
            priority,
            if_exists,
        }),
        Command::List { router } => api.show(
            "rules",
            &Request::RuleList { router },
            |rules: Vec<RuleEntry>| {
                let rows: Vec<Vec<String>> = rules
                    .into_iter()
                    .map(|r| {
                        vec![
                            r.priority.to_string(),
                            r.iif.clone().unwrap_or_else(|| "any".into()),
                            r.from.clone(),
                            r.to.clone(),
                            r.table.clone(),
                            r.origin.clone(),
                            r.extra_text(),
                        ]
                    })
                    .collect();
                table(
                    &["PRIORITY", "IIF", "FROM", "TO", "TABLE", "ORIGIN", "ALSO"],
                    &rows,
                )
            },
        ),
    }
}
