//! Censuses of the target's Python heap taken through a recording (`sampler`), kept as series
//! per holder (the containers reached from `sys.modules`) and per type, and judged with the
//! project's trend statistics: a holder whose retained bytes grow steadily is what keeps the
//! memory alive. `lines` finds where the program adds to it.

mod judge;
pub mod lines;
pub mod monitor;
pub mod sampler;

use std::collections::HashMap;

use judge::judge;

use crate::{
    python::heap::{Census, GcState},
    report::{CensusSummary, CountPoint, GcSummary, HolderReport, TypeReport},
    verdict::VerdictConfig,
};

/// Holders and types listed in a report: the flagged ones first, then the largest.
pub const MAX_LISTED: usize = 20;

/// Per census, per holder path: (type, length, retained bytes); per type name: (count, bytes).
#[derive(Debug, Default, Clone)]
pub struct CensusHistory {
    pub times: Vec<f64>,
    holders: HashMap<String, Series>,
    types: HashMap<String, Series>,
    /// Censuses that stopped at a bound before they saw everything.
    pub truncated: usize,
    /// Seconds the censuses took, all together.
    pub elapsed_secs: f64,
    /// Per census: the GC's own counters (when read), and the objects it tracks (when its lists
    /// were walked: not in a census of lengths only).
    pub gc: Vec<(Option<GcState>, Option<u64>)>,
}

#[derive(Debug, Default, Clone)]
struct Series {
    type_name: String,
    /// Holders: their module's `__file__`, and where the code that fills them is defined.
    module_file: Option<String>,
    defined_at: Option<(String, u32)>,
    /// Items (holders) or objects (types), NaN where this census did not see it.
    counts: Vec<f64>,
    bytes: Vec<f64>,
    /// The most bytes per item a walk cut short by a bound saw (what it reached over the whole
    /// length): a floor for judging the length when no walk of it finished (the biggest holder
    /// of a 1.9 GB heap, walked last, never did within 10 s).
    partial_bytes_per_item: Option<f64>,
}

impl Series {
    /// This census's count and bytes (NaN: not known).
    fn set(&mut self, index: usize, count: u64, bytes: f64) {
        self.counts.resize(index, f64::NAN);
        self.bytes.resize(index, f64::NAN);
        self.counts.push(count as f64);
        self.bytes.push(bytes);
    }

    fn padded(&self, len: usize) -> (Vec<f64>, Vec<f64>) {
        let mut counts = self.counts.clone();
        let mut bytes = self.bytes.clone();
        counts.resize(len, f64::NAN);
        bytes.resize(len, f64::NAN);
        (counts, bytes)
    }
}

