//! Memory-related failures in a log: OOM kills, Python `MemoryError`s and allocation failures.
//!
//! One failure is one event however many lines it spans: a Python traceback is read to its end
//! and becomes one event named by its exception line (with the innermost frame as location); the
//! lines of one kernel OOM report (`invoked oom-killer`, `oom-kill:...`, `Killed process`) and a
//! runtime's echo of it (`OOMKilled`) a few seconds later merge into one event.

use regex::Regex;
use serde::Serialize;

/// Longest message kept per event.
const MAX_MESSAGE: usize = 240;
/// Lines of one OOM report merge when they are this close (lines and seconds).
const OOM_MERGE_LINES: usize = 64;
const OOM_MERGE_SECS: f64 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The kernel (or the container runtime, or gunicorn's arbiter) killed a process for memory.
    OomKill,
    /// Python's `MemoryError`.
    MemoryError,
    /// `std::bad_alloc`, `Cannot allocate memory`, `ENOMEM`, `malloc(): ... failed`,
    /// `memory allocation failed`.
    AllocationFailure,
    /// A runtime saying garbage collection takes over: `GC overhead ... exceeds`.
    GcOverhead,
    /// A request timing out with memory high: `memory ... 812MB ... timeout after 30s`.
    MemoryTimeout,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::OomKill => "oom-kill",
            ErrorKind::MemoryError => "memory-error",
            ErrorKind::AllocationFailure => "allocation-failure",
            ErrorKind::GcOverhead => "gc-overhead",
            ErrorKind::MemoryTimeout => "memory-timeout",
        }
    }
}

/// One failure, as found in the log (correlation with memory comes later).
#[derive(Debug, Clone)]
pub struct ErrorEvent {
    pub kind: ErrorKind,
    /// 1-based line of the first line of the event.
    pub line: u64,
    /// Last line merged into it.
    pub last_line: u64,
    pub t: Option<f64>,
    pub message: String,
    /// Innermost `File "...", line N, in f` of a traceback.
    pub location: Option<String>,
    /// The line's process tag.
    pub tag: Option<String>,
    /// The process the OOM killer killed.
    pub killed_pid: Option<u32>,
    /// Its anonymous RSS as the kernel reported it.
    pub killed_anon_rss_bytes: Option<f64>,
    pub lines: usize,
}

/// What a line is to the error detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRole {
    /// An ordinary line (may carry a memory sample).
    Plain,
    /// Part of a traceback or an error line: carries no memory sample.
    Error,
}

pub struct ErrorDetector {
    patterns: Vec<(Regex, ErrorKind)>,
    killed: Regex,
    anon_rss: Regex,
    frame: Regex,
    traceback: Option<Traceback>,
    /// Events found, in order (the last may still absorb lines of its OOM report).
    pub events: Vec<ErrorEvent>,
}

struct Traceback {
    line: u64,
    t: Option<f64>,
    tag: Option<String>,
    location: Option<String>,
    lines: usize,
}

