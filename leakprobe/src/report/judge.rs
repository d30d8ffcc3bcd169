//! Which stacks a recording flags: one rule per accounting mode, applied to the whole recording
//! for the verdict and to each prefix of it for `flagged_after_secs`, so the time named is one at
//! which the stack is flagged. Pure.

use std::collections::HashSet;

use crate::{
    accounting::Accounting,
    aggregate::{Recording, StackSeries},
    liveness::SampleKind,
    symbolize::{Frame, FrameKind},
    verdict::{classify, GrowthVerdict, VerdictConfig, VerdictKind},
};

/// Fewest live sampled objects a sampled stack needs to be flagged: a couple of strays are not
/// a trend.
pub const MIN_SAMPLED_LIVE: u64 = 8;

/// At most this many flagged stacks are listed (the rest are counted in a warning).
pub const MAX_FLAGGED: usize = 50;

/// The rule stacks are judged by.
pub struct StackJudge<'a> {
    pub accounting: Accounting,
    /// Sampling mode: the stacks whose series are sampled live objects (see `sampled_heap`).
    /// Only they are judged as leak sites; syscall-level stacks (mmap, brk) say where the heap
    /// grows, not who keeps it.
    pub object_stacks: &'a HashSet<u64>,
    pub verdict: &'a VerdictConfig,
}

impl StackJudge<'_> {
    /// Judges stack `id` from its live bytes at `times` and its live allocations at the last of
    /// them. Sampled series are a small sample of the real bytes: no absolute floor, a floor on
    /// live samples.
    pub fn judge(&self, id: u64, times: &[f64], live_bytes: &[f64], live_allocations: u64) -> GrowthVerdict {
        let object_stack = self.object_stacks.contains(&id);
        match self.accounting {
            Accounting::Exact | Accounting::SyscallsOnly => classify(times, live_bytes, self.verdict),
            Accounting::Sampled if object_stack && live_allocations >= MIN_SAMPLED_LIVE => {
                classify(times, live_bytes, &VerdictConfig { min_growth_bytes_per_sec: 0.0, ..self.verdict.clone() })
            }
            Accounting::Sampled => {
                let mut v = classify(times, live_bytes, self.verdict);
                if v.kind == VerdictKind::Leak {
                    v.kind = VerdictKind::Inconclusive;
                    v.reason = if object_stack {
                        format!("too few live samples (fewer than {MIN_SAMPLED_LIVE}) to call: {}", v.reason)
                    } else {
                        format!("where the heap grows, not who keeps it (memory syscall): {}", v.reason)
                    };
                }
                v
            }
        }
    }

    /// When the stack would first have been flagged, had the recording stopped at that sample:
    /// the time leakprobe needs to name it.
    pub fn first_flagged(&self, id: u64, times: &[f64], series: &StackSeries) -> Option<f64> {
        let len = times.len().min(series.live_bytes.len()).min(series.live_allocations.len());
        (self.verdict.min_samples.max(3)..=len)
            .find(|&n| {
                let v = self.judge(id, &times[..n], &series.live_bytes[..n], series.live_allocations[n - 1]);
                v.kind == VerdictKind::Leak
            })
            .map(|n| times[n - 1])
    }
}

/// The stacks a report lists, judged: flagged ones fastest first, then the largest others.
pub struct Judged {
    pub flagged: Vec<(u64, GrowthVerdict)>,
    pub others: Vec<(u64, GrowthVerdict)>,
    /// Flagged stacks beyond `MAX_FLAGGED`, left out.
    pub flagged_left_out: usize,
}

impl Judged {
    /// The stacks the report needs named.
    pub fn stack_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.flagged.iter().chain(&self.others).map(|(id, _)| *id)
    }

    /// The flagged ones (the report advises them).
    pub fn flagged_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.flagged.iter().map(|(id, _)| *id)
    }
}

