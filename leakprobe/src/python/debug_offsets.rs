//! The layout of a 3.13+ interpreter, from the `_Py_DebugOffsets` table it keeps at the start
//! of `_PyRuntime`; what that table does not say comes from the version's file in `layouts/`.

use leakprobe_common::NO_OFFSET;

use super::{
    layout::{FrameLayout, Instruction, Layout, SelfDescribed, ThreadId, ThreadListLayout, VersionTables},
    layouts,
    memory::ReadMemory,
};

/// The cookie at `_PyRuntime + 0` on 3.13+.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// The tables of a self-described version.
fn self_described(minor: u32) -> Option<SelfDescribed> {
    match layouts::tables(minor)? {
        VersionTables::SelfDescribed(s) => Some(s),
        VersionTables::Complete(_) => None,
    }
}

/// What `_Py_DebugOffsets` says, or why it cannot be used.
pub fn read_layout(mem: &impl ReadMemory, runtime: u64) -> Result<Layout, String> {
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
    let tables = self_described(minor).ok_or_else(|| format!("no _Py_DebugOffsets layout for CPython 3.{minor}"))?;
    let pos = tables.positions;
    let table = mem.read_vec(runtime, pos.size as usize).map_err(|e| format!("cannot read _Py_DebugOffsets: {e}"))?;
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
    let (previous, code, instruction) =
        (small(pos.frame_previous)?, small(pos.frame_executable)?, small(pos.frame_instr_ptr)?);
    let owner = small(pos.frame_owner)?;
    let read_size = [previous, code, instruction, owner]
        .iter()
        .map(|o| o + 8)
        .max()
        .unwrap_or(0)
        .min(leakprobe_common::PYTHON_FRAME_READ as u32);
    let frame = FrameLayout {
        tstate_frame: small(pos.current_frame)?,
        cframe_frame: NO_OFFSET,
        previous,
        code,
        instruction,
        instruction_kind: Instruction::Pointer,
        owner,
        owner_skip_min: tables.owner_skip_min,
        read_size,
        code_mask: tables.code_mask,
    };
    let mut objects = tables.objects;
    objects.code.bytecode = u64::from(small(pos.code_adaptive)?);
    Ok(Layout {
        minor,
        threads: ThreadListLayout {
            runtime_interpreters_head: at(pos.interpreters_head)?,
            interpreter_threads_head: at(pos.threads_head)?,
            thread_next: at(pos.thread_next)?,
            thread_id: ThreadId::Native(at(pos.native_thread_id)?),
        },
        frame,
        objects,
        linetable: tables.linetable,
        heap: tables.heap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::memory::SliceMemory;

    fn fake_runtime(minor: u32, free_threaded: u64) -> Vec<u8> {
        let pos = self_described(minor).unwrap().positions;
        let mut t = vec![0u8; pos.size as usize];
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
        let layout = read_layout(&SliceMemory { base: 0x1000, bytes: &bytes }, 0x1000).unwrap();
        let kernel = layout.kernel_config();
        assert_eq!(layout.minor, 13);
        assert_eq!(layout.threads.runtime_interpreters_head, 632);
        assert_eq!(layout.threads.thread_id, ThreadId::Native(160));
        assert_eq!((kernel.tstate_frame, kernel.frame_owner, kernel.code_bytecode), (72, 70, 200));
        assert_eq!(kernel.code_mask, u64::MAX);
        let l14 = read_layout(&SliceMemory { base: 0, bytes: &fake_runtime(14, 0) }, 0).unwrap();
        assert_eq!(l14.kernel_config().code_mask, !3);
    }

    #[test]
    fn refuses_garbage_and_free_threaded() {
        let zeros = vec![0u8; 1024];
        assert!(read_layout(&SliceMemory { base: 0, bytes: &zeros }, 0).is_err());
        assert!(read_layout(&SliceMemory { base: 0, bytes: &fake_runtime(13, 1) }, 0)
            .unwrap_err()
            .contains("free-threaded"));
        let mut bad = fake_runtime(13, 0);
        let pos = self_described(13).unwrap().positions;
        bad[pos.frame_owner as usize..pos.frame_owner as usize + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_layout(&SliceMemory { base: 0, bytes: &bad }, 0).is_err());
    }
}
