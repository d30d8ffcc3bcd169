//! The HTML page's heap-census section: the containers that grow (each with what it holds, the
//! line that adds to it and the fix), the growing types, and the GC's own counters. It comes
//! right after the verdict: for leaks of small objects it is the answer.

use std::fmt::Write as _;

use super::{
    html::{advice_body, escape},
    human_bytes, plot, CountPoint, HolderReport, Report,
};

/// Growing types listed.
const TYPES_SHOWN: usize = 8;

pub fn holders(report: &Report) -> String {
    let Some(census) = &report.census else { return String::new() };
    let flagged: Vec<&HolderReport> = report.holders.iter().filter(|h| h.flagged).collect();
    let mut out = String::from("<h2>What holds the memory</h2>");
    if flagged.is_empty() {
        let why = census.error.as_deref().map(|e| format!(": no census ({e})")).unwrap_or_default();
        let _ = write!(out, "<p>No container grows ({} heap censuses){}.</p>", census.censuses, escape(&why));
    } else {
        let _ = write!(
            out,
            r#"<p class="lp-sub">{} growing container{}, fastest first, from {} heap censuses of the target's Python heap.</p>"#,
            flagged.len(),
            if flagged.len() == 1 { "" } else { "s" },
            census.censuses
        );
        flagged.iter().enumerate().for_each(|(i, h)| out.push_str(&holder_card(i + 1, h)));
    }
    out.push_str(&types(report));
    if let Some(gc) = &census.gc {
        let _ = write!(out, r#"<p class="lp-sub">{}</p>"#, escape(&super::facts::gc(gc)));
    }
    out
}

fn now(series: &[CountPoint]) -> f64 {
    series.last().map_or(0.0, |p| p.value)
}

fn holder_card(rank: usize, h: &HolderReport) -> String {
    let mut out = format!(
        r#"<article class="lp-card"><h3>#{rank} <code>{}</code> ({}): {:+.1} items/s, +{}/min</h3>"#,
        escape(&h.path),
        escape(&h.type_name),
        h.growth_items_per_sec,
        human_bytes(h.growth_bytes_per_sec * 60.0)
    );
    let _ = write!(out, r#"<p>Now {:.0} items retaining {}.</p>"#, now(&h.length_series), escape(&h.retained_now()));
    match (&h.file, h.line) {
        (Some(file), Some(line)) => {
            let verb = if h.inferred { "Created" } else { "Added" };
            let at = escape(&format!("{file}:{line}"));
            let _ = write!(out, r#"<p class="lp-site">{verb} at <code>{at}</code></p>"#);
        }
        _ if h.inferred => {
            out.push_str(r#"<p class="lp-site">No line creating them found in the stacks or the program's files.</p>"#)
        }
        _ => out.push_str(r#"<p class="lp-site">No line adding to it found in its module's source.</p>"#),
    }
    let _ = write!(out, r#"<p class="lp-why">{}</p>"#, escape(&h.reason));
    let label = format!("items held by container #{rank} over time");
    out.push_str(r#"<p class="lp-chart-title">items held over time</p>"#);
    out.push_str(&plot::line_chart(&plot::Chart {
        label: &label,
        width: 560.0,
        height: 150.0,
        series: vec![plot::Series {
            name: "items",
            color: "#b3261e",
            points: h.length_series.iter().map(|p| (p.t_secs, p.value)).collect(),
        }],
    }));
    match &h.advice {
        Some(a) => {
            let title = format!("{} at {}:{}", a.title, h.file.as_deref().unwrap_or("?"), a.line);
            let _ = write!(
                out,
                r#"<div class="lp-advice"><p class="lp-advice-title"><strong>{}</strong></p>{}</div>"#,
                escape(&title),
                advice_body(a)
            );
        }
        None => {
            if let Some(code) = &h.code {
                let _ = write!(out, r#"<pre class="lp-mono">{}</pre>"#, escape(code));
            }
        }
    }
    out.push_str("</article>");
    out
}

fn types(report: &Report) -> String {
    let growing: Vec<_> = report.types.iter().filter(|t| t.flagged).take(TYPES_SHOWN).collect();
    if growing.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        r#"<table class="lp-others"><tr><th>growing type (GC-tracked)</th><th class="lp-num">objects now</th><th class="lp-num">objects/s</th><th class="lp-num">growth</th><th>why</th></tr>"#,
    );
    for t in growing {
        let _ = write!(
            out,
            r#"<tr><td><code>{}</code></td><td class="lp-num">{:.0}</td><td class="lp-num">{:+.1}</td><td class="lp-num">+{}/min</td><td>{}</td></tr>"#,
            escape(&t.name),
            now(&t.count_series),
            t.growth_objects_per_sec,
            human_bytes(t.growth_bytes_per_sec * 60.0),
            escape(&t.reason)
        );
    }
    out.push_str("</table>");
    out
}
