//! One file per CPython version, generated from its headers by `cargo xtask gen-layouts`.
//! Supporting a new version is its file and its entry in `ALL`.

mod v3_10;
mod v3_11;
mod v3_12;
mod v3_13;
mod v3_14;

use super::layout::{Layout, ObjectLayout, VersionTables};

/// Every supported version, oldest first.
const ALL: &[VersionTables] = &[v3_10::TABLES, v3_11::TABLES, v3_12::TABLES, v3_13::TABLES, v3_14::TABLES];

/// The tables of CPython 3.`minor`, when it is supported.
pub fn tables(minor: u32) -> Option<VersionTables> {
    ALL.iter().find(|t| t.minor() == minor).copied()
}

/// "3.10 to 3.14": what the error for an unsupported version says is supported.
pub fn supported() -> String {
    format!("3.{} to 3.{}", ALL[0].minor(), ALL[ALL.len() - 1].minor())
}

/// The object layout of CPython 3.`minor` (what readers of `str`, `bytes` and code objects need).
pub fn objects(minor: u32) -> Option<ObjectLayout> {
    tables(minor).map(|t| t.objects())
}

/// The whole layout of a version described completely by its file (3.10–3.12).
pub fn complete(minor: u32) -> Option<Layout> {
    match tables(minor)? {
        VersionTables::Complete(layout) => Some(layout),
        VersionTables::SelfDescribed(_) => None,
    }
}

/// pymalloc's pool header and geometry (x86_64), the same in 3.10–3.14: `struct pool_header`
/// (`ref.count`, `freeblock`, `nextpool`, `prevpool`, `arenaindex`, `szidx`, `nextoffset`,
/// `maxnextoffset`), 16 KiB pools (`USE_LARGE_POOLS`, set with the radix tree on 64-bit since
/// 3.10), 16-byte size classes up to 512 bytes. Checked constants rather than generated: 3.10 and
/// 3.11 declare the struct in `Objects/obmalloc.c`, which installs do not ship; the test below
/// checks them against the installed 3.12+ headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLayout {
    pub ref_count: u64,
    pub freeblock: u64,
    pub szidx: u64,
    pub nextoffset: u64,
    pub maxnextoffset: u64,
    /// `POOL_OVERHEAD`: the header rounded up to the alignment; the first block starts there.
    pub overhead: u64,
    pub pool_size: u64,
    pub alignment_shift: u32,
    pub small_request_threshold: u64,
    /// `DUMMY_SIZE_IDX`: the class of a pool emptied and cached.
    pub dummy_size_index: u32,
}

pub const POOL_LAYOUT: PoolLayout = PoolLayout {
    ref_count: 0,
    freeblock: 8,
    szidx: 36,
    nextoffset: 40,
    maxnextoffset: 44,
    overhead: 48,
    pool_size: 1 << 14,
    alignment_shift: 4,
    small_request_threshold: 512,
    dummy_size_index: 0xffff,
};

/// The pool layout of CPython 3.`minor`, when it is supported.
pub fn pool(minor: u32) -> Option<PoolLayout> {
    tables(minor).map(|_| POOL_LAYOUT)
}

/// The built-in types whose freed objects CPython 3.`minor` keeps on free lists of its own and
/// hands to the next object of the type without a call to the allocator (`Objects/floatobject.c`,
/// `tupleobject.c`, `listobject.c`, `dictobject.c`, `sliceobject.c`, `context.c`, `genobject.c`;
/// 3.14 gathers them in `Include/internal/pycore_freelist_state.h` and adds `int`, bound methods,
/// C functions and ranges). Tuples are recycled up to 20 items; every tuple is listed here.
pub fn recycled_types(minor: u32) -> Vec<&'static str> {
    /// Each type with the first minor version that recycles it.
    const RECYCLED: &[(&str, u32)] = &[
        ("float", 10),
        ("tuple", 10),
        ("list", 10),
        ("dict", 10),
        ("slice", 10),
        ("Context", 10),
        ("async_generator", 10),
        ("int", 14),
        ("method", 14),
        ("builtin_function_or_method", 14),
        ("range", 14),
        ("range_iterator", 14),
        ("list_iterator", 14),
        ("tuple_iterator", 14),
    ];
    RECYCLED.iter().filter(|(_, since)| minor >= *since).map(|(name, _)| *name).collect()
}

#[cfg(test)]
mod tests {
    use leakprobe_common::{PythonConfig, NO_OFFSET};

