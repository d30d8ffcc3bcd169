//! Which type an object claims, and whether that claim holds: the type pointer must lead to a
//! ready type object whose own type is `type` (or a metaclass whose type is `type`), with a
//! readable name and sane sizes. Verdicts are cached per address, so a census reads each type
//! once however many objects it has.

use std::collections::HashMap;

use crate::python::{layout::Layout, memory::ReadMemory, objects::read_str};

/// `tp_flags` bits (the same values in 3.10–3.14, python-heap.md §5).
pub const HEAPTYPE: u64 = 1 << 9;
pub const READY: u64 = 1 << 12;
pub const LONG_SUBCLASS: u64 = 1 << 24;
pub const HAVE_GC: u64 = 1 << 14;
pub const LIST_SUBCLASS: u64 = 1 << 25;
pub const TUPLE_SUBCLASS: u64 = 1 << 26;
pub const DICT_SUBCLASS: u64 = 1 << 29;
pub const TYPE_SUBCLASS: u64 = 1 << 31;

/// Longest `tp_name` accepted (python-heap.md §14.1).
pub const MAX_NAME: usize = 255;
/// `tp_basicsize` outside 16 bytes .. 1 MiB, or `tp_itemsize` above this, is garbage.
const MAX_BASICSIZE: u64 = 1 << 20;
const MAX_ITEMSIZE: u64 = 1 << 12;

/// What a census needs to know about a type to size its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A list or subclass: its item array is out of line.
    List,
    /// A dict or subclass: its keys table (and split values) are out of line.
    Dict,
    /// An int or subclass: its digit count is in `ob_size` / `lv_tag`.
    Int,
    Tuple,
    /// `set` / `frozenset` (by name: no flag marks them).
    Set,
    /// `collections.deque` (by name).
    Deque,
    Module,
    /// A type object (a class, for heap types).
    Type,
    /// A Python function (`function`), a closure cell (`cell`), a bound method (`method`).
    Function,
    Cell,
    Method,
    /// `functools.lru_cache`'s wrapper (`functools._lru_cache_wrapper`, a heap type).
    LruCache,
    /// `bytearray` (by name): its buffer is out of line, and grows in place.
    ByteArray,
    /// `coroutine` (by name): a suspended one's frame locals are roots.
    Coroutine,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub address: u64,
    /// `tp_name`; heap types: `ht_qualname` (what `type(o).__qualname__` says).
    pub name: String,
    pub basicsize: u64,
    pub itemsize: u64,
    pub flags: u64,
    pub kind: Kind,
}

/// Bytes of a type object read to validate it (through `tp_flags`).
fn header_len(layout: &Layout) -> usize {
    let t = &layout.heap.types;
    [t.name, t.basicsize, t.itemsize, t.flags].into_iter().max().unwrap_or(0) as usize + 8
}

fn u64_at(bytes: &[u8], at: u64) -> u64 {
    let at = at as usize;
    bytes.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// A NUL-terminated string of at most `max` bytes, read a page at a time so a name near the end
/// of a mapping is still read; None without a NUL in reach.
pub fn read_c_string(mem: &impl ReadMemory, address: u64, max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = address;
    while out.len() <= max {
        let to_page_end = (0x1000 - (at & 0xfff)) as usize;
        let chunk = to_page_end.min(max + 1 - out.len());
        let mut buf = vec![0u8; chunk];
        mem.read(at, &mut buf).ok()?;
        if let Some(nul) = buf.iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..nul]);
            return Some(out);
        }
        out.extend_from_slice(&buf);
        at = at.checked_add(chunk as u64)?;
    }
    None
}

/// What a type is to a census: by its subclass flags, else by `tp_name` for the C types that
/// have no flag. A class's `tp_name` is its bare name, so a user class named `deque` is never
/// `collections.deque` (which is a heap type itself from 3.12 on), and heap types are never
/// taken for `set` or `module`.
fn kind_of(flags: u64, tp_name: &str) -> Kind {
    if flags & LIST_SUBCLASS != 0 {
        Kind::List
    } else if flags & DICT_SUBCLASS != 0 {
        Kind::Dict
    } else if flags & LONG_SUBCLASS != 0 {
        Kind::Int
    } else if flags & TUPLE_SUBCLASS != 0 {
        Kind::Tuple
    } else if flags & TYPE_SUBCLASS != 0 {
        Kind::Type
    } else if tp_name == "collections.deque" {
        Kind::Deque
    } else if tp_name == "functools._lru_cache_wrapper" {
        Kind::LruCache
    } else if flags & HEAPTYPE != 0 {
        Kind::Other
    } else {
        match tp_name {
            "set" | "frozenset" => Kind::Set,
            "module" => Kind::Module,
            "function" => Kind::Function,
            "cell" => Kind::Cell,
            "method" => Kind::Method,
            "bytearray" => Kind::ByteArray,
            "coroutine" => Kind::Coroutine,
            _ => Kind::Other,
        }
    }
}

