//! Finding functions in an ELF file and turning them into the file offsets uprobes attach to.

use std::{collections::HashMap, fs, path::Path, sync::Mutex};

use anyhow::{Context, Result};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// File offsets of the defined functions among `names` in the ELF at `path`, from `.dynsym` and
/// `.symtab` (a stripped file has only the former). Versioned names (`malloc@@GLIBC_2.2.5`)
/// match their base name.
pub fn function_offsets(path: &Path, names: &[&str]) -> Result<HashMap<String, u64>> {
    memo(path, "offsets", names, || read_function_offsets(path, names)).map(|(found, _)| found)
}

fn read_function_offsets(path: &Path, names: &[&str]) -> Result<(HashMap<String, u64>, u64)> {
    let mut found = HashMap::new();
    for (name, offset) in defined_functions(path)? {
        if names.contains(&name.as_str()) {
            found.entry(name).or_insert(offset);
        }
    }
    Ok((found, 0))
}

/// Every defined function symbol of the ELF at `path` (`.dynsym`, then `.symtab`) as (base name,
/// file offset of its entry).
fn defined_functions(path: &Path) -> Result<Vec<(String, u64)>> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("{} is not an ELF file", path.display()))?;
    let segments: Vec<(u64, u64, u64)> = file.segments().map(|s| (s.address(), s.size(), s.file_range().0)).collect();
    Ok(file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|symbol| symbol.kind() == SymbolKind::Text && !symbol.is_undefined() && symbol.address() != 0)
        .filter_map(|symbol| {
            let name = symbol.name().ok()?;
            let base = name.split('@').next().unwrap_or(name);
            Some((base.to_string(), file_offset(&segments, symbol.address())?))
        })
        .collect())
}

/// Every defined function of the ELF at `path` (`.dynsym` and `.symtab`), by the file offset of
/// its entry: where a breakpoint may go without splitting an instruction.
pub fn function_entries(path: &Path) -> Result<HashMap<u64, String>> {
    let (by_name, _) = memo(path, "entries", &[], || read_function_entries(path))?;
    Ok(by_name.into_iter().map(|(name, offset)| (offset, name)).collect())
}

fn read_function_entries(path: &Path) -> Result<(HashMap<String, u64>, u64)> {
    let mut found = HashMap::new();
    for (name, offset) in defined_functions(path)? {
        found.entry(name).or_insert(offset);
    }
    Ok((found, 0))
}

/// Whether the ELF at `path` keeps its `.symtab` (static symbols): distribution builds strip it.
/// Reads the section headers only, not the file (an interpreter is tens of megabytes).
pub fn has_symbol_table(path: &Path) -> Result<bool> {
    let file = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).with_context(|| format!("{} is not an ELF file", path.display()))?;
    Ok(elf.section_by_name(".symtab").is_some())
}

/// Virtual addresses of the defined symbols (of any kind: functions and data) among `names`,
/// and the lowest loadable address, from which the load bias follows.
pub fn symbol_addresses(path: &Path, names: &[&str]) -> Result<(HashMap<String, u64>, u64)> {
    memo(path, "addresses", names, || read_symbol_addresses(path, names))
}

fn read_symbol_addresses(path: &Path, names: &[&str]) -> Result<(HashMap<String, u64>, u64)> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("{} is not an ELF file", path.display()))?;
    let lowest = file.segments().map(|s| s.address()).min().unwrap_or(0);
    let mut found = HashMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if symbol.is_undefined() || symbol.address() == 0 {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        let base = name.split('@').next().unwrap_or(name);
        if names.contains(&base) && !found.contains_key(base) {
            found.insert(base.to_string(), symbol.address());
        }
    }
    Ok((found, lowest))
}

