//! Typed access to the kernel's maps: each map's key and value types are written once, here.
//! Reads skip entries deleted under them (between get_next_key and lookup): not fatal.

use std::os::fd::{AsRawFd, RawFd};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray, RingBuf},
    Pod,
};
use leakprobe_common::{
    names, AllocFunction, Counter, LiveAllocation, LiveKey, PendingCall, ProcessEvent, PythonConfig, StackCounters,
    StackTrace,
};

use super::{Counters, Kernel};

impl Kernel {
    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))
    }

    fn hash_map<K: Pod, V: Pod>(&self, name: &str) -> Result<HashMap<&MapData, K, V>> {
        Ok(HashMap::try_from(self.map(name)?)?)
    }

    fn hash_map_mut<K: Pod, V: Pod>(&mut self, name: &str) -> Result<HashMap<&mut MapData, K, V>> {
        let map = self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))?;
        Ok(HashMap::try_from(map)?)
    }

    /// Deletes `keys` from the hash map `name` (absent keys are fine).
    fn remove_keys<'k, K: Pod + 'k, V: Pod>(
        &mut self,
        name: &str,
        keys: impl IntoIterator<Item = &'k K>,
    ) -> Result<()> {
        let mut map = self.hash_map_mut::<K, V>(name)?;
        for key in keys {
            let _ = map.remove(key);
        }
        Ok(())
    }

    /// All per-stack counters as they are now (`STACK_COUNTERS`).
    pub fn stack_counters(&self) -> Result<Vec<(u64, StackCounters)>> {
        let map = self.hash_map::<u64, StackCounters>(names::STACK_COUNTERS)?;
        Ok(map.iter().filter_map(|entry| entry.ok()).collect())
    }

    /// The frames of one stack, if the kernel stored it (`STACKS`).
    pub fn stack_trace(&self, stack_id: u64) -> Option<StackTrace> {
        self.hash_map::<u64, StackTrace>(names::STACKS).ok()?.get(&stack_id, 0).ok()
    }

    /// The allocator function a stored stack was captured in.
    pub fn stack_function(&self, stack_id: u64) -> Option<AllocFunction> {
        self.stack_trace(stack_id).and_then(|trace| AllocFunction::from_u32(trace.function))
    }

    /// Forgets the stacks `ids` and their counters (`STACKS`, `STACK_COUNTERS`).
    pub fn remove_stacks(&mut self, ids: &[u64]) -> Result<()> {
        self.remove_keys::<u64, StackTrace>(names::STACKS, ids)?;
        self.remove_keys::<u64, StackCounters>(names::STACK_COUNTERS, ids)
    }

    /// Event and drop counters, summed over CPUs (`COUNTERS`); an unreadable slot reads 0.
    pub fn counters(&self) -> Result<Counters> {
        let map = PerCpuArray::<&MapData, u64>::try_from(self.map(names::COUNTERS)?)?;
        Ok(Counters::from_fn(|counter: Counter| {
            map.get(&(counter as u32), 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
        }))
    }

    /// Every live allocation with its key (`LIVE_ALLOCATIONS`).
    pub fn live_allocations(&self) -> Result<Vec<(LiveKey, LiveAllocation)>> {
        let map = self.hash_map::<LiveKey, LiveAllocation>(names::LIVE_ALLOCATIONS)?;
        Ok(map.iter().filter_map(|entry| entry.ok()).collect())
    }

    /// The keys of every live allocation (cheaper than `live_allocations`: no value lookups).
    pub fn live_keys(&self) -> Result<Vec<LiveKey>> {
        let map = self.hash_map::<LiveKey, LiveAllocation>(names::LIVE_ALLOCATIONS)?;
        Ok(map.keys().filter_map(|key| key.ok()).collect())
    }

    pub fn remove_live_allocations<'k>(&mut self, keys: impl IntoIterator<Item = &'k LiveKey>) -> Result<()> {
        self.remove_keys::<LiveKey, LiveAllocation>(names::LIVE_ALLOCATIONS, keys)
    }

    /// Forgets every allocator call in flight (`PENDING`).
    pub fn clear_pending_calls(&mut self) -> Result<()> {
        let threads: Vec<u32> =
            self.hash_map::<u32, PendingCall>(names::PENDING)?.keys().filter_map(|k| k.ok()).collect();
        self.remove_keys::<u32, PendingCall>(names::PENDING, &threads)
    }

    /// Replaces the kernel's thread id -> `PyThreadState` map (`THREAD_STATES`) with `threads`.
    pub fn set_thread_states(&mut self, threads: &[(u32, u64)]) -> Result<()> {
        let mut map = self.hash_map_mut::<u32, u64>(names::THREAD_STATES)?;
        let stale: Vec<u32> =
            map.keys().filter_map(|k| k.ok()).filter(|k| !threads.iter().any(|(t, _)| t == k)).collect();
        for tid in stale {
            let _ = map.remove(&tid);
        }
        for &(tid, tstate) in threads {
            map.insert(&tid, &tstate, 0)?;
        }
        Ok(())
    }

    /// How to walk process `pid`'s Python frames (`PYTHON_CONFIG`).
    pub fn set_python_config(&mut self, pid: u32, config: PythonConfig) -> Result<()> {
        Ok(self.hash_map_mut::<u32, PythonConfig>(names::PYTHON_CONFIG)?.insert(&pid, &config, 0)?)
    }

    /// Starts following process `pid` (`TARGETS`, read when the programs serve the node).
    pub fn add_target(&mut self, pid: u32) -> Result<()> {
        self.hash_map_mut::<u32, u8>(names::TARGETS)?
            .insert(&pid, &1, 0)
            .with_context(|| format!("cannot watch PID {pid} (too many targets?)"))
    }

    /// Removes `pids` from every per-process map: `TARGETS`, `PYTHON_CONFIG`, `BRK_CURRENT`.
    pub fn remove_processes<'p>(&mut self, pids: impl IntoIterator<Item = &'p u32> + Clone) -> Result<()> {
        self.remove_keys::<u32, u8>(names::TARGETS, pids.clone())?;
        self.remove_keys::<u32, PythonConfig>(names::PYTHON_CONFIG, pids.clone())?;
        self.remove_keys::<u32, u64>(names::BRK_CURRENT, pids)
    }

    /// Takes the process-event ring buffer (`PROCESS_EVENTS`) out of the kernel object.
    pub fn take_process_events(&mut self) -> Result<ProcessEvents> {
        let map = self
            .ebpf
            .take_map(names::PROCESS_EVENTS)
            .ok_or_else(|| anyhow!("map {} missing", names::PROCESS_EVENTS))?;
        Ok(ProcessEvents(RingBuf::try_from(map)?))
    }
}

