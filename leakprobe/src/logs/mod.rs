//! `leakprobe logs FILE`: memory growth, spikes and memory errors from an application's logs.
//!
//! The file is streamed line by line (bounded line length, invalid UTF-8 read lossily) and only
//! samples and error events are kept. Each line gives (`parse`) a timestamp, a memory sample and
//! a process tag; `errors` finds OOM kills, `MemoryError`s and allocation failures (one event per
//! traceback or OOM report); `analyze` judges each tag's series with the project's own statistics
//! (`verdict::classify` on `trend`), finds spikes and correlates each error with the memory level
//! before it; `render` prints text, and the report serialises to the JSON of docs/logs.md.
//! Malformed lines are skipped and counted by reason, never fatal.

pub mod analyze;
pub mod errors;
pub mod parse;
pub mod render;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use serde::Serialize;

use self::{
    analyze::{analyze_series, correlate, ErrorReport, Sample, Series, SeriesReport},
    errors::{ErrorDetector, LineRole},
    parse::{tag_matches, MemoryExtractor, MemoryField, TagExtractor, TimeField, TimestampParser},
};
use crate::verdict::{VerdictConfig, VerdictKind};

pub const SCHEMA_VERSION: u32 = 1;
/// Longer lines are cut here (the rest is read and dropped): binary junk cannot blow memory up.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Error events kept in the report (all are counted).
pub const MAX_ERRORS: usize = 1000;
/// Exit status with `--fail-on-leak` when a series leaks (as `record`).
pub const EXIT_LEAK: u8 = 3;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogsFormat {
    Text,
    Json,
}

/// `leakprobe logs` arguments.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The log file to read.
    pub file: PathBuf,
    #[arg(long, short, value_enum, default_value_t = LogsFormat::Text)]
    pub format: LogsFormat,
    /// Regex of a memory sample, with a named group `value` and optionally `unit`
    /// (default: RSS/rss/memory/mem/resident followed by `:` or `=` and a size).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Only the series of this worker/process tag (`1234`, `pid 1234`, `worker 3`, a syslog
    /// program name).
    #[arg(long)]
    pub process: Option<String>,
    /// Year of syslog timestamps, which have none (default: the current year).
    #[arg(long)]
    pub year: Option<i16>,
    /// Memory limit to project the time to (e.g. 2GiB).
    #[arg(long, value_parser = parse::parse_size)]
    pub limit: Option<f64>,
    /// Exit with status 3 when a series leaks (to gate CI).
    #[arg(long)]
    pub fail_on_leak: bool,
}

/// What to look for (the pure API's input besides the text).
#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    pub pattern: Option<String>,
    pub process: Option<String>,
    pub year: Option<i16>,
    pub limit_bytes: Option<f64>,
}

