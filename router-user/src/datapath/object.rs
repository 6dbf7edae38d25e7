//! The eBPF object built by build.rs, as it is and without its line information.
//!
//! Line information maps each of a program's instructions to a line of its source. The
//! kernel keeps it with every loaded program (16 bytes per record, 8 more per record once
//! JIT'd), for verifier messages, `bpftool prog dump` and profilers; the verifier does not
//! need it to check a program. A node of many routers loads the same programs once per
//! router, so routerd's routers load them without it; tests and benchmarks, and the
//! profiler that maps JIT'd addresses to source lines, load the object as it is.

use std::sync::OnceLock;

use aya::include_bytes_aligned;

/// The eBPF object built by build.rs.
pub static EBPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf"));

/// [`EBPF_OBJECT`] with the line-information part of its `.BTF.ext` section made empty
/// (function information, which the verifier needs for global functions, and CO-RE
/// relocations stay). If the object cannot be read as expected (no `.BTF.ext`, another
/// layout), the object as it is: line information costs memory, never correctness.
pub fn without_line_info() -> &'static [u8] {
    static LEAN: OnceLock<Option<Box<[u64]>>> = OnceLock::new();
    let lean = LEAN.get_or_init(|| {
        // In u64 words so that the copy is aligned as the ELF parser wants it.
        let mut words = vec![0u64; EBPF_OBJECT.len().div_ceil(8)].into_boxed_slice();
        let bytes = as_bytes_mut(&mut words);
        bytes[..EBPF_OBJECT.len()].copy_from_slice(EBPF_OBJECT);
        clear_line_info(&mut bytes[..EBPF_OBJECT.len()]).map(|()| words)
    });
    match lean {
        Some(words) => &as_bytes(words)[..EBPF_OBJECT.len()],
        None => EBPF_OBJECT,
    }
}

fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirement; the length is the same memory.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), words.len() * 8) }
}

fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`, and the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
}

/// The `.BTF.ext` header's `line_info_len` field, after magic (2), version (1), flags (1),
/// hdr_len, func_info_off, func_info_len and line_info_off (4 each).
const LINE_INFO_LEN_AT: usize = 20;
const BTF_MAGIC: u16 = 0xeb9f;

/// Sets `line_info_len` to 0 in the `.BTF.ext` section of the little-endian ELF64 object
/// `elf`. `None` if the object is not one or has no such section.
fn clear_line_info(elf: &mut [u8]) -> Option<()> {
    let section = section(elf, ".BTF.ext")?;
    let ext = elf.get_mut(section)?;
    if u16_at(ext, 0)? != BTF_MAGIC || (u32_at(ext, 4)? as usize) < LINE_INFO_LEN_AT + 4 {
        return None;
    }
    ext[LINE_INFO_LEN_AT..LINE_INFO_LEN_AT + 4].copy_from_slice(&0u32.to_le_bytes());
    Some(())
}

/// The byte range of the section named `name` in the little-endian ELF64 object `elf`.
fn section(elf: &[u8], name: &str) -> Option<std::ops::Range<usize>> {
    const ELF_MAGIC: &[u8] = b"\x7fELF";
    // EI_CLASS 2: 64-bit; EI_DATA 1: little-endian.
    if elf.get(..4)? != ELF_MAGIC || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let headers = usize::try_from(u64_at(elf, 0x28)?).ok()?;
    let header_size = usize::from(u16_at(elf, 0x3a)?);
    let count = usize::from(u16_at(elf, 0x3c)?);
    let names_index = usize::from(u16_at(elf, 0x3e)?);
    let header = |i: usize| headers.checked_add(i.checked_mul(header_size)?);
    let range = |at: usize| -> Option<std::ops::Range<usize>> {
        let offset = usize::try_from(u64_at(elf, at + 24)?).ok()?;
        let size = usize::try_from(u64_at(elf, at + 32)?).ok()?;
        let range = offset..offset.checked_add(size)?;
        (range.end <= elf.len()).then_some(range)
    };
    let names = range(header(names_index)?)?;
    (0..count).find_map(|i| {
        let at = header(i)?;
        let name_at = names.start.checked_add(u32_at(elf, at)? as usize)?;
        let rest = elf.get(name_at..names.end)?;
        let end = rest.iter().position(|&b| b == 0)?;
        (&rest[..end] == name.as_bytes())
            .then(|| range(at))
            .flatten()
    })
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lean_object_differs_only_in_the_line_info_length() {
        let lean = without_line_info();
        assert_eq!(lean.len(), EBPF_OBJECT.len());
        let ext = section(EBPF_OBJECT, ".BTF.ext").expect("the object has a .BTF.ext");
        let field = ext.start + LINE_INFO_LEN_AT..ext.start + LINE_INFO_LEN_AT + 4;
        assert_ne!(
            u32_at(EBPF_OBJECT, field.start),
            Some(0),
            "line info to clear"
        );
        assert_eq!(u32_at(lean, field.start), Some(0));
        let differing: Vec<usize> = (0..lean.len())
            .filter(|&i| lean[i] != EBPF_OBJECT[i])
            .collect();
        assert!(differing.iter().all(|i| field.contains(i)), "{differing:?}");
    }

    #[test]
    fn a_damaged_object_is_left_as_it_is() {
        let mut elf = EBPF_OBJECT.to_vec();
        elf[0] = 0;
        assert_eq!(clear_line_info(&mut elf), None);
        let mut short = EBPF_OBJECT[..0x30].to_vec();
        assert_eq!(clear_line_info(&mut short), None);
    }
}
