//! CPython built from Debian's source packages (the upstream tarball they carry), for the
//! Python-stack tests on versions no package of this Debian release ships. Built once with
//! `--enable-shared` and cached under `~/.cache/leakprobe/cpython-X.Y`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::run;

/// deb-src entry for sid, which carries the newest CPython source packages. Only `apt-get
/// source` reads deb-src entries: no installed package changes.
const SOURCES_FILE: &str = "/etc/apt/sources.list.d/leakprobe-src.sources";
const SOURCES: &str = "Types: deb-src
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";
/// What CPython's build needs for the modules pip and the web stack use (ssl, zlib, ctypes, ...).
const BUILD_DEPENDENCIES: &[&str] = &[
    "build-essential",
    "dpkg-dev",
    "libssl-dev",
    "zlib1g-dev",
    "libffi-dev",
    "libbz2-dev",
    "liblzma-dev",
    "libsqlite3-dev",
];

/// The interpreter of CPython `version` (`3.14`), building it first if it is not cached.
pub fn interpreter(cache: &Path, version: &str) -> Result<PathBuf> {
    let prefix = cache.join(format!("cpython-{version}"));
    let python = prefix.join(format!("bin/python{version}"));
    if python.exists() {
        return Ok(python);
    }
    eprintln!("xtask: building CPython {version} from Debian's source package (several minutes, once)");
    if fs::read_to_string(SOURCES_FILE).ok().as_deref() != Some(SOURCES) {
        fs::write(SOURCES_FILE, SOURCES).with_context(|| format!("cannot write {SOURCES_FILE}"))?;
        run(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(BUILD_DEPENDENCIES)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let work = cache.join(format!("cpython-{version}-src"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    run(Command::new("apt-get")
        .args(["source", "--download-only", "-qq"])
        .arg(format!("python{version}"))
        .current_dir(&work))?;
    let tarball = fs::read_dir(&work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".orig.tar.xz"))
        .with_context(|| format!("no upstream tarball for python{version} in the source package"))?;
    run(Command::new("tar").arg("xf").arg(&tarball).current_dir(&work))?;
    let source = fs::read_dir(&work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("Python-")))
        .context("the tarball has no Python-X.Y.Z directory")?;
    let rpath = format!("-Wl,-rpath,{}", prefix.join("lib").display());
    run(Command::new("./configure")
        .arg(format!("--prefix={}", prefix.display()))
        .args(["--enable-shared", "--with-ensurepip=no", "--quiet"])
        .arg(format!("LDFLAGS={rpath}"))
        .current_dir(&source))?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get()).to_string();
    run(Command::new("make").args(["-s", "-j", &jobs]).current_dir(&source))?;
    run(Command::new("make").args(["-s", "altinstall"]).current_dir(&source))?;
    let _ = fs::remove_dir_all(&work);
    if !python.exists() {
        bail!("CPython {version} built but {} is missing", python.display());
    }
    Ok(python)
}
