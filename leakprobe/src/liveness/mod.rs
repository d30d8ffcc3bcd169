//! Whether a sampled allocation is still alive, told by reading the target's memory instead of
//! hooking every free (a uprobe on `PyObject_Free` costs a trap per call; a read costs nothing in
//! the target).
//!
//! A sampled block from CPython's object allocator holds a Python object: at offset 0, or after a
//! 16-byte GC header, or after the GC header and the 3.12+ pre-header (32). The first check finds
//! it: a plausible reference count and an `ob_type` that points to a type object (whose own type
//! is `type`, or a metaclass whose type is `type`). Later checks say it is dead when the reference
//! count is 0 (every deallocated object had 0, and GC objects keep it after the free), is no
//! longer a count (pymalloc and glibc write free-list pointers over the first words), or the type
//! changed (glibc's tcache key, a free list or a new occupant), or the first bytes of its body
//! changed: a block freed and reused by another object of the same type (the leak and the churn
//! in one size class) holds other contents. Objects mutated in place (a dict updated, a list
//! appended to) therefore look dead: leaks are objects created and then kept, unchanged. (The
//! allocators' state cannot rescue them: a block freed and reused by an object of the same type
//! is in use too, and that is the churn the same-size-class case must not count.)
//! Blocks that hold no object (buffers, native `malloc`) are followed by their allocator's state
//! (`block_liveness`) when the allocator is known, and dropped otherwise.
//! Pure apart from the `ReadMemory` it is given, so it is tested on synthetic memory.

use std::collections::HashMap;

use leakprobe_common::LiveAllocation;

mod type_info;

use type_info::TypeInfo;
#[cfg(test)]
use type_info::{TPFLAGS_LONG_SUBCLASS, TPFLAGS_UNICODE_SUBCLASS, TP_BASICSIZE, TP_FLAGS};

use crate::{
    block_liveness::{fnv1a, Allocator, BlockReaders, BlockSample, Judgement, Signal, SignalCounts},
    python::{layout::ObjectLayout, layouts::PoolLayout, memory::ReadMemory},
};

/// Where a Python object may start inside a block from the object allocator.
const HEADER_OFFSETS: [u64; 3] = [0, 16, 32];
/// Reference counts at or above this are pointers written over a freed block, not counts.
const MAX_REFCOUNT: u64 = 1 << 40;
/// Type objects remembered (per address: is it a type?).
const MAX_TYPE_CACHE: usize = 1 << 16;
/// Bytes of the object body (after refcount and type) that identify it.
const BODY_BYTES: usize = 48;
/// Skipped in the body: `str`'s hash at offset 24 in every supported version is computed lazily.
const MUTABLE_BODY: std::ops::Range<usize> = 8..16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Object {
    /// Offset of the `PyObject` inside the block.
    offset: u64,
    ob_type: u64,
    /// Hash of the object's first bytes after its header (see `fingerprint`).
    fingerprint: u64,
}

/// What a sample is followed by.
#[derive(Debug, Clone, Copy)]
enum Followed {
    Object(Object),
    /// No object in it: its allocator's state.
    Block(BlockSample),
}

#[derive(Debug, Clone, Copy)]
struct Sampled {
    /// Identifies the allocation (an address is reused by later ones).
    timestamp_ns: u64,
    stack_id: u64,
    size: u64,
    followed: Followed,
}

/// A sampled allocation to check: its address, the kernel's record, and the allocator it came
/// from when known (to follow it when it holds no object).
pub type Candidate = (u64, LiveAllocation, Option<Allocator>);

/// Verified live samples of one stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackLive {
    pub allocations: u64,
    pub bytes: u64,
}

/// The outcome of one pass over the sampled allocations.
#[derive(Debug, Default)]
pub struct Pass {
    /// Per stack, the sampled allocations still alive.
    pub live: HashMap<u64, StackLive>,
    /// Addresses whose allocation is dead or cannot be judged: to drop from the kernel's table.
    pub forget: Vec<u64>,
    /// The live samples, by the signal that judged them alive in this pass.
    pub live_by: SignalCounts,
}

