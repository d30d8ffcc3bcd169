//! Walking the current thread's CPython frame chain: one read of each frame's header, emitting
//! (code object, instruction) per frame. Names and lines are resolved in userspace.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf};
use leakprobe_common::{
    PythonConfig, PythonFrame, StackTrace, MAX_PYTHON_FRAMES, NO_OFFSET, PYTHON_FRAME_READ, STACK_PYTHON_TRUNCATED,
    STACK_PYTHON_UNAVAILABLE,
};

use crate::maps::{PYTHON_CONFIG, THREAD_STATES};

/// Words in the frame buffer: a power of two above PYTHON_FRAME_READ / 8, so a masked index is in
/// bounds by construction (the verifier rejects reads it cannot bound, and the compiler may hoist
/// a comparison-based bound out of its sight).
const WORDS: usize = 16;
const _: () = assert!(WORDS * 8 >= PYTHON_FRAME_READ);

/// The field at byte `offset` of a frame header read into `words` (little endian), as the low
/// bits of a u64. Offsets past the read size give whatever zeroes are there.
#[inline(always)]
fn field(words: &[u64; WORDS], offset: u32) -> u64 {
    let index = ((offset / 8) as usize) & (WORDS - 1);
    words[index] >> ((offset & 7) * 8)
}

#[inline(always)]
fn read_u64(address: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(address as *const u64) }.ok()
}

/// Fills `trace.python` with the current thread's Python frames, innermost first; when there are
/// some, trims the native frames to what this interpreter's native stacks can be trusted for.
#[inline(always)]
pub fn capture(trace: &mut StackTrace) {
    trace.python_len = 0;
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(config) = (unsafe { PYTHON_CONFIG.get(&((pid_tgid >> 32) as u32)) }) else { return };
    let config: PythonConfig = *config;
    let Some(&tstate) = (unsafe { THREAD_STATES.get(&(pid_tgid as u32)) }) else {
        trace.flags |= STACK_PYTHON_UNAVAILABLE;
        return;
    };
    let Some(mut frame) = read_u64(tstate + config.tstate_frame as u64) else {
        trace.flags |= STACK_PYTHON_UNAVAILABLE;
        return;
    };
    if config.cframe_frame != NO_OFFSET && frame != 0 {
        frame = read_u64(frame + config.cframe_frame as u64).unwrap_or(0);
    }
    let size = (config.frame_read_size as usize).min(PYTHON_FRAME_READ);
    let mut words = [0u64; WORDS];
    let mut len = 0usize;
    // One slot per frame walked, shims included (as code 0, dropped by userspace): a loop whose
    // slot index is its counter keeps the verifier's state count linear in the depth.
    for i in 0..MAX_PYTHON_FRAMES {
        if frame == 0 {
            break;
        }
        let bytes: &mut [u8; WORDS * 8] = unsafe { &mut *(words.as_mut_ptr() as *mut [u8; WORDS * 8]) };
        if unsafe { bpf_probe_read_user_buf(frame as *const u8, &mut bytes[..size]) }.is_err() {
            break;
        }
        let code = field(&words, config.frame_code) & config.code_mask;
        let owner = (field(&words, config.frame_owner) & 0xff) as u32;
        let shim = code == config.none_address || (config.frame_owner != NO_OFFSET && owner >= config.owner_skip_min);
        let raw = field(&words, config.frame_instruction);
        let instruction = if config.instruction_is_pointer != 0 {
            raw.wrapping_sub(code.wrapping_add(config.code_bytecode as u64)) / 2
        } else {
            // f_lasti: an int, -1 before the first instruction.
            (raw as u32 as i32).max(0) as u64
        };
        trace.python[i] = PythonFrame { code_object: if shim { 0 } else { code }, instruction };
        len = i + 1;
        frame = field(&words, config.frame_previous);
    }
    if frame != 0 && len == MAX_PYTHON_FRAMES {
        trace.flags |= STACK_PYTHON_TRUNCATED;
    }
    if len > 0 && trace.native_len > config.native_frames_with_python {
        trace.native_len = config.native_frames_with_python;
    }
    trace.python_len = len as u32;
}
