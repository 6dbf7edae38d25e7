//! The kernel's own NAT rules: the slow path's translation.
//!
//! The fast path hands some packets to the kernel (fragments, IP options, TTL expiry,
//! packets too big for the egress, protocols it does not translate). The router namespace
//! keeps `ip_forward=1` so the kernel can deal with them, and these nftables rules make the
//! kernel translate them exactly as Neutron's iptables rules would — so nothing handed over
//! ever leaves with an internal source address. One table per router namespace, replaced
//! atomically (one libnftables transaction, `libnft`). Floating IPs are map elements, not
//! one rule each, so a lookup does not grow with their number, and a floating IP added or
//! removed is one element changed, not the table replaced.
//!
//! The rules are typed objects (`rules`), handed to libnftables as its JSON in this
//! process: no `nft` process, no text to generate or parse.
//!
//! The kernel's SNAT uses its own port range, disjoint from the fast path's, so a session
//! the kernel makes can never take a tuple a fast-path session holds.

mod elements;
mod libnft;
mod rules;

use std::collections::BTreeSet;

use nftables::schema::{NfObject, Nftables};

pub use rules::TABLE;

use crate::{
    config::{FloatingIp, Router},
    error::Error,
};

/// What [`update`] leaves for later, done by [`settle`] once the change is answered:
/// - the record of the ruleset the kernel holds (which a restart compares with what it
///   would write, [`ensure`]): it is rendered from the whole router, tens of thousands of
///   floating IPs included, which costs more than changing one of them;
/// - the map elements of removed floating IPs: the kernel waits for an RCU grace period
///   (~15-25 ms here) before it answers a transaction that deletes an element, where one
///   that only adds takes well under a millisecond. The fast path stops translating a
///   removed floating IP at once; the kernel's own rules (for the packets the fast path
///   hands it) keep it until then, as its conntrack entries are flushed after the answer
///   too. A floating IP added back as it was keeps its elements; one whose address or
///   fixed IP is taken again by another has its old elements deleted in the same
///   transaction as the new ones are added.
///
/// Until it is settled, there is no record: a restart writes the table whole.
#[derive(Debug, Default)]
pub struct Pending {
    deletes: Vec<FloatingIp>,
    record: bool,
}

impl Pending {
    /// Whether anything is left to [`settle`].
    pub fn is_due(&self) -> bool {
        self.record || !self.deletes.is_empty()
    }
}

/// Brings the slow-path rules from `old` to `new`: when only floating IPs differ, by adding
/// map elements now and deleting those of removed floating IPs later (`pending`);
/// otherwise by replacing the table.
pub fn update(old: &Router, new: &Router, pending: &mut Pending) -> Result<(), Error> {
    let before: BTreeSet<_> = old.floating_ips.iter().collect();
    let after: BTreeSet<_> = new.floating_ips.iter().collect();
    let mut deletes: Vec<FloatingIp> = std::mem::take(&mut pending.deletes);
    deletes.extend(before.difference(&after).copied());
    if !old.same_but_floating_ips(new) {
        *pending = Pending::default();
        apply(new)?;
        flush_sessions(&deletes);
        return Ok(());
    }
    let mut added: Vec<&FloatingIp> = after.difference(&before).copied().collect();
    if deletes.is_empty() && added.is_empty() {
        return Ok(());
    }
    // Added back as it was, before its elements went: they stay.
    added.retain(|a| match deletes.iter().position(|d| d == *a) {
        Some(i) => {
            deletes.swap_remove(i);
            false
        }
        None => true,
    });
    // Elements whose key an added floating IP takes go in the same transaction.
    let (now, later): (Vec<FloatingIp>, Vec<FloatingIp>) = deletes.into_iter().partition(|d| {
        added
            .iter()
            .any(|a| a.address == d.address || a.fixed == d.fixed)
    });
    // The record goes before the kernel changes: a restart that finds none writes the
    // table whole, where a stale one could make it keep rules it does not want.
    forget(&new.id);
    *pending = Pending {
        deletes: later,
        record: true,
    };
    let gone: Vec<&FloatingIp> = now.iter().collect();
    if let Err(e) = elements::apply(
        rules::TABLE,
        &rules::floating_ip_changes(new, &added, &gone),
    ) {
        // The kernel's maps are not what `old` says (a map or the table went, an element was
        // deleted by hand): the whole table is written again instead.
        tracing::warn!(
            "router {}: changing the slow path's floating-IP maps: {e}; replacing its table",
            new.id
        );
        let later = std::mem::take(pending).deletes;
        apply(new)?;
        flush_sessions(&later);
    }
    flush_sessions(&now);
    Ok(())
}

