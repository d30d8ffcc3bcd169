//! Nineteen leaking FastAPI services, written the way real leaks are (`tests/fixtures/scenarios/`),
//! each recorded as a person records it in production (`record --duration 60s`, nothing else).
//! Every app leaks ordinary small objects (a few fields: ints, short strings, floats; none over
//! 512 bytes; or one buffer grown in place by small appends) from one endpoint, `/leak/{n}`, and
//! does similar work without keeping it from a look-alike, `/ok/{n}`: bounded, evicted, cleared,
//! weak or finished. The leaks cover the containers people actually leak into: module-level
//! lists, dicts and sets, a class attribute, an instance's attribute (an event bus's listeners),
//! a closure cell, a mutable default argument, an unbounded `lru_cache` on a method, a dict of
//! lists whose length stops growing, pending asyncio tasks (kept in a set, and kept by nothing
//! but the event loop's timers), thread-pool futures, a third-party library's registry, sync
//! endpoints in the thread pool, a strong cache beside a weak one, a `bytearray` grown in place,
//! a list of `__slots__` span trees that reference each other, and a background task's own
//! local list (no module reaches it: only the task's suspended frame).
//!
//! For each scenario, "named" means the report's first flagged container is the one that keeps
//! the leak (matched by its distinctive name: notations for closures, defaults and caches are the
//! implementation's) with the file and line that add to it (the `# LEAK` line). A look-alike is
//! "flagged" when a flagged container is its own, or a flagged stack's innermost app frame is at
//! its `# LOOK-ALIKE` line. Per CPython target: named in at least 90% of the scenarios, and no
//! look-alike flagged.
//!
//! The apps run a few at a time (`LEAKPROBE_SCENARIO_JOBS`, default 5), each under its own load
//! (`scenarios_load.lua`: `/leak/N` and `/ok/N` in turn, ever-new N, 200 users), and each is
//! recorded after a warm-up under that load (`LEAKPROBE_SCENARIO_WARMUP_SECS`, default 40): a
//! service a person records has been up a while, and its bounded caches are full. A cache still
//! filling is growing, and no one can tell it from a leak within the minute; the slowest to fill,
//! 200 users × a deque of 20 (4000 events at about 100 look-alike requests a second when five
//! apps share two cores), takes some 35 s.

use leakprobe_tests::*;
use std::{fmt::Write as _, process::Output, thread, time::Duration};

use leakprobe::report::HolderReport;

