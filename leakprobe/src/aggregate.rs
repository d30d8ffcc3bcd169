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
    /// Live allocations at each sample, aligned likewise (a sampled stack needs enough of them to
    /// be judged, at every prefix as at the end).
    pub live_allocations: Vec<u64>,
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

/// The least each stack held across several reads of its counters within one interval: the
/// memory it *keeps*, not what it happens to hold at the instant of the sample. A loop that
/// builds and drops a big list every 90 ms holds anything from 0 to the whole list at an instant;
/// read once a second, the phase drifts and its live bytes ramp up for many samples, a sawtooth
/// whose teeth are longer than the verdict's window. Its low water stays near 0, while a leak's
/// low water rises as its live bytes do.
#[derive(Debug, Default)]
pub struct LowWater {
    lowest: HashMap<u64, u64>,
}

impl LowWater {
    /// One read of the counters within the interval.
    pub fn observe(&mut self, snapshot: &[(u64, StackCounters)]) {
        for (id, c) in snapshot {
            let live = c.alloc_bytes.saturating_sub(c.free_bytes);
            self.lowest.entry(*id).and_modify(|l| *l = (*l).min(live)).or_insert(live);
        }
    }

    /// The interval's last read folded in, as counters whose live bytes are the interval's low
    /// water (the totals are the last read's). Starts the next interval.
    pub fn finish(&mut self, last: &[(u64, StackCounters)]) -> Vec<(u64, StackCounters)> {
        self.observe(last);
        let lowest = std::mem::take(&mut self.lowest);
        last.iter()
            .map(|(id, c)| {
                let low = lowest.get(id).copied().unwrap_or(0);
                (*id, StackCounters { free_bytes: c.alloc_bytes.saturating_sub(low), ..*c })
            })
            .collect()
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
            let series = self.stacks.entry(*id).or_insert_with(|| StackSeries {
                live_bytes: vec![0.0; index],
                live_allocations: vec![0; index],
                latest: StackCounters::default(),
            });
            series.latest = *c;
        }
        let mut total = 0.0;
        for series in self.stacks.values_mut() {
            let live = series.live_bytes_now() as f64;
            series.live_bytes.push(live);
            series.live_allocations.push(series.live_allocations_now());
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
    fn low_water_keeps_the_least_held_within_an_interval() {
        let mut low = LowWater::default();
        // Stack 1 churns (0, 150, 60 live), stack 2 leaks (100, 110, 120 live).
        low.observe(&[(1, counters(10, 10, 1000, 1000)), (2, counters(1, 0, 100, 0))]);
        low.observe(&[(1, counters(12, 10, 1150, 1000)), (2, counters(2, 0, 110, 0))]);
        let out = low.finish(&[(1, counters(14, 13, 1260, 1200)), (2, counters(3, 0, 120, 0))]);
        let mut rec = Recording::default();
        rec.push(0.0, None, &out, vec![]);
        assert_eq!(rec.stacks[&1].live_bytes, vec![0.0]);
        assert_eq!(rec.stacks[&2].live_bytes, vec![100.0]);
        assert_eq!(rec.stacks[&1].latest.allocs, 14, "totals are the last read's");
        // The next interval starts afresh.
        let out = low.finish(&[(2, counters(4, 0, 130, 0))]);
        assert_eq!(out[0].1.alloc_bytes - out[0].1.free_bytes, 130);
    }

    #[test]
    fn more_frees_than_allocations_never_underflows() {
        let mut rec = Recording::default();
        rec.push(0.0, None, &[(9, counters(1, 2, 10, 20))], vec![]);
        assert_eq!(rec.stacks[&9].live_bytes, vec![0.0]);
    }
}
