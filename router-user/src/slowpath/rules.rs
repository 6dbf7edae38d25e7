//! The slow path's ruleset as typed nftables objects (the JSON schema of libnftables,
//! through the `nftables` crate): what each chain does and why, one function per chain.

use std::{borrow::Cow, net::Ipv4Addr};

use nftables::{
    expr::{BinaryOperation, CT, Expression, Meta, MetaKey, NamedExpression, PayloadField},
    schema::{Chain, Map, NfCmd, NfListObject, NfObject, Rule, SetType, SetTypeValue, Table},
    stmt::{Mangle, Match, NAT, Operator, Reject, RejectType, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode},
};
use router_common::REJECT_MARK;

use crate::config::{FirewallRule, FloatingIp, FwAction, Router};

pub const TABLE: &str = "neutron_router";
/// What entered from the gateway carries this in the low 8 bits of its mark (Neutron's
/// 0x2 mark; the next 8 bits name an external subnet, see `policy::SUBNET_MARK_MASK`).
const FROM_GATEWAY: u32 = 0x2;
const FROM_GATEWAY_MASK: u32 = 0xff;

// Chain priorities, as nftables names them.
const RAW: i32 = -300;
const MANGLE: i32 = -150;
const DSTNAT: i32 = -100;
const FILTER: i32 = 0;
const SRCNAT: i32 = 100;

/// The two floating-IP maps: external address to fixed (DNAT) and back (SNAT).
pub const FIP_DNAT: &str = "fip_dnat";
pub const FIP_SNAT: &str = "fip_snat";
/// Fixed address of a floating IP on a further external subnet to that subnet's mark.
pub const FIP_SUBNET_MARK: &str = "fip_subnet_mark";

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        handle: None,
    }
}

/// Replaces the router's table in one transaction: "add" then "delete" makes the delete
/// succeed whether or not the table exists, and the rest builds it again.
pub fn ruleset(router: &Router) -> Vec<NfObject<'static>> {
    let mut out = vec![
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
    ];
    for (name, dnat) in [(FIP_DNAT, true), (FIP_SNAT, false)] {
        let elem: Vec<Expression> = router
            .floating_ips
            .iter()
            .map(|f| mapping(f, dnat))
            .collect();
        out.push(add(NfListObject::Map(Box::new(Map {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: name.into(),
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            map: SetTypeValue::Single(SetType::Ipv4Addr),
            elem: (!elem.is_empty()).then(|| elem.into()),
            ..Map::default()
        }))));
    }
    let marks: Vec<Expression> = crate::policy::floating_ip_marks(router)
        .into_iter()
        .map(|(fixed, mark)| Expression::List(vec![addr(fixed), Expression::Number(mark)]))
        .collect();
    out.push(add(NfListObject::Map(Box::new(Map {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: FIP_SUBNET_MARK.into(),
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        map: SetTypeValue::Single(SetType::Mark),
        elem: (!marks.is_empty()).then(|| marks.into()),
        ..Map::default()
    }))));
    let internal: Vec<String> = router.interfaces.iter().map(|i| i.name.clone()).collect();
    for (chain, rules) in [
        (
            hook(
                "steering_zone",
                NfChainType::Filter,
                NfHook::Prerouting,
                RAW,
            ),
            steering_zone(router),
        ),
        (
            hook("source_check", NfChainType::Filter, NfHook::Prerouting, RAW),
            source_check(router),
        ),
        (
            hook(
                "mark_gateway",
                NfChainType::Filter,
                NfHook::Prerouting,
                MANGLE,
            ),
            mark_gateway(router),
        ),
        (
            hook(
                "mark_source_subnet",
                NfChainType::Filter,
                NfHook::Prerouting,
                MANGLE,
            ),
            mark_source_subnet(),
        ),
        (
            hook("dnat_in", NfChainType::NAT, NfHook::Prerouting, DSTNAT),
            dnat_in(router, &internal),
        ),
        (
            hook("snat_out", NfChainType::NAT, NfHook::Postrouting, SRCNAT),
            snat_out(router),
        ),
        (
            Chain {
                policy: Some(NfChainPolicy::Accept),
                ..hook("fw_forward", NfChainType::Filter, NfHook::Forward, FILTER)
            },
            fw_forward(router, &internal),
        ),
    ] {
        let name = chain.name.clone();
        out.push(add(NfListObject::Chain(chain)));
        out.extend(rules.into_iter().map(|expr| {
            add(NfListObject::Rule(Rule {
                family: NfFamily::IP,
                table: TABLE.into(),
                chain: name.clone(),
                expr: expr.into(),
                ..Rule::default()
            }))
        }));
    }
    out
}

