//! The kernel object, and the only module that touches aya: loads the embedded programs with
//! their maps sized, loads and attaches programs by the names in `leakprobe_common::names`, and
//! reads and writes the maps through typed methods (`maps`). `record`, `watch` (through
//! `loader::Probes`) and the agent (`agent::node_probes`) each hold one `Kernel`.
//!
//! Dropping it detaches and unloads everything; if leakprobe is killed, the kernel does the same
//! when its file descriptors close, so no program outlives the process.

mod counters;
mod maps;

use std::{num::NonZeroU32, os::fd::OwnedFd, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
        TracePoint, UProbe,
    },
    sys::UProbeMultiFeature,
    Ebpf, EbpfLoader,
};
use leakprobe_common::names;

pub use counters::Counters;
pub use maps::ProcessEvents;

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

pub struct Kernel {
    ebpf: Ebpf,
    /// Programs loaded into the kernel so far, in load order.
    loaded: Vec<&'static str>,
    /// The link kind of the loaded uprobe programs (`load_uprobes`).
    link_kind: Option<LinkKind>,
}

/// Set to `per_site` to link each uprobe site on its own even where uprobe_multi links exist.
pub const LINKS_VARIABLE: &str = "LEAKPROBE_UPROBE_LINKS";

/// Whether `LINKS_VARIABLE` asks for one link per site.
pub fn per_site_asked() -> bool {
    std::env::var(LINKS_VARIABLE).is_ok_and(|v| v == LinkKind::PerSite.key())
}

/// How a binary's uprobe sites are linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// One uprobe_multi link per program and binary: detached in one grace period (Linux 6.6+).
    Multi,
    /// One link per site: the kernel unregisters them one at a time, a grace period each.
    PerSite,
}

impl LinkKind {
    /// As reports name it.
    pub fn key(self) -> &'static str {
        match self {
            LinkKind::Multi => "uprobe_multi",
            LinkKind::PerSite => "per_site",
        }
    }

    /// The kernel object's name for uprobe `program` of this link kind.
    fn program(self, program: &'static str) -> &'static str {
        match (self, program) {
            (LinkKind::Multi, names::ALLOC_ENTRY) => names::ALLOC_ENTRY_MULTI,
            (LinkKind::Multi, names::ALLOC_RETURN) => names::ALLOC_RETURN_MULTI,
            _ => program,
        }
    }
}

/// An attached uprobe, to be taken out with `Kernel::take_link`.
pub struct UprobeLink {
    program: &'static str,
    id: UProbeLinkId,
}

/// A uprobe link owned outside the kernel object: dropping it detaches the probe (which may take
/// a grace period, so callers drop these on a thread of their own).
pub struct DetachedLink {
    _link: UProbeLink,
}

/// Kernel accounting of program run time, on while this is held (see `Kernel::enable_run_stats`).
pub struct RunStats {
    _enabled: OwnedFd,
}

impl Kernel {
    /// The programs for one process: events of other processes are ignored in the kernel.
    pub fn for_process(pid: u32, sizes: TableSizes) -> Result<Kernel> {
        Kernel::load(pid, sizes, 0)
    }

    /// The programs for the processes in the `TARGETS` map (the agent). `fork_child_pid_offset`:
    /// see `tracefs::field_offset`; 0 keeps the built-in default.
    pub fn for_node(sizes: TableSizes, fork_child_pid_offset: u32) -> Result<Kernel> {
        Kernel::load(0, sizes, fork_child_pid_offset)
    }

