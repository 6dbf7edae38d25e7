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

    /// Reads and validates the file. A distributed router is refused: what a node runs of
    /// one depends on where its ports are, which routerd learns from etcd (`routerd --etcd
    /// --node`); a file is one node's.
    pub fn load(&self) -> Result<DesiredState, Error> {
        let state = DesiredState::load(&self.path)?;
        if let Some(r) = state.routers.iter().find(|r| r.distributed.is_some()) {
            return Err(crate::ConfigError::Invalid {
                key: format!("router \"{}\".distributed", r.id),
                value: String::new(),
                problem: "a distributed router runs from etcd (routerd --etcd URL --node NAME), \
                          where each node learns which of its parts to run"
                    .into(),
            }
            .into());
        }
        Ok(state)
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

    #[test]
    fn a_distributed_router_is_refused_in_a_file() {
        let dir = std::env::temp_dir().join(format!("state-file-dvr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test directory");
        let path = dir.join("routers.toml");
        std::fs::write(
            &path,
            "[[router]]\nid = \"r1\"\nnamespace = \"ns1\"\n\n\
             [[router.interface]]\nname = \"qr1\"\naddress = \"10.0.1.1/24\"\n\n\
             [router.distributed]\nnodes = { c1 = \"192.0.2.11\" }\n\n\
             [[router.distributed.network]]\ninterface = \"qr1\"\nvni = 1001\n",
        )
        .expect("file");
        let e = StateFile::new(&path)
            .load()
            .expect_err("refused")
            .to_string();
        assert!(e.contains("etcd"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
