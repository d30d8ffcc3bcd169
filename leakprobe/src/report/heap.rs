//! The heap census's part of the report: which containers hold the growth (holders), which
//! types grow, and what the censuses cost.

use serde::{Deserialize, Serialize};

use super::serde_helpers;
use crate::advice::Advice;

/// One value of a series at a time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CountPoint {
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub t_secs: f64,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub value: f64,
}

/// A container reached from `sys.modules`, across the recording's censuses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HolderReport {
    /// `module.name`, `module.Class.attr`, `module.obj.attr['key']` (names from the target).
    pub path: String,
    /// The container's type.
    #[serde(rename = "type")]
    pub type_name: String,
    pub length_series: Vec<CountPoint>,
    pub retained_bytes_series: Vec<CountPoint>,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub growth_bytes_per_sec: f64,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub growth_items_per_sec: f64,
    pub flagged: bool,
    pub reason: String,
    /// The file and line that add to it, when found in its module's source.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// That line's code.
    #[serde(default)]
    pub code: Option<String>,
    /// The leak pattern of that line, and its fix.
    #[serde(default)]
    pub advice: Option<Advice>,
    /// Its entries are weak references (a `WeakSet`'s or `WeakValueDictionary`'s `data`): never
    /// flagged, since what they refer to is kept alive elsewhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weak: bool,
    /// Not a container read from the heap: asyncio tasks counted by type (`<pending asyncio
    /// tasks>`), kept alive by what each waits on; listed after the containers that keep memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inferred: bool,
}

impl HolderReport {
    /// What it retains at the last census whose walk of it finished, for a person to read.
    pub fn retained_now(&self) -> String {
        match self.retained_bytes_series.last() {
            Some(p) => super::human_bytes(p.value),
            None => "an amount no census finished walking".into(),
        }
    }
}

/// Objects of one type, across the recording's censuses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeReport {
    pub name: String,
    pub count_series: Vec<CountPoint>,
    pub bytes_series: Vec<CountPoint>,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub growth_bytes_per_sec: f64,
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub growth_objects_per_sec: f64,
    pub flagged: bool,
    pub reason: String,
}

/// What the censuses were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CensusSummary {
    pub censuses: usize,
    /// Censuses that stopped at a bound (objects, bytes read, time) before seeing everything.
    pub truncated: usize,
    /// Censuses whose counts by type are left out of `types`: a walk of a GC list broke (the
    /// list was spliced by a collection under it) and saw much less of it than the last whole one.
    #[serde(default)]
    pub short_walks: usize,
    /// leakprobe's time reading the heap, all censuses together.
    #[serde(deserialize_with = "serde_helpers::f64_or_nan")]
    pub elapsed_secs: f64,
    /// Why there is no census, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The GC's own counters over the censuses (the guide's "GC slowdown" signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcSummary>,
}

/// The cyclic GC as the censuses read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GcSummary {
    pub enabled: bool,
    /// Collections per generation since the interpreter started, at the last census.
    pub collections: Vec<i64>,
    /// Collections per generation per second, over the censuses.
    #[serde(deserialize_with = "serde_helpers::vec_f64_or_nan")]
    pub collections_per_sec: Vec<f64>,
    /// Objects found uncollectable (`gc.garbage`), all generations.
    pub uncollectable: i64,
    /// GC-tracked objects at each census.
    pub tracked_objects: Vec<CountPoint>,
}
