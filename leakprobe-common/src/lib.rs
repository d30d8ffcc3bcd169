//! The ABI shared by the kernel programs (`leakprobe-ebpf`) and the loader (`leakprobe`).
//!
//! Every type here is `#[repr(C)]`, has no padding and no `bool`, and its size is asserted, so that
//! both sides agree on the bytes in the BPF maps.
#![no_std]

/// Native frames kept per stack. `bpf_get_stack` fills at most this many.
pub const MAX_NATIVE_FRAMES: usize = 64;
/// Python frames kept per stack (filled by the Python unwinder; zero until it runs).
pub const MAX_PYTHON_FRAMES: usize = 32;

/// Which allocator entry point produced an event. Set by userspace as the attach cookie of every
/// uprobe, and by the syscall tracepoints themselves; part of the stack key, so the same call path
/// through `malloc` and through `PyObject_Malloc` are two series.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocFunction {
    Malloc = 0,
    Calloc,
    Realloc,
    Reallocarray,
    Free,
    PosixMemalign,
    AlignedAlloc,
    Memalign,
    Valloc,
    Pvalloc,
    PyObjectMalloc,
    PyObjectCalloc,
    PyObjectRealloc,
    PyObjectFree,
    PyMemMalloc,
    PyMemCalloc,
    PyMemRealloc,
    PyMemFree,
    PyMemRawMalloc,
    PyMemRawCalloc,
    PyMemRawRealloc,
    PyMemRawFree,
    Mmap,
    Munmap,
    Mremap,
    Brk,
}

impl AllocFunction {
    pub const COUNT: u32 = AllocFunction::Brk as u32 + 1;

    pub fn from_u32(v: u32) -> Option<Self> {
        if v < Self::COUNT {
            // SAFETY: the enum is repr(u32), dense from 0 to COUNT-1.
            Some(unsafe { core::mem::transmute::<u32, AllocFunction>(v) })
        } else {
            None
        }
    }

    /// The symbol this entry point is known by (the syscall name for the tracepoints).
    pub fn symbol(self) -> &'static str {
        use AllocFunction::*;
        match self {
            Malloc => "malloc",
            Calloc => "calloc",
            Realloc => "realloc",
            Reallocarray => "reallocarray",
            Free => "free",
            PosixMemalign => "posix_memalign",
            AlignedAlloc => "aligned_alloc",
            Memalign => "memalign",
            Valloc => "valloc",
            Pvalloc => "pvalloc",
            PyObjectMalloc => "PyObject_Malloc",
            PyObjectCalloc => "PyObject_Calloc",
            PyObjectRealloc => "PyObject_Realloc",
            PyObjectFree => "PyObject_Free",
            PyMemMalloc => "PyMem_Malloc",
            PyMemCalloc => "PyMem_Calloc",
            PyMemRealloc => "PyMem_Realloc",
            PyMemFree => "PyMem_Free",
            PyMemRawMalloc => "PyMem_RawMalloc",
            PyMemRawCalloc => "PyMem_RawCalloc",
            PyMemRawRealloc => "PyMem_RawRealloc",
            PyMemRawFree => "PyMem_RawFree",
            Mmap => "mmap",
            Munmap => "munmap",
            Mremap => "mremap",
            Brk => "brk",
        }
    }

    /// The argument shape of the call, which decides the entry program to attach.
    pub fn shape(self) -> CallShape {
        use AllocFunction::*;
        match self {
            Malloc | Valloc | Pvalloc | PyObjectMalloc | PyMemMalloc | PyMemRawMalloc => CallShape::Size,
            Calloc | PyObjectCalloc | PyMemCalloc | PyMemRawCalloc => CallShape::CountSize,
            Realloc | PyObjectRealloc | PyMemRealloc | PyMemRawRealloc => CallShape::PtrSize,
            Reallocarray => CallShape::PtrCountSize,
            AlignedAlloc | Memalign => CallShape::AlignSize,
            PosixMemalign => CallShape::OutPtrAlignSize,
            Free | PyObjectFree | PyMemFree | PyMemRawFree => CallShape::Free,
            Mmap | Munmap | Mremap | Brk => CallShape::Syscall,
        }
    }

    /// The entry point known by `symbol` (the report names stacks by it).
    pub fn from_symbol(symbol: &str) -> Option<Self> {
        (0..Self::COUNT).filter_map(Self::from_u32).find(|f| f.symbol() == symbol)
    }

    /// A memory syscall (mmap, munmap, mremap, brk): its stacks say where the heap grows, not
    /// which allocation keeps it.
    pub fn is_syscall(self) -> bool {
        self.shape() == CallShape::Syscall
    }

    /// Whether this is one of CPython's allocator functions (as opposed to libc's or the kernel's).
    pub fn is_python(self) -> bool {
        (self as u32) >= AllocFunction::PyObjectMalloc as u32 && (self as u32) <= AllocFunction::PyMemRawFree as u32
    }

    /// Every uprobe-able function, in id order.
    pub fn uprobe_functions() -> impl Iterator<Item = AllocFunction> {
        (0..AllocFunction::Mmap as u32).filter_map(AllocFunction::from_u32)
    }
}