/// The overall verdict: the leaking series with the fastest growth, else the longest series.
#[derive(Debug, Clone, Serialize)]
pub struct OverallVerdict {
    pub verdict: VerdictKind,
    /// Tag of the series it comes from (`null`: untagged lines, or no series at all).
    pub series: Option<String>,
    pub reason: String,
    pub growth_bytes_per_sec: f64,
    pub growth_mb_per_min: f64,
    pub growth_mb_per_hour: f64,
    pub confidence: f64,
    pub mann_kendall_p: Option<f64>,
    pub duration_seconds: f64,
    pub time_to_limit_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LineCounts {
    pub total: u64,
    pub samples: u64,
    /// Lines with no timestamp of their own, given the previous line's time.
    pub inherited_time: u64,
    /// Lines that were not valid UTF-8 (read with replacement characters).
    pub invalid_utf8: u64,
    /// Lines longer than 64 KiB (the rest of the line ignored).
    pub truncated: u64,
    /// Samples of other processes than `--process`.
    pub filtered_out: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SkipCounts {
    pub total: u64,
    /// `unparsable-size`, `unknown-unit`, `invalid-timestamp`, `no-timestamp`.
    pub by_reason: BTreeMap<String, u64>,
}

impl SkipCounts {
    fn add(&mut self, reason: &str) {
        self.total += 1;
        *self.by_reason.entry(reason.to_string()).or_default() += 1;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LogsReport {
    pub schema_version: u32,
    pub leakprobe_version: &'static str,
    pub file: String,
    pub verdict: OverallVerdict,
    pub limit_bytes: Option<f64>,
    pub series: Vec<SeriesReport>,
    pub errors: Vec<ErrorReport>,
    pub errors_total: usize,
    pub lines: LineCounts,
    pub skipped: SkipCounts,
}

impl LogsReport {
    pub fn is_leak(&self) -> bool {
        self.series.iter().any(|s| s.verdict.kind == VerdictKind::Leak)
    }
}

/// The `logs` subcommand: exit 0, 3 with `--fail-on-leak` on a leak; errors (unreadable file,
/// bad `--pattern`) are returned for main to print on one line (exit 1).
pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let opts = LogsOptions { pattern: args.pattern, process: args.process, year: args.year, limit_bytes: args.limit };
    let report = analyze_file(&args.file, &opts)?;
    let rendered = match args.format {
        LogsFormat::Text => render::text(&report),
        LogsFormat::Json => render::json(&report),
    };
    print!("{rendered}");
    Ok(if args.fail_on_leak && report.is_leak() { ExitCode::from(EXIT_LEAK) } else { ExitCode::SUCCESS })
}

pub fn analyze_file(path: &Path, opts: &LogsOptions) -> anyhow::Result<LogsReport> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    analyze_reader(BufReader::new(file), &path.display().to_string(), opts)
}

/// Everything a pass over the lines keeps.
struct Collector {
    times: TimestampParser,
    memory: MemoryExtractor,
    tags: TagExtractor,
    errors: ErrorDetector,
    process: Option<String>,
    series: Vec<Series>,
    series_index: HashMap<Option<String>, usize>,
    last_time: Option<f64>,
    lines: LineCounts,
    skipped: SkipCounts,
}

impl Collector {
    fn line(&mut self, line_no: u64, text: &str) {
        let text = text.trim_end_matches(['\n', '\r']);
        let time = match self.times.parse(text) {
            TimeField::Invalid => return self.skipped.add("invalid-timestamp"),
            TimeField::At(t) => {
                self.last_time = Some(t);
                Some(t)
            }
            TimeField::Missing => {
                if self.last_time.is_some() && !text.trim().is_empty() {
                    self.lines.inherited_time += 1;
                }
                self.last_time
            }
        };
        let tag = self.tags.extract(text);
        if self.errors.feed(line_no, time, text, tag.as_deref()) == LineRole::Error || is_kernel_line(text) {
            return; // tracebacks, error lines and kernel reports carry no application samples
        }
        let (bytes, key) = match self.memory.extract(text) {
            MemoryField::Missing => return,
            MemoryField::Malformed(reason) => return self.skipped.add(reason.as_str()),
            MemoryField::Value { bytes, key } => (bytes, key),
        };
        let Some(t) = time else { return self.skipped.add("no-timestamp") };
        if let Some(filter) = &self.process {
            if !tag.as_deref().is_some_and(|tag| tag_matches(tag, filter)) {
                self.lines.filtered_out += 1;
                return;
            }
        }
        self.lines.samples += 1;
        let index = *self.series_index.entry(tag.clone()).or_insert_with(|| {
            let what = if key.starts_with("rss") { "RSS" } else { "memory" };
            self.series.push(Series { tag, what: what.into(), samples: Vec::new() });
            self.series.len() - 1
        });
        self.series[index].samples.push(Sample { t, bytes, line: line_no });
    }
}

/// Kernel log lines (`kernel:` in syslog, dmesg's `[ 123.456]`): their sizes are about the
/// machine or the OOM report, not the application's samples.
fn is_kernel_line(text: &str) -> bool {
    text.contains(" kernel: ") || text.trim_start().starts_with("kernel:")
}

/// The pure API: reads `reader` to its end and analyses it.
pub fn analyze_reader<R: BufRead>(mut reader: R, name: &str, opts: &LogsOptions) -> anyhow::Result<LogsReport> {
    let mut c = Collector {
        times: TimestampParser::new(opts.year),
        memory: MemoryExtractor::new(opts.pattern.as_deref()).map_err(anyhow::Error::msg)?,
        tags: TagExtractor::new(),
        errors: ErrorDetector::new(),
        process: opts.process.clone(),
        series: Vec::new(),
        series_index: HashMap::new(),
        last_time: None,
        lines: LineCounts::default(),
        skipped: SkipCounts::default(),
    };
    let mut buf = Vec::with_capacity(1024);
    let mut line_no = 0u64;
    while let Some(truncated) =
        read_line_bounded(&mut reader, &mut buf, MAX_LINE_BYTES).with_context(|| format!("cannot read {name}"))?
    {
        line_no += 1;
        c.lines.total += 1;
        c.lines.truncated += u64::from(truncated);
        match std::str::from_utf8(&buf) {
            Ok(text) => c.line(line_no, text),
            Err(_) => {
                c.lines.invalid_utf8 += 1;
                let text = String::from_utf8_lossy(&buf).into_owned();
                c.line(line_no, &text);
            }
        }
    }
    let Collector { errors, process, series, lines, skipped, .. } = c;
    let mut events = errors.finish();
    if let Some(filter) = &process {
        // An error tagged with another process (or killing one) is not this process's.
        events.retain(|e| {
            let tags: Vec<String> = e.tag.iter().cloned().chain(e.killed_pid.map(|p| format!("pid {p}"))).collect();
            tags.is_empty() || tags.iter().any(|t| tag_matches(t, filter))
        });
    }
    let cfg = VerdictConfig::default();
    let series_reports: Vec<SeriesReport> = series.iter().map(|s| analyze_series(s, opts.limit_bytes, &cfg)).collect();
    let errors_total = events.len();
    let error_reports = events.iter().take(MAX_ERRORS).map(|e| correlate(e, &series)).collect();
    Ok(LogsReport {
        schema_version: SCHEMA_VERSION,
        leakprobe_version: env!("CARGO_PKG_VERSION"),
        file: name.to_string(),
        verdict: overall(&series_reports),
        limit_bytes: opts.limit_bytes,
        series: series_reports,
        errors: error_reports,
        errors_total,
        lines,
        skipped,
    })
}

fn overall(series: &[SeriesReport]) -> OverallVerdict {
    let fastest_leak = series
        .iter()
        .filter(|s| s.verdict.kind == VerdictKind::Leak)
        .max_by(|a, b| a.verdict.growth_bytes_per_sec.total_cmp(&b.verdict.growth_bytes_per_sec));
    let chosen = fastest_leak.or_else(|| series.iter().max_by_key(|s| s.samples));
    match chosen {
        Some(s) => OverallVerdict {
            verdict: s.verdict.kind,
            series: s.tag.clone(),
            reason: s.verdict.reason.clone(),
            growth_bytes_per_sec: s.verdict.growth_bytes_per_sec,
            growth_mb_per_min: s.growth_mb_per_min,
            growth_mb_per_hour: s.growth_mb_per_hour,
            confidence: s.verdict.confidence,
            mann_kendall_p: s.mann_kendall_p,
            duration_seconds: s.duration_seconds,
            time_to_limit_seconds: s.time_to_limit_seconds,
        },
        None => OverallVerdict {
            verdict: VerdictKind::Inconclusive,
            series: None,
            reason: "no memory samples found".into(),
            growth_bytes_per_sec: 0.0,
            growth_mb_per_min: 0.0,
            growth_mb_per_hour: 0.0,
            confidence: 0.0,
            mann_kendall_p: None,
            duration_seconds: 0.0,
            time_to_limit_seconds: None,
        },
    }
}

/// Reads one line (without its `\n`) into `buf`, keeping at most `max` bytes of it and dropping
/// the rest. `None` at the end of the input; else whether the line was cut.
pub fn read_line_bounded<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut truncated = false;
    let mut read_any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(read_any.then_some(truncated));
        }
        read_any = true;
        let (part, used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        truncated |= part.len() > room;
        buf.extend_from_slice(&part[..part.len().min(room)]);
        reader.consume(used);
        if done {
            return Ok(Some(truncated));
        }
    }
}

/// Reads a whole in-memory log (tests, small inputs).
pub fn analyze_bytes(bytes: &[u8], opts: &LogsOptions) -> anyhow::Result<LogsReport> {
    analyze_reader(bytes, "<memory>", opts)
}