pub struct Liveness {
    /// Address of `PyType_Type` in the target.
    type_type: u64,
    /// The interpreter's `str` and `int` layouts, to size its objects.
    objects: ObjectLayout,
    /// Per address: the type object there (`None`: not a type).
    types: HashMap<u64, Option<TypeInfo>>,
    sampled: HashMap<u64, Sampled>,
    /// pymalloc's pools, to follow blocks that hold no object.
    pool: PoolLayout,
    /// glibc's tcache key in the target, once learnt (see `block_liveness::glibc`).
    pub tcache_key: Option<u64>,
    /// The built-in types the interpreter recycles through its own free lists (see `first_look`).
    recycled_types: Vec<&'static str>,
    /// Samples found dead, and samples that could not be followed.
    pub dead: u64,
    pub unverifiable: u64,
    /// Of the samples not followed: those whose object is of a recycled type.
    pub recycled: u64,
    /// Of the samples not followed: blocks alike (size and contents) to a live one of another stack.
    pub ambiguous: u64,
    /// The dead samples, by the signal that decided it.
    pub dead_by: SignalCounts,
}

impl Liveness {
    pub fn new(type_type: u64, objects: ObjectLayout, pool: PoolLayout, recycled_types: Vec<&'static str>) -> Liveness {
        Liveness {
            type_type,
            recycled_types,
            objects,
            types: HashMap::new(),
            sampled: HashMap::new(),
            pool,
            tcache_key: None,
            dead: 0,
            unverifiable: 0,
            recycled: 0,
            ambiguous: 0,
            dead_by: SignalCounts::default(),
        }
    }

    /// Checks every sampled allocation in `table` (the kernel's live table, already restricted to
    /// blocks from the object allocator). `first_looks`: whether samples never seen before may be
    /// identified now. Only while the probes are attached (the target slowed) is the object in a
    /// new sample still the one allocated; a sample first seen later may already hold another
    /// object of the same size that reused its freed block, and is dropped.
    pub fn check(&mut self, mem: &impl ReadMemory, table: &[Candidate], first_looks: bool) -> Pass {
        let mut pass = Pass::default();
        let mut seen = HashMap::with_capacity(table.len());
        let pool = self.pool;
        let mut readers = BlockReaders { pool: &pool, pools: Default::default(), tcache_key: self.tcache_key };
        let mut judged: Vec<(u64, Option<(Sampled, Judgement)>)> = Vec::with_capacity(table.len());
        for &(address, allocation, allocator) in table {
            let known = self.sampled.get(&address).filter(|s| s.timestamp_ns == allocation.timestamp_ns).copied();
            judged.push((
                address,
                match known {
                    Some(sample) => self.judge(mem, &mut readers, address, sample),
                    None if !first_looks => None,
                    None => self.first_look(mem, &mut readers, address, allocation, allocator),
                },
            ));
        }
        let ambiguous = alike_across_stacks(&judged);
        for (address, judged) in judged {
            let judged = match judged {
                Some((sample, Judgement::Alive(_))) if ambiguous.contains(&address) => {
                    self.ambiguous += 1;
                    Some((sample, Judgement::Unverifiable))
                }
                judged => judged,
            };
            match judged {
                Some((sample, Judgement::Alive(signal))) => {
                    let stack = pass.live.entry(sample.stack_id).or_default();
                    stack.allocations += 1;
                    stack.bytes += sample.size;
                    pass.live_by.add(signal);
                    seen.insert(address, sample);
                }
                Some((_, Judgement::Dead(signal))) => {
                    self.dead += 1;
                    self.dead_by.add(signal);
                    pass.forget.push(address);
                }
                Some((_, Judgement::Unverifiable)) | None => {
                    self.unverifiable += 1;
                    pass.forget.push(address);
                }
            }
        }
        // Samples gone from the table (freed through a path the kernel saw) are forgotten too.
        self.sampled = seen;
        pass
    }

    /// A later look at a sample.
    fn judge(
        &self,
        mem: &impl ReadMemory,
        readers: &mut BlockReaders,
        address: u64,
        mut sample: Sampled,
    ) -> Option<(Sampled, Judgement)> {
        let judgement = match &mut sample.followed {
            Followed::Object(object) => match self.still_alive(mem, address, sample.size, *object) {
                true => Judgement::Alive(Signal::ObjectFingerprint),
                false => Judgement::Dead(Signal::ObjectFingerprint),
            },
            Followed::Block(block) => block.judge(mem, readers, address, sample.size),
        };
        Some((sample, judgement))
    }