/// How a hooked function takes its arguments and gives its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallShape {
    /// `f(size) -> ptr`
    Size,
    /// `f(n, size) -> ptr`
    CountSize,
    /// `f(ptr, size) -> ptr`
    PtrSize,
    /// `f(ptr, n, size) -> ptr`
    PtrCountSize,
    /// `f(align, size) -> ptr`
    AlignSize,
    /// `f(void **out, align, size) -> int`
    OutPtrAlignSize,
    /// `f(ptr)`
    Free,
    /// handled by the syscall tracepoints
    Syscall,
}

impl CallShape {
    /// Integer arguments the entry program reads.
    pub fn integer_args(self) -> usize {
        match self {
            CallShape::Size | CallShape::Free => 1,
            CallShape::CountSize | CallShape::PtrSize | CallShape::AlignSize => 2,
            CallShape::PtrCountSize | CallShape::OutPtrAlignSize => 3,
            CallShape::Syscall => 0,
        }
    }
}

/// An allocator call in flight on one thread, between its entry and its return.
/// Keyed by thread id (not tgid) so concurrent threads never pair each other's calls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingCall {
    /// Requested size in bytes.
    pub size: u64,
    /// `realloc`'s old pointer, `posix_memalign`'s out-pointer, or `mremap`'s old address.
    pub arg_ptr: u64,
    /// When the outermost call started (ns, monotonic); a stale entry means a missed return.
    pub start_ns: u64,
    /// `AllocFunction` of the outermost call.
    pub function: u32,
    /// How many hooked calls are nested inside the outermost one (e.g. PyObject_Malloc -> malloc
    /// -> mmap). Only the outermost call is recorded: it is the one the program asked for.
    pub depth: u32,
}

/// The key of a live allocation: its address in its process. The process is part of the key
/// because the agent watches many processes in one table, and forked workers share addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LiveKey {
    pub address: u64,
    pub tgid: u32,
    pub reserved: u32,
}

/// One allocation that is still live, keyed by `LiveKey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LiveAllocation {
    pub size: u64,
    pub stack_id: u64,
    pub timestamp_ns: u64,
}

/// Per-stack counters, updated atomically by the kernel side. Live bytes are
/// `alloc_bytes - free_bytes`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StackCounters {
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    pub free_bytes: u64,
}

/// One Python frame as the kernel reads it: the code object and the instruction offset in it.
/// Userspace resolves it to a function, file and line by reading the target's memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PythonFrame {
    pub code_object: u64,
    pub instruction: u64,
}

/// Flags in `StackTrace::flags`.
pub const STACK_NATIVE_TRUNCATED: u32 = 1 << 0;
pub const STACK_PYTHON_TRUNCATED: u32 = 1 << 1;
pub const STACK_PYTHON_UNAVAILABLE: u32 = 1 << 2;

