//! The desired-state file routerd reads at start and on SIGHUP, and writes for API edits
//! (through its journal, [`super::journal`]).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::journal::{Journal, Mark, replay};
use crate::{Error, api::Request, config::DesiredState, error::ConfigError};

/// A desired-state file (TOML) and the journal of API edits not yet written into it.
/// Writes replace the file atomically: a crash leaves the old file or the new one, never a
/// mix.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
    journal: Journal,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let journal = Journal::beside(&path);
        Self { path, journal }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file, and replays over it the journal's edits it does not
    /// hold yet (see [`super::journal`]).
    pub fn load(&self) -> Result<DesiredState, Error> {
        let bytes = self
            .read()
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            Error::Config(ConfigError::Syntax(format!(
                "{}: not UTF-8 text: {e}",
                self.path.display()
            )))
        })?;
        let state = DesiredState::parse(text)?;
        let Some(entries) = self.journal.read()? else {
            return Ok(state);
        };
        let replayed = replay(&bytes, state, &entries);
        let journal = self.journal.path().display();
        for dropped in &replayed.dropped {
            tracing::warn!("desired state: {journal}: an API edit left out: {dropped}");
        }
        if replayed.applied > 0 {
            tracing::info!(
                "desired state: {} API edit(s) from {journal} replayed over {}",
                replayed.applied,
                self.path.display()
            );
        }
        Ok(replayed.state)
    }

    /// Records an API edit in the journal, durably, before it is applied; returns the mark
    /// to [`StateFile::unrecord`] it with if applying fails.
    pub fn record(&self, request: &Request) -> Result<Mark, Error> {
        self.journal
            .append(|| self.read().unwrap_or_default(), request)
    }

    /// Takes back the edits recorded since `mark`.
    pub fn unrecord(&self, mark: Mark) -> Result<(), Error> {
        self.journal.cut(mark)
    }

    /// Whether the journal holds edits the file does not have yet.
    pub fn unfolded(&self) -> bool {
        self.journal.pending()
    }

    /// Writes `desired` (the state the file and its journal make) into the file, keeping
    /// the operator's comments where nothing changed
    /// ([`DesiredState::to_toml_over`]), and empties the journal. Returns whether there was
    /// anything to write.
    pub fn fold(&self, desired: &DesiredState) -> Result<bool, Error> {
        if !self.journal.pending() {
            return Ok(false);
        }
        let text = match self.read().map(String::from_utf8) {
            Ok(Ok(existing)) => desired.to_toml_over(&existing),
            _ => desired.to_toml(),
        };
        self.journal.begin_fold(text.as_bytes())?;
        self.write(text.as_bytes())?;
        self.journal.remove()?;
        Ok(true)
    }

    /// The file's bytes as they are (to put back exactly).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.path)
    }

    /// Replaces the file with `text`: `<path>.tmp` in the same directory, fsync, rename,
    /// fsync of the directory. The file keeps its permissions; on failure the temporary
    /// file is removed and the file is as it was.
    pub fn write(&self, text: &[u8]) -> Result<(), Error> {
        let path = &self.path;
        let name = path.file_name().ok_or_else(|| {
            Error::io(
                format!("writing {}", path.display()),
                std::io::Error::other("not a file name"),
            )
        })?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let io = |what: &str, e| Error::io(format!("{what} {}", tmp.display()), e);
        let result = (|| {
            let mut file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
            if let Ok(meta) = std::fs::metadata(path) {
                file.set_permissions(meta.permissions())
                    .map_err(|e| io("setting the permissions of", e))?;
            }
            file.write_all(text).map_err(|e| io("writing", e))?;
            file.sync_all().map_err(|e| io("syncing", e))?;
            drop(file);
            std::fs::rename(&tmp, path).map_err(|e| {
                Error::io(
                    format!("renaming {} to {}", tmp.display(), path.display()),
                    e,
                )
            })?;
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// When the journal is folded into the file: once the API has been quiet for [`FOLD_QUIET`]
/// (edits in a burst are written together), and at the latest [`FOLD_LONGEST`] after the first
/// edit not yet in the file. A fold that failed is tried again after [`FOLD_RETRY`].
#[derive(Debug, Default)]
pub struct FoldSchedule {
    first: Option<Instant>,
    last: Option<Instant>,
    retry: Option<Instant>,
}

pub const FOLD_QUIET: Duration = Duration::from_millis(200);
pub const FOLD_LONGEST: Duration = Duration::from_secs(2);
pub const FOLD_RETRY: Duration = Duration::from_secs(5);

impl FoldSchedule {
    /// An edit was recorded at `at`.
    pub fn edited(&mut self, at: Instant) {
        self.first.get_or_insert(at);
        self.last = Some(at);
    }

    /// When the next fold is due, if one is.
    pub fn due(&self) -> Option<Instant> {
        if let Some(retry) = self.retry {
            return Some(retry);
        }
        Some((self.last? + FOLD_QUIET).min(self.first? + FOLD_LONGEST))
    }

    /// The fold was done, or failed at `failed_at` (it is tried again [`FOLD_RETRY`] later).
    pub fn folded(&mut self, failed_at: Option<Instant>) {
        *self = Self {
            retry: failed_at.map(|t| t + FOLD_RETRY),
            ..Self::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn write_replaces_the_file_and_keeps_its_mode() {
        let dir = std::env::temp_dir().join(format!("state-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test directory");
        let path = dir.join("routers.toml");
        std::fs::write(&path, "old").expect("old file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let file = StateFile::new(&path);
        file.write(b"new").expect("write");
        assert_eq!(file.read().expect("read"), b"new");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert!(!dir.join("routers.toml.tmp").exists());
        // A file in a directory that does not exist is not written, and leaves nothing.
        let missing = StateFile::new(dir.join("missing").join("routers.toml"));
        assert!(missing.write(b"x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
