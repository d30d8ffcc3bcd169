//! The fixtures of tests/fixtures/logs/ through the pure API, and the parsers on their own.

use std::path::PathBuf;

use super::{
    analyze::SeriesReport,
    errors::ErrorKind,
    parse::{self, MemoryExtractor, MemoryField, TagExtractor, TimeField, TimestampParser, GIB, KIB, MIB},
    *,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/logs").join(name)
}

fn analyze(name: &str, opts: LogsOptions) -> LogsReport {
    analyze_file(&fixture(name), &opts).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

fn series<'a>(report: &'a LogsReport, tag: Option<&str>) -> &'a SeriesReport {
    report.series.iter().find(|s| s.tag.as_deref() == tag).unwrap_or_else(|| panic!("no series {tag:?}"))
}

fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!((actual - expected).abs() <= tolerance * expected.abs(), "{what}: {actual} vs {expected}");
}

#[test]
fn gunicorn_leak_then_oom_kill() {
    let report = analyze("gunicorn_leak_oom.log", LogsOptions { limit_bytes: Some(2.0 * GIB), ..Default::default() });
    assert_eq!(report.verdict.verdict, VerdictKind::Leak, "{:?}", report.verdict);
    assert_eq!(report.verdict.series.as_deref(), Some("pid 1234"));
    assert!(report.is_leak());
    let leaking = series(&report, Some("pid 1234"));
    assert_eq!(leaking.samples, 181);
    assert_close(leaking.growth_mb_per_min, 5.0, 0.05, "MB/min");
    assert_close(leaking.growth_mb_per_hour, 300.0, 0.05, "MB/hour");
    assert!(leaking.mann_kendall_p.unwrap() < 1e-6);
    // 1200 MB at the end, 2048 MB limit, 5 MB/min: ~170 min.
    assert_close(leaking.time_to_limit_seconds.unwrap(), 170.0 * 60.0, 0.05, "time to limit");
    assert_eq!(series(&report, Some("pid 1235")).verdict.kind, VerdictKind::NoLeak);
    assert_eq!(series(&report, Some("pid 1300")).verdict.kind, VerdictKind::Inconclusive); // 3 samples
    assert_eq!(report.series.len(), 3);
    assert!(report.series.iter().all(|s| s.spikes_total == 0));

    assert_eq!(report.errors_total, 1);
    let oom = &report.errors[0];
    assert_eq!((oom.kind, oom.killed_pid), (ErrorKind::OomKill, Some(1234)));
    assert_eq!(oom.series.as_deref(), Some("pid 1234"));
    let last = oom.last_sample.as_ref().unwrap();
    assert_close(last.bytes, 1200.0 * MIB, 0.01, "last sample");
    assert_close(last.seconds_before, 25.0, 1e-9, "seconds before");
    let before = oom.trend_before.as_ref().unwrap();
    assert!(before.growing && before.samples == 60, "{before:?}"); // the hour before
    assert_close(before.growth_mb_per_min, 5.0, 0.1, "trend before");
    assert_eq!(report.lines.inherited_time, 362); // the uvicorn access lines
    assert_eq!(report.skipped.total, 0);

    let text = render::text(&report);
    assert!(text.starts_with("leak: pid 1234: RSS grows 5.0 MB/min"), "{text}");
    assert!(text.contains("(Mann–Kendall p<1e-12)"), "{text}");
    assert!(text.contains("oom-kill (killed pid 1234)"), "{text}");
}

#[test]
fn steady_with_spikes_is_no_leak_and_lists_the_spikes() {
    let report = analyze("steady_spike.log", LogsOptions::default());
    assert_eq!(report.verdict.verdict, VerdictKind::NoLeak, "{:?}", report.verdict);
    let s = series(&report, None);
    assert_eq!(s.samples, 121);
    assert_eq!(s.spikes_total, 2, "{:?}", s.spikes);
    assert_close(s.spikes[0].peak_bytes, 905.3 * MIB, 1e-9, "spike");
    assert_eq!((s.spikes[0].samples, s.spikes[0].time.as_str()), (1, "2026-11-23T11:00:00Z"));
    assert_close(s.spikes[0].baseline_bytes, 512.0 * MIB, 0.01, "baseline");
    assert_eq!(s.spikes[1].samples, 2);
    assert_close(s.spikes[1].peak_bytes, 801.2 * MIB, 1e-9, "spike");
    assert_eq!(report.errors_total, 0);
    assert!(render::text(&report).contains("SPIKES (2"));
}