/// A captured call stack: the value behind a stack id. The id is a hash of every field below
/// (computed in the kernel), so ids never recycle as `BPF_MAP_TYPE_STACK_TRACE` ids do.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackTrace {
    pub function: u32,
    pub flags: u32,
    pub native_len: u32,
    pub python_len: u32,
    /// The process the stack was captured in (stacks of different processes never share an id).
    pub tgid: u32,
    pub reserved: u32,
    /// Return addresses, innermost first (the first is the allocator's caller).
    pub native: [u64; MAX_NATIVE_FRAMES],
    /// Innermost first.
    pub python: [PythonFrame; MAX_PYTHON_FRAMES],
}

impl StackTrace {
    /// The Python frames the kernel read, innermost first.
    pub fn python_frames(&self) -> &[PythonFrame] {
        &self.python[..(self.python_len as usize).min(MAX_PYTHON_FRAMES)]
    }
}

/// Indexes into the per-CPU `COUNTERS` array. Every way an event can be lost has its own counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Allocation events recorded.
    Allocations = 0,
    /// Free events that matched a live allocation.
    Frees,
    /// Frees of addresses not allocated while we watched (normal: allocated before attach).
    UntrackedFrees,
    /// Calls skipped because an outer hooked call on the same thread will record them.
    NestedCalls,
    /// Drop: the live-allocation table was full; the allocation is not tracked.
    DropLiveTableFull,
    /// Drop: the stack table was full; the allocation is counted under an unknown stack.
    DropStackTableFull,
    /// Drop: the per-stack counter table was full.
    DropCountersFull,
    /// Drop: `bpf_get_stack` failed.
    DropStackCapture,
    /// Drop: a return never arrived (found a stale pending entry).
    DropMissedReturn,
    /// Drop: the pending-call table was full.
    DropPendingFull,
    /// An allocation at an address we thought live: the old one's free was missed.
    DropMissedFree,
    /// Uprobe and uretprobe hits in the target: what the budget charges for.
    ProbeHits,
    /// The part of `ProbeHits` that were entry hits at a single-stepped site (`cookie::STEPPED`):
    /// each costs a second trap, so the budget charges them apart.
    SteppedProbeHits,
    /// Drop: the process-event ring buffer was full (the agent rescans /proc to catch up).
    DropProcessEvents,
}

impl Counter {
    pub const COUNT: u32 = Counter::DropProcessEvents as u32 + 1;

    pub fn from_u32(v: u32) -> Option<Self> {
        if v < Self::COUNT {
            // SAFETY: repr(u32), dense from 0 to COUNT-1.
            Some(unsafe { core::mem::transmute::<u32, Counter>(v) })
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        use Counter::*;
        match self {
            Allocations => "allocations",
            Frees => "frees",
            UntrackedFrees => "untracked_frees",
            NestedCalls => "nested_calls",
            DropLiveTableFull => "drop_live_table_full",
            DropStackTableFull => "drop_stack_table_full",
            DropCountersFull => "drop_counters_full",
            DropStackCapture => "drop_stack_capture",
            DropMissedReturn => "drop_missed_return",
            DropPendingFull => "drop_pending_full",
            DropMissedFree => "drop_missed_free",
            ProbeHits => "probe_hits",
            SteppedProbeHits => "stepped_probe_hits",
            DropProcessEvents => "drop_process_events",
        }
    }

    pub fn is_drop(self) -> bool {
        self.name().starts_with("drop_")
    }

    /// A drop that sampling windows make by design rather than a loss: frees are not hooked, so a
    /// freed block's address allocated again shows as a missed free, and a window can close
    /// between a call's entry and its return.
    pub fn is_by_design_in_windows(self) -> bool {
        matches!(self, Counter::DropMissedFree | Counter::DropMissedReturn)
    }

    /// The counter called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().find(|c| c.name() == name)
    }

