//! The desired-state file routerd reads at start and on SIGHUP, and writes for API edits.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use crate::{Error, config::DesiredState};

/// A desired-state file (TOML). Writes replace it atomically: a crash leaves the old file or
/// the new one, never a mix.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file.
    pub fn load(&self) -> Result<DesiredState, Error> {
        DesiredState::load(&self.path)
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
