//! Reading the target's Python sources as the target sees them: through its root (`/proc/PID/root`,
//! so a containerised service's `/app/main.py` is its file, not the host's) and, for relative
//! names, its working directory.
//!
//! The root and the working directory are opened when the recording starts and kept open, so the
//! sources can still be read when the report is built after the target has exited. Paths are
//! resolved with `openat2(RESOLVE_IN_ROOT)`: `..` and absolute symbolic links stay inside the
//! target's root. Names the interpreter made up (`<frozen ...>`, `<string>`) and files that are
//! too big or not UTF-8 are not read. Nothing here fails: a file that cannot be read has no advice.

use std::{
    ffi::CString,
    fs::File,
    io::Read,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::Arc,
};

/// Larger files are not Python modules anyone wrote by hand.
const MAX_SOURCE_BYTES: u64 = 4 << 20;

pub struct TargetSources {
    root: Option<OwnedFd>,
    cwd: Option<OwnedFd>,
}

impl TargetSources {
    /// The sources of process `pid`; a directory that cannot be opened (the process is gone, no
    /// permission) just means its sources cannot be read.
    pub fn of_process(pid: u32) -> TargetSources {
        TargetSources::in_dirs(Path::new(&format!("/proc/{pid}/root")), Path::new(&format!("/proc/{pid}/cwd")))
    }

    /// Sources under `root` (absolute names) and `cwd` (relative names).
    pub fn in_dirs(root: &Path, cwd: &Path) -> TargetSources {
        TargetSources { root: open_dir(root), cwd: open_dir(cwd) }
    }

    /// The text of `file` as the target names it (a code object's `co_filename`). Not cached:
    /// `stack::StackAdvisor` keeps what it read.
    pub fn read(&self, file: &str) -> Option<Arc<str>> {
        if file.is_empty() || file.starts_with('<') || file.contains('\0') {
            return None;
        }
        let (dir, relative) = match file.strip_prefix('/') {
            Some(rest) => (self.root.as_ref()?, rest.trim_start_matches('/')),
            None => (self.cwd.as_ref()?, file),
        };
        let mut f = open_in(dir, relative)?;
        f.metadata().ok().filter(|m| m.is_file() && m.len() <= MAX_SOURCE_BYTES)?;
        let mut bytes = Vec::new();
        f.by_ref().take(MAX_SOURCE_BYTES).read_to_end(&mut bytes).ok()?;
        String::from_utf8(bytes).ok().map(Arc::from)
    }
}

fn open_dir(path: &Path) -> Option<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path; the returned descriptor is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    // SAFETY: a non-negative return of open is a new descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `relative` under `dir` for reading, with `dir` as the root of the resolution.
fn open_in(dir: &OwnedFd, relative: &str) -> Option<File> {
    let c = CString::new(relative).ok()?;
    // `struct open_how` of openat2(2) (libc's is non-exhaustive: it cannot be built here).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: every pointer is valid for the call; the size is that of the struct passed.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), c.as_ptr(), &how as *const OpenHow, size_of::<OpenHow>())
    };
    // SAFETY: a non-negative return of openat2 is a new descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_the_root_only() {
        let base = std::env::temp_dir().join(format!("leakprobe-sources-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/main.py"), "CACHE = {}\n").unwrap();
        std::fs::write(base.join("secret.py"), "outside\n").unwrap();
        std::os::unix::fs::symlink("/secret.py", root.join("app/escape.py")).unwrap();
        let sources = TargetSources::in_dirs(&root, &root.join("app"));
        assert_eq!(sources.read("/app/main.py").as_deref(), Some("CACHE = {}\n"));
        assert_eq!(sources.read("main.py").as_deref(), Some("CACHE = {}\n"), "relative to the cwd");
        assert_eq!(sources.read("/../secret.py"), None, "`..` stops at the root");
        assert_eq!(sources.read("/app/escape.py"), None, "absolute links resolve in the root");
        assert_eq!(sources.read("<frozen importlib._bootstrap>"), None);
        assert_eq!(sources.read("/app"), None, "not a file");
        assert_eq!(sources.read("/app/missing.py"), None);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_gone_process_has_no_sources() {
        let sources = TargetSources::of_process(u32::MAX);
        assert_eq!(sources.read("/etc/hostname"), None);
    }
}
