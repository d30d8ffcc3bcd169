//! Text and JSON renderings of a `LogsReport` (the JSON fields are documented in docs/logs.md).

use std::fmt::Write;

use super::{
    analyze::{ErrorReport, SeriesReport},
    parse::format_time_short,
    LogsReport,
};
use crate::{
    report::{human_bytes, human_duration},
    verdict::VerdictKind,
};

pub fn json(report: &LogsReport) -> String {
    let mut out = serde_json::to_string_pretty(report).expect("the report serialises");
    out.push('\n');
    out
}

/// Verdict first, then the series, spikes, errors with their correlation, and skipped lines.
pub fn text(report: &LogsReport) -> String {
    let mut out = String::new();
    // The series the overall verdict comes from (tags are unique; `None` is the untagged one).
    let chosen = report.series.iter().find(|s| s.tag == report.verdict.series);
    match chosen {
        Some(s) => {
            let _ = writeln!(out, "{}", headline(s));
            if let (Some(secs), Some(limit)) = (s.time_to_limit_seconds, report.limit_bytes) {
                let _ = writeln!(
                    out,
                    "  at this rate it reaches the {} limit in {} (from {} at the last sample)",
                    human_bytes(limit),
                    human_duration(secs),
                    human_bytes(s.last_bytes)
                );
            }
        }
        None => {
            let _ = writeln!(out, "{}: {}", report.verdict.verdict.as_str(), report.verdict.reason);
        }
    }

    if report.series.len() > 1 {
        let _ = writeln!(out, "\nSERIES ({}):", report.series.len());
        for s in &report.series {
            let _ = writeln!(
                out,
                "  {:<16} {:<12} {:>5} samples over {:<8} {} -> {}  {:+.1} MB/min",
                label(s),
                s.verdict.kind.as_str(),
                s.samples,
                human_duration(s.duration_seconds),
                human_bytes(s.first_bytes),
                human_bytes(s.last_bytes),
                s.growth_mb_per_min
            );
        }
    }

    let spikes_total: usize = report.series.iter().map(|s| s.spikes_total).sum();
    if spikes_total > 0 {
        let _ = writeln!(out, "\nSPIKES ({spikes_total}, left out of the verdict):");
        for s in &report.series {
            for spike in &s.spikes {
                let _ = writeln!(
                    out,
                    "  {} (line {}) {}: {}, {:.1}x the {} around it ({} sample{})",
                    format_time_short(spike.t_unix),
                    spike.line,
                    label(s),
                    human_bytes(spike.peak_bytes),
                    spike.ratio,
                    human_bytes(spike.baseline_bytes),
                    spike.samples,
                    if spike.samples == 1 { "" } else { "s" }
                );
            }
        }
    }

    if report.errors_total > 0 {
        let _ = writeln!(out, "\nMEMORY ERRORS ({}):", report.errors_total);
        for e in &report.errors {
            render_error(&mut out, e);
        }
        if report.errors.len() < report.errors_total {
            let _ = writeln!(out, "  ... {} more", report.errors_total - report.errors.len());
        }
    }

    let lines = &report.lines;
    let _ = writeln!(out, "\nLINES: {} read, {} memory samples", lines.total, lines.samples);
    if report.skipped.total > 0 {
        let reasons: Vec<String> = report.skipped.by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(out, "  skipped {} malformed: {}", report.skipped.total, reasons.join(", "));
    }
    for (count, what) in [
        (lines.inherited_time, "had no timestamp (given the previous line's time)"),
        (lines.invalid_utf8, "were not valid UTF-8 (read lossily)"),
        (lines.truncated, "were longer than 64 KiB (cut)"),
        (lines.filtered_out, "samples were of other processes (--process)"),
    ] {
        if count > 0 {
            let _ = writeln!(out, "  {count} {what}");
        }
    }
    out
}

fn label(s: &SeriesReport) -> String {
    s.tag.clone().unwrap_or_else(|| "untagged".into())
}

/// `leak: pid 1234: RSS grows 5.0 MB/min (300.0 MB/hour) steadily over 3h 00m (Mann–Kendall p=...)`.
fn headline(s: &SeriesReport) -> String {
    let who = s.tag.as_ref().map_or(String::new(), |t| format!("{t}: "));
    let p = s.mann_kendall_p.map_or("n/a".into(), p_value);
    let span = format!("{} -> {}", human_bytes(s.first_bytes), human_bytes(s.last_bytes));
    match s.verdict.kind {
        VerdictKind::Leak => format!(
            "leak: {who}{} grows {:.1} MB/min ({:.0} MB/hour) steadily over {} (Mann–Kendall {p}), {span}",
            s.what,
            s.growth_mb_per_min,
            s.growth_mb_per_hour,
            human_duration(s.duration_seconds)
        ),
        kind => format!(
            "{}: {who}{} {span} over {}: {}",
            kind.as_str(),
            s.what,
            human_duration(s.duration_seconds),
            s.verdict.reason
        ),
    }
}

/// `p=0.031`, `p=2.1e-5`, or `p<1e-12` where the normal approximation's tail underflows.
fn p_value(p: f64) -> String {
    if p < 1e-12 {
        "p<1e-12".into()
    } else if p < 1e-3 {
        format!("p={p:.1e}")
    } else {
        format!("p={p:.3}")
    }
}

fn render_error(out: &mut String, e: &ErrorReport) {
    let when = e.t_unix.map_or("(no time)".into(), format_time_short);
    let killed = e.killed_pid.map_or(String::new(), |pid| {
        let rss = e.killed_anon_rss_bytes.map_or(String::new(), |b| format!(", anon-rss {}", human_bytes(b)));
        format!(" (killed pid {pid}{rss})")
    });
    let _ = writeln!(out, "  {when} (line {}) {}{killed}: {}", e.line, e.kind.as_str(), e.message);
    if let Some(location) = &e.location {
        let _ = writeln!(out, "      at {location}");
    }
    let series = e.series.as_ref().filter(|s| *s != "untagged").map_or(String::new(), |s| format!(" of {s}"));
    match &e.last_sample {
        Some(last) => {
            let _ = write!(
                out,
                "      last sample{series}: {}, {} before (line {})",
                human_bytes(last.bytes),
                human_duration(last.seconds_before),
                last.line
            );
            match &e.trend_before {
                Some(tr) => {
                    let shape = if tr.growing { "growing" } else { "not growing significantly" };
                    let _ = writeln!(
                        out,
                        "; {shape}, {:+.1} MB/min over the {} before (Mann–Kendall {}, {} samples)",
                        tr.growth_mb_per_min,
                        human_duration(tr.window_seconds),
                        p_value(tr.mann_kendall_p),
                        tr.samples
                    );
                }
                None => out.push('\n'),
            }
        }
        None => {
            let _ = writeln!(out, "      no memory sample before it");
        }
    }
}