/// One file's answer to one question: the file by device, inode, size and modification time (a
/// process's `/proc/PID/map_files/...` and another's path to the same library are one file).
type MemoKey = (u64, u64, u64, i64, i64, &'static str, Vec<String>);
type Found = (HashMap<String, u64>, u64);

/// Entries kept before the memo starts over: far more distinct (file, question) pairs than a node
/// maps, while bounding the agent's memory if files keep changing.
const MEMO_ENTRIES: usize = 4096;

static MEMO: Mutex<Option<HashMap<MemoKey, Result<Found, String>>>> = Mutex::new(None);

/// `read()`'s answer for `path`, computed once per file: the agent inspects every process of a
/// node, and hundreds of them map the same libc and libpython (parsing them is most of the cost
/// of watching a process: measured in docs/performance.md).
fn memo(path: &Path, question: &'static str, names: &[&str], read: impl FnOnce() -> Result<Found>) -> Result<Found> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(path) else { return read() };
    let key = (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        question,
        names.iter().map(|n| n.to_string()).collect(),
    );
    if let Some(known) = MEMO.lock().ok().and_then(|m| m.as_ref()?.get(&key).cloned()) {
        return known.map_err(anyhow::Error::msg);
    }
    let answer = read();
    if let Ok(mut memo) = MEMO.lock() {
        let memo = memo.get_or_insert_with(HashMap::new);
        if memo.len() >= MEMO_ENTRIES {
            memo.clear();
        }
        let stored = match &answer {
            Ok(found) => Ok(found.clone()),
            Err(e) => Err(format!("{e:#}")),
        };
        memo.insert(key, stored);
    }
    answer
}

/// Virtual address -> file offset through the loadable segment that holds it.
fn file_offset(segments: &[(u64, u64, u64)], address: u64) -> Option<u64> {
    segments
        .iter()
        .find(|(start, size, _)| address >= *start && address < start + size)
        .map(|(start, _, offset)| address - start + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_malloc_in_this_process_libc() {
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let libc = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so") || p.contains("libc-"))
            .expect("libc is mapped");
        let found = function_offsets(Path::new(libc), &["malloc", "free", "no_such_function"]).unwrap();
        assert!(found["malloc"] > 0);
        assert!(found["free"] > 0);
        assert_ne!(found["malloc"], found["free"]);
        assert!(!found.contains_key("no_such_function"));
    }

    #[test]
    fn offset_is_relative_to_its_segment() {
        let segs = [(0x1000, 0x2000, 0x0), (0x400000, 0x1000, 0x3000)];
        assert_eq!(file_offset(&segs, 0x1010), Some(0x10));
        assert_eq!(file_offset(&segs, 0x400020), Some(0x3020));
        assert_eq!(file_offset(&segs, 0x9000), None);
    }

    #[test]
    fn the_symbol_table_is_found_without_reading_the_file() {
        // The test binary is built with its symbols.
        let exe = std::env::current_exe().unwrap();
        assert!(has_symbol_table(&exe).unwrap());
        assert!(has_symbol_table(Path::new("/proc/self/status")).is_err());
    }

    #[test]
    fn not_an_elf_is_an_error() {
        let dir = std::env::temp_dir().join(format!("leakprobe-elf-{}", std::process::id()));
        fs::write(&dir, b"#!/bin/sh\n").unwrap();
        assert!(function_offsets(&dir, &["malloc"]).is_err());
        assert!(function_offsets(&dir, &["malloc"]).is_err(), "the memo keeps the error");
        let _ = fs::remove_file(&dir);
    }

    #[test]
    fn a_file_is_parsed_once_and_again_when_it_changes() {
        let exe = std::env::current_exe().unwrap();
        let copy = std::env::temp_dir().join(format!("leakprobe-elf-memo-{}", std::process::id()));
        fs::copy(&exe, &copy).unwrap();
        let first = symbol_addresses(&copy, &["main"]).unwrap();
        let mut calls = 0;
        let again = memo(&copy, "addresses", &["main"], || {
            calls += 1;
            read_symbol_addresses(&copy, &["main"])
        })
        .unwrap();
        assert_eq!((calls, &again), (0, &first), "answered from the memo");
        // Replaced (another inode): read again.
        fs::remove_file(&copy).unwrap();
        fs::write(&copy, b"not an ELF").unwrap();
        assert!(symbol_addresses(&copy, &["main"]).is_err());
        let _ = fs::remove_file(&copy);
    }
}
