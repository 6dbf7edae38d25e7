//! libnftables, in this process: the library `nft` itself is built on, given the typed
//! ruleset as JSON. No `nft` process is started, so a change costs the kernel's work and
//! not a fork, an exec and a parse of the ruleset's text.
//!
//! The library is opened at run time (`libnftables.so.1`, installed with nftables), so
//! building needs no C headers. Each call makes a context of its own, on a thread of its
//! own: the netlink socket it opens lives in the calling thread's network namespace, which
//! is the router's.

use std::{
    ffi::{CStr, CString, c_char, c_int, c_uint, c_void},
    sync::{Mutex, OnceLock},
};

use libloading::{Library, Symbol};

/// `NFT_CTX_DEFAULT`.
const CTX_DEFAULT: c_uint = 0;
/// `NFT_CTX_OUTPUT_JSON`: commands and output are JSON.
const OUTPUT_JSON: c_uint = 1 << 4;

type CtxNew = unsafe extern "C" fn(c_uint) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type SetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type Buffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

struct Nft {
    library: Library,
    /// libnftables keeps some process-wide state (its caches' initialisation): one call at
    /// a time. Calls are short; routers set up in parallel take turns here only.
    lock: Mutex<()>,
}

fn library() -> Result<&'static Nft, String> {
    static NFT: OnceLock<Result<Nft, String>> = OnceLock::new();
    NFT.get_or_init(|| {
        // SAFETY: libnftables has no initialisation with side effects on load.
        unsafe { Library::new("libnftables.so.1") }
            .map(|library| Nft {
                library,
                lock: Mutex::new(()),
            })
            .map_err(|e| format!("opening libnftables.so.1 (is nftables installed?): {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Runs `commands` (a libnftables JSON document) as one transaction, in the calling
/// thread's network namespace. Returns what it printed (JSON, for `list` commands), or the
/// library's error message.
///
/// libnftables waits for the kernel with `select()`, which takes descriptors below 1024
/// only (glibc ends the process on a larger one), and a node of many routers holds
/// thousands. So the call is made on a thread of its own, which starts in the caller's
/// namespaces, with a descriptor table of its own holding only standard input, output and
/// error: the socket libnftables opens there is numbered 3 or so.
pub fn run(commands: &str) -> Result<String, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                few_descriptors()?;
                run_here(commands)
            })
            .join()
            .unwrap_or_else(|_| Err("libnftables: its thread panicked".into()))
    })
}

/// Gives the calling thread a descriptor table of its own holding only 0, 1 and 2 (the
/// process's table is untouched).
fn few_descriptors() -> Result<(), String> {
    // SAFETY: plain syscall; with CLOSE_RANGE_UNSHARE it closes copies in this thread's own
    // table, never a descriptor another thread uses.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as c_uint,
            c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    if rc != 0 {
        return Err(format!(
            "libnftables: a descriptor table of its own: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn run_here(commands: &str) -> Result<String, String> {
    let nft = library()?;
    let input = CString::new(commands).map_err(|_| "a NUL byte in the commands".to_string())?;
    let sym = |name: &[u8]| -> Result<*mut c_void, String> {
        // SAFETY: the name is NUL-terminated; the pointer is used only with the type its
        // libnftables.h declaration gives it, below.
        unsafe { nft.library.get::<*mut c_void>(name) }
            .map(|s: Symbol<*mut c_void>| *s)
            .map_err(|e| format!("libnftables: {e}"))
    };
    let _turn = nft
        .lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // SAFETY: each symbol is cast to its libnftables.h signature; the context is freed on
    // every path and the buffers it returns are copied before it is.
    unsafe {
        let ctx_new: CtxNew = std::mem::transmute(sym(b"nft_ctx_new\0")?);
        let ctx_free: CtxFree = std::mem::transmute(sym(b"nft_ctx_free\0")?);
        let output_flags: SetFlags = std::mem::transmute(sym(b"nft_ctx_output_set_flags\0")?);
        let buffer_output: Buffer = std::mem::transmute(sym(b"nft_ctx_buffer_output\0")?);
        let buffer_error: Buffer = std::mem::transmute(sym(b"nft_ctx_buffer_error\0")?);
        let output: GetBuffer = std::mem::transmute(sym(b"nft_ctx_get_output_buffer\0")?);
        let error: GetBuffer = std::mem::transmute(sym(b"nft_ctx_get_error_buffer\0")?);
        let run_cmd: RunCmd = std::mem::transmute(sym(b"nft_run_cmd_from_buffer\0")?);
        let ctx = ctx_new(CTX_DEFAULT);
        if ctx.is_null() {
            return Err("libnftables: no context".into());
        }
        output_flags(ctx, OUTPUT_JSON);
        buffer_output(ctx);
        buffer_error(ctx);
        let rc = run_cmd(ctx, input.as_ptr());
        let copy = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().trim().to_string()
            }
        };
        let result = if rc == 0 {
            Ok(copy(output(ctx)))
        } else {
            Err(copy(error(ctx)))
        };
        ctx_free(ctx);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// libnftables waits for the kernel's answers with `select()`, which cannot take a
    /// descriptor numbered 1024 or more: with the descriptors of a hundred routers open, the
    /// socket it opens got such a number and glibc ended the whole process. The call is made
    /// where the descriptors are few.
    #[test]
    fn runs_with_descriptors_past_fd_setsize() {
        let held: Vec<std::fs::File> = (0..1100)
            .map(|_| std::fs::File::open("/dev/null").expect("opening /dev/null"))
            .collect();
        let highest = held.iter().map(|f| f.as_raw_fd()).max().unwrap_or(0);
        assert!(highest >= 1024, "only up to descriptor {highest} held");
        // In a network namespace of the thread's own, so the table made is nobody's.
        let outcome = std::thread::spawn(|| {
            // SAFETY: plain syscall; it changes only this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!("unshare: {}", std::io::Error::last_os_error()));
            }
            run(r#"{"nftables":[{"add":{"table":{"family":"inet","name":"fdsetsize"}}}]}"#)?;
            run(super::super::rules::LIST_TABLES)
        })
        .join()
        .expect("the thread ends");
        let listing = outcome.expect("libnftables runs");
        assert!(listing.contains("fdsetsize"), "{listing}");
        drop(held);
    }
}
