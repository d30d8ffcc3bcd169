//! The report: what the person on call reads (text) and what scripts read (JSON, versioned and
//! documented in docs/report-format.md), and what the field's tools read (folded stacks, flame
//! graph SVG, pprof, speedscope) plus one self-contained HTML page. Built from a finished
//! recording, or loaded back from a saved JSON report (`load`); rendering is pure.

pub mod build;
pub mod collapsed;
pub(crate) mod facts;
pub mod flamegraph;
pub mod heap;
pub mod html;
mod html_heap;
mod html_tables;
pub mod json;
pub mod judge;
pub mod load;
pub mod output;
pub mod plot;
pub mod pprof;
pub mod probe_sites;
#[cfg(test)]
pub(crate) mod sample;
pub mod serde_helpers;
pub mod speedscope;
pub mod text;

pub use heap::{CensusSummary, CountPoint, GcSummary, HolderReport, TypeReport};
pub use output::{render, write, Format};

use serde::{Deserialize, Serialize};

use crate::{
    advice::StackAdvice,
    block_liveness::SampleLiveness,
    budget::BudgetSummary,
    process_memory::ProcessMemory,
    symbolize::Frame,
    verdict::{GrowthVerdict, VerdictKind},
};

/// Bumped on any incompatible change of the JSON layout.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub leakprobe_version: String,
    pub target: TargetInfo,
    /// Unix time of the first sample.
    pub started_unix_secs: u64,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub duration_seconds: f64,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub interval_seconds: f64,
    /// `duration`, `interrupted` or `target-exited`.
    pub ended_because: String,
    pub verdict: ProcessVerdict,
    pub memory_limit: Option<LimitProjection>,
    pub rss: Vec<RssPoint>,
    /// Live bytes tracked by the allocator hooks (all stacks), per sample.
    pub tracked_live_bytes: Vec<SeriesPoint>,
    /// Flagged stacks first (fastest growth first), then the largest others.
    pub stacks: Vec<StackReport>,
    pub hooks: Vec<HookInfo>,
    /// Events seen and, for every way of losing one, how many were lost.
    pub counters: Vec<CounterValue>,
    pub warnings: Vec<String>,
    /// The overhead budget and the probes' estimated cost (`None` in reports built without one).
    pub budget: Option<BudgetSummary>,
    /// Sampling mode: how many samples each signal judged dead or alive (absent otherwise, and
    /// in reports written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_liveness: Option<SampleLiveness>,
    /// Where each hooked function's breakpoint sat and what a hit there cost (empty in reports
    /// from before per-site placement).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe_sites: Vec<ProbeSiteInfo>,
    /// The heap censuses (absent when none was taken, and in older reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub census: Option<CensusSummary>,
    /// Containers reached from `sys.modules`: flagged ones first (fastest growth), then the largest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<HolderReport>,
    /// Python object types, ordered as the holders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<TypeReport>,
}