impl CensusHistory {
    pub fn push(&mut self, t_secs: f64, census: &Census) {
        let index = self.times.len();
        self.times.push(t_secs);
        self.elapsed_secs += census.elapsed_secs;
        self.gc.push((census.gc.clone(), (!census.lengths_only).then_some(census.objects)));
        if census.bounds_hit.is_some() || census.holders_truncated {
            self.truncated += 1;
        }
        for h in &census.holders {
            // A census of lengths only adds to the holders a full one listed (it lists every
            // container it finds, the full one the most retaining).
            let series = match self.holders.get_mut(&h.path) {
                Some(series) => series,
                None if census.lengths_only => continue,
                None => self.holders.entry(h.path.clone()).or_default(),
            };
            series.type_name.clone_from(&h.type_name);
            if h.module_file.is_some() {
                series.module_file.clone_from(&h.module_file);
            }
            if h.defined_at.is_some() {
                series.defined_at.clone_from(&h.defined_at);
            }
            series.set(index, h.length, if h.retained_unknown { f64::NAN } else { h.retained_bytes as f64 });
            if h.retained_unknown && h.retained_bytes > 0 && h.length > 0 {
                let floor = h.retained_bytes as f64 / h.length as f64;
                series.partial_bytes_per_item = Some(series.partial_bytes_per_item.map_or(floor, |f| f.max(floor)));
            }
        }
        for t in &census.types {
            let series = self.types.entry(t.name.clone()).or_default();
            series.type_name.clone_from(&t.name);
            series.set(index, t.count, t.bytes as f64);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Keeps the last `max` censuses (at least 1): a monitor's memory stays bounded however long
    /// it runs, and its judgement is of the recent past. Series no census kept are dropped.
    pub fn keep_last(&mut self, max: usize) {
        let drop = self.times.len().saturating_sub(max.max(1));
        if drop == 0 {
            return;
        }
        self.times.drain(..drop);
        self.gc.drain(..drop);
        for series in [&mut self.holders, &mut self.types] {
            series.retain(|_, s| {
                s.counts.drain(..drop.min(s.counts.len()));
                s.bytes.drain(..drop.min(s.bytes.len()));
                s.counts.iter().any(|c| c.is_finite())
            });
        }
    }

    /// The latest GC counters read with the objects tracked then (by a census that counted them).
    pub fn latest_gc(&self) -> Option<(&GcState, u64)> {
        self.gc.iter().rev().find_map(|(gc, tracked)| Some((gc.as_ref()?, (*tracked)?)))
    }

    /// The GC over the censuses: collections per generation per second (first to last census
    /// that read the counters), and the tracked objects at each census.
    pub fn gc_summary(&self) -> Option<GcSummary> {
        let read: Vec<(f64, &GcState)> =
            self.times.iter().zip(&self.gc).filter_map(|(&t, (g, _))| Some((t, g.as_ref()?))).collect();
        let (&(t0, first), &(t1, last)) = (read.first()?, read.last()?);
        let span = t1 - t0;
        let collections_per_sec = first
            .generations
            .iter()
            .zip(&last.generations)
            .map(|(a, b)| if span > 0.0 { (b.collections - a.collections).max(0) as f64 / span } else { f64::NAN })
            .collect();
        let tracked_objects = self
            .times
            .iter()
            .zip(&self.gc)
            .filter_map(|(&t, &(_, n))| Some(CountPoint { t_secs: t, value: n? as f64 }))
            .collect();
        Some(GcSummary {
            enabled: last.enabled,
            collections: last.generations.iter().map(|g| g.collections).collect(),
            collections_per_sec,
            uncollectable: last.generations.iter().map(|g| g.uncollectable).sum(),
            tracked_objects,
        })
    }

    /// Every holder judged: flagged ones first (fastest growth first), then the largest.
    pub fn holders(&self, cfg: &VerdictConfig) -> Vec<HolderReport> {
        let mut judged: Vec<HolderReport> = self
            .holders
            .iter()
            .map(|(path, s)| {
                let j = judge(&self.times, s, cfg);
                HolderReport {
                    path: path.clone(),
                    type_name: s.type_name.clone(),
                    length_series: j.count_series,
                    retained_bytes_series: j.byte_series,
                    growth_bytes_per_sec: j.bytes_per_sec,
                    growth_items_per_sec: j.count_per_sec,
                    flagged: j.flagged,
                    reason: j.reason,
                    file: None,
                    line: None,
                    code: None,
                    advice: None,
                }
            })
            .collect();
        order(&mut judged, |h| (h.flagged, h.growth_bytes_per_sec, last(&h.retained_bytes_series)));
        judged.truncate(MAX_LISTED);
        judged
    }

    /// Every type judged the same way (growth of its bytes), ordered as the holders.
    pub fn types(&self, cfg: &VerdictConfig) -> Vec<TypeReport> {
        let mut judged: Vec<TypeReport> = self
            .types
            .iter()
            .map(|(name, s)| {
                let j = judge(&self.times, s, cfg);
                TypeReport {
                    name: name.clone(),
                    count_series: j.count_series,
                    bytes_series: j.byte_series,
                    growth_bytes_per_sec: j.bytes_per_sec,
                    growth_objects_per_sec: j.count_per_sec,
                    flagged: j.flagged,
                    reason: j.reason,
                }
            })
            .collect();
        order(&mut judged, |t| (t.flagged, t.growth_bytes_per_sec, last(&t.bytes_series)));
        judged.truncate(MAX_LISTED);
        judged
    }
}

/// The report's census part: the summary, the holders (each flagged one with the line of its
/// module that adds to it, and that line's leak pattern), and the types. `files` are the Python
/// files of the recording's stacks, `main_script` the file `__main__` runs, `growth_at(file, line)`
/// the bytes a second of the growing stacks with a Python frame at that line (of the lines that add
/// to a holder, the one they pass through is named).
pub fn report_parts(
    history: &CensusHistory,
    error: Option<String>,
    cfg: &VerdictConfig,
    files: &[String],
    main_script: Option<&str>,
    growth_at: &dyn Fn(&str, u32) -> f64,
    advisor: &mut crate::advice::StackAdvisor,
) -> (CensusSummary, Vec<HolderReport>, Vec<TypeReport>) {
    let summary = CensusSummary {
        censuses: history.times.len(),
        truncated: history.truncated,
        elapsed_secs: history.elapsed_secs,
        error: if history.is_empty() { error } else { None },
        gc: history.gc_summary(),
    };
    let mut holders = history.holders(cfg);
    for h in holders.iter_mut().filter(|h| h.flagged) {
        let series = history.holders.get(&h.path);
        let found = match series.and_then(|s| s.defined_at.clone()) {
            // An lru_cache: the decorated function's first line (its decorator) is what fills it.
            Some((file, line)) => advisor.source(&file).and_then(|source| {
                let code = source.lines().nth(line.checked_sub(1)? as usize)?.trim().to_string();
                Some((file, lines::Chosen { line, code, others: 0, stacks_bytes_per_sec: None }))
            }),
            None => {
                // The module's own `__file__` (the script's for `__main__`), when it can be read;
                // else a stack's file of that module, or the script an outermost frame runs.
                let module = series.and_then(|s| s.module_file.clone());
                let file = module
                    .filter(|f| advisor.source(f).is_some())
                    .or_else(|| lines::module_file(&h.path, files, main_script).map(str::to_string));
                let Some(file) = file else { continue };
                let Some(source) = advisor.source(&file) else { continue };
                let candidates = lines::holder_names(&h.path)
                    .into_iter()
                    .map(|name| lines::inserting_lines(&source, name))
                    .find(|lines| !lines.is_empty())
                    .unwrap_or_default();
                lines::growing_line(candidates, |line| growth_at(&file, line)).map(|chosen| (file, chosen))
            }
        };
        if let Some((file, chosen)) = found {
            h.advice = advisor.advise_line(&file, chosen.line).map(|mut advice| {
                advice.evidence.extend(chosen.why());
                advice
            });
            h.file = Some(file);
            h.line = Some(chosen.line);
            h.code = Some(chosen.code);
        }
    }
    (summary, holders, history.types(cfg))
}

fn last(series: &[CountPoint]) -> f64 {
    series.last().map_or(0.0, |p| p.value)
}

/// Flagged first, then by growth (flagged) or size (the rest), largest first.
fn order<T>(items: &mut [T], key: impl Fn(&T) -> (bool, f64, f64)) {
    let rank = |x: &T| {
        let (flagged, growth, size) = key(x);
        let growth = if growth.is_finite() { growth } else { f64::NEG_INFINITY };
        (flagged, if flagged { growth } else { size })
    };
    items.sort_by(|a, b| {
        let (fa, ra) = rank(a);
        let (fb, rb) = rank(b);
        fb.cmp(&fa).then(rb.total_cmp(&ra))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::heap::{fake::census_of, Holder};

    /// A census of these holders (path, length, retained bytes), lists all.
    pub(super) fn census(holders: &[(&str, u64, u64)]) -> Census {
        let mut c = census_of(&[("dict", 10)]);
        c.holders = holders
            .iter()
            .map(|&(path, length, bytes)| Holder {
                path: path.into(),
                type_name: "list".into(),
                length,
                retained_objects: length,
                retained_bytes: bytes,
                ..Default::default()
            })
            .collect();
        c
    }

    #[test]
    fn a_holder_that_keeps_growing_is_flagged_and_a_bounded_one_is_not() {
        let mut h = CensusHistory::default();
        for i in 0..20u64 {
            // A list appended to forever (300 B an item, 40 items a census), and a cache that
            // filled in the first five censuses and stays at its bound.
            let bounded = (i.min(5)) * 100;
            let noise = (i * 7919) % 13;
            h.push(
                i as f64 * 2.0,
                &census(&[("app.views", i * 40, i * 12_000 + noise), ("app.cache", bounded, bounded * 300)]),
            );
        }
        let holders = h.holders(&VerdictConfig::default());
        assert_eq!(holders[0].path, "app.views");
        assert!(holders[0].flagged, "{}", holders[0].reason);
        assert!((holders[0].growth_items_per_sec - 20.0).abs() < 1.0, "{}", holders[0].growth_items_per_sec);
        assert!((holders[0].growth_bytes_per_sec - 6000.0).abs() < 100.0);
        let cache = holders.iter().find(|x| x.path == "app.cache").unwrap();
        assert!(!cache.flagged, "{}", cache.reason);
        assert_eq!(holders[0].length_series.len(), 20);
    }

    #[test]
    fn a_steady_length_is_flagged_in_few_censuses_even_when_its_retained_bytes_are_noisy() {
        let mut h = CensusHistory::default();
        for i in 0..8u64 {
            // Eight censuses in a minute: a dict gaining 150 entries a census whose retained bytes
            // swing by a fifth (objects first reached through another holder in some censuses),
            // beside a cache at its bound whose bytes swing the same way.
            let swing = if i % 2 == 0 { 1.0 } else { 0.8 };
            let leak = 2_000 + i * 150;
            h.push(
                i as f64 * 7.5,
                &census(&[
                    ("app.sessions", leak, (leak as f64 * 240.0 * swing) as u64),
                    ("app.tokens", 4_000, (4_000.0 * 240.0 * swing) as u64),
                ]),
            );
        }
        let holders = h.holders(&VerdictConfig::default());
        assert_eq!(holders[0].path, "app.sessions");
        assert!(holders[0].flagged, "{}", holders[0].reason);
        assert!(holders[0].reason.starts_with("length"), "{}", holders[0].reason);
        let tokens = holders.iter().find(|x| x.path == "app.tokens").unwrap();
        assert!(!tokens.flagged, "{}", tokens.reason);
    }

    #[test]
    fn one_census_that_reached_shared_objects_first_does_not_bend_a_steady_growth() {
        // A dict of 200 lists that grow in place: its length is flat, its bytes climb, and one
        // census's walk counted objects another holder shares.
        let mut h = CensusHistory::default();
        for i in 0..15u64 {
            let bytes = if i == 5 { 6_400_000 } else { 1_540_000 + i * 113_000 };
            h.push(i as f64 * 4.0, &census(&[("app.by_user", 200, bytes)]));
        }
        let holders = h.holders(&VerdictConfig::default());
        assert!(holders[0].flagged, "{}", holders[0].reason);
        // A bounded cache whose walk swings between two levels is not (measured series, KB).
        let mut h = CensusHistory::default();
        for (i, kb) in [87, 118, 116, 114, 85, 85, 78, 86, 115, 103, 106, 108, 114].into_iter().enumerate() {
            h.push(i as f64 * 4.5, &census(&[("app.tokens", 500, kb * 1000)]));
        }
        let holders = h.holders(&VerdictConfig::default());
        assert!(!holders[0].flagged, "{}", holders[0].reason);
        // Nor 200 bounded deques whose walk read more at the end (measured series, KB).
        let mut h = CensusHistory::default();
        for (i, kb) in [689, 669, 625, 674, 673, 665, 669, 626, 671, 627, 714, 730, 776, 734].into_iter().enumerate() {
            h.push(i as f64 * 4.3, &census(&[("app.recent_by_user", 200, kb * 1000)]));
        }
        let holders = h.holders(&VerdictConfig::default());
        assert!(!holders[0].flagged, "{}", holders[0].reason);
        // Nor a list trimmed back to 1000 items whenever it passes 2000 (measured series).
        let lengths = [1007, 1912, 1873, 1765, 1878, 1883, 1961, 1142, 1358, 1206, 1328, 1664, 1396, 1651, 1792, 1881];
        let mut h = CensusHistory::default();
        for (i, n) in lengths.into_iter().enumerate() {
            h.push(i as f64 * 4.0, &census(&[("app.recent", n, n * 200)]));
        }
        let holders = h.holders(&VerdictConfig::default());
        assert!(!holders[0].flagged, "{}", holders[0].reason);
    }

    #[test]
    fn a_length_that_levels_off_is_not_flagged() {
        let mut h = CensusHistory::default();
        for i in 0..12u64 {
            // Warm-up fill then replace: 400 entries a census until 2400, then the same 2400.
            let len = (i * 400).min(2_400);
            h.push(i as f64 * 5.0, &census(&[("app.recent", len, len * 200 + i % 3)]));
        }
        let holders = h.holders(&VerdictConfig::default());
        assert!(!holders[0].flagged, "{}", holders[0].reason);
    }

    #[test]
    fn a_holder_missing_from_some_censuses_is_judged_on_the_ones_that_saw_it() {
        let mut h = CensusHistory::default();
        for i in 0..20u64 {
            let holders: &[(&str, u64, u64)] = if i % 5 == 3 { &[] } else { &[("app.subs", i * 10, i * 5_000)] };
            h.push(i as f64, &census(holders));
        }
        let holders = h.holders(&VerdictConfig::default());
        assert_eq!(holders[0].length_series.len(), 16);
        assert!(holders[0].flagged, "{}", holders[0].reason);
    }

    #[test]
    fn a_big_heap_is_judged_on_lengths_read_between_two_full_censuses() {
        // A 1 GB heap: a full census at 0 s and 30 s (types, retained bytes), lengths alone in
        // between; a list of 2M orders gains 5000 a second (200 B each: 3.6 GB an hour; slower
        // growth of a heap this size is within the verdict's 2% floor over a minute), a cache
        // stays put.
        let mut h = CensusHistory::default();
        for i in 0..40u64 {
            let orders = 2_000_000 + 5_000 * i;
            let mut c = census(&[
                ("app.orders", orders, orders * 200),
                ("app.cache", 5_000, 900_000),
                ("app.events", orders, orders * 30),
            ]);
            // The walk of the last holder is always cut short by a bound: its bytes are a part.
            c.holders[2].retained_unknown = true;
            if i % 30 != 0 {
                c.lengths_only = true;
                c.types.clear();
                c.holders.push(Holder { path: "app.found_later".into(), length: 9, ..Default::default() });
                for holder in &mut c.holders {
                    (holder.retained_bytes, holder.retained_objects, holder.retained_unknown) = (0, 0, true);
                }
            }
            h.push(i as f64, &c);
        }
        let holders = h.holders(&VerdictConfig::default());
        assert_eq!(holders[0].path, "app.orders");
        assert!(holders[0].flagged, "{}", holders[0].reason);
        assert!((holders[0].growth_bytes_per_sec - 1e6).abs() < 10_000.0, "{}", holders[0].growth_bytes_per_sec);
        assert_eq!((holders[0].length_series.len(), holders[0].retained_bytes_series.len()), (40, 2));
        assert!(!holders.iter().find(|x| x.path == "app.cache").unwrap().flagged);
        assert!(holders.iter().all(|x| x.path != "app.found_later"), "only what a full census listed");
        let events = holders.iter().find(|x| x.path == "app.events").unwrap();
        assert!(events.flagged && events.reason.contains("at least"), "{}", events.reason);
        assert!(events.retained_bytes_series.is_empty());
        assert_eq!(h.gc.iter().filter(|(_, tracked)| tracked.is_some()).count(), 2, "objects counted by full ones");
    }

    #[test]
    fn a_monitor_keeps_its_last_censuses_and_forgets_what_they_no_longer_see() {
        let mut h = CensusHistory::default();
        for i in 0..30u64 {
            let holders: &[(&str, u64, u64)] =
                if i < 5 { &[("app.gone", 3, 300), ("app.views", i, i * 100)] } else { &[("app.views", i, i * 100)] };
            h.push(i as f64, &census(holders));
            h.keep_last(10);
        }
        assert_eq!(h.times.len(), 10);
        assert_eq!(h.times[0], 20.0);
        assert_eq!(h.gc.len(), 10);
        let holders = h.holders(&VerdictConfig::default());
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[0].length_series.len(), 10);
        assert_eq!(holders[0].length_series[0].value, 20.0);
    }

    #[test]
    fn the_gc_summary_says_collections_per_second_and_tracked_objects() {
        use crate::python::heap::GenerationState;
        let mut h = CensusHistory::default();
        for i in 0..5i64 {
            let mut c = census(&[]);
            let generation = |collections| GenerationState { collections, ..Default::default() };
            c.gc = Some(GcState {
                enabled: true,
                generations: vec![generation(100 + 50 * i), generation(10 + i), generation(1)],
                ..Default::default()
            });
            c.objects = 1000 + 10 * i as u64;
            h.push(i as f64 * 2.0, &c);
        }
        let gc = h.gc_summary().unwrap();
        assert_eq!(gc.collections, vec![300, 14, 1]);
        assert_eq!(gc.collections_per_sec, vec![25.0, 0.5, 0.0]);
        assert_eq!(gc.tracked_objects.last().unwrap().value, 1040.0);
        assert_eq!(h.latest_gc().unwrap().1, 1040);
    }

    #[test]
    fn types_are_judged_like_holders() {
        let mut h = CensusHistory::default();
        for i in 0..20u64 {
            h.push(i as f64, &census_of(&[("dict", 1000 + i * 50), ("function", 4000)]));
        }
        let types = h.types(&VerdictConfig::default());
        assert_eq!(types[0].name, "dict");
        assert_eq!(types.iter().filter(|t| t.flagged).count(), types.iter().filter(|t| t.name == "dict").count());
    }
}
