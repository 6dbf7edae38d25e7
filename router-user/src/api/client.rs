//! A blocking client of routerd's API, for `routerctl` and the tests.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use super::protocol::{ApiError, ErrorCode, MAX_LINE, MonitorLine, Request, Response};
use crate::error::Error;

/// How long `routerctl` waits for routerd by default (`--timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to routerd.
pub struct Client {
    stream: BufReader<UnixStream>,
    path: PathBuf,
    /// How long each read or write may wait; `None`: as long as it takes.
    timeout: Option<Duration>,
}

impl Client {
    /// Connects to routerd's socket at `path`; calls wait as long as routerd takes.
    pub fn connect(path: &Path) -> Result<Self, Error> {
        Self::connect_within(path, None)
    }

    /// Connects to routerd's socket at `path`; a call fails with [`Error::Timeout`] when
    /// routerd has not taken the request or answered within `timeout` (a routerd that
    /// accepts connections but does not serve them, a stopped process).
    pub fn connect_within(path: &Path, timeout: Option<Duration>) -> Result<Self, Error> {
        let stream = UnixStream::connect(path).map_err(|source| Error::Unreachable {
            path: path.display().to_string(),
            source,
        })?;
        // A zero duration is refused by the socket calls: it means no limit here too.
        let timeout = timeout.filter(|t| !t.is_zero());
        let set = stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout));
        set.map_err(|e| Error::io("setting the socket's timeout", e))?;
        Ok(Self {
            stream: BufReader::new(stream),
            path: path.to_path_buf(),
            timeout,
        })
    }

    /// Sends `request`; returns the result, or the error routerd answered as
    /// [`Error::Api`].
    pub fn call(&mut self, request: &Request) -> Result<Value, Error> {
        let line = serde_json::to_string(request)
            .map_err(|e| Error::io("encoding the request", std::io::Error::other(e)))?;
        let response = self.call_line(&line)?;
        match response {
            Response {
                ok: true, result, ..
            } => Ok(result.unwrap_or(Value::Null)),
            Response { error, .. } => Err(Error::Api(error.unwrap_or_else(|| {
                ApiError::new(
                    ErrorCode::Internal,
                    "routerd answered an error without a message",
                )
            }))),
        }
    }

    /// Sends one raw line (a newline is added) and reads the response.
    pub fn call_line(&mut self, line: &str) -> Result<Response, Error> {
        let talk = |source: std::io::Error| match (source.kind(), self.timeout) {
            (std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut, Some(t)) => {
                Error::Timeout {
                    path: self.path.display().to_string(),
                    seconds: t.as_secs_f64(),
                }
            }
            _ => Error::Io {
                what: format!("talking to routerd at {}", self.path.display()),
                source,
            },
        };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let written = self.stream.get_mut().write_all(&bytes);
        // routerd may have answered (a refusal) and closed before reading: read the
        // answer even when the write failed.
        let mut answer = String::new();
        let read = (&mut self.stream)
            .take(MAX_LINE as u64)
            .read_line(&mut answer);
        match (written, read) {
            (_, Ok(n)) if n > 0 => {}
            (Err(e), _) => return Err(talk(e)),
            (Ok(()), Err(e)) => return Err(talk(e)),
            (Ok(()), Ok(_)) => {
                return Err(talk(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "routerd closed the connection without answering",
                )));
            }
        }
        serde_json::from_str(answer.trim_end()).map_err(|e| {
            talk(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a response: {e}"),
            ))
        })
    }
}

impl Client {
    /// Asks for routerd's events (of every router, or of `router`): the connection then
    /// carries them, read with [`MonitorStream::next`].
    pub fn monitor(mut self, router: Option<String>) -> Result<MonitorStream, Error> {
        self.call(&Request::Monitor { router })?;
        Ok(MonitorStream {
            client: self,
            partial: Vec::new(),
        })
    }
}

/// The events of a `monitor` request, line by line.
pub struct MonitorStream {
    client: Client,
    /// A line read in part when a wait ended.
    partial: Vec<u8>,
}

impl MonitorStream {
    /// The next line, waiting up to `wait` for it: `None` when none came in that time.
    pub fn next(&mut self, wait: Duration) -> Result<Option<MonitorLine>, Error> {
        let path = self.client.path.display().to_string();
        let talk = |source| Error::Io {
            what: format!("reading routerd's events at {path}"),
            source,
        };
        let stream = &mut self.client.stream;
        stream
            .get_ref()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(talk)?;
        match stream.read_until(b'\n', &mut self.partial) {
            Ok(_) if self.partial.ends_with(b"\n") => {
                let line = std::mem::take(&mut self.partial);
                serde_json::from_slice(&line).map(Some).map_err(|e| {
                    talk(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("not a monitor line: {e}"),
                    ))
                })
            }
            Ok(_) => Err(talk(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "routerd closed the monitor stream",
            ))),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(talk(e)),
        }
    }
}
