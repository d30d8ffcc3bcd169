//! Censuses taken on a thread of their own through a recording, so a census (hundreds of
//! milliseconds on a big heap) never delays the sampling loop or a window's close. Reads only
//! (process_vm_readv): the target pays no CPU for them, leakprobe's own CPU is kept to a fifth
//! of the time by spacing censuses five times their own duration apart (measured: ten times left
//! 5-7 censuses in a minute on a busy 2-core machine, too few for the trend test).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::CensusHistory;
use crate::python::{
    heap::{take_census, Bounds, Interpreter},
    memory::RemoteMemory,
};

/// What one census in a recording may take: seconds, not the CLI's tens.
pub fn recording_bounds() -> Bounds {
    Bounds { max_duration: Duration::from_secs(2), max_holders: 200, ..Bounds::default() }
}

/// Time between censuses, at least `interval`, at least 5× the last census's duration.
fn pause_after(interval: Duration, took: Duration) -> Duration {
    interval.max(took * 5)
}

pub struct CensusSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(CensusHistory, Option<String>)>>,
}

impl CensusSampler {
    /// Starts taking censuses of `mem`'s heap every `interval` (times in seconds since `start`).
    pub fn start(mem: RemoteMemory, interp: Interpreter, interval: Duration, start: Instant) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("lp-census".into()).spawn(move || {
            let bounds = recording_bounds();
            let mut history = CensusHistory::default();
            let mut last_error = None;
            while !stopping.load(Ordering::Relaxed) {
                let began = Instant::now();
                match take_census(&mem, &interp, &bounds) {
                    Ok(census) => history.push(began.duration_since(start).as_secs_f64(), &census),
                    Err(e) => last_error = Some(e),
                }
                let next = began + pause_after(interval, began.elapsed());
                // Sleep in short steps so a stop is prompt.
                while !stopping.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50).min(next.saturating_duration_since(Instant::now())));
                }
            }
            (history, last_error)
        })?;
        Ok(CensusSampler { stop, thread: Some(thread) })
    }

    /// Stops the censuses; what they saw, and the last error when none succeeded.
    pub fn finish(mut self) -> (CensusHistory, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let history = self.thread.take().and_then(|t| t.join().ok());
        history.unwrap_or_else(|| (CensusHistory::default(), Some("the census thread panicked".into())))
    }
}

impl Drop for CensusSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn censuses_are_spaced_to_a_tenth_of_the_time() {
        assert_eq!(pause_after(Duration::from_secs(2), Duration::from_millis(50)), Duration::from_secs(2));
        assert_eq!(pause_after(Duration::from_secs(2), Duration::from_millis(700)), Duration::from_millis(3500));
    }
}
