//! Why the fast path did not forward a packet. The numbers are stable: they index
//! [`crate::IfaceStats::reasons`] and user space prints them by name.
//!
//! Reasons below [`Reason::FIRST_DROP`] hand the packet to the kernel untouched (the slow
//! path); the others drop it.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    // --- handed to the kernel (XDP_PASS / TC_ACT_OK) ---
    /// ARP: the kernel answers and learns neighbours.
    Arp = 1,
    /// IPv6: not handled by the fast path yet.
    Ipv6 = 2,
    /// Any other ethertype (LLDP, two VLAN tags, ...).
    OtherL3 = 3,
    /// An 802.1Q-tagged frame: it belongs to a VLAN sub-interface, which the kernel owns.
    Vlan = 4,
    /// IPv4 header with options (IHL > 5).
    IpOptions = 5,
    /// A later fragment (offset non-zero) of a datagram whose first fragment went to the
    /// kernel (for whatever reason that one was counted under): the kernel gets the whole
    /// datagram.
    Fragment = 6,
    /// TTL <= 1: the kernel answers with ICMP time exceeded.
    TtlExpired = 7,
    /// Destination is an address of the router itself (or a broadcast address).
    LocalDest = 8,
    /// Next hop has no neighbour entry yet. The TC entry forwards the packet with
    /// `bpf_redirect_neigh` (the kernel resolves the MAC; counted as forwarded too); the XDP
    /// entry hands it to TC (`XdpToTc`).
    NoNeighbor = 9,
    /// No route: the kernel answers with ICMP unreachable.
    NoRoute = 10,
    /// Destination MAC is not the interface's (broadcast, multicast, another host).
    NotRouterMac = 11,
    /// The route is of a kind only the kernel handles (unreachable, prohibit, multipath).
    KernelRoute = 12,
    /// Larger than the egress MTU: the kernel fragments or answers "fragmentation needed".
    FragNeeded = 13,
    /// The ingress interface is not one of the router's.
    UnknownIngress = 14,
    /// The route points at an interface the fast path does not drive.
    UnknownEgress = 15,
    /// Source or destination is one the kernel never forwards (multicast, limited
    /// broadcast, 0.0.0.0/8, loopback): the kernel applies its martian rules.
    SpecialAddress = 16,
    /// XDP entry: the egress cannot take an XDP redirect; the TC entry forwards it.
    XdpToTc = 17,
    /// TCP to the metadata address 169.254.169.254:80 from an internal interface: the
    /// kernel redirects it to the local metadata proxy, as Neutron's REDIRECT rule does.
    Metadata = 18,
    /// The packet needs a translation the fast path does not do (SNAT of a protocol other
    /// than TCP, UDP and ICMP echo; an ICMP error about a flow without a session): the
    /// kernel's slow-path NAT rules translate it.
    NatSlowPath = 19,
    /// A firewall rule rejects the packet: the kernel answers (TCP RST or ICMP port
    /// unreachable) and drops it, marked `REJECT_MARK` by the fast path.
    FwReject = 20,

    // --- dropped (XDP_DROP / TC_ACT_SHOT) ---
    /// Frame shorter than an Ethernet header.
    TruncatedEthernet = 24,
    /// IPv4 header truncated, IHL < 5, version not 4, or total length beyond the frame or
    /// shorter than the header.
    MalformedIpv4 = 25,
    /// IPv4 header checksum wrong (the kernel would drop it too).
    BadIpChecksum = 26,
    /// TCP, UDP or ICMP header truncated (in an unfragmented packet or a first fragment).
    MalformedL4 = 27,
    /// A blackhole route.
    Blackhole = 28,
    /// The redirect to the egress failed.
    RedirectFailed = 29,
    /// Default SNAT found no free port (or echo identifier) for a new session.
    NoSnatPort = 30,
    /// The session table is full: no new session until garbage collection frees entries.
    SessionTableFull = 31,
    /// The firewall found the packet invalid: TCP flags no stack sends, or an ICMP error
    /// about a flow the router does not know.
    FwInvalid = 32,
    /// Denied by a firewall rule.
    FwDeny = 33,
    /// No firewall rule matched and the default policy is deny.
    FwDefaultDeny = 34,
    /// Anti-spoofing: a packet from an internal interface with a source address that is not
    /// the interface's subnet, a network routed through it, or an allowed source.
    SpoofedSource = 35,
    /// A packet that would create a session (SNAT, hairpin or a firewall-tracked flow) has
    /// a wrong TCP, UDP or ICMP checksum: it takes no session and no port.
    BadL4Checksum = 36,
    /// A new SNAT session from an internal address that holds `nat.snat_sessions_per_source`
    /// sessions already.
    SnatSourceQuota = 37,
    /// A later fragment (offset non-zero) of a datagram whose first fragment the fast path
    /// has no record of: it has not arrived yet (out of order), was lost or dropped before
    /// it was recorded, or its record was evicted or is older than 30 s. Dropped as Cilium
    /// does: the fast path does not hold fragments back, and the kernel could not reassemble
    /// a datagram whose first fragment the fast path already forwarded.
    FragmentUnknown = 38,
    /// A later fragment of a datagram the fast path forwarded that cannot follow its first
    /// fragment: larger than the egress MTU (the fast path does not fragment) or TTL <= 1.
    FragmentUnfit = 39,
    /// A router placed on several nodes (HA), arriving on a node that is not its active
    /// one: the standby is silent (no ARP answer, no forwarding) until it takes over.
    Standby = 40,
    /// An HA router's active node whose controller stopped renewing its hold
    /// (`HaState::fence_at_ns` passed): it stops answering rather than risk two actives.
    Fenced = 41,
}

