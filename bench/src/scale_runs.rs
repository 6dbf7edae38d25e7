//! The many-routers targets, from the `cargo xtask scale` runs in docs/ (`docs/scale*.json`
//! beside each report): each run takes minutes and has its own command, so the benchmark
//! reads their figures instead of running them.

use std::path::Path;

/// Routers in a run that the targets are about.
const ROUTERS: usize = 1000;
/// At most this long from routerd's start to the last router attached.
const START_S: f64 = 60.0;
/// At most this much node memory for the routers.
const MEMORY_GIB: f64 = 1.5;

/// A `cargo xtask scale` run, as its JSON has it (the fields the targets need).
#[derive(serde::Deserialize)]
pub struct ScaleRun {
    pub command: String,
    pub routers: usize,
    pub mode: String,
    pub expedited_start: bool,
    pub start_ms: u64,
    pub node_memory_mib: f64,
    /// Node memory once every router port had carried a frame (runs before it was measured
    /// have none).
    #[serde(default)]
    pub node_memory_carrying_mib: Option<f64>,
}

/// The runs of `ROUTERS` routers in `docs`, TC mode first, then without
/// `--expedited-start` first.
pub fn runs(docs: &Path) -> Vec<ScaleRun> {
    let Ok(entries) = std::fs::read_dir(docs) else {
        return Vec::new();
    };
    let mut runs: Vec<ScaleRun> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("scale") && name.ends_with(".json")
        })
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<ScaleRun>(&bytes).ok())
        .filter(|r| r.routers == ROUTERS)
        .collect();
    runs.sort_by_key(|r| (r.mode != "tc", r.expedited_start, r.command.clone()));
    runs
}

/// The targets' rows (what, wanted, value, met): each run's start, and the node memory of
/// each mode's run without `--expedited-start` (the option changes the time, not the
/// memory), idle and once every port has carried a frame.
pub fn rows(runs: &[ScaleRun]) -> Vec<(String, String, Option<f64>, bool)> {
    let label = |r: &ScaleRun| {
        let auto = if r.mode == "tc" {
            " (what `auto` runs on veths)"
        } else {
            ""
        };
        let option = if r.expedited_start {
            ", `--expedited-start`"
        } else {
            ""
        };
        format!("{}{auto}{option}", r.mode.to_uppercase())
    };
    let mut rows = Vec::new();
    for r in runs {
        let s = r.start_ms as f64 / 1000.0;
        rows.push((
            format!("{ROUTERS} routers start, {}, s", label(r)),
            format!("<= {START_S}"),
            Some(s),
            s <= START_S,
        ));
    }
    for r in runs.iter().filter(|r| !r.expedited_start) {
        let gib = r.node_memory_mib / 1024.0;
        rows.push((
            format!("{ROUTERS} routers, node memory, {}, GiB", label(r)),
            format!("<= {MEMORY_GIB}"),
            Some(gib),
            gib <= MEMORY_GIB,
        ));
        if let Some(carrying) = r.node_memory_carrying_mib {
            let gib = carrying / 1024.0;
            rows.push((
                format!(
                    "{ROUTERS} routers, node memory once every port carried a frame, {}, GiB",
                    label(r)
                ),
                format!("<= {MEMORY_GIB}"),
                Some(gib),
                gib <= MEMORY_GIB,
            ));
        }
    }
    rows
}

/// The sentence under the targets table that says where these rows come from.
pub fn note(runs: &[ScaleRun]) -> Option<String> {
    if runs.is_empty() {
        return None;
    }
    let commands: Vec<String> = runs.iter().map(|r| format!("`{}`", r.command)).collect();
    Some(format!(
        "The {ROUTERS}-router rows come from the scale runs in `docs/scale*.md`, not from this \
         command: {}.",
        commands.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: &str, expedited_start: bool, start_ms: u64, node_memory_mib: f64) -> ScaleRun {
        ScaleRun {
            command: format!("cargo xtask scale --mode {mode}"),
            routers: ROUTERS,
            mode: mode.into(),
            expedited_start,
            start_ms,
            node_memory_mib,
            node_memory_carrying_mib: None,
        }
    }

    #[test]
    fn each_run_gives_its_start_and_each_mode_its_memory() {
        let rows = rows(&[
            run("tc", false, 93_000, 1300.0),
            run("tc", true, 44_000, 1270.0),
            ScaleRun {
                node_memory_carrying_mib: Some(2700.0),
                ..run("xdp", false, 104_000, 1400.0)
            },
        ]);
        let met: Vec<(&str, bool)> = rows.iter().map(|r| (r.0.as_str(), r.3)).collect();
        assert_eq!(
            met,
            vec![
                (
                    "1000 routers start, TC (what `auto` runs on veths), s",
                    false
                ),
                (
                    "1000 routers start, TC (what `auto` runs on veths), `--expedited-start`, s",
                    true
                ),
                ("1000 routers start, XDP, s", false),
                (
                    "1000 routers, node memory, TC (what `auto` runs on veths), GiB",
                    true
                ),
                ("1000 routers, node memory, XDP, GiB", true),
                (
                    "1000 routers, node memory once every port carried a frame, XDP, GiB",
                    false
                ),
            ]
        );
    }
}
