//! The census against synthetic heaps (every supported layout, Debian's shifted generations,
//! garbage, torn lists, bounds): no root, no interpreter.

use std::time::Duration;

use proptest::prelude::*;

use super::{
    dicts,
    fake::{FakeHeap, BASE},
    gc_state, take_census, Bound, Bounds, Census, Interpreter,
};
use crate::python::memory::{ReadMemory, SliceMemory};

fn interp(h: &FakeHeap, known_type: bool) -> Interpreter {
    Interpreter { layout: h.layout, runtime: h.runtime, micro: 0, type_type: known_type.then_some(h.type_type) }
}

fn count(c: &Census, name: &str) -> (u64, u64) {
    c.types.iter().find(|t| t.name == name).map_or((0, 0), |t| (t.count, t.bytes))
}

/// 5 instances of a class, 3 lists and 2 dicts on different generations, one object in the
/// permanent generation; returns the heap and the bytes expected of (Leaky, list, dict).
fn sample(minor: u32, shift: bool) -> (FakeHeap, [u64; 3]) {
    let mut h = FakeHeap::new(minor, shift);
    let gc = h.layout.heap.gc;
    let managed = h.layout.heap.gc.preheader_flags;
    let leaky = h.new_type("Leaky", managed, 16, 0, true);
    for i in 0..5 {
        h.new_object(i % 3, leaky, 16);
    }
    let list = h.list_type();
    for allocated in [0, 4, 8] {
        h.new_list(list, allocated / 2, allocated);
    }
    let dict = h.dict_type();
    let mut table = 0;
    for used in [1, 3] {
        table = h.new_dict(dict, used).1;
    }
    let permanent = h.heads.len() - 1;
    h.new_object(permanent, leaky, 16);
    let leaky_each = 16 + gc.head_size + if managed != 0 { gc.preheader_size } else { 0 };
    let list_bytes = 3 * (40 + gc.head_size) + (4 + 8) * 8;
    let dict_bytes = 2 * (48 + gc.head_size + table);
    (h, [6 * leaky_each, list_bytes, dict_bytes])
}

#[test]
fn counts_every_list_of_every_layout() {
    for (minor, shift) in [(10, false), (11, false), (12, false), (13, false), (13, true), (14, false)] {
        let (h, [leaky, list, dict]) = sample(minor, shift);
        for known_type in [true, false] {
            let c = take_census(&h.memory(), &interp(&h, known_type), &Bounds::default()).unwrap();
            assert_eq!(count(&c, "Leaky"), (6, leaky), "3.{minor} shift {shift}");
            assert_eq!(count(&c, "list"), (3, list), "3.{minor}");
            assert_eq!(count(&c, "dict"), (2, dict), "3.{minor}");
            assert_eq!(c.objects, 11);
            assert_eq!(c.invalid.total(), 0, "3.{minor}: {:?}", c.invalid);
            assert!(c.lists.iter().all(|l| l.complete));
            assert_eq!(c.lists.iter().map(|l| l.objects).collect::<Vec<_>>(), vec![5, 2, 3, 1]);
            assert_eq!(c.bounds_hit, None);
            let gc = c.gc.as_ref().unwrap();
            assert!(gc.enabled && !gc.collecting);
            assert_eq!(
                gc.generations.iter().map(|g| (g.threshold, g.count, g.collections)).collect::<Vec<_>>(),
                vec![(700, 7, 100), (10, 8, 99), (10, 9, 98)]
            );
            assert!(c.bytes_read > 0 && c.reads > 0);
        }
    }
}

#[test]
fn census_serializes() {
    let (h, _) = sample(11, false);
    let c = take_census(&h.memory(), &interp(&h, true), &Bounds::default()).unwrap();
    let json = serde_json::to_string(&c).unwrap();
    let back: Census = serde_json::from_str(&json).unwrap();
    assert_eq!(back.types, c.types);
}