#[test]
fn warm_up_that_levels_off_is_no_leak() {
    let report = analyze("warmup_plateau.log", LogsOptions { limit_bytes: Some(GIB), ..Default::default() });
    let s = series(&report, None);
    assert_eq!(s.samples, 361);
    assert_eq!(s.verdict.kind, VerdictKind::NoLeak, "{:?}", s.verdict);
    assert_eq!(s.time_to_limit_seconds, None);
    assert_close(s.duration_seconds, 3.0 * 3600.0, 1e-9, "duration");
    assert_eq!(s.first_time, "2026-11-23T09:00:00.25Z"); // +01:00 taken into account
    assert!(s.overall_growth_bytes_per_sec.unwrap() > 0.0); // it did grow, early on
    assert_eq!(s.spikes_total, 0);
}

#[test]
fn python_logging_memory_error_traceback_is_one_correlated_event() {
    let report = analyze("python_memoryerror.log", LogsOptions::default());
    assert_eq!(report.verdict.verdict, VerdictKind::Leak, "{:?}", report.verdict);
    assert_close(report.verdict.growth_mb_per_min, 18.0, 0.05, "MB/min");
    assert_eq!(report.errors_total, 1, "{:?}", report.errors);
    let e = &report.errors[0];
    assert_eq!((e.kind, e.lines, e.message.as_str()), (ErrorKind::MemoryError, 6, "MemoryError"));
    assert_eq!(e.location.as_deref(), Some("File \"/srv/app/report.py\", line 17, in build_report"));
    assert_eq!(e.time.as_deref(), Some("2026-11-23T11:00:05.01Z"));
    let last = e.last_sample.as_ref().unwrap();
    assert_close(last.seconds_before, 5.0, 0.2, "seconds before");
    assert_close(last.bytes, 1880.0 * MIB, 0.01, "last sample");
    assert!(e.trend_before.as_ref().unwrap().growing);
    // The sample after the traceback (1.85 GiB) is read; the unit mix (MiB, MB, GiB) too.
    assert_eq!(series(&report, None).samples, 122);
    assert_close(series(&report, None).last_bytes, 1.85 * GIB, 1e-9, "GiB sample");
}

#[test]
fn syslog_kernel_oom_report_is_one_event_matched_by_pid() {
    let report = analyze("syslog_oom.log", LogsOptions { year: Some(2026), ..Default::default() });
    let app = series(&report, Some("app[4242]"));
    assert_eq!(app.samples, 81);
    assert_eq!(app.verdict.kind, VerdictKind::Leak, "{:?}", app.verdict);
    assert_close(app.growth_mb_per_min, 12.0, 0.05, "MB/min");
    assert_eq!(app.first_time, "2026-11-23T10:00:00Z");
    assert_eq!(series(&report, Some("app[4500]")).samples, 1);
    assert_eq!(report.series.len(), 2, "kernel and cron lines make no series");
    assert_eq!(report.errors_total, 1, "{:?}", report.errors);
    let oom = &report.errors[0];
    assert_eq!((oom.kind, oom.killed_pid, oom.lines), (ErrorKind::OomKill, Some(4242), 4));
    assert_eq!(oom.killed_anon_rss_bytes, Some(2_040_000.0 * KIB));
    assert_eq!(oom.series.as_deref(), Some("app[4242]"));
    assert_close(oom.last_sample.as_ref().unwrap().seconds_before, 1.0, 1e-9, "seconds before");
    assert!(oom.trend_before.as_ref().unwrap().growing);
    assert_eq!(report.skipped.total, 0, "{:?}", report.skipped);

    // --process keeps one series and the errors that are its own.
    let only = analyze("syslog_oom.log", LogsOptions { process: Some("4500".into()), ..Default::default() });
    assert_eq!(only.series.len(), 1);
    assert_eq!(only.lines.filtered_out, 81);
    assert_eq!(only.errors_total, 0);
}

#[test]
fn malformed_lines_and_binary_junk_are_skipped_and_counted() {
    let report = analyze("malformed_junk.log", LogsOptions::default());
    let reasons: Vec<(&str, u64)> = report.skipped.by_reason.iter().map(|(r, n)| (r.as_str(), *n)).collect();
    assert_eq!(reasons, [("invalid-timestamp", 3), ("no-timestamp", 2), ("unknown-unit", 2), ("unparsable-size", 5)]);
    assert_eq!(report.skipped.total, 12);
    assert_eq!(report.lines.total, 57);
    assert_eq!(report.lines.invalid_utf8, 4);
    assert_eq!(report.lines.inherited_time, 3);
    assert_eq!(report.lines.samples, 41);
    assert_eq!(series(&report, None).verdict.kind, VerdictKind::NoLeak);
    let text = render::text(&report);
    assert!(text.contains("skipped 12 malformed: invalid-timestamp 3, no-timestamp 2"), "{text}");
}

