//! `routerctl trace` (like `ovn-trace`): one made-up packet through the real programs of a
//! running router, against its live configuration, with `BPF_PROG_TEST_RUN`, changing no
//! live state (`docs/observability.md`).
//!
//! The eBPF object is loaded once more (`Datapath::open_for_trace`) sharing the router's
//! configuration maps ([`SHARED_MAPS`]) and with private maps for everything the programs
//! write: fresh counters (the ingress interface's entry and every floating IP's created, so
//! they count) and a private session table holding a copy of every live session (so an
//! existing flow is established, a SNAT port taken by another flow collides as it would, and
//! a new flow's session is created only in the copy). The programs are attached nowhere and
//! go with the trace.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    str::FromStr,
};

use aya::{
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
        lpm_trie::Key,
    },
    programs::{TestRun as _, TestRunOptions},
    util::nr_cpus,
};
use etherparse::{PacketBuilder, SlicedPacket, TcpHeader, TransportSlice};
use router_common::{
    CtEntry, CtKey, FipEntry, FipStats, FwRule, FwStats, IfaceEntry, IfaceStats, PolicyConfig,
    PolicyRule, Reason, RouteEntry, RouteKey, SnatStats, TABLE_MAIN, ct_dir, ct_kind, fw_flags,
    fw_slot, map_names, route_kind, xdp_meta,
};
use serde::Serialize;

use crate::{
    conntrack::{State, Tuple},
    datapath::{Datapath, open_pinned},
    error::Error,
    firewall::action_name,
    router::RouterInfo,
    stats,
};

/// The router's maps a trace shares: its configuration, which the programs only read.
/// Every other map (counters, sessions, anything added later) is private to the trace.
pub const SHARED_MAPS: [&str; 12] = [
    map_names::ROUTES,
    map_names::NEIGHBORS,
    map_names::IFACES,
    map_names::EGRESS_DEVS,
    map_names::NAT_CONFIG,
    map_names::FIP_BY_ADDRESS,
    map_names::FIP_BY_FIXED,
    map_names::POLICY_CONFIG,
    map_names::RULES,
    map_names::SOURCE_TABLES,
    map_names::FW_RULES,
    map_names::ALLOWED_SOURCES,
];

/// Source MAC of a traced frame unless one is given (locally administered).
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x74, 0x72, 0x63];

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

// ---- the packet ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "6" => Ok(Proto::Tcp),
            "udp" | "17" => Ok(Proto::Udp),
            "icmp" | "1" => Ok(Proto::Icmp),
            _ => Err(format!("{s:?}: not tcp, udp or icmp")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpType {
    EchoRequest,
    EchoReply,
}

impl FromStr for IcmpType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "echo-request" | "8" => Ok(IcmpType::EchoRequest),
            "echo-reply" | "0" => Ok(IcmpType::EchoReply),
            _ => Err(format!("{s:?}: not echo-request or echo-reply")),
        }
    }
}

/// Bits of the TCP flags byte, by name.
const TCP_FLAG_NAMES: [(&str, u8); 8] = [
    ("fin", 0x01),
    ("syn", 0x02),
    ("rst", 0x04),
    ("psh", 0x08),
    ("ack", 0x10),
    ("urg", 0x20),
    ("ece", 0x40),
    ("cwr", 0x80),
];

/// `syn`, `syn,ack`, `fin|ack`, `none` (no flags) or a number (`0x12`).
pub fn parse_tcp_flags(s: &str) -> Result<u8, String> {
    if s == "none" || s.is_empty() {
        return Ok(0);
    }
    if let Some(hex) = s.strip_prefix("0x") {
        return u8::from_str_radix(hex, 16).map_err(|e| format!("{s:?}: {e}"));
    }
    if let Ok(n) = s.parse::<u8>() {
        return Ok(n);
    }
    let mut flags = 0;
    for name in s.split([',', '|', '+']) {
        let name = name.trim().to_ascii_lowercase();
        let bit = TCP_FLAG_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
            .ok_or_else(|| format!("{name:?}: not a TCP flag (fin syn rst psh ack urg ece cwr)"))?;
        flags |= bit;
    }
    Ok(flags)
}

