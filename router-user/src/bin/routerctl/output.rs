//! What every verb shares: the output format (`-f table|json`), the columns of a table
//! (`-c`), the JSON envelope, how a failure becomes an exit code, and the connection to
//! routerd.

use std::path::PathBuf;

use router_user::{
    Error,
    api::{ChangeResult, Client, ErrorCode, Request},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

pub use router_user::table::table;

/// The version of routerctl's JSON documents (`"version"` in each). It changes only when a
/// field changes meaning or goes away.
pub const JSON_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns (or text), for people.
    Table,
    /// One JSON document `{"kind": ..., "version": 1, "items": ...}`; `monitor` prints one
    /// per line, per event.
    Json,
}

/// How to print what a verb found.
pub struct Output {
    pub format: Format,
    /// The table columns to show, in this order (every column when empty).
    pub columns: Vec<String>,
}

/// Why routerctl failed; [`Failure::exit_code`] is what it exits with.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Error(#[from] Error),
    /// The command line asks for something routerctl does not do as given.
    #[error("{0}")]
    Usage(String),
    /// A bulk action failed for some of its objects (and was done for the others).
    #[error("{0}")]
    Partial(String),
}

/// The exit codes, as `routerctl --help` and `docs/api.md` list them.
pub mod exit {
    pub const OTHER: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const CONFLICT: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    pub const PARTIAL: u8 = 6;
    pub const TIMEOUT: u8 = 7;
    pub const NOT_APPLIED: u8 = 8;
}

/// The exit codes, for `routerctl --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other failure (applying failed and was rolled back, I/O, permission denied, an
     edit refused as read_only by a routerd that follows etcd, etcd unreachable)
  2  invalid input: a usage error, a malformed value, a state routerd refuses as invalid
  3  not found: no such router or object (code not_found), a router not running
  4  conflict: it exists already, differently, or something still uses it (code conflict);
     with --etcd: the desired state changed since it was read (nothing was written)
  5  routerd unreachable (no socket, not answering, shutting down)
  6  partial failure: some of a bulk action failed, or routerd could not restore the
     previous state after a failed apply (code restore_failed)
  7  timed out: routerd took the connection but did not answer within --timeout
     (it may still apply an edit it was sent: check with a query)
  8  not applied: with --etcd --wait, the change was written but the nodes hosting it
     did not report it applied within --timeout (the message names them)

A router is named by its id, positionally (routerctl route list R); --router R is still
accepted in its place.";

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => exit::INVALID,
            Failure::Partial(_) => exit::PARTIAL,
            Failure::Error(e) => match e {
                Error::Api(a) => match a.code {
                    ErrorCode::Invalid => exit::INVALID,
                    ErrorCode::NotFound => exit::NOT_FOUND,
                    ErrorCode::Conflict => exit::CONFLICT,
                    ErrorCode::Unavailable => exit::UNREACHABLE,
                    ErrorCode::RestoreFailed => exit::PARTIAL,
                    ErrorCode::ApplyFailed
                    | ErrorCode::Forbidden
                    | ErrorCode::ReadOnly
                    | ErrorCode::Internal => exit::OTHER,
                },
                Error::Config(_) | Error::Import { .. } => exit::INVALID,
                Error::NotRunning(..) => exit::NOT_FOUND,
                // Not allowed to connect is a permission problem, as routerd's refusal is.
                Error::Unreachable { source, .. }
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    exit::OTHER
                }
                Error::Unreachable { .. } => exit::UNREACHABLE,
                Error::Timeout { .. } => exit::TIMEOUT,
                Error::NotApplied { .. } => exit::NOT_APPLIED,
                _ => exit::OTHER,
            },
        }
    }
}

impl Output {
    /// Prints what a verb found: as the JSON document of `kind`, or as `text()` (with only
    /// the asked columns of its tables).
    pub fn print<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        items: &T,
        text: impl FnOnce() -> String,
    ) -> Result<(), Failure> {
        match self.format {
            Format::Json => println!("{}", encode(&document(kind, items)?, true)?),
            Format::Table => print!("{}", self.columns(&text())?),
        }
        Ok(())
    }

    /// One line of a stream (`monitor`): a JSON document of `kind` per line, or `text`.
    pub fn line<T: Serialize>(
        &self,
        kind: &str,
        item: &T,
        text: impl FnOnce() -> String,
    ) -> Result<(), Failure> {
        match self.format {
            Format::Json => println!("{}", encode(&document(kind, item)?, false)?),
            Format::Table => println!("{}", text()),
        }
        Ok(())
    }

    /// `text` with only the asked columns of each of its tables, in the asked order.
    pub fn columns(&self, text: &str) -> Result<String, Failure> {
        if self.columns.is_empty() {
            return Ok(text.to_string());
        }
        let picked = pick_columns(text, &self.columns);
        if picked.is_empty() {
            return Err(Failure::Usage(format!(
                "no column {} here; the columns are: {}",
                self.columns.join(", "),
                headers(text).join(", ")
            )));
        }
        Ok(picked)
    }
}