    use super::*;

    #[test]
    fn builtin_layouts_match_the_unwinding_notes() {
        let l11 = complete(11).unwrap().kernel_config();
        assert_eq!((l11.tstate_frame, l11.cframe_frame, l11.frame_previous), (56, 8, 48));
        assert_eq!(l11.code_bytecode, 184);
        let l12 = complete(12).unwrap().kernel_config();
        assert_eq!((l12.frame_code, l12.frame_owner, l12.owner_skip_min), (0, 70, 3));
        let l10 = complete(10).unwrap().kernel_config();
        assert_eq!(l10.instruction_is_pointer, 0);
        assert!(complete(9).is_none() && complete(13).is_none());
        for minor in 10..=12 {
            assert!(complete(minor).unwrap().frame.read_size as usize <= leakprobe_common::PYTHON_FRAME_READ);
        }
        assert!(tables(9).is_none() && tables(15).is_none());
        assert_eq!(supported(), "3.10 to 3.14");
        assert!(ALL.windows(2).all(|w| w[0].minor() < w[1].minor()), "oldest first, each once");
    }

    /// The pool constants against the installed headers (3.12+ ship `pycore_obmalloc.h`).
    #[test]
    fn pool_layout_matches_the_installed_headers() {
        let header = |minor: u32| {
            let root = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            let versions = std::fs::read_dir(format!("{root}/.pyenv/versions")).ok()?;
            versions.flatten().find_map(|v| {
                let name = v.file_name().to_string_lossy().into_owned();
                name.starts_with(&format!("3.{minor}.")).then(|| {
                    std::fs::read_to_string(
                        v.path().join(format!("include/python3.{minor}/internal/pycore_obmalloc.h")),
                    )
                    .ok()
                })?
            })
        };
        for minor in 12..=14 {
            let Some(text) = header(minor) else { continue };
            let l = pool(minor).unwrap();
            let start = text.find("struct pool_header {").expect("pool_header");
            let body = &text[start..start + text[start..].find("};").unwrap()];
            let order = [
                "count; } ref",
                "*freeblock",
                "*nextpool",
                "*prevpool",
                "arenaindex",
                "szidx",
                "nextoffset",
                "maxnextoffset",
            ];
            let at: Vec<usize> = order.iter().map(|f| body.find(f).unwrap_or_else(|| panic!("{f}"))).collect();
            assert!(at.windows(2).all(|w| w[0] < w[1]), "3.{minor}: field order");
            // Four words then four u32s: the offsets above, 48 bytes in all.
            assert_eq!((l.freeblock, l.szidx, l.nextoffset, l.maxnextoffset, l.overhead), (8, 36, 40, 44, 48));
            assert!(text.contains("#define POOL_BITS               14"), "3.{minor}: 16 KiB pools");
            assert!(text.contains("#define ALIGNMENT_SHIFT         4"));
            assert!(text.contains("#define SMALL_REQUEST_THRESHOLD 512"));
            assert!(text.contains("#define DUMMY_SIZE_IDX          0xffff"));
            assert_eq!(l.pool_size, 1 << 14);
        }
        assert!(pool(9).is_none());
    }

    /// The kernel recipes the hand-typed tables gave before they were generated.
    #[test]
    fn generated_kernel_configs_equal_the_former_hand_typed_ones() {
        let former = |frame: [u32; 6], skip, pointer: bool, bytecode, read| PythonConfig {
            tstate_frame: frame[0],
            cframe_frame: frame[1],
            frame_previous: frame[2],
            frame_code: frame[3],
            frame_instruction: frame[4],
            frame_owner: frame[5],
            owner_skip_min: skip,
            instruction_is_pointer: u32::from(pointer),
            code_bytecode: bytecode,
            frame_read_size: read,
            code_mask: u64::MAX,
            none_address: 0,
            native_frames_with_python: 1,
            reserved: 0,
        };
        let n = NO_OFFSET;
        assert_eq!(complete(10).unwrap().kernel_config(), former([24, n, 24, 32, 96, n], 0xff, false, 0, 104));
        assert_eq!(complete(11).unwrap().kernel_config(), former([56, 8, 48, 32, 56, n], 0xff, true, 184, 72));
        assert_eq!(complete(12).unwrap().kernel_config(), former([56, 0, 8, 0, 56, 70], 3, true, 192, 72));
    }
}
