//! Native (ELF/DWARF) symbolization of user-space return addresses of one process, via blazesym.
//!
//! Design notes:
//! * Every input address is a return address (one past a call), so the lookup uses `addr - 1`;
//!   otherwise a call that is the last instruction of a function (noreturn callees) would resolve
//!   to the *next* function, and line numbers would point after the call.
//! * Inlined functions are **expanded**: one address can yield several frames, innermost first,
//!   all carrying the same `address`; the last frame of the group is the real (outer) function.
//!   CPython is built with heavy inlining, so keeping only the outer symbol would hide e.g. the
//!   allocator wrapper that actually leaks.
//! * Files are opened through `/proc/PID/map_files/` (blazesym's `map_files` option), which works
//!   across mount namespaces (containers) and for deleted files. That needs CAP_SYS_ADMIN; without
//!   it we fall back to the symbolic paths from `/proc/PID/maps`, which only work when the target
//!   shares our mount namespace.
//! * Late symbolization (after the process exited) works once [`NativeSymbolizer::cache`] ran
//!   while it was alive: blazesym then keeps the VMAs and the pinned, already opened ELF files.
//! * Kernel-half addresses and 0 never reach blazesym; they become placeholder frames.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use blazesym::symbolize::cache;
use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer};

use crate::proc_maps::{self, Mapping};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Python,
    Native,
    Kernel,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    /// Demangled symbol name, or `0x<hex address>` when the address could not be resolved.
    pub function: String,
    /// Source file from DWARF, when available.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Path of the ELF file containing the address, as mapped in the target.
    pub object: Option<String>,
    pub kind: FrameKind,
    /// The absolute address in the target, exactly as given (not the `- 1` lookup address).
    pub address: u64,
}

impl Frame {
    fn placeholder(address: u64, object: Option<String>, kind: FrameKind) -> Self {
        Frame { function: format!("{address:#x}"), file: None, line: None, object, kind, address }
    }
}

/// Start of the kernel half of the address space on 64-bit Linux (x86_64 and arm64 alike); user
/// stacks never legitimately contain such addresses, and the Process source cannot resolve them.
const KERNEL_START: u64 = 0xffff_8000_0000_0000;

fn read_maps(pid: u32) -> anyhow::Result<Vec<Mapping>> {
    proc_maps::read(pid).with_context(|| format!("reading /proc/{pid}/maps"))
}

/// Symbolizes native addresses of one process. Not `Sync` (blazesym's Symbolizer is not).
pub struct NativeSymbolizer {
    pid: u32,
    symbolizer: Symbolizer,
    map_files: bool,
    vmas: Vec<Mapping>,
    /// Whether `cache()` succeeded at least once; then blazesym no longer re-reads the maps, so
    /// we re-cache when we see addresses outside the known VMAs (e.g. after a `dlopen`).
    cached: bool,
    memo: HashMap<u64, Vec<Frame>>,
}

impl NativeSymbolizer {
    pub fn new(pid: u32) -> anyhow::Result<Self> {
        // blazesym's Pid::from(0) silently means "this process"; refuse it instead.
        if pid == 0 {
            bail!("pid 0 cannot be symbolized");
        }
        let vmas = read_maps(pid)?;
        // Opening map_files entries needs CAP_SYS_ADMIN; probe one file-backed mapping.
        let map_files = vmas
            .iter()
            .find(|v| v.path.as_deref().is_some_and(|p| p.starts_with('/')))
            .map(|v| std::fs::File::open(map_file_path(pid, v)).is_ok())
            .unwrap_or(true);
        Ok(NativeSymbolizer {
            pid,
            symbolizer: Symbolizer::new(),
            map_files,
            vmas,
            cached: false,
            memo: HashMap::new(),
        })
    }

