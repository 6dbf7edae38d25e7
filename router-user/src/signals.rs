//! routerd's signals: SIGTERM and SIGINT stop it (the fast paths keep running), SIGHUP
//! re-reads the desired state. They are handled from the first instant: [`HeldSignals`]
//! holds them (blocked: one that arrives waits, pending) from before anything is read until
//! [`Signals::install`] has installed their handlers, so no signal ever meets its default
//! action, which would kill routerd.

use nix::sys::signal::{SigSet, SigmaskHow, Signal as NixSignal, pthread_sigmask};
use tokio::signal::unix::{SignalKind, signal};

use crate::Error;

const HANDLED: [NixSignal; 3] = [NixSignal::SIGTERM, NixSignal::SIGINT, NixSignal::SIGHUP];

/// The signals routerd handles, blocked on the calling thread (and on the threads it
/// creates meanwhile, which inherit its mask) until dropped.
pub struct HeldSignals {
    previous: SigSet,
}

impl HeldSignals {
    /// Blocks the handled signals; call it before any other thread exists.
    pub fn hold() -> Self {
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(s);
        }
        let mut previous = SigSet::empty();
        if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut previous)) {
            tracing::warn!("routerd: holding signals until their handlers are installed: {e}");
        }
        Self { previous }
    }
}

impl Drop for HeldSignals {
    /// Restores the mask: a signal that arrived meanwhile is delivered now, to its handler
    /// if one is installed.
    fn drop(&mut self) {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.previous), None);
    }
}

/// A signal routerd acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
    Hangup,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
        })
    }
}

/// The installed handlers.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (within a tokio runtime), then lets `held` go: a signal held
    /// until now is delivered to its handler and comes out of [`Signals::next`].
    pub fn install(held: HeldSignals) -> Result<Self, Error> {
        let me = Self {
            term: signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?,
            int: signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?,
            hup: signal(SignalKind::hangup()).map_err(|e| Error::io("SIGHUP handler", e))?,
        };
        drop(held);
        Ok(me)
    }

    /// The next signal; cancel-safe (for `select!`).
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}
