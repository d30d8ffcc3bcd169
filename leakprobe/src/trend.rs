//! Robust trend statistics for one time series (pure functions, no I/O).
//!
//! Memory samples are noisy in ways least squares handles badly: allocator and GC churn produce
//! spikes and sawtooths, and a single snapshot taken mid-burst can be far off. So the slope is the
//! Theil–Sen estimator (median of all pairwise slopes, breakdown point ~29%), its 95% confidence
//! interval is Sen's (1968) rank-based interval, and significance comes from the Mann–Kendall test
//! (Kendall's S with the tie-corrected variance and a continuity correction). None of these assume
//! normal noise; they only use the order of the samples.

use serde::Serialize;

/// Above this many points the series is thinned evenly before the O(n²) pairwise work, which keeps
/// it to ~2 million slopes (a few tens of milliseconds) whatever the recording length.
pub const MAX_POINTS: usize = 2000;

/// The 97.5% quantile of the standard normal: two-sided 95% for Sen's interval.
const Z_0975: f64 = 1.959_963_984_540_054;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Trend {
    /// Points used (after even thinning when the input had more than `MAX_POINTS`).
    pub n: usize,
    /// Theil–Sen slope: median of the pairwise slopes, in units of y per unit of t.
    pub slope: f64,
    /// Median of `y_i - slope * t_i`.
    pub intercept: f64,
    /// Sen's 95% confidence interval of the slope (ranks from the Mann–Kendall variance).
    pub slope_low: f64,
    pub slope_high: f64,
    /// Kendall's S: concordant minus discordant pairs of (t, y).
    pub mann_kendall_s: f64,
    /// Standard score of S, continuity-corrected, with the variance corrected for ties in y.
    pub mann_kendall_z: f64,
    /// One-sided p-value of the Mann–Kendall test for H1: y increases monotonically with t.
    pub p_increasing: f64,
}

/// Trend of `y` against `t`. `None` if the lengths differ, there are fewer than 3 points, a value
/// is not finite, every `t` is equal (no slope exists), or the values are so large the slopes
/// overflow. `t` need not be sorted; pairs with equal `t` are skipped for the slope.
pub fn trend(t: &[f64], y: &[f64]) -> Option<Trend> {
    if t.len() != y.len() || t.len() < 3 || t.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    let (t, y) = thin_evenly(t, y, MAX_POINTS);
    let n = t.len();

    let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
    let mut kendall_s: i64 = 0;
    for i in 0..n {
        for j in (i + 1)..n {
            let dt = t[j] - t[i];
            let dy = y[j] - y[i];
            // Kendall's S over pairs ordered by t: +1 concordant, -1 discordant, 0 for any tie.
            kendall_s += sign(dt) * sign(dy);
            if dt != 0.0 {
                slopes.push(dy / dt);
            }
        }
    }
    if slopes.is_empty() || slopes.iter().any(|s| !s.is_finite()) {
        return None;
    }
    slopes.sort_unstable_by(f64::total_cmp);
    let slope = median_of_sorted(&slopes);
    let residuals: Vec<f64> = t.iter().zip(&y).map(|(ti, yi)| yi - slope * ti).collect();
    let intercept = median(&residuals)?;

    let variance = mann_kendall_variance(n, &y);
    let s = kendall_s as f64;
    let z = if variance <= 0.0 {
        0.0
    } else if s > 0.0 {
        (s - 1.0) / variance.sqrt()
    } else if s < 0.0 {
        (s + 1.0) / variance.sqrt()
    } else {
        0.0
    };

    // Sen (1968) / Gilbert (1987): with N slopes and C = z_{0.975} * sqrt(Var S), the interval is
    // bounded by the M1-th and (M2+1)-th smallest slopes, M1 = (N - C)/2, M2 = (N + C)/2.
    let half_width_in_ranks = Z_0975 * variance.max(0.0).sqrt();
    let count = slopes.len() as f64;
    let slope_low = value_at_rank(&slopes, (count - half_width_in_ranks) / 2.0);
    let slope_high = value_at_rank(&slopes, (count + half_width_in_ranks) / 2.0 + 1.0);

    let result = Trend {
        n,
        slope,
        intercept,
        slope_low,
        slope_high,
        mann_kendall_s: s,
        mann_kendall_z: z,
        p_increasing: 1.0 - normal_cdf(z),
    };
    result.intercept.is_finite().then_some(result)
}

