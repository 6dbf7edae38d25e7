use std::net::Ipv4Addr;

use super::*;
use crate::config::DesiredState;

/// A distributed router: nodes c1, c2 (compute) and net (its SNAT part).
pub(crate) const ROUTER: &str = r#"
[[router]]
id = "r1"
namespace = "qrouter-r1"

[router.gateway]
interface = "qg-r1"
address = "198.18.0.2/24"
nexthop = "198.18.0.1"

[[router.interface]]
name = "qr-net1"
address = "10.0.1.1/24"

[[router.interface]]
name = "qr-net2"
address = "10.0.2.1/24"

[[router.floating_ip]]
address = "198.18.0.10"
fixed = "10.0.1.5"

[router.distributed]
nodes = { c1 = "192.0.2.11", c2 = "192.0.2.12", net = "192.0.2.10" }

[[router.distributed.network]]
interface = "qr-net1"
vni = 1001
snat_address = "10.0.1.3"

[[router.distributed.network]]
interface = "qr-net2"
vni = 1002
snat_address = "10.0.2.3"

[[router.distributed.port]]
interface = "qr-net1"
address = "10.0.1.5"
mac = "fa:16:3e:00:01:05"
node = "c1"

[[router.distributed.port]]
interface = "qr-net2"
address = "10.0.2.6"
mac = "fa:16:3e:00:02:06"
node = "c2"

[[router.distributed.port]]
interface = "qr-net1"
address = "10.0.1.3"
mac = "fa:16:3e:00:01:03"
node = "net"

[[router.distributed.port]]
interface = "qr-net2"
address = "10.0.2.3"
mac = "fa:16:3e:00:02:03"
node = "net"
"#;

pub(crate) fn router(text: &str) -> Router {
    DesiredState::parse(text).expect("parses").routers.remove(0)
}

#[test]
fn the_file_reads_back_from_its_rendering() {
    let r = router(ROUTER);
    let d = r.distributed.as_ref().expect("distributed");
    assert_eq!(d.nodes.len(), 3);
    assert_eq!(d.network("qr-net2").map(|n| n.vni), Some(1002));
    let again = DesiredState::parse(&r.to_toml()).expect("rendering parses");
    assert_eq!(again.routers[0], r);
    assert_eq!(Router::from_json(r.to_json().as_bytes()), Ok(r));
}

#[test]
fn each_node_runs_its_part() {
    let r = router(ROUTER);
    // A node with no port and no placement runs nothing.
    assert_eq!(local_copy(&r, "c9", false, None), Ok(None));
    let snat = local_copy(&r, "net", true, None)
        .expect("ok")
        .expect("runs");
    assert_eq!(snat.part.as_ref().map(|p| p.role), Some(Role::Snat));
    assert_eq!(snat.interfaces[0].address.to_string(), "10.0.1.3/24");
    assert!(snat.gateway.as_ref().is_some_and(|g| g.snat));
    assert!(
        snat.floating_ips.is_empty(),
        "floating IPs are where their VMs are"
    );
    assert_eq!(policy_flags(&snat), 0);
    let c1 = local_copy(&r, "c1", false, Some("host-c1"))
        .expect("ok")
        .expect("runs");
    assert_eq!(c1.part.as_ref().map(|p| p.role), Some(Role::Compute));
    assert_eq!(c1.interfaces[0].address.to_string(), "10.0.1.1/24");
    // Its own VM's floating IP, on a gateway that translates nothing else.
    assert!(c1.gateway.as_ref().is_some_and(|g| !g.snat));
    assert_eq!(c1.floating_ips.len(), 1);
    assert_eq!(
        policy_flags(&c1),
        router_common::policy_flags::FLOATING_IP_BY_MAIN
    );
    let c2 = local_copy(&r, "c2", false, None)
        .expect("ok")
        .expect("runs");
    assert!(c2.floating_ips.is_empty(), "10.0.1.5 is not on c2");
    // Its own subnets stay in main; the rest leaves for the network's SNAT address.
    let to_main: Vec<String> = c1
        .rules
        .iter()
        .filter(|x| x.table == TABLE_MAIN)
        .map(|x| x.to.to_string())
        .collect();
    assert_eq!(to_main, ["10.0.1.0/24", "10.0.2.0/24"]);
    let snat_rule = c1
        .rules
        .iter()
        .find(|x| x.from.to_string() == "10.0.2.0/24")
        .expect("a rule for net2");
    assert!(snat_rule.priority > to_main.len() as u32);
    let route = c1
        .routes
        .iter()
        .find(|x| x.table == snat_rule.table)
        .expect("its table's route");
    assert_eq!(route.nexthop, Ipv4Addr::new(10, 0, 2, 3));
    // Placed where it also holds ports: refused, named.
    let both = local_copy(&r, "c1", true, None).expect_err("refused");
    assert!(both.contains("node c1"), "{both}");
}

