//! Loading the programs survives signals: the verifier gives up with EAGAIN when a signal
//! arrives while it works (a SIGHUP to routerd while a router starts), and the load is
//! repeated instead of failing the router.

use std::{
    os::unix::thread::JoinHandleExt as _,
    time::{Duration, Instant},
};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use router_tests::netns::NetnsGuard;
use router_user::datapath::{Datapath, loads_interrupted};

extern "C" fn ignore(_: libc::c_int) {}

#[test]
fn a_signal_during_verification_does_not_fail_the_load() {
    // SAFETY: a handler that does nothing is async-signal-safe.
    unsafe {
        sigaction(
            Signal::SIGUSR1,
            &SigAction::new(
                SigHandler::Handler(ignore),
                SaFlags::empty(),
                SigSet::empty(),
            ),
        )
    }
    .expect("SIGUSR1 handler");
    let before = loads_interrupted();
    let loader = std::thread::spawn(|| {
        let _ns = NetnsGuard::new();
        Datapath::load("signal-test", 4096).map(|_| ())
    });
    // Signals every 2 ms until one has interrupted the verifier (bounded: a load takes
    // well under the limit here).
    let started = Instant::now();
    while loads_interrupted() == before
        && !loader.is_finished()
        && started.elapsed() < Duration::from_secs(20)
    {
        // SAFETY: the thread is alive until joined below (a finished one is not signalled).
        unsafe { libc::pthread_kill(loader.as_pthread_t(), libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(2));
    }
    let loaded = loader.join().expect("loader thread");
    assert!(loaded.is_ok(), "the load failed: {loaded:?}");
    assert!(
        loads_interrupted() > before,
        "no load was interrupted: the signals missed the verifier"
    );
}
