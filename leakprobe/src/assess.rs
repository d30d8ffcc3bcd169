//! One assessment for `record`, `watch`, the agent and `logs`: the process's verdict, its growth
//! rate over a window, the time until its memory limit, which kind of memory a syscall-level
//! stack maps, and the site a stack is named by. Pure, so the four agree by construction and are
//! tested without root.

use leakprobe_common::AllocFunction;
use serde::Serialize;

use crate::{
    report::ProcessVerdict,
    symbolize::{Frame, FrameKind},
    trend::trend,
    verdict::{classify, GrowthVerdict, VerdictConfig, VerdictKind},
};

/// The process leaks when either what the kernel charges it (RSS) or what its allocators hold
/// keeps growing: RSS catches leaks outside the hooked allocators, the tracked heap catches
/// leaks that still fit in memory the allocator had already taken from the kernel.
pub fn process_verdict(rss: GrowthVerdict, tracked_heap: GrowthVerdict) -> ProcessVerdict {
    use VerdictKind::*;
    // (verdict, whether RSS is the series it rests on)
    let (verdict, on_rss) = match (rss.kind, tracked_heap.kind) {
        (Leak, _) => (Leak, true),
        (_, Leak) => (Leak, false),
        (NoLeak, NoLeak) => (NoLeak, true),
        (Inconclusive, _) => (Inconclusive, true),
        (_, Inconclusive) => (Inconclusive, false),
    };
    let (from, which) = if on_rss { (&rss, "RSS") } else { (&tracked_heap, "allocator-tracked heap") };
    let (growth_bytes_per_sec, confidence) = (from.growth_bytes_per_sec, from.confidence);
    let reason = format!("{which}: {}", from.reason);
    ProcessVerdict { verdict, growth_bytes_per_sec, confidence, reason, rss, tracked_heap }
}

/// A recording's process verdict: its RSS series and the allocator-tracked heap (all stacks).
pub fn recorded_process_verdict(
    rss: (&[f64], &[f64]),
    tracked_heap: (&[f64], &[f64]),
    cfg: &VerdictConfig,
) -> ProcessVerdict {
    process_verdict(classify(rss.0, rss.1, cfg), classify(tracked_heap.0, tracked_heap.1, cfg))
}

/// Theil–Sen slope of the last `window` samples (0 when it cannot be computed). `series` is
/// aligned with `times`.
pub fn window_growth(times: &[f64], series: &[f64], window: usize) -> f64 {
    let from = times.len().saturating_sub(window);
    trend(&times[from..], &series[from..]).map_or(0.0, |t| t.slope)
}

/// Seconds until `usage_bytes` reaches `limit_bytes` at `growth` bytes/s. Only a leak is
/// projected: growth that is warming up, filling a bounded cache or too noisy to call would
/// project a time that does not come.
pub fn time_to_limit(verdict: VerdictKind, growth: f64, limit_bytes: f64, usage_bytes: f64) -> Option<f64> {
    (verdict == VerdictKind::Leak && growth > 0.0).then(|| (limit_bytes - usage_bytes).max(0.0) / growth)
}

/// What `watch` and the agent say of a process each interval.
#[derive(Debug, Clone)]
pub struct WatchedProcess {
    /// RSS verdict over every sample kept.
    pub verdict: GrowthVerdict,
    /// RSS growth over the sliding window.
    pub growth_bytes_per_sec: f64,
    pub time_to_limit_seconds: Option<f64>,
}

/// `times`/`rss`: the samples kept; `limit`: (limit, usage) of the cgroup limit, the usage falling
/// back to `rss_now`.
pub fn watched_process(
    times: &[f64],
    rss: &[f64],
    rate_window: usize,
    limit: Option<(u64, Option<u64>)>,
    rss_now: u64,
) -> WatchedProcess {
    let verdict = classify(times, rss, &VerdictConfig::default());
    let growth = window_growth(times, rss, rate_window);
    let time_to_limit_seconds = limit
        .and_then(|(limit, usage)| time_to_limit(verdict.kind, growth, limit as f64, usage.unwrap_or(rss_now) as f64));
    WatchedProcess { verdict, growth_bytes_per_sec: growth, time_to_limit_seconds }
}

/// Which memory a syscall-level stack's mappings are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryKind {
    /// 1 MiB (256 KiB before 3.10) anonymous mappings: pymalloc's arenas.
    PymallocArenas,
    /// The brk heap: glibc's main arena.
    NativeHeap,
    /// Every other mapping: large malloc chunks, thread heaps, files, extension modules.
    OtherMmaps,
}

/// Classifies a stack by its syscall and the average size of its mappings.
pub fn memory_kind(function: AllocFunction, allocations: u64, bytes: u64) -> MemoryKind {
    match function {
        AllocFunction::Brk => MemoryKind::NativeHeap,
        _ if allocations > 0 && matches!(bytes / allocations, 0x10_0000 | 0x4_0000) && bytes % allocations == 0 => {
            MemoryKind::PymallocArenas
        }
        _ => MemoryKind::OtherMmaps,
    }
}

/// `function file:line` of a frame (its function alone when the line is unknown).
pub fn frame_site(frame: &Frame) -> String {
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!("{} {file}:{line}", frame.function),
        _ => frame.function.clone(),
    }
}

