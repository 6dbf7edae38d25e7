//! A guard that moves the current thread into a fresh network namespace and back on drop,
//! so a test's interfaces vanish with it whatever happens.

use std::fs::File;

use nix::sched::{CloneFlags, setns, unshare};

pub struct NetnsGuard {
    original: File,
}

impl NetnsGuard {
    pub fn new() -> Self {
        crate::require_root();
        let tid = nix::unistd::gettid();
        let original = File::open(format!("/proc/self/task/{tid}/ns/net"))
            .unwrap_or_else(|e| panic!("opening the current network namespace: {e}"));
        unshare(CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET): {e}"));
        let guard = Self { original };
        crate::topo::ip(&["link", "set", "lo", "up"]);
        guard
    }
}

impl Default for NetnsGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // The namespace has no other reference and is freed with everything in it.
        if let Err(e) = setns(&self.original, CloneFlags::CLONE_NEWNET) {
            eprintln!("restoring the network namespace failed: {e}");
        }
    }
}

/// Runs `f` with the current thread inside the named namespace `ns` (`ip netns`), and
/// returns to the thread's namespace afterwards, whatever `f` does.
pub fn within<T>(ns: &str, f: impl FnOnce() -> T) -> T {
    struct Back(File);
    impl Drop for Back {
        fn drop(&mut self) {
            if let Err(e) = setns(&self.0, CloneFlags::CLONE_NEWNET) {
                eprintln!("restoring the network namespace failed: {e}");
            }
        }
    }
    let tid = nix::unistd::gettid();
    let original = File::open(format!("/proc/self/task/{tid}/ns/net"))
        .unwrap_or_else(|e| panic!("opening the current network namespace: {e}"));
    let target = File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("opening namespace {ns}: {e}"));
    setns(&target, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("entering {ns}: {e}"));
    let _back = Back(original);
    f()
}
