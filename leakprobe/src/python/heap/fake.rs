//! A synthetic CPython heap in a byte buffer, laid out with a version's `Layout`, for tests that
//! need neither root nor an interpreter: a `_PyRuntime`, its interpreter's GC state, `type`,
//! a few types and tracked objects linked into generation lists.

use crate::python::{
    heap::{
        types::{DICT_SUBCLASS, HEAPTYPE, LIST_SUBCLASS, READY},
        Census, Invalid, TypeCount,
    },
    layout::{DictKeysLayout, Layout},
    layouts,
    memory::SliceMemory,
};

pub const BASE: u64 = 0x10_0000;

pub struct FakeHeap {
    pub layout: Layout,
    pub bytes: Vec<u8>,
    pub runtime: u64,
    pub type_type: u64,
    /// Generation heads, then the permanent one.
    pub heads: Vec<u64>,
}

/// The layout of 3.`minor` as a census uses it (3.13+ take their thread fields from the
/// interpreter; a fake one says 632 for `interpreters.head`).
pub fn layout(minor: u32) -> Layout {
    let tables = layouts::tables(minor).unwrap();
    let mut l = layouts::complete(12).unwrap();
    if let Some(complete) = layouts::complete(minor) {
        l = complete;
    } else {
        l.threads.runtime_interpreters_head = 632;
    }
    Layout { minor, heap: tables.heap(), objects: tables.objects(), ..l }
}

impl FakeHeap {
    /// An empty heap; `shift` moves the generations 4 bytes earlier (Debian's 3.13).
    pub fn new(minor: u32, shift: bool) -> Self {
        let layout = layout(minor);
        let mut h = FakeHeap { layout, bytes: vec![0; 0x1000], runtime: 0, type_type: 0, heads: vec![] };
        h.runtime = h.alloc(0x400);
        let interp = h.alloc(layout.heap.interp_gc + 0x200);
        h.put(h.runtime + layout.threads.runtime_interpreters_head, interp);
        let gc = &layout.heap.gc;
        let state = interp + layout.heap.interp_gc;
        let first = state + gc.generations - if shift { 4 } else { 0 };
        h.put(state + gc.generation0, first);
        h.put32(state + gc.enabled, 1);
        for i in 0..3 {
            let head = first + i * gc.generation_size;
            h.put32(head + gc.threshold, [700, 10, 10][i as usize]);
            h.put32(head + gc.count, 7 + i as u32);
            h.put(state + gc.stats + i * gc.stats_size, 100 - i);
            h.heads.push(head);
        }
        h.heads.push(state + gc.permanent);
        for head in h.heads.clone() {
            h.put(head, head);
            h.put(head + 8, head);
        }
        h.type_type = h.new_type("type", 0, 900, 40, false);
        h.put(h.type_type + 8, h.type_type);
        h
    }

    pub fn alloc(&mut self, size: u64) -> u64 {
        let at = (BASE + self.bytes.len() as u64 + 15) & !15;
        let end = (at - BASE + size) as usize;
        self.bytes.resize(end.max(self.bytes.len()), 0);
        at
    }

