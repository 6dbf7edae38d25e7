//! `routerctl fip ...`: Neutron's floating IP verbs over routerd's API. A floating IP exists
//! only associated with a fixed IP: `create` associates it, `disassociate` deletes it,
//! `associate` creates it.

use router_user::api::{FloatingIpEntry, Request};

use std::net::Ipv4Addr;

use crate::{
    output::{Api, Failure},
    router::fip_table,
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// A floating IP for a fixed IP (created and associated at once, like Neutron's
    /// `floating ip create --port`).
    #[command(visible_alias = "add")]
    Create {
        /// The router (its id).
        router: String,
        /// The floating IP, on an external subnet of the router.
        #[arg(long)]
        address: Ipv4Addr,
        /// The VM's fixed IP, on an internal subnet of the router.
        #[arg(long)]
        fixed: Ipv4Addr,
        /// Neutron's id of the floating IP (a UUID), unique among the router's.
        #[arg(long)]
        id: Option<String>,
        /// The same floating IP (address, fixed IP and id) already there is not an error.
        #[arg(long)]
        may_exist: bool,
    },
    /// Removes a floating IP (its sessions end at once).
    #[command(visible_alias = "del")]
    Delete {
        /// The router (its id).
        router: String,
        /// The floating IP's address.
        #[arg(long, required_unless_present = "id")]
        address: Option<Ipv4Addr>,
        /// Neutron's id of the floating IP (with --address too: both must name it).
        #[arg(long)]
        id: Option<String>,
        /// No such floating IP is not an error.
        #[arg(long)]
        if_exists: bool,
    },
    /// Floating IPs with their counters (of the running routers' fast paths).
    List {
        /// Only this router (its id); default: every router.
        router: Option<String>,
    },
    /// Associates a floating IP with a fixed IP (creating it: a floating IP exists only
    /// associated). An error if it is associated with another fixed IP.
    Associate {
        /// The router (its id).
        router: String,
        /// The floating IP, on an external subnet of the router.
        #[arg(long)]
        address: Ipv4Addr,
        /// The VM's fixed IP, on an internal subnet of the router.
        #[arg(long)]
        fixed: Ipv4Addr,
        /// Neutron's id of the floating IP (a UUID), unique among the router's.
        #[arg(long)]
        id: Option<String>,
        /// Already associated with this fixed IP is not an error.
        #[arg(long)]
        may_exist: bool,
    },
    /// Disassociates a floating IP: the same as delete.
    Disassociate {
        /// The router (its id).
        router: String,
        /// The floating IP's address.
        #[arg(long, required_unless_present = "id")]
        address: Option<Ipv4Addr>,
        /// Neutron's id of the floating IP (with --address too: both must name it).
        #[arg(long)]
        id: Option<String>,
        /// No such floating IP is not an error.
        #[arg(long)]
        if_exists: bool,
    },
}

pub fn run(api: &Api, command: Command) -> Result<(), Failure> {
    match command {
        Command::Create {
            router,
            address,
            fixed,
            id,
            may_exist,
        } => api.change(&Request::FipCreate {
            router,
            address: address.to_string(),
            fixed: fixed.to_string(),
            id,
            may_exist,
        }),
        Command::Delete {
            router,
            address,
            id,
            if_exists,
        } => api.change(&Request::FipDelete {
            router,
            address: address.map(|a| a.to_string()),
            id,
            if_exists,
        }),
        Command::List { router } => api.show(
            "floating_ips",
            &Request::FipList { router },
            |f: Vec<FloatingIpEntry>| fip_table(&f),
        ),
        Command::Associate {
            router,
            address,
            fixed,
            id,
            may_exist,
        } => api.change(&Request::FipAssociate {
            router,
            address: address.to_string(),
            fixed: fixed.to_string(),
            id,
            may_exist,
        }),
        Command::Disassociate {
            router,
            address,
            id,
            if_exists,
        } => api.change(&Request::FipDisassociate {
            router,
            address: address.map(|a| a.to_string()),
            id,
            if_exists,
        }),
    }
}
