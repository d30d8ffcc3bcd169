//! Process verdicts on live CPython processes: a leak is a leak; a bounded cache and a warm-up
//! that levels off are not.

use leakprobe_tests::*;

#[test]
fn leaking_python_process_is_a_leak() {
    let target = spawn_python("py_leak.py");
    let (_, report) = record_json(target.pid(), "20s", "1s", &[]);
    assert_eq!(report["verdict"]["verdict"], "leak", "{:#}", report["verdict"]);
    let growth = report["verdict"]["growth_bytes_per_sec"].as_f64().unwrap();
    // ~10 KB of payload every 50 ms.
    assert!(growth > 100_000.0 && growth < 400_000.0, "growth {growth} B/s");
    assert!(report["target"]["python_version"].as_str().is_some());
    let hooked: Vec<&str> = report["hooks"].as_array().unwrap().iter().filter_map(|h| h["function"].as_str()).collect();
    assert!(hooked.contains(&"PyObject_Malloc") && hooked.contains(&"malloc"), "{hooked:?}");
    assert!(!flagged(&report).is_empty());
}

#[test]
fn bounded_cache_is_not_a_leak() {
    let target = spawn_python("py_bounded_cache.py");
    let (_, report) = record_json(target.pid(), "20s", "1s", &[]);
    assert_ne!(report["verdict"]["verdict"], "leak", "{:#}", report["verdict"]);
    assert!(flagged(&report).is_empty(), "flagged: {:#?}", flagged(&report));
}

#[test]
fn warm_up_then_steady_state_is_not_a_leak() {
    let target = spawn_python("py_warmup.py");
    let (_, report) = record_json(target.pid(), "20s", "1s", &[]);
    assert_ne!(report["verdict"]["verdict"], "leak", "{:#}", report["verdict"]);
    assert!(flagged(&report).is_empty(), "flagged: {:#?}", flagged(&report));
}
