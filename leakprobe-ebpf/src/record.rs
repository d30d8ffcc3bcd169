//! Bookkeeping shared by every hook: pairing entries with returns per thread, and keeping the live
//! allocation table and the per-stack counters in step.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    EbpfContext,
};
use leakprobe_common::{Counter, LiveAllocation, LiveKey, PendingCall, StackCounters};

use crate::{
    maps::{count, LIVE_ALLOCATIONS, PENDING, STACK_COUNTERS, TARGETS},
    stack,
};

const BPF_NOEXIST: u64 = 1;
/// An allocator call open for longer than this lost its return (the probe was attached
/// mid-call, or the function left by longjmp); the entry is replaced and counted as a drop.
const STALE_NS: u64 = 1_000_000_000;

#[no_mangle]
static TARGET_TGID: u32 = 0;

/// The one process `record` and `watch` follow; 0 for the node-wide agent, which follows the
/// processes in `TARGETS`.
#[inline(always)]
pub fn target_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&raw const TARGET_TGID) }
}

/// Whether the current task belongs to a followed process.
#[inline(always)]
pub fn is_target() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match target_tgid() {
        0 => unsafe { TARGETS.get(&tgid) }.is_some(),
        target => tgid == target,
    }
}

/// The live-table key of `address` in the current process.
#[inline(always)]
fn key(address: u64) -> LiveKey {
    LiveKey { address, tgid: (bpf_get_current_pid_tgid() >> 32) as u32, reserved: 0 }
}

/// Whether a uprobe hit belongs to the target; counts the hit, which is what the overhead budget
/// charges for, and apart those at a breakpoint the kernel single-steps (a second, dearer trap).
#[inline(always)]
pub fn hooked(stepped: bool) -> bool {
    let target = is_target();
    if target {
        count(Counter::ProbeHits);
        if stepped {
            count(Counter::SteppedProbeHits);
        }
    }
    target
}

/// Entry of a hooked call that has a return hook. Only the outermost call of a thread is kept;
/// calls nested inside it (PyObject_Malloc -> malloc -> mmap) only bump its depth, because the
/// outermost call is the one the program asked for.
#[inline(always)]
pub fn enter(function: u32, size: u64, arg_ptr: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(open) = PENDING.get_ptr_mut(&tid) {
        let open = unsafe { &mut *open };
        if now.wrapping_sub(open.start_ns) < STALE_NS {
            open.depth += 1;
            count(Counter::NestedCalls);
            return;
        }
        count(Counter::DropMissedReturn);
    }
    let call = PendingCall { size, arg_ptr, start_ns: now, function, depth: 0 };
    if PENDING.insert(&tid, &call, 0).is_err() {
        count(Counter::DropPendingFull);
    }
}

/// Return of a hooked call: the call it closes if it is the outermost one, `None` if nested or
/// if its entry was never seen.
#[inline(always)]
pub fn exit() -> Option<PendingCall> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let open = PENDING.get_ptr_mut(&tid)?;
    let open = unsafe { &mut *open };
    if open.depth > 0 {
        open.depth -= 1;
        return None;
    }
    let call = *open;
    let _ = PENDING.remove(&tid);
    Some(call)
}

/// Records a new live allocation at `address`, attributed to the current stack.
#[inline(always)]
pub fn allocation<C: EbpfContext>(ctx: &C, address: u64, size: u64, function: u32) {
    if address == 0 {
        return;
    }
    // Still live at this address: its free went through a path we do not see. Release it first
    // so its stack does not look leaked.
    let key = key(address);
    if let Some(old) = unsafe { LIVE_ALLOCATIONS.get(&key) } {
        let old = *old;
        let _ = LIVE_ALLOCATIONS.remove(&key);
        add_to_stack(old.stack_id, 0, 1, 0, old.size);
        count(Counter::DropMissedFree);
    }
    let stack_id = stack::capture(ctx, function);
    let live = LiveAllocation { size, stack_id, timestamp_ns: unsafe { bpf_ktime_get_ns() } };
    if LIVE_ALLOCATIONS.insert(&key, &live, 0).is_err() {
        // Untracked: counting it would make its stack look leaked forever.
        count(Counter::DropLiveTableFull);
        return;
    }
    add_to_stack(stack_id, 1, 0, size, 0);
    count(Counter::Allocations);
}

/// Records the free of `address`.
#[inline(always)]
pub fn free(address: u64) {
    if address == 0 {
        return;
    }
    let key = key(address);
    match unsafe { LIVE_ALLOCATIONS.get(&key) } {
        Some(live) => {
            let live = *live;
            let _ = LIVE_ALLOCATIONS.remove(&key);
            add_to_stack(live.stack_id, 0, 1, 0, live.size);
            count(Counter::Frees);
        }
        None => count(Counter::UntrackedFrees),
    }
}

/// Records the release of `len` bytes from `address` (munmap, brk shrink): the whole mapping, or
/// its head (the tail stays live at its new start).
#[inline(always)]
pub fn unmap(address: u64, len: u64) {
    let key = key(address);
    let Some(live) = (unsafe { LIVE_ALLOCATIONS.get(&key) }) else {
        count(Counter::UntrackedFrees);
        return;
    };
    let live = *live;
    let _ = LIVE_ALLOCATIONS.remove(&key);
    if len >= live.size {
        add_to_stack(live.stack_id, 0, 1, 0, live.size);
        count(Counter::Frees);
        return;
    }
    let tail = LiveAllocation { size: live.size - len, ..live };
    if LIVE_ALLOCATIONS.insert(&LiveKey { address: address + len, ..key }, &tail, 0).is_err() {
        // The tail is no longer tracked: release all of it from the stack.
        add_to_stack(live.stack_id, 0, 1, 0, live.size);
        count(Counter::DropLiveTableFull);
        return;
    }
    add_to_stack(live.stack_id, 0, 0, 0, len);
}

#[inline(always)]
fn add_to_stack(stack_id: u64, allocs: u64, frees: u64, alloc_bytes: u64, free_bytes: u64) {
    let counters = match STACK_COUNTERS.get_ptr_mut(&stack_id) {
        Some(c) => c,
        None => {
            let _ = STACK_COUNTERS.insert(&stack_id, &StackCounters::default(), BPF_NOEXIST);
            match STACK_COUNTERS.get_ptr_mut(&stack_id) {
                Some(c) => c,
                None => {
                    count(Counter::DropCountersFull);
                    return;
                }
            }
        }
    };
    // Several CPUs update the same stack: atomic adds (the result is unused, so this is a plain
    // BPF_XADD that every kernel supports).
    unsafe {
        if allocs != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*counters).allocs, allocs);
        }
        if frees != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*counters).frees, frees);
        }
        if alloc_bytes != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*counters).alloc_bytes, alloc_bytes);
        }
        if free_bytes != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*counters).free_bytes, free_bytes);
        }
    }
}
