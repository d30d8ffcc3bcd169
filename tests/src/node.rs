//! A simulated Kubernetes node for the agent's end-to-end tests: "containers" that are a cgroup
//! with the path kubelet and the runtime would give them, and a process started inside it in its
//! own mount namespace. No container runtime, no image: any command.
//!
//! Where the cgroups go:
//! - cgroup v1 (memory, pids, name=systemd): below the test process's own cgroup in each
//!   hierarchy, e.g. `/sys/fs/cgroup/memory/<own>/kubepods/burstable/pod<uid>/<id>`. v1 allows
//!   processes in inner cgroups, so nesting always works, and the pod stays accounted (and
//!   limited) wherever the test runs — a job supervisor's memory cgroup, say. On a host, `<own>`
//!   is usually `/`, so the paths are exactly kubelet's.
//! - cgroup v2: below the root of the hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
//!   hybrid hosts). A v2 cgroup can only hand controllers (memory.max) to children when it has no
//!   processes itself, which the test process's own cgroup does.
//!
//! What a [`CgroupStyle`] makes:
//! - `V1Cgroupfs`: kubelet's cgroupfs driver, `kubepods/burstable/pod<uid>/<id>`, in the v1 memory,
//!   pids and name=systemd hierarchies. On a host without v1 hierarchies, in v2 (kubelet's cgroupfs
//!   driver on a unified host).
//! - `V2Systemd`: kubelet's systemd driver with containerd,
//!   `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`,
//!   in v2. On a hybrid host v2 has no memory controller (it is bound to v1): with a memory limit
//!   the same path is also made in the v1 memory hierarchy to carry it, as a real node's runtime
//!   does in every hierarchy. Without a limit the v1 lines stay those of the test process, so the
//!   container shows only on the `0::` line.
//!
//! Every pod is in the burstable QoS class. Names must be unique among concurrently running pods:
//! [`unique_pod_uid`] and [`unique_container_id`] include the test process's pid.

use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Which cgroup driver's paths a [`FakePod`] gets (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupStyle {
    /// `kubepods/burstable/pod<uid>/<id>` in the v1 hierarchies.
    V1Cgroupfs,
    /// `kubepods.slice/…/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` in v2.
    V2Systemd,
}

/// The QoS class of every fake pod.
pub const QOS: &str = "burstable";

/// Serializes making and removing the shared levels (`kubepods`, `burstable`) between the pods of
/// this test process: one pod's cleanup must not remove a level another is about to use.
static CGROUP_LOCK: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_unique() -> (u32, u32, u128) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    (std::process::id(), n, nanos)
}

/// A pod uid (dashed UUID form) unique to this test process and call: it starts with the pid.
pub fn unique_pod_uid() -> String {
    let (pid, n, nanos) = next_unique();
    format!(
        "{pid:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        n & 0xffff,
        (nanos >> 12) & 0xfff,
        nanos & 0xfff,
        (nanos >> 24) & 0xffff_ffff_ffff
    )
}

