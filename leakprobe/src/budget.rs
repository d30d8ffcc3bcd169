//! The overhead budget (`--max-overhead PCT`): how much of the target's CPU time leakprobe's
//! probes may take, and when the allocator uprobes may be attached.
//!
//! Every uprobe hit traps into the kernel in the target's own thread, so the cost lands in the
//! target's CPU time. The estimate is `emulated hits x their measured cost + single-stepped hits x
//! theirs` (a breakpoint the kernel single-steps costs a second, far dearer trap; see
//! `probe_site`); the budget compares it
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
    /// Estimated cost of one probe hit in the target, by kind of site.
    costs: HitCosts,
    /// Target CPU time when the recording started.
    cpu_start_ns: u64,
    /// Probe cost charged so far.
    spent_ns: f64,
    hits: u64,
    /// The part of `hits` at single-stepped sites.
    stepped_hits: u64,
    inferred_hits: u64,
    inferred_stepped_hits: u64,
    windows: u32,
    attached_secs: f64,
}

/// Nanoseconds one hit costs the target: trap plus program run time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HitCosts {
    /// At an instruction the kernel emulates, and every return hit.
    pub emulated_ns: f64,
    /// At an entry instruction the kernel single-steps.
    pub stepped_ns: f64,
}

impl HitCosts {
    /// One price for every hit.
    pub fn uniform(ns: f64) -> HitCosts {
        HitCosts { emulated_ns: ns, stepped_ns: ns }
    }

    fn of(&self, hits: u64, stepped: u64) -> f64 {
        let stepped = stepped.min(hits);
        (hits - stepped) as f64 * self.emulated_ns + stepped as f64 * self.stepped_ns
    }
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
    /// Cost charged per probe hit on average (trap plus program run time, measured per kind of
    /// site), in µs.
    #[serde(deserialize_with = "crate::report::serde_helpers::f64_or_nan")]
    pub cost_per_hit_us: f64,
    /// Measured cost of a hit at an emulated site (and of a return hit), in µs; 0 in reports
    /// older than per-site pricing.
    #[serde(default, deserialize_with = "crate::report::serde_helpers::f64_or_nan", skip_serializing_if = "is_zero")]
    pub cost_emulated_us: f64,
    /// Measured cost of an entry hit at a single-stepped site, in µs; 0 in older reports.
    #[serde(default, deserialize_with = "crate::report::serde_helpers::f64_or_nan", skip_serializing_if = "is_zero")]
    pub cost_stepped_us: f64,
    pub probe_hits: u64,
    /// The part of `probe_hits` at single-stepped sites (0 in older reports).
    #[serde(default, skip_serializing_if = "is_zero_hits")]
    pub stepped_hits: u64,
    /// Hits that trapped uncounted while a window's probes were being unregistered, inferred.
    pub inferred_hits: u64,
    /// Sampling windows with the allocator uprobes attached, and their total length.
    pub windows: u32,
    #[serde(deserialize_with = "crate::report::serde_helpers::f64_or_nan")]
    pub attached_seconds: f64,
    /// How the windows' sites were linked: `uprobe_multi` (one link per program and binary) or
    /// `per_site`; absent in older reports and without windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<String>,
    /// The windows' detach tails (their links being unregistered, the hooks still trapping), in
    /// seconds: mean and longest; 0 in older reports.
    #[serde(default, deserialize_with = "crate::report::serde_helpers::f64_or_nan", skip_serializing_if = "is_zero")]
    pub detach_tail_mean_seconds: f64,
    #[serde(default, deserialize_with = "crate::report::serde_helpers::f64_or_nan", skip_serializing_if = "is_zero")]
    pub detach_tail_max_seconds: f64,
}

impl Budget {
    /// `max_percent` in (0, 100]; `cost_per_hit_ns` as measured; `cpu_now_ns` the target's CPU time.
    pub fn new(max_percent: f64, window: Duration, cost_per_hit_ns: f64, cpu_now_ns: u64) -> Budget {
        Budget {
            max_fraction: (max_percent / 100.0).clamp(0.0, 1.0),
            window,
            costs: HitCosts::uniform(cost_per_hit_ns.max(0.0)),
            cpu_start_ns: cpu_now_ns,
            spent_ns: 0.0,
            hits: 0,
            stepped_hits: 0,
            inferred_hits: 0,
            inferred_stepped_hits: 0,
            windows: 0,
            attached_secs: 0.0,
        }
    }

    /// No budget to enforce: the uprobes stay attached for the whole recording.
    pub fn is_unlimited(&self) -> bool {
        self.max_fraction >= 1.0
    }

    /// Charges `hits` probe hits (since the last charge), `stepped` of them at single-stepped sites.
    pub fn charge(&mut self, hits: u64, stepped: u64) {
        let stepped = stepped.min(hits);
        self.hits += hits;
        self.stepped_hits += stepped;
        self.spent_ns += self.costs.of(hits, stepped);
    }

