//! The per-stack snapshot in sampling mode: allocations sampled in the windows that are still
//! alive (checked by `liveness` in the target's memory: the object in the block, or else the
//! state its allocator keeps), beside the syscall-level stacks (mmap, brk), which the
//! always-attached tracepoints follow completely.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
};

use anyhow::Result;
use leakprobe_common::{
    AllocFunction, CallShape, LiveAllocation, LiveKey, StackCounters, StackTrace, STACK_PYTHON_UNAVAILABLE,
};

use crate::{
    block_liveness::{glibc, Allocator, SampleLiveness, SignalCounts},
    liveness::{Candidate, Liveness, Pass, SampleKind},
    loader::Probes,
    python::{layouts::PoolLayout, memory::ReadMemory},
};

/// Looks at the target's `[heap]` for glibc's tcache key before giving up on learning it.
const TCACHE_KEY_ATTEMPTS: u32 = 64;

pub struct SampledHeap {
    liveness: Liveness,
    pool: PoolLayout,
    /// The target, to find its `[heap]` (where glibc keeps the main thread's tcache).
    pid: u32,
    tcache_key_attempts: u32,
    /// The live samples by signal at the last snapshot.
    live_by: SignalCounts,
    /// The allocator each stack came from, as the kernel stored it.
    functions: HashMap<u64, Option<AllocFunction>>,
    /// Object stacks reported before: reported again (at zero) once their samples are all dead.
    reported: HashSet<u64>,
    /// What each stack's live samples were at the last snapshot.
    kinds: HashMap<u64, SampleKind>,
}

/// Blocks from these are followed (the sampling windows hook only them): by the object they hold,
/// or else by their allocator's state.
fn sampled_in_windows(function: Option<AllocFunction>) -> bool {
    use AllocFunction::*;
    matches!(
        function,
        Some(PyObjectMalloc | PyObjectCalloc | PyObjectRealloc | PyMemMalloc | PyMemCalloc | PyMemRealloc)
            | Some(Malloc | Calloc | Realloc | Reallocarray)
    )
}

impl SampledHeap {
    /// `type_type`: the address of `PyType_Type` in the target; `layout`: its interpreter's;
    /// `pid`: the target.
    pub fn new(type_type: u64, layout: &crate::python::layout::Layout, pid: u32) -> SampledHeap {
        // Every supported version has a pool layout; one not in the tables is assumed unchanged.
        let pool = crate::python::layouts::pool(layout.minor).unwrap_or(crate::python::layouts::POOL_LAYOUT);
        SampledHeap {
            liveness: Liveness::new(
                type_type,
                layout.objects,
                pool,
                crate::python::layouts::recycled_types(layout.minor),
            ),
            pool,
            pid,
            tcache_key_attempts: 0,
            live_by: SignalCounts::default(),
            functions: HashMap::new(),
            reported: HashSet::new(),
            kinds: HashMap::new(),
        }
    }

    /// How the samples were judged so far.
    pub fn sample_liveness(&self) -> SampleLiveness {
        SampleLiveness {
            dead: self.liveness.dead_by,
            live: self.live_by,
            unverifiable: self.liveness.unverifiable,
            recycled: self.liveness.recycled,
            ambiguous: self.liveness.ambiguous,
            young: self.liveness.young,
        }
    }

    /// Learns glibc's tcache key from the main thread's cache, at the start of `[heap]`, while
    /// it is unknown (its bins may all be empty at one look), a bounded number of times.
    fn learn_tcache_key(&mut self, mem: &impl ReadMemory) {
        if self.liveness.tcache_key.is_some() || self.tcache_key_attempts >= TCACHE_KEY_ATTEMPTS {
            return;
        }
        self.tcache_key_attempts += 1;
        let maps = crate::proc_maps::read(self.pid).unwrap_or_default();
        let heap = maps.iter().find(|m| m.path.as_deref() == Some("[heap]"));
        self.liveness.tcache_key = heap.and_then(|h| glibc::find_tcache_key(mem, h.start));
    }

    /// The stacks whose series are sampled live objects.
    pub fn object_stacks(&self) -> HashSet<u64> {
        self.reported.clone()
    }

    /// What each stack's live samples were at the last snapshot (stacks with live samples only).
    pub fn sample_kinds(&self) -> HashMap<u64, SampleKind> {
        self.kinds.clone()
    }

