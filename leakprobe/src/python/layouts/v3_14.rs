//! CPython 3.14. Written by hand in the generated form: no 3.14 headers were installed where the
//! others were generated (`cargo xtask gen-layouts` overwrites this file once they are). The
//! numbers are the ones leakprobe typed by hand before generation (objects as on 3.12/3.13).

use crate::python::layout::*;

pub const TABLES: VersionTables = VersionTables::SelfDescribed(SelfDescribed {
    minor: 14,
    positions: DebugPositions {
        interpreters_head: 40,
        threads_head: 72,
        thread_next: 192,
        current_frame: 208,
        native_thread_id: 224,
        frame_previous: 256,
        frame_executable: 264,
        frame_instr_ptr: 272,
        frame_owner: 288,
        code_adaptive: 384,
        size: 760,
    },
    owner_skip_min: 3,
    code_mask: !3,
    objects: ObjectLayout {
        code: CodeLayout {
            firstlineno: 68,
            filename: 112,
            name: 120,
            qualname: Some(128),
            linetable: 136,
            bytecode: 200,
        },
        str: StrLayout { length: 16, state: 32, ascii_data: 40, compact_data: 56 },
        bytes: BytesLayout { size: 16, data: 32 },
        int: IntLayout { size: 16, size_format: DigitCount::Tagged { flag_bits: 3 }, digits: 24 },
    },
    linetable: LineTableFormat::Locations,
});
