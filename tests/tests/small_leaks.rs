//! Small objects and native memory, in the default recording (`record --duration 60s`, nothing
//! else: the production budget and windows). A FastAPI app under load leaks, from two endpoints at
//! once, small dicts (< 512 B each: pymalloc's size classes) and 2 KiB buffers from libc's
//! `malloc` called through ctypes (no Python object ever holds them), while two look-alike
//! endpoints do the same work and give everything back. On every CPython target the ctypes leak is
//! the fastest growing flagged place, the heap census names the list that keeps the small dicts as
//! the top growing container with the line that appends to it, the small-dict leak's line is
//! flagged among the allocation stacks (or, on LTO+PGO builds
//! whose inlined allocator no probe sees, the report says small objects go unseen), and nothing is
//! flagged at the look-alikes' lines.
//!
//! Why not "the small-dict line second": CPython recycles dict objects and small key tables through
//! free lists, so most of a leaked dict's bytes are blocks first allocated elsewhere (the key table
//! of the `**values` copy FastAPI's `run_endpoint_function` makes for every request, freed onto the
//! key free list and taken by the leaked dict). Measured on 3.11 with `tracemalloc` in-process: the
//! same 120 B a request is attributed to the `**values` call line, not to the leaking line. An
//! allocation-site profiler (in-process or not) sees those bytes where they were first allocated;
//! naming the list that holds them is the heap census's job (issue 13).
//!
//! Both leaks share one app run per target: seven targets × one minute, instead of fourteen.

use leakprobe_tests::*;

const APP: &str = "small_leaks_app.py";

/// Where a flagged stack is, as a person reading the report sees it: the innermost app frame, or
/// the stack itself when no frame is in the app.
fn place(stack: &StackReport) -> String {
    match innermost_app_frame(stack, APP) {
        Some((function, line)) => format!("{function}:{line}"),
        None => {
            let innermost = stack.frames.first().map_or("?", |f| f.function.as_str());
            format!("outside the app ({} stack {} at {innermost})", stack.allocator, stack.id)
        }
    }
}

