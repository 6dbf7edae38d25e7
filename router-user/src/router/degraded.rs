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

async fn gateway_index(handle: &Handle, router: &Router) -> Result<Option<u32>, Error> {
    let Some(g) = &router.gateway else {
        return Ok(None);
    };
    let link = netlink::link_by_name(handle, &g.interface)
        .await
        .map_err(|source| Error::Netlink {
            router: router.id.clone(),
            what: format!("looking up {}", g.interface),
            source: Box::new(source),
        })?;
    Ok(link.map(|l| l.index))
}

/// Makes the kernel serve `router` alone: the slow path's table, and the floating IPs as
/// addresses of the gateway interface. Returns how many floating IPs it answers for.
pub(super) async fn serve(handle: &Handle, router: &Router) -> Result<usize, Error> {
    slowpath::ensure(router)?;
    let Some(index) = gateway_index(handle, router).await? else {
        return Ok(0);
    };
    let nl = |what: String| {
        let router = router.id.clone();
        move |source| Error::Netlink {
            router,
            what,
            source: Box::new(source),
        }
    };
    let present = netlink::addresses(handle, index)
        .await
        .map_err(nl("listing the gateway's addresses".into()))?;
    let mut answered = 0;
    for addr in floating_addresses(router) {
        if !present.contains(&addr) {
            netlink::add_address(handle, index, addr)
                .await
                .map_err(nl(format!(
                    "adding floating IP {} to the gateway",
                    addr.addr
                )))?;
        }
        answered += 1;
    }
    Ok(answered)
}

/// Takes back what `serve` added for the floating IPs (the fast path answers for them now).
/// Returns how many addresses it removed.
pub(super) async fn leave(handle: &Handle, router: &Router) -> Result<usize, Error> {
    let Some(index) = gateway_index(handle, router).await? else {
        return Ok(0);
    };
    let nl = |what: String| {
        let router = router.id.clone();
        move |source| Error::Netlink {
            router,
            what,
            source: Box::new(source),
        }
    };
    let present = netlink::addresses(handle, index)
        .await
        .map_err(nl("listing the gateway's addresses".into()))?;
    let mut removed = 0;
    for addr in floating_addresses(router).filter(|a| present.contains(a)) {
        netlink::delete_address(handle, index, addr)
            .await
            .map_err(nl(format!(
                "removing floating IP {} from the gateway",
                addr.addr
            )))?;
        removed += 1;
    }
    Ok(removed)
}
