//! One log line → its timestamp, its memory sample and its process tag (pure functions).
//!
//! Time parsing uses `jiff` rather than `chrono`: it validates civil dates strictly (2026-02-30 and
//! hour 25 are errors, not silently normalised), handles fixed UTC offsets without a time-zone
//! database (we build it with `default-features = false`), and comes from the author of `regex`,
//! which does the text matching here. The regexes find the fields; jiff checks and converts them.

use jiff::{civil::DateTime, tz::Offset, Timestamp};
use regex::{Captures, Regex};

pub const KIB: f64 = 1024.0;
pub const MIB: f64 = 1024.0 * 1024.0;
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The timestamp of one line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeField {
    /// Seconds since the Unix epoch (a zone-less time is read as UTC).
    At(f64),
    /// A timestamp that names an impossible instant (2026-02-30, 25:00, ...).
    Invalid,
    /// No timestamp on the line.
    Missing,
}

/// Timestamps in the formats services write, anywhere in the line (leftmost wins): ISO 8601 /
/// RFC 3339 (`T` or space, `.` or `,` fractions as Python's logging writes, optional zone),
/// syslog's year-less `Nov 23 10:00:00`, and epoch seconds (or milliseconds) at the start of the
/// line or after a `ts`/`time`/`timestamp` key.
pub struct TimestampParser {
    re: Regex,
    /// Year given to syslog timestamps; advanced when the month wraps (December → January).
    syslog_year: i16,
    last_syslog_month: Option<i8>,
}

