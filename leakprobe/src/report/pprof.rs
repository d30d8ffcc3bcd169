//! The pprof profile (`--format pprof`): the protobuf of github.com/google/pprof's
//! `proto/profile.proto`, gzipped, as `go tool pprof`, Pyroscope and Parca read it.
//!
//! One sample per stack of the report, with three values: `inuse_space` (bytes still live at the
//! end), `inuse_objects` (allocations still live) and `growth_rate` (bytes per second: the leak
//! rate of a flagged stack, 0 for the others). The default sample type is `growth_rate` when a
//! stack is flagged, so `go tool pprof -top` lists the leaking lines first; `inuse_space` else.
//! Python frames are locations with a function, file and line and no mapping; native frames are
//! located in a mapping per ELF object (inlined frames at one address are one location with
//! several lines, innermost first); labels: `stack_id`, `allocator`, `flagged`.

use std::{collections::HashMap, io::Write as _};

use anyhow::{Context as _, Result};
use prost::Message as _;

use super::{Report, StackReport};
use crate::symbolize::{Frame, FrameKind};

/// The messages of profile.proto leakprobe writes (field numbers as in the .proto).
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        /// Index 0 is always "".
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        /// Innermost (inlined) first; the last is the caller they were inlined into.
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// The sample types, in value order.
pub const SAMPLE_TYPES: [(&str, &str); 3] =
    [("inuse_space", "bytes"), ("inuse_objects", "count"), ("growth_rate", "bytes_per_second")];

/// A location's identity: (mapping id, address, its lines as (function id, line)).
type LocationKey = (u64, u64, Vec<(u64, i64)>);

#[derive(Default)]
struct Builder {
    profile: proto::Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    mappings: HashMap<String, u64>,
    locations: HashMap<LocationKey, u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn function(&mut self, f: &Frame) -> u64 {
        let name = self.string(&f.function);
        // The source file; a native frame's object is its location's mapping.
        let filename = self.string(f.file.as_deref().unwrap_or(""));
        let next = self.profile.function.len() as u64 + 1;
        let id = *self.functions.entry((name, filename)).or_insert(next);
        if id == next {
            self.profile.function.push(proto::Function { id, name, system_name: name, filename });
        }
        id
    }

    fn mapping(&mut self, object: &str, frames: &[&Frame]) -> u64 {
        let next = self.profile.mapping.len() as u64 + 1;
        let id = *self.mappings.entry(object.to_string()).or_insert(next);
        if id == next {
            let filename = self.string(object);
            self.profile.mapping.push(proto::Mapping { id, filename, has_functions: true, ..Default::default() });
        }
        let m = &mut self.profile.mapping[id as usize - 1];
        m.has_filenames |= frames.iter().any(|f| f.file.is_some());
        m.has_line_numbers |= frames.iter().any(|f| f.line.is_some());
        m.has_inline_frames |= frames.len() > 1;
        id
    }

    /// One location for a group of frames at one address (inlined, innermost first).
    fn location(&mut self, group: &[&Frame]) -> u64 {
        let first = group[0];
        let (mapping_id, address) = match (first.kind, &first.object) {
            (FrameKind::Python, _) => (0, 0),
            (_, Some(object)) => (self.mapping(object, group), first.address),
            (_, None) => (0, first.address),
        };
        let lines: Vec<(u64, i64)> = group.iter().map(|f| (self.function(f), f.line.map_or(0, i64::from))).collect();
        let next = self.profile.location.len() as u64 + 1;
        let id = *self.locations.entry((mapping_id, address, lines.clone())).or_insert(next);
        if id == next {
            let line = lines.into_iter().map(|(function_id, line)| proto::Line { function_id, line }).collect();
            self.profile.location.push(proto::Location { id, mapping_id, address, line });
        }
        id
    }

