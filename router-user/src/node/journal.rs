//! API edits not yet written into the desired-state file. Each edit is appended to a
//! journal beside the file (`<file>.journal`) and made durable before it is applied and
//! answered; the file is rewritten with the edits later, several at a time ("folded",
//! [`super::StateFile::fold`]). Rewriting a file of 10,000 floating IPs while keeping the
//! operator's comments costs ~80 ms; appending a line costs one write and one fsync.
//!
//! The journal is JSON, one line each:
//! - `{"over":{"file":"fnv1a64:…"}}` first: the digest of the file the edits were made over;
//! - `{"edit":{"op":…}}`: an edit, as the API request that made it;
//! - `{"folding":{"file":"fnv1a64:…"}}`: the digest of the file a fold is writing. Once the
//!   file has that digest, it holds every edit above the marker.
//!
//! Reading the desired state (at start, on SIGHUP) is reading the file, then the edits it
//! does not hold yet ([`replay`]): none past the last fold the file has; all of them over
//! the file they were made over; and over a file edited by hand since, each edit that still
//! applies to it (the others are reported and dropped: the file is the operator's later
//! word). A last line cut short (a crash during an append: that edit was never answered)
//! is ignored; a damaged line before it leaves the state unreadable, as a damaged file does.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    Error,
    api::{self, Plan, Request},
    config::DesiredState,
};

/// One line of the journal.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Over { file: String },
    Edit(Request),
    Folding { file: String },
}

/// Where the journal ended before an append, to cut it back there when the edit it
/// recorded is not applied after all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark(u64);

/// The journal of a desired-state file.
#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
}

/// What the journal holds, read back.
#[derive(Debug, Default, PartialEq)]
pub struct Entries {
    /// The digest of the file the edits were made over.
    over: String,
    /// The edits, each with the digests of the folds written before it (a fold that failed
    /// midway leaves its marker, and the edits after it are not in its file).
    edits: Vec<(Request, usize)>,
    /// The digests of the folds begun, in order.
    folds: Vec<String>,
}

/// The desired state the file and the journal's edits make.
#[derive(Debug)]
pub struct Replayed {
    pub state: DesiredState,
    /// The edits applied over the file.
    pub applied: usize,
    /// Edits that did not apply to the file as it is now (edited by hand since), and why.
    pub dropped: Vec<String>,
}

impl Journal {
    /// The journal of the desired-state file at `file`.
    pub fn beside(file: &Path) -> Self {
        let mut name = file.as_os_str().to_os_string();
        name.push(".journal");
        Self {
            path: PathBuf::from(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it holds anything (an edit, or a fold that did not finish).
    pub fn pending(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() > 0)
    }

    /// Appends `request`, durably; a journal begun here first names the file it is over
    /// (`file` reads its bytes as they are). Returns where the journal ended before.
    pub fn append(&self, file: impl FnOnce() -> Vec<u8>, request: &Request) -> Result<Mark, Error> {
        let before = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let mut text = Vec::new();
        if before == 0 {
            push_line(
                &mut text,
                &Line::Over {
                    file: digest(&file()),
                },
            )?;
        }
        push_line(&mut text, &Line::Edit(request.clone()))?;
        self.write_at_end(&text, before == 0)?;
        Ok(Mark(before))
    }

    /// Records that a fold is writing a file of these bytes.
    pub fn begin_fold(&self, file: &[u8]) -> Result<(), Error> {
        let mut text = Vec::new();
        push_line(&mut text, &Line::Folding { file: digest(file) })?;
        self.write_at_end(&text, false)
    }

    /// Cuts the journal back to `mark` (an empty journal is removed).
    pub fn cut(&self, mark: Mark) -> Result<(), Error> {
        if mark.0 == 0 {
            return self.remove();
        }
        let io = |e| Error::io(format!("cutting {} back", self.path.display()), e);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(io)?;
        file.set_len(mark.0).map_err(io)?;
        file.sync_data().map_err(io)
    }

    /// Removes it (every edit is in the file), durably.
    pub fn remove(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => sync_directory(&self.path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", self.path.display()), e)),
        }
    }

    /// What it holds; `None` if there is no journal.
    pub fn read(&self) -> Result<Option<Entries>, Error> {
        let mut bytes = Vec::new();
        match std::fs::File::open(&self.path) {
            Ok(mut f) => f
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", self.path.display()), e)),
        };
        if bytes.is_empty() {
            return Ok(None);
        }
        parse(&bytes).map(Some).map_err(|problem| {
            Error::io(
                format!("reading {}", self.path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, problem),
            )
        })
    }

    fn write_at_end(&self, text: &[u8], new: bool) -> Result<(), Error> {
        let io = |e| Error::io(format!("appending to {}", self.path.display()), e);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        file.write_all(text).map_err(io)?;
        file.sync_data().map_err(io)?;
        if new {
            // The journal's name must survive a crash too.
            sync_directory(&self.path)?;
        }
        Ok(())
    }
}

/// The state `file` (its bytes, and the state they hold) and the journal's `entries` make.
pub fn replay(file: &[u8], state: DesiredState, entries: &Entries) -> Replayed {
    let have = digest(file);
    // The edits a fold the file has already holds.
    let folded = entries
        .folds
        .iter()
        .rposition(|f| *f == have)
        .map_or(0, |i| i + 1);
    let mut replayed = Replayed {
        state,
        applied: 0,
        dropped: Vec::new(),
    };
    let by_hand = folded == 0 && entries.over != have;
    for (request, folds_before) in &entries.edits {
        if *folds_before < folded {
            continue;
        }
        match api::plan(&replayed.state, request) {
            Ok(Plan::Change(new)) => {
                replayed.state = new;
                replayed.applied += 1;
            }
            Ok(Plan::Unchanged | Plan::Answer(_)) => {}
            Err(e) => {
                let edit = serde_json::to_string(request).unwrap_or_default();
                let why = if by_hand {
                    "the file was edited since"
                } else {
                    "it does not apply"
                };
                replayed.dropped.push(format!("{edit}: {e} ({why})"));
            }
        }
    }
    replayed
}

/// The journal's lines, read: a last line without its newline was cut short by a crash
/// and is left out; any other line that is not one of the journal's is an error.
fn parse(bytes: &[u8]) -> Result<Entries, String> {
    let whole = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(end) => &bytes[..=end],
        None => &[][..],
    };
    if whole.len() < bytes.len() {
        tracing::warn!(
            "desired state: the journal's last line was cut short ({} bytes; an edit that was never answered): left out",
            bytes.len() - whole.len()
        );
    }
    let mut entries = Entries::default();
    for (i, line) in whole.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let line: Line =
            serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        match line {
            Line::Over { file } if i == 0 => entries.over = file,
            Line::Over { .. } => {
                return Err(format!("line {}: \"over\" is only the first line", i + 1));
            }
            _ if i == 0 => return Err("line 1: the first line is not \"over\"".into()),
            Line::Edit(request) => entries.edits.push((request, entries.folds.len())),
            Line::Folding { file } => entries.folds.push(file),
        }
    }
    Ok(entries)
}

