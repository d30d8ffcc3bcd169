//! Which containers hold the heap: from `sys.modules` (every module's dict, and the dicts of the
//! classes defined there), each list, dict, set or deque reached gets a path (`module.name`,
//! `module.Class.attr`, `module.obj.attr`), its length, and the objects first reached through
//! it (what it retains, through lists, tuples, dicts, sets and instance attributes).
//! Bounded by the objects visited and by a deadline; shared objects count for the first holder
//! that reaches them.

use std::{
    collections::{HashSet, VecDeque},
    time::Instant,
};

use serde::{Deserialize, Serialize};

use super::{
    dicts, instances,
    types::{Kind, TypeTable, HAVE_GC},
};
use crate::python::{
    layout::Layout,
    memory::{read_large, ReadMemory},
    objects::read_str,
};

/// Entries read of one container while walking it; more are left out (and the walk says so).
const MAX_ITEMS: u64 = 1 << 20;
/// Modules, and attributes per namespace, looked at.
const MAX_NAMES: u64 = 1 << 16;
/// Dicts of at most this many entries have their container values named (`d['key']`), this
/// deep, for keys of at most this many characters.
const MAX_NESTED_KEYS: u64 = 64;
const MAX_NESTING: u32 = 3;
const MAX_KEY_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// `module.name` or `module.Class.attr`; names come from the target (untrusted).
    pub path: String,
    /// The container's type.
    pub type_name: String,
    /// `len()` of the container.
    pub length: u64,
    /// Objects first reached through it, itself included.
    pub retained_objects: u64,
    pub retained_bytes: u64,
}

/// What stops a holder search.
#[derive(Debug, Clone, Copy)]
pub struct HolderBounds {
    pub max_objects: u64,
    pub deadline: Instant,
    /// Holders kept (the most retaining).
    pub max_holders: usize,
}

pub struct HolderSearch<'t, 'l, M: ReadMemory> {
    mem: &'t M,
    layout: &'l Layout,
    types: &'t mut TypeTable<'l>,
    bounds: HolderBounds,
    visited: HashSet<u64>,
    /// Whether a bound cut the search short.
    pub truncated: bool,
}

