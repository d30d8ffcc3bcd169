//! `leakprobe scan PATH`: the classifier over a code base, the static check for code review.
//!
//! Walks PATH for `*.py` files (a single file is scanned as is), skipping virtualenvs (any
//! directory with a `pyvenv.cfg`), `site-packages`, VCS and cache directories unless
//! `--include-vendored`, and reports the leak patterns found, most confident first. Symbolic
//! links are not followed (no cycles, no scanning outside PATH); unreadable files are counted.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use serde::Serialize;

use super::{
    classify::{analyze, Analysis},
    runs::{Hints, Runs},
    Advice, Finding,
};

pub const SCHEMA_VERSION: u32 = 1;
/// Exit status with `--fail-on-findings` when something is found (as `record --fail-on-leak`).
pub const EXIT_FINDINGS: u8 = 3;
/// Larger files are generated code or data, not something to review: skipped and counted.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Directories that hold other people's code or tool state.
const SKIPPED_DIRS: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    "site-packages",
    "dist-packages",
    "node_modules",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".eggs",
];

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Also scan virtualenvs, site-packages and the directories of SKIPPED_DIRS.
    pub include_vendored: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub schema_version: u32,
    pub root: PathBuf,
    pub files_scanned: usize,
    /// Files that could not be read, or larger than MAX_FILE_BYTES.
    pub files_skipped: usize,
    /// Most confident first.
    pub findings: Vec<Finding>,
}

/// Most confident first, then by file and line (a stable order for review and tests).
pub fn rank(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.advice
            .confidence
            .total_cmp(&a.advice.confidence)
            .then_with(|| a.path.cmp(&b.path))
            .then(a.advice.line.cmp(&b.advice.line))
    });
}

/// Scans `root` (a directory or one file). Calls are followed across files: a function called
/// from a request handler in another file runs per request (three rounds, for chains such as
/// route -> service -> repository).
pub fn scan(root: &Path, options: &ScanOptions) -> anyhow::Result<ScanReport> {
    let meta = fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        collect(root, options, &mut files);
    } else if meta.is_file() {
        files.push(root.to_path_buf());
    } else {
        anyhow::bail!("{} is not a file or a directory", root.display());
    }
    files.sort();
    let mut report = ScanReport {
        schema_version: SCHEMA_VERSION,
        root: root.to_path_buf(),
        files_scanned: 0,
        files_skipped: 0,
        findings: vec![],
    };
    let mut modules = Vec::new();
    for path in files {
        // Regular files only (a FIFO named *.py would block the read), no larger than the limit.
        let too_big = fs::metadata(&path).map(|m| !m.is_file() || m.len() > MAX_FILE_BYTES).unwrap_or(true);
        let Some(bytes) = (!too_big).then(|| fs::read(&path).ok()).flatten() else {
            report.files_skipped += 1;
            continue;
        };
        let source = String::from_utf8_lossy(&bytes).into_owned();
        let label = path.strip_prefix(root).unwrap_or(&path).display().to_string();
        let analysis = analyze(&source, &Hints::new(), &label);
        modules.push((path, label, source, analysis));
    }
    report.files_scanned = modules.len();
    for _round in 0..3 {
        let calls = calls_between(modules.iter().map(|m| &m.3));
        let mut changed = false;
        for (path, label, source, analysis) in &mut modules {
            let hints = hints_for(&calls, path);
            let called_more =
                analysis.defined.iter().any(|(name, runs)| hints.get(name).is_some_and(|(r, _)| r > runs));
            if called_more {
                *analysis = analyze(source, &hints, label);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (path, _, source, analysis) in modules {
        report.findings.extend(
            analysis
                .candidates
                .into_iter()
                .map(|c| Advice::from_candidate(c, &source))
                .filter(|a| a.leaks)
                .map(|advice| Finding { path: path.clone(), advice }),
        );
    }
    rank(&mut report.findings);
    Ok(report)
}

/// The strongest caller of each (module stem, name) across the modules.
fn calls_between<'a>(analyses: impl Iterator<Item = &'a Analysis>) -> HashMap<(String, String), (Runs, String)> {
    let mut calls: HashMap<(String, String), (Runs, String)> = HashMap::new();
    for (module, name, runs, who) in analyses.flat_map(|a| &a.calls) {
        let key = (module.clone(), name.clone());
        if calls.get(&key).is_none_or(|(r, _)| runs > r) {
            calls.insert(key, (*runs, who.clone()));
        }
    }
    calls
}

/// The calls that reach the module at `path` (`users.py` or `users/__init__.py` for `users`).
fn hints_for(calls: &HashMap<(String, String), (Runs, String)>, path: &Path) -> Hints {
    let stem = match path.file_stem().and_then(|s| s.to_str()) {
        Some("__init__") => path.parent().and_then(|p| p.file_name()).and_then(|s| s.to_str()).unwrap_or(""),
        other => other.unwrap_or(""),
    };
    calls.iter().filter(|((module, _), _)| module == stem).map(|((_, name), v)| (name.clone(), v.clone())).collect()
}

/// The leaks under `root`, most confident first (unreadable paths give no findings).
pub fn scan_dir(root: &Path) -> Vec<Finding> {
    scan(root, &ScanOptions::default()).map(|r| r.findings).unwrap_or_default()
}

fn collect(dir: &Path, options: &ScanOptions, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            let name = entry.file_name();
            let vendored = SKIPPED_DIRS.iter().any(|s| name == *s) || path.join("pyvenv.cfg").exists();
            if options.include_vendored || !vendored {
                collect(&path, options, files);
            }
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "py") {
            files.push(path);
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ScanFormat {
    Text,
    Json,
}

/// `leakprobe scan` arguments.
#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// A directory (scanned for *.py) or a Python file.
    pub path: PathBuf,
    /// Output format (json: docs/advice.md).
    #[arg(long, short, value_enum, default_value_t = ScanFormat::Text)]
    pub format: ScanFormat,
    /// Report only findings at least this confident (0..1).
    #[arg(long, default_value_t = 0.5)]
    pub min_confidence: f64,
    /// Exit with status 3 when something is found (to gate code review).
    #[arg(long)]
    pub fail_on_findings: bool,
    /// Also scan virtualenvs, site-packages, .git, __pycache__ and the like.
    #[arg(long)]
    pub include_vendored: bool,
}

/// Runs `leakprobe scan`: exit 0, or 3 with `--fail-on-findings` when something is found.
pub fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.min_confidence) {
        anyhow::bail!("--min-confidence must be between 0 and 1, got {}", args.min_confidence);
    }
    let mut report = scan(&args.path, &ScanOptions { include_vendored: args.include_vendored })?;
    report.findings.retain(|f| f.advice.confidence >= args.min_confidence);
    let out = match args.format {
        ScanFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        ScanFormat::Text => crate::untrusted::terminal_lines(render_text(&report, args.min_confidence)),
    };
    print!("{out}");
    Ok(if args.fail_on_findings && !report.findings.is_empty() {
        ExitCode::from(EXIT_FINDINGS)
    } else {
        ExitCode::SUCCESS
    })
}

