//! `leakprobe watch`: the continuous, nearly free mode. No allocator uprobe is ever attached: only
//! the memory-syscall tracepoints (mmap, munmap, mremap, brk — with the Python stack of whoever
//! made the call) and the process's memory from /proc. Each interval it says how fast the process
//! grows, whether that is a leak, which kind of memory grows (pymalloc arenas, the native heap,
//! other mappings) and which Python lines the growth comes through: coarse (whoever allocates when
//! the heap must grow is blamed, see docs/overhead.md), but cheap enough to leave running.
//! Every few intervals a heap census (memory reads only) says which containers grow, and the
//! GC's own counters.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::{
    aggregate::Recording,
    assess::{self, memory_kind, window_growth, MemoryKind},
    census_history::{
        monitor::{per_minute, HeapView, KEPT_CENSUSES},
        sampler::{CensusSampler, Schedule},
    },
    cgroup,
    kernel::TableSizes,
    loader,
    python::{self, resolver::PythonResolver},
    report::{human_bytes, human_duration},
    sampling_loop::{self, Event, StackCache, Ticks},
    stack_names::{StackNamer, StackView},
    symbolize::NativeSymbolizer,
    target::{self, Target},
    verdict::{VerdictConfig, VerdictKind},
};

pub struct WatchOptions {
    pub pid: u32,
    pub interval: Duration,
    pub duration: Option<Duration>,
    /// Samples in the sliding window the growth rate is measured over.
    pub rate_window: usize,
    pub json: bool,
    /// Attributions (and growing containers) listed per interval.
    pub top: usize,
    /// Time between heap censuses (Python targets); `None`: none.
    pub census_interval: Option<Duration>,
}

#[derive(Debug, Serialize)]
pub struct Attribution {
    pub growth_bytes_per_sec: f64,
    pub live_bytes: u64,
    pub kind: MemoryKind,
    /// Innermost Python frame (`function file:line`), else the first native frame.
    pub site: String,
}

/// One interval's view (`--json` prints it as one line).
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub t_secs: f64,
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub swap_bytes: u64,
    /// RSS growth over the sliding window (Theil–Sen).
    pub growth_bytes_per_sec: f64,
    pub verdict: VerdictKind,
    pub reason: String,
    pub time_to_limit_seconds: Option<f64>,
    /// Live bytes per kind of memory, and their growth over the sliding window.
    pub memory: HashMap<MemoryKind, u64>,
    pub growth_by_kind: HashMap<MemoryKind, f64>,
    pub top: Vec<Attribution>,
    /// The containers the heap censuses see growing, and the GC (Python targets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap: Option<HeapView>,
}

