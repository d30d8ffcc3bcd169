//! Finding the CPython interpreter inside a target process: which mapped file holds it, where its
//! `_PyRuntime` is, which version it is, its layout, and its threads.

use std::{collections::HashMap, path::Path};

use leakprobe_common::PythonConfig;

use super::{
    debug_offsets,
    layout::{Layout, ThreadId, VersionTables, GLIBC_PTHREAD_TID},
    layouts,
    memory::{ReadMemory, RemoteMemory},
};
use crate::{
    elf_symbols,
    proc_maps::{self, Mapping},
    target::Target,
};

/// Most threads (and interpreters) we follow in the target's lists: a bound against garbage.
const MAX_THREADS: usize = 4096;

#[derive(Debug, Clone)]
pub struct PythonRuntime {
    pub pid: u32,
    /// `3.11.7` (or `3.10` when only the file name tells).
    pub version: String,
    /// Where this interpreter keeps everything leakprobe reads: decided once, here.
    pub layout: Layout,
    /// The kernel's walking recipe (the layout's, with this process's addresses).
    pub kernel: PythonConfig,
    /// Address of `_PyRuntime` in the target.
    pub runtime: u64,
    /// Address of `PyType_Type` in the target, when its symbol is there.
    pub type_type: Option<u64>,
    /// The file that holds the interpreter (as the target sees it).
    pub object_path: String,
    pub mem: RemoteMemory,
}

/// Why no Python stacks: not a CPython at all (`None`), or one we cannot read (a warning).
pub type Detection = Result<Option<PythonRuntime>, String>;

/// Start of the mapping of `path` at file offset 0 in the target's maps.
fn load_base(maps: &[Mapping], path: &str) -> Option<u64> {
    maps.iter().find(|m| m.offset == 0 && m.path.as_deref() == Some(path)).map(|m| m.start)
}

pub fn detect(target: &Target) -> Detection {
    let maps = proc_maps::read(target.pid).map_err(|e| format!("cannot read maps: {e}"))?;
    let wanted = ["_PyRuntime", "Py_Version", "_Py_NoneStruct", "_PyEval_EvalFrameDefault", "PyType_Type"];
    let mut found: Option<(HashMap<String, u64>, u64, &crate::target::HookableObject)> = None;
    for object in &target.objects {
        let Ok((symbols, lowest)) = elf_symbols::symbol_addresses(&object.host_path, &wanted) else { continue };
        if symbols.contains_key("_PyRuntime") {
            found = Some((symbols, lowest, object));
            break;
        }
    }
    let Some((symbols, lowest, object)) = found else { return Ok(None) };
    let path = object.path.display().to_string();
    let base = load_base(&maps, &path).ok_or_else(|| format!("{path} is not mapped at offset 0"))?;
    let bias = base.wrapping_sub(lowest & !0xfff);
    let mem = RemoteMemory { pid: target.pid };
    let runtime = symbols["_PyRuntime"].wrapping_add(bias);

    // PY_VERSION_HEX from Py_Version (3.11+); 3.10 only says it in its file name.
    let hex = symbols.get("Py_Version").and_then(|v| mem.read_u32(v.wrapping_add(bias)).ok());
    let (minor, version) = match hex {
        Some(h) if h >> 24 == 3 => {
            let minor = (h >> 16) & 0xff;
            (minor, format!("3.{minor}.{}", (h >> 8) & 0xff))
        }
        _ => {
            let v = crate::target::python_version_of(Path::new(&path))
                .or_else(|| target.python_version.clone())
                .ok_or_else(|| format!("cannot tell the CPython version of {path}"))?;
            let minor = v.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
            (minor, v)
        }
    };
    let layout = match layouts::tables(minor) {
        Some(VersionTables::Complete(layout)) => layout,
        Some(VersionTables::SelfDescribed(_)) => {
            debug_offsets::read_layout(&mem, runtime).map_err(|e| format!("CPython {version}: {e}"))?
        }
        None => {
            let supported = layouts::supported();
            return Err(format!("CPython {version} is not supported ({supported} are): native stacks only"));
        }
    };
    let mut kernel = layout.kernel_config();
    if let Some(none) = symbols.get("_Py_NoneStruct") {
        kernel.none_address = none.wrapping_add(bias);
    }
    // With frame pointers the whole native walk is sound; without, only its first frame is.
    let eval_loop = symbols.get("_PyEval_EvalFrameDefault").map(|v| v.wrapping_add(bias));
    if eval_loop.is_some_and(|address| has_frame_pointer(&mem, address)) {
        kernel.native_frames_with_python = leakprobe_common::MAX_NATIVE_FRAMES as u32;
    }
    let type_type = symbols.get("PyType_Type").map(|v| v.wrapping_add(bias));
    let python = PythonRuntime { pid: target.pid, version, layout, kernel, runtime, type_type, object_path: path, mem };
    // Prove the layout on the live process: its thread list must name its own threads.
    let threads = python.thread_states();
    if threads.is_empty() {
        return Err(format!("CPython {}: its thread list could not be read (unexpected layout?)", python.version));
    }
    Ok(Some(python))
}

