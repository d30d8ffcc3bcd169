//! The CPython builds the Python end-to-end tests run against, as `cargo xtask test` provides
//! them: the project's interpreter (`LEAKPROBE_PYTHON`), the other builds found on the machine
//! (`LEAKPROBE_EXTRA_PYTHONS`: `version=venv python` entries, pyenv's shared-libpython builds and
//! Debian's static LTO+PGO one) and Debian's own builds in debootstrap'd roots (`LEAKPROBE_CHROOTS`:
//! `version=root` entries, each root with the venv python `LEAKPROBE_CHROOT_PYTHON`), run under
//! chroot so that every file of the target is reached through /proc/PID/root.

use crate::{fixture, python};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

#[derive(Clone, Copy, Debug)]
pub enum CPython {
    /// `LEAKPROBE_PYTHON` (python3 when not given): never skipped.
    Project,
    /// The `LEAKPROBE_EXTRA_PYTHONS` entry of this version: "3.10", "3.12", "3.13", "debian-3.11".
    Extra(&'static str),
    /// The `LEAKPROBE_CHROOTS` root of this CPython version: "3.13" (trixie), "3.14" (sid).
    DebianRoot(&'static str),
}

impl CPython {
    /// A command running the fixture script `script` on this interpreter; the caller adds the
    /// script's arguments. `Err` says why this machine cannot: the test skips, saying so.
    pub fn script_command(self, script: &str) -> Result<Command, String> {
        let python = match self {
            CPython::Project => python(),
            CPython::Extra(version) => versioned_path("LEAKPROBE_EXTRA_PYTHONS", version)
                .ok_or_else(|| format!("no CPython {version} on this machine"))?,
            CPython::DebianRoot(version) => return in_debian_root(version, script),
        };
        let mut command = Command::new(python);
        command.arg(fixture(script));
        Ok(command)
    }
}

/// Debian's own build of CPython `version` in its debootstrap'd root, run under chroot.
fn in_debian_root(version: &str, script: &str) -> Result<Command, String> {
    let (Some(root), Ok(python)) =
        (versioned_path("LEAKPROBE_CHROOTS", version), std::env::var("LEAKPROBE_CHROOT_PYTHON"))
    else {
        return Err(format!("no Debian root with CPython {version} (run with `cargo xtask test`)"));
    };
    // The script is reached from inside the root, as a container's app is. A script in a
    // directory of fixtures (`scenarios/app.py`) brings that whole directory: the modules and
    // packages next to it that it imports.
    let app = root.join("app");
    match Path::new(script).parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => copy_dir(&fixture(&dir.to_string_lossy()), &app.join(dir)),
        None => {
            std::fs::create_dir_all(&app).unwrap();
            std::fs::copy(fixture(script), app.join(script)).unwrap();
        }
    }
    let mut command = Command::new("chroot");
    command.arg(&root).arg(python).arg(format!("/app/{script}"));
    Ok(command)
}

/// Copies the directory `from` into `to`, recursively, leaving out compiled `__pycache__`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (name, kind) = (entry.file_name(), entry.file_type().unwrap());
        if kind.is_dir() {
            if name != "__pycache__" {
                copy_dir(&entry.path(), &to.join(&name));
            }
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// The `version=path` entry of the comma-separated list in the environment variable `var`.
pub fn versioned_path(var: &str, version: &str) -> Option<PathBuf> {
    std::env::var(var).ok()?.split(',').find_map(|entry| {
        let (v, path) = entry.split_once('=')?;
        (v == version).then(|| path.into())
    })
}