    fn sample(&mut self, s: &StackReport) {
        let mut location_id = Vec::new();
        let mut rest: &[Frame] = &s.frames;
        while let Some(first) = rest.first() {
            // Native frames inlined at one address come together (blazesym expands them).
            let n = match first.kind {
                FrameKind::Python => 1,
                _ => rest
                    .iter()
                    .take_while(|f| f.kind == first.kind && f.address == first.address && f.object == first.object)
                    .count(),
            };
            let group: Vec<&Frame> = rest[..n].iter().collect();
            location_id.push(self.location(&group));
            rest = &rest[n..];
        }
        let growth = if s.flagged && s.growth_bytes_per_sec.is_finite() {
            s.growth_bytes_per_sec.max(0.0).round() as i64
        } else {
            0
        };
        let value = vec![clamp(s.live_bytes), clamp(s.live_allocations), growth];
        let labels =
            [("stack_id", s.id.clone()), ("allocator", s.allocator.clone()), ("flagged", s.flagged.to_string())];
        let label = labels.iter().map(|(k, v)| proto::Label { key: self.string(k), str: self.string(v) }).collect();
        self.profile.sample.push(proto::Sample { location_id, value, label });
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The profile message (not yet encoded).
pub fn profile(report: &Report) -> proto::Profile {
    let mut b = Builder::default();
    b.string("");
    for (kind, unit) in SAMPLE_TYPES {
        let vt = proto::ValueType { r#type: b.string(kind), unit: b.string(unit) };
        b.profile.sample_type.push(vt);
    }
    // The first mapping is the main binary to pprof (`File:` in its header): the target's.
    b.mapping(&report.target.exe, &[]);
    for s in &report.stacks {
        b.sample(s);
    }
    let t = &report.target;
    let command = if t.cmdline.is_empty() { t.exe.clone() } else { t.cmdline.join(" ") };
    let v = &report.verdict;
    let mut comments = vec![
        format!("leakprobe {}: PID {} ({command})", report.leakprobe_version, t.pid),
        format!("verdict: {} ({:.0} bytes/s): {}", v.verdict.as_str(), v.growth_bytes_per_sec, v.reason),
        "growth_rate: leak rate of the flagged stacks, 0 for the others".to_string(),
    ];
    if report.budget.as_ref().is_some_and(|b| b.max_overhead_percent < 100.0) {
        comments.push("sampling mode: inuse_space and inuse_objects count the sampled objects still live".into());
    }
    b.profile.comment = comments.iter().map(|c| b.string(c)).collect();
    let default = if report.stacks.iter().any(|s| s.flagged) { SAMPLE_TYPES[2].0 } else { SAMPLE_TYPES[0].0 };
    b.profile.default_sample_type = b.string(default);
    b.profile.time_nanos = clamp(report.started_unix_secs.saturating_mul(1_000_000_000));
    b.profile.duration_nanos =
        if report.duration_seconds.is_finite() { (report.duration_seconds * 1e9) as i64 } else { 0 };
    b.profile
}

/// The gzipped protobuf.
pub fn render(report: &Report) -> Result<Vec<u8>> {
    let bytes = profile(report).encode_to_vec();
    // A fixed header (no mtime): the same report always gives the same bytes.
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes).context("cannot gzip the profile")?;
    gz.finish().context("cannot gzip the profile")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;
    use std::io::Read as _;

    fn decode(gz: &[u8]) -> proto::Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut raw).unwrap();
        proto::Profile::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn the_profile_decodes_with_its_sample_types_and_python_lines() {
        let report = sample::leaking();
        let p = decode(&render(&report).unwrap());
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        let types: Vec<(&str, &str)> = p.sample_type.iter().map(|t| (s(t.r#type), s(t.unit))).collect();
        assert_eq!(types, SAMPLE_TYPES);
        assert_eq!(s(p.default_sample_type), "growth_rate");
        assert_eq!(s(p.mapping[0].filename), "/usr/bin/python3.11", "the target is the main binary");
        assert_eq!(p.sample.len(), report.stacks.len());
        let first = &p.sample[0];
        assert_eq!(
            first.value,
            vec![report.stacks[0].live_bytes as i64, report.stacks[0].live_allocations as i64, 60_500]
        );
        assert_eq!(p.sample[2].value[2], 0, "not flagged: no growth rate");
        // Leaf first: malloc in libc's mapping, then leak_async at main.py:18.
        let loc = |id: u64| &p.location[id as usize - 1];
        let func = |id: u64| &p.function[id as usize - 1];
        let malloc = loc(first.location_id[0]);
        assert_eq!(s(p.mapping[malloc.mapping_id as usize - 1].filename), "/usr/lib/x86_64-linux-gnu/libc.so.6");
        let leak = loc(first.location_id[1]);
        assert_eq!((leak.mapping_id, leak.line.len(), leak.line[0].line), (0, 1, 18));
        let f = func(leak.line[0].function_id);
        assert_eq!((s(f.name), s(f.filename)), ("leak_async", "/srv/app/main.py"));
        // The two inlined frames at one address are one location with two lines.
        let inlined = loc(p.sample[2].location_id[0]);
        assert_eq!(inlined.line.len(), 2);
        assert_eq!(s(func(inlined.line[0].function_id).name), "_PyObject_Malloc");
        assert_eq!(p.sample[2].location_id.len(), 3);
        // Shared frames share locations; ids are dense.
        assert_eq!(p.sample[0].location_id[0], p.sample[1].location_id[0]);
        assert!(p.location.iter().enumerate().all(|(i, l)| l.id == i as u64 + 1));
        let labels: Vec<(&str, &str)> = first.label.iter().map(|l| (s(l.key), s(l.str))).collect();
        assert!(labels.contains(&("flagged", "true")) && labels.contains(&("allocator", "malloc")));
        assert_eq!(p.time_nanos, 1_700_000_000_000_000_000);
        assert!(p.comment.iter().any(|&c| s(c).starts_with("verdict: leak")));
    }

    #[test]
    fn without_flagged_stacks_inuse_space_is_the_default() {
        let p = decode(&render(&sample::sampling_no_leak()).unwrap());
        assert_eq!(p.string_table[p.default_sample_type as usize], "inuse_space");
        assert!(p.comment.iter().any(|&c| p.string_table[c as usize].starts_with("sampling mode")));
    }
}
