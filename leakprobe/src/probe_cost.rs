//! What one probe hit costs the target on this machine, measured rather than assumed: the kernel
//! trap of a uprobe + uretprobe pair, timed on a function of leakprobe's own, plus the run time of
//! leakprobe's programs as the kernel accounts it (BPF run-time statistics, kept enabled only while
//! leakprobe holds their file descriptor).

use std::{hint::black_box, time::Instant};

use anyhow::{Context as _, Result};
use leakprobe_common::names;

use crate::kernel::{Kernel, RunStats};

/// The calibration target: a function in leakprobe itself, probed for a few milliseconds.
#[no_mangle]
#[inline(never)]
pub extern "C" fn leakprobe_calibration_target(x: u64) -> u64 {
    black_box(x).wrapping_add(1)
}

const CALIBRATION_SYMBOL: &str = "leakprobe_calibration_target";
const CALLS: u64 = 2_000;

fn time_calls() -> f64 {
    let start = Instant::now();
    for i in 0..CALLS {
        black_box(leakprobe_calibration_target(black_box(i)));
    }
    start.elapsed().as_nanos() as f64
}

/// Nanoseconds one uprobe hit costs the probed thread (half of an entry + return pair), measured
/// with leakprobe's own `alloc_size`/`alloc_return` programs (which return at once: leakprobe is
/// not the target). Best of three, against the same loop without probes.
pub fn trap_ns(kernel: &mut Kernel) -> Result<f64> {
    let exe = std::fs::read_link("/proc/self/exe").context("cannot find leakprobe's own executable")?;
    let best_of_three = || (0..3).map(|_| time_calls()).fold(f64::INFINITY, f64::min);
    let bare = best_of_three();
    let probed =
        kernel.with_own_probes(&[names::ALLOC_SIZE, names::ALLOC_RETURN], &exe, CALIBRATION_SYMBOL, best_of_three)?;
    Ok(((probed - bare) / CALLS as f64 / 2.0).max(0.0))
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
