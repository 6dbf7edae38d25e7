//! The kernel side of a router namespace over rtnetlink: the links, addresses and routes
//! the desired state asks for, and the routes and neighbours the fast path mirrors.
//!
//! Every function runs on the router's own thread, inside its namespace.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_core::Nla as _;
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use router_common::{NeighborEntry, NeighborKey, RouteEntry, RouteKey, TABLE_MAIN, route_kind};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::config::{IfAddr, Prefix};

const TABLE_LOCAL: u32 = 255;
const TABLE_DEFAULT: u32 = 253;
const TABLE_UNSPEC: u32 = 0;
const EEXIST: i32 = libc::EEXIST;
/// A tun device's `IFF_VNET_HDR` flag in its link info (linux/if_link.h).
const IFLA_TUN_VNET_HDR: u16 = 5;

/// What the controller needs to know about one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
    pub kind: Option<String>,
    /// A tap whose reader exchanges frames with virtio-net headers (`IFF_VNET_HDR`), and so
    /// may hand the kernel frames whose checksum is left to the device (partial).
    pub vnet_hdr: bool,
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
            vnet_hdr: false,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Address(mac) if mac.len() == 6 => link.mac.copy_from_slice(mac),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => {
                                link.kind = Some(match kind {
                                    InfoKind::Veth => "veth".to_string(),
                                    other => format!("{other:?}").to_lowercase(),
                                });
                            }
                            LinkInfo::Data(InfoData::Tun(nlas)) => {
                                link.vnet_hdr = nlas.iter().any(|nla| {
                                    let mut flag = [0u8];
                                    if nla.kind() == IFLA_TUN_VNET_HDR && nla.value_len() == 1 {
                                        nla.emit_value(&mut flag);
                                    }
                                    flag[0] != 0
                                });
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// Why `link` must run the TC entry alone even in XDP mode, if it must: a tap whose reader
/// writes virtio-net headers (OVS with `userspace-tso-enable`) hands the router GSO
/// aggregates and frames with partial checksums. The TC entry forwards both as they are
/// (the skb keeps its segmentation and checksum state); the XDP entry sees an aggregate as
/// a frame larger than the MTU and hands it to the kernel, whose own SNAT then picks
/// another source port mid-connection (seen: bulk TCP reset), and an XDP redirect loses the
/// partial checksum (TCP never connects).
pub fn tc_only(link: &Link) -> Option<&'static str> {
    (link.kind.as_deref() == Some("tun") && link.vnet_hdr).then_some(
        "a tap with virtio-net headers: GSO aggregates and partial checksums, which only the TC entry forwards",
    )
}

/// Why `link` runs the TC entry alone in `auto` mode, if it does: XDP on a veth takes
/// segmentation offload from its peer (the kernel turns it off there), so the TCP of the
/// VM or bridge on the far end crosses the router as MTU-sized frames instead of GSO
/// aggregates. Measured through the router with iperf3 (`docs/benchmarks.md`, TCP): XDP
/// on the veths carries a fifth of what the TC entry and Neutron's path carry.
pub fn tc_by_choice(link: &Link, mode: crate::config::Mode) -> Option<&'static str> {
    (mode == crate::config::Mode::Auto && link.kind.as_deref() == Some("veth")).then_some(
        "mode auto: a veth, whose peer loses segmentation offload (GSO) under XDP; the TC entry keeps TCP bulk at full speed",
    )
}

/// Whether XDP-redirected frames into `link` are delivered, when the configuration does
/// not say.
pub fn xdp_egress_default(link: &Link) -> bool {
    match link.kind.as_deref() {
        // A veth delivers them only if its far end runs XDP or GRO, which the router does
        // not control (a Linux bridge or a VM owns it); otherwise they vanish uncounted. The
        // TC redirect always delivers.
        Some("veth") => false,
        // A tap (an internal port of OVS's userspace datapath, as on OVS-DPDK nodes; a VM's
        // tap) queues a redirected frame for the process reading the tap (ovs-vswitchd,
        // qemu), which gets it as it gets any other frame: nothing is asked of the far end.
        // A frame that finds the queue full (a slow reader) is dropped and counted in the
        // tap's tx_dropped, as the kernel's own path would drop it there.
        // Unless the tap carries virtio-net headers (OVS with `userspace-tso-enable`): then
        // the frames its switch sends the router may have partial checksums, which survive
        // the TC redirect (the skb keeps its checksum state) but not an XDP redirect (TCP
        // never connects). The frames for this tap come from the other taps of the same
        // switch, which carry the same headers.
        Some("tun") => !link.vnet_hdr,
        // NICs with native XDP implement `ndo_xdp_xmit`.
        _ => true,
    }
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
    add_address(handle, index, addr).await
}

