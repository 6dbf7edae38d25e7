//! Map entries and links for packet tests, written the way the controller writes them.

use std::collections::BTreeMap;

use router_common::{
    IfaceEntry, NatConfig, NeighborEntry, NeighborKey, RouteEntry, RouteKey, TABLE_MAIN, nat_flags,
};
use router_user::{datapath::Datapath, maps::Rooms as _};

use crate::topo::ip;

/// Creates veth pairs `(a, b)` in the current namespace, both ends up.
pub fn veth_pairs(pairs: &[(&str, &str)]) {
    for (a, b) in pairs {
        ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        ip(&["link", "set", a, "up"]);
        ip(&["link", "set", b, "up"]);
    }
}

/// An interface entry with a 1500-byte MTU, in zone 0.
pub fn iface(mac: [u8; 6], role: u32, flags: u32) -> IfaceEntry {
    IfaceEntry {
        mac,
        src_mac: mac,
        mtu: 1500,
        role,
        flags,
        zone: 0,
        slot: 0,
    }
}

pub fn route(kind: u32, ifindex: u32, gateway: [u8; 4]) -> RouteEntry {
    RouteEntry {
        kind,
        ifindex,
        gateway,
        _pad: 0,
    }
}

pub fn neighbor(ifindex: u32, addr: [u8; 4], mac: [u8; 6]) -> (NeighborKey, NeighborEntry) {
    (
        NeighborKey { ifindex, addr },
        NeighborEntry { mac, _pad: [0; 2] },
    )
}

/// Main-table routes, as `Datapath::sync_routes` takes them.
#[derive(Default)]
pub struct Routes(pub BTreeMap<(u32, RouteKey), RouteEntry>);

impl Routes {
    pub fn add(&mut self, addr: [u8; 4], len: u32, entry: RouteEntry) {
        self.0.insert(
            (RouteKey::TABLE_BITS + len, RouteKey::new(TABLE_MAIN, addr)),
            entry,
        );
    }
}

/// A gateway with SNAT on `outside` at `gateway_ip`, SNAT ports `ports` (inclusive), and
/// zeroed SNAT counters: the NAT settings the packet tests start from.
pub fn snat_gateway(dp: &mut Datapath, gateway_ip: [u8; 4], outside: u32, ports: (u16, u16)) {
    dp.nat()
        .set_config(NatConfig {
            gateway_ip,
            gateway_ifindex: outside,
            flags: nat_flags::GATEWAY | nat_flags::SNAT,
            port_min: ports.0,
            port_max: ports.1,
            ..NatConfig::default()
        })
        .expect("NAT_CONFIG");
    dp.nat().reset_snat_stats().expect("SNAT_STATS");
}