/// The text report: one block per finding, most confident first.
pub fn render_text(report: &ScanReport, min_confidence: f64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let files = report.findings.iter().map(|f| &f.path).collect::<std::collections::BTreeSet<_>>().len();
    let skipped = if report.files_skipped > 0 { format!(", {} skipped", report.files_skipped) } else { String::new() };
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let scanned = plural(report.files_scanned, "Python file");
    if report.findings.is_empty() {
        let _ = writeln!(out, "No leak patterns in {scanned}{skipped} (confidence >= {min_confidence:.2}).");
        return out;
    }
    let _ = writeln!(
        out,
        "{} in {files} of {scanned}{skipped} (confidence >= {min_confidence:.2}), most confident first:",
        plural(report.findings.len(), "possible leak"),
    );
    for f in &report.findings {
        let a = &f.advice;
        let _ = writeln!(out, "\n{}:{}  {}  confidence {:.2}", f.path.display(), a.line, a.pattern, a.confidence);
        write_advice(&mut out, "", a);
    }
    out
}

/// The body of one piece of advice, each line after `indent`: the code, the pattern and why, the
/// evidence, the fix and its example (shared by `scan` and the text report).
pub fn write_advice(out: &mut String, indent: &str, a: &Advice) {
    use std::fmt::Write;
    let _ = writeln!(out, "{indent}    {}", a.code);
    wrap(out, &format!("{indent}  "), &format!("{}: {}", a.title, a.why));
    for e in &a.evidence {
        wrap(out, &format!("{indent}  - "), e);
    }
    wrap(out, &format!("{indent}  "), &format!("Fix: {}", a.fix));
    for l in a.fix_example.lines() {
        let _ = writeln!(out, "{indent}      {l}");
    }
}

/// Writes `text` wrapped at 100 columns, the first line after `lead`, the others indented as far.
fn wrap(out: &mut String, lead: &str, text: &str) {
    const WIDTH: usize = 100;
    let indent = " ".repeat(lead.chars().count());
    let mut line = lead.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = indent.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
}
