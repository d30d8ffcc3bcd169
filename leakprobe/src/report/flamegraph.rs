//! The flame graph (`--format svg`, and inline in the HTML page), drawn by inferno from the
//! folded stacks of `collapsed`: widths are live bytes at the end of the recording, of the growing
//! (flagged) stacks — or of every stack when none is flagged, which the title says.

use anyhow::{Context as _, Result};
use inferno::flamegraph::{self, color::BasicPalette, Options, Palette};

use super::{collapsed, human_bytes, Report};

/// Fixed width of the inline graph (the page scales it through its viewBox).
const INLINE_WIDTH: usize = 1200;

pub enum Style {
    /// A file of its own: inferno's script (click to zoom, search), fits the window's width.
    Standalone,
    /// To embed in an HTML page: no script, no XML prolog, fixed width with a viewBox.
    Inline,
}

/// The graph's title: what the widths are, and whose.
pub fn title(report: &Report) -> String {
    let (_, growing) = collapsed::flame_stacks(report);
    let which = if growing { "growing stacks" } else { "all stacks (none is growing)" };
    format!("leakprobe: live memory of {which}, PID {}", report.target.pid)
}

fn subtitle(report: &Report) -> String {
    let (stacks, _) = collapsed::flame_stacks(report);
    let total: u64 = stacks.iter().map(|s| s.live_bytes).sum();
    let sampled = report.budget.as_ref().is_some_and(|b| b.max_overhead_percent < 100.0);
    let what = if sampled { "sampled live objects (sampling mode)" } else { "live bytes" };
    format!(
        "verdict: {}; widths: {what} at the end of the recording ({} in {} stacks)",
        report.verdict.verdict.as_str(),
        human_bytes(total as f64),
        stacks.len()
    )
}

pub fn render(report: &Report, style: &Style) -> Result<String> {
    let lines = collapsed::lines(report);
    if lines.is_empty() {
        return Ok(empty(report, style));
    }
    let mut options = Options::default();
    options.title = title(report);
    options.subtitle = Some(subtitle(report));
    options.count_name = "bytes".into();
    options.name_type = "Frame:".into();
    options.colors = Palette::Basic(BasicPalette::Mem);
    // Colours from the function names (not random): the same report always draws the same.
    options.hash = true;
    if let Style::Inline = style {
        options.no_javascript = true;
        options.image_width = Some(INLINE_WIDTH);
    }
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)
        .context("cannot draw the flame graph")?;
    let svg = String::from_utf8(out).context("the flame graph is not UTF-8")?;
    Ok(match style {
        Style::Standalone => svg,
        Style::Inline => inline(&svg),
    })
}

/// An SVG element fit for an HTML page: the XML prolog, inferno's `onload` hook and its
/// (variables-only) script removed.
fn inline(svg: &str) -> String {
    let mut s = svg[svg.find("<svg").unwrap_or(0)..].replacen(r#" onload="init(evt)""#, "", 1);
    if let (Some(start), Some(end)) = (s.find("<script"), s.find("</script>")) {
        s.replace_range(start..end + "</script>".len(), "");
    }
    s.replacen("<svg ", r#"<svg class="lp-flame" role="img" "#, 1)
}

/// No stack holds live memory: a small SVG that says so (inferno would draw an error).
fn empty(report: &Report, style: &Style) -> String {
    let prolog = match style {
        Style::Standalone => "<?xml version=\"1.0\" standalone=\"no\"?>\n",
        Style::Inline => "",
    };
    format!(
        r##"{prolog}<svg xmlns="http://www.w3.org/2000/svg" class="lp-flame" width="{INLINE_WIDTH}" height="80" viewBox="0 0 {INLINE_WIDTH} 80"><rect width="100%" height="100%" fill="#eeeeee"/><text x="50%" y="30" text-anchor="middle" font-family="Verdana, sans-serif" font-size="17">{}</text><text x="50%" y="58" text-anchor="middle" font-family="Verdana, sans-serif" font-size="12">no stack holds live memory at the end of the recording</text></svg>
"##,
        super::html::escape(&title(report))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn the_graph_shows_the_growing_stacks_and_says_so() {
        let svg = render(&sample::leaking(), &Style::Standalone).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..100]);
        assert!(svg.contains("live memory of growing stacks, PID 4242"));
        assert!(svg.contains("leak_async (main.py:18)") && svg.contains("leak_sync (main.py:24)"));
        // Python's <module> is escaped, the non-growing stacks are not drawn.
        assert!(svg.contains("&lt;module&gt;") && !svg.contains("Request.json"));
        assert!(svg.contains("function init(evt)"), "interactive");
    }

    #[test]
    fn without_growing_stacks_every_stack_is_drawn_and_the_title_says_so() {
        let svg = render(&sample::sampling_no_leak(), &Style::Standalone).unwrap();
        assert!(svg.contains("live memory of all stacks (none is growing)"));
        assert!(svg.contains("Request.json (requests.py:252)"));
        assert!(svg.contains("sampled live objects"));
    }

    #[test]
    fn the_inline_graph_has_no_script_and_no_prolog() {
        let svg = render(&sample::leaking(), &Style::Inline).unwrap();
        assert!(svg.starts_with("<svg class=\"lp-flame\""), "{}", &svg[..100]);
        assert!(!svg.contains("<script") && !svg.contains("onload") && !svg.contains("<?xml"));
        assert!(svg.contains("viewBox=\"0 0 1200 "));
    }

    #[test]
    fn a_report_without_live_memory_gets_a_message_not_an_error() {
        let mut report = sample::leaking();
        report.stacks.clear();
        let svg = render(&report, &Style::Standalone).unwrap();
        assert!(svg.contains("no stack holds live memory"));
    }
}
