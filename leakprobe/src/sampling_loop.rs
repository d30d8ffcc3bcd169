//! The sampling loop `record`, `watch` and the agent share: one interval of samples, one refresh
//! of the kernel's table of Python thread states, one handling of SIGINT/SIGTERM, one deadline,
//! one rule for when a process is gone, and one cache of what each stack is. What only one mode
//! does (record's sampling windows and low-water reads, the agent's rescans and process events)
//! stays with that mode and comes in through `Ticks::next` as a mode event.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    future::Future,
    process::Child,
    time::Duration,
};

use anyhow::{Context as _, Result};
use leakprobe_common::{AllocFunction, StackTrace};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    // tokio's clock: the same as std's, except in tests with paused time.
    time::{Instant, Interval, MissedTickBehavior},
};

use crate::{
    loader::Probes,
    process_memory::{self, ProcessMemory},
    python::runtime::PythonRuntime,
};

/// How often the kernel's table of Python thread states is refreshed: a new thread (a pool
/// growing) gets its Python frames in the stacks within this period.
pub const THREAD_REFRESH: Duration = Duration::from_millis(500);

/// What the loop wakes up for.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<M> {
    /// An interval has passed: take a sample.
    Sample,
    /// Time to refresh the thread states.
    RefreshThreads,
    /// Something only this mode listens for.
    Mode(M),
    /// SIGINT or SIGTERM.
    Stop,
}

/// The loop's clock and signals.
pub struct Ticks {
    sample: Interval,
    threads: Interval,
    interrupt: Signal,
    terminate: Signal,
    start: Instant,
    duration: Option<Duration>,
}

impl Ticks {
    /// A sample every `interval` (the first at once), until `duration` (if any) has passed, with
    /// tokio's default for missed ticks and the thread states refreshed every `THREAD_REFRESH`.
    pub fn new(interval: Duration, duration: Option<Duration>) -> Result<Ticks> {
        Ok(Ticks {
            sample: tokio::time::interval(interval),
            threads: tokio::time::interval(THREAD_REFRESH),
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            start: Instant::now(),
            duration,
        })
    }

    /// What a sample tick does when the loop fell behind (record delays the next one).
    pub fn missed_samples(mut self, behavior: MissedTickBehavior) -> Ticks {
        self.sample.set_missed_tick_behavior(behavior);
        self
    }

    /// Refreshes the thread states every `period` instead of `THREAD_REFRESH`.
    pub fn thread_refresh(mut self, period: Duration) -> Ticks {
        self.threads = tokio::time::interval(period);
        self
    }

    /// Waits for the next event: a sample, a thread refresh, a stop, or what `mode` yields
    /// (it must be cancel-safe, as `Interval::tick` is: it is dropped when another event wins).
    pub async fn next<M>(&mut self, mode: impl Future<Output = M>) -> Event<M> {
        tokio::select! {
            _ = self.sample.tick() => Event::Sample,
            _ = self.threads.tick() => Event::RefreshThreads,
            m = mode => Event::Mode(m),
            _ = self.interrupt.recv() => Event::Stop,
            _ = self.terminate.recv() => Event::Stop,
        }
    }

    /// When the loop started.
    pub fn started(&self) -> std::time::Instant {
        self.start.into_std()
    }

    /// Seconds since the loop started: the time of a sample.
    pub fn elapsed_secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Whether the duration asked for has passed.
    pub fn past_deadline(&self) -> bool {
        self.duration.is_some_and(|d| self.start.elapsed() >= d)
    }
}

/// A mode with no events of its own.
pub fn no_mode_events() -> std::future::Pending<std::convert::Infallible> {
    std::future::pending()
}

/// Writes the thread states of the target's interpreter (if it is Python) into the kernel.
pub fn refresh_threads(probes: &mut Probes, python: Option<&PythonRuntime>) -> Result<()> {
    match python {
        Some(python) => probes.kernel_mut().set_thread_states(&python.thread_states()),
        None => Ok(()),
    }
}

