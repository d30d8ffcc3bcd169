//! The HTML page (`--format html`): one self-contained file that works offline — the verdict,
//! RSS and the tracked heap over time, each growing stack with its leaking line, its growth as a
//! plot and advice, the flame graph, and the recording's details. Plots are inline SVG drawn here
//! (`plot`), the flame graph is inferno's SVG inline; no script, font or stylesheet is fetched.
//! The page's frame is `html_template.html`; the heap census's section is `html_heap`, the
//! closing tables are `html_tables`.

use std::fmt::Write as _;

use anyhow::Result;

use super::{
    facts, flamegraph,
    html_tables::{details, others, utc},
    human_bytes, human_duration, plot, Report, StackReport, SCHEMA_VERSION,
};
use crate::{
    symbolize::{Frame, FrameKind},
    verdict::VerdictKind,
};

const TEMPLATE: &str = include_str!("html_template.html");
/// Frames listed before the rest are folded into a `<details>`.
const FRAMES_SHOWN: usize = 12;

/// Text for HTML/SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What kind of leak one flagged stack is and the fix, as an HTML fragment (escaped), shown in
/// its card under the frames; empty without advice.
pub fn advice_html(stack: &StackReport) -> String {
    let Some(advice) = &stack.advice else { return String::new() };
    format!(
        r#"<p class="lp-advice-title"><strong>{}</strong></p>{}"#,
        escape(&facts::advice_headline(advice)),
        advice_body(&advice.advice)
    )
}

/// The construct's code, why it leaks, what was seen, and the fix (escaped).
pub fn advice_body(a: &crate::advice::Advice) -> String {
    let mut out = format!(r#"<pre class="lp-mono">{}</pre><p>{}</p><ul>"#, escape(&a.code), escape(&a.why));
    a.evidence.iter().for_each(|e| out.push_str(&format!("<li>{}</li>", escape(e))));
    let _ = write!(
        out,
        r#"</ul><p><strong>Fix:</strong> {}</p><pre class="lp-mono">{}</pre>"#,
        escape(&a.fix),
        escape(&a.fix_example)
    );
    out
}

/// Replaces each `{{NAME}}` of the template in one pass (values are never re-scanned).
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}").and_then(|end| values.iter().find(|(k, _)| *k == &after[..end]).map(|(_, v)| (end, v))) {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

pub fn render(report: &Report) -> Result<String> {
    let t = &report.target;
    let command = if t.cmdline.is_empty() { t.exe.clone() } else { t.cmdline.join(" ") };
    let word = verdict_word(report.verdict.verdict);
    let python = t.python_version.as_deref().map(|v| format!(", Python {v}")).unwrap_or_default();
    let subheading = format!(
        "{} recorded from {}, {} samples every {}, ended by {}",
        human_duration(report.duration_seconds),
        utc(report.started_unix_secs),
        report.rss.len().max(report.tracked_live_bytes.len()),
        human_duration(report.interval_seconds),
        report.ended_because
    );
    let generator = format!("leakprobe {}", report.leakprobe_version);
    Ok(fill(
        TEMPLATE,
        &[
            ("TITLE", escape(&format!("leakprobe: {word} — PID {} ({command})", t.pid))),
            ("GENERATOR", escape(&generator)),
            ("HEADING", escape(&format!("PID {} — {command}{python}", t.pid))),
            ("SUBHEADING", escape(&subheading)),
            ("VERDICT", verdict(report)),
            ("HOLDERS", super::html_heap::holders(report)),
            ("MEMORY_PLOTS", memory_plots(report)),
            ("STACKS", growing(report)),
            ("FLAME_TITLE", escape(&flamegraph::title(report).replacen("leakprobe: l", "Flame graph: l", 1))),
            ("FLAMEGRAPH", flamegraph::render(report, &flamegraph::Style::Inline)?),
            ("OTHERS", others(report)),
            ("DETAILS", details(report)),
            ("SCHEMA", SCHEMA_VERSION.to_string()),
        ],
    ))
}