/// The site of a named stack: its innermost Python frame, else the first native frame below the
/// allocator (frame 0).
pub fn site(frames: &[Frame]) -> String {
    let frame = frames.iter().find(|f| f.kind == FrameKind::Python).or_else(|| frames.get(1)).or(frames.first());
    frame.map_or_else(|| "?".into(), frame_site)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, kind: FrameKind, at: Option<(&str, u32)>) -> Frame {
        Frame {
            function: function.into(),
            file: at.map(|(f, _)| f.into()),
            line: at.map(|(_, l)| l),
            object: None,
            kind,
            address: 0,
        }
    }

    fn verdict(kind: VerdictKind, growth: f64) -> GrowthVerdict {
        GrowthVerdict {
            kind,
            growth_bytes_per_sec: growth,
            growth_low_bytes_per_sec: growth,
            growth_high_bytes_per_sec: growth,
            confidence: 0.9,
            reason: "why".into(),
        }
    }

    #[test]
    fn memory_kinds_from_syscall_and_mapping_size() {
        assert_eq!(memory_kind(AllocFunction::Brk, 3, 12_288), MemoryKind::NativeHeap);
        assert_eq!(memory_kind(AllocFunction::Mmap, 4, 4 << 20), MemoryKind::PymallocArenas);
        assert_eq!(memory_kind(AllocFunction::Mmap, 2, 512 << 10), MemoryKind::PymallocArenas);
        assert_eq!(memory_kind(AllocFunction::Mmap, 3, (4 << 20) + 4096), MemoryKind::OtherMmaps);
        assert_eq!(memory_kind(AllocFunction::Mmap, 1, 64 << 20), MemoryKind::OtherMmaps);
        assert_eq!(memory_kind(AllocFunction::Mmap, 0, 0), MemoryKind::OtherMmaps);
    }

    #[test]
    fn only_a_growing_leak_is_projected_to_its_limit() {
        assert_eq!(time_to_limit(VerdictKind::Leak, 10.0, 1000.0, 400.0), Some(60.0));
        assert_eq!(time_to_limit(VerdictKind::Leak, 10.0, 1000.0, 1400.0), Some(0.0));
        assert_eq!(time_to_limit(VerdictKind::Leak, 0.0, 1000.0, 400.0), None);
        assert_eq!(time_to_limit(VerdictKind::Inconclusive, 10.0, 1000.0, 400.0), None);
        assert_eq!(time_to_limit(VerdictKind::NoLeak, 10.0, 1000.0, 400.0), None);
    }

    #[test]
    fn growth_is_measured_over_the_window_only() {
        let times: Vec<f64> = (0..10).map(f64::from).collect();
        // Flat for 6 samples, then 100 bytes/s.
        let series: Vec<f64> = (0..10).map(|i| if i < 6 { 0.0 } else { 100.0 * (i - 5) as f64 }).collect();
        assert!((window_growth(&times, &series, 4) - 100.0).abs() < 1e-9);
        assert!(window_growth(&times, &series, 10) < 100.0);
        assert_eq!(window_growth(&[], &[], 4), 0.0);
    }

    #[test]
    fn a_watched_process_uses_the_cgroup_usage_else_its_rss() {
        let times: Vec<f64> = (0..20).map(f64::from).collect();
        let rss: Vec<f64> = times.iter().map(|t| (50u64 << 20) as f64 + t * (1u64 << 20) as f64).collect();
        let now = *rss.last().unwrap() as u64;
        let w = watched_process(&times, &rss, 6, Some((200 << 20, None)), now);
        assert_eq!(w.verdict.kind, VerdictKind::Leak);
        assert!((w.time_to_limit_seconds.unwrap() - 131.0).abs() < 0.5);
        let w = watched_process(&times, &rss, 6, Some((200 << 20, Some(100 << 20))), now);
        assert!((w.time_to_limit_seconds.unwrap() - 100.0).abs() < 0.5);
        assert_eq!(watched_process(&times, &rss, 6, None, now).time_to_limit_seconds, None);
    }

    #[test]
    fn the_process_verdict_rests_on_rss_unless_only_the_tracked_heap_leaks() {
        let v = process_verdict(verdict(VerdictKind::NoLeak, 1.0), verdict(VerdictKind::Leak, 5.0));
        assert_eq!((v.verdict, v.growth_bytes_per_sec), (VerdictKind::Leak, 5.0));
        assert!(v.reason.starts_with("allocator-tracked heap: "));
        let v = process_verdict(verdict(VerdictKind::Inconclusive, 2.0), verdict(VerdictKind::NoLeak, 5.0));
        assert_eq!((v.verdict, v.growth_bytes_per_sec), (VerdictKind::Inconclusive, 2.0));
        assert!(v.reason.starts_with("RSS: "));
        let v = process_verdict(verdict(VerdictKind::NoLeak, 2.0), verdict(VerdictKind::Inconclusive, 5.0));
        assert_eq!(v.verdict, VerdictKind::Inconclusive);
        assert!(v.reason.starts_with("allocator-tracked heap: "));
    }

    #[test]
    fn a_site_is_the_innermost_python_frame_else_the_caller_of_the_allocator() {
        let malloc = frame("malloc", FrameKind::Native, None);
        let native = frame("grow", FrameKind::Native, Some(("grow.c", 7)));
        let python = frame("leak", FrameKind::Python, Some(("app.py", 12)));
        assert_eq!(site(&[malloc.clone(), native.clone(), python]), "leak app.py:12");
        assert_eq!(site(&[malloc.clone(), native]), "grow grow.c:7");
        assert_eq!(site(&[malloc]), "malloc");
        assert_eq!(site(&[]), "?");
    }
}