/// The memory of `pid` if it is still there. A process is gone once its memory is unreadable
/// (it exited, or is a zombie); one we launched (`launched`) already once it is reaped.
pub fn live_memory(pid: u32, launched: Option<&mut Child>) -> Option<ProcessMemory> {
    let reaped = launched.is_some_and(|child| !matches!(child.try_wait(), Ok(None)));
    if reaped {
        None
    } else {
        process_memory::read(pid)
    }
}

/// What a stack is. Fixed for a stack id (the kernel never reuses one), so read once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StackIdentity {
    /// The process the stack was captured in.
    pub tgid: u32,
    pub function: Option<AllocFunction>,
    /// Where its memory comes from (`function file:line`), when named.
    pub site: Option<String>,
}

/// Per-stack cache of `StackIdentity`, filled from the kernel's stored traces.
#[derive(Default)]
pub struct StackCache {
    known: HashMap<u64, StackIdentity>,
}

impl StackCache {
    /// The identity of stack `id`, read from its stored trace (`trace`) the first time it is asked
    /// for, with the site `site_of` names from the trace (`None`: named later, or never). A stack
    /// whose trace the kernel did not store is `None` and asked for again next time.
    pub fn identify(
        &mut self,
        id: u64,
        trace: impl FnOnce(u64) -> Option<StackTrace>,
        site_of: impl FnOnce(&StackTrace) -> Option<String>,
    ) -> Option<&StackIdentity> {
        match self.known.entry(id) {
            Entry::Occupied(known) => Some(known.into_mut()),
            Entry::Vacant(new) => {
                let trace = trace(id)?;
                Some(new.insert(StackIdentity {
                    tgid: trace.tgid,
                    function: AllocFunction::from_u32(trace.function),
                    site: site_of(&trace),
                }))
            }
        }
    }

    /// What stack `id` is, if identified before.
    pub fn get(&self, id: u64) -> Option<&StackIdentity> {
        self.known.get(&id)
    }

    /// The allocator function of a stack identified before.
    pub fn function(&self, id: u64) -> Option<AllocFunction> {
        self.known.get(&id).and_then(|s| s.function)
    }

    /// The site of stack `id`, named by `name` the first time it is asked for (when its trace
    /// gave none): naming can be costly, so it is done only for the stacks shown.
    pub fn site(&mut self, id: u64, name: impl FnOnce() -> String) -> String {
        let identity = self.known.entry(id).or_default();
        identity.site.get_or_insert_with(name).clone()
    }

    /// Records what stack `id` is (tests, and identities known otherwise).
    pub fn insert(&mut self, id: u64, identity: StackIdentity) {
        self.known.insert(id, identity);
    }

    /// The ids of the stacks captured in `tgids`.
    pub fn stacks_of<'a>(&'a self, tgids: &'a HashSet<u32>) -> impl Iterator<Item = u64> + 'a {
        self.known.iter().filter(|(_, s)| tgids.contains(&s.tgid)).map(|(id, _)| *id)
    }

