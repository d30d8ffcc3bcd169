//! Syscall tracepoints are attached by id, read from tracefs, which a fresh machine may not mount.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

const TRACEFS: &str = "/sys/kernel/tracing";
const LEGACY: &str = "/sys/kernel/debug/tracing";

/// Makes sure tracefs is mounted, mounting it on /sys/kernel/tracing when it is not (as bpftrace
/// does). Returns whether it mounted it, so the caller can say so.
pub fn ensure_mounted() -> Result<bool> {
    let mounted = || Path::new(TRACEFS).join("events").exists() || Path::new(LEGACY).join("events").exists();
    if mounted() {
        return Ok(false);
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .stderr(Stdio::null())
        .status()
        .context("cannot run mount(8) to mount tracefs")?;
    if status.success() && mounted() {
        return Ok(true);
    }
    // Another leakprobe starting at the same moment may have mounted it first (measured: five
    // recordings started together on a fresh machine, four failed here).
    if mounted() {
        return Ok(false);
    }
    bail!("tracefs is not mounted and mounting it on {TRACEFS} failed (needs CAP_SYS_ADMIN)");
}

/// The byte offset of `field` in the records of tracepoint `category:event`, from its format file
/// (fields move between kernel versions). `None` when tracefs or the field is missing.
pub fn field_offset(category: &str, event: &str, field: &str) -> Option<u32> {
    let format = [TRACEFS, LEGACY].iter().find_map(|dir| {
        std::fs::read_to_string(Path::new(dir).join("events").join(category).join(event).join("format")).ok()
    })?;
    parse_field_offset(&format, field)
}

/// `field:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;` -> 44 for `child_pid`.
pub fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let declaration = line.trim().strip_prefix("field:")?.split(';').next()?;
        let name = declaration.split_whitespace().last()?;
        if name != field {
            return None;
        }
        let offset = line.split("offset:").nth(1)?.split(';').next()?;
        offset.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_a_field_offset_in_a_format_file() {
        let format = "name: sched_process_fork\nID: 300\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(super::parse_field_offset(format, "child_pid"), Some(44));
        assert_eq!(super::parse_field_offset(format, "parent_pid"), Some(24));
        assert_eq!(super::parse_field_offset(format, "pid"), None);
    }
}
