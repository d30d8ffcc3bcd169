//! Reading another process's memory (process_vm_readv), the way py-spy does: nothing is injected
//! and the target is not stopped. The target mutates while we read, so every value read is
//! untrusted: callers bound lengths and treat failures as "unknown".

use std::io;

/// Largest single read we allow (guards against garbage lengths).
pub const MAX_READ: usize = 1 << 20;

pub trait ReadMemory {
    /// Fills `buf` from `address` in the target, or fails.
    fn read(&self, address: u64, buf: &mut [u8]) -> io::Result<()>;

    fn read_u64(&self, address: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(address, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_u32(&self, address: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read(address, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads many ranges at once into `out` (their lengths laid end to end); element `i` of the
    /// answer says whether range `i` was read whole. One bad range does not spoil the others.
    fn read_batch(&self, ranges: &[(u64, usize)], out: &mut [u8]) -> Vec<bool> {
        let mut at = 0;
        ranges
            .iter()
            .map(|&(address, len)| {
                let ok = out.get_mut(at..at + len).is_some_and(|buf| self.read(address, buf).is_ok());
                at += len;
                ok
            })
            .collect()
    }

    fn read_vec(&self, address: u64, len: usize) -> io::Result<Vec<u8>> {
        if len > MAX_READ {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("refusing to read {len} bytes")));
        }
        let mut v = vec![0u8; len];
        self.read(address, &mut v)?;
        Ok(v)
    }
}

/// Largest read `read_large` does (a million-entry dict's table is ~24 MiB).
pub const MAX_LARGE_READ: usize = 64 << 20;

/// `len` bytes at `address` in reads of at most `MAX_READ` (item arrays and key tables of big
/// containers), up to `MAX_LARGE_READ`.
pub fn read_large(mem: &impl ReadMemory, address: u64, len: usize) -> io::Result<Vec<u8>> {
    if len > MAX_LARGE_READ {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("refusing to read {len} bytes")));
    }
    let mut v = vec![0u8; len];
    for (i, chunk) in v.chunks_mut(MAX_READ).enumerate() {
        let at =
            address.checked_add((i * MAX_READ) as u64).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        mem.read(at, chunk)?;
    }
    Ok(v)
}

/// The memory of a live process, by PID.
#[derive(Debug, Clone, Copy)]
pub struct RemoteMemory {
    pub pid: u32,
}

impl ReadMemory for RemoteMemory {
    fn read(&self, address: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: address as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: `local` describes `buf`, which we own for the call; the kernel checks `remote`.
        let n = unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
        }
        Ok(())
    }

    fn read_batch(&self, ranges: &[(u64, usize)], out: &mut [u8]) -> Vec<bool> {
        let mut ok = vec![false; ranges.len()];
        self.read_ranges(ranges, out, &mut ok);
        ok
    }
}

/// Most remote ranges one `process_vm_readv` takes (`IOV_MAX`).
const MAX_IOVECS: usize = 1024;

impl RemoteMemory {
    /// `ranges[from..]` in calls of up to `MAX_IOVECS` ranges into one local buffer each. The
    /// kernel stops at the first range that faults and returns the bytes copied before it, so
    /// that range is marked failed and the call is issued again from the next one.
    fn read_ranges(&self, ranges: &[(u64, usize)], out: &mut [u8], ok: &mut [bool]) {
        let mut starts = Vec::with_capacity(ranges.len());
        let mut total = 0usize;
        for &(_, len) in ranges {
            starts.push(total);
            total += len;
        }
        if out.len() < total {
            return;
        }
        let mut first = 0;
        while first < ranges.len() {
            let last = (first + MAX_IOVECS).min(ranges.len());
            let remote: Vec<libc::iovec> = ranges[first..last]
                .iter()
                .map(|&(address, len)| libc::iovec { iov_base: address as *mut libc::c_void, iov_len: len })
                .collect();
            let begin = starts[first];
            let end = if last < ranges.len() { starts[last] } else { total };
            let local = libc::iovec { iov_base: out[begin..end].as_mut_ptr().cast(), iov_len: end - begin };
            // SAFETY: `local` describes `out[begin..end]`, which we own for the call; the kernel
            // checks every remote range.
            let n = unsafe {
                libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, remote.as_ptr(), remote.len() as _, 0)
            };
            let copied = if n < 0 {
                if io::Error::last_os_error().raw_os_error() != Some(libc::EFAULT) {
                    return; // ESRCH, EPERM: nothing more will read.
                }
                0
            } else {
                n as usize
            };
            let mut next = last;
            for i in first..last {
                let range_end = starts[i] - begin + ranges[i].1;
                if range_end <= copied {
                    ok[i] = true;
                } else {
                    next = i + 1;
                    break;
                }
            }
            first = next;
        }
    }
}

/// A byte slice standing in for a process (tests, and data already copied out).
pub struct SliceMemory<'a> {
    pub base: u64,
    pub bytes: &'a [u8],
}

impl ReadMemory for SliceMemory<'_> {
    fn read(&self, address: u64, buf: &mut [u8]) -> io::Result<()> {
        let start =
            address.checked_sub(self.base).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))? as usize;
        let end = start.checked_add(buf.len()).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let src = self.bytes.get(start..end).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_memory_through_the_kernel() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = RemoteMemory { pid: std::process::id() };
        assert_eq!(mem.read_u64(&value as *const u64 as u64).unwrap(), value);
        assert!(mem.read_u64(8).is_err(), "page 0 is never mapped");
        assert!(mem.read_vec(0x1000, MAX_READ + 1).is_err());
        let big: Vec<u8> = (0..MAX_READ * 2 + 5).map(|i| i as u8).collect();
        assert_eq!(read_large(&mem, big.as_ptr() as u64, big.len()).unwrap(), big);
        assert!(read_large(&mem, 0x1000, MAX_LARGE_READ + 1).is_err());
    }

    #[test]
    fn batched_reads_survive_a_bad_range() {
        let values: Vec<u64> = (0..3000).map(|i| i * 7 + 1).collect();
        let mem = RemoteMemory { pid: std::process::id() };
        let mut ranges: Vec<(u64, usize)> = values.iter().map(|v| (v as *const u64 as u64, 8)).collect();
        ranges[5] = (8, 8); // page 0: faults
        ranges[2000] = (16, 8);
        let mut out = vec![0u8; ranges.len() * 8];
        let ok = mem.read_batch(&ranges, &mut out);
        for (i, v) in values.iter().enumerate() {
            let want_ok = i != 5 && i != 2000;
            assert_eq!(ok[i], want_ok, "range {i}");
            if want_ok {
                assert_eq!(u64::from_le_bytes(out[i * 8..i * 8 + 8].try_into().unwrap()), *v);
            }
        }
        let slice = SliceMemory { base: 0, bytes: &[1, 2, 3, 4] };
        let mut out = [0u8; 4];
        assert_eq!(slice.read_batch(&[(0, 2), (3, 2)], &mut out), vec![true, false]);
    }

    #[test]
    fn slice_memory_bounds() {
        let bytes = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let mem = SliceMemory { base: 100, bytes: &bytes };
        assert_eq!(mem.read_u32(101).unwrap(), u32::from_le_bytes([2, 3, 4, 5]));
        assert!(mem.read_u64(102).is_err());
        assert!(mem.read_u32(99).is_err());
    }
}
