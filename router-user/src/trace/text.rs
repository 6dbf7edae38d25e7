//! A trace as people read it (`routerctl trace` without `-f json`).

use super::{Headers, SessionInfo, Trace, Tuple};

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