fn verdict_word(kind: VerdictKind) -> &'static str {
    match kind {
        VerdictKind::Leak => "LEAK",
        VerdictKind::NoLeak => "NO LEAK",
        VerdictKind::Inconclusive => "INCONCLUSIVE",
    }
}

fn verdict(report: &Report) -> String {
    let v = &report.verdict;
    let mut facts: Vec<(&str, String)> = Vec::new();
    if let Some(rss) = super::facts::rss_change(report) {
        facts.push(("RSS", rss));
    }
    if let Some(last) = report.tracked_live_bytes.last() {
        facts.push((
            "Allocator-tracked heap",
            format!(
                "{} live; trend {}/min ({})",
                human_bytes(last.bytes),
                human_bytes(v.tracked_heap.growth_bytes_per_sec * 60.0),
                v.tracked_heap.kind.as_str()
            ),
        ));
    }
    facts.push((
        "Memory limit",
        match &report.memory_limit {
            Some(limit) => format!(
                "{} (cgroup {}): {}",
                human_bytes(limit.limit_bytes as f64),
                limit.cgroup,
                match limit.time_to_limit_seconds {
                    Some(s) => format!("reached in ~{} at this rate", human_duration(s)),
                    None => "not approaching at this rate".into(),
                }
            ),
            None => "none set on its cgroup".into(),
        },
    ));
    let mut out = format!(
        r#"<div class="lp-verdict lp-{}"><span class="lp-word">{}</span><span class="lp-rate">growth {}/min, confidence {:.0}%</span><p>{}</p></div>"#,
        v.verdict.as_str(),
        verdict_word(v.verdict),
        human_bytes(v.growth_bytes_per_sec * 60.0),
        v.confidence * 100.0,
        escape(&v.reason)
    );
    out.push_str(r#"<dl class="lp-facts">"#);
    for (k, val) in facts {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&val));
    }
    out.push_str("</dl>");
    out
}

fn memory_plots(report: &Report) -> String {
    let rss = plot::Chart {
        label: "RSS over time",
        width: 570.0,
        height: 240.0,
        series: vec![
            plot::Series {
                name: "RSS",
                color: "#1f6fb2",
                points: report.rss.iter().map(|p| (p.t_secs, p.memory.rss_bytes as f64)).collect(),
            },
            plot::Series {
                name: "anonymous",
                color: "#b3261e",
                points: report.rss.iter().map(|p| (p.t_secs, p.memory.anon_bytes as f64)).collect(),
            },
        ],
    };
    let heap = plot::Chart {
        label: "Allocator-tracked live heap over time",
        width: 570.0,
        height: 240.0,
        series: vec![plot::Series {
            name: "tracked live heap",
            color: "#6a3d9a",
            points: report.tracked_live_bytes.iter().map(|p| (p.t_secs, p.bytes)).collect(),
        }],
    };
    format!(
        "<figure><figcaption>RSS</figcaption>{}</figure><figure><figcaption>Allocator-tracked live heap</figcaption>{}</figure>",
        plot::line_chart(&rss),
        plot::line_chart(&heap)
    )
}

/// The line a stack's memory is kept by: its innermost Python frame, else the allocator's caller.
pub fn leaking_frame(s: &StackReport) -> Option<&Frame> {
    s.frames.iter().find(|f| f.kind == FrameKind::Python).or_else(|| s.frames.get(1)).or_else(|| s.frames.first())
}

/// `file:line`, `file`, or the object's file name.
pub fn location(f: &Frame) -> String {
    match (&f.file, f.line) {
        (Some(file), Some(line)) => format!("{file}:{line}"),
        (Some(file), None) => file.clone(),
        _ => f.object.as_deref().map(|o| o.rsplit('/').next().unwrap_or(o).to_string()).unwrap_or_default(),
    }
}