impl Reason {
    /// Every reason, in numeric order.
    pub const ALL: [Reason; 38] = [
        Reason::Arp,
        Reason::Ipv6,
        Reason::OtherL3,
        Reason::Vlan,
        Reason::IpOptions,
        Reason::Fragment,
        Reason::TtlExpired,
        Reason::LocalDest,
        Reason::NoNeighbor,
        Reason::NoRoute,
        Reason::NotRouterMac,
        Reason::KernelRoute,
        Reason::FragNeeded,
        Reason::UnknownIngress,
        Reason::UnknownEgress,
        Reason::SpecialAddress,
        Reason::XdpToTc,
        Reason::Metadata,
        Reason::NatSlowPath,
        Reason::FwReject,
        Reason::TruncatedEthernet,
        Reason::MalformedIpv4,
        Reason::BadIpChecksum,
        Reason::MalformedL4,
        Reason::Blackhole,
        Reason::RedirectFailed,
        Reason::NoSnatPort,
        Reason::SessionTableFull,
        Reason::FwInvalid,
        Reason::FwDeny,
        Reason::FwDefaultDeny,
        Reason::SpoofedSource,
        Reason::BadL4Checksum,
        Reason::SnatSourceQuota,
        Reason::FragmentUnknown,
        Reason::FragmentUnfit,
        Reason::Standby,
        Reason::Fenced,
    ];

    /// First numeric value of the drop reasons.
    pub const FIRST_DROP: u32 = 24;

    pub const fn is_drop(self) -> bool {
        self as u32 >= Self::FIRST_DROP
    }