#[test]
fn json_has_the_documented_fields() {
    let report = analyze("gunicorn_leak_oom.log", LogsOptions::default());
    let v: serde_json::Value = serde_json::from_str(&render::json(&report)).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["verdict"]["verdict"], "leak");
    for key in ["growth_mb_per_min", "growth_mb_per_hour", "mann_kendall_p", "time_to_limit_seconds", "series"] {
        assert!(v["verdict"].get(key).is_some(), "verdict.{key}");
    }
    assert_eq!(v["errors"][0]["kind"], "oom-kill");
    assert!(v["errors"][0]["last_sample"]["bytes"].as_f64().unwrap() > 1.0e9);
    assert_eq!(v["series"][0]["verdict"]["kind"], "leak");
    assert_eq!(v["lines"]["total"], 737);
    assert_eq!(v["skipped"]["total"], 0);
}

#[test]
fn empty_input_and_long_lines_never_fail() {
    let report = analyze_bytes(b"", &LogsOptions::default()).unwrap();
    assert_eq!((report.verdict.verdict, report.lines.total), (VerdictKind::Inconclusive, 0));
    assert!(render::text(&report).starts_with("inconclusive: no memory samples found"));
    let mut big = vec![b'x'; 200_000];
    big.extend_from_slice(b"\n2026-11-23 10:00:00 RSS: 1MB\nno newline at the end");
    let report = analyze_bytes(&big, &LogsOptions::default()).unwrap();
    assert_eq!((report.lines.total, report.lines.truncated, report.lines.samples), (3, 1, 1));
    assert!(analyze_file(std::path::Path::new("/nonexistent/x.log"), &LogsOptions::default())
        .unwrap_err()
        .to_string()
        .contains("cannot read /nonexistent/x.log"));
    assert!(analyze_bytes(b"", &LogsOptions { pattern: Some("heap=(\\d+)".into()), ..Default::default() }).is_err());
    assert!(analyze_bytes(b"", &LogsOptions { pattern: Some("(".into()), ..Default::default() }).is_err());
}

