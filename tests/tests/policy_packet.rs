//! Policy routing, external source tables, steering and firewall verdicts, packet by packet
//! through both entries (BPF_PROG_TEST_RUN), with the maps written the way the controller
//! writes them (`Datapath::set_policy`).
//!
//! The router: `in0` internal 10.0.1.0/24 (router .1), `fw0` internal 10.99.0.0/24 (a
//! firewall at .2, the steering target), `out0` the gateway interface on two external
//! subnets: 198.18.0.0/24 (gateway IP .2, gateway A .1) and 198.19.0.0/24 (gateway B .1).
//! Floating IPs 198.18.0.10 -> 10.0.1.5 and 198.19.0.10 -> 10.0.1.9; 10.0.1.6 has none.
//! Every interface is its own session zone, as routerd sets them.

use std::collections::BTreeMap;

use router_common::{
    FwRule, NatConfig, Net, PolicyRule, REJECT_MARK, Reason, RouteKey, fw_action, fw_flags,
    iface_flags, iface_role, nat_flags, route_kind, table_external_subnet,
};
use router_tests::{
    fixture::{Routes, iface, neighbor, route, veth_pairs},
    frames::{ROUTER_IN_MAC, ROUTER_OUT_MAC, addresses, eth},
    netns::NetnsGuard,
    testrun::{
        self, Entry, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT,
    },
    topo::ifindex,
};
use router_user::{
    datapath::Datapath,
    maps::{Rooms as _, policy},
};

const ROUTER_FW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x40];
const GW: [u8; 4] = [198, 18, 0, 2];
const GW_A: [u8; 4] = [198, 18, 0, 1];
const GW_B: [u8; 4] = [198, 19, 0, 1];
const HOST_B: [u8; 4] = [198, 19, 0, 50];
const FIREWALL: [u8; 4] = [10, 99, 0, 2];
const FIP_A: [u8; 4] = [198, 18, 0, 10];
const FIXED_A: [u8; 4] = [10, 0, 1, 5];
const FIP_B: [u8; 4] = [198, 19, 0, 10];
const FIXED_B: [u8; 4] = [10, 0, 1, 9];
const VM3: [u8; 4] = [10, 0, 1, 6];
const REMOTE: [u8; 4] = [203, 0, 113, 9];
const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x55];
const GW_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
const GW_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
const HOST_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb5];
const FIREWALL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xf2];
const T_STEER: u32 = 100;
const T_OTHER: u32 = 200;
const T_NARROW: u32 = 300;
const PAYLOAD: &[u8] = b"some payload";

#[derive(Debug, PartialEq, Clone, Copy)]
enum Outcome {
    Forward,
    Pass,
    Drop,
}

struct Router {
    _ns: NetnsGuard,
    dp: Datapath,
    inside: u32,
    fw: u32,
    outside: u32,
    entry: Entry,
}

