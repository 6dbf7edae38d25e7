//! `routerctl fip ...`: Neutron's floating IP verbs over routerd's API. A floating IP exists
//! only associated with a fixed IP: `create` associates it, `disassociate` deletes it,
//! `associate` creates it.

use router_user::{
    Error,
    api::{FloatingIpEntry, Request},
};

use crate::{output::Api, router::fip_table};

#[derive(clap::Subcommand)]
pub enum Command {
    /// A floating IP for a fixed IP (created and associated at once, like Neutron's
    /// `floating ip create --port`).
    Create {
        #[arg(long)]
        router: String,
        /// The floating IP, on an external subnet of the router.
        #[arg(long)]
        address: String,
        /// The VM's fixed IP, on an internal subnet of the router.
        #[arg(long)]
        fixed: String,
        /// The same floating IP with the same fixed IP already there is not an error.
        #[arg(long)]
        may_exist: bool,
    },
    /// Removes a floating IP (its sessions end at once).
    Delete {
        #[arg(long)]
        router: String,
        #[arg(long)]
        address: String,
        /// No such floating IP is not an error.
        #[arg(long)]
        if_exists: bool,
    },
    /// Floating IPs with their counters (of the running routers' fast paths).
    List {
        /// Only this router.
        #[arg(long)]
        router: Option<String>,
    },
    /// Associates a floating IP with a fixed IP (creating it: a floating IP exists only
    /// associated). An error if it is associated with another fixed IP.
    Associate {
        #[arg(long)]
        router: String,
        #[arg(long)]
        address: String,
        #[arg(long)]
        fixed: String,
        /// Already associated with this fixed IP is not an error.
        #[arg(long)]
        may_exist: bool,
    },
    /// Disassociates a floating IP: the same as delete.
    Disassociate {
        #[arg(long)]
        router: String,
        #[arg(long)]
        address: String,
        /// No such floating IP is not an error.
        #[arg(long)]
        if_exists: bool,
    },
}

pub fn run(api: &Api, command: Command) -> Result<(), Error> {
    match command {
        Command::Create {
            router,
            address,
            fixed,
            may_exist,
        } => api.change(&Request::FipCreate {
            router,
            address,
            fixed,
            may_exist,
        }),
        Command::Delete {
            router,
            address,
            if_exists,
        } => api.change(&Request::FipDelete {
            router,
            address,
            if_exists,
        }),
        Command::List { router } => api
            .show(&Request::FipList { router }, |f: Vec<FloatingIpEntry>| {
                fip_table(&f)
            }),
        Command::Associate {
            router,
            address,
            fixed,
            may_exist,
        } => api.change(&Request::FipAssociate {
            router,
            address,
            fixed,
            may_exist,
        }),
        Command::Disassociate {
            router,
            address,
            if_exists,
        } => api.change(&Request::FipDisassociate {
            router,
            address,
            if_exists,
        }),
    }
}
