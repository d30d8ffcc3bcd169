//! Process verdicts on live CPython processes: a leak is a leak; a bounded cache and a warm-up
//! that levels off are not.

use leakprobe_tests::*;

#[test]
fn leaking_python_process_is_a_leak() {
    let target = spawn_python("py_leak.py");
    let (_, report) = record_json(target.pid(), "20s", "1s", &[]);
    assert_eq!(report.verdict.verdict, VerdictKind::Leak, "{:#?}", report.verdict);
    let growth = report.verdict.growth_bytes_per_sec;
    // ~10 KB of payload every 50 ms.
    assert!(growth > 100_000.0 && growth < 400_000.0, "growth {growth} B/s");
    assert!(report.target.python_version.is_some());
    let hooked: Vec<&str> = report.hooks.iter().map(|h| h.function.as_str()).collect();
    assert!(hooked.contains(&"PyObject_Malloc") && hooked.contains(&"malloc"), "{hooked:?}");
    assert!(!flagged(&report).is_empty());
}

#[test]
fn bounded_cache_is_not_a_leak() {
    let target = spawn_python("py_bounded_cache.py");
    let (_, report) = record_json(target.pid(), "20s", "1s", &[]);
    assert_ne!(report.verdict.verdict, VerdictKind::Leak, "{:#?}", report.verdict);
    assert!(flagged(&report).is_empty(), "flagged: {:#?}", flagged(&report));
}

#[test]
fn warm_up_then_steady_state_is_not_a_leak() {
    let target = spawn_python("py_warmup.py");
    let (_, report) = record_json(target.pid(), "20s", "1s", &[]);
    assert_ne!(report.verdict.verdict, VerdictKind::Leak, "{:#?}", report.verdict);
    assert!(flagged(&report).is_empty(), "flagged: {:#?}", flagged(&report));
}

/// The hard case for the sampling mode: a leak and heavy churn of the same type in the same size
/// class. The churn's freed blocks are reused by the leak's objects; only the leaking line may be
/// flagged.
#[test]
fn sampling_tells_a_leak_from_churn_in_the_same_size_class() {
    let target = spawn_python("py_same_size_class.py");
    // A generous budget: this fixture allocates flat out, so each window is expensive and a lower
    // budget needs minutes to gather enough windows (the point here is attribution, not cost).
    let (_, report) = record_json(target.pid(), "45s", "1s", &["--max-overhead", "25"]);
    let source = std::fs::read_to_string(fixture("py_same_size_class.py")).unwrap();
    let line_of = |marker: &str| source.lines().position(|l| l.contains(marker)).unwrap() as u64 + 1;
    let (leak_line, churn_line) = (line_of("# LEAK:"), line_of("# CHURN:"));
    let flagged_lines: Vec<u64> = flagged(&report)
        .iter()
        .filter_map(|s| {
            s.frames.iter().find_map(|f| {
                (f.kind == FrameKind::Python && f.file.as_deref()?.ends_with("py_same_size_class.py"))
                    .then_some(f.line.map(u64::from))
                    .flatten()
            })
        })
        .collect();
    assert!(flagged_lines.contains(&leak_line), "leak line {leak_line} not flagged: {flagged_lines:?}");
    assert!(!flagged_lines.contains(&churn_line), "churn line {churn_line} flagged: {flagged_lines:?}");
}
