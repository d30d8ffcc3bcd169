//! Loads the kernel programs, sizes their maps, and attaches them to one target process.
//! Dropping `Probes` detaches everything; if leakprobe is killed, the kernel does the same when
//! its file descriptors close, so no probe outlives the process.

use std::num::NonZeroU32;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use leakprobe_common::{names, AllocFunction, CallShape, PendingCall, PythonConfig};

use crate::{probe_cost, python::runtime::PythonRuntime, target::Target, tracefs};

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
    pid: NonZeroU32,
    plan: Vec<Attachment>,
    /// Attached links: program, cookie (the function), link.
    links: Vec<(&'static str, u64, UProbeLinkId)>,
    /// Threads closing detached links (see `detach_uprobes`).
    detaching: Vec<std::thread::JoinHandle<()>>,
}

/// One uprobe to attach: which program, where, with which cookie.
struct Attachment {
    program: &'static str,
    offset: u64,
    path: std::path::PathBuf,
    cookie: u64,
    /// For errors: "malloc in /usr/lib/libc.so.6".
    what: String,
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

/// The functions sampling windows hook, hottest first: CPython's object allocator, and libc's
/// for objects over 512 bytes (which `PyObject_Malloc` hands to malloc, and which LTO builds such
/// as Debian's and the official Docker images' allocate through malloc directly, the object
/// allocator being inlined). `liveness` judges the objects in their blocks later; blocks that hold
/// none are dropped. Frees are not hooked, and each extra link costs ~130 ms of serialized
/// unregistering at the end of every window (see `detach_uprobes`).
const WINDOW_FUNCTIONS: &[AllocFunction] = &[
    AllocFunction::PyObjectMalloc,
    AllocFunction::Malloc,
    AllocFunction::PyObjectRealloc,
    AllocFunction::Realloc,
    AllocFunction::PyObjectCalloc,
    AllocFunction::Calloc,
];

/// Position in `WINDOW_FUNCTIONS` (hotter first); every other function after them.
fn heat_rank(cookie: u64) -> usize {
    let function = AllocFunction::from_u32(cookie as u32);
    WINDOW_FUNCTIONS.iter().position(|f| Some(*f) == function).unwrap_or(WINDOW_FUNCTIONS.len())
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    let program: &mut UProbe =
        ebpf.program_mut(name).ok_or_else(|| anyhow!("kernel program {name} missing from the object"))?.try_into()?;
    Ok(program)
}

/// Loads the programs for `target` and attaches every hook. With `python`, the kernel also walks
/// the target's Python frames at each event.
pub fn attach(target: &Target, sizes: TableSizes, python: Option<&PythonRuntime>) -> Result<Probes> {
    let pid = NonZeroU32::new(target.pid).ok_or_else(|| anyhow!("PID 0 is not a process"))?;
    let mut ebpf = load(target.pid, sizes, 0)?;

    if let Some(python) = python {
        let mut config: aya::maps::HashMap<_, u32, PythonConfig> = aya::maps::HashMap::try_from(
            ebpf.map_mut(names::PYTHON_CONFIG).ok_or_else(|| anyhow!("map {} missing", names::PYTHON_CONFIG))?,
        )?;
        config.insert(target.pid, python.kernel_config(), 0)?;
        // Before any probe fires, so the first events already have their Python stacks.
        write_thread_states(&mut ebpf, &python.thread_states())?;
    }

    for name in probe_cost::UPROBE_PROGRAMS {
        uprobe(&mut ebpf, name)?.load().with_context(|| format!("the kernel rejected {name}"))?;
    }
    let mut hooks = Vec::new();
    let mut plan = Vec::new();
    for object in &target.objects {
        for &(function, offset) in &object.functions {
            let Some(entry) = entry_program(function.shape()) else {
                continue;
            };
            let place = format!("{} in {}", function.symbol(), object.path.display());
            let attachment = |program, what: &str| Attachment {
                program,
                offset,
                path: object.host_path.clone(),
                cookie: function as u64,
                what: format!("{what}{place}"),
            };
            plan.push(attachment(entry, ""));
            if function.shape() != CallShape::Free {
                plan.push(attachment("alloc_return", "the return of "));
            }
            hooks.push(Hook { function, object: object.path.display().to_string() });
        }
    }
    // Return probes before entry probes: an entry seen without its return would leave its thread
    // "inside a call" and every later call on it would look nested (unrecorded). Hottest first
    // within each: the kernel unregisters uprobes one at a time (see `detach_uprobes`).
    plan.sort_by_key(|a| (a.program != "alloc_return", heat_rank(a.cookie)));
    let mut probes =
        Probes { ebpf, hooks, mounted_tracefs: false, pid, plan, links: Vec::new(), detaching: Vec::new() };
    // The uprobes are attached by the recording: for good, or in sampling windows (each hit costs
    // the target a kernel trap).
    let ebpf = &mut probes.ebpf;

    probes.mounted_tracefs = tracefs::ensure_mounted()?;
    attach_tracepoints(ebpf, "syscalls", SYSCALL_TRACEPOINTS)?;
    Ok(probes)
}

/// Loads the kernel programs with their maps sized: for one process (`target_tgid`), or for the
/// processes in the `TARGETS` map (0, the agent). `fork_child_pid_offset`: see
/// `tracefs::field_offset`; 0 keeps the built-in default.
pub fn load(target_tgid: u32, sizes: TableSizes, fork_child_pid_offset: u32) -> Result<Ebpf> {
    if KERNEL_PROGRAMS.is_empty() {
        bail!(
            "this leakprobe was built without its kernel programs (AYA_BUILD_SKIP): rebuild with `cargo xtask build`"
        );
    }
    let mut loader = EbpfLoader::new();
    loader
        .override_global(names::TARGET_TGID, &target_tgid, true)
        .map_max_entries(names::LIVE_ALLOCATIONS, sizes.live_allocations)
        .map_max_entries(names::STACKS, sizes.stacks)
        .map_max_entries(names::STACK_COUNTERS, sizes.stacks);
    if fork_child_pid_offset != 0 {
        loader.override_global(names::FORK_CHILD_PID_OFFSET, &fork_child_pid_offset, true);
    }
    loader.load(KERNEL_PROGRAMS).map_err(|e| anyhow!("cannot load the eBPF programs into the kernel: {e}"))
}

/// Loads and attaches `(program, tracepoint)` pairs of one tracepoint category.
pub fn attach_tracepoints(ebpf: &mut Ebpf, category: &str, list: &[(&str, &str)]) -> Result<()> {
    for &(program, tracepoint) in list {
        let tp: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("kernel program {program} missing from the object"))?
            .try_into()?;
        tp.load().with_context(|| format!("the kernel rejected {program}"))?;
        tp.attach(category, tracepoint)
            .with_context(|| format!("cannot attach to tracepoint {category}:{tracepoint}"))?;
    }
    Ok(())
}

