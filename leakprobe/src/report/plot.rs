//! Line charts of byte series over time as inline SVG, for the HTML page: no script and no
//! library to load, so the page works offline. Axes have round ticks (bytes in powers of 1024,
//! times in round seconds/minutes); each point carries a `<title>` tooltip.

use std::fmt::Write as _;

use super::{html::escape, human_bytes, human_duration};

pub struct Series<'a> {
    pub name: &'a str,
    /// A CSS colour.
    pub color: &'a str,
    /// (seconds, bytes)
    pub points: Vec<(f64, f64)>,
}

pub struct Chart<'a> {
    /// Accessible name of the chart (its `aria-label`).
    pub label: &'a str,
    pub width: f64,
    pub height: f64,
    pub series: Vec<Series<'a>>,
}

/// Point markers (with tooltips) only up to this many points per series.
const MAX_MARKERS: usize = 240;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;

/// Round tick positions covering `lo..hi`, about `target` of them (a step from `steps` × 10^k).
fn ticks(lo: f64, hi: f64, target: f64, steps: &[f64]) -> Vec<f64> {
    let raw = ((hi - lo) / target).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = steps.iter().map(|s| s * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Byte ticks: nice numbers in the unit (KB, MB, ...) the range reads in.
fn byte_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut unit = 1.0;
    while hi.abs().max(lo.abs()) / unit >= 1024.0 && unit < 1024f64.powi(4) {
        unit *= 1024.0;
    }
    ticks(lo / unit, hi / unit, 4.0, &[1.0, 2.0, 2.5, 5.0, 10.0]).into_iter().map(|t| t * unit).collect()
}

fn time_ticks(hi: f64) -> Vec<f64> {
    let step = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0,
        86400.0,
    ]
    .into_iter()
    .find(|s| hi / s <= 8.0)
    .unwrap_or(86400.0 * ((hi / 86400.0 / 8.0).ceil()));
    (0..=(hi / step).floor() as i64).map(|i| i as f64 * step).collect()
}

pub fn line_chart(chart: &Chart) -> String {
    let (w, h) = (chart.width, chart.height);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="lp-plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{}">"#,
        escape(chart.label)
    );
    let finite = |&(t, y): &(f64, f64)| t.is_finite() && y.is_finite();
    let all: Vec<(f64, f64)> = chart.series.iter().flat_map(|s| s.points.iter().copied().filter(finite)).collect();
    if all.is_empty() {
        let _ = write!(out, r#"<text x="{}" y="{}" text-anchor="middle">no samples</text></svg>"#, w / 2.0, h / 2.0);
        return out;
    }
    let t_max = all.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let (mut lo, mut hi) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    // A flat series still gets a visible band around it.
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.01).max(1.0);
    lo = if lo >= 0.0 { (lo - pad).max(0.0) } else { lo - pad };
    hi += pad;
    let y_ticks = byte_ticks(lo, hi);
    let (lo, hi) = (y_ticks[0].min(lo), y_ticks[y_ticks.len() - 1].max(hi));
    let (pw, ph) = (w - LEFT - RIGHT, h - TOP - BOTTOM);
    let x = |t: f64| LEFT + t / t_max * pw;
    let y = |v: f64| TOP + (1.0 - (v - lo) / (hi - lo)) * ph;

    out.push_str(r#"<g class="lp-axis">"#);
    for v in &y_ticks {
        let yy = y(*v);
        let _ = write!(
            out,
            r#"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" class="lp-grid"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            w - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            human_bytes(*v)
        );
    }
    for t in time_ticks(t_max) {
        let xx = x(t);
        let _ = write!(
            out,
            r#"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{:.1}" class="lp-grid"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            h - BOTTOM,
            h - BOTTOM + 16.0,
            human_duration(t)
        );
    }
    let _ = write!(out, r#"<rect x="{LEFT}" y="{TOP}" width="{pw:.1}" height="{ph:.1}" class="lp-frame"/></g>"#);

    for s in &chart.series {
        let points: Vec<(f64, f64)> = s.points.iter().copied().filter(finite).collect();
        let path: Vec<String> = points.iter().map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v))).collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            escape(s.color),
            path.join(" "),
            escape(s.name)
        );
        if points.len() <= MAX_MARKERS {
            for &(t, v) in &points {
                let _ = write!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"><title>{} at {}: {}</title></circle>"#,
                    x(t),
                    y(v),
                    escape(s.color),
                    escape(s.name),
                    human_duration(t),
                    human_bytes(v)
                );
            }
        }
    }
    // Legend, top left inside the plot.
    if chart.series.len() > 1 {
        for (i, s) in chart.series.iter().enumerate() {
            let ly = TOP + 14.0 + i as f64 * 16.0;
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="12" height="4" fill="{}"/><text x="{:.1}" y="{:.1}" class="lp-legend">{}</text>"#,
                LEFT + 10.0,
                ly - 4.0,
                escape(s.color),
                LEFT + 28.0,
                ly,
                escape(s.name)
            );
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = byte_ticks(90.0 * 1048576.0, 97.0 * 1048576.0);
        assert!(t[0] <= 90.0 * 1048576.0 && *t.last().unwrap() >= 97.0 * 1048576.0, "{t:?}");
        assert!(t.iter().all(|v| (v / 1048576.0).fract() == 0.0), "whole MB: {t:?}");
        assert_eq!(time_ticks(60.0), vec![0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
        assert_eq!(time_ticks(3600.0).len(), 7);
    }

    #[test]
    fn a_chart_draws_each_series_with_tooltips() {
        let chart = Chart {
            label: "RSS <over> time",
            width: 600.0,
            height: 200.0,
            series: vec![
                Series {
                    name: "RSS",
                    color: "#1f6fb2",
                    points: (0..10).map(|i| (i as f64, 1e6 + i as f64 * 1e4)).collect(),
                },
                Series { name: "anon", color: "#b3261e", points: vec![(0.0, 5e5), (9.0, f64::NAN)] },
            ],
        };
        let svg = line_chart(&chart);
        assert!(svg.starts_with("<svg class=\"lp-plot\"") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("aria-label=\"RSS &lt;over&gt; time\""));
        assert!(svg.contains("<title>RSS at 9s: 1.0 MB</title>"), "{svg}");
        assert!(!svg.contains("NaN"));
        let empty = line_chart(&Chart { label: "x", width: 100.0, height: 50.0, series: vec![] });
        assert!(empty.contains("no samples"));
    }
}
