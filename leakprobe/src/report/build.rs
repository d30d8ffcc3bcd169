//! From a finished recording to a `Report`: the process verdict, per-stack verdicts, the limit
//! projection. Data in, data out: the caller judges the stacks first (`judge`), names and advises
//! the ones the report needs while the probes are alive, then builds. Pure, so it is unit-tested
//! on synthetic data.

use std::collections::{HashMap, HashSet};

use crate::{
    accounting::Accounting,
    advice::StackAdvice,
    aggregate::Recording,
    assess::{recorded_process_verdict, time_to_limit},
    block_liveness::SampleLiveness,
    budget::BudgetSummary,
    cgroup::MemoryLimit,
    liveness::SampleKind,
    report::{
        judge::{judge_stacks, set_apart_shadows, Judged, StackJudge, MAX_FLAGGED},
        CounterValue, HookInfo, LimitProjection, ProbeSiteInfo, Report, RssPoint, SeriesPoint, StackReport, TargetInfo,
        SCHEMA_VERSION,
    },
    symbolize::Frame,
    verdict::{GrowthVerdict, VerdictConfig},
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
    /// Each hooked function's breakpoint and its cost (`report::probe_sites::rows`).
    pub probe_sites: Vec<ProbeSiteInfo>,
    /// How the recording counted allocations: it decides how stacks are judged.
    pub accounting: Accounting,
    /// `Accounting::Sampled`: the stacks whose series are sampled live objects (empty otherwise).
    pub object_stacks: HashSet<u64>,
    /// `Accounting::Sampled`: what each stack's live samples were at the end (empty otherwise).
    pub sample_kinds: HashMap<u64, SampleKind>,
    /// `Accounting::Sampled`: how the samples were judged.
    pub sample_liveness: Option<SampleLiveness>,
    /// The heap censuses and what they found (judged, and the holders' lines found, by the caller).
    pub census: Option<super::CensusSummary>,
    pub holders: Vec<super::HolderReport>,
    pub types: Vec<super::TypeReport>,
}

/// A stack's frames and how it was allocated, as the caller resolves them.
pub struct ResolvedStack {
    pub allocator: String,
    pub frames: Vec<Frame>,
    pub native_truncated: bool,
}

/// A stack the report needs, named (and, when flagged, advised) by the caller.
pub struct NamedStack {
    pub stack: ResolvedStack,
    pub advice: Option<StackAdvice>,
}

/// Which stacks the report will list (flagged, then the largest others), judged by the
/// recording's accounting: the caller names these, then calls `build`.
pub fn judge(rec: &Recording, ctx: &Context) -> Judged {
    let judge = StackJudge { accounting: ctx.accounting, object_stacks: &ctx.object_stacks, verdict: &ctx.verdict };
    judge_stacks(rec, &judge, ctx.other_stacks)
}