/// Adds `addr` to the link; one already there is no error. Returns whether it wrote.
pub async fn add_address(
    handle: &Handle,
    index: u32,
    addr: IfAddr,
) -> Result<bool, rtnetlink::Error> {
    ignore_exists(
        handle
            .address()
            .add(index, IpAddr::V4(addr.addr), addr.len)
            .execute()
            .await,
    )
}

/// A route through a next hop, in some table: what the controller installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaticRoute {
    pub table: u32,
    pub destination: Prefix,
    pub nexthop: Ipv4Addr,
}

/// Adds a route unless one exists. Returns whether it wrote.
pub async fn ensure_route(handle: &Handle, route: StaticRoute) -> Result<bool, rtnetlink::Error> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.destination.addr, route.destination.len)
        .gateway(route.nexthop)
        .table_id(route.table)
        .build();
    ignore_exists(handle.route().add(msg).execute().await)
}

/// The routes of every table that look like the controller's (protocol static, through a
/// next hop), with the message to delete each. Routes an operator adds by hand (`ip route`
/// marks them `boot`) and the kernel's own are not among them.
pub async fn static_routes(
    handle: &Handle,
) -> Result<Vec<(StaticRoute, RouteMessage)>, rtnetlink::Error> {
    let request = RouteMessageBuilder::<Ipv4Addr>::new().table_id(0).build();
    let routes: Vec<RouteMessage> = handle.route().get(request).execute().try_collect().await?;
    let mut out = Vec::new();
    for msg in routes {
        if msg.header.address_family != AddressFamily::Inet
            || msg.header.protocol != RouteProtocol::Static
        {
            continue;
        }
        let mut table = u32::from(msg.header.table);
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gateway = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                _ => {}
            }
        }
        if let Some(nexthop) = gateway {
            let destination = Prefix::new_truncating(dst, msg.header.destination_prefix_length);
            out.push((
                StaticRoute {
                    table,
                    destination,
                    nexthop,
                },
                msg,
            ));
        }
    }
    Ok(out)
}

pub async fn delete_route(handle: &Handle, msg: RouteMessage) -> Result<(), rtnetlink::Error> {
    match handle.route().del(msg).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
        other => other,
    }
}

/// An `ip rule` as the controller installs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRule {
    pub priority: u32,
    pub iif: Option<String>,
    pub from: Prefix,
    pub to: Prefix,
    pub table: u32,
    /// `fwmark MARK/MASK`.
    pub fwmark: Option<(u32, u32)>,
    pub suppress_prefixlength: Option<u32>,
}

/// Priorities of the kernel's own rules (local, main, default), which are left alone.
const KERNEL_RULE_PRIORITIES: [u32; 3] = [0, 32766, 32767];

/// The namespace's IPv4 rules other than the kernel's own, with the message to delete each.
pub async fn rules(handle: &Handle) -> Result<Vec<(KernelRule, RuleMessage)>, rtnetlink::Error> {
    let msgs: Vec<RuleMessage> = handle
        .rule()
        .get(rtnetlink::IpVersion::V4)
        .execute()
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for msg in msgs {
        let mut rule = KernelRule {
            priority: 0,
            iif: None,
            from: Prefix::ANY,
            to: Prefix::ANY,
            table: u32::from(msg.header.table),
            fwmark: None,
            suppress_prefixlength: None,
        };
        let mut mask = u32::MAX;
        for attr in &msg.attributes {
            match attr {
                RuleAttribute::Priority(p) => rule.priority = *p,
                RuleAttribute::Iifname(name) => rule.iif = Some(name.clone()),
                RuleAttribute::Source(IpAddr::V4(a)) => {
                    rule.from = Prefix::new_truncating(*a, msg.header.src_len)
                }
                RuleAttribute::Destination(IpAddr::V4(a)) => {
                    rule.to = Prefix::new_truncating(*a, msg.header.dst_len)
                }
                RuleAttribute::Table(t) => rule.table = *t,
                RuleAttribute::FwMark(m) => rule.fwmark = Some((*m, u32::MAX)),
                RuleAttribute::FwMask(m) => mask = *m,
                // The kernel reports every rule's, -1 where none was given.
                RuleAttribute::SuppressPrefixLen(n) if *n != u32::MAX => {
                    rule.suppress_prefixlength = Some(*n)
                }
                _ => {}
            }
        }
        if let Some((_, m)) = &mut rule.fwmark {
            *m = mask;
        }
        if !KERNEL_RULE_PRIORITIES.contains(&rule.priority) {
            out.push((rule, msg));
        }
    }
    Ok(out)
}