/// The map elements that add (`added`) and remove (`gone`) floating IPs of `router`
/// (whose external subnets are the same before and after), deletions first.
pub fn floating_ip_changes(
    router: &Router,
    added: &[&FloatingIp],
    gone: &[&FloatingIp],
) -> Vec<super::elements::MapChange<'static>> {
    let marked = |fips: &[&FloatingIp]| crate::policy::marks_of(router, fips.iter().copied());
    // A mark is data of nftables' `mark` type: host byte order.
    let marks = super::elements::MapChange {
        map: FIP_SUBNET_MARK,
        delete: marked(gone)
            .iter()
            .map(|(fixed, _)| fixed.octets())
            .collect(),
        add: marked(added)
            .iter()
            .map(|(fixed, mark)| (fixed.octets(), mark.to_ne_bytes()))
            .collect(),
    };
    let fips = |dnat: bool| {
        let pair = |f: &FloatingIp| {
            if dnat {
                (f.address.octets(), f.fixed.octets())
            } else {
                (f.fixed.octets(), f.address.octets())
            }
        };
        super::elements::MapChange {
            map: if dnat { FIP_DNAT } else { FIP_SNAT },
            delete: gone.iter().map(|f| pair(f).0).collect(),
            add: added.iter().map(|f| pair(f)).collect(),
        }
    };
    vec![marks, fips(true), fips(false)]
}

/// Lists the namespace's tables, names only: listing the router's table itself would print
/// every floating IP. (The typed schema has no object for it.)
pub const LIST_TABLES: &str = r#"{"nftables":[{"list":{"tables":null}}]}"#;

/// Whether a `LIST_TABLES` answer names the router's table.
pub fn names_our_table(listing: &str) -> bool {
    serde_json::from_str::<nftables::schema::Nftables>(listing).is_ok_and(|doc| {
        doc.objects.iter().any(|o| {
            matches!(o, NfObject::ListObject(NfListObject::Table(t))
                if t.family == NfFamily::IP && t.name == TABLE)
        })
    })
}

/// Deletes the router's table.
pub fn delete_table() -> Vec<NfObject<'static>> {
    vec![NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(
        table(),
    )))]
}

fn add(object: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(object))
}

fn hook(name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        ..Chain::default()
    }
}

/// A map element: floating IP to fixed address (`dnat`) or fixed address to floating IP.
fn mapping(f: &FloatingIp, dnat: bool) -> Expression<'static> {
    let (key, value) = if dnat {
        (f.address, f.fixed)
    } else {
        (f.fixed, f.address)
    };
    Expression::List(vec![addr(key), addr(value)])
}

fn addr(a: Ipv4Addr) -> Expression<'static> {
    Expression::String(a.to_string().into())
}

fn text(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_string()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn ip(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(
        nftables::expr::Payload::PayloadField(PayloadField {
            protocol: "ip".into(),
            field: field.into(),
        }),
    ))
}

fn set(items: impl IntoIterator<Item = Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items
            .into_iter()
            .map(nftables::expr::SetItem::Element)
            .collect(),
    ))
}

fn masked(value: Expression<'static>, mask: u32) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(
        value,
        Expression::Number(mask),
    )))
}

fn is(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn iifname_in(names: &[String]) -> Statement<'static> {
    is(
        meta(MetaKey::Iifname),
        Operator::EQ,
        set(names.iter().map(|n| text(n))),
    )
}

fn l4proto(name: &str) -> Statement<'static> {
    is(meta(MetaKey::L4proto), Operator::EQ, text(name))
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

fn reject(tcp: bool) -> Statement<'static> {
    Statement::Reject(Some(if tcp {
        Reject::new(Some(RejectType::TCPReset), None)
    } else {
        Reject::new(Some(RejectType::ICMP), Some(RejectCode::PortUnreach))
    }))
}

fn prefix(p: crate::config::Prefix) -> Expression<'static> {
    if p.len == 32 {
        return addr(p.addr);
    }
    Expression::Named(NamedExpression::Prefix(nftables::expr::Prefix {
        addr: Box::new(addr(p.addr)),
        len: p.len.into(),
    }))
}

/// Anti-spoofing for what the fast path hands over unchecked (fragments, IP options): the
/// same sources as its ALLOWED_SOURCES, before conntrack sees the packet.
fn source_check(router: &Router) -> Vec<Vec<Statement<'static>>> {
    crate::policy::allowed_sources(router)
        .into_iter()
        .filter(|(_, prefixes)| prefixes.iter().all(|p| p.len != 0))
        .map(|(name, prefixes)| {
            vec![
                is(meta(MetaKey::Iifname), Operator::EQ, text(&name)),
                is(
                    ip("saddr"),
                    Operator::NEQ,
                    set(prefixes.into_iter().map(prefix)),
                ),
                drop(),
            ]
        })
        .collect()
}

