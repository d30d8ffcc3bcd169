//! Reads the kernel's aggregates: per-stack counters, event/drop counters, and stored stacks.

use anyhow::{anyhow, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    Ebpf,
};
use leakprobe_common::{names, Counter, StackCounters, StackTrace};

use crate::loader::Probes;

/// All per-stack counters as they are now.
pub fn stack_counters(probes: &Probes) -> Result<Vec<(u64, StackCounters)>> {
    stack_counters_of(&probes.ebpf)
}

pub fn stack_counters_of(ebpf: &Ebpf) -> Result<Vec<(u64, StackCounters)>> {
    let map: HashMap<&MapData, u64, StackCounters> = HashMap::try_from(
        ebpf.map(names::STACK_COUNTERS).ok_or_else(|| anyhow!("map {} missing", names::STACK_COUNTERS))?,
    )?;
    // An entry deleted between get_next_key and lookup is skipped, not fatal.
    Ok(map.iter().filter_map(|entry| entry.ok()).collect())
}

/// Event and drop counters, summed over CPUs, by name.
pub fn counters(probes: &Probes) -> Result<Vec<(&'static str, u64)>> {
    counters_of(&probes.ebpf)
}

pub fn counters_of(ebpf: &Ebpf) -> Result<Vec<(&'static str, u64)>> {
    let map: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(ebpf.map(names::COUNTERS).ok_or_else(|| anyhow!("map {} missing", names::COUNTERS))?)?;
    let mut out = Vec::new();
    for index in 0..Counter::COUNT {
        let Some(counter) = Counter::from_u32(index) else {
            continue;
        };
        let total = map.get(&index, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0);
        out.push((counter.name(), total));
    }
    Ok(out)
}

/// The frames of one stack, if the kernel stored it.
pub fn stack_trace(probes: &Probes, stack_id: u64) -> Option<StackTrace> {
    stack_trace_of(&probes.ebpf, stack_id)
}

pub fn stack_trace_of(ebpf: &Ebpf, stack_id: u64) -> Option<StackTrace> {
    let map: HashMap<&MapData, u64, StackTrace> = HashMap::try_from(ebpf.map(names::STACKS)?).ok()?;
    map.get(&stack_id, 0).ok()
}
