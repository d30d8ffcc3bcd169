//! What a holder retains: the objects first reached from it (depth first), with their bytes.
//! An object's size comes from its type (`tp_basicsize`, `tp_itemsize`, the GC head and
//! pre-header) plus its out-of-line buffers (list item arrays, dict key tables, set tables, deque
//! blocks, bytearray buffers); the references followed are the ones that keep memory alive:
//! container items, instance attributes (dict, split values, `__slots__`), functions' defaults
//! and closures, cells, bound methods' `self` and function, and `lru_cache` dicts. Weak
//! references are not followed (a weak reference keeps nothing alive); neither are functions'
//! globals (the module's, named on their own), code, or an asyncio event loop's attributes (its
//! timers keep the pending tasks, judged on their own).

use std::collections::VecDeque;

use super::{
    dicts,
    holders::HolderSearch,
    instances,
    types::{Kind, TypeInfo, HAVE_GC, HEAPTYPE},
};
use crate::python::memory::{read_large, ReadMemory, MAX_LARGE_READ, MAX_READ};

/// Entries read of one container while walking it: as many as one `read_large` holds (a list's
/// 8M item pointers; a dict's key table of 64 MiB, some 2.8M entries). A bigger length is garbage,
/// or a container the census cannot walk (its own bytes are still counted). Once 1M: a list of
/// 2.2M orders, the biggest holder of a 1 GB heap, retained nothing and was not listed.
const MAX_ITEMS: u64 = (MAX_LARGE_READ / 8) as u64;
/// `__slots__` read per class.
const MAX_SLOTS: usize = 256;

fn word(bytes: &[u8], at: u64) -> u64 {
    let at = at as usize;
    bytes.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

impl<M: ReadMemory> HolderSearch<'_, '_, M> {
    /// Objects (and their bytes) first reached from `root`, depth first: the frontier of a walk
    /// through a list of 2.2M orders stays near its length (breadth first it held their dicts and
    /// attributes too; 198 MB peak RSS for a 1 GB heap).
    pub(super) fn retain(&mut self, root: u64) -> (u64, u64) {
        let (mut objects, mut bytes) = (0, 0);
        let mut queue = VecDeque::from([root]);
        while let Some(object) = queue.pop_back() {
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

    /// The bytes of `object`, queueing what it refers to (for the kinds followed).
    fn visit(&mut self, object: u64, queue: &mut VecDeque<u64>) -> Option<u64> {
        let header = self.mem.read_vec(object, 24).ok()?;
        // Immortal objects (None, small ints, interned strs) belong to no holder.
        if self.layout.heap.immortal_refcounts && (word(&header, 0) as u32 as i32) < 0 {
            return None;
        }
        let t = self.types.resolve(self.mem, word(&header, 8))?;
        let info = self.types.types[t].clone();
        let c = &self.layout.heap.containers;
        let r = &self.layout.heap.refs;
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
                if ob_size <= allocated && allocated < 1 << 32 {
                    // Its item array's bytes, also when it is too long to walk.
                    size += allocated * 8;
                    if allocated <= MAX_ITEMS {
                        self.queue_pointers(self.read(object + c.list_items), ob_size, queue);
                    }
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
                for (k, v) in dicts::dict_items_moving(self.mem, c, object, MAX_ITEMS).unwrap_or_default() {
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
            Kind::ByteArray => {
                // Its buffer: `ob_alloc` bytes, at least its length (0 for an empty one).
                let allocated = self.read(object + c.bytearray_alloc);
                if ob_size <= allocated && allocated < 1 << 40 {
                    size += allocated;
                }
            }
            Kind::Function => {
                queue.extend([r.func_defaults, r.func_kwdefaults, r.func_closure].map(|at| self.read(object + at)));
            }
            Kind::Cell => queue.push_back(self.read(object + r.cell_ref)),
            Kind::Method => queue.extend([r.method_self, r.method_func].map(|at| self.read(object + at))),
            Kind::LruCache => queue.push_back(self.read(object + r.lru_cache_dict)),
            // An asyncio event loop, reached from a connection's or a queue's `_loop`: what its
            // timers and ready queue keep is the pending tasks', not this holder's.
            Kind::Other if info.flags & HEAPTYPE != 0 && info.name.ends_with("EventLoop") => {}
            Kind::Other if info.flags & HEAPTYPE != 0 => {
                // An instance: what its attributes hold (its own dict, when it has one, too).
                match instances::locate(self.mem, self.layout, &info, object) {
                    Some(instances::Attributes::Dict(d)) => queue.push_back(d),
                    Some(at) => {
                        queue.extend(instances::items(self.mem, self.layout, at, MAX_ITEMS).into_iter().map(|(_, v)| v))
                    }
                    None => {}
                }
                for (_, offset) in self.slots(&info) {
                    queue.push_back(self.read(object.wrapping_add(offset)));
                }
            }
            _ => {}
        }
        Some(size)
    }

    /// The `__slots__` of the class `info` (its own, from `tp_members`): (name, offset of the
    /// object pointer in an instance), read once per class.
    pub(super) fn slots(&mut self, info: &TypeInfo) -> Vec<(String, u64)> {
        if info.flags & HEAPTYPE == 0 {
            return Vec::new();
        }
        if let Some(known) = self.slots_by_type.get(&info.address) {
            return known.clone();
        }
        let r = &self.layout.heap.refs;
        let mut slots = Vec::new();
        let mut member = self.read(info.address.wrapping_add(r.type_members));
        while member != 0 && slots.len() < MAX_SLOTS {
            let Ok(def) = self.mem.read_vec(member, r.member_size as usize) else { break };
            let name = word(&def, 0);
            if name == 0 {
                break;
            }
            let (kind, offset) = (word(&def, r.member_type) as u32 as u64, word(&def, r.member_offset));
            // Slots live inside the instance, after the object header.
            if kind == r.member_object && (16..info.basicsize).contains(&offset) {
                let name = super::types::read_c_string(self.mem, name, 128)
                    .and_then(|n| String::from_utf8(n).ok())
                    .unwrap_or_default();
                slots.push((name, offset));
            }
            member = member.wrapping_add(r.member_size);
        }
        self.slots_by_type.insert(info.address, slots.clone());
        slots
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
        self.each_pointer(items, n, |p| queue.push_back(p));
    }

    /// The `n` non-null object pointers of the array at `items` (none when it is implausibly
    /// long, or unreadable: its callers ask for at most 64K, one read).
    pub(super) fn pointers(&self, items: u64, n: u64) -> Vec<u64> {
        let mut out = Vec::new();
        self.each_pointer(items, n, |p| out.push(p));
        out
    }

    /// Each non-null object pointer of the `n`-item array at `items`, read a megabyte at a time
    /// (a long list's array is never copied whole), up to the first unreadable megabyte; none when
    /// `n` is implausible.
    fn each_pointer(&self, items: u64, n: u64, mut each: impl FnMut(u64)) {
        if n == 0 || n > MAX_ITEMS || items == 0 {
            return;
        }
        let per_read = (MAX_READ / 8) as u64;
        for first in (0..n).step_by(per_read as usize) {
            let len = per_read.min(n - first);
            let Ok(bytes) = self.mem.read_vec(items + first * 8, (len * 8) as usize) else { return };
            bytes.chunks_exact(8).map(|p| word(p, 0)).filter(|p| *p != 0).for_each(&mut each);
        }
    }
}
