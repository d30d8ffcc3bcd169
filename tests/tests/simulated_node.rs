//! The simulated node itself (`leakprobe_tests::node`): fake pods look like containers from
//! /proc, carry their memory limit, and leave nothing behind. Needs root, not the leakprobe binary.

use leakprobe::agent::containers;
use leakprobe_tests::node::{unique_container_id, unique_pod_uid, CgroupStyle, FakePod, QOS};
use std::{fs, path::PathBuf, process::Command, time::Duration};

fn sleep(seconds: u32) -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg(seconds.to_string());
    cmd
}

fn proc_cgroup(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
}

/// This process's v1 cgroup with `controller`, without the trailing '/' ("" for the root).
fn own_v1(controller: &str) -> Option<String> {
    fs::read_to_string("/proc/self/cgroup").unwrap().lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers.split(',').any(|c| c == controller).then(|| path.trim_end_matches('/').to_string())
    })
}

fn v1_mounted() -> bool {
    own_v1("memory").is_some() && PathBuf::from("/sys/fs/cgroup/memory/cgroup.procs").exists()
}

fn mount_ns(pid: &str) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap()
}

fn gone(pid: u32) -> bool {
    // A killed and reaped child has no /proc entry (the pid is not reused this fast).
    !PathBuf::from(format!("/proc/{pid}")).exists()
}

#[test]
fn fake_pods_look_like_containers() {
    for style in [CgroupStyle::V1Cgroupfs, CgroupStyle::V2Systemd] {
        let (uid, id) = (unique_pod_uid(), unique_container_id());
        assert!(uid.starts_with(&format!("{:08x}-", std::process::id())), "{uid}");
        assert_eq!(id.len(), 64);
        let pod = FakePod::start(style, &uid, &id, None, sleep(30));
        let text = proc_cgroup(pod.pid());
        eprintln!("{style:?}: /proc/{}/cgroup:\n{text}", pod.pid());
        let expected = match style {
            CgroupStyle::V1Cgroupfs if v1_mounted() => {
                format!(":memory:{}/kubepods/{QOS}/pod{uid}/{id}\n", own_v1("memory").unwrap())
            }
            CgroupStyle::V1Cgroupfs => format!("0::/kubepods/{QOS}/pod{uid}/{id}\n"),
            CgroupStyle::V2Systemd => format!(
                "0::/kubepods.slice/kubepods-{QOS}.slice/kubepods-{QOS}-pod{}.slice/cri-containerd-{id}.scope\n",
                uid.replace('-', "_")
            ),
        };
        assert!(text.contains(&expected), "{style:?}: expected {expected:?} in\n{text}");
        if style == CgroupStyle::V1Cgroupfs && v1_mounted() {
            let pids = format!(":pids:{}/kubepods/{QOS}/pod{uid}/{id}\n", own_v1("pids").unwrap_or_default());
            assert!(text.contains(&pids), "expected {pids:?} in\n{text}");
        }

        let found = containers::from_proc_cgroup(&text).unwrap_or_else(|| panic!("{style:?}: no container in\n{text}"));
        assert_eq!(found.container_id, id);
        assert_eq!(found.pod_uid.as_deref(), Some(uid.as_str()));
        assert_eq!(found.qos.as_deref(), Some(QOS));
        let runtime = match style {
            CgroupStyle::V1Cgroupfs => containers::Runtime::Unknown,
            CgroupStyle::V2Systemd => containers::Runtime::Containerd,
        };
        assert_eq!(found.runtime, runtime);
        assert_eq!(containers::read(pod.pid()), Some(found));
        // This process is not in a container of the simulated node.
        assert!(containers::read(std::process::id()).is_none_or(|c| c.container_id != id));

        assert_ne!(mount_ns(&pod.pid().to_string()), mount_ns("self"), "{style:?}: own mount namespace");

        let (pid, dirs) = (pod.pid(), pod.cgroup_dirs());
        assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");
        drop(pod);
        assert!(gone(pid), "{style:?}: process {pid} still there");
        for dir in &dirs {
            assert!(!dir.exists(), "{} is left", dir.display());
            assert!(!dir.parent().unwrap().exists(), "{} is left", dir.parent().unwrap().display());
        }
    }
}

