//! Where CPython keeps what leakprobe reads, per version (x86_64, GIL builds).
//!
//! 3.10–3.12: tables derived from CPython's headers (py-spy's bindgen structs, cross-checked by
//! reading live interpreters: ../shared/notes/python-unwinding.md §2). 3.13+: the interpreter
//! describes itself in `_Py_DebugOffsets` at the start of `_PyRuntime`; we read that instead.

use leakprobe_common::{PythonConfig, NO_OFFSET};

use super::memory::ReadMemory;

/// How a thread state names its OS thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadId {
    /// `native_thread_id` (3.11+): the kernel tid.
    Native(u64),
    /// `thread_id` is a `pthread_t` (3.10); glibc keeps the tid inside `struct pthread`.
    Pthread(u64),
}

/// Offset of `tid` in glibc's `struct pthread` on x86_64 (after the 704-byte TCB header and the
/// list node); checked at run time against the main thread, whose tid is the pid.
pub const GLIBC_PTHREAD_TID: u64 = 0x2d0;

/// Everything leakprobe needs to know about one CPython build's memory layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PythonLayout {
    pub minor: u32,
    /// Offset of `interpreters.head` in `_PyRuntime`.
    pub runtime_interpreters_head: u64,
    /// Offset of the first thread state in `PyInterpreterState`.
    pub interpreter_threads_head: u64,
    pub thread_next: u64,
    pub thread_id: ThreadId,
    /// The kernel's walking recipe (runtime addresses such as `none_address` filled later).
    pub kernel: PythonConfig,
}

fn config(
    tstate_frame: u32,
    cframe_frame: u32,
    previous: u32,
    code: u32,
    instruction: u32,
    owner: u32,
    skip: u32,
    pointer: bool,
    bytecode: u32,
    read: u32,
) -> PythonConfig {
    PythonConfig {
        tstate_frame,
        cframe_frame,
        frame_previous: previous,
        frame_code: code,
        frame_instruction: instruction,
        frame_owner: owner,
        owner_skip_min: skip,
        instruction_is_pointer: pointer as u32,
        code_bytecode: bytecode,
        frame_read_size: read,
        code_mask: u64::MAX,
        none_address: 0,
        // Set per binary by `runtime::detect`; until then, trust only the first native frame.
        native_frames_with_python: 1,
        reserved: 0,
    }
}

/// The built-in layouts (3.10–3.12); 3.13+ come from `from_debug_offsets`.
pub fn builtin(minor: u32) -> Option<PythonLayout> {
    Some(match minor {
        10 => PythonLayout {
            minor,
            runtime_interpreters_head: 32,
            interpreter_threads_head: 8,
            thread_next: 8,
            thread_id: ThreadId::Pthread(176),
            // tstate->frame; PyFrameObject: f_back 24, f_code 32, f_lasti 96 (int, code units).
            kernel: config(24, NO_OFFSET, 24, 32, 96, NO_OFFSET, 0xff, false, 0, 104),
        },
        11 => PythonLayout {
            minor,
            runtime_interpreters_head: 40,
            interpreter_threads_head: 16,
            thread_next: 8,
            thread_id: ThreadId::Native(160),
            // tstate->cframe (56) ->current_frame (8); previous 48, f_code 32, prev_instr 56.
            // 3.11 marks entry frames with is_entry instead of shim frames: nothing to skip.
            kernel: config(56, 8, 48, 32, 56, NO_OFFSET, 0xff, true, 184, 72),
        },
        12 => PythonLayout {
            minor,
            runtime_interpreters_head: 40,
            interpreter_threads_head: 72,
            thread_next: 8,
            thread_id: ThreadId::Native(144),
            // tstate->cframe (56) ->current_frame (0); f_code 0, previous 8, prev_instr 56,
            // owner 70 (3 = C stack shim).
            kernel: config(56, 0, 8, 0, 56, 70, 3, true, 192, 72),
        },
        _ => return None,
    })
}

/// The cookie at `_PyRuntime + 0` on 3.13+.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// Positions (in `_Py_DebugOffsets`) of the fields we need, per minor version.
struct DebugPositions {
    interpreters_head: u64,
    threads_head: u64,
    thread_next: u64,
    current_frame: u64,
    native_thread_id: u64,
    frame_previous: u64,
    frame_executable: u64,
    frame_instr_ptr: u64,
    frame_owner: u64,
    code_adaptive: u64,
    /// Bytes of `_Py_DebugOffsets` to read.
    size: usize,
}

