//! Syscall tracepoints are attached by id, read from tracefs, which a fresh machine may not mount.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

const TRACEFS: &str = "/sys/kernel/tracing";
const LEGACY: &str = "/sys/kernel/debug/tracing";

/// Makes sure tracefs is mounted, mounting it on /sys/kernel/tracing when it is not (as bpftrace
/// does). Returns whether it mounted it, so the caller can say so.
pub fn ensure_mounted() -> Result<bool> {
    if Path::new(TRACEFS).join("events").exists() || Path::new(LEGACY).join("events").exists() {
        return Ok(false);
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .status()
        .context("cannot run mount(8) to mount tracefs")?;
    if !status.success() || !Path::new(TRACEFS).join("events").exists() {
        bail!("tracefs is not mounted and mounting it on {TRACEFS} failed (needs CAP_SYS_ADMIN)");
    }
    Ok(true)
}