    pub fn put(&mut self, address: u64, value: u64) {
        let at = (address - BASE) as usize;
        self.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    pub fn put32(&mut self, address: u64, value: u32) {
        let at = (address - BASE) as usize;
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn c_string(&mut self, s: &str) -> u64 {
        let at = self.alloc(s.len() as u64 + 1);
        let start = (at - BASE) as usize;
        self.bytes[start..start + s.len()].copy_from_slice(s.as_bytes());
        at
    }

    /// A compact ASCII `str`.
    pub fn new_str(&mut self, s: &str) -> u64 {
        let l = self.layout.objects.str;
        let at = self.alloc(l.ascii_data + s.len() as u64 + 1);
        self.put(at, 1);
        self.put(at + l.length, s.len() as u64);
        self.put32(at + l.state, (1 << 2) | (1 << 5) | (1 << 6));
        let start = (at + l.ascii_data - BASE) as usize;
        self.bytes[start..start + s.len()].copy_from_slice(s.as_bytes());
        at
    }

    /// A type object (a heap type when `heap`, named by its `ht_qualname`).
    pub fn new_type(&mut self, name: &str, flags: u64, basicsize: u64, itemsize: u64, heap: bool) -> u64 {
        let t = self.layout.heap.types;
        let at = self.alloc(t.heap_qualname + 16);
        let name_ptr = self.c_string(if heap { "short" } else { name });
        self.put(at, 1);
        self.put(at + 8, self.type_type);
        self.put(at + t.name, name_ptr);
        self.put(at + t.basicsize, basicsize);
        self.put(at + t.itemsize, itemsize);
        self.put(at + t.flags, flags | READY | if heap { HEAPTYPE } else { 0 });
        if heap {
            let q = self.new_str(name);
            self.put(at + t.heap_qualname, q);
        }
        at
    }

    /// A tracked object of `size` bytes (after its GC head), appended to list `list`.
    pub fn new_object(&mut self, list: usize, ob_type: u64, size: u64) -> u64 {
        let node = self.alloc(16 + size.max(24));
        let head = self.heads[list];
        let tail = self.word(head + 8);
        self.put(node, head);
        self.put(node + 8, tail);
        self.put(tail, node);
        self.put(head + 8, node);
        self.put(node + 16, 1);
        self.put(node + 24, ob_type);
        node + 16
    }

    pub fn word(&self, address: u64) -> u64 {
        let at = (address - BASE) as usize;
        u64::from_le_bytes(self.bytes[at..at + 8].try_into().unwrap())
    }

    pub fn list_type(&mut self) -> u64 {
        self.new_type("list", LIST_SUBCLASS, 40, 0, false)
    }

    pub fn dict_type(&mut self) -> u64 {
        self.new_type("dict", DICT_SUBCLASS, 48, 0, false)
    }

    /// A list of `len` items in an array of `allocated` slots.
    pub fn new_list(&mut self, list_type: u64, len: u64, allocated: u64) -> u64 {
        let c = self.layout.heap.containers;
        let obj = self.new_object(0, list_type, 40);
        let items = self.alloc(allocated * 8 + 8);
        self.put(obj + c.var_size, len);
        self.put(obj + c.list_items, items);
        self.put(obj + c.list_allocated, allocated);
        obj
    }

    /// A combined dict of `used` entries whose keys table (8 slots, unicode keys) it owns;
    /// returns (dict, bytes of that table).
    pub fn new_dict(&mut self, dict_type: u64, used: u64) -> (u64, u64) {
        let c = self.layout.heap.containers;
        let obj = self.new_object(2, dict_type, 48);
        let keys = self.alloc(0x200);
        self.put(obj + c.dict_used, used);
        self.put(obj + c.dict_keys, keys);
        let table = match c.keys {
            DictKeysLayout::Sized { refcnt, size, nentries, indices, entry_size } => {
                self.put(keys + refcnt, 1);
                self.put(keys + size, 8);
                self.put(keys + nentries, used);
                indices + 8 + 5 * entry_size
            }
            DictKeysLayout::Log2 {
                refcnt,
                log2_size,
                log2_index_bytes,
                kind,
                nentries,
                indices,
                unicode_entry_size,
                ..
            } => {
                self.put(keys + refcnt, 1);
                let at = (keys - BASE) as usize;
                self.bytes[at + log2_size as usize] = 3;
                self.bytes[at + log2_index_bytes as usize] = 3;
                self.bytes[at + kind as usize] = 1;
                self.put(keys + nentries, used);
                indices + 8 + 5 * unicode_entry_size
            }
        };
        (obj, table)
    }

    pub fn memory(&self) -> SliceMemory<'_> {
        SliceMemory { base: BASE, bytes: &self.bytes }
    }
}

/// A census result of these (name, count) types, 64 bytes an object (for renderers and growth).
pub fn census_of(types: &[(&str, u64)]) -> Census {
    Census {
        types: types.iter().map(|(n, c)| TypeCount { name: n.to_string(), count: *c, bytes: c * 64 }).collect(),
        objects: types.iter().map(|t| t.1).sum(),
        bytes: types.iter().map(|t| t.1 * 64).sum(),
        lists: vec![],
        gc: None,
        bounds_hit: None,
        holders: vec![],
        holders_truncated: false,
        invalid: Invalid::default(),
        asyncio_tasks: None,
        bytes_read: 0,
        reads: 0,
        elapsed_secs: 0.0,
        lengths_only: false,
    }
}
