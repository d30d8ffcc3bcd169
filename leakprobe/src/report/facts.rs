//! Sentences about a report that several renderers print the same way (text, HTML): what the
//! memory did, the events and drops counted, what the probes cost.

use super::{human_bytes, human_duration, Report};
use leakprobe_common::Counter;

use crate::{
    advice::{Relation, StackAdvice},
    budget::BudgetSummary,
};

/// `a -> b (anon, file, swap); RSS trend x/min (kind)` of the RSS, when it was read.
pub fn rss_change(report: &Report) -> Option<String> {
    let (first, last) = (report.rss.first()?, report.rss.last()?);
    let (m, v) = (&last.memory, &report.verdict);
    Some(format!(
        "{} -> {} (anon {}, file {}, swap {}); RSS trend {}/min ({})",
        human_bytes(first.memory.rss_bytes as f64),
        human_bytes(m.rss_bytes as f64),
        human_bytes(m.anon_bytes as f64),
        human_bytes(m.file_bytes as f64),
        human_bytes(m.swap_bytes as f64),
        human_bytes(v.rss.growth_bytes_per_sec * 60.0),
        v.rss.kind.as_str()
    ))
}

/// The events counted, as `N name, ...`.
pub fn events(report: &Report) -> String {
    let events: Vec<String> = report
        .counters
        .iter()
        .filter(|c| !c.is_drop)
        .map(|c| format!("{} {}", c.value, c.name.replace('_', " ")))
        .collect();
    events.join(", ")
}

/// Drop counters split into real losses and what sampling windows leave unfollowed by design
/// (`Counter::is_by_design_in_windows`), each as (name, value) with a value above 0. `windowed`:
/// the recording hooked the allocators only in sampling windows.
pub fn split_drops<'a>(
    counters: impl IntoIterator<Item = (&'a str, u64)>,
    windowed: bool,
) -> (Vec<(&'a str, u64)>, Vec<(&'a str, u64)>) {
    counters
        .into_iter()
        .filter(|(name, value)| name.starts_with("drop_") && *value > 0)
        .partition(|(name, _)| !(windowed && Counter::from_name(name).is_some_and(Counter::is_by_design_in_windows)))
}

/// Whether the report's allocator hooks were attached only in sampling windows.
pub fn windowed(report: &Report) -> bool {
    report.budget.as_ref().is_some_and(|b| b.max_overhead_percent < 100.0)
}

fn drop_list(drops: &[(&str, u64)]) -> String {
    let named: Vec<String> = drops
        .iter()
        .map(|(name, value)| format!("{value} {}", name.trim_start_matches("drop_").replace('_', " ")))
        .collect();
    named.join(", ")
}

fn counter_pairs(report: &Report) -> impl Iterator<Item = (&str, u64)> {
    report.counters.iter().map(|c| (c.name.as_str(), c.value))
}

/// The events lost, by reason, or `none`: real losses only (see `unfollowed_by_design`).
pub fn drops(report: &Report) -> String {
    let (lost, _) = split_drops(counter_pairs(report), windowed(report));
    if lost.is_empty() {
        "none".to_string()
    } else {
        drop_list(&lost)
    }
}

/// What sampling windows did not follow by design (not a loss), if anything.
pub fn unfollowed_by_design(report: &Report) -> Option<String> {
    let (_, by_design) = split_drops(counter_pairs(report), windowed(report));
    (!by_design.is_empty()).then(|| {
        format!(
            "{} (frees are not hooked in sampling windows — liveness reads the sampled blocks instead — \
             and a window can close between a call and its return)",
            drop_list(&by_design)
        )
    })
}

/// What the probes cost and how they were attached.
pub fn overhead(b: &BudgetSummary) -> String {
    let mode = if b.max_overhead_percent >= 100.0 {
        "every allocation hooked throughout (--max-overhead 100)".to_string()
    } else {
        let tail = match &b.links {
            Some(links) if b.detach_tail_max_seconds > 0.0 => format!(
                ", their {links} links unregistered {:.0} ms after each (longest {:.0} ms)",
                b.detach_tail_mean_seconds * 1000.0,
                b.detach_tail_max_seconds * 1000.0
            ),
            _ => String::new(),
        };
        format!(
            "budget {:.1}%: {} sampling windows, {} with the allocator probes attached{tail}",
            b.max_overhead_percent,
            b.windows,
            human_duration(b.attached_seconds)
        )
    };
    format!(
        "probes took ~{:.1}% of the target's CPU ({} hits x {:.1} µs measured); {mode}",
        b.estimated_overhead_percent, b.probe_hits, b.cost_per_hit_us
    )
}

/// Where the breakpoints sat and what a hit costs at each kind, in one line; `None` for reports
/// from before per-site placement.
pub fn probe_sites(report: &Report) -> Option<String> {
    super::probe_sites::summary(&report.probe_sites)
}

/// What the advice says in one line: the kind of leak, how sure, and where.
pub fn advice_headline(a: &StackAdvice) -> String {
    let kind = if a.advice.leaks { "Leak pattern" } else { "Not a leak pattern" };
    let at = format!("{}:{}", a.file, a.advice.line);
    let where_ = match a.relation {
        Relation::Line => format!("at {at}"),
        Relation::SameFunction => format!("at {at}, in the function of the flagged line"),
        Relation::StartedBy => format!("at {at}, which starts or registers the flagged function"),
    };
    format!(
        "{kind}: {} ({}), confidence {:.0}%, {where_}",
        a.advice.title,
        a.advice.pattern,
        a.advice.confidence * 100.0
    )
}

/// "GC: collections gen 0 0.34/s, gen 1 0.03/s, gen 2 0.00/s; tracked objects 45346 -> 45088":
/// the GC's own counters over the censuses (the guide's "GC slowdown" signal: a growing tracked
/// set makes every full collection longer).
pub fn gc(gc: &super::GcSummary) -> String {
    let per_generation: Vec<String> = gc
        .collections_per_sec
        .iter()
        .enumerate()
        .map(|(i, r)| if r.is_finite() { format!("gen {i} {r:.2}/s") } else { format!("gen {i} ?") })
        .collect();
    let tracked = match (gc.tracked_objects.first(), gc.tracked_objects.last()) {
        (Some(a), Some(b)) => format!("; tracked objects {:.0} -> {:.0}", a.value, b.value),
        _ => String::new(),
    };
    let disabled = if gc.enabled { "" } else { " (GC disabled)" };
    let uncollectable =
        if gc.uncollectable > 0 { format!("; {} uncollectable", gc.uncollectable) } else { String::new() };
    format!("GC{disabled}: collections {}{tracked}{uncollectable}", per_generation.join(", "))
}
