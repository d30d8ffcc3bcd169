//! The interpreters live tests run against, and a guard that ends them: shared by every test
//! that reads a real CPython from outside.

use std::{
    path::PathBuf,
    process::{Child, Command},
};

/// Every interpreter the end-to-end suite is given (`LEAKPROBE_PYTHON`, and
/// `LEAKPROBE_EXTRA_PYTHONS` as `3.12=/path,...`; `cargo xtask test` sets both), each once.
/// None given: empty, and the caller's test says it skipped, so `cargo test` passes on a
/// machine without these interpreters.
pub fn given() -> Vec<PathBuf> {
    let main = std::env::var_os("LEAKPROBE_PYTHON").map(PathBuf::from);
    let extra = std::env::var("LEAKPROBE_EXTRA_PYTHONS").unwrap_or_default();
    let extra = extra.split(',').filter_map(|entry| entry.split_once('=')).map(|(_, path)| PathBuf::from(path));
    let mut all: Vec<PathBuf> = Vec::new();
    for python in main.into_iter().chain(extra).filter(|path| !path.as_os_str().is_empty()) {
        if !all.contains(&python) {
            all.push(python);
        }
    }
    if all.is_empty() {
        eprintln!("skipped: no interpreter given (set LEAKPROBE_PYTHON, LEAKPROBE_EXTRA_PYTHONS)");
    }
    all
}

/// One interpreter per minor version, as (minor, path), from `given`.
pub fn one_per_minor() -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for python in given() {
        // Asked rather than parsed from the entry's name: `debian-3.11`, a venv's `bin/python`.
        let out = Command::new(&python)
            .args(["-c", "import sys; print(sys.version_info[1])"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        let minor: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a minor version");
        if !found.iter().any(|(m, _)| *m == minor) {
            found.push((minor, python));
        }
    }
    found
}

/// Kills the interpreter even when an assertion fails.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
