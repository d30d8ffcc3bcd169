//! Naming a stack: native frames through blazesym, Python frames through the target's code
//! objects, merged into one list the way `py-spy --native` does.
//!
//! Python frames are resolved when a stack is first seen (each interval), not at report time:
//! code objects can be freed during a long recording and their addresses reused.

use std::collections::HashMap;

use leakprobe_common::{AllocFunction, CallShape, StackTrace, STACK_NATIVE_TRUNCATED, STACK_PYTHON_TRUNCATED};

use crate::{
    loader::Probes,
    python::resolver::PythonResolver,
    report::build::ResolvedStack,
    symbolize::{Frame, FrameKind, NativeSymbolizer},
};

/// Which frames a report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackView {
    /// Native frames down to the interpreter, then the Python frames (the default).
    Merged,
    /// Python frames only.
    PythonOnly,
    /// Every native frame, the Python frames in place of the first interpreter eval-loop frame.
    Native,
}

pub struct StackNamer {
    native: NativeSymbolizer,
    python: Option<PythonResolver>,
    /// Python frames of every stack seen so far.
    python_frames: HashMap<u64, Vec<Frame>>,
    view: StackView,
}

/// The interpreter's eval loop: where Python frames run.
fn is_eval_loop(function: &str) -> bool {
    function.starts_with("_PyEval_EvalFrame") || function.starts_with("PyEval_EvalCode")
}

impl StackNamer {
    pub fn new(native: NativeSymbolizer, python: Option<PythonResolver>, view: StackView) -> Self {
        StackNamer { native, python, python_frames: HashMap::new(), view }
    }

    /// Resolves the Python frames of stacks not seen before.
    pub fn learn(&mut self, probes: &Probes, stack_ids: impl Iterator<Item = u64>) {
        if self.python.is_none() {
            return;
        }
        for id in stack_ids {
            if !self.python_frames.contains_key(&id) {
                if let Some(trace) = probes.kernel().stack_trace(id) {
                    self.python_frames_of(id, &trace);
                }
            }
        }
    }

    /// The Python frames of stack `id` (its `trace`), resolved on first sight and kept.
    fn python_frames_of(&mut self, id: u64, trace: &StackTrace) -> Vec<Frame> {
        let Some(python) = self.python.as_mut() else { return Vec::new() };
        self.python_frames.entry(id).or_insert_with(|| python.frames(trace.python_frames())).clone()
    }

    pub fn resolve(
        &mut self,
        probes: &Probes,
        probes_hooks_object: impl Fn(AllocFunction) -> Option<String>,
        id: u64,
    ) -> ResolvedStack {
        let Some(trace) = probes.kernel().stack_trace(id) else {
            return ResolvedStack { allocator: "?".into(), frames: Vec::new(), native_truncated: false };
        };
        let function = AllocFunction::from_u32(trace.function);
        let allocator = function.map_or("?", AllocFunction::symbol).to_string();
        let allocator_frame = Frame {
            function: allocator.clone(),
            file: None,
            line: None,
            object: function.and_then(&probes_hooks_object),
            kind: if function.is_some_and(|f| f.shape() == CallShape::Syscall) {
                FrameKind::Kernel
            } else {
                FrameKind::Native
            },
            address: 0,
        };
        let mut python = self.python_frames_of(id, &trace);
        if trace.flags & STACK_PYTHON_TRUNCATED != 0 {
            python.push(Frame {
                function: "<truncated>".into(),
                file: None,
                line: None,
                object: None,
                kind: FrameKind::Python,
                address: 0,
            });
        }
        let len = (trace.native_len as usize).min(trace.native.len());
        let native = if self.view == StackView::PythonOnly && !python.is_empty() {
            Vec::new()
        } else {
            self.native.symbolize(&trace.native[..len])
        };
        let mut frames = vec![allocator_frame];
        frames.extend(merge(native, python, self.view));
        ResolvedStack { allocator, frames, native_truncated: trace.flags & STACK_NATIVE_TRUNCATED != 0 }
    }
}

/// Merges native frames (innermost first) with Python frames (innermost first).
pub fn merge(native: Vec<Frame>, python: Vec<Frame>, view: StackView) -> Vec<Frame> {
    if python.is_empty() {
        return native;
    }
    match view {
        StackView::PythonOnly => python,
        StackView::Native => {
            let mut out = Vec::with_capacity(native.len() + python.len());
            let mut spliced = false;
            for frame in native {
                if is_eval_loop(&frame.function) {
                    if !spliced {
                        out.extend(python.iter().cloned());
                        spliced = true;
                    }
                } else {
                    out.push(frame);
                }
            }
            if !spliced {
                out.extend(python);
            }
            out
        }
        StackView::Merged => {
            // Native frames until the interpreter takes over (its eval loop), or until the native
            // walk stops making sense (an unresolved address: code without frame pointers).
            let mut out: Vec<Frame> = native
                .into_iter()
                .take_while(|f| !is_eval_loop(&f.function) && !f.function.starts_with("0x"))
                .collect();
            out.extend(python);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, kind: FrameKind) -> Frame {
        Frame { function: name.into(), file: None, line: None, object: None, kind, address: 0 }
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.function.as_str()).collect()
    }

    #[test]
    fn python_frames_replace_the_eval_loop() {
        let native = vec![
            f("PyUnicode_New", FrameKind::Native),
            f("_PyEval_EvalFrameDefault", FrameKind::Native),
            f("_PyEval_EvalFrameDefault", FrameKind::Native),
            f("main", FrameKind::Native),
        ];
        let python = vec![f("handler", FrameKind::Python), f("<module>", FrameKind::Python)];
        assert_eq!(
            names(&merge(native.clone(), python.clone(), StackView::Native)),
            ["PyUnicode_New", "handler", "<module>", "main"]
        );
        assert_eq!(
            names(&merge(native.clone(), python.clone(), StackView::Merged)),
            ["PyUnicode_New", "handler", "<module>"]
        );
        assert_eq!(names(&merge(native, python, StackView::PythonOnly)), ["handler", "<module>"]);
    }

    #[test]
    fn broken_native_walks_stop_at_the_first_unresolved_frame() {
        let native =
            vec![f("gc_alloc", FrameKind::Native), f("0x7f00dead", FrameKind::Native), f("bogus", FrameKind::Native)];
        let python = vec![f("handler", FrameKind::Python)];
        assert_eq!(names(&merge(native, python, StackView::Merged)), ["gc_alloc", "handler"]);
    }

    #[test]
    fn without_python_frames_native_stays_whole() {
        let native = vec![f("leak", FrameKind::Native), f("main", FrameKind::Native)];
        assert_eq!(names(&merge(native, vec![], StackView::PythonOnly)), ["leak", "main"]);
    }
}
