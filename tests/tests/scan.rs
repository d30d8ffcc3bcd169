//! `leakprobe scan` as people run it in code review: over the pattern fixtures it finds every leak
//! and none of the look-alikes, ranks by confidence, gates with an exit status, and fails cleanly
//! on bad input.

use leakprobe_tests::*;
use std::process::Command;

fn scan(args: &[&str]) -> std::process::Output {
    Command::new(leakprobe_bin()).arg("scan").args(args).output().expect("leakprobe runs")
}

#[test]
fn scan_finds_each_leak_fixture_and_no_look_alike() {
    let dir = fixture("patterns");
    let out = scan(&[dir.to_str().unwrap(), "--format", "json", "--fail-on-findings"]);
    assert_eq!(out.status.code(), Some(3), "findings exit 3: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["files_scanned"], 18);
    let findings = report["findings"].as_array().unwrap();
    let files: std::collections::BTreeSet<&str> =
        findings.iter().map(|f| f["path"].as_str().unwrap().rsplit('/').next().unwrap()).collect();
    assert!(files.iter().all(|f| f.ends_with("_leak.py")), "a look-alike was reported: {files:?}");
    // Every leaking pattern (regex compilation is not one) is found in its fixture.
    assert_eq!(files.len(), 8, "{files:?}");
    let confidences: Vec<f64> = findings.iter().map(|f| f["confidence"].as_f64().unwrap()).collect();
    assert!(confidences.windows(2).all(|w| w[0] >= w[1]), "ranked by confidence: {confidences:?}");
    for f in findings {
        assert!(f["fix"].as_str().is_some_and(|s| !s.is_empty()) && f["line"].as_u64().is_some(), "{f:#}");
    }
}

#[test]
fn scan_text_is_quiet_on_the_look_alikes_and_bad_input_is_one_line() {
    let lookalike = fixture("patterns/unbounded_cache_lookalike.py");
    let out = scan(&[lookalike.to_str().unwrap(), "--fail-on-findings"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("No leak patterns in 1 Python file"));
    for args in [&["/nonexistent/leakprobe"][..], &[lookalike.to_str().unwrap(), "--min-confidence", "7"]] {
        let out = scan(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("leakprobe: error: "), "{stderr}");
    }
}
