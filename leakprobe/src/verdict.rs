//! Leak / no-leak / inconclusive for one time series of live bytes.
//!
//! This mechanises what a person concludes from a series of tracemalloc diffs: memory is leaking
//! if it keeps growing, steadily, until the end of the observation. Growth that levels off
//! (warm-up, a bounded cache filling), oscillates (GC or allocator churn) or is handed back is not
//! a leak. The decision rests on the LATE window (the last half of the samples) because that is
//! where "still growing" shows; the early window is context to tell a leak from a deceleration.
//! Statistics come from `trend`: Mann–Kendall for significance, Theil–Sen for the rate.

use serde::{Deserialize, Serialize};

use crate::trend::{median, trend, Trend};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictKind {
    Leak,
    NoLeak,
    Inconclusive,
}

impl VerdictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Leak => "leak",
            VerdictKind::NoLeak => "no-leak",
            VerdictKind::Inconclusive => "inconclusive",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrowthVerdict {
    pub kind: VerdictKind,
    /// Theil–Sen slope of the window the decision used (0.0 when not computable).
    #[serde(deserialize_with = "crate::report::serde_helpers::f64_or_nan")]
    pub growth_bytes_per_sec: f64,
    /// Sen's 95% confidence interval of that slope.
    #[serde(deserialize_with = "crate::report::serde_helpers::f64_or_nan")]
    pub growth_low_bytes_per_sec: f64,
    #[serde(deserialize_with = "crate::report::serde_helpers::f64_or_nan")]
    pub growth_high_bytes_per_sec: f64,
    /// 0..1, how sure we are of `kind`. Leak: 1 - Mann–Kendall p. NoLeak: 1 - p of the one-sided
    /// test that the window grows slower than the leak floors. Inconclusive: 0 (no decision).
    #[serde(deserialize_with = "crate::report::serde_helpers::f64_or_nan")]
    pub confidence: f64,
    /// One short sentence: why.
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct VerdictConfig {
    /// Fewer usable samples => Inconclusive.
    pub min_samples: usize,
    /// Significance level of the late-window Mann–Kendall test.
    pub alpha: f64,
    /// Absolute floor on the late Theil–Sen slope.
    pub min_growth_bytes_per_sec: f64,
    /// Growth over the late window must be at least this fraction of the window's median level.
    pub min_relative_growth: f64,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        VerdictConfig { min_samples: 6, alpha: 0.01, min_growth_bytes_per_sec: 1024.0, min_relative_growth: 0.02 }
    }
}

/// A late slope below this fraction of a positive early slope is a deceleration (levelling off),
/// not a steady leak.
const MIN_LATE_TO_EARLY_SLOPE: f64 = 0.25;
/// The last quarter's slope below this fraction of the second quarter's is a curve levelling off.
const MIN_LAST_TO_SECOND_QUARTER_SLOPE: f64 = 0.5;
/// The late window's level (block midranges) must rise at least this fraction of its Theil–Sen
/// slope; otherwise the "trend" is the shape of a sawtooth cycle inside the window.
const MIN_LEVEL_TO_SLOPE: f64 = 0.5;
/// Fewest rises (a sample above the one before) in the late window for growth to be steady.
const MIN_LATE_RISES: usize = 2;
/// A non-significant late window with p below this and a leak-sized slope is too noisy to call.
const BORDERLINE_P: f64 = 0.05;

