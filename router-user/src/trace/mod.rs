//! `routerctl trace` (like `ovn-trace`): one made-up packet through the real programs of a
//! running router, against its live configuration, with `BPF_PROG_TEST_RUN`, changing no
//! live state (`docs/observability.md`).
//!
//! The eBPF object is loaded once more (`Datapath::open_for_trace`) sharing the router's
//! configuration maps ([`maps::CONFIGURATION`]) and with private maps for everything the programs
//! write: fresh counters (the ingress interface's entry and every floating IP's created, so
//! they count) and a private session table holding a copy of every live session (so an
//! existing flow is established, a SNAT port taken by another flow collides as it would, and
//! a new flow's session is created only in the copy). The programs are attached nowhere and
//! go with the trace.

mod packet;
mod text;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use router_common::{
    CtEntry, CtKey, FipStats, FwRule, FwStats, IfaceEntry, IfaceStats, PolicyConfig, Reason,
    SnatStats, TABLE_MAIN, ct_dir, fw_flags, fw_slot, route_kind, xdp_meta,
};
use serde::Serialize;

pub use self::{
    packet::{
        DEFAULT_SRC_MAC, Headers, IcmpType, Packet, Proto, build_frame, changes, mac_string,
        parse_headers, parse_mac, parse_tcp_flags, tcp_flags_name,
    },
    text::text,
};
use crate::{
    conntrack::{State, Tuple, kind_name, proto_name},
    datapath::Datapath,
    error::Error,
    maps::{self, Pinned, Rooms as _, Taken, policy::action_name},
    router::RouterInfo,
    stats,
    testrun::{
        self, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_ABORTED, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, XDP_TX,
    },
};

// ---- the result ------------------------------------------------------------------------

/// An interface of the router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Port {
    /// `None` when the ifindex is not one of the router's interfaces.
    pub interface: Option<String>,
    pub ifindex: u32,
}

/// One program run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// "xdp" or "tc".
    pub entry: &'static str,
    /// `XDP_PASS`, `TC_ACT_REDIRECT`, ...
    pub action: String,
    pub return_value: u32,
    /// XDP only: the tag left for the TC entry in the metadata ("done", "tc_forward",
    /// "reject"), if any.
    pub xdp_tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressPort {
    pub interface: Option<String>,
    pub ifindex: u32,
    /// How it was found: "source_mac" (the output frame's source MAC is that interface's)
    /// or "route_lookup" (the MACs were left to the kernel's neighbour resolution: the
    /// route of the translated destination, policy rules included).
    pub method: &'static str,
}

