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

/// The holder a report names for asyncio tasks that pile up: no container of the program keeps
/// them, the event loop does, through what each waits on (a timer of `loop._scheduled`, a
/// future's callbacks, a queue's getters).
pub const PENDING_TASKS: &str = "<pending asyncio tasks>";
/// The names of the task type whose objects are counted as pending tasks: asyncio's C tasks, a
/// static type up to 3.11, a heap type (named by its `__qualname__`, as every class) from 3.12.
/// Only where asyncio has no registry of them (3.14): a program's own class named `Task` that
/// piles up is also counted then, after the container that keeps it.
const TASK_TYPES: [&str; 2] = ["_asyncio.Task", "Task"];
/// asyncio's own registries of its tasks (`WeakSet`s: 3.10–3.11 `_all_tasks`, 3.12–3.13
/// `_scheduled_tasks`; the pure-Python module's when the C one is not used): their lengths count
/// the live tasks exactly, where the GC lists' count of a young type swings by tens of thousands
/// between censuses of a busy loop (measured on Debian's 3.11: 30486, 234, 143, ... 47176, 16510
/// tasks while about 85 a second piled up). 3.14 keeps its C tasks in a per-thread list instead,
/// counted by the census (`Census::asyncio_tasks`).
const TASK_REGISTRIES: [&str; 4] = [
    "_asyncio._all_tasks.data",
    "_asyncio._scheduled_tasks.data",
    "asyncio.tasks._all_tasks.data",
    "asyncio.tasks._scheduled_tasks.data",
];

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
    /// 3.14's asyncio tasks counted from the threads' lists of them (`Census::asyncio_tasks`),
    /// with their objects' bytes.
    task_list: Series,
    /// Per GC list (generation), the objects its last complete walk saw.
    last_complete: HashMap<String, u64>,
    /// Censuses whose counts by type were not kept: a broken walk missed much of a list.
    pub short_walks: usize,
}

/// A walk that broke (the list was spliced under it, retries included) and saw this share of
/// the census's objects fewer than the last complete walk of that list did: its counts by type
/// are not kept. A collection of the young generation moves a few hundred objects (a broken walk
/// of it costs nothing); one that breaks the oldest list of a 680,000-object heap saw 98,659
/// (Debian's 3.11 under load), which read as tens of thousands of tasks gone and back.
const SHORT_WALK_SHARE: f64 = 0.01;

