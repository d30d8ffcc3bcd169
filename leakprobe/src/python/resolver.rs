//! Naming Python frames: code object address + instruction -> qualified name, file, line, read
//! from the live target. Code objects are cached by address and re-validated on reuse (a freed
//! code object's address can be taken by another), so names stay right for long recordings.

use std::collections::HashMap;

use leakprobe_common::PythonFrame;

use super::{
    linetable,
    memory::ReadMemory,
    objects::{self, CodeInfo},
    runtime::PythonRuntime,
};
use crate::symbolize::{Frame, FrameKind};

/// Bound on cached code objects (a process with runaway `exec` must not grow us without limit).
const MAX_CACHED: usize = 1 << 16;

struct Cached {
    /// `co_filename` and `co_name` pointers when read: changed pointers mean a different object.
    identity: (u64, u64),
    info: Option<CodeInfo>,
}

pub struct PythonResolver {
    python: PythonRuntime,
    cache: HashMap<u64, Cached>,
}

impl PythonResolver {
    pub fn new(python: PythonRuntime) -> Self {
        PythonResolver { python, cache: HashMap::new() }
    }

    pub fn runtime(&self) -> &PythonRuntime {
        &self.python
    }

    fn identity(&self, code: u64) -> Option<(u64, u64)> {
        let o = &self.python.layout.objects.code;
        let mem = &self.python.mem;
        Some((mem.read_u64(code.wrapping_add(o.filename)).ok()?, mem.read_u64(code.wrapping_add(o.name)).ok()?))
    }

    fn code(&mut self, code: u64) -> Option<&CodeInfo> {
        let identity = self.identity(code);
        let stale = match (self.cache.get(&code), identity) {
            (Some(c), Some(id)) => c.identity != id,
            (Some(_), None) => false, // unreadable now (the object was freed): keep what we knew
            (None, _) => true,
        };
        if stale {
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
            let info = objects::read_code(&self.python.mem, &self.python.layout.objects, code);
            self.cache.insert(code, Cached { identity: identity.unwrap_or_default(), info });
        }
        self.cache.get(&code).and_then(|c| c.info.as_ref())
    }

    /// One frame; unreadable code objects become `<unknown>` frames, never an error.
    pub fn frame(&mut self, frame: &PythonFrame) -> Frame {
        let format = self.python.layout.linetable;
        match self.code(frame.code_object) {
            Some(info) => Frame {
                function: info.qualname.clone(),
                file: Some(info.filename.clone()),
                line: linetable::line_for_instruction(format, &info.linetable, info.first_line, frame.instruction)
                    .or(Some(info.first_line)),
                object: None,
                kind: FrameKind::Python,
                address: frame.code_object,
            },
            None => Frame {
                function: "<unknown>".into(),
                file: None,
                line: None,
                object: None,
                kind: FrameKind::Python,
                address: frame.code_object,
            },
        }
    }

    /// The frames of one stack; the kernel marks interpreter shim frames with code 0.
    pub fn frames(&mut self, frames: &[PythonFrame]) -> Vec<Frame> {
        frames.iter().filter(|f| f.code_object != 0).map(|f| self.frame(f)).collect()
    }
}
