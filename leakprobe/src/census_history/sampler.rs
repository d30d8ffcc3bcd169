//! Censuses taken on a thread of their own, so a census (hundreds of milliseconds on a big heap)
//! never delays a sampling loop or a window's close. One thread takes them in turn for every
//! process it is given (`record` gives it one, `watch` one, the agent every Python process on
//! the node), the most overdue process first. Reads only (process_vm_readv): the targets pay no
//! CPU for them. leakprobe's own CPU is bounded by pausing after each census a multiple of its
//! duration: 4× in `record` and `watch` (a fifth of a core; measured: 9× left 5-7 censuses a
//! minute on a busy 2-core machine, too few for the trend test), 19× in the agent (a twentieth
//! of a core for the whole node, its processes taking turns).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::CensusHistory;
use crate::python::{
    heap::{take_census, Bounds, Interpreter},
    memory::RemoteMemory,
};

/// What one census may take beside a monitor: seconds, not the CLI's tens.
pub fn recording_bounds() -> Bounds {
    Bounds { max_duration: Duration::from_secs(2), max_holders: 200, ..Bounds::default() }
}

/// A census that takes this long (or stops at a bound) is of a big heap: until the next full one
/// is due, the holders' lengths are read on their own between them (`lengths_between`). Measured:
/// a 1 GB heap's census took 7.1 s, its type count alone 1.9 s, its lengths a few milliseconds;
/// the scenario apps' 0.3-0.6 s.
const LONG_CENSUS: Duration = Duration::from_millis(1500);

/// What a census of lengths only may take.
const LENGTHS_BOUND: Duration = Duration::from_secs(1);

/// How often each process is counted, within what bounds, and how much of it is kept.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// At least this long between two censuses of one process.
    pub interval: Duration,
    pub bounds: Bounds,
    /// Censuses kept per process: all of them through a recording, the last N for a monitor
    /// that never ends (`watch`, the agent), so its memory stays bounded.
    pub max_censuses: Option<usize>,
    /// A census is followed by a pause of this many times its duration, for every process:
    /// leakprobe's census thread uses at most 1/(1 + spacing) of a core.
    pub spacing: u32,
}

impl Schedule {
    /// A recording's: a census every `interval` (or 5× its duration), all kept. It may take up
    /// to 10 s and 30M objects (a 1 GB heap's took 7-8 s; its holders retained 10M objects, one
    /// more than the CLI's bound, which left the biggest one's bytes unknown): the holders'
    /// lengths are read between two long ones.
    pub fn recording(interval: Duration) -> Schedule {
        let bounds = Bounds { max_duration: Duration::from_secs(10), max_objects: 30_000_000, ..recording_bounds() };
        Schedule { interval, bounds, max_censuses: None, spacing: 4 }
    }

    /// A monitor's: a census of each process every `interval`, the last `keep` kept, at most
    /// 1/(1 + spacing) of a core for all of them (the agent's processes wait their turn).
    pub fn monitor(interval: Duration, keep: usize, spacing: u32) -> Schedule {
        Schedule { interval, bounds: recording_bounds(), max_censuses: Some(keep), spacing }
    }
}

/// Time from one census's start to the next one's: `interval`, at least (1 + spacing)× the
/// census's duration.
fn pause_after(interval: Duration, took: Duration, spacing: u32) -> Duration {
    interval.max(took * (1 + spacing))
}

struct Counted {
    mem: RemoteMemory,
    interp: Interpreter,
    history: CensusHistory,
    /// The last error, kept while no census succeeded.
    error: Option<String>,
    next: Instant,
    /// When its next full census is due (types and retained bytes, not lengths only).
    full_next: Instant,
    /// Whether its last full census was long: lengths are then read on their own in between.
    lengths_between: bool,
    /// Censuses taken so far (their history keeps the last few).
    taken: u64,
}

type Targets = Arc<Mutex<HashMap<u32, Counted>>>;

pub struct CensusSampler {
    stop: Arc<AtomicBool>,
    targets: Targets,
    thread: Option<JoinHandle<()>>,
}

