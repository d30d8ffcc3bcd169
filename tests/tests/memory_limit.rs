//! The report projects when a leaking process hits its cgroup memory limit.

use leakprobe_tests::*;
use std::{fs, path::PathBuf, process::Command};

/// A memory cgroup with a limit, removed on drop (after its processes are gone).
struct LimitedCgroup(PathBuf);

impl LimitedCgroup {
    /// Under our own memory cgroup: cgroup v2 when it has the memory controller, else v1.
    fn create(limit: u64) -> LimitedCgroup {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let v2 = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").is_ok_and(|c| c.contains("memory"));
        let (root, path, limit_file) = if v2 {
            let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            ("/sys/fs/cgroup", path.to_string(), "memory.max")
        } else {
            let path = own
                .lines()
                .find_map(|l| {
                    let mut f = l.splitn(3, ':');
                    let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                    controllers.split(',').any(|c| c == "memory").then(|| path.to_string())
                })
                .expect("a v1 memory cgroup");
            ("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
        };
        let dir = PathBuf::from(root)
            .join(path.trim_start_matches('/'))
            .join(format!("leakprobe-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(limit_file), limit.to_string()).unwrap();
        LimitedCgroup(dir)
    }

    fn adopt(&self, pid: u32) {
        fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for LimitedCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn projects_time_to_the_cgroup_limit() {
    let limit: u64 = 256 << 20;
    let cgroup = LimitedCgroup::create(limit);
    let exe = compile_c("native_leak.c", &["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline"]);
    let target = spawn_ready(Command::new(&exe).args(["65536", "50"])); // 1.25 MiB/s
    cgroup.adopt(target.pid());
    let (_, report) = record_json(target.pid(), "12s", "1s", &[]);
    drop(target);

    let projection = &report.memory_limit;
    assert_eq!(projection.as_ref().map(|p| p.limit_bytes), Some(limit), "{projection:#?}");
    let projection = projection.as_ref().unwrap();
    let usage = projection.usage_bytes.unwrap_or(0);
    let ttl = projection.time_to_limit_seconds.expect("a leaking process has a projection");
    let growth = report.verdict.growth_bytes_per_sec;
    let expected = (limit - usage) as f64 / (65536.0 / 0.05);
    assert!(
        (ttl - expected).abs() <= expected * 0.3,
        "projected {ttl} s, expected about {expected} s (growth {growth} B/s)"
    );
}