fn growing(report: &Report) -> String {
    let (allocations, syscalls) = report.growing_stacks();
    if allocations.is_empty() && syscalls.is_empty() {
        return "<h2>Growing stacks</h2><p>None flagged: no stack kept growing until the end of the recording.</p>"
            .into();
    }
    // Series are aligned with the samples; their times are the tracked heap's.
    let times: Vec<f64> = report.tracked_live_bytes.iter().map(|p| p.t_secs).collect();
    let cards = |stacks: &[&StackReport]| -> String {
        stacks.iter().enumerate().map(|(i, s)| card(i + 1, s, &times)).collect()
    };
    if allocations.is_empty() {
        return format!(
            "<h2>Growing stacks ({}), fastest first</h2><p>Memory syscalls only: where the heap grows, not who \
             keeps it (no allocator stack grew; <code>--max-overhead 100</code> hooks every allocation).</p>{}",
            syscalls.len(),
            cards(&syscalls)
        );
    }
    let mut out = format!("<h2>Growing stacks ({}), fastest first</h2>{}", allocations.len(), cards(&allocations));
    if !syscalls.is_empty() {
        out.push_str(&format!(
            "<h2>Where the heap grows ({} memory-syscall stacks)</h2><p>Not who keeps it: the allocation stacks \
             above are.</p>{}",
            syscalls.len(),
            cards(&syscalls)
        ));
    }
    out
}

