//! speedscope's file format (`--format speedscope`,
//! https://www.speedscope.app/file-format-schema.json): shared frames (Python frames with their
//! file and line) and "sampled" profiles whose samples are stacks, outermost first, weighted by
//! bytes. Profiles: the live bytes of the growing stacks (of every stack when none grows) first,
//! then — when stacks are flagged — their growth rate and the live bytes of every stack.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{collapsed, Report, StackReport};
use crate::symbolize::{Frame, FrameKind};

pub const SCHEMA: &str = "https://www.speedscope.app/file-format-schema.json";

#[derive(Default)]
struct Frames {
    list: Vec<Value>,
    index: HashMap<(String, Option<String>, Option<u32>), usize>,
}

impl Frames {
    fn id(&mut self, f: &Frame) -> usize {
        let name = match f.kind {
            FrameKind::Python => f.function.clone(),
            _ => collapsed::frame_name(f),
        };
        let file = f.file.clone().or_else(|| f.object.clone());
        let key = (name, file, f.line);
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let mut frame = json!({ "name": key.0 });
        if let Some(file) = &key.1 {
            frame["file"] = file.as_str().into();
        }
        if let Some(line) = key.2 {
            frame["line"] = line.into();
        }
        let i = self.list.len();
        self.list.push(frame);
        self.index.insert(key, i);
        i
    }
}

fn profile(frames: &mut Frames, name: &str, stacks: &[&StackReport], weight: impl Fn(&StackReport) -> u64) -> Value {
    let mut samples = Vec::new();
    let mut weights = Vec::new();
    for s in stacks {
        let w = weight(s);
        if w == 0 || s.frames.is_empty() {
            continue;
        }
        samples.push(s.frames.iter().rev().map(|f| frames.id(f)).collect::<Vec<_>>());
        weights.push(w);
    }
    let total: u64 = weights.iter().sum();
    json!({
        "type": "sampled",
        "name": name,
        "unit": "bytes",
        "startValue": 0,
        "endValue": total,
        "samples": samples,
        "weights": weights,
    })
}

pub fn render(report: &Report) -> String {
    let mut frames = Frames::default();
    let (chosen, growing) = collapsed::flame_stacks(report);
    let mut profiles = Vec::new();
    if growing {
        profiles.push(profile(&mut frames, "live bytes of the growing stacks", &chosen, |s| s.live_bytes));
        let rate = |s: &StackReport| {
            if s.growth_bytes_per_sec.is_finite() {
                s.growth_bytes_per_sec.max(0.0).round() as u64
            } else {
                0
            }
        };
        profiles.push(profile(&mut frames, "growth rate of the growing stacks (bytes per second)", &chosen, rate));
        let all: Vec<&StackReport> = report.stacks.iter().collect();
        profiles.push(profile(&mut frames, "live bytes of all stacks", &all, |s| s.live_bytes));
    } else {
        profiles.push(profile(&mut frames, "live bytes of all stacks (none is growing)", &chosen, |s| s.live_bytes));
    }
    let document = json!({
        "$schema": SCHEMA,
        "name": format!("leakprobe: PID {} ({}), verdict {}", report.target.pid, report.target.exe, report.verdict.verdict.as_str()),
        "exporter": format!("leakprobe {}", report.leakprobe_version),
        "activeProfileIndex": 0,
        "shared": { "frames": frames.list },
        "profiles": profiles,
    });
    serde_json::to_string(&document).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn growing_stacks_are_weighted_samples_outermost_first() {
        let report = sample::leaking();
        let doc: Value = serde_json::from_str(&render(&report)).unwrap();
        assert_eq!(doc["$schema"], SCHEMA);
        let frames = doc["shared"]["frames"].as_array().unwrap();
        let live = &doc["profiles"][0];
        assert_eq!(live["type"], "sampled");
        assert_eq!(live["weights"], json!([report.stacks[0].live_bytes, report.stacks[1].live_bytes]));
        let stack: Vec<&Value> =
            live["samples"][0].as_array().unwrap().iter().map(|i| &frames[i.as_u64().unwrap() as usize]).collect();
        assert_eq!(stack[0]["name"], "<module>");
        assert_eq!(stack[3], &json!({"name": "leak_async", "file": "/srv/app/main.py", "line": 18}));
        assert_eq!(stack[4]["name"], "malloc");
        assert_eq!(stack[4]["file"], "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(doc["profiles"][1]["weights"], json!([60_500, 51_000]));
        assert_eq!(doc["profiles"][2]["samples"].as_array().unwrap().len(), 4);
        assert_eq!(live["endValue"], json!(report.stacks[0].live_bytes + report.stacks[1].live_bytes));
    }

    #[test]
    fn without_growing_stacks_one_profile_of_all() {
        let doc: Value = serde_json::from_str(&render(&sample::sampling_no_leak())).unwrap();
        assert_eq!(doc["profiles"].as_array().unwrap().len(), 1);
        assert_eq!(doc["profiles"][0]["name"], "live bytes of all stacks (none is growing)");
    }
}