impl Probes {
    /// Attaches every allocator uprobe (no-op when attached). Each hit costs the target a kernel
    /// trap, so the recording attaches them only inside its sampling windows.
    pub fn attach_uprobes(&mut self) -> Result<()> {
        if !self.links.is_empty() || self.plan.is_empty() {
            return Ok(());
        }
        // Calls open when the last window closed never returned to us: their entries would make
        // this window's calls on those threads look nested (and go unrecorded).
        self.forget_pending_calls()?;
        let scope = UProbeScope::OneProcess(self.pid);
        let mut failure = None;
        for a in &self.plan {
            let point =
                UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(a.offset), cookie: Some(a.cookie) };
            match uprobe(&mut self.ebpf, a.program)?.attach(point, &a.path, scope) {
                Ok(link) => self.links.push((a.program, a.cookie, link)),
                Err(e) => {
                    failure = Some(anyhow!(e).context(format!("cannot attach to {}", a.what)));
                    break;
                }
            }
        }
        match failure {
            None => Ok(()),
            Some(e) => {
                // All or nothing: a half-attached set would bias the recording.
                let _ = self.detach_uprobes();
                Err(e)
            }
        }
    }

    fn forget_pending_calls(&mut self) -> Result<()> {
        let mut pending: aya::maps::HashMap<_, u32, PendingCall> = aya::maps::HashMap::try_from(
            self.ebpf.map_mut(names::PENDING).ok_or_else(|| anyhow!("map {} missing", names::PENDING))?,
        )?;
        let threads: Vec<u32> = pending.keys().filter_map(|k| k.ok()).collect();
        for tid in threads {
            let _ = pending.remove(&tid);
        }
        Ok(())
    }

    /// Detaches every allocator uprobe; the syscall tracepoints stay. The kernel unregisters
    /// uprobes one at a time, each waiting for a grace period (~130 ms here, 5.6 s for 40 links),
    /// and a function's breakpoint keeps trapping until its last link is gone. So the links are
    /// released on a background thread, function by function, hottest first, each function's
    /// entry before its return (a call whose entry was seen still has its return seen).
    pub fn detach_uprobes(&mut self) -> Result<()> {
        let mut attached = std::mem::take(&mut self.links);
        attached.sort_by_key(|(program, cookie, _)| (heat_rank(*cookie), *program == "alloc_return"));
        let mut links = Vec::new();
        for (program, _, link) in attached {
            links.push(uprobe(&mut self.ebpf, program)?.take_link(link)?);
        }
        let closing = std::thread::Builder::new()
            .name("lp-detach".into())
            .spawn(move || {
                for link in links {
                    drop(link);
                }
            })
            .context("cannot start a thread to detach the probes")?;
        self.detaching.push(closing);
        Ok(())
    }

    /// From now on, attaches only the functions worth hooking in short windows (see
    /// `WINDOW_FUNCTIONS`), or none at all.
    pub fn narrow_to_window_functions(&mut self, any: bool) {
        self.plan.retain(|a| any && heat_rank(a.cookie) < WINDOW_FUNCTIONS.len());
    }

    /// Whether there is any uprobe to attach.
    pub fn can_attach(&self) -> bool {
        !self.plan.is_empty()
    }

    /// Whether detached uprobes are still being unregistered (they may still trap).
    pub fn detaching(&self) -> bool {
        self.detaching.iter().any(|closing| !closing.is_finished())
    }

    /// Whether every detached uprobe is fully unregistered.
    pub fn detach_settled(&mut self) -> bool {
        self.detaching.retain(|closing| !closing.is_finished());
        self.detaching.is_empty()
    }

    pub fn uprobes_attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Replaces the kernel's thread id -> `PyThreadState` map with `threads`.
    pub fn set_thread_states(&mut self, threads: &[(u32, u64)]) -> Result<()> {
        write_thread_states(&mut self.ebpf, threads)
    }
}

pub fn write_thread_states(ebpf: &mut Ebpf, threads: &[(u32, u64)]) -> Result<()> {
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
