//! Building topologies with iproute2 (setup only: results are read from the kernel, never by
//! matching command output).

use std::process::Command;

/// Runs `ip ARGS` and panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// Runs a command and panics with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ifindex of `name` in the current thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "interface {name} does not exist");
    index
}