pub async fn add_rule(handle: &Handle, rule: &KernelRule) -> Result<bool, rtnetlink::Error> {
    let mut request = handle
        .rule()
        .add()
        .v4()
        .priority(rule.priority)
        .table_id(rule.table)
        .action(RuleAction::ToTable);
    if let Some(iif) = &rule.iif {
        request = request.input_interface(iif.clone());
    }
    if rule.from.len != 0 {
        request = request.source_prefix(rule.from.addr, rule.from.len);
    }
    if rule.to.len != 0 {
        request = request.destination_prefix(rule.to.addr, rule.to.len);
    }
    if let Some((mark, mask)) = rule.fwmark {
        request = request.fw_mark(mark);
        request
            .message_mut()
            .attributes
            .push(RuleAttribute::FwMask(mask));
    }
    if let Some(n) = rule.suppress_prefixlength {
        request
            .message_mut()
            .attributes
            .push(RuleAttribute::SuppressPrefixLen(n));
    }
    ignore_exists(request.execute().await)
}

pub async fn delete_rule(handle: &Handle, msg: RuleMessage) -> Result<(), rtnetlink::Error> {
    match handle.rule().del(msg).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
        other => other,
    }
}

fn ignore_exists(result: Result<(), rtnetlink::Error>) -> Result<bool, rtnetlink::Error> {
    match result {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -EEXIST => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every IPv4 route of every table, as fast-path entries (local-table entries go to the
/// main table).
pub async fn route_entries(
    handle: &Handle,
) -> Result<Vec<(u32, RouteKey, RouteEntry)>, rtnetlink::Error> {
    let request = RouteMessageBuilder::<Ipv4Addr>::new().table_id(0).build();
    let routes: Vec<RouteMessage> = handle.route().get(request).execute().try_collect().await?;
    Ok(routes.iter().filter_map(route_entry).collect())
}

/// Translates one kernel route into `(prefix length, key, entry)` for the LPM trie, or
/// `None` for routes the fast path does not mirror (the default table, cached clones).
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
        (TABLE_LOCAL, _) | (TABLE_DEFAULT | TABLE_UNSPEC, _) => return None,
        (_, RouteType::Unicast) if multipath || oif == 0 => route_kind::KERNEL,
        (_, RouteType::Unicast) => route_kind::UNICAST,
        (_, RouteType::BlackHole) => route_kind::BLACKHOLE,
        _ => route_kind::KERNEL,
    };
    // Local-table entries are /32 (or broadcast) and always win over main-table prefixes
    // of the same length, as the kernel's local table is consulted first.
    Some((
        RouteKey::TABLE_BITS + len,
        RouteKey::new(
            if table == TABLE_LOCAL {
                TABLE_MAIN
            } else {
                table
            },
            dst.octets(),
        ),
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

/// The IPv4 addresses of interface `index`.
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<IfAddr>, rtnetlink::Error> {
    let msgs = link_addresses(handle, index).await?;
    Ok(msgs
        .iter()
        .filter_map(|msg| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v4)) => Some(IfAddr {
                    addr: *v4,
                    len: msg.header.prefix_len,
                }),
                _ => None,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kind: Option<&str>) -> Link {
        Link {
            index: 7,
            name: "qr-test".into(),
            mac: [0; 6],
            mtu: 1500,
            up: true,
            kind: kind.map(String::from),
            vnet_hdr: false,
        }
    }

    #[test]
    fn xdp_egress_default_by_kind() {
        assert!(!xdp_egress_default(&link(Some("veth"))), "veth");
        assert!(xdp_egress_default(&link(Some("tun"))), "an OVS tap");
        let vnet_hdr = Link {
            vnet_hdr: true,
            ..link(Some("tun"))
        };
        assert!(
            !xdp_egress_default(&vnet_hdr),
            "a tap with virtio-net headers"
        );
        assert!(tc_only(&vnet_hdr).is_some());
        assert!(tc_only(&link(Some("tun"))).is_none());
        assert!(tc_only(&link(Some("veth"))).is_none());
        use crate::config::Mode;
        let veth = link(Some("veth"));
        assert!(tc_by_choice(&veth, Mode::Auto).is_some());
        assert!(tc_by_choice(&veth, Mode::Xdp).is_none());
        assert!(tc_by_choice(&link(Some("tun")), Mode::Auto).is_none());
        assert!(tc_by_choice(&link(None), Mode::Auto).is_none());
        assert!(xdp_egress_default(&link(None)), "a NIC");
    }
}