fn push_line(text: &mut Vec<u8>, line: &Line) -> Result<(), Error> {
    serde_json::to_writer(&mut *text, line)
        .map_err(|e| Error::io("encoding a journal line", std::io::Error::other(e)))?;
    text.push(b'\n');
    Ok(())
}

/// FNV-1a (64 bits) of the bytes: stable across builds, enough to tell files apart.
fn digest(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{hash:016x}")
}

fn sync_directory(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::StateFile;

    /// The state file as the operator wrote it, with a comment.
    fn file_text() -> String {
        format!(
            "# the operator's comment, kept by every fold\n{}",
            crate::config::ONE_ROUTER
        )
    }

    fn fip_create(last: u8) -> Request {
        Request::FipCreate {
            router: "r1".into(),
            address: format!("172.24.4.{last}"),
            fixed: format!("10.0.0.{last}"),
            id: None,
            may_exist: false,
        }
    }

    fn addresses(state: &DesiredState) -> Vec<String> {
        state.routers[0]
            .floating_ips
            .iter()
            .map(|f| f.address.to_string())
            .collect()
    }

    /// A scratch directory with the file in it, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> (Self, StateFile) {
            let dir = std::env::temp_dir().join(format!(
                "journal-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch directory");
            let path = dir.join("routers.toml");
            std::fs::write(&path, file_text()).expect("file");
            (Self(dir), StateFile::new(path))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn recorded_edits_are_read_back_over_the_file_and_folded_into_it() {
        let (_dir, file) = Scratch::new("fold");
        let journal = Journal::beside(file.path());
        assert!(!file.unfolded());
        file.record(&fip_create(10)).expect("record");
        let mark = file.record(&fip_create(11)).expect("record");
        file.record(&fip_create(12)).expect("record");
        // The file is untouched; the state is the file and the edits.
        assert_eq!(
            std::fs::read_to_string(file.path()).expect("file"),
            file_text()
        );
        assert!(file.unfolded());
        let state = file.load().expect("load");
        assert_eq!(
            addresses(&state),
            ["172.24.4.10", "172.24.4.11", "172.24.4.12"]
        );
        // An edit taken back is gone from the state.
        file.unrecord(mark).expect("cut");
        let state = file.load().expect("load");
        assert_eq!(addresses(&state), ["172.24.4.10"]);
        // Folded: the file holds the state, its comment kept, and the journal is gone.
        assert!(file.fold(&state).expect("fold"));
        let text = std::fs::read_to_string(file.path()).expect("file");
        assert!(text.contains("# the operator's comment"), "{text}");
        assert_eq!(DesiredState::parse(&text).expect("valid"), state);
        assert!(!journal.path().exists());
        assert!(!file.fold(&state).expect("nothing to fold"));
        // Every edit cut back: no journal at all.
        let mark = file.record(&fip_create(20)).expect("record");
        assert_eq!(mark, Mark(0));
        file.unrecord(mark).expect("cut");
        assert!(!journal.path().exists());
    }

    /// A crash after the fold wrote the file but before the journal went: the edits are
    /// not applied a second time (a second create of the same address would be refused).
    #[test]
    fn a_fold_cut_short_is_not_replayed_twice() {
        let (_dir, file) = Scratch::new("crash");
        let journal = Journal::beside(file.path());
        file.record(&fip_create(10)).expect("record");
        let state = file.load().expect("load");
        let text = state.to_toml_over(&file_text());
        journal.begin_fold(text.as_bytes()).expect("marker");
        file.write(text.as_bytes()).expect("file written");
        let bytes = std::fs::read(file.path()).expect("file");
        let entries = journal.read().expect("read").expect("a journal");
        let replayed = replay(&bytes, DesiredState::parse(&text).expect("valid"), &entries);
        assert_eq!((replayed.applied, replayed.dropped.len()), (0, 0));
        assert_eq!(replayed.state, state);
        // An edit after a fold that failed midway (its marker there, the file not written)
        // is replayed with those before it.
        let (_dir, file) = Scratch::new("failed-fold");
        let journal = Journal::beside(file.path());
        file.record(&fip_create(10)).expect("record");
        journal.begin_fold(b"a file never written").expect("marker");
        file.record(&fip_create(11)).expect("record");
        assert_eq!(
            addresses(&file.load().expect("load")),
            ["172.24.4.10", "172.24.4.11"]
        );
    }

    /// The file edited by hand while edits wait in the journal: the edits that still apply
    /// are kept, the others are named and dropped.
    #[test]
    fn edits_over_a_file_edited_by_hand_apply_where_they_still_can() {
        let (_dir, file) = Scratch::new("by-hand");
        file.record(&fip_create(10)).expect("record");
        file.record(&fip_create(11)).expect("record");
        let edited = format!(
            "{}[[router.floating_ip]]\naddress = \"172.24.4.11\"\nfixed = \"10.0.0.11\"\n",
            file_text()
        );
        std::fs::write(file.path(), &edited).expect("edited by hand");
        let bytes = edited.as_bytes();
        let entries = Journal::beside(file.path())
            .read()
            .expect("read")
            .expect("some");
        let replayed = replay(
            bytes,
            DesiredState::parse(&edited).expect("valid"),
            &entries,
        );
        assert_eq!(addresses(&replayed.state), ["172.24.4.11", "172.24.4.10"]);
        assert_eq!(replayed.applied, 1);
        assert_eq!(replayed.dropped.len(), 1, "{:?}", replayed.dropped);
        assert!(
            replayed.dropped[0].contains("172.24.4.11")
                && replayed.dropped[0].contains("the file was edited since"),
            "{:?}",
            replayed.dropped
        );
    }

    #[test]
    fn a_line_cut_short_at_the_end_is_left_out_and_a_damaged_one_is_refused() {
        let (_dir, file) = Scratch::new("damaged");
        let journal = Journal::beside(file.path());
        file.record(&fip_create(10)).expect("record");
        let whole = std::fs::read(journal.path()).expect("journal");
        // A crash during the append of a second edit.
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"edit":{"op":"fip_create","rou"#);
        std::fs::write(journal.path(), &torn).expect("torn");
        assert_eq!(addresses(&file.load().expect("load")), ["172.24.4.10"]);
        // The same bytes inside the journal: not a crash, a damaged journal.
        let mut damaged = torn;
        damaged.extend_from_slice(b"\n");
        damaged
            .extend_from_slice(&whole[whole.iter().position(|b| *b == b'\n').expect("line") + 1..]);
        std::fs::write(journal.path(), &damaged).expect("damaged");
        let e = file.load().expect_err("a damaged journal").to_string();
        assert!(
            e.contains("routers.toml.journal") && e.contains("line 3"),
            "{e}"
        );
        // A journal that does not begin with the file it is over.
        std::fs::write(
            journal.path(),
            &whole[whole.iter().position(|b| *b == b'\n').expect("line") + 1..],
        )
        .expect("headless");
        let e = file.load().expect_err("no header").to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn folds_wait_for_a_quiet_moment_but_not_for_ever() {
        use crate::node::{FOLD_LONGEST, FOLD_QUIET, FOLD_RETRY, FoldSchedule};
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mut fold = FoldSchedule::default();
        assert_eq!(fold.due(), None);
        fold.edited(t0);
        assert_eq!(fold.due(), Some(t0 + FOLD_QUIET));
        // A burst pushes the fold on, up to its longest wait.
        let step = FOLD_QUIET / 2;
        let mut at = t0;
        while at < t0 + FOLD_LONGEST * 2 {
            at += step;
            fold.edited(at);
        }
        assert_eq!(fold.due(), Some(t0 + FOLD_LONGEST));
        fold.folded(None);
        assert_eq!(fold.due(), None);
        let failed = t0 + Duration::from_secs(3);
        fold.folded(Some(failed));
        assert_eq!(fold.due(), Some(failed + FOLD_RETRY));
    }
}
