//! `leakprobe record`: attach to a process (or launch one), sample the kernel's aggregates every
//! interval until the duration ends, Ctrl-C, or the target exits, then build the report. What was
//! collected before an interruption or the target's exit is always reported.

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsFd,
    process::{Child, Command},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _, Result};
use leakprobe_common::AllocFunction;
use tokio::time::MissedTickBehavior;

use crate::{
    accounting::Accounting,
    advice::{StackAdvisor, TargetSources},
    aggregate::{LowWater, Recording},
    census_history::{
        self,
        sampler::{CensusSampler, Schedule},
    },
    cgroup,
    kernel::TableSizes,
    loader::{self, Probes},
    process_memory,
    python::heap::Interpreter,
    python::{self, resolver::PythonResolver, runtime::PythonRuntime},
    report::{
        build::{self, NamedStack},
        probe_sites, HookInfo, Report, TargetInfo,
    },
    sampled_heap::SampledHeap,
    sampling_loop::{self, Event, Ticks},
    stack_names::{StackNamer, StackView},
    symbolize::NativeSymbolizer,
    symbolize::{Frame, FrameKind},
    target::{self, Target},
    verdict::VerdictConfig,
    windows::{self, Windows},
};

pub struct RecordOptions {
    pub pid: Option<u32>,
    /// Launch this command and follow it instead of attaching to `pid`.
    pub command: Vec<String>,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub tables: TableSizes,
    pub other_stacks: usize,
    /// Progress lines on stderr.
    pub progress: bool,
    pub view: StackView,
    /// `--max-overhead`: the share of the target's CPU time the probes may take (100: always on).
    pub max_overhead_percent: f64,
    /// Length of one sampling window with the allocator uprobes attached.
    pub window: Duration,
}

/// Reads of the per-stack counters per interval for the low water (see `LowWater`).
const LOW_WATER_READS: u32 = 5;

/// Why the recording ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Duration,
    Interrupted,
    TargetExited,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Duration => "duration",
            End::Interrupted => "interrupted",
            End::TargetExited => "target-exited",
        }
    }
}

/// A process we launched: terminated when the recording ends.
struct Launched(Child);