/// The flags byte by name, `syn,ack` (empty: `none`).
pub fn tcp_flags_name(flags: u8) -> String {
    let names: Vec<&str> = TCP_FLAG_NAMES
        .iter()
        .filter(|(_, b)| flags & b != 0)
        .map(|(n, _)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// `02:00:00:00:00:01` (or with `-`).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(format!("{s:?}: not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{s:?}: not a MAC address"))?;
    }
    Ok(mac)
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The packet to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: Proto,
    /// TCP and UDP ports.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte.
    pub tcp_flags: u8,
    pub icmp_type: IcmpType,
    /// ICMP echo identifier.
    pub icmp_id: u16,
    pub ttl: u8,
    /// IPv4 total length (headers and zero payload); `None`: headers only.
    pub len: Option<usize>,
    pub src_mac: [u8; 6],
    /// `None`: the ingress interface's MAC.
    pub dst_mac: Option<[u8; 6]>,
}

impl Default for Packet {
    fn default() -> Self {
        Self {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            proto: Proto::Udp,
            sport: 40000,
            dport: 80,
            tcp_flags: 0x02,
            icmp_type: IcmpType::EchoRequest,
            icmp_id: 1,
            ttl: 64,
            len: None,
            src_mac: DEFAULT_SRC_MAC,
            dst_mac: None,
        }
    }
}

/// The Ethernet frame of `p`, to `dst_mac`, with every checksum right.
pub fn build_frame(p: &Packet, dst_mac: [u8; 6]) -> Result<Vec<u8>, String> {
    let l4 = match p.proto {
        Proto::Tcp => TcpHeader::MIN_LEN,
        Proto::Udp | Proto::Icmp => 8,
    };
    let headers = 20 + l4;
    let total = p.len.unwrap_or(headers);
    if !(headers..=usize::from(u16::MAX)).contains(&total) {
        return Err(format!(
            "--len {total}: the IPv4 total length must be {headers}-65535 for this protocol"
        ));
    }
    let payload = vec![0u8; total - headers];
    let ip =
        PacketBuilder::ethernet2(p.src_mac, dst_mac).ipv4(p.src.octets(), p.dst.octets(), p.ttl);
    let mut out = Vec::with_capacity(14 + total);
    let written = match p.proto {
        Proto::Tcp => {
            let mut h = TcpHeader::new(p.sport, p.dport, 1, 64240);
            let bit = |b: u8| p.tcp_flags & b != 0;
            (h.fin, h.syn, h.rst, h.psh) = (bit(0x01), bit(0x02), bit(0x04), bit(0x08));
            (h.ack, h.urg, h.ece, h.cwr) = (bit(0x10), bit(0x20), bit(0x40), bit(0x80));
            if h.ack {
                h.acknowledgment_number = 1;
            }
            ip.tcp_header(h).write(&mut out, &payload)
        }
        Proto::Udp => ip.udp(p.sport, p.dport).write(&mut out, &payload),
        Proto::Icmp => match p.icmp_type {
            IcmpType::EchoRequest => ip
                .icmpv4_echo_request(p.icmp_id, 1)
                .write(&mut out, &payload),
            IcmpType::EchoReply => ip.icmpv4_echo_reply(p.icmp_id, 1).write(&mut out, &payload),
        },
    };
    written.map_err(|e| format!("building the frame: {e}"))?;
    Ok(out)
}

// ---- what a frame looks like -----------------------------------------------------------

/// The headers of a frame, as etherparse reads them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Headers {
    pub src_mac: String,
    pub dst_mac: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// "tcp", "udp", "icmp" or the protocol number.
    pub proto: String,
    pub ttl: u8,
    /// IPv4 total length.
    pub length: u16,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// TCP only: `syn,ack`.
    pub tcp_flags: Option<String>,
    /// ICMP only: "echo-request", "echo-reply" or the type number.
    pub icmp_type: Option<String>,
    /// ICMP echo only.
    pub icmp_id: Option<u16>,
    pub ip_checksum_ok: bool,
    /// TCP, UDP (a zero UDP checksum is "none", so fine) and ICMP; `None` for others.
    pub l4_checksum_ok: Option<bool>,
}