    /// Every counter, in index order.
    pub fn all() -> impl Iterator<Item = Counter> {
        (0..Self::COUNT).filter_map(Counter::from_u32)
    }
}

/// The attach cookie of every allocator uprobe: which function it is (low 32 bits, an
/// `AllocFunction`), which register holds each argument at the breakpoint (userspace moves the
/// breakpoint past instructions that may copy an argument elsewhere), and whether the kernel
/// single-steps the instruction under it.
///
/// Bits 32..56 hold 4 bits per argument slot 0..6: the hardware number of the register (rax = 0,
/// rcx = 1, ... r15 = 15, as in the ModRM encoding) XOR that of the slot's System V register, so
/// 0 means "where the ABI puts it" and a cookie of a plain `AllocFunction` reads every argument
/// from its usual register. Bit 63 is [`cookie::STEPPED`].
pub mod cookie {
    /// Set when the breakpoint's instruction is single-stepped (counted in `SteppedProbeHits`).
    pub const STEPPED: u64 = 1 << 63;
    /// Argument slots the cookie can place.
    pub const ARG_SLOTS: usize = 6;
    const REGISTERS_SHIFT: u32 = 32;
    /// Hardware numbers of the System V integer argument registers: rdi, rsi, rdx, rcx, r8, r9.
    pub const SYSV_ARGUMENTS: [u8; ARG_SLOTS] = [7, 6, 2, 1, 8, 9];

    /// The cookie of `function` whose argument `n` is in the register numbered `registers[n]`
    /// (slots past `registers.len()` stay where the ABI puts them).
    pub fn encode(function: u32, registers: &[u8], stepped: bool) -> u64 {
        let mut cookie = function as u64;
        for (slot, &register) in registers.iter().take(ARG_SLOTS).enumerate() {
            let nibble = ((register ^ SYSV_ARGUMENTS[slot]) & 0xf) as u64;
            cookie |= nibble << (REGISTERS_SHIFT + 4 * slot as u32);
        }
        if stepped {
            cookie |= STEPPED;
        }
        cookie
    }

    /// The `AllocFunction` number.
    #[inline(always)]
    pub fn function(cookie: u64) -> u32 {
        cookie as u32
    }

    /// The hardware number of the register holding argument `slot` (< `ARG_SLOTS`).
    #[inline(always)]
    pub fn register(cookie: u64, slot: usize) -> u8 {
        ((cookie >> (REGISTERS_SHIFT + 4 * slot as u32)) as u8 & 0xf) ^ SYSV_ARGUMENTS[slot]
    }

    #[inline(always)]
    pub fn stepped(cookie: u64) -> bool {
        cookie & STEPPED != 0
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_plain_function_reads_the_abi_registers() {
            let cookie = encode(13, &[], false);
            assert_eq!(cookie, 13);
            assert_eq!(function(cookie), 13);
            assert!(!stepped(cookie));
            for slot in 0..ARG_SLOTS {
                assert_eq!(register(cookie, slot), SYSV_ARGUMENTS[slot]);
            }
        }

        #[test]
        fn moved_arguments_and_the_stepped_bit_round_trip() {
            // size moved to rsi (6), the second argument to r15 (15), the third left in rdx.
            let cookie = encode(10, &[6, 15, 2], true);
            assert_eq!(function(cookie), 10);
            assert!(stepped(cookie));
            assert_eq!((register(cookie, 0), register(cookie, 1), register(cookie, 2)), (6, 15, 2));
            assert_eq!(register(cookie, 5), 9);
            // Every register in every slot.
            for slot in 0..ARG_SLOTS {
                for reg in 0..16u8 {
                    let mut regs = [0u8; ARG_SLOTS];
                    regs.copy_from_slice(&SYSV_ARGUMENTS);
                    regs[slot] = reg;
                    let cookie = encode(u32::MAX, &regs, false);
                    assert_eq!(function(cookie), u32::MAX);
                    assert_eq!(register(cookie, slot), reg);
                    assert!(!stepped(cookie));
                }
            }
        }
    }
}

