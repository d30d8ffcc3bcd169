//! The overhead budget (`--max-overhead PCT`): how much of the target's CPU time leakprobe's
//! probes may take, and when the allocator uprobes may be attached.
//!
//! Every uprobe hit traps into the kernel in the target's own thread, so the cost lands in the
//! target's CPU time. The estimate is `probe hits x measured cost per hit`; the budget compares it
//! with the target's CPU time (utime + stime, which includes the probes' cost) since the start.
//! Uprobes are attached in windows: a window opens only while the estimate is inside the budget
//! (a token bucket refilled by the target's own CPU time), so a busy target gets frequent short
//! windows, an idle one rare windows, and the fraction never exceeds the budget for long.
//! Pure: no I/O, so it is unit-tested without root.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct Budget {
    /// Allowed fraction of the target's CPU time, 0..=1. 1 means "always attached".
    max_fraction: f64,
    pub window: Duration,
    /// Estimated cost of one probe hit in the target, in nanoseconds.
    cost_per_hit_ns: f64,
    /// Target CPU time when the recording started.
    cpu_start_ns: u64,
    /// Probe cost charged so far.
    spent_ns: f64,
    hits: u64,
    inferred_hits: u64,
    windows: u32,
    attached_secs: f64,
}

/// What the report says about the budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BudgetSummary {
    /// The budget asked for, in percent of the target's CPU time (100: probes always attached).
    #[serde(deserialize_with = "crate::report::serde_helpers::f64_or_nan")]
    pub max_overhead_percent: f64,
    /// Estimated share of the target's CPU time the probes took, in percent.
    #[serde(deserialize_with = "crate::report::serde_helpers::f64_or_nan")]
    pub estimated_overhead_percent: f64,
    /// Measured cost of one probe hit on this machine (trap plus program run time), in µs.
    #[serde(deserialize_with = "crate::report::serde_helpers::f64_or_nan")]
    pub cost_per_hit_us: f64,
    pub probe_hits: u64,
    /// Hits that trapped uncounted while a window's probes were being unregistered, inferred.
    pub inferred_hits: u64,
    /// Sampling windows with the allocator uprobes attached, and their total length.
    pub windows: u32,
    #[serde(deserialize_with = "crate::report::serde_helpers::f64_or_nan")]
    pub attached_seconds: f64,
}

impl Budget {
    /// `max_percent` in (0, 100]; `cost_per_hit_ns` as measured; `cpu_now_ns` the target's CPU time.
    pub fn new(max_percent: f64, window: Duration, cost_per_hit_ns: f64, cpu_now_ns: u64) -> Budget {
        Budget {
            max_fraction: (max_percent / 100.0).clamp(0.0, 1.0),
            window,
            cost_per_hit_ns: cost_per_hit_ns.max(0.0),
            cpu_start_ns: cpu_now_ns,
            spent_ns: 0.0,
            hits: 0,
            inferred_hits: 0,
            windows: 0,
            attached_secs: 0.0,
        }
    }

    /// No budget to enforce: the uprobes stay attached for the whole recording.
    pub fn is_unlimited(&self) -> bool {
        self.max_fraction >= 1.0
    }

    /// Charges `hits` probe hits (since the last charge).
    pub fn charge(&mut self, hits: u64) {
        self.hits += hits;
        self.spent_ns += hits as f64 * self.cost_per_hit_ns;
    }

    /// Charges hits that trapped but were not counted (see `windows`), inferred from counted ones.
    pub fn charge_inferred(&mut self, hits: u64) {
        self.inferred_hits += hits;
        self.spent_ns += hits as f64 * self.cost_per_hit_ns;
    }

    /// Updates the cost of one hit (e.g. once the programs' own run time is known).
    pub fn set_cost_per_hit(&mut self, ns: f64) {
        if ns.is_finite() && ns > 0.0 {
            // Re-price what was spent: the hit count is exact, the price was an estimate.
            self.cost_per_hit_ns = ns;
            self.spent_ns = (self.hits + self.inferred_hits) as f64 * ns;
        }
    }