/// Does what [`update`] left for later (see [`Pending`]): the elements of removed floating
/// IPs deleted and the kernel's sessions of them ended, then the record written. `router`
/// is the state the kernel was brought to.
pub fn settle(router: &Router, pending: &mut Pending) -> Result<(), Error> {
    let deletes = std::mem::take(&mut pending.deletes);
    if !deletes.is_empty() {
        let gone: Vec<&FloatingIp> = deletes.iter().collect();
        let deleted = elements::apply(
            rules::TABLE,
            &rules::floating_ip_changes(router, &[], &gone),
        );
        if let Err(e) = deleted {
            tracing::warn!(
                "router {}: deleting removed floating IPs from the slow path's maps: {e}; replacing its table",
                router.id
            );
            pending.record = false;
            apply(router)?;
        }
        flush_sessions(&deletes);
    }
    if std::mem::take(&mut pending.record) {
        write_record(&router.id, &ruleset_json(router));
    }
    Ok(())
}

/// Ends the kernel's own (slow-path) sessions of removed floating IPs, once the rules that
/// translated them are gone (a session made before that would keep the translation). Best
/// effort: the fast path no longer translates them either way.
fn flush_sessions(gone: &[FloatingIp]) {
    if gone.is_empty() {
        return;
    }
    let addresses: Vec<String> = gone.iter().map(|f| f.address.to_string()).collect();
    // On a thread of its own (which is in the router's namespace, as the calling thread
    // is): the conntrack tool takes tens of milliseconds nothing need wait for.
    let spawned = std::thread::Builder::new()
        .name("conntrack-flush".into())
        .spawn(move || {
            let run = |args: &[&str]| {
                let _ = std::process::Command::new("conntrack")
                    .args(args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            };
            // Past a handful, one flush of the kernel's (rare, slow-path) sessions is cheaper
            // than two processes per address.
            if addresses.len() > 8 {
                return run(&["-F"]);
            }
            for address in &addresses {
                for flag in ["--orig-dst", "--reply-dst"] {
                    run(&["-D", flag, address]);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("flushing the kernel's sessions of removed floating IPs: {e}");
    }
}

/// Replaces the router's slow-path rules in the calling thread's namespace.
pub fn apply(router: &Router) -> Result<(), Error> {
    let rules = ruleset_json(router);
    run_json(&router.id, &rules)?;
    write_record(&router.id, &rules);
    Ok(())
}

/// Applies the router's rules unless the kernel has exactly these already (the table
/// exists and the last ruleset applied for this router is the same). Returns whether it
/// wrote.
pub fn ensure(router: &Router) -> Result<bool, Error> {
    let rules = ruleset_json(router);
    let same = std::fs::read_to_string(applied_file(&router.id)).is_ok_and(|r| r == rules);
    if same && present() {
        return Ok(false);
    }
    apply(router)?;
    Ok(true)
}

/// Whether the calling thread's namespace has the router's table.
pub fn present() -> bool {
    libnft::run(rules::LIST_TABLES).is_ok_and(|listing| rules::names_our_table(&listing))
}

/// The router's ruleset as libnftables JSON (one transaction that replaces the table).
pub fn ruleset_json(router: &Router) -> String {
    document(rules::ruleset(router))
}

fn document(objects: Vec<NfObject<'static>>) -> String {
    let doc = Nftables {
        objects: objects.into(),
    };
    serde_json::to_string(&doc).unwrap_or_else(|e| unreachable!("typed rules serialise: {e}"))
}

/// The ruleset last applied for `router` (in the run directory, gone at reboot with the
/// kernel state it describes).
fn applied_file(router: &str) -> std::path::PathBuf {
    crate::paths::run_dir().join(format!("{router}.nftables"))
}

/// Records `rules` as what the kernel has for `router`, making the run directory if this
/// is the first thing written there. Best effort: without a record the next start
/// rewrites the rules, which is only slower.
fn write_record(router: &str, rules: &str) {
    let _ = std::fs::create_dir_all(crate::paths::run_dir());
    let _ = std::fs::write(applied_file(router), rules);
}

/// Runs one transaction: all or nothing.
fn run_json(id: &str, json: &str) -> Result<(), Error> {
    libnft::run(json).map(drop).map_err(|e| {
        Error::io(
            format!("router {id}: installing the slow-path NAT rules"),
            std::io::Error::other(format!("libnftables: {e}")),
        )
    })
}

/// Removes the router's slow-path rules (the router is being removed).
pub fn remove(router: &str) {
    forget(router);
    let _ = libnft::run(&document(rules::delete_table()));
}

/// Forgets what was applied for `router` (its record in the run directory), for a router
/// removed from outside its namespace: the table goes with the namespace.
pub fn forget(router: &str) {
    let _ = std::fs::remove_file(applied_file(router));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DesiredState;

    /// The FWaaS example firewall and a reject rule of every kind, applied through
    /// libnftables in a namespace of its own and listed back by `nft` (needs root, like every
    /// test here): the kernel holds the rules meant, in nftables' own words.
    #[test]
    fn firewall_ruleset_is_valid_nftables() {
        let firewall = r#"[router.firewall]
[[router.firewall.rule]]
action = "deny"
protocol = "tcp"
source = "2.2.2.0/24"
destination = "3.3.3.0/24"
destination_ports = "1:65535"
[[router.firewall.rule]]
action = "deny"
protocol = "icmp"
source = "10.0.0.0/24"
[[router.firewall.rule]]
action = "reject"
protocol = "udp"
destination_ports = "53"
[[router.firewall.rule]]
action = "reject"
[[router.firewall.rule]]
action = "allow"
protocol = "47"
"#;
        let text = &format!("{}{firewall}", crate::config::ONE_ROUTER);
        let (router, with_fip) = router_and_edit(
            text,
            "[[router.floating_ip]]\naddress = \"172.24.4.10\"\nfixed = \"10.0.0.10\"\n",
        );
        let listing = in_scratch_namespace(move || {
            apply(&router).expect("libnftables takes the ruleset");
            assert!(present());
            // Floating IPs change as map elements; the table stays.
            let mut pending = Pending::default();
            update(&router, &with_fip, &mut pending).expect("element added");
            settle(&with_fip, &mut pending).expect("settled");
            forget(&router.id);
        });
        // As `nft` lists them: it leaves out the `meta l4proto tcp` that a TCP reset
        // implies and folds the mark's masks.
        for line in [
            "ip saddr 2.2.2.0/24 ip daddr 3.3.3.0/24 tcp dport 1-65535 drop",
            "meta l4proto icmp ip saddr 10.0.0.0/24 drop",
            "udp dport 53-53 reject\n",
            "meta mark 0x52f00000/16 reject with tcp reset",
            "meta l4proto gre accept",
            "iifname \"qr-a\" ip saddr != 10.0.0.0/24 drop",
            "iifname \"qg-1\" meta mark set meta mark & 0xffff0002 | 0x00000002",
            "iifname != \"qg-1\" oifname != \"qg-1\" ct status ! dnat accept",
            "dnat to ip daddr map @fip_dnat",
            "snat to ip saddr map @fip_snat",
            "oifname \"qg-1\" meta l4proto { tcp, udp } snat to 172.24.4.2:64512-65535",
            "meta mark & 0x000000ff != 0x00000002 ct status & dnat == dnat snat to 172.24.4.2",
            "iifname \"qr-a\" ip daddr 169.254.169.254 tcp dport 80 redirect to :9697",
            "elements = { 172.24.4.10 : 10.0.0.10 }",
            "ct state invalid drop",
            "ct state established,related accept",
            "iifname != \"qr-a\" oifname != \"qr-a\" accept",
        ] {
            assert!(listing.contains(line), "missing {line:?} in:\n{listing}");
        }
    }

    /// Steering through a two-legged firewall and a second external subnet: the kernel
    /// tracks what enters before the firewall in a zone of its own, and marks what a
    /// floating IP of the second subnet sends with that subnet's mark; the mark map follows
    /// floating-IP changes.
    #[test]
    fn steering_zone_and_subnet_marks_are_valid_nftables() {
        let text = r#"
[[router]]
id = "r1"
namespace = "ns1"
[router.gateway]
interface = "qg-1"
address = "172.24.4.2/24"
nexthop = "172.24.4.1"
[[router.gateway.subnet]]
address = "172.24.5.2/24"
nexthop = "172.24.5.1"
[[router.interface]]
name = "qr-a"
address = "10.0.0.1/24"
[[router.interface]]
name = "qr-fi"
address = "10.99.0.1/24"
[[router.interface]]
name = "qr-fe"
address = "10.99.1.1/24"
[router.steering]
nexthop = "10.99.0.2"
gateway_nexthop = "10.99.1.2"
interfaces = ["qr-a"]
[[router.floating_ip]]
address = "172.24.4.10"
fixed = "10.0.0.10"
[[router.floating_ip]]
address = "172.24.5.11"
fixed = "10.0.0.11"
"#;
        let (router, with_more) = router_and_edit(
            text,
            "[[router.floating_ip]]\naddress = \"172.24.5.12\"\nfixed = \"10.0.0.12\"\n",
        );
        let listing = in_scratch_namespace(move || {
            apply(&router).expect("libnftables takes the ruleset");
            update(&router, &with_more, &mut Pending::default()).expect("elements added");
            forget(&router.id);
        });
        for line in [
            "iifname { \"qr-a\", \"qr-fi\" } ct zone set 1",
            "meta mark 0x00000000 meta mark set ip saddr map @fip_subnet_mark",
            "10.0.0.11 : 0x00000100",
            "10.0.0.12 : 0x00000100",
            "meta mark & 0x000000ff != 0x00000002 ct status & dnat == dnat snat to 172.24.4.2",
        ] {
            assert!(listing.contains(line), "missing {line:?} in:\n{listing}");
        }
        // The primary subnet's floating IP needs no mark: main's default is its gateway.
        assert!(!listing.contains("10.0.0.10 : 0x"), "{listing}");
    }

    /// Floating IPs change as one netlink batch of map elements, however many (more than
    /// one message holds here), with removals and a floating IP moved to another fixed
    /// address; and a kernel whose maps are not what the last state says (an element
    /// deleted by hand) gets the whole table again.
    #[test]
    fn floating_ip_elements_change_in_one_batch() {
        let base = r#"
[[router]]
id = "r1"
namespace = "ns1"
[router.gateway]
interface = "qg-1"
address = "172.24.0.2/20"
nexthop = "172.24.0.1"
[[router.interface]]
name = "qr-a"
address = "10.0.0.1/16"
[router.nat]
max_floating_ips = 4096
"#;
        let fip = |i: usize, fixed: usize| {
            format!(
                "[[router.floating_ip]]\naddress = \"172.24.{}.{}\"\nfixed = \"10.0.{}.{}\"\n",
                1 + i / 250,
                1 + i % 250,
                1 + fixed / 250,
                1 + fixed % 250
            )
        };
        let state = |fips: &mut dyn Iterator<Item = (usize, usize)>| {
            let text = fips.map(|(i, f)| fip(i, f)).collect::<String>();
            DesiredState::parse(&format!("{base}{text}"))
                .expect("valid")
                .routers
                .remove(0)
        };
        let first = state(&mut (0..3).map(|i| (i, i)));
        // The first one goes, the second moves to another fixed address, 2,500 come.
        let second = state(&mut std::iter::once((1, 3000)).chain((2..2503).map(|i| (i, i))));
        // The third also drops the 10th, which is deleted by hand before.
        let third = state(
            &mut std::iter::once((1, 3000)).chain((2..2503).filter(|i| *i != 10).map(|i| (i, i))),
        );
        let (wanted_second, gone) = (second.clone(), third.clone());
        let (maps_second, maps_third) = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            apply(&first).expect("libnftables takes the ruleset");
            // As `update` makes them, and taken by the kernel in one batch (`update` would
            // fall back to the whole table if not).
            let before: BTreeSet<_> = first.floating_ips.iter().collect();
            let after: BTreeSet<_> = second.floating_ips.iter().collect();
            let gone: Vec<_> = before.difference(&after).copied().collect();
            let added: Vec<_> = after.difference(&before).copied().collect();
            elements::apply(TABLE, &rules::floating_ip_changes(&second, &added, &gone))
                .expect("one batch");
            let maps_second = maps_here();
            let tenth = ([172, 24, 1, 11], [10, 0, 1, 11]);
            elements::apply(
                TABLE,
                &[elements::MapChange {
                    map: rules::FIP_DNAT,
                    delete: vec![tenth.0],
                    add: Vec::new(),
                }],
            )
            .expect("deleted by hand");
            // Its deletion waits for the settle, which finds the element gone and writes
            // the table whole instead, recorded with it: nothing left pending.
            let mut pending = Pending::default();
            update(&second, &third, &mut pending).expect("removed");
            settle(&third, &mut pending).expect("the table written again");
            assert!(!pending.is_due());
            let maps_third = maps_here();
            forget(&first.id);
            (maps_second, maps_third)
        })
        .join()
        .expect("the scratch thread");
        let want = |router: &Router| {
            let dnat: BTreeSet<(String, String)> = router
                .floating_ips
                .iter()
                .map(|f| (f.address.to_string(), f.fixed.to_string()))
                .collect();
            let snat = dnat.iter().map(|(a, b)| (b.clone(), a.clone())).collect();
            (dnat, snat)
        };
        let (dnat, snat) = want(&wanted_second);
        assert_eq!(dnat.len(), 2502);
        assert!(
            dnat.contains(&("172.24.1.2".into(), "10.0.13.1".into())),
            "moved"
        );
        assert_eq!(maps_second.0, dnat);
        assert_eq!(maps_second.1, snat);
        let (dnat, snat) = want(&gone);
        assert_eq!(maps_third.0, dnat);
        assert_eq!(maps_third.1, snat);
    }

    /// What a change of floating IPs leaves for later: a removed floating IP's elements
    /// stay until settled, or go at once when another takes their key; one added back as it
    /// was keeps them; the record is written when settled, and then a restart writes
    /// nothing.
    #[test]
    fn removed_elements_and_the_record_wait_for_the_settle() {
        let text = crate::config::ONE_ROUTER;
        let fip = |a: u8, f: u8| {
            format!("[[router.floating_ip]]\naddress = \"172.24.4.{a}\"\nfixed = \"10.0.0.{f}\"\n")
        };
        let (none, one) = router_and_edit(text, &fip(10, 10));
        let (_, moved) = router_and_edit(text, &fip(10, 11));
        // An id of its own: the record of what is applied is a file per router id.
        let id = format!("slowpath-pending-{}", std::process::id());
        let with_id = |r: Router| Router {
            id: id.clone(),
            ..r
        };
        let (none, one, moved) = (with_id(none), with_id(one), with_id(moved));
        let dnat = |pairs: &[(&str, &str)]| -> Elements {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            apply(&one).expect("the table");
            let mut pending = Pending::default();
            // Removed: the element stays until settled; no record meanwhile.
            update(&one, &none, &mut pending).expect("removed");
            assert!(pending.is_due());
            assert!(!applied_file(&one.id).exists());
            assert_eq!(maps_here().0, dnat(&[("172.24.4.10", "10.0.0.10")]));
            // Added back as it was: nothing to delete any more.
            update(&none, &one, &mut pending).expect("added back");
            settle(&one, &mut pending).expect("settled");
            assert_eq!(maps_here().0, dnat(&[("172.24.4.10", "10.0.0.10")]));
            assert!(!pending.is_due());
            assert!(
                !ensure(&one).expect("ensure"),
                "the record is not what the kernel has"
            );
            // Removed, then settled: gone.
            update(&one, &none, &mut pending).expect("removed");
            settle(&none, &mut pending).expect("settled");
            assert_eq!(maps_here().0, dnat(&[]));
            // Removed, and its address taken for another fixed IP before the settle: the
            // old element goes in the same transaction as the new one comes.
            update(&none, &one, &mut pending).expect("added");
            update(&one, &none, &mut pending).expect("removed");
            update(&none, &moved, &mut pending).expect("the address again");
            assert_eq!(maps_here().0, dnat(&[("172.24.4.10", "10.0.0.11")]));
            settle(&moved, &mut pending).expect("settled");
            assert_eq!(maps_here().0, dnat(&[("172.24.4.10", "10.0.0.11")]));
            assert!(!ensure(&moved).expect("ensure"));
            forget(&one.id);
        })
        .join()
        .expect("the scratch thread");
    }

    /// A map's elements as `nft` lists them: key and value.
    type Elements = BTreeSet<(String, String)>;

    /// The floating-IP maps (DNAT, SNAT) of the calling thread's namespace, as `nft` lists
    /// them.
    fn maps_here() -> (Elements, Elements) {
        let listing = nft_here(&["-j", "list", "table", "ip", TABLE]);
        let doc: serde_json::Value = serde_json::from_str(&listing).expect("nft's JSON");
        let map = |name: &str| -> Elements {
            doc["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| o["map"]["name"] == name)
                .flat_map(|o| o["map"]["elem"].as_array().cloned().unwrap_or_default())
                .map(|e| {
                    (
                        e[0].as_str().unwrap_or_default().to_string(),
                        e[1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        };
        (map(rules::FIP_DNAT), map(rules::FIP_SNAT))
    }

    /// The one router of `text`, and the same with `more` appended to it.
    fn router_and_edit(text: &str, more: &str) -> (Router, Router) {
        let one = |t: &str| DesiredState::parse(t).expect("valid").routers.remove(0);
        (one(text), one(&format!("{text}{more}")))
    }

    /// Runs `f` in a thread of its own network namespace, then lists the router's table
    /// there with `nft` (through the thread's namespace file).
    fn in_scratch_namespace(f: impl FnOnce() + Send + 'static) -> String {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            f();
            nft_here(&["list", "table", "ip", TABLE])
        })
        .join()
        .expect("the scratch thread")
    }

    /// What `nft ARGS` prints in the calling thread's namespace (through the thread's
    /// namespace file).
    fn nft_here(args: &[&str]) -> String {
        let ns = format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            nix::unistd::gettid()
        );
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .arg("nft")
            .args(args)
            .output()
            .expect("nft runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
