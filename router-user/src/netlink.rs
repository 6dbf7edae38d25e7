//! The kernel side of a router namespace over rtnetlink: the links, addresses and routes
//! the desired state asks for, and the routes and neighbours the fast path mirrors.
//!
//! Every function runs on the router's own thread, inside its namespace.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use router_common::{NeighborEntry, NeighborKey, RouteEntry, RouteKey, TABLE_MAIN, route_kind};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::config::{IfAddr, Prefix};

const TABLE_LOCAL: u32 = 255;
const EEXIST: i32 = libc::EEXIST;

/// What the controller needs to know about one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
    pub kind: Option<String>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: [0; 6],
            mtu: 1500,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Address(mac) if mac.len() == 6 => link.mac.copy_from_slice(mac),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(match kind {
                                InfoKind::Veth => "veth".to_string(),
                                other => format!("{other:?}").to_lowercase(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// Whether XDP-redirected frames into `link` are delivered, when the configuration does
/// not say. A veth delivers them only if its far end runs XDP or GRO, which the router
/// does not control (see DESIGN.md), so veths default to the TC redirect; NICs with native
/// XDP implement `ndo_xdp_xmit`.
pub fn xdp_egress_default(link: &Link) -> bool {
    !matches!(link.kind.as_deref(), Some("veth"))
}

pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn links(handle: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    let msgs: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    Ok(msgs.iter().map(Link::from_message).collect())
}

pub async fn set_up(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// Adds `addr` to the link unless it is there already. Returns whether it wrote.
pub async fn ensure_address(
    handle: &Handle,
    index: u32,
    addr: IfAddr,
) -> Result<bool, rtnetlink::Error> {
    let existing = link_addresses(handle, index).await?;
    let present = existing.iter().any(|msg| is_address(msg, addr));
    if present {
        return Ok(false);
    }
    ignore_exists(
        handle
            .address()
            .add(index, IpAddr::V4(addr.addr), addr.len)
            .execute()
            .await,
    )
}

/// Adds a route to `destination` via `gateway` in the main table unless one exists.
/// Returns whether it wrote.
pub async fn ensure_route(
    handle: &Handle,
    destination: Prefix,
    gateway: Ipv4Addr,
) -> Result<bool, rtnetlink::Error> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(destination.addr, destination.len)
        .gateway(gateway)
        .build();
    ignore_exists(handle.route().add(msg).execute().await)
}

fn ignore_exists(result: Result<(), rtnetlink::Error>) -> Result<bool, rtnetlink::Error> {
    match result {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -EEXIST => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every IPv4 route of the main and local tables, as fast-path entries of the main table.
pub async fn route_entries(
    handle: &Handle,
) -> Result<Vec<(u32, RouteKey, RouteEntry)>, rtnetlink::Error> {
    let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let routes: Vec<RouteMessage> = handle.route().get(request).execute().try_collect().await?;
    Ok(routes.iter().filter_map(route_entry).collect())
}

/// Translates one kernel route into `(prefix length, key, entry)` for the LPM trie, or
/// `None` for routes the fast path does not mirror (other tables, cached clones).
pub fn route_entry(msg: &RouteMessage) -> Option<(u32, RouteKey, RouteEntry)> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = Ipv4Addr::UNSPECIFIED;
    let mut oif = 0;
    let mut multipath = false;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = *a,
            RouteAttribute::Oif(i) => oif = *i,
            RouteAttribute::MultiPath(_) => multipath = true,
            _ => {}
        }
    }
    let len = u32::from(msg.header.destination_prefix_length);
    let kind = match (table, msg.header.kind) {
        (TABLE_LOCAL, RouteType::Local | RouteType::Broadcast | RouteType::Anycast) => {
            route_kind::LOCAL
        }
        (TABLE_LOCAL, _) => return None,
        (TABLE_MAIN, RouteType::Unicast) if multipath || oif == 0 => route_kind::KERNEL,
        (TABLE_MAIN, RouteType::Unicast) => route_kind::UNICAST,
        (TABLE_MAIN, RouteType::BlackHole) => route_kind::BLACKHOLE,
        (TABLE_MAIN, _) => route_kind::KERNEL,
        _ => return None,
    };
    // Local-table entries are /32 (or broadcast) and always win over main-table prefixes
    // of the same length, as the kernel's local table is consulted first.
    Some((
        RouteKey::TABLE_BITS + len,
        RouteKey::new(TABLE_MAIN, dst.octets()),
        RouteEntry {
            kind,
            ifindex: if kind == route_kind::UNICAST { oif } else { 0 },
            gateway: gateway.octets(),
            _pad: 0,
        },
    ))
}

/// A neighbour update for the fast path: `Some(entry)` to install, `None` to remove.
pub fn neighbor_entry(msg: &NeighbourMessage) -> Option<(NeighborKey, Option<NeighborEntry>)> {
    let mut addr = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(*a),
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut m = [0; 6];
                m.copy_from_slice(l);
                mac = Some(m);
            }
            _ => {}
        }
    }
    let key = NeighborKey {
        ifindex: msg.header.ifindex,
        addr: addr?.octets(),
    };
    let usable = matches!(
        msg.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    match (usable, mac) {
        (true, Some(mac)) => Some((key, Some(NeighborEntry { mac, _pad: [0; 2] }))),
        _ => Some((key, None)),
    }
}

pub async fn neighbor_entries(
    handle: &Handle,
) -> Result<Vec<(NeighborKey, NeighborEntry)>, rtnetlink::Error> {
    let msgs: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await?;
    Ok(msgs
        .iter()
        .filter_map(neighbor_entry)
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

/// Removes `addr` from interface `index` if it is there (with it go its connected route and
/// every route through it).
pub async fn delete_address(
    handle: &Handle,
    index: u32,
    addr: IfAddr,
) -> Result<(), rtnetlink::Error> {
    let existing = link_addresses(handle, index).await?;
    for msg in existing {
        if is_address(&msg, addr) {
            handle.address().del(msg).execute().await?;
        }
    }
    Ok(())
}

async fn link_addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<netlink_packet_route::address::AddressMessage>, rtnetlink::Error> {
    handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
}

/// Whether an address message is `addr` (address and prefix length).
fn is_address(msg: &netlink_packet_route::address::AddressMessage, addr: IfAddr) -> bool {
    msg.header.prefix_len == addr.len
        && msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(v4)) if *v4 == addr.addr))
}