/// Judges one series. Non-finite samples are dropped; the late window is the last half (at least
/// `min_samples`). In order: too few samples => Inconclusive; late Mann–Kendall not significant =>
/// NoLeak (or Inconclusive when borderline and noisy); Theil–Sen slope under the floors => NoLeak;
/// rise that is only a sawtooth's shape => NoLeak; sharp deceleration => Inconclusive; else Leak.
pub fn classify(t_secs: &[f64], live_bytes: &[f64], cfg: &VerdictConfig) -> GrowthVerdict {
    if t_secs.len() != live_bytes.len() {
        return inconclusive(None, "time and value series have different lengths".into());
    }
    // Drop samples that could not be read (non-finite) and order by time.
    let mut samples: Vec<(f64, f64)> =
        t_secs.iter().zip(live_bytes).map(|(&t, &y)| (t, y)).filter(|(t, y)| t.is_finite() && y.is_finite()).collect();
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let min_samples = cfg.min_samples.max(3);
    let n = samples.len();
    if n < min_samples {
        return inconclusive(None, format!("too few samples ({n} usable, {min_samples} needed)"));
    }

    let late_len = n.div_ceil(2).max(min_samples).min(n);
    let (late_t, late_y): (Vec<f64>, Vec<f64>) = samples[n - late_len..].iter().copied().unzip();
    let Some(late) = trend(&late_t, &late_y) else {
        return inconclusive(None, "no trend computable (samples share one timestamp or overflow)".into());
    };
    let duration = late_t[late_len - 1] - late_t[0];
    let level = median(&late_y).unwrap_or(0.0).abs();
    // The slowest growth that counts as a leak in this window: both floors at once.
    let floor_rate = cfg.min_growth_bytes_per_sec.max(cfg.min_relative_growth * level / duration);
    let slope = late.slope;
    let p = late.p_increasing;
    let no_leak = |reason: String| no_leak(&late, &late_t, &late_y, floor_rate, reason);
    let undecided = |reason: String| inconclusive(Some(&late), reason);

    // Sawtooth check: a GC/churn cycle makes Mann–Kendall see the rising edges of its teeth, but
    // its envelope does not move. Block midranges ((min+max)/2) are unchanged by whole cycles, so
    // they rise with a real leak and stay put under pure churn.
    let level_rate = midrange_rate(&late_t, &late_y);
    let level_is_flat = level_rate.is_some_and(|r| r < floor_rate);

    if p >= cfg.alpha {
        let borderline = p < BORDERLINE_P && late.slope_low < 0.0 && slope >= floor_rate;
        if borderline && !level_is_flat {
            return undecided(format!(
                "too noisy: {} but Mann–Kendall p={p:.3} and the 95% interval includes zero",
                rate(slope)
            ));
        }
        let shape = if slope < 0.0 { "falling" } else { "flat" };
        return no_leak(format!("late window is {shape} (Mann–Kendall p={p:.2})"));
    }
    if slope < floor_rate {
        return no_leak(format!("growth of {} is below the {} floor", rate(slope), rate(floor_rate)));
    }
    if let Some(level_rate) = level_rate.filter(|&r| r < MIN_LEVEL_TO_SLOPE * slope) {
        if level_is_flat {
            return no_leak(format!(
                "oscillation, not growth: the level moves {} against a {} trend",
                rate(level_rate),
                rate(slope)
            ));
        }
        return undecided(format!(
            "level rises {} but the trend says {}; irregular growth",
            rate(level_rate),
            rate(slope)
        ));
    }

    // Deceleration checks (Theil–Sen slopes of parts of the series): warm-up and caches grow fast
    // and then slow down; a leak keeps its pace. First the collapse of the late slope against the
    // first half; then a halving between the second and the last quarter, which catches curves
    // still bending over (log-like, a cache filling with a long time constant) while an early
    // warm-up followed by a steady leak passes (its second quarter is already straight). The
    // quarter rule also needs the two Sen 95% intervals apart, so noise alone cannot trigger it.
    let trend_of = |range: std::ops::Range<usize>| -> Option<Trend> {
        let (t, y): (Vec<f64>, Vec<f64>) = samples[range].iter().copied().unzip();
        trend(&t, &y)
    };
    if let Some(early) = trend_of(0..n / 2) {
        if early.slope > 0.0 && slope < MIN_LATE_TO_EARLY_SLOPE * early.slope {
            return undecided(format!(
                "growth is slowing down: {} now against {} early; may be a cache still filling",
                rate(slope),
                rate(early.slope)
            ));
        }
    }
    let quarter = n / 4;
    if quarter >= 3 {
        if let (Some(second), Some(last)) = (trend_of(quarter..2 * quarter), trend_of(n - quarter..n)) {
            if last.slope < MIN_LAST_TO_SECOND_QUARTER_SLOPE * second.slope && last.slope_high < second.slope_low {
                return undecided(format!(
                    "growth is bending over: {} in the last quarter against {} in the second",
                    rate(last.slope),
                    rate(second.slope)
                ));
            }
        }
    }

    // A step is not a rate: one allocation that stays (an arena, a buffer made once) makes
    // Mann–Kendall and Theil–Sen see a significant slope across its edge (measured: a 1 MiB
    // pymalloc arena mapped once, 0 for 24 s then 1 MiB, flagged "still growing at 76 KB/s").
    let rises = late_y.windows(2).filter(|w| w[1] > w[0]).count();
    if rises < MIN_LATE_RISES {
        return undecided(format!(
            "grew in one step ({} at once), not steadily: a one-off allocation, or growth too rare to rate",
            crate::report::human_bytes(late_y[late_len - 1] - late_y[0])
        ));
    }

    let reason = format!("still growing at {} until the end (Mann–Kendall p={p:.1e})", rate(slope));
    verdict(VerdictKind::Leak, Some(&late), 1.0 - p, reason)
}