/// Every type a census has met, by address, with its verdict.
pub struct TypeTable<'a> {
    layout: &'a Layout,
    /// `PyType_Type`: from the symbol, else recognised as the type that is its own type.
    type_type: Option<u64>,
    verdicts: HashMap<u64, Option<usize>>,
    /// Metatypes (type itself, ABCMeta, EnumType, ...) by address: whether they are types.
    metatypes: HashMap<u64, bool>,
    pub types: Vec<TypeInfo>,
}

impl<'a> TypeTable<'a> {
    pub fn new(layout: &'a Layout, type_type: Option<u64>) -> Self {
        TypeTable { layout, type_type, verdicts: HashMap::new(), metatypes: HashMap::new(), types: Vec::new() }
    }

    /// Index into `types` of the valid type at `address`, or None.
    pub fn resolve(&mut self, mem: &impl ReadMemory, address: u64) -> Option<usize> {
        if let Some(v) = self.verdicts.get(&address) {
            return *v;
        }
        let verdict = self.validate(mem, address).map(|info| {
            self.types.push(info);
            self.types.len() - 1
        });
        self.verdicts.insert(address, verdict);
        verdict
    }

    fn validate(&mut self, mem: &impl ReadMemory, address: u64) -> Option<TypeInfo> {
        if address == 0 || !address.is_multiple_of(8) {
            return None;
        }
        let header = mem.read_vec(address, header_len(self.layout)).ok()?;
        let t = &self.layout.heap.types;
        let (metatype, name_ptr) = (u64_at(&header, 8), u64_at(&header, t.name));
        let (basicsize, itemsize, flags) =
            (u64_at(&header, t.basicsize), u64_at(&header, t.itemsize), u64_at(&header, t.flags));
        if flags & READY == 0 || !(16..=MAX_BASICSIZE).contains(&basicsize) || itemsize > MAX_ITEMSIZE {
            return None;
        }
        if !self.is_metatype(mem, metatype, 0) {
            return None;
        }
        let raw = read_c_string(mem, name_ptr, MAX_NAME)?;
        let tp_name = String::from_utf8(raw).ok().filter(|n| !n.is_empty())?;
        let kind = kind_of(flags, &tp_name);
        let name = if flags & HEAPTYPE != 0 {
            mem.read_u64(address.wrapping_add(t.heap_qualname))
                .ok()
                .and_then(|q| read_str(mem, &self.layout.objects.str, q))
                .filter(|q| !q.is_empty() && q.len() <= MAX_NAME)
                .unwrap_or(tp_name)
        } else {
            tp_name
        };
        Some(TypeInfo { address, name, basicsize, itemsize, flags, kind })
    }

    /// Whether `address` is `type` or a metaclass (a type whose type is `type`).
    fn is_metatype(&mut self, mem: &impl ReadMemory, address: u64, depth: u32) -> bool {
        if Some(address) == self.type_type {
            return true;
        }
        if let Some(&known) = self.metatypes.get(&address) {
            return known;
        }
        if address == 0 || !address.is_multiple_of(8) || depth > 1 {
            return false;
        }
        let Ok(its_type) = mem.read_u64(address.wrapping_add(8)) else { return false };
        let verdict = if its_type == address {
            // Only `type` is its own type: learn it when the symbol was not found.
            let named_type = mem
                .read_u64(address.wrapping_add(self.layout.heap.types.name))
                .ok()
                .and_then(|p| read_c_string(mem, p, 8))
                .is_some_and(|n| n == b"type");
            if named_type && self.type_type.is_none() {
                self.type_type = Some(address);
            }
            named_type && self.type_type == Some(address)
        } else {
            self.is_metatype(mem, its_type, depth + 1)
        };
        self.metatypes.insert(address, verdict);
        verdict
    }
}