/// Whether the function at `address` sets up a frame pointer (`push %rbp; mov %rsp,%rbp`, after
/// an optional `endbr64`), as code built with `-fno-omit-frame-pointer` does.
fn has_frame_pointer(mem: &impl ReadMemory, address: u64) -> bool {
    let mut code = [0u8; 8];
    if mem.read(address, &mut code).is_err() {
        return false;
    }
    let body = if code[..4] == [0xf3, 0x0f, 0x1e, 0xfa] { &code[4..] } else { &code[..4] };
    body == [0x55, 0x48, 0x89, 0xe5]
}

impl PythonRuntime {
    pub fn kernel_config(&self) -> PythonConfig {
        self.kernel
    }

    /// (tid, thread state address) of every thread the interpreter knows, keeping only tids that
    /// are threads of the target (anything else is garbage read from a mutating list).
    pub fn thread_states(&self) -> Vec<(u32, u64)> {
        let l = &self.layout.threads;
        let mut out = Vec::new();
        let Ok(interp) = self.mem.read_u64(self.runtime.wrapping_add(l.runtime_interpreters_head)) else { return out };
        if interp == 0 {
            return out;
        }
        let mut tstate = self.mem.read_u64(interp.wrapping_add(l.interpreter_threads_head)).unwrap_or(0);
        for _ in 0..MAX_THREADS {
            if tstate == 0 {
                break;
            }
            let tid = match l.thread_id {
                ThreadId::Native(off) => self.mem.read_u64(tstate.wrapping_add(off)).ok().map(|t| t as u32),
                ThreadId::Pthread(off) => self
                    .mem
                    .read_u64(tstate.wrapping_add(off))
                    .ok()
                    .and_then(|pthread| self.mem.read_u32(pthread.wrapping_add(GLIBC_PTHREAD_TID)).ok()),
            };
            if let Some(tid) = tid.filter(|&t| t != 0 && Path::new(&format!("/proc/{}/task/{t}", self.pid)).exists()) {
                if !out.iter().any(|(t, _)| *t == tid) {
                    out.push((tid, tstate));
                }
            }
            tstate = self.mem.read_u64(tstate.wrapping_add(l.thread_next)).unwrap_or(0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::memory::SliceMemory;

    #[test]
    fn frame_pointer_prologues() {
        let with = [0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56];
        let with_endbr = [0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5];
        let without = [0x41, 0x57, 0x41, 0x56, 0x41, 0x55, 0x41, 0x54];
        assert!(has_frame_pointer(&SliceMemory { base: 0, bytes: &with }, 0));
        assert!(has_frame_pointer(&SliceMemory { base: 0, bytes: &with_endbr }, 0));
        assert!(!has_frame_pointer(&SliceMemory { base: 0, bytes: &without }, 0));
        assert!(!has_frame_pointer(&SliceMemory { base: 0, bytes: &without }, 4));
    }

    #[test]
    fn load_base_is_the_offset_zero_mapping() {
        let maps = proc_maps::parse("7f00-7f10 r--p 00000000 fe:01 9 /lib/libpython3.11.so.1.0\n7f10-7f20 r-xp 00010000 fe:01 9 /lib/libpython3.11.so.1.0\n");
        assert_eq!(load_base(&maps, "/lib/libpython3.11.so.1.0"), Some(0x7f00));
        assert_eq!(load_base(&maps, "/lib/other.so"), None);
    }
}
