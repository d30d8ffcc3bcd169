//! Decoding dicts from outside: a keys table's header (its size in bytes, where its entries
//! are, whether it is shared) and a dict's live (key, value) pairs, combined or split, for
//! every layout of 3.10–3.14 (python-heap.md §6). Every count is checked against the others
//! (`ma_used` against the live entries): a dict that changed under the read yields None.

use crate::python::{
    layout::{ContainerLayout, DictKeysLayout},
    memory::{read_large, ReadMemory},
};

/// More slots than this is garbage.
const MAX_SLOTS: u64 = 1 << 32;

/// What a keys object's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysTable {
    /// The whole keys object, as `sys.getsizeof` counts it.
    pub bytes: u64,
    /// Entries used so far (live and deleted).
    pub nentries: u64,
    pub refcnt: u64,
    /// Where the entries start, from the keys object.
    pub entries: u64,
    pub entry_size: u64,
    /// Where key and value sit in an entry (a 24-byte entry starts with the hash).
    pub key_at: u64,
    pub value_at: u64,
}

fn word(bytes: &[u8], at: u64) -> u64 {
    let at = at as usize;
    bytes.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// `USABLE_FRACTION`: entries a table of `slots` slots holds.
fn usable(slots: u64) -> u64 {
    (slots << 1) / 3
}

/// Bytes of a keys object's header to read for `parse_keys`.
pub fn header_len(keys: &DictKeysLayout) -> usize {
    match *keys {
        DictKeysLayout::Sized { indices, .. } | DictKeysLayout::Log2 { indices, .. } => indices as usize,
    }
}

/// The keys object whose header is `header`, if it is sane.
pub fn parse_keys(keys: &DictKeysLayout, header: &[u8]) -> Option<KeysTable> {
    let (slots, index_bytes, entry_size, n, refcnt) = match *keys {
        DictKeysLayout::Sized { refcnt, size, nentries, entry_size, .. } => {
            let slots = word(header, size);
            // `Py_EMPTY_KEYS`, shared by every empty dict, has a single slot.
            if !(1..=MAX_SLOTS).contains(&slots) || !slots.is_power_of_two() {
                return None;
            }
            let width = match slots {
                s if s <= 0xff => 1,
                s if s <= 0xffff => 2,
                s if s <= 0xffff_ffff => 4,
                _ => 8,
            };
            (slots, slots * width, entry_size, word(header, nentries), word(header, refcnt))
        }
        DictKeysLayout::Log2 {
            refcnt,
            log2_size,
            log2_index_bytes,
            kind,
            nentries,
            entry_size,
            unicode_entry_size,
            ..
        } => {
            let byte = |at: u64| u64::from(header.get(at as usize).copied().unwrap_or(0xff));
            let (log2, log2_index, kind) = (byte(log2_size), byte(log2_index_bytes), byte(kind));
            // `Py_EMPTY_KEYS`, shared by every empty dict, has log2 sizes of 0.
            if log2 > 32 || !(log2..=log2 + 3).contains(&log2_index) || kind > 2 {
                return None;
            }
            let entry = if kind == 0 { entry_size } else { unicode_entry_size };
            (1 << log2, 1 << log2_index, entry, word(header, nentries), word(header, refcnt))
        }
    };
    if n > usable(slots) {
        return None;
    }
    let entries = header_len(keys) as u64 + index_bytes;
    let key_at = if entry_size == 24 { 8 } else { 0 };
    Some(KeysTable {
        bytes: entries + usable(slots) * entry_size,
        nentries: n,
        refcnt,
        entries,
        entry_size,
        key_at,
        value_at: key_at + 8,
    })
}

/// A dict's header: (`ma_used`, `ma_keys`, `ma_values`).
pub fn read_dict_header(mem: &impl ReadMemory, c: &ContainerLayout, dict: u64) -> Option<(u64, u64, u64)> {
    let end = c.dict_used.max(c.dict_keys).max(c.dict_values) + 8;
    let bytes = mem.read_vec(dict, end as usize).ok()?;
    Some((word(&bytes, c.dict_used), word(&bytes, c.dict_keys), word(&bytes, c.dict_values)))
}

/// The live (key, value) pairs of the dict at `dict`, in entry order; None when it has more than
/// `max` entries or does not validate.
pub fn dict_items(mem: &impl ReadMemory, c: &ContainerLayout, dict: u64, max: u64) -> Option<Vec<(u64, u64)>> {
    let (items, used) = items_and_count(mem, c, dict, max)?;
    (items.len() as u64 == used).then_some(items)
}

/// The pairs found in the dict's table, and the count its header says it has.
fn items_and_count(mem: &impl ReadMemory, c: &ContainerLayout, dict: u64, max: u64) -> Option<(Vec<(u64, u64)>, u64)> {
    let (used, keys, values) = read_dict_header(mem, c, dict)?;
    if keys == 0 || used > max {
        return None;
    }
    let values = (values != 0).then(|| values.wrapping_add(c.split_values));
    Some((table_items(mem, c, keys, values, max)?, used))
}

/// As `dict_items`, for a dict that may be changing while it is read: a dict that keeps growing
/// under load gains entries between the read of its header and the read of its entries (measured:
/// a 25k-entry dict gaining 500 a second was never read exactly, so nothing it held was
/// counted). A count off by a little is a moving dict, not garbage; each item still has to
/// validate as an object before it is counted.
pub fn dict_items_moving(mem: &impl ReadMemory, c: &ContainerLayout, dict: u64, max: u64) -> Option<Vec<(u64, u64)>> {
    let (items, used) = items_and_count(mem, c, dict, max)?;
    let slack = 64 + used / 8;
    (items.len() as u64).abs_diff(used).le(&slack).then_some(items)
}

/// The live pairs of the keys object at `keys`: values from its entries, or from the array at
/// `split_values` (split tables: instance attributes, keyed by their class's shared keys).
pub fn table_items(
    mem: &impl ReadMemory,
    c: &ContainerLayout,
    keys: u64,
    split_values: Option<u64>,
    max: u64,
) -> Option<Vec<(u64, u64)>> {
    let header = mem.read_vec(keys, header_len(&c.keys)).ok()?;
    let table = parse_keys(&c.keys, &header)?;
    if table.nentries > max {
        return None;
    }
    let n = table.nentries as usize;
    let span = n.checked_mul(table.entry_size as usize)?;
    let entries = read_large(mem, keys.checked_add(table.entries)?, span).ok()?;
    let split = match split_values {
        Some(values) => Some(read_large(mem, values, n * 8).ok()?),
        None => None,
    };
    let mut items = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let entry = i * table.entry_size;
        let key = word(&entries, entry + table.key_at);
        let value = match &split {
            Some(v) => word(v, i * 8),
            None => word(&entries, entry + table.value_at),
        };
        if key != 0 && value != 0 {
            items.push((key, value));
        }
    }
    Some(items)
}
