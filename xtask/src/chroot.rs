//! Debian roots made with debootstrap, each holding Debian's own build of a CPython (static,
//! stripped, LTO+PGO) and a venv with the web stack: Pythons whose files live in another
//! filesystem root, as in a container, so the tests exercise leakprobe's `/proc/PID/root` paths
//! on versions this Debian release does not ship. Built once each, cached.

use std::{fs, path::Path, path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::run;

const MIRROR: &str = "http://deb.debian.org/debian";
/// (Debian suite, the CPython version it ships).
pub const ROOTS: &[(&str, &str)] = &[("trixie", "3.13"), ("sid", "3.14")];
/// The venv inside each root.
pub const VENV: &str = "/opt/venv";

/// The root of `suite` with `python{version}`, creating it (debootstrap + venv) when missing.
pub fn debian_root(cache: &Path, suite: &str, version: &str, pip_packages: &[&str]) -> Result<PathBuf> {
    let root = cache.join(format!("{suite}-root"));
    let stamp = root.join(".leakprobe-ready");
    let wanted = pip_packages.join("\n");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(root);
    }
    let python = format!("python{version}");
    if !root.join("usr/bin").join(&python).exists() {
        eprintln!("xtask: debootstrapping a {suite} root with {python} (about a minute, once)");
        let partial = cache.join(format!("{suite}-root.partial"));
        let _ = fs::remove_dir_all(&partial);
        run(Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={python},{python}-venv,ca-certificates"), suite])
            .arg(&partial)
            .arg(MIRROR))?;
        let _ = fs::remove_dir_all(&root);
        fs::rename(&partial, &root).context("cannot move the finished root into place")?;
    }
    // The host's name service and trust store (which may carry a site's proxy CA), as a container
    // runtime would provide them, so pip inside the root reaches the package index.
    fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).context("cannot copy resolv.conf into the root")?;
    let host_bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if host_bundle.exists() {
        fs::copy(host_bundle, root.join("etc/ssl/certs/ca-certificates.crt")).context("cannot copy the CA bundle")?;
    }
    run(Command::new("chroot").arg(&root).args([python.as_str(), "-m", "venv", "--clear", VENV]))?;
    run(Command::new("chroot")
        .arg(&root)
        .arg(format!("{VENV}/bin/python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(pip_packages))?;
    fs::write(&stamp, wanted)?;
    Ok(root)
}