/// `{"kind": kind, "version": 1, "items": items}`.
pub fn document<T: Serialize + ?Sized>(kind: &str, items: &T) -> Result<Value, Failure> {
    let items = serde_json::to_value(items)
        .map_err(|e| Error::io("encoding JSON", std::io::Error::other(e)))?;
    Ok(json!({ "kind": kind, "version": JSON_VERSION, "items": items }))
}

fn encode(value: &Value, pretty: bool) -> Result<String, Failure> {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    Ok(text.map_err(|e| Error::io("encoding JSON", std::io::Error::other(e)))?)
}

/// Whether a line is a table's header: upper-case names (digits, `_`, `(`, `/`, `)`, `-`)
/// two spaces apart.
fn is_header(line: &str) -> bool {
    line.chars().any(|c| c.is_ascii_uppercase())
        && line
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || " _()/-".contains(c))
}

/// Whether a line is text between tables (`gateway: ...`, `routes: none`): a label and
/// `: ` before any column gap.
fn is_text(line: &str) -> bool {
    line.split_once(": ")
        .is_some_and(|(label, _)| !label.contains("  "))
}

/// The tables in `text`: each header with the rows under it, up to an empty line, a line of
/// text, or the next header.
fn tables(text: &str) -> Vec<(&str, Vec<&str>)> {
    let mut found: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        if is_header(line) {
            found.push((line, Vec::new()));
            open = true;
        } else if line.trim().is_empty() || is_text(line) {
            open = false;
        } else if open && let Some((_, rows)) = found.last_mut() {
            rows.push(line);
        }
    }
    found
}

/// Where each column of an aligned table starts (in chars), with its name: a name starts
/// the line or follows two spaces.
fn column_starts(header: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = header.chars().collect();
    let mut starts = Vec::new();
    for i in 0..chars.len() {
        let starts_here =
            chars[i] != ' ' && (i == 0 || (i >= 2 && chars[i - 1] == ' ' && chars[i - 2] == ' '));
        if starts_here {
            let rest: String = chars[i..].iter().collect();
            let name = rest
                .split("  ")
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            starts.push((i, name));
        }
    }
    starts
}