    /// The first look at a sample: the object in it, or else its allocator's state.
    ///
    /// An object of a type the interpreter recycles (floats, small tuples, lists, dicts, ...) is
    /// not followed: the object in the block at the first look need not be the one allocated. A
    /// freed one goes onto the type's free list and the next object of the type takes its block
    /// without a call to the allocator, so no probe sees it, however soon the look. Measured on
    /// the leak scenarios: a temporary float of a look-alike's line, freed at once and taken by
    /// the float a leak keeps, made the look-alike's line look like a growing stack. Which line
    /// keeps such objects is the heap census's to say (`census_history`).
    fn first_look(
        &mut self,
        mem: &impl ReadMemory,
        readers: &mut BlockReaders,
        address: u64,
        allocation: LiveAllocation,
        allocator: Option<Allocator>,
    ) -> Option<(Sampled, Judgement)> {
        let sampled = |followed| Sampled {
            timestamp_ns: allocation.timestamp_ns,
            stack_id: allocation.stack_id,
            size: allocation.size,
            followed,
        };
        if let Some((object, recycled)) = self.find_object(mem, address, allocation.size) {
            if recycled {
                self.recycled += 1;
                return Some((sampled(Followed::Object(object)), Judgement::Unverifiable));
            }
            return Some((sampled(Followed::Object(object)), Judgement::Alive(Signal::ObjectFingerprint)));
        }
        let (block, judgement) = BlockSample::first_look(mem, readers, allocator?, address, allocation.size)?;
        Some((sampled(Followed::Block(block)), judgement))
    }

    fn still_alive(&self, mem: &impl ReadMemory, address: u64, size: u64, object: Object) -> bool {
        let mut block = [0u8; 32 + 16 + BODY_BYTES];
        let len = object_len(size, object.offset);
        let start = object.offset as usize;
        if mem.read(address.wrapping_add(object.offset), &mut block[start..start + len]).is_err() {
            return false; // unmapped: the arena was released
        }
        if object.offset == PRE_HEADER_OFFSET && mem.read(address, &mut block[..16]).is_err() {
            return false;
        }
        let found = &block[start..start + len];
        let (refcount, ob_type) = split(found);
        plausible_refcount(refcount)
            && ob_type == object.ob_type
            && fingerprint(&found[16..]) ^ pre_header(&block, object.offset) == object.fingerprint
    }

    /// The object the block holds, and whether its type is recycled.
    fn find_object(&mut self, mem: &impl ReadMemory, address: u64, size: u64) -> Option<(Object, bool)> {
        let mut block = [0u8; 32 + 16 + BODY_BYTES];
        let len = (size as usize).min(block.len());
        if len < 16 || mem.read(address, &mut block[..len]).is_err() {
            return None;
        }
        let objects = self.objects;
        HEADER_OFFSETS.into_iter().filter(|&offset| offset as usize + 16 <= len).find_map(|offset| {
            let start = offset as usize;
            let found = &block[start..start + object_len(size, offset)];
            let (refcount, ob_type) = split(found);
            if !plausible_refcount(refcount) {
                return None;
            }
            let info = self.type_info(mem, ob_type)?;
            // The object there must be the one this allocation was for: an object the block was
            // freed to and reused by has its own size.
            (info.sizes_match(found, size - offset, &objects)).then(|| {
                let fingerprint = fingerprint(&found[16..]) ^ pre_header(&block, offset);
                (Object { offset, ob_type, fingerprint }, info.recycled)
            })
        })
    }

    /// The type object at `address`: its type is `type`, or a metaclass whose type is.
    fn type_info(&mut self, mem: &impl ReadMemory, address: u64) -> Option<TypeInfo> {
        if address == 0 || address % 8 != 0 {
            return None;
        }
        if let Some(known) = self.types.get(&address) {
            return *known;
        }
        let type_of = |a: u64| mem.read_u64(a.wrapping_add(8)).ok();
        let is_type = match type_of(address) {
            Some(meta) if meta == self.type_type => true,
            Some(meta) if meta != 0 => type_of(meta) == Some(self.type_type),
            _ => false,
        };
        let info = is_type.then(|| TypeInfo::read(mem, address, &self.recycled_types)).flatten();
        if self.types.len() >= MAX_TYPE_CACHE {
            self.types.clear();
        }
        self.types.insert(address, info);
        info
    }
}

