//! Turns the per-interval snapshots of the kernel's per-stack counters into time series: one
//! series of live bytes per stack, one of tracked live bytes for the whole process, and the
//! process's memory. Pure: no I/O, so it is tested without root.

use std::collections::HashMap;

use leakprobe_common::StackCounters;

use crate::process_memory::ProcessMemory;

/// A stack's live bytes over the recording, aligned with `Recording::times`.
#[derive(Debug, Clone, Default)]
pub struct StackSeries {
    pub live_bytes: Vec<f64>,
    /// Counters as last read.
    pub latest: StackCounters,
}

impl StackSeries {
    pub fn live_bytes_now(&self) -> u64 {
        self.latest.alloc_bytes.saturating_sub(self.latest.free_bytes)
    }
    pub fn live_allocations_now(&self) -> u64 {
        self.latest.allocs.saturating_sub(self.latest.frees)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Seconds since the first sample.
    pub times: Vec<f64>,
    /// The process's memory at each sample (`None` where it could not be read).
    pub memory: Vec<Option<ProcessMemory>>,
    /// Live bytes tracked across all stacks at each sample.
    pub tracked_live_bytes: Vec<f64>,
    pub stacks: HashMap<u64, StackSeries>,
    /// Event and drop counters (totals) as last read, by name.
    pub counters: Vec<(&'static str, u64)>,
}

impl Recording {
    /// Adds one interval's snapshot. Stacks missing from a snapshot keep their last value (the
    /// kernel never deletes counters, so a missing stack has not changed); stacks seen for the
    /// first time have 0 before.
    pub fn push(
        &mut self,
        t_secs: f64,
        memory: Option<ProcessMemory>,
        snapshot: &[(u64, StackCounters)],
        counters: Vec<(&'static str, u64)>,
    ) {
        let index = self.times.len();
        self.times.push(t_secs);
        self.memory.push(memory);
        for (id, c) in snapshot {
            let series = self
                .stacks
                .entry(*id)
                .or_insert_with(|| StackSeries { live_bytes: vec![0.0; index], latest: StackCounters::default() });
            series.latest = *c;
        }
        let mut total = 0.0;
        for series in self.stacks.values_mut() {
            let live = series.live_bytes_now() as f64;
            series.live_bytes.push(live);
            total += live;
        }
        self.tracked_live_bytes.push(total);
        self.counters = counters;
    }

    pub fn samples(&self) -> usize {
        self.times.len()
    }

    /// Times and RSS of the samples where memory was read.
    pub fn rss_series(&self) -> (Vec<f64>, Vec<f64>) {
        self.times.iter().zip(&self.memory).filter_map(|(t, m)| m.map(|m| (*t, m.rss_bytes as f64))).unzip()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(allocs: u64, frees: u64, alloc_bytes: u64, free_bytes: u64) -> StackCounters {
        StackCounters { allocs, frees, alloc_bytes, free_bytes }
    }

    #[test]
    fn series_align_with_time_and_carry_missing_stacks() {
        let mut rec = Recording::default();
        rec.push(0.0, None, &[(1, counters(1, 0, 100, 0))], vec![]);
        rec.push(1.0, None, &[(2, counters(2, 1, 300, 100))], vec![]);
        rec.push(2.0, None, &[(1, counters(3, 1, 400, 100)), (2, counters(2, 2, 300, 300))], vec![]);
        assert_eq!(rec.stacks[&1].live_bytes, vec![100.0, 100.0, 300.0]);
        assert_eq!(rec.stacks[&2].live_bytes, vec![0.0, 200.0, 0.0]);
        assert_eq!(rec.tracked_live_bytes, vec![100.0, 300.0, 300.0]);
        assert_eq!(rec.stacks[&1].live_allocations_now(), 2);
    }

    #[test]
    fn rss_series_skips_unreadable_samples() {
        let mut rec = Recording::default();
        let m = |rss| Some(ProcessMemory { rss_bytes: rss, ..Default::default() });
        rec.push(0.0, m(10), &[], vec![("allocations", 5)]);
        rec.push(1.0, None, &[], vec![("allocations", 7)]);
        rec.push(2.0, m(30), &[], vec![("allocations", 9)]);
        assert_eq!(rec.rss_series(), (vec![0.0, 2.0], vec![10.0, 30.0]));
        assert_eq!(rec.counter("allocations"), 9);
        assert_eq!(rec.counter("nope"), 0);
    }

    #[test]
    fn more_frees_than_allocations_never_underflows() {
        let mut rec = Recording::default();
        rec.push(0.0, None, &[(9, counters(1, 2, 10, 20))], vec![]);
        assert_eq!(rec.stacks[&9].live_bytes, vec![0.0]);
    }
}