#[test]
fn uncalibrated_gc_state_is_refused() {
    let (mut h, _) = sample(12, false);
    let state = h.heads[0] - h.layout.heap.gc.generations;
    h.put(state + h.layout.heap.gc.generation0, 0x1234);
    assert!(take_census(&h.memory(), &interp(&h, true), &Bounds::default()).unwrap_err().contains("GC state"));
    // 3.14.0–3.14.4 have no generation0: the heads are where the headers say.
    let (mut h, [leaky, ..]) = sample(14, false);
    let state = h.heads[0] - h.layout.heap.gc.generations;
    h.put(state + h.layout.heap.gc.generation0, 0);
    let mut i = interp(&h, true);
    i.micro = 3;
    let c = take_census(&h.memory(), &i, &Bounds::default()).unwrap();
    assert_eq!(count(&c, "Leaky"), (6, leaky));
    assert!(c.gc.unwrap().incremental);
    i.micro = 10;
    assert!(take_census(&h.memory(), &i, &Bounds::default()).is_err());
}

#[test]
fn bad_type_pointers_and_refcounts_are_counted_not_named() {
    let (mut h, _) = sample(12, false);
    let bogus = h.alloc(64); // zeros: not READY, metatype 0
    h.new_object(0, bogus, 16);
    h.new_object(0, 0xdead_bee8, 16);
    let list = h.list_type();
    let zero_ref = h.new_object(1, list, 40);
    h.put(zero_ref, 0);
    let c = take_census(&h.memory(), &interp(&h, true), &Bounds::default()).unwrap();
    assert_eq!((c.invalid.types, c.invalid.refcounts), (2, 1));
    assert_eq!(c.objects, 11);
}

#[test]
fn a_torn_list_ends_the_walk_and_is_reported() {
    let (mut h, _) = sample(11, false);
    // The second node of generation 0 stops pointing back at the first.
    let first = h.word(h.heads[0]);
    let second = h.word(first);
    h.put(second + 8, 0x4000);
    let c = take_census(&h.memory(), &interp(&h, true), &Bounds::default()).unwrap();
    assert_eq!(c.invalid.broken_lists, 1);
    assert_eq!((c.lists[0].complete, c.lists[0].retries, c.lists[0].objects), (false, 3, 1));
    assert!(c.lists[1..].iter().all(|l| l.complete));
    // A cycle that never returns to the head is bounded too.
    let (mut h, _) = sample(11, false);
    let first = h.word(h.heads[2]);
    h.put(first, first);
    let c = take_census(&h.memory(), &interp(&h, true), &Bounds::default()).unwrap();
    assert_eq!(c.invalid.broken_lists, 1);
}

#[test]
fn bounds_stop_the_census_and_say_so() {
    let (h, _) = sample(13, false);
    let tight = Bounds { max_objects: 5, ..Bounds::default() };
    let c = take_census(&h.memory(), &interp(&h, true), &tight).unwrap();
    assert_eq!((c.bounds_hit, c.objects), (Some(Bound::Objects), 5));
    let no_time = Bounds { max_duration: Duration::ZERO, ..Bounds::default() };
    assert_eq!(take_census(&h.memory(), &interp(&h, true), &no_time).unwrap().bounds_hit, Some(Bound::Duration));
    let no_bytes = Bounds { max_bytes_read: 1, ..Bounds::default() };
    assert_eq!(take_census(&h.memory(), &interp(&h, true), &no_bytes).unwrap().bounds_hit, Some(Bound::BytesRead));
}

