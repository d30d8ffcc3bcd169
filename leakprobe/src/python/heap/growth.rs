//! Growth between censuses, the way objgraph's `show_growth` judges it: a type grows when its
//! count exceeds the highest count it had before (so churn back to an old level is not growth).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Census;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeGrowth {
    pub name: String,
    pub count: u64,
    /// Objects above the previous peak.
    pub increase: u64,
    pub bytes: u64,
    /// Bytes now minus bytes at the previous census (negative when it shrank).
    pub bytes_change: i64,
}

/// Peaks per type name across the censuses seen so far.
#[derive(Debug, Clone, Default)]
pub struct Growth {
    peaks: HashMap<String, u64>,
    last_bytes: HashMap<String, u64>,
    censuses: u64,
}

impl Growth {
    pub fn new() -> Self {
        Self::default()
    }

    /// The types that grew past their peak in `census` (most objects added first); the first
    /// census only sets the peaks.
    pub fn update(&mut self, census: &Census) -> Vec<TypeGrowth> {
        let first = self.censuses == 0;
        self.censuses += 1;
        let mut grown = Vec::new();
        for t in &census.types {
            let peak = self.peaks.entry(t.name.clone()).or_insert(0);
            let before = self.last_bytes.insert(t.name.clone(), t.bytes).unwrap_or(0);
            if t.count > *peak {
                if !first {
                    grown.push(TypeGrowth {
                        name: t.name.clone(),
                        count: t.count,
                        increase: t.count - *peak,
                        bytes: t.bytes,
                        bytes_change: t.bytes as i64 - before as i64,
                    });
                }
                *peak = t.count;
            }
        }
        grown.sort_by(|a, b| b.increase.cmp(&a.increase).then(a.name.cmp(&b.name)));
        grown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::heap::fake::census_of as census;

    #[test]
    fn growth_is_past_the_peak() {
        let mut g = Growth::new();
        assert!(g.update(&census(&[("dict", 100), ("list", 50)])).is_empty(), "the first census sets peaks");
        let grown = g.update(&census(&[("dict", 130), ("list", 40), ("Leaky", 5)]));
        let names: Vec<(&str, u64)> = grown.iter().map(|t| (t.name.as_str(), t.increase)).collect();
        assert_eq!(names, vec![("dict", 30), ("Leaky", 5)]);
        assert_eq!(grown[0].bytes_change, 30 * 64);
        // Back up to the old peak is churn, not growth.
        assert!(g.update(&census(&[("dict", 120), ("list", 50), ("Leaky", 5)])).is_empty());
    }
}