/// A session as the trace saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    /// "snat", "hairpin" or "forward" (a firewall-tracked flow, no port translation).
    pub kind: String,
    pub proto: String,
    /// Zone of the original direction (its ingress interface's).
    pub zone: u16,
    /// State after the packet (as `routerctl ct list` shows it).
    pub state: &'static str,
    /// As the first packet arrived.
    pub original: Tuple,
    /// What the original direction's packets are rewritten to.
    pub translated: Tuple,
    /// As replies arrive (in `reply_zone`).
    pub reply: Tuple,
    pub reply_zone: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionOutcome {
    /// The live session the packet belongs to (an entry of the copy counted it).
    pub existing: Option<SessionInfo>,
    /// Which direction of `existing` the packet travels: "original" or "reply".
    pub direction: Option<&'static str>,
    /// The session the packet would create (new entries in the private copy).
    pub created: Option<SessionInfo>,
    /// Entries added to the private session table (2 per new session).
    pub entries_added: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FirewallStep {
    /// "rule", "established", "invalid" or "default".
    pub step: &'static str,
    /// Position of the rule in the configured list (step "rule").
    pub rule: Option<usize>,
    /// Counter slot in FW_STATS.
    pub slot: u32,
    /// "allow", "deny" or "reject".
    pub action: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FloatingIpUse {
    pub address: Ipv4Addr,
    /// "in" (to the floating IP, DNAT) or "out" (from its fixed IP, SNAT).
    pub direction: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnatUse {
    /// "out" (translated to the gateway IP) or "in" (a reply translated back).
    pub direction: &'static str,
    pub sessions_created: u64,
    pub port_collisions: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NatOutcome {
    pub floating_ips: Vec<FloatingIpUse>,
    pub snat: Option<SnatUse>,
}

/// Everything a trace found. Its JSON form is documented in `docs/observability.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub router: String,
    /// "xdp" or "tc".
    pub mode: String,
    pub ingress: Port,
    pub input: Headers,
    pub stages: Vec<Stage>,
    /// "forwarded", "passed" (to the kernel) or "dropped".
    pub verdict: &'static str,
    /// The reason counted (`docs/verdicts.md`), other than `xdp_to_tc`; `None` for a packet
    /// forwarded with nothing to note.
    pub reason: Option<String>,
    /// Every reason the ingress counted, in order (`xdp_to_tc` included).
    pub reasons: Vec<String>,
    pub egress: Option<EgressPort>,
    /// The frame as it leaves (forwarded packets only).
    pub output: Option<Headers>,
    /// Header changes from input to output.
    pub changes: Vec<String>,
    pub session: SessionOutcome,
    /// The firewall step that decided (None: the firewall was not consulted).
    pub firewall: Option<FirewallStep>,
    pub nat: NatOutcome,
}

// ---- the live state the trace starts from ----------------------------------------------

/// What a trace reads from the running router before the run.
struct Live {
    /// The running router's maps, for the route lookup after the run.
    maps: Pinned,
    ifaces: BTreeMap<u32, IfaceEntry>,
    floating_ips: Vec<[u8; 4]>,
    sessions: BTreeMap<CtKey, CtEntry>,
    session_capacity: u32,
    policy: PolicyConfig,
    fw_rules: Vec<FwRule>,
    rules: Vec<router_common::PolicyRule>,
}

impl Live {
    fn read(router: &str) -> Result<Self, Error> {
        let mut maps = Pinned::open(router)?;
        let sessions = maps.sessions().dump()?;
        Ok(Self {
            ifaces: maps.ifaces().entries()?,
            floating_ips: maps.nat().floating_ips()?.into_keys().collect(),
            session_capacity: maps.sessions().capacity()?,
            sessions,
            policy: maps.policy().config()?,
            fw_rules: maps.policy().fw_rules()?,
            rules: maps.policy().rules()?,
            maps,
        })
    }

    fn name_of(&self, info: &RouterInfo, ifindex: u32) -> Option<String> {
        info.interfaces
            .iter()
            .find(|i| i.ifindex == ifindex)
            .map(|i| i.name.clone())
    }
}

/// What the programs left in the private maps.
struct Run {
    stages: Vec<Stage>,
    /// The frame after the last stage (metadata removed).
    output: Vec<u8>,
    iface: IfaceStats,
    fips: Vec<([u8; 4], FipStats)>,
    snat: SnatStats,
    fw: Vec<(u32, FwStats)>,
    sessions_after: BTreeMap<CtKey, CtEntry>,
}

fn other(what: impl Into<String>) -> impl FnOnce(String) -> Error {
    let what = what.into();
    move |e| Error::io(what, std::io::Error::other(e))
}

/// Loads the programs with private maps, fills them, runs the entries of the router's mode.
/// Call in the router's namespace (the kernel resolves the ingress ifindex there).
fn run(
    router: &str,
    xdp_mode: bool,
    ingress: u32,
    frame: &[u8],
    live: &Live,
) -> Result<Run, Error> {
    let capacity = live
        .session_capacity
        .max(live.sessions.len() as u32)
        .max(16);
    let (dp, private) = Datapath::open_for_trace(router, maps::CONFIGURATION, capacity)?;
    let mut private = Taken(private.into_iter().collect());
    private.ifaces().create_counters(ingress)?;
    // The interfaces are the live router's; their counters (by slot too) the private copy's.
    let slot = live.ifaces.get(&ingress).map(|e| e.slot);
    for fip in &live.floating_ips {
        private.nat().create_floating_ip_counters(*fip)?;
    }
    private.sessions().insert_all(&live.sessions)?;

    let mut stages = Vec::new();
    let output = if xdp_mode {
        let (ret, mut out) = test_run(&dp, true, ingress, frame)?;
        let mut tag = None;
        if ret == XDP_PASS && out.len() == frame.len() + xdp_meta::LEN {
            tag = Some(u32::from_ne_bytes([out[0], out[1], out[2], out[3]]));
            out.drain(..xdp_meta::LEN);
        }
        stages.push(Stage {
            entry: "xdp",
            action: xdp_action(ret).into(),
            return_value: ret,
            xdp_tag: tag.map(|t| {
                match t {
                    xdp_meta::DONE => "done",
                    xdp_meta::TC_FORWARD => "tc_forward",
                    xdp_meta::REJECT => "reject",
                    _ => "unknown",
                }
                .to_string()
            }),
        });
        let handed_to_tc =
            private.ifaces().stats_in(ingress, slot)?.reasons[Reason::XdpToTc as usize] > 0;
        // Where the kernel refuses the XDP entry its tags, the TC entry decides every
        // packet XDP passes again.
        let untagged = !crate::datapath::features::kernel().xdp_meta;
        if ret == XDP_PASS && (handed_to_tc || untagged) {
            // The TC entry beside XDP gets the frame as XDP passed it (untouched).
            let (ret, out) = test_run(&dp, false, ingress, &out)?;
            stages.push(tc_stage(ret));
            out
        } else {
            out
        }
    } else {
        let (ret, out) = test_run(&dp, false, ingress, frame)?;
        stages.push(tc_stage(ret));
        out
    };

    let mut fips = Vec::new();
    for fip in &live.floating_ips {
        let s = private.nat().floating_ip_counters(*fip)?;
        if s != FipStats::default() {
            fips.push((*fip, s));
        }
    }
    let fw = private
        .policy()
        .all_slots()?
        .into_iter()
        .enumerate()
        .filter(|(_, s)| s.packets > 0)
        .map(|(slot, s)| (slot as u32, s))
        .collect();
    Ok(Run {
        stages,
        output,
        iface: private.ifaces().stats_in(ingress, slot)?,
        fips,
        snat: private.nat().snat_stats()?,
        fw,
        sessions_after: private.sessions().dump()?,
    })
}

fn tc_stage(ret: u32) -> Stage {
    Stage {
        entry: "tc",
        action: tc_action(ret).into(),
        return_value: ret,
        xdp_tag: None,
    }
}

/// BPF_PROG_TEST_RUN of one entry as if `frame` arrived on `ingress`: (return value,
/// output frame).
fn test_run(dp: &Datapath, xdp: bool, ingress: u32, frame: &[u8]) -> Result<(u32, Vec<u8>), Error> {
    let run = if xdp {
        // `open_for_trace` loads both programs.
        let prog = dp.xdp().ok_or_else(|| Error::Program {
            router: String::new(),
            what: "the XDP entry".into(),
            source: Box::new(aya::programs::ProgramError::NotLoaded),
        })?;
        testrun::run_xdp(prog, ingress, frame, 1)?
    } else {
        testrun::run_tc(dp.tc(), ingress, frame, 1)?
    };
    Ok((run.verdict, run.frame))
}

fn xdp_action(ret: u32) -> &'static str {
    match ret {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "XDP_?",
    }
}

fn tc_action(ret: u32) -> &'static str {
    match ret {
        TC_ACT_OK => "TC_ACT_OK",
        TC_ACT_SHOT => "TC_ACT_SHOT",
        TC_ACT_REDIRECT => "TC_ACT_REDIRECT",
        _ => "TC_ACT_?",
    }
}

/// The verdict of the last stage.
fn verdict_of(stage: &Stage) -> &'static str {
    match (stage.entry, stage.return_value) {
        ("xdp", XDP_REDIRECT | XDP_TX) | ("tc", TC_ACT_REDIRECT) => "forwarded",
        ("xdp", XDP_PASS) | ("tc", TC_ACT_OK) => "passed",
        _ => "dropped",
    }
}

