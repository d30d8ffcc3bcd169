//! Sentences about a report that several renderers print the same way (text, HTML): what the
//! memory did, the events and drops counted, what the probes cost.

use super::{human_bytes, human_duration, Report};
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

/// The events lost, by reason, or `none`.
pub fn drops(report: &Report) -> String {
    let drops: Vec<String> = report
        .counters
        .iter()
        .filter(|c| c.is_drop && c.value > 0)
        .map(|c| format!("{} {}", c.value, c.name.trim_start_matches("drop_").replace('_', " ")))
        .collect();
    if drops.is_empty() {
        "none".to_string()
    } else {
        drops.join(", ")
    }
}

/// What the probes cost and how they were attached.
pub fn overhead(b: &BudgetSummary) -> String {
    let mode = if b.max_overhead_percent >= 100.0 {
        "every allocation hooked throughout (--max-overhead 100)".to_string()
    } else {
        format!(
            "budget {:.1}%: {} sampling windows, {} with the allocator probes attached",
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
