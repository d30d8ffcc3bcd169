//! `leakprobe census --pid PID`: the Python heap of a live process counted by type from outside
//! (objgraph's `show_most_common_types`), and with `--interval` the growth between censuses
//! (`show_growth`). Memory reads only: no eBPF, no ptrace stop, nothing run in the target.

use std::{fmt::Write as _, thread, time::Duration};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{
    python::{
        heap::{take_census, Bound, Bounds, Census, CensusGrowth, Grown, Growth, Interpreter},
        memory::ReadMemory,
        runtime::{self, PythonRuntime},
    },
    report::human_bytes,
    target::Target,
    untrusted,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CensusFormat {
    Text,
    /// One JSON object per census, one per line.
    Json,
}

#[derive(Debug, Clone)]
pub struct CensusOptions {
    pub pid: u32,
    pub top: usize,
    /// Time between censuses; None: one census.
    pub interval: Option<Duration>,
    /// Censuses to take (with `interval`); None: until interrupted.
    pub count: Option<u64>,
    pub format: CensusFormat,
    pub bounds: Bounds,
}

/// The CPython in `pid`, or a one-line reason why there is none we can read.
pub fn attach(pid: u32) -> Result<PythonRuntime> {
    let target = Target::inspect(pid)?;
    // A read we cannot do fails here with the reason, rather than as "unexpected layout" later.
    if let Some(first) = crate::proc_maps::read(pid).ok().and_then(|m| m.into_iter().find(|m| m.perms.starts_with('r')))
    {
        let mem = crate::python::memory::RemoteMemory { pid };
        if let Err(e) = mem.read_u64(first.start) {
            if e.raw_os_error() == Some(libc::EPERM) {
                bail!("permission denied reading the memory of process {pid}: run leakprobe as root (or as its user, with ptrace allowed)");
            }
        }
    }
    match runtime::detect(&target) {
        Ok(Some(python)) => Ok(python),
        Ok(None) => bail!(
            "process {pid} ({}) is not a CPython: no _PyRuntime in its mapped files",
            untrusted::terminal(&target.exe)
        ),
        Err(e) => bail!("process {pid}: {e}"),
    }
}

/// What `--format json` prints per census.
#[derive(Serialize)]
struct JsonLine<'a> {
    pid: u32,
    python: &'a str,
    /// 1 for the first census.
    census: u64,
    #[serde(flatten)]
    result: &'a Census,
    /// Types and holders past their previous peak (absent on the first census).
    #[serde(skip_serializing_if = "Option::is_none")]
    growth: Option<&'a CensusGrowth>,
}

pub fn run(opts: CensusOptions) -> Result<()> {
    if opts.top == 0 {
        bail!("--top must be at least 1");
    }
    if opts.interval.is_some_and(|i| i < Duration::from_millis(100)) {
        bail!("--interval must be at least 100ms");
    }
    if opts.count == Some(0) {
        bail!("--count must be at least 1");
    }
    if opts.count.is_some_and(|c| c > 1) && opts.interval.is_none() {
        bail!("--count needs --interval (the time between censuses)");
    }
    let python = attach(opts.pid)?;
    let interp = Interpreter::of(&python);
    let censuses = if opts.interval.is_some() { opts.count } else { Some(1) };
    let mut growth = Growth::new();
    let mut n = 0u64;
    loop {
        n += 1;
        let census = take_census(&python.mem, &interp, &opts.bounds)
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("census of process {} (CPython {})", opts.pid, python.version))?;
        let grown = growth.update(&census);
        let text = match opts.format {
            CensusFormat::Json => {
                let line = JsonLine {
                    pid: opts.pid,
                    python: &python.version,
                    census: n,
                    result: &census,
                    growth: (n > 1).then_some(&grown),
                };
                serde_json::to_string(&line)? + "\n"
            }
            CensusFormat::Text if n == 1 => render_census(opts.pid, &python.version, &census, opts.top),
            CensusFormat::Text => render_growth(&census, &grown, opts.top, n),
        };
        print!("{text}");
        if censuses.is_some_and(|c| n >= c) {
            return Ok(());
        }
        thread::sleep(opts.interval.unwrap_or_default());
    }
}