/// Every column name of the tables in `text`.
fn headers(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (header, _) in tables(text) {
        for (_, name) in column_starts(header) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// The tables of `text` cut down to `wanted` columns, one after the other with an empty
/// line between; a table with none of them, and the text around the tables, are left out.
fn pick_columns(text: &str, wanted: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    for (header, lines) in tables(text) {
        let starts = column_starts(header);
        let picks: Vec<usize> = wanted
            .iter()
            .filter_map(|w| {
                starts
                    .iter()
                    .position(|(_, name)| name.eq_ignore_ascii_case(w))
            })
            .collect();
        if picks.is_empty() {
            continue;
        }
        let cell = |line: &str, column: usize| -> String {
            let chars: Vec<char> = line.chars().collect();
            let from = starts[column].0.min(chars.len());
            let to = starts
                .get(column + 1)
                .map_or(chars.len(), |(s, _)| (*s).min(chars.len()));
            chars[from..to]
                .iter()
                .collect::<String>()
                .trim()
                .to_string()
        };
        let names: Vec<&str> = picks.iter().map(|&c| starts[c].1.as_str()).collect();
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|line| picks.iter().map(|&c| cell(line, c)).collect())
            .collect();
        out.push(table(&names, &rows));
    }
    out.join("\n")
}

/// Says on stderr which routers are not shown because they are stale (their namespace is
/// gone: what they left pinned forwards nothing; routerd removes it).
pub fn note_stale(only: Option<&str>) {
    for (router, why) in router_user::stats::stale_routers(only) {
        eprintln!("routerctl: router {router} not shown: {why} (stale; routerd removes it)");
    }
}

/// How to reach routerd, and how to print.
pub struct Api {
    pub socket: PathBuf,
    pub output: Output,
    /// How long to wait for routerd (`--timeout`); `None`: as long as it takes.
    pub timeout: Option<std::time::Duration>,
    /// With `--etcd`: the edits are written to etcd instead.
    pub etcd: Option<crate::etcd::Writer>,
}

impl Api {
    /// Sends one request; the result, or routerd's error.
    pub fn call(&self, request: &Request) -> Result<Value, Failure> {
        Ok(Client::connect_within(&self.socket, self.timeout)?.call(request)?)
    }

    /// A request that may change the desired state: prints what it did (JSON: the
    /// document `change`).
    pub fn change(&self, request: &Request) -> Result<(), Failure> {
        if let Some(etcd) = &self.etcd {
            return etcd.edit(&self.output, request, None);
        }
        let change: ChangeResult = decode(self.call(request)?)?;
        self.output.print("change", &change, || {
            let writes = format!(
                "{} map and {} kernel writes",
                change.writes.map, change.writes.kernel
            );
            if change.unchanged {
                "unchanged: already as asked, nothing written\n".into()
            } else if change.changed_routers.is_empty() {
                format!("applied ({writes})\n")
            } else {
                format!(
                    "applied: router(s) {} ({writes})\n",
                    change.changed_routers.join(", ")
                )
            }
        })
    }

    /// A query: the result as the JSON document `kind`, or through `table`.
    pub fn show<T: DeserializeOwned>(
        &self,
        kind: &str,
        request: &Request,
        table: impl FnOnce(T) -> String,
    ) -> Result<(), Failure> {
        let result = self.call(request)?;
        if self.output.format == Format::Json {
            return self.output.print(kind, &result, String::new);
        }
        let text = table(decode(result)?);
        self.output.print(kind, &(), || text)
    }
}

fn decode<T: DeserializeOwned>(value: Value) -> Result<T, Failure> {
    Ok(serde_json::from_value(value).map_err(|e| {
        Error::io(
            "reading routerd's response",
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_picked_from_each_table_in_the_asked_order() {
        let text = format!(
            "{}\n{}",
            table(
                &["ROUTER", "INTERFACE", "PACKETS(ORIG/REP)"],
                &[
                    vec!["r1".into(), "qr-a".into(), "1/2".into()],
                    vec!["router-two".into(), "qg".into(), "30/4".into()],
                ],
            ),
            table(
                &["ROUTER", "FLOATING_IP"],
                &[vec!["r1".into(), "198.18.0.10".into()]]
            ),
        );
        let wanted = ["packets(orig/rep)".to_string(), "ROUTER".to_string()];
        assert_eq!(
            pick_columns(&text, &wanted),
            "PACKETS(ORIG/REP)  ROUTER\n1/2                r1\n30/4               router-two\n\nROUTER\nr1\n"
        );
        assert_eq!(pick_columns(&text, &["NOPE".to_string()]), "");
        assert_eq!(
            headers(&text),
            ["ROUTER", "INTERFACE", "PACKETS(ORIG/REP)", "FLOATING_IP"]
        );
    }

    /// Text around and between tables (as `router show` and `fw rule list` print) is left
    /// out; each table keeps its own rows.
    #[test]
    fn columns_are_picked_from_tables_between_text() {
        let text = "firewall: default allow\n\
                    POS  ACTION  DESCRIPTION\n\
                    1    allow   web: port 80\n\
                    STEP         PACKETS\n\
                    established  0\n\
                    steering: none\n";
        assert_eq!(
            pick_columns(text, &["ACTION".to_string(), "PACKETS".to_string()]),
            "ACTION\nallow\n\nPACKETS\n0\n"
        );
        assert_eq!(
            headers(text),
            ["POS", "ACTION", "DESCRIPTION", "STEP", "PACKETS"]
        );
    }

    #[test]
    fn json_documents_are_tagged_and_versioned() {
        let d = document("routes", &[1, 2]).expect("JSON");
        assert_eq!(d, json!({"kind": "routes", "version": 1, "items": [1, 2]}));
    }

    #[test]
    fn api_error_codes_are_exit_codes() {
        use router_user::api::ApiError;
        let code = |c| Failure::Error(Error::Api(ApiError::new(c, "x"))).exit_code();
        assert_eq!(code(ErrorCode::Invalid), 2);
        assert_eq!(code(ErrorCode::NotFound), 3);
        assert_eq!(code(ErrorCode::Conflict), 4);
        assert_eq!(code(ErrorCode::Unavailable), 5);
        assert_eq!(code(ErrorCode::RestoreFailed), 6);
        assert_eq!(code(ErrorCode::ApplyFailed), 1);
        assert_eq!(code(ErrorCode::ReadOnly), 1);
        assert_eq!(Failure::Usage("x".into()).exit_code(), 2);
        assert_eq!(Failure::Partial("x".into()).exit_code(), 6);
    }
}
