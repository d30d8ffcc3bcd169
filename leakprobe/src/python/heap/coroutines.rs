//! Suspended coroutines as roots: a background task started once (`asyncio.create_task(
//! collector())` at start-up) keeps its state in its own locals, which no module reaches. Each
//! coroutine the census's walk of the GC lists met is read here (its frame inline in it from 3.11,
//! a frame object in 3.10: python-heap.md §11.5, §12): when it is the only pending coroutine of its code (a task
//! created per request is one of thousands alike, and is judged as pending tasks), each of its
//! locals is followed as a module's names are, as `<coroutine qualname>.local`, with the file of
//! its code as the holder's module file.

use std::collections::HashMap;

use super::{holders::HolderSearch, types::Kind, Holder};
use crate::python::{layout::CoroutineLayout, memory::ReadMemory, objects::read_str};

/// Coroutines whose locals are read, at most (the lone ones among those the walk met).
const MAX_LONE: usize = 1000;
/// Locals read per coroutine.
const MAX_LOCALS: u64 = 256;

/// A local's slot as read: the object it holds, if any. 3.14's `_PyStackRef`: 1 is NULL, tag 3
/// an int that is no object, else the object with its low bits cleared.
fn slot_object(bits: u64, stack_refs: bool) -> Option<u64> {
    if !stack_refs {
        return (bits != 0).then_some(bits);
    }
    match bits {
        0 | 1 => None,
        b if b & 3 == 3 => None,
        b => Some(b & !3),
    }
}

impl<M: ReadMemory> HolderSearch<'_, '_, M> {
    /// Holders below the locals of the lone suspended coroutines among `coroutines`.
    pub(super) fn add_coroutine_locals(&mut self, coroutines: &[u64], holders: &mut Vec<Holder>) {
        let Some(cl) = self.layout.heap.coroutines else { return };
        let mut by_code: HashMap<u64, Vec<u64>> = HashMap::new();
        for &coroutine in coroutines {
            if self.suspended(&cl, coroutine) {
                if let Some(code) = self.code_of(&cl, coroutine) {
                    by_code.entry(code).or_default().push(coroutine);
                }
            }
        }
        let mut lone: Vec<(u64, u64)> =
            by_code.into_iter().filter(|(_, c)| c.len() == 1).map(|(code, c)| (code, c[0])).collect();
        lone.sort_unstable();
        lone.truncate(MAX_LONE);
        // Paths are by qualname: two lone coroutines of one qualname (`main_loop` in two
        // modules) would be one series, so neither is read.
        let str_layout = self.layout.objects.str;
        let named: Vec<(String, u64, u64)> = lone
            .into_iter()
            .filter_map(|(code, coroutine)| {
                let qualname = read_str(self.mem, &str_layout, self.read(coroutine.wrapping_add(cl.qualname)))?;
                Some((qualname, code, coroutine))
            })
            .collect();
        let mut per_name: HashMap<&str, usize> = HashMap::new();
        for (qualname, _, _) in &named {
            *per_name.entry(qualname.as_str()).or_default() += 1;
        }
        let unique: Vec<(String, u64, u64)> =
            named.iter().filter(|(q, _, _)| per_name[q.as_str()] == 1).cloned().collect();
        let saved_file = self.module_file.take();
        for (qualname, code, coroutine) in unique {
            if self.out_of_bounds() {
                break;
            }
            self.module_file = read_str(
                self.mem,
                &self.layout.objects.str,
                self.read(code.wrapping_add(self.layout.objects.code.filename)),
            );
            let names = self.tuple_strs(self.read(code.wrapping_add(self.layout.heap.refs.code_names)));
            let Some(frame) = self.frame_of(&cl, coroutine) else { continue };
            for (i, name) in names.iter().enumerate().take(MAX_LOCALS as usize) {
                let bits = self.read(frame.wrapping_add(cl.localsplus).wrapping_add(8 * i as u64));
                let Some(mut value) = slot_object(bits, cl.stack_refs) else { continue };
                // A cell variable's slot holds its cell.
                if self.kind(value).map(|k| k.1) == Some(Kind::Cell) {
                    value = self.read(value.wrapping_add(self.layout.heap.refs.cell_ref));
                }
                if value != 0 {
                    self.named(format!("<coroutine {qualname}>.{name}"), value, 1, holders);
                }
            }
        }
        self.module_file = saved_file;
    }

    /// Where `coroutine`'s frame is: in it, or (3.10) the frame object it points to.
    fn frame_of(&self, cl: &CoroutineLayout, coroutine: u64) -> Option<u64> {
        match cl.frame_object {
            true => Some(self.read(coroutine.wrapping_add(cl.frame))).filter(|f| *f != 0),
            false => Some(coroutine.wrapping_add(cl.frame)),
        }
    }

    /// Whether `coroutine` is created or suspended (its frame's locals are then valid).
    fn suspended(&mut self, cl: &CoroutineLayout, coroutine: u64) -> bool {
        let Some(at) = (match cl.frame_object {
            true => self.frame_of(cl, coroutine).map(|f| f.wrapping_add(cl.frame_state)),
            false => Some(coroutine.wrapping_add(cl.frame_state)),
        }) else {
            return false;
        };
        let mut state = [0u8; 1];
        self.mem.read(at, &mut state).is_ok() && (state[0] as i8) < 0
    }

    /// The code object of `coroutine`'s frame, when it is one.
    fn code_of(&mut self, cl: &CoroutineLayout, coroutine: u64) -> Option<u64> {
        let frame = self.frame_of(cl, coroutine)?;
        let code = slot_object(self.read(frame.wrapping_add(cl.frame_code)), cl.stack_refs)?;
        let t = self.types.resolve(self.mem, self.read(code.wrapping_add(8)))?;
        (self.types.types[t].name == "code").then_some(code)
    }
}

#[cfg(test)]
mod tests {
    use super::slot_object;

    #[test]
    fn stack_refs_are_untagged_and_ints_and_nulls_are_no_objects() {
        assert_eq!(slot_object(0x7f00_1000, false), Some(0x7f00_1000));
        assert_eq!(slot_object(0, false), None);
        assert_eq!(slot_object(1, true), None);
        assert_eq!(slot_object(0x7f00_1001, true), Some(0x7f00_1000));
        assert_eq!(slot_object(0x2a << 2 | 3, true), None);
        assert_eq!(slot_object(0x7f00_1000, true), Some(0x7f00_1000));
    }
}
