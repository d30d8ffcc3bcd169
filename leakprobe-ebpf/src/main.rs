//! Kernel side of leakprobe: uprobes on the allocator API of one process and tracepoints on its
//! memory syscalls. Each event updates a table of live allocations and per-stack counters in
//! place, so userspace reads aggregates each interval instead of a stream of events.
//!
//! Every program is a thin wrapper: read the arguments, call into `record`.
//!
//! Userspace loads each program by its function's name, spelled again in `leakprobe_common::names`
//! (the program macros take no constant): a program added or renamed here goes there too, where
//! leakprobe's `kernel::tests::object_names_match_common` checks them against the built object.
#![no_std]
#![no_main]
// Atomic add on map values: the BPF target has no `AtomicU64::fetch_add` in core.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod maps;
mod python;
mod record;
mod stack;

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use leakprobe_common::{cookie, AllocFunction, CallShape, Counter, ProcessEvent, ProcessEventKind};

use crate::maps::{count, BRK_CURRENT, PROCESS_EVENTS, TARGETS};

/// The attach cookie userspace gives every uprobe (`leakprobe_common::cookie`): the hooked
/// function, where its arguments are at the breakpoint, whether the breakpoint is single-stepped.
#[inline(always)]
fn cookie<C: EbpfContext>(ctx: &C) -> u64 {
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// The general-purpose registers at the breakpoint, by hardware number (rax = 0 ... r15 = 15).
/// The verifier rejects reads of the context at a variable offset, and a `match` over the
/// register number is compiled into one such read (the arms' loads are merged), so every register
/// is read at its constant offset into a stack array, which may be indexed at a variable offset.
/// The volatile reads keep the compiler from turning the copy back into a read of the context.
#[inline(always)]
fn registers(ctx: &ProbeContext) -> [u64; 16] {
    let regs = ctx.regs;
    macro_rules! read {
        ($($field:ident),*) => {
            [$(unsafe { core::ptr::read_volatile(&raw const (*regs).$field) }),*]
        };
    }
    read!(rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15)
}

/// Argument `n` of the hooked call, from the register the cookie names (the breakpoint may sit
/// after the function copied it).
#[inline(always)]
fn arg(registers: &[u64; 16], cookie: u64, n: usize) -> u64 {
    registers[(cookie::register(cookie, n) & 0xf) as usize]
}

/// Whether an entry hit belongs to the target (counting it): then the cookie and the registers.
#[inline(always)]
fn entry(ctx: &ProbeContext) -> Option<(u64, [u64; 16])> {
    let cookie = cookie(ctx);
    record::hooked(cookie::stepped(cookie)).then(|| (cookie, registers(ctx)))
}

// ---- allocator entry points and returns (uprobes) ----
// One entry program for every hooked function: the cookie names the function, so its call shape
// (where the size and pointer arguments are) is decided here, and one link per binary can carry
// every function of that binary. Each program comes twice, identical but for the link kind: a
// `multi` one for uprobe_multi links (all of a binary's sites in one link, detached in one grace
// period) and a plain one for kernels without them (one link per site).

/// Entry of every hooked function: `malloc(size)`, `calloc(n, size)`, `realloc(ptr, size)`,
/// `reallocarray(ptr, n, size)`, `aligned_alloc(align, size)`, `posix_memalign(out, align, size)`,
/// `free(ptr)` and CPython's counterparts, told apart by the cookie's function.
#[inline(always)]
fn on_entry(ctx: &ProbeContext) {
    let Some((c, r)) = entry(ctx) else { return };
    let function = cookie::function(c);
    let Some(shape) = AllocFunction::from_u32(function).map(AllocFunction::shape) else { return };
    let (size, ptr) = match shape {
        CallShape::Size => (arg(&r, c, 0), 0),
        CallShape::CountSize => (arg(&r, c, 0).wrapping_mul(arg(&r, c, 1)), 0),
        CallShape::PtrSize => (arg(&r, c, 1), arg(&r, c, 0)),
        CallShape::PtrCountSize => (arg(&r, c, 1).wrapping_mul(arg(&r, c, 2)), arg(&r, c, 0)),
        CallShape::AlignSize => (arg(&r, c, 1), 0),
        CallShape::OutPtrAlignSize => (arg(&r, c, 2), arg(&r, c, 0)),
        CallShape::Free => {
            // No return hook: the block is gone at entry.
            record::free(arg(&r, c, 0));
            return;
        }
        CallShape::Syscall => return,
    };
    record::enter(function, size, ptr);
}

#[uprobe]
pub fn alloc_entry(ctx: ProbeContext) -> u32 {
    on_entry(&ctx);
    0
}

#[uprobe(multi)]
pub fn alloc_entry_multi(ctx: ProbeContext) -> u32 {
    on_entry(&ctx);
    0
}

/// Return of every allocating function: pairs with the entry recorded on this thread.
#[inline(always)]
fn on_return(ctx: &RetProbeContext) {
    // A return is never single-stepped: the kernel's return trampoline takes one trap.
    if !record::hooked(false) {
        return;
    }
    let Some(call) = record::exit() else { return };
    let Some(function) = AllocFunction::from_u32(call.function) else {
        return;
    };
    let ret: u64 = ctx.ret();
    match function.shape() {
        CallShape::PtrSize | CallShape::PtrCountSize => {
            // realloc: on success the old block is gone (even if it moved nowhere); on failure
            // it is untouched, except that realloc(p, 0) frees p and may return NULL.
            if ret != 0 || call.size == 0 {
                record::free(call.arg_ptr);
            }
            record::allocation(ctx, ret, call.size, call.function);
        }
        CallShape::OutPtrAlignSize => {
            if ret as u32 == 0 {
                let address = unsafe { bpf_probe_read_user(call.arg_ptr as *const u64) }.unwrap_or(0);
                record::allocation(ctx, address, call.size, call.function);
            }
        }
        _ => record::allocation(ctx, ret, call.size, call.function),
    }
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    on_return(&ctx);
    0
}

#[uretprobe(multi)]
pub fn alloc_return_multi(ctx: RetProbeContext) -> u32 {
    on_return(&ctx);
    0
}

// ---- memory syscalls (tracepoints syscalls:sys_{enter,exit}_*) ----
// Layout of the syscall tracepoint records: 8 bytes of common fields, the syscall number (padded
// to 8), then each argument as 8 bytes from offset 16; the exit record has the return at 16.

const ARG0: usize = 16;
const RET: usize = 16;
const MAP_ANONYMOUS: u64 = 0x20;
const PROT_NONE: u64 = 0;

#[inline(always)]
fn tp_arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
fn tp_ret(ctx: &TracePointContext) -> Option<u64> {
    let ret = unsafe { ctx.read_at::<i64>(RET) }.ok()?;
    // -4095..-1 are errors.
    if (-4095..0).contains(&ret) {
        None
    } else {
        Some(ret as u64)
    }
}

#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    if record::is_target() {
        let (len, prot, flags) = (tp_arg(&ctx, 1), tp_arg(&ctx, 2), tp_arg(&ctx, 3));
        // Only anonymous memory that can be touched is heap-like; size 0 marks "not tracked"
        // (the entry is still pushed so that the exit pairs with it).
        let tracked = flags & MAP_ANONYMOUS != 0 && prot != PROT_NONE;
        record::enter(AllocFunction::Mmap as u32, if tracked { len } else { 0 }, 0);
    }
    0
}