/// Sampling mode: a flagged stack is a faster flagged stack's shadow, not a leak of its own, when
/// their blocks are interchangeable: a block sampled in one, freed after its window and taken by
/// the other's next allocation (no probe sees it) reads as the first kept alive. Two ways:
/// - the same allocation path, from the allocator to the innermost Python frame (function and
///   line): one size, filled alike by the same code. Measured on Debian's LTO 3.11: the locks of
///   a look-alike endpoint's finished futures (`RLock` ← `Condition.__init__` ← `submit`) read
///   alive, reused by the leaking endpoint's identical locks, and flagged at the look-alike's line
///   (824-1895 B/s beside the leak's 5 KB/s);
/// - every live sample of both is an object of one type in blocks of one size (`kind_of`):
///   pymalloc hands the last freed block of a size class out first, so an object the look-alike
///   frees is replaced in its block by the leak's next object of that type, header and all.
///   Measured on pyenv 3.12: a `TTLCache(maxsize=500)` of `Session` objects flagged at 56 B/s
///   (sampled) beside the leak's `Session`s at 101 B/s, its evicted blocks holding the leak's.
///
/// Such a stack moves to the others, inconclusive, with the reason. A second leak through the same
/// path, or of the same type and size, is judged with the first; its container is the heap
/// census's to name.
pub fn set_apart_shadows<'a>(
    judged: &mut Judged,
    frames_of: impl Fn(u64) -> Option<&'a [Frame]>,
    kind_of: impl Fn(u64) -> SampleKind,
) {
    // The frames from the allocator to the innermost Python one.
    let site = |id: u64| {
        let frames = frames_of(id)?;
        frames.iter().position(|f| f.kind == FrameKind::Python).map(|python| &frames[..=python])
    };
    let same_site = |a: &[Frame], b: &[Frame]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x.kind, &x.function, &x.file, x.line) == (y.kind, &y.function, &y.file, y.line))
    };
    let sites: Vec<Option<&[Frame]>> = judged.flagged.iter().map(|(id, _)| site(*id)).collect();
    let kinds: Vec<SampleKind> = judged.flagged.iter().map(|(id, _)| kind_of(*id)).collect();
    let one_kind = |i: usize, j: usize| matches!(kinds[i], SampleKind::Object { .. }) && kinds[i] == kinds[j];
    // `flagged` is fastest first: a stack is a shadow of an earlier one.
    let shadow_of: Vec<Option<(u64, &str)>> = (0..sites.len())
        .map(|i| {
            (0..i).find_map(|j| {
                let other = judged.flagged[j].0;
                match (sites[i], sites[j]) {
                    (Some(mine), Some(theirs)) if same_site(mine, theirs) => {
                        Some((other, "same allocation path and line"))
                    }
                    _ if one_kind(i, j) => Some((other, "live samples all of its object type and block size")),
                    _ => None,
                }
            })
        })
        .collect();
    let flagged = std::mem::take(&mut judged.flagged);
    for ((id, mut verdict), shadow_of) in flagged.into_iter().zip(shadow_of) {
        match shadow_of {
            None => judged.flagged.push((id, verdict)),
            Some((other, why)) => {
                verdict.kind = VerdictKind::Inconclusive;
                verdict.confidence = 0.0;
                verdict.reason = format!(
                    "alike to the faster stack {other:016x} ({why}): its blocks may be that stack's, reused after \
                     a window; {}",
                    verdict.reason
                );
                judged.others.insert(0, (id, verdict));
            }
        }
    }
}