/// Marks an offset that does not apply to this CPython version.
pub const NO_OFFSET: u32 = u32::MAX;
/// Bytes of a frame record the kernel reads at once (3.10's `PyFrameObject` up to `f_lasti`).
pub const PYTHON_FRAME_READ: usize = 104;

/// How to walk one CPython's frames, filled by userspace per version (from its layout tables or,
/// on 3.13+, from the target's own `_Py_DebugOffsets`). All offsets are bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonConfig {
    /// `frame = *(tstate + tstate_frame)`; then, when `cframe_frame != NO_OFFSET` (3.11/3.12, where
    /// the thread state points at a `_PyCFrame`), `frame = *(frame + cframe_frame)`.
    pub tstate_frame: u32,
    pub cframe_frame: u32,
    pub frame_previous: u32,
    pub frame_code: u32,
    /// `f_lasti` (3.10: an int in code units) or `prev_instr`/`instr_ptr` (3.11+: a pointer).
    pub frame_instruction: u32,
    /// `owner` byte, or NO_OFFSET (3.10).
    pub frame_owner: u32,
    /// Frames whose owner is >= this are interpreter shims, not Python code (3.12+: 3).
    pub owner_skip_min: u32,
    /// 1 when `frame_instruction` is a pointer into the code object's bytecode.
    pub instruction_is_pointer: u32,
    /// Offset of the bytecode in the code object (`co_code_adaptive`), for pointer instructions.
    pub code_bytecode: u32,
    /// Bytes to read per frame (<= PYTHON_FRAME_READ).
    pub frame_read_size: u32,
    /// Applied to the code pointer (3.14 tags it in its low bits).
    pub code_mask: u64,
    /// `&_Py_NoneStruct` in the target: the code of a C entry frame on 3.13+; 0 when unused.
    pub none_address: u64,
    /// Native frames kept when Python frames were found. An interpreter built without frame
    /// pointers leaves garbage past the first native frame, different at every call: kept, it
    /// would split one Python stack into thousands of stack ids.
    pub native_frames_with_python: u32,
    pub reserved: u32,
}

/// Names of the maps, globals and programs, shared so a rename cannot split the two sides. The
/// kernel's `#[map]` and program macros take the static's or function's own identifier (not a
/// constant), so `leakprobe-ebpf` spells each name once more: a rename there must be made here too
/// (`kernel::tests::object_names_match_common` checks the built object against this module).
pub mod names {
    // Maps.
    pub const LIVE_ALLOCATIONS: &str = "LIVE_ALLOCATIONS";
    pub const STACKS: &str = "STACKS";
    pub const STACK_COUNTERS: &str = "STACK_COUNTERS";
    pub const PENDING: &str = "PENDING";
    pub const BRK_CURRENT: &str = "BRK_CURRENT";
    pub const COUNTERS: &str = "COUNTERS";
    pub const PYTHON_CONFIG: &str = "PYTHON_CONFIG";
    pub const THREAD_STATES: &str = "THREAD_STATES";
    pub const TARGETS: &str = "TARGETS";
    pub const PROCESS_EVENTS: &str = "PROCESS_EVENTS";
    /// Maps userspace reads or writes (`SCRATCH_STACK` is the kernel's own).
    pub const MAPS: &[&str] = &[
        LIVE_ALLOCATIONS,
        STACKS,
        STACK_COUNTERS,
        PENDING,
        BRK_CURRENT,
        COUNTERS,
        PYTHON_CONFIG,
        THREAD_STATES,
        TARGETS,
        PROCESS_EVENTS,
    ];

    // Globals the loader overrides.
    pub const TARGET_TGID: &str = "TARGET_TGID";
    pub const FORK_CHILD_PID_OFFSET: &str = "FORK_CHILD_PID_OFFSET";