#[tracepoint]
pub fn mmap_exit(ctx: TracePointContext) -> u32 {
    if !record::is_target() {
        return 0;
    }
    let Some(call) = record::exit() else { return 0 };
    if let Some(address) = tp_ret(&ctx) {
        if call.function == AllocFunction::Mmap as u32 && call.size != 0 {
            record::allocation(&ctx, address, call.size, call.function);
        }
    }
    0
}

#[tracepoint]
pub fn munmap_enter(ctx: TracePointContext) -> u32 {
    if record::is_target() {
        record::unmap(tp_arg(&ctx, 0), tp_arg(&ctx, 1));
    }
    0
}

#[tracepoint]
pub fn mremap_enter(ctx: TracePointContext) -> u32 {
    if record::is_target() {
        record::enter(AllocFunction::Mremap as u32, tp_arg(&ctx, 2), tp_arg(&ctx, 0));
    }
    0
}

#[tracepoint]
pub fn mremap_exit(ctx: TracePointContext) -> u32 {
    if !record::is_target() {
        return 0;
    }
    let Some(call) = record::exit() else { return 0 };
    if let Some(address) = tp_ret(&ctx) {
        if call.function == AllocFunction::Mremap as u32 {
            record::free(call.arg_ptr);
            record::allocation(&ctx, address, call.size, call.function);
        }
    }
    0
}

