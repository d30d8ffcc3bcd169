//! The agent's kernel side: one set of programs for the whole node. The memory-syscall
//! tracepoints follow every process in the `TARGETS` map (each event keyed by its process), and
//! the sched tracepoints report execs, forks of watched processes and their exits through a ring
//! buffer. No allocator uprobe is attached: this is the continuous, nearly free mode.

use std::collections::HashSet;

use anyhow::{anyhow, Result};
use leakprobe_common::{names, LiveKey};
use tokio::io::unix::AsyncFd;

use crate::{
    kernel::{Kernel, ProcessEvents, TableSizes},
    python::runtime::PythonRuntime,
    tracefs,
};

pub struct NodeProbes {
    kernel: Kernel,
    pub events: AsyncFd<ProcessEvents>,
    pub mounted_tracefs: bool,
}

impl NodeProbes {
    pub fn load(sizes: TableSizes) -> Result<NodeProbes> {
        let mounted_tracefs = tracefs::ensure_mounted()?;
        let fork_offset = tracefs::field_offset("sched", "sched_process_fork", "child_pid").unwrap_or(0);
        let mut kernel = Kernel::for_node(sizes, fork_offset)?;
        kernel.attach_tracepoints("syscalls", names::SYSCALL_TRACEPOINTS)?;
        kernel.attach_tracepoints("sched", names::SCHED_TRACEPOINTS)?;
        // SAFETY: the ring buffer owns its map's file descriptor, which stays open (and is not
        // replaced) for as long as the AsyncFd owns the ring buffer.
        let events = unsafe { AsyncFd::register(kernel.take_process_events()?) }
            .map_err(|e| anyhow!("cannot poll the process-event ring buffer: {}", e.into_parts().1))?;
        Ok(NodeProbes { kernel, events, mounted_tracefs })
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    pub fn kernel_mut(&mut self) -> &mut Kernel {
        &mut self.kernel
    }

    /// Kernel programs attached: every program the agent loads is a tracepoint it attached.
    pub fn programs_attached(&self) -> usize {
        self.kernel.program_names().len()
    }

    /// Starts following `pid` (with its Python frames when `python` is known).
    pub fn add_target(&mut self, pid: u32, python: Option<&PythonRuntime>) -> Result<()> {
        if let Some(python) = python {
            self.kernel.set_python_config(pid, python.kernel_config())?;
        }
        self.kernel.add_target(pid)
    }

    /// Stops following `pids` and releases everything the kernel holds for them: their entry in
    /// every per-process map, their stacks and counters (`stacks`), their live mappings.
    pub fn remove_targets(&mut self, pids: &HashSet<u32>, stacks: &[u64]) -> Result<()> {
        if pids.is_empty() {
            return Ok(());
        }
        self.kernel.remove_processes(pids)?;
        self.kernel.remove_stacks(stacks)?;
        let gone: Vec<LiveKey> = self.kernel.live_keys()?.into_iter().filter(|k| pids.contains(&k.tgid)).collect();
        self.kernel.remove_live_allocations(&gone)
    }
}