/// The breakpoint of one hooked function (see `probe_site`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeSiteInfo {
    /// The hooked function's symbol.
    pub function: String,
    /// The file it is in, as the target sees it.
    pub object: String,
    /// Bytes from the entry of the function the site is in (the hooked one unless `tail_called`).
    pub offset: u64,
    /// Whether the site is in a function the hooked one tail-calls.
    #[serde(default)]
    pub tail_called: bool,
    /// The function the site is in when `tail_called` and its name is known (`_PyObject_Free`).
    #[serde(default)]
    pub site_function: Option<String>,
    /// The instruction under the breakpoint (AT&T syntax).
    pub instruction: String,
    /// Whether the kernel emulates it (one trap a hit) rather than single-stepping it.
    pub emulated: bool,
    /// Estimated cost of one entry hit there, in µs (trap plus program run time, as charged).
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub cost_per_hit_us: f64,
    /// Why the breakpoint stayed on the entry, when it did.
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub exe: String,
    pub cmdline: Vec<String>,
    pub python_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessVerdict {
    pub verdict: VerdictKind,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub growth_bytes_per_sec: f64,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub confidence: f64,
    pub reason: String,
    /// The two series the verdict is drawn from.
    pub rss: GrowthVerdict,
    pub tracked_heap: GrowthVerdict,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitProjection {
    pub limit_bytes: u64,
    pub usage_bytes: Option<u64>,
    pub cgroup: String,
    /// At the current growth rate; `None` when not growing.
    pub time_to_limit_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RssPoint {
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub t_secs: f64,
    #[serde(flatten)]
    pub memory: ProcessMemory,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesPoint {
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub t_secs: f64,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub bytes: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackReport {
    /// The kernel's id of the stack (hex).
    pub id: String,
    /// The allocator entry point that was called (`malloc`, `PyObject_Malloc`, `mmap`, ...).
    pub allocator: String,
    /// Innermost first.
    pub frames: Vec<Frame>,
    pub native_truncated: bool,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub total_allocations: u64,
    pub total_frees: u64,
    /// Live bytes at each sample (aligned with `rss`).
    #[serde(deserialize_with = "serde_helpers::vec_f64_or_nan")]
    pub series: Vec<f64>,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub growth_bytes_per_sec: f64,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub growth_low_bytes_per_sec: f64,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub growth_high_bytes_per_sec: f64,
    /// Sampling mode: the slope of the stack's sampled live bytes (what the windows saw).
    pub sampled_growth_bytes_per_sec: Option<f64>,
    /// Sampling mode, flagged stacks: this stack's share of the flagged stacks' sampled growth; its
    /// `growth_bytes_per_sec` is that share of the process's growth.
    pub share_of_growth: Option<f64>,
    /// Flagged stacks: seconds into the recording at which it would first have been flagged.
    pub flagged_after_secs: Option<f64>,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub confidence: f64,
    pub flagged: bool,
    pub reason: String,
    /// Flagged stacks: what kind of leak the Python code keeping this memory is, why it leaks and
    /// the fix (`advice::StackAdvisor`); `None` when no frame's source matches a pattern or the
    /// source could not be read.
    #[serde(default)]
    pub advice: Option<StackAdvice>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookInfo {
    pub function: String,
    pub object: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterValue {
    pub name: String,
    pub value: u64,
    pub is_drop: bool,
}

impl StackReport {
    /// A stack of a memory syscall (mmap, brk, ...) rather than of an allocator call.
    pub fn is_memory_syscall(&self) -> bool {
        leakprobe_common::AllocFunction::from_symbol(&self.allocator)
            .is_some_and(leakprobe_common::AllocFunction::is_syscall)
    }
}

impl Report {
    /// The flagged stacks, split as the renderers show them: allocation stacks (who keeps the
    /// memory) and memory-syscall stacks (only where the heap grows), each fastest first.
    pub fn growing_stacks(&self) -> (Vec<&StackReport>, Vec<&StackReport>) {
        self.stacks.iter().filter(|s| s.flagged).partition(|s| !s.is_memory_syscall())
    }

    pub fn is_leak(&self) -> bool {
        self.verdict.verdict == VerdictKind::Leak
    }

    pub fn dropped_events(&self) -> u64 {
        self.counters.iter().filter(|c| c.is_drop).map(|c| c.value).sum()
    }
}

/// Human sizes: 1.5 MB, 640.0 KB, 12 B (powers of 1024, as `free -h` does).
pub fn human_bytes(bytes: f64) -> String {
    let sign = if bytes < 0.0 { "-" } else { "" };
    let mut value = bytes.abs();
    for unit in ["B", "KB", "MB", "GB"] {
        if value < 1024.0 {
            return if unit == "B" { format!("{sign}{value:.0} {unit}") } else { format!("{sign}{value:.1} {unit}") };
        }
        value /= 1024.0;
    }
    format!("{sign}{value:.1} TB")
}

/// `2h 05m`, `3m 20s`, `45s`.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=172_799 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_free_h() {
        assert_eq!(human_bytes(12.0), "12 B");
        assert_eq!(human_bytes(640.0 * 1024.0), "640.0 KB");
        assert_eq!(human_bytes(1.5 * 1024.0 * 1024.0), "1.5 MB");
        assert_eq!(human_bytes(-2048.0), "-2.0 KB");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_duration(45.0), "45s");
        assert_eq!(human_duration(200.0), "3m 20s");
        assert_eq!(human_duration(7500.0), "2h 05m");
        assert_eq!(human_duration(200_000.0), "2d 07h");
    }
}