// ---- the trace -------------------------------------------------------------------------

/// Traces `packet` arriving on `interface` of running router `router`.
pub fn trace(router: &str, interface: &str, packet: &Packet) -> Result<Trace, Error> {
    let info = stats::selected_routers(Some(router))?
        .into_iter()
        .next()
        .ok_or_else(|| Error::NotRunning(router.into(), String::new()))?;
    let Some(port) = info.interfaces.iter().find(|i| i.name == interface) else {
        let names: Vec<&str> = info.interfaces.iter().map(|i| i.name.as_str()).collect();
        return Err(other(format!("router {router}"))(format!(
            "no interface {interface} (it has {})",
            names.join(", ")
        )));
    };
    let ingress = port.ifindex;
    let mut live = Live::read(router)?;
    let in_mac = live.ifaces.get(&ingress).map(|e| e.mac).ok_or_else(|| {
        other(format!("router {router}"))(format!("{interface} is not in IFACES"))
    })?;
    let frame = build_frame(packet, packet.dst_mac.unwrap_or(in_mac)).map_err(other("trace"))?;
    let input = parse_headers(&frame).map_err(other("the traced frame"))?;
    let xdp_mode = info.mode == "xdp";
    let netns = crate::paths::netns_path(&info.namespace);
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            crate::netns::enter(&netns).map_err(|source| Error::Namespace {
                router: router.to_string(),
                namespace: info.namespace.clone(),
                source,
            })?;
            run(router, xdp_mode, ingress, &frame, &live)
        })
        .join()
    })
    .map_err(|_| other("trace")("the trace thread panicked".into()))??;

    let reasons: Vec<Reason> = Reason::ALL
        .iter()
        .copied()
        .filter(|r| run.iface.reasons[*r as usize] > 0)
        .collect();
    let last = run
        .stages
        .last()
        .ok_or_else(|| other("trace")("no program ran".into()))?;
    let verdict = verdict_of(last);
    let reason = reasons
        .iter()
        .rev()
        .find(|r| **r != Reason::XdpToTc)
        .map(|r| r.name().to_string());
    let output = (verdict == "forwarded")
        .then(|| parse_headers(&run.output).ok())
        .flatten();
    let egress = (verdict == "forwarded").then(|| {
        let rewritten = output
            .as_ref()
            .is_some_and(|o| o.src_mac != input.src_mac || o.dst_mac != input.dst_mac);
        let by_mac = rewritten
            .then(|| output.as_ref().and_then(|o| parse_mac(&o.src_mac).ok()))
            .flatten()
            .and_then(|mac| {
                live.ifaces
                    .iter()
                    .find(|(_, e)| e.mac == mac)
                    .map(|(i, _)| *i)
            });
        match by_mac {
            Some(ifindex) => Some(EgressPort {
                interface: live.name_of(&info, ifindex),
                ifindex,
                method: "source_mac",
            }),
            None => {
                let dst = output.as_ref().map_or(input.dst, |o| o.dst);
                route_lookup(&mut live, ingress, input.src.octets(), dst.octets()).map(|ifindex| {
                    EgressPort {
                        interface: live.name_of(&info, ifindex),
                        ifindex,
                        method: "route_lookup",
                    }
                })
            }
        }
    });
    let changes = output
        .as_ref()
        .map(|o| self::changes(&input, o))
        .unwrap_or_default();
    Ok(Trace {
        router: router.to_string(),
        mode: info.mode.clone(),
        ingress: Port {
            interface: Some(interface.to_string()),
            ifindex: ingress,
        },
        input,
        verdict,
        reason,
        reasons: reasons.iter().map(|r| r.name().to_string()).collect(),
        egress: egress.flatten(),
        output,
        changes,
        session: session_outcome(&live.sessions, &run.sessions_after),
        firewall: firewall_step(&live, &run.fw),
        nat: NatOutcome {
            floating_ips: run
                .fips
                .iter()
                .flat_map(|(fip, s)| {
                    let address = Ipv4Addr::from(*fip);
                    let mut v = Vec::new();
                    if s.in_packets > 0 {
                        v.push(FloatingIpUse {
                            address,
                            direction: "in",
                        });
                    }
                    if s.out_packets > 0 {
                        v.push(FloatingIpUse {
                            address,
                            direction: "out",
                        });
                    }
                    v
                })
                .collect(),
            snat: (run.snat != SnatStats::default()).then_some(SnatUse {
                direction: if run.snat.in_packets > 0 { "in" } else { "out" },
                sessions_created: run.snat.sessions_created,
                port_collisions: run.snat.port_collisions,
            }),
        },
        stages: run.stages,
    })
}