#[test]
fn compute_nodes_forward_from_their_own_dvr_mac() {
    let r = router(ROUTER);
    let c1 = local_copy(&r, "c1", false, None)
        .expect("ok")
        .expect("runs");
    let c2 = local_copy(&r, "c2", false, None)
        .expect("ok")
        .expect("runs");
    let gw = [2, 0, 0, 0, 0, 1];
    assert_eq!(source_mac(&c1, gw, false), [0xfa, 0x16, 0x3f, 0, 2, 11]);
    assert_eq!(source_mac(&c2, gw, false), [0xfa, 0x16, 0x3f, 0, 2, 12]);
    assert_eq!(source_mac(&c1, gw, true), gw);
    let snat = local_copy(&r, "net", true, None)
        .expect("ok")
        .expect("runs");
    assert_eq!(source_mac(&snat, gw, false), gw);
    assert_eq!(source_mac(&r, gw, false), gw);
}

#[test]
fn overlay_entries_are_the_ports_on_other_nodes() {
    let r = router(ROUTER);
    let c1 = local_copy(&r, "c1", false, None)
        .expect("ok")
        .expect("runs");
    let o = overlay_entries(&c1);
    assert_eq!(o.len(), 2);
    assert_eq!(o[0].device(), "vxlan-1001");
    // net1: only the SNAT port (10.0.1.5 is on c1 itself).
    assert_eq!(
        o[0].remote,
        [(
            [0xfa, 0x16, 0x3e, 0, 1, 3],
            Ipv4Addr::new(192, 0, 2, 10),
            Ipv4Addr::new(10, 0, 1, 3)
        )]
    );
    assert_eq!(o[1].remote.len(), 2);
    // Every port is a neighbour of the compute copy; the SNAT copy skips its own.
    assert_eq!(neighbours(&c1).len(), 4);
    let snat = local_copy(&r, "net", true, None)
        .expect("ok")
        .expect("runs");
    let n = neighbours(&snat);
    assert_eq!(n.len(), 2);
    assert!(n.iter().all(|x| x.address.octets()[3] != 3));
}

#[test]
fn bad_distributed_sections_are_named() {
    let cases = [
        (
            ROUTER.replace("vni = 1002", "vni = 1001"),
            "distributed.network[1].vni",
        ),
        (
            ROUTER.replace("vni = 1002", "vni = 16777216"),
            "distributed.network[1].vni",
        ),
        (
            ROUTER.replace("node = \"c2\"", "node = \"c7\""),
            "distributed.port[1].node",
        ),
        (
            ROUTER.replace("mac = \"fa:16:3e:00:02:06\"", "mac = \"01:00:5e:00:00:01\""),
            "distributed.port[1].mac",
        ),
        (
            ROUTER.replace("address = \"10.0.2.6\"", "address = \"10.0.3.6\""),
            "distributed.port[1].address",
        ),
        (
            ROUTER.replace("snat_address = \"10.0.2.3\"", "snat_address = \"10.0.2.9\""),
            "distributed.network[1].snat_address",
        ),
        (
            ROUTER.replace("c2 = \"192.0.2.12\"", "c2 = \"10.0.2.11\""),
            "distributed.nodes.c2",
        ),
        (
            ROUTER.replace(
                "[[router.distributed.network]]\ninterface = \"qr-net2\"\nvni = 1002\nsnat_address = \"10.0.2.3\"\n",
                "",
            ),
            "distributed.network",
        ),
        (
            ROUTER.replace("[router.distributed]", "[router.firewall]\n\n[router.distributed]"),
            "firewall",
        ),
        (
            ROUTER.replace("fixed = \"10.0.1.5\"", "fixed = \"10.0.1.77\""),
            "floating_ip[0].fixed",
        ),
    ];
    for (text, key) in cases {
        let e = DesiredState::parse(&text).expect_err(key).to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
}

#[test]
fn a_distributed_router_from_a_file_needs_the_nodes_name() {
    // No test of this process sets this node (routerd does, from --node).
    let e = localize(&router(ROUTER)).expect_err("refused").to_string();
    assert!(e.contains("--node"), "{e}");
    // A node's copy, or a router that is not distributed, runs as it is.
    let c1 = local_copy(&router(ROUTER), "c1", false, None)
        .expect("ok")
        .expect("runs");
    assert_eq!(localize(&c1).expect("as it is"), c1);
    let mut plain = router(ROUTER);
    plain.distributed = None;
    assert_eq!(localize(&plain).expect("as it is"), plain);
}
