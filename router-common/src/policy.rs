//! Policy routing and the stateful firewall, shared by the fast path and the controller.
//!
//! - Policy rules (`ip rule`): an ordered list, walked first to last; a matching rule's table
//!   is looked up and, if it has a route, that route is used; otherwise the walk goes on. The
//!   main table comes last. Rules are stored in priority order in one half of `RULES`;
//!   [`PolicyConfig`] names the live half, so an update is one write of the config and a
//!   packet never sees half a rule list.
//! - External source tables: after NAT has chosen the source a packet leaves the
//!   gateway interface with, a route through a gateway is looked up again in the table of the
//!   external subnet that source belongs to, so a floating IP of subnet N leaves via subnet
//!   N's gateway. Destinations on an external subnet are connected routes and never reach
//!   this step.
//! - The firewall (FWaaS) on internal interfaces: drop invalid, accept packets of
//!   a session (established and related), then the ordered rules, then the default policy.
//!   Firewall rules are double-buffered like policy rules.
//!
//! The matching functions here are the only implementation: the fast path and the
//! controller (which re-checks live sessions when the rules change) both call them.

/// Policy rules the fast path walks (per half of `RULES`).
pub const MAX_RULES: u32 = 32;
/// Firewall rules (per half of `FW_RULES`).
pub const MAX_FW_RULES: u32 = 64;
/// Counter slots of `FW_STATS`: one per rule slot id, then the fixed slots of [`fw_slot`].
pub const FW_STATS_SLOTS: u32 = 256;

/// Fixed counter slots of `FW_STATS` (rule ids are below [`fw_slot::FIRST_FIXED`]).
pub mod fw_slot {
    pub const FIRST_FIXED: u32 = 250;
    /// Packets of an existing session (established or related), accepted.
    pub const ESTABLISHED: u32 = 250;
    /// Invalid packets (bad TCP flags, an ICMP error about no session), dropped.
    pub const INVALID: u32 = 251;
    /// Packets no rule matched, given the default policy.
    pub const DEFAULT: u32 = 252;
}

/// Values of [`FwRule::action`].
pub mod fw_action {
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
    /// Deny and answer: a TCP RST for TCP, an ICMP port unreachable otherwise. The fast path
    /// hands the packet to the kernel marked [`super::REJECT_MARK`]; an nftables rule of the
    /// slow path answers and drops it.
    pub const REJECT: u8 = 3;
}

/// Bits of [`PolicyConfig::fw_flags`].
pub mod fw_flags {
    /// The router has a firewall: sessions are tracked for every flow through an internal
    /// interface and checked against the rules.
    pub const ENABLED: u32 = 1 << 0;
    /// Packets no rule matches are allowed (the default is to drop them).
    pub const DEFAULT_ALLOW: u32 = 1 << 1;
}

/// `skb->mark` of a packet the firewall rejects (handed to the kernel to answer). Only the
/// upper 16 bits: Neutron's gateway mark (0x2/0xffff) may be ORed into the lower ones.
pub const REJECT_MARK: u32 = 0x52f0_0000;

/// The router's policy settings: the only entry of `POLICY_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyConfig {
    /// Index in `RULES` of the live rule list's first rule (0 or [`MAX_RULES`]).
    pub rules_base: u32,
    pub rule_count: u32,
    /// Index in `FW_RULES` of the live firewall rules (0 or [`MAX_FW_RULES`]).
    pub fw_base: u32,
    pub fw_rule_count: u32,
    /// Bits of [`fw_flags`].
    pub fw_flags: u32,
    /// Entries in `SOURCE_TABLES` (0: skip the lookup).
    pub source_tables: u32,
    /// Bits of [`policy_flags`].
    pub flags: u32,
}

/// Bits of [`PolicyConfig::flags`].
pub mod policy_flags {
    /// A packet a floating IP translates is routed by the main table, past the rules: a
    /// distributed router's copy on a compute node sends its VMs' floating-IP traffic out
    /// of its own gateway, and the rest of their external traffic (chosen by source) to
    /// the SNAT node.
    pub const FLOATING_IP_BY_MAIN: u32 = 1 << 0;
}

/// A prefix as address and mask, both in wire order, host bits of `addr` clear.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Net {
    pub addr: [u8; 4],
    pub mask: [u8; 4],
}

impl Net {
    /// 0.0.0.0/0.
    pub const ANY: Net = Net {
        addr: [0; 4],
        mask: [0; 4],
    };

    pub const fn new(addr: [u8; 4], len: u8) -> Self {
        let mask = if len == 0 {
            0
        } else if len >= 32 {
            u32::MAX
        } else {
            u32::MAX << (32 - len as u32)
        };
        let mask = mask.to_be_bytes();
        Self {
            addr: (u32::from_ne_bytes(addr) & u32::from_ne_bytes(mask)).to_ne_bytes(),
            mask,
        }
    }

    #[inline(always)]
    pub fn contains(&self, addr: [u8; 4]) -> bool {
        u32::from_ne_bytes(addr) & u32::from_ne_bytes(self.mask) == u32::from_ne_bytes(self.addr)
    }

    /// The prefix length (the mask's leading ones).
    pub const fn prefix_len(&self) -> u8 {
        u32::from_be_bytes(self.mask).leading_ones() as u8
    }
}

/// One `ip rule`: `[iif IFACE] [from NET] [to NET] lookup TABLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct PolicyRule {
    /// Ingress ifindex; 0 matches every interface.
    pub iif: u32,
    pub from: Net,
    pub to: Net,
    pub table: u32,
}