    fn load(target_tgid: u32, sizes: TableSizes, fork_child_pid_offset: u32) -> Result<Kernel> {
        if KERNEL_PROGRAMS.is_empty() {
            bail!(
                "this leakprobe was built without its kernel programs (AYA_BUILD_SKIP): rebuild with `cargo xtask \
                 build`"
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
        let ebpf =
            loader.load(KERNEL_PROGRAMS).map_err(|e| anyhow!("cannot load the eBPF programs into the kernel: {e}"))?;
        Ok(Kernel { ebpf, loaded: Vec::new(), link_kind: None })
    }

    /// The programs loaded into the kernel, in load order (each is attached, or a uprobe that
    /// may be).
    pub fn program_names(&self) -> &[&'static str] {
        &self.loaded
    }

    /// Loads and attaches `(program, tracepoint)` pairs of one tracepoint category.
    pub fn attach_tracepoints(&mut self, category: &str, list: &[(&'static str, &str)]) -> Result<()> {
        for &(program, tracepoint) in list {
            let tp: &mut TracePoint = self
                .ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow!("kernel program {program} missing from the object"))?
                .try_into()?;
            tp.load().with_context(|| format!("the kernel rejected {program}"))?;
            self.loaded.push(program);
            tp.attach(category, tracepoint)
                .with_context(|| format!("cannot attach to tracepoint {category}:{tracepoint}"))?;
        }
        Ok(())
    }

    /// Loads the uprobe programs of the link kind this kernel supports (uprobe_multi where it
    /// can filter by process, else one link per site; `LEAKPROBE_UPROBE_LINKS=per_site` asks for
    /// the latter, to measure what multi links save); none is attached yet.
    pub fn load_uprobes(&mut self) -> Result<LinkKind> {
        let kind = match aya::sys::is_uprobe_multi_supported(UProbeMultiFeature::ProcessScopedPidFilter) {
            Ok(true) if !per_site_asked() => LinkKind::Multi,
            _ => LinkKind::PerSite,
        };
        for program in [names::ALLOC_ENTRY, names::ALLOC_RETURN] {
            let name = kind.program(program);
            self.uprobe(name)?.load().with_context(|| format!("the kernel rejected {name}"))?;
            self.loaded.push(name);
        }
        self.link_kind = Some(kind);
        Ok(kind)
    }

    fn uprobe(&mut self, name: &str) -> Result<&mut UProbe> {
        let program =
            self.ebpf.program_mut(name).ok_or_else(|| anyhow!("kernel program {name} missing from the object"))?;
        Ok(program.try_into()?)
    }

    /// The loaded variant of uprobe `program` (`names::ALLOC_ENTRY` or `ALLOC_RETURN`).
    fn loaded_uprobe(&mut self, program: &'static str) -> Result<(&'static str, &mut UProbe)> {
        let kind = self.link_kind.ok_or_else(|| anyhow!("the uprobe programs are not loaded"))?;
        let name = kind.program(program);
        Ok((name, self.uprobe(name)?))
    }

    /// Attaches the loaded uprobe `program` (`names::ALLOC_ENTRY` or `ALLOC_RETURN`) at every
    /// `(file offset, cookie)` of `sites` in `path`, firing only in process `pid`; the cookie is
    /// what the program reads as the hooked function. One link for them all (with uprobe_multi;
    /// else one per site, managed as one).
    pub fn attach_uprobe(
        &mut self,
        program: &'static str,
        sites: &[(u64, u64)],
        path: &Path,
        pid: NonZeroU32,
    ) -> Result<UprobeLink> {
        let points = sites.iter().map(|&(offset, cookie)| UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(cookie),
        });
        let (program, uprobe) = self.loaded_uprobe(program)?;
        let id = uprobe.attach(points, path, UProbeScope::OneProcess(pid))?;
        Ok(UprobeLink { program, id })
    }

    /// Takes an attached uprobe's link out of the kernel object, to be dropped (detached) where
    /// the caller chooses.
    pub fn take_link(&mut self, link: UprobeLink) -> Result<DetachedLink> {
        Ok(DetachedLink { _link: self.uprobe(link.program)?.take_link(link.id)? })
    }

    /// Runs `f` with the loaded uprobes `programs` (`names::ALLOC_ENTRY`, `ALLOC_RETURN`) attached
    /// to `symbol` in `exe`, firing in this process only (leakprobe probing itself, to time a
    /// hit), and detaches them after.
    pub fn with_own_probes<R>(
        &mut self,
        programs: &[&'static str],
        exe: &Path,
        symbol: &str,
        f: impl FnOnce() -> R,
    ) -> Result<R> {
        let mut links = Vec::new();
        for &program in programs {
            let point = UProbeAttachPoint { location: UProbeAttachLocation::Symbol(symbol), cookie: None };
            let (program, uprobe) = self.loaded_uprobe(program)?;
            let link = uprobe
                .attach([point], exe, UProbeScope::CallingProcess)
                .with_context(|| format!("cannot attach the calibration probe to {}", exe.display()))?;
            links.push((program, link));
        }
        let result = f();
        for (program, link) in links {
            self.uprobe(program)?.detach(link)?;
        }
        Ok(result)
    }

    /// Turns on the kernel's accounting of program run time; `None` when it cannot (older than
    /// 5.8, or refused). It stays on while the value is held.
    pub fn enable_run_stats() -> Option<RunStats> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime).ok().map(|fd| RunStats { _enabled: fd })
    }

    /// (total run time in ns, total runs) of the uprobe programs, as the kernel accounts them.
    pub fn uprobe_run_totals(&self) -> (u64, u64) {
        let mut time = 0;
        let mut runs = 0;
        for name in names::UPROBE_PROGRAMS {
            let Some(program) = self.ebpf.program(name) else { continue };
            let Ok(uprobe) = <&UProbe>::try_from(program) else { continue };
            if let Ok(info) = uprobe.info() {
                time += info.run_time().as_nanos() as u64;
                runs += info.run_count();
            }
        }
        (time, runs)
    }
}

#[cfg(test)]
mod tests;
