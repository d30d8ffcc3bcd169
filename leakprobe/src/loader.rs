//! Attaches the kernel programs to one target process (`record`, `watch`): what to hook where,
//! in which order, and the sampling windows' attach/detach of the allocator uprobes. Dropping
//! `Probes` detaches everything (see `kernel`).

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use leakprobe_common::{names, AllocFunction, CallShape};

use crate::{
    kernel::{self, DetachedLink, Kernel, LinkKind, TableSizes, UprobeLink},
    probe_site::{self, LiveImage, MappedFile, ProbeSite},
    proc_maps,
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
    /// How sites are linked (see `Kernel::load_uprobes`).
    pub link_kind: LinkKind,
    /// Attached links, with their place in the detach order.
    links: Vec<((usize, bool), UprobeLink)>,
    /// Threads closing detached links (see `detach_uprobes`), each returning how long it took.
    detaching: Vec<std::thread::JoinHandle<Duration>>,
    /// How long the finished detaches took: the tail after each window, while hooks still trap.
    pub detach_tails: DetachTails,
}

/// The time windows' links took to be unregistered after each window closed.
#[derive(Debug, Clone, Copy, Default)]
pub struct DetachTails {
    pub count: u32,
    pub total: Duration,
    pub max: Duration,
}

impl DetachTails {
    fn add(&mut self, tail: Duration) {
        self.count += 1;
        self.total += tail;
        self.max = self.max.max(tail);
    }
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

/// The entry program for an allocator function of `shape` (one for all: the cookie names the
/// function); `None` for the syscalls (tracepoints).
pub fn entry_program(shape: CallShape) -> Option<&'static str> {
    (shape != CallShape::Syscall).then_some(names::ALLOC_ENTRY)
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

/// Releases `links` each on a thread of its own, returning when all are gone.
fn drop_together(links: Vec<DetachedLink>) {
    std::thread::scope(|scope| {
        for link in links {
            // A thread that cannot be started drops its closure, and the link with it, here.
            let _ = std::thread::Builder::new().name("lp-detach".into()).spawn_scoped(scope, move || drop(link));
        }
    });
}

/// The plan's attachments in links: with uprobe_multi, one link per run of the same program and
/// binary (the plan is in attach order: returns first, hottest first); else one per site.
fn link_groups(plan: &[Attachment], kind: LinkKind) -> Vec<Vec<&Attachment>> {
    let mut groups: Vec<Vec<&Attachment>> = Vec::new();
    for a in plan {
        match groups.iter_mut().find(|g| kind == LinkKind::Multi && g[0].program == a.program && g[0].path == a.path) {
            Some(group) => group.push(a),
            None => groups.push(vec![a]),
        }
    }
    groups
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

    let link_kind = kernel.load_uprobes()?;
    if link_kind == LinkKind::PerSite && !kernel::per_site_asked() {
        eprintln!(
            "leakprobe: warning: this kernel has no uprobe_multi links (Linux 6.6+): one link per hooked site, so \
             closing a sampling window takes ~130 ms per site, during which the hooks still trap"
        );
    }
    let emulation = probe_site::running_kernel();
    // Where each file's code is loaded, to follow tail calls through the function pointers the
    // target holds (an unreadable map only leaves those sites at their entries).
    let maps = proc_maps::read(target.pid).unwrap_or_default();
    let mut hooks = Vec::new();
    let mut plan: Vec<Attachment> = Vec::new();
    for object in &target.objects {
        let live = MappedFile::new(target.pid, &maps, &object.path, &object.host_path);
        let live = live.as_ref().map(|l| l as &dyn LiveImage);
        for &(function, offset) in &object.functions {
            let Some(entry) = entry_program(function.shape()) else {
                continue;
            };
            // Entry and return probe both at the site: the stack pointer is unmoved there, so the
            // return probe still finds the return address.
            let site = probe_site::choose_in_file(
                &object.host_path,
                offset,
                function.shape().integer_args(),
                &emulation,
                live,
            );
            let place = format!("{} in {}", function.symbol(), object.path.display());
            let attachment = |program, what: &str| Attachment {
                program,
                offset: site.vaddr,
                path: object.host_path.clone(),
                cookie: probe_site::attach_cookie(function, &site),
                what: format!("{what}{place}"),
            };
            // Two frees reaching one function through their tables (pyenv's `PyObject_Free` and
            // `PyMem_Free` both end in `_PyObject_Free`) share its site: one probe there sees both.
            let shared = function.shape() == CallShape::Free
                && plan.iter().any(|a| a.program == entry && a.path == object.host_path && a.offset == site.vaddr);
            if !shared {
                plan.push(attachment(entry, ""));
            }
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
    Ok(Probes {
        kernel,
        hooks,
        mounted_tracefs,
        pid,
        plan,
        link_kind,
        links: Vec::new(),
        detaching: Vec::new(),
        detach_tails: DetachTails::default(),
    })
}

impl Probes {
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    pub fn kernel_mut(&mut self) -> &mut Kernel {
        &mut self.kernel
    }

    /// Attaches every allocator uprobe (no-op when attached). Each hit costs the target a kernel
    /// trap, so the recording attaches them only inside its sampling windows. With uprobe_multi
    /// links, one link per program and binary carries all its sites; else one link per site.
    pub fn attach_uprobes(&mut self) -> Result<()> {
        if !self.links.is_empty() || self.plan.is_empty() {
            return Ok(());
        }
        // Calls open when the last window closed never returned to us: their entries would make
        // this window's calls on those threads look nested (and go unrecorded).
        self.kernel.clear_pending_calls()?;
        let mut failure = None;
        for group in link_groups(&self.plan, self.link_kind) {
            let sites: Vec<(u64, u64)> = group.iter().map(|a| (a.offset, a.cookie)).collect();
            let first = group[0];
            let order = detach_order(first.program, first.cookie);
            match self.kernel.attach_uprobe(first.program, &sites, &first.path, self.pid) {
                Ok(link) => self.links.push((order, link)),
                Err(e) => {
                    let what: Vec<&str> = group.iter().map(|a| a.what.as_str()).collect();
                    failure = Some(e.context(format!("cannot attach to {}", what.join(", "))));
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

    /// Detaches every allocator uprobe; the syscall tracepoints stay. Releasing a link removes
    /// its breakpoints at once unless another link of the same site still holds them (an entry
    /// and its return share a site), then waits for a grace period (~50-130 ms here). The links
    /// are released on a background thread: with uprobe_multi, all of them at once, so every
    /// breakpoint goes at the start and the grace periods overlap (a call in flight may lose its
    /// return: the next window clears it); one link per site, which the kernel unregisters one at
    /// a time (5.6 s for 40), hottest first, each function's entry before its return.
    pub fn detach_uprobes(&mut self) -> Result<()> {
        let mut attached = std::mem::take(&mut self.links);
        attached.sort_by_key(|(order, _)| *order);
        let mut links = Vec::new();
        for (_, link) in attached {
            links.push(self.kernel.take_link(link)?);
        }
        let together = self.link_kind == LinkKind::Multi;
        let closing = std::thread::Builder::new()
            .name("lp-detach".into())
            .spawn(move || {
                let started = Instant::now();
                if together {
                    drop_together(links);
                } else {
                    drop(links);
                }
                started.elapsed()
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
        let (done, open): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.detaching).into_iter().partition(|closing| closing.is_finished());
        self.detaching = open;
        for closing in done {
            if let Ok(tail) = closing.join() {
                self.detach_tails.add(tail);
            }
        }
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
                (names::ALLOC_ENTRY, PyObjectMalloc),
                (names::ALLOC_ENTRY, Malloc),
                (names::ALLOC_ENTRY, Calloc),
                (names::ALLOC_ENTRY, Free),
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
                (names::ALLOC_ENTRY, PyObjectMalloc),
                (ret, PyObjectMalloc),
                (names::ALLOC_ENTRY, Malloc),
                (ret, Malloc),
                (names::ALLOC_ENTRY, Calloc),
                (ret, Calloc),
                (names::ALLOC_ENTRY, Free),
            ]
        );
    }

    #[test]
    fn multi_links_group_sites_by_program_and_binary() {
        let at = |program, path: &str, offset| Attachment {
            program,
            offset,
            path: path.into(),
            cookie: offset,
            what: format!("{offset}"),
        };
        let (ret, entry) = (names::ALLOC_RETURN, names::ALLOC_ENTRY);
        let plan = vec![
            at(ret, "/libpython", 1),
            at(ret, "/libc", 2),
            at(ret, "/libpython", 3),
            at(entry, "/libpython", 4),
            at(entry, "/libc", 5),
            at(entry, "/libpython", 6),
        ];
        let offsets = |kind| -> Vec<Vec<u64>> {
            link_groups(&plan, kind).iter().map(|g| g.iter().map(|a| a.offset).collect()).collect()
        };
        assert_eq!(offsets(LinkKind::Multi), vec![vec![1, 3], vec![2], vec![4, 6], vec![5]]);
        assert_eq!(offsets(LinkKind::PerSite), vec![vec![1], vec![2], vec![3], vec![4], vec![5], vec![6]]);
    }
}