pub fn build(rec: &Recording, mut ctx: Context, judged: Judged, named: &HashMap<u64, NamedStack>) -> Report {
    let (rss_t, rss_y) = rec.rss_series();
    let verdict = recorded_process_verdict((&rss_t, &rss_y), (&rec.times, &rec.tracked_live_bytes), &ctx.verdict);

    let memory_limit = ctx.memory_limit.as_ref().map(|limit| {
        let usage = limit.usage_bytes.or_else(|| rss_y.last().map(|&r| r as u64)).unwrap_or(0);
        LimitProjection {
            limit_bytes: limit.limit_bytes,
            usage_bytes: limit.usage_bytes,
            cgroup: limit.cgroup_path.clone(),
            time_to_limit_seconds: time_to_limit(
                verdict.verdict,
                verdict.growth_bytes_per_sec,
                limit.limit_bytes as f64,
                usage as f64,
            ),
        }
    });

    let sampled = ctx.accounting == Accounting::Sampled;
    let mut judged = judged;
    if sampled {
        set_apart_shadows(
            &mut judged,
            |id| named.get(&id).map(|n| n.stack.frames.as_slice()),
            |id| ctx.sample_kinds.get(&id).copied().unwrap_or_default(),
        );
    }
    let judge = StackJudge { accounting: ctx.accounting, object_stacks: &ctx.object_stacks, verdict: &ctx.verdict };
    // Sampled slopes are in sampled bytes: each flagged stack gets its share of the process's
    // growth instead (the sampled slope stays in the report).
    let sampled_total: f64 = judged.flagged.iter().map(|(_, v)| v.growth_bytes_per_sec.max(0.0)).sum();
    let share_of_process = |v: &GrowthVerdict| {
        (sampled && sampled_total > 0.0)
            .then(|| (v.growth_bytes_per_sec.max(0.0) / sampled_total, verdict.growth_bytes_per_sec.max(0.0)))
    };
    if judged.flagged_left_out > 0 {
        let growing = judged.flagged.len() + judged.flagged_left_out;
        ctx.warnings.push(format!("{growing} growing stacks; the report lists the {MAX_FLAGGED} fastest"));
    }

    let stacks = judged
        .flagged
        .into_iter()
        .map(|s| (s, true))
        .chain(judged.others.into_iter().map(|s| (s, false)))
        .map(|((id, v), is_flagged)| {
            let series = &rec.stacks[&id];
            let name = named.get(&id);
            let share = if is_flagged { share_of_process(&v) } else { None };
            let flagged_after_secs = if is_flagged { judge.first_flagged(id, &rec.times, series) } else { None };
            let scale = |rate: f64| share.map_or(rate, |(share, process)| share * process);
            StackReport {
                id: format!("{id:016x}"),
                allocator: name.map_or_else(|| "?".into(), |n| n.stack.allocator.clone()),
                frames: name.map(|n| n.stack.frames.clone()).unwrap_or_default(),
                native_truncated: name.is_some_and(|n| n.stack.native_truncated),
                live_bytes: series.live_bytes_now(),
                live_allocations: series.live_allocations_now(),
                total_allocations: series.latest.allocs,
                total_frees: series.latest.frees,
                series: series.live_bytes.clone(),
                growth_bytes_per_sec: scale(v.growth_bytes_per_sec),
                growth_low_bytes_per_sec: share.map_or(v.growth_low_bytes_per_sec, |_| scale(v.growth_bytes_per_sec)),
                growth_high_bytes_per_sec: share.map_or(v.growth_high_bytes_per_sec, |_| scale(v.growth_bytes_per_sec)),
                sampled_growth_bytes_per_sec: sampled.then_some(v.growth_bytes_per_sec),
                share_of_growth: share.map(|(share, _)| share),
                flagged_after_secs,
                confidence: v.confidence,
                flagged: is_flagged,
                reason: v.reason,
                advice: if is_flagged { name.and_then(|n| n.advice.clone()) } else { None },
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
        probe_sites: ctx.probe_sites,
        sample_liveness: ctx.sample_liveness,
        census: ctx.census,
        holders: ctx.holders,
        types: ctx.types,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{process_memory::ProcessMemory, symbolize::FrameKind, verdict::VerdictKind};
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
            probe_sites: vec![],
            accounting: Accounting::Exact,
            object_stacks: HashSet::new(),
            sample_kinds: HashMap::new(),
            sample_liveness: None,
            census: None,
            holders: vec![],
            types: vec![],
            verdict: VerdictConfig::default(),
        }
    }

    /// Judges, names every stack the report needs as `f<id>`, builds.
    fn build_named(rec: &Recording, ctx: Context) -> Report {
        let judged = judge(rec, &ctx);
        let named = judged.stack_ids().map(|id| (id, NamedStack { stack: resolve(id), advice: None })).collect();
        build(rec, ctx, judged, &named)
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
        let report = build_named(&leaking_recording(), ctx());
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
        let report = build_named(&rec, ctx());
        assert_eq!(report.verdict.verdict, VerdictKind::NoLeak);
        assert!(report.stacks.is_empty());
        assert_eq!(report.memory_limit.unwrap().time_to_limit_seconds, None);
    }
}