impl Router {
    fn new(entry: Entry) -> Self {
        let ns = NetnsGuard::new();
        veth_pairs(&[("in0", "in1"), ("fw0", "fw1"), ("out0", "out1")]);
        let (inside, fw, outside) = (ifindex("in0"), ifindex("fw0"), ifindex("out0"));
        let mut dp = Datapath::load("policy-test", 4096).expect("loading");
        for (index, mac, role) in [
            (inside, ROUTER_IN_MAC, iface_role::INTERNAL),
            (fw, ROUTER_FW_MAC, iface_role::INTERNAL),
            (outside, ROUTER_OUT_MAC, iface_role::EXTERNAL),
        ] {
            let mut entry = iface(mac, role, iface_flags::XDP_EGRESS);
            entry.zone = index as u16;
            dp.ifaces().set(index, entry).expect("IFACES");
            dp.ifaces().set_xdp_egress(index).expect("EGRESS_DEVS");
        }
        let mut routes = Routes::default();
        let unicast = |ifindex, via| route(route_kind::UNICAST, ifindex, via);
        let local = route(route_kind::LOCAL, 0, [0; 4]);
        routes.add([10, 0, 1, 0], 24, unicast(inside, [0; 4]));
        routes.add([10, 0, 1, 1], 32, local);
        routes.add([10, 99, 0, 0], 24, unicast(fw, [0; 4]));
        routes.add([198, 18, 0, 0], 24, unicast(outside, [0; 4]));
        routes.add([198, 19, 0, 0], 24, unicast(outside, [0; 4]));
        routes.add(GW, 32, local);
        routes.add([0; 4], 0, unicast(outside, GW_A));
        let mut add = |table: u32, addr: [u8; 4], len: u32, entry| {
            routes.0.insert(
                (RouteKey::TABLE_BITS + len, RouteKey::new(table, addr)),
                entry,
            );
        };
        add(T_STEER, [0; 4], 0, unicast(fw, FIREWALL));
        add(T_STEER, [10, 0, 1, 1], 32, local);
        add(T_OTHER, [0; 4], 0, unicast(outside, GW_B));
        add(T_NARROW, [192, 0, 2, 0], 24, unicast(outside, GW_B));
        add(table_external_subnet(0), [0; 4], 0, unicast(outside, GW_A));
        add(table_external_subnet(1), [0; 4], 0, unicast(outside, GW_B));
        dp.routes().sync(&routes.0).expect("ROUTES");
        let mut neighbors = vec![
            neighbor(outside, GW_A, GW_A_MAC),
            neighbor(outside, GW_B, GW_B_MAC),
            neighbor(outside, HOST_B, HOST_B_MAC),
            neighbor(fw, FIREWALL, FIREWALL_MAC),
        ];
        for vm in [FIXED_A, FIXED_B, VM3] {
            neighbors.push(neighbor(inside, vm, VM_MAC));
        }
        dp.routes().sync_neighbors(&neighbors).expect("NEIGHBORS");
        Self {
            _ns: ns,
            dp,
            inside,
            fw,
            outside,
            entry,
        }
    }

    /// Gateway, SNAT and the two floating IPs.
    fn with_nat(mut self) -> Self {
        self.dp
            .nat()
            .set_config(NatConfig {
                gateway_ip: GW,
                gateway_ifindex: self.outside,
                flags: nat_flags::GATEWAY | nat_flags::SNAT,
                port_min: 40000,
                port_max: 40100,
                ..NatConfig::default()
            })
            .expect("NAT_CONFIG");
        self.dp.nat().reset_snat_stats().expect("SNAT_STATS");
        self.dp.nat().add_floating_ip(FIP_A, FIXED_A).expect("FIP");
        self.dp.nat().add_floating_ip(FIP_B, FIXED_B).expect("FIP");
        self
    }

    fn policy(&mut self, rules: &[PolicyRule], fw: &[FwRule], flags: u32, sources: bool) {
        let source_tables = if sources {
            BTreeMap::from([
                (([198, 18, 0, 0], 24), table_external_subnet(0)),
                (([198, 19, 0, 0], 24), table_external_subnet(1)),
            ])
        } else {
            BTreeMap::new()
        };
        let wanted = policy::PolicyTables {
            rules: rules.to_vec(),
            fw_rules: fw.to_vec(),
            fw_flags: flags,
            source_tables,
            ..policy::PolicyTables::default()
        };
        self.dp.policy().sync_rules(&wanted).expect("policy maps");
    }

    fn run(&self, ingress: u32, frame: &[u8]) -> (Outcome, Vec<u8>) {
        let testrun::Run {
            verdict,
            frame: out,
            ..
        } = testrun::run(&self.dp, self.entry, ingress, frame);
        let outcome = match (self.entry, verdict) {
            (Entry::Xdp, XDP_REDIRECT) | (Entry::Tc, TC_ACT_REDIRECT) => Outcome::Forward,
            (Entry::Xdp, XDP_PASS) | (Entry::Tc, TC_ACT_OK) => Outcome::Pass,
            (Entry::Xdp, XDP_DROP) | (Entry::Tc, TC_ACT_SHOT) => Outcome::Drop,
            (_, v) => panic!("unexpected verdict {v}"),
        };
        (outcome, out)
    }

    /// Forwards `frame` and returns (destination MAC, source, destination, ports).
    fn forward(&self, ingress: u32, frame: &[u8]) -> ([u8; 6], [u8; 4], [u8; 4], u16, u16) {
        let (outcome, out) = self.run(ingress, frame);
        assert_eq!(outcome, Outcome::Forward, "{:?}: not forwarded", self.entry);
        let s = addresses(&out);
        (s.dst_mac, s.src, s.dst, s.sport, s.dport)
    }

