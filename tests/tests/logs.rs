//! `leakprobe logs FILE` end to end: the built binary on the log fixtures (no root, no eBPF).

use leakprobe_tests::*;
use std::process::{Command, Output};

fn logs(args: &[&str]) -> Output {
    Command::new(leakprobe_bin()).arg("logs").args(args).output().unwrap()
}

fn fixture_log(name: &str) -> String {
    fixture(&format!("logs/{name}")).display().to_string()
}

fn json(out: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is no JSON ({e}); stderr: {stderr}"))
}

#[test]
fn json_report_of_a_leak_then_oom_kill_and_fail_on_leak() {
    let file = fixture_log("gunicorn_leak_oom.log");
    let out = logs(&[&file, "--format", "json", "--limit", "2GiB"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!(report["schema_version"], 1);
    let verdict = &report["verdict"];
    assert_eq!(verdict["verdict"], "leak", "{verdict}");
    assert_eq!(verdict["series"], "pid 1234");
    let rate = verdict["growth_mb_per_min"].as_f64().unwrap();
    assert!((rate - 5.0).abs() < 0.25, "{rate} MB/min");
    let to_limit = verdict["time_to_limit_seconds"].as_f64().unwrap();
    assert!((to_limit - 170.0 * 60.0).abs() < 0.05 * 170.0 * 60.0, "{to_limit} s");
    assert_eq!(report["series"].as_array().unwrap().len(), 3);
    let oom = &report["errors"][0];
    assert_eq!(oom["kind"], "oom-kill");
    assert_eq!(oom["killed_pid"], 1234);
    assert_eq!(oom["series"], "pid 1234");
    assert_eq!(oom["last_sample"]["seconds_before"], 25.0);
    assert_eq!(oom["trend_before"]["growing"], true);
    assert_eq!(report["skipped"]["total"], 0);

    let gated = logs(&[&file, "--format", "json", "--fail-on-leak"]);
    assert_eq!(gated.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&gated.stderr));
    assert_eq!(json(&gated)["verdict"]["verdict"], "leak");
}

#[test]
fn no_leak_passes_the_gate_and_malformed_lines_are_counted() {
    let steady = logs(&[&fixture_log("steady_spike.log"), "--fail-on-leak"]);
    assert_eq!(steady.status.code(), Some(0));
    let text = String::from_utf8_lossy(&steady.stdout);
    assert!(text.starts_with("no-leak: "), "{text}");
    assert!(text.contains("SPIKES (2"), "{text}");

    let junk = logs(&[&fixture_log("malformed_junk.log"), "--format", "json", "--fail-on-leak"]);
    assert_eq!(junk.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&junk.stderr));
    let report = json(&junk);
    assert_eq!(report["skipped"]["total"], 12);
    assert_eq!(report["lines"]["invalid_utf8"], 4);
}

#[test]
fn unreadable_file_is_one_line_and_exit_1() {
    let out = logs(&["/nonexistent/app.log"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("leakprobe: error: cannot read /nonexistent/app.log"), "{stderr}");
    assert!(out.stdout.is_empty());
}