#[tracepoint]
pub fn brk_enter(_ctx: TracePointContext) -> u32 {
    if record::is_target() {
        record::enter(AllocFunction::Brk as u32, 0, 0);
    }
    0
}

#[tracepoint]
pub fn brk_exit(ctx: TracePointContext) -> u32 {
    if !record::is_target() {
        return 0;
    }
    let call = record::exit();
    let Some(now) = tp_ret(&ctx) else { return 0 };
    // The break is tracked even when brk runs inside malloc, so deltas stay right.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let before = unsafe { BRK_CURRENT.get(&tgid) }.copied().unwrap_or(0);
    let _ = BRK_CURRENT.insert(&tgid, &now, 0);
    let outermost = matches!(call, Some(c) if c.function == AllocFunction::Brk as u32);
    if before == 0 || !outermost {
        return 0;
    }
    if now > before {
        record::allocation(&ctx, before, now - before, AllocFunction::Brk as u32);
    } else if now < before {
        record::unmap(now, before - now);
    }
    0
}

// ---- process lifecycle, for the node-wide agent (attached only by `leakprobe agent`) ----

/// Byte offset of `child_pid` in the sched_process_fork record, read by userspace from the
/// tracepoint's format file (it moved between kernel versions).
#[no_mangle]
static FORK_CHILD_PID_OFFSET: u32 = 44;

#[inline(always)]
fn emit(kind: ProcessEventKind, pid: u32, parent: u32) {
    let Some(mut slot) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        count(Counter::DropProcessEvents);
        return;
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    slot.write(ProcessEvent { kind: kind as u32, pid, parent, reserved: 0, comm });
    slot.submit(0);
}

/// sched:sched_process_exec: every exec on the node (userspace picks out the Pythons by name).
#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    if record::target_tgid() == 0 {
        emit(ProcessEventKind::Exec, (bpf_get_current_pid_tgid() >> 32) as u32, 0);
    }
    0
}

/// sched:sched_process_fork: a watched process made a task (a worker process, or a thread).
#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    if record::target_tgid() == 0 && record::is_target() {
        let offset = unsafe { core::ptr::read_volatile(&raw const FORK_CHILD_PID_OFFSET) } as usize;
        if let Ok(child) = unsafe { ctx.read_at::<u32>(offset & 0xff) } {
            emit(ProcessEventKind::Fork, child, (bpf_get_current_pid_tgid() >> 32) as u32);
        }
    }
    0
}

/// sched:sched_process_exit of a watched process's leader thread: the process is ending
/// (userspace confirms with /proc).
#[tracepoint]
pub fn process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if record::target_tgid() == 0 && tgid == tid && unsafe { TARGETS.get(&tgid) }.is_some() {
        emit(ProcessEventKind::Exit, tgid, 0);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
