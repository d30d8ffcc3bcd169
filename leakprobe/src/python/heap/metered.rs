//! A `ReadMemory` that counts what it reads, so a census can say its cost and stop at its
//! byte bound.

use std::{cell::Cell, io};

use crate::python::memory::ReadMemory;

pub struct Metered<'a, M: ReadMemory> {
    inner: &'a M,
    bytes: Cell<u64>,
    calls: Cell<u64>,
}

impl<'a, M: ReadMemory> Metered<'a, M> {
    pub fn new(inner: &'a M) -> Self {
        Metered { inner, bytes: Cell::new(0), calls: Cell::new(0) }
    }

    /// Bytes asked for so far (read or not: a failed read costs a syscall too).
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// Read calls so far (a batch counts once).
    pub fn calls(&self) -> u64 {
        self.calls.get()
    }
}

impl<M: ReadMemory> ReadMemory for Metered<'_, M> {
    fn read(&self, address: u64, buf: &mut [u8]) -> io::Result<()> {
        self.bytes.set(self.bytes.get() + buf.len() as u64);
        self.calls.set(self.calls.get() + 1);
        self.inner.read(address, buf)
    }

    fn read_batch(&self, ranges: &[(u64, usize)], out: &mut [u8]) -> Vec<bool> {
        self.bytes.set(self.bytes.get() + ranges.iter().map(|r| r.1 as u64).sum::<u64>());
        self.calls.set(self.calls.get() + 1);
        self.inner.read_batch(ranges, out)
    }
}
