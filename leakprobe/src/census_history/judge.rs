//! The judgement of one holder's or type's census series: the verdict rule that judges RSS and
//! stacks, applied to the retained bytes (despiked, and separated from their start) or to the
//! exact length (by its peaks when the container is trimmed).

use super::Series;
use crate::{
    report::CountPoint,
    trend,
    verdict::{self, VerdictConfig, VerdictKind},
};

pub(super) struct Judged {
    pub(super) count_series: Vec<CountPoint>,
    pub(super) byte_series: Vec<CountPoint>,
    pub(super) bytes_per_sec: f64,
    pub(super) count_per_sec: f64,
    pub(super) flagged: bool,
    pub(super) reason: String,
}

/// A holder or type is flagged when it grows as a leak does (the verdict rule that judges RSS and
/// stacks: steady, significant, above the floors, not levelling off), judged on its bytes or on its
/// length. The length is exact (a container's own size field, an object count) where the retained
/// bytes are a walk over a heap that moves under it, so a steady insert-forever shows in the
/// length with fewer censuses; it is judged in bytes (each item at the series' median bytes per
/// item) so that the same floors apply. Its retained bytes are not asked to agree: which holder
/// first reaches a shared object changes between censuses (measured: a dict of 17k-36k carts
/// retained 13, 22, 5.5, ... 10 MB), so they can even end below their start while the length
/// climbs steadily. A container whose length is flat but whose bytes grow (an element growing in
/// place) is flagged on its bytes, with isolated spikes taken out first: one census whose walk
/// reached shared objects through it first (measured: a dict of growing lists read 1.5, 1.7, ...
/// 2.1, 6.4, 2.3, ... 3.1 MB, called "bending over" for that one point).
pub(super) fn judge(times: &[f64], s: &Series, cfg: &VerdictConfig) -> Judged {
    let (counts, bytes) = s.padded(times.len());
    let smooth = despiked(&bytes);
    let mut by_bytes = verdict::classify(times, &smooth, cfg);
    if by_bytes.kind == VerdictKind::Leak && !separated(&smooth) {
        by_bytes.kind = VerdictKind::Inconclusive;
        by_bytes.reason =
            format!("retained bytes swing: their last quarter does not clear their first ({})", by_bytes.reason);
    }
    let v = if by_bytes.kind == VerdictKind::Leak {
        by_bytes
    } else {
        let lengths = if trimmed(&counts) { running_max(&counts) } else { counts.clone() };
        let by_length = bytes_per_item(&counts, &bytes).map(|per_item| {
            let scaled: Vec<f64> = lengths.iter().map(|c| c * per_item).collect();
            verdict::classify(times, &scaled, cfg)
        });
        match by_length {
            Some(mut l) if l.kind == VerdictKind::Leak => {
                l.reason = format!("length {}", l.reason);
                l
            }
            _ => by_bytes,
        }
    };
    let (t, c): (Vec<f64>, Vec<f64>) =
        times.iter().zip(&counts).filter(|(_, c)| c.is_finite()).map(|(&t, &c)| (t, c)).unzip();
    let count_per_sec = trend::trend(&t, &c).map_or(f64::NAN, |tr| tr.slope);
    let points = |values: &[f64]| {
        times
            .iter()
            .zip(values)
            .filter(|(_, v)| v.is_finite())
            .map(|(&t, &v)| CountPoint { t_secs: t, value: v })
            .collect()
    };
    Judged {
        count_series: points(&counts),
        byte_series: points(&bytes),
        bytes_per_sec: v.growth_bytes_per_sec,
        count_per_sec,
        flagged: v.kind == VerdictKind::Leak,
        reason: v.reason,
    }
}

/// Whether the series fell by a quarter of its peak so far between two censuses: the container
/// was trimmed (a leak only inserts). Such a length is judged by its peaks (`running_max`): a
/// list kept between 1000 and 2000 items, censused every 4 s while it refills in 25, read 1007,
/// 1912, ... 1961, 1142, 1358, 1206, ... 1881, a rising late window for the trend test.
fn trimmed(values: &[f64]) -> bool {
    let mut peak = f64::NEG_INFINITY;
    values.iter().filter(|v| v.is_finite()).any(|&v| {
        let fell = v < 0.75 * peak;
        peak = peak.max(v);
        fell
    })
}

/// Each value replaced by the largest so far (missing values stay missing).
fn running_max(values: &[f64]) -> Vec<f64> {
    let mut peak = f64::NEG_INFINITY;
    values
        .iter()
        .map(|&v| {
            if v.is_finite() {
                peak = peak.max(v);
                peak
            } else {
                v
            }
        })
        .collect()
}

/// Whether the last quarter of the values lies wholly above the first, by a quarter of it: what
/// retained bytes must show before they alone call a container a leak. A walk's bytes swing
/// between levels (which holder reaches a shared object first): measured on a bounded TTLCache of
/// 500 sessions, 87, 118, 116, 114, 85, 85, 78, 86, 115, ... 114 KB, and on 200 `deque(maxlen=20)`
/// 689, 669, 625, ... 627, 714, 730, 776, 734 KB: rising late windows for the trend test, within
/// a quarter of the first values. (A dict of growing lists read 1.3 MB rising to 2.8 MB.)
fn separated(values: &[f64]) -> bool {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let quarter = (finite.len() / 4).max(2);
    if finite.len() < 2 * quarter {
        return false;
    }
    let early = finite[..quarter].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let late = finite[finite.len() - quarter..].iter().copied().fold(f64::INFINITY, f64::min);
    late > early * SEPARATION
}

/// How far above its first quarter the last quarter of a retained-bytes series must lie.
const SEPARATION: f64 = 1.25;

/// Each value replaced by the median of itself and its neighbours (a running median of three:
/// a single outlier goes, a trend or a step stays); the ends and missing values are kept.
fn despiked(values: &[f64]) -> Vec<f64> {
    let mut out = values.to_vec();
    for i in 1..values.len().saturating_sub(1) {
        let mut w = [values[i - 1], values[i], values[i + 1]];
        if w.iter().all(|v| v.is_finite()) {
            w.sort_by(f64::total_cmp);
            out[i] = w[1];
        }
    }
    out
}

/// The median of bytes / length over the censuses that saw a non-empty series.
fn bytes_per_item(counts: &[f64], bytes: &[f64]) -> Option<f64> {
    let ratios: Vec<f64> = counts
        .iter()
        .zip(bytes)
        .filter(|(c, b)| c.is_finite() && b.is_finite() && **c > 0.0)
        .map(|(c, b)| b / c)
        .collect();
    trend::median(&ratios).filter(|r| *r > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_median_takes_out_one_spike_and_keeps_missing_values() {
        let d = despiked(&[1.0, 2.0, 9.0, 4.0, f64::NAN, 6.0]);
        assert_eq!(&d[..4], &[1.0, 2.0, 4.0, 4.0]);
        assert!(d[4].is_nan() && d[5] == 6.0);
    }

    #[test]
    fn a_trimmed_series_is_judged_by_its_peaks() {
        let lengths = [1007.0, 1912.0, 1961.0, 1142.0, 1358.0, f64::NAN, 1881.0];
        assert!(trimmed(&lengths));
        let peaks = running_max(&lengths);
        assert_eq!(&peaks[..5], &[1007.0, 1912.0, 1961.0, 1961.0, 1961.0]);
        assert!(peaks[5].is_nan() && peaks[6] == 1961.0);
        assert!(!trimmed(&[10.0, 9.0, 12.0, 11.0]));
    }
}
