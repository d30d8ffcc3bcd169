//! `leakprobe watch` on live CPython processes: the continuous mode (memory syscalls only) calls a
//! leaking process a leak with its rate and the Python line the heap grows through, and a bounded
//! cache not; it ends cleanly with the target.

use std::process::Command;

use leakprobe_tests::*;

/// `leakprobe watch --json` for `duration`: one parsed snapshot per interval.
fn watch_json(pid: u32, duration: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(leakprobe_bin())
        .args(["watch", "--pid", &pid.to_string(), "--interval", "1s", "--duration", duration, "--json"])
        .args(["--rate-window", "6"])
        .args(extra)
        .output()
        .expect("leakprobe runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "leakprobe watch failed: {:?}\n{stderr}", out.status);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 10, "{} snapshots; stderr:\n{stderr}", lines.len());
    lines
}

#[test]
fn watch_calls_a_leak_a_leak_with_its_rate_and_line() {
    let target = spawn_python("py_leak.py");
    let snapshots = watch_json(target.pid(), "16s", &[]);
    let last = snapshots.last().unwrap();
    assert_eq!(last["verdict"], "leak", "{last:#}");
    // ~10 KB of payload every 50 ms.
    let growth = last["growth_bytes_per_sec"].as_f64().unwrap();
    assert!(growth > 100_000.0 && growth < 400_000.0, "growth {growth} B/s: {last:#}");
    // The 10 KB payloads come from malloc's heap (brk) here; the site is the fixture's code.
    let sites: Vec<&str> = last["top"].as_array().unwrap().iter().filter_map(|a| a["site"].as_str()).collect();
    assert!(sites.iter().any(|s| s.contains("py_leak.py")), "{sites:?}");
    assert!(last["memory"].as_object().is_some_and(|m| !m.is_empty()), "{last:#}");
    // Nothing left in the kernel once it has ended.
    assert!(leakprobe_programs_loaded().is_empty());
}

#[test]
fn watch_names_the_growing_container_and_the_gc_from_heap_censuses() {
    let target = spawn_python("py_leak.py");
    let snapshots = watch_json(target.pid(), "20s", &["--census-interval", "1s"]);
    let last = snapshots.last().unwrap();
    let heap = &last["heap"];
    assert!(heap["censuses"].as_u64().unwrap_or(0) >= 8, "{heap:#}");
    // 20 records a second appended to a module-level list.
    let first = &heap["holders"][0];
    assert_eq!(first["path"], "__main__.HISTORY", "{heap:#}");
    assert_eq!(first["flagged"], true, "{heap:#}");
    let items = first["growth_items_per_sec"].as_f64().unwrap();
    assert!(items > 10.0 && items < 30.0, "{items} items/s: {heap:#}");
    let gc = &heap["gc"];
    assert_eq!(gc["collections"].as_array().map(Vec::len), Some(3), "{heap:#}");
    assert!(gc["tracked_objects"].as_u64().unwrap_or(0) > 1000, "{heap:#}");
    assert!(leakprobe_programs_loaded().is_empty());
}

#[test]
fn watch_does_not_call_a_bounded_cache_a_leak() {
    let target = spawn_python("py_bounded_cache.py");
    let snapshots = watch_json(target.pid(), "16s", &[]);
    let last = snapshots.last().unwrap();
    assert_ne!(last["verdict"], "leak", "{last:#}");
}

#[test]
fn watch_ends_when_the_target_exits() {
    let mut target = spawn_python("py_leak.py");
    let pid = target.pid();
    let watcher = Command::new(leakprobe_bin())
        .args(["watch", "--pid", &pid.to_string(), "--interval", "200ms", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    target.child().kill().unwrap();
    target.child().wait().unwrap();
    let out = watcher.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert!(!out.stdout.is_empty());
}