/// The process-event ring buffer: `ProcessEvent` records, pollable through its file descriptor.
pub struct ProcessEvents(RingBuf<MapData>);

impl ProcessEvents {
    /// Every event ready now (records too short to be one are skipped).
    pub fn drain(&mut self) -> Vec<ProcessEvent> {
        let mut events = Vec::new();
        while let Some(record) = self.0.next() {
            events.extend(decode(&record));
        }
        events
    }
}

/// Decodes one ring-buffer record.
fn decode(bytes: &[u8]) -> Option<ProcessEvent> {
    if bytes.len() < std::mem::size_of::<ProcessEvent>() {
        return None;
    }
    // SAFETY: ProcessEvent is repr(C) plain data and the record is at least that long; the ring
    // buffer gives no alignment guarantee, hence the unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ProcessEvent>()) })
}

impl AsRawFd for ProcessEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_whole_records_only() {
        let mut record = [0u8; std::mem::size_of::<ProcessEvent>()];
        record[0..4].copy_from_slice(&2u32.to_ne_bytes());
        record[4..8].copy_from_slice(&4242u32.to_ne_bytes());
        record[16..22].copy_from_slice(b"python");
        let event = decode(&record).expect("a whole record");
        assert_eq!((event.kind, event.pid, event.parent), (2, 4242, 0));
        assert_eq!(&event.comm[..7], b"python\0");
        assert!(decode(&record[..record.len() - 1]).is_none());
    }
}