fn card(rank: usize, s: &StackReport, times: &[f64]) -> String {
    let rate = match s.share_of_growth {
        Some(share) => format!(
            "~{}/s ({:.0}% of the sampled growth), {} sampled objects still live ({})",
            human_bytes(s.growth_bytes_per_sec),
            share * 100.0,
            s.live_allocations,
            human_bytes(s.live_bytes as f64)
        ),
        None => format!(
            "{}/s (95% CI {}..{}/s), live {} in {} allocations",
            human_bytes(s.growth_bytes_per_sec),
            human_bytes(s.growth_low_bytes_per_sec),
            human_bytes(s.growth_high_bytes_per_sec),
            human_bytes(s.live_bytes as f64),
            s.live_allocations
        ),
    };
    let mut out = format!(
        r#"<article class="lp-card" id="lp-stack-{}"><h3>#{rank} {} via <code>{}</code></h3>"#,
        escape(&s.id),
        escape(&rate),
        escape(&s.allocator)
    );
    let site = leaking_frame(s);
    if let Some(f) = site {
        let _ = write!(
            out,
            r#"<p class="lp-site">Leaking line: <code>{}</code> in <code>{}</code></p>"#,
            escape(&location(f)),
            escape(&f.function)
        );
    }
    let after = s.flagged_after_secs.map(|t| format!("; named after {}", human_duration(t))).unwrap_or_default();
    let _ = write!(out, r#"<p class="lp-why">{}{}</p>"#, escape(&s.reason), escape(&after));
    let row = |f: &Frame| {
        let mut class = if f.kind == FrameKind::Python { "lp-python" } else { "lp-native" }.to_string();
        if site.is_some_and(|l| std::ptr::eq(l, f)) {
            class.push_str(" lp-leaking");
        }
        let kind = match f.kind {
            FrameKind::Python => "python",
            FrameKind::Native => "native",
            FrameKind::Kernel => "kernel",
        };
        let object = f
            .object
            .as_deref()
            .filter(|_| f.file.is_some())
            .map(|o| format!(" ({})", o.rsplit('/').next().unwrap_or(o)));
        format!(
            r#"<tr class="{class}"><td class="lp-kind">{kind}</td><td class="lp-mono">{}</td><td class="lp-where lp-mono">{}{}</td></tr>"#,
            escape(&f.function),
            escape(&location(f)),
            escape(&object.unwrap_or_default())
        )
    };
    out.push_str(r#"<table class="lp-frames">"#);
    s.frames.iter().take(FRAMES_SHOWN).for_each(|f| out.push_str(&row(f)));
    out.push_str("</table>");
    if s.frames.len() > FRAMES_SHOWN {
        let _ = write!(
            out,
            r#"<details><summary>{} more frames</summary><table class="lp-frames">"#,
            s.frames.len() - FRAMES_SHOWN
        );
        s.frames.iter().skip(FRAMES_SHOWN).for_each(|f| out.push_str(&row(f)));
        out.push_str("</table></details>");
    }
    let what = if s.sampled_growth_bytes_per_sec.is_some() { "sampled live bytes" } else { "live bytes" };
    let label = format!("{what} of stack #{rank} over time");
    let _ = write!(out, r#"<p class="lp-chart-title">{}</p>"#, escape(&format!("{what} over time")));
    let chart = plot::Chart {
        label: &label,
        width: 560.0,
        height: 170.0,
        series: vec![plot::Series {
            name: what,
            color: "#b3261e",
            points: times.iter().copied().zip(s.series.iter().copied()).collect(),
        }],
    };
    out.push_str(&plot::line_chart(&chart));
    let advice = advice_html(s);
    if !advice.is_empty() {
        let _ = write!(out, r#"<div class="lp-advice">{advice}</div>"#);
    }
    out.push_str("</article>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn the_page_shows_the_verdict_the_leaking_lines_and_the_graphs() {
        let html = render(&sample::leaking()).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("{{"), "every placeholder filled");
        assert!(html.contains(r#"<div class="lp-verdict lp-leak"><span class="lp-word">LEAK</span>"#));
        assert!(html.contains("Leaking line: <code>/srv/app/main.py:18</code> in <code>leak_async</code>"));
        assert!(html.contains("/srv/app/main.py:24"));
        // The first stack's advice: the pattern, the line, the fix.
        assert!(
            html.contains("Leak pattern: Unbounded cache (unbounded_cache), confidence 80%, at /srv/app/main.py:18")
        );
        assert!(html.contains("_sessions[session_id] = payload(10_000)") && html.contains("TTLCache"));
        assert_eq!(html.matches(r#"<div class="lp-advice">"#).count(), 1);
        assert!(html.contains("reached in ~54m 56s at this rate"));
        // Two memory plots, one per growing stack, and the flame graph, all inline.
        assert_eq!(html.matches(r#"<svg class="lp-plot""#).count(), 4);
        assert_eq!(html.matches(r#"<svg class="lp-flame""#).count(), 1);
        assert!(html.contains("&lt;module&gt;") && html.contains("a &lt;warning&gt; with &amp; markup"));
        assert!(html.contains("2023-11-14 22:13:20 UTC"));
    }

    #[test]
    fn the_growing_container_comes_right_after_the_verdict() {
        let html = render(&sample::holding()).unwrap();
        let holder = html.find("<code>__main__._SESSIONS").expect("the holder's card");
        assert!(holder > html.find("lp-verdict").unwrap() && holder < html.find("Memory over time").unwrap());
        assert!(html.contains("Added at <code>/srv/app/main.py:18</code>"), "{html}");
        assert!(html.contains("Now 360 items") && html.contains("_SESSIONS[session_id] = payload"));
        // Reports without censuses have no such section.
        assert!(!render(&sample::leaking()).unwrap().contains("What holds the memory"));
    }

    #[test]
    fn works_offline_nothing_is_fetched() {
        let html = render(&sample::leaking()).unwrap();
        for fetch in ["<script", "<link", "<img", "src=", "url(http", "@import"] {
            assert!(!html.contains(fetch), "{fetch}");
        }
    }

    #[test]
    fn without_growing_stacks_it_says_so() {
        let html = render(&sample::sampling_no_leak()).unwrap();
        assert!(html.contains("lp-no-leak") && html.contains("NO LEAK"));
        assert!(html.contains("None flagged") && html.contains("all stacks (none is growing)"));
        assert!(html.contains("none set on its cgroup"));
    }

    #[test]
    fn placeholders_in_values_are_not_expanded() {
        let filled = fill("a {{X}} b {{Y}} {{Z", &[("X", "{{Y}}".into()), ("Y", "y".into())]);
        assert_eq!(filled, "a {{Y}} b y {{Z");
    }
}