    fn reason(&mut self, ifindex: u32, r: Reason) -> u64 {
        self.dp.ifaces().stats(ifindex).expect("stats").reasons[r as usize]
    }
}

fn rule(iif: u32, from: ([u8; 4], u8), to: ([u8; 4], u8), table: u32) -> PolicyRule {
    PolicyRule {
        iif,
        from: Net::new(from.0, from.1),
        to: Net::new(to.0, to.1),
        table,
    }
}

const ANY: ([u8; 4], u8) = ([0; 4], 0);

fn fw_rule(
    action: u8,
    proto: u8,
    src: ([u8; 4], u8),
    dst: ([u8; 4], u8),
    ports: (u16, u16),
    slot: u8,
) -> FwRule {
    FwRule {
        source: Net::new(src.0, src.1),
        destination: Net::new(dst.0, dst.1),
        port_min: ports.0,
        port_max: ports.1,
        proto,
        action,
        slot,
        _pad: 0,
    }
}

fn both(test: impl Fn(Entry)) {
    router_tests::require_root();
    test(Entry::Xdp);
    test(Entry::Tc);
}

#[test]
fn rules_are_walked_in_order_and_fall_through_tables_without_a_route() {
    both(|entry| {
        let mut r = Router::new(entry);
        let (inside, outside) = (r.inside, r.outside);
        // No rules: the main table (default via gateway A).
        let to_remote = eth(ROUTER_IN_MAC)
            .ipv4([10, 0, 1, 200], REMOTE)
            .udp(5000, 53)
            .payload(PAYLOAD);
        assert_eq!(
            r.forward(inside, &to_remote).0,
            GW_A_MAC,
            "{entry:?}: main table"
        );
        r.policy(
            &[
                // Table 300 only knows 192.0.2.0/24: other destinations fall through.
                rule(0, ANY, ANY, T_NARROW),
                rule(0, ([10, 0, 1, 0], 25), ANY, T_STEER),
                rule(inside, ANY, ([203, 0, 113, 0], 24), T_OTHER),
            ],
            &[],
            0,
            false,
        );
        // 10.0.1.200 is outside 10.0.1.0/25: the third rule, table 200 (gateway B).
        assert_eq!(
            r.forward(inside, &to_remote).0,
            GW_B_MAC,
            "{entry:?}: iif+to rule"
        );
        // 10.0.1.5 matches the second rule first: table 100, the firewall.
        let steered = eth(ROUTER_IN_MAC)
            .ipv4(FIXED_A, REMOTE)
            .udp(5000, 53)
            .payload(PAYLOAD);
        let (mac, ..) = r.forward(inside, &steered);
        assert_eq!(mac, FIREWALL_MAC, "{entry:?}: from rule");
        // The first rule's table has a route for 192.0.2.1: it wins over the others.
        let narrow = eth(ROUTER_IN_MAC)
            .ipv4(FIXED_A, [192, 0, 2, 1])
            .udp(5000, 53)
            .payload(PAYLOAD);
        assert_eq!(
            r.forward(inside, &narrow).0,
            GW_B_MAC,
            "{entry:?}: first rule"
        );
        // The iif rule does not match traffic from another interface: main table.
        let from_out = eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, [203, 0, 113, 77])
            .udp(5000, 53)
            .payload(PAYLOAD);
        assert_eq!(
            r.forward(outside, &from_out).0,
            GW_A_MAC,
            "{entry:?}: other iif"
        );
        // A local address in a rule's table stays local.
        let to_router = eth(ROUTER_IN_MAC)
            .ipv4(FIXED_A, [10, 0, 1, 1])
            .udp(5000, 53)
            .payload(PAYLOAD);
        assert_eq!(
            r.run(inside, &to_router).0,
            Outcome::Pass,
            "{entry:?}: local"
        );
        // Order matters: with the iif rule first, 10.0.1.5 to 203.0.113.9 takes table 200.
        r.policy(
            &[
                rule(inside, ANY, ([203, 0, 113, 0], 24), T_OTHER),
                rule(0, ([10, 0, 1, 0], 25), ANY, T_STEER),
            ],
            &[],
            0,
            false,
        );
        assert_eq!(
            r.forward(inside, &steered).0,
            GW_B_MAC,
            "{entry:?}: reordered"
        );
        // Rules removed: the main table again.
        r.policy(&[], &[], 0, false);
        assert_eq!(
            r.forward(inside, &steered).0,
            GW_A_MAC,
            "{entry:?}: no rules"
        );
        assert_eq!(r.dp.policy().config().expect("config").rule_count, 0);
    });
}