struct Scenario {
    /// The app, under tests/fixtures/.
    app: &'static str,
    /// What keeps the leak, as a person debugging it names it (for the table).
    holder: &'static str,
    /// The distinctive name a flagged holder's path must contain to be that container.
    holder_name: &'static str,
    /// The file (under tests/fixtures/) of the `# LEAK` line: the app, or the library it calls.
    leak_file: &'static str,
    /// The look-alike's own container, when it has one (else it shares the leak's, or keeps
    /// nothing); flagged holders must not contain this name.
    look_alike: Option<&'static str>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        app: "scenarios/01_audit_log.py",
        holder: "__main__._AUDIT_LOG",
        holder_name: "_AUDIT_LOG",
        leak_file: "scenarios/01_audit_log.py",
        look_alike: Some("_RECENT_ACTIONS"),
    },
    Scenario {
        app: "scenarios/02_sessions.py",
        holder: "__main__._SESSIONS",
        holder_name: "_SESSIONS",
        leak_file: "scenarios/02_sessions.py",
        look_alike: Some("_TOKEN_CACHE"),
    },
    Scenario {
        app: "scenarios/03_request_stats.py",
        holder: "__main__.RequestStats._history",
        holder_name: "RequestStats._history",
        leak_file: "scenarios/03_request_stats.py",
        look_alike: Some("LatencySample._ring"),
    },
    Scenario {
        app: "scenarios/04_event_bus.py",
        holder: "__main__.bus.listeners",
        holder_name: "bus.listeners",
        leak_file: "scenarios/04_event_bus.py",
        // The look-alike subscribes to the same bus, and unsubscribes.
        look_alike: None,
    },
    Scenario {
        app: "scenarios/05_closure_tracker.py",
        holder: "__main__.track.<closure seen>",
        holder_name: "track",
        leak_file: "scenarios/05_closure_tracker.py",
        look_alike: Some("count_hit"),
    },
    Scenario {
        app: "scenarios/06_default_arg_cache.py",
        holder: "__main__.lookup_account.<default _cache>",
        holder_name: "lookup_account",
        leak_file: "scenarios/06_default_arg_cache.py",
        look_alike: Some("region_for"),
    },
    Scenario {
        app: "scenarios/07_lru_method.py",
        holder: "__main__.Pricing.quote.<lru_cache>",
        holder_name: "quote",
        leak_file: "scenarios/07_lru_method.py",
        look_alike: Some("estimate"),
    },
    Scenario {
        app: "scenarios/08_timings.py",
        holder: "__main__._TIMINGS",
        holder_name: "_TIMINGS",
        leak_file: "scenarios/08_timings.py",
        look_alike: Some("_RECENT_LATENCIES"),
    },
    Scenario {
        app: "scenarios/09_events_by_user.py",
        holder: "__main__._EVENTS_BY_USER",
        holder_name: "_EVENTS_BY_USER",
        leak_file: "scenarios/09_events_by_user.py",
        look_alike: Some("_RECENT_BY_USER"),
    },
    Scenario {
        app: "scenarios/10_background_tasks.py",
        holder: "__main__._BACKGROUND_TASKS",
        holder_name: "_BACKGROUND_TASKS",
        leak_file: "scenarios/10_background_tasks.py",
        look_alike: Some("_FLUSH_TASKS"),
    },
    Scenario {
        app: "scenarios/11_thread_pool_futures.py",
        holder: "__main__._PENDING",
        holder_name: "_PENDING",
        leak_file: "scenarios/11_thread_pool_futures.py",
        // The look-alike keeps no future.
        look_alike: None,
    },
    Scenario {
        app: "scenarios/12_metrics_labels.py",
        holder: "metricslib.registry._COUNTERS",
        holder_name: "metricslib.registry._COUNTERS",
        leak_file: "scenarios/site/metricslib/registry.py",
        // The look-alike's one series is in the same registry.
        look_alike: None,
    },
    Scenario {
        app: "scenarios/13_sync_carts.py",
        holder: "__main__._CART_ITEMS",
        holder_name: "_CART_ITEMS",
        leak_file: "scenarios/13_sync_carts.py",
        look_alike: Some("_RECENT_QUOTES"),
    },
    Scenario {
        app: "scenarios/14_dedup_set.py",
        holder: "__main__._SEEN_EVENTS",
        holder_name: "_SEEN_EVENTS",
        leak_file: "scenarios/14_dedup_set.py",
        look_alike: Some("_RECENT_DELIVERIES"),
    },
    Scenario {
        app: "scenarios/15_profile_cache.py",
        holder: "__main__._PROFILE_CACHE",
        holder_name: "_PROFILE_CACHE",
        leak_file: "scenarios/15_profile_cache.py",
        look_alike: Some("_ACTIVE_PROFILES"),
    },
    Scenario {
        app: "scenarios/16_retry_webhooks.py",
        // No container of the program keeps them: the event loop does, through their timers.
        holder: "<pending asyncio tasks>",
        holder_name: "<pending asyncio tasks>",
        leak_file: "scenarios/16_retry_webhooks.py",
        // The look-alike's tasks finish; the program keeps none of either.
        look_alike: None,
    },
    Scenario {
        app: "scenarios/17_log_outbox.py",
        holder: "__main__._OUTBOX",
        holder_name: "_OUTBOX",
        leak_file: "scenarios/17_log_outbox.py",
        // The look-alike's buffer is a local.
        look_alike: None,
    },
    Scenario {
        app: "scenarios/18_span_traces.py",
        holder: "__main__._TRACES",
        holder_name: "_TRACES",
        leak_file: "scenarios/18_span_traces.py",
        look_alike: Some("_RECENT"),
    },
    Scenario {
        app: "scenarios/19_usage_collector.py",
        // A local of a background task's suspended frame.
        holder: "<coroutine collect_usage>.history",
        holder_name: "collect_usage>.history",
        leak_file: "scenarios/19_usage_collector.py",
        look_alike: Some("sample_latency"),
    },
];

/// What the report said about one scenario.
struct Outcome {
    named: bool,
    /// The first flagged holder, as the table shows it.
    first: String,
    /// The holders the report lists: the flagged ones (up to 6), then the 3 largest others.
    holders_seen: Vec<String>,
    /// Whether a flagged stack is at the `# LEAK` line (for the table only: the holder is the
    /// judge, and some leak lines allocate nothing of their own).
    stack_at_leak_line: bool,
    /// Why the look-alike counts as flagged (empty when it is not).
    look_alike_flagged: Vec<String>,
    report: String,
}

fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn short(holder: &HolderReport) -> String {
    let line = holder.line.map_or("?".to_string(), |l| l.to_string());
    let file = holder.file.as_deref().map_or("?", |f| f.rsplit('/').next().unwrap_or(f));
    format!("{} ({}, {:.0} B/s) at {file}:{line}", holder.path, holder.type_name, holder.growth_bytes_per_sec)
}

fn judge(scenario: &Scenario, report: &Report, kept: String) -> Outcome {
    let leak_line = line_of(scenario.leak_file, "# LEAK") as u32;
    let first = report.holders.iter().find(|h| h.flagged);
    let named = first.is_some_and(|h| {
        h.path.contains(scenario.holder_name)
            && h.line == Some(leak_line)
            && h.file.as_deref().is_some_and(|f| f.ends_with(scenario.leak_file))
    });
    let flagged_holders = report.holders.iter().filter(|h| h.flagged).map(|h| format!("flagged {}", short(h)));
    let others = report.holders.iter().filter(|h| !h.flagged).map(|h| format!("not flagged {}", short(h)));
    let holders_seen: Vec<String> = flagged_holders.take(6).chain(others.take(3)).collect();
    let stack_at_leak_line = flagged(report).into_iter().any(|s| {
        python_frame(s, scenario.leak_file).is_some_and(|f| f.line.map(u64::from) == Some(u64::from(leak_line)))
    });

    let look_alike_line = line_of(scenario.app, "# LOOK-ALIKE");
    let mut look_alike_flagged: Vec<String> = Vec::new();
    if let Some(name) = scenario.look_alike {
        look_alike_flagged.extend(
            report
                .holders
                .iter()
                .filter(|h| h.flagged && h.path.contains(name))
                .map(|h| format!("holder {}", short(h))),
        );
    }
    look_alike_flagged.extend(
        flagged(report)
            .into_iter()
            .filter(|s| innermost_app_frame(s, scenario.app).is_some_and(|(_, line)| line == look_alike_line))
            .map(|s| {
                format!("stack {} ({}, {:.0} B/s) at line {look_alike_line}", s.id, s.allocator, s.growth_bytes_per_sec)
            }),
    );
    Outcome {
        named,
        first: first.map_or("nothing flagged".to_string(), short),
        holders_seen,
        stack_at_leak_line,
        look_alike_flagged,
        report: kept,
    }
}

/// The scenarios to run: all, or those whose app names contain one of the comma-separated words
/// of `LEAKPROBE_SCENARIO_ONLY` (to look again at one after a failure).
fn chosen_scenarios() -> Vec<&'static Scenario> {
    let only = std::env::var("LEAKPROBE_SCENARIO_ONLY").unwrap_or_default();
    let words: Vec<&str> = only.split(',').map(str::trim).filter(|w| !w.is_empty()).collect();
    SCENARIOS.iter().filter(|s| words.is_empty() || words.iter().any(|w| s.app.contains(w))).collect()
}

