//! An instance's attributes read without touching it (reading `obj.__dict__` from Python would
//! create the dict): its own dict when it has one, else its values against the keys its class
//! shares, for each version's way of keeping them (python-heap.md §7).

use super::{dicts, types::TypeInfo};
use crate::python::{
    layout::{InstanceDict, Layout},
    memory::ReadMemory,
};

/// `Py_TPFLAGS_MANAGED_DICT` (3.11+) and `Py_TPFLAGS_INLINE_VALUES` (3.13+).
const MANAGED_DICT: u64 = 1 << 4;
const INLINE_VALUES: u64 = 1 << 2;

/// Where an instance's attributes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attributes {
    /// A dict object (the instance's `__dict__`).
    Dict(u64),
    /// Values in an array, keyed by the class's shared keys object.
    Split { keys: u64, values: u64 },
}

fn read(mem: &impl ReadMemory, address: u64) -> u64 {
    mem.read_u64(address).unwrap_or(0)
}

/// Where the attributes of `object` (of type `info`) are, if it has any.
pub fn locate(mem: &impl ReadMemory, layout: &Layout, info: &TypeInfo, object: u64) -> Option<Attributes> {
    let t = &layout.heap.types;
    let split = |values: u64| -> Option<Attributes> {
        let keys = read(mem, info.address.wrapping_add(t.cached_keys));
        (keys != 0 && values != 0)
            .then_some(Attributes::Split { keys, values: values.wrapping_add(layout.heap.containers.split_values) })
    };
    let dict = |d: u64| (d != 0).then_some(Attributes::Dict(d));
    if info.flags & MANAGED_DICT == 0 || layout.heap.instance_dict == InstanceDict::Offset {
        // A fixed `tp_dictoffset` (var-sized objects count theirs from the end: not followed).
        let offset = read(mem, info.address.wrapping_add(t.dictoffset)) as i64;
        return if offset > 0 { dict(read(mem, object.wrapping_add(offset as u64))) } else { None };
    }
    match layout.heap.instance_dict {
        InstanceDict::Offset => None,
        InstanceDict::Managed { dict: d, values } => dict(read(mem, object.wrapping_add_signed(d)))
            .or_else(|| split(read(mem, object.wrapping_add_signed(values)))),
        InstanceDict::Tagged { dict_or_values } => {
            let word = read(mem, object.wrapping_add_signed(dict_or_values));
            if word & 1 != 0 {
                split(word.wrapping_add(1))
            } else {
                dict(word)
            }
        }
        InstanceDict::Inline { dict: d, valid } => dict(read(mem, object.wrapping_add_signed(d))).or_else(|| {
            if info.flags & INLINE_VALUES == 0 {
                return None;
            }
            let values = object.wrapping_add(info.basicsize);
            let mut byte = [0u8; 1];
            mem.read(values.wrapping_add(valid), &mut byte).ok()?;
            if byte[0] == 0 {
                return None;
            }
            let keys = read(mem, info.address.wrapping_add(t.cached_keys));
            (keys != 0)
                .then_some(Attributes::Split { keys, values: values.wrapping_add(layout.heap.containers.split_values) })
        }),
    }
}

/// The (name, value) pointers of the attributes at `attributes`, at most `max`.
pub fn items(mem: &impl ReadMemory, layout: &Layout, attributes: Attributes, max: u64) -> Vec<(u64, u64)> {
    let c = &layout.heap.containers;
    match attributes {
        Attributes::Dict(d) => dicts::dict_items(mem, c, d, max),
        Attributes::Split { keys, values } => dicts::table_items(mem, c, keys, Some(values), max),
    }
    .unwrap_or_default()
}