    /// The reason with number `n`, if there is one. (A `match`, not a search: the eBPF
    /// entries decode the pipeline's results with it.)
    pub const fn from_u32(n: u32) -> Option<Self> {
        match n {
            1 => Some(Reason::Arp),
            2 => Some(Reason::Ipv6),
            3 => Some(Reason::OtherL3),
            4 => Some(Reason::Vlan),
            5 => Some(Reason::IpOptions),
            6 => Some(Reason::Fragment),
            7 => Some(Reason::TtlExpired),
            8 => Some(Reason::LocalDest),
            9 => Some(Reason::NoNeighbor),
            10 => Some(Reason::NoRoute),
            11 => Some(Reason::NotRouterMac),
            12 => Some(Reason::KernelRoute),
            13 => Some(Reason::FragNeeded),
            14 => Some(Reason::UnknownIngress),
            15 => Some(Reason::UnknownEgress),
            16 => Some(Reason::SpecialAddress),
            17 => Some(Reason::XdpToTc),
            18 => Some(Reason::Metadata),
            19 => Some(Reason::NatSlowPath),
            20 => Some(Reason::FwReject),
            24 => Some(Reason::TruncatedEthernet),
            25 => Some(Reason::MalformedIpv4),
            26 => Some(Reason::BadIpChecksum),
            27 => Some(Reason::MalformedL4),
            28 => Some(Reason::Blackhole),
            29 => Some(Reason::RedirectFailed),
            30 => Some(Reason::NoSnatPort),
            31 => Some(Reason::SessionTableFull),
            32 => Some(Reason::FwInvalid),
            33 => Some(Reason::FwDeny),
            34 => Some(Reason::FwDefaultDeny),
            35 => Some(Reason::SpoofedSource),
            36 => Some(Reason::BadL4Checksum),
            37 => Some(Reason::SnatSourceQuota),
            38 => Some(Reason::FragmentUnknown),
            39 => Some(Reason::FragmentUnfit),
            40 => Some(Reason::Standby),
            41 => Some(Reason::Fenced),
            _ => None,
        }
    }

    /// A short stable name for tables, metrics and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Arp => "arp",
            Reason::Ipv6 => "ipv6",
            Reason::OtherL3 => "other_l3",
            Reason::Vlan => "vlan",
            Reason::IpOptions => "ip_options",
            Reason::Fragment => "fragment",
            Reason::TtlExpired => "ttl_expired",
            Reason::LocalDest => "local_dest",
            Reason::NoNeighbor => "no_neighbor",
            Reason::NoRoute => "no_route",
            Reason::NotRouterMac => "not_router_mac",
            Reason::KernelRoute => "kernel_route",
            Reason::FragNeeded => "frag_needed",
            Reason::UnknownIngress => "unknown_ingress",
            Reason::UnknownEgress => "unknown_egress",
            Reason::SpecialAddress => "special_address",
            Reason::XdpToTc => "xdp_to_tc",
            Reason::TruncatedEthernet => "truncated_ethernet",
            Reason::MalformedIpv4 => "malformed_ipv4",
            Reason::BadIpChecksum => "bad_ip_checksum",
            Reason::MalformedL4 => "malformed_l4",
            Reason::Blackhole => "blackhole",
            Reason::RedirectFailed => "redirect_failed",
            Reason::NoSnatPort => "no_snat_port",
            Reason::SessionTableFull => "session_table_full",
            Reason::Metadata => "metadata",
            Reason::NatSlowPath => "nat_slow_path",
            Reason::FwReject => "fw_reject",
            Reason::FwInvalid => "fw_invalid",
            Reason::FwDeny => "fw_deny",
            Reason::FwDefaultDeny => "fw_default_deny",
            Reason::SpoofedSource => "spoofed_source",
            Reason::BadL4Checksum => "bad_l4_checksum",
            Reason::SnatSourceQuota => "snat_source_quota",
            Reason::FragmentUnknown => "fragment_unknown",
            Reason::FragmentUnfit => "fragment_unfit",
            Reason::Standby => "standby",
            Reason::Fenced => "fenced",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_fit_the_counter_slots_and_round_trip() {
        for r in Reason::ALL {
            assert!((r as usize) < crate::REASON_SLOTS, "{r:?}");
            assert_eq!(Reason::from_u32(r as u32), Some(r));
        }
        assert_eq!(Reason::from_u32(0), None);
        assert!(!Reason::XdpToTc.is_drop());
        assert!(Reason::TruncatedEthernet.is_drop());
    }

    #[test]
    fn names_are_unique() {
        for a in Reason::ALL {
            for b in Reason::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
    }
}