#[test]
fn steering_sends_traffic_through_the_firewall_and_nat_happens_on_the_second_pass() {
    both(|entry| {
        let mut r = Router::new(entry).with_nat();
        let (inside, fw, outside) = (r.inside, r.fw, r.outside);
        r.policy(&[rule(inside, ANY, ANY, T_STEER)], &[], 0, false);
        // Pass 1: from the VM with a floating IP to the firewall, untranslated.
        let out = eth(ROUTER_IN_MAC)
            .ipv4(FIXED_A, REMOTE)
            .udp(5000, 53)
            .payload(PAYLOAD);
        let (mac, src, dst, sport, _) = r.forward(inside, &out);
        assert_eq!(
            (mac, src, dst, sport),
            (FIREWALL_MAC, FIXED_A, REMOTE, 5000),
            "{entry:?}: pass 1"
        );
        // Pass 2: back from the firewall (zone fw0), routed by main, float-snat.
        let back = eth(ROUTER_FW_MAC)
            .ipv4(FIXED_A, REMOTE)
            .udp(5000, 53)
            .payload(PAYLOAD);
        let (mac, src, ..) = r.forward(fw, &back);
        assert_eq!(
            (mac, src),
            (GW_A_MAC, FIP_A),
            "{entry:?}: pass 2 float-snat"
        );
        // A VM without a floating IP: SNAT on pass 2 only, with a session in zone fw0.
        let out = eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .tcp(5555, 80)
            .seq(1000)
            .syn()
            .build();
        let (mac, src, ..) = r.forward(inside, &out);
        assert_eq!(
            (mac, src),
            (FIREWALL_MAC, VM3),
            "{entry:?}: SNAT pass 1 untranslated"
        );
        let back = eth(ROUTER_FW_MAC)
            .ipv4(VM3, REMOTE)
            .tcp(5555, 80)
            .seq(1000)
            .syn()
            .build();
        let (_, src, _, sport, _) = r.forward(fw, &back);
        assert_eq!(src, GW, "{entry:?}: SNAT on pass 2");
        // The next packet's pass 1 still leaves untranslated: its zone has no session.
        let (_, src, ..) = r.forward(inside, &out);
        assert_eq!(src, VM3, "{entry:?}: zones keep the passes apart");
        // The reply comes back to the gateway IP and is translated back.
        let reply = eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, GW)
            .tcp(80, sport)
            .seq(1000)
            .syn()
            .ack(1)
            .build();
        let (mac, _, dst, _, dport) = r.forward(outside, &reply);
        assert_eq!((mac, dst, dport), (VM_MAC, VM3, 5555), "{entry:?}: reply");
        // Steering off: direct, SNAT on the only pass.
        r.policy(&[], &[], 0, false);
        let direct = eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .udp(6000, 53)
            .payload(PAYLOAD);
        let (mac, src, ..) = r.forward(inside, &direct);
        assert_eq!((mac, src), (GW_A_MAC, GW), "{entry:?}: steering off");
    });
}