const TIMESTAMP: &str = r#"(?x)
    (?P<iso>\b(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})[T\x20](?P<h>\d{1,2}):(?P<mi>\d{2}):(?P<s>\d{2})
        (?:[.,](?P<frac>\d{1,9}))?
        (?P<tz>\x20?(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)\b)?)
  | (?P<sys>\b(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\x20{1,2}(?P<sd>\d{1,2})
        \x20(?P<sh>\d{1,2}):(?P<smi>\d{2}):(?P<ss>\d{2})(?:\.(?P<sfrac>\d{1,9}))?\b)
  | (?:^\s*\[?(?P<e1>\d{10}(?:\.\d{1,9})?|\d{13})\]?(?:[\s,;:|]|$))
  | (?:\b(?:ts|time|timestamp|epoch|created)["']?\s*[:=]\s*["']?(?P<e2>\d{10}(?:\.\d{1,9})?|\d{13})\b)
"#;

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

impl TimestampParser {
    /// `syslog_year`: the year of year-less syslog timestamps (the current year when `None`).
    pub fn new(syslog_year: Option<i16>) -> Self {
        let year = syslog_year.unwrap_or_else(|| Offset::UTC.to_datetime(Timestamp::now()).year());
        TimestampParser { re: Regex::new(TIMESTAMP).expect("valid regex"), syslog_year: year, last_syslog_month: None }
    }

    pub fn parse(&mut self, line: &str) -> TimeField {
        let Some(c) = self.re.captures(line) else { return TimeField::Missing };
        let result = if c.name("iso").is_some() {
            iso(&c)
        } else if c.name("sys").is_some() {
            self.syslog(&c)
        } else {
            epoch(c.name("e1").or(c.name("e2")).map_or("", |m| m.as_str()))
        };
        result.map_or(TimeField::Invalid, TimeField::At)
    }

    fn syslog(&mut self, c: &Captures) -> Option<f64> {
        let month = MONTHS.iter().position(|m| *m == &c["mon"])? as i8 + 1;
        if self.last_syslog_month.is_some_and(|last| month + 6 < last) {
            self.syslog_year += 1; // December → January: the log crossed a new year
        }
        self.last_syslog_month = Some(month);
        let (d, h, mi, s) = (num(&c["sd"])?, num(&c["sh"])?, num(&c["smi"])?, num(&c["ss"])?);
        let dt =
            DateTime::new(self.syslog_year, month, d, h, mi, s, nanos(c.name("sfrac").map(|m| m.as_str()))?).ok()?;
        to_secs(Offset::UTC, dt)
    }
}

fn iso(c: &Captures) -> Option<f64> {
    let year: i16 = c["y"].parse().ok()?;
    let dt = DateTime::new(
        year,
        num(&c["mo"])?,
        num(&c["d"])?,
        num(&c["h"])?,
        num(&c["mi"])?,
        num(&c["s"])?,
        nanos(c.name("frac").map(|m| m.as_str()))?,
    )
    .ok()?;
    let offset = match c.name("tz").map(|m| m.as_str().trim()) {
        None | Some("Z" | "UTC" | "GMT") => Offset::UTC,
        Some(tz) => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let digits: String = tz[1..].chars().filter(char::is_ascii_digit).collect();
            let hours: i32 = digits.get(..2)?.parse().ok()?;
            let minutes: i32 = digits.get(2..).filter(|m| !m.is_empty()).map_or(Some(0), |m| m.parse().ok())?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            Offset::from_seconds(sign * (hours * 3600 + minutes * 60)).ok()?
        }
    };
    to_secs(offset, dt)
}

fn epoch(text: &str) -> Option<f64> {
    let value: f64 = text.parse().ok()?;
    Some(if text.len() == 13 && !text.contains('.') { value / 1000.0 } else { value })
}

fn num(text: &str) -> Option<i8> {
    text.parse().ok()
}

/// Nanoseconds of a fraction's digits (`"123"` → 123_000_000).
fn nanos(frac: Option<&str>) -> Option<i32> {
    let Some(frac) = frac else { return Some(0) };
    let padded = format!("{frac:0<9}");
    padded.get(..9)?.parse().ok()
}

fn to_secs(offset: Offset, dt: DateTime) -> Option<f64> {
    let ts = offset.to_timestamp(dt).ok()?;
    Some(ts.as_second() as f64 + f64::from(ts.subsec_nanosecond()) / 1e9)
}

/// `2026-11-23 10:00:00` (UTC) for text output.
pub fn format_time_short(t: f64) -> String {
    match timestamp(t) {
        Some(ts) => {
            let dt = Offset::UTC.to_datetime(ts);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                dt.year(),
                dt.month(),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second()
            )
        }
        None => format!("{t:.0}"),
    }
}

/// RFC 3339 (`2026-11-23T10:00:00Z`) for JSON output.
pub fn format_time_rfc3339(t: f64) -> String {
    timestamp(t).map_or_else(|| format!("{t}"), |ts| ts.to_string())
}

/// To the microsecond: an f64 of epoch seconds holds no finer digits.
fn timestamp(t: f64) -> Option<Timestamp> {
    let micros = (t * 1e6).round();
    if !micros.is_finite() {
        return None;
    }
    let micros = micros as i64;
    Timestamp::new(micros.div_euclid(1_000_000), (micros.rem_euclid(1_000_000) * 1000) as i32).ok()
}

/// Why a memory value was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Malformed {
    /// The value after the key is not a number (`RSS: N/A`, `RSS: 12.3.4MB`, `rss=`).
    UnparsableSize,
    /// A number with a unit glued to it that is no size unit (`512XB`).
    UnknownUnit,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::UnparsableSize => "unparsable-size",
            Malformed::UnknownUnit => "unknown-unit",
        }
    }
}

/// Bytes per unit (case-insensitive); K/M/G/T are binary, as in every leakprobe output.
pub fn unit_bytes(unit: &str) -> Option<f64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" | "byte" | "bytes" => 1.0,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => GIB * 1024.0,
        _ => return None,
    })
}

