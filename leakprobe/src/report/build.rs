//! From a finished recording to a `Report`: the process verdict, per-stack verdicts, the limit
//! projection. Pure except for the symbolization callback, so it is unit-tested on synthetic data.

use std::collections::HashSet;

use crate::{
    aggregate::Recording,
    budget::BudgetSummary,
    cgroup::MemoryLimit,
    report::{
        CounterValue, HookInfo, LimitProjection, ProcessVerdict, Report, RssPoint, SeriesPoint, StackReport,
        TargetInfo, SCHEMA_VERSION,
    },
    symbolize::Frame,
    verdict::{classify, GrowthVerdict, VerdictConfig, VerdictKind},
};

/// What the report needs besides the recording.
pub struct Context {
    pub target: TargetInfo,
    pub started_unix_secs: u64,
    pub interval_seconds: f64,
    pub ended_because: String,
    pub memory_limit: Option<MemoryLimit>,
    pub hooks: Vec<HookInfo>,
    pub warnings: Vec<String>,
    /// Non-flagged stacks kept in the report, largest first.
    pub other_stacks: usize,
    pub verdict: VerdictConfig,
    /// The overhead budget and what the probes cost.
    pub budget: Option<BudgetSummary>,
    /// Sampling mode: the stacks whose series are sampled live objects (see `sampled_heap`). Only
    /// they are judged as leak sites; syscall-level stacks (mmap, brk) say where the heap grows,
    /// not who keeps it.
    pub sampled_stacks: Option<HashSet<u64>>,
}

/// Fewest live sampled objects a sampled stack needs to be flagged: a couple of strays are not
/// a trend.
const MIN_SAMPLED_LIVE: u64 = 8;

/// A stack's frames and how it was allocated, as the caller resolves them.
pub struct ResolvedStack {
    pub allocator: String,
    pub frames: Vec<Frame>,
    pub native_truncated: bool,
}

/// At most this many flagged stacks are listed (the rest are counted in a warning).
const MAX_FLAGGED: usize = 50;

