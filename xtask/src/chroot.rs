//! A Debian trixie root made with debootstrap, holding Debian's own python3.13 and a venv with the
//! web stack: a Python whose files live in another filesystem root, as in a container, so the
//! tests exercise leakprobe's `/proc/PID/root` paths. Built once, cached.

use std::{fs, path::Path, path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::run;

const SUITE: &str = "trixie";
const MIRROR: &str = "http://deb.debian.org/debian";
const PACKAGES: &str = "python3.13,python3.13-venv,ca-certificates";
/// Inside the root.
pub const VENV: &str = "/opt/venv";

/// The root directory, creating it (debootstrap + venv) when missing.
pub fn trixie_root(cache: &Path, pip_packages: &[&str]) -> Result<PathBuf> {
    let root = cache.join("trixie-root");
    let stamp = root.join(".leakprobe-ready");
    let wanted = pip_packages.join("\n");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(root);
    }
    if !root.join("usr/bin/python3.13").exists() {
        eprintln!("xtask: debootstrapping a {SUITE} root with python3.13 (a few minutes, once)");
        let partial = cache.join("trixie-root.partial");
        let _ = fs::remove_dir_all(&partial);
        run(Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
            .arg(&partial)
            .arg(MIRROR))?;
        let _ = fs::remove_dir_all(&root);
        fs::rename(&partial, &root).context("cannot move the finished root into place")?;
    }
    fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).context("cannot copy resolv.conf into the root")?;
    run(Command::new("chroot").arg(&root).args(["python3.13", "-m", "venv", "--clear", VENV]))?;
    run(Command::new("chroot")
        .arg(&root)
        .arg(format!("{VENV}/bin/python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(pip_packages))?;
    fs::write(&stamp, wanted)?;
    Ok(root)
}
