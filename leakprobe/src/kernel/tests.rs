//! The names in `leakprobe_common::names` against the kernel object built beside them: the
//! kernel's macros cannot take those constants, so this is what keeps the two spellings equal.
//! Skipped (with a note) in builds without the kernel programs (`AYA_BUILD_SKIP`).

use std::collections::BTreeSet;

use leakprobe_common::names;
use object::{Object, ObjectSection, ObjectSymbol};

use super::KERNEL_PROGRAMS;

/// Names of the global symbols of `object` in the sections `sections` accepts.
fn symbols_in(object: &[u8], sections: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let file = object::File::parse(object).expect("the embedded kernel object parses");
    file.symbols()
        .filter(|symbol| symbol.is_global())
        .filter(|symbol| {
            let section = symbol.section_index().and_then(|i| file.section_by_index(i).ok());
            section.and_then(|s| s.name().ok().map(&sections)).unwrap_or(false)
        })
        .filter_map(|symbol| symbol.name().ok().map(str::to_string))
        .collect()
}

/// Panics unless `object` defines every program, map and global of `leakprobe_common::names`,
/// and no program that is not there.
fn check_names(object: &[u8]) {
    let programs =
        symbols_in(object, |section| ["uprobe", "uretprobe", "tracepoint"].iter().any(|p| section.starts_with(p)));
    let expected: BTreeSet<String> = names::programs().map(str::to_string).collect();
    assert_eq!(programs, expected, "programs in the kernel object vs leakprobe_common::names");

    let maps = symbols_in(object, |section| section == "maps");
    for map in names::MAPS {
        assert!(maps.contains(*map), "map {map} missing from the kernel object (has {maps:?})");
    }
    let everything = symbols_in(object, |_| true);
    for global in [names::TARGET_TGID, names::FORK_CHILD_PID_OFFSET] {
        assert!(everything.contains(global), "global {global} missing from the kernel object");
    }
}

#[test]
fn object_names_match_common() {
    if KERNEL_PROGRAMS.is_empty() {
        eprintln!("skipped: built without the kernel programs (AYA_BUILD_SKIP)");
        return;
    }
    check_names(KERNEL_PROGRAMS);
}

#[test]
fn every_program_named_once() {
    let all: Vec<&str> = names::programs().collect();
    let unique: BTreeSet<&str> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len());
    // The kernel keeps 15 bytes of a program's name: tests match loaded programs on that prefix.
    let prefixes: BTreeSet<&str> = all.iter().map(|name| &name[..name.len().min(15)]).collect();
    assert_eq!(prefixes.len(), all.len(), "two programs share their kernel-visible name");
}