impl CensusSampler {
    /// Starts the census thread (times are seconds since `start`); processes are added to it.
    pub fn start(schedule: Schedule, start: Instant) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Targets = Arc::default();
        let (stopping, shared) = (stop.clone(), targets.clone());
        let thread = std::thread::Builder::new()
            .name("lp-census".into())
            .spawn(move || run(&stopping, &shared, schedule, start))?;
        Ok(CensusSampler { stop, targets, thread: Some(thread) })
    }

    /// Starts counting `pid` (its first census as soon as the thread is free).
    pub fn add(&self, pid: u32, mem: RemoteMemory, interp: Interpreter) {
        if let Some(mut targets) = self.lock() {
            let now = Instant::now();
            let counted = Counted {
                mem,
                interp,
                history: CensusHistory::default(),
                error: None,
                next: now,
                full_next: now,
                lengths_between: false,
                taken: 0,
            };
            targets.entry(pid).or_insert(counted);
        }
    }

    /// Stops counting `pid`; what its censuses saw.
    pub fn remove(&self, pid: u32) -> Option<(CensusHistory, Option<String>)> {
        self.lock()?.remove(&pid).map(|c| (c.history, c.error))
    }

    /// What `pid`'s censuses saw, when a census was taken since the `seen`-th (a history changes
    /// only once a census, so a caller judges it again only then), with the censuses taken.
    pub fn newer(&self, pid: u32, seen: u64) -> Option<(u64, CensusHistory)> {
        self.lock()?.get(&pid).filter(|c| c.taken > seen).map(|c| (c.taken, c.history.clone()))
    }

    /// Stops the censuses; what they saw of `pid`.
    pub fn finish(mut self, pid: u32) -> (CensusHistory, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let joined = self.thread.take().is_some_and(|t| t.join().is_ok());
        match self.remove(pid) {
            Some(seen) if joined => seen,
            _ => (CensusHistory::default(), Some("the census thread panicked".into())),
        }
    }

    fn lock(&self) -> Option<MutexGuard<'_, HashMap<u32, Counted>>> {
        self.targets.lock().ok()
    }
}

impl Drop for CensusSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The census thread: the most overdue process, counted without holding the lock (a snapshot
/// never waits for a census), then a pause of (1 + spacing)× that census's duration for all.
/// A full census waits out the pause of the last full one (node-wide); between two long ones
/// of a process, its holders' lengths are read on their own, each paused after by its own
/// duration × (1 + spacing): at most twice the share a full census alone takes.
fn run(stop: &AtomicBool, targets: &Mutex<HashMap<u32, Counted>>, schedule: Schedule, start: Instant) {
    let (mut not_before, mut full_not_before) = (Instant::now(), Instant::now());
    let lengths_bounds = Bounds { lengths_only: true, max_duration: LENGTHS_BOUND, ..schedule.bounds };
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due = (now >= not_before)
            .then(|| {
                let targets = targets.lock().ok()?;
                let full_due = |c: &Counted| c.full_next <= now && now >= full_not_before;
                let (pid, c) = targets
                    .iter()
                    .filter(|(_, c)| c.next <= now && (full_due(c) || c.lengths_between))
                    .min_by_key(|(_, c)| c.next)?;
                Some((*pid, c.mem, c.interp, full_due(c)))
            })
            .flatten();
        let Some((pid, mem, interp, full)) = due else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let began = Instant::now();
        let census = take_census(&mem, &interp, if full { &schedule.bounds } else { &lengths_bounds });
        let took = began.elapsed();
        let Ok(mut targets) = targets.lock() else { return };
        // Removed while it was being counted: nothing to keep.
        let Some(c) = targets.get_mut(&pid) else { continue };
        let mut long = took >= LONG_CENSUS;
        match census {
            Ok(census) => {
                long |= census.bounds_hit.is_some() || census.holders_truncated;
                c.history.push(began.duration_since(start).as_secs_f64(), &census);
                if let Some(max) = schedule.max_censuses {
                    c.history.keep_last(max);
                }
                c.taken += 1;
                c.error = None;
            }
            Err(e) => c.error = Some(e),
        }
        let pause = pause_after(schedule.interval, took, schedule.spacing);
        if full {
            c.full_next = began + pause;
            c.lengths_between = long;
            c.next = if long { began + took.max(schedule.interval) } else { c.full_next };
            full_not_before = began + took * (1 + schedule.spacing);
            not_before = if long { began + took } else { full_not_before };
        } else {
            c.next = began + pause;
            not_before = began + took * (1 + schedule.spacing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn censuses_are_spaced_five_times_their_duration() {
        assert_eq!(pause_after(Duration::from_secs(2), Duration::from_millis(50), 4), Duration::from_secs(2));
        assert_eq!(pause_after(Duration::from_secs(2), Duration::from_millis(700), 4), Duration::from_millis(3500));
    }
}
