//! When a watched process's verdict turns to `leak`, the agent runs a bounded `leakprobe record`
//! on it (its own binary, as a child process, within an overhead budget) to name the leaking
//! line, and keeps the reports (JSON and a flame graph) in a directory with a retention limit.
//! Rate limits: one recording at a time, a cooldown per process, a cap per hour.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use tokio::process::{Child, Command};

#[derive(Debug, Clone)]
pub struct EscalationPolicy {
    pub reports_dir: PathBuf,
    pub record_duration: Duration,
    pub max_overhead_percent: f64,
    /// A process is recorded again only after this long.
    pub cooldown: Duration,
    pub max_per_hour: usize,
    /// Reports kept (oldest deleted first).
    pub max_reports: usize,
}

struct Running {
    child: Child,
    pid: u32,
    json: PathBuf,
    started: Instant,
}

pub struct Escalations {
    policy: EscalationPolicy,
    running: Option<Running>,
    last_by_pid: HashMap<u32, Instant>,
    started: Vec<Instant>,
    /// (result, count): written, failed, rate_limited.
    pub results: HashMap<&'static str, u64>,
}

/// Why a leak was not escalated now.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Busy,
    Cooldown,
    HourlyCap,
}

impl Escalations {
    pub fn new(policy: EscalationPolicy) -> Escalations {
        Escalations { policy, running: None, last_by_pid: HashMap::new(), started: Vec::new(), results: HashMap::new() }
    }

    /// Whether `pid` may be recorded now (pure decision, `now` given for tests).
    pub fn allowed(&self, pid: u32, now: Instant) -> Result<(), Refusal> {
        if self.running.is_some() {
            return Err(Refusal::Busy);
        }
        if self.last_by_pid.get(&pid).is_some_and(|t| now.duration_since(*t) < self.policy.cooldown) {
            return Err(Refusal::Cooldown);
        }
        let hour = Duration::from_secs(3600);
        if self.started.iter().filter(|t| now.duration_since(**t) < hour).count() >= self.policy.max_per_hour {
            return Err(Refusal::HourlyCap);
        }
        Ok(())
    }

    /// Starts recording `pid` if the limits allow; `name` goes into the report's file name.
    pub fn consider(&mut self, pid: u32, name: &str) -> Result<bool> {
        let now = Instant::now();
        match self.allowed(pid, now) {
            Ok(()) => {}
            Err(Refusal::Busy) => return Ok(false),
            Err(_) => {
                // Counted once per cooldown, not at every tick.
                if !self.last_by_pid.contains_key(&pid) {
                    *self.results.entry("rate_limited").or_default() += 1;
                    self.last_by_pid.insert(pid, now);
                }
                return Ok(false);
            }
        }
        private_dir(&self.policy.reports_dir)?;
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let json = self.policy.reports_dir.join(report_name(stamp, name, pid));
        let exe = std::env::current_exe().context("cannot find the leakprobe binary")?;
        let mut command = Command::new(exe);
        // Reports hold command lines, paths and source lines of other people's processes: the
        // recorder writes them for root's eyes only.
        // SAFETY: umask is async-signal-safe and touches nothing but the child's own state.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
        let child = command
            .args(["record", "--quiet", "--format", "json", "--pid", &pid.to_string()])
            .arg("--duration")
            .arg(humantime::format_duration(self.policy.record_duration).to_string())
            .arg("--max-overhead")
            .arg(self.policy.max_overhead_percent.to_string())
            .arg("--output")
            .arg(&json)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start leakprobe record")?;
        self.running = Some(Running { child, pid, json, started: now });
        self.last_by_pid.insert(pid, now);
        self.started.push(now);
        self.started.retain(|t| now.duration_since(*t) < Duration::from_secs(3600));
        Ok(true)
    }

