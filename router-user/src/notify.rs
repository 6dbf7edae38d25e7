//! systemd's readiness protocol (`sd_notify`), without libsystemd: a unit with `Type=notify`
//! gives the service `NOTIFY_SOCKET`, a unix datagram socket (a path, or an abstract name
//! written with a leading `@`), and waits for a datagram saying `READY=1`.

use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::Error;

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=VALUE` assignments, e.g. `READY=1`) to the socket
/// in `NOTIFY_SOCKET`. Returns whether it was sent: `Ok(false)` when the variable is not set
/// (routerd not started by systemd).
pub fn notify(state: &str) -> Result<bool, Error> {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(false);
    };
    let socket = socket.to_string_lossy().into_owned();
    let io = |what: &str, e| Error::io(format!("{what} {NOTIFY_SOCKET}={socket}"), e);
    let addr = socket_addr(&socket).map_err(|e| io("parsing", e))?;
    let sender = UnixDatagram::unbound().map_err(|e| io("opening a socket for", e))?;
    sender
        .send_to_addr(state.as_bytes(), &addr)
        .map_err(|e| io("sending to", e))?;
    Ok(true)
}

/// `@name` is an abstract socket (a leading NUL byte on the wire), anything else a path.
fn socket_addr(socket: &str) -> std::io::Result<SocketAddr> {
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(socket),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    /// One test for both forms: each sets the process-wide variable.
    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path)?;
        // SAFETY: no other test of this crate reads or writes NOTIFY_SOCKET.
        unsafe { std::env::set_var(super::NOTIFY_SOCKET, &path) };
        assert!(super::notify("READY=1")?);
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("router-notify-test-{}", std::process::id());
        let receiver = {
            use std::os::linux::net::SocketAddrExt;
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?
        };
        // SAFETY: as above.
        unsafe { std::env::set_var(super::NOTIFY_SOCKET, format!("@{name}")) };
        assert!(super::notify("READY=1\nSTATUS=ok")?);
        let n = receiver.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");

        // SAFETY: as above.
        unsafe { std::env::remove_var(super::NOTIFY_SOCKET) };
        assert!(!super::notify("READY=1")?);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