/// What entered from the gateway is marked, keeping the mark's upper half.
fn mark_gateway(router: &Router) -> Vec<Vec<Statement<'static>>> {
    let Some(g) = &router.gateway else {
        return Vec::new();
    };
    vec![vec![
        is(meta(MetaKey::Iifname), Operator::EQ, text(&g.interface)),
        Statement::Mangle(Mangle {
            key: meta(MetaKey::Mark),
            value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
                masked(meta(MetaKey::Mark), 0xffff_0000),
                Expression::Number(FROM_GATEWAY),
            ]))),
        }),
    ]]
}

/// Steering through a firewall: what enters before the firewall is tracked in a zone of
/// its own, so the pass back from the firewall is a connection of its own that NAT can
/// still translate (see [`crate::policy::steering_zone_interfaces`]). Conntrack zones are
/// chosen before conntrack sees the packet.
fn steering_zone(router: &Router) -> Vec<Vec<Statement<'static>>> {
    let names = crate::policy::steering_zone_interfaces(router);
    if names.is_empty() {
        return Vec::new();
    }
    vec![vec![
        iifname_in(&names),
        Statement::Mangle(Mangle {
            key: ct("zone"),
            value: Expression::Number(crate::policy::STEERING_ZONE.into()),
        }),
    ]]
}

/// What a floating IP of a further external subnet sends is marked with its subnet's mark
/// before routing, so that the kernel's mark rules route it to that subnet's gateway
/// (the fast path looks up its source table after NAT; the kernel routes before NAT, by
/// the fixed source). Packets already marked (the firewall's `REJECT_MARK`) keep theirs.
fn mark_source_subnet() -> Vec<Vec<Statement<'static>>> {
    vec![vec![
        is(meta(MetaKey::Mark), Operator::EQ, Expression::Number(0)),
        Statement::Mangle(Mangle {
            key: meta(MetaKey::Mark),
            value: map_lookup(ip("saddr"), FIP_SUBNET_MARK),
        }),
    ]]
}

/// The metadata proxy's redirect, and floating IPs translated to their fixed addresses.
fn dnat_in(router: &Router, internal: &[String]) -> Vec<Vec<Statement<'static>>> {
    let mut rules = Vec::new();
    if !internal.is_empty() {
        rules.push(vec![
            iifname_in(internal),
            is(ip("daddr"), Operator::EQ, text("169.254.169.254")),
            is(
                Expression::Named(NamedExpression::Payload(
                    nftables::expr::Payload::PayloadField(PayloadField {
                        protocol: "tcp".into(),
                        field: "dport".into(),
                    }),
                )),
                Operator::EQ,
                Expression::Number(80),
            ),
            Statement::Redirect(Some(NAT {
                addr: None,
                family: None,
                port: Some(Expression::Number(router.nat.metadata_port.into())),
                flags: None,
            })),
        ]);
    }
    rules.push(vec![Statement::DNAT(Some(NAT {
        addr: Some(map_lookup(ip("daddr"), FIP_DNAT)),
        family: None,
        port: None,
        flags: None,
    }))]);
    rules
}

fn map_lookup(key: Expression<'static>, map: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Map(Box::new(nftables::expr::Map {
        key,
        data: text(&format!("@{map}")),
    })))
}

/// Floating IPs' sources, then the gateway's SNAT for what leaves by the gateway and for
/// DNATed traffic that did not enter from it (hairpin, Neutron's mark rule). Ports (and ICMP
/// identifiers) from the slow path's own range, only for protocols that have them.
fn snat_out(router: &Router) -> Vec<Vec<Statement<'static>>> {
    let Some(g) = &router.gateway else {
        return Vec::new();
    };
    let qg = &g.interface;
    let ct_dnat =
        || Expression::BinaryOperation(Box::new(BinaryOperation::AND(ct("status"), text("dnat"))));
    let mut rules = vec![
        vec![
            is(meta(MetaKey::Iifname), Operator::NEQ, text(qg)),
            is(meta(MetaKey::Oifname), Operator::NEQ, text(qg)),
            is(ct_dnat(), Operator::EQ, Expression::Number(0)),
            accept(),
        ],
        vec![Statement::SNAT(Some(NAT {
            addr: Some(map_lookup(ip("saddr"), FIP_SNAT)),
            family: None,
            port: None,
            flags: None,
        }))],
    ];
    if g.snat {
        let (gw, ports) = (g.address.addr, router.nat.slow_path_snat_ports);
        let hairpin = || {
            vec![
                is(
                    masked(meta(MetaKey::Mark), FROM_GATEWAY_MASK),
                    Operator::NEQ,
                    Expression::Number(FROM_GATEWAY),
                ),
                is(ct_dnat(), Operator::EQ, text("dnat")),
            ]
        };
        let leaves = || vec![is(meta(MetaKey::Oifname), Operator::EQ, text(qg))];
        let snat = |with_ports: bool| {
            Statement::SNAT(Some(NAT {
                addr: Some(addr(gw)),
                family: None,
                port: with_ports.then(|| {
                    Expression::Range(Box::new(nftables::expr::Range {
                        range: [
                            Expression::Number(ports.min.into()),
                            Expression::Number(ports.max.into()),
                        ],
                    }))
                }),
                flags: None,
            }))
        };
        for matches in [leaves(), hairpin()] {
            let mut with = |extra: Option<Statement<'static>>, with_ports: bool| {
                let mut rule = matches.clone();
                rule.extend(extra);
                rule.push(snat(with_ports));
                rules.push(rule);
            };
            with(
                Some(is(
                    meta(MetaKey::L4proto),
                    Operator::EQ,
                    set([text("tcp"), text("udp")]),
                )),
                true,
            );
            with(Some(l4proto("icmp")), true);
            with(None, false);
        }
    }
    rules
}

