//! From samples and error events to findings: the growth verdict of each series (spikes left
//! out), the spikes, and for each error the memory level and trend that led to it.

use serde::Serialize;

use super::{
    errors::{ErrorEvent, ErrorKind},
    parse::{format_time_rfc3339, tag_pid, MIB},
};
use crate::{
    assess::time_to_limit,
    trend::{median, trend},
    verdict::{classify, GrowthVerdict, VerdictConfig},
};

/// Half-width (samples each side) of the rolling window spikes are judged against.
const SPIKE_HALF_WINDOW: usize = 7;
/// Fewest neighbours a rolling median needs.
const SPIKE_MIN_NEIGHBOURS: usize = 5;
/// A spike is above median + this many robust standard deviations (1.4826 × MAD)...
const SPIKE_MADS: f64 = 5.0;
/// ...and this fraction above the median.
const SPIKE_MIN_RATIO: f64 = 1.2;
/// Spikes listed per series (all are left out of the verdict).
pub const MAX_SPIKES: usize = 100;
/// The trend before an error is measured over this long.
const LOOKBACK_SECS: f64 = 3600.0;

/// One memory reading.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub t: f64,
    pub bytes: f64,
    pub line: u64,
}

/// Samples of one process tag (`None`: lines with no tag), in file order.
#[derive(Debug, Clone)]
pub struct Series {
    pub tag: Option<String>,
    /// `RSS` or `memory`: what the values are, for the text report.
    pub what: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Spike {
    pub time: String,
    pub t_unix: f64,
    pub line: u64,
    pub peak_bytes: f64,
    /// Rolling median of the neighbouring samples.
    pub baseline_bytes: f64,
    /// peak / baseline.
    pub ratio: f64,
    /// Consecutive samples above the threshold.
    pub samples: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesReport {
    pub tag: Option<String>,
    pub what: String,
    pub samples: usize,
    pub first_time: String,
    pub last_time: String,
    pub duration_seconds: f64,
    pub first_bytes: f64,
    pub last_bytes: f64,
    pub min_bytes: f64,
    pub max_bytes: f64,
    pub verdict: GrowthVerdict,
    pub growth_mb_per_min: f64,
    pub growth_mb_per_hour: f64,
    /// Mann–Kendall p (one-sided, increasing) of the window the verdict used.
    pub mann_kendall_p: Option<f64>,
    /// Theil–Sen slope over all the series' non-spike samples.
    pub overall_growth_bytes_per_sec: Option<f64>,
    /// Leak only, with `--limit`: seconds from the last sample until the limit at this rate.
    pub time_to_limit_seconds: Option<f64>,
    pub spikes: Vec<Spike>,
    pub spikes_total: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastSample {
    pub bytes: f64,
    pub line: u64,
    pub time: String,
    pub seconds_before: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrendBefore {
    pub samples: usize,
    pub window_seconds: f64,
    pub growth_bytes_per_sec: f64,
    pub growth_mb_per_min: f64,
    pub mann_kendall_p: f64,
    /// Significant growth (p < 0.01, positive slope) leading to the error.
    pub growing: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorReport {
    pub kind: ErrorKind,
    pub line: u64,
    pub lines: usize,
    pub time: Option<String>,
    pub t_unix: Option<f64>,
    pub message: String,
    pub location: Option<String>,
    pub tag: Option<String>,
    pub killed_pid: Option<u32>,
    pub killed_anon_rss_bytes: Option<f64>,
    /// The series the error was matched with (by killed pid, tag, or the latest sample).
    pub series: Option<String>,
    pub last_sample: Option<LastSample>,
    pub trend_before: Option<TrendBefore>,
}

pub fn mb_per_min(bytes_per_sec: f64) -> f64 {
    bytes_per_sec * 60.0 / MIB
}

/// Verdict, rates, limit projection and spikes of one series.
pub fn analyze_series(series: &Series, limit_bytes: Option<f64>, cfg: &VerdictConfig) -> SeriesReport {
    let samples = &series.samples;
    let values: Vec<f64> = samples.iter().map(|s| s.bytes).collect();
    let spike_flags = spike_flags(&values);
    let spikes = group_spikes(samples, &values, &spike_flags);

    let mut kept: Vec<(f64, f64)> =
        samples.iter().zip(&spike_flags).filter(|(_, &spike)| !spike).map(|(s, _)| (s.t, s.bytes)).collect();
    kept.sort_by(|a, b| a.0.total_cmp(&b.0));
    let t0 = kept.first().map_or(0.0, |k| k.0);
    let (t, y): (Vec<f64>, Vec<f64>) = kept.iter().map(|&(t, y)| (t - t0, y)).unzip();
    let verdict = classify(&t, &y, cfg);

    // The window `classify` decides on (its late half), for the p-value it rests on.
    let n = t.len();
    let late_len = n.div_ceil(2).max(cfg.min_samples.max(3)).min(n);
    let mann_kendall_p = trend(&t[n - late_len..], &y[n - late_len..]).map(|tr| tr.p_increasing);
    let overall_growth_bytes_per_sec = trend(&t, &y).map(|tr| tr.slope);

    let rate = verdict.growth_bytes_per_sec;
    let time_to_limit_seconds = match (limit_bytes, y.last()) {
        (Some(limit), Some(&last)) => time_to_limit(verdict.kind, rate, limit, last),
        _ => None,
    };
    let (min_bytes, max_bytes) =
        values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (first, last) = (samples.first(), samples.last());
    SeriesReport {
        tag: series.tag.clone(),
        what: series.what.clone(),
        samples: samples.len(),
        first_time: first.map(|s| format_time_rfc3339(s.t)).unwrap_or_default(),
        last_time: last.map(|s| format_time_rfc3339(s.t)).unwrap_or_default(),
        duration_seconds: t.last().copied().unwrap_or(0.0),
        first_bytes: first.map_or(0.0, |s| s.bytes),
        last_bytes: last.map_or(0.0, |s| s.bytes),
        min_bytes,
        max_bytes,
        growth_mb_per_min: mb_per_min(rate),
        growth_mb_per_hour: mb_per_min(rate) * 60.0,
        mann_kendall_p,
        overall_growth_bytes_per_sec,
        time_to_limit_seconds,
        verdict,
        spikes_total: spikes.len(),
        spikes: spikes.into_iter().take(MAX_SPIKES).collect(),
    }
}

/// Marks the samples far above the rolling median of their neighbours (the sample itself left
/// out): above median + 5 robust standard deviations and 20% above it. A trend moves the window's
/// median along with it, so steady growth is never a spike.
pub fn spike_flags(values: &[f64]) -> Vec<bool> {
    let n = values.len();
    (0..n)
        .map(|i| {
            let lo = i.saturating_sub(SPIKE_HALF_WINDOW);
            let hi = (i + SPIKE_HALF_WINDOW + 1).min(n);
            let neighbours: Vec<f64> = (lo..hi).filter(|&j| j != i).map(|j| values[j]).collect();
            if neighbours.len() < SPIKE_MIN_NEIGHBOURS {
                return false;
            }
            let Some(med) = median(&neighbours) else { return false };
            let deviations: Vec<f64> = neighbours.iter().map(|v| (v - med).abs()).collect();
            let sigma = 1.4826 * median(&deviations).unwrap_or(0.0);
            values[i] > med + SPIKE_MADS * sigma && values[i] > SPIKE_MIN_RATIO * med && med > 0.0
        })
        .collect()
}

/// Runs of consecutive spike samples → one spike each, at its peak.
fn group_spikes(samples: &[Sample], values: &[f64], flags: &[bool]) -> Vec<Spike> {
    let mut spikes = Vec::new();
    let mut i = 0;
    while i < flags.len() {
        if !flags[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < flags.len() && flags[i] {
            i += 1;
        }
        let peak = (start..i).max_by(|&a, &b| values[a].total_cmp(&values[b])).expect("non-empty run");
        let lo = start.saturating_sub(SPIKE_HALF_WINDOW);
        let hi = (i + SPIKE_HALF_WINDOW).min(values.len());
        let baseline: Vec<f64> = (lo..hi).filter(|j| !flags[*j]).map(|j| values[j]).collect();
        let baseline = median(&baseline).unwrap_or(0.0);
        let s = samples[peak];
        spikes.push(Spike {
            time: format_time_rfc3339(s.t),
            t_unix: s.t,
            line: s.line,
            peak_bytes: s.bytes,
            baseline_bytes: baseline,
            ratio: if baseline > 0.0 { s.bytes / baseline } else { f64::INFINITY },
            samples: i - start,
        });
    }
    spikes
}

/// Matches an error with a series: the killed process's, the line's own tag's, else the series
/// with the latest sample before the error.
pub fn correlate(event: &ErrorEvent, series: &[Series]) -> ErrorReport {
    let by_pid =
        event.killed_pid.and_then(|pid| series.iter().position(|s| s.tag.as_deref().and_then(tag_pid) == Some(pid)));
    let by_tag = || series.iter().position(|s| s.tag.is_some() && s.tag == event.tag);
    let latest = || {
        series
            .iter()
            .enumerate()
            .filter_map(|(i, s)| before(s, event.line).last().map(|last| (i, last.line)))
            .max_by_key(|&(_, line)| line)
            .map(|(i, _)| i)
    };
    let chosen = by_pid.or_else(by_tag).or_else(latest).map(|i| &series[i]);
    let prior = chosen.map_or(&[][..], |s| before(s, event.line));
    let last_sample = prior.last().map(|s| LastSample {
        bytes: s.bytes,
        line: s.line,
        time: format_time_rfc3339(s.t),
        seconds_before: event.t.map_or(0.0, |t| t - s.t),
    });
    let trend_before = prior.last().and_then(|last| {
        let end = event.t.unwrap_or(last.t);
        let window: Vec<&Sample> = prior.iter().filter(|s| s.t >= end - LOOKBACK_SECS).collect();
        let (t, y): (Vec<f64>, Vec<f64>) = window.iter().map(|s| (s.t - window[0].t, s.bytes)).unzip();
        let tr = trend(&t, &y)?;
        Some(TrendBefore {
            samples: window.len(),
            window_seconds: end - window[0].t,
            growth_bytes_per_sec: tr.slope,
            growth_mb_per_min: mb_per_min(tr.slope),
            mann_kendall_p: tr.p_increasing,
            growing: tr.p_increasing < 0.01 && tr.slope > 0.0,
        })
    });
    ErrorReport {
        kind: event.kind,
        line: event.line,
        lines: event.lines,
        time: event.t.map(format_time_rfc3339),
        t_unix: event.t,
        message: event.message.clone(),
        location: event.location.clone(),
        tag: event.tag.clone(),
        killed_pid: event.killed_pid,
        killed_anon_rss_bytes: event.killed_anon_rss_bytes,
        series: chosen.map(|s| s.tag.clone().unwrap_or_else(|| "untagged".into())),
        last_sample,
        trend_before,
    }
}

/// The samples of `series` on lines before `line`.
fn before(series: &Series, line: u64) -> &[Sample] {
    &series.samples[..series.samples.partition_point(|s| s.line < line)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spikes_stand_out_and_steady_growth_does_not() {
        let mut values: Vec<f64> = (0..60).map(|i| 500.0 + (i % 3) as f64).collect();
        values[30] = 900.0;
        values[45] = 800.0;
        values[46] = 820.0;
        let flags = spike_flags(&values);
        let flagged: Vec<usize> = (0..60).filter(|&i| flags[i]).collect();
        assert_eq!(flagged, vec![30, 45, 46]);
        let growth: Vec<f64> = (0..200).map(|i| 100.0 + 5.0 * i as f64).collect();
        assert!(!spike_flags(&growth).contains(&true));
        assert!(!spike_flags(&[1.0, 100.0, 1.0]).contains(&true));
        // Small noise on a flat level (MAD > 0) is no spike, and 15% above is not enough.
        let mut noisy: Vec<f64> = (0..40).map(|i| 1000.0 + 10.0 * ((i * 7) % 5) as f64).collect();
        noisy[20] = 1150.0;
        assert!(!spike_flags(&noisy).contains(&true));
    }
}
