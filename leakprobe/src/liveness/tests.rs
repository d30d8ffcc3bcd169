//! The liveness rules on synthetic memory.

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
    let types =
        [(STR_TYPE, 80, 0, TPFLAGS_UNICODE_SUBCLASS), (INT_TYPE, 24, 4, TPFLAGS_LONG_SUBCLASS), (TUPLE_TYPE, 24, 8, 0)];
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
/// A look in an open window, long after the test samples' timestamps.
const LOOK: Option<u64> = Some(u64::MAX);

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
    let pass = liveness.check(&m, &table, LOOK);
    let str3 = SampleKind::Object { ob_type: STR_TYPE, size: STR3_SIZE };
    assert_eq!(pass.live[&1], StackLive { allocations: 1, bytes: STR3_SIZE, kind: str3 });
    let tuple = SampleKind::Object { ob_type: TUPLE_TYPE, size: 56 };
    assert_eq!(pass.live[&2], StackLive { allocations: 1, bytes: 56, kind: tuple });
    assert_eq!(pass.forget, vec![0x30_000]);
    assert_eq!(liveness.unverifiable, 1);

    // The str is freed by pymalloc (a free-list pointer over its count), the GC one keeps
    // its header but its count went to 0.
    m.set(0x10_000, 0x5555_0000_1000);
    m.set(0x20_010, 0);
    let pass = liveness.check(&m, &table[..2], LOOK);
    assert!(pass.live.is_empty());
    assert_eq!(pass.forget, vec![0x10_000, 0x20_000]);
    assert_eq!(liveness.dead, 2);
}

#[test]
fn a_new_occupant_of_another_type_means_the_sample_died() {
    let m = memory();
    block(&m, 0x10_000, &[1, INT_TYPE, 1, 42]);
    let mut liveness = fresh(11);
    assert_eq!(liveness.check(&m, &[entry(0x10_000, 1, 28, 5)], LOOK).live.len(), 1);
    block(&m, 0x10_000, &[1, TUPLE_TYPE, 0, 0]);
    let pass = liveness.check(&m, &[entry(0x10_000, 1, 28, 5)], LOOK);
    assert!(pass.live.is_empty());
    // A new sample at the same address (new timestamp) is judged afresh.
    block(&m, 0x10_000, &[1, INT_TYPE, 1, 7]);
    let pass = liveness.check(&m, &[entry(0x10_000, 9, 28, 8)], LOOK);
    assert_eq!(pass.live[&9].allocations, 1);
}

#[test]
fn a_same_type_occupant_with_other_contents_means_the_sample_died() {
    let m = memory();
    str3(&m, 0x10_000, 1, u64::MAX, 0x0031_3233);
    let mut liveness = fresh(11);
    let table = [entry(0x10_000, 1, STR3_SIZE, 5)];
    assert_eq!(liveness.check(&m, &table, LOOK).live.len(), 1);
    // Its hash gets computed and its count moves: still the same object.
    str3(&m, 0x10_000, 4, 0x1234_5678, 0x0031_3233);
    assert_eq!(liveness.check(&m, &table, LOOK).live.len(), 1);
    // Freed and the block reused by another 3-character str.
    str3(&m, 0x10_000, 1, u64::MAX, 0x0039_3939);
    assert!(liveness.check(&m, &table, LOOK).live.is_empty());
}

#[test]
fn a_block_already_reused_by_an_object_of_another_size_is_not_sampled() {
    let m = memory();
    // Sampled as a 3-character str, found holding a 12-character one (same size class).
    block(&m, 0x10_000, &[1, STR_TYPE, 12, u64::MAX, ASCII, 0, 0x2d55_4b53, 0x3837_3732]);
    let mut liveness = fresh(11);
    let pass = liveness.check(&m, &[entry(0x10_000, 1, STR3_SIZE, 5)], LOOK);
    assert!(pass.live.is_empty());
    assert_eq!(liveness.unverifiable, 1);
    // 3.12+ str headers are 40 bytes.
    block(&m, 0x20_000, &[1, STR_TYPE, 3, u64::MAX, ASCII, 0x0031_3233]);
    let mut liveness = fresh(12);
    assert_eq!(liveness.check(&m, &[entry(0x20_000, 1, 44, 5)], LOOK).live.len(), 1);
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
    let pass = liveness.check(&m, &table, LOOK);
    assert_eq!(pass.live[&3], StackLive { allocations: 1, bytes: 4096, kind: SampleKind::Mixed });
    assert_eq!(pass.live_by, SignalCounts { glibc_chunk: 1, ..Default::default() });
    // Freed into a bin: the next chunk's PREV_INUSE bit is cleared.
    m.set(0x70_000 + 4112 + 8, 48);
    let pass = liveness.check(&m, &table, LOOK);
    assert!(pass.live.is_empty());
    assert_eq!(liveness.dead_by, SignalCounts { glibc_chunk: 1, ..Default::default() });
    // The same bytes with an unknown allocator: not followed, as before.
    let mut liveness = fresh(11);
    table[0].2 = None;
    m.set(0x70_000 + 4112 + 8, 48 | 1);
    assert!(liveness.check(&m, &table, LOOK).live.is_empty());
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
    let pass = liveness.check(&m, &[glibc(0x70_010, 1, 1), glibc(0x71_010, 1, 2)], LOOK);
    assert_eq!(pass.live[&1].allocations, 2);
    // A third, of another stack: none of the three can be told from a reuse by the other.
    let pass = liveness.check(&m, &[glibc(0x70_010, 1, 1), glibc(0x71_010, 1, 2), glibc(0x72_010, 2, 3)], LOOK);
    assert!(pass.live.is_empty(), "{:?}", pass.live);
    assert_eq!((liveness.ambiguous, liveness.unverifiable), (3, 3));
    // The same three, the other stack id said to be the same allocation site (one leak run
    // from two threads): one site's blocks are not each other's look-alikes.
    let mut liveness = fresh(11);
    liveness.set_site(1, 77);
    liveness.set_site(2, 77);
    let pass = liveness.check(&m, &[glibc(0x70_010, 1, 1), glibc(0x71_010, 1, 2), glibc(0x72_010, 2, 3)], LOOK);
    assert_eq!((pass.live[&1].allocations, pass.live[&2].allocations, liveness.ambiguous), (2, 1, 0));
    // Other contents in the other stack's block: it identifies itself.
    let mut liveness = fresh(11);
    m.set(0x72_010 + 8, 7);
    let pass = liveness.check(&m, &[glibc(0x70_010, 1, 1), glibc(0x72_010, 2, 3)], LOOK);
    assert_eq!((pass.live.len(), liveness.ambiguous), (2, 0));
}

