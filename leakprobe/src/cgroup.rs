//! The cgroup memory limit that will OOM-kill a process, for cgroup v1, v2 and hybrid hosts.
//!
//! Limits nest: a process is OOM-killed when *any* cgroup from its own up to the root of the
//! hierarchy hits its limit, so we walk all ancestors. "Tightest" means the least headroom
//! (limit - usage), not merely the smallest limit: a parent shared with busy siblings can run
//! out first even though its limit is larger. With usage unknown the headroom is the limit.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryLimit {
    pub limit_bytes: u64,
    /// memory.current (v2) / memory.usage_in_bytes (v1) of the same cgroup as the limit.
    pub usage_bytes: Option<u64>,
    /// Filesystem directory of the cgroup that holds the limit, e.g.
    /// `/sys/fs/cgroup/kubepods.slice/.../cri-containerd-abc.scope`.
    pub cgroup_path: String,
    /// 1 or 2.
    pub version: u8,
}

/// v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes (0x7ffffffffffff000 with 4 KiB
/// pages, less with larger pages); no real limit comes anywhere near 2^62 bytes.
const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// The cgroup a process is in, per hierarchy, from `/proc/PID/cgroup`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcCgroups {
    /// Path in the unified (v2) hierarchy, from the `0::/path` line.
    pub unified: Option<String>,
    /// Path in the v1 hierarchy that has the memory controller.
    pub v1_memory: Option<String>,
}

/// Parse `/proc/PID/cgroup` ("hierarchy-id:controllers:path" per line).
pub fn parse_proc_cgroup(text: &str) -> ProcCgroups {
    let mut out = ProcCgroups::default();
    for line in text.lines() {
        // The path is last and may itself contain ':', so split at most twice.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            out.unified = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            out.v1_memory = Some(path.to_string());
        }
    }
    out
}

/// A mounted cgroup hierarchy relevant for memory limits.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupMount {
    /// 2 for cgroup2, 1 for a v1 hierarchy carrying the memory controller.
    pub version: u8,
    /// The cgroup (within the hierarchy) that is mounted here; "/" unless bind-mounted from
    /// below, as in containers without a cgroup namespace.
    pub root: String,
    pub mount_point: PathBuf,
}

