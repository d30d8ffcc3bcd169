//! A C program that leaks in one function and churns in another: only the leak is flagged, at
//! the rate it really leaks.

use leakprobe_tests::*;
use std::process::Command;

#[test]
fn flags_only_the_leaking_function_with_its_rate() {
    let exe = compile_c("native_leak.c", &["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline"]);
    // 16 KiB every 25 ms = 655,360 B/s.
    let target = spawn_ready(Command::new(&exe).args(["16384", "25"]));
    let (_, report) = record_json(target.pid(), "20s", "1s", &[]);

    assert_eq!(report.schema_version, 1);
    assert_eq!(report.verdict.verdict, VerdictKind::Leak, "{:#?}", report.verdict);
    let flagged = flagged(&report);
    assert!(!flagged.is_empty(), "nothing flagged: {:#?}", report.stacks);
    for stack in &flagged {
        assert!(has_frame(stack, "leak_memory"), "a stack other than leak_memory was flagged: {stack:#?}");
        assert!(!has_frame(stack, "churn_memory"), "churn was flagged: {stack:#?}");
    }
    let leak = flagged.iter().find(|s| s.allocator == "malloc").expect("the malloc stack of leak_memory is flagged");
    let rate = leak.growth_bytes_per_sec;
    let expected = 16384.0 / 0.025;
    assert!((rate - expected).abs() <= expected * 0.2, "growth {rate} B/s, expected {expected} B/s ± 20%");
    // The churning stacks were seen and judged, but not flagged.
    let churn_seen = report.stacks.iter().any(|s| has_frame(s, "churn_memory"));
    assert!(churn_seen, "churn_memory's stacks were not reported at all");
    // Frames carry what the JSON format promises.
    let frame = leak.frames.iter().find(|f| f.function == "leak_memory").unwrap();
    assert_eq!(frame.kind, FrameKind::Native);
    assert!(frame.file.as_deref().unwrap_or("").ends_with("native_leak.c"), "{frame:#?}");
    assert!(frame.line.is_some());
    assert!(report.rss.len() >= 15);
}

#[test]
fn launch_and_follow_a_command() {
    let exe = compile_c("native_leak.c", &["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline"]);
    let out = Command::new(leakprobe_bin())
        .args(["record", "--duration", "12s", "--interval", "1s", "--format", "json", "--fail-on-leak"])
        .args(["--max-overhead", "100", "--"])
        .arg(&exe)
        .args(["16384", "25"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "--fail-on-leak must exit 3 on a leak; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = load_report(&out.stdout).unwrap();
    assert!(flagged(&report).iter().any(|s| has_frame(s, "leak_memory")));
    assert_eq!(report.ended_because, "duration");
}
