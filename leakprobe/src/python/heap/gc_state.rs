//! Finding the cyclic GC's generation lists in `_PyRuntime`'s main interpreter, and reading the
//! GC's own counters (collections per generation, objects allocated since the last one): the
//! "GC slowdown" signal, a few hundred bytes per read.

use serde::{Deserialize, Serialize};

use crate::python::{
    layout::{GcLayout, Layout},
    memory::ReadMemory,
};

/// Generations in CPython 3.10–3.14 (3.14.0–3.14.4: `young`, `old[0]`, `old[1]`).
pub const GENERATIONS: usize = 3;

/// Where the list heads are in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcHeads {
    /// The main interpreter's `PyInterpreterState`.
    pub interpreter: u64,
    /// Its `struct _gc_runtime_state`.
    pub state: u64,
    pub generations: [u64; GENERATIONS],
    pub permanent: u64,
    /// 3.14.0–3.14.4's incremental GC (bit 0 of `_gc_next` is its old-space bit, masked anyway).
    pub incremental: bool,
}

impl GcHeads {
    /// Every list a tracked object can be on, with the name the census reports it under.
    pub fn lists(&self) -> [(&'static str, u64); GENERATIONS + 1] {
        let [g0, g1, g2] = self.generations;
        [("0", g0), ("1", g1), ("2", g2), ("permanent", self.permanent)]
    }
}

/// The interpreter's GC heads. `micro` is the interpreter's micro version (0 when unknown).
///
/// The headers' `generations` offset is checked against the interpreter's own `generation0`
/// pointer: Debian's 3.13 lowers `PyGC_Head`'s alignment to 4, which moves the array 4 bytes
/// earlier than upstream's headers say (python-heap.md §0.2, §3.4).
pub fn locate(mem: &impl ReadMemory, layout: &Layout, runtime: u64, micro: u32) -> Result<GcHeads, String> {
    let interp = mem
        .read_u64(runtime.wrapping_add(layout.threads.runtime_interpreters_head))
        .map_err(|e| format!("cannot read the interpreter list: {e}"))?;
    if interp == 0 {
        return Err("no interpreter (finalizing?)".into());
    }
    let gc = &layout.heap.gc;
    let state = interp.wrapping_add(layout.heap.interp_gc);
    let from_headers = state.wrapping_add(gc.generations);
    let generation0 = mem.read_u64(state.wrapping_add(gc.generation0)).unwrap_or(0);
    let (first, incremental) = if generation0 == from_headers || generation0 == from_headers.wrapping_sub(4) {
        (generation0, false)
    } else if micro < gc.incremental_before_micro {
        (from_headers, true)
    } else {
        return Err(format!(
            "the GC state does not look like CPython 3.{}'s (generation0 {generation0:#x}, expected {from_headers:#x})",
            layout.minor
        ));
    };
    let generations = [0, 1, 2].map(|i| first.wrapping_add(i * gc.generation_size));
    let heads =
        GcHeads { interpreter: interp, state, generations, permanent: state.wrapping_add(gc.permanent), incremental };
    // An empty list points to itself; a head that points nowhere is not a head.
    for (name, head) in heads.lists() {
        match mem.read_u64(head) {
            Ok(next) if next != 0 => {}
            _ => return Err(format!("GC generation {name} at {head:#x} is not a list head")),
        }
    }
    Ok(heads)
}

/// One generation's counters, as `gc.get_threshold()`, `gc.get_count()` and `gc.get_stats()`
/// say them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GenerationState {
    pub threshold: i64,
    pub count: i64,
    pub collections: i64,
    pub collected: i64,
    pub uncollectable: i64,
}

/// The GC's own state at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GcState {
    pub enabled: bool,
    /// A collection was running when read (its lists were being spliced).
    pub collecting: bool,
    pub incremental: bool,
    pub generations: Vec<GenerationState>,
}

fn i32_at(bytes: &[u8], at: u64) -> Option<i64> {
    let at = usize::try_from(at).ok()?;
    Some(i64::from(i32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?)))
}

fn i64_at(bytes: &[u8], at: u64) -> Option<i64> {
    let at = usize::try_from(at).ok()?;
    Some(i64::from_le_bytes(bytes.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// Bytes of the GC state the counters lie in.
fn state_span(gc: &GcLayout) -> u64 {
    [
        gc.stats + gc.stats_size * GENERATIONS as u64,
        gc.collecting + 4,
        gc.generations + gc.generation_size * 3,
        gc.enabled + 4,
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
}

/// The counters, in one read of the GC state.
pub fn read_state(mem: &impl ReadMemory, gc: &GcLayout, heads: &GcHeads) -> Option<GcState> {
    let span = usize::try_from(state_span(gc)).ok()?;
    let bytes = mem.read_vec(heads.state, span).ok()?;
    let mut generations = Vec::with_capacity(GENERATIONS);
    for (i, head) in heads.generations.iter().enumerate() {
        let head = head.checked_sub(heads.state)?;
        let stats = gc.stats + gc.stats_size * i as u64;
        generations.push(GenerationState {
            threshold: i32_at(&bytes, head + gc.threshold)?,
            count: i32_at(&bytes, head + gc.count)?,
            collections: i64_at(&bytes, stats)?,
            collected: i64_at(&bytes, stats + 8)?,
            uncollectable: i64_at(&bytes, stats + 16)?,
        });
    }
    Some(GcState {
        enabled: i32_at(&bytes, gc.enabled)? != 0,
        collecting: i32_at(&bytes, gc.collecting)? != 0,
        incremental: heads.incremental,
        generations,
    })
}
