//! What kind of leak: a FastAPI app with one endpoint per pattern of the seed guide (global list,
//! dropped task, listener never removed, `lru_cache` on a method, logging handler per call, an
//! unbounded `functools.cache`), under
//! load, recorded with the default kind of recording (sampling windows within a budget). Each
//! pattern's flagged stack must carry advice naming that pattern at the line marked
//! `# KEEPS: <pattern>`: the line that keeps the memory, which is not always the line that
//! allocated it (a neighbour in the same function, the method body of a cached method, the
//! `create_task` that started the coroutine whose stack begins at the event loop).

use leakprobe_tests::*;
use std::{net::TcpStream, process::Command, time::Duration};

const APP: &str = "patterns_app.py";
const PORT: u16 = 18731;

/// `(pattern, line)` of each `# KEEPS: pattern` marker of the app.
fn marked() -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(fixture(APP)).unwrap();
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| Some((l.split("# KEEPS: ").nth(1)?.trim().to_string(), i as u64 + 1)))
        .collect()
}

#[test]
fn each_pattern_is_named_at_the_line_that_keeps_the_memory() {
    let app = ChildGuard::new(Command::new(python()).arg(fixture(APP)).arg(PORT.to_string()).spawn().unwrap());
    assert!(
        eventually(Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", PORT)).is_ok()),
        "app did not start"
    );
    let _load = wrk_load("patterns_load.lua", PORT, 150);
    let (_, report) = record_json(app.pid(), "90s", "1s", &["--max-overhead", "10"]);
    assert_eq!(report.verdict.verdict, VerdictKind::Leak, "{:#?}", report.verdict);

    let advised: Vec<(String, u64, String)> = flagged(&report)
        .iter()
        .filter_map(|s| {
            let a = s.advice.as_ref()?;
            Some((a.advice.pattern.as_str().to_string(), u64::from(a.advice.line), a.file.clone()))
        })
        .collect();
    let want = marked();
    assert_eq!(want.len(), 7, "{want:?}");
    for (pattern, line) in &want {
        assert!(
            advised.iter().any(|(p, l, file)| p == pattern && l == line && file.ends_with(APP)),
            "no flagged stack advised {pattern} at {APP}:{line}; advice given: {advised:?}"
        );
    }
    // The strings the coroutine keeps were allocated in a stack that starts at the event loop:
    // named by the `create_task` that started it.
    let started: Vec<(String, u64)> = flagged(&report)
        .iter()
        .filter_map(|s| s.advice.as_ref().filter(|a| a.relation == Relation::StartedBy))
        .map(|a| (a.advice.pattern.as_str().to_string(), u64::from(a.advice.line)))
        .collect();
    let prices = want.iter().filter(|(p, _)| p == "dropped_task").map(|(_, l)| *l).max().unwrap();
    assert!(
        started.contains(&("dropped_task".to_string(), prices)),
        "started_by advice: {started:?}\nstacks through stream_prices: {:?}\n{}",
        report
            .stacks
            .iter()
            .filter(|s| has_frame(s, "stream_prices"))
            .map(|s| (
                &s.id,
                s.flagged,
                s.growth_bytes_per_sec.round(),
                s.advice.as_ref().map(|a| (a.relation, a.advice.line))
            ))
            .collect::<Vec<_>>(),
        digest(&report)
    );
    // Advice for the app names only marked constructs (a registry filled inside the bus's own
    // `subscribe` is the same listener leak seen from the other side: allowed at its line).
    let subscribe_line = std::fs::read_to_string(fixture(APP))
        .unwrap()
        .lines()
        .position(|l| l.contains("self._callbacks.append(callback)"))
        .unwrap() as u64
        + 1;
    for (pattern, line, file) in advised.iter().filter(|(_, _, f)| f.ends_with(APP)) {
        assert!(
            want.iter().any(|(p, l)| p == pattern && l == line) || *line == subscribe_line,
            "unexpected advice {pattern} at {file}:{line}; all: {advised:?}"
        );
    }
}
