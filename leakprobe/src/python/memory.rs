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

    fn read_vec(&self, address: u64, len: usize) -> io::Result<Vec<u8>> {
        if len > MAX_READ {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("refusing to read {len} bytes")));
        }
        let mut v = vec![0u8; len];
        self.read(address, &mut v)?;
        Ok(v)
    }
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