impl PolicyRule {
    /// Whether a packet that arrived on `iif` from `src` to `dst` (its destination after
    /// floating-IP DNAT, its source before SNAT, as the kernel routes it) selects this rule.
    #[inline(always)]
    pub fn matches(&self, iif: u32, src: [u8; 4], dst: [u8; 4]) -> bool {
        (self.iif == 0 || self.iif == iif) && self.from.contains(src) && self.to.contains(dst)
    }
}

/// One firewall rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct FwRule {
    pub source: Net,
    pub destination: Net,
    /// Destination ports, inclusive (TCP and UDP only; 0-65535 matches every packet).
    pub port_min: u16,
    pub port_max: u16,
    /// IP protocol; 0 matches every protocol.
    pub proto: u8,
    /// One of [`fw_action`].
    pub action: u8,
    /// Index of this rule's counters in `FW_STATS` (stable while the rule exists).
    pub slot: u8,
    pub _pad: u8,
}

impl FwRule {
    /// Whether a packet of `proto` from `src` to `dst` (its destination after DNAT, its
    /// source before SNAT) with destination port `dport` (host order; 0 when it has none)
    /// matches. A port range only matches TCP and UDP packets.
    #[inline(always)]
    pub fn matches(&self, proto: u8, src: [u8; 4], dst: [u8; 4], dport: u16) -> bool {
        if self.proto != 0 && self.proto != proto {
            return false;
        }
        if !self.source.contains(src) || !self.destination.contains(dst) {
            return false;
        }
        if self.port_min == 0 && self.port_max == u16::MAX {
            return true;
        }
        (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
            && dport >= self.port_min
            && dport <= self.port_max
    }
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Per-CPU counters of one firewall rule (or fixed slot, see [`fw_slot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FwStats {
    pub packets: u64,
    pub bytes: u64,
}

impl FwStats {
    pub fn accumulate(&mut self, other: &Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// Whether a TCP flags byte is a combination a TCP stack sends (Linux conntrack's table:
/// SYN, SYN+ACK, RST, RST+ACK, FIN+ACK, ACK, each optionally with URG/PSH/ECE/CWR). Others
/// (SYN+FIN, no flags, FIN without ACK, ...) are invalid.
#[inline(always)]
pub const fn tcp_flags_valid(flags: u8) -> bool {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    matches!(
        flags & (FIN | SYN | RST | ACK),
        SYN | 0x12 /* SYN|ACK */ | RST | 0x14 /* RST|ACK */ | 0x11 /* FIN|ACK */ | ACK
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_match_by_prefix() {
        let n = Net::new([10, 0, 1, 77], 24);
        assert_eq!(n.addr, [10, 0, 1, 0]);
        assert_eq!(n.prefix_len(), 24);
        assert!(n.contains([10, 0, 1, 200]));
        assert!(!n.contains([10, 0, 2, 1]));
        assert!(Net::ANY.contains([1, 2, 3, 4]));
        assert_eq!(Net::ANY.prefix_len(), 0);
        assert!(Net::new([1, 2, 3, 4], 32).contains([1, 2, 3, 4]));
        assert!(!Net::new([1, 2, 3, 4], 32).contains([1, 2, 3, 5]));
    }

    #[test]
    fn policy_rules_match_interface_and_prefixes() {
        let r = PolicyRule {
            iif: 7,
            from: Net::new([10, 0, 0, 0], 8),
            to: Net::ANY,
            table: 100,
        };
        assert!(r.matches(7, [10, 1, 1, 1], [8, 8, 8, 8]));
        assert!(!r.matches(8, [10, 1, 1, 1], [8, 8, 8, 8]));
        assert!(!r.matches(7, [11, 1, 1, 1], [8, 8, 8, 8]));
        let any_iif = PolicyRule { iif: 0, ..r };
        assert!(any_iif.matches(3, [10, 0, 0, 1], [1, 1, 1, 1]));
    }

    #[test]
    fn firewall_rules_match_seed_001() {
        let deny_tcp = FwRule {
            source: Net::new([2, 2, 2, 0], 24),
            destination: Net::new([3, 3, 3, 0], 24),
            port_min: 1,
            port_max: 65535,
            proto: 6,
            action: fw_action::DENY,
            ..FwRule::default()
        };
        assert!(deny_tcp.matches(6, [2, 2, 2, 9], [3, 3, 3, 9], 80));
        assert!(!deny_tcp.matches(6, [2, 2, 2, 9], [3, 3, 3, 9], 0));
        assert!(!deny_tcp.matches(17, [2, 2, 2, 9], [3, 3, 3, 9], 80));
        assert!(!deny_tcp.matches(6, [2, 2, 3, 9], [3, 3, 3, 9], 80));
        let deny_icmp = FwRule {
            source: Net::new([10, 0, 0, 0], 24),
            destination: Net::ANY,
            port_min: 0,
            port_max: u16::MAX,
            proto: 1,
            action: fw_action::DENY,
            ..FwRule::default()
        };
        assert!(deny_icmp.matches(1, [10, 0, 0, 5], [8, 8, 8, 8], 0));
        assert!(!deny_icmp.matches(6, [10, 0, 0, 5], [8, 8, 8, 8], 22));
        let ports = FwRule {
            port_min: 80,
            port_max: 80,
            ..deny_icmp
        };
        assert!(!ports.matches(1, [10, 0, 0, 5], [8, 8, 8, 8], 0));
    }

    #[test]
    fn tcp_flag_combinations_follow_linux() {
        for ok in [
            0x02, 0x12, 0x04, 0x14, 0x11, 0x10, 0x18, 0x19, 0x1c, 0xc2, 0x22,
        ] {
            assert!(tcp_flags_valid(ok), "{ok:#x}");
        }
        for bad in [0x00, 0x03, 0x01, 0x06, 0x05, 0x29, 0x3f, 0x08, 0x20] {
            assert!(!tcp_flags_valid(bad), "{bad:#x}");
        }
    }
}
