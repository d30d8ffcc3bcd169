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
