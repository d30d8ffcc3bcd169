//! Attaches the kernel programs to one target process (`record`, `watch`): what to hook where,
//! in which order, and the sampling windows' attach/detach of the allocator uprobes. Dropping
//! `Probes` detaches everything (see `kernel`).

use std::num::NonZeroU32;

use anyhow::{anyhow, Context, Result};
use leakprobe_common::{names, AllocFunction, CallShape};

use crate::{
    kernel::{Kernel, TableSizes, UprobeLink},
    probe_site::{self, ProbeSite},
    python::runtime::PythonRuntime,
    target::Target,
    tracefs,
};

/// A hooked function: where, which, and where in it the breakpoint sits.
#[derive(Debug, Clone)]
pub struct Hook {
    pub function: AllocFunction,
    pub object: String,
    pub site: ProbeSite,
}

pub struct Probes {
    kernel: Kernel,
    pub hooks: Vec<Hook>,
    /// Whether we mounted tracefs ourselves.
    pub mounted_tracefs: bool,
    pid: NonZeroU32,
    plan: Vec<Attachment>,
    /// Attached links, with their cookie (the function).
    links: Vec<(u64, UprobeLink)>,
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

/// The entry program for an allocator function of `shape`; `None` for the syscalls (tracepoints).
pub fn entry_program(shape: CallShape) -> Option<&'static str> {
    Some(match shape {
        CallShape::Size => names::ALLOC_SIZE,
        CallShape::CountSize => names::ALLOC_COUNT_SIZE,
        CallShape::PtrSize => names::ALLOC_PTR_SIZE,
        CallShape::PtrCountSize => names::ALLOC_PTR_COUNT_SIZE,
        CallShape::AlignSize => names::ALLOC_ALIGN_SIZE,
        CallShape::OutPtrAlignSize => names::ALLOC_POSIX_MEMALIGN,
        CallShape::Free => names::FREE_PTR,
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

/// Where a probe goes in the attach order: return probes first, hottest function first within.
fn attach_order(program: &str, cookie: u64) -> (bool, usize) {
    (program != names::ALLOC_RETURN, heat_rank(cookie))
}

/// Where a probe goes in the detach order: hottest function first, its entry before its return.
fn detach_order(program: &str, cookie: u64) -> (usize, bool) {
    (heat_rank(cookie), program == names::ALLOC_RETURN)
}

/// Loads the programs for `target` and attaches every hook. With `python`, the kernel also walks
/// the target's Python frames at each event.
pub fn attach(target: &Target, sizes: TableSizes, python: Option<&PythonRuntime>) -> Result<Probes> {
    let pid = NonZeroU32::new(target.pid).ok_or_else(|| anyhow!("PID 0 is not a process"))?;
    let mut kernel = Kernel::for_process(target.pid, sizes)?;

    if let Some(python) = python {
        kernel.set_python_config(target.pid, python.kernel_config())?;
        // Before any probe fires, so the first events already have their Python stacks.
        kernel.set_thread_states(&python.thread_states())?;
    }

    kernel.load_uprobes()?;
    let emulation = probe_site::running_kernel();
    let mut hooks = Vec::new();
    let mut plan = Vec::new();
    for object in &target.objects {
        for &(function, offset) in &object.functions {
            let Some(entry) = entry_program(function.shape()) else {
                continue;
            };
            // Entry and return probe both at the site: the stack pointer is unmoved there, so the
            // return probe still finds the return address.
            let site =
                probe_site::choose_in_file(&object.host_path, offset, function.shape().integer_args(), &emulation);
            let place = format!("{} in {}", function.symbol(), object.path.display());
            let attachment = |program, what: &str| Attachment {
                program,
                offset: site.vaddr,
                path: object.host_path.clone(),
                cookie: probe_site::attach_cookie(function, &site),
                what: format!("{what}{place}"),
            };
            plan.push(attachment(entry, ""));
            if function.shape() != CallShape::Free {
                plan.push(attachment(names::ALLOC_RETURN, "the return of "));
            }
            hooks.push(Hook { function, object: object.path.display().to_string(), site });
        }
    }
    // Return probes before entry probes: an entry seen without its return would leave its thread
    // "inside a call" and every later call on it would look nested (unrecorded). Hottest first
    // within each: the kernel unregisters uprobes one at a time (see `detach_uprobes`).
    plan.sort_by_key(|a| attach_order(a.program, a.cookie));
    // The uprobes are attached by the recording: for good, or in sampling windows (each hit costs
    // the target a kernel trap).
    let mounted_tracefs = tracefs::ensure_mounted()?;
    kernel.attach_tracepoints("syscalls", names::SYSCALL_TRACEPOINTS)?;
    Ok(Probes { kernel, hooks, mounted_tracefs, pid, plan, links: Vec::new(), detaching: Vec::new() })
}

impl Probes {
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    pub fn kernel_mut(&mut self) -> &mut Kernel {
        &mut self.kernel
    }

    /// Attaches every allocator uprobe (no-op when attached). Each hit costs the target a kernel
    /// trap, so the recording attaches them only inside its sampling windows.
    pub fn attach_uprobes(&mut self) -> Result<()> {
        if !self.links.is_empty() || self.plan.is_empty() {
            return Ok(());
        }
        // Calls open when the last window closed never returned to us: their entries would make
        // this window's calls on those threads look nested (and go unrecorded).
        self.kernel.clear_pending_calls()?;
        let mut failure = None;
        for a in &self.plan {
            match self.kernel.attach_uprobe(a.program, a.offset, &a.path, a.cookie, self.pid) {
                Ok(link) => self.links.push((a.cookie, link)),
                Err(e) => {
                    failure = Some(e.context(format!("cannot attach to {}", a.what)));
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

    /// Detaches every allocator uprobe; the syscall tracepoints stay. The kernel unregisters
    /// uprobes one at a time, each waiting for a grace period (~130 ms here, 5.6 s for 40 links),
    /// and a function's breakpoint keeps trapping until its last link is gone. So the links are
    /// released on a background thread, function by function, hottest first, each function's
    /// entry before its return (a call whose entry was seen still has its return seen).
    pub fn detach_uprobes(&mut self) -> Result<()> {
        let mut attached = std::mem::take(&mut self.links);
        attached.sort_by_key(|(cookie, link)| detach_order(link.program(), *cookie));
        let mut links = Vec::new();
        for (_, link) in attached {
            links.push(self.kernel.take_link(link)?);
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

    /// Whether any entry probe the windows attach sits on a single-stepped instruction.
    pub fn window_sites_stepped(&self) -> bool {
        self.plan.iter().any(|a| a.program != names::ALLOC_RETURN && leakprobe_common::cookie::stepped(a.cookie))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probes for a few functions, in attach order.
    fn attach_sorted() -> Vec<(&'static str, AllocFunction)> {
        let mut probes = Vec::new();
        for function in
            [AllocFunction::Free, AllocFunction::Calloc, AllocFunction::PyObjectMalloc, AllocFunction::Malloc]
        {
            let entry = entry_program(function.shape()).unwrap();
            probes.push((entry, function));
            if function.shape() != CallShape::Free {
                probes.push((names::ALLOC_RETURN, function));
            }
        }
        probes.sort_by_key(|&(program, function)| attach_order(program, function as u64));
        probes
    }

    #[test]
    fn returns_attach_before_entries_hottest_first() {
        use AllocFunction::*;
        let ret = names::ALLOC_RETURN;
        assert_eq!(
            attach_sorted(),
            vec![
                (ret, PyObjectMalloc),
                (ret, Malloc),
                (ret, Calloc),
                (names::ALLOC_SIZE, PyObjectMalloc),
                (names::ALLOC_SIZE, Malloc),
                (names::ALLOC_COUNT_SIZE, Calloc),
                (names::FREE_PTR, Free),
            ]
        );
    }

    #[test]
    fn detach_hottest_first_entry_before_return() {
        use AllocFunction::*;
        let ret = names::ALLOC_RETURN;
        let mut probes = attach_sorted();
        probes.sort_by_key(|&(program, function)| detach_order(program, function as u64));
        assert_eq!(
            probes,
            vec![
                (names::ALLOC_SIZE, PyObjectMalloc),
                (ret, PyObjectMalloc),
                (names::ALLOC_SIZE, Malloc),
                (ret, Malloc),
                (names::ALLOC_COUNT_SIZE, Calloc),
                (ret, Calloc),
                (names::FREE_PTR, Free),
            ]
        );
    }
}