#[test]
fn a_sample_first_seen_after_the_window_is_not_trusted() {
    let m = memory();
    str3(&m, 0x10_000, 1, u64::MAX, 0x0031_3233);
    let mut liveness = fresh(11);
    let pass = liveness.check(&m, &[entry(0x10_000, 1, STR3_SIZE, 5)], None);
    assert!(pass.live.is_empty());
    assert_eq!(pass.forget, vec![0x10_000]);
}

#[test]
fn a_sample_too_young_at_its_first_look_is_not_followed() {
    let m = memory();
    str3(&m, 0x10_000, 1, u64::MAX, 0x0031_3233);
    str3(&m, 0x20_000, 1, u64::MAX, 0x0031_3234);
    let mut liveness = fresh(11);
    let now = 1_000_000_000;
    let table = [
        entry(0x10_000, 1, STR3_SIZE, now - MIN_FIRST_LOOK_AGE_NS),
        entry(0x20_000, 2, STR3_SIZE, now - MIN_FIRST_LOOK_AGE_NS + 1),
    ];
    let pass = liveness.check(&m, &table, Some(now));
    assert_eq!((pass.live.len(), pass.live.contains_key(&1)), (1, true));
    assert_eq!(pass.forget, vec![0x20_000]);
    assert_eq!((liveness.young, liveness.unverifiable), (1, 1));
    // Allocated after the look began (a later timestamp): young too.
    let pass = liveness.check(&m, &[entry(0x20_000, 2, STR3_SIZE, now + 5)], Some(now));
    assert!(pass.live.is_empty());
    assert_eq!(liveness.young, 2);
}

#[test]
fn unreadable_or_garbage_memory_is_never_alive() {
    let m = memory();
    let mut liveness = fresh(11);
    // Unmapped block, a block too small for a header, a "type" that is not a type.
    block(&m, 0x40_000, &[1, 0x9999_0000]);
    m.set(0x9999_0008, 0x1234);
    let table = [entry(0x50_000, 1, 64, 1), entry(0x40_000, 1, 8, 2), entry(0x40_000, 1, 16, 3)];
    let pass = liveness.check(&m, &table, LOOK);
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
    assert_eq!(liveness.check(&m, &[entry(0x10_000, 1, 32, 1)], LOOK).live[&1].bytes, 32);
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
    let pass = liveness.check(&m, &table, LOOK);
    assert_eq!(pass.forget, vec![0x10_000], "the float is dropped, the 3.11 int followed");
    assert_eq!((liveness.unverifiable, liveness.recycled), (1, 1));
    assert_eq!(pass.live[&2].allocations, 1);

    let mut liveness = fresh(14);
    let pass = liveness.check(&m, &table, LOOK);
    assert!(pass.live.is_empty(), "3.14 recycles ints too");
    assert_eq!(liveness.recycled, 2);

    // A class of the same name defined in Python is a heap type: followed.
    m.set(float + type_info::TP_FLAGS, 1 << 9);
    let mut liveness = fresh(11);
    assert_eq!(liveness.check(&m, &table[..1], LOOK).live[&1].allocations, 1);
}

#[test]
fn a_stacks_kind_is_one_type_and_size_or_mixed() {
    let session = SampleKind::Object { ob_type: 0x1000, size: 48 };
    assert_eq!(SampleKind::Empty.with(session), session);
    assert_eq!(session.with(session), session);
    assert_eq!(session.with(SampleKind::Object { ob_type: 0x1000, size: 64 }), SampleKind::Mixed);
    assert_eq!(session.with(SampleKind::Object { ob_type: 0x2000, size: 48 }), SampleKind::Mixed);
    assert_eq!(SampleKind::Mixed.with(SampleKind::Empty), SampleKind::Mixed);
}