#[derive(Debug, Default, Clone)]
struct Series {
    type_name: String,
    /// Holders: their module's `__file__`, and where the code that fills them is defined.
    module_file: Option<String>,
    defined_at: Option<(String, u32)>,
    /// A holder of weak references only (`Holder::weak`).
    weak: bool,
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
        let short = self.short_walk(census);
        self.short_walks += usize::from(short);
        let tracked = (!census.lengths_only && !short).then_some(census.objects);
        self.gc.push((census.gc.clone(), tracked));
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
            series.weak |= h.weak;
            series.set(index, h.length, if h.retained_unknown { f64::NAN } else { h.retained_bytes as f64 });
            if h.retained_unknown && h.retained_bytes > 0 && h.length > 0 {
                let floor = h.retained_bytes as f64 / h.length as f64;
                series.partial_bytes_per_item = Some(series.partial_bytes_per_item.map_or(floor, |f| f.max(floor)));
            }
        }
        if let Some((tasks, bytes)) = census.asyncio_tasks {
            self.task_list.set(index, tasks, bytes as f64);
        }
        for t in census.types.iter().filter(|_| !short) {
            let series = self.types.entry(t.name.clone()).or_default();
            series.type_name.clone_from(&t.name);
            series.set(index, t.count, t.bytes as f64);
        }
    }

    /// Whether a broken walk of one of `census`'s lists missed much of it (`SHORT_WALK_SHARE`);
    /// remembers each complete walk's count.
    fn short_walk(&mut self, census: &Census) -> bool {
        let mut short = false;
        for walk in &census.lists {
            if walk.complete {
                self.last_complete.insert(walk.generation.clone(), walk.objects);
                continue;
            }
            if !walk.broken {
                continue; // stopped by a bound: the census says so on its own (`truncated`)
            }
            let before = self.last_complete.get(&walk.generation).copied().unwrap_or(0);
            short |= before.saturating_sub(walk.objects) as f64 > SHORT_WALK_SHARE * census.objects.max(1) as f64;
        }
        short
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
        let tasks = &mut self.task_list;
        tasks.counts.drain(..drop.min(tasks.counts.len()));
        tasks.bytes.drain(..drop.min(tasks.bytes.len()));
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

    /// Every holder judged: flagged ones first (fastest growth first), then the largest. A holder
    /// of weak references is not flagged (what it refers to is kept elsewhere); tasks piling up
    /// are a holder of their own (`PENDING_TASKS`, judged on asyncio's registry of them, else on
    /// the count of their type), after the containers that keep memory.
    pub fn holders(&self, cfg: &VerdictConfig) -> Vec<HolderReport> {
        let mut judged: Vec<HolderReport> = self
            .holders
            .iter()
            .map(|(path, s)| {
                let j = judge(&self.times, s, cfg);
                let (flagged, reason) = if s.weak && j.flagged {
                    (false, format!("holds weak references only, which keep nothing alive ({})", j.reason))
                } else {
                    (j.flagged, j.reason)
                };
                HolderReport {
                    path: path.clone(),
                    type_name: s.type_name.clone(),
                    length_series: j.count_series,
                    retained_bytes_series: j.byte_series,
                    growth_bytes_per_sec: j.bytes_per_sec,
                    growth_items_per_sec: j.count_per_sec,
                    flagged,
                    reason,
                    file: None,
                    line: None,
                    code: None,
                    advice: None,
                    weak: s.weak,
                    inferred: false,
                }
            })
            .collect();
        // 3.14's thread lists first: there an empty pure-Python `asyncio.tasks._scheduled_tasks`
        // may be listed too, and counts nothing.
        let task_list = Some(&self.task_list).filter(|s| s.counts.iter().any(|c| c.is_finite()));
        let registry = task_list.or_else(|| TASK_REGISTRIES.iter().find_map(|path| self.holders.get(*path)));
        let counted = || TASK_TYPES.iter().find_map(|name| Some((*name, self.types.get(*name)?)));
        let tasks = match registry {
            Some(series) => Some((TASK_TYPES[0], series)),
            None => counted(),
        };
        if let Some((task_type, tasks)) = tasks {
            let j = judge(&self.times, tasks, cfg);
            if j.flagged {
                judged.push(HolderReport {
                    path: PENDING_TASKS.into(),
                    type_name: task_type.into(),
                    length_series: j.count_series,
                    retained_bytes_series: j.byte_series,
                    growth_bytes_per_sec: j.bytes_per_sec,
                    growth_items_per_sec: j.count_per_sec,
                    flagged: true,
                    reason: format!("asyncio tasks pile up, each kept alive by what it waits on: {}", j.reason),
                    file: None,
                    line: None,
                    code: None,
                    advice: None,
                    weak: false,
                    inferred: true,
                });
            }
        }
        let tier = |h: &HolderReport| match (h.flagged, h.inferred) {
            (true, false) => 2,
            (true, true) => 1,
            _ => 0,
        };
        order(&mut judged, |h| (tier(h), h.growth_bytes_per_sec, last(&h.retained_bytes_series)));
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
        order(&mut judged, |t| (u8::from(t.flagged), t.growth_bytes_per_sec, last(&t.bytes_series)));
        judged.truncate(MAX_LISTED);
        judged
    }
}

