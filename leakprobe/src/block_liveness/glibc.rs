//! Whether a glibc malloc chunk (x86_64) is still in use, read from the allocator's own state
//! around it: nothing in the target is hooked.
//!
//! A chunk's header is the 8 bytes before the block (`size | PREV_INUSE 1 | IS_MMAPPED 2 |
//! NON_MAIN_ARENA 4`), preceded by `prev_size`. An allocation of `S` bytes has the chunk size
//! `max(32, (S + 8 + 15) & !15)` (realloc may keep up to one minimum chunk more). Freed:
//! - the header no longer holds that size (the chunk was merged, split or reused for another);
//! - the next chunk's `PREV_INUSE` bit is 0 (freed into a bin, or merged with its neighbours);
//! - its second word is the process's tcache key (glibc 2.34+ writes it into every chunk it puts
//!   in a thread's cache, 2.29–2.33 the cache's address);
//! - mmapped chunks: the mapping is gone or holds another size.
//!
//! Chunks in a fast bin keep `PREV_INUSE` set and carry no key: in use by this state alone, so
//! the caller also compares the block's first bytes (a free writes a list pointer there).

use super::BlockState;
use crate::python::memory::ReadMemory;

const SIZE_SZ: u64 = 8;
const MINSIZE: u64 = 32;
const ALIGN_MASK: u64 = 15;
const PREV_INUSE: u64 = 1;
const IS_MMAPPED: u64 = 2;
const FLAGS: u64 = 7;
const PAGE: u64 = 4096;
/// Chunks larger than this are not plausible for a sampled block (garbage headers).
const MAX_CHUNK: u64 = 1 << 40;

/// The chunk size glibc gives a request of `size` bytes (`request2size`).
pub fn chunk_size(size: u64) -> u64 {
    let padded = size.saturating_add(SIZE_SZ + ALIGN_MASK);
    if padded < MINSIZE {
        MINSIZE
    } else {
        padded & !ALIGN_MASK
    }
}

/// The state of the chunk whose user block of `size` bytes is at `address`. `tcache_key`: the
/// process's tcache key, when learnt (see `find_tcache_key`).
pub fn chunk_state(mem: &impl ReadMemory, address: u64, size: u64, tcache_key: Option<u64>) -> BlockState {
    if address % 16 != 0 || address < 16 {
        return BlockState::Unknown;
    }
    // The size field, then the block's first two words (a cached chunk's `next` and `key`).
    let mut head = [0u8; 24];
    if mem.read(address - SIZE_SZ, &mut head).is_err() {
        return BlockState::Freed; // the block's memory was released (heap trimmed, mapping gone)
    }
    let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap_or_default());
    let (raw, key) = (word(0), word(16));
    let chunk = raw & !FLAGS;
    if tcache_key.is_some_and(|k| k != 0 && k == key) {
        return BlockState::Freed;
    }
    if raw & IS_MMAPPED != 0 {
        // `sysmalloc` maps the chunk size plus one word, rounded up to pages (`mremap` likewise).
        let needed = chunk_size(size).saturating_add(SIZE_SZ);
        let mapped = needed.saturating_add(PAGE - 1) & !(PAGE - 1);
        let same = chunk % PAGE == 0 && chunk >= needed && chunk <= mapped;
        return if same { BlockState::InUse } else { BlockState::Freed };
    }
    let expected = chunk_size(size);
    if chunk < expected || chunk >= expected + MINSIZE {
        return BlockState::Freed;
    }
    if chunk > MAX_CHUNK {
        return BlockState::Unknown;
    }
    // The next chunk's header: `address - 16 + chunk` is its start, its size 8 bytes in.
    match mem.read_u64(address - 2 * SIZE_SZ + chunk + SIZE_SZ) {
        Ok(next) if next & !FLAGS == 0 => BlockState::Unknown, // not a chunk header: racy or garbage
        Ok(next) if next & PREV_INUSE == 0 => BlockState::Freed,
        Ok(_) => BlockState::InUse,
        Err(_) => BlockState::Unknown,
    }
}

