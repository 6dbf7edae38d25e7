//! The planner's unit tests: requests as JSON against a small desired state, with no
//! router running (nothing here needs root, bpffs or a namespace).

use serde_json::{Value, json};

use super::*;
use crate::{config::DesiredState, router::RouterInfo};

mod edits;
mod neutron_ids;
mod views;

const BASE: &str = r#"
[[router]]
id = "r1"
namespace = "ns1"

[router.gateway]
interface = "qg-1"
address = "198.18.0.2/24"
nexthop = "198.18.0.1"

[[router.interface]]
name = "qr-a"
address = "10.0.1.1/24"

[[router.interface]]
name = "qr-fw"
address = "10.99.0.1/24"

[[router.table]]
name = "vfw"
id = 100

[[router.route]]
destination = "10.20.0.0/16"
nexthop = "10.0.1.254"

[[router.rule]]
priority = 1000
iif = "qr-a"
table = "vfw"
"#;

fn state() -> DesiredState {
    DesiredState::parse(BASE).expect("valid")
}

/// `request` on router r1, sent as JSON.
fn ask(s: &DesiredState, mut request: Value) -> Result<Plan, String> {
    request["router"] = json!("r1");
    plan(s, &parse_request(&request.to_string()).expect("a request")).map_err(|e| e.message)
}

fn changed(s: &DesiredState, request: Value) -> DesiredState {
    match ask(s, request.clone()) {
        Ok(Plan::Change(s)) => s,
        other => panic!("{request}: expected a change, got {other:?}"),
    }
}

fn error(s: &DesiredState, request: Value) -> String {
    match ask(s, request.clone()) {
        Err(e) => e,
        other => panic!("{request}: expected an error, got {other:?}"),
    }
}

fn unchanged(s: &DesiredState, request: Value) {
    assert_eq!(ask(s, request.clone()), Ok(Plan::Unchanged), "{request}");
}

fn answer(s: &DesiredState, request: Value) -> Value {
    match ask(s, request.clone()) {
        Ok(Plan::Answer(v)) => v,
        other => panic!("{request}: expected an answer, got {other:?}"),
    }
}

#[test]
fn requests_read_and_write_as_documented() {
    let line = r#"{"op":"route_add","router":"r1","destination":"10.30.0.0/16","nexthop":"10.0.1.254","table":100}"#;
    let r = parse_request(line).expect("a request");
    assert_eq!(
        r,
        Request::RouteAdd {
            router: "r1".into(),
            destination: "10.30.0.0/16".into(),
            nexthop: "10.0.1.254".into(),
            table: Some("100".into()),
            may_exist: false,
        }
    );
    let text = serde_json::to_string(&r).expect("encodes");
    assert_eq!(parse_request(&text), Ok(r));
    assert_eq!(
        parse_request(r#"{"op":"show_state"}"#),
        Ok(Request::ShowState)
    );
    for (line, problem) in [
        (
            r#"{"op":"route_add","router":"r1"}"#,
            "missing field `destination`",
        ),
        (
            r#"{"op":"rule_list","router":"r1","bogus":1}"#,
            "unknown field `bogus`",
        ),
        (r#"{"op":"launch"}"#, "unknown variant `launch`"),
        ("{not json", "malformed request"),
    ] {
        let e = parse_request(line).expect_err(line);
        assert!(
            e.code == ErrorCode::Invalid
                && e.message.starts_with("malformed request: ")
                && e.message.contains(problem),
            "{e}"
        );
    }
}

#[test]
fn preflight_needs_the_namespaces_of_new_routers() {
    let s = state();
    // r1 keeps its namespace: not checked again.
    assert_eq!(preflight(&s, &s), Ok(()));
    let Ok(Plan::Change(new)) = plan(
        &s,
        &parse_request(r#"{"op":"router_create","router":"r2","namespace":"no-such-ns-here"}"#)
            .expect("request"),
    ) else {
        panic!("a change");
    };
    let e = preflight(&s, &new).expect_err("missing namespace");
    assert!(
        e.code == ErrorCode::NotFound && e.message.contains("router \"r2\": namespace \"no-such-ns-here\" does not exist (no /run/netns/no-such-ns-here"),
        "{e}"
    );
}

#[test]
fn apply_reports_what_changes() {
    let s = state();
    assert_eq!(
        plan(&s, &Request::Apply { text: BASE.into() }),
        Ok(Plan::Unchanged)
    );
    let two = format!("{BASE}\n[[router]]\nid = \"r2\"\nnamespace = \"ns2\"\n");
    let Ok(Plan::Change(new)) = plan(&s, &Request::Apply { text: two }) else {
        panic!("a second router is a change");
    };
    assert_eq!(changed_routers(&s, &new), ["r2"]);
    assert_eq!(changed_routers(&new, &s), ["r2"]);
    let bad = plan(
        &s,
        &Request::Apply {
            text: "[[router]]\nid = 1\n".into(),
        },
    );
    assert!(bad.is_err_and(|e| e.message.starts_with("invalid configuration")));
}

/// A refused request says what kind of failure it is (a stable code), what it is about when
/// that is known, and every response, success or not, says the protocol's version.
#[test]
fn errors_carry_a_code_the_object_at_fault_and_the_version() {
    let s = state();
    let refused =
        |line: &str| plan(&s, &parse_request(line).expect("a request")).expect_err("refused");
    let missing = refused(r#"{"op":"rule_del","router":"r9","priority":4242}"#);
    assert_eq!(missing.code, ErrorCode::NotFound);
    assert_eq!(missing.object.as_deref(), Some("router r9"));
    let missing_rule = refused(r#"{"op":"rule_del","router":"r1","priority":4242}"#);
    assert_eq!(missing_rule.code, ErrorCode::NotFound, "{missing_rule}");
    let exists = refused(r#"{"op":"router_create","router":"r1","namespace":"elsewhere"}"#);
    assert_eq!(exists.code, ErrorCode::Conflict, "{exists}");
    assert_eq!(exists.object.as_deref(), Some("router r1"));
    let bad = refused(
        r#"{"op":"route_add","router":"r1","destination":"10.50.0.0/16","nexthop":"10.0.1.999"}"#,
    );
    assert_eq!(bad.code, ErrorCode::Invalid, "{bad}");
    assert!(
        bad.object
            .as_deref()
            .is_some_and(|k| k.ends_with(".nexthop")),
        "{bad:?}"
    );
    let malformed = parse_request(r#"{"op":"launch"}"#).expect_err("malformed");
    assert_eq!(malformed.code, ErrorCode::Invalid);

    let line = Response::failure(exists.clone()).to_line();
    let wire: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(wire["ok"], json!(false));
    assert_eq!(wire["version"], json!(API_VERSION));
    assert_eq!(wire["code"], json!("conflict"));
    assert_eq!(wire["object"], json!("router r1"));
    assert_eq!(wire["error"], json!(exists.message));
    let back: Response = serde_json::from_str(&line).expect("a response");
    assert_eq!(back.error, Some(exists));

    let ok: Value = serde_json::from_str(&Response::success(json!([])).to_line()).expect("JSON");
    assert_eq!(ok["version"], json!(API_VERSION));
    assert!(ok.get("code").is_none(), "{ok}");
    let back: Response =
        serde_json::from_str(&Response::success(json!(1)).to_line()).expect("a response");
    assert_eq!(back.error, None);
}
