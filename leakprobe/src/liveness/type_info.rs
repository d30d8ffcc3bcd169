//! What a type object says about the size of its instances, to tell the object a block was
//! allocated for from one that reused it.

use crate::python::{layout::ObjectLayout, memory::ReadMemory};

/// What a type says about the size of its instances (`PyTypeObject`'s layout is the same in
/// every supported version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TypeInfo {
    basicsize: u64,
    itemsize: u64,
    flags: u64,
    /// A built-in type whose objects the interpreter recycles through a free list of its own.
    pub(super) recycled: bool,
}

pub(super) const TP_NAME: u64 = 24;
pub(super) const TP_BASICSIZE: u64 = 32;
pub(super) const TP_FLAGS: u64 = 168;
pub(super) const TPFLAGS_LONG_SUBCLASS: u64 = 1 << 24;
pub(super) const TPFLAGS_UNICODE_SUBCLASS: u64 = 1 << 28;
/// Classes defined in Python (and heap types from C): never on the interpreter's free lists.
const TPFLAGS_HEAPTYPE: u64 = 1 << 9;

impl TypeInfo {
    /// `recycled`: the names of the built-in types the interpreter keeps free lists of.
    pub(super) fn read(mem: &impl ReadMemory, address: u64, recycled: &[&str]) -> Option<TypeInfo> {
        let basicsize = mem.read_u64(address + TP_BASICSIZE).ok()?;
        let itemsize = mem.read_u64(address + TP_BASICSIZE + 8).ok()?;
        let flags = mem.read_u64(address + TP_FLAGS).ok()?;
        let recycled = flags & TPFLAGS_HEAPTYPE == 0 && {
            let mut name = [0u8; 32];
            let read = mem.read_u64(address + TP_NAME).ok().is_some_and(|at| mem.read(at, &mut name).is_ok());
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            read && recycled.iter().any(|r| r.as_bytes() == name)
        };
        (basicsize >= 16 && basicsize < 1 << 20 && itemsize < 1 << 16).then_some(TypeInfo {
            basicsize,
            itemsize,
            flags,
            recycled,
        })
    }

    /// Whether an object of this type with header and body `object` needs exactly `size` bytes,
    /// the way CPython sizes it: compact `str`, `int` digits, var-sized objects, fixed ones.
    pub(super) fn sizes_match(&self, object: &[u8], size: u64, layout: &ObjectLayout) -> bool {
        let word = |i: usize| object.get(i..i + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        if self.flags & TPFLAGS_UNICODE_SUBCLASS != 0 && self.basicsize >= 40 {
            let (Some(length), Some(state)) = (word(layout.str.length as usize), word(layout.str.state as usize))
            else {
                return false;
            };
            let state = state as u32;
            let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
            if compact == 0 || !matches!(kind, 1 | 2 | 4) {
                return false;
            }
            let header = if ascii == 1 { layout.str.ascii_data } else { layout.str.compact_data };
            return length.checked_add(1).and_then(|n| n.checked_mul(kind as u64)).map(|n| n + header) == Some(size);
        }
        if self.flags & TPFLAGS_LONG_SUBCLASS != 0 && self.itemsize > 0 {
            let Some(tag) = word(layout.int.size as usize) else { return false };
            let digits = layout.int.digit_count(tag);
            return layout.int.digits + self.itemsize * digits.max(1) == size;
        }
        if self.itemsize == 0 {
            return self.basicsize == size;
        }
        let Some(items) = word(16).map(|n| (n as i64).unsigned_abs()) else { return false };
        let raw = items.checked_mul(self.itemsize).and_then(|n| n.checked_add(self.basicsize));
        raw.is_some_and(|raw| size == raw || size == raw.div_ceil(8) * 8)
    }
}