/// The egress of a packet from `src` to `dst` (after DNAT) that arrived on `iif`, as the
/// fast path routes it: the policy rules in order, then the main table.
fn route_lookup(live: &mut Live, iif: u32, src: [u8; 4], dst: [u8; 4]) -> Option<u32> {
    let routes = &mut live.maps;
    let mut in_table = |table: u32| routes.routes().lookup(table, dst).ok().flatten();
    let table = live
        .rules
        .iter()
        .find(|r| r.matches(iif, src, dst) && in_table(r.table).is_some())
        .map_or(TABLE_MAIN, |r| r.table);
    in_table(table)
        .filter(|r| r.kind == route_kind::UNICAST)
        .map(|r| r.ifindex)
}

/// The session whose original entry is `key` in `table`.
fn session_info(table: &BTreeMap<CtKey, CtEntry>, key: &CtKey) -> Option<SessionInfo> {
    let orig = table.get(key)?;
    let reply = table.get(&orig.peer);
    let p = key.proto;
    let rk = &orig.peer;
    Some(SessionInfo {
        kind: kind_name(orig.kind),
        proto: proto_name(p),
        zone: key.zone,
        state: State::derive(orig, reply, p).name(),
        original: Tuple::new(p, key.src, key.sport, key.dst, key.dport),
        translated: Tuple::new(
            p,
            orig.new_src,
            orig.new_sport,
            orig.new_dst,
            orig.new_dport,
        ),
        reply: Tuple::new(p, rk.src, rk.sport, rk.dst, rk.dport),
        reply_zone: rk.zone,
    })
}

