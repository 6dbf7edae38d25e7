//! The last desired state a node applied from etcd, kept in its state directory so that a
//! routerd started while etcd is away starts from it: its routers are adopted as they run
//! (nothing torn down, nothing rewritten), and it reconciles when etcd answers.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::sync::Update;
use crate::{
    Error,
    config::{DesiredState, Router},
    node::StateFile,
};

/// The file's name in the state directory.
pub const FILE_NAME: &str = "etcd-desired.json";

/// The file: the revision, each router as its JSON form (`docs/etcd.md`), and each router's
/// revision.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    revision: i64,
    routers: Vec<serde_json::Value>,
    revisions: BTreeMap<String, i64>,
}

/// The state file of a node that follows etcd (written atomically: the old file or the
/// new one, never a mix).
#[derive(Clone, Debug)]
pub struct LocalState {
    file: StateFile,
}

impl LocalState {
    /// The file in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            file: StateFile::new(state_dir.join(FILE_NAME)),
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The saved state; `None` if there is no file yet. A file that cannot be read or is
    /// not valid is an error (the caller decides to start without it).
    pub fn load(&self) -> Result<Option<Update>, Error> {
        let bytes = match std::fs::read(self.path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", self.path().display()), e)),
        };
        let bad = |problem: String| {
            Error::io(
                format!("reading {}", self.path().display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, problem),
            )
        };
        let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut routers = Vec::with_capacity(saved.routers.len());
        for value in &saved.routers {
            let text = serde_json::to_vec(value).map_err(|e| bad(e.to_string()))?;
            routers.push(Router::from_json(&text)?);
        }
        let state = DesiredState { routers };
        state.validate()?;
        Ok(Some(Update {
            revision: saved.revision,
            state,
            revisions: saved.revisions,
            refused: BTreeMap::new(),
        }))
    }

    /// Replaces the file with `update`'s state, creating the state directory (0700) if
    /// needed.
    pub fn save(&self, update: &Update) -> Result<(), Error> {
        if let Some(dir) = self.path().parent()
            && !dir.exists()
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let saved = Saved {
            revision: update.revision,
            routers: update
                .state
                .routers
                .iter()
                .filter_map(|r| serde_json::from_str(&r.to_json()).ok())
                .collect(),
            revisions: update.revisions.clone(),
        };
        let text = serde_json::to_vec_pretty(&saved)
            .map_err(|e| Error::io("encoding the state", std::io::Error::other(e)))?;
        self.file.write(&text)
    }
}

/// Where the state file of `state_dir` is (the owner recorded with the routers' pins).
pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::router;

    #[test]
    fn the_state_reads_back_as_saved() {
        let dir = std::env::temp_dir().join(format!("etcd-local-test-{}", std::process::id()));
        let local = LocalState::new(&dir.join("state"));
        assert!(local.load().expect("no file yet").is_none());
        let update = Update {
            revision: 42,
            state: DesiredState {
                routers: vec![router("r1", "ns1"), router("r2", "ns2")],
            },
            revisions: [("r1".to_string(), 40), ("r2".to_string(), 41)].into(),
            refused: BTreeMap::new(),
        };
        local.save(&update).expect("save");
        assert_eq!(local.load().expect("load"), Some(update));
        std::fs::write(local.path(), "{").expect("corrupt");
        assert!(local.load().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