    /// Charges hits that trapped but were not counted (see `windows`), inferred from counted ones.
    pub fn charge_inferred(&mut self, hits: u64, stepped: u64) {
        let stepped = stepped.min(hits);
        self.inferred_hits += hits;
        self.inferred_stepped_hits += stepped;
        self.spent_ns += self.costs.of(hits, stepped);
    }

    /// Updates the cost of a hit (e.g. once the programs' own run time is known).
    pub fn set_costs(&mut self, costs: HitCosts) {
        let valid = |ns: f64| ns.is_finite() && ns > 0.0;
        if valid(costs.emulated_ns) && valid(costs.stepped_ns) {
            // Re-price what was spent: the hit counts are exact, the prices were estimates.
            self.costs = costs;
            self.spent_ns =
                costs.of(self.hits, self.stepped_hits) + costs.of(self.inferred_hits, self.inferred_stepped_hits);
        }
    }

    pub fn costs(&self) -> HitCosts {
        self.costs
    }

    /// Cost charged per hit on average so far (the emulated price before any hit).
    pub fn cost_per_hit_ns(&self) -> f64 {
        let hits = self.hits + self.inferred_hits;
        if hits == 0 {
            return self.costs.emulated_ns;
        }
        self.spent_ns / hits as f64
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
            cost_per_hit_us: self.cost_per_hit_ns() / 1000.0,
            cost_emulated_us: self.costs.emulated_ns / 1000.0,
            cost_stepped_us: self.costs.stepped_ns / 1000.0,
            probe_hits: self.hits,
            stepped_hits: self.stepped_hits,
            inferred_hits: self.inferred_hits,
            windows: self.windows,
            attached_seconds: self.attached_secs,
            links: None,
            detach_tail_mean_seconds: 0.0,
            detach_tail_max_seconds: 0.0,
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
        b.charge(20_000, 0);
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
        b.charge(1_000_000, 0);
        assert!(b.may_open(1));
        assert!((b.estimated_fraction(2_000 * MS) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn an_idle_target_is_never_charged_more_than_it_used() {
        let b = Budget::new(5.0, Duration::from_millis(200), 10_000.0, 0);
        assert_eq!(b.estimated_fraction(0), 0.0);
        let mut b = b;
        b.charge(10, 0);
        assert_eq!(b.estimated_fraction(1), 1.0);
    }

    #[test]
    fn inferred_hits_are_charged_and_reported_apart() {
        let mut b = Budget::new(10.0, Duration::from_millis(200), 1_000.0, 0);
        b.charge(1_000, 0);
        b.charge_inferred(500, 0);
        assert!((b.estimated_fraction(15 * MS) - 0.1).abs() < 1e-9);
        let s = b.summary(15 * MS);
        assert_eq!((s.probe_hits, s.inferred_hits), (1_000, 500));
    }

    #[test]
    fn repricing_applies_to_past_hits() {
        let mut b = Budget::new(10.0, Duration::from_millis(200), 5_000.0, 0);
        b.charge(1_000, 0);
        b.set_costs(HitCosts::uniform(10_000.0));
        assert!((b.estimated_fraction(100 * MS) - 0.1).abs() < 1e-9);
        b.set_costs(HitCosts::uniform(f64::NAN));
        assert_eq!(b.cost_per_hit_ns(), 10_000.0);
    }

    #[test]
    fn hits_are_charged_by_the_kind_of_their_site() {
        let mut b = Budget::new(10.0, Duration::from_millis(200), 0.0, 0);
        b.set_costs(HitCosts { emulated_ns: 500.0, stepped_ns: 15_000.0 });
        // 1,000 hits, 100 of them single-stepped: 900 x 0.5 µs + 100 x 15 µs = 1.95 ms.
        b.charge(1_000, 100);
        assert!((b.estimated_fraction(19_500_000) - 0.1).abs() < 1e-9);
        // Inferred tail hits likewise: 10 x 0.5 µs + 10 x 15 µs.
        b.charge_inferred(20, 10);
        let s = b.summary(20_000_000);
        assert!((s.cost_per_hit_us - (1.95e6 + 155_000.0) / 1_020.0 / 1000.0).abs() < 1e-9);
        assert_eq!((s.probe_hits, s.stepped_hits, s.inferred_hits), (1_000, 100, 20));
        assert_eq!((s.cost_emulated_us, s.cost_stepped_us), (0.5, 15.0));
        // Re-pricing keeps each hit's kind.
        b.set_costs(HitCosts { emulated_ns: 1_000.0, stepped_ns: 10_000.0 });
        assert!((b.cost_per_hit_ns() - (910.0 * 1_000.0 + 110.0 * 10_000.0) / 1_020.0).abs() < 1e-9);
        // A stepped count above the hits is clamped.
        b.charge(5, 50);
        assert_eq!(b.summary(0).stepped_hits, 105);
    }
}

/// Fields added after reports of schema version 1 first shipped are left out when they say
/// nothing, so an older report read and written again is the same report, field for field.
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_hits(v: &u64) -> bool {
    *v == 0
}