/// Parses an IPv4-over-Ethernet frame and checks its checksums.
pub fn parse_headers(frame: &[u8]) -> Result<Headers, String> {
    let sliced = SlicedPacket::from_ethernet(frame).map_err(|e| format!("not parseable: {e}"))?;
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &sliced.link else {
        return Err("no Ethernet header".into());
    };
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        return Err("not IPv4".into());
    };
    let h = ip.header().to_header();
    let mut out = Headers {
        src_mac: mac_string(eth.source()),
        dst_mac: mac_string(eth.destination()),
        src: Ipv4Addr::from(h.source),
        dst: Ipv4Addr::from(h.destination),
        proto: proto_name(h.protocol.0),
        ttl: h.time_to_live,
        length: h.total_len,
        sport: None,
        dport: None,
        tcp_flags: None,
        icmp_type: None,
        icmp_id: None,
        ip_checksum_ok: h.calc_header_checksum() == h.header_checksum,
        l4_checksum_ok: None,
    };
    match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            out.sport = Some(t.source_port());
            out.dport = Some(t.destination_port());
            let flags = frame
                .get(14 + usize::from(h.ihl()) * 4 + 13)
                .copied()
                .unwrap_or(0);
            out.tcp_flags = Some(tcp_flags_name(flags));
            out.l4_checksum_ok =
                Some(t.calc_checksum_ipv4(h.source, h.destination).ok() == Some(t.checksum()));
        }
        Some(TransportSlice::Udp(u)) => {
            out.sport = Some(u.source_port());
            out.dport = Some(u.destination_port());
            let ok = u.checksum() == 0
                || u.to_header().calc_checksum_ipv4(&h, u.payload()).ok() == Some(u.checksum());
            out.l4_checksum_ok = Some(ok);
        }
        Some(TransportSlice::Icmpv4(i)) => {
            use etherparse::Icmpv4Type;
            let (name, id) = match i.header().icmp_type {
                Icmpv4Type::EchoRequest(e) => ("echo-request".to_string(), Some(e.id)),
                Icmpv4Type::EchoReply(e) => ("echo-reply".to_string(), Some(e.id)),
                _ => (i.type_u8().to_string(), None),
            };
            out.icmp_type = Some(name);
            out.icmp_id = id;
            out.l4_checksum_ok =
                Some(i.header().icmp_type.calc_checksum(i.payload()) == i.checksum());
        }
        _ => {}
    }
    Ok(out)
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        other => other.to_string(),
    }
}

/// What differs between two frames' headers, for people: `src 10.0.1.5 -> 198.18.0.2`.
pub fn changes(before: &Headers, after: &Headers) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what} {a} -> {b}"));
        }
    };
    let opt = |v: Option<u16>| v.map_or_else(|| "-".into(), |v| v.to_string());
    diff("src_mac", before.src_mac.clone(), after.src_mac.clone());
    diff("dst_mac", before.dst_mac.clone(), after.dst_mac.clone());
    diff("src", before.src.to_string(), after.src.to_string());
    diff("dst", before.dst.to_string(), after.dst.to_string());
    diff("sport", opt(before.sport), opt(after.sport));
    diff("dport", opt(before.dport), opt(after.dport));
    diff("icmp_id", opt(before.icmp_id), opt(after.icmp_id));
    diff("ttl", before.ttl.to_string(), after.ttl.to_string());
    out
}

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
    ifaces: BTreeMap<u32, IfaceEntry>,
    floating_ips: Vec<[u8; 4]>,
    sessions: BTreeMap<CtKey, CtEntry>,
    session_capacity: u32,
    policy: PolicyConfig,
    fw_rules: Vec<FwRule>,
}