#[test]
fn memory_limits_are_set_where_the_kernel_enforces_them() {
    let limit: u64 = 96 << 20;
    for style in [CgroupStyle::V1Cgroupfs, CgroupStyle::V2Systemd] {
        let pod = FakePod::start(style, &unique_pod_uid(), &unique_container_id(), Some(limit), sleep(30));
        let text = proc_cgroup(pod.pid());
        let limited: Vec<PathBuf> = pod
            .cgroup_dirs()
            .into_iter()
            .filter_map(|d| ["memory.max", "memory.limit_in_bytes"].iter().map(|f| d.join(f)).find(|f| f.exists()))
            .collect();
        assert_eq!(limited.len(), 1, "{style:?}: one limit file expected, got {limited:?}");
        assert_eq!(fs::read_to_string(&limited[0]).unwrap().trim(), limit.to_string(), "{}", limited[0].display());
        // The process is in the limited cgroup: its line in /proc/PID/cgroup names that directory.
        let dir = limited[0].parent().unwrap().to_string_lossy().into_owned();
        let rel = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .find_map(|root| dir.strip_prefix(root))
            .unwrap();
        assert!(text.lines().any(|l| l.ends_with(&format!(":{rel}"))), "{style:?}: {rel} not in\n{text}");
        let found = containers::from_proc_cgroup(&text).unwrap();
        assert_eq!(found.container_id, pod.container_id());
    }
}

#[test]
fn cleanup_survives_a_panicking_test_and_forked_children() {
    let uid = unique_pod_uid();
    let dirs = std::panic::catch_unwind(|| {
        let id = unique_container_id();
        // The command leaves a background child in the container's cgroups.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & exec sleep 31"]);
        let pod = FakePod::start(CgroupStyle::V1Cgroupfs, &uid, &id, Some(64 << 20), cmd);
        let dirs = pod.cgroup_dirs();
        let pod2 = FakePod::start(CgroupStyle::V2Systemd, &uid, &unique_container_id(), None, sleep(30));
        let all: Vec<PathBuf> = dirs.into_iter().chain(pod2.cgroup_dirs()).collect();
        assert!(leakprobe_tests::eventually(Duration::from_secs(5), || {
            fs::read_to_string(all[0].join("cgroup.procs")).unwrap().lines().count() == 2
        }));
        std::panic::panic_any(all)
    })
    .expect_err("the closure panics")
    .downcast::<Vec<PathBuf>>()
    .unwrap();
    assert!(!dirs.is_empty());
    for dir in dirs.iter() {
        assert!(!dir.exists(), "{} is left", dir.display());
        assert!(!dir.parent().unwrap().exists(), "{} is left", dir.parent().unwrap().display());
    }
    // A cgroup with processes cannot be removed: none were left.
}

#[test]
fn pods_sharing_levels_clean_up_independently() {
    for style in [CgroupStyle::V1Cgroupfs, CgroupStyle::V2Systemd] {
        let a = FakePod::start(style, &unique_pod_uid(), &unique_container_id(), None, sleep(30));
        let b = FakePod::start(style, &unique_pod_uid(), &unique_container_id(), None, sleep(30));
        let (a_dirs, b_dirs) = (a.cgroup_dirs(), b.cgroup_dirs());
        drop(a);
        assert!(a_dirs.iter().all(|d| !d.exists()));
        assert!(b_dirs.iter().all(|d| d.is_dir()), "{b_dirs:?}");
        assert!(containers::read(b.pid()).is_some_and(|c| c.container_id == b.container_id()));
        drop(b);
        assert!(b_dirs.iter().all(|d| !d.exists()));
    }
    // Whether the shared kubepods levels are gone depends on the other tests running in parallel.
}