/// Rate of change of the midrange of the first and last third of the window, per second.
fn midrange_rate(t: &[f64], y: &[f64]) -> Option<f64> {
    let block = t.len() / 3;
    if block < 2 {
        return None;
    }
    let midrange = |ys: &[f64]| {
        let (lo, hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        lo / 2.0 + hi / 2.0
    };
    let centre = |ts: &[f64]| ts[0] / 2.0 + ts[ts.len() - 1] / 2.0;
    let last = t.len() - block;
    let dt = centre(&t[last..]) - centre(&t[..block]);
    (dt > 0.0).then(|| (midrange(&y[last..]) - midrange(&y[..block])) / dt)
}

/// NoLeak with its confidence: Mann–Kendall on the series with the floor rate subtracted; if the
/// window grows slower than a leak would, that residual falls, and `p_increasing` of the residual
/// is 1 - p of the test "growth < floor".
fn no_leak(late: &Trend, t: &[f64], y: &[f64], floor_rate: f64, reason: String) -> GrowthVerdict {
    let start = t[0];
    let residual: Vec<f64> = t.iter().zip(y).map(|(ti, yi)| yi - floor_rate * (ti - start)).collect();
    let confidence = trend(t, &residual).map_or(0.0, |r| r.p_increasing);
    verdict(VerdictKind::NoLeak, Some(late), confidence, reason)
}

fn inconclusive(late: Option<&Trend>, reason: String) -> GrowthVerdict {
    verdict(VerdictKind::Inconclusive, late, 0.0, reason)
}

fn verdict(kind: VerdictKind, late: Option<&Trend>, confidence: f64, reason: String) -> GrowthVerdict {
    let (growth, low, high) = late.map_or((0.0, 0.0, 0.0), |l| (l.slope, l.slope_low, l.slope_high));
    GrowthVerdict {
        kind,
        growth_bytes_per_sec: growth,
        growth_low_bytes_per_sec: low,
        growth_high_bytes_per_sec: high,
        confidence: confidence.clamp(0.0, 1.0),
        reason,
    }
}

/// A rate as the report prints it.
fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", crate::report::human_bytes(bytes_per_sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::trend::tests::Noise;

    const MB: f64 = 1.0e6;
    const SEEDS: [u64; 6] = [1, 7, 42, 0xBEEF, 0x1234_5678, 0x9E37_79B9_7F4A_7C15];

    /// 61 samples, one per second, of `f(t)` plus uniform noise of +-`noise`.
    fn series(seed: u64, noise: f64, f: impl Fn(f64) -> f64) -> (Vec<f64>, Vec<f64>) {
        let mut rng = Noise(seed);
        (0..=60).map(|i| i as f64).map(|t| (t, f(t) + noise * rng.next())).unzip()
    }

    fn judge((t, y): &(Vec<f64>, Vec<f64>)) -> GrowthVerdict {
        classify(t, y, &VerdictConfig::default())
    }

    fn sawtooth(t: f64, period: f64, amplitude: f64) -> f64 {
        amplitude * (t.rem_euclid(period) / period)
    }

    #[test]
    fn steady_leaks_are_leak_with_an_accurate_rate() {
        // (base, rate, noise): a fast leak with heavy noise; a slow leak riding on a big level.
        for (base, rate, noise) in [(20.0 * MB, 640_000.0, 2.0 * MB), (50.0 * MB, 200_000.0, 0.5 * MB)] {
            for seed in SEEDS {
                let v = judge(&series(seed, noise, |t| base + rate * t));
                assert_eq!(v.kind, VerdictKind::Leak, "{v:?}");
                assert!((v.growth_bytes_per_sec - rate).abs() < 0.05 * rate, "{v:?}");
                assert!(v.growth_low_bytes_per_sec < rate && rate < v.growth_high_bytes_per_sec);
                assert!(v.confidence > 0.99);
            }
        }
    }

    #[test]
    fn warm_up_then_steady_leak_is_leak() {
        for seed in SEEDS {
            let v =
                judge(&series(seed, 0.5 * MB, |t| 20.0 * MB + 30.0 * MB * (1.0 - (-t / 4.0).exp()) + 200_000.0 * t));
            assert_eq!(v.kind, VerdictKind::Leak, "{v:?}");
        }
    }

    #[test]
    fn warm_up_plateau_and_full_bounded_cache_are_no_leak() {
        for seed in SEEDS {
            let warm_up = judge(&series(seed, 0.5 * MB, |t| 50.0 * MB + 30.0 * MB * (1.0 - (-t / 4.0).exp())));
            assert_eq!(warm_up.kind, VerdictKind::NoLeak, "{warm_up:?}");
            assert!(warm_up.confidence > 0.9, "{warm_up:?}");
            // Linear up to its cap at a third of the recording, then flat.
            let cache = judge(&series(seed, 0.3 * MB, |t| 10.0 * MB + 0.5 * MB * t.min(20.0)));
            assert_eq!(cache.kind, VerdictKind::NoLeak, "{cache:?}");
        }
    }

    #[test]
    fn sawtooth_around_a_constant_is_no_leak_at_every_phase() {
        for period in [3.0, 4.0, 7.0, 10.0] {
            for phase in 0..period as u64 {
                let seed = SEEDS[phase as usize % SEEDS.len()];
                let s = series(seed, 0.1 * MB, |t| 40.0 * MB + sawtooth(t + phase as f64, period, 8.0 * MB));
                let v = judge(&s);
                assert_eq!(v.kind, VerdictKind::NoLeak, "period {period} phase {phase}: {v:?}");
            }
        }
    }

    #[test]
    fn sawtooth_that_fools_mann_kendall_is_no_leak() {
        // Late window = exactly three teeth starting at a trough: the rising edges make Kendall's S
        // significant although the envelope is flat.
        let t: Vec<f64> = (0..60).map(f64::from).collect();
        let y: Vec<f64> = t.iter().map(|&t| 40.0 * MB + sawtooth(t, 10.0, 8.0 * MB)).collect();
        let late = trend(&t[30..], &y[30..]).unwrap();
        assert!(late.p_increasing < 0.01 && late.slope > 0.0, "{late:?}");
        let v = classify(&t, &y, &VerdictConfig::default());
        assert_eq!(v.kind, VerdictKind::NoLeak, "{v:?}");
        assert!(v.reason.contains("oscillation"), "{v:?}");
    }

    #[test]
    fn sawtooth_on_a_linear_rise_is_leak() {
        for (i, seed) in SEEDS.into_iter().enumerate() {
            let s = series(seed, 0.1 * MB, |t| 40.0 * MB + 300_000.0 * t + sawtooth(t + i as f64, 10.0, 3.0 * MB));
            let v = judge(&s);
            assert_eq!(v.kind, VerdictKind::Leak, "{v:?}");
            assert!((v.growth_bytes_per_sec - 300_000.0).abs() < 0.15 * 300_000.0, "{v:?}");
        }
    }

    #[test]
    fn decelerating_growth_is_not_leak() {
        for seed in SEEDS {
            let log = judge(&series(seed, 0.2 * MB, |t| 20.0 * MB + 10.0 * MB * (1.0 + t).ln()));
            assert_eq!(log.kind, VerdictKind::Inconclusive, "{log:?}");
            // A cache still filling: 1 - exp(-t / 30 s) over 60 s.
            let cache = judge(&series(seed, 0.2 * MB, |t| 20.0 * MB + 30.0 * MB * (1.0 - (-t / 30.0).exp())));
            assert_ne!(cache.kind, VerdictKind::Leak, "{cache:?}");
        }
    }

    #[test]
    fn growth_then_release_is_no_leak() {
        for seed in SEEDS {
            let v = judge(&series(seed, 0.2 * MB, |t| 20.0 * MB + if t < 40.0 { 0.5 * MB * t } else { 0.0 }));
            assert_eq!(v.kind, VerdictKind::NoLeak, "{v:?}");
        }
    }

    #[test]
    fn significant_but_tiny_growth_on_a_huge_base_is_no_leak() {
        // +2 KB/s on 1 GB: above the absolute floor, far below 2% of the level.
        let v = judge(&series(3, 1000.0, |t| 1.0e9 + 2000.0 * t));
        assert_eq!(v.kind, VerdictKind::NoLeak, "{v:?}");
        assert!(v.reason.contains("floor"), "{v:?}");
    }

    #[test]
    fn borderline_noisy_growth_is_inconclusive() {
        // Search deterministic noisy series for late windows that are borderline: Mann–Kendall
        // p in [alpha, 0.05), a leak-sized slope and an interval straddling zero.
        let mut seen = 0;
        for seed in 1..400u64 {
            let s = series(seed, 8.0 * MB, |t| 20.0 * MB + 200_000.0 * t);
            let late = trend(&s.0[30..], &s.1[30..]).unwrap();
            let floor = 0.02 * median(&s.1[30..]).unwrap() / 30.0;
            let v = judge(&s);
            if (0.01..0.05).contains(&late.p_increasing) && late.slope_low < 0.0 && late.slope >= floor {
                seen += 1;
                assert_eq!(v.kind, VerdictKind::Inconclusive, "{v:?}");
                assert!(v.reason.contains("too noisy"), "{v:?}");
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn one_step_is_not_a_leak_but_two_steps_can_be() {
        // A 1 MiB block allocated once, 24 s into a 31 s recording (an arena, a lazily built
        // table): significant for Mann–Kendall across the edge, but not a rate.
        let t: Vec<f64> = (0..31).map(f64::from).collect();
        let step: Vec<f64> = t.iter().map(|&t| if t >= 24.0 { MB } else { 0.0 }).collect();
        let v = classify(&t, &step, &VerdictConfig::default());
        assert_eq!(v.kind, VerdictKind::Inconclusive, "{v:?}");
        assert!(v.reason.contains("one step"), "{v:?}");
        // Rare but repeated growth (an arena every 6 s) is judged as before.
        let stairs: Vec<f64> = t.iter().map(|&t| MB * (t / 6.0).floor()).collect();
        assert_eq!(classify(&t, &stairs, &VerdictConfig::default()).kind, VerdictKind::Leak);
    }

    #[test]
    fn degenerate_inputs_never_panic() {
        let cfg = VerdictConfig::default();
        let t: Vec<f64> = (0..20).map(f64::from).collect();
        let few = classify(&t[..5], &[0.0, 1e6, 2e6, 3e6, 4e6], &cfg);
        assert_eq!(few.kind, VerdictKind::Inconclusive);
        assert!(few.reason.contains("too few samples"));
        assert_eq!((few.growth_bytes_per_sec, few.confidence), (0.0, 0.0));
        assert_eq!(classify(&[], &[], &cfg).kind, VerdictKind::Inconclusive);
        assert_eq!(classify(&[1.0], &[5.0], &cfg).kind, VerdictKind::Inconclusive);
        assert_eq!(classify(&t, &[1.0; 3], &cfg).kind, VerdictKind::Inconclusive);
        assert_eq!(classify(&t, &[f64::NAN; 20], &cfg).kind, VerdictKind::Inconclusive);
        assert_eq!(classify(&[3.0; 20], &t, &cfg).kind, VerdictKind::Inconclusive);
        for flat in [0.0, 5.0e7, -1.0] {
            let v = classify(&t, &[flat; 20], &cfg);
            assert_eq!(v.kind, VerdictKind::NoLeak, "{v:?}");
            assert_eq!(v.growth_bytes_per_sec, 0.0);
        }
        // Gaps (NaN, infinities) are dropped; the rest still decides.
        let mut y: Vec<f64> = t.iter().map(|t| 1.0e6 * t).collect();
        y[3] = f64::NAN;
        y[7] = f64::INFINITY;
        assert_eq!(classify(&t, &y, &cfg).kind, VerdictKind::Leak);
        let huge: Vec<f64> = t.iter().map(|t| 1.0e300 * (1.0 + t)).collect();
        assert_eq!(classify(&t, &huge, &cfg).kind, VerdictKind::Leak);
        let extreme: Vec<f64> = (0..20).map(|i| if i % 2 == 0 { f64::MAX } else { -f64::MAX }).collect();
        assert_eq!(classify(&t, &extreme, &cfg).kind, VerdictKind::Inconclusive);
        let zero_cfg = VerdictConfig { min_samples: 0, alpha: f64::NAN, ..cfg };
        let _ = classify(&[0.0, 1.0], &[1.0, 2.0], &zero_cfg);
        let _ = classify(&t, &huge, &zero_cfg);
    }

    #[test]
    fn kinds_serialise_in_kebab_case() {
        for kind in [VerdictKind::Leak, VerdictKind::NoLeak, VerdictKind::Inconclusive] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(VerdictKind::NoLeak.as_str(), "no-leak");
    }
}