fn word(bytes: &[u8], at: u64) -> u64 {
    let at = at as usize;
    bytes.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// Attribute names that are the interpreter's plumbing, not the program's state.
fn is_dunder(name: &str) -> bool {
    name.len() > 4 && name.starts_with("__") && name.ends_with("__")
}

impl<'t, 'l, M: ReadMemory> HolderSearch<'t, 'l, M> {
    pub fn new(mem: &'t M, layout: &'l Layout, types: &'t mut TypeTable<'l>, bounds: HolderBounds) -> Self {
        HolderSearch { mem, layout, types, bounds, visited: HashSet::new(), truncated: false }
    }

    fn out_of_bounds(&mut self) -> bool {
        if self.visited.len() as u64 >= self.bounds.max_objects || Instant::now() >= self.bounds.deadline {
            self.truncated = true;
        }
        self.truncated
    }

    /// (name, value) of a dict whose keys are strs (a namespace), bounded.
    fn names(&mut self, dict: u64) -> Vec<(String, u64)> {
        let items = dicts::dict_items(self.mem, &self.layout.heap.containers, dict, MAX_NAMES).unwrap_or_default();
        items.into_iter().filter_map(|(k, v)| Some((read_str(self.mem, &self.layout.objects.str, k)?, v))).collect()
    }

    /// Every holder reached from the modules of `sys.modules` (the dict at `modules`).
    pub fn from_modules(&mut self, modules: u64) -> Vec<Holder> {
        let mut modules = self.names(modules);
        // `__main__` first: what the program itself keeps is named after it.
        modules.sort_by(|a, b| (a.0 != "__main__", &a.0).cmp(&(b.0 != "__main__", &b.0)));
        let mut holders = Vec::new();
        let mut classes_seen = HashSet::new();
        for (module_name, module) in modules {
            if self.out_of_bounds() {
                break;
            }
            let Some(t) = self.types.resolve(self.mem, self.read(module + 8)) else { continue };
            if self.types.types[t].kind != Kind::Module {
                continue;
            }
            let md_dict = self.read(module + self.layout.heap.module_dict);
            for (attr, value) in self.names(md_dict) {
                if is_dunder(&attr) {
                    continue;
                }
                let Some(t) = self.types.resolve(self.mem, self.read(value + 8)) else { continue };
                let path = format!("{module_name}.{attr}");
                if self.types.types[t].kind == Kind::Type {
                    // A class: its attributes, once (a class imported elsewhere is the same one).
                    let flags = self.read(value + self.layout.heap.types.flags);
                    if flags & super::types::HEAPTYPE != 0 && classes_seen.insert(value) {
                        let tp_dict = self.read(value + self.layout.heap.types.dict);
                        for (class_attr, v) in self.names(tp_dict) {
                            if !is_dunder(&class_attr) {
                                holders.extend(self.holder(format!("{path}.{class_attr}"), v));
                            }
                        }
                    }
                    continue;
                }
                if self.types.types[t].flags & super::types::HEAPTYPE != 0 && self.types.types[t].kind == Kind::Other {
                    // An instance of a class: its attributes (`module.obj.attr`).
                    let info = &self.types.types[t];
                    if let Some(at) = instances::locate(self.mem, self.layout, info, value) {
                        for (name, v) in instances::items(self.mem, self.layout, at, MAX_NAMES) {
                            if let Some(attr) = read_str(self.mem, &self.layout.objects.str, name) {
                                holders.extend(self.holder(format!("{path}.{attr}"), v));
                            }
                        }
                    }
                    continue;
                }
                holders.extend(self.holder(path, value));
            }
        }
        holders.sort_by(|a, b| b.retained_bytes.cmp(&a.retained_bytes).then(a.path.cmp(&b.path)));
        holders.truncate(self.bounds.max_holders);
        holders
    }

    fn read(&self, address: u64) -> u64 {
        self.mem.read_u64(address).unwrap_or(0)
    }

    /// `object` as a holder, when it is a container not already reached by another path; a
    /// small dict's container values first, as holders of their own (`path['key']`), so that what
    /// grows inside `subs['updates']` is named there rather than only as more retained by `subs`.
    fn holder(&mut self, path: String, object: u64) -> Vec<Holder> {
        self.nested_holder(path, object, 0)
    }

    fn nested_holder(&mut self, path: String, object: u64, depth: u32) -> Vec<Holder> {
        let Some(t) = self.types.resolve(self.mem, self.read(object + 8)) else { return Vec::new() };
        let (kind, type_name) = (self.types.types[t].kind, self.types.types[t].name.clone());
        if !matches!(kind, Kind::List | Kind::Dict | Kind::Set | Kind::Deque) || self.visited.contains(&object) {
            return Vec::new();
        }
        let mut holders = Vec::new();
        if kind == Kind::Dict && depth < MAX_NESTING {
            let c = &self.layout.heap.containers;
            for (key, value) in dicts::dict_items(self.mem, c, object, MAX_NESTED_KEYS).unwrap_or_default() {
                if let Some(key) =
                    read_str(self.mem, &self.layout.objects.str, key).filter(|k| k.len() <= MAX_KEY_CHARS)
                {
                    holders.extend(self.nested_holder(format!("{path}['{key}']"), value, depth + 1));
                }
            }
        }
        let length = self.length(object, kind);
        let (retained_objects, retained_bytes) = self.retain(object);
        holders.push(Holder { path, type_name, length, retained_objects, retained_bytes });
        holders
    }

    fn length(&self, object: u64, kind: Kind) -> u64 {
        let c = &self.layout.heap.containers;
        match kind {
            Kind::Dict => self.read(object + c.dict_used),
            Kind::Set => self.read(object + c.set_used),
            _ => self.read(object + c.var_size),
        }
    }

    /// Objects (and their bytes) first reached from `root`, breadth first.
    fn retain(&mut self, root: u64) -> (u64, u64) {
        let (mut objects, mut bytes) = (0, 0);
        let mut queue = VecDeque::from([root]);
        while let Some(object) = queue.pop_front() {
            if self.out_of_bounds() {
                break;
            }
            if object == 0 || !self.visited.insert(object) {
                continue;
            }
            let Some(size) = self.visit(object, &mut queue) else { continue };
            objects += 1;
            bytes += size;
        }
        (objects, bytes)
    }

    /// The bytes of `object`, queueing what it refers to (for the containers walked).
    fn visit(&mut self, object: u64, queue: &mut VecDeque<u64>) -> Option<u64> {
        let header = self.mem.read_vec(object, 24).ok()?;
        // Immortal objects (None, small ints, interned strs) belong to no holder.
        if self.layout.heap.immortal_refcounts && (word(&header, 0) as u32 as i32) < 0 {
            return None;
        }
        let t = self.types.resolve(self.mem, word(&header, 8))?;
        let info = &self.types.types[t];
        let c = &self.layout.heap.containers;
        let gc = &self.layout.heap.gc;
        let ob_size = word(&header, 16);
        let mut size = info.basicsize;
        if info.flags & HAVE_GC != 0 {
            size += gc.head_size + if info.flags & gc.preheader_flags != 0 { gc.preheader_size } else { 0 };
        }
        if info.itemsize > 0 {
            let items = if info.kind == Kind::Int {
                self.layout.objects.int.digit_count(ob_size)
            } else {
                (ob_size as i64).unsigned_abs()
            };
            size += items.min(MAX_ITEMS) * info.itemsize;
        }
        match info.kind {
            Kind::List => {
                let allocated = self.read(object + c.list_allocated);
                if ob_size <= allocated && allocated <= MAX_ITEMS {
                    size += allocated * 8;
                    self.queue_pointers(self.read(object + c.list_items), ob_size, queue);
                }
            }
            Kind::Tuple => self.queue_pointers(object + c.tuple_items, ob_size, queue),
            Kind::Dict => {
                if let Some((_, keys, _)) = dicts::read_dict_header(self.mem, c, object) {
                    if let Some(table) = self
                        .mem
                        .read_vec(keys, dicts::header_len(&c.keys))
                        .ok()
                        .and_then(|h| dicts::parse_keys(&c.keys, &h))
                    {
                        if table.refcnt == 1 {
                            size += table.bytes;
                        }
                    }
                }
                for (k, v) in dicts::dict_items(self.mem, c, object, MAX_ITEMS).unwrap_or_default() {
                    queue.push_back(k);
                    queue.push_back(v);
                }
            }
            Kind::Set => {
                let (mask, table) = (self.read(object + c.set_mask), self.read(object + c.set_table));
                if mask < MAX_ITEMS && (mask + 1).is_power_of_two() {
                    // A table of more than 8 entries is its own block (the small one is inline).
                    if table != object + c.set_table + 24 {
                        size += (mask + 1) * 16;
                    }
                    if let Ok(entries) = read_large(self.mem, table, ((mask + 1) * 16) as usize) {
                        queue.extend(entries.chunks_exact(16).map(|e| word(e, 0)).filter(|k| *k != 0));
                    }
                }
            }
            Kind::Deque => size += self.queue_deque(object, ob_size, queue),
            Kind::Other if info.flags & super::types::HEAPTYPE != 0 => {
                // An instance: what its attributes hold (its own dict, when it has one, too).
                match instances::locate(self.mem, self.layout, info, object) {
                    Some(instances::Attributes::Dict(d)) => queue.push_back(d),
                    Some(at) => {
                        queue.extend(instances::items(self.mem, self.layout, at, MAX_ITEMS).into_iter().map(|(_, v)| v))
                    }
                    None => {}
                }
            }
            _ => {}
        }
        Some(size)
    }

    /// Queues the `len` items of the deque at `object`, block by block; returns the blocks' bytes.
    fn queue_deque(&self, object: u64, len: u64, queue: &mut VecDeque<u64>) -> u64 {
        let d = &self.layout.heap.containers.deque;
        let (mut block, mut index) = (self.read(object + d.left_block), self.read(object + d.left_index));
        let block_len = (d.block_right + 8) as usize;
        let (mut left, mut bytes) = (len.min(MAX_ITEMS), 0);
        while left > 0 && block != 0 && index < d.block_items {
            let Ok(b) = self.mem.read_vec(block, block_len) else { break };
            bytes += block_len as u64;
            while index < d.block_items && left > 0 {
                queue.push_back(word(&b, d.block_data + index * 8));
                (index, left) = (index + 1, left - 1);
            }
            (block, index) = (word(&b, d.block_right), 0);
        }
        bytes
    }

    fn queue_pointers(&self, items: u64, n: u64, queue: &mut VecDeque<u64>) {
        if n == 0 || n > MAX_ITEMS || items == 0 {
            return;
        }
        if let Ok(bytes) = read_large(self.mem, items, (n * 8) as usize) {
            queue.extend(bytes.chunks_exact(8).map(|p| word(p, 0)).filter(|p| *p != 0));
        }
    }
}