    /// Forgets stacks the kernel has released.
    pub fn forget(&mut self, ids: &[u64]) {
        for id in ids {
            self.known.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use leakprobe_common::{PythonFrame, MAX_NATIVE_FRAMES, MAX_PYTHON_FRAMES};

    use super::*;

    fn trace(tgid: u32, function: AllocFunction) -> StackTrace {
        StackTrace {
            function: function as u32,
            flags: 0,
            native_len: 0,
            python_len: 0,
            tgid,
            reserved: 0,
            native: [0; MAX_NATIVE_FRAMES],
            python: [PythonFrame::default(); MAX_PYTHON_FRAMES],
        }
    }

    #[test]
    fn a_stack_is_read_once_and_a_missing_trace_is_asked_again() {
        let mut cache = StackCache::default();
        let mut reads = 0;
        for _ in 0..3 {
            let identity = cache.identify(
                7,
                |_| {
                    reads += 1;
                    Some(trace(42, AllocFunction::Mmap))
                },
                |t| Some(format!("site of {}", t.tgid)),
            );
            assert_eq!(identity.and_then(|s| s.site.clone()).as_deref(), Some("site of 42"));
        }
        assert_eq!(reads, 1);
        assert_eq!(cache.function(7), Some(AllocFunction::Mmap));

        let mut misses = 0;
        for _ in 0..2 {
            let missing = cache.identify(
                8,
                |_| {
                    misses += 1;
                    None
                },
                |_| None,
            );
            assert!(missing.is_none());
        }
        assert_eq!(misses, 2);
        assert_eq!(cache.function(8), None);
    }

    #[test]
    fn a_site_is_named_once_unless_the_trace_named_it() {
        let mut cache = StackCache::default();
        cache.identify(1, |_| Some(trace(5, AllocFunction::Brk)), |_| None);
        cache.identify(2, |_| Some(trace(5, AllocFunction::Brk)), |_| Some("from the trace".into()));
        let mut names = 0;
        for _ in 0..2 {
            let site = cache.site(1, || {
                names += 1;
                "named".into()
            });
            assert_eq!(site, "named");
        }
        assert_eq!(names, 1);
        assert_eq!(cache.site(2, || unreachable!()), "from the trace");
    }

    #[test]
    fn stacks_are_found_and_forgotten_by_process() {
        let mut cache = StackCache::default();
        for (id, tgid) in [(1, 10), (2, 10), (3, 11)] {
            cache.identify(id, |_| Some(trace(tgid, AllocFunction::Mmap)), |_| None);
        }
        let ended = HashSet::from([10]);
        let mut gone: Vec<u64> = cache.stacks_of(&ended).collect();
        gone.sort_unstable();
        assert_eq!(gone, [1, 2]);
        cache.forget(&gone);
        assert_eq!(cache.function(1), None);
        assert_eq!(cache.function(3), Some(AllocFunction::Mmap));
    }

    #[test]
    fn a_process_is_gone_once_reaped_or_unreadable() {
        let mut running = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(live_memory(running.id(), Some(&mut running)).is_some());
        assert!(live_memory(std::process::id(), None).is_some());
        running.kill().unwrap();
        running.wait().unwrap();
        // Reaped: gone even if its PID were taken again.
        assert!(live_memory(running.id(), Some(&mut running)).is_none());
        assert!(live_memory(u32::MAX, None).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn samples_and_thread_refreshes_keep_their_own_period() {
        let mut ticks = Ticks::new(Duration::from_secs(1), Some(Duration::from_millis(2100))).unwrap();
        let (mut samples, mut refreshes, mut mode) = (0, 0, 0);
        let mut mode_tick = tokio::time::interval(Duration::from_millis(700));
        while !ticks.past_deadline() {
            match ticks.next(mode_tick.tick()).await {
                Event::Sample => samples += 1,
                Event::RefreshThreads => refreshes += 1,
                Event::Mode(_) => mode += 1,
                Event::Stop => unreachable!(),
            }
        }
        // Each fires at once, then every period, until 2.1 s: 0,1,2 s; 0,0.5,..,2 s; 0,0.7,1.4,2.1 s.
        assert_eq!((samples, refreshes, mode), (3, 5, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn the_agent_refresh_period_is_its_own() {
        let mut ticks = Ticks::new(Duration::from_secs(1), Some(Duration::from_secs(5)))
            .unwrap()
            .thread_refresh(Duration::from_secs(2));
        let mut refreshes = 0;
        while !ticks.past_deadline() {
            if ticks.next(no_mode_events()).await == Event::RefreshThreads {
                refreshes += 1;
            }
        }
        // At 0, 2 and 4 s; the run ends with the sample at 5 s.
        assert_eq!(refreshes, 3);
    }
}