/// A 64-hex container id unique to this test process and call: it starts with the pid.
pub fn unique_container_id() -> String {
    let (pid, n, nanos) = next_unique();
    format!(
        "{pid:08x}{n:08x}{:016x}{:032x}",
        nanos as u64,
        nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

/// One fake container: its cgroups and the process in them. Dropping it kills the process (and
/// anything it started in the cgroups) and removes the cgroups it made.
pub struct FakePod {
    child: Option<Child>,
    style: CgroupStyle,
    pod_uid: String,
    container_id: String,
    /// Per hierarchy: the container's directory, and the directories from there up to (not
    /// including) the base, innermost first — the removal order.
    cgroups: Vec<Vec<PathBuf>>,
}

impl FakePod {
    /// Makes the pod's cgroups (with `memory_limit` in bytes on the container's), and starts `cmd`
    /// in them, in a mount namespace of its own: the child joins the cgroups and unshares between
    /// fork and exec, so the command's first instruction already runs "in the container".
    /// Panics (after cleaning up) if any step fails.
    pub fn start(
        style: CgroupStyle,
        pod_uid: &str,
        container_id: &str,
        memory_limit: Option<u64>,
        mut cmd: Command,
    ) -> FakePod {
        let mut pod = FakePod {
            child: None,
            style,
            pod_uid: pod_uid.to_string(),
            container_id: container_id.to_string(),
            cgroups: Vec::new(),
        };
        let _lock = CGROUP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let hierarchies = Hierarchies::discover();
        let components = match style {
            CgroupStyle::V1Cgroupfs => {
                vec!["kubepods".to_string(), QOS.to_string(), format!("pod{pod_uid}"), container_id.to_string()]
            }
            CgroupStyle::V2Systemd => vec![
                "kubepods.slice".to_string(),
                format!("kubepods-{QOS}.slice"),
                format!("kubepods-{QOS}-pod{}.slice", pod_uid.replace('-', "_")),
                format!("cri-containerd-{container_id}.scope"),
            ],
        };
        // (base directory, whether the container's memory limit goes there)
        let mut bases: Vec<(PathBuf, bool)> = Vec::new();
        let v1 = hierarchies.v1.iter().map(|h| (h.base.clone(), h.controller == "memory"));
        let v2 = hierarchies.v2.iter().map(|h| (h.base.clone(), h.has_memory));
        match style {
            CgroupStyle::V1Cgroupfs if !hierarchies.v1.is_empty() => bases.extend(v1),
            CgroupStyle::V1Cgroupfs => bases.extend(v2),
            CgroupStyle::V2Systemd if hierarchies.v2.is_none() => bases.extend(v1),
            CgroupStyle::V2Systemd => {
                let v2_memory = hierarchies.v2.iter().any(|h| h.has_memory);
                bases.extend(v2);
                if memory_limit.is_some() && !v2_memory {
                    bases.extend(v1.filter(|(_, memory)| *memory));
                }
            }
        }
        assert!(!bases.is_empty(), "no cgroup hierarchy is mounted");

        for (base, memory) in &bases {
            let mut dirs = Vec::new();
            let mut dir = base.clone();
            for component in &components {
                dir.push(component);
                dirs.push(dir.clone());
            }
            dirs.reverse();
            pod.cgroups.push(dirs);
            let leaf = dir;
            if let Err(e) = create_dirs(base, &components) {
                drop(_lock);
                panic!("creating {}: {e}", leaf.display());
            }
            if let (Some(limit), true) = (memory_limit, *memory) {
                let file = if leaf.join("memory.max").exists() { "memory.max" } else { "memory.limit_in_bytes" };
                if let Err(e) = std::fs::write(leaf.join(file), limit.to_string()) {
                    drop(_lock);
                    panic!("setting {}/{file}: {e}", leaf.display());
                }
            }
        }
        assert!(
            memory_limit.is_none() || bases.iter().any(|(_, memory)| *memory),
            "a memory limit needs a memory cgroup hierarchy"
        );

        let procs: Vec<CString> = pod
            .cgroups
            .iter()
            .map(|dirs| CString::new(dirs[0].join("cgroup.procs").as_os_str().as_bytes()).unwrap())
            .collect();
        // SAFETY: between fork and exec only async-signal-safe calls (open, write, close, unshare,
        // mount), on memory prepared before the fork; nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                for file in &procs {
                    join_cgroup(file)?;
                }
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Like `unshare --mount --propagation private`: nothing leaks back to the host.
                let (none, root) = (c"none", c"/");
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                if libc::mount(none.as_ptr(), root.as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => pod.child = Some(child),
            Err(e) => {
                drop(_lock);
                panic!("starting {cmd:?} in {}: {e}", pod.cgroups[0][0].display());
            }
        }
        pod
    }

    /// Like [`FakePod::start`], then waits until the command prints a line starting with "ready"
    /// (as [`crate::spawn_ready`]); its stdout is piped.
    pub fn start_ready(
        style: CgroupStyle,
        pod_uid: &str,
        container_id: &str,
        memory_limit: Option<u64>,
        mut cmd: Command,
    ) -> FakePod {
        cmd.stdout(Stdio::piped());
        let mut pod = FakePod::start(style, pod_uid, container_id, memory_limit, cmd);
        let stdout = pod.child().stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("target prints ready");
        assert!(line.starts_with("ready"), "target said {line:?}");
        pod
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    pub fn pod_uid(&self) -> &str {
        &self.pod_uid
    }

    pub fn style(&self) -> CgroupStyle {
        self.style
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child is held")
    }

    /// The container's cgroup directory in each hierarchy it was made in.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroups.iter().map(|dirs| dirs[0].clone()).collect()
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever the command started is still in the container's cgroups.
        for dirs in &self.cgroups {
            kill_all_in(&dirs[0]);
        }
        let _lock = CGROUP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for dirs in &self.cgroups {
            for (i, dir) in dirs.iter().enumerate() {
                // The container's and the pod's directories are ours alone: a process just killed
                // can keep them busy a moment. The shared levels stay while other pods use them.
                let deadline = Instant::now() + if i < 2 { Duration::from_secs(5) } else { Duration::ZERO };
                loop {
                    match std::fs::remove_dir(dir) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                        Err(e) if Instant::now() >= deadline => {
                            if i < 2 {
                                eprintln!("FakePod: cannot remove {}: {e}", dir.display());
                            }
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs` ("0" is the writer).
/// Runs between fork and exec: raw syscalls only.
fn join_cgroup(procs: &CString) -> std::io::Result<()> {
    // SAFETY: a valid NUL-terminated path and a 1-byte buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(err);
        }
    }
    Ok(())
}

/// `base/c1/c2/...`, level by level; another test process may remove an empty shared level
/// between two steps, so a vanished parent is retried.
fn create_dirs(base: &Path, components: &[String]) -> std::io::Result<()> {
    let mut attempts = 0;
    'again: loop {
        let mut dir = base.to_path_buf();
        for component in components {
            enable_controllers(&dir);
            dir.push(component);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 10 => {
                    attempts += 1;
                    continue 'again;
                }
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
}

/// cgroup v2: hand the memory and pids controllers down from `dir` to its children, when it has
/// them (best effort: a cgroup with processes of its own cannot, the root always can).
fn enable_controllers(dir: &Path) {
    let Ok(available) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return; // v1
    };
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for controller in ["memory", "pids"] {
        let has = |text: &str| text.split_whitespace().any(|c| c == controller);
        if has(&available) && !has(&enabled) {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"));
        }
    }
}

/// SIGKILLs every process in the cgroup `dir` until it is empty (up to 5 s).
fn kill_all_in(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            return;
        };
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from the cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A v1 hierarchy the fake pods use, and the test process's cgroup directory in it.
struct V1Hierarchy {
    controller: &'static str,
    base: PathBuf,
}

/// The v2 hierarchy's root.
struct V2Hierarchy {
    base: PathBuf,
    has_memory: bool,
}

struct Hierarchies {
    v1: Vec<V1Hierarchy>,
    v2: Option<V2Hierarchy>,
}

impl Hierarchies {
    /// From /proc/self/mountinfo and /proc/self/cgroup. Only mounts of a hierarchy's root count
    /// (not bind mounts of a sub-cgroup, as inside containers without a cgroup namespace).
    fn discover() -> Hierarchies {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
        let mut out = Hierarchies { v1: Vec::new(), v2: None };
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().skip(6).position(|f| *f == "-").map(|i| i + 6) else {
                continue;
            };
            let (Some(fstype), Some(super_opts)) = (fields.get(sep + 1), fields.get(sep + 3)) else {
                continue;
            };
            if fields[3] != "/" {
                continue;
            }
            let mount_point = PathBuf::from(fields[4]);
            match *fstype {
                "cgroup2" if out.v2.is_none() => {
                    let controllers =
                        std::fs::read_to_string(mount_point.join("cgroup.controllers")).unwrap_or_default();
                    let has_memory = controllers.split_whitespace().any(|c| c == "memory");
                    out.v2 = Some(V2Hierarchy { base: mount_point, has_memory });
                }
                "cgroup" => {
                    for controller in ["memory", "pids", "name=systemd"] {
                        if !super_opts.split(',').any(|o| o == controller)
                            || out.v1.iter().any(|h| h.controller == controller)
                        {
                            continue;
                        }
                        let Some(path) = own_path(&own, controller) else { continue };
                        let base = mount_point.join(path.trim_start_matches('/'));
                        out.v1.push(V1Hierarchy { controller, base });
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// The test process's cgroup in the v1 hierarchy with `controller`, from /proc/self/cgroup.
fn own_path<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers.split(',').any(|c| c == controller).then_some(path)
    })
}
