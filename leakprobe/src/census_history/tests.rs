//! The census history's judgement of holders, types, pending tasks and the GC.

use super::*;
use crate::python::heap::{fake::census_of, Holder};

/// A census of these holders (path, length, retained bytes), lists all.
pub(super) fn census(holders: &[(&str, u64, u64)]) -> Census {
    let mut c = census_of(&[("dict", 10)]);
    c.holders = holders
        .iter()
        .map(|&(path, length, bytes)| Holder {
            path: path.into(),
            type_name: "list".into(),
            length,
            retained_objects: length,
            retained_bytes: bytes,
            ..Default::default()
        })
        .collect();
    c
}

#[test]
fn a_holder_that_keeps_growing_is_flagged_and_a_bounded_one_is_not() {
    let mut h = CensusHistory::default();
    for i in 0..20u64 {
        // A list appended to forever (300 B an item, 40 items a census), and a cache that
        // filled in the first five censuses and stays at its bound.
        let bounded = (i.min(5)) * 100;
        let noise = (i * 7919) % 13;
        h.push(
            i as f64 * 2.0,
            &census(&[("app.views", i * 40, i * 12_000 + noise), ("app.cache", bounded, bounded * 300)]),
        );
    }
    let holders = h.holders(&VerdictConfig::default());
    assert_eq!(holders[0].path, "app.views");
    assert!(holders[0].flagged, "{}", holders[0].reason);
    assert!((holders[0].growth_items_per_sec - 20.0).abs() < 1.0, "{}", holders[0].growth_items_per_sec);
    assert!((holders[0].growth_bytes_per_sec - 6000.0).abs() < 100.0);
    let cache = holders.iter().find(|x| x.path == "app.cache").unwrap();
    assert!(!cache.flagged, "{}", cache.reason);
    assert_eq!(holders[0].length_series.len(), 20);
}

#[test]
fn a_steady_length_is_flagged_in_few_censuses_even_when_its_retained_bytes_are_noisy() {
    let mut h = CensusHistory::default();
    for i in 0..8u64 {
        // Eight censuses in a minute: a dict gaining 150 entries a census whose retained bytes
        // swing by a fifth (objects first reached through another holder in some censuses),
        // beside a cache at its bound whose bytes swing the same way.
        let swing = if i % 2 == 0 { 1.0 } else { 0.8 };
        let leak = 2_000 + i * 150;
        h.push(
            i as f64 * 7.5,
            &census(&[
                ("app.sessions", leak, (leak as f64 * 240.0 * swing) as u64),
                ("app.tokens", 4_000, (4_000.0 * 240.0 * swing) as u64),
            ]),
        );
    }
    let holders = h.holders(&VerdictConfig::default());
    assert_eq!(holders[0].path, "app.sessions");
    assert!(holders[0].flagged, "{}", holders[0].reason);
    assert!(holders[0].reason.starts_with("length"), "{}", holders[0].reason);
    let tokens = holders.iter().find(|x| x.path == "app.tokens").unwrap();
    assert!(!tokens.flagged, "{}", tokens.reason);
}

#[test]
fn one_census_that_reached_shared_objects_first_does_not_bend_a_steady_growth() {
    // A dict of 200 lists that grow in place: its length is flat, its bytes climb, and one
    // census's walk counted objects another holder shares.
    let mut h = CensusHistory::default();
    for i in 0..15u64 {
        let bytes = if i == 5 { 6_400_000 } else { 1_540_000 + i * 113_000 };
        h.push(i as f64 * 4.0, &census(&[("app.by_user", 200, bytes)]));
    }
    let holders = h.holders(&VerdictConfig::default());
    assert!(holders[0].flagged, "{}", holders[0].reason);
    // A bounded cache whose walk swings between two levels is not (measured series, KB).
    let mut h = CensusHistory::default();
    for (i, kb) in [87, 118, 116, 114, 85, 85, 78, 86, 115, 103, 106, 108, 114].into_iter().enumerate() {
        h.push(i as f64 * 4.5, &census(&[("app.tokens", 500, kb * 1000)]));
    }
    let holders = h.holders(&VerdictConfig::default());
    assert!(!holders[0].flagged, "{}", holders[0].reason);
    // Nor 200 bounded deques whose walk read more at the end (measured series, KB).
    let mut h = CensusHistory::default();
    for (i, kb) in [689, 669, 625, 674, 673, 665, 669, 626, 671, 627, 714, 730, 776, 734].into_iter().enumerate() {
        h.push(i as f64 * 4.3, &census(&[("app.recent_by_user", 200, kb * 1000)]));
    }
    let holders = h.holders(&VerdictConfig::default());
    assert!(!holders[0].flagged, "{}", holders[0].reason);
    // Nor a list trimmed back to 1000 items whenever it passes 2000 (measured series).
    let lengths = [1007, 1912, 1873, 1765, 1878, 1883, 1961, 1142, 1358, 1206, 1328, 1664, 1396, 1651, 1792, 1881];
    let mut h = CensusHistory::default();
    for (i, n) in lengths.into_iter().enumerate() {
        h.push(i as f64 * 4.0, &census(&[("app.recent", n, n * 200)]));
    }
    let holders = h.holders(&VerdictConfig::default());
    assert!(!holders[0].flagged, "{}", holders[0].reason);
}

