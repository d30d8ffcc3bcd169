//! What one probe hit costs the target on this machine, measured rather than assumed: the kernel
//! trap of a uprobe + uretprobe pair, timed on a function of leakprobe's own, plus the run time of
//! leakprobe's programs as the kernel accounts it (BPF run-time statistics, kept enabled only while
//! leakprobe holds their file descriptor).

use std::{hint::black_box, os::fd::OwnedFd, time::Instant};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        UProbe,
    },
    Ebpf,
};

/// The calibration target: a function in leakprobe itself, probed for a few milliseconds.
#[no_mangle]
#[inline(never)]
pub extern "C" fn leakprobe_calibration_target(x: u64) -> u64 {
    black_box(x).wrapping_add(1)
}

const CALIBRATION_SYMBOL: &str = "leakprobe_calibration_target";
const CALLS: u64 = 2_000;

/// The uprobe programs whose hits the budget charges for.
pub const UPROBE_PROGRAMS: &[&str] = &[
    "alloc_size",
    "alloc_count_size",
    "alloc_ptr_size",
    "alloc_ptr_count_size",
    "alloc_align_size",
    "alloc_posix_memalign",
    "free_ptr",
    "alloc_return",
];

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
pub fn trap_ns(ebpf: &mut Ebpf) -> Result<f64> {
    let exe = std::fs::read_link("/proc/self/exe").context("cannot find leakprobe's own executable")?;
    let bare = (0..3).map(|_| time_calls()).fold(f64::INFINITY, f64::min);
    let mut links = Vec::new();
    for program in ["alloc_size", "alloc_return"] {
        let uprobe: &mut UProbe =
            ebpf.program_mut(program).ok_or_else(|| anyhow!("kernel program {program} missing"))?.try_into()?;
        let point = UProbeAttachPoint { location: UProbeAttachLocation::Symbol(CALIBRATION_SYMBOL), cookie: None };
        let link = uprobe
            .attach(point, &exe, UProbeScope::CallingProcess)
            .with_context(|| format!("cannot attach the calibration probe to {}", exe.display()))?;
        links.push((program, link));
    }
    let probed = (0..3).map(|_| time_calls()).fold(f64::INFINITY, f64::min);
    for (program, link) in links {
        let uprobe: &mut UProbe = ebpf.program_mut(program).expect("attached above").try_into()?;
        uprobe.detach(link)?;
    }
    Ok(((probed - bare) / CALLS as f64 / 2.0).max(0.0))
}

/// Run time and run count of leakprobe's uprobe programs, as the kernel accounts them.
pub struct ProgramStats {
    _enabled: OwnedFd,
}

impl ProgramStats {
    /// `None` when the kernel cannot account run time (older than 5.8, or refused).
    pub fn enable() -> Option<ProgramStats> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime).ok().map(|fd| ProgramStats { _enabled: fd })
    }

    /// (total run time in ns, total runs) of the uprobe programs.
    pub fn totals(&self, ebpf: &Ebpf) -> (u64, u64) {
        let mut time = 0;
        let mut runs = 0;
        for name in UPROBE_PROGRAMS {
            let Some(program) = ebpf.program(name) else { continue };
            let Ok(uprobe) = <&UProbe>::try_from(program) else { continue };
            if let Ok(info) = uprobe.info() {
                time += info.run_time().as_nanos() as u64;
                runs += info.run_count();
            }
        }
        (time, runs)
    }
}
