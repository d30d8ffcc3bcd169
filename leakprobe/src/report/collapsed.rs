//! Folded stacks (`--format collapsed`): one line per stack, frames outermost first and
//! `;`-separated, then a space and the stack's live bytes — the input of flamegraph.pl and
//! inferno-flamegraph, and a format speedscope imports. It is exactly what the SVG flame graph
//! draws: the growing (flagged) stacks, or every stack when none is flagged.

use super::{Report, StackReport};
use crate::symbolize::{Frame, FrameKind};

/// The stacks a flame graph shows, and whether they are the growing ones (else: all stacks,
/// because none was flagged). Stacks holding no live memory are left out (no width).
pub fn flame_stacks(report: &Report) -> (Vec<&StackReport>, bool) {
    let holding = |s: &&StackReport| s.live_bytes > 0;
    let growing: Vec<&StackReport> = report.stacks.iter().filter(|s| s.flagged).filter(holding).collect();
    if growing.is_empty() {
        (report.stacks.iter().filter(holding).collect(), false)
    } else {
        (growing, true)
    }
}

/// A frame's name in folded stacks: Python frames `function (file.py:line)`, native frames their
/// symbol (an unresolved address with its object). `;` separates frames, so it becomes `,`.
pub fn frame_name(f: &Frame) -> String {
    let base = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
    let name = match (f.kind, &f.file, f.line) {
        (FrameKind::Python, Some(file), Some(line)) => format!("{} ({}:{line})", f.function, base(file)),
        (FrameKind::Native, _, _) if f.function.starts_with("0x") && f.object.is_some() => {
            format!("{} ({})", f.function, base(f.object.as_deref().unwrap_or_default()))
        }
        _ => f.function.clone(),
    };
    name.replace(';', ",").replace(['\n', '\r'], " ")
}

/// `(frames outermost first, weight)` for each stack, identical stacks merged (first one's place).
pub fn folded(stacks: &[&StackReport], weight: impl Fn(&StackReport) -> u64) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for s in stacks {
        let w = weight(s);
        if w == 0 || s.frames.is_empty() {
            continue;
        }
        let line = s.frames.iter().rev().map(frame_name).collect::<Vec<_>>().join(";");
        match index.get(&line) {
            Some(&i) => out[i].1 += w,
            None => {
                index.insert(line.clone(), out.len());
                out.push((line, w));
            }
        }
    }
    out
}

/// The folded lines of the flame graph's stacks, weighted by live bytes.
pub fn lines(report: &Report) -> Vec<String> {
    let (stacks, _) = flame_stacks(report);
    folded(&stacks, |s| s.live_bytes).into_iter().map(|(stack, w)| format!("{stack} {w}")).collect()
}

pub fn render(report: &Report) -> String {
    lines(report).iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn folded_stacks_are_outermost_first_and_weighted_by_live_bytes() {
        let report = sample::leaking();
        let lines = lines(&report);
        assert_eq!(lines.len(), 2, "only the flagged stacks: {lines:?}");
        assert_eq!(
            lines[0],
            format!(
                "<module> (main.py:40);app (routing.py:301);run_endpoint_function (routing.py:212);\
                 leak_async (main.py:18);malloc {}",
                report.stacks[0].live_bytes
            )
        );
        assert!(lines[1].starts_with("WorkerThread.run (_asyncio.py:1124);leak_sync (main.py:24);malloc "));
    }

    #[test]
    fn every_stack_when_none_is_flagged_and_identical_stacks_merge() {
        let mut report = sample::sampling_no_leak();
        report.stacks[1].frames = report.stacks[0].frames.clone();
        let lines = lines(&report);
        assert_eq!(lines.len(), 3, "{lines:?}");
        let merged = report.stacks[0].live_bytes + report.stacks[1].live_bytes;
        assert!(lines[0].ends_with(&format!("malloc {merged}")), "{lines:?}");
        assert!(lines[1].contains("_PyObject_Malloc") && lines[1].contains("0x55000000aa00 (python3.11)"));
        assert!(lines[2].starts_with("mmap;do_mmap "));
    }

    #[test]
    fn separators_in_names_cannot_split_frames() {
        let mut report = sample::leaking();
        report.stacks[0].frames[0].function = "f<a;b>\nx".into();
        assert!(lines(&report)[0].ends_with(&format!(";f<a,b> x {}", report.stacks[0].live_bytes)));
    }
}