#[test]
fn a_length_that_levels_off_is_not_flagged() {
    let mut h = CensusHistory::default();
    for i in 0..12u64 {
        // Warm-up fill then replace: 400 entries a census until 2400, then the same 2400.
        let len = (i * 400).min(2_400);
        h.push(i as f64 * 5.0, &census(&[("app.recent", len, len * 200 + i % 3)]));
    }
    let holders = h.holders(&VerdictConfig::default());
    assert!(!holders[0].flagged, "{}", holders[0].reason);
}

#[test]
fn a_holder_missing_from_some_censuses_is_judged_on_the_ones_that_saw_it() {
    let mut h = CensusHistory::default();
    for i in 0..20u64 {
        let holders: &[(&str, u64, u64)] = if i % 5 == 3 { &[] } else { &[("app.subs", i * 10, i * 5_000)] };
        h.push(i as f64, &census(holders));
    }
    let holders = h.holders(&VerdictConfig::default());
    assert_eq!(holders[0].length_series.len(), 16);
    assert!(holders[0].flagged, "{}", holders[0].reason);
}

#[test]
fn a_big_heap_is_judged_on_lengths_read_between_two_full_censuses() {
    // A 1 GB heap: a full census at 0 s and 30 s (types, retained bytes), lengths alone in
    // between; a list of 2M orders gains 5000 a second (200 B each: 3.6 GB an hour; slower
    // growth of a heap this size is within the verdict's 2% floor over a minute), a cache
    // stays put.
    let mut h = CensusHistory::default();
    for i in 0..40u64 {
        let orders = 2_000_000 + 5_000 * i;
        let mut c = census(&[
            ("app.orders", orders, orders * 200),
            ("app.cache", 5_000, 900_000),
            ("app.events", orders, orders * 30),
        ]);
        // The walk of the last holder is always cut short by a bound: its bytes are a part.
        c.holders[2].retained_unknown = true;
        if i % 30 != 0 {
            c.lengths_only = true;
            c.types.clear();
            c.holders.push(Holder { path: "app.found_later".into(), length: 9, ..Default::default() });
            for holder in &mut c.holders {
                (holder.retained_bytes, holder.retained_objects, holder.retained_unknown) = (0, 0, true);
            }
        }
        h.push(i as f64, &c);
    }
    let holders = h.holders(&VerdictConfig::default());
    assert_eq!(holders[0].path, "app.orders");
    assert!(holders[0].flagged, "{}", holders[0].reason);
    assert!((holders[0].growth_bytes_per_sec - 1e6).abs() < 10_000.0, "{}", holders[0].growth_bytes_per_sec);
    assert_eq!((holders[0].length_series.len(), holders[0].retained_bytes_series.len()), (40, 2));
    assert!(!holders.iter().find(|x| x.path == "app.cache").unwrap().flagged);
    assert!(holders.iter().all(|x| x.path != "app.found_later"), "only what a full census listed");
    let events = holders.iter().find(|x| x.path == "app.events").unwrap();
    assert!(events.flagged && events.reason.contains("at least"), "{}", events.reason);
    assert!(events.retained_bytes_series.is_empty());
    assert_eq!(h.gc.iter().filter(|(_, tracked)| tracked.is_some()).count(), 2, "objects counted by full ones");
}

#[test]
fn a_monitor_keeps_its_last_censuses_and_forgets_what_they_no_longer_see() {
    let mut h = CensusHistory::default();
    for i in 0..30u64 {
        let holders: &[(&str, u64, u64)] =
            if i < 5 { &[("app.gone", 3, 300), ("app.views", i, i * 100)] } else { &[("app.views", i, i * 100)] };
        h.push(i as f64, &census(holders));
        h.keep_last(10);
    }
    assert_eq!(h.times.len(), 10);
    assert_eq!(h.times[0], 20.0);
    assert_eq!(h.gc.len(), 10);
    let holders = h.holders(&VerdictConfig::default());
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].length_series.len(), 10);
    assert_eq!(holders[0].length_series[0].value, 20.0);
}

#[test]
fn the_gc_summary_says_collections_per_second_and_tracked_objects() {
    use crate::python::heap::GenerationState;
    let mut h = CensusHistory::default();
    for i in 0..5i64 {
        let mut c = census(&[]);
        let generation = |collections| GenerationState { collections, ..Default::default() };
        c.gc = Some(GcState {
            enabled: true,
            generations: vec![generation(100 + 50 * i), generation(10 + i), generation(1)],
            ..Default::default()
        });
        c.objects = 1000 + 10 * i as u64;
        h.push(i as f64 * 2.0, &c);
    }
    let gc = h.gc_summary().unwrap();
    assert_eq!(gc.collections, vec![300, 14, 1]);
    assert_eq!(gc.collections_per_sec, vec![25.0, 0.5, 0.0]);
    assert_eq!(gc.tracked_objects.last().unwrap().value, 1040.0);
    assert_eq!(h.latest_gc().unwrap().1, 1040);
}