impl ErrorDetector {
    pub fn new() -> Self {
        let re = |s: &str| Regex::new(s).expect("valid regex");
        ErrorDetector {
            patterns: vec![
                (
                    re(
                        // The kernel's report, runtimes' echoes of it, and the manual guide's
                        // signatures: `Killed (OutOfMemory)`, `killed due to oom`, `OutOfMemory`.
                        r"(?i)out of memory: kill|\boom-kill|\bOOMKilled\b|memory cgroup out of memory|Perhaps out of memory\?|killed by the OOM killer|\bKilled\s+\(|killed due to oom|\bOutOfMemory",
                    ),
                    ErrorKind::OomKill,
                ),
                (re(r"\bMemoryError\b"), ErrorKind::MemoryError),
                (
                    re(
                        r"std::bad_alloc|(?i:cannot allocate memory)|\bENOMEM\b|\b(?:malloc|calloc|realloc)\(\)[^\n]*\bfail|(?i:failed to allocate)|(?i:memory allocation failed)",
                    ),
                    ErrorKind::AllocationFailure,
                ),
                (re(r"(?i)\bGC overhead\b.*\bexceeds?\b"), ErrorKind::GcOverhead),
                (
                    re(r"(?i)\bmemory\b.*\d+(?:\.\d+)?\s*[MG]i?B\b.*\btimeout after \d+(?:\.\d+)?\s*s\b"),
                    ErrorKind::MemoryTimeout,
                ),
            ],
            killed: re(r"(?i)killed process (\d+)|\(pid:(\d+)\) was sent SIGKILL"),
            anon_rss: re(r"anon-rss:(\d+)kB"),
            frame: re(r#"^\s+File "[^"]*", line \d+(?:, in .+)?$"#),
            traceback: None,
            events: Vec::new(),
        }
    }

    /// Feeds one line (1-based `line_no`, its time or the inherited one, its process tag).
    pub fn feed(&mut self, line_no: u64, t: Option<f64>, text: &str, tag: Option<&str>) -> LineRole {
        if let Some(tb) = self.traceback.as_mut() {
            let indented = text.starts_with(char::is_whitespace);
            if text.trim().is_empty() || indented {
                if self.frame.is_match(text) {
                    tb.location = Some(text.trim().to_string());
                }
                tb.lines += 1;
                return LineRole::Error;
            }
            if text.starts_with("During handling of the above exception")
                || text.starts_with("The above exception was the direct cause")
                || text.contains("Traceback (most recent call last):")
            {
                tb.lines += 1;
                return LineRole::Error;
            }
            // The exception line ends the traceback: it is the event, if it is about memory.
            let tb = self.traceback.take().expect("in a traceback");
            if let Some(kind) = self.kind_of(text) {
                self.push(ErrorEvent {
                    kind,
                    line: tb.line,
                    last_line: line_no,
                    t: tb.t,
                    message: truncate(text.trim()),
                    location: tb.location,
                    tag: tb.tag,
                    killed_pid: None,
                    killed_anon_rss_bytes: None,
                    lines: tb.lines + 1,
                });
                return LineRole::Error;
            }
            // Not a memory error: this line is an ordinary one.
        }
        if text.contains("Traceback (most recent call last):") {
            self.traceback =
                Some(Traceback { line: line_no, t, tag: tag.map(str::to_string), location: None, lines: 1 });
            return LineRole::Error;
        }
        let Some(kind) = self.kind_of(text) else { return LineRole::Plain };
        let killed_pid = self.killed.captures(text).and_then(|c| c.get(1).or(c.get(2))?.as_str().parse().ok());
        let killed_anon_rss_bytes =
            self.anon_rss.captures(text).and_then(|c| c[1].parse::<f64>().ok()).map(|kb| kb * 1024.0);
        if kind == ErrorKind::OomKill {
            if let Some(last) = self.events.last_mut().filter(|e| same_oom_report(e, line_no, t, killed_pid)) {
                last.last_line = line_no;
                last.lines += 1;
                if killed_pid.is_some() {
                    last.killed_pid = killed_pid;
                    last.killed_anon_rss_bytes = killed_anon_rss_bytes;
                    last.message = truncate(text.trim());
                }
                return LineRole::Error;
            }
        }
        self.push(ErrorEvent {
            kind,
            line: line_no,
            last_line: line_no,
            t,
            message: truncate(text.trim()),
            location: None,
            tag: tag.map(str::to_string),
            killed_pid,
            killed_anon_rss_bytes,
            lines: 1,
        });
        LineRole::Error
    }

    /// Ends the input: a traceback cut off at the end of the file is no event.
    pub fn finish(mut self) -> Vec<ErrorEvent> {
        self.traceback = None;
        self.events
    }

    fn kind_of(&self, text: &str) -> Option<ErrorKind> {
        self.patterns.iter().find(|(re, _)| re.is_match(text)).map(|(_, kind)| *kind)
    }

    fn push(&mut self, event: ErrorEvent) {
        self.events.push(event);
    }
}

impl Default for ErrorDetector {
    fn default() -> Self {
        Self::new()
    }
}

/// An OOM line belongs to the previous OOM event when it follows closely and does not name a
/// second killed process.
fn same_oom_report(prev: &ErrorEvent, line_no: u64, t: Option<f64>, killed_pid: Option<u32>) -> bool {
    let close_in_time = match (prev.t, t) {
        (Some(a), Some(b)) => (b - a).abs() <= OOM_MERGE_SECS,
        _ => true,
    };
    prev.kind == ErrorKind::OomKill
        && line_no - prev.last_line <= OOM_MERGE_LINES as u64
        && close_in_time
        && !(prev.killed_pid.is_some() && killed_pid.is_some() && prev.killed_pid != killed_pid)
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str]) -> Vec<ErrorEvent> {
        let mut d = ErrorDetector::new();
        for (i, line) in lines.iter().enumerate() {
            d.feed(i as u64 + 1, Some(i as f64), line, None);
        }
        d.finish()
    }

    #[test]
    fn one_event_per_traceback_with_its_location() {
        let events = run(&[
            "2026-11-23 10:00:00,000 ERROR app: request failed",
            "Traceback (most recent call last):",
            "  File \"/srv/app.py\", line 10, in handler",
            "    raise MemoryError(\"no\")",
            "  File \"/srv/lib.py\", line 3, in grow",
            "    buf = bytearray(n)",
            "MemoryError",
            "2026-11-23 10:00:01,000 INFO app: ok",
        ]);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, ErrorKind::MemoryError);
        assert_eq!((events[0].line, events[0].lines), (2, 6));
        assert_eq!(events[0].location.as_deref(), Some("File \"/srv/lib.py\", line 3, in grow"));
    }

    #[test]
    fn other_tracebacks_are_no_event_and_chained_ones_are_one() {
        let events = run(&["Traceback (most recent call last):", "  File \"a.py\", line 1, in f", "KeyError: 'x'"]);
        assert!(events.is_empty());
        let chained = run(&[
            "Traceback (most recent call last):",
            "  File \"a.py\", line 1, in f",
            "KeyError: 'x'",
            "",
            "During handling of the above exception, another exception occurred:",
        ]);
        assert!(chained.is_empty(), "{chained:?}"); // KeyError ended the first; no second traceback line
        let events = run(&[
            "Traceback (most recent call last):",
            "  File \"a.py\", line 1, in f",
            "OSError: [Errno 12] Cannot allocate memory",
        ]);
        assert_eq!(events[0].kind, ErrorKind::AllocationFailure);
    }

    #[test]
    fn kernel_oom_report_is_one_event_with_the_killed_process() {
        let events = run(&[
            "kernel: python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0",
            "kernel: oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),task=python3,pid=4242",
            "kernel: Memory cgroup out of memory: Killed process 4242 (python3) total-vm:2500000kB, anon-rss:2000000kB, file-rss:0kB",
            "kubelet: container app was OOMKilled",
            "kernel: Out of memory: Killed process 5000 (other) anon-rss:10kB",
        ]);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!((events[0].killed_pid, events[0].lines), (Some(4242), 4));
        assert_eq!(events[0].killed_anon_rss_bytes, Some(2_000_000.0 * 1024.0));
        assert_eq!(events[1].killed_pid, Some(5000));
    }

    #[test]
    fn allocation_failures() {
        for line in [
            "terminate called after throwing an instance of 'std::bad_alloc'",
            "mmap failed: ENOMEM",
            "malloc(): allocation of 4096 bytes failed",
            "OSError: [Errno 12] Cannot allocate memory",
        ] {
            assert_eq!(run(&[line])[0].kind, ErrorKind::AllocationFailure, "{line}");
        }
        assert!(run(&["malloc(): corrupted top size", "memory is fine"]).is_empty());
    }
}