fn check_scenarios(target: CPython, label: &str, base_port: u16) {
    let scenarios = chosen_scenarios();
    // Every command first: in another root this copies the scenarios in, before any app runs.
    let mut commands = Vec::new();
    for scenario in &scenarios {
        match target.script_command(scenario.app) {
            Ok(command) => commands.push(command),
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
        }
    }
    let jobs = env_number("LEAKPROBE_SCENARIO_JOBS", 5).max(1) as usize;
    let warmup = env_number("LEAKPROBE_SCENARIO_WARMUP_SECS", 40);
    let mut version = String::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut commands = commands.into_iter();
    for (batch_index, batch) in scenarios.chunks(jobs).enumerate() {
        let first_index = batch_index * jobs;
        let ports: Vec<u16> = (0..batch.len()).map(|i| base_port + (first_index + i) as u16).collect();
        let apps: Vec<ChildGuard> = ports.iter().map(|&port| serve_fastapi(commands.next().unwrap(), port)).collect();
        let _loads: Vec<ChildGuard> =
            ports.iter().map(|&port| wrk_load("scenarios_load.lua", port, warmup as u32 + 100)).collect();
        thread::sleep(Duration::from_secs(warmup));
        let reports: Vec<(Output, Report)> = thread::scope(|s| {
            let recordings: Vec<_> =
                apps.iter().map(|app| app.pid()).map(|pid| s.spawn(move || record_default_json(pid, "60s"))).collect();
            recordings.into_iter().map(|r| r.join().expect("recording thread")).collect()
        });
        for ((scenario, (out, report)), port) in batch.iter().zip(reports).zip(&ports) {
            let stem = scenario.app.trim_start_matches("scenarios/").trim_end_matches(".py");
            // Kept for a look after a failure.
            let kept = scratch().join(format!("scenario-{label}-{stem}-{port}.json"));
            std::fs::write(&kept, &out.stdout).unwrap();
            if let Some(v) = &report.target.python_version {
                version = v.clone();
            }
            outcomes.push(judge(scenario, &report, kept.display().to_string()));
        }
    }

    let mut table = format!("Python {version} ({label}): what each scenario's report names\n");
    for (scenario, outcome) in scenarios.iter().zip(&outcomes) {
        let verdict = if outcome.named { "named" } else { "NOT NAMED" };
        let look_alike = if outcome.look_alike_flagged.is_empty() { "look-alike ok" } else { "LOOK-ALIKE FLAGGED" };
        let stack = if outcome.stack_at_leak_line { "a flagged stack at it" } else { "no flagged stack at it" };
        let leak_line = line_of(scenario.leak_file, "# LEAK");
        writeln!(
            table,
            "  {:<28} {verdict:<9} {look_alike:<18} wanted {} at {}:{leak_line} ({stack})\n      first flagged: {}",
            scenario.app.trim_start_matches("scenarios/"),
            scenario.holder,
            scenario.leak_file.rsplit('/').next().unwrap(),
            outcome.first
        )
        .unwrap();
        for seen in &outcome.holders_seen {
            writeln!(table, "      holders: {seen}").unwrap();
        }
        for why in &outcome.look_alike_flagged {
            writeln!(table, "      look-alike flagged: {why}").unwrap();
        }
        writeln!(table, "      report: {}", outcome.report).unwrap();
    }
    eprintln!("{table}");

    let named = outcomes.iter().filter(|o| o.named).count();
    let look_alikes: Vec<&str> =
        scenarios.iter().zip(&outcomes).filter(|(_, o)| !o.look_alike_flagged.is_empty()).map(|(s, _)| s.app).collect();
    assert!(
        named * 10 >= scenarios.len() * 9,
        "Python {version} ({label}): the container and line of the leak named in {named} of {} scenarios \
         (at least 90% wanted)\n{table}",
        scenarios.len()
    );
    assert!(look_alikes.is_empty(), "Python {version} ({label}): look-alikes flagged in {look_alikes:?}\n{table}");
}

#[test]
#[ignore = "measured 15/15 named, no look-alike flagged (2026-12-02); out of CI for its 5.5 min; run with --ignored"]
fn leak_scenarios_on_the_project_python() {
    check_scenarios(CPython::Project, "project", 18800);
}

#[test]
#[ignore = "not measured since the recycled-type and trimmed-length rules; run with --ignored"]
fn leak_scenarios_on_cpython_3_10() {
    check_scenarios(CPython::Extra("3.10"), "3.10", 18820);
}

#[test]
#[ignore = "passed 2026-12-07 (at least 90% named, no look-alike flagged) since the same-kind shadow rule; out of CI \
            for its 5.5 min; run with --ignored"]
fn leak_scenarios_on_cpython_3_12() {
    check_scenarios(CPython::Extra("3.12"), "3.12", 18840);
}

#[test]
#[ignore = "not measured since the recycled-type and trimmed-length rules; run with --ignored"]
fn leak_scenarios_on_cpython_3_13() {
    check_scenarios(CPython::Extra("3.13"), "3.13", 18860);
}

/// Static, stripped, LTO+PGO.
#[test]
fn leak_scenarios_on_debians_static_lto_python_3_11() {
    check_scenarios(CPython::Extra("debian-3.11"), "debian-3.11", 18880);
}

#[test]
#[ignore = "measured 15/15 named, no look-alike flagged (2026-12-02); out of CI for its 5.5 min; run with --ignored"]
fn leak_scenarios_on_debian_trixie_python_3_13_in_another_root() {
    check_scenarios(CPython::DebianRoot("3.13"), "trixie-3.13", 18900);
}

#[test]
fn leak_scenarios_on_debian_sid_python_3_14_in_another_root() {
    check_scenarios(CPython::DebianRoot("3.14"), "sid-3.14", 18920);
}