#[test]
fn types_are_judged_like_holders() {
    let mut h = CensusHistory::default();
    for i in 0..20u64 {
        h.push(i as f64, &census_of(&[("dict", 1000 + i * 50), ("function", 4000)]));
    }
    let types = h.types(&VerdictConfig::default());
    assert_eq!(types[0].name, "dict");
    assert_eq!(types.iter().filter(|t| t.flagged).count(), types.iter().filter(|t| t.name == "dict").count());
}
#[test]
fn a_weak_holder_is_not_flagged_and_piling_tasks_come_after_the_container_that_keeps_them() {
    let mut h = CensusHistory::default();
    for i in 0..20u64 {
        let mut c = census(&[
            ("app._TASKS", 10 + i * 100, 1000 + i * 24_000),
            ("_asyncio._all_tasks.data", 10 + i * 100, 800 + i * 12_000),
        ]);
        c.holders[1].weak = true;
        c.types = census_of(&[("_asyncio.Task", 10 + i * 100), ("function", 4000)]).types;
        h.push(i as f64 * 2.0, &c);
    }
    let holders = h.holders(&VerdictConfig::default());
    let paths: Vec<(&str, bool)> = holders.iter().map(|h| (h.path.as_str(), h.flagged)).collect();
    assert_eq!(paths, [("app._TASKS", true), (PENDING_TASKS, true), ("_asyncio._all_tasks.data", false)]);
    assert!(holders[1].inferred && !holders[1].weak);
    // Counted by asyncio's registry, where there is one.
    assert_eq!(holders[1].length_series, holders[2].length_series);
    assert!(holders[2].weak && holders[2].reason.starts_with("holds weak references only"), "{}", holders[2].reason);

    // No registry (3.14): the tasks counted by type, the first flagged holder.
    let mut h = CensusHistory::default();
    for i in 0..20u64 {
        let mut c = census(&[("app.config", 3, 300)]);
        c.types = census_of(&[("_asyncio.Task", 10 + i * 100)]).types;
        h.push(i as f64 * 2.0, &c);
    }
    let holders = h.holders(&VerdictConfig::default());
    assert_eq!(holders[0].path, PENDING_TASKS);
    assert!(holders[0].flagged && !holders[1].flagged);
}
#[test]
fn a_walk_that_broke_short_of_a_list_leaves_that_census_out_of_the_types() {
    use crate::python::heap::ListWalk;
    let walk = |generation: &str, objects, complete: bool| ListWalk {
        generation: generation.into(),
        objects,
        complete,
        broken: !complete,
        retries: 3,
    };
    let mut h = CensusHistory::default();
    for i in 0..20u64 {
        let tasks = 1000 + i * 100;
        let mut c = census_of(&[("_asyncio.Task", tasks), ("dict", 50_000)]);
        // Every fourth census's walk of the old generation broke at a tenth of it; the young
        // generation's walks break often, and lose a few hundred objects at most.
        let old = if i % 4 == 3 { walk("2", 5_000, false) } else { walk("2", 51_000 + i * 100, true) };
        c.lists = vec![walk("0", 300, i % 2 == 0), old];
        if i % 4 == 3 {
            c.types = census_of(&[("_asyncio.Task", tasks / 10), ("dict", 5_000)]).types;
        }
        h.push(i as f64 * 2.0, &c);
    }
    assert_eq!(h.short_walks, 5);
    // A walk a bound stopped is not a broken one.
    let mut stopped = census_of(&[("dict", 5_000)]);
    stopped.lists = vec![ListWalk { broken: false, ..walk("2", 5_000, false) }];
    h.push(40.0, &stopped);
    assert_eq!(h.short_walks, 5);
    let types = h.types(&VerdictConfig::default());
    let tasks = types.iter().find(|t| t.name == "_asyncio.Task").unwrap();
    assert_eq!(tasks.count_series.len(), 15);
    assert!(tasks.flagged, "{}", tasks.reason);
    assert!((tasks.growth_objects_per_sec - 50.0).abs() < 1.0, "{}", tasks.growth_objects_per_sec);
}
#[test]
fn tasks_counted_from_the_threads_lists_are_judged_as_pending_tasks() {
    let mut h = CensusHistory::default();
    for i in 0..20u64 {
        let mut c = census(&[("app.config", 3, 300)]);
        // The type's count is gone with a broken walk; the lists' count is there.
        c.types = census_of(&[("function", 4000)]).types;
        c.asyncio_tasks = Some((1000 + i * 80, (1000 + i * 80) * 168));
        h.push(i as f64 * 2.0, &c);
    }
    let holders = h.holders(&VerdictConfig::default());
    assert_eq!(holders[0].path, PENDING_TASKS);
    assert!(holders[0].flagged, "{}", holders[0].reason);
    assert!((holders[0].growth_items_per_sec - 40.0).abs() < 1.0, "{}", holders[0].growth_items_per_sec);
    h.keep_last(5);
    assert_eq!(h.task_list.counts.len(), 5);
}
