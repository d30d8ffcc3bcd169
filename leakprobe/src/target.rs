//! The process to watch: does it exist, can we read it, which of its mapped files hold allocator
//! functions, and where those files are from our mount namespace (through /proc/PID/root, so a
//! process in a container works).

use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Result};
use leakprobe_common::AllocFunction;

use crate::{
    elf_symbols,
    proc_maps::{self, Mapping},
};

/// A file mapped executable in the target, and the allocator functions it defines.
#[derive(Debug, Clone)]
pub struct HookableObject {
    /// The path as the target sees it (from /proc/PID/maps).
    pub path: PathBuf,
    /// The same file from our mount namespace.
    pub host_path: PathBuf,
    /// Functions it defines, with their file offsets.
    pub functions: Vec<(AllocFunction, u64)>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub pid: u32,
    /// Executable path as the target sees it.
    pub exe: String,
    pub cmdline: Vec<String>,
    /// `3.11` etc., from the interpreter's file name, when it is a CPython.
    pub python_version: Option<String>,
    pub objects: Vec<HookableObject>,
}

impl Target {
    /// Inspects a live process. Errors are one line, written for the person at the terminal.
    pub fn inspect(pid: u32) -> Result<Target> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let text = match fs::read_to_string(proc_dir.join("maps")) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("no process with PID {pid}"),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                bail!("permission denied reading /proc/{pid}/maps: leakprobe must run as root")
            }
            Err(e) => bail!("cannot read /proc/{pid}/maps: {e}"),
        };
        if text.trim().is_empty() {
            bail!("process {pid} has no user memory (a kernel thread?): nothing to hook");
        }
        let maps = proc_maps::parse(&text);
        let exe = fs::read_link(proc_dir.join("exe")).map(|p| p.display().to_string()).unwrap_or_default();
        let cmdline = fs::read(proc_dir.join("cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let root = proc_dir.join("root");
        let mut objects = Vec::new();
        for (path, range) in executable_files(&maps) {
            let host_path = reachable_path(&proc_dir, &root, &path, &range);
            let Some(functions) = allocator_functions(&host_path) else {
                continue;
            };
            if !functions.is_empty() {
                objects.push(HookableObject { path, host_path, functions });
            }
        }
        let python_version =
            objects.iter().find_map(|o| python_version_of(&o.path)).or_else(|| python_version_of(Path::new(&exe)));
        if objects.is_empty() {
            bail!("process {pid} ({exe}) has no allocator to hook: no malloc or PyObject_Malloc in its mapped files");
        }
        Ok(Target { pid, exe, cmdline, python_version, objects })
    }

    pub fn hooks_python(&self) -> bool {
        self.objects.iter().any(|o| o.functions.iter().any(|(f, _)| f.is_python()))
    }
}

/// The mapped file as we can open it: `/proc/PID/map_files/<range>` is the very inode mapped,
/// whatever mount namespace or chroot the target sees it through (and even if it was replaced on
/// disk since); failing that, the target's path under `/proc/PID/root`, then the path itself
/// (a chroot in our own mount namespace prints our view of the path in maps).
fn reachable_path(proc_dir: &Path, root: &Path, path: &Path, range: &str) -> PathBuf {
    let candidates = [proc_dir.join("map_files").join(range), in_root(root, path), path.to_path_buf()];
    candidates.iter().find(|p| fs::metadata(p).is_ok()).cloned().unwrap_or_else(|| in_root(root, path))
}

/// Files mapped executable, with the address range of their first executable mapping, in order
/// of first appearance, without duplicates.
pub fn executable_files(maps: &[Mapping]) -> Vec<(PathBuf, String)> {
    let mut seen = BTreeSet::new();
    let mut files = Vec::new();
    for mapping in maps.iter().filter(|m| m.is_executable() && !m.deleted) {
        let Some(path) = mapping.file() else { continue };
        if seen.insert(path.to_string()) {
            files.push((PathBuf::from(path), mapping.map_files_name()));
        }
    }
    files
}

/// `/proc/PID/root` + the target's path: the file as the target sees it, from our namespace.
pub fn in_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn allocator_functions(host_path: &Path) -> Option<Vec<(AllocFunction, u64)>> {
    let names: Vec<&str> = AllocFunction::uprobe_functions().map(AllocFunction::symbol).collect();
    let offsets = elf_symbols::function_offsets(host_path, &names).ok()?;
    Some(AllocFunction::uprobe_functions().filter_map(|f| offsets.get(f.symbol()).map(|&off| (f, off))).collect())
}

/// `3.11` from `libpython3.11.so.1.0`, `python3.11`, `libpython3.13t.so`.
pub fn python_version_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("libpython").or_else(|| name.strip_prefix("python"))?;
    let version: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let version = version.trim_end_matches('.');
    let mut parts = version.split('.');
    let (major, minor) = (parts.next()?, parts.next()?);
    if major.is_empty() || minor.is_empty() {
        return None;
    }
    Some(format!("{major}.{minor}"))
}

/// Fails with one line unless we may load BPF programs and open perf events.
pub fn check_privileges() -> Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = fs::read_to_string("/proc/self/status").map_err(|e| anyhow!("cannot read /proc/self/status: {e}"))?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        bail!("leakprobe needs root (CAP_SYS_ADMIN, or CAP_BPF and CAP_PERFMON) to load its eBPF programs: run it with sudo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c7a00000-55d0c7a01000 r--p 00000000 fe:01 1234 /usr/bin/python3.11
55d0c7a01000-55d0c7a02000 r-xp 00001000 fe:01 1234 /usr/bin/python3.11
7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0
7f1e2d000000-7f1e2d200000 r-xp 00028000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2d300000-7f1e2d400000 r-xp 00028000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2e000000-7f1e2e001000 r-xp 00000000 fe:01 77 /tmp/gone.so (deleted)
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]
7ffd1c100000-7ffd1c102000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn executable_files_are_unique_real_paths() {
        let files = executable_files(&proc_maps::parse(MAPS));
        assert_eq!(
            files,
            vec![
                (PathBuf::from("/usr/bin/python3.11"), "55d0c7a01000-55d0c7a02000".to_string()),
                (PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"), "7f1e2d000000-7f1e2d200000".to_string())
            ]
        );
    }

    #[test]
    fn paths_resolve_inside_the_target_root() {
        assert_eq!(
            in_root(Path::new("/proc/42/root"), Path::new("/usr/lib/libc.so.6")),
            PathBuf::from("/proc/42/root/usr/lib/libc.so.6")
        );
    }

    #[test]
    fn python_versions_from_file_names() {
        assert_eq!(python_version_of(Path::new("/x/libpython3.11.so.1.0")).as_deref(), Some("3.11"));
        assert_eq!(python_version_of(Path::new("/usr/bin/python3.13")).as_deref(), Some("3.13"));
        assert_eq!(python_version_of(Path::new("/x/libpython3.13t.so")).as_deref(), Some("3.13"));
        assert_eq!(python_version_of(Path::new("/usr/bin/python3")), None);
        assert_eq!(python_version_of(Path::new("/usr/lib/libc.so.6")), None);
    }

    #[test]
    fn missing_pid_is_one_clear_line() {
        let err = Target::inspect(u32::MAX - 7).unwrap_err().to_string();
        assert!(err.contains("no process with PID"), "{err}");
        assert!(!err.contains('\n'));
    }
}