/// The bound that cut a census short, and what was skipped, as notes under a table.
fn notes(census: &Census, bounds_text: &mut String) {
    if let Some(bound) = census.bounds_hit {
        let what = match bound {
            Bound::Objects => "the most objects allowed",
            Bound::BytesRead => "the most bytes a census may read",
            Bound::Duration => "the longest a census may take",
        };
        let _ = writeln!(bounds_text, "stopped at {what}: the counts are partial");
    }
    let i = &census.invalid;
    if i.total() > 0 {
        let _ = writeln!(
            bounds_text,
            "skipped (changed while read, or not objects): {} bad type pointers, {} bad refcounts, {} containers unsized, {} lists cut short",
            i.types, i.refcounts, i.containers, i.broken_lists
        );
    }
}

/// The first census: the most common types, objgraph-style, with what it cost to read.
pub fn render_census(pid: u32, version: &str, census: &Census, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "process {pid} (CPython {version}): {} GC-tracked objects, {} (read {} in {} reads, {:.0} ms)",
        census.objects,
        human_bytes(census.bytes as f64),
        human_bytes(census.bytes_read as f64),
        census.reads,
        census.elapsed_secs * 1e3
    );
    if let Some(gc) = &census.gc {
        let gens: Vec<String> = gc
            .generations
            .iter()
            .enumerate()
            .map(|(i, g)| format!("gen{i} {}/{} ({} collections)", g.count, g.threshold, g.collections))
            .collect();
        let state = if gc.enabled { "enabled" } else { "disabled" };
        let _ = writeln!(out, "gc {state}: {}", gens.join(", "));
    }
    let width = census.types.iter().take(top).map(|t| t.name.chars().count()).max().unwrap_or(4).clamp(4, 60);
    let _ = writeln!(out, "{:<width$}  {:>10}  {:>10}", "type", "objects", "bytes");
    for t in census.types.iter().take(top) {
        let _ = writeln!(out, "{:<width$}  {:>10}  {:>10}", t.name, t.count, human_bytes(t.bytes as f64));
    }
    render_holders(census, top, &mut out);
    notes(census, &mut out);
    untrusted::terminal_lines(out)
}

/// The containers that retain the most, with the path that reaches them.
fn render_holders(census: &Census, top: usize, out: &mut String) {
    if census.holders.is_empty() {
        return;
    }
    let shown = &census.holders[..census.holders.len().min(top)];
    let width = shown.iter().map(|h| h.path.chars().count()).max().unwrap_or(6).clamp(6, 80);
    let _ =
        writeln!(out, "\n{:<width$}  {:<12}  {:>10}  {:>10}  {:>10}", "holder", "type", "length", "objects", "retains");
    for h in shown {
        // A walk a bound cut short retains at least what it saw.
        let (objects, bytes) = match (h.retained_unknown, h.retained_objects) {
            (true, 0) => ("?".to_string(), "?".to_string()),
            (true, n) => (format!("≥{n}"), format!("≥{}", human_bytes(h.retained_bytes as f64))),
            (false, n) => (n.to_string(), human_bytes(h.retained_bytes as f64)),
        };
        let _ =
            writeln!(out, "{:<width$}  {:<12}  {:>10}  {:>10}  {:>10}", h.path, h.type_name, h.length, objects, bytes);
    }
    if census.holders_truncated {
        let _ = writeln!(
            out,
            "holders: stopped at a bound before every module was walked (? and ≥: retained not wholly walked)"
        );
    }
}

/// Rows of what grew: name, now, increase, bytes change.
fn render_grown(out: &mut String, title: &str, count: &str, grown: &[Grown], top: usize) {
    if grown.is_empty() {
        return;
    }
    let width = grown.iter().take(top).map(|t| t.name.chars().count()).max().unwrap_or(4).clamp(4, 80);
    let _ = writeln!(out, "{title:<width$}  {count:>10}  {:>10}  {:>12}", "increase", "bytes change");
    for t in grown.iter().take(top) {
        let change = if t.bytes_change >= 0 {
            format!("+{}", human_bytes(t.bytes_change as f64))
        } else {
            human_bytes(t.bytes_change as f64)
        };
        let _ =
            writeln!(out, "{:<width$}  {:>10}  {:>10}  {:>12}", t.name, t.count, format!("+{}", t.increase), change);
    }
}