#[test]
fn gc_heads_calibrate_to_debian_313() {
    let (h, _) = sample(13, true);
    let heads = gc_state::locate(&h.memory(), &h.layout, h.runtime, 5).unwrap();
    let state = heads.state;
    assert_eq!(heads.generations.map(|g| g - state), [20, 44, 68]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Random bytes anywhere in a real-looking heap never panic the census, and it ends.
    #[test]
    fn corrupted_heaps_never_panic(minor in 10u32..=14, edits in proptest::collection::vec((0usize..4096, any::<u64>()), 1..40)) {
        let (mut h, _) = sample(minor, false);
        let len = h.bytes.len();
        for (at, value) in edits {
            let at = (at * 8) % (len - 8);
            h.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        let bounds = Bounds { max_holders: 10, ..Bounds::default() };
        let _ = take_census(&h.memory(), &interp(&h, minor % 2 == 0), &bounds);
    }

    /// Pure garbage as memory.
    #[test]
    fn garbage_memory_never_panics(minor in 10u32..=14, bytes in proptest::collection::vec(any::<u8>(), 0..8192), runtime in 0u64..8192) {
        let h = FakeHeap::new(minor, false);
        let mem = SliceMemory { base: BASE, bytes: &bytes };
        let i = Interpreter { layout: h.layout, runtime: BASE + runtime, micro: 0, type_type: None };
        let _ = take_census(&mem, &i, &Bounds { max_holders: 10, ..Bounds::default() });
    }

    /// Instance attributes on garbage, for every version's way of keeping them.
    #[test]
    fn instance_decoder_survives_garbage(minor in 10u32..=14, bytes in proptest::collection::vec(any::<u8>(), 0..4096), at in 0u64..4096, flags in any::<u64>(), basicsize in 0u64..512) {
        let layout = super::fake::layout(minor);
        let mem = SliceMemory { base: BASE, bytes: &bytes };
        let info = super::types::TypeInfo { address: BASE + (at / 2), name: "X".into(), basicsize, itemsize: 0, flags, kind: super::types::Kind::Other };
        if let Some(found) = super::instances::locate(&mem, &layout, &info, BASE + at) {
            let _ = super::instances::items(&mem, &layout, found, 1 << 16);
        }
    }

    /// The dict decoder on garbage: no panic, and what it returns holds `ma_used` pairs.
    #[test]
    fn dict_decoder_survives_garbage(minor in 10u32..=14, bytes in proptest::collection::vec(any::<u8>(), 0..4096), at in 0u64..4096) {
        let layout = super::fake::layout(minor);
        let c = &layout.heap.containers;
        let mem = SliceMemory { base: BASE, bytes: &bytes };
        let _ = dicts::parse_keys(&c.keys, &bytes);
        if let Some(items) = dicts::dict_items(&mem, c, BASE + at, 1 << 20) {
            let (used, _, _) = dicts::read_dict_header(&mem, c, BASE + at).unwrap();
            prop_assert_eq!(items.len() as u64, used);
        }
    }
}

#[test]
fn dict_items_of_combined_and_split_tables() {
    for minor in 10..=14 {
        let (mut h, _) = sample(minor, false);
        let c = h.layout.heap.containers;
        let dict_type = h.dict_type();
        let (dict, _) = h.new_dict(dict_type, 2);
        let keys = h.word(dict + c.dict_keys);
        let header = h.memory().read_vec(keys, dicts::header_len(&c.keys)).unwrap();
        let table = dicts::parse_keys(&c.keys, &header).unwrap();
        // Entries 0 and 2 live, 1 deleted.
        h.put(
            keys + match c.keys {
                crate::python::layout::DictKeysLayout::Sized { nentries, .. }
                | crate::python::layout::DictKeysLayout::Log2 { nentries, .. } => nentries,
            },
            3,
        );
        for (i, (k, v)) in [(0x1110, 0x2220), (0, 0), (0x1130, 0x2230)].into_iter().enumerate() {
            let entry = keys + table.entries + i as u64 * table.entry_size;
            h.put(entry + table.key_at, k);
            h.put(entry + table.value_at, v);
        }
        assert_eq!(
            dicts::dict_items(&h.memory(), &c, dict, 100),
            Some(vec![(0x1110, 0x2220), (0x1130, 0x2230)]),
            "3.{minor}"
        );
        assert_eq!(dicts::dict_items(&h.memory(), &c, dict, 1), None, "more than asked for");
        // Split: the values come from ma_values; the keys' own values are ignored.
        let values = h.alloc(64);
        h.put(dict + c.dict_values, values);
        h.put(values + c.split_values, 0x3330);
        h.put(values + c.split_values + 16, 0x3350);
        assert_eq!(
            dicts::dict_items(&h.memory(), &c, dict, 100),
            Some(vec![(0x1110, 0x3330), (0x1130, 0x3350)]),
            "3.{minor}"
        );
        h.put(values + c.split_values + 16, 0);
        assert_eq!(dicts::dict_items(&h.memory(), &c, dict, 100), None, "ma_used disagrees: torn");
        // Read while it grows (or shrinks): close enough to its count is a moving dict.
        assert_eq!(dicts::dict_items_moving(&h.memory(), &c, dict, 100), Some(vec![(0x1110, 0x3330)]), "3.{minor}");
        h.put(dict + c.dict_used, 90);
        assert_eq!(dicts::dict_items_moving(&h.memory(), &c, dict, 100), None, "90 said, 1 found: garbage");
    }
}
