//! The maps shared with userspace. Sizes here are defaults; the loader resizes them before load.
//! Userspace finds each map by name: `#[map]` takes the static's identifier and no constant, so a
//! rename here must be made in `leakprobe_common::names` too (leakprobe's
//! `kernel::tests::object_names_match_common` checks the built object against it).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use leakprobe_common::{Counter, LiveAllocation, LiveKey, PendingCall, PythonConfig, StackCounters, StackTrace};

/// Hash maps that may grow large allocate on demand instead of up front.
const BPF_F_NO_PREALLOC: u32 = 1;

/// (address, process) -> live allocation (size, stack, time). A plain hash, never LRU: evicting
/// the oldest entries would evict exactly the leaked ones.
#[map]
pub static LIVE_ALLOCATIONS: HashMap<LiveKey, LiveAllocation> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// stack id (hash of the frames) -> frames.
#[map]
pub static STACKS: HashMap<u64, StackTrace> = HashMap::with_max_entries(1 << 15, BPF_F_NO_PREALLOC);

/// stack id -> allocation/free counters. Userspace reads these aggregates each interval.
#[map]
pub static STACK_COUNTERS: HashMap<u64, StackCounters> = HashMap::with_max_entries(1 << 15, BPF_F_NO_PREALLOC);

/// thread id -> the allocator call in flight on it.
#[map]
pub static PENDING: HashMap<u32, PendingCall> = HashMap::with_max_entries(1 << 14, 0);

/// tgid -> the program break as last seen, to turn brk() results into deltas.
#[map]
pub static BRK_CURRENT: HashMap<u32, u64> = HashMap::with_max_entries(1 << 10, 0);

/// tgid -> how to walk that process's CPython frames (absent: not a Python we can read).
#[map]
pub static PYTHON_CONFIG: HashMap<u32, PythonConfig> = HashMap::with_max_entries(1 << 10, 0);

/// thread id -> its `PyThreadState` address, kept current by userspace from the interpreter's
/// own thread list. Works with the GIL held or released and needs no libc or kernel internals.
#[map]
pub static THREAD_STATES: HashMap<u32, u64> = HashMap::with_max_entries(1 << 14, 0);

/// tgid -> 1 for every process the node-wide agent watches (when `TARGET_TGID` is 0).
#[map]
pub static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(1 << 12, 0);

/// exec/fork/exit of processes, for the agent (`ProcessEvent` records).
#[map]
pub static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 18, 0);

/// Event and drop counters, indexed by `Counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Scratch space for building a `StackTrace` (too large for the 512-byte BPF stack).
#[map]
pub static SCRATCH_STACK: PerCpuArray<StackTrace> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, and this program is not preempted.
        unsafe { *slot += 1 };
    }
}
