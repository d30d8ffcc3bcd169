//! One watched process in the agent: a bounded history of its memory and of its syscall-level
//! stacks, and what that history says (growth, verdict, time to limit, top growing sites). Pure:
//! the agent feeds it samples, so it is tested without root. Memory per process is bounded by
//! `History::capacity` samples and `MAX_STACKS` stacks.

use std::collections::{HashMap, VecDeque};

use leakprobe_common::{AllocFunction, StackCounters};

use crate::{
    assess::{self, memory_kind, window_growth, MemoryKind},
    process_memory::ProcessMemory,
    sampling_loop::StackIdentity,
    verdict::VerdictKind,
};

/// Stacks followed per process; the least live are evicted beyond it (counted).
pub const MAX_STACKS: usize = 256;

/// What the agent knows of one stack: its allocator, where it comes from, its live bytes.
#[derive(Debug, Clone)]
struct StackHistory {
    function: Option<AllocFunction>,
    site: Option<String>,
    latest: StackCounters,
    /// Live bytes at each of the process's last samples (aligned with `ProcessHistory::times`).
    live: VecDeque<f64>,
}

impl StackHistory {
    fn live_now(&self) -> u64 {
        self.latest.alloc_bytes.saturating_sub(self.latest.free_bytes)
    }
}

/// A growing site, for the top-k set.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub site: String,
    pub kind: MemoryKind,
    pub growth_bytes_per_sec: f64,
    pub live_bytes: u64,
}

/// The state of a process after its latest sample.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub memory: ProcessMemory,
    pub growth_bytes_per_sec: f64,
    pub verdict: VerdictKind,
    pub reason: String,
    pub memory_limit_bytes: Option<u64>,
    pub time_to_limit_seconds: Option<f64>,
    pub heap: HashMap<MemoryKind, u64>,
    pub top: Vec<Site>,
}

pub struct ProcessHistory {
    capacity: usize,
    rate_window: usize,
    times: VecDeque<f64>,
    rss: VecDeque<f64>,
    memory: Option<ProcessMemory>,
    stacks: HashMap<u64, StackHistory>,
    /// Stacks dropped to stay within `MAX_STACKS`.
    pub evicted_stacks: u64,
}

impl ProcessHistory {
    /// `capacity`: samples kept (the verdict looks at all of them); `rate_window`: samples the
    /// growth rates are measured over.
    pub fn new(capacity: usize, rate_window: usize) -> ProcessHistory {
        ProcessHistory {
            capacity: capacity.max(3),
            rate_window: rate_window.clamp(3, capacity.max(3)),
            times: VecDeque::new(),
            rss: VecDeque::new(),
            memory: None,
            stacks: HashMap::new(),
            evicted_stacks: 0,
        }
    }

    /// Adds a sample: the time (seconds), the process's memory, and its stacks' counters (the
    /// stacks of this process only). `describe` is asked once per new stack for its allocator
    /// and site (the agent's `StackCache` knows them).
    pub fn push(
        &mut self,
        t: f64,
        memory: ProcessMemory,
        counters: &[(u64, StackCounters)],
        mut describe: impl FnMut(u64) -> StackIdentity,
    ) {
        let index = self.times.len();
        self.times.push_back(t);
        self.rss.push_back(memory.rss_bytes as f64);
        self.memory = Some(memory);
        for (id, c) in counters {
            let stack = self.stacks.entry(*id).or_insert_with(|| {
                let StackIdentity { function, site, .. } = describe(*id);
                StackHistory { function, site, latest: StackCounters::default(), live: vec![0.0; index].into() }
            });
            stack.latest = *c;
        }
        for stack in self.stacks.values_mut() {
            stack.live.push_back(stack.live_now() as f64);
        }
        if self.times.len() > self.capacity {
            self.times.pop_front();
            self.rss.pop_front();
            for stack in self.stacks.values_mut() {
                stack.live.pop_front();
            }
        }
        self.evict();
    }

    /// Keeps the `MAX_STACKS` stacks with the most live bytes.
    fn evict(&mut self) {
        if self.stacks.len() <= MAX_STACKS {
            return;
        }
        let mut by_live: Vec<(u64, u64)> = self.stacks.iter().map(|(id, s)| (s.live_now(), *id)).collect();
        by_live.sort_unstable();
        let excess = self.stacks.len() - MAX_STACKS;
        for (_, id) in by_live.into_iter().take(excess) {
            self.stacks.remove(&id);
            self.evicted_stacks += 1;
        }
    }

