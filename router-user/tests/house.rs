//! The controller's house rules, checked on its own sources: each BPF map is named only by
//! its room in `maps/` (and by `datapath`, which loads and pins every map by name); no file
//! grows past what one concern needs; comments say what a rule is, not which ticket or
//! source document it came from.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Every `.rs` file below `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn relative(path: &Path) -> String {
    path.strip_prefix(src())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The code of a file without its test module and comments (the rules are about what the
/// code does).
fn code_of(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or(text);
    body.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn only_the_rooms_and_datapath_name_maps() {
    let names: Vec<&str> = router_common::map_names::ALL.to_vec();
    let mut offenders = Vec::new();
    for path in sources(&src()) {
        let rel = relative(&path);
        if rel.starts_with("maps/") || rel.starts_with("datapath/") {
            continue;
        }
        let code = code_of(&fs::read_to_string(&path).expect("source"));
        for name in &names {
            if code.contains(&format!("map_names::{name}")) {
                offenders.push(format!("{rel} names {name}"));
            }
        }
        for opener in ["MapData::from_pin", "Map::from_map_data", "map_names::ALL"] {
            if code.contains(opener) {
                offenders.push(format!("{rel} opens maps itself ({opener})"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "maps named outside their room:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn no_file_is_longer_than_one_concern_needs() {
    const MOST: usize = 800;
    let long: Vec<String> = sources(&src())
        .into_iter()
        .filter_map(|path| {
            let lines = fs::read_to_string(&path).expect("source").lines().count();
            (lines > MOST).then(|| format!("{}: {lines} lines", relative(&path)))
        })
        .collect();
    assert!(
        long.is_empty(),
        "longer than {MOST} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn comments_say_what_a_rule_is_not_where_it_came_from() {
    let mut offenders = Vec::new();
    for path in sources(&src()) {
        let text = fs::read_to_string(&path).expect("source");
        for (n, line) in text.lines().enumerate() {
            let Some(comment) = line.split("//").nth(1) else {
                continue;
            };
            let lower = comment.to_lowercase();
            let words: Vec<&str> = lower
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            let cites = words.windows(2).any(|w| {
                matches!(w[0], "issue" | "seed" | "ticket")
                    && w[1].starts_with(|c: char| c.is_ascii_digit())
            });
            if cites || lower.contains("design.md") {
                offenders.push(format!("{}:{}: {}", relative(&path), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "comments citing their history:\n{}",
        offenders.join("\n")
    );
}