pub async fn watch(opts: WatchOptions) -> Result<()> {
    target::check_privileges()?;
    if opts.rate_window < 3 {
        bail!("the rate window needs at least 3 samples");
    }
    let target = Target::inspect(opts.pid)?;
    let python = python::runtime::detect(&target).unwrap_or_else(|why| {
        eprintln!("leakprobe: warning: {why}; native stacks only");
        None
    });
    // The loader attaches the syscall tracepoints; allocator uprobes are never attached here.
    let mut probes = loader::attach(&target, TableSizes::default(), python.as_ref())?;
    let mut namer =
        StackNamer::new(NativeSymbolizer::new(opts.pid)?, python.clone().map(PythonResolver::new), StackView::Merged);
    let limit = cgroup::memory_limit(opts.pid).ok().flatten();
    let census = match (&python, opts.census_interval) {
        (Some(p), Some(every)) => {
            let sampler = CensusSampler::start(Schedule::monitor(every, KEPT_CENSUSES, 4), Instant::now())?;
            sampler.add(opts.pid, p.mem, crate::python::heap::Interpreter::of(p));
            Some(sampler)
        }
        _ => None,
    };
    let verdicts = VerdictConfig::default();
    if !opts.json {
        eprintln!(
            "leakprobe: watching PID {} ({}) every {}; memory syscalls only, no allocator probes; Ctrl-C to stop",
            opts.pid,
            target.exe,
            humantime::format_duration(opts.interval)
        );
    }
    let mut ticks = Ticks::new(opts.interval, opts.duration)?;
    let mut recording = Recording::default();
    // What each stack is (its allocator, and its site once shown): never changes, read once.
    let mut stacks = StackCache::default();
    // The heap view, judged again only when a census was taken since (censuses taken, view).
    let mut heap: (u64, Option<HeapView>) = (0, None);
    loop {
        match ticks.next(sampling_loop::no_mode_events()).await {
            Event::Sample => {}
            Event::RefreshThreads => {
                sampling_loop::refresh_threads(&mut probes, python.as_ref())?;
                continue;
            }
            Event::Mode(never) => match never {},
            Event::Stop => break,
        }
        let Some(memory) = sampling_loop::live_memory(opts.pid, None) else { break };
        let counters = probes.kernel().stack_counters()?;
        for (id, _) in &counters {
            stacks.identify(*id, |id| probes.kernel().stack_trace(id), |_| None);
        }
        recording.push(ticks.elapsed_secs(), Some(memory), &counters, probes.kernel().counters()?.named());
        let mut snapshot = snapshot(&recording, &mut stacks, &opts, limit.as_ref(), |id| {
            assess::site(&namer.resolve(&probes, |_| None, id).frames)
        });
        if let Some((taken, history)) = census.as_ref().and_then(|c| c.newer(opts.pid, heap.0)) {
            heap = (taken, Some(HeapView::of(&history, &verdicts, opts.top)));
        }
        snapshot.heap = heap.1.clone();
        if opts.json {
            println!("{}", serde_json::to_string(&snapshot)?);
        } else {
            // Sites are names read from the target: no control characters to the terminal.
            print!("{}", crate::untrusted::terminal_lines(render(&snapshot)));
        }
        if ticks.past_deadline() {
            break;
        }
    }
    Ok(())
}

/// `name` names the site of a stack shown (once per stack: `stacks` keeps it).
fn snapshot(
    rec: &Recording,
    stacks: &mut StackCache,
    opts: &WatchOptions,
    limit: Option<&cgroup::MemoryLimit>,
    mut name: impl FnMut(u64) -> String,
) -> Snapshot {
    let n = rec.times.len();
    let (rss_t, rss_y) = rec.rss_series();
    let memory = rec.memory.last().copied().flatten().unwrap_or_default();
    let process = assess::watched_process(
        &rss_t,
        &rss_y,
        opts.rate_window,
        limit.map(|l| (l.limit_bytes, l.usage_bytes)),
        memory.rss_bytes,
    );

    let mut by_kind: HashMap<MemoryKind, u64> = HashMap::new();
    let mut growth_by_kind: HashMap<MemoryKind, f64> = HashMap::new();
    let mut growing = Vec::new();
    for (&id, series) in &rec.stacks {
        let Some(function) = stacks.function(id) else { continue };
        let kind = memory_kind(function, series.latest.allocs, series.latest.alloc_bytes);
        let rate = if series.live_bytes.len() == n {
            window_growth(&rec.times, &series.live_bytes, opts.rate_window)
        } else {
            0.0
        };
        *by_kind.entry(kind).or_default() += series.live_bytes_now();
        *growth_by_kind.entry(kind).or_default() += rate;
        if rate > 0.0 {
            growing.push((id, rate, series.live_bytes_now(), kind));
        }
    }
    growing.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top = growing
        .into_iter()
        .take(opts.top)
        .map(|(id, rate, live_bytes, kind)| Attribution {
            growth_bytes_per_sec: rate,
            live_bytes,
            kind,
            site: stacks.site(id, || name(id)),
        })
        .collect();
    Snapshot {
        t_secs: rec.times.last().copied().unwrap_or(0.0),
        rss_bytes: memory.rss_bytes,
        anon_bytes: memory.anon_bytes,
        file_bytes: memory.file_bytes,
        swap_bytes: memory.swap_bytes,
        growth_bytes_per_sec: process.growth_bytes_per_sec,
        verdict: process.verdict.kind,
        reason: process.verdict.reason,
        time_to_limit_seconds: process.time_to_limit_seconds,
        memory: by_kind,
        growth_by_kind,
        top,
        heap: None,
    }
}