    /// Stack ids followed (to release their kernel entries when the process ends).
    pub fn stack_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.stacks.keys().copied()
    }

    pub fn samples(&self) -> usize {
        self.times.len()
    }

    /// What the history says now. `limit`: (limit, usage) of the tightest cgroup memory limit.
    pub fn assess(&self, limit: Option<(u64, Option<u64>)>, top: usize) -> Option<Assessment> {
        let memory = self.memory?;
        let times: Vec<f64> = self.times.iter().copied().collect();
        let rss: Vec<f64> = self.rss.iter().copied().collect();
        let process = assess::watched_process(&times, &rss, self.rate_window, limit, memory.rss_bytes);

        let mut heap: HashMap<MemoryKind, u64> = HashMap::new();
        let mut growing = Vec::new();
        for stack in self.stacks.values() {
            let Some(function) = stack.function else { continue };
            let kind = memory_kind(function, stack.latest.allocs, stack.latest.alloc_bytes);
            *heap.entry(kind).or_default() += stack.live_now();
            if stack.live.len() != times.len() {
                continue;
            }
            let live: Vec<f64> = stack.live.iter().copied().collect();
            let rate = window_growth(&times, &live, self.rate_window);
            if rate > 0.0 {
                let site = stack.site.clone().unwrap_or_else(|| function.symbol().to_string());
                growing.push(Site { site, kind, growth_bytes_per_sec: rate, live_bytes: stack.live_now() });
            }
        }
        // Several stacks can end on one line: one site, their growth summed.
        let mut sites: Vec<Site> = Vec::new();
        for g in growing {
            match sites.iter_mut().find(|s| s.site == g.site && s.kind == g.kind) {
                Some(s) => {
                    s.growth_bytes_per_sec += g.growth_bytes_per_sec;
                    s.live_bytes += g.live_bytes;
                }
                None => sites.push(g),
            }
        }
        sites.sort_by(|a, b| b.growth_bytes_per_sec.total_cmp(&a.growth_bytes_per_sec));
        sites.truncate(top);
        Some(Assessment {
            memory,
            growth_bytes_per_sec: process.growth_bytes_per_sec,
            verdict: process.verdict.kind,
            reason: process.verdict.reason,
            memory_limit_bytes: limit.map(|(l, _)| l),
            time_to_limit_seconds: process.time_to_limit_seconds,
            heap,
            top: sites,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(rss: u64) -> ProcessMemory {
        ProcessMemory { rss_bytes: rss, ..Default::default() }
    }

    fn mmap(site: Option<&str>) -> StackIdentity {
        StackIdentity { tgid: 1, function: Some(AllocFunction::Mmap), site: site.map(String::from) }
    }

    fn arenas(n: u64) -> StackCounters {
        StackCounters { allocs: n, frees: 0, alloc_bytes: n << 20, free_bytes: 0 }
    }

    #[test]
    fn a_growing_process_is_a_leak_with_its_site_and_time_to_limit() {
        let mut h = ProcessHistory::new(60, 6);
        for i in 0..20u64 {
            h.push(i as f64, memory((50 << 20) + (i << 20)), &[(7, arenas(i + 1))], |_| mmap(Some("leak app.py:12")));
        }
        let a = h.assess(Some((200 << 20, None)), 3).unwrap();
        assert_eq!(a.verdict, VerdictKind::Leak);
        assert!((a.growth_bytes_per_sec - (1 << 20) as f64).abs() < 1.0);
        assert_eq!(a.heap[&MemoryKind::PymallocArenas], 20 << 20);
        assert_eq!(a.top.len(), 1);
        assert_eq!(a.top[0].site, "leak app.py:12");
        // 200 MiB limit, 69 MiB used, 1 MiB/s.
        assert!((a.time_to_limit_seconds.unwrap() - 131.0).abs() < 0.5, "{:?}", a.time_to_limit_seconds);
    }

    #[test]
    fn a_steady_process_is_not_a_leak_and_history_stays_bounded() {
        let mut h = ProcessHistory::new(30, 6);
        for i in 0..100u64 {
            let wobble = if i % 2 == 0 { 0 } else { 4096 };
            h.push(i as f64, memory((80 << 20) + wobble), &[(1, arenas(3))], |_| mmap(None));
        }
        assert_eq!(h.samples(), 30);
        let a = h.assess(None, 3).unwrap();
        assert_eq!(a.verdict, VerdictKind::NoLeak);
        assert!(a.top.is_empty());
        assert_eq!(a.time_to_limit_seconds, None);
        assert!(h.stacks.values().all(|s| s.live.len() == 30));
    }

    #[test]
    fn stacks_beyond_the_cap_are_evicted_least_live_first() {
        let mut h = ProcessHistory::new(10, 5);
        let counters: Vec<(u64, StackCounters)> = (0..(MAX_STACKS as u64 + 10)).map(|id| (id, arenas(id))).collect();
        h.push(0.0, memory(1), &counters, |_| mmap(None));
        assert_eq!(h.stacks.len(), MAX_STACKS);
        assert_eq!(h.evicted_stacks, 10);
        assert!(!h.stacks.contains_key(&0) && h.stacks.contains_key(&(MAX_STACKS as u64 + 9)));
    }

    #[test]
    fn sites_on_one_line_are_summed() {
        let mut h = ProcessHistory::new(30, 6);
        for i in 0..10u64 {
            h.push(i as f64, memory(i << 20), &[(1, arenas(i)), (2, arenas(2 * i))], |_| mmap(Some("f x.py:3")));
        }
        let a = h.assess(None, 5).unwrap();
        assert_eq!(a.top.len(), 1);
        assert!((a.top[0].growth_bytes_per_sec - 3.0 * (1 << 20) as f64).abs() < 1.0);
    }
}
