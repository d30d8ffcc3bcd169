//! Sampling windows: attaches the allocator uprobes while the overhead budget allows it and
//! detaches them when a window ends, charging every probe hit to the budget. The syscall
//! tracepoints (cheap) stay attached throughout.

use std::time::{Duration, Instant};

use anyhow::Result;
use leakprobe_common::Counter;

use crate::{
    budget::{Budget, BudgetSummary, HitCosts},
    loader::Probes,
    probe_cost::{self, ProgramStats, TrapCosts},
};

/// Cost of a hit assumed when it cannot be measured (~10 µs per uprobe on a VM: anchors.md; a
/// single-stepped one ~15 µs: toolchain.md).
const FALLBACK_TRAPS: TrapCosts = TrapCosts { emulated_ns: 10_000.0, stepped_ns: 15_000.0 };

/// How often the scheduler looks at the budget.
pub const TICK: Duration = Duration::from_millis(50);

pub struct Windows {
    budget: Budget,
    pid: u32,
    traps: TrapCosts,
    stats: Option<ProgramStats>,
    /// Program run time and runs when the recording started (the stats are global counters).
    stats_start: (u64, u64),
    opened_at: Option<Instant>,
    charged_hits: u64,
    charged_stepped_hits: u64,
}

impl Windows {
    /// Measures the cost of a hit. With a budget, the uprobes stay detached until a tick opens a
    /// window; without, they are attached for the whole recording.
    /// `can_sample`: whether windows have anything to hook (CPython's object allocator); when not,
    /// a budget keeps the uprobes detached throughout.
    pub fn start(
        probes: &mut Probes,
        pid: u32,
        max_overhead_percent: f64,
        window: Duration,
        can_sample: bool,
    ) -> Result<Windows> {
        let stats = ProgramStats::enable();
        let stats_start = stats.as_ref().map_or((0, 0), |s| s.totals(probes.kernel()));
        let mut budget = Budget::new(max_overhead_percent, window, 0.0, cpu_time_ns(pid).unwrap_or(0));
        let traps = probe_cost::trap_ns(probes.kernel_mut()).unwrap_or_else(|e| {
            // A stripped leakprobe has no calibration symbols: price hits as measured on a VM.
            eprintln!(
                "leakprobe: warning: cannot measure the cost of a probe hit ({e:#}); assuming {} µs ({} µs at a \
                 single-stepped site)",
                FALLBACK_TRAPS.emulated_ns / 1000.0,
                FALLBACK_TRAPS.stepped_ns / 1000.0
            );
            FALLBACK_TRAPS
        });
        budget.set_costs(HitCosts { emulated_ns: traps.emulated_ns, stepped_ns: traps.stepped_ns });
        if budget.is_unlimited() {
            probes.attach_uprobes()?;
        } else {
            probes.narrow_to_window_functions(can_sample);
        }
        let opened_at = probes.uprobes_attached().then(Instant::now);
        Ok(Windows { budget, pid, traps, stats, stats_start, opened_at, charged_hits: 0, charged_stepped_hits: 0 })
    }

    pub fn is_unlimited(&self) -> bool {
        self.budget.is_unlimited()
    }

    /// Closes the open window now, before work that would keep it open past its length (reading
    /// and naming stacks).
    pub fn pause(&mut self, probes: &mut Probes) -> Result<()> {
        if self.budget.is_unlimited() {
            return Ok(());
        }
        if let Some(opened) = self.opened_at {
            // The window's own hits since the last tick, before the detach: charged after it,
            // they would also be taken for uncounted entry traps of the detach tail.
            self.charge(probes)?;
            probes.detach_uprobes()?;
            self.opened_at = None;
            self.budget.window_closed(opened.elapsed().as_secs_f64());
        }
        self.charge(probes)
    }

    /// Whether a window is open and has run its length (the caller then closes it with `pause`).
    pub fn due(&self) -> bool {
        self.opened_at.is_some_and(|opened| opened.elapsed() >= self.budget.window)
    }

    pub fn is_open(&self) -> bool {
        self.opened_at.is_some()
    }

    /// Charges the hits since the last look.
    pub fn tick(&mut self, probes: &Probes) -> Result<()> {
        self.charge(probes)
    }

    /// Opens a window if none is open, the budget allows it, and the last window's probes are
    /// fully gone (attaching while the kernel still unregisters them stalls for seconds).
    pub fn open_if_allowed(&mut self, probes: &mut Probes) -> Result<()> {
        if self.opened_at.is_some() || self.budget.is_unlimited() || !probes.can_attach() || !probes.detach_settled() {
            return Ok(());
        }
        self.charge(probes)?;
        let Some(cpu) = cpu_time_ns(self.pid) else { return Ok(()) };
        if self.budget.may_open(cpu) {
            probes.attach_uprobes()?;
            self.opened_at = Some(Instant::now());
        }
        Ok(())
    }

    fn charge(&mut self, probes: &Probes) -> Result<()> {
        let counters = probes.kernel().counters()?;
        let (hits, stepped) = (counters.get(Counter::ProbeHits), counters.get(Counter::SteppedProbeHits));
        let new = hits.saturating_sub(self.charged_hits);
        let new_stepped = stepped.saturating_sub(self.charged_stepped_hits);
        self.budget.charge(new, new_stepped);
        // While a closed window's probes are being unregistered, an entry probe whose program is
        // already detached still traps (uncounted) until its breakpoint goes; the return hits of
        // those calls are counted, one per uncounted entry trap. Which site each stood for is not
        // counted: they are priced at the dearest kind of the window's entry sites, never less.
        if self.opened_at.is_none() && probes.detaching() {
            let inferred_stepped = if probes.window_sites_stepped() { new } else { 0 };
            self.budget.charge_inferred(new, inferred_stepped);
        }
        self.charged_hits = self.charged_hits.max(hits);
        self.charged_stepped_hits = self.charged_stepped_hits.max(stepped);
        if let Some(stats) = &self.stats {
            let (time, runs) = stats.totals(probes.kernel());
            let (time0, runs0) = self.stats_start;
            if runs > runs0 {
                let run_ns = (time - time0) as f64 / (runs - runs0) as f64;
                self.budget.set_costs(HitCosts {
                    emulated_ns: self.traps.emulated_ns + run_ns,
                    stepped_ns: self.traps.stepped_ns + run_ns,
                });
            }
        }
        Ok(())
    }

    /// The price of a hit at each kind of site, as charged.
    pub fn costs(&self) -> HitCosts {
        self.budget.costs()
    }

    /// Ends the recording's windows and sums them up.
    pub fn finish(&mut self, probes: &mut Probes) -> BudgetSummary {
        let _ = self.charge(probes);
        if let Some(opened) = self.opened_at.take() {
            self.budget.window_closed(opened.elapsed().as_secs_f64());
        }
        let mut summary = self.budget.summary(cpu_time_ns(self.pid).unwrap_or(0));
        probes.detach_settled();
        let tails = probes.detach_tails;
        if tails.count > 0 {
            summary.links = Some(probes.link_kind.key().into());
            summary.detach_tail_mean_seconds = tails.total.as_secs_f64() / f64::from(tails.count);
            summary.detach_tail_max_seconds = tails.max.as_secs_f64();
        }
        summary
    }
}

/// The target's CPU time (all threads, user + system), which includes what its probes cost.
pub fn cpu_time_ns(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid as i32).ok()?.stat().ok()?;
    let ticks = stat.utime + stat.stime;
    Some(ticks * 1_000_000_000 / procfs::ticks_per_second())
}
