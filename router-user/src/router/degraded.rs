//! The kernel path alone, while a router's fast path is not attached (its start failed and
//! is being retried): the router behaves as Neutron's would. The kernel already has the
//! router's addresses, routes and rules (setup writes them before it builds the fast path)
//! and the slow path's nftables table translates and firewalls; what only the fast path
//! does is answer ARP for the floating IPs, which have no address on the gateway
//! interface. While degraded they get one each (a /32, as Neutron's L3 agent adds them);
//! the fast path, once attached, answers for them again and the /32s go.

use rtnetlink::Handle;

use crate::{
    config::{IfAddr, Router},
    error::Error,
    netlink, slowpath,
};

fn floating_addresses(router: &Router) -> impl Iterator<Item = IfAddr> + '_ {
    router.floating_ips.iter().map(|f| IfAddr {
        addr: f.address,
        len: 32,
    })
}

fn netlink_error(router: &Router, what: String) -> impl FnOnce(rtnetlink::Error) -> Error {
    let router = router.id.clone();
    move |source| Error::Netlink {
        router,
        what,
        source: Box::new(source),
    }
}

/// The gateway interface's index and its addresses; `None` for a router without floating
/// IPs or without a gateway interface (there is nothing to answer for).
async fn gateway_addresses(
    handle: &Handle,
    router: &Router,
) -> Result<Option<(u32, Vec<IfAddr>)>, Error> {
    let (Some(g), false) = (&router.gateway, router.floating_ips.is_empty()) else {
        return Ok(None);
    };
    let link = netlink::link_by_name(handle, &g.interface)
        .await
        .map_err(netlink_error(router, format!("looking up {}", g.interface)))?;
    let Some(link) = link else {
        return Ok(None);
    };
    let present = netlink::addresses(handle, link.index)
        .await
        .map_err(netlink_error(
            router,
            "listing the gateway's addresses".into(),
        ))?;
    Ok(Some((link.index, present)))
}

/// Makes the kernel serve `router` alone: the slow path's table, and the floating IPs as
/// addresses of the gateway interface. Returns how many floating IPs it answers for.
pub(super) async fn serve(handle: &Handle, router: &Router) -> Result<usize, Error> {
    slowpath::ensure(router)?;
    let Some((index, present)) = gateway_addresses(handle, router).await? else {
        return Ok(0);
    };
    for addr in floating_addresses(router).filter(|a| !present.contains(a)) {
        let what = format!("adding floating IP {} to the gateway", addr.addr);
        netlink::add_address(handle, index, addr)
            .await
            .map_err(netlink_error(router, what))?;
    }
    Ok(router.floating_ips.len())
}

/// Takes back what `serve` added for the floating IPs (the fast path answers for them now).
/// Returns how many addresses it removed.
pub(super) async fn leave(handle: &Handle, router: &Router) -> Result<usize, Error> {
    let Some((index, present)) = gateway_addresses(handle, router).await? else {
        return Ok(0);
    };
    let mut removed = 0;
    for addr in floating_addresses(router).filter(|a| present.contains(a)) {
        let what = format!("removing floating IP {} from the gateway", addr.addr);
        netlink::delete_address(handle, index, addr)
            .await
            .map_err(netlink_error(router, what))?;
        removed += 1;
    }
    Ok(removed)
}
