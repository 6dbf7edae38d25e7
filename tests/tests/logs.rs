//! routerd's logs: with `--log-format json` every line is one JSON object, and a line about
//! one router carries the router's id as a field (`span.router`) beside the same message
//! text as the text format; the text format (the default) carries it as `router{router=..}`.

use serde_json::Value;

use router_tests::{routerd::Routerd, topo::RouterTopology};

/// The first line of `log` whose message contains `what`.
fn line_with<'a>(log: &'a str, what: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in routerd's log:\n{log}"))
}

#[test]
fn json_and_text_logs_carry_the_router() {
    let topo = RouterTopology::build("xdp");
    let id = topo.router_id.clone();
    let attached = format!("router {id}: fast path attached (");

    let mut routerd = Routerd::start_with_args(&topo.config, &id, &["--log-format", "json"]);
    let log = routerd.log_text();
    for line in log.lines() {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON line: {line}\n{log}");
    }
    let line: Value =
        serde_json::from_str(line_with(&log, &attached)).expect("a JSON line about the start");
    assert!(
        line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&attached)),
        "message of {line}"
    );
    assert_eq!(line["span"]["router"], Value::from(id.as_str()), "{line}");
    assert_eq!(line["span"]["name"], Value::from("router"), "{line}");
    assert_eq!(line["level"], Value::from("INFO"), "{line}");
    // A line about the daemon as a whole carries no router.
    let started: Value = serde_json::from_str(line_with(&log, " router(s) started in "))
        .expect("a JSON line about the daemon");
    assert!(started.get("span").is_none(), "{started}");
    assert!(routerd.stop(), "routerd did not stop cleanly:\n{log}");

    // The next routerd, in the default text format, adopts the router.
    let routerd = Routerd::start(&topo.config, &id);
    let log = routerd.log_text();
    let line = line_with(&log, &attached);
    assert!(
        line.contains(&format!("router{{router={id}}}")) && line.contains(" INFO "),
        "text line about the start: {line}\n{log}"
    );
    assert!(
        log.contains("; 0 map writes, 0 kernel writes"),
        "adoption in text logs:\n{log}"
    );
    assert!(
        serde_json::from_str::<Value>(line).is_err(),
        "text logs are not JSON"
    );
}
