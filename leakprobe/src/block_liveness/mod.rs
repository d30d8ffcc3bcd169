//! Whether a sampled block that holds no Python object is still in use, read from the state its
//! allocator keeps around it (glibc's chunk headers and tcache, pymalloc's pools), with the
//! block's first bytes as the tie-breaker: buffers, list item arrays, dict key tables and native
//! `malloc` from C extensions or `ctypes` are followed this way, without hooking any free.
//!
//! The rule, per look at a sample:
//! - the allocator says freed: dead (its signal decided);
//! - it says in use and the first bytes are unchanged: alive (its signal decided);
//! - the first bytes changed: dead (the content decided). A free writes list pointers there, a
//!   block freed and reused by an allocation of the same size holds other bytes; a buffer written
//!   after its first look is lost the same way (it cannot be told from a reuse from outside);
//! - the allocator's state is undecided (torn read, not the allocator's layout): alive on
//!   unchanged bytes for at most `MAX_UNDECIDED_LOOKS` looks in a row, then dropped as
//!   unverifiable: a block no allocator vouches for is never called alive for long.

pub mod glibc;
pub mod pymalloc;

use leakprobe_common::AllocFunction;
use serde::{Deserialize, Serialize};

use crate::python::{layouts::PoolLayout, memory::ReadMemory};

/// What an allocator's state says of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    InUse,
    Freed,
    /// Not readable as the allocator's state (another allocator, a torn read, garbage).
    Unknown,
}

/// The allocator a sampled block came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    Glibc,
    Pymalloc,
}

impl Allocator {
    /// From the function the kernel saw allocate the block (its stack's) and the block's size:
    /// CPython's allocators hand blocks over 512 bytes to `malloc`.
    pub fn of(function: AllocFunction, size: u64, pool: &PoolLayout) -> Option<Allocator> {
        use AllocFunction::*;
        match function {
            Malloc | Calloc | Realloc | Reallocarray | PyMemRawMalloc | PyMemRawCalloc | PyMemRawRealloc => {
                Some(Allocator::Glibc)
            }
            PyObjectMalloc | PyObjectCalloc | PyObjectRealloc | PyMemMalloc | PyMemCalloc | PyMemRealloc => {
                Some(if size == 0 || size > pool.small_request_threshold {
                    Allocator::Glibc
                } else {
                    Allocator::Pymalloc
                })
            }
            _ => None,
        }
    }
}

/// What decided a sample's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// The Python object in the block (reference count, type, first bytes).
    ObjectFingerprint,
    GlibcChunk,
    PymallocPool,
    /// The block's first bytes, when the allocator's state could not decide.
    ContentFingerprint,
}

/// Samples per deciding signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalCounts {
    #[serde(default)]
    pub object_fingerprint: u64,
    #[serde(default)]
    pub glibc_chunk: u64,
    #[serde(default)]
    pub pymalloc_pool: u64,
    #[serde(default)]
    pub content_fingerprint: u64,
}

impl SignalCounts {
    pub fn add(&mut self, signal: Signal) {
        *match signal {
            Signal::ObjectFingerprint => &mut self.object_fingerprint,
            Signal::GlibcChunk => &mut self.glibc_chunk,
            Signal::PymallocPool => &mut self.pymalloc_pool,
            Signal::ContentFingerprint => &mut self.content_fingerprint,
        } += 1;
    }

    pub fn total(&self) -> u64 {
        self.object_fingerprint + self.glibc_chunk + self.pymalloc_pool + self.content_fingerprint
    }
}

/// How the samples were judged: per deciding signal, the samples found dead so far and the ones
/// alive at the last look, and the samples that could not be followed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleLiveness {
    #[serde(default)]
    pub dead: SignalCounts,
    #[serde(default)]
    pub live: SignalCounts,
    #[serde(default)]
    pub unverifiable: u64,
    /// Of those not followed: objects of the types the interpreter recycles through its own free
    /// lists, whose block need not hold the object allocated in it by the first look.
    #[serde(default)]
    pub recycled: u64,
    /// Of those not followed: blocks whose size and first bytes match a live block of another
    /// stack (contents that cannot tell a reuse by the other from the block itself).
    #[serde(default)]
    pub ambiguous: u64,
    /// Of those not followed: allocated less than 30 ms before their first look (at the window's
    /// end), so possibly mid-way through a short life whose block an unseen allocation of the
    /// same size and contents may take after the window.
    #[serde(default)]
    pub young: u64,
}

