//! The kernel objects a node's copy of a distributed router needs besides the router's own
//! (l2population, as Neutron's agents do it, from the desired state):
//!
//! - in the router's namespace, a permanent neighbour entry for every port of its networks,
//!   so neither the fast path nor the kernel ever asks for one (the mirror copies them into
//!   the fast path's neighbour table);
//! - on each network's overlay device (`vxlan-<vni>`, in the overlay namespace), a
//!   forwarding entry per port on another node (its MAC to that node's overlay address)
//!   and a permanent neighbour the device answers ARP from (its `proxy` setting), so ARP
//!   never crosses the overlay.
//!
//! routerd owns the permanent entries there: entries of the router's interfaces and of its
//! networks' overlay devices that the desired state no longer has are removed.
//!
//! A compute node's copy with a gateway has no address on it: its subnet is routed on-link
//! ([`on_link`]), the next hop's MAC is asked by routerd itself ([`super::arp`]) and kept
//! as a permanent neighbour, asked again at every drift check ([`refresh_next_hop`]); and
//! the floating IPs new on the node are announced ([`announce_new`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
};
use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

use super::{Neighbour, OverlayEntries, is_compute, neighbours, overlay_entries};
use crate::{config::Router, error::Error, netlink, paths};

/// A permanent entry as compared: interface, address (the neighbour's, or a forwarding
/// entry's remote overlay address), MAC.
type Entry = (u32, Ipv4Addr, [u8; 6]);

/// How the external next hop is asked: tries, and the wait for each answer.
const NEXT_HOP_TRIES: u32 = 3;
const NEXT_HOP_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Routes each external subnet on-link through the gateway interface `ifindex`, as an
/// address on it would (the compute copy's gateway has none). Returns whether it wrote.
pub async fn on_link(handle: &Handle, copy: &Router, ifindex: u32) -> Result<bool, Error> {
    let mut wrote = false;
    for external in copy.external_subnets() {
        let subnet = external.address.subnet();
        let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.addr, subnet.len)
            .output_interface(ifindex)
            .scope(netlink_packet_route::route::RouteScope::Link)
            .build();
        match handle.route().add(msg).execute().await {
            Ok(()) => wrote = true,
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            Err(source) => {
                return Err(nl_error(&copy.id, format!("routing {subnet} on-link"))(
                    source,
                ));
            }
        }
    }
    Ok(wrote)
}

/// Asks each external subnet's next hop for its MAC again and keeps it as a permanent
/// neighbour (a compute copy with a gateway). Returns the kernel writes: 0 when the answers
/// are what they were.
pub async fn refresh_next_hop(handle: &Handle, copy: &Router) -> Result<usize, Error> {
    let Some(g) = copy.gateway.as_ref().filter(|_| is_compute(copy)) else {
        return Ok(0);
    };
    let nl = |what: String| nl_error(&copy.id, what);
    let Some(link) = netlink::link_by_name(handle, &g.interface)
        .await
        .map_err(nl(format!("looking up {}", g.interface)))?
    else {
        return Ok(0);
    };
    let mut writes = 0;
    for external in copy.external_subnets() {
        // As a floating IP of the subnet, if the node has one.
        let subnet = external.address.subnet();
        let sender = copy
            .floating_ips
            .iter()
            .find(|f| subnet.contains(f.address))
            .map_or(Ipv4Addr::UNSPECIFIED, |f| f.address);
        writes += ask_next_hop(handle, copy, &link, sender, external.nexthop).await?;
    }
    Ok(writes)
}

async fn ask_next_hop(
    handle: &Handle,
    copy: &Router,
    link: &netlink::Link,
    sender: Ipv4Addr,
    nexthop: Ipv4Addr,
) -> Result<usize, Error> {
    let nl = |what: String| nl_error(&copy.id, what);
    let (index, mac) = (link.index, link.mac);
    let interface = &link.name;
    // On the router's own thread, which waits for the answer (300 ms at most).
    let answer = super::arp::resolve(index, mac, sender, nexthop, NEXT_HOP_TRIES, NEXT_HOP_WAIT)
        .map_err(|e| Error::io(format!("router {}: asking for {nexthop}", copy.id), e))?;
    let Some(answer) = answer else {
        tracing::warn!(
            "router {}: the external next hop {nexthop} does not answer on {interface}",
            copy.id
        );
        return Ok(0);
    };
    let have = permanent_neighbours(handle, AddressFamily::Inet)
        .await
        .map_err(nl("listing neighbours".into()))?;
    if have.iter().any(|(_, e)| *e == (index, nexthop, answer)) {
        return Ok(0);
    }
    permanent(handle, &(index, nexthop, answer))
        .execute()
        .await
        .map_err(nl(format!("adding neighbour {nexthop}")))?;
    tracing::info!(
        "router {}: external next hop {nexthop} is at {}",
        copy.id,
        crate::config::mac_text(answer)
    );
    Ok(1)
}

