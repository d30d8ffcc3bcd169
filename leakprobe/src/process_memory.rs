//! The target's memory as the kernel accounts it: RSS split into anonymous, file and shmem
//! pages, and swap — what an OOM kill is decided on.

use std::fs;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessMemory {
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub shmem_bytes: u64,
    pub swap_bytes: u64,
}

/// Reads /proc/PID/status; `None` once the process is gone.
pub fn read(pid: u32) -> Option<ProcessMemory> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Parses the `VmRSS`, `RssAnon`, `RssFile`, `RssShmem` and `VmSwap` lines (in kB).
pub fn parse_status(status: &str) -> Option<ProcessMemory> {
    let mut memory = ProcessMemory::default();
    let mut seen_rss = false;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kb = || -> Option<u64> { value.split_whitespace().next()?.parse::<u64>().ok().map(|v| v * 1024) };
        match key {
            "VmRSS" => {
                memory.rss_bytes = kb()?;
                seen_rss = true;
            }
            "RssAnon" => memory.anon_bytes = kb()?,
            "RssFile" => memory.file_bytes = kb()?,
            "RssShmem" => memory.shmem_bytes = kb()?,
            "VmSwap" => memory.swap_bytes = kb()?,
            _ => {}
        }
    }
    // A zombie has no VmRSS line: it holds no memory we can report.
    seen_rss.then_some(memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let status = "Name:\tpython3\nVmRSS:\t   20480 kB\nRssAnon:\t   12288 kB\nRssFile:\t    8000 kB\nRssShmem:\t     192 kB\nVmSwap:\t       4 kB\n";
        let m = parse_status(status).unwrap();
        assert_eq!(m.rss_bytes, 20480 * 1024);
        assert_eq!(m.anon_bytes, 12288 * 1024);
        assert_eq!(m.file_bytes, 8000 * 1024);
        assert_eq!(m.shmem_bytes, 192 * 1024);
        assert_eq!(m.swap_bytes, 4096);
    }

    #[test]
    fn zombie_or_garbage_is_none() {
        assert_eq!(parse_status("Name:\tx\nState:\tZ (zombie)\n"), None);
        assert_eq!(parse_status("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let m = read(std::process::id()).unwrap();
        assert!(m.rss_bytes > 0 && m.anon_bytes > 0);
    }
}