    /// Collects a finished recording: renders its flame graph, applies retention. Returns the
    /// recorded PID and the report's path when one was written.
    pub fn poll(&mut self) -> Option<(u32, PathBuf)> {
        let running = self.running.as_mut()?;
        let status = match running.child.try_wait() {
            Ok(None) => {
                // A recording that overruns its duration by far is stuck: stop it.
                if running.started.elapsed() > self.policy.record_duration * 3 + Duration::from_secs(60) {
                    let _ = running.child.start_kill();
                }
                return None;
            }
            Ok(Some(status)) => status,
            Err(_) => {
                self.running = None;
                *self.results.entry("failed").or_default() += 1;
                return None;
            }
        };
        let running = self.running.take()?;
        if !status.success() || !running.json.exists() {
            eprintln!("leakprobe agent: recording PID {} failed ({status})", running.pid);
            *self.results.entry("failed").or_default() += 1;
            return None;
        }
        if let Err(e) = write_flame_graph(&running.json) {
            eprintln!("leakprobe agent: no flame graph for {}: {e:#}", running.json.display());
        }
        *self.results.entry("written").or_default() += 1;
        apply_retention(&self.policy.reports_dir, self.policy.max_reports);
        Some((running.pid, running.json))
    }

    pub fn forget(&mut self, pid: u32) {
        self.last_by_pid.remove(&pid);
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }
}

/// What a recording found, for the metrics: the leak pattern of each flagged stack with advice
/// (`pattern`, `file:line`, confidence), most confident first, at most `MAX_DIAGNOSES`.
pub fn diagnoses(json: &Path) -> Result<Vec<Diagnosis>> {
    let report = crate::report::load::from_path(json)?;
    let mut found: Vec<Diagnosis> = report
        .stacks
        .iter()
        .filter(|s| s.flagged)
        .filter_map(|s| s.advice.as_ref())
        .filter(|a| a.advice.leaks)
        .map(|a| Diagnosis {
            pattern: a.advice.pattern.as_str(),
            site: format!("{}:{}", a.file, a.advice.line),
            confidence: a.advice.confidence,
        })
        .collect();
    found.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    found.dedup_by(|a, b| a.pattern == b.pattern && a.site == b.site);
    found.truncate(MAX_DIAGNOSES);
    Ok(found)
}

/// Leak patterns kept per process: the metric's labels stay bounded.
pub const MAX_DIAGNOSES: usize = 3;

/// One leak pattern a recording found in a process.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    pub pattern: &'static str,
    /// `file:line` of the construct, as the target names the file.
    pub site: String,
    pub confidence: f64,
}

/// Writes `<report>.svg`, a flame graph of the report's live memory (`report::flamegraph`: the
/// growing stacks, or all of them when none grows), next to the JSON report.
pub fn write_flame_graph(json: &Path) -> Result<PathBuf> {
    let report = crate::report::load::from_path(json)?;
    let svg = json.with_extension("svg");
    let drawn = crate::report::flamegraph::render(&report, &crate::report::flamegraph::Style::Standalone)?;
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&svg)
        .and_then(|mut f| f.write_all(drawn.as_bytes()))
        .with_context(|| format!("cannot write {}", svg.display()))?;
    Ok(svg)
}

/// Creates the reports directory (and its parents), or takes it over: mode 0700 either way.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))
}

/// `leakprobe-<unix secs>-<name>-<pid>.json`: the only names retention ever deletes.
fn report_name(stamp: u64, name: &str, pid: u32) -> String {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(80).collect();
    format!("leakprobe-{stamp}-{safe}-{pid}.json")
}

/// Whether `file_name` is a report name of ours (`report_name`).
fn is_report_name(file_name: &str) -> bool {
    let Some(middle) = file_name.strip_prefix("leakprobe-").and_then(|n| n.strip_suffix(".json")) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match (middle.split_once('-'), middle.rsplit_once('-')) {
        (Some((stamp, _)), Some((_, pid))) => digits(stamp) && digits(pid),
        _ => false,
    }
}