/// The live blocks (no object in them) whose size and contents match a live block of another
/// stack. Their contents cannot tell one from the other, so a block freed after its first look
/// and taken by the other stack's next allocation still reads as the first one: the allocator's
/// state says only that some block of that size is in use there. Measured on the leak scenarios:
/// the 32-byte `sem_t` of a look-alike's short-lived futures, freed after the window and reused by
/// the leaking futures' identical locks, made the look-alike's line a growing stack.
fn alike_across_stacks(judged: &[(u64, Option<(Sampled, Judgement)>)]) -> std::collections::HashSet<u64> {
    let mut stacks: HashMap<(u64, u64), (u64, bool)> = HashMap::new();
    let blocks = || {
        judged.iter().filter_map(|(address, j)| match j {
            Some((sample, Judgement::Alive(_))) => match sample.followed {
                Followed::Block(block) => Some((*address, (sample.size, block.content()), sample.stack_id)),
                Followed::Object(_) => None,
            },
            _ => None,
        })
    };
    for (_, key, stack) in blocks() {
        let entry = stacks.entry(key).or_insert((stack, false));
        entry.1 |= entry.0 != stack;
    }
    blocks().filter(|(_, key, _)| stacks[key].1).map(|(address, _, _)| address).collect()
}

fn split(header: &[u8]) -> (u64, u64) {
    let word = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or_default());
    (word(0), word(8))
}

/// Bytes read for an object at `offset` in a block of `size`: header and up to `BODY_BYTES` of body.
fn object_len(size: u64, offset: u64) -> usize {
    (size.saturating_sub(offset) as usize).clamp(16, 16 + BODY_BYTES)
}

/// Offset of an object behind the GC header and the 3.11+ pre-header (managed `__dict__` and
/// values pointers, which identify an instance whose own body is empty).
const PRE_HEADER_OFFSET: u64 = 32;

/// Hash of the pre-header words of a block whose object is at `offset` (0 when there is none).
fn pre_header(block: &[u8], offset: u64) -> u64 {
    if offset == PRE_HEADER_OFFSET {
        fingerprint(&block[..16]).rotate_left(1)
    } else {
        0
    }
}

/// FNV-1a of the body, with the lazily computed `str` hash left out.
fn fingerprint(body: &[u8]) -> u64 {
    fnv1a(body.iter().enumerate().filter(|(i, _)| !MUTABLE_BODY.contains(i)).map(|(_, b)| b))
}

