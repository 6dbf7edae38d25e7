//! API edits written over a commented file: what did not change keeps its text.

use super::*;

/// A file as an operator writes it: opening comments, comments between routers, trailing
/// comments on keys, blank lines.
const COMMENTED: &str = r#"# Routers of compute-7.
# Edited by hand and by routerctl.

[[router]]                    # the first tenant
id = "r1"
namespace = "qrouter-r1"
mode = "xdp"

[router.gateway]              # the qg side
interface = "qg-r1"
address = "198.18.0.2/24"
nexthop = "198.18.0.1"        # default route
snat = true                   # the tenant needs outbound

[[router.interface]]          # one qr per internal subnet
name = "qr-a"
address = "10.0.1.1/24"

[[router.route]]              # to the lab
destination = "10.20.0.0/16"
nexthop = "10.0.1.254"

[[router.route]]              # to the backup site
destination = "10.30.0.0/16"
nexthop = "10.0.1.253"

# The second tenant: no gateway yet.


[[router]]
id = "r2"
namespace = "qrouter-r2"      # created by the agent
mode = "tc"

[[router.interface]]
name = "qr-c"                 # the only subnet
address = "10.0.3.1/24"
"#;

/// Lines of [`COMMENTED`] that belong to router r1, r2, or neither (the opening).
const OPENING: &[&str] = &["# Routers of compute-7.\n# Edited by hand and by routerctl.\n\n"];
const R1_KEPT: &[&str] = &[
    "[[router]]                    # the first tenant\nid = \"r1\"\nnamespace = \"qrouter-r1\"\nmode = \"xdp\"\n",
    "[router.gateway]              # the qg side\ninterface = \"qg-r1\"\naddress = \"198.18.0.2/24\"\nnexthop = \"198.18.0.1\"        # default route\n",
    "\n[[router.interface]]          # one qr per internal subnet\nname = \"qr-a\"\naddress = \"10.0.1.1/24\"\n",
    "[[router.route]]              # to the backup site\ndestination = \"10.30.0.0/16\"\nnexthop = \"10.0.1.253\"\n",
];
const R2: &str = "# The second tenant: no gateway yet.\n\n\n[[router]]\nid = \"r2\"\nnamespace = \"qrouter-r2\"      # created by the agent\nmode = \"tc\"\n\n[[router.interface]]\nname = \"qr-c\"                 # the only subnet\naddress = \"10.0.3.1/24\"\n";

/// `new` written over `file`: it must read back as `new`, and keep every part listed.
fn edit(file: &str, new: &DesiredState, kept: &[&str]) -> String {
    let text = new.to_toml_over(file);
    assert_eq!(
        DesiredState::parse(&text).expect("the edited file is valid"),
        *new,
        "{text}"
    );
    for part in kept {
        assert!(text.contains(part), "lost {part:?} in:\n{text}");
    }
    text
}

fn index(text: &str, part: &str) -> usize {
    text.find(part)
        .unwrap_or_else(|| panic!("{part:?} not in:\n{text}"))
}

