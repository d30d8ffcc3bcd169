//! The agent's kernel side: one set of programs for the whole node. The memory-syscall
//! tracepoints follow every process in the `TARGETS` map (each event keyed by its process), and
//! the sched tracepoints report execs, forks of watched processes and their exits through a ring
//! buffer. No allocator uprobe is attached: this is the continuous, nearly free mode.

use std::collections::HashSet;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    Ebpf,
};
use leakprobe_common::{names, LiveAllocation, LiveKey, ProcessEvent, StackCounters, StackTrace};
use tokio::io::unix::AsyncFd;

use crate::{
    loader::{self, TableSizes, SYSCALL_TRACEPOINTS},
    python::runtime::PythonRuntime,
    sampler, tracefs,
};

const SCHED_TRACEPOINTS: &[(&str, &str)] = &[
    ("process_exec", "sched_process_exec"),
    ("process_fork", "sched_process_fork"),
    ("process_exit", "sched_process_exit"),
];

pub struct NodeProbes {
    ebpf: Ebpf,
    pub events: AsyncFd<RingBuf<MapData>>,
    pub mounted_tracefs: bool,
}

fn map<'a, K: aya::Pod, V: aya::Pod>(ebpf: &'a mut Ebpf, name: &str) -> Result<BpfHashMap<&'a mut MapData, K, V>> {
    let map = ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))?;
    Ok(BpfHashMap::try_from(map)?)
}

/// Deletes `keys` from the hash map `name` (absent keys are fine).
fn remove_keys<'k, K: aya::Pod + 'k, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    keys: impl Iterator<Item = &'k K>,
) -> Result<()> {
    let mut m = map::<K, V>(ebpf, name)?;
    for key in keys {
        let _ = m.remove(key);
    }
    Ok(())
}

impl NodeProbes {
    pub fn load(sizes: TableSizes) -> Result<NodeProbes> {
        let mounted_tracefs = tracefs::ensure_mounted()?;
        let fork_offset = tracefs::field_offset("sched", "sched_process_fork", "child_pid").unwrap_or(0);
        let mut ebpf = loader::load(0, sizes, fork_offset)?;
        loader::attach_tracepoints(&mut ebpf, "syscalls", SYSCALL_TRACEPOINTS)?;
        loader::attach_tracepoints(&mut ebpf, "sched", SCHED_TRACEPOINTS)?;
        let ring =
            ebpf.take_map(names::PROCESS_EVENTS).ok_or_else(|| anyhow!("map {} missing", names::PROCESS_EVENTS))?;
        // SAFETY: the ring buffer owns its map's file descriptor, which stays open (and is not
        // replaced) for as long as the AsyncFd owns the ring buffer.
        let events = unsafe { AsyncFd::register(RingBuf::try_from(ring)?) }
            .map_err(|e| anyhow!("cannot poll the process-event ring buffer: {}", e.into_parts().1))?;
        Ok(NodeProbes { ebpf, events, mounted_tracefs })
    }

    /// Kernel programs attached.
    pub fn programs_attached(&self) -> usize {
        SYSCALL_TRACEPOINTS.len() + SCHED_TRACEPOINTS.len()
    }

    /// Starts following `pid` (with its Python frames when `python` is known).
    pub fn add_target(&mut self, pid: u32, python: Option<&PythonRuntime>) -> Result<()> {
        if let Some(python) = python {
            map::<u32, leakprobe_common::PythonConfig>(&mut self.ebpf, names::PYTHON_CONFIG)?.insert(
                pid,
                python.kernel_config(),
                0,
            )?;
        }
        map::<u32, u8>(&mut self.ebpf, names::TARGETS)?
            .insert(pid, 1, 0)
            .with_context(|| format!("cannot watch PID {pid} (too many targets?)"))
    }

    /// Stops following `pids` and releases everything the kernel holds for them: their entry in
    /// every per-process map, their stacks and counters (`stacks`), their live mappings.
    pub fn remove_targets(&mut self, pids: &HashSet<u32>, stacks: &[u64]) -> Result<()> {
        if pids.is_empty() {
            return Ok(());
        }
        remove_keys::<u32, u8>(&mut self.ebpf, names::TARGETS, pids.iter())?;
        remove_keys::<u32, leakprobe_common::PythonConfig>(&mut self.ebpf, names::PYTHON_CONFIG, pids.iter())?;
        remove_keys::<u32, u64>(&mut self.ebpf, "BRK_CURRENT", pids.iter())?;
        remove_keys::<u64, StackTrace>(&mut self.ebpf, names::STACKS, stacks.iter())?;
        remove_keys::<u64, StackCounters>(&mut self.ebpf, names::STACK_COUNTERS, stacks.iter())?;
        let live = map::<LiveKey, LiveAllocation>(&mut self.ebpf, names::LIVE_ALLOCATIONS)?;
        let gone: Vec<LiveKey> = live.keys().filter_map(|k| k.ok()).filter(|k| pids.contains(&k.tgid)).collect();
        remove_keys::<LiveKey, LiveAllocation>(&mut self.ebpf, names::LIVE_ALLOCATIONS, gone.iter())
    }

    pub fn set_thread_states(&mut self, threads: &[(u32, u64)]) -> Result<()> {
        loader::write_thread_states(&mut self.ebpf, threads)
    }

    pub fn stack_counters(&self) -> Result<Vec<(u64, StackCounters)>> {
        sampler::stack_counters_of(&self.ebpf)
    }

    pub fn stack_trace(&self, id: u64) -> Option<StackTrace> {
        sampler::stack_trace_of(&self.ebpf, id)
    }

    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>> {
        sampler::counters_of(&self.ebpf)
    }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Option<ProcessEvent> {
    if bytes.len() < std::mem::size_of::<ProcessEvent>() {
        return None;
    }
    // SAFETY: ProcessEvent is repr(C) plain data and the record is at least that long; the ring
    // buffer gives no alignment guarantee, hence the unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ProcessEvent>()) })
}
