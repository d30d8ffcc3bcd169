//! Whether a pymalloc block is still in use, read from its pool: blocks of up to 512 bytes live
//! in pools (`POOL_SIZE`-aligned), each headed by a `pool_header` that says its size class and
//! holds the head of its chain of freed blocks (each freed block's first word is the next).
//!
//! Freed: the pool is gone (arena released), empty (`ref.count` 0), serves another size class
//! now, was re-initialised past the block (`nextoffset` not beyond it), or the block is on the
//! pool's free chain. A header that is not a pool's (another allocator, a torn read) or a chain
//! that leaves the pool is undecided. The whole pool is read once per pass (one read, bounded
//! walk), shared by the samples it holds.

use std::collections::HashMap;

use super::BlockState;
use crate::python::{layouts::PoolLayout, memory::ReadMemory};

/// Pools read in this pass (`None`: unreadable).
#[derive(Default)]
pub struct Pools(HashMap<u64, Option<Vec<u8>>>);

impl Pools {
    fn get(&mut self, mem: &impl ReadMemory, pool: u64, size: usize) -> Option<&[u8]> {
        self.0
            .entry(pool)
            .or_insert_with(|| {
                let mut image = vec![0u8; size];
                mem.read(pool, &mut image).ok().map(|_| image)
            })
            .as_deref()
    }
}