    /// Samples judged dead and samples that held no object, so far.
    pub fn dead_and_unverifiable(&self) -> (u64, u64) {
        (self.liveness.dead, self.liveness.unverifiable)
    }

    /// Checks the samples now: the first look at a sample records which object it holds, so
    /// it is best taken while the window is still open, before the target runs at full speed and
    /// frees and reuses blocks (CPython's free lists reuse them without calling the allocator).
    pub fn look(&mut self, probes: &mut Probes, mem: &impl ReadMemory) -> Result<()> {
        let counters = probes.kernel().stack_counters()?;
        // Taken before the table is read: a sample allocated while it is read is young too.
        let now = kernel_clock_ns();
        self.check(probes, mem, &counters, Some(now)).map(|_| ())
    }

    /// Per-stack counters: live sampled objects for object stacks, the kernel's counters for
    /// syscall stacks. Dead and unjudgeable samples are removed from the kernel's table.
    pub fn snapshot(&mut self, probes: &mut Probes, mem: &impl ReadMemory) -> Result<Vec<(u64, StackCounters)>> {
        let counters = probes.kernel().stack_counters()?;
        let pass = self.check(probes, mem, &counters, None)?;
        self.live_by = pass.live_by;
        self.kinds = pass.live.iter().map(|(&id, live)| (id, live.kind)).collect();
        let mut out: Vec<(u64, StackCounters)> = counters
            .into_iter()
            .filter(|(id, _)| self.functions[id].is_some_and(|f| f.shape() == CallShape::Syscall))
            .collect();
        for (&id, live) in &pass.live {
            self.reported.insert(id);
            out.push((
                id,
                StackCounters { allocs: live.allocations, frees: 0, alloc_bytes: live.bytes, free_bytes: 0 },
            ));
        }
        out.extend(
            self.reported.iter().filter(|id| !pass.live.contains_key(id)).map(|&id| (id, StackCounters::default())),
        );
        Ok(out)
    }

    fn check(
        &mut self,
        probes: &mut Probes,
        mem: &impl ReadMemory,
        counters: &[(u64, StackCounters)],
        first_looks_at: Option<u64>,
    ) -> Result<Pass> {
        for (id, _) in counters {
            if !self.functions.contains_key(id) {
                let trace = probes.kernel().stack_trace(*id);
                self.functions.insert(*id, trace.as_ref().and_then(|t| AllocFunction::from_u32(t.function)));
                if let Some(site) = trace.as_ref().and_then(allocation_site) {
                    self.liveness.set_site(*id, site);
                }
            }
        }
        self.learn_tcache_key(mem);
        // One process per table here (`record`): the key's process is the target.
        let mut tgid = 0;
        let pool = self.pool;
        let sampled: Vec<Candidate> = probes
            .kernel()
            .live_allocations()?
            .into_iter()
            .filter_map(|(key, a): (LiveKey, LiveAllocation)| {
                let function = self.functions.get(&a.stack_id).copied().flatten();
                sampled_in_windows(function).then(|| {
                    tgid = key.tgid;
                    (key.address, a, function.and_then(|f| Allocator::of(f, a.size, &pool)))
                })
            })
            .collect();
        let pass = self.liveness.check(mem, &sampled, first_looks_at);
        let forget: Vec<LiveKey> = pass.forget.iter().map(|&address| LiveKey { address, tgid, reserved: 0 }).collect();
        probes.kernel_mut().remove_live_allocations(&forget)?;
        Ok(pass)
    }
}

/// The allocation site of a stack: its allocator and its Python frames (code and instruction
/// of each), leaving out the native frames, which can differ between threads running the same
/// lines (the walk below a thread's start reads what each thread's stack holds). `None` without
/// Python frames: such a stack is a site of its own.
fn allocation_site(trace: &StackTrace) -> Option<u64> {
    let frames = trace.python_frames();
    if frames.is_empty() || trace.flags & STACK_PYTHON_UNAVAILABLE != 0 {
        return None;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    trace.function.hash(&mut hasher);
    for frame in frames {
        (frame.code_object, frame.instruction).hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// Now on the clock the kernel stamps samples with (`bpf_ktime_get_ns`: `CLOCK_MONOTONIC`).
fn kernel_clock_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Cannot fail with a valid clock and pointer; 0 would make every sample old.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