/// Announces (gratuitous ARP, in the background) the floating IPs `copy` has that
/// `before` did not: a VM that arrived on this node, or all of them at start.
pub fn announce_new(copy: &Router, before: Option<&Router>) {
    let Some(g) = copy.gateway.as_ref().filter(|_| is_compute(copy)) else {
        return;
    };
    let new: Vec<Ipv4Addr> = copy
        .floating_ips
        .iter()
        .filter(|f| before.is_none_or(|b| !b.floating_ips.iter().any(|o| o.address == f.address)))
        .map(|f| f.address)
        .collect();
    if !new.is_empty() {
        crate::ha::garp::announce_in_background(copy, vec![(g.interface.clone(), new)]);
    }
}

/// Brings the router namespace's permanent neighbours and the overlay devices' entries to
/// what `copy` (a node's copy of a distributed router) says. `handle` is the router
/// namespace's. Returns the kernel writes; a missing overlay device is an error (the router
/// waits for it, as for a missing interface).
pub async fn sync(handle: &Handle, copy: &Router) -> Result<usize, Error> {
    if copy.part.is_none() {
        return Ok(0);
    }
    let mut writes = sync_neighbours(handle, copy).await? + refresh_next_hop(handle, copy).await?;
    let overlay = overlay_entries(copy);
    if overlay.is_empty() {
        return Ok(writes);
    }
    let part = copy
        .part
        .as_ref()
        .map(|p| p.overlay_netns.clone())
        .unwrap_or_default();
    let overlay_handle = handle_in(&copy.id, part.as_deref())?;
    for entries in &overlay {
        writes += sync_overlay(&overlay_handle, copy, entries).await?;
    }
    Ok(writes)
}

/// Removes the entries `copy` put on its networks' overlay devices (the router leaves the
/// node). Devices that are gone are skipped.
pub async fn clear(copy: &Router) -> Result<usize, Error> {
    let overlay = overlay_entries(copy);
    if overlay.is_empty() {
        return Ok(0);
    }
    let part = copy
        .part
        .as_ref()
        .map(|p| p.overlay_netns.clone())
        .unwrap_or_default();
    let handle = handle_in(&copy.id, part.as_deref())?;
    let mut writes = 0;
    for entries in overlay {
        let empty = OverlayEntries {
            vni: entries.vni,
            remote: Vec::new(),
        };
        match sync_overlay(&handle, copy, &empty).await {
            Ok(n) => writes += n,
            Err(Error::InterfaceMissing { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(writes)
}

fn nl_error(router: &str, what: String) -> impl FnOnce(rtnetlink::Error) -> Error {
    let router = router.to_string();
    move |source| Error::Netlink {
        router,
        what,
        source: Box::new(source),
    }
}

async fn sync_neighbours(handle: &Handle, copy: &Router) -> Result<usize, Error> {
    let nl = |what: String| nl_error(&copy.id, what);
    let mut index_of = BTreeMap::new();
    for i in &copy.interfaces {
        if let Some(link) = netlink::link_by_name(handle, &i.name)
            .await
            .map_err(nl(format!("looking up {}", i.name)))?
        {
            index_of.insert(i.name.clone(), link.index);
        }
    }
    let wanted: BTreeSet<Entry> = neighbours(copy)
        .into_iter()
        .filter_map(
            |Neighbour {
                 interface,
                 address,
                 mac,
             }| { Some((*index_of.get(&interface)?, address, mac)) },
        )
        .collect();
    let ours: BTreeSet<u32> = index_of.values().copied().collect();
    let have: Vec<_> = permanent_neighbours(handle, AddressFamily::Inet)
        .await
        .map_err(nl("listing neighbours".into()))?
        .into_iter()
        .filter(|(_, e)| ours.contains(&e.0))
        .collect();
    replace_entries(handle, &have, &wanted, |entry| permanent(handle, entry))
        .await
        .map_err(nl("writing the ports' neighbours".into()))
}

/// The permanent entries of `family` (IPv4 neighbours or bridge forwarding entries): each
/// message with its interface, address (IPv4 neighbour, or the remote overlay address of a
/// forwarding entry) and MAC.
async fn permanent_neighbours(
    handle: &Handle,
    family: AddressFamily,
) -> Result<Vec<(NeighbourMessage, Entry)>, rtnetlink::Error> {
    let msgs: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.state == NeighbourState::Permanent)
        .filter_map(|m| {
            let mut addr = None;
            let mut mac = None;
            for attr in &m.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(*a),
                    // A bridge forwarding entry's remote address comes undecoded.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        addr = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                    }
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        let mut b = [0; 6];
                        b.copy_from_slice(l);
                        mac = Some(b);
                    }
                    _ => {}
                }
            }
            let entry = (m.header.ifindex, addr?, mac?);
            Some((m, entry))
        })
        .collect())
}