pub fn build(rec: &Recording, mut ctx: Context, mut resolve: impl FnMut(u64) -> ResolvedStack) -> Report {
    let (rss_t, rss_y) = rec.rss_series();
    let rss = classify(&rss_t, &rss_y, &ctx.verdict);
    let tracked_heap = classify(&rec.times, &rec.tracked_live_bytes, &ctx.verdict);
    let verdict = process_verdict(rss, tracked_heap);

    let memory_limit = ctx.memory_limit.as_ref().map(|limit| {
        let usage = limit.usage_bytes.or_else(|| rss_y.last().map(|&r| r as u64)).unwrap_or(0);
        let growth = verdict.growth_bytes_per_sec;
        let time_to_limit_seconds = (verdict.verdict == VerdictKind::Leak && growth > 0.0)
            .then(|| limit.limit_bytes.saturating_sub(usage) as f64 / growth);
        LimitProjection {
            limit_bytes: limit.limit_bytes,
            usage_bytes: limit.usage_bytes,
            cgroup: limit.cgroup_path.clone(),
            time_to_limit_seconds,
        }
    });

    // Judge every stack that still holds memory; a stack back to zero is not leaking. Sampled
    // series are a small sample of the real bytes: no absolute floor, a floor on live samples.
    let sampled_config = VerdictConfig { min_growth_bytes_per_sec: 0.0, ..ctx.verdict.clone() };
    let judge_with = |id: &u64| -> VerdictConfig {
        match &ctx.sampled_stacks {
            Some(sampled) if sampled.contains(id) => sampled_config.clone(),
            _ => ctx.verdict.clone(),
        }
    };
    let judge = |id: u64, s: &crate::aggregate::StackSeries| match &ctx.sampled_stacks {
        None => classify(&rec.times, &s.live_bytes, &ctx.verdict),
        Some(sampled) if sampled.contains(&id) && s.live_allocations_now() >= MIN_SAMPLED_LIVE => {
            classify(&rec.times, &s.live_bytes, &sampled_config)
        }
        Some(sampled) => {
            let mut v = classify(&rec.times, &s.live_bytes, &ctx.verdict);
            if v.kind == VerdictKind::Leak {
                v.kind = VerdictKind::Inconclusive;
                v.reason = if sampled.contains(&id) {
                    format!("too few live samples (fewer than {MIN_SAMPLED_LIVE}) to call: {}", v.reason)
                } else {
                    format!("where the heap grows, not who keeps it (memory syscall): {}", v.reason)
                };
            }
            v
        }
    };
    let mut judged: Vec<(u64, GrowthVerdict)> =
        rec.stacks.iter().filter(|(_, s)| s.live_bytes_now() > 0).map(|(&id, s)| (id, judge(id, s))).collect();
    let (mut flagged, mut others): (Vec<_>, Vec<_>) = judged.drain(..).partition(|(_, v)| v.kind == VerdictKind::Leak);
    // Sampled slopes are in sampled bytes: each flagged stack gets its share of the process's
    // growth instead (the sampled slope stays in the report).
    let sampled_total: f64 = flagged.iter().map(|(_, v)| v.growth_bytes_per_sec.max(0.0)).sum();
    let share_of_process = |v: &GrowthVerdict| {
        (ctx.sampled_stacks.is_some() && sampled_total > 0.0)
            .then(|| (v.growth_bytes_per_sec.max(0.0) / sampled_total, verdict.growth_bytes_per_sec.max(0.0)))
    };
    flagged.sort_by(|a, b| b.1.growth_bytes_per_sec.total_cmp(&a.1.growth_bytes_per_sec));
    others.sort_by_key(|(id, _)| std::cmp::Reverse(rec.stacks[id].live_bytes_now()));
    if flagged.len() > MAX_FLAGGED {
        ctx.warnings.push(format!("{} growing stacks; the report lists the {MAX_FLAGGED} fastest", flagged.len()));
        flagged.truncate(MAX_FLAGGED);
    }
    others.truncate(ctx.other_stacks);

    let stacks = flagged
        .into_iter()
        .map(|s| (s, true))
        .chain(others.into_iter().map(|s| (s, false)))
        .map(|((id, v), is_flagged)| {
            let series = &rec.stacks[&id];
            let resolved = resolve(id);
            let share = if is_flagged { share_of_process(&v) } else { None };
            let flagged_after_secs =
                if is_flagged { first_flagged(&rec.times, &series.live_bytes, &judge_with(&id)) } else { None };
            let scale = |rate: f64| share.map_or(rate, |(share, process)| share * process);
            StackReport {
                id: format!("{id:016x}"),
                allocator: resolved.allocator,
                frames: resolved.frames,
                native_truncated: resolved.native_truncated,
                live_bytes: series.live_bytes_now(),
                live_allocations: series.live_allocations_now(),
                total_allocations: series.latest.allocs,
                total_frees: series.latest.frees,
                series: series.live_bytes.clone(),
                growth_bytes_per_sec: scale(v.growth_bytes_per_sec),
                growth_low_bytes_per_sec: share.map_or(v.growth_low_bytes_per_sec, |_| scale(v.growth_bytes_per_sec)),
                growth_high_bytes_per_sec: share.map_or(v.growth_high_bytes_per_sec, |_| scale(v.growth_bytes_per_sec)),
                sampled_growth_bytes_per_sec: ctx.sampled_stacks.as_ref().map(|_| v.growth_bytes_per_sec),
                share_of_growth: share.map(|(share, _)| share),
                flagged_after_secs,
                confidence: v.confidence,
                flagged: is_flagged,
                reason: v.reason,
                advice: None,
            }
        })
        .collect();

    let duration_seconds = rec.times.last().copied().unwrap_or(0.0);
    Report {
        schema_version: SCHEMA_VERSION,
        leakprobe_version: env!("CARGO_PKG_VERSION").to_string(),
        target: ctx.target,
        started_unix_secs: ctx.started_unix_secs,
        duration_seconds,
        interval_seconds: ctx.interval_seconds,
        ended_because: ctx.ended_because,
        verdict,
        memory_limit,
        rss: rec
            .times
            .iter()
            .zip(&rec.memory)
            .filter_map(|(&t_secs, m)| m.map(|memory| RssPoint { t_secs, memory }))
            .collect(),
        tracked_live_bytes: rec
            .times
            .iter()
            .zip(&rec.tracked_live_bytes)
            .map(|(&t_secs, &bytes)| SeriesPoint { t_secs, bytes })
            .collect(),
        stacks,
        hooks: ctx.hooks,
        counters: rec
            .counters
            .iter()
            .map(|(name, value)| CounterValue {
                name: name.to_string(),
                value: *value,
                is_drop: name.starts_with("drop_"),
            })
            .collect(),
        warnings: ctx.warnings,
        budget: ctx.budget,
    }
}