#[test]
fn edits_keep_the_comments_and_order_of_what_they_do_not_change() {
    let mut state = DesiredState::parse(COMMENTED).expect("valid");
    // Nothing changed: the file is written back byte for byte.
    assert_eq!(state.to_toml_over(COMMENTED), COMMENTED);
    let all: Vec<&str> = OPENING.iter().chain(R1_KEPT).copied().chain([R2]).collect();

    // A floating IP added: appended to r1, the rest as written.
    state.routers[0].floating_ips.push(FloatingIp {
        address: "198.18.0.10".parse().expect("address"),
        fixed: "10.0.1.5".parse().expect("address"),
        id: None,
    });
    let mut all_r1 = all.clone();
    all_r1.push("[[router.route]]              # to the lab\n");
    all_r1.push("snat = true                   # the tenant needs outbound\n");
    let text = edit(COMMENTED, &state, &all_r1);
    assert!(index(&text, "# to the backup site") < index(&text, "[[router.floating_ip]]"));
    assert!(index(&text, "[[router.floating_ip]]") < index(&text, "# The second tenant"));
    assert!(
        text.contains("[[router.floating_ip]]\naddress = \"198.18.0.10\"\nfixed = \"10.0.1.5\"\n")
    );

    // A route removed: that route's table and comment go, nothing else.
    state.routers[0]
        .routes
        .retain(|r| r.nexthop.to_string() != "10.0.1.254");
    let mut kept = all.clone();
    kept.push("snat = true                   # the tenant needs outbound\n");
    let text = edit(&text, &state, &kept);
    assert!(!text.contains("# to the lab"));
    assert!(!text.contains("10.20.0.0/16"));

    // The gateway's snat changed: that key only (its trailing comment was about the old value).
    if let Some(g) = state.routers[0].gateway.as_mut() {
        g.snat = false;
    }
    let text = edit(&text, &state, &all);
    assert!(text.contains("nexthop = \"198.18.0.1\"        # default route\nsnat = false\n"));
    assert!(!text.contains("# the tenant needs outbound"));

    // A router added: appended after the others, rendered from its typed value.
    let added = DesiredState::parse(
        "[[router]]\nid = \"r3\"\nnamespace = \"qrouter-r3\"\nmode = \"xdp\"\n\n\
         [[router.interface]]\nname = \"qr-d\"\naddress = \"10.0.4.1/24\"\n",
    )
    .expect("valid");
    state.routers.extend(added.routers);
    let text = edit(&text, &state, &all);
    assert!(text.ends_with("\n\n[[router]]\nid = \"r3\"\nnamespace = \"qrouter-r3\"\nmode = \"xdp\"\n\n[[router.interface]]\nname = \"qr-d\"\naddress = \"10.0.4.1/24\"\n"), "{text}");
    assert!(index(&text, "id = \"r1\"") < index(&text, "id = \"r2\""));

    // The first router removed: its table and comments go; the file's opening comments
    // stay on top, and r2 and r3 are as they were.
    let r3_text = text[index(&text, "[[router]]\nid = \"r3\"")..].to_string();
    state.routers.remove(0);
    let text = edit(&text, &state, &[OPENING[0], R2, &r3_text]);
    assert!(text.starts_with(OPENING[0]), "{text}");
    assert!(!text.contains("r1"));
    assert!(index(&text, "id = \"r2\"") < index(&text, "id = \"r3\""));
}

#[test]
fn a_key_added_to_an_interface_keeps_its_comments_and_an_unreadable_file_is_written_whole() {
    let mut state = DesiredState::parse(COMMENTED).expect("valid");
    state.routers[1].interfaces[0].source_check = false;
    let text = edit(COMMENTED, &state, &[OPENING[0], R1_KEPT[0], R1_KEPT[3]]);
    assert!(text.contains(
        "[[router.interface]]\nname = \"qr-c\"                 # the only subnet\naddress = \"10.0.3.1/24\"\nsource_check = false\n"
    ), "{text}");
    // Neither TOML nor a desired state: the rendering, whole.
    assert_eq!(state.to_toml_over("[[router"), state.to_toml());
    assert_eq!(state.to_toml_over("[[router]]\nid = 1\n"), state.to_toml());
}

#[test]
fn same_but_floating_ips_compares_everything_else() {
    let state = DesiredState::parse(COMMENTED).expect("valid");
    let router = &state.routers[0];
    let mut other = router.clone();
    other.floating_ips.clear();
    other.floating_ips.push(FloatingIp {
        address: "198.18.0.77".parse().expect("address"),
        fixed: "10.0.1.77".parse().expect("address"),
        id: None,
    });
    assert!(router.same_but_floating_ips(&other));
    other.routes.pop();
    assert!(!router.same_but_floating_ips(&other));
    let mut other = router.clone();
    other.nat.snat_sessions_per_source += 1;
    assert!(!router.same_but_floating_ips(&other));
}
