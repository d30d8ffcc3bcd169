//! Realistic reports for the renderers' unit tests (what `record` produces on the demo app).

use super::*;
use crate::symbolize::FrameKind;

fn frame(
    function: &str,
    file: Option<&str>,
    line: Option<u32>,
    object: Option<&str>,
    kind: FrameKind,
    address: u64,
) -> Frame {
    Frame { function: function.into(), file: file.map(Into::into), line, object: object.map(Into::into), kind, address }
}

fn python(function: &str, file: &str, line: u32, address: u64) -> Frame {
    frame(function, Some(file), Some(line), None, FrameKind::Python, address)
}

fn libc(function: &str, address: u64) -> Frame {
    frame(function, None, None, Some("/usr/lib/x86_64-linux-gnu/libc.so.6"), FrameKind::Native, address)
}

fn verdict(kind: VerdictKind, rate: f64, confidence: f64, reason: &str) -> GrowthVerdict {
    GrowthVerdict {
        kind,
        growth_bytes_per_sec: rate,
        growth_low_bytes_per_sec: rate * 0.97,
        growth_high_bytes_per_sec: rate * 1.02,
        confidence,
        reason: reason.into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn stack(
    id: u64,
    allocator: &str,
    frames: Vec<Frame>,
    rate: f64,
    base: f64,
    n: usize,
    flagged: bool,
    reason: &str,
) -> StackReport {
    let series: Vec<f64> = (0..n).map(|i| base + rate * 2.0 * i as f64).collect();
    let live = *series.last().unwrap() as u64;
    StackReport {
        id: format!("{id:016x}"),
        allocator: allocator.into(),
        frames,
        native_truncated: false,
        live_bytes: live,
        live_allocations: live / 600,
        total_allocations: live / 600 + 40,
        total_frees: 40,
        series,
        growth_bytes_per_sec: rate,
        growth_low_bytes_per_sec: rate * 0.98,
        growth_high_bytes_per_sec: rate * 1.01,
        sampled_growth_bytes_per_sec: None,
        share_of_growth: None,
        flagged_after_secs: flagged.then_some(14.0),
        confidence: if flagged { 0.999 } else { 0.2 },
        flagged,
        reason: reason.into(),
        advice: None,
    }
}

/// The demo app under load, every allocation hooked: two leaking endpoints and some churn.
pub fn leaking() -> Report {
    let n = 31;
    let async_leak = vec![
        libc("malloc", 0x7f00_0000_1000),
        python("leak_async", "/srv/app/main.py", 18, 0x7f10_0000_0100),
        python("run_endpoint_function", "/venv/lib/python3.11/site-packages/fastapi/routing.py", 212, 0x7f10_0000_0200),
        python("app", "/venv/lib/python3.11/site-packages/fastapi/routing.py", 301, 0x7f10_0000_0300),
        python("<module>", "/srv/app/main.py", 40, 0x7f10_0000_0400),
    ];
    let sync_leak = vec![
        libc("malloc", 0x7f00_0000_1000),
        python("leak_sync", "/srv/app/main.py", 24, 0x7f10_0000_0500),
        python(
            "WorkerThread.run",
            "/venv/lib/python3.11/site-packages/anyio/_backends/_asyncio.py",
            1124,
            0x7f10_0000_0600,
        ),
    ];
    // Inlined frames share their address (innermost first); one unresolved frame.
    let churn = vec![
        frame(
            "_PyObject_Malloc",
            Some("Objects/obmalloc.c"),
            Some(1601),
            Some("/usr/bin/python3.11"),
            FrameKind::Native,
            0x55_0000_2000,
        ),
        frame(
            "PyObject_Malloc",
            Some("Objects/obmalloc.c"),
            Some(710),
            Some("/usr/bin/python3.11"),
            FrameKind::Native,
            0x55_0000_2000,
        ),
        frame("0x55000000aa00", None, None, Some("/usr/bin/python3.11"), FrameKind::Native, 0x55_0000_aa00),
        python("Request.json", "/venv/lib/python3.11/site-packages/starlette/requests.py", 252, 0x7f10_0000_0700),
    ];
    let kernel = vec![
        frame("do_mmap", None, None, None, FrameKind::Kernel, 0xffff_ffff_8120_0000),
        libc("mmap", 0x7f00_0000_5000),
    ];
    Report {
        schema_version: SCHEMA_VERSION,
        leakprobe_version: "0.1.0".into(),
        target: TargetInfo {
            pid: 4242,
            exe: "/usr/bin/python3.11".into(),
            cmdline: vec!["python3".into(), "-m".into(), "uvicorn".into(), "main:app".into()],
            python_version: Some("3.11".into()),
        },
        started_unix_secs: 1_700_000_000,
        duration_seconds: 60.0,
        interval_seconds: 2.0,
        ended_because: "duration".into(),
        verdict: ProcessVerdict {
            verdict: VerdictKind::Leak,
            growth_bytes_per_sec: 112_000.5,
            confidence: 0.9993,
            reason: "RSS: grows steadily to the end (Mann-Kendall p < 0.001)".into(),
            rss: verdict(VerdictKind::Leak, 112_000.5, 0.9993, "grows steadily to the end"),
            tracked_heap: verdict(VerdictKind::Leak, 110_000.25, 0.999, "grows steadily to the end"),
        },
        memory_limit: Some(LimitProjection {
            limit_bytes: 512 << 20,
            usage_bytes: Some(160 << 20),
            cgroup: "/sys/fs/cgroup/system.slice/app.service".into(),
            time_to_limit_seconds: Some(3295.7),
        }),
        rss: (0..n)
            .map(|i| RssPoint {
                t_secs: 2.0 * i as f64,
                memory: ProcessMemory {
                    rss_bytes: (90 << 20) + i as u64 * 224_001,
                    anon_bytes: (70 << 20) + i as u64 * 224_001,
                    file_bytes: 20 << 20,
                    shmem_bytes: 0,
                    swap_bytes: 0,
                },
            })
            .collect(),
        tracked_live_bytes: (0..n)
            .map(|i| SeriesPoint { t_secs: 2.0 * i as f64, bytes: 3e6 + 220_000.5 * i as f64 })
            .collect(),
        stacks: vec![
            with_advice(stack(0x1a2b, "malloc", async_leak, 60_500.0, 0.0, n, true, "grows steadily to the end")),
            stack(0x3c4d, "malloc", sync_leak, 51_000.0, 1000.0, n, true, "grows steadily to the end"),
            stack(0x5e6f, "PyObject_Malloc", churn, 0.0, 1.5e6, n, false, "no significant trend"),
            stack(0x7a8b, "mmap", kernel, 0.0, 1_048_576.0, n, false, "no significant trend"),
        ],
        hooks: vec![HookInfo { function: "malloc".into(), object: "/usr/lib/x86_64-linux-gnu/libc.so.6".into() }],
        counters: vec![
            CounterValue { name: "allocations".into(), value: 123_456, is_drop: false },
            CounterValue { name: "drop_stack_capture".into(), value: 3, is_drop: true },
        ],
        warnings: vec!["a <warning> with & markup".into()],
        budget: Some(BudgetSummary {
            max_overhead_percent: 100.0,
            estimated_overhead_percent: 41.5,
            cost_per_hit_us: 9.8,
            cost_emulated_us: 0.5,
            cost_stepped_us: 15.2,
            probe_hits: 2_000_000,
            stepped_hits: 1_300_000,
            inferred_hits: 0,
            windows: 0,
            attached_seconds: 60.0,
            links: None,
            detach_tail_mean_seconds: 0.0,
            detach_tail_max_seconds: 0.0,
        }),
        probe_sites: vec![
            ProbeSiteInfo {
                function: "malloc".into(),
                object: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                offset: 0,
                tail_called: false,
                site_function: None,
                instruction: "push %r12".into(),
                emulated: true,
                cost_per_hit_us: 0.5,
                fallback: None,
            },
            ProbeSiteInfo {
                function: "PyObject_Free".into(),
                object: "/opt/python/lib/libpython3.11.so.1.0".into(),
                offset: 0,
                tail_called: false,
                site_function: None,
                instruction: "mov %rdi,%rsi".into(),
                emulated: false,
                cost_per_hit_us: 15.2,
                fallback: Some("no emulated instruction before `jmp *0x2ad000(%rip)` at 0x1ca ends the prefix".into()),
            },
        ],
        sample_liveness: None,
        census: None,
        holders: vec![],
        types: vec![],
    }
}

/// The demo app's source as far as line 18, the leaking line of the first stack.
const MAIN_PY: &str = "\
import asyncio

from fastapi import FastAPI

app = FastAPI()

# Sessions by id: filled per request.
_sessions = {}


def payload(n):
    return \"x\" * n


@app.get(\"/leak-async/{session_id}\")
async def leak_async(session_id: str):
    await asyncio.sleep(0)
    _sessions[session_id] = payload(10_000)
";

/// The advice the classifier gives for the stack's Python frame at `MAIN_PY:18`.
fn with_advice(mut s: StackReport) -> StackReport {
    let advice = crate::advice::advise(MAIN_PY, 18).expect("MAIN_PY:18 is an unbounded cache");
    let frame = s.frames.iter().position(|f| f.line == Some(18)).expect("the stack has main.py:18");
    s.advice = Some(crate::advice::StackAdvice {
        frame,
        file: "/srv/app/main.py".into(),
        relation: crate::advice::Relation::Line,
        advice,
    });
    s
}

/// A sampling-mode recording of a steady process: nothing flagged, no memory limit.
pub fn sampling_no_leak() -> Report {
    let mut report = leaking();
    report.verdict.verdict = VerdictKind::NoLeak;
    report.verdict.rss.kind = VerdictKind::NoLeak;
    report.verdict.tracked_heap.kind = VerdictKind::NoLeak;
    report.verdict.growth_bytes_per_sec = 10.0;
    report.verdict.reason = "RSS: flat".into();
    report.memory_limit = None;
    for s in &mut report.stacks {
        s.flagged = false;
        s.advice = None;
        s.flagged_after_secs = None;
        s.sampled_growth_bytes_per_sec = Some(1.0);
    }
    report.budget = Some(BudgetSummary {
        max_overhead_percent: 5.0,
        estimated_overhead_percent: 4.2,
        cost_per_hit_us: 9.8,
        cost_emulated_us: 0.5,
        cost_stepped_us: 15.2,
        probe_hits: 40_000,
        stepped_hits: 0,
        inferred_hits: 12,
        windows: 150,
        attached_seconds: 30.0,
        links: Some("uprobe_multi".into()),
        detach_tail_mean_seconds: 0.048,
        detach_tail_max_seconds: 0.11,
    });
    report
}

/// `leaking()` with heap censuses that saw one growing module-level dict (its path carries a
/// control character, as a name read from a target may).
pub fn holding() -> Report {
    use super::{CensusSummary, CountPoint, HolderReport};
    let mut report = leaking();
    let points = |per: f64| (0..10).map(|i| CountPoint { t_secs: i as f64, value: per * i as f64 }).collect();
    report.census =
        Some(CensusSummary { censuses: 10, truncated: 0, short_walks: 0, elapsed_secs: 0.5, error: None, gc: None });
    report.holders = vec![HolderReport {
        path: "__main__._SESSIONS\u{1b}[2J".into(),
        type_name: "dict".into(),
        length_series: points(40.0),
        retained_bytes_series: points(12_000.0),
        growth_bytes_per_sec: 12_000.0,
        growth_items_per_sec: 40.0,
        flagged: true,
        reason: "still growing".into(),
        file: Some("/srv/app/main.py".into()),
        line: Some(18),
        code: Some("_SESSIONS[session_id] = payload".into()),
        advice: None,
        weak: false,
        inferred: false,
    }];
    report
}
