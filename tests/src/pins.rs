//! BPF objects pinned in bpffs, opened by path: what the kernel says of them, read without
//! the loader that made them.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// A descriptor of the BPF object pinned at `path` (BPF_OBJ_GET).
pub fn obj_get(path: &Path) -> Option<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags (the rest zero).
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: `attr` outlives the call and is as large as the kernel reads; `path` is a
    // valid NUL-terminated string for the duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    // SAFETY: a new descriptor the kernel just gave us, owned from here on.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// (function, line) information records of the program pinned at `path`, from the kernel's
/// `bpf_prog_info` (`nr_func_info` at byte 144, `nr_line_info` at 148).
pub fn program_btf_records(path: &Path) -> std::io::Result<(u32, u32)> {
    let fd = obj_get(path).ok_or_else(std::io::Error::last_os_error)?;
    let mut info = [0u8; 256];
    // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info (the rest zero).
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u64 | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: `attr` and `info` outlive the call; the kernel writes at most `info.len()`
    // bytes to `info`.
    let got = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if got != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let at = |offset: usize| u32::from_ne_bytes([0, 1, 2, 3].map(|i| info[offset + i]));
    Ok((at(144), at(148)))
}
