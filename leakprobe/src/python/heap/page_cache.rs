//! A census reads most objects one small read at a time (a GC list is a linked list), but
//! objects allocated together sit together: pymalloc carves them from the same pools. Reading a
//! whole page the first time one of its bytes is wanted, and answering the next reads from that
//! copy, turns ~1 syscall per object into ~1 per page. The copy is a snapshot: a page read
//! earlier in the census may be older than one read later, which the census's link and type
//! checks already treat like any other racy read.

use std::{cell::RefCell, collections::HashMap, hash::BuildHasherDefault, io};

use super::address_set::AddressHasher;

use crate::python::memory::ReadMemory;

/// Bytes per cached piece: one page, which is mapped or not as a whole.
const PAGE: u64 = 4096;

/// Page address → its bytes, or None when it could not be read whole.
type Pages = HashMap<u64, Option<Box<[u8]>>, BuildHasherDefault<AddressHasher>>;

pub struct PageCache<'a, M: ReadMemory> {
    inner: &'a M,
    pages: RefCell<Pages>,
    max_pages: usize,
}

impl<'a, M: ReadMemory> PageCache<'a, M> {
    /// A cache of at most `max_bytes` (emptied when full: a census moves through the heap, so
    /// the pages it needs next are rarely the old ones).
    pub fn new(inner: &'a M, max_bytes: u64) -> Self {
        PageCache { inner, pages: RefCell::new(HashMap::default()), max_pages: (max_bytes / PAGE).max(1) as usize }
    }

    /// Forgets every copy (a walk retried after a list changed must see the new pages).
    pub fn clear(&self) {
        self.pages.borrow_mut().clear();
    }

    /// Copies `buf.len()` bytes at `address` from cached pages; false when a page is unreadable.
    fn copy_from_pages(&self, address: u64, buf: &mut [u8]) -> bool {
        let mut pages = self.pages.borrow_mut();
        let mut done = 0usize;
        while done < buf.len() {
            let at = address + done as u64;
            let page = at & !(PAGE - 1);
            if !pages.contains_key(&page) {
                if pages.len() >= self.max_pages {
                    pages.clear();
                }
                let mut bytes = vec![0u8; PAGE as usize].into_boxed_slice();
                let read = self.inner.read(page, &mut bytes).is_ok();
                pages.insert(page, read.then_some(bytes));
            }
            let Some(Some(bytes)) = pages.get(&page) else { return false };
            let offset = (at - page) as usize;
            let n = (PAGE as usize - offset).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[offset..offset + n]);
            done += n;
        }
        true
    }
}

impl<M: ReadMemory> ReadMemory for PageCache<'_, M> {
    fn read(&self, address: u64, buf: &mut [u8]) -> io::Result<()> {
        // Large reads (item arrays, key tables) go straight through; so does the rare small read
        // on a page that cannot be read whole.
        let end = address.checked_add(buf.len() as u64).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if buf.len() as u64 > PAGE || (end - 1) / PAGE > address / PAGE + 1 || !self.copy_from_pages(address, buf) {
            return self.inner.read(address, buf);
        }
        Ok(())
    }

    fn read_batch(&self, ranges: &[(u64, usize)], out: &mut [u8]) -> Vec<bool> {
        // Each range from the cache when it can be; the rest in one batch of the inner memory.
        let mut ok = vec![false; ranges.len()];
        let (mut rest, mut rest_at) = (Vec::new(), Vec::new());
        let mut at = 0;
        for (i, &(address, len)) in ranges.iter().enumerate() {
            let Some(buf) = out.get_mut(at..at + len) else { break };
            if len as u64 <= PAGE && self.copy_from_pages(address, buf) {
                ok[i] = true;
            } else {
                rest.push((address, len));
                rest_at.push((i, at));
            }
            at += len;
        }
        if !rest.is_empty() {
            let total: usize = rest.iter().map(|r| r.1).sum();
            let mut buf = vec![0u8; total];
            let done = self.inner.read_batch(&rest, &mut buf);
            let mut from = 0;
            for ((&(_, len), &(i, to)), read) in rest.iter().zip(&rest_at).zip(done) {
                if read {
                    out[to..to + len].copy_from_slice(&buf[from..from + len]);
                    ok[i] = true;
                }
                from += len;
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::{heap::metered::Metered, memory::SliceMemory};

    #[test]
    fn small_reads_come_from_one_page_read() {
        let bytes: Vec<u8> = (0..3 * PAGE).map(|i| (i % 251) as u8).collect();
        let slice = SliceMemory { base: 0x10000, bytes: &bytes };
        let metered = Metered::new(&slice);
        let cache = PageCache::new(&metered, 1 << 20);
        for i in 0..100u64 {
            assert_eq!(cache.read_u64(0x10000 + i * 40).unwrap(), slice.read_u64(0x10000 + i * 40).unwrap());
        }
        assert_eq!(metered.calls(), 1, "one page read for 100 small reads");
        // Across a page boundary, and at the end of the memory (the last page is whole here).
        assert_eq!(cache.read_u64(0x10000 + PAGE - 4).unwrap(), slice.read_u64(0x10000 + PAGE - 4).unwrap());
        assert!(cache.read_u64(0x10000 + 3 * PAGE - 4).is_err(), "past the end");
        let mut out = vec![0u8; 16];
        assert_eq!(cache.read_batch(&[(0x10000 + 8, 8), (0x90000, 8)], &mut out), vec![true, false]);
        assert_eq!(&out[..8], &bytes[8..16]);
    }
}