fn debug_positions(minor: u32) -> Option<DebugPositions> {
    Some(match minor {
        13 => DebugPositions {
            interpreters_head: 40,
            threads_head: 72,
            thread_next: 168,
            current_frame: 184,
            native_thread_id: 200,
            frame_previous: 232,
            frame_executable: 240,
            frame_instr_ptr: 248,
            frame_owner: 264,
            code_adaptive: 344,
            size: 584,
        },
        14 => DebugPositions {
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
        _ => return None,
    })
}

/// What `_Py_DebugOffsets` says, or why it cannot be used.
pub fn from_debug_offsets(mem: &impl ReadMemory, runtime: u64) -> Result<PythonLayout, String> {
    let mut head = [0u8; 24];
    mem.read(runtime, &mut head).map_err(|e| format!("cannot read _PyRuntime: {e}"))?;
    if &head[..8] != DEBUG_COOKIE {
        return Err("no _Py_DebugOffsets cookie at _PyRuntime".into());
    }
    let version = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
    let free_threaded = u64::from_le_bytes(head[16..24].try_into().unwrap_or_default());
    let minor = ((version >> 16) & 0xff) as u32;
    if free_threaded != 0 {
        return Err(format!("free-threaded CPython 3.{minor} is not supported yet"));
    }
    let pos = debug_positions(minor).ok_or_else(|| format!("no _Py_DebugOffsets layout for CPython 3.{minor}"))?;
    let table = mem.read_vec(runtime, pos.size).map_err(|e| format!("cannot read _Py_DebugOffsets: {e}"))?;
    let at = |p: u64| -> Result<u64, String> {
        let p = p as usize;
        table
            .get(p..p + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| "truncated _Py_DebugOffsets".to_string())
    };
    let small = |p: u64| -> Result<u32, String> {
        let v = at(p)?;
        u32::try_from(v).ok().filter(|v| *v < 4096).ok_or_else(|| format!("implausible offset {v} in _Py_DebugOffsets"))
    };
    let owner = small(pos.frame_owner)?;
    let read = [small(pos.frame_previous)?, small(pos.frame_executable)?, small(pos.frame_instr_ptr)?, owner]
        .iter()
        .map(|o| o + 8)
        .max()
        .unwrap_or(0)
        .min(leakprobe_common::PYTHON_FRAME_READ as u32);
    let mut kernel = config(
        small(pos.current_frame)?,
        NO_OFFSET,
        small(pos.frame_previous)?,
        small(pos.frame_executable)?,
        small(pos.frame_instr_ptr)?,
        owner,
        3,
        true,
        small(pos.code_adaptive)?,
        read,
    );
    if minor >= 14 {
        // f_executable is a _PyStackRef: tag bits in the low two bits.
        kernel.code_mask = !3;
    }
    Ok(PythonLayout {
        minor,
        runtime_interpreters_head: at(pos.interpreters_head)?,
        interpreter_threads_head: at(pos.threads_head)?,
        thread_next: at(pos.thread_next)?,
        thread_id: ThreadId::Native(at(pos.native_thread_id)?),
        kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::memory::SliceMemory;

    #[test]
    fn builtin_layouts_match_the_unwinding_notes() {
        let l11 = builtin(11).unwrap();
        assert_eq!((l11.kernel.tstate_frame, l11.kernel.cframe_frame, l11.kernel.frame_previous), (56, 8, 48));
        assert_eq!(l11.kernel.code_bytecode, 184);
        let l12 = builtin(12).unwrap();
        assert_eq!((l12.kernel.frame_code, l12.kernel.frame_owner, l12.kernel.owner_skip_min), (0, 70, 3));
        let l10 = builtin(10).unwrap();
        assert_eq!(l10.kernel.instruction_is_pointer, 0);
        assert!(builtin(9).is_none() && builtin(13).is_none());
        for minor in 10..=12 {
            assert!(builtin(minor).unwrap().kernel.frame_read_size as usize <= leakprobe_common::PYTHON_FRAME_READ);
        }
    }

    fn fake_runtime(minor: u32, free_threaded: u64) -> Vec<u8> {
        let pos = debug_positions(minor).unwrap();
        let mut t = vec![0u8; pos.size];
        t[..8].copy_from_slice(DEBUG_COOKIE);
        t[8..16].copy_from_slice(&((3u64 << 24) | ((minor as u64) << 16) | 0xf0).to_le_bytes());
        t[16..24].copy_from_slice(&free_threaded.to_le_bytes());
        let mut put = |p: u64, v: u64| t[p as usize..p as usize + 8].copy_from_slice(&v.to_le_bytes());
        put(pos.interpreters_head, 632);
        put(pos.threads_head, 7344);
        put(pos.thread_next, 8);
        put(pos.current_frame, 72);
        put(pos.native_thread_id, 160);
        put(pos.frame_previous, 8);
        put(pos.frame_executable, 0);
        put(pos.frame_instr_ptr, 56);
        put(pos.frame_owner, 70);
        put(pos.code_adaptive, 200);
        t
    }

    #[test]
    fn reads_debug_offsets() {
        let bytes = fake_runtime(13, 0);
        let layout = from_debug_offsets(&SliceMemory { base: 0x1000, bytes: &bytes }, 0x1000).unwrap();
        assert_eq!(layout.minor, 13);
        assert_eq!(layout.runtime_interpreters_head, 632);
        assert_eq!(layout.thread_id, ThreadId::Native(160));
        assert_eq!((layout.kernel.tstate_frame, layout.kernel.frame_owner, layout.kernel.code_bytecode), (72, 70, 200));
        assert_eq!(layout.kernel.code_mask, u64::MAX);
        let l14 = from_debug_offsets(&SliceMemory { base: 0, bytes: &fake_runtime(14, 0) }, 0).unwrap();
        assert_eq!(l14.kernel.code_mask, !3);
    }

    #[test]
    fn refuses_garbage_and_free_threaded() {
        let zeros = vec![0u8; 1024];
        assert!(from_debug_offsets(&SliceMemory { base: 0, bytes: &zeros }, 0).is_err());
        assert!(from_debug_offsets(&SliceMemory { base: 0, bytes: &fake_runtime(13, 1) }, 0)
            .unwrap_err()
            .contains("free-threaded"));
        let mut bad = fake_runtime(13, 0);
        let pos = debug_positions(13).unwrap();
        bad[pos.frame_owner as usize..pos.frame_owner as usize + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(from_debug_offsets(&SliceMemory { base: 0, bytes: &bad }, 0).is_err());
    }
}
