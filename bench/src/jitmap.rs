//! JIT'd BPF addresses back to source, for `routerbench --profile`'s tables: which map a
//! call from BPF code works on, and which source line a sample of BPF code is in. perf
//! gives a place as `bpf_prog_<tag>_<function>+<offset>`; the kernel's program info
//! (`BPF_OBJ_GET_INFO_BY_FD`: the JIT'd address of every line-info record, the translated
//! instructions, where map references read as map ids, and the program's BTF, which holds
//! the source lines' text) leads from that address to the line record and its instruction,
//! then to the call after it and the map loaded into a register before that call. Only
//! while the program is loaded.

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::{maps::MapInfo, programs::loaded_programs};

/// `BPF_OBJ_GET_INFO_BY_FD`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// The prefix of `struct bpf_prog_info` this reads (up to `prog_tags`, kernel 5.0 on).
const INFO_LEN: usize = 192;
/// `BPF_LD | BPF_IMM | BPF_DW`, `BPF_JMP | BPF_CALL`.
const LD_IMM64: u8 = 0x18;
const CALL: u8 = 0x85;
/// `src_reg` of an `ld_imm64` holding a map (the kernel's dump writes its id in `imm`).
const PSEUDO_MAP_FD: u8 = 1;

/// The JIT'd code of some loaded programs, by address.
#[derive(Default)]
pub struct JitIndex {
    /// Kernel address of every JIT'd BPF function, by its symbol (`bpf_prog_<tag>_<name>`).
    symbols: HashMap<String, u64>,
    /// Address of each indexed program's main function, by program name: perf names it
    /// with the function's own tag, /proc/kallsyms with the program's.
    mains: HashMap<String, u64>,
    /// (JIT'd address, program, instruction index, record) of every line-info record,
    /// sorted.
    lines: Vec<(u64, usize, u32, usize)>,
    /// Each record's source place and text: `file:line: text`.
    sources: Vec<String>,
    /// Each program's translated instructions.
    insns: Vec<Vec<[u8; 8]>>,
    map_names: HashMap<u32, String>,
}