impl Drop for Launched {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `command` and waits until the dynamic loader has mapped its libraries (libc shows in its
/// maps and the maps stop changing), so the allocator functions can be found and hooked.
fn launch(command: &[String]) -> Result<Launched> {
    let (program, args) = command.split_first().ok_or_else(|| anyhow!("no command to launch"))?;
    // The command's stdout goes to our stderr: stdout carries the report.
    let stdout = std::io::stderr().as_fd().try_clone_to_owned().context("cannot duplicate stderr")?;
    let child =
        Command::new(program).args(args).stdout(stdout).spawn().with_context(|| format!("cannot launch {program}"))?;
    let launched = Launched(child);
    let pid = launched.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let maps = crate::proc_maps::read(pid).unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let execed = exe.is_some_and(|e| e != std::env::current_exe().unwrap_or_default());
        let libc = maps.iter().filter_map(|m| m.path.as_deref()).any(|p| p.contains("libc.so") || p.contains("libc-"));
        if execed && maps == last && libc {
            return Ok(launched);
        }
        last = maps;
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("{program} did not start (no libc mapped after 10 s)")
}

pub async fn record(opts: RecordOptions) -> Result<Report> {
    target::check_privileges()?;
    let launched = if opts.command.is_empty() { None } else { Some(launch(&opts.command)?) };
    let pid = match (&launched, opts.pid) {
        (Some(child), _) => child.0.id(),
        (None, Some(pid)) => pid,
        (None, None) => bail!("give a process to record: --pid PID, or -- COMMAND [ARGS...]"),
    };
    let target = Target::inspect(pid)?;
    // Opened now: the report's advice reads the sources even if the target has exited by then.
    let mut advisor = StackAdvisor::new(TargetSources::of_process(pid));
    let mut warnings = Vec::new();
    let python = match python::runtime::detect(&target) {
        Ok(python) => python,
        Err(why) => {
            eprintln!("leakprobe: warning: {why}; recording native stacks only");
            warnings.push(format!("{why}: native stacks only"));
            None
        }
    };
    let mut probes = loader::attach(&target, opts.tables, python.as_ref())?;
    if probes.mounted_tracefs {
        eprintln!("leakprobe: mounted tracefs on /sys/kernel/tracing (it was not mounted)");
    }
    if python.is_some() && !target.hooks_python() {
        warnings.push("no CPython allocator found in the target: only libc and syscall allocations are tracked".into());
    }
    if let Some(why) = python.as_ref().and_then(|_| small_objects_unseen(&target)) {
        eprintln!("leakprobe: warning: {}", crate::untrusted::terminal(&why));
        warnings.push(why);
    }
    let mut symbolizer = NativeSymbolizer::new(pid)?;
    if let Err(e) = symbolizer.cache() {
        warnings.push(format!(
            "could not cache the target's symbols up front ({e:#}): frames may be unresolved if it exits"
        ));
    }
    let memory_limit = cgroup::memory_limit(pid).unwrap_or_else(|e| {
        warnings.push(format!("cannot read the cgroup memory limit: {e:#}"));
        None
    });
    if opts.progress {
        let objects: Vec<String> = target.objects.iter().map(|o| o.path.display().to_string()).collect();
        eprintln!(
            "leakprobe: recording PID {pid} ({}): {} allocator hooks in {}, {} syscall tracepoints; {}Ctrl-C to stop",
            crate::untrusted::terminal(&target.exe),
            probes.hooks.len(),
            objects.join(", "),
            leakprobe_common::names::SYSCALL_TRACEPOINTS.len(),
            opts.duration.map(|d| format!("for {}, ", humantime::format_duration(d))).unwrap_or_default()
        );
    }

    let python_version = python.as_ref().map(|p| p.version.clone()).or_else(|| target.python_version.clone());
    let mut namer = StackNamer::new(symbolizer, python.clone().map(PythonResolver::new), opts.view);
    let started_unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Sampling needs objects to judge: CPython's, with `PyType_Type` to recognise them.
    let type_type = python.as_ref().and_then(|p| p.type_type).filter(|_| target.hooks_python());
    let accounting = Accounting::choose(opts.max_overhead_percent, type_type.is_some());
    if accounting == Accounting::SyscallsOnly {
        let why = "no CPython object allocator to sample: only the memory syscalls (mmap, brk) are followed; \
                   --max-overhead 100 hooks every allocation";
        eprintln!("leakprobe: warning: {why}");
        warnings.push(why.into());
    }
    let mut windows = Windows::start(&mut probes, pid, opts.max_overhead_percent, opts.window, type_type.is_some())?;
    let mut sampled_heap = python
        .as_ref()
        .zip(type_type)
        .filter(|_| accounting == Accounting::Sampled)
        .map(|(python, type_type)| SampledHeap::new(type_type, &python.layout, pid));
    // The heap censuses run beside the probes, on their own thread (reads only).
    let census = match &python {
        Some(p) => {
            let sampler = CensusSampler::start(Schedule::recording(opts.interval), Instant::now())
                .context("cannot start the heap census thread")?;
            sampler.add(pid, p.mem, Interpreter::of(p));
            Some(sampler)
        }
        None => None,
    };
    let (recording, end) = sample_until_done(
        &mut probes,
        &mut windows,
        sampled_heap.as_mut(),
        &target,
        python.as_ref(),
        &mut namer,
        launched,
        &opts,
    )
    .await?;
    let census = census.map(|sampler| sampler.finish(pid));
    let budget = windows.finish(&mut probes);
    if opts.progress {
        eprintln!(
            "leakprobe: recording ended ({}), {} samples; building the report",
            end.as_str(),
            recording.samples()
        );
    }

    let ctx = build::Context {
        target: TargetInfo { pid, exe: target.exe.clone(), cmdline: target.cmdline.clone(), python_version },
        started_unix_secs,
        interval_seconds: opts.interval.as_secs_f64(),
        ended_because: end.as_str().into(),
        memory_limit,
        hooks: probes
            .hooks
            .iter()
            .map(|h| HookInfo { function: h.function.symbol().into(), object: h.object.clone() })
            .collect(),
        warnings,
        other_stacks: opts.other_stacks,
        verdict: VerdictConfig::default(),
        budget: Some(budget),
        probe_sites: probe_sites::rows(
            probes.hooks.iter().map(|h| (h.function.symbol(), h.object.as_str(), &h.site)),
            windows.costs(),
        ),
        accounting,
        object_stacks: sampled_heap.as_ref().map(SampledHeap::object_stacks).unwrap_or_default(),
        sample_kinds: sampled_heap.as_ref().map(SampledHeap::sample_kinds).unwrap_or_default(),
        sample_liveness: sampled_heap.as_ref().map(SampledHeap::sample_liveness),
        census: None,
        holders: Vec::new(),
        types: Vec::new(),
    };
    // The stacks the report lists are read out of the kernel (and the flagged ones advised) while
    // the probes are still attached; the report is built from them after.
    let judged = build::judge(&recording, &ctx);
    let flagged: HashSet<u64> = judged.flagged_ids().collect();
    let hooked_object = |f: AllocFunction| probes.hooks.iter().find(|h| h.function == f).map(|h| h.object.clone());
    let named: HashMap<u64, NamedStack> = judged
        .stack_ids()
        .map(|id| {
            let stack = namer.resolve(&probes, hooked_object, id);
            let advice = if flagged.contains(&id) { advisor.advise(&stack.frames) } else { None };
            (id, NamedStack { stack, advice })
        })
        .collect();
    drop(probes);
    let mut ctx = ctx;
    if let Some((history, error)) = census {
        let (files, main_script) = python_files(named.values().map(|n| &n.stack.frames[..]));
        let growth = line_growth(&judged, &named);
        let growth_at = |file: &str, line: u32| {
            growth
                .iter()
                .filter(|((f, l), _)| *l == line && census_history::lines::same_file(f, file))
                .map(|(_, g)| g)
                .sum::<f64>()
        };
        // Flagged stacks come fastest first.
        let task_line = judged
            .flagged
            .iter()
            .filter_map(|(id, _)| census_history::lines::task_creation_line(&named.get(id)?.stack.frames))
            .next();
        let (summary, holders, types) = census_history::report_parts(
            &history,
            error,
            &ctx.verdict,
            &files,
            main_script.as_deref(),
            &growth_at,
            task_line,
            &mut advisor,
        );
        ctx.census = Some(summary);
        ctx.holders = holders;
        ctx.types = types;
    }
    let report = build::build(&recording, ctx, judged, &named);
    Ok(report)
}

/// Bytes a second, summed over the growing stacks (flagged or not: growth the lower bound of its
/// confidence interval, so a stack that churns adds nothing) with a Python frame at each
/// `(file, line)`; a stack counts once per line however many of its frames are there.
fn line_growth(judged: &crate::report::judge::Judged, named: &HashMap<u64, NamedStack>) -> HashMap<(String, u32), f64> {
    let mut growth: HashMap<(String, u32), f64> = HashMap::new();
    for (id, verdict) in judged.flagged.iter().chain(&judged.others) {
        let rate = verdict.growth_low_bytes_per_sec;
        let Some(stack) = named.get(id).filter(|_| rate.is_finite() && rate > 0.0) else { continue };
        let lines: HashSet<(&str, u32)> = stack
            .stack
            .frames
            .iter()
            .filter(|f| f.kind == FrameKind::Python)
            .filter_map(|f| Some((f.file.as_deref()?, f.line?)))
            .collect();
        for (file, line) in lines {
            *growth.entry((file.to_string(), line)).or_default() += rate;
        }
    }
    growth
}

/// The Python files of `stacks`' frames, and the one `__main__` runs (the file of an outermost
/// `<module>` frame).
fn python_files<'a>(stacks: impl Iterator<Item = &'a [Frame]>) -> (Vec<String>, Option<String>) {
    let mut files: Vec<String> = Vec::new();
    let mut main_script = None;
    for frames in stacks {
        let python: Vec<&Frame> = frames.iter().filter(|f| f.kind == FrameKind::Python).collect();
        for f in &python {
            if let Some(file) = &f.file {
                if !files.contains(file) {
                    files.push(file.clone());
                }
            }
        }
        if let Some(outer) = python.last().filter(|f| f.function == "<module>") {
            main_script = main_script.or_else(|| outer.file.clone());
        }
    }
    (files, main_script)
}

/// Distribution builds of CPython (Debian's, the official Docker images') are built with LTO and
/// PGO, which inline pymalloc's fast path into ~190 callers, and are stripped: most allocations of
/// 512 bytes or less never reach the hooked `PyObject_Malloc` (python-unwinding notes, 3.6). A
/// stripped interpreter is taken as such a build, and the report says what that hides.
fn small_objects_unseen(target: &Target) -> Option<String> {
    let interpreter = target.objects.iter().find(|o| o.functions.iter().any(|(f, _)| f.is_python()))?;
    match crate::elf_symbols::has_symbol_table(&interpreter.host_path) {
        Ok(false) => Some(format!(
            "{} is stripped, as LTO+PGO builds are, which inline CPython's small-object allocator into \
             its callers: most objects of 512 bytes or less are not seen by the allocator probes, so a \
             leak of small objects may not be named (the RSS verdict and the memory-syscall stacks still \
             show its growth)",
            interpreter.path.display()
        )),
        _ => None,
    }
}

/// What only `record` wakes up for.
enum RecordTick {
    /// Open, keep or close a sampling window.
    Window,
    /// Read the per-stack counters for the low water.
    LowWater,
}

async fn sample_until_done(
    probes: &mut Probes,
    windows: &mut Windows,
    mut sampled_heap: Option<&mut SampledHeap>,
    target: &Target,
    python: Option<&PythonRuntime>,
    namer: &mut StackNamer,
    mut launched: Option<Launched>,
    opts: &RecordOptions,
) -> Result<(Recording, End)> {
    // A slow sample delays the next one rather than bunching samples up.
    let mut ticks = Ticks::new(opts.interval, opts.duration)?.missed_samples(MissedTickBehavior::Delay);
    let mut recording = Recording::default();
    let mut window_tick = tokio::time::interval(windows::TICK);
    // Without sampling windows the per-stack series are low waters over several reads per
    // interval (see `LowWater`); the sampled heap already counts only objects that stay alive.
    let mut low_water = sampled_heap.is_none().then(LowWater::default);
    let mut low_water_read = tokio::time::interval((opts.interval / LOW_WATER_READS).max(Duration::from_millis(100)));
    low_water_read.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // An error while the target is gone is its exit racing a window or a read, not a failure:
    // the recording ends as `target-exited` with everything collected so far.
    macro_rules! unless_exited {
        ($result:expr) => {
            match $result {
                Ok(value) => value,
                Err(_) if sampling_loop::live_memory(target.pid, launched.as_mut().map(|l| &mut l.0)).is_none() => {
                    break End::TargetExited;
                }
                Err(e) => return Err(e),
            }
        };
    }
    let end = loop {
        let reading_low_water = low_water.is_some();
        let record_tick = async {
            tokio::select! {
                _ = window_tick.tick() => RecordTick::Window,
                _ = low_water_read.tick(), if reading_low_water => RecordTick::LowWater,
            }
        };
        match ticks.next(record_tick).await {
            Event::Sample => {}
            Event::Mode(RecordTick::Window) => {
                if windows.due() {
                    unless_exited!(close_window(windows, sampled_heap.as_deref_mut(), python, probes));
                } else {
                    unless_exited!(windows.tick(probes));
                }
                continue;
            }
            Event::RefreshThreads => {
                unless_exited!(sampling_loop::refresh_threads(probes, python));
                continue;
            }
            Event::Mode(RecordTick::LowWater) => {
                if let Some(low) = low_water.as_mut() {
                    low.observe(&probes.kernel().stack_counters()?);
                }
                continue;
            }
            Event::Stop => break End::Interrupted,
        }
        unless_exited!(close_window(windows, sampled_heap.as_deref_mut(), python, probes));
        let memory = sampling_loop::live_memory(target.pid, launched.as_mut().map(|l| &mut l.0));
        let alive = memory.is_some();
        let t = ticks.elapsed_secs();
        let snapshot = unless_exited!(stack_snapshot(probes, sampled_heap.as_deref_mut(), python, low_water.as_mut()));
        namer.learn(probes, snapshot.iter().map(|(id, _)| *id));
        recording.push(t, memory, &snapshot, probes.kernel().counters()?.named());
        if opts.progress {
            progress_line(&recording, t, sampled_heap.is_some());
        }
        if !alive {
            break End::TargetExited;
        }
        if ticks.past_deadline() {
            break End::Duration;
        }
        // Windows open right after a sample, so the next one (and its stack naming) falls
        // outside them.
        unless_exited!(windows.open_if_allowed(probes));
    };
    // An interrupted recording still ends with a last sample.
    if end == End::Interrupted {
        close_window(windows, sampled_heap.as_deref_mut(), python, probes)?;
        let t = ticks.elapsed_secs();
        let snapshot = stack_snapshot(probes, sampled_heap.as_deref_mut(), python, low_water.as_mut())?;
        recording.push(t, process_memory::read(target.pid), &snapshot, probes.kernel().counters()?.named());
    }
    drop(launched);
    Ok((recording, end))
}

/// Per-stack counters of a sample: the sampled live objects in sampling mode, the kernel's
/// otherwise (as the low water of this interval's reads, when there is one).
fn stack_snapshot(
    probes: &mut Probes,
    heap: Option<&mut SampledHeap>,
    python: Option<&PythonRuntime>,
    low_water: Option<&mut LowWater>,
) -> Result<Vec<(u64, leakprobe_common::StackCounters)>> {
    let now = match (heap, python) {
        (Some(heap), Some(python)) => heap.snapshot(probes, &python.mem)?,
        _ => probes.kernel().stack_counters()?,
    };
    Ok(match low_water {
        Some(low) => low.finish(&now),
        None => now,
    })
}

/// Closes the open window (if any), first taking a look at the new samples while the target is
/// still slowed by the probes (see `SampledHeap::look`).
fn close_window(
    windows: &mut Windows,
    heap: Option<&mut SampledHeap>,
    python: Option<&PythonRuntime>,
    probes: &mut Probes,
) -> Result<()> {
    if let (true, Some(heap), Some(python)) = (windows.is_open(), heap, python) {
        heap.look(probes, &python.mem)?;
    }
    windows.pause(probes)
}

/// `windowed`: the allocators are hooked only in sampling windows (see `split_drops`).
fn progress_line(rec: &Recording, t: f64, windowed: bool) {
    use crate::report::{facts::split_drops, human_bytes};
    let rss = rec.memory.last().copied().flatten().map_or("-".into(), |m| human_bytes(m.rss_bytes as f64));
    let tracked = rec.tracked_live_bytes.last().copied().unwrap_or(0.0);
    let (lost, by_design) = split_drops(rec.counters.iter().copied(), windowed);
    let sum = |drops: &[(&str, u64)]| drops.iter().map(|(_, v)| v).sum::<u64>();
    let unfollowed = if by_design.is_empty() { String::new() } else { format!("  not followed {}", sum(&by_design)) };
    eprintln!(
        "  t={t:>6.1}s  RSS {rss:>9}  tracked live {:>9}  stacks {:>6}  allocations {:>9}  lost {}{unfollowed}",
        human_bytes(tracked),
        rec.stacks.len(),
        rec.counter("allocations"),
        sum(&lost)
    );
}
