//! The per-stack snapshot in sampling mode: allocations sampled in the windows whose objects are
//! still alive (checked by `liveness` in the target's memory), beside the syscall-level stacks
//! (mmap, brk), which the always-attached tracepoints follow completely.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use leakprobe_common::{AllocFunction, CallShape, LiveAllocation, LiveKey, StackCounters};

use crate::{
    liveness::{Liveness, Pass},
    loader::Probes,
    python::memory::ReadMemory,
};

pub struct SampledHeap {
    liveness: Liveness,
    /// The allocator each stack came from, as the kernel stored it.
    functions: HashMap<u64, Option<AllocFunction>>,
    /// Object stacks reported before: reported again (at zero) once their samples are all dead.
    reported: HashSet<u64>,
}

/// Blocks from these may hold Python objects (the sampling windows hook only them); the ones
/// that hold none are found out and dropped by `liveness`.
fn holds_objects(function: Option<AllocFunction>) -> bool {
    use AllocFunction::*;
    matches!(function, Some(PyObjectMalloc | PyObjectCalloc | PyObjectRealloc | Malloc | Calloc | Realloc))
}

impl SampledHeap {
    /// `type_type`: the address of `PyType_Type` in the target; `layout`: its interpreter's.
    pub fn new(type_type: u64, layout: &crate::python::layout::Layout) -> SampledHeap {
        SampledHeap {
            liveness: Liveness::new(type_type, layout.objects),
            functions: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    /// The stacks whose series are sampled live objects.
    pub fn object_stacks(&self) -> HashSet<u64> {
        self.reported.clone()
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
        self.check(probes, mem, &counters, true).map(|_| ())
    }

    /// Per-stack counters: live sampled objects for object stacks, the kernel's counters for
    /// syscall stacks. Dead and unjudgeable samples are removed from the kernel's table.
    pub fn snapshot(&mut self, probes: &mut Probes, mem: &impl ReadMemory) -> Result<Vec<(u64, StackCounters)>> {
        let counters = probes.kernel().stack_counters()?;
        let pass = self.check(probes, mem, &counters, false)?;
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
        first_looks: bool,
    ) -> Result<Pass> {
        for (id, _) in counters {
            if !self.functions.contains_key(id) {
                self.functions.insert(*id, probes.kernel().stack_function(*id));
            }
        }
        // One process per table here (`record`): the key's process is the target.
        let mut tgid = 0;
        let sampled: Vec<(u64, LiveAllocation)> = probes
            .kernel()
            .live_allocations()?
            .into_iter()
            .filter(|(_, a)| holds_objects(self.functions.get(&a.stack_id).copied().flatten()))
            .map(|(key, a)| {
                tgid = key.tgid;
                (key.address, a)
            })
            .collect();
        let pass = self.liveness.check(mem, &sampled, first_looks);
        let forget: Vec<LiveKey> = pass.forget.iter().map(|&address| LiveKey { address, tgid, reserved: 0 }).collect();
        probes.kernel_mut().remove_live_allocations(&forget)?;
        Ok(pass)
    }
}