#[test]
fn external_source_tables_send_each_floating_ip_to_its_subnets_gateway() {
    both(|entry| {
        let mut r = Router::new(entry).with_nat();
        let inside = r.inside;
        r.policy(&[], &[], 0, true);
        let (mac, src, ..) = r.forward(
            inside,
            &eth(ROUTER_IN_MAC)
                .ipv4(FIXED_B, REMOTE)
                .udp(5000, 53)
                .payload(PAYLOAD),
        );
        assert_eq!(
            (mac, src),
            (GW_B_MAC, FIP_B),
            "{entry:?}: subnet B floating IP"
        );
        let (mac, src, ..) = r.forward(
            inside,
            &eth(ROUTER_IN_MAC)
                .ipv4(FIXED_A, REMOTE)
                .udp(5000, 53)
                .payload(PAYLOAD),
        );
        assert_eq!(
            (mac, src),
            (GW_A_MAC, FIP_A),
            "{entry:?}: subnet A floating IP"
        );
        let (mac, src, ..) = r.forward(
            inside,
            &eth(ROUTER_IN_MAC)
                .ipv4(VM3, REMOTE)
                .udp(5000, 53)
                .payload(PAYLOAD),
        );
        assert_eq!(
            (mac, src),
            (GW_A_MAC, GW),
            "{entry:?}: SNAT leaves by the primary"
        );
        // A host on an external subnet is connected: straight to it, never a gateway.
        let (mac, src, ..) = r.forward(
            inside,
            &eth(ROUTER_IN_MAC)
                .ipv4(FIXED_A, HOST_B)
                .udp(5000, 53)
                .payload(PAYLOAD),
        );
        assert_eq!(
            (mac, src),
            (HOST_B_MAC, FIP_A),
            "{entry:?}: connected external host"
        );
        // Without the source tables, subnet B's floating IP would leave by gateway A.
        r.policy(&[], &[], 0, false);
        let (mac, ..) = r.forward(
            inside,
            &eth(ROUTER_IN_MAC)
                .ipv4(FIXED_B, REMOTE)
                .udp(5000, 53)
                .payload(PAYLOAD),
        );
        assert_eq!(mac, GW_A_MAC, "{entry:?}: no source tables");
    });
}