/// Sessions the packet used or created: entries of the copy whose counters moved, and
/// entries that are new.
fn session_outcome(
    before: &BTreeMap<CtKey, CtEntry>,
    after: &BTreeMap<CtKey, CtEntry>,
) -> SessionOutcome {
    let added: BTreeSet<&CtKey> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let created = added
        .iter()
        .find(|k| {
            after
                .get(**k)
                .is_some_and(|e| e.direction == ct_dir::ORIGINAL)
        })
        .and_then(|k| session_info(after, k));
    let touched = after.iter().find(|(k, e)| {
        before
            .get(*k)
            .is_some_and(|b| b.packets != e.packets || b.bytes != e.bytes)
    });
    let (existing, direction) = match touched {
        Some((key, entry)) if entry.direction == ct_dir::ORIGINAL => {
            (session_info(after, key), Some("original"))
        }
        Some((_, entry)) => (session_info(after, &entry.peer), Some("reply")),
        None => (None, None),
    };
    SessionOutcome {
        existing,
        direction,
        created,
        entries_added: added.len(),
    }
}

/// The firewall step that counted the packet (one slot of the private FW_STATS moved).
fn firewall_step(live: &Live, moved: &[(u32, FwStats)]) -> Option<FirewallStep> {
    let (slot, _) = moved.first()?;
    let slot = *slot;
    let default_allow = live.policy.fw_flags & fw_flags::DEFAULT_ALLOW != 0;
    Some(match slot {
        fw_slot::ESTABLISHED => FirewallStep {
            step: "established",
            rule: None,
            slot,
            action: "allow".into(),
        },
        fw_slot::INVALID => FirewallStep {
            step: "invalid",
            rule: None,
            slot,
            action: "deny".into(),
        },
        fw_slot::DEFAULT => FirewallStep {
            step: "default",
            rule: None,
            slot,
            action: if default_allow { "allow" } else { "deny" }.into(),
        },
        _ => {
            let index = live.fw_rules.iter().position(|r| u32::from(r.slot) == slot);
            FirewallStep {
                step: "rule",
                rule: index,
                slot,
                action: index
                    .map(|i| action_name(live.fw_rules[i].action))
                    .unwrap_or("?")
                    .into(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use router_common::ct_kind;

    use super::*;

    #[test]
    fn sessions_created_and_used_are_told_apart() {
        let key = CtKey {
            zone: 3,
            proto: 17,
            _pad: 0,
            src: [10, 0, 1, 5],
            dst: [203, 0, 113, 7],
            sport: 40000u16.to_be_bytes(),
            dport: 53u16.to_be_bytes(),
        };
        let reply_key = CtKey {
            zone: 2,
            src: key.dst,
            dst: [198, 18, 0, 2],
            sport: key.dport,
            dport: 1024u16.to_be_bytes(),
            ..key
        };
        let orig = CtEntry {
            new_src: [198, 18, 0, 2],
            new_dst: key.dst,
            new_sport: 1024u16.to_be_bytes(),
            new_dport: key.dport,
            peer: reply_key,
            direction: ct_dir::ORIGINAL,
            kind: ct_kind::SNAT,
            packets: 1,
            ..CtEntry::default()
        };
        let reply = CtEntry {
            peer: key,
            direction: ct_dir::REPLY,
            kind: ct_kind::SNAT,
            ..CtEntry::default()
        };
        let empty = BTreeMap::new();
        let mut after = BTreeMap::new();
        after.insert(key, orig);
        after.insert(reply_key, reply);
        let created = session_outcome(&empty, &after);
        assert_eq!(created.entries_added, 2);
        assert!(created.existing.is_none());
        let s = created.created.expect("a new session");
        assert_eq!((s.kind.as_str(), s.zone, s.reply_zone), ("snat", 3, 2));
        assert_eq!(s.translated.src, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(s.translated.sport, 1024);
        // The same table before and after a reply: the reply entry counted it.
        let mut later = after.clone();
        later.get_mut(&reply_key).expect("reply").packets = 1;
        let used = session_outcome(&after, &later);
        assert_eq!(used.entries_added, 0);
        assert!(used.created.is_none());
        assert_eq!(used.direction, Some("reply"));
        assert_eq!(used.existing.expect("existing").original.sport, 40000);
    }
}