/// Keeps the newest `max_reports` reports (and their flame graphs), deleting the rest. Only
/// regular files with names leakprobe gives its reports are considered: never anybody else's
/// `*.json`, never a link.
pub fn apply_retention(dir: &Path, max_reports: usize) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut reports: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(is_report_name))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter_map(|p| Some((fs::symlink_metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    reports.sort();
    let excess = reports.len().saturating_sub(max_reports);
    for (_, path) in reports.into_iter().take(excess) {
        let _ = fs::remove_file(path.with_extension("svg"));
        let _ = fs::remove_file(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(dir: &Path) -> EscalationPolicy {
        EscalationPolicy {
            reports_dir: dir.to_path_buf(),
            record_duration: Duration::from_secs(60),
            max_overhead_percent: 5.0,
            cooldown: Duration::from_secs(3600),
            max_per_hour: 2,
            max_reports: 2,
        }
    }

    #[test]
    fn report_names_are_ours_and_recognised() {
        let name = report_name(1_700_000_000, "shop-api-1-python app.py", 4242);
        assert_eq!(name, "leakprobe-1700000000-shop-api-1-python_app_py-4242.json");
        assert!(is_report_name(&name));
        for other in ["1700000000-x-1.json", "leakprobe-.json", "leakprobe-1-x-.json", "leakprobe-1-x-2.svg"] {
            assert!(!is_report_name(other), "{other}");
        }
    }

    #[test]
    fn the_reports_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("leakprobe-private-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir.join("reports")).unwrap();
        private_dir(&dir).unwrap();
        for d in [dir.join("reports"), dir.clone()] {
            assert_eq!(fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "{}", d.display());
        }
        fs::write(dir.join("r.json"), crate::report::json::render(&crate::report::sample::leaking())).unwrap();
        let svg = write_flame_graph(&dir.join("r.json")).unwrap();
        assert_eq!(fs::metadata(svg).unwrap().permissions().mode() & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rate_limits_cooldown_and_hourly_cap() {
        let mut e = Escalations::new(policy(Path::new("/nonexistent")));
        let now = Instant::now();
        assert_eq!(e.allowed(1, now), Ok(()));
        e.last_by_pid.insert(1, now);
        e.started.push(now);
        assert_eq!(e.allowed(1, now + Duration::from_secs(60)), Err(Refusal::Cooldown));
        assert_eq!(e.allowed(2, now), Ok(()));
        e.started.push(now);
        assert_eq!(e.allowed(2, now + Duration::from_secs(60)), Err(Refusal::HourlyCap));
        assert_eq!(e.allowed(2, now + Duration::from_secs(3601)), Ok(()));
    }

    #[test]
    fn retention_keeps_the_newest_reports_with_their_graphs() {
        let dir = std::env::temp_dir().join(format!("leakprobe-retention-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let json = dir.join(report_name(1_000 + i as u64, name, 7));
            fs::write(&json, "{}").unwrap();
            fs::write(json.with_extension("svg"), "<svg/>").unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            fs::File::options().write(true).open(&json).unwrap().set_modified(t).unwrap();
        }
        // Somebody else's files, older than all of ours: never touched.
        for other in ["old.json", "leakprobe-x-a-7.json", "leakprobe-5-a-7.json.bak"] {
            fs::write(dir.join(other), "{}").unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
            fs::File::options().write(true).open(dir.join(other)).unwrap().set_modified(t).unwrap();
        }
        apply_retention(&dir, 2);
        let mut left: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "leakprobe-1001-b-7.json",
                "leakprobe-1001-b-7.svg",
                "leakprobe-1002-c-7.json",
                "leakprobe-1002-c-7.svg",
                "leakprobe-5-a-7.json.bak",
                "leakprobe-x-a-7.json",
                "old.json"
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_leak_patterns_of_a_report_are_read_back() {
        let dir = std::env::temp_dir().join(format!("leakprobe-diagnoses-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("r.json");
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/reports/fastapi-leak.json"), &json)
            .unwrap();
        let found = diagnoses(&json).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // Two flagged stacks, one construct: one diagnosis, at its most confident.
        assert_eq!(
            found,
            vec![Diagnosis { pattern: "unbounded_cache", site: "/srv/demo/app.py:30".into(), confidence: 0.8 }]
        );
    }

    #[test]
    fn a_flame_graph_is_rendered_from_a_report() {
        let dir = std::env::temp_dir().join(format!("leakprobe-flame-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let json = dir.join("r.json");
        fs::write(&json, crate::report::json::render(&crate::report::sample::leaking())).unwrap();
        let svg = fs::read_to_string(write_flame_graph(&json).unwrap()).unwrap();
        assert!(svg.contains("<svg") && svg.contains("leak_async (main.py:18)"), "{svg}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