/// Variance of Kendall's S under H0 (no trend), reduced for groups of tied y values:
/// [n(n-1)(2n+5) - Σ g(g-1)(2g+5)] / 18.
fn mann_kendall_variance(n: usize, y: &[f64]) -> f64 {
    let term = |g: f64| g * (g - 1.0) * (2.0 * g + 5.0);
    let mut sorted = y.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let mut ties = 0.0;
    let mut start = 0;
    for end in 1..=sorted.len() {
        if end == sorted.len() || sorted[end] != sorted[start] {
            ties += term((end - start) as f64);
            start = end;
        }
    }
    (term(n as f64) - ties) / 18.0
}

/// Keeps `max_points` evenly spaced points (always the first and the last) of a long series.
fn thin_evenly(t: &[f64], y: &[f64], max_points: usize) -> (Vec<f64>, Vec<f64>) {
    let n = t.len();
    if n <= max_points {
        return (t.to_vec(), y.to_vec());
    }
    let step = (n - 1) as f64 / (max_points - 1) as f64;
    (0..max_points).map(|k| ((k as f64 * step).round() as usize).min(n - 1)).map(|i| (t[i], y[i])).unzip()
}

fn sign(v: f64) -> i64 {
    if v > 0.0 {
        1
    } else if v < 0.0 {
        -1
    } else {
        0
    }
}

/// Value at a 1-based, possibly fractional rank of ascending `sorted` (linear interpolation,
/// clamped to the ends).
fn value_at_rank(sorted: &[f64], rank: f64) -> f64 {
    let last = sorted.len() - 1;
    let position = (rank - 1.0).clamp(0.0, last as f64);
    let below = position.floor() as usize;
    let above = (below + 1).min(last);
    let fraction = position - below as f64;
    sorted[below] + fraction * (sorted[above] - sorted[below])
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        // Halves before adding so two huge values cannot overflow.
        sorted[mid - 1] / 2.0 + sorted[mid] / 2.0
    }
}

/// Median of `values`; `None` if empty. NaNs sort last (IEEE total order) rather than panicking.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    Some(median_of_sorted(&sorted))
}