/// Parse `/proc/self/mountinfo`, keeping cgroup2 mounts and v1 mounts with the memory option.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent major:minor root mount-point options [optional...] - fstype source super-opts
        let Some(sep) = fields.iter().skip(6).position(|f| *f == "-").map(|i| i + 6) else {
            continue;
        };
        let (Some(fstype), Some(super_opts)) = (fields.get(sep + 1), fields.get(sep + 3)) else {
            continue;
        };
        let version = match *fstype {
            "cgroup2" => 2,
            "cgroup" if super_opts.split(',').any(|o| o == "memory") => 1,
            _ => continue,
        };
        out.push(CgroupMount {
            version,
            root: unescape_mountinfo(fields[3]),
            mount_point: PathBuf::from(unescape_mountinfo(fields[4])),
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as three-digit octal (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let v = (d[0] - b'0') as u32 * 64 + (d[1] - b'0') as u32 * 8 + (d[2] - b'0') as u32;
                out.push(v as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse a limit file (memory.max / memory.limit_in_bytes); `None` means unlimited.
pub fn parse_limit_value(text: &str) -> anyhow::Result<Option<u64>> {
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    let value: u64 = text.parse().with_context(|| format!("bad memory limit value {text:?}"))?;
    Ok((value < V1_UNLIMITED_THRESHOLD).then_some(value))
}

/// Map a cgroup path to its directory under `mount`, if the mount exposes it. When the mount's
/// root is not "/", the path must lie below it and that prefix is stripped.
pub fn cgroup_dir(mount: &CgroupMount, cgroup_path: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let rel = if root.is_empty() {
        cgroup_path
    } else {
        let rest = cgroup_path.strip_prefix(root)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None; // "/docker/abc" must not match "/docker/abcdef"
        }
        rest
    };
    let rel = rel.trim_start_matches('/');
    // A path outside our cgroup namespace shows up as "/../..": not reachable from the mount.
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() { mount.mount_point.clone() } else { mount.mount_point.join(rel) })
}

/// The tightest memory limit on the pid's cgroup or any ancestor, with its current usage.
/// Ok(None) when no cgroup on the way up has a limit (or the hierarchy is not visible to us).
pub fn memory_limit(pid: u32) -> anyhow::Result<Option<MemoryLimit>> {
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let cgroups = parse_proc_cgroup(&text);
    let mut mounts = std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default();
    // If mountinfo is unreadable or lists no hierarchy of a version, assume the usual layout.
    for (version, dir) in [(2u8, "/sys/fs/cgroup"), (1, "/sys/fs/cgroup/memory")] {
        if !mounts.iter().any(|m| m.version == version) {
            mounts.push(CgroupMount { version, root: "/".into(), mount_point: dir.into() });
        }
    }
    // On hybrid hosts both exist, but only one has the memory controller; taking the tighter
    // of both needs no guessing about which one.
    let mut best: Option<MemoryLimit> = None;
    for (version, cg) in [(2u8, &cgroups.unified), (1, &cgroups.v1_memory)] {
        let Some(cg) = cg else { continue };
        let Some((dir, mount)) = find_dir(&mounts, version, cg) else {
            continue;
        };
        keep_tighter(&mut best, walk_up(&dir, &mount.mount_point, version));
    }
    Ok(best)
}

/// Replace `best` by `found` if `found` has strictly less headroom; on ties the earlier one
/// (closer to the process) stays.
fn keep_tighter(best: &mut Option<MemoryLimit>, found: Option<MemoryLimit>) {
    let headroom = |l: &MemoryLimit| l.limit_bytes.saturating_sub(l.usage_bytes.unwrap_or(0));
    if let Some(found) = found {
        if best.as_ref().is_none_or(|b| headroom(&found) < headroom(b)) {
            *best = Some(found);
        }
    }
}

/// The existing directory of `cg`, via the mount whose root matches most specifically.
fn find_dir<'m>(mounts: &'m [CgroupMount], version: u8, cg: &str) -> Option<(PathBuf, &'m CgroupMount)> {
    let mut candidates: Vec<&CgroupMount> = mounts.iter().filter(|m| m.version == version).collect();
    candidates.sort_by_key(|m| std::cmp::Reverse(m.root.len()));
    candidates.into_iter().find_map(|m| cgroup_dir(m, cg).filter(|d| d.is_dir()).map(|d| (d, m)))
}

/// Check `dir` and each ancestor up to and including `top` for a limit; keep the least headroom.
fn walk_up(dir: &Path, top: &Path, version: u8) -> Option<MemoryLimit> {
    let (limit_file, usage_file) = match version {
        2 => ("memory.max", "memory.current"),
        _ => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
    };
    let mut best: Option<MemoryLimit> = None;
    let mut cur = Some(dir);
    while let Some(d) = cur {
        // Missing or unreadable files (v2 root has no memory.max) just mean no limit here.
        let limit = std::fs::read_to_string(d.join(limit_file)).ok().and_then(|t| parse_limit_value(&t).ok().flatten());
        if let Some(limit_bytes) = limit {
            let usage_bytes = std::fs::read_to_string(d.join(usage_file)).ok().and_then(|t| t.trim().parse().ok());
            let cgroup_path = d.display().to_string();
            let found = MemoryLimit { limit_bytes, usage_bytes, cgroup_path, version };
            keep_tighter(&mut best, Some(found));
        }
        if d == top {
            break;
        }
        cur = d.parent().filter(|p| p.starts_with(top));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    #[test]
    fn cgroup_parse_proc_cgroup_v1_v2_hybrid() {
        let k8s = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e.slice/\
                   cri-containerd-0123abcd.scope\n";
        let c = parse_proc_cgroup(k8s);
        assert!(c.unified.unwrap().ends_with("/cri-containerd-0123abcd.scope"));
        assert_eq!(c.v1_memory, None);
        // This machine's shape: v1 controllers plus an (empty) unified hierarchy.
        let hybrid = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/f7a9f54d\n1:cpu:/\n0::/\n";
        let c = parse_proc_cgroup(hybrid);
        assert_eq!(c.v1_memory.as_deref(), Some("/process_api/f7a9f54d"));
        assert_eq!(c.unified.as_deref(), Some("/"));
        // Docker on v1, controllers co-mounted, no unified line; ':' inside the path.
        let docker = "12:cpu,cpuacct:/docker/abc\n\
                      11:memory,hugetlb:/docker/3f1c9e:weird\n\
                      1:name=systemd:/docker/abc\n";
        let c = parse_proc_cgroup(docker);
        assert_eq!(c.v1_memory.as_deref(), Some("/docker/3f1c9e:weird"));
        assert_eq!(c.unified, None);
        // "memory" must be a whole controller name.
        assert_eq!(parse_proc_cgroup("3:memory_foo:/x\n").v1_memory, None);
        assert_eq!(parse_proc_cgroup("garbage\n\n"), ProcCgroups::default());
    }

    #[test]
    fn cgroup_parse_mountinfo_variants() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate
50 40 0:40 /docker/abc /mnt/my\\040cg rw - cgroup cgroup rw,hugetlb,memory
25 21 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,memory_recursiveprot
60 40 0:41 / /proc rw - proc proc rw
";
        let got: Vec<_> = parse_mountinfo(text)
            .into_iter()
            .map(|m| (m.version, m.root, m.mount_point.display().to_string()))
            .collect();
        let want = [
            (1, "/", "/sys/fs/cgroup/memory"),
            (2, "/", "/sys/fs/cgroup/unified"),
            (1, "/docker/abc", "/mnt/my cg"),
            (2, "/", "/sys/fs/cgroup"),
        ];
        let want: Vec<_> = want.iter().map(|&(v, r, p)| (v, r.into(), p.into())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn cgroup_parse_limit_values() {
        assert_eq!(parse_limit_value("max\n").unwrap(), None);
        assert_eq!(parse_limit_value("268435456\n").unwrap(), Some(268435456));
        assert_eq!(parse_limit_value("0").unwrap(), Some(0));
        // v1 "unlimited" with 4 KiB and 64 KiB pages.
        assert_eq!(parse_limit_value("9223372036854771712").unwrap(), None);
        assert_eq!(parse_limit_value("9223372036854710272").unwrap(), None);
        assert!(parse_limit_value("lots").is_err() && parse_limit_value("").is_err());
    }

    #[test]
    fn cgroup_dir_mapping() {
        let mount = |root: &str, at: &str| CgroupMount { version: 1, root: root.into(), mount_point: at.into() };
        let dir = |m: &CgroupMount, cg| cgroup_dir(m, cg).map(|d| d.display().to_string());
        let host = mount("/", "/sys/fs/cgroup");
        let pod = dir(&host, "/kubepods.slice/pod.slice");
        assert_eq!(pod.as_deref(), Some("/sys/fs/cgroup/kubepods.slice/pod.slice"));
        assert_eq!(dir(&host, "/").as_deref(), Some("/sys/fs/cgroup"));
        assert_eq!(dir(&host, "/../../other"), None);
        // Docker v1 without cgroupns: the container's own cgroup is mounted at the top.
        let docker = mount("/docker/abc", "/sys/fs/cgroup/memory");
        assert_eq!(dir(&docker, "/docker/abc").as_deref(), Some("/sys/fs/cgroup/memory"));
        let sub = dir(&docker, "/docker/abc/sub");
        assert_eq!(sub.as_deref(), Some("/sys/fs/cgroup/memory/sub"));
        assert_eq!(dir(&docker, "/docker/abcdef"), None);
        assert_eq!(dir(&docker, "/system.slice"), None);
    }

    #[test]
    fn cgroup_walk_up_picks_least_headroom() {
        // A fake v2 tree: top (unlimited) / a (1000, 900 used) / b (500, 100 used).
        let top = std::env::temp_dir().join(format!("leakprobe-cgtree-{}", std::process::id()));
        let (a, b) = (top.join("a"), top.join("a/b"));
        std::fs::create_dir_all(&b).unwrap();
        let set = |d: &Path, max: &str, cur: &str| {
            std::fs::write(d.join("memory.max"), max).unwrap();
            std::fs::write(d.join("memory.current"), cur).unwrap();
        };
        set(&top, "max\n", "5000\n");
        set(&a, "1000\n", "900\n");
        set(&b, "500\n", "100\n");
        // The parent, shared with siblings, runs out first despite its larger limit.
        let got = walk_up(&b, &top, 2).unwrap();
        assert_eq!((got.limit_bytes, got.usage_bytes, got.version), (1000, Some(900), 2));
        assert_eq!(Path::new(&got.cgroup_path), a.as_path());
        // Levels above `top` (the mount point) are never consulted.
        assert_eq!(walk_up(&b, &b, 2).unwrap().limit_bytes, 500);
        set(&a, "max\n", "900\n");
        assert_eq!(walk_up(&b, &top, 2).unwrap().limit_bytes, 500);
        set(&b, "max\n", "100\n");
        assert_eq!(walk_up(&b, &top, 2), None);
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn cgroup_memory_limit_of_self_does_not_error() {
        let limit = memory_limit(std::process::id()).unwrap();
        eprintln!("memory limit of the test process: {limit:?}");
        if let Some(l) = limit {
            assert!(l.version == 1 || l.version == 2);
            assert!(l.limit_bytes < V1_UNLIMITED_THRESHOLD);
        }
        assert!(memory_limit(u32::MAX).is_err());
    }

    /// A child cgroup with a 256 MiB limit holding a `sleep`; killed and removed on drop.
    struct LimitedCgroup {
        dir: PathBuf,
        child: Option<Child>,
    }

    impl Drop for LimitedCgroup {
        fn drop(&mut self) {
            if let Some(child) = &mut self.child {
                let _ = child.kill();
                let _ = child.wait();
            }
            // rmdir can briefly fail with EBUSY right after the last task exited.
            for _ in 0..50 {
                if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            eprintln!("could not remove test cgroup {}", self.dir.display());
        }
    }

    const LIMIT: u64 = 256 * 1024 * 1024;

    /// Create the cgroup: under the cgroup2 root if v2 has the memory controller, else below
    /// our own v1 memory cgroup (on this machine memory is v1-only). None if not possible.
    fn make_limited_cgroup() -> Option<(LimitedCgroup, u8)> {
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?);
        let me = parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?);
        let name = format!("leakprobe-test-{}", std::process::id());
        let has_memory = |m: &&CgroupMount| {
            std::fs::read_to_string(m.mount_point.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        };
        let v2 = mounts.iter().filter(|m| m.version == 2 && m.root == "/").find(has_memory);
        let (parent, version, limit_file) = if let Some(m) = v2 {
            (m.mount_point.clone(), 2, "memory.max")
        } else {
            let cg = me.v1_memory.as_deref()?;
            let (dir, _) = find_dir(&mounts, 1, cg)?;
            (dir, 1, "memory.limit_in_bytes")
        };
        let dir = parent.join(name);
        std::fs::create_dir(&dir).ok()?;
        let mut guard = LimitedCgroup { dir, child: None };
        std::fs::write(guard.dir.join(limit_file), LIMIT.to_string()).ok()?;
        let child = Command::new("sleep").arg("60").spawn().ok()?;
        let pid = child.id();
        guard.child = Some(child);
        std::fs::write(guard.dir.join("cgroup.procs"), pid.to_string()).ok()?;
        Some((guard, version))
    }

    #[test]
    fn cgroup_live_child_with_256m_limit() {
        let Some((guard, version)) = make_limited_cgroup() else {
            eprintln!("skipping: cannot create a memory-limited cgroup here");
            return;
        };
        let pid = guard.child.as_ref().map(|c| c.id()).unwrap();
        let limit = memory_limit(pid).unwrap().expect("limit must be found");
        assert_eq!(limit.limit_bytes, LIMIT);
        assert_eq!(limit.version, version);
        assert_eq!(Path::new(&limit.cgroup_path), guard.dir.as_path());
        assert!(limit.usage_bytes.is_some_and(|u| u < LIMIT), "{limit:?}");
        eprintln!("live cgroup test (v{version}): {limit:?}");
    }
}