#[test]
fn firewall_verdicts_and_counters() {
    both(|entry| {
        let mut r = Router::new(entry);
        let (inside, outside) = (r.inside, r.outside);
        let id = format!("policy-fw-{}-{entry:?}", std::process::id());
        let pins = router_user::paths::router_pin_dir(&id);
        r.dp.pin_maps(&pins).expect("pinning");
        let rules = [
            fw_rule(
                fw_action::DENY,
                6,
                ([2, 2, 2, 0], 24),
                ([3, 3, 3, 0], 24),
                (1, 65535),
                7,
            ),
            fw_rule(fw_action::DENY, 1, ([10, 0, 1, 0], 25), ANY, (0, 65535), 3),
            fw_rule(fw_action::REJECT, 17, ANY, ANY, (53, 53), 9),
            fw_rule(fw_action::ALLOW, 6, ANY, ANY, (80, 80), 4),
            fw_rule(fw_action::ALLOW, 1, ANY, ANY, (0, 65535), 5),
        ];
        r.policy(&[], &rules, fw_flags::ENABLED, false);
        let counters = |_: &mut Router| {
            router_user::maps::Pinned::open(&id)
                .and_then(|mut m| m.policy().rule_counters())
                .expect("counters")
        };
        let fixed = || {
            router_user::maps::Pinned::open(&id)
                .and_then(|mut m| m.policy().fixed_counters())
                .expect("fixed")
        };

        // Allowed new flow; its reply is established (default deny would drop it).
        let syn = eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .tcp(4000, 80)
            .seq(1000)
            .syn()
            .build();
        assert_eq!(
            r.run(inside, &syn).0,
            Outcome::Forward,
            "{entry:?}: allow tcp/80"
        );
        let reply = eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, VM3)
            .tcp(80, 4000)
            .seq(1000)
            .syn()
            .ack(1)
            .build();
        assert_eq!(
            r.run(outside, &reply).0,
            Outcome::Forward,
            "{entry:?}: established"
        );
        assert_eq!(fixed().established.0, 1, "{entry:?}: established counter");
        // New flow from outside, no rule: default deny.
        let inbound = eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, VM3)
            .tcp(4001, 22)
            .seq(1000)
            .syn()
            .build();
        let before = r.reason(outside, Reason::FwDefaultDeny);
        assert_eq!(
            r.run(outside, &inbound).0,
            Outcome::Drop,
            "{entry:?}: default deny"
        );
        assert_eq!(r.reason(outside, Reason::FwDefaultDeny), before + 1);
        assert_eq!(fixed().default.0, 1, "{entry:?}: default counter");
        // Deny by rule: ICMP from 10.0.1.0/25, counted on rule 1 (slot 3).
        let ping = eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .icmp_echo_request(7, 1)
            .payload(b"ping");
        for _ in 0..3 {
            assert_eq!(
                r.run(inside, &ping).0,
                Outcome::Drop,
                "{entry:?}: deny icmp"
            );
        }
        assert_eq!(r.reason(inside, Reason::FwDeny), 3);
        // ICMP from 10.0.1.200 is not in the /25: the allow-icmp rule.
        let ping2 = eth(ROUTER_IN_MAC)
            .ipv4([10, 0, 1, 200], REMOTE)
            .icmp_echo_request(7, 1)
            .payload(b"ping");
        assert_eq!(
            r.run(inside, &ping2).0,
            Outcome::Forward,
            "{entry:?}: allow icmp"
        );
        // Reject: handed to the kernel, marked for it to answer (TC shows the mark).
        let dns = eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .udp(5353, 53)
            .payload(PAYLOAD);
        assert_eq!(r.run(inside, &dns).0, Outcome::Pass, "{entry:?}: reject");
        assert_eq!(r.reason(inside, Reason::FwReject), 1);
        if entry == Entry::Tc {
            let run = testrun::run(&r.dp, Entry::Tc, inside, &dns);
            assert_eq!(
                (run.verdict, run.mark),
                (TC_ACT_OK, Some(REJECT_MARK)),
                "reject mark"
            );
        }
        // Invalid: SYN+FIN, and an echo reply nobody asked for.
        let synfin = eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .tcp(4002, 80)
            .seq(1000)
            .syn()
            .fin()
            .build();
        assert_eq!(
            r.run(inside, &synfin).0,
            Outcome::Drop,
            "{entry:?}: SYN+FIN"
        );
        let stray = eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, VM3)
            .icmp_echo_reply(9, 1)
            .payload(b"ping");
        assert_eq!(
            r.run(outside, &stray).0,
            Outcome::Drop,
            "{entry:?}: stray echo reply"
        );
        assert_eq!(r.reason(inside, Reason::FwInvalid), 1);
        assert_eq!(r.reason(outside, Reason::FwInvalid), 1);
        assert_eq!(fixed().invalid.0, 2, "{entry:?}: invalid counter");
        let c = counters(&mut r);
        let packets: Vec<u64> = c.iter().map(|c| c.packets).collect();
        let expect_reject = if entry == Entry::Tc { 2 } else { 1 };
        assert_eq!(
            packets,
            [0, 3, expect_reject, 1, 1],
            "{entry:?}: per-rule packets"
        );
        assert_eq!(
            c[1].bytes,
            3 * ping.len() as u64,
            "{entry:?}: per-rule bytes"
        );
        // A flow the firewall accepts, to a next hop whose MAC is unknown: the XDP entry
        // hands it to the TC entry after the firewall decided, and only the TC entry, which
        // decides it again, counts the rule.
        let unresolved = eth(ROUTER_IN_MAC)
            .ipv4(VM3, [198, 18, 0, 77])
            .tcp(4003, 80)
            .seq(1000)
            .syn()
            .build();
        let allowed = |r: &mut Router| counters(r)[3].packets;
        let before = allowed(&mut r);
        if entry == Entry::Xdp {
            assert_eq!(r.run(inside, &unresolved).0, Outcome::Pass, "handed to TC");
            assert_eq!(allowed(&mut r), before, "the XDP entry does not count it");
        }
        let tc = testrun::run(&r.dp, Entry::Tc, inside, &unresolved);
        assert_eq!(
            tc.verdict,
            testrun::TC_ACT_REDIRECT,
            "{entry:?}: forwarded, the kernel resolving the MAC"
        );
        assert_eq!(allowed(&mut r), before + 1, "{entry:?}: counted once");
        // Traffic between two external addresses is not the firewall's business.
        let transit = eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, [198, 19, 0, 50])
            .udp(1, 2)
            .payload(PAYLOAD);
        assert_eq!(
            r.run(outside, &transit).0,
            Outcome::Forward,
            "{entry:?}: not internal"
        );
        // Default allow: the inbound flow passes and is tracked.
        r.policy(
            &[],
            &rules,
            fw_flags::ENABLED | fw_flags::DEFAULT_ALLOW,
            false,
        );
        assert_eq!(
            r.run(outside, &inbound).0,
            Outcome::Forward,
            "{entry:?}: default allow"
        );
        let reply = eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .tcp(22, 4001)
            .seq(1000)
            .syn()
            .ack(1)
            .build();
        assert_eq!(
            r.run(inside, &reply).0,
            Outcome::Forward,
            "{entry:?}: its reply"
        );
        let _ = std::fs::remove_dir_all(&pins);
    });
}