/// Standard normal CDF Φ(z) = erfc(-z/√2)/2.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Complementary error function, Chebyshev fit from Numerical Recipes (`erfcc`): fractional error
/// below 1.2e-7 everywhere, including far tails where `1 - erf` would cancel to 0.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let tail = t * poly.exp();
    if x >= 0.0 {
        tail
    } else {
        2.0 - tail
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic xorshift64 noise, uniform in [-1, 1).
    pub(crate) struct Noise(pub(crate) u64);
    impl Noise {
        pub(crate) fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    fn times(n: usize) -> Vec<f64> {
        (0..n).map(|i| i as f64).collect()
    }

    #[test]
    fn exact_slope_and_intercept_on_a_line() {
        let t = times(20);
        let y: Vec<f64> = t.iter().map(|t| 3.5 * t - 7.0).collect();
        let tr = trend(&t, &y).unwrap();
        assert_eq!(tr.n, 20);
        assert!((tr.slope - 3.5).abs() < 1e-12);
        assert!((tr.intercept + 7.0).abs() < 1e-9);
        assert!((tr.slope_low - 3.5).abs() < 1e-12 && (tr.slope_high - 3.5).abs() < 1e-12);
        assert_eq!(tr.mann_kendall_s, 190.0); // all 20*19/2 pairs concordant
        assert!(tr.p_increasing < 1e-6);
    }

    #[test]
    fn unsorted_time_gives_the_same_trend() {
        let t = vec![4.0, 0.0, 2.0, 1.0, 3.0];
        let y: Vec<f64> = t.iter().map(|t| 2.0 * t + 1.0).collect();
        let tr = trend(&t, &y).unwrap();
        assert!((tr.slope - 2.0).abs() < 1e-12);
        assert_eq!(tr.mann_kendall_s, 10.0);
    }

    #[test]
    fn outliers_barely_move_theil_sen_unlike_least_squares() {
        let t = times(50);
        let mut y: Vec<f64> = t.iter().map(|t| 1000.0 * t).collect();
        for i in [5, 17, 30, 44] {
            y[i] += 1.0e7; // spikes 200x the whole series' rise
        }
        let tr = trend(&t, &y).unwrap();
        assert!((tr.slope - 1000.0).abs() / 1000.0 < 0.05, "slope {}", tr.slope);
        // Ordinary least squares on the same data, for contrast.
        let (mt, my) = (t.iter().sum::<f64>() / 50.0, y.iter().sum::<f64>() / 50.0);
        let cov: f64 = t.iter().zip(&y).map(|(t, y)| (t - mt) * (y - my)).sum();
        let var: f64 = t.iter().map(|t| (t - mt) * (t - mt)).sum();
        assert!((cov / var - 1000.0).abs() / 1000.0 > 0.5, "ols {}", cov / var);
    }

    #[test]
    fn mann_kendall_detects_noisy_increase() {
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        let t = times(40);
        let y: Vec<f64> = t.iter().map(|t| 10.0 * t + 100.0 * noise.next()).collect();
        let tr = trend(&t, &y).unwrap();
        assert!(tr.p_increasing < 0.01, "p {}", tr.p_increasing);
        assert!(tr.slope_low < 10.0 && 10.0 < tr.slope_high, "{tr:?}");
        assert!(tr.slope_low > 0.0);
    }

    #[test]
    fn white_noise_is_not_significant() {
        let mut noise = Noise(12345);
        let t = times(60);
        let y: Vec<f64> = t.iter().map(|_| 1.0e6 + 1.0e4 * noise.next()).collect();
        let tr = trend(&t, &y).unwrap();
        assert!(tr.p_increasing > 0.05 && tr.p_increasing < 0.95, "p {}", tr.p_increasing);
        assert!(tr.slope_low < 0.0 && tr.slope_high > 0.0, "{tr:?}");
    }

    #[test]
    fn ties_reduce_the_variance_and_constant_series_is_neutral() {
        let t = times(10);
        let constant = vec![5.0; 10];
        let tr = trend(&t, &constant).unwrap();
        assert_eq!(tr.slope, 0.0);
        assert_eq!(tr.mann_kendall_s, 0.0);
        assert_eq!(tr.mann_kendall_z, 0.0);
        assert!((tr.p_increasing - 0.5).abs() < 1e-6);

        // Steps with ties: variance must be below the no-tie value n(n-1)(2n+5)/18.
        let steps = vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0];
        let no_ties = 10.0 * 9.0 * 25.0 / 18.0;
        let tied = mann_kendall_variance(10, &steps);
        assert!((tied - (no_ties - (2.0 * 3.0 * 2.0 * 11.0 + 4.0 * 3.0 * 13.0) / 18.0)).abs() < 1e-9);
        let tr = trend(&t, &steps).unwrap();
        assert_eq!(tr.mann_kendall_s, 33.0); // 45 pairs minus 3*3 + 6 tied pairs
        assert!((tr.mann_kendall_z - 32.0 / tied.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn equal_times_are_skipped_and_degenerate_input_is_none() {
        let tr = trend(&[0.0, 0.0, 1.0, 1.0], &[0.0, 2.0, 1.0, 3.0]).unwrap();
        assert!((tr.slope - 1.0).abs() < 1e-12, "{tr:?}");
        assert!(trend(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_none());
        assert!(trend(&[], &[]).is_none());
        assert!(trend(&[0.0, 1.0], &[0.0, 1.0]).is_none());
        assert!(trend(&[0.0, 1.0, 2.0], &[0.0, 1.0]).is_none());
        assert!(trend(&[0.0, 1.0, 2.0], &[0.0, f64::NAN, 1.0]).is_none());
        assert!(trend(&[0.0, f64::INFINITY, 2.0], &[0.0, 1.0, 1.0]).is_none());
        assert!(trend(&[0.0, 1.0, 2.0], &[-f64::MAX, f64::MAX, 0.0]).is_none()); // overflow
        let huge = trend(&[0.0, 1.0, 2.0], &[1e300, 2e300, 3e300]).unwrap();
        assert!((huge.slope - 1e300).abs() / 1e300 < 1e-12);
    }

    #[test]
    fn long_series_is_thinned_and_keeps_the_slope() {
        let t: Vec<f64> = (0..5000).map(|i| i as f64 * 0.5).collect();
        let y: Vec<f64> = t.iter().map(|t| 42.0 * t + 7.0).collect();
        let tr = trend(&t, &y).unwrap();
        assert_eq!(tr.n, MAX_POINTS);
        assert!((tr.slope - 42.0).abs() < 1e-9);
    }

    #[test]
    fn normal_cdf_matches_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_963_985) - 0.975).abs() < 1e-7);
        assert!((normal_cdf(-2.326_347_874) - 0.01).abs() < 1e-7);
        assert!(normal_cdf(-40.0) >= 0.0 && normal_cdf(40.0) <= 1.0);
        assert!((erfc(1.0) - 0.157_299_207_050_285_1).abs() < 1e-7);
    }
}