    // Uprobe programs: one entry program for every hooked function (the cookie names the
    // function, hence its call shape) and one return program, each in two link kinds.
    pub const ALLOC_ENTRY: &str = "alloc_entry";
    pub const ALLOC_RETURN: &str = "alloc_return";
    /// The same programs for uprobe_multi links (every site of a binary in one link).
    pub const ALLOC_ENTRY_MULTI: &str = "alloc_entry_multi";
    pub const ALLOC_RETURN_MULTI: &str = "alloc_return_multi";
    /// Every uprobe program: the ones the budget charges for.
    pub const UPROBE_PROGRAMS: &[&str] = &[ALLOC_ENTRY, ALLOC_RETURN, ALLOC_ENTRY_MULTI, ALLOC_RETURN_MULTI];

    /// The memory-syscall tracepoint programs and their tracepoints (category `syscalls`).
    pub const SYSCALL_TRACEPOINTS: &[(&str, &str)] = &[
        ("mmap_enter", "sys_enter_mmap"),
        ("mmap_exit", "sys_exit_mmap"),
        ("munmap_enter", "sys_enter_munmap"),
        ("mremap_enter", "sys_enter_mremap"),
        ("mremap_exit", "sys_exit_mremap"),
        ("brk_enter", "sys_enter_brk"),
        ("brk_exit", "sys_exit_brk"),
    ];
    /// The process-lifecycle tracepoint programs of the agent and their tracepoints (category
    /// `sched`).
    pub const SCHED_TRACEPOINTS: &[(&str, &str)] = &[
        ("process_exec", "sched_process_exec"),
        ("process_fork", "sched_process_fork"),
        ("process_exit", "sched_process_exit"),
    ];

    /// Every program in the kernel object: uprobes, then syscall and sched tracepoints.
    pub fn programs() -> impl Iterator<Item = &'static str> {
        let tracepoints = SYSCALL_TRACEPOINTS.iter().chain(SCHED_TRACEPOINTS).map(|&(program, _)| program);
        UPROBE_PROGRAMS.iter().copied().chain(tracepoints)
    }
}

/// What happened to a process, as the node-wide agent hears it from the kernel.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEventKind {
    /// Any process on the node ran exec: maybe a new Python.
    Exec = 0,
    /// A watched process forked (a worker), or started a thread: `pid` is the new task.
    Fork = 1,
    /// A watched process ended (its last thread exited).
    Exit = 2,
}

/// One record of the process-event ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessEvent {
    pub kind: u32,
    pub pid: u32,
    /// The process that forked (Fork), else 0.
    pub parent: u32,
    pub reserved: u32,
    /// The task's command name after the event (`comm`).
    pub comm: [u8; 16],
}

/// The id under which events whose stack could not be stored are counted.
pub const UNKNOWN_STACK_ID: u64 = 0;

const _: () = assert!(core::mem::size_of::<PendingCall>() == 32);
const _: () = assert!(core::mem::size_of::<LiveAllocation>() == 24);
const _: () = assert!(core::mem::size_of::<StackCounters>() == 32);
const _: () = assert!(core::mem::size_of::<PythonFrame>() == 16);
const _: () = assert!(core::mem::size_of::<PythonConfig>() == 64);
const _: () = assert!(core::mem::size_of::<LiveKey>() == 16);
const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 32);
const _: () = assert!(core::mem::size_of::<StackTrace>() == 24 + 8 * MAX_NATIVE_FRAMES + 16 * MAX_PYTHON_FRAMES);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain old data: repr(C), no padding, every bit pattern valid.
    unsafe impl aya::Pod for PendingCall {}
    unsafe impl aya::Pod for LiveAllocation {}
    unsafe impl aya::Pod for LiveKey {}
    unsafe impl aya::Pod for StackCounters {}
    unsafe impl aya::Pod for StackTrace {}
    unsafe impl aya::Pod for PythonConfig {}
}