/// When the stack would first have been flagged, had the recording stopped at that sample: the
/// time leakprobe needs to name it.
fn first_flagged(times: &[f64], series: &[f64], cfg: &VerdictConfig) -> Option<f64> {
    (cfg.min_samples.max(3)..=times.len().min(series.len()))
        .find(|&n| classify(&times[..n], &series[..n], cfg).kind == VerdictKind::Leak)
        .map(|n| times[n - 1])
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{process_memory::ProcessMemory, symbolize::FrameKind};
    use leakprobe_common::StackCounters;

    fn ctx() -> Context {
        Context {
            target: TargetInfo { pid: 1, exe: "/bin/x".into(), cmdline: vec![], python_version: None },
            started_unix_secs: 0,
            interval_seconds: 1.0,
            ended_because: "duration".into(),
            memory_limit: Some(MemoryLimit {
                limit_bytes: 100 << 20,
                usage_bytes: Some(40 << 20),
                cgroup_path: "/t".into(),
                version: 2,
            }),
            hooks: vec![],
            warnings: vec![],
            other_stacks: 5,
            budget: None,
            sampled_stacks: None,
            verdict: VerdictConfig::default(),
        }
    }

    fn resolve(id: u64) -> ResolvedStack {
        ResolvedStack {
            allocator: "malloc".into(),
            frames: vec![Frame {
                function: format!("f{id}"),
                file: None,
                line: None,
                object: None,
                kind: FrameKind::Native,
                address: id,
            }],
            native_truncated: false,
        }
    }

    /// Stack 1 leaks 64 KiB/s, stack 2 churns around 1 MiB, RSS follows the leak.
    fn leaking_recording() -> Recording {
        let mut rec = Recording::default();
        for i in 0..30u64 {
            let leak = StackCounters { allocs: i, frees: 0, alloc_bytes: i * 65536, free_bytes: 0 };
            let churn_live = (1 << 20) + (i % 3) * 4096;
            let churn = StackCounters {
                allocs: 100 * i + 10,
                frees: 100 * i,
                alloc_bytes: 1 << 30,
                free_bytes: (1 << 30) - churn_live,
            };
            let memory = ProcessMemory { rss_bytes: (30 << 20) + i * 65536, ..Default::default() };
            rec.push(
                i as f64,
                Some(memory),
                &[(1, leak), (2, churn)],
                vec![("allocations", i), ("drop_live_table_full", 0)],
            );
        }
        rec
    }

    #[test]
    fn flags_only_the_leaking_stack_with_its_rate() {
        let report = build(&leaking_recording(), ctx(), resolve);
        assert_eq!(report.verdict.verdict, VerdictKind::Leak);
        let flagged: Vec<_> = report.stacks.iter().filter(|s| s.flagged).collect();
        assert_eq!(flagged.len(), 1);
        assert_eq!(flagged[0].frames[0].function, "f1");
        assert!((flagged[0].growth_bytes_per_sec - 65536.0).abs() < 65536.0 * 0.05);
        assert!(report.stacks.iter().any(|s| !s.flagged && s.frames[0].function == "f2"));
        assert_eq!(report.dropped_events(), 0);
        // 60 MiB of headroom at 64 KiB/s: 960 s.
        let ttl = report.memory_limit.unwrap().time_to_limit_seconds.unwrap();
        assert!((ttl - 960.0).abs() < 960.0 * 0.05, "{ttl}");
    }

    #[test]
    fn flat_process_is_no_leak_and_has_no_projection() {
        let mut rec = Recording::default();
        for i in 0..30u64 {
            let memory = ProcessMemory { rss_bytes: (30 << 20) + (i % 2) * 4096, ..Default::default() };
            rec.push(i as f64, Some(memory), &[], vec![]);
        }
        let report = build(&rec, ctx(), resolve);
        assert_eq!(report.verdict.verdict, VerdictKind::NoLeak);
        assert!(report.stacks.is_empty());
        assert_eq!(report.memory_limit.unwrap().time_to_limit_seconds, None);
    }
}