/// Reads a size at the start of `text`: a number, then optionally a unit (glued, or after one
/// space). A bare number is in `default_unit` bytes. Returns the bytes and the length consumed.
pub fn parse_size_prefix(text: &str, default_unit: f64) -> Result<(f64, usize), Malformed> {
    let bytes = text.as_bytes();
    let digits_end = |from: usize| from + bytes[from..].iter().take_while(|b| b.is_ascii_digit()).count();
    let int_end = digits_end(0);
    if int_end == 0 {
        return Err(Malformed::UnparsableSize);
    }
    let mut end = int_end;
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end = digits_end(end + 1);
    }
    if bytes.get(end).is_some_and(|&b| b == b'.' || b == b',' || b == b'_')
        && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)
    {
        return Err(Malformed::UnparsableSize); // 12.3.4, 1,234 or 1_000: not one number
    }
    let value: f64 = text[..end].parse().map_err(|_| Malformed::UnparsableSize)?;
    let letters = |from: usize| from + bytes[from..].iter().take_while(|b| b.is_ascii_alphabetic()).count();
    let glued = letters(end);
    if glued > end {
        let unit = unit_bytes(&text[end..glued]).ok_or(Malformed::UnknownUnit)?;
        if bytes.get(glued).is_some_and(u8::is_ascii_digit) {
            return Err(Malformed::UnparsableSize); // 0x1f, 12M3
        }
        return finite(value * unit, glued);
    }
    if bytes.get(end).is_some_and(u8::is_ascii_digit) {
        return Err(Malformed::UnparsableSize);
    }
    // One space, then a word: a unit if it is one, else the next field (`rss=1234 vms=...`).
    if bytes.get(end) == Some(&b' ') {
        let word_end = letters(end + 1);
        if word_end > end + 1 && !bytes.get(word_end).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            if let Some(unit) = unit_bytes(&text[end + 1..word_end]) {
                return finite(value * unit, word_end);
            }
        }
    }
    finite(value * default_unit, end)
}

fn finite(bytes: f64, consumed: usize) -> Result<(f64, usize), Malformed> {
    if bytes.is_finite() {
        Ok((bytes, consumed))
    } else {
        Err(Malformed::UnparsableSize)
    }
}

/// A whole string as a size (`2GiB`, `512 MB`, `1048576`), for `--limit`.
pub fn parse_size(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    match parse_size_prefix(trimmed, 1.0) {
        Ok((bytes, used)) if used == trimmed.len() => Ok(bytes),
        _ => Err(format!("{text:?} is not a size (examples: 2GiB, 512MB, 1048576)")),
    }
}

/// What the memory extractor found on a line.
#[derive(Debug, Clone, PartialEq)]
pub enum MemoryField {
    /// Bytes, and the key it came after (`rss`, `memory`, ... or `value` for `--pattern`).
    Value {
        bytes: f64,
        key: String,
    },
    Malformed(Malformed),
    Missing,
}

/// Finds the memory sample of a line: by default a key (`RSS`, `rss`, `memory`, `mem`,
/// `resident`, optionally `_kb`/`_mb`/`_bytes` and `usage`/`used`) then `:` or `=` and a size;
/// or a user regex with a named group `value` (and optionally `unit`).
pub struct MemoryExtractor {
    re: Regex,
    custom: bool,
}

const DEFAULT_MEMORY: &str = r#"(?i)(?:^|[^\w-])(?P<key>rss|resident|memory|mem)(?P<suffix>_kb|_kib|_mb|_mib|_bytes|_b)?(?:[\x20_](?:usage|used|rss))?["']?\s*[:=]\s*["']?"#;

impl MemoryExtractor {
    pub fn new(pattern: Option<&str>) -> Result<Self, String> {
        let Some(pattern) = pattern else {
            return Ok(MemoryExtractor { re: Regex::new(DEFAULT_MEMORY).expect("valid regex"), custom: false });
        };
        let re = Regex::new(pattern).map_err(|e| format!("invalid --pattern: {}", e.to_string().replace('\n', " ")))?;
        if !re.capture_names().any(|n| n == Some("value")) {
            return Err("--pattern needs a named group `value`, e.g. 'heap=(?P<value>\\d+)(?P<unit>\\w+)'".into());
        }
        Ok(MemoryExtractor { re, custom: true })
    }

