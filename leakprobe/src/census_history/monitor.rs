//! What the monitors (`watch`, the agent) show of a process's heap between censuses: its
//! fastest-growing containers, judged over the censuses kept, and the GC's own counters.

use serde::Serialize;

use super::CensusHistory;
use crate::{report::human_bytes, verdict::VerdictConfig};

/// Censuses a monitor keeps per process (a census every few intervals: minutes of history).
pub const KEPT_CENSUSES: usize = 30;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeapView {
    /// Censuses the judgement rests on.
    pub censuses: usize,
    /// Flagged first, then the fastest growing; only growing ones.
    pub holders: Vec<HolderView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HolderView {
    /// Names from the target: untrusted.
    pub path: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub length: u64,
    pub retained_bytes: u64,
    pub growth_bytes_per_sec: f64,
    pub growth_items_per_sec: f64,
    pub flagged: bool,
}

/// The GC at the last census that read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcView {
    pub enabled: bool,
    /// Per generation, since the interpreter started.
    pub collections: Vec<i64>,
    pub uncollectable: i64,
    pub tracked_objects: u64,
}

impl HeapView {
    /// The `top` growing holders of `history` and its latest GC counters.
    pub fn of(history: &CensusHistory, cfg: &VerdictConfig, top: usize) -> HeapView {
        let mut holders: Vec<HolderView> = history
            .holders(cfg)
            .into_iter()
            .filter(|h| h.flagged || h.growth_bytes_per_sec > 0.0)
            .map(|h| HolderView {
                length: h.length_series.last().map_or(0, |p| p.value as u64),
                retained_bytes: h.retained_bytes_series.last().map_or(0, |p| p.value as u64),
                path: h.path,
                type_name: h.type_name,
                growth_bytes_per_sec: h.growth_bytes_per_sec,
                growth_items_per_sec: h.growth_items_per_sec,
                flagged: h.flagged,
            })
            .collect();
        // Flagged ones in the history's order (containers before pending tasks, each tier fastest
        // first: the sort is stable), then the others fastest first.
        holders.sort_by(|a, b| {
            b.flagged.cmp(&a.flagged).then_with(|| match a.flagged {
                true => std::cmp::Ordering::Equal,
                false => b.growth_bytes_per_sec.total_cmp(&a.growth_bytes_per_sec),
            })
        });
        holders.truncate(top);
        let gc = history.latest_gc().map(|(gc, tracked_objects)| GcView {
            enabled: gc.enabled,
            collections: gc.generations.iter().map(|g| g.collections).collect(),
            uncollectable: gc.generations.iter().map(|g| g.uncollectable).sum(),
            tracked_objects,
        });
        HeapView { censuses: history.times.len(), holders, gc }
    }

    /// Lines for a terminal, each starting with `indent` (names are untrusted: the caller
    /// filters control characters).
    pub fn render(&self, indent: &str) -> String {
        let mut out = String::new();
        for h in &self.holders {
            out.push_str(&format!(
                "{indent}{} {} ({}): {:+.1} items/s, {}; {} items retaining {}\n",
                if h.flagged { "LEAK" } else { "grows" },
                h.path,
                h.type_name,
                h.growth_items_per_sec,
                per_minute(h.growth_bytes_per_sec),
                h.length,
                human_bytes(h.retained_bytes as f64)
            ));
        }
        if let Some(gc) = &self.gc {
            let collections: Vec<String> = gc.collections.iter().map(|c| c.to_string()).collect();
            out.push_str(&format!(
                "{indent}GC{}: {} tracked objects, collections per generation {}{} ({} censuses)\n",
                if gc.enabled { "" } else { " (disabled)" },
                gc.tracked_objects,
                collections.join("/"),
                if gc.uncollectable > 0 { format!(", {} uncollectable", gc.uncollectable) } else { String::new() },
                self.censuses
            ));
        }
        out
    }
}

/// A growth rate per minute (the unit people watch a slow leak in), signed: `+1.2 MB/min`.
pub fn per_minute(bytes_per_sec: f64) -> String {
    let sign = if bytes_per_sec < 0.0 { "-" } else { "+" };
    format!("{sign}{}/min", human_bytes(bytes_per_sec.abs() * 60.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::heap::{GcState, GenerationState};

    #[test]
    fn the_view_lists_growing_holders_flagged_first_and_the_gc() {
        let mut history = CensusHistory::default();
        for i in 0..12u64 {
            let (views, wobbly) = (100 + i * 50, 10 + i % 2);
            let mut c = crate::census_history::tests::census(&[
                ("app.views", views, views * 200),
                ("app.config", 10, 5_000),
                ("app.sometimes", wobbly, 300 + (i % 2) * 30),
            ]);
            c.gc = Some(GcState {
                enabled: true,
                generations: vec![GenerationState { collections: 7 + i as i64, ..Default::default() }; 3],
                ..Default::default()
            });
            history.push(i as f64 * 5.0, &c);
        }
        let view = HeapView::of(&history, &VerdictConfig::default(), 5);
        assert_eq!(view.censuses, 12);
        assert_eq!(view.holders[0].path, "app.views");
        assert!(view.holders[0].flagged);
        assert_eq!(view.holders[0].length, 650);
        assert!(view.holders.iter().all(|h| h.path != "app.config"), "{view:?}");
        let gc = view.gc.as_ref().unwrap();
        assert_eq!((gc.collections[0], gc.tracked_objects), (18, history.gc[11].1.unwrap()));
        let text = view.render("  ");
        assert!(text.contains("LEAK app.views (list): +10.0 items/s"), "{text}");
        assert!(text.contains("GC: "), "{text}");
    }
}