#[test]
fn timestamps_in_every_supported_format() {
    let mut p = TimestampParser::new(Some(2026));
    let at = |p: &mut TimestampParser, line: &str| match p.parse(line) {
        TimeField::At(t) => t,
        other => panic!("{line}: {other:?}"),
    };
    let base = at(&mut p, "2026-11-23T10:00:00Z x");
    assert_eq!(base, 1_795_428_000.0);
    for (line, expected) in [
        ("2026-11-23T10:00:00 RSS", 0.0),
        ("[2026-11-23 10:00:00.5] x", 0.5),
        ("2026-11-23 10:00:00,123 - app - INFO", 0.123),
        ("2026-11-23T11:00:00+01:00 x", 0.0),
        ("2026-11-23T05:00:00-0500 x", 0.0),
        ("[2026-11-23 10:00:00 +0000] [1] [INFO]", 0.0),
        ("2026-11-23T10:00:00.123456789Z", 0.123_456_789),
        ("Nov 23 10:00:00 host app[1]: x", 0.0),
        ("Nov  3 10:00:00 host x", -20.0 * 86400.0),
        ("1795428000 rss=5", 0.0),
        ("1795428000.25 rss=5", 0.25),
        ("[1795428000123] x", 0.123),
        (r#"{"ts": 1795428001, "rss": 5}"#, 1.0),
    ] {
        assert!((at(&mut p, line) - base - expected).abs() < 1e-6, "{line}");
    }
    for bad in ["2026-02-30 10:00:00 x", "2026-11-23 24:00:00 x", "2026-13-01T00:00:00", "Nov 31 10:00:00 x"] {
        assert_eq!(p.parse(bad), TimeField::Invalid, "{bad}");
    }
    for none in ["no time here", "[ 1234.567890] kernel uptime", "rss=1795428000", "took 10:00 minutes"] {
        assert_eq!(p.parse(none), TimeField::Missing, "{none}");
    }
    // A year-less log that crosses New Year.
    let mut p = TimestampParser::new(Some(2026));
    let dec = at(&mut p, "Dec 31 23:59:59 x");
    assert_eq!(at(&mut p, "Jan  1 00:00:01 x") - dec, 2.0);
}

#[test]
fn memory_values_units_and_keys() {
    let m = MemoryExtractor::new(None).unwrap();
    let value = |line: &str| match m.extract(line) {
        MemoryField::Value { bytes, .. } => bytes,
        other => panic!("{line}: {other:?}"),
    };
    for (line, bytes) in [
        ("RSS: 512.5MB", 512.5 * MIB),
        ("rss=123456", 123_456.0),
        ("rss_kb=1000", 1000.0 * KIB),
        ("memory: 1.5 GiB", 1.5 * GIB),
        ("Mem=300mb", 300.0 * MIB),
        ("resident: 4096 kB total", 4096.0 * KIB),
        ("memory usage: 2g", 2.0 * GIB),
        (r#"{"rss": 1048576, "vms": 5}"#, MIB),
        ("rss=1234 vms=99", 1234.0),
        ("worker 3 RSS : 12 B", 12.0),
        ("rss_mb=3", 3.0 * MIB),
    ] {
        assert_eq!(value(line), bytes, "{line}");
    }
    for (line, reason) in [
        ("RSS: N/A", parse::Malformed::UnparsableSize),
        ("RSS: 12.3.4MB", parse::Malformed::UnparsableSize),
        ("rss=0x1f", parse::Malformed::UnknownUnit),
        ("RSS: 512XB", parse::Malformed::UnknownUnit),
        ("rss=", parse::Malformed::UnparsableSize),
    ] {
        assert_eq!(m.extract(line), MemoryField::Malformed(reason), "{line}");
    }
    for none in ["MemoryError", "anon-rss:100kB", "memory limit: 2GB", "remembered=5", "no memory here"] {
        assert_eq!(m.extract(none), MemoryField::Missing, "{none}");
    }
    let custom = MemoryExtractor::new(Some(r"heap (?P<value>[\d.]+) ?(?P<unit>\w+)?")).unwrap();
    assert_eq!(custom.extract("heap 3 MiB"), MemoryField::Value { bytes: 3.0 * MIB, key: "value".into() });
    assert_eq!(custom.extract("heap 7"), MemoryField::Value { bytes: 7.0, key: "value".into() });
    assert_eq!(custom.extract("heap 7 apples"), MemoryField::Malformed(parse::Malformed::UnknownUnit));
    assert_eq!(parse::parse_size("2GiB"), Ok(2.0 * GIB));
    assert!(parse::parse_size("2 gigs").is_err());
}

#[test]
fn process_tags() {
    let t = TagExtractor::new();
    for (line, tag) in [
        ("[pid 1234] RSS: 1MB", Some("pid 1234")),
        ("pid=77 rss=5", Some("pid 77")),
        ("[2026-11-23 10:00:00 +0000] [1234] [INFO] x", Some("pid 1234")),
        ("Nov 23 10:00:00 host app[42]: x", Some("app[42]")),
        ("worker=3 rss=1", Some("worker 3")),
        ("worker-12 rss=1", Some("worker 12")),
        ("Booting worker with pid: 1234", Some("pid 1234")),
        ("plain line", None),
    ] {
        assert_eq!(t.extract(line).as_deref(), tag, "{line}");
    }
    assert!(parse::tag_matches("pid 1234", "1234") && parse::tag_matches("app[42]", "app"));
    assert!(!parse::tag_matches("pid 12345", "1234"));
    assert_eq!(parse::tag_pid("app[42]"), Some(42));
}

#[test]
fn the_guides_failure_signatures_are_each_one_event_after_the_growth_seen() {
    for (name, kind) in [
        ("guide_killed_outofmemory.log", ErrorKind::OomKill),
        ("guide_killed_due_to_oom.log", ErrorKind::OomKill),
        ("guide_outofmemory.log", ErrorKind::OomKill),
        ("guide_memory_allocation_failed.log", ErrorKind::AllocationFailure),
        ("guide_gc_overhead.log", ErrorKind::GcOverhead),
        ("guide_memory_timeout.log", ErrorKind::MemoryTimeout),
    ] {
        let report = analyze(name, LogsOptions::default());
        assert_eq!(report.errors_total, 1, "{name}");
        assert_eq!(report.errors[0].kind, kind, "{name}");
        // Four samples are too few for a verdict; the growth seen and the error after it are shown.
        assert_eq!(report.verdict.verdict, VerdictKind::Inconclusive, "{name}");
        let text = render::text(&report);
        assert!(text.contains("RSS 400.0 MB -> 570.5 MB"), "{name}: {text}");
        assert!(text.contains(&format!("(line 5) {}", kind.as_str())), "{name}: {text}");
        assert!(text.contains("last sample of worker[7]: 570.5 MB, 20s before"), "{name}: {text}");
    }
}
