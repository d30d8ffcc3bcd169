//! Bad input gets one clear line and a non-zero exit, never a panic.

use leakprobe_tests::*;
use std::process::{Command, Output};

fn assert_one_line_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail; stderr: {stderr}");
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("leakprobe: error: "), "{stderr}");
    assert!(lines[0].contains(expected), "expected {expected:?} in {stderr}");
}

fn record_pid(pid: u32) -> Output {
    Command::new(leakprobe_bin()).args(["record", "--pid", &pid.to_string(), "--duration", "2s"]).output().unwrap()
}

#[test]
fn missing_pid() {
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let pid = (2..pid_max).rev().find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).unwrap();
    assert_one_line_error(&record_pid(pid), &format!("no process with PID {pid}"));
}

#[test]
fn process_without_an_allocator() {
    let exe = compile_c("no_allocator.c", &["-static", "-nostdlib", "-O1"]);
    let target = ChildGuard::new(Command::new(&exe).spawn().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_one_line_error(&record_pid(target.pid()), "no allocator to hook");
    assert!(leakprobe_programs_loaded().is_empty());
}

#[test]
fn kernel_thread() {
    // kthreadd has no user memory.
    assert_one_line_error(&record_pid(2), "no user memory");
}

#[test]
fn not_root() {
    let target = spawn_python("py_leak.py");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(leakprobe_bin())
        .args(["record", "--pid", &target.pid().to_string(), "--duration", "2s"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "needs root");
}

#[test]
fn no_target_given() {
    let out = Command::new(leakprobe_bin()).args(["record", "--duration", "1s"]).output().unwrap();
    assert_one_line_error(&out, "--pid PID");
}