impl JitIndex {
    /// Indexes the loaded programs that hold the JIT'd functions `symbols`
    /// (`bpf_prog_<tag>_<function>`, as perf names them). Where several copies of a program
    /// are loaded (same code, same symbols), the first one found is indexed.
    pub fn of(symbols: &[String]) -> anyhow::Result<Self> {
        let mut index = JitIndex::default();
        for line in std::fs::read_to_string("/proc/kallsyms")?.lines() {
            let mut parts = line.split_whitespace();
            let (Some(addr), Some(_), Some(sym)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if symbols.iter().any(|s| s == sym)
                && !index.symbols.contains_key(sym)
                && let Ok(a) = u64::from_str_radix(addr, 16)
            {
                index.symbols.insert(sym.to_string(), a);
            }
        }
        let mut wanted: Vec<u64> = index.symbols.values().copied().collect();
        for info in loaded_programs().flatten() {
            if wanted.is_empty() {
                break;
            }
            let Ok(fd) = info.fd() else {
                continue;
            };
            let ksyms = function_addresses(fd.as_fd()).unwrap_or_default();
            if !ksyms.iter().any(|a| wanted.contains(a)) {
                continue;
            }
            wanted.retain(|a| !ksyms.contains(a));
            if let (Some(name), Some(main)) = (info.name_as_str(), ksyms.first()) {
                index.mains.insert(name.to_string(), *main);
            }
            index.add(fd.as_fd())?;
        }
        index.lines.sort_unstable();
        Ok(index)
    }

    fn add(&mut self, fd: BorrowedFd<'_>) -> anyhow::Result<()> {
        let mut info = [0u8; INFO_LEN];
        obj_info(fd, &mut info)?;
        let u32_at = |b: &[u8; INFO_LEN], at: usize| {
            u32::from_ne_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
        };
        let xlated_len = u32_at(&info, 20) as usize;
        let nr_line_info = u32_at(&info, 148) as usize;
        let nr_jited_line_info = u32_at(&info, 168) as usize;
        let line_rec = u32_at(&info, 172) as usize;
        let jited_line_rec = u32_at(&info, 176) as usize;
        anyhow::ensure!(
            nr_line_info > 0 && nr_line_info == nr_jited_line_info && jited_line_rec == 8,
            "no line info to map JIT'd addresses with"
        );
        let mut xlated = vec![0u8; xlated_len];
        let mut line_info = vec![0u8; nr_line_info * line_rec];
        let mut jited_lines = vec![0u64; nr_jited_line_info];
        let mut query = [0u8; INFO_LEN];
        let put_u32 = |q: &mut [u8; INFO_LEN], at: usize, v: u32| {
            q[at..at + 4].copy_from_slice(&v.to_ne_bytes())
        };
        put_u32(&mut query, 20, xlated_len as u32);
        put_u32(&mut query, 148, nr_line_info as u32);
        put_u32(&mut query, 168, nr_jited_line_info as u32);
        put_u32(&mut query, 172, line_rec as u32);
        put_u32(&mut query, 176, jited_line_rec as u32);
        let put_ptr = |q: &mut [u8; INFO_LEN], at: usize, p: u64| {
            q[at..at + 8].copy_from_slice(&p.to_ne_bytes())
        };
        put_ptr(&mut query, 32, xlated.as_mut_ptr() as u64);
        put_ptr(&mut query, 152, line_info.as_mut_ptr() as u64);
        put_ptr(&mut query, 160, jited_lines.as_mut_ptr() as u64);
        obj_info(fd, &mut query)?;
        let program = self.insns.len();
        self.insns.push(
            xlated
                .chunks_exact(8)
                .map(|c| c.try_into().unwrap_or([0; 8]))
                .collect(),
        );
        let strings = btf_strings(u32_at(&info, 128)).unwrap_or_default();
        let text = |off: u32| {
            strings
                .get(off as usize..)
                .and_then(|s| s.split(|&b| b == 0).next())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default()
        };
        for (i, addr) in jited_lines.iter().enumerate() {
            let rec = &line_info[i * line_rec..];
            let word =
                |k: usize| u32::from_ne_bytes(rec[4 * k..4 * k + 4].try_into().unwrap_or([0; 4]));
            let file = text(word(1));
            let file = file.rsplit('/').next().unwrap_or("").to_string();
            let line = word(3) >> 10;
            self.sources
                .push(format!("{file}:{line}: {}", text(word(2)).trim()));
            self.lines
                .push((*addr, program, word(0), self.sources.len() - 1));
        }
        Ok(())
    }

    /// The map the call at `symbol + return_offset` works on, if it takes one.
    pub fn map_of_call(&mut self, symbol: &str, return_offset: u64) -> Option<String> {
        let function = symbol.get("bpf_prog_".len() + 17..).unwrap_or_default();
        let base = *self
            .symbols
            .get(symbol)
            .or_else(|| self.mains.get(function))?;
        let addr = base + return_offset.checked_sub(1)?;
        let at = self.lines.partition_point(|(a, ..)| *a <= addr);
        let (_, program, insn, _) = *self.lines.get(at.checked_sub(1)?)?;
        let insns = self.insns.get(program)?;
        let start = insn as usize;
        let call = (start..insns.len().min(start + 64)).find(|&i| insns[i][0] == CALL)?;
        // A helper or kernel function (src_reg 0), not a call of another BPF function.
        if insns[call][1] >> 4 != 0 {
            return None;
        }
        // The last map loaded since the previous call, before this one.
        let from = (0..start)
            .rev()
            .find(|&i| insns[i][0] == CALL)
            .map_or(0, |i| i + 1);
        // Maps are passed in r1.
        let id = (from..call).rev().find_map(|i| {
            let insn = insns[i];
            (insn[0] == LD_IMM64 && insn[1] == (PSEUDO_MAP_FD << 4) | 1)
                .then(|| u32::from_ne_bytes(insn[4..8].try_into().unwrap_or([0; 4])))
        })?;
        if let Some(name) = self.map_names.get(&id) {
            return Some(name.clone());
        }
        let name = MapInfo::from_id(id)
            .ok()
            .and_then(|m| m.name_as_str().map(str::to_string))
            .unwrap_or_else(|| format!("map {id}"));
        self.map_names.insert(id, name.clone());
        Some(name)
    }
}

impl JitIndex {
    /// The source line (`file:line: text`) of the JIT'd code at `symbol + offset`.
    pub fn line_of(&self, symbol: &str, offset: u64) -> Option<&str> {
        let function = symbol.get("bpf_prog_".len() + 17..).unwrap_or_default();
        let base = *self
            .symbols
            .get(symbol)
            .or_else(|| self.mains.get(function))?;
        let addr = base + offset;
        let at = self.lines.partition_point(|(a, ..)| *a <= addr);
        let (.., record) = *self.lines.get(at.checked_sub(1)?)?;
        self.sources.get(record).map(String::as_str)
    }
}

/// The string section of BTF object `id` (the program's: file names and source lines).
fn btf_strings(id: u32) -> std::io::Result<Vec<u8>> {
    const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: `attr` outlives the call; the kernel reads `btf_id` from it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_BTF_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            attr.len(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // struct bpf_btf_info: btf (pointer), btf_size, id, ...
    let info = |buf: &mut Vec<u8>| -> std::io::Result<u32> {
        let mut btf_info = [0u8; 32];
        btf_info[..8].copy_from_slice(&(buf.as_mut_ptr() as u64).to_ne_bytes());
        btf_info[8..12].copy_from_slice(&(buf.len() as u32).to_ne_bytes());
        // `buf` (of the length given) outlives the call.
        obj_info(fd.as_fd(), &mut btf_info)?;
        Ok(u32::from_ne_bytes(
            btf_info[8..12].try_into().unwrap_or([0; 4]),
        ))
    };
    let size = info(&mut Vec::new())?;
    let mut btf = vec![0u8; size as usize];
    info(&mut btf)?;
    // struct btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
    let word = |at: usize| {
        btf.get(at..at + 4).map_or(0, |b| {
            u32::from_ne_bytes(b.try_into().unwrap_or([0; 4])) as usize
        })
    };
    let (hdr_len, str_off, str_len) = (word(4), word(16), word(20));
    let start = hdr_len + str_off;
    Ok(btf.get(start..start + str_len).unwrap_or_default().to_vec())
}

/// The kernel addresses of a program's JIT'd functions (`jited_ksyms`).
fn function_addresses(fd: BorrowedFd<'_>) -> std::io::Result<Vec<u64>> {
    let mut info = [0u8; INFO_LEN];
    obj_info(fd, &mut info)?;
    let count = u32::from_ne_bytes(info[104..108].try_into().unwrap_or([0; 4])) as usize;
    let mut addrs = vec![0u64; count];
    let mut query = [0u8; INFO_LEN];
    query[104..108].copy_from_slice(&(count as u32).to_ne_bytes());
    query[112..120].copy_from_slice(&(addrs.as_mut_ptr() as u64).to_ne_bytes());
    obj_info(fd, &mut query)?;
    Ok(addrs)
}

/// BPF_OBJ_GET_INFO_BY_FD: the kernel fills `info` (a `bpf_prog_info`, `bpf_btf_info`...,
/// with whatever buffers its pointers name) for the object `fd`.
fn obj_info(fd: BorrowedFd<'_>, info: &mut [u8]) -> std::io::Result<()> {
    // union bpf_attr's `info` member: bpf_fd, info_len, info (pointer).
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: `attr` and the buffers `info` points to (sized as `info` says) outlive the
    // call; the kernel writes at most the lengths given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            attr.len(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
