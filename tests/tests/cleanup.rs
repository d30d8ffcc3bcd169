//! However leakprobe ends — normally, by Ctrl-C, killed with SIGKILL, or because its target
//! exited — no program of its own stays loaded in the kernel, and what it collected is reported.

use leakprobe_tests::*;
use std::{
    process::{Command, Stdio},
    time::Duration,
};

fn start_recording(pid: u32) -> ChildGuard {
    let child = Command::new(leakprobe_bin())
        .args(["record", "--pid", &pid.to_string(), "--interval", "500ms", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = ChildGuard::new(child);
    assert!(eventually(Duration::from_secs(20), || !leakprobe_programs_loaded().is_empty()), "probes never attached");
    guard
}

#[test]
fn no_probe_left_after_a_normal_end() {
    assert!(leakprobe_programs_loaded().is_empty(), "programs loaded before the test");
    let target = spawn_python("py_leak.py");
    let (_, report) = record_json(target.pid(), "3s", "500ms", &[]);
    assert_eq!(report.ended_because, "duration");
    assert!(
        eventually(Duration::from_secs(5), || leakprobe_programs_loaded().is_empty()),
        "{:?}",
        leakprobe_programs_loaded()
    );
}

#[test]
fn ctrl_c_reports_what_was_collected_and_detaches() {
    let target = spawn_python("py_leak.py");
    let recorder = start_recording(target.pid());
    std::thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(recorder.pid() as i32, libc::SIGINT) };
    let out = recorder.wait_with_output();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let report = load_report(&out.stdout).unwrap();
    assert_eq!(report.ended_because, "interrupted");
    assert!(report.rss.len() >= 3);
    assert!(
        eventually(Duration::from_secs(5), || leakprobe_programs_loaded().is_empty()),
        "{:?}",
        leakprobe_programs_loaded()
    );
}

#[test]
fn sigkill_leaves_no_probe() {
    let target = spawn_python("py_leak.py");
    let recorder = start_recording(target.pid());
    std::thread::sleep(Duration::from_secs(1));
    drop(recorder); // SIGKILL
    assert!(
        eventually(Duration::from_secs(10), || leakprobe_programs_loaded().is_empty()),
        "{:?}",
        leakprobe_programs_loaded()
    );
}

#[test]
fn target_exit_ends_the_recording_with_everything_collected() {
    let target = spawn_python("py_leak.py");
    let recorder = start_recording(target.pid());
    std::thread::sleep(Duration::from_secs(3));
    drop(target);
    let out = recorder.wait_with_output();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let report = load_report(&out.stdout).unwrap();
    assert_eq!(report.ended_because, "target-exited");
    assert!(report.rss.len() >= 3);
    assert!(report.counters.iter().any(|c| c.name == "allocations" && c.value > 0));
    assert!(eventually(Duration::from_secs(5), || { leakprobe_programs_loaded().is_empty() }));
}