impl Live {
    fn read(router: &str) -> Result<Self, Error> {
        let ifaces: HashMap<MapData, u32, IfaceEntry> = open_pinned(router, map_names::IFACES)?;
        let ifaces = ifaces.iter().filter_map(Result::ok).collect();
        let fips: HashMap<MapData, [u8; 4], FipEntry> =
            open_pinned(router, map_names::FIP_BY_ADDRESS)?;
        let floating_ips = fips.keys().filter_map(Result::ok).collect();
        let path = crate::paths::router_pin_dir(router).join(map_names::SESSIONS);
        let data =
            MapData::from_pin(&path).map_err(|e| Error::map(format!("{router}: SESSIONS"), e))?;
        let session_capacity = data
            .info()
            .map_err(|e| Error::map(format!("{router}: SESSIONS"), e))?
            .max_entries();
        let sessions: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(
            Map::from_map_data(data).map_err(|e| Error::map(format!("{router}: SESSIONS"), e))?,
        )
        .map_err(|e| Error::map(format!("{router}: SESSIONS"), e))?;
        let sessions = sessions.iter().filter_map(Result::ok).collect();
        let policy: Array<MapData, PolicyConfig> = open_pinned(router, map_names::POLICY_CONFIG)?;
        let policy = policy
            .get(&0, 0)
            .map_err(|e| Error::map("POLICY_CONFIG[0]", e))?;
        let rules: Array<MapData, FwRule> = open_pinned(router, map_names::FW_RULES)?;
        let fw_rules = (policy.fw_base..policy.fw_base + policy.fw_rule_count)
            .map(|i| {
                rules
                    .get(&i, 0)
                    .map_err(|e| Error::map(format!("FW_RULES[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            ifaces,
            floating_ips,
            sessions,
            session_capacity,
            policy,
            fw_rules,
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

fn per_cpu<T: aya::Pod + Default + Clone>() -> Result<PerCpuValues<T>, Error> {
    let cpus = nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|e| Error::io("per-CPU values", e))
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
    let (dp, private) = Datapath::open_for_trace(router, &SHARED_MAPS, capacity)?;
    let mut private: BTreeMap<&str, Map> = private.into_iter().collect();
    let mut take = |name: &str| {
        private
            .remove(name)
            .ok_or_else(|| other(format!("private map {name}"))("missing".into()))
    };
    let map_err = |name: &'static str| move |e| Error::map(format!("private {name}"), e);
    let mut iface_stats: PerCpuHashMap<MapData, u32, IfaceStats> =
        PerCpuHashMap::try_from(take(map_names::IFACE_STATS)?).map_err(map_err("IFACE_STATS"))?;
    iface_stats
        .insert(ingress, per_cpu()?, 0)
        .map_err(map_err("IFACE_STATS"))?;
    let mut fip_stats: PerCpuHashMap<MapData, [u8; 4], FipStats> =
        PerCpuHashMap::try_from(take(map_names::FIP_STATS)?).map_err(map_err("FIP_STATS"))?;
    for fip in &live.floating_ips {
        fip_stats
            .insert(*fip, per_cpu()?, 0)
            .map_err(map_err("FIP_STATS"))?;
    }
    let snat_stats: PerCpuArray<MapData, SnatStats> =
        PerCpuArray::try_from(take(map_names::SNAT_STATS)?).map_err(map_err("SNAT_STATS"))?;
    let fw_stats: PerCpuArray<MapData, FwStats> =
        PerCpuArray::try_from(take(map_names::FW_STATS)?).map_err(map_err("FW_STATS"))?;
    let mut sessions: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(take(map_names::SESSIONS)?).map_err(map_err("SESSIONS"))?;
    for (key, entry) in &live.sessions {
        sessions
            .insert(key, entry, 0)
            .map_err(map_err("SESSIONS"))?;
    }

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
        let handed_to_tc = stats_of(&iface_stats, ingress)?.reasons[Reason::XdpToTc as usize] > 0;
        if ret == XDP_PASS && handed_to_tc {
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

    let iface = stats_of(&iface_stats, ingress)?;
    let mut fips = Vec::new();
    for fip in &live.floating_ips {
        if let Ok(values) = fip_stats.get(fip, 0) {
            let mut s = FipStats::default();
            values.iter().for_each(|v| s.accumulate(v));
            if s != FipStats::default() {
                fips.push((*fip, s));
            }
        }
    }
    let mut snat = SnatStats::default();
    if let Ok(values) = snat_stats.get(&0, 0) {
        values.iter().for_each(|v| snat.accumulate(v));
    }
    let mut fw = Vec::new();
    for slot in 0..router_common::FW_STATS_SLOTS {
        if let Ok(values) = fw_stats.get(&slot, 0) {
            let mut s = FwStats::default();
            values.iter().for_each(|v| s.accumulate(v));
            if s.packets > 0 {
                fw.push((slot, s));
            }
        }
    }
    let sessions_after = sessions.iter().filter_map(Result::ok).collect();
    Ok(Run {
        stages,
        output,
        iface,
        fips,
        snat,
        fw,
        sessions_after,
    })
}

fn stats_of(
    map: &PerCpuHashMap<MapData, u32, IfaceStats>,
    ifindex: u32,
) -> Result<IfaceStats, Error> {
    crate::datapath::sum_stats(map, ifindex)
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
    let mut out = vec![0u8; frame.len() + 256];
    let result = if xdp {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, ...
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        };
        // `open_for_trace` loads both programs.
        dp.xdp()
            .ok_or(aya::programs::ProgramError::NotLoaded)
            .and_then(|p| p.test_run(opts))
    } else {
        // struct __sk_buff up to `ifindex` (offset 40).
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ingress.to_ne_bytes());
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        };
        dp.tc().test_run(opts)
    };
    let result = result.map_err(|e| Error::Program {
        router: String::new(),
        what: format!(
            "BPF_PROG_TEST_RUN of the {} entry",
            if xdp { "XDP" } else { "TC" }
        ),
        source: Box::new(e),
    })?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
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
    let live = Live::read(router)?;
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
                route_lookup(
                    router,
                    &live.policy,
                    ingress,
                    input.src.octets(),
                    dst.octets(),
                )
                .map(|ifindex| EgressPort {
                    interface: live.name_of(&info, ifindex),
                    ifindex,
                    method: "route_lookup",
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
fn route_lookup(
    router: &str,
    policy: &PolicyConfig,
    iif: u32,
    src: [u8; 4],
    dst: [u8; 4],
) -> Option<u32> {
    let routes: LpmTrie<MapData, RouteKey, RouteEntry> =
        open_pinned(router, map_names::ROUTES).ok()?;
    let rules: Array<MapData, PolicyRule> = open_pinned(router, map_names::RULES).ok()?;
    let in_table = |table: u32| {
        routes
            .get(
                &Key::new(RouteKey::TABLE_BITS + 32, RouteKey::new(table, dst)),
                0,
            )
            .ok()
    };
    let table = (policy.rules_base..policy.rules_base + policy.rule_count)
        .filter_map(|i| rules.get(&i, 0).ok())
        .find(|r| r.matches(iif, src, dst) && in_table(r.table).is_some())
        .map_or(TABLE_MAIN, |r| r.table);
    in_table(table)
        .filter(|r| r.kind == route_kind::UNICAST)
        .map(|r| r.ifindex)
}

fn kind_name(kind: u8) -> String {
    match kind {
        ct_kind::SNAT => "snat".into(),
        ct_kind::HAIRPIN => "hairpin".into(),
        ct_kind::FORWARD => "forward".into(),
        other => format!("kind-{other}"),
    }
}

fn tuple(proto: u8, src: [u8; 4], sport: [u8; 2], dst: [u8; 4], dport: [u8; 2]) -> Tuple {
    let (mut sport, mut dport) = (u16::from_be_bytes(sport), u16::from_be_bytes(dport));
    if proto == IPPROTO_ICMP {
        // As `routerctl ct list`: both ports hold the echo identifier.
        sport |= dport;
        dport = sport;
    }
    Tuple {
        src: Ipv4Addr::from(src),
        sport,
        dst: Ipv4Addr::from(dst),
        dport,
    }
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
        original: tuple(p, key.src, key.sport, key.dst, key.dport),
        translated: tuple(
            p,
            orig.new_src,
            orig.new_sport,
            orig.new_dst,
            orig.new_dport,
        ),
        reply: tuple(p, rk.src, rk.sport, rk.dst, rk.dport),
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

// ---- text ------------------------------------------------------------------------------

fn headers_line(h: &Headers) -> String {
    let ports = match (h.sport, h.dport) {
        (Some(s), Some(d)) => (format!(":{s}"), format!(":{d}")),
        _ => (String::new(), String::new()),
    };
    let mut detail = h.proto.clone();
    if let Some(f) = &h.tcp_flags {
        detail.push_str(&format!(" [{f}]"));
    }
    if let Some(t) = &h.icmp_type {
        detail.push_str(&format!(" {t}"));
        if let Some(id) = h.icmp_id {
            detail.push_str(&format!(" id={id}"));
        }
    }
    let l4 = match h.l4_checksum_ok {
        Some(true) => format!(", {} checksum ok", h.proto),
        Some(false) => format!(", {} checksum WRONG", h.proto),
        None => String::new(),
    };
    format!(
        "{} > {}  {}{} > {}{}  {detail}  ttl {} len {}  (IP checksum {}{l4})",
        h.src_mac,
        h.dst_mac,
        h.src,
        ports.0,
        h.dst,
        ports.1,
        h.ttl,
        h.length,
        if h.ip_checksum_ok { "ok" } else { "WRONG" },
    )
}

fn tuple_text(t: &Tuple, proto: &str) -> String {
    if proto == "icmp" {
        format!("{} > {} id={}", t.src, t.dst, t.sport)
    } else {
        format!("{}:{} > {}:{}", t.src, t.sport, t.dst, t.dport)
    }
}

fn session_text(s: &SessionInfo) -> String {
    format!(
        "{} {} (zone {}, {}): {} translated to {}; replies {} (zone {})",
        s.kind,
        s.proto,
        s.zone,
        s.state,
        tuple_text(&s.original, &s.proto),
        tuple_text(&s.translated, &s.proto),
        tuple_text(&s.reply, &s.proto),
        s.reply_zone
    )
}

/// The human-readable report.
pub fn text(t: &Trace) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let port = |p: &Option<String>, i: u32| match p {
        Some(name) => format!("{name} (ifindex {i})"),
        None => format!("ifindex {i}"),
    };
    let _ = writeln!(
        out,
        "router {} ({} mode), in on {}",
        t.router,
        t.mode,
        port(&t.ingress.interface, t.ingress.ifindex)
    );
    let _ = writeln!(out, "input:    {}", headers_line(&t.input));
    for s in &t.stages {
        let tag = s
            .xdp_tag
            .as_ref()
            .map(|t| format!(" (metadata tag {t})"))
            .unwrap_or_default();
        let _ = writeln!(out, "{:<9} {}{tag}", format!("{}:", s.entry), s.action);
    }
    let reason = t
        .reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let verdict = match t.verdict {
        "forwarded" => "forwarded",
        "passed" => "passed to the kernel",
        _ => "dropped",
    };
    match &t.egress {
        Some(e) => {
            let how = if e.method == "source_mac" {
                "by its source MAC"
            } else {
                "by route lookup; the kernel resolves the next hop's MAC"
            };
            let _ = writeln!(
                out,
                "verdict:  {verdict}{reason} out of {} ({how})",
                port(&e.interface, e.ifindex)
            );
        }
        None => {
            let _ = writeln!(out, "verdict:  {verdict}{reason}");
        }
    }
    if t.reasons.len() > 1 {
        let _ = writeln!(out, "reasons:  {}", t.reasons.join(", "));
    }
    if let Some(o) = &t.output {
        let _ = writeln!(out, "output:   {}", headers_line(o));
        if !t.changes.is_empty() {
            let _ = writeln!(out, "changes:  {}", t.changes.join("; "));
        }
    }
    if let Some(s) = &t.session.existing {
        let _ = writeln!(
            out,
            "session:  existing, {} direction: {}",
            t.session.direction.unwrap_or("?"),
            session_text(s)
        );
    }
    match &t.session.created {
        Some(s) => {
            let _ = writeln!(out, "session:  would be created: {}", session_text(s));
        }
        None if t.session.existing.is_none() => {
            let _ = writeln!(out, "session:  none used, none created");
        }
        None => {}
    }
    match &t.firewall {
        Some(f) => {
            let which = match (f.step, f.rule) {
                ("rule", Some(i)) => format!("rule {i}"),
                ("rule", None) => format!("rule in slot {}", f.slot),
                (step, _) => step.to_string(),
            };
            let _ = writeln!(out, "firewall: {which}: {}", f.action);
        }
        None => {
            let _ = writeln!(out, "firewall: not consulted");
        }
    }
    for f in &t.nat.floating_ips {
        let _ = writeln!(out, "nat:      floating IP {} {}", f.address, f.direction);
    }
    if let Some(s) = &t.nat.snat {
        let _ = writeln!(
            out,
            "nat:      snat {} (sessions created {}, port collisions {})",
            s.direction, s.sessions_created, s.port_collisions
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet() -> Packet {
        Packet {
            src: Ipv4Addr::new(10, 0, 1, 5),
            dst: Ipv4Addr::new(203, 0, 113, 7),
            ..Packet::default()
        }
    }

    #[test]
    fn frames_are_built_with_valid_checksums() {
        let mac = [2, 0, 0, 0, 0, 9];
        for (proto, l4) in [(Proto::Tcp, 20), (Proto::Udp, 8), (Proto::Icmp, 8)] {
            let p = Packet {
                proto,
                tcp_flags: 0x12,
                ..packet()
            };
            let frame = build_frame(&p, mac).expect("frame");
            assert_eq!(frame.len(), 14 + 20 + l4);
            let h = parse_headers(&frame).expect("parse");
            assert!(h.ip_checksum_ok && h.l4_checksum_ok == Some(true), "{h:?}");
            assert_eq!(h.dst_mac, "02:00:00:00:00:09");
            assert_eq!(h.src_mac, mac_string(DEFAULT_SRC_MAC));
            assert_eq!(h.ttl, 64);
            match proto {
                Proto::Tcp => {
                    assert_eq!(h.tcp_flags.as_deref(), Some("syn,ack"));
                    assert_eq!((h.sport, h.dport), (Some(40000), Some(80)));
                }
                Proto::Udp => assert_eq!(h.proto, "udp"),
                Proto::Icmp => {
                    assert_eq!(h.icmp_type.as_deref(), Some("echo-request"));
                    assert_eq!(h.icmp_id, Some(1));
                }
            }
        }
        let long = Packet {
            len: Some(1500),
            ttl: 3,
            ..packet()
        };
        let frame = build_frame(&long, mac).expect("frame");
        assert_eq!(frame.len(), 14 + 1500);
        assert_eq!(parse_headers(&frame).expect("parse").ttl, 3);
        assert!(
            build_frame(
                &Packet {
                    len: Some(27),
                    ..packet()
                },
                mac
            )
            .is_err()
        );
    }

    #[test]
    fn flags_macs_and_names_parse() {
        assert_eq!(parse_tcp_flags("syn"), Ok(0x02));
        assert_eq!(parse_tcp_flags("syn,ack"), Ok(0x12));
        assert_eq!(parse_tcp_flags("fin|ack"), Ok(0x11));
        assert_eq!(parse_tcp_flags("none"), Ok(0));
        assert_eq!(parse_tcp_flags("0x29"), Ok(0x29));
        assert!(parse_tcp_flags("syn,bogus").is_err());
        assert_eq!(tcp_flags_name(0x12), "syn,ack");
        assert_eq!(tcp_flags_name(0), "none");
        assert_eq!(
            parse_mac("02:00:00:aa:bb:0c"),
            Ok([2, 0, 0, 0xaa, 0xbb, 0x0c])
        );
        assert!(parse_mac("02:00:00:aa:bb").is_err());
        assert_eq!("tcp".parse::<Proto>(), Ok(Proto::Tcp));
        assert!("sctp".parse::<Proto>().is_err());
        assert_eq!("echo-reply".parse::<IcmpType>(), Ok(IcmpType::EchoReply));
    }

    #[test]
    fn changes_name_every_rewritten_field() {
        let a = parse_headers(&build_frame(&packet(), [2, 0, 0, 0, 0, 1]).expect("frame"))
            .expect("parse");
        let mut b = a.clone();
        b.src = Ipv4Addr::new(198, 18, 0, 2);
        b.ttl = 63;
        b.sport = Some(1024);
        assert_eq!(
            changes(&a, &b),
            vec![
                "src 10.0.1.5 -> 198.18.0.2".to_string(),
                "sport 40000 -> 1024".to_string(),
                "ttl 64 -> 63".to_string()
            ]
        );
    }

    #[test]
    fn sessions_created_and_used_are_told_apart() {
        let key = CtKey {
            zone: 3,
            proto: IPPROTO_UDP,
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
