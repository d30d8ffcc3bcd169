//! Censuses of the target's Python heap taken through a recording (`sampler`), kept as series
//! per holder (the containers reached from `sys.modules`) and per type, and judged with the
//! project's trend statistics: a holder whose retained bytes grow steadily is what keeps the
//! memory alive. `lines` finds where the program adds to it.

pub mod lines;
pub mod sampler;

use std::collections::HashMap;

use crate::{
    python::heap::Census,
    report::{CensusSummary, CountPoint, HolderReport, TypeReport},
    trend,
    verdict::{self, VerdictConfig, VerdictKind},
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
}

impl Series {
    fn set(&mut self, index: usize, count: u64, bytes: u64) {
        self.counts.resize(index, f64::NAN);
        self.bytes.resize(index, f64::NAN);
        self.counts.push(count as f64);
        self.bytes.push(bytes as f64);
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
        if census.bounds_hit.is_some() || census.holders_truncated {
            self.truncated += 1;
        }
        for h in &census.holders {
            let series = self.holders.entry(h.path.clone()).or_default();
            series.type_name.clone_from(&h.type_name);
            if h.module_file.is_some() {
                series.module_file.clone_from(&h.module_file);
            }
            if h.defined_at.is_some() {
                series.defined_at.clone_from(&h.defined_at);
            }
            series.set(index, h.length, h.retained_bytes);
        }
        for t in &census.types {
            let series = self.types.entry(t.name.clone()).or_default();
            series.type_name.clone_from(&t.name);
            series.set(index, t.count, t.bytes);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
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
/// files of the recording's stacks, `main_script` the file `__main__` runs.
pub fn report_parts(
    history: &CensusHistory,
    error: Option<String>,
    cfg: &VerdictConfig,
    files: &[String],
    main_script: Option<&str>,
    advisor: &mut crate::advice::StackAdvisor,
) -> (CensusSummary, Vec<HolderReport>, Vec<TypeReport>) {
    let summary = CensusSummary {
        censuses: history.times.len(),
        truncated: history.truncated,
        elapsed_secs: history.elapsed_secs,
        error: if history.is_empty() { error } else { None },
    };
    let mut holders = history.holders(cfg);
    for h in holders.iter_mut().filter(|h| h.flagged) {
        let series = history.holders.get(&h.path);
        let found = match series.and_then(|s| s.defined_at.clone()) {
            // An lru_cache: the decorated function's first line (its decorator) is what fills it.
            Some((file, line)) => advisor.source(&file).and_then(|source| {
                let code = source.lines().nth(line.checked_sub(1)? as usize)?.trim().to_string();
                Some((file, line, code))
            }),
            None => {
                let module = series.and_then(|s| s.module_file.clone()).filter(|_| !h.path.starts_with("__main__."));
                let file = module
                    .filter(|f| advisor.source(f).is_some())
                    .or_else(|| lines::module_file(&h.path, files, main_script).map(str::to_string));
                let Some(file) = file else { continue };
                let Some(source) = advisor.source(&file) else { continue };
                lines::holder_names(&h.path)
                    .into_iter()
                    .find_map(|name| lines::inserting_line(&source, name))
                    .map(|(line, code)| (file, line, code))
            }
        };
        if let Some((file, line, code)) = found {
            h.advice = advisor.advise_line(&file, line);
            h.file = Some(file);
            h.line = Some(line);
            h.code = Some(code);
        }
    }
    (summary, holders, history.types(cfg))
}

struct Judged {
    count_series: Vec<CountPoint>,
    byte_series: Vec<CountPoint>,
    bytes_per_sec: f64,
    count_per_sec: f64,
    flagged: bool,
    reason: String,
}

/// A holder or type is flagged when its bytes grow as a leak does (the verdict rule that judges
/// RSS and stacks: steady, significant, above the floors, not levelling off) and its count grows
/// too (a container whose length is flat but whose bytes grow is an element growing in place, still
/// growth, but a changing count is what an insert-forever bug shows).
fn judge(times: &[f64], s: &Series, cfg: &VerdictConfig) -> Judged {
    let (counts, bytes) = s.padded(times.len());
    let v = verdict::classify(times, &bytes, cfg);
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

    fn census(holders: &[(&str, u64, u64)]) -> Census {
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
