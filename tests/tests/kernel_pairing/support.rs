//! The kernel programs loaded for this test process, with probes on its own trigger functions,
//! and the readings the tests assert on.

use std::{collections::HashMap, num::NonZeroU32, path::PathBuf};

use leakprobe::{
    elf_symbols::function_offsets,
    kernel::{Counters, Kernel, TableSizes},
    loader::entry_program,
    tracefs,
};
use leakprobe_common::{names, AllocFunction, CallShape, Counter, LiveAllocation};

pub const PAGE: u64 = 4096;

/// A function of this test binary, probed as the allocator function its cookie names.
#[derive(Clone, Copy)]
pub struct Hook {
    pub symbol: &'static str,
    pub function: AllocFunction,
}

pub struct Probed {
    kernel: Kernel,
    exe: PathBuf,
    pid: NonZeroU32,
}

impl Probed {
    /// The kernel programs for this process with `hooks` attached (entry and, for allocating
    /// shapes, return); `None`, after saying so, when not root.
    pub fn new(hooks: &[Hook]) -> Option<Probed> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading kernel programs needs root");
            return None;
        }
        let pid = std::process::id();
        let mut kernel = Kernel::for_process(pid, TableSizes::default()).expect("load the kernel programs");
        kernel.load_uprobes().expect("load the uprobe programs");
        let exe = std::env::current_exe().unwrap();
        let mut probed = Probed { kernel, exe, pid: NonZeroU32::new(pid).unwrap() };
        for &hook in hooks {
            // Its return first, as the loader does: an entry seen without its return would leave
            // the thread inside a call.
            if hook.function.shape() != CallShape::Free {
                probed.attach(names::ALLOC_RETURN, hook);
            }
            probed.hook_entry_only(hook);
        }
        Some(probed)
    }

    /// As `new`, with the memory-syscall tracepoints attached as well.
    pub fn with_syscalls(hooks: &[Hook]) -> Option<Probed> {
        let mut probed = Probed::new(hooks)?;
        tracefs::ensure_mounted().expect("tracefs");
        probed.kernel.attach_tracepoints("syscalls", names::SYSCALL_TRACEPOINTS).expect("attach the tracepoints");
        Some(probed)
    }

    /// Attaches `hook`'s entry program only: its returns go unseen.
    pub fn hook_entry_only(&mut self, hook: Hook) {
        let program = entry_program(hook.function.shape()).expect("an allocator shape");
        self.attach(program, hook);
    }

    fn attach(&mut self, program: &'static str, hook: Hook) {
        let offsets = function_offsets(&self.exe, &[hook.symbol]).unwrap();
        let offset = *offsets.get(hook.symbol).unwrap_or_else(|| panic!("{} not in the test binary", hook.symbol));
        self.kernel
            .attach_uprobe(program, &[(offset, hook.function as u64)], &self.exe, self.pid)
            .unwrap_or_else(|e| panic!("attach {program} to {}: {e:#}", hook.symbol));
    }

    pub fn counters(&self) -> Counters {
        self.kernel.counters().unwrap()
    }

    /// This process's live allocations by address.
    pub fn live(&self) -> HashMap<u64, LiveAllocation> {
        let entries = self.kernel.live_allocations().unwrap().into_iter();
        entries.filter(|(key, _)| key.tgid == self.pid.get()).map(|(key, live)| (key.address, live)).collect()
    }

    /// Every stack's counters.
    pub fn stacks(&self) -> HashMap<u64, Tally> {
        let counters = self.kernel.stack_counters().unwrap().into_iter();
        counters
            .map(|(id, c)| (id, Tally { allocs: c.allocs, frees: c.frees, bytes: c.alloc_bytes, freed: c.free_bytes }))
            .collect()
    }

    pub fn stack_tally(&self, stack: u64) -> Tally {
        self.stacks().get(&stack).copied().unwrap_or_default()
    }

    /// The counters of every stack captured in `function`, summed.
    pub fn function_tally(&self, function: AllocFunction) -> Tally {
        let stacks = self.stacks().into_iter().filter(|&(id, _)| self.stack_function(id) == Some(function));
        stacks.fold(Tally::default(), |sum, (_, t)| Tally {
            allocs: sum.allocs + t.allocs,
            frees: sum.frees + t.frees,
            bytes: sum.bytes + t.bytes,
            freed: sum.freed + t.freed,
        })
    }

    pub fn stack_function(&self, stack: u64) -> Option<AllocFunction> {
        self.kernel.stack_function(stack)
    }
}

/// One stack's (or several stacks') `StackCounters`, comparable.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub allocs: u64,
    pub frees: u64,
    pub bytes: u64,
    pub freed: u64,
}

impl Tally {
    /// `allocs` allocations of `bytes` in all, none freed.
    pub fn allocated(allocs: u64, bytes: u64) -> Tally {
        Tally { allocs, bytes, ..Tally::default() }
    }

    pub fn live_bytes(&self) -> u64 {
        self.bytes - self.freed
    }
}

/// Every drop counter is 0, except those in `expected`, which have exactly their value.
pub fn assert_no_drops(counters: &Counters, expected: &[(Counter, u64)]) {
    for counter in Counter::all().filter(|c| c.is_drop()) {
        let want = expected.iter().find(|(c, _)| *c == counter).map_or(0, |&(_, n)| n);
        assert_eq!(counters.get(counter), want, "{}", counter.name());
    }
}

/// Frees through libc directly, unseen by the probes (the blocks' entries stay live).
pub fn free_unhooked(blocks: &[*mut u8]) {
    blocks.iter().for_each(|&block| unsafe { libc::free(block.cast()) });
}

pub fn map(len: u64, prot: i32, flags: i32, fd: i32) -> u64 {
    let address = unsafe { libc::mmap(std::ptr::null_mut(), len as usize, prot, flags, fd, 0) };
    assert_ne!(address, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    address as u64
}

/// Private anonymous memory that can be read and written: heap-like.
pub fn map_anonymous(len: u64) -> u64 {
    map(len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
}

pub fn unmap(address: u64, len: u64) {
    assert_eq!(unsafe { libc::munmap(address as *mut _, len as usize) }, 0, "munmap");
}

/// The program break, read with a brk syscall: the first one the kernel sees is its baseline.
pub fn observe_break() -> u64 {
    unsafe { libc::syscall(libc::SYS_brk, 0) as u64 }
}

/// Moves the break up by `len` bytes; returns where the growth starts.
pub fn grow_break(len: u64) -> u64 {
    let start = unsafe { libc::sbrk(len as libc::intptr_t) };
    assert_ne!(start as isize, -1, "sbrk: {}", std::io::Error::last_os_error());
    start as u64
}

pub fn shrink_break(len: u64) {
    let before = unsafe { libc::sbrk(-(len as libc::intptr_t)) };
    assert_ne!(before as isize, -1, "sbrk: {}", std::io::Error::last_os_error());
}