    pub fn cost_per_hit_ns(&self) -> f64 {
        self.cost_per_hit_ns
    }

    /// Whether a window may open now. The first window always may: the budget is a long-run
    /// share, and one window's cost is bounded by its length.
    pub fn may_open(&self, cpu_now_ns: u64) -> bool {
        self.is_unlimited() || self.spent_ns <= self.max_fraction * self.cpu_used_ns(cpu_now_ns)
    }

    /// A window of `secs` ended (or, unlimited, the recording did).
    pub fn window_closed(&mut self, secs: f64) {
        self.windows += 1;
        self.attached_secs += secs;
    }

    fn cpu_used_ns(&self, cpu_now_ns: u64) -> f64 {
        cpu_now_ns.saturating_sub(self.cpu_start_ns) as f64
    }

    /// The probes' share of the target's CPU time so far (0 when it used none).
    pub fn estimated_fraction(&self, cpu_now_ns: u64) -> f64 {
        let used = self.cpu_used_ns(cpu_now_ns);
        if used <= 0.0 {
            return 0.0;
        }
        (self.spent_ns / used).min(1.0)
    }

    pub fn summary(&self, cpu_now_ns: u64) -> BudgetSummary {
        BudgetSummary {
            max_overhead_percent: self.max_fraction * 100.0,
            estimated_overhead_percent: self.estimated_fraction(cpu_now_ns) * 100.0,
            cost_per_hit_us: self.cost_per_hit_ns / 1000.0,
            probe_hits: self.hits,
            inferred_hits: self.inferred_hits,
            windows: self.windows,
            attached_seconds: self.attached_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn first_window_opens_then_waits_for_the_target_to_earn_it() {
        let mut b = Budget::new(5.0, Duration::from_millis(200), 10_000.0, 1_000 * MS);
        assert!(b.may_open(1_000 * MS));
        // A busy window: 20,000 hits x 10 µs = 200 ms of the target's CPU.
        b.charge(20_000);
        b.window_closed(0.2);
        // 200 ms spent needs 4 s of target CPU at 5%.
        assert!(!b.may_open(1_000 * MS + 200 * MS));
        assert!(!b.may_open(1_000 * MS + 3_900 * MS));
        assert!(b.may_open(1_000 * MS + 4_000 * MS));
        let summary = b.summary(1_000 * MS + 4_000 * MS);
        assert!((summary.estimated_overhead_percent - 5.0).abs() < 1e-9);
        assert_eq!(summary.windows, 1);
        assert_eq!(summary.probe_hits, 20_000);
    }

    #[test]
    fn unlimited_always_opens_and_still_estimates() {
        let mut b = Budget::new(100.0, Duration::from_millis(200), 1_000.0, 0);
        assert!(b.is_unlimited());
        b.charge(1_000_000);
        assert!(b.may_open(1));
        assert!((b.estimated_fraction(2_000 * MS) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn an_idle_target_is_never_charged_more_than_it_used() {
        let b = Budget::new(5.0, Duration::from_millis(200), 10_000.0, 0);
        assert_eq!(b.estimated_fraction(0), 0.0);
        let mut b = b;
        b.charge(10);
        assert_eq!(b.estimated_fraction(1), 1.0);
    }

    #[test]
    fn inferred_hits_are_charged_and_reported_apart() {
        let mut b = Budget::new(10.0, Duration::from_millis(200), 1_000.0, 0);
        b.charge(1_000);
        b.charge_inferred(500);
        assert!((b.estimated_fraction(15 * MS) - 0.1).abs() < 1e-9);
        let s = b.summary(15 * MS);
        assert_eq!((s.probe_hits, s.inferred_hits), (1_000, 500));
    }

    #[test]
    fn repricing_applies_to_past_hits() {
        let mut b = Budget::new(10.0, Duration::from_millis(200), 5_000.0, 0);
        b.charge(1_000);
        b.set_cost_per_hit(10_000.0);
        assert!((b.estimated_fraction(100 * MS) - 0.1).abs() < 1e-9);
        b.set_cost_per_hit(f64::NAN);
        assert_eq!(b.cost_per_hit_ns(), 10_000.0);
    }
}