/// The report's census part: the summary, the holders (each flagged one with the line of its
/// module that adds to it, and that line's leak pattern), and the types. `files` are the Python
/// files of the recording's stacks, `main_script` the file `__main__` runs, `growth_at(file, line)`
/// the bytes a second of the growing stacks with a Python frame at that line (of the lines that add
/// to a holder, the one they pass through is named). `task_line` is where the fastest growing
/// stack that creates an asyncio task does so (`lines::task_creation_line`): the line of
/// `PENDING_TASKS`, else the most confident dropped task in the files of the stacks.
#[allow(clippy::too_many_arguments)]
pub fn report_parts(
    history: &CensusHistory,
    error: Option<String>,
    cfg: &VerdictConfig,
    files: &[String],
    main_script: Option<&str>,
    growth_at: &dyn Fn(&str, u32) -> f64,
    task_line: Option<(String, u32)>,
    advisor: &mut crate::advice::StackAdvisor,
) -> (CensusSummary, Vec<HolderReport>, Vec<TypeReport>) {
    let summary = CensusSummary {
        censuses: history.times.len(),
        truncated: history.truncated,
        short_walks: history.short_walks,
        elapsed_secs: history.elapsed_secs,
        error: if history.is_empty() { error } else { None },
        gc: history.gc_summary(),
    };
    let mut holders = history.holders(cfg);
    for h in holders.iter_mut().filter(|h| h.flagged) {
        let series = history.holders.get(&h.path);
        if h.inferred {
            let found = task_line.clone().or_else(|| dropped_task(files, advisor));
            let code = found.as_ref().and_then(|(file, line)| source_line(advisor, file, *line));
            if let (Some((file, line)), Some(code)) = (found, code) {
                h.advice = advisor.advise_line(&file, line);
                (h.file, h.line, h.code) = (Some(file), Some(line), Some(code));
            }
            continue;
        }
        let found = match series.and_then(|s| s.defined_at.clone()) {
            // An lru_cache: the decorated function's first line (its decorator) is what fills it.
            Some((file, line)) => source_line(advisor, &file, line)
                .map(|code| (file, lines::Chosen { line, code, others: 0, stacks_bytes_per_sec: None })),
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

/// Line `line` (1-based) of `file`, trimmed, when its source can be read.
fn source_line(advisor: &mut crate::advice::StackAdvisor, file: &str, line: u32) -> Option<String> {
    Some(advisor.source(file)?.lines().nth(line.checked_sub(1)? as usize)?.trim().to_string())
}

/// The most confident task created and dropped (`leakprobe scan`'s dropped_task) in the program's
/// own files among `files` (not the standard library's or an installed package's).
fn dropped_task(files: &[String], advisor: &mut crate::advice::StackAdvisor) -> Option<(String, u32)> {
    let own = files.iter().filter(|f| !crate::advice::stack::is_library(f));
    own.filter_map(|f| {
        let best = advisor.leaks_of(f, crate::advice::PatternId::DroppedTask).into_iter().next()?;
        Some((best.confidence, f.clone(), best.line))
    })
    .max_by(|a, b| a.0.total_cmp(&b.0))
    .map(|(_, file, line)| (file, line))
}

fn last(series: &[CountPoint]) -> f64 {
    series.last().map_or(0.0, |p| p.value)
}

/// The highest tier first (0: not flagged), then by growth (flagged) or size (the rest), largest
/// first.
fn order<T>(items: &mut [T], key: impl Fn(&T) -> (u8, f64, f64)) {
    let rank = |x: &T| {
        let (tier, growth, size) = key(x);
        let growth = if growth.is_finite() { growth } else { f64::NEG_INFINITY };
        (tier, if tier > 0 { growth } else { size })
    };
    items.sort_by(|a, b| {
        let (fa, ra) = rank(a);
        let (fb, rb) = rank(b);
        fb.cmp(&fa).then(rb.total_cmp(&ra))
    });
}

#[cfg(test)]
mod tests;
