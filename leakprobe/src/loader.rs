//! Loads the kernel programs, sizes their maps, and attaches them to one target process.
//! Dropping `Probes` detaches everything; if leakprobe is killed, the kernel does the same when
//! its file descriptors close, so no probe outlives the process.

use std::num::NonZeroU32;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use leakprobe_common::{names, AllocFunction, CallShape, PythonConfig};

use crate::{python::runtime::PythonRuntime, target::Target, tracefs};

static KERNEL_PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakprobe"));

/// Sizes of the kernel tables; each full table is counted as drops, never silently.
#[derive(Debug, Clone, Copy)]
pub struct TableSizes {
    pub live_allocations: u32,
    pub stacks: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        TableSizes { live_allocations: 1 << 20, stacks: 1 << 15 }
    }
}

/// The syscall tracepoints and the programs behind them.
pub const SYSCALL_TRACEPOINTS: &[(&str, &str)] = &[
    ("mmap_enter", "sys_enter_mmap"),
    ("mmap_exit", "sys_exit_mmap"),
    ("munmap_enter", "sys_enter_munmap"),
    ("mremap_enter", "sys_enter_mremap"),
    ("mremap_exit", "sys_exit_mremap"),
    ("brk_enter", "sys_enter_brk"),
    ("brk_exit", "sys_exit_brk"),
];

/// A hooked function: where, and which.
#[derive(Debug, Clone)]
pub struct Hook {
    pub function: AllocFunction,
    pub object: String,
}

pub struct Probes {
    pub ebpf: Ebpf,
    pub hooks: Vec<Hook>,
    /// Whether we mounted tracefs ourselves.
    pub mounted_tracefs: bool,
}

fn entry_program(shape: CallShape) -> Option<&'static str> {
    Some(match shape {
        CallShape::Size => "alloc_size",
        CallShape::CountSize => "alloc_count_size",
        CallShape::PtrSize => "alloc_ptr_size",
        CallShape::PtrCountSize => "alloc_ptr_count_size",
        CallShape::AlignSize => "alloc_align_size",
        CallShape::OutPtrAlignSize => "alloc_posix_memalign",
        CallShape::Free => "free_ptr",
        CallShape::Syscall => return None,
    })
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    let program: &mut UProbe =
        ebpf.program_mut(name).ok_or_else(|| anyhow!("kernel program {name} missing from the object"))?.try_into()?;
    Ok(program)
}

/// Loads the programs for `target` and attaches every hook. With `python`, the kernel also walks
/// the target's Python frames at each event.
pub fn attach(target: &Target, sizes: TableSizes, python: Option<&PythonRuntime>) -> Result<Probes> {
    if KERNEL_PROGRAMS.is_empty() {
        bail!(
            "this leakprobe was built without its kernel programs (AYA_BUILD_SKIP): rebuild with `cargo xtask build`"
        );
    }
    let pid = NonZeroU32::new(target.pid).ok_or_else(|| anyhow!("PID 0 is not a process"))?;
    let mut ebpf = EbpfLoader::new()
        .override_global(names::TARGET_TGID, &target.pid, true)
        .map_max_entries(names::LIVE_ALLOCATIONS, sizes.live_allocations)
        .map_max_entries(names::STACKS, sizes.stacks)
        .map_max_entries(names::STACK_COUNTERS, sizes.stacks)
        .load(KERNEL_PROGRAMS)
        .map_err(|e| anyhow!("cannot load the eBPF programs into the kernel: {e}"))?;

    if let Some(python) = python {
        let mut config: aya::maps::HashMap<_, u32, PythonConfig> = aya::maps::HashMap::try_from(
            ebpf.map_mut(names::PYTHON_CONFIG).ok_or_else(|| anyhow!("map {} missing", names::PYTHON_CONFIG))?,
        )?;
        config.insert(target.pid, python.kernel_config(), 0)?;
        // Before any probe fires, so the first events already have their Python stacks.
        write_thread_states(&mut ebpf, &python.thread_states())?;
    }

    for name in [
        "alloc_size",
        "alloc_count_size",
        "alloc_ptr_size",
        "alloc_ptr_count_size",
        "alloc_align_size",
        "alloc_posix_memalign",
        "free_ptr",
        "alloc_return",
    ] {
        uprobe(&mut ebpf, name)?.load().with_context(|| format!("the kernel rejected {name}"))?;
    }
    let mut hooks = Vec::new();
    for object in &target.objects {
        for &(function, offset) in &object.functions {
            let Some(entry) = entry_program(function.shape()) else {
                continue;
            };
            let point = || UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(offset),
                cookie: Some(function as u64),
            };
            let scope = UProbeScope::OneProcess(pid);
            uprobe(&mut ebpf, entry)?
                .attach(point(), &object.host_path, scope)
                .with_context(|| format!("cannot attach to {} in {}", function.symbol(), object.path.display()))?;
            if function.shape() != CallShape::Free {
                uprobe(&mut ebpf, "alloc_return")?.attach(point(), &object.host_path, scope).with_context(|| {
                    format!("cannot attach to the return of {} in {}", function.symbol(), object.path.display())
                })?;
            }
            hooks.push(Hook { function, object: object.path.display().to_string() });
        }
    }

    let mounted_tracefs = tracefs::ensure_mounted()?;
    for &(program, tracepoint) in SYSCALL_TRACEPOINTS {
        let tp: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("kernel program {program} missing from the object"))?
            .try_into()?;
        tp.load().with_context(|| format!("the kernel rejected {program}"))?;
        tp.attach("syscalls", tracepoint)
            .with_context(|| format!("cannot attach to tracepoint syscalls:{tracepoint}"))?;
    }
    Ok(Probes { ebpf, hooks, mounted_tracefs })
}

impl Probes {
    /// Replaces the kernel's thread id -> `PyThreadState` map with `threads`.
    pub fn set_thread_states(&mut self, threads: &[(u32, u64)]) -> Result<()> {
        write_thread_states(&mut self.ebpf, threads)
    }
}

fn write_thread_states(ebpf: &mut Ebpf, threads: &[(u32, u64)]) -> Result<()> {
    let mut map: aya::maps::HashMap<_, u32, u64> = aya::maps::HashMap::try_from(
        ebpf.map_mut(names::THREAD_STATES).ok_or_else(|| anyhow!("map {} missing", names::THREAD_STATES))?,
    )?;
    let stale: Vec<u32> = map.keys().filter_map(|k| k.ok()).filter(|k| !threads.iter().any(|(t, _)| t == k)).collect();
    for tid in stale {
        let _ = map.remove(&tid);
    }
    for &(tid, tstate) in threads {
        map.insert(tid, tstate, 0)?;
    }
    Ok(())
}