fn check_small_leaks(target: CPython, port: u16) {
    let command = match target.script_command(APP) {
        Ok(command) => command,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let app = serve_fastapi(command, port);
    let _load = wrk_load("small_leaks_load.lua", port, 100);
    let (out, report) = record_default_json(app.pid(), "60s");
    // Kept for a look after a failure.
    let kept = scratch().join(format!("small_leaks-{port}.json"));
    std::fs::write(&kept, &out.stdout).unwrap();
    let version = report.target.python_version.clone().unwrap_or_default();
    assert!(report.warnings.iter().all(|w| !w.contains("native stacks only")), "{:#?}", report.warnings);

    // Flagged stacks, fastest growing first.
    let mut flagged = flagged(&report);
    let rate =
        |s: &StackReport| if s.growth_bytes_per_sec.is_nan() { f64::NEG_INFINITY } else { s.growth_bytes_per_sec };
    flagged.sort_by(|a, b| rate(b).total_cmp(&rate(a)));
    let ranking: Vec<String> = flagged
        .iter()
        .map(|s| format!("{} ({}, {:.0} B/s, {} B live)", place(s), s.allocator, rate(s), s.live_bytes))
        .collect();
    // The distinct places in that order: several blocks allocated at one line (a dict, its key
    // table, its float) are one leak to the person reading the report.
    let mut places: Vec<String> = Vec::new();
    for stack in &flagged {
        let at = place(stack);
        if !places.contains(&at) {
            places.push(at);
        }
    }

    let small_dicts = format!("view:{}", line_of(APP, "# LEAK-SMALL-DICT"));
    let ctypes_buffers = format!("render:{}", line_of(APP, "# LEAK-CTYPES"));
    // What the recording saw at the leak lines, flagged or not, for the failure messages.
    let at_leak_lines: Vec<String> = report
        .stacks
        .iter()
        .filter(|s| [&small_dicts, &ctypes_buffers].contains(&&place(s)))
        .map(|s| {
            format!(
                "{} ({}): {} B live, {} allocations, {} frees, flagged {}: {}",
                place(s),
                s.allocator,
                s.live_bytes,
                s.total_allocations,
                s.total_frees,
                s.flagged,
                s.reason
            )
        })
        .collect();
    let seen = format!(
        "flagged, fastest first: {ranking:#?}\nall stacks at the leak lines: {at_leak_lines:#?}\n\
         verdict: {:?}\nbudget: {:?}\nreport: {}",
        report.verdict,
        report.budget,
        kept.display()
    );
    assert_eq!(
        places.first(),
        Some(&ctypes_buffers),
        "Python {version}: the ctypes malloc leak is not the fastest growing flagged place\n{seen}"
    );
    // What keeps the small dicts is named by the heap census on every build, LTO or not: the
    // module-level list, first among the growing containers, with the line that appends to it.
    let holders: Vec<String> = report
        .holders
        .iter()
        .filter(|h| h.flagged)
        .map(|h| {
            format!("{} ({}, {:.0} B/s, line {:?}): {}", h.path, h.type_name, h.growth_bytes_per_sec, h.line, h.reason)
        })
        .collect();
    let top_holder = report.holders.first().filter(|h| h.flagged);
    assert_eq!(
        top_holder.map(|h| (h.path.as_str(), h.line)),
        Some(("__main__._RECENT_VIEWS", Some(line_of(APP, "# LEAK-SMALL-DICT") as u32))),
        "Python {version}: the list keeping the small dicts is not the top growing container with its line\n\
         flagged holders: {holders:#?}\ncensus: {:?}\n{seen}",
        report.census
    );
    // LTO+PGO builds inline pymalloc's fast path: there the small dicts' allocations mostly never
    // reach a probe (the heap census of issue 13 is what names that leak); the report must say so.
    let says_small_objects_unseen = report.warnings.iter().any(|w| w.contains("not seen by the allocator probes"));
    assert!(
        places.contains(&small_dicts) || says_small_objects_unseen,
        "Python {version}: the leak of small dicts ({small_dicts}) is not flagged, and the report does not \
         say small objects go unseen\n{seen}"
    );
    for (function, marker) in [("preview", "# CHURN-SMALL-DICT"), ("encode", "# CHURN-CTYPES")] {
        let look_alike = (function.to_string(), line_of(APP, marker));
        assert!(
            flagged.iter().all(|s| innermost_app_frame(s, APP).as_ref() != Some(&look_alike)),
            "Python {version}: flagged the look-alike {function} that frees what it allocates (line {})\n{seen}",
            look_alike.1
        );
    }
}

#[test]
fn small_leaks_on_the_project_python() {
    check_small_leaks(CPython::Project, 18741);
}

#[test]
fn small_leaks_on_cpython_3_10() {
    check_small_leaks(CPython::Extra("3.10"), 18742);
}

#[test]
fn small_leaks_on_cpython_3_12() {
    check_small_leaks(CPython::Extra("3.12"), 18743);
}

#[test]
fn small_leaks_on_cpython_3_13() {
    check_small_leaks(CPython::Extra("3.13"), 18744);
}

/// Static, stripped, LTO+PGO: pymalloc's fast path for small objects is inlined into its callers.
#[test]
fn small_leaks_on_debians_static_lto_python_3_11() {
    check_small_leaks(CPython::Extra("debian-3.11"), 18745);
}

#[test]
fn small_leaks_on_debian_trixie_python_3_13_in_another_root() {
    check_small_leaks(CPython::DebianRoot("3.13"), 18746);
}

#[test]
fn small_leaks_on_debian_sid_python_3_14_in_another_root() {
    check_small_leaks(CPython::DebianRoot("3.14"), 18747);
}
