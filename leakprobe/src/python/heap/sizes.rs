//! How many bytes an object holds: its own block (`tp_basicsize + tp_itemsize * ob_size`, plus
//! the GC head and pre-header in front of it), and for lists and dicts the buffers they own out
//! of line (the item array; the keys table unless shared, and split values), as
//! `sys.getsizeof` counts them. Buffers are read in batches after the walk.

use super::{
    dicts,
    types::{Kind, TypeInfo},
    walk::Node,
};
use crate::python::{layout::Layout, memory::ReadMemory};

/// Ranges per batched read.
const BATCH: usize = 1024;
/// More items or slots than this is garbage.
const MAX_ITEMS: u64 = 1 << 32;

/// The object's block and the headers in front of it.
pub fn own_size(layout: &Layout, info: &TypeInfo, node: &Node) -> u64 {
    let gc = &layout.heap.gc;
    let mut size = info.basicsize + gc.head_size;
    if info.flags & gc.preheader_flags != 0 {
        size += gc.preheader_size;
    }
    if info.itemsize > 0 {
        if let Some(word) = node.size_word {
            let items = match info.kind {
                Kind::Int => layout.objects.int.digit_count(word),
                _ => (word as i64).unsigned_abs(),
            };
            if items <= MAX_ITEMS {
                size += items * info.itemsize;
            }
        }
    }
    size
}

/// A list or dict whose buffers are still to be read.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub object: u64,
    pub kind: Kind,
    /// Where its bytes go (the caller's type index).
    pub type_index: usize,
}

fn word(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// Reads `ranges` in batches; `each(i, bytes)` gets the bytes of range `i`, or None.
fn read_batched(mem: &impl ReadMemory, ranges: &[(u64, usize)], mut each: impl FnMut(usize, Option<&[u8]>)) {
    for (chunk_index, chunk) in ranges.chunks(BATCH).enumerate() {
        let total: usize = chunk.iter().map(|r| r.1).sum();
        let mut out = vec![0u8; total];
        let ok = mem.read_batch(chunk, &mut out);
        let mut at = 0;
        for (i, &(_, len)) in chunk.iter().enumerate() {
            each(chunk_index * BATCH + i, ok.get(i).copied().unwrap_or(false).then(|| &out[at..at + len]));
            at += len;
        }
    }
}

/// Out-of-line bytes of every pending container (0 for those that did not validate), and how
/// many did not.
pub fn out_of_line(mem: &impl ReadMemory, layout: &Layout, pending: &[Pending]) -> (Vec<u64>, u64) {
    let c = &layout.heap.containers;
    let base = c.var_size.min(c.dict_used);
    let span = ([c.var_size, c.list_items, c.list_allocated, c.dict_used, c.dict_keys, c.dict_values]
        .into_iter()
        .max()
        .unwrap_or(0)
        + 8
        - base) as usize;
    let at = |offset: u64| (offset - base) as usize;
    let ranges: Vec<(u64, usize)> = pending.iter().map(|p| (p.object.wrapping_add(base), span)).collect();
    let mut extra = vec![0u64; pending.len()];
    let mut invalid = 0u64;
    // (pending index, keys address, values address, ma_used) of the dicts.
    let mut dicts = Vec::new();
    read_batched(mem, &ranges, |i, bytes| {
        let Some(bytes) = bytes else {
            invalid += 1;
            return;
        };
        match pending[i].kind {
            Kind::List => {
                let (size, items, allocated) =
                    (word(bytes, at(c.var_size)), word(bytes, at(c.list_items)), word(bytes, at(c.list_allocated)));
                if size <= allocated && allocated <= MAX_ITEMS && (allocated == 0 || items != 0) {
                    extra[i] = allocated * 8;
                } else {
                    invalid += 1;
                }
            }
            Kind::Dict => {
                let (used, keys, values) =
                    (word(bytes, at(c.dict_used)), word(bytes, at(c.dict_keys)), word(bytes, at(c.dict_values)));
                if keys != 0 && used <= MAX_ITEMS {
                    dicts.push((i, keys, values, used));
                } else {
                    invalid += 1;
                }
            }
            _ => {}
        }
    });
    let header_len = dicts::header_len(&c.keys);
    let ranges: Vec<(u64, usize)> = dicts.iter().map(|d| (d.1, header_len)).collect();
    read_batched(mem, &ranges, |j, bytes| {
        let (i, _, values, used) = dicts[j];
        match bytes.and_then(|b| dicts::parse_keys(&c.keys, b)) {
            Some(table) if used <= table.nentries => {
                // A table shared by the instances of a class (split) is not this dict's.
                if table.refcnt == 1 {
                    extra[i] += table.bytes;
                }
                // Split values are a separate block up to 3.12; from 3.13 an instance's values
                // are inline in the instance itself (python-heap.md §6.3, §7).
                if values != 0 && layout.minor <= 12 {
                    extra[i] += table.nentries * 8;
                }
            }
            _ => invalid += 1,
        }
    });
    (extra, invalid)
}