    pub fn extract(&self, line: &str) -> MemoryField {
        let Some(c) = self.re.captures(line) else { return MemoryField::Missing };
        let parsed = if self.custom { custom_value(&c) } else { default_value(line, &c) };
        match parsed {
            Ok((bytes, key)) => MemoryField::Value { bytes, key },
            Err(reason) => MemoryField::Malformed(reason),
        }
    }
}

fn default_value(line: &str, c: &Captures) -> Result<(f64, String), Malformed> {
    let key = c["key"].to_ascii_lowercase();
    let unit = match c.name("suffix").map(|m| m.as_str().to_ascii_lowercase()).as_deref() {
        Some("_kb" | "_kib") => KIB,
        Some("_mb" | "_mib") => MIB,
        _ => 1.0,
    };
    let rest = &line[c.get(0).expect("whole match").end()..];
    parse_size_prefix(rest, unit).map(|(bytes, _)| (bytes, key))
}

fn custom_value(c: &Captures) -> Result<(f64, String), Malformed> {
    let value = c.name("value").map_or("", |m| m.as_str()).trim();
    let unit = c.name("unit").map(|m| m.as_str().trim()).filter(|u| !u.is_empty());
    let bytes = match unit {
        Some(unit) => {
            let per = unit_bytes(unit).ok_or(Malformed::UnknownUnit)?;
            let (number, used) = parse_size_prefix(value, 1.0)?;
            if used != value.len() {
                return Err(Malformed::UnparsableSize);
            }
            number * per
        }
        None => match parse_size_prefix(value, 1.0)? {
            (bytes, used) if used == value.len() => bytes,
            _ => return Err(Malformed::UnparsableSize),
        },
    };
    finite(bytes, 0).map(|(b, _)| (b, "value".to_string()))
}

/// The worker/process tag of a line: `[pid 1234]`, `pid=1234`, gunicorn's `[1234]`, syslog's
/// `app[1234]:` or `worker=3`. Lines of different tags form different series.
pub struct TagExtractor {
    re: Regex,
}

const TAG: &str = r#"(?x)
    \[pid[\x20=:]?\s*(?P<p1>\d+)\]
  | \bpid[=:]\s*(?P<p2>\d+)\b
  | \b(?P<prog>[A-Za-z_][\w.-]*)\[(?P<p3>\d+)\]:
  | (?:^|\s)\[(?P<p4>\d{1,7})\](?:\s|$)
  | \bworker(?:[=:\#-]|\x20\#?)(?P<w>\d+)\b
  | \bworker=(?P<wn>[A-Za-z][\w.-]*)
"#;

impl TagExtractor {
    pub fn new() -> Self {
        TagExtractor { re: Regex::new(TAG).expect("valid regex") }
    }

    pub fn extract(&self, line: &str) -> Option<String> {
        let c = self.re.captures(line)?;
        if let Some(pid) = c.name("p1").or(c.name("p2")).or(c.name("p4")) {
            return Some(format!("pid {}", pid.as_str()));
        }
        if let (Some(prog), Some(pid)) = (c.name("prog"), c.name("p3")) {
            return Some(format!("{}[{}]", prog.as_str(), pid.as_str()));
        }
        c.name("w").or(c.name("wn")).map(|w| format!("worker {}", w.as_str()))
    }
}

impl Default for TagExtractor {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `--process NAME` selects the series tagged `tag`: the whole tag (`pid 1234`,
/// `app[1234]`) or one of its parts (`1234`, `app`).
pub fn tag_matches(tag: &str, filter: &str) -> bool {
    let filter = filter.trim();
    tag == filter || tag.split([' ', '[', ']']).any(|part| !part.is_empty() && part == filter)
}

/// The process id in a tag (`pid 1234` and `app[1234]` → 1234).
pub fn tag_pid(tag: &str) -> Option<u32> {
    if let Some(pid) = tag.strip_prefix("pid ") {
        return pid.parse().ok();
    }
    tag.strip_suffix(']')?.rsplit_once('[')?.1.parse().ok()
}