#[test]
fn firewall_keeps_nat_and_tracks_floating_ip_flows() {
    both(|entry| {
        let mut r = Router::new(entry).with_nat();
        let (inside, outside) = (r.inside, r.outside);
        let allow_out_web = fw_rule(fw_action::ALLOW, 6, ([10, 0, 1, 0], 24), ANY, (80, 80), 0);
        r.policy(&[], &[allow_out_web], fw_flags::ENABLED, false);
        // SNAT: the SNAT session is the firewall's session too.
        let (_, src, _, sport, _) = r.forward(
            inside,
            &eth(ROUTER_IN_MAC)
                .ipv4(VM3, REMOTE)
                .tcp(4100, 80)
                .seq(1000)
                .syn()
                .build(),
        );
        assert_eq!(src, GW, "{entry:?}: SNAT with a firewall");
        let reply = eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, GW)
            .tcp(80, sport)
            .seq(1000)
            .syn()
            .ack(1)
            .build();
        let (_, _, dst, ..) = r.forward(outside, &reply);
        assert_eq!(dst, VM3, "{entry:?}: SNAT reply established");
        // Floating IP out: float-snat, a forward session; its reply established and DNATed.
        let (_, src, ..) = r.forward(
            inside,
            &eth(ROUTER_IN_MAC)
                .ipv4(FIXED_A, REMOTE)
                .tcp(4200, 80)
                .seq(1000)
                .syn()
                .build(),
        );
        assert_eq!(src, FIP_A, "{entry:?}: float-snat with a firewall");
        let reply = eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, FIP_A)
            .tcp(80, 4200)
            .seq(1000)
            .syn()
            .ack(1)
            .build();
        let (_, _, dst, ..) = r.forward(outside, &reply);
        assert_eq!(dst, FIXED_A, "{entry:?}: floating IP reply established");
        // New flow to the floating IP from outside: default deny (rules see the fixed IP).
        let inbound = eth(ROUTER_OUT_MAC)
            .ipv4(REMOTE, FIP_A)
            .tcp(4300, 80)
            .seq(1000)
            .syn()
            .build();
        assert_eq!(
            r.run(outside, &inbound).0,
            Outcome::Drop,
            "{entry:?}: inbound denied"
        );
        let allow_in = fw_rule(fw_action::ALLOW, 6, ANY, ([10, 0, 1, 5], 32), (80, 80), 1);
        r.policy(&[], &[allow_out_web, allow_in], fw_flags::ENABLED, false);
        let (_, _, dst, ..) = r.forward(outside, &inbound);
        assert_eq!(dst, FIXED_A, "{entry:?}: inbound allowed by its fixed IP");
        let sessions = r.dp.sessions().entries().expect("sessions");
        assert_eq!(sessions, 6, "{entry:?}: three sessions, two entries each");
    });
}