/// The firewall in the kernel: it answers what the fast path rejects (marked
/// `REJECT_MARK`), and judges what the fast path hands over without judging (fragments,
/// IP options) by the same rules, with the kernel's own conntrack for state.
fn fw_forward(router: &Router, internal: &[String]) -> Vec<Vec<Statement<'static>>> {
    let marked = || {
        is(
            masked(meta(MetaKey::Mark), 0xffff_0000),
            Operator::EQ,
            Expression::Number(REJECT_MARK),
        )
    };
    let mut rules = vec![
        vec![marked(), l4proto("tcp"), reject(true)],
        vec![marked(), reject(false)],
    ];
    let (Some(fw), false) = (&router.firewall, internal.is_empty()) else {
        return rules;
    };
    let names = || set(internal.iter().map(|n| text(n)));
    rules.push(vec![
        is(meta(MetaKey::Iifname), Operator::NEQ, names()),
        is(meta(MetaKey::Oifname), Operator::NEQ, names()),
        accept(),
    ]);
    rules.push(vec![is(ct("state"), Operator::IN, text("invalid")), drop()]);
    rules.push(vec![
        is(
            ct("state"),
            Operator::IN,
            Expression::List(vec![text("established"), text("related")]),
        ),
        accept(),
    ]);
    for rule in &fw.rules {
        rules.extend(firewall_rule(rule));
    }
    rules.push(vec![if fw.default_allow { accept() } else { drop() }]);
    rules
}

/// One firewall rule as nftables rules (a reject of any protocol is two: a TCP reset for
/// TCP, port-unreachable for the rest).
fn firewall_rule(rule: &FirewallRule) -> Vec<Vec<Statement<'static>>> {
    let proto = match rule.protocol {
        6 => Some("tcp"),
        17 => Some("udp"),
        1 => Some("icmp"),
        _ => None,
    };
    let mut m = Vec::new();
    match (rule.protocol, proto) {
        (0, _) => {}
        (_, Some(name)) => m.push(l4proto(name)),
        (n, None) => m.push(is(
            meta(MetaKey::L4proto),
            Operator::EQ,
            Expression::Number(n.into()),
        )),
    }
    if rule.source.len != 0 {
        m.push(is(ip("saddr"), Operator::EQ, prefix(rule.source)));
    }
    if rule.destination.len != 0 {
        m.push(is(ip("daddr"), Operator::EQ, prefix(rule.destination)));
    }
    if let (Some(ports), Some(name @ ("tcp" | "udp"))) = (rule.ports, proto) {
        let dport = Expression::Named(NamedExpression::Payload(
            nftables::expr::Payload::PayloadField(PayloadField {
                protocol: name.to_string().into(),
                field: "dport".into(),
            }),
        ));
        let range = Expression::Range(Box::new(nftables::expr::Range {
            range: [
                Expression::Number(ports.min.into()),
                Expression::Number(ports.max.into()),
            ],
        }));
        m.push(is(dport, Operator::EQ, range));
    }
    let with = |extra: Vec<Statement<'static>>| {
        let mut rule = m.clone();
        rule.extend(extra);
        rule
    };
    match rule.action {
        FwAction::Allow => vec![with(vec![accept()])],
        FwAction::Deny => vec![with(vec![drop()])],
        FwAction::Reject if rule.protocol == 0 => {
            vec![
                with(vec![l4proto("tcp"), reject(true)]),
                with(vec![reject(false)]),
            ]
        }
        FwAction::Reject => vec![with(vec![reject(rule.protocol == 6)])],
    }
}