/// Bins in glibc's per-thread cache (`TCACHE_MAX_BINS`).
const TCACHE_BINS: usize = 64;
/// The chunk holding `tcache_perthread_struct` (64 u16 counts, 64 pointers): its size field.
const TCACHE_STRUCT_CHUNK: u64 = (16 + 2 * 64 + 8 * 64) | PREV_INUSE;

/// The tcache key of a process, read from its main thread's cache: the first chunk of the
/// `[heap]` mapping at `heap_start` is that cache, whose non-empty bins point to cached chunks
/// whose second word is the key. `None` when the cache is not there or every bin is empty (try
/// again later). Two cached chunks that disagree mean a racy read: `None`.
pub fn find_tcache_key(mem: &impl ReadMemory, heap_start: u64) -> Option<u64> {
    let mut cache = [0u8; 16 + 2 * TCACHE_BINS + 8 * TCACHE_BINS];
    mem.read(heap_start, &mut cache).ok()?;
    let word = |i: usize| u64::from_le_bytes(cache[i..i + 8].try_into().unwrap_or_default());
    if word(8) & !(FLAGS & !PREV_INUSE) != TCACHE_STRUCT_CHUNK {
        return None;
    }
    let counts = |i: usize| u16::from_le_bytes([cache[16 + 2 * i], cache[17 + 2 * i]]);
    let entries = 16 + 2 * TCACHE_BINS;
    let mut keys = (0..TCACHE_BINS)
        .filter(|&i| counts(i) > 0)
        .map(|i| word(entries + 8 * i))
        .filter(|&entry| entry != 0 && entry % 16 == 0)
        .take(2)
        .filter_map(|entry| mem.read_u64(entry + SIZE_SZ).ok());
    let first = keys.next().filter(|&k| k != 0)?;
    match keys.next() {
        Some(second) if second != first => None,
        _ => Some(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_liveness::tests::Bytes;

    const KEY: u64 = 0x1d2c_3b4a_5968_7788;

    /// A heap image at 0x10_000: chunk A (user 0x10_010, 4096 bytes) then chunk B then top.
    fn heap(a_size_field: u64, b_size_field: u64) -> Bytes {
        let mut m = Bytes::new(0x10_000, 0x4000);
        m.put(0x10_008, a_size_field);
        m.put(0x10_010, 0x4141_4141_4141_4141);
        m.put(0x10_000 + 4112 + 8, b_size_field);
        m
    }

    #[test]
    fn chunk_sizes_follow_request2size() {
        assert_eq!(chunk_size(0), 32);
        assert_eq!(chunk_size(24), 32);
        assert_eq!(chunk_size(25), 48);
        assert_eq!(chunk_size(4096), 4112);
        assert_eq!(chunk_size(u64::MAX), u64::MAX & !15);
    }

    #[test]
    fn an_allocated_chunk_is_in_use_and_a_binned_one_freed() {
        let m = heap(4112 | PREV_INUSE, 48 | PREV_INUSE);
        assert_eq!(chunk_state(&m, 0x10_010, 4096, Some(KEY)), BlockState::InUse);
        // Freed into the unsorted bin: B's PREV_INUSE cleared (and its prev_size set).
        let m = heap(4112 | PREV_INUSE, 48);
        assert_eq!(chunk_state(&m, 0x10_010, 4096, None), BlockState::Freed);
        // Merged or split: the header holds another size.
        let m = heap(8224 | PREV_INUSE, 48 | PREV_INUSE);
        assert_eq!(chunk_state(&m, 0x10_010, 4096, None), BlockState::Freed);
        // Realloc kept a slightly larger chunk: still this allocation.
        let mut m = Bytes::new(0x10_000, 0x4000);
        m.put(0x10_008, 4128 | PREV_INUSE);
        m.put(0x10_000 + 4128 + 8, 48 | PREV_INUSE);
        assert_eq!(chunk_state(&m, 0x10_010, 4096, None), BlockState::InUse);
    }

    #[test]
    fn a_cached_chunk_is_told_by_its_key() {
        let mut m = heap(4112 | PREV_INUSE, 48 | PREV_INUSE);
        m.put(0x10_010, (0x10_010 >> 12) ^ 0x20_010); // safe-linked next
        m.put(0x10_018, KEY);
        assert_eq!(chunk_state(&m, 0x10_010, 4096, Some(KEY)), BlockState::Freed);
        assert_eq!(chunk_state(&m, 0x10_010, 4096, None), BlockState::InUse, "without the key: ambiguous");
    }

    #[test]
    fn mmapped_chunks_are_freed_when_unmapped_or_resized() {
        let mut m = Bytes::new(0x100_000, 0x1000);
        m.put(0x100_008, 0x21000 | IS_MMAPPED);
        assert_eq!(chunk_state(&m, 0x100_010, 0x20000, None), BlockState::InUse);
        assert_eq!(chunk_state(&m, 0x100_010, 0x1000, None), BlockState::Freed, "another size");
        assert_eq!(chunk_state(&m, 0x900_010, 0x20000, None), BlockState::Freed, "unmapped");
        // A size just under a page multiple needs one more page for the header words.
        m.put(0x100_008, 0x21000 | IS_MMAPPED);
        assert_eq!(chunk_state(&m, 0x100_010, 0x20000 - 20, None), BlockState::InUse);
        assert_eq!(chunk_state(&m, 0x100_010, 0x20ff0, None), BlockState::Freed, "needs 0x22000");
    }

    #[test]
    fn garbage_and_races_never_panic_and_stay_undecided() {
        // The next header is zero (torn read) or past the end of what is readable.
        let m = heap(4112 | PREV_INUSE, 0);
        assert_eq!(chunk_state(&m, 0x10_010, 4096, None), BlockState::Unknown);
        let mut m = Bytes::new(0x10_000, 0x100);
        m.put(0x10_008, 4112 | PREV_INUSE);
        assert_eq!(chunk_state(&m, 0x10_010, 4096, None), BlockState::Unknown);
        // Misaligned or absurd addresses and sizes.
        assert_eq!(chunk_state(&m, 0x10_011, 4096, None), BlockState::Unknown);
        assert_eq!(chunk_state(&m, 0, 4096, None), BlockState::Unknown);
        let mut m = Bytes::new(0x10_000, 0x100);
        m.put(0x10_008, u64::MAX);
        for size in [0, 1, 4096, u64::MAX] {
            let _ = chunk_state(&m, 0x10_010, size, Some(KEY));
        }
    }

    #[test]
    fn the_tcache_key_is_read_from_the_main_threads_cache() {
        let mut m = Bytes::new(0x50_000, 0x2000);
        m.put(0x50_008, TCACHE_STRUCT_CHUNK);
        // Bin 3 holds one chunk at 0x50_400, bin 7 one at 0x50_800.
        m.put_u16(0x50_010 + 2 * 3, 1);
        m.put_u16(0x50_010 + 2 * 7, 2);
        m.put(0x50_090 + 8 * 3, 0x50_400);
        m.put(0x50_090 + 8 * 7, 0x50_800);
        m.put(0x50_408, KEY);
        m.put(0x50_808, KEY);
        assert_eq!(find_tcache_key(&m, 0x50_000), Some(KEY));
        m.put(0x50_808, KEY ^ 1);
        assert_eq!(find_tcache_key(&m, 0x50_000), None, "disagreeing chunks: a racy read");
        m.put(0x50_008, 0x411);
        assert_eq!(find_tcache_key(&m, 0x50_000), None, "not a tcache struct");
        let empty = Bytes::new(0x50_000, 0x1000);
        assert_eq!(find_tcache_key(&empty, 0x50_000), None);
        assert_eq!(find_tcache_key(&empty, 0x90_000), None);
    }
}
