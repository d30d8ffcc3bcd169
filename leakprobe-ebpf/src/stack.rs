//! Capturing the current call stack and naming it by a hash of its frames.
//!
//! Stack ids from `BPF_MAP_TYPE_STACK_TRACE` recycle on collision, so a live allocation could end up
//! pointing at another stack. Hashing the frames we copied ourselves gives ids that are stable
//! for the life of the recording.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_stack},
    EbpfContext,
};
use leakprobe_common::{
    Counter, StackTrace, MAX_NATIVE_FRAMES, MAX_PYTHON_FRAMES, STACK_NATIVE_TRUNCATED, UNKNOWN_STACK_ID,
};

use crate::{
    maps::{count, SCRATCH_STACK, STACKS},
    python,
};

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn mix(h: u64, v: u64) -> u64 {
    let h = (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

/// Captures the user stack of the current thread, stores it if new, and returns its id.
/// Returns `UNKNOWN_STACK_ID` when the stack could not be captured or stored.
#[inline(always)]
pub fn capture<C: EbpfContext>(ctx: &C, function: u32) -> u64 {
    let Some(trace) = SCRATCH_STACK.get_ptr_mut(0) else {
        return UNKNOWN_STACK_ID;
    };
    let trace: &mut StackTrace = unsafe { &mut *trace };
    let bytes = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            trace.native.as_mut_ptr().cast(),
            (MAX_NATIVE_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    if bytes < 0 {
        count(Counter::DropStackCapture);
        return UNKNOWN_STACK_ID;
    }
    let len = (bytes as usize / 8).min(MAX_NATIVE_FRAMES);
    trace.function = function;
    trace.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    trace.native_len = len as u32;
    // A full buffer means the walk may have gone deeper than we kept.
    trace.flags = if len == MAX_NATIVE_FRAMES { STACK_NATIVE_TRUNCATED } else { 0 };
    python::capture(trace);
    let len = (trace.native_len as usize).min(MAX_NATIVE_FRAMES);

    let mut h = mix(0xcbf2_9ce4_8422_2325, function as u64);
    h = mix(h, trace.tgid as u64);
    h = mix(h, len as u64);
    for i in 0..MAX_NATIVE_FRAMES {
        if i >= len {
            break;
        }
        h = mix(h, trace.native[i]);
    }
    let python_len = trace.python_len as usize;
    h = mix(h, python_len as u64);
    for i in 0..MAX_PYTHON_FRAMES {
        if i >= python_len {
            break;
        }
        h = mix(h, trace.python[i].code_object);
        h = mix(h, trace.python[i].instruction);
    }
    let id = if h == UNKNOWN_STACK_ID { 1 } else { h };

    if STACKS.get_ptr(&id).is_none() {
        if let Err(err) = STACKS.insert(&id, trace, BPF_NOEXIST) {
            // -EEXIST: another CPU stored the same stack meanwhile; anything else: table full.
            if err != -17 {
                count(Counter::DropStackTableFull);
                return UNKNOWN_STACK_ID;
            }
        }
    }
    id
}