/// Looks in a row that the allocator's state may leave undecided before a sample is dropped.
pub const MAX_UNDECIDED_LOOKS: u8 = 3;
/// Leading bytes of a block that identify its contents. More than a header: a block freed and
/// reused by an allocation of the same shape (the key table of the next request's copy of the same
/// dict) has the same first 32 bytes; the entries after them hold other pointers (measured on the
/// small-leak fixture: with 32 bytes such tables read as alive and were flagged).
const CONTENT_BYTES: usize = 128;

/// A sampled block followed by its allocator's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSample {
    pub allocator: Allocator,
    content: u64,
    undecided_looks: u8,
}

/// One look's outcome for a block sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    Alive(Signal),
    Dead(Signal),
    Unverifiable,
}

/// What the readers need beside the memory, for one pass.
pub struct BlockReaders<'a> {
    pub pool: &'a PoolLayout,
    pub pools: pymalloc::Pools,
    pub tcache_key: Option<u64>,
}

impl BlockReaders<'_> {
    fn state(&mut self, mem: &impl ReadMemory, allocator: Allocator, address: u64, size: u64) -> (BlockState, Signal) {
        match allocator {
            Allocator::Glibc => (glibc::chunk_state(mem, address, size, self.tcache_key), Signal::GlibcChunk),
            Allocator::Pymalloc => {
                (pymalloc::block_state(mem, &mut self.pools, self.pool, address, size), Signal::PymallocPool)
            }
        }
    }
}

impl BlockSample {
    /// The first look at a block: `None` when it cannot be followed (unreadable).
    pub fn first_look(
        mem: &impl ReadMemory,
        readers: &mut BlockReaders,
        allocator: Allocator,
        address: u64,
        size: u64,
    ) -> Option<(BlockSample, Judgement)> {
        let content = content(mem, address, size)?;
        let mut sample = BlockSample { allocator, content, undecided_looks: 0 };
        let judgement = sample.judge(mem, readers, address, size);
        Some((sample, judgement))
    }

    /// The hash of the block's first bytes at its first look.
    pub fn content(&self) -> u64 {
        self.content
    }

    /// A later look (see the module's rule).
    pub fn judge(&mut self, mem: &impl ReadMemory, readers: &mut BlockReaders, address: u64, size: u64) -> Judgement {
        let (state, signal) = readers.state(mem, self.allocator, address, size);
        if state == BlockState::Freed {
            return Judgement::Dead(signal);
        }
        if content(mem, address, size) != Some(self.content) {
            return Judgement::Dead(Signal::ContentFingerprint);
        }
        if state == BlockState::InUse {
            self.undecided_looks = 0;
            return Judgement::Alive(signal);
        }
        self.undecided_looks += 1;
        if self.undecided_looks > MAX_UNDECIDED_LOOKS {
            Judgement::Unverifiable
        } else {
            Judgement::Alive(Signal::ContentFingerprint)
        }
    }
}

/// FNV-1a of the block's first bytes (`None`: unreadable).
fn content(mem: &impl ReadMemory, address: u64, size: u64) -> Option<u64> {
    let mut head = [0u8; CONTENT_BYTES];
    let len = (size as usize).min(CONTENT_BYTES);
    mem.read(address, &mut head[..len]).ok()?;
    Some(fnv1a(&head[..len]))
}