/// A later census: the types and holders past their peak, objgraph's `show_growth`.
pub fn render_growth(census: &Census, grown: &CensusGrowth, top: usize, n: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "census {n}: {} objects, {}", census.objects, human_bytes(census.bytes as f64));
    if grown.types.is_empty() && grown.holders.is_empty() {
        let _ = writeln!(out, "nothing grew past its peak");
    }
    render_grown(&mut out, "type", "objects", &grown.types, top);
    if !grown.types.is_empty() && !grown.holders.is_empty() {
        out.push('\n');
    }
    render_grown(&mut out, "holder", "retains", &grown.holders, top);
    notes(census, &mut out);
    untrusted::terminal_lines(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::heap::{fake::census_of, Invalid};

    fn census(types: &[(&str, u64)]) -> Census {
        let mut c = census_of(types);
        c.bounds_hit = Some(Bound::Duration);
        c.invalid = Invalid { types: 2, ..Invalid::default() };
        (c.bytes_read, c.reads, c.elapsed_secs) = (4096, 3, 0.01);
        c
    }

    #[test]
    fn text_shows_the_top_types_and_no_terminal_escapes() {
        let mut c = census(&[("dict", 300), ("\x1b[2JLeaky\x07", 200), ("tuple", 5)]);
        c.holders.push(crate::python::heap::Holder {
            path: "__main__.\x1b]0;LEAKS".into(),
            type_name: "list".into(),
            length: 5000,
            retained_objects: 5001,
            retained_bytes: 300_000,
            ..Default::default()
        });
        let text = render_census(42, "3.11.7", &c, 2);
        assert!(text.contains("__main__.?]0;LEAKS") && text.contains("5001"), "{text}");
        assert!(text.contains("process 42 (CPython 3.11.7): 505 GC-tracked objects"));
        assert!(text.contains("dict") && text.contains("?[2JLeaky?") && !text.contains("tuple"));
        assert!(!text.chars().any(|ch| ch.is_control() && ch != '\n'), "{text:?}");
        assert!(text.contains("the longest a census may take") && text.contains("2 bad type pointers"));
    }

    #[test]
    fn growth_text_lists_what_grew() {
        let c = census(&[("Leaky", 250)]);
        let grown = CensusGrowth {
            types: vec![Grown {
                name: "Leaky\x1b".into(),
                count: 250,
                increase: 50,
                bytes: 16000,
                bytes_change: -3200,
            }],
            holders: vec![Grown { name: "app.subs".into(), count: 90, increase: 40, bytes: 9000, bytes_change: 4000 }],
        };
        let text = render_growth(&c, &grown, 10, 2);
        assert!(text.contains("census 2: 250 objects"));
        assert!(text.contains("Leaky?") && text.contains("+50") && text.contains("-3.1 KB"), "{text}");
        assert!(text.contains("app.subs") && text.contains("+40") && text.contains("+3.9 KB"), "{text}");
        assert!(render_growth(&c, &CensusGrowth::default(), 10, 3).contains("nothing grew"));
    }

    #[test]
    fn bad_options_are_refused_before_attaching() {
        let base = CensusOptions {
            pid: u32::MAX,
            top: 10,
            interval: None,
            count: None,
            format: CensusFormat::Text,
            bounds: Bounds::default(),
        };
        let err = |o: CensusOptions| run(o).unwrap_err().to_string();
        assert!(err(CensusOptions { top: 0, ..base.clone() }).contains("--top"));
        assert!(err(CensusOptions { count: Some(3), ..base.clone() }).contains("--interval"));
        assert!(err(CensusOptions { interval: Some(Duration::from_millis(1)), ..base.clone() }).contains("--interval"));
        assert!(err(base).contains("no process with PID"));
    }
}