async fn sync_overlay(
    handle: &Handle,
    copy: &Router,
    entries: &OverlayEntries,
) -> Result<usize, Error> {
    let nl = |what: String| nl_error(&copy.id, what);
    let device = entries.device();
    let Some(link) = netlink::link_by_name(handle, &device)
        .await
        .map_err(nl(format!("looking up {device}")))?
    else {
        return Err(Error::InterfaceMissing {
            router: copy.id.clone(),
            interface: device,
            namespace: copy
                .part
                .as_ref()
                .and_then(|p| p.overlay_netns.clone())
                .unwrap_or_else(|| "routerd's own".into()),
        });
    };
    let index = link.index;
    let mut writes = 0;
    // Forwarding entries: a port's MAC to its node's overlay address.
    let wanted: BTreeSet<Entry> = entries
        .remote
        .iter()
        .map(|(mac, vtep, _)| (index, *vtep, *mac))
        .collect();
    let have: Vec<_> = permanent_neighbours(handle, AddressFamily::Bridge)
        .await
        .map_err(nl(format!("listing {device}'s forwarding entries")))?
        .into_iter()
        .filter(|(m, e)| e.0 == index && m.header.flags.contains(NeighbourFlags::Own))
        .collect();
    writes += replace_entries(handle, &have, &wanted, |entry| {
        let (index, vtep, mac) = *entry;
        handle
            .neighbours()
            .add_bridge(index, &mac)
            .destination(IpAddr::V4(vtep))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
    })
    .await
    .map_err(nl(format!("writing {device}'s forwarding entries")))?;
    // ARP answers: a port's address to its MAC.
    let wanted: BTreeSet<Entry> = entries
        .remote
        .iter()
        .map(|(mac, _, address)| (index, *address, *mac))
        .collect();
    let have: Vec<_> = permanent_neighbours(handle, AddressFamily::Inet)
        .await
        .map_err(nl(format!("listing {device}'s neighbours")))?
        .into_iter()
        .filter(|(_, e)| e.0 == index)
        .collect();
    writes += replace_entries(handle, &have, &wanted, |entry| permanent(handle, entry))
        .await
        .map_err(nl(format!("writing {device}'s ARP answers")))?;
    Ok(writes)
}

/// The request that makes `entry` a permanent IPv4 neighbour (replacing one there).
fn permanent(handle: &Handle, entry: &Entry) -> rtnetlink::NeighbourAddRequest {
    let (index, address, mac) = *entry;
    handle
        .neighbours()
        .add(index, IpAddr::V4(address))
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
}

/// Removes the entries of `have` that are not `wanted` and adds the wanted ones missing.
async fn replace_entries(
    handle: &Handle,
    have: &[(NeighbourMessage, Entry)],
    wanted: &BTreeSet<Entry>,
    add: impl Fn(&Entry) -> rtnetlink::NeighbourAddRequest,
) -> Result<usize, rtnetlink::Error> {
    let mut writes = 0;
    for (msg, entry) in have {
        if !wanted.contains(entry) {
            handle.neighbours().del(msg.clone()).execute().await?;
            writes += 1;
        }
    }
    let present: BTreeSet<_> = have.iter().map(|(_, e)| *e).collect();
    for entry in wanted.difference(&present) {
        add(entry).execute().await?;
        writes += 1;
    }
    Ok(writes)
}

/// A netlink handle in the overlay namespace `netns` (`None`: routerd's own): the socket is
/// opened there and the calling thread goes back to its own namespace.
fn handle_in(router: &str, netns: Option<&str>) -> Result<Handle, Error> {
    let target: PathBuf = match netns {
        Some(name) => paths::netns_path_exact(name),
        // The thread group's leader never leaves routerd's namespace.
        None => PathBuf::from("/proc/self/ns/net"),
    };
    let io = |what: String| move |source| Error::Io { what, source };
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(io("opening the thread's namespace".into()))?;
    let there = File::open(&target).map_err(io(format!(
        "router {router}: opening the overlay namespace {}",
        target.display()
    )))?;
    setns(&there, CloneFlags::CLONE_NEWNET).map_err(|e| {
        Error::io(
            format!("router {router}: entering the overlay namespace"),
            e.into(),
        )
    })?;
    let opened = rtnetlink::new_connection();
    let back = setns(&home, CloneFlags::CLONE_NEWNET);
    if let Err(e) = back {
        // A router thread that cannot go home would write its router elsewhere.
        return Err(Error::io(
            format!("router {router}: back to the router's namespace"),
            e.into(),
        ));
    }
    let (conn, handle, _) =
        opened.map_err(io("opening rtnetlink in the overlay namespace".into()))?;
    tokio::spawn(conn);
    Ok(handle)
}
