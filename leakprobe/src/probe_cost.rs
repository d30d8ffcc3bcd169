//! What one probe hit costs the target on this machine, measured rather than assumed: the kernel
//! trap of a uprobe + uretprobe pair, timed on functions of leakprobe's own, plus the run time of
//! leakprobe's programs as the kernel accounts it (BPF run-time statistics, kept enabled only while
//! leakprobe holds their file descriptor).
//!
//! A hit's trap costs what the instruction under the breakpoint makes it cost (see `probe_site`):
//! one trap when the kernel emulates it, two (the second a single-step, ~35x dearer in a VM) when
//! it does not. So two calibration functions, one opening with a `push` the kernel emulates and one
//! with a `mov` it single-steps, give a price for each kind of site.

use std::{hint::black_box, time::Instant};

use anyhow::{Context as _, Result};
use leakprobe_common::names;

use crate::kernel::{Kernel, RunStats};

/// Calibration target whose entry the kernel emulates (`push %rbx`, as libc's `malloc` opens).
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn leakprobe_calibration_emulated(x: u64) -> u64 {
    core::arch::naked_asm!("push rbx", "lea rax, [rdi + 1]", "pop rbx", "ret")
}

/// Calibration target whose entry the kernel single-steps (`mov %rdi,%rax`, as pyenv's
/// `PyObject_Malloc` opens with a `mov`).
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn leakprobe_calibration_stepped(x: u64) -> u64 {
    core::arch::naked_asm!("mov rax, rdi", "add rax, 1", "ret")
}

const EMULATED_SYMBOL: &str = "leakprobe_calibration_emulated";
const STEPPED_SYMBOL: &str = "leakprobe_calibration_stepped";
const CALLS: u64 = 2_000;

fn time_calls(target: extern "C" fn(u64) -> u64) -> f64 {
    let start = Instant::now();
    for i in 0..CALLS {
        black_box(black_box(target)(black_box(i)));
    }
    start.elapsed().as_nanos() as f64
}

/// Nanoseconds of trap one probe hit costs the probed thread, by kind of site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrapCosts {
    /// A hit at an emulated instruction, and a return hit (one trap each).
    pub emulated_ns: f64,
    /// An entry hit at a single-stepped instruction (the trap and the single-step).
    pub stepped_ns: f64,
}

impl TrapCosts {
    /// From the cost of an entry + return pair on each calibration function: on the emulated one
    /// the two hits cost one trap each; on the stepped one the return costs the same single trap
    /// and the entry the rest.
    pub fn from_pairs(emulated_pair_ns: f64, stepped_pair_ns: f64) -> TrapCosts {
        let emulated_ns = (emulated_pair_ns / 2.0).max(0.0);
        TrapCosts { emulated_ns, stepped_ns: (stepped_pair_ns - emulated_ns).max(emulated_ns) }
    }
}

/// What one entry + return pair costs on each calibration function, measured with leakprobe's own
/// `alloc_entry`/`alloc_return` programs (which return at once: leakprobe is not the target). Best of
/// three, against the same loop without probes.
pub fn trap_ns(kernel: &mut Kernel) -> Result<TrapCosts> {
    let exe = std::fs::read_link("/proc/self/exe").context("cannot find leakprobe's own executable")?;
    let mut pair_ns = |symbol: &str, target: extern "C" fn(u64) -> u64| -> Result<f64> {
        let best_of_three = || (0..3).map(|_| time_calls(target)).fold(f64::INFINITY, f64::min);
        let bare = best_of_three();
        let probed = kernel.with_own_probes(&[names::ALLOC_ENTRY, names::ALLOC_RETURN], &exe, symbol, best_of_three)?;
        Ok(((probed - bare) / CALLS as f64).max(0.0))
    };
    let emulated = pair_ns(EMULATED_SYMBOL, leakprobe_calibration_emulated)?;
    let stepped = pair_ns(STEPPED_SYMBOL, leakprobe_calibration_stepped)?;
    Ok(TrapCosts::from_pairs(emulated, stepped))
}

/// Run time and run count of leakprobe's uprobe programs, as the kernel accounts them.
pub struct ProgramStats {
    _enabled: RunStats,
}

impl ProgramStats {
    /// `None` when the kernel cannot account run time (older than 5.8, or refused).
    pub fn enable() -> Option<ProgramStats> {
        Kernel::enable_run_stats().map(|enabled| ProgramStats { _enabled: enabled })
    }

    /// (total run time in ns, total runs) of the uprobe programs.
    pub fn totals(&self, kernel: &Kernel) -> (u64, u64) {
        kernel.uprobe_run_totals()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_targets_compute() {
        assert_eq!(leakprobe_calibration_emulated(41), 42);
        assert_eq!(leakprobe_calibration_stepped(41), 42);
    }

    #[test]
    fn pair_costs_split_into_kinds() {
        // As measured here: ~0.9 µs a pair at a push, ~15.7 µs at a mov.
        let costs = TrapCosts::from_pairs(900.0, 15_700.0);
        assert_eq!(costs, TrapCosts { emulated_ns: 450.0, stepped_ns: 15_250.0 });
        // Noise never prices a stepped hit below an emulated one.
        assert_eq!(TrapCosts::from_pairs(900.0, 500.0).stepped_ns, 450.0);
    }
}
