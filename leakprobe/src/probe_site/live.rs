//! The live process behind [`LiveImage`]: where a mapped file's code is loaded (its executable
//! mapping in `/proc/PID/maps`), its memory (`process_vm_readv`: read, never written), and the
//! file's function entries (its symbol tables), so an indirect tail call is followed only to the
//! first byte of a function.

use std::{
    cell::OnceCell,
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::LiveImage;
use crate::{
    elf_symbols,
    proc_maps::Mapping,
    python::memory::{ReadMemory, RemoteMemory},
};

/// One file mapped in one process.
pub struct MappedFile {
    /// Its executable mapping (one: a file whose code is mapped at two places with different
    /// biases is not followed into).
    code: Mapping,
    memory: RemoteMemory,
    /// The file as we open it, for its symbol tables.
    host_path: PathBuf,
    /// File offset of each function's entry → its name, read on first use: only a hooked
    /// function ending in an indirect jump needs them, and a full parse of libc or libpython at
    /// every attach (`watch` too, which attaches no uprobe) would be start-up work for nothing.
    functions: OnceCell<HashMap<u64, String>>,
}

impl MappedFile {
    /// The file `path` (as the process sees it; `host_path` as we open it) in process `pid`, whose
    /// mappings are `maps`; `None` when its code is not mapped exactly once.
    pub fn new(pid: u32, maps: &[Mapping], path: &Path, host_path: &Path) -> Option<MappedFile> {
        let path = path.to_str()?;
        let mut code = maps.iter().filter(|m| m.is_executable() && m.file() == Some(path));
        let (first, second) = (code.next()?.clone(), code.next());
        if second.is_some() {
            return None;
        }
        Some(MappedFile {
            code: first,
            memory: RemoteMemory { pid },
            host_path: host_path.to_path_buf(),
            functions: OnceCell::new(),
        })
    }

    /// The file's function entries (none when its symbols cannot be read: nothing is followed).
    fn functions(&self) -> &HashMap<u64, String> {
        self.functions.get_or_init(|| elf_symbols::function_entries(&self.host_path).unwrap_or_default())
    }
}

impl LiveImage for MappedFile {
    fn runtime_address(&self, file_address: u64) -> Option<u64> {
        // `%rip`-relative operands are computed from the instruction's file offset; the code
        // mapping's bias (start − offset) turns that into where the process has the instruction,
        // and the operand keeps its distance from it.
        file_address.checked_sub(self.code.offset)?.checked_add(self.code.start)
    }

    fn read_u64(&self, address: u64) -> Option<u64> {
        self.memory.read_u64(address).ok()
    }

    fn function_entry(&self, pointer: u64) -> Option<u64> {
        let offset = self.code.contains(pointer).then(|| pointer - self.code.start + self.code.offset)?;
        self.functions().contains_key(&offset).then_some(offset)
    }

    fn function_name(&self, entry: u64) -> Option<String> {
        self.functions().get(&entry).cloned()
    }
}
