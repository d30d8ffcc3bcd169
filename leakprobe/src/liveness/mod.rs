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
/// A sample younger than this at its first look is not followed: it may be in the middle of a
/// short life (a request's lock or buffer), so its block may be freed after the window closes and
/// taken by an allocation no probe sees, of the same size and contents (two `sem_t` locks, two
/// buffers memset alike), which would read as this sample kept alive. An older one has outlived
/// the requests in flight; a block freed and reused inside the window is caught by the kernel,
/// which sees the reuse's allocation. Two GIL switch intervals (5 ms each) bound a thread-pool
/// round trip's hand-offs; measured on Debian's LTO 3.11 under the scenarios' load, a
/// look-alike's futures, freed once the request ends, were flagged as a growing stack (824 B/s)
/// when followed from any age. Costs the samples of the window's last 30 ms (15% of a 200 ms
/// window); rates are shares of the process's growth, so the loss is the same for every stack.
pub const MIN_FIRST_LOOK_AGE_NS: u64 = 30_000_000;

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
    /// What they are.
    pub kind: SampleKind,
}

/// What a stack's live samples are: Python objects of one type and one block size, or else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SampleKind {
    /// No live sample.
    #[default]
    Empty,
    /// Every live sample holds an object of this type, in a block of this size.
    Object { ob_type: u64, size: u64 },
    /// Objects of several types or sizes, or blocks that hold no object.
    Mixed,
}

impl SampleKind {
    /// The kind of a stack whose samples are of kinds `self` and `other`.
    fn with(self, other: SampleKind) -> SampleKind {
        match (self, other) {
            (SampleKind::Empty, other) | (other, SampleKind::Empty) => other,
            (a, b) if a == b => a,
            _ => SampleKind::Mixed,
        }
    }
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
    /// Of the samples not followed: younger than `MIN_FIRST_LOOK_AGE_NS` at their first look.
    pub young: u64,
    /// The dead samples, by the signal that decided it.
    pub dead_by: SignalCounts,
    /// Per stack id, its allocation site, for the stacks that have one (see `set_site`).
    sites: HashMap<u64, u64>,
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
            young: 0,
            dead_by: SignalCounts::default(),
            sites: HashMap::new(),
        }
    }

    /// Says that the samples of `stack_id` come from allocation site `site` (any key; stacks
    /// without one are each a site of their own). One site's samples are never each other's
    /// look-alikes (`alike_across_stacks`): stack ids differ in frames no line is named by (the
    /// native stack below a thread's start, read differently per thread), and one leak's blocks
    /// split over two ids would make each other ambiguous. Measured: a `ctypes` leak run from two
    /// pool threads, both ids' blocks memset alike, was dropped whole as ambiguous.
    pub fn set_site(&mut self, stack_id: u64, site: u64) {
        self.sites.insert(stack_id, site);
    }

    /// Checks every sampled allocation in `table` (the kernel's live table, already restricted to
    /// blocks from the object allocator). `first_looks_at`: when samples never seen before may be
    /// identified now, the time of this look on the kernel's clock (`CLOCK_MONOTONIC`, as the
    /// samples' timestamps). Only while the probes are attached (the target slowed) is the object
    /// in a new sample still the one allocated; a sample first seen later may already hold another
    /// object of the same size that reused its freed block, and is dropped, as is one too young to
    /// be past its request (`MIN_FIRST_LOOK_AGE_NS`).
    pub fn check(&mut self, mem: &impl ReadMemory, table: &[Candidate], first_looks_at: Option<u64>) -> Pass {
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
                    None => match first_looks_at {
                        None => None,
                        Some(now) if now.saturating_sub(allocation.timestamp_ns) < MIN_FIRST_LOOK_AGE_NS => {
                            self.young += 1;
                            None
                        }
                        Some(_) => self.first_look(mem, &mut readers, address, allocation, allocator),
                    },
                },
            ));
        }
        let ambiguous = alike_across_stacks(&judged, |stack| self.sites.get(&stack).copied().unwrap_or(stack));
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
                    stack.kind = stack.kind.with(match sample.followed {
                        Followed::Object(object) => SampleKind::Object { ob_type: object.ob_type, size: sample.size },
                        Followed::Block(_) => SampleKind::Mixed,
                    });
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
/// allocation site (`site_of` a stack id). Their contents cannot tell one from the other, so a
/// block freed after its first look and taken by the other site's next allocation still reads
/// as the first one: the allocator's state says only that some block of that size is in use
/// there. Measured on the leak scenarios:
/// the 32-byte `sem_t` of a look-alike's short-lived futures, freed after the window and reused by
/// the leaking futures' identical locks, made the look-alike's line a growing stack.
fn alike_across_stacks(
    judged: &[(u64, Option<(Sampled, Judgement)>)],
    site_of: impl Fn(u64) -> u64,
) -> std::collections::HashSet<u64> {
    // Per (size, contents): the first site seen, and whether another site has it too.
    let mut sites: HashMap<(u64, u64), (u64, bool)> = HashMap::new();
    let blocks = || {
        judged.iter().filter_map(|(address, j)| match j {
            Some((sample, Judgement::Alive(_))) => match sample.followed {
                Followed::Block(block) => Some((*address, (sample.size, block.content()), site_of(sample.stack_id))),
                Followed::Object(_) => None,
            },
            _ => None,
        })
    };
    for (_, key, site) in blocks() {
        let entry = sites.entry(key).or_insert((site, false));
        entry.1 |= entry.0 != site;
    }
    blocks().filter(|(_, key, _)| sites[key].1).map(|(address, _, _)| address).collect()
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
mod tests;