    fn source(&self) -> Source<'static> {
        let mut process = Process::new(self.pid.into());
        process.map_files = self.map_files;
        Source::Process(process)
    }

    /// Cache the process's memory maps / ELF files now, while the process is alive, so
    /// symbolization after it exits still works. Call again after the process loads new
    /// libraries (symbolize() also does so by itself when it meets an address outside the
    /// cached maps). On failure the previously cached state stays in use.
    pub fn cache(&mut self) -> anyhow::Result<()> {
        let vmas = read_maps(self.pid)?;
        let file_backed: Vec<&Mapping> = vmas.iter().filter(|v| v.is_executable() && v.file().is_some()).collect();
        // Warm up: symbolizing one address per executable file mapping makes blazesym open and
        // parse each file under its real path (module name, debug-link lookup) rather than
        // under the map_files alias the pinning below would otherwise create it with.
        let warm: Vec<u64> = file_backed.iter().map(|v| v.start).collect();
        let _ = self.symbolizer.symbolize(&self.source(), Input::AbsAddr(&warm));
        if self.map_files {
            // Pin the opened files under the /proc/PID/map_files/ paths blazesym will look them
            // up by: pinned entries are not re-stat'ed, so they survive the process's exit.
            for vma in &file_backed {
                let elf = cache::Elf::new(map_file_path(self.pid, vma));
                // A single unreadable library must not prevent caching the rest.
                let _ = self.symbolizer.cache(&cache::Cache::Elf(elf));
            }
        }
        let mut process = cache::Process::new(self.pid.into());
        // The perf map (JIT symbols, e.g. Python 3.12 -X perf) is optional and cached separately
        // so that a missing or broken one cannot prevent caching the VMAs.
        process.cache_perf_map = false;
        self.symbolizer
            .cache(&cache::Cache::Process(process.clone()))
            .with_context(|| format!("caching memory maps of pid {}", self.pid))?;
        process.cache_vmas = false;
        process.cache_perf_map = true;
        let _ = self.symbolizer.cache(&cache::Cache::Process(process));
        self.vmas = vmas;
        self.cached = true;
        Ok(())
    }

    /// Symbolize absolute user-space return addresses (innermost first) of the pid.
    ///
    /// Never fails as a whole: an unresolvable address becomes one Frame with function
    /// `0x...` (and `object` if known). A resolvable address may expand into several frames
    /// (inlined functions, innermost first, all with the same `address`). Results are memoized
    /// per address.
    pub fn symbolize(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let mut pending: Vec<u64> = Vec::new();
        let mut seen: HashSet<u64> = HashSet::new();
        for &addr in addrs {
            if self.memo.contains_key(&addr) || !seen.insert(addr) {
                continue;
            }
            if addr == 0 {
                self.memo.insert(addr, vec![Frame::placeholder(0, None, FrameKind::Native)]);
            } else if addr >= KERNEL_START {
                self.memo.insert(addr, vec![Frame::placeholder(addr, None, FrameKind::Kernel)]);
            } else {
                pending.push(addr);
            }
        }
        // Results of a failed batch are not memoized: the failure may be transient.
        let mut unmemoized: HashMap<u64, Vec<Frame>> = HashMap::new();
        if !pending.is_empty() {
            self.refresh_maps_if_needed(&pending);
            let lookups: Vec<u64> = pending.iter().map(|a| a - 1).collect();
            let src = self.source();
            match self.symbolizer.symbolize(&src, Input::AbsAddr(&lookups)) {
                Ok(results) => {
                    for ((&addr, &lookup), result) in pending.iter().zip(&lookups).zip(results) {
                        let frames = to_frames(addr, lookup, result, &self.vmas);
                        self.memo.insert(addr, frames);
                    }
                }
                Err(_) => {
                    for &addr in &pending {
                        let object = proc_maps::find(&self.vmas, addr - 1).and_then(|v| v.path.clone());
                        unmemoized.insert(addr, vec![Frame::placeholder(addr, object, FrameKind::Native)]);
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if let Some(frames) = self.memo.get(addr).or_else(|| unmemoized.get(addr)) {
                out.extend(frames.iter().cloned());
            }
        }
        out
    }

    /// Addresses outside the known VMAs may be new mappings (dlopen, JIT) or unwinder garbage.
    /// Re-read the maps (cheap) and, only if they now cover such an address and blazesym serves
    /// from cached VMAs, re-cache (expensive). Errors (process gone) are ignored.
    fn refresh_maps_if_needed(&mut self, addrs: &[u64]) {
        let unknown: Vec<u64> =
            addrs.iter().map(|a| a - 1).filter(|&a| proc_maps::find(&self.vmas, a).is_none()).collect();
        if unknown.is_empty() {
            return;
        }
        let Ok(vmas) = read_maps(self.pid) else {
            return;
        };
        if !unknown.iter().any(|&a| proc_maps::find(&vmas, a).is_some()) {
            return;
        }
        if self.cached {
            let _ = self.cache();
        } else {
            self.vmas = vmas;
        }
    }
}

fn map_file_path(pid: u32, vma: &Mapping) -> PathBuf {
    // Must match blazesym's own spelling (unpadded lower-case hex) so cache keys line up.
    PathBuf::from(format!("/proc/{pid}/map_files/{}", vma.map_files_name()))
}

fn to_frames(addr: u64, lookup: u64, result: Symbolized<'_>, vmas: &[Mapping]) -> Vec<Frame> {
    let object = proc_maps::find(vmas, lookup).and_then(|v| v.path.clone());
    let sym = match result {
        Symbolized::Sym(sym) => sym,
        Symbolized::Unknown(_) => return vec![Frame::placeholder(addr, object, FrameKind::Native)],
    };
    let object = object.or_else(|| sym.module.as_ref().map(|m| m.to_string_lossy().into_owned()));
    let frame = |function: &str, info: Option<&CodeInfo<'_>>| Frame {
        function: function.to_string(),
        file: info.map(|i| i.to_path().display().to_string()),
        line: info.and_then(|i| i.line),
        object: object.clone(),
        kind: FrameKind::Native,
        address: addr,
    };
    // blazesym lists inlined calls outermost first, each with the location inside that inlined
    // function; `sym.code_info` is the location inside the outer function (the inlined call
    // site). Reverse to get innermost first, then the outer function last.
    let mut frames: Vec<Frame> = sym.inlined.iter().rev().map(|f| frame(&f.name, f.code_info.as_ref())).collect();
    frames.push(frame(&sym.name, sym.code_info.as_deref()));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    const C_SRC: &str = r#"#include <stdio.h>
#include <stdlib.h>
void *leaky_function(size_t n) {
    void *p = malloc(n);
    return p;
}
int main(void) {
    printf("%p\n", (void *)&leaky_function);
    fflush(stdout);
    leaky_function(16);
    char buf[16];
    while (fgets(buf, sizeof buf, stdin)) {}
    return 0;
}
"#;

    /// A compiled C child blocked on stdin; killed and its temp dir removed on drop.
    struct Victim {
        child: Option<Child>,
        dir: PathBuf,
        pid: u32,
        fn_addr: u64,
    }

    impl Victim {
        fn start(tag: &str) -> Victim {
            let dir = std::env::temp_dir().join(format!("leakprobe-sym-{}-{tag}", std::process::id()));
            let mut v = Victim { child: None, dir, pid: 0, fn_addr: 0 };
            std::fs::create_dir_all(&v.dir).unwrap();
            let (src, bin) = (v.dir.join("victim_prog.c"), v.dir.join("victim_prog"));
            std::fs::write(&src, C_SRC).unwrap();
            let mut gcc = Command::new("gcc");
            gcc.args(["-g", "-O0", "-fno-omit-frame-pointer", "-o"]);
            let status = gcc.arg(&bin).arg(&src).status().unwrap();
            assert!(status.success(), "gcc failed");
            let mut cmd = Command::new(&bin);
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
            let child = v.child.insert(cmd.spawn().unwrap());
            v.pid = child.id();
            let mut line = String::new();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            stdout.read_line(&mut line).unwrap();
            v.fn_addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).unwrap();
            v
        }

        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Victim {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn ends(s: &Option<String>, suffix: &str) -> bool {
        s.as_deref().is_some_and(|s| s.ends_with(suffix))
    }

    fn assert_leaky(frames: &[Frame], addr: u64) {
        // -O0: no inlining, so exactly one frame.
        assert_eq!(frames.len(), 1, "{frames:?}");
        let f = &frames[0];
        assert_eq!((f.function.as_str(), f.address), ("leaky_function", addr));
        assert!(ends(&f.file, "/victim_prog.c") && ends(&f.object, "/victim_prog"), "{f:?}");
        assert!(f.line.is_some_and(|l| (3..=6).contains(&l)), "{f:?}");
        assert_eq!(f.kind, FrameKind::Native);
    }

    #[test]
    fn symbolize_live_child_function_line_and_weird_addresses() {
        let victim = Victim::start("live");
        let mut sym = NativeSymbolizer::new(victim.pid).unwrap();
        let addr = victim.fn_addr + 5;
        assert_leaky(&sym.symbolize(&[addr]), addr);
        // Memoized result is identical; duplicates in one call are all reported.
        let twice = sym.symbolize(&[addr, addr]);
        assert_eq!((twice.len(), &twice[0]), (2, &twice[1]));

        let (kernel, user_top) = (0xffff_ffff_8100_0000, 0x7fff_ffff_ffff);
        let weird = [0, 1, u64::MAX, kernel, 0x10, user_top];
        let frames = sym.symbolize(&weird);
        assert_eq!(frames.len(), weird.len());
        for (f, &a) in frames.iter().zip(&weird) {
            let expected = (format!("{a:#x}"), a, None);
            assert_eq!((f.function.clone(), f.address, f.file.clone()), expected);
        }
        assert_eq!(frames[2].kind, FrameKind::Kernel);
        assert!(sym.symbolize(&[]).is_empty());
        assert!(NativeSymbolizer::new(0).is_err());
    }

    #[test]
    fn symbolize_after_exit_with_and_without_cache() {
        let mut victim = Victim::start("exit");
        let mut cached = NativeSymbolizer::new(victim.pid).unwrap();
        cached.cache().unwrap();
        let mut plain = NativeSymbolizer::new(victim.pid).unwrap();
        let early = victim.fn_addr + 5;
        assert_leaky(&plain.symbolize(&[early]), early);
        victim.kill();
        assert!(!std::path::Path::new(&format!("/proc/{}/maps", victim.pid)).exists());
        // Never asked before: this really goes through blazesym's cached VMAs and ELF files.
        assert_leaky(&cached.symbolize(&[early]), early);
        // Without cache(): the memoized address still resolves, a new one degrades.
        assert_leaky(&plain.symbolize(&[early]), early);
        let late = victim.fn_addr + 6;
        let frames = plain.symbolize(&[late]);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].function, format!("{late:#x}"));
        assert!(ends(&frames[0].object, "/victim_prog"));
    }
}
