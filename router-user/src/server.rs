//! routerd's API socket (`docs/api.md`): a Unix stream socket of JSON lines, one request
//! and one response per line. Connections are served concurrently; their requests go, as
//! [`Job`]s, to the one task that owns the node (routerd's main loop), which serves them one
//! at a time. A `monitor` request is served by its connection itself, from the monitor
//! [`Hub`] ([`ApiSocket::with_monitor`]): it streams events until the client closes.
//!
//! Access: the socket file is 0660 in a 0750 directory, and a peer must be root, the
//! socket's owner, or in its group (checked on its credentials, whatever the file mode).

use std::{
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixListener, UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{broadcast, mpsc, oneshot},
};

use crate::{
    Error,
    api::{self, MonitorLine, Request, Response},
    monitor::Hub,
};

/// A request from a connection, and where its response goes.
pub struct Job {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// The bound socket; the file is removed when it is dropped (if it is still ours).
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we bound.
    id: (u64, u64),
    /// Owner and group at bind time, if the file cannot be read later.
    owner: (u32, u32),
    /// Where `monitor` requests get their events; none: they are refused.
    monitor: Option<Hub>,
}

impl ApiSocket {
    /// Binds `path` (within a tokio runtime): its directory is created 0750 if missing, a
    /// stale socket file is replaced, the socket is 0660 from the start. Fails if another
    /// process listens on `path` or `path` is not a socket.
    pub fn bind(path: &Path) -> Result<Self, Error> {
        let bad = |problem: String| Error::Socket {
            path: path.display().to_string(),
            problem,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|e| bad(format!("creating directory {}: {e}", dir.display())))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
                .map_err(|e| bad(format!("chmod 0750 {}: {e}", dir.display())))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(bad(
                    "exists and is not a socket; remove it or give another --socket".into(),
                ));
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(bad(
                        "another routerd is listening on it (stop it first, or give this one another --socket)"
                            .into(),
                    ));
                }
                Err(e) => {
                    tracing::info!(
                        "routerd: replacing the stale socket {} ({e})",
                        path.display()
                    );
                    std::fs::remove_file(path)
                        .map_err(|e| bad(format!("removing the stale socket: {e}")))?;
                }
            },
            Err(_) => {}
        }
        // No moment with wider permissions than 0660: bind under a strict umask, then set
        // the mode exactly.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = std::os::unix::net::UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(|e| bad(format!("bind: {e}")))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| bad(format!("chmod 0660: {e}")))?;
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("stat: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| bad(format!("non-blocking mode: {e}")))?;
        let listener = UnixListener::from_std(listener).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
            owner: (meta.uid(), meta.gid()),
            monitor: None,
        })
    }

    /// Serves `monitor` requests from `hub`.
    pub fn with_monitor(mut self, hub: Hub) -> Self {
        self.monitor = Some(hub);
        self
    }

    /// Accepts connections until aborted; each runs as a task of its own, its requests
    /// go to `jobs` one by one.
    pub async fn serve(self, jobs: mpsc::Sender<Job>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let refusal = self.refusal(&stream);
                    tokio::spawn(connection(
                        stream,
                        refusal,
                        jobs.clone(),
                        self.monitor.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!("routerd: API accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Why a peer may not use the API: it must be root, the socket's owner, or in the
    /// socket's group (primary or supplementary).
    fn refusal(&self, stream: &UnixStream) -> Option<String> {
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => return Some(format!("permission denied: peer credentials unknown ({e})")),
        };
        let (owner, group) = std::fs::metadata(&self.path)
            .map(|m| (m.uid(), m.gid()))
            .unwrap_or(self.owner);
        let (uid, gid) = (cred.uid(), cred.gid());
        let allowed = uid == 0
            || uid == owner
            || gid == group
            || cred
                .pid()
                .is_some_and(|pid| supplementary_groups(pid).contains(&group));
        (!allowed).then(|| {
            format!(
                "permission denied: uid {uid} (gid {gid}) is not root, the owner of {} (uid {owner}) or in its group (gid {group})",
                self.path.display()
            )
        })
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        // Only our own file: another routerd may have replaced it since.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The supplementary groups of process `pid`, from `/proc/PID/status`.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The answer to a request routerd can no longer serve.
fn shutting_down() -> api::ApiError {
    api::ApiError::new(api::ErrorCode::Unavailable, "routerd is shutting down")
}

/// One client: lines in, lines out, until it closes. A refused client gets its refusal as
/// the one response.
async fn connection(
    stream: UnixStream,
    refusal: Option<String>,
    jobs: mpsc::Sender<Job>,
    monitor: Option<Hub>,
) {
    let (read, mut write) = stream.into_split();
    if let Some(why) = refusal {
        tracing::warn!("routerd: API connection refused: {why}");
        let _ = write
            .write_all(
                Response::failure(api::ApiError::new(api::ErrorCode::Forbidden, why))
                    .to_line()
                    .as_bytes(),
            )
            .await;
        let _ = write.shutdown().await;
        return;
    }
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(api::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("routerd: API connection: {e}");
                return;
            }
        };
        if n == 0 {
            return;
        }
        if line.len() > api::MAX_LINE {
            let r = Response::failure(api::ApiError::invalid(format!(
                "malformed request: longer than {} bytes",
                api::MAX_LINE
            )));
            let _ = write.write_all(r.to_line().as_bytes()).await;
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let response = match api::parse_request(text) {
            Err(e) => Response::failure(e),
            Ok(Request::Monitor { router }) => {
                return stream_events(reader, write, router, monitor.as_ref()).await;
            }
            Ok(request) => {
                let (reply, response) = oneshot::channel();
                if jobs.send(Job { request, reply }).await.is_err() {
                    Response::failure(shutting_down())
                } else {
                    response
                        .await
                        .unwrap_or_else(|_| Response::failure(shutting_down()))
                }
            }
        };
        if write
            .write_all(response.to_line().as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A `monitor` request: the response, then one [`MonitorLine`] per line (the events of
/// every router of this routerd, or of `router`) until the client closes the connection.
async fn stream_events(
    mut reader: BufReader<OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    router: Option<String>,
    hub: Option<&Hub>,
) {
    let refused = match (hub, &router) {
        (None, _) => Some(api::ApiError::new(
            api::ErrorCode::Unavailable,
            "this routerd serves no monitor",
        )),
        (Some(_), Some(id)) => crate::stats::selected_routers(Some(id))
            .err()
            .map(|e| api::ApiError::new(api::ErrorCode::NotFound, e.to_string())),
        _ => None,
    };
    let (Some(hub), None) = (hub, refused.clone()) else {
        let refusal = refused.unwrap_or_else(shutting_down);
        let _ = write
            .write_all(Response::failure(refusal).to_line().as_bytes())
            .await;
        return;
    };
    let mut events = hub.subscribe();
    let started = Response::success(serde_json::json!({ "monitor": router }));
    if write.write_all(started.to_line().as_bytes()).await.is_err() {
        return;
    }
    let mut ignored = [0u8; 512];
    loop {
        let line = tokio::select! {
            // The client says nothing more; its closing ends the stream.
            read = reader.read(&mut ignored) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            event = events.recv() => match event {
                Ok(e) if router.as_ref().is_some_and(|r| *r != e.router) => continue,
                Ok(e) => MonitorLine::Event((*e).clone()),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!("routerd: a monitor lost {n} event(s): it reads too slowly");
                    MonitorLine::Dropped(n)
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let mut text = match serde_json::to_string(&line) {
            Ok(t) => t,
            Err(_) => continue,
        };
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}
