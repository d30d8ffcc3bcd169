//! A service that has run for hours: a heap of ~600 MB of small objects (1.2M order instances,
//! their dicts, tuples and strings, 200k customer dicts) whose biggest container keeps growing
//! (`big_heap.py 1.2 5000`: 5000 orders a second). Its censuses take seconds, not the scenario
//! apps' tenths: the default `record` must still name that container, from lengths read between
//! its full censuses, at the rate it grows.

use leakprobe_tests::*;
use std::process::Command;

#[test]
fn the_growing_container_of_a_big_heap_is_named_by_the_default_record() {
    let target = spawn_ready(Command::new(python()).arg("-u").arg(fixture("big_heap.py")).args(["1.2", "5000"]));
    let (_, report) = record_default_json(target.pid(), "60s");
    let kept = format!("report kept in target/e2e/record-{}.json\n{}", target.pid(), digest(&report));
    let census = report.census.as_ref().unwrap_or_else(|| panic!("no census: {kept}"));
    let first = report.holders.iter().find(|h| h.flagged).unwrap_or_else(|| panic!("nothing flagged: {kept}"));
    assert_eq!(first.path, "__main__.ORDERS", "{kept}");
    // 5000 a second asked; the app's loop sleeps 0.1 s between batches, so a little less.
    assert!(
        (3000.0..6000.0).contains(&first.growth_items_per_sec),
        "{} items/s ({} censuses, {} cut short by a bound): {kept}",
        first.growth_items_per_sec,
        census.censuses,
        census.truncated
    );
    // The line that adds to it, in the app.
    let line = first.line.unwrap_or_else(|| panic!("no line: {kept}"));
    let source = std::fs::read_to_string(fixture("big_heap.py")).unwrap();
    let code = source.lines().nth(line as usize - 1).unwrap_or_default();
    assert!(code.contains("ORDERS.append"), "line {line}: {code:?}");
    // Of the two, the one that runs while recording (the build's append ran before it).
    assert!(code.contains("# GROWS"), "line {line}: {code:?}; {:?}", first.advice.as_ref().map(|a| &a.evidence));
    eprintln!(
        "{} censuses ({} cut short), {:.1} s of reading; ORDERS: {} lengths, {} retained-bytes points, {:.0} items/s",
        census.censuses,
        census.truncated,
        census.elapsed_secs,
        first.length_series.len(),
        first.retained_bytes_series.len(),
        first.growth_items_per_sec
    );
}