/// Judges every stack that still holds memory (a stack back to zero is not leaking) and keeps
/// the flagged ones and the `other_stacks` largest others.
pub fn judge_stacks(rec: &Recording, judge: &StackJudge, other_stacks: usize) -> Judged {
    let (mut flagged, mut others): (Vec<_>, Vec<_>) = rec
        .stacks
        .iter()
        .filter(|(_, s)| s.live_bytes_now() > 0)
        .map(|(&id, s)| (id, judge.judge(id, &rec.times, &s.live_bytes, s.live_allocations_now())))
        .partition(|(_, v)| v.kind == VerdictKind::Leak);
    flagged.sort_by(|a, b| b.1.growth_bytes_per_sec.total_cmp(&a.1.growth_bytes_per_sec));
    others.sort_by_key(|(id, _)| std::cmp::Reverse(rec.stacks[id].live_bytes_now()));
    let flagged_left_out = flagged.len().saturating_sub(MAX_FLAGGED);
    flagged.truncate(MAX_FLAGGED);
    others.truncate(other_stacks);
    Judged { flagged, others, flagged_left_out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use leakprobe_common::StackCounters;

    /// A sampled object stack that grows from the start but has fewer than `MIN_SAMPLED_LIVE`
    /// live samples until late: flagged only once it has enough, and `first_flagged` names a
    /// time at which the rule flags it.
    #[test]
    fn flagged_after_is_a_time_at_which_the_stack_is_flagged() {
        let mut rec = Recording::default();
        for i in 0..30u64 {
            // One live sample more every 3 samples: 8 live from sample 21 on.
            let live = i / 3 + 1;
            let c = StackCounters { allocs: live, frees: 0, alloc_bytes: live * 4096, free_bytes: 0 };
            rec.push(i as f64, None, &[(1, c)], vec![]);
        }
        let object_stacks = HashSet::from([1]);
        let verdict = VerdictConfig::default();
        let judge = StackJudge { accounting: Accounting::Sampled, object_stacks: &object_stacks, verdict: &verdict };
        let series = &rec.stacks[&1];
        assert_eq!(
            judge.judge(1, &rec.times, &series.live_bytes, series.live_allocations_now()).kind,
            VerdictKind::Leak
        );
        let after = judge.first_flagged(1, &rec.times, series).unwrap();
        let n = rec.times.iter().position(|&t| t == after).unwrap() + 1;
        let at = judge.judge(1, &rec.times[..n], &series.live_bytes[..n], series.live_allocations[n - 1]);
        assert_eq!(at.kind, VerdictKind::Leak, "flagged_after_secs {after} names a time it is not flagged at");
        assert!(series.live_allocations[n - 1] >= MIN_SAMPLED_LIVE);
        // Judging prefixes without the floor on live samples (as the final verdict has it) would
        // have named an earlier time, at which the stack had too few samples to be flagged.
        let no_floor = (3..=rec.times.len())
            .find(|&n| judge.judge(1, &rec.times[..n], &series.live_bytes[..n], u64::MAX).kind == VerdictKind::Leak)
            .unwrap();
        assert!(series.live_allocations[no_floor - 1] < MIN_SAMPLED_LIVE && rec.times[no_floor - 1] < after);
        // The same growth in syscall-level accounting is flagged earlier: no floor on samples.
        let exact = StackJudge { accounting: Accounting::Exact, ..judge };
        assert!(exact.first_flagged(1, &rec.times, series).unwrap() <= after);
    }

    #[test]
    fn a_syscall_stack_is_never_flagged_when_sampling() {
        let mut rec = Recording::default();
        for i in 0..30u64 {
            let c = StackCounters { allocs: i + 1, frees: 0, alloc_bytes: (i + 1) << 20, free_bytes: 0 };
            rec.push(i as f64, None, &[(2, c)], vec![]);
        }
        let verdict = VerdictConfig::default();
        let none = HashSet::new();
        let judge = StackJudge { accounting: Accounting::Sampled, object_stacks: &none, verdict: &verdict };
        let v = judge.judge(2, &rec.times, &rec.stacks[&2].live_bytes, 30);
        assert_eq!(v.kind, VerdictKind::Inconclusive);
        assert!(v.reason.starts_with("where the heap grows"), "{}", v.reason);
        assert_eq!(judge.first_flagged(2, &rec.times, &rec.stacks[&2]), None);
        let judged = judge_stacks(&rec, &judge, 5);
        assert!(judged.flagged.is_empty());
        assert_eq!(judged.stack_ids().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_flagged_stack_on_a_faster_ones_allocation_path_is_set_apart() {
        let frame = |kind, function: &str, line| Frame {
            function: function.into(),
            file: (kind == FrameKind::Python).then(|| "app.py".into()),
            line,
            object: None,
            kind,
            address: 0,
        };
        let path = |endpoint_line| {
            vec![
                frame(FrameKind::Native, "malloc", None),
                frame(FrameKind::Native, "PyThread_allocate_lock", None),
                frame(FrameKind::Python, "RLock", Some(101)),
                frame(FrameKind::Python, "endpoint", Some(endpoint_line)),
            ]
        };
        let leak = |rate: f64| GrowthVerdict {
            kind: VerdictKind::Leak,
            growth_bytes_per_sec: rate,
            growth_low_bytes_per_sec: rate,
            growth_high_bytes_per_sec: rate,
            confidence: 1.0,
            reason: "grows".into(),
        };
        // 1 and 2 share the path to their innermost Python frame; 3 is called from another line.
        let mut judged = Judged {
            flagged: vec![(1, leak(5000.0)), (2, leak(1900.0)), (3, leak(900.0))],
            others: vec![],
            flagged_left_out: 0,
        };
        let mut frames = HashMap::from([(1, path(33)), (2, path(40)), (3, path(40))]);
        frames.get_mut(&3).unwrap()[2].line = Some(102);
        set_apart_shadows(&mut judged, |id| frames.get(&id).map(Vec::as_slice), |_| SampleKind::Mixed);
        assert_eq!(judged.flagged.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1, 3]);
        let (id, set_apart) = &judged.others[0];
        assert_eq!((*id, set_apart.kind), (2, VerdictKind::Inconclusive));
        assert!(set_apart.reason.contains("0000000000000001"), "{}", set_apart.reason);
        // Unnamed stacks stay as they were.
        let mut judged = Judged { flagged: vec![(1, leak(5.0)), (2, leak(1.0))], others: vec![], flagged_left_out: 0 };
        set_apart_shadows(&mut judged, |_| None, |_| SampleKind::Empty);
        assert_eq!(judged.flagged.len(), 2);

        // Other lines, but every live sample of 1 and 3 is a `Session` in a 48-byte block: 3 is
        // set apart; 2's samples are of another size and stay flagged, as do mixed ones.
        let session = |size| SampleKind::Object { ob_type: 0x7f00_0000_1000, size };
        let kinds = HashMap::from([(1, session(48)), (2, session(64)), (3, session(48)), (4, SampleKind::Mixed)]);
        let mut judged = Judged {
            flagged: vec![(1, leak(101.0)), (2, leak(80.0)), (3, leak(56.0)), (4, leak(20.0))],
            others: vec![],
            flagged_left_out: 0,
        };
        let frames = HashMap::from([(1, path(33)), (2, path(40)), (3, path(41)), (4, path(42))]);
        let frames_of = |id| frames.get(&id).map(|f: &Vec<Frame>| &f[3..]);
        set_apart_shadows(&mut judged, frames_of, |id| kinds[&id]);
        assert_eq!(judged.flagged.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1, 2, 4]);
        let (id, set_apart) = &judged.others[0];
        assert_eq!(*id, 3);
        assert!(set_apart.reason.contains("its object type and block size"), "{}", set_apart.reason);
    }
}
