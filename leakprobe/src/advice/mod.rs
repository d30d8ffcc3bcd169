//! Leak-pattern advice: what kind of leak a Python line is, why it leaks, and the fix.
//!
//! `record` names the line that keeps memory alive; this module reads that line's source and
//! classifies it, with a real Python parser (tree-sitter-python) rather than regexes, into the
//! patterns of the catalogue (`patterns`): unbounded cache, global list/set accumulation, listener
//! never removed, logging handler added per call, asyncio task dropped, executor never shut down,
//! connection or file never closed, `lru_cache` on a method, and `re.compile` per call (which is
//! not a leak). The classifier reasons about scopes (is the container module- or class-level?),
//! evictions anywhere in the module, how often the code runs (request handler, startup hook,
//! called from where), and whether the thing is ended (`with`, `close()`, `shutdown()`, removal).
//!
//! - `advise(source, line)`: the pattern whose construct covers a (profiler-flagged) line.
//! - `scan_source` / `scan_dir` / `scan::scan`: the same classifier over a code base, the static
//!   check behind `leakprobe scan PATH`, ranked by confidence.
//!
//! Layout: `syntax` (tree-sitter helpers), `facts` (the module-wide facts), `runs` (how often
//! each function runs), `classify` (containers, decorators, re.compile) and `lifecycle` (things
//! that must be ended; `resources`: what a call opens), `scan` (a tree of files, with calls
//! followed across files; the CLI), `patterns` (the catalogue text), `sources` (the target's files
//! through its root) and `stack` (which frame of a growing stack the advice is about).

mod classify;
mod facts;
mod lifecycle;
pub mod patterns;
mod resources;
mod runs;
pub mod scan;
pub mod sources;
pub mod stack;
mod syntax;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::{
    patterns::{Pattern, PatternId, CATALOGUE},
    scan::{scan, scan_dir, ScanOptions, ScanReport},
    sources::TargetSources,
    stack::{Relation, StackAdvice, StackAdvisor},
};

/// The classification of one construct: the pattern, how sure, why, and the fix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    pub pattern: PatternId,
    pub title: String,
    /// False for patterns that are not leaks (`re.compile` per call): the advice says so.
    pub leaks: bool,
    /// 0..1: how surely this construct, as written, grows without bound (for `leaks == false`,
    /// how surely the line is that construct).
    pub confidence: f64,
    /// 1-based line of the construct (the insertion, the call, the decorator).
    pub line: u32,
    /// The lines the construct covers, `[first, last]` pairs, 1-based and inclusive.
    pub lines: Vec<[u32; 2]>,
    /// The source of `line`, trimmed.
    pub code: String,
    /// What the classifier saw, e.g. "`CACHE` is module-level (dict, line 3)",
    /// "no eviction found in this module ...", "`get_user` is decorated @app.get: a request handler".
    pub evidence: Vec<String>,
    pub why: String,
    pub fix: String,
    /// A short example of the fixed code.
    pub fix_example: String,
}

/// One result of a scan: a file and the advice for one of its constructs.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub path: PathBuf,
    #[serde(flatten)]
    pub advice: Advice,
}

impl Advice {
    fn from_candidate(c: classify::Candidate, source: &str) -> Advice {
        let p = c.pattern.pattern();
        let code = source.lines().nth(c.line.saturating_sub(1) as usize).unwrap_or("").trim().to_string();
        Advice {
            pattern: c.pattern,
            title: p.title.into(),
            leaks: p.leaks,
            confidence: c.confidence,
            line: c.line,
            lines: c.spans.iter().map(|&(a, b)| [a, b]).collect(),
            code,
            evidence: c.evidence,
            why: p.why.into(),
            fix: p.fix.into(),
            fix_example: p.example.into(),
        }
    }

    fn covers(&self, line: u32) -> Option<u32> {
        self.lines.iter().filter(|[a, b]| (*a..=*b).contains(&line)).map(|[a, b]| b - a).min()
    }
}

/// The pattern whose construct covers `line` (1-based) of `source`, if any: the most specific
/// construct (the smallest span) wins, a leak before a non-leak, then the most confident.
///
/// For a growing stack, call it for each Python frame from the leaf outwards: the first frame
/// with advice is the construct that keeps the memory (an `lru_cache`d method's body, the line
/// inserting into a global dict, the line creating a task per request).
pub fn advise(source: &str, line: u32) -> Option<Advice> {
    covering(advise_all(source), line)
}

/// Of `advice`, the one covering `line` that `advise` would pick.
fn covering(advice: impl IntoIterator<Item = Advice>, line: u32) -> Option<Advice> {
    advice
        .into_iter()
        .filter_map(|a| a.covers(line).map(|span| (span, a)))
        .min_by(|(sa, a), (sb, b)| (sa, !a.leaks).cmp(&(sb, !b.leaks)).then(b.confidence.total_cmp(&a.confidence)))
        .map(|(_, a)| a)
}

/// Every construct of `source` that matches a pattern, leaks or not, in line order.
pub fn advise_all(source: &str) -> Vec<Advice> {
    classify::classify(source).into_iter().map(|c| Advice::from_candidate(c, source)).collect()
}

/// The leaks in one file, most confident first (never the not-a-leak patterns). Alone, a file's
/// functions called only from other files run "unknown" often; `scan_dir` follows those calls.
pub fn scan_source(path: &Path, source: &str) -> Vec<Finding> {
    let mut findings: Vec<Finding> = advise_all(source)
        .into_iter()
        .filter(|a| a.leaks)
        .map(|advice| Finding { path: path.to_path_buf(), advice })
        .collect();
    scan::rank(&mut findings);
    findings
}
