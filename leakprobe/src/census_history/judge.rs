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
    let trim = trimmed(&counts);
    let mut v = if by_bytes.kind == VerdictKind::Leak {
        by_bytes
    } else {
        let lengths = if trim.is_some() { running_max(&counts) } else { counts.clone() };
        // Bytes per item from walks that finished, or (a floor) what walks cut short saw.
        let per_item = bytes_per_item(&counts, &bytes)
            .map(|b| (b, false))
            .or(s.partial_bytes_per_item.filter(|b| *b > 0.0).map(|b| (b, true)));
        let by_length = per_item.map(|(per_item, floor)| {
            let scaled: Vec<f64> = lengths.iter().map(|c| c * per_item).collect();
            (verdict::classify(times, &scaled, cfg), floor)
        });
        match by_length {
            Some((mut l, floor)) if l.kind == VerdictKind::Leak => {
                l.reason = if floor {
                    format!(
                        "length {} (in bytes, at least: no walk of what it retains finished within the census's bounds)",
                        l.reason
                    )
                } else {
                    format!("length {}", l.reason)
                };
                l
            }
            _ => by_bytes,
        }
    };
    if let Some((peak, fell_to)) = trim.filter(|_| v.kind == VerdictKind::Leak && !separated(&counts)) {
        v.kind = VerdictKind::NoLeak;
        v.reason = format!(
            "trimmed by the program (its length fell from {peak:.0} to {fell_to:.0} between censuses) and \
             no longer after trimming: its last quarter does not clear its first ({})",
            v.reason
        );
    }
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

/// Where the series fell by a quarter of its peak so far between two censuses (that peak, and
/// what it fell to): the container was trimmed (a leak only inserts). Such a length is judged by
/// its peaks (`running_max`): a list kept between 1000 and 2000 items, censused every 4 s while
/// it refills in 25, read 1007, 1912, ... 1961, 1142, 1358, 1206, ... 1881, a rising late window
/// for the trend test. And it is a leak only when what it keeps after trimming grows: its length's
/// last quarter clears its first (`separated`), whichever series flagged it. The same list
/// refilling in 3.5 s, censused every 2.3 s, read 1056, 1662, 1845, 1376, ... 1259, 1604, 1999,
/// 1579: samples of one sawtooth at random phases, whose bytes' late window "grew" at p = 0.004
/// and whose running maximum climbs towards 2000 as the samples find its teeth' tips.
fn trimmed(values: &[f64]) -> Option<(f64, f64)> {
    let mut peak = f64::NEG_INFINITY;
    values.iter().filter(|v| v.is_finite()).find_map(|&v| {
        let fell = (v < 0.75 * peak).then_some((peak, v));
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
        assert_eq!(trimmed(&lengths), Some((1961.0, 1142.0)));
        let peaks = running_max(&lengths);
        assert_eq!(&peaks[..5], &[1007.0, 1912.0, 1961.0, 1961.0, 1961.0]);
        assert!(peaks[5].is_nan() && peaks[6] == 1961.0);
        assert_eq!(trimmed(&[10.0, 9.0, 12.0, 11.0]), None);
    }

    #[test]
    fn a_trimmed_buffer_read_at_random_phases_is_not_a_leak_and_one_that_keeps_more_after_trims_is() {
        use super::super::{tests::census, CensusHistory};
        // Measured on sid's 3.14 (`scenarios/08_timings.py`): a list trimmed to its last 1000 once
        // it holds 2000, refilling in 3.5 s, censused every 2.3 s, read at random phases; not
        // flagged before either. CI read the same list so that the tips its censuses caught rose
        // through the minute (flagged at 2.8 KB/s): `phased`, every other census a little nearer
        // a tip.
        let lengths = [
            1056, 1662, 1845, 1376, 1896, 1310, 1693, 1493, 1453, 1610, 1032, 1589, 1184, 1872, 1943, 1732, 1098, 1298,
            1469, 1751, 1793, 1259, 1604, 1999, 1579,
        ];
        let kb = [
            203, 319, 355, 264, 363, 252, 323, 287, 280, 309, 198, 303, 227, 207, 206, 331, 211, 250, 283, 337, 345,
            242, 308, 384, 304,
        ];
        let mut h = CensusHistory::default();
        for (i, (&n, &k)) in lengths.iter().zip(&kb).enumerate() {
            let phased = if i % 2 == 0 { 1_040 + 38 * i as u64 } else { 1_000 + (i as u64 * 7919) % 500 };
            // And a buffer trimmed by half whenever it doubles, whose floor climbs.
            let floor = 1_000 + 150 * i as u64;
            let climbing = if i % 3 == 2 { floor } else { floor * 2 - 100 * (i as u64 % 3) };
            h.push(
                i as f64 * 2.4,
                &census(&[
                    ("app.recent", n, k * 1000),
                    ("app.phased", phased, phased * 190),
                    ("app.pending", climbing, climbing * 190),
                ]),
            );
        }
        let holders = h.holders(&VerdictConfig::default());
        let recent = holders.iter().find(|x| x.path == "app.recent").unwrap();
        assert!(!recent.flagged, "{}", recent.reason);
        let phased = holders.iter().find(|x| x.path == "app.phased").unwrap();
        assert!(!phased.flagged, "{}", phased.reason);
        let pending = holders.iter().find(|x| x.path == "app.pending").unwrap();
        assert!(pending.flagged, "{}", pending.reason);
    }
}