/// The state of the block of `size` bytes at `address`, from its pool.
pub fn block_state(
    mem: &impl ReadMemory,
    pools: &mut Pools,
    layout: &PoolLayout,
    address: u64,
    size: u64,
) -> BlockState {
    if size == 0 || size > layout.small_request_threshold {
        return BlockState::Unknown; // not a pymalloc block
    }
    let pool_size = layout.pool_size;
    let pool = address & !(pool_size - 1);
    let Some(image) = pools.get(mem, pool, pool_size as usize) else {
        return BlockState::Freed; // the arena was released
    };
    let u32_at = |o: u64| u32::from_le_bytes(image[o as usize..o as usize + 4].try_into().unwrap_or_default());
    let u64_at = |o: u64| u64::from_le_bytes(image[o as usize..o as usize + 8].try_into().unwrap_or_default());
    let (count, szidx) = (u32_at(layout.ref_count), u32_at(layout.szidx));
    let (nextoffset, maxnextoffset) = (u64::from(u32_at(layout.nextoffset)), u64::from(u32_at(layout.maxnextoffset)));
    let class = (size - 1) >> layout.alignment_shift;
    let block_size = |idx: u64| (idx + 1) << layout.alignment_shift;
    let classes = layout.small_request_threshold >> layout.alignment_shift;
    let is_pool = u64::from(szidx) < classes && maxnextoffset == pool_size - block_size(u64::from(szidx));
    if !is_pool {
        // An empty pool cached for reuse has the dummy class: the block was freed with it.
        return if szidx == layout.dummy_size_index && count == 0 { BlockState::Freed } else { BlockState::Unknown };
    }
    let offset = address - pool;
    let block = block_size(u64::from(szidx));
    if offset < layout.overhead || (offset - layout.overhead) % block != 0 || nextoffset > pool_size + block {
        return if u64::from(szidx) == class { BlockState::Unknown } else { BlockState::Freed };
    }
    if u64::from(szidx) != class || count == 0 || offset >= nextoffset {
        return BlockState::Freed;
    }
    // The free chain: at most one hop per block of the pool.
    let mut next = u64_at(layout.freeblock);
    for _ in 0..pool_size / block {
        if next == 0 {
            return BlockState::InUse;
        }
        if next == address {
            return BlockState::Freed;
        }
        let inside =
            next >= pool + layout.overhead && next < pool + pool_size && (next - pool - layout.overhead) % block == 0;
        if !inside {
            return BlockState::Unknown; // torn read or not a pool
        }
        next = u64_at(next - pool);
    }
    BlockState::Unknown // a cycle: torn read
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{block_liveness::tests::Bytes, python::layouts};

    const POOL: u64 = 0x7f00_0000_4000;

    /// A pool of 48-byte blocks (class 2) with `count` in use, carved up to block 10.
    fn pool(count: u32, freeblock: u64) -> (Bytes, PoolLayout) {
        let l = layouts::pool(12).unwrap();
        let mut m = Bytes::new(POOL, l.pool_size as usize);
        m.put_u32(POOL + l.ref_count, count);
        m.put(POOL + l.freeblock, freeblock);
        m.put_u32(POOL + l.szidx, 2);
        m.put_u32(POOL + l.nextoffset, (l.overhead + 10 * 48) as u32);
        m.put_u32(POOL + l.maxnextoffset, (l.pool_size - 48) as u32);
        (m, l)
    }

    fn block(l: &PoolLayout, i: u64) -> u64 {
        POOL + l.overhead + 48 * i
    }

    #[test]
    fn blocks_on_the_free_chain_are_freed_and_others_in_use() {
        let l = layouts::pool(12).unwrap();
        let (mut m, _) = pool(8, block(&l, 5));
        m.put(block(&l, 5), block(&l, 2));
        m.put(block(&l, 2), 0);
        let mut pools = Pools::default();
        assert_eq!(block_state(&m, &mut pools, &l, block(&l, 2), 40), BlockState::Freed);
        assert_eq!(block_state(&m, &mut pools, &l, block(&l, 5), 48), BlockState::Freed);
        assert_eq!(block_state(&m, &mut pools, &l, block(&l, 3), 33), BlockState::InUse);
        assert_eq!(block_state(&m, &mut pools, &l, block(&l, 12), 48), BlockState::Freed, "past nextoffset");
    }

    #[test]
    fn an_empty_reused_or_released_pool_means_freed() {
        let l = layouts::pool(12).unwrap();
        let (m, _) = pool(0, 0);
        assert_eq!(block_state(&m, &mut Pools::default(), &l, block(&l, 3), 48), BlockState::Freed);
        // The pool now serves 48-byte blocks, the sample was a 16-byte one.
        let (m, _) = pool(3, 0);
        assert_eq!(block_state(&m, &mut Pools::default(), &l, POOL + l.overhead + 16 * 7, 16), BlockState::Freed);
        let mut m = Bytes::new(POOL, l.pool_size as usize);
        m.put_u32(POOL + l.szidx, l.dummy_size_index);
        assert_eq!(block_state(&m, &mut Pools::default(), &l, block(&l, 3), 48), BlockState::Freed);
        let unmapped = Bytes::new(0x1000, 16);
        assert_eq!(block_state(&unmapped, &mut Pools::default(), &l, block(&l, 3), 48), BlockState::Freed);
    }

    #[test]
    fn garbage_headers_and_torn_chains_are_undecided() {
        let l = layouts::pool(12).unwrap();
        // Not a pool header at all (a glibc heap, say).
        let mut m = Bytes::new(POOL, l.pool_size as usize);
        m.put(POOL, 0x4141_4141_4141_4141);
        m.put(POOL + 32, 0x4141_4141_4141_4141);
        assert_eq!(block_state(&m, &mut Pools::default(), &l, block(&l, 3), 48), BlockState::Unknown);
        // A chain leaving the pool, a chain that cycles.
        let (mut m, _) = pool(8, block(&l, 5));
        m.put(block(&l, 5), 0xdead_0000);
        assert_eq!(block_state(&m, &mut Pools::default(), &l, block(&l, 3), 48), BlockState::Unknown);
        m.put(block(&l, 5), block(&l, 5));
        assert_eq!(block_state(&m, &mut Pools::default(), &l, block(&l, 3), 48), BlockState::Unknown);
        // A misaligned block, sizes pymalloc does not serve.
        assert_eq!(block_state(&m, &mut Pools::default(), &l, block(&l, 3) + 8, 48), BlockState::Unknown);
        assert_eq!(block_state(&m, &mut Pools::default(), &l, block(&l, 3), 0), BlockState::Unknown);
        assert_eq!(block_state(&m, &mut Pools::default(), &l, block(&l, 3), 513), BlockState::Unknown);
        assert_eq!(block_state(&m, &mut Pools::default(), &l, POOL + 8, 48), BlockState::Unknown);
    }
}
