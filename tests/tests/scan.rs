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

#[test]
fn scan_survives_hostile_nesting_and_control_characters() {
    let dir = scratch().join(format!("scan-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 200,000 nested brackets aborted the scan with a stack overflow (exit 134).
    let deep = format!("x = {}{}\n", "[".repeat(200_000), "]".repeat(200_000));
    std::fs::write(dir.join("deep.py"), deep).unwrap();
    // A leak whose code line carries a terminal escape sequence: reported, the escape not printed.
    std::fs::write(
        dir.join("app.py"),
        "from fastapi import FastAPI\napp = FastAPI()\n_SEEN = {}\n@app.get('/')\ndef seen(k: str):\n    _SEEN[k] = '\u{1b}[2J'  # \u{1b}]0;owned\u{7}\n",
    )
    .unwrap();
    let out = scan(&[dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("app.py"), "the leak is still found: {stdout}");
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
        "control characters reached the terminal: {stdout:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