fn kind_name(kind: MemoryKind) -> &'static str {
    match kind {
        MemoryKind::PymallocArenas => "pymalloc arenas",
        MemoryKind::NativeHeap => "native heap (brk)",
        MemoryKind::OtherMmaps => "other mmaps",
    }
}

fn render(s: &Snapshot) -> String {
    let rate = per_minute;
    let limit = s.time_to_limit_seconds.map(|t| format!("; limit in ~{}", human_duration(t))).unwrap_or_default();
    let mut out = format!(
        "t={:>6.0}s  RSS {} (anon {}, file {}, swap {})  {}  {}{limit}\n",
        s.t_secs,
        human_bytes(s.rss_bytes as f64),
        human_bytes(s.anon_bytes as f64),
        human_bytes(s.file_bytes as f64),
        human_bytes(s.swap_bytes as f64),
        rate(s.growth_bytes_per_sec),
        s.verdict.as_str().to_uppercase(),
    );
    let mut kinds: Vec<_> = s.memory.iter().collect();
    kinds.sort_by_key(|(k, _)| kind_name(**k));
    let kinds: Vec<String> = kinds
        .iter()
        .map(|(k, bytes)| {
            let growth = s.growth_by_kind.get(k).copied().unwrap_or(0.0);
            format!("{} {} ({})", kind_name(**k), human_bytes(**bytes as f64), rate(growth))
        })
        .collect();
    out.push_str(&format!("         mapped by the process: {}\n", kinds.join(", ")));
    for a in &s.top {
        out.push_str(&format!("         {:>12}  {}  [{}]\n", rate(a.growth_bytes_per_sec), a.site, kind_name(a.kind)));
    }
    if let Some(heap) = &s.heap {
        out.push_str(&heap.render("         heap: "));
    }
    out
}

#[cfg(test)]
mod tests {
    use leakprobe_common::AllocFunction;

    use super::*;
    use crate::sampling_loop::StackIdentity;

    #[test]
    fn snapshot_attributes_growth_and_names_the_kind() {
        let mut rec = Recording::default();
        let memory = |rss: u64| Some(crate::process_memory::ProcessMemory { rss_bytes: rss, ..Default::default() });
        let arena =
            |n: u64| leakprobe_common::StackCounters { allocs: n, frees: 0, alloc_bytes: n << 20, free_bytes: 0 };
        for i in 0..10u64 {
            rec.push(i as f64, memory((100 << 20) + (i << 20)), &[(7, arena(i + 1))], vec![]);
        }
        let mut stacks = StackCache::default();
        stacks.insert(7, StackIdentity { tgid: 1, function: Some(AllocFunction::Mmap), site: None });
        let opts = WatchOptions {
            pid: 1,
            interval: Duration::from_secs(1),
            duration: None,
            rate_window: 5,
            json: true,
            top: 3,
            census_interval: None,
        };
        let s = snapshot(&rec, &mut stacks, &opts, None, |id| format!("stack {id}"));
        assert_eq!(s.verdict, VerdictKind::Leak);
        assert!((s.growth_bytes_per_sec - (1 << 20) as f64).abs() < 1.0);
        assert_eq!(s.memory[&MemoryKind::PymallocArenas], 10 << 20);
        assert_eq!(s.top.len(), 1);
        assert_eq!(s.top[0].site, "stack 7");
        assert!(render(&s).contains("pymalloc arenas"));
    }
}