fn plausible_refcount(refcount: u64) -> bool {
    refcount > 0 && refcount < MAX_REFCOUNT
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, io};

    use super::*;
    use crate::python::layouts;

    /// Sparse little-endian memory of 8-byte words; a page is mapped (zeros) once written to.
    #[derive(Default)]
    struct Words(RefCell<HashMap<u64, u64>>);

    impl Words {
        fn set(&self, address: u64, value: u64) {
            self.0.borrow_mut().insert(address, value);
        }
    }

    impl ReadMemory for Words {
        fn read(&self, address: u64, buf: &mut [u8]) -> io::Result<()> {
            let words = self.0.borrow();
            for (i, chunk) in buf.chunks_mut(8).enumerate() {
                let at = address + 8 * i as u64;
                let word = match words.get(&at) {
                    Some(&w) => w,
                    None if words.keys().any(|k| k >> 12 == at >> 12) => 0,
                    None => return Err(io::Error::new(io::ErrorKind::NotFound, "unmapped")),
                };
                chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
            }
            Ok(())
        }
    }

    const TYPE_TYPE: u64 = 0x1000;
    const STR_TYPE: u64 = 0x2000;
    const INT_TYPE: u64 = 0x3000;
    const TUPLE_TYPE: u64 = 0x6000;
    /// `state` of a compact ASCII str: kind 1, compact, ascii.
    const ASCII: u64 = (1 << 2) | (1 << 5) | (1 << 6);

    fn memory() -> Words {
        let m = Words::default();
        m.set(TYPE_TYPE + 8, TYPE_TYPE);
        let types = [
            (STR_TYPE, 80, 0, TPFLAGS_UNICODE_SUBCLASS),
            (INT_TYPE, 24, 4, TPFLAGS_LONG_SUBCLASS),
            (TUPLE_TYPE, 24, 8, 0),
        ];
        for (t, basicsize, itemsize, flags) in types {
            m.set(t + 8, TYPE_TYPE);
            m.set(t + TP_BASICSIZE, basicsize);
            m.set(t + TP_BASICSIZE + 8, itemsize);
            m.set(t + TP_FLAGS, flags);
        }
        m
    }

    fn block(m: &Words, address: u64, words: &[u64]) {
        for (i, w) in words.iter().enumerate() {
            m.set(address + 8 * i as u64, *w);
        }
    }

    /// A 3-character ASCII str (3.11 layout: 48-byte header, then the characters and a NUL).
    fn str3(m: &Words, address: u64, refcount: u64, hash: u64, chars: u64) {
        block(m, address, &[refcount, STR_TYPE, 3, hash, ASCII, 0, chars, 0]);
    }

    const STR3_SIZE: u64 = 48 + 4;

    fn entry(address: u64, stack_id: u64, size: u64, timestamp_ns: u64) -> Candidate {
        (address, LiveAllocation { size, stack_id, timestamp_ns }, None)
    }

    fn fresh(minor: u32) -> Liveness {
        Liveness::new(
            TYPE_TYPE,
            layouts::objects(minor).unwrap(),
            layouts::pool(minor).unwrap(),
            layouts::recycled_types(minor),
        )
    }

    #[test]
    fn live_objects_count_and_dead_ones_are_forgotten() {
        let m = memory();
        str3(&m, 0x10_000, 1, u64::MAX, 0x0031_3233); // plain object at 0
        block(&m, 0x20_000, &[0x7f00_0000_1000, 0x7f00_0000_2000, 3, TUPLE_TYPE, 2, 0x10_000, 0x10_000]); // GC, at 16
        block(&m, 0x30_000, &[0xdead_beef_0000_0000, 7, 9, 11, 13, 15]); // a buffer: no object
        let table = [entry(0x10_000, 1, STR3_SIZE, 5), entry(0x20_000, 2, 16 + 24 + 16, 6), entry(0x30_000, 1, 64, 7)];
        let mut liveness = fresh(11);
        let pass = liveness.check(&m, &table, true);
        assert_eq!(pass.live[&1], StackLive { allocations: 1, bytes: STR3_SIZE });
        assert_eq!(pass.live[&2], StackLive { allocations: 1, bytes: 56 });
        assert_eq!(pass.forget, vec![0x30_000]);
        assert_eq!(liveness.unverifiable, 1);

        // The str is freed by pymalloc (a free-list pointer over its count), the GC one keeps
        // its header but its count went to 0.
        m.set(0x10_000, 0x5555_0000_1000);
        m.set(0x20_010, 0);
        let pass = liveness.check(&m, &table[..2], true);
        assert!(pass.live.is_empty());
        assert_eq!(pass.forget, vec![0x10_000, 0x20_000]);
        assert_eq!(liveness.dead, 2);
    }

    #[test]
    fn a_new_occupant_of_another_type_means_the_sample_died() {
        let m = memory();
        block(&m, 0x10_000, &[1, INT_TYPE, 1, 42]);
        let mut liveness = fresh(11);
        assert_eq!(liveness.check(&m, &[entry(0x10_000, 1, 28, 5)], true).live.len(), 1);
        block(&m, 0x10_000, &[1, TUPLE_TYPE, 0, 0]);
        let pass = liveness.check(&m, &[entry(0x10_000, 1, 28, 5)], true);
        assert!(pass.live.is_empty());
        // A new sample at the same address (new timestamp) is judged afresh.
        block(&m, 0x10_000, &[1, INT_TYPE, 1, 7]);
        let pass = liveness.check(&m, &[entry(0x10_000, 9, 28, 8)], true);
        assert_eq!(pass.live[&9].allocations, 1);
    }

    #[test]
    fn a_same_type_occupant_with_other_contents_means_the_sample_died() {
        let m = memory();
        str3(&m, 0x10_000, 1, u64::MAX, 0x0031_3233);
        let mut liveness = fresh(11);
        let table = [entry(0x10_000, 1, STR3_SIZE, 5)];
        assert_eq!(liveness.check(&m, &table, true).live.len(), 1);
        // Its hash gets computed and its count moves: still the same object.
        str3(&m, 0x10_000, 4, 0x1234_5678, 0x0031_3233);
        assert_eq!(liveness.check(&m, &table, true).live.len(), 1);
        // Freed and the block reused by another 3-character str.
        str3(&m, 0x10_000, 1, u64::MAX, 0x0039_3939);
        assert!(liveness.check(&m, &table, true).live.is_empty());
    }

    #[test]
    fn a_block_already_reused_by_an_object_of_another_size_is_not_sampled() {
        let m = memory();
        // Sampled as a 3-character str, found holding a 12-character one (same size class).
        block(&m, 0x10_000, &[1, STR_TYPE, 12, u64::MAX, ASCII, 0, 0x2d55_4b53, 0x3837_3732]);
        let mut liveness = fresh(11);
        let pass = liveness.check(&m, &[entry(0x10_000, 1, STR3_SIZE, 5)], true);
        assert!(pass.live.is_empty());
        assert_eq!(liveness.unverifiable, 1);
        // 3.12+ str headers are 40 bytes.
        block(&m, 0x20_000, &[1, STR_TYPE, 3, u64::MAX, ASCII, 0x0031_3233]);
        let mut liveness = fresh(12);
        assert_eq!(liveness.check(&m, &[entry(0x20_000, 1, 44, 5)], true).live.len(), 1);
    }

    #[test]
    fn a_native_block_is_followed_by_its_chunk_and_counted_by_signal() {
        let m = memory();
        // A 4096-byte malloc block with no object: its chunk header, its next chunk in use.
        block(&m, 0x70_008, &[4112 | 1, 0xdead_beef_0000_0001, 0]);
        m.set(0x70_000 + 4112 + 8, 48 | 1);
        let mut liveness = fresh(11);
        let mut table = [entry(0x70_010, 3, 4096, 5)];
        table[0].2 = Some(Allocator::Glibc);
        let pass = liveness.check(&m, &table, true);
        assert_eq!(pass.live[&3], StackLive { allocations: 1, bytes: 4096 });
        assert_eq!(pass.live_by, SignalCounts { glibc_chunk: 1, ..Default::default() });
        // Freed into a bin: the next chunk's PREV_INUSE bit is cleared.
        m.set(0x70_000 + 4112 + 8, 48);
        let pass = liveness.check(&m, &table, true);
        assert!(pass.live.is_empty());
        assert_eq!(liveness.dead_by, SignalCounts { glibc_chunk: 1, ..Default::default() });
        // The same bytes with an unknown allocator: not followed, as before.
        let mut liveness = fresh(11);
        table[0].2 = None;
        m.set(0x70_000 + 4112 + 8, 48 | 1);
        assert!(liveness.check(&m, &table, true).live.is_empty());
        assert_eq!(liveness.unverifiable, 1);
    }

    #[test]
    fn blocks_alike_across_stacks_are_not_followed() {
        let m = memory();
        // Three 32-byte malloc blocks with the same contents (a fresh lock), each chunk in use.
        let lock = |at: u64| {
            block(&m, at - 8, &[48 | 1, 1, 0, 0, 0]);
            m.set(at - 16 + 48 + 8, 48 | 1);
        };
        for at in [0x70_010, 0x71_010, 0x72_010] {
            lock(at);
        }
        let glibc = |address, stack, ts| {
            let mut e = entry(address, stack, 32, ts);
            e.2 = Some(Allocator::Glibc);
            e
        };
        // Two of one stack: alike to each other, still told apart from nothing else.
        let mut liveness = fresh(11);
        let pass = liveness.check(&m, &[glibc(0x70_010, 1, 1), glibc(0x71_010, 1, 2)], true);
        assert_eq!(pass.live[&1].allocations, 2);
        // A third, of another stack: none of the three can be told from a reuse by the other.
        let pass = liveness.check(&m, &[glibc(0x70_010, 1, 1), glibc(0x71_010, 1, 2), glibc(0x72_010, 2, 3)], true);
        assert!(pass.live.is_empty(), "{:?}", pass.live);
        assert_eq!((liveness.ambiguous, liveness.unverifiable), (3, 3));
        // Other contents in the other stack's block: it identifies itself.
        let mut liveness = fresh(11);
        m.set(0x72_010 + 8, 7);
        let pass = liveness.check(&m, &[glibc(0x70_010, 1, 1), glibc(0x72_010, 2, 3)], true);
        assert_eq!((pass.live.len(), liveness.ambiguous), (2, 0));
    }

    #[test]
    fn a_sample_first_seen_after_the_window_is_not_trusted() {
        let m = memory();
        str3(&m, 0x10_000, 1, u64::MAX, 0x0031_3233);
        let mut liveness = fresh(11);
        let pass = liveness.check(&m, &[entry(0x10_000, 1, STR3_SIZE, 5)], false);
        assert!(pass.live.is_empty());
        assert_eq!(pass.forget, vec![0x10_000]);
    }

    #[test]
    fn unreadable_or_garbage_memory_is_never_alive() {
        let m = memory();
        let mut liveness = fresh(11);
        // Unmapped block, a block too small for a header, a "type" that is not a type.
        block(&m, 0x40_000, &[1, 0x9999_0000]);
        m.set(0x9999_0008, 0x1234);
        let table = [entry(0x50_000, 1, 64, 1), entry(0x40_000, 1, 8, 2), entry(0x40_000, 1, 16, 3)];
        let pass = liveness.check(&m, &table, true);
        assert!(pass.live.is_empty());
        assert_eq!(pass.forget.len(), 3);
    }

    #[test]
    fn metaclass_instances_are_objects_too() {
        let m = memory();
        let meta = 0x4000; // a metaclass: its type is `type`
        let class = 0x5000; // a class whose type is the metaclass, instances of 32 bytes
        m.set(meta + 8, TYPE_TYPE);
        m.set(class + 8, meta);
        m.set(class + TP_BASICSIZE, 32);
        block(&m, 0x10_000, &[1, class, 0, 0]);
        let mut liveness = fresh(11);
        assert_eq!(liveness.check(&m, &[entry(0x10_000, 1, 32, 1)], true).live[&1].bytes, 32);
    }

    #[test]
    fn objects_of_types_the_interpreter_recycles_are_not_followed() {
        let m = memory();
        // Static types named `float` (recycled by every version) and `int` (from 3.14 on).
        let (float, int_name) = (0x7000, 0x7100);
        m.set(float + 8, TYPE_TYPE);
        m.set(float + TP_BASICSIZE, 24);
        m.set(float + type_info::TP_NAME, 0x7800);
        m.set(0x7800, u64::from_le_bytes(*b"float\0\0\0"));
        m.set(INT_TYPE + type_info::TP_NAME, int_name);
        m.set(int_name, u64::from_le_bytes(*b"int\0\0\0\0\0"));
        block(&m, 0x10_000, &[1, float, 0x4009_21fb_5444_2d18]);
        block(&m, 0x20_000, &[1, INT_TYPE, 1, 7]);
        let table = [entry(0x10_000, 1, 24, 1), entry(0x20_000, 2, 28, 2)];

        let mut liveness = fresh(11);
        let pass = liveness.check(&m, &table, true);
        assert_eq!(pass.forget, vec![0x10_000], "the float is dropped, the 3.11 int followed");
        assert_eq!((liveness.unverifiable, liveness.recycled), (1, 1));
        assert_eq!(pass.live[&2].allocations, 1);

        let mut liveness = fresh(14);
        let pass = liveness.check(&m, &table, true);
        assert!(pass.live.is_empty(), "3.14 recycles ints too");
        assert_eq!(liveness.recycled, 2);

        // A class of the same name defined in Python is a heap type: followed.
        m.set(float + type_info::TP_FLAGS, 1 << 9);
        let mut liveness = fresh(11);
        assert_eq!(liveness.check(&m, &table[..1], true).live[&1].allocations, 1);
    }
}
