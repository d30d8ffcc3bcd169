//! The text report: verdict first, then the growing stacks by growth rate — readable in ten
//! seconds.

use std::fmt::Write;

use super::{facts, human_bytes, human_duration, Report, StackReport};
use crate::{symbolize::Frame, verdict::VerdictKind};

/// Frames shown per stack; the JSON has them all.
const FRAMES_SHOWN: usize = 12;
/// Non-flagged stacks shown for context.
const OTHERS_SHOWN: usize = 5;

/// The text report. Function, file and command names and source lines come from the target:
/// control characters are replaced before it reaches a terminal.
pub fn render(report: &Report) -> String {
    crate::untrusted::terminal_lines(render_raw(report))
}

fn render_raw(report: &Report) -> String {
    let mut out = String::new();
    let t = &report.target;
    let command = if t.cmdline.is_empty() { t.exe.clone() } else { t.cmdline.join(" ") };
    let python = t.python_version.as_deref().map(|v| format!(", Python {v}")).unwrap_or_default();
    let _ = writeln!(
        out,
        "leakprobe: PID {} ({}{python}) — {} recorded, {} samples every {}, ended by {}",
        t.pid,
        truncate(&command, 80),
        human_duration(report.duration_seconds),
        report.rss.len().max(report.tracked_live_bytes.len()),
        human_duration(report.interval_seconds),
        report.ended_because
    );
    let _ = writeln!(out);

    let v = &report.verdict;
    let label = match v.verdict {
        VerdictKind::Leak => "LEAK",
        VerdictKind::NoLeak => "NO LEAK",
        VerdictKind::Inconclusive => "INCONCLUSIVE",
    };
    let _ = writeln!(
        out,
        "VERDICT: {label}  growth {}/min, confidence {:.0}%",
        human_bytes(v.growth_bytes_per_sec * 60.0),
        v.confidence * 100.0
    );
    let _ = writeln!(out, "  why: {}", v.reason);
    if let Some(rss) = facts::rss_change(report) {
        let _ = writeln!(out, "  RSS {rss}");
    }
    if let Some(last) = report.tracked_live_bytes.last() {
        let _ = writeln!(
            out,
            "  allocator-tracked live heap {} ; trend {}/min ({})",
            human_bytes(last.bytes),
            human_bytes(v.tracked_heap.growth_bytes_per_sec * 60.0),
            v.tracked_heap.kind.as_str()
        );
    }
    match &report.memory_limit {
        Some(limit) => {
            let when = match limit.time_to_limit_seconds {
                Some(s) => format!("reached in ~{} at this rate", human_duration(s)),
                None => "not approaching at this rate".to_string(),
            };
            let _ = writeln!(
                out,
                "  memory limit {} (cgroup {}): {when}",
                human_bytes(limit.limit_bytes as f64),
                limit.cgroup
            );
        }
        None => {
            let _ = writeln!(out, "  memory limit: none set on its cgroup");
        }
    }
    let _ = writeln!(out);

    write_holders(&mut out, report);

    // Allocation stacks say who keeps the memory; memory-syscall stacks only where the heap grows,
    // so they get a section of their own unless they are all there is.
    let (allocations, syscalls) = report.growing_stacks();
    if allocations.is_empty() && syscalls.is_empty() {
        let _ = writeln!(out, "GROWING STACKS: none flagged");
    } else if allocations.is_empty() {
        let _ = writeln!(
            out,
            "GROWING STACKS ({}), fastest first — memory syscalls only: where the heap grows, not who keeps it \
             (no allocator stack grew; --max-overhead 100 hooks every allocation):",
            syscalls.len()
        );
        for (i, s) in syscalls.iter().enumerate() {
            write_stack(&mut out, i + 1, s);
        }
    } else {
        let _ = writeln!(out, "GROWING STACKS ({}), fastest first:", allocations.len());
        for (i, s) in allocations.iter().enumerate() {
            write_stack(&mut out, i + 1, s);
        }
        if !syscalls.is_empty() {
            let _ =
                writeln!(out, "\nWHERE THE HEAP GROWS ({} memory-syscall stacks; not who keeps it):", syscalls.len());
            for (i, s) in syscalls.iter().enumerate() {
                write_stack(&mut out, i + 1, s);
            }
        }
    }
    let others: Vec<&StackReport> = report.stacks.iter().filter(|s| !s.flagged).take(OTHERS_SHOWN).collect();
    if !others.is_empty() {
        let _ = writeln!(out, "\nLARGEST OTHER STACKS (not growing):");
        for (i, s) in others.iter().enumerate() {
            write_stack(&mut out, i + 1, s);
        }
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "events: {}", facts::events(report));
    if let Some(b) = &report.budget {
        let _ = writeln!(out, "overhead: {}", facts::overhead(b));
    }
    if let Some(sites) = facts::probe_sites(report) {
        let _ = writeln!(out, "probes: {sites}");
    }
    let _ = writeln!(out, "dropped: {}", facts::drops(report));
    if let Some(unfollowed) = facts::unfollowed_by_design(report) {
        let _ = writeln!(out, "not followed, by design: {unfollowed}");
    }
    if let Some(l) = &report.sample_liveness {
        let _ = writeln!(out, "samples: {}", sample_signals(l));
    }
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// "live 40 (object 30, glibc chunk 10), dead 120 (...), 12 not followed": which signal decided.
fn sample_signals(l: &crate::block_liveness::SampleLiveness) -> String {
    let by = |c: &crate::block_liveness::SignalCounts| {
        let parts = [
            ("object", c.object_fingerprint),
            ("glibc chunk", c.glibc_chunk),
            ("pymalloc pool", c.pymalloc_pool),
            ("content", c.content_fingerprint),
        ];
        let named: Vec<String> = parts.iter().filter(|(_, n)| *n > 0).map(|(what, n)| format!("{what} {n}")).collect();
        format!("{}{}", c.total(), if named.is_empty() { String::new() } else { format!(" ({})", named.join(", ")) })
    };
    let why: Vec<String> = [
        (l.recycled, "of types CPython recycles"),
        (l.ambiguous, "alike to another stack's"),
        (l.young, "in flight at their window's end"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let why = if why.is_empty() { String::new() } else { format!(" ({})", why.join(", ")) };
    format!("live {}, dead {}, {} not followed{why}", by(&l.live), by(&l.dead), l.unverifiable)
}

fn write_stack(out: &mut String, rank: usize, s: &StackReport) {
    match s.share_of_growth {
        // Sampling mode: the rate is a share of the process's growth; the live figures are samples.
        Some(share) => {
            let _ = writeln!(
                out,
                "  #{rank} ~{}/s ({:.0}% of the sampled growth)  {} sampled objects still live ({})  via {}  [{}]",
                human_bytes(s.growth_bytes_per_sec),
                share * 100.0,
                s.live_allocations,
                human_bytes(s.live_bytes as f64),
                s.allocator,
                s.reason
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  #{rank} {}/s (95% CI {}..{}/s)  live {} in {} allocations  via {}  [{}]",
                human_bytes(s.growth_bytes_per_sec),
                human_bytes(s.growth_low_bytes_per_sec),
                human_bytes(s.growth_high_bytes_per_sec),
                human_bytes(s.live_bytes as f64),
                s.live_allocations,
                s.allocator,
                s.reason
            );
        }
    }
    for frame in s.frames.iter().take(FRAMES_SHOWN) {
        let _ = writeln!(out, "      {}", frame_line(frame));
    }
    if s.frames.len() > FRAMES_SHOWN {
        let _ = writeln!(out, "      ... {} more frames", s.frames.len() - FRAMES_SHOWN);
    }
    if let Some(advice) = &s.advice {
        let _ = writeln!(out, "    {}", facts::advice_headline(advice));
        crate::advice::scan::write_advice(out, "    ", &advice.advice);
    }
}

/// The heap census's answer, first: the containers that keep growing, the line that adds to each,
/// and the types that grow.
fn write_holders(out: &mut String, report: &Report) {
    let Some(census) = &report.census else { return };
    let flagged: Vec<_> = report.holders.iter().filter(|h| h.flagged).collect();
    let growing_types: Vec<_> = report.types.iter().filter(|t| t.flagged).collect();
    if flagged.is_empty() && growing_types.is_empty() {
        let why = census.error.as_deref().map(|e| format!(": no census ({e})")).unwrap_or_default();
        let _ =
            writeln!(out, "WHAT HOLDS THE MEMORY: no container or type grows ({} heap censuses){why}", census.censuses);
        write_gc(out, census);
        let _ = writeln!(out);
        return;
    }
    if !flagged.is_empty() {
        let _ = writeln!(
            out,
            "WHAT HOLDS THE MEMORY ({} growing container{}, from {} heap censuses), fastest first:",
            flagged.len(),
            if flagged.len() == 1 { "" } else { "s" },
            census.censuses
        );
    }
    for (i, h) in flagged.iter().enumerate() {
        let now = |series: &[super::CountPoint]| series.last().map_or(0.0, |p| p.value);
        let _ = writeln!(
            out,
            "  #{} {} ({}): {:+.1} items/s, +{}/min; now {:.0} items retaining {}",
            i + 1,
            truncate(&h.path, 100),
            h.type_name,
            h.growth_items_per_sec,
            human_bytes(h.growth_bytes_per_sec * 60.0),
            now(&h.length_series),
            h.retained_now()
        );
        let _ = writeln!(out, "    why: {}", h.reason);
        match (&h.file, h.line) {
            (Some(file), Some(line)) => {
                let verb = if h.inferred { "created at" } else { "added at" };
                let _ = writeln!(out, "    {verb} {file}:{line}");
                match &h.advice {
                    Some(advice) => crate::advice::scan::write_advice(out, "    ", advice),
                    None => {
                        let _ = writeln!(out, "        {}", h.code.as_deref().unwrap_or(""));
                    }
                }
            }
            _ => {
                let _ = match h.inferred {
                    true => writeln!(out, "    (no line creating them found in the stacks or the program's files)"),
                    false => writeln!(out, "    (no line adding to it found in its module's source)"),
                };
            }
        }
    }
    if !growing_types.is_empty() {
        let listed: Vec<String> = growing_types
            .iter()
            .take(6)
            .map(|t| {
                format!(
                    "{} {:+.1}/s ({}/min)",
                    t.name,
                    t.growth_objects_per_sec,
                    human_bytes(t.growth_bytes_per_sec * 60.0)
                )
            })
            .collect();
        let _ = writeln!(out, "  growing types (GC-tracked objects): {}", listed.join(", "));
    }
    write_gc(out, census);
    let _ = writeln!(out);
}

/// The GC's own counters: collections per generation per second and the objects it tracks, the
/// guide's "GC slowdown" signal (a growing tracked set makes every full collection longer).
fn write_gc(out: &mut String, census: &super::CensusSummary) {
    if let Some(gc) = &census.gc {
        let _ = writeln!(out, "  {}", super::facts::gc(gc));
    }
}

fn frame_line(f: &Frame) -> String {
    let location = match (&f.file, f.line) {
        (Some(file), Some(line)) => format!("  {file}:{line}"),
        (Some(file), None) => format!("  {file}"),
        _ => String::new(),
    };
    let object = f.object.as_deref().and_then(|o| o.rsplit('/').next()).map(|o| format!("  ({o})")).unwrap_or_default();
    format!("{}{location}{object}", f.function)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn the_growing_container_and_its_line_come_before_the_stacks() {
        let report = sample::holding();
        let text = render(&report);
        let holder = text.find("#1 __main__._SESSIONS").expect(&text);
        assert!(holder < text.find("GROWING STACKS").unwrap(), "{text}");
        assert!(text.contains("+40.0 items/s") && text.contains("now 360 items"), "{text}");
        assert!(text.contains("added at /srv/app/main.py:18\n        _SESSIONS[session_id] = payload"), "{text}");
        // A name from the target cannot reach the terminal with its control characters.
        assert!(!text.contains('\u{1b}'), "{text}");
        // Old reports (no census) have no such section.
        assert!(!render(&sample::leaking()).contains("WHAT HOLDS THE MEMORY"));
    }

    #[test]
    fn a_flagged_stack_says_what_kind_of_leak_and_the_fix() {
        let text = render(&sample::leaking());
        let at = text.find("leak_async  /srv/app/main.py:18").expect("the leaking frame");
        let advice = &text[at..];
        assert!(advice.contains("Leak pattern: Unbounded cache (unbounded_cache)"), "{text}");
        assert!(advice.contains("_sessions[session_id] = payload(10_000)"));
        assert!(advice.contains("`_sessions` is module-level"), "{text}");
        assert!(advice.contains("Fix: Bound it: cachetools.TTLCache"));
        // Only the stack with advice has a block.
        assert_eq!(text.matches("Leak pattern:").count(), 1);
    }

    /// A flagged stack of the given allocator, copied from the sample's first flagged one.
    fn flagged_via(report: &Report, allocator: &str) -> StackReport {
        let mut s = report.stacks.iter().find(|s| s.flagged).unwrap().clone();
        s.allocator = allocator.into();
        s.frames[0].function = allocator.into();
        s
    }

    #[test]
    fn memory_syscall_stacks_get_their_own_section_after_the_allocation_stacks() {
        let mut report = sample::leaking();
        let mmap = flagged_via(&report, "mmap");
        report.stacks.insert(0, mmap);
        let text = render(&report);
        let growing = text.find("GROWING STACKS (2)").expect(&text);
        let heap = text.find("WHERE THE HEAP GROWS (1 memory-syscall stacks").expect(&text);
        assert!(growing < heap, "{text}");
        assert!(!text[growing..heap].contains("      mmap"), "{text}");
    }

    #[test]
    fn memory_syscall_stacks_alone_are_listed_and_said_to_be_only_that() {
        let mut report = sample::leaking();
        let brk = flagged_via(&report, "brk");
        report.stacks.retain(|s| !s.flagged);
        report.stacks.push(brk);
        let text = render(&report);
        assert!(text.contains("GROWING STACKS (1), fastest first — memory syscalls only"), "{text}");
        assert!(!text.contains("WHERE THE HEAP GROWS"), "{text}");
    }

    #[test]
    fn drops_that_windows_make_by_design_are_not_called_losses() {
        use crate::report::CounterValue;
        let mut report = sample::leaking();
        let counter = |name: &str, value| CounterValue { name: name.into(), value, is_drop: true };
        report.counters.retain(|c| !c.is_drop);
        report.counters.push(counter("drop_missed_free", 44_910));
        report.counters.push(counter("drop_stack_capture", 3));
        // With every allocation hooked, a missed free is a loss.
        report.budget.as_mut().unwrap().max_overhead_percent = 100.0;
        let text = render(&report);
        assert!(text.contains("dropped: 44910 missed free, 3 stack capture"), "{text}");
        assert!(!text.contains("not followed, by design"), "{text}");
        // In sampling windows it is what not hooking frees means.
        report.budget.as_mut().unwrap().max_overhead_percent = 5.0;
        let text = render(&report);
        assert!(text.contains("dropped: 3 stack capture\n"), "{text}");
        assert!(text.contains("not followed, by design: 44910 missed free (frees are not hooked"), "{text}");
    }
}
