//! routerd desired-state files for tests, the demo and the benchmarks, written one way.

use std::{fmt::Write as _, net::Ipv4Addr};

/// One `[[router]]` of a desired-state file.
#[derive(Clone, Debug, Default)]
pub struct RouterText {
    pub id: String,
    pub namespace: String,
    pub mode: String,
    /// (interface, address with prefix length, next hop, xdp_egress); SNAT on.
    pub gateway: Option<(String, String, String, Option<bool>)>,
    /// (interface, address with prefix length, xdp_egress).
    pub interfaces: Vec<(String, String, Option<bool>)>,
    /// (floating IP, fixed IP).
    pub floating_ips: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Further keys of this router, appended verbatim (routes, `[router.nat]`, ...).
    pub extra: String,
}

impl RouterText {
    pub fn render(&self) -> String {
        let mut s = format!(
            "[[router]]\nid = \"{}\"\nnamespace = \"{}\"\nmode = \"{}\"\n",
            self.id, self.namespace, self.mode
        );
        if let Some((iface, address, nexthop, xdp_egress)) = &self.gateway {
            let _ = write!(
                s,
                "\n[router.gateway]\ninterface = \"{iface}\"\naddress = \"{address}\"\nnexthop = \"{nexthop}\"\nsnat = true\n"
            );
            if let Some(x) = xdp_egress {
                let _ = writeln!(s, "xdp_egress = {x}");
            }
        }
        for (name, address, xdp_egress) in &self.interfaces {
            let _ = write!(
                s,
                "\n[[router.interface]]\nname = \"{name}\"\naddress = \"{address}\"\n"
            );
            if let Some(x) = xdp_egress {
                let _ = writeln!(s, "xdp_egress = {x}");
            }
        }
        for (floating, fixed) in &self.floating_ips {
            let _ = write!(
                s,
                "\n[[router.floating_ip]]\naddress = \"{floating}\"\nfixed = \"{fixed}\"\n"
            );
        }
        if !self.extra.is_empty() {
            let _ = write!(s, "\n{}", self.extra);
        }
        s
    }
}