/// FNV-1a: a cheap hash of a few bytes, to tell whether they changed.
pub(crate) fn fnv1a<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io;

    use super::*;
    use crate::python::layouts;

    /// A contiguous little-endian memory image at `base`; everything else is unmapped.
    pub struct Bytes {
        base: u64,
        bytes: Vec<u8>,
    }

    impl Bytes {
        pub fn new(base: u64, len: usize) -> Bytes {
            Bytes { base, bytes: vec![0; len] }
        }

        fn at(&mut self, address: u64, value: &[u8]) {
            let start = (address - self.base) as usize;
            self.bytes[start..start + value.len()].copy_from_slice(value);
        }

        pub fn put(&mut self, address: u64, value: u64) {
            self.at(address, &value.to_le_bytes());
        }

        pub fn put_u32(&mut self, address: u64, value: u32) {
            self.at(address, &value.to_le_bytes());
        }

        pub fn put_u16(&mut self, address: u64, value: u16) {
            self.at(address, &value.to_le_bytes());
        }
    }

    impl ReadMemory for Bytes {
        fn read(&self, address: u64, buf: &mut [u8]) -> io::Result<()> {
            let start = address.checked_sub(self.base).map(|s| s as usize);
            match start.and_then(|s| self.bytes.get(s..s.checked_add(buf.len())?)) {
                Some(found) => {
                    buf.copy_from_slice(found);
                    Ok(())
                }
                None => Err(io::Error::new(io::ErrorKind::NotFound, "unmapped")),
            }
        }
    }

    /// A 4096-byte malloc block at 0x10_010 whose next chunk is in use.
    fn native_block() -> Bytes {
        let mut m = Bytes::new(0x10_000, 0x4000);
        m.put(0x10_008, 4112 | 1);
        m.put(0x10_010, 0x1234);
        m.put(0x10_000 + 4112 + 8, 48 | 1);
        m
    }

    #[test]
    fn a_native_block_is_alive_until_its_allocator_or_its_bytes_say_otherwise() {
        let pool = layouts::pool(12).unwrap();
        let mut readers = BlockReaders { pool: &pool, pools: Default::default(), tcache_key: Some(0x77) };
        let mut m = native_block();
        let (mut sample, first) = BlockSample::first_look(&m, &mut readers, Allocator::Glibc, 0x10_010, 4096).unwrap();
        assert_eq!(first, Judgement::Alive(Signal::GlibcChunk));
        // Cached by the tcache: its key at +8.
        m.put(0x10_018, 0x77);
        assert_eq!(sample.judge(&m, &mut readers, 0x10_010, 4096), Judgement::Dead(Signal::GlibcChunk));
        // Reused by an allocation of the same size that wrote other bytes.
        let mut m = native_block();
        m.put(0x10_010, 0x9999);
        assert_eq!(sample.judge(&m, &mut readers, 0x10_010, 4096), Judgement::Dead(Signal::ContentFingerprint));
    }

    #[test]
    fn an_undecided_block_is_dropped_after_a_few_looks() {
        let pool = layouts::pool(12).unwrap();
        let mut readers = BlockReaders { pool: &pool, pools: Default::default(), tcache_key: None };
        let mut m = native_block();
        m.put(0x10_000 + 4112 + 8, 0); // the next header reads as zero: undecided
        let (mut sample, first) = BlockSample::first_look(&m, &mut readers, Allocator::Glibc, 0x10_010, 4096).unwrap();
        assert_eq!(first, Judgement::Alive(Signal::ContentFingerprint));
        for _ in 1..MAX_UNDECIDED_LOOKS {
            assert_eq!(sample.judge(&m, &mut readers, 0x10_010, 4096), Judgement::Alive(Signal::ContentFingerprint));
        }
        assert_eq!(sample.judge(&m, &mut readers, 0x10_010, 4096), Judgement::Unverifiable);
        assert!(BlockSample::first_look(&m, &mut readers, Allocator::Glibc, 0x90_000, 64).is_none());
    }

    #[test]
    fn the_allocator_follows_the_function_and_the_size() {
        let pool = layouts::pool(11).unwrap();
        assert_eq!(Allocator::of(AllocFunction::PyObjectMalloc, 512, &pool), Some(Allocator::Pymalloc));
        assert_eq!(Allocator::of(AllocFunction::PyMemRealloc, 513, &pool), Some(Allocator::Glibc));
        assert_eq!(Allocator::of(AllocFunction::Calloc, 16, &pool), Some(Allocator::Glibc));
        assert_eq!(Allocator::of(AllocFunction::Mmap, 16, &pool), None);
    }
}