#[test]
fn spoofed_sources_are_dropped_on_checked_internal_interfaces() {
    both(|entry| {
        let mut r = Router::new(entry);
        let (inside, fw) = (r.inside, r.fw);
        let mut checked = iface(ROUTER_IN_MAC, iface_role::INTERNAL, iface_flags::XDP_EGRESS);
        checked.flags |= iface_flags::SOURCE_CHECK;
        checked.zone = inside as u16;
        r.dp.ifaces().set(inside, checked).expect("IFACES");
        let key = |addr: [u8; 4], len: u32| {
            (
                router_common::SourceKey::IFINDEX_BITS + len,
                router_common::SourceKey::new(inside, addr),
            )
        };
        // The interface's subnet and a network routed through a host on it.
        let allowed = [key([10, 0, 1, 0], 24), key([172, 16, 0, 0], 16)].into();
        assert_eq!(
            r.dp.policy()
                .sync_allowed_sources(&allowed)
                .expect("sources"),
            2
        );
        assert_eq!(
            r.dp.policy()
                .sync_allowed_sources(&allowed)
                .expect("sources"),
            0,
            "idempotent"
        );
        let own = eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .udp(5000, 53)
            .payload(PAYLOAD);
        assert_eq!(
            r.run(inside, &own).0,
            Outcome::Forward,
            "{entry:?}: own subnet"
        );
        let routed = eth(ROUTER_IN_MAC)
            .ipv4([172, 16, 9, 9], REMOTE)
            .udp(5000, 53)
            .payload(PAYLOAD);
        assert_eq!(
            r.run(inside, &routed).0,
            Outcome::Forward,
            "{entry:?}: routed network"
        );
        let spoofed = eth(ROUTER_IN_MAC)
            .ipv4([10, 0, 2, 5], REMOTE)
            .udp(5000, 53)
            .payload(PAYLOAD);
        assert_eq!(
            r.run(inside, &spoofed).0,
            Outcome::Drop,
            "{entry:?}: spoofed"
        );
        let as_router_peer = eth(ROUTER_IN_MAC)
            .ipv4([198, 18, 0, 77], REMOTE)
            .udp(5000, 53)
            .payload(PAYLOAD);
        assert_eq!(
            r.run(inside, &as_router_peer).0,
            Outcome::Drop,
            "{entry:?}: external source"
        );
        assert_eq!(r.reason(inside, Reason::SpoofedSource), 2);
        // An interface without the check (a firewall leg) takes any source.
        let via_fw = eth(ROUTER_FW_MAC)
            .ipv4([10, 0, 2, 5], REMOTE)
            .udp(5000, 53)
            .payload(PAYLOAD);
        assert_eq!(
            r.run(fw, &via_fw).0,
            Outcome::Forward,
            "{entry:?}: unchecked interface"
        );
    });
}

#[test]
fn snat_source_quota_keeps_one_address_from_taking_every_port() {
    both(|entry| {
        let mut r = Router::new(entry).with_nat();
        let (inside, outside) = (r.inside, r.outside);
        r.dp.nat()
            .set_config(NatConfig {
                gateway_ip: GW,
                gateway_ifindex: outside,
                flags: nat_flags::GATEWAY | nat_flags::SNAT,
                port_min: 40000,
                port_max: 40100,
                source_quota: 2,
                ..NatConfig::default()
            })
            .expect("NAT_CONFIG");
        for port in [5000, 5001] {
            let (_, src, ..) = r.forward(
                inside,
                &eth(ROUTER_IN_MAC)
                    .ipv4(VM3, REMOTE)
                    .udp(port, 53)
                    .payload(PAYLOAD),
            );
            assert_eq!(src, GW, "{entry:?}: within the quota");
        }
        let third = eth(ROUTER_IN_MAC)
            .ipv4(VM3, REMOTE)
            .udp(5002, 53)
            .payload(PAYLOAD);
        assert_eq!(
            r.run(inside, &third).0,
            Outcome::Drop,
            "{entry:?}: over the quota"
        );
        assert_eq!(r.reason(inside, Reason::SnatSourceQuota), 1);
        // Another internal address is not held back by the first one's sessions.
        let other = [10, 0, 1, 7];
        let (_, src, ..) = r.forward(
            inside,
            &eth(ROUTER_IN_MAC)
                .ipv4(other, REMOTE)
                .udp(5000, 53)
                .payload(PAYLOAD),
        );
        assert_eq!(src, GW, "{entry:?}: another address");
        // An existing session of the first address still works.
        let (_, src, ..) = r.forward(
            inside,
            &eth(ROUTER_IN_MAC)
                .ipv4(VM3, REMOTE)
                .udp(5000, 53)
                .payload(PAYLOAD),
        );
        assert_eq!(src, GW, "{entry:?}: established within the quota");
        // routerd's garbage collection recounts from the table: one session left of VM3's.
        let counts = [(VM3, 1u32)].into_iter().collect();
        r.dp.nat().sync_snat_sources(&counts).expect("SNAT_SOURCES");
        assert_eq!(
            r.run(inside, &third).0,
            Outcome::Forward,
            "{entry:?}: room again"
        );
    });
}
