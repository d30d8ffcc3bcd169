//! Growth between censuses, the way objgraph's `show_growth` judges it: a type grows when its
//! count exceeds the highest count it had before (so churn back to an old level is not growth);
//! a holder likewise by the objects it retains.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Census;

/// A type (by name) or a holder (by path) past its previous peak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grown {
    /// The type name or the holder path.
    pub name: String,
    /// Objects of the type, or those the holder retains (its length misses growth inside
    /// its items).
    pub count: u64,
    /// Above the previous peak.
    pub increase: u64,
    /// The type's bytes, or what the holder retains.
    pub bytes: u64,
    /// Bytes now minus bytes at the previous census (negative when it shrank).
    pub bytes_change: i64,
}

/// What grew between the last census and this one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusGrowth {
    pub types: Vec<Grown>,
    pub holders: Vec<Grown>,
}

/// Peaks and last bytes per name.
#[derive(Debug, Clone, Default)]
struct Peaks {
    peaks: HashMap<String, u64>,
    last_bytes: HashMap<String, u64>,
}

impl Peaks {
    /// Records (name, count, bytes); what grew past its peak, unless `quiet` (the first census).
    fn update<'a>(&mut self, quiet: bool, seen: impl Iterator<Item = (&'a str, u64, u64)>) -> Vec<Grown> {
        let mut grown = Vec::new();
        for (name, count, bytes) in seen {
            let peak = self.peaks.entry(name.to_string()).or_insert(0);
            let before = self.last_bytes.insert(name.to_string(), bytes).unwrap_or(0);
            if count > *peak {
                if !quiet {
                    let bytes_change = bytes as i64 - before as i64;
                    grown.push(Grown { name: name.to_string(), count, increase: count - *peak, bytes, bytes_change });
                }
                *peak = count;
            }
        }
        grown.sort_by(|a, b| b.increase.cmp(&a.increase).then(a.name.cmp(&b.name)));
        grown
    }
}

/// Peaks per type name and per holder path across the censuses seen so far.
#[derive(Debug, Clone, Default)]
pub struct Growth {
    types: Peaks,
    holders: Peaks,
    censuses: u64,
}

impl Growth {
    pub fn new() -> Self {
        Self::default()
    }

    /// The types and holders that grew past their peak in `census` (most added first); the
    /// first census only sets the peaks.
    pub fn update(&mut self, census: &Census) -> CensusGrowth {
        let first = self.censuses == 0;
        self.censuses += 1;
        CensusGrowth {
            types: self.types.update(first, census.types.iter().map(|t| (t.name.as_str(), t.count, t.bytes))),
            holders: self
                .holders
                .update(first, census.holders.iter().map(|h| (h.path.as_str(), h.retained_objects, h.retained_bytes))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::heap::fake::census_of as census;

    #[test]
    fn growth_is_past_the_peak() {
        let mut g = Growth::new();
        assert!(g.update(&census(&[("dict", 100), ("list", 50)])).types.is_empty(), "the first census sets peaks");
        let grown = g.update(&census(&[("dict", 130), ("list", 40), ("Leaky", 5)])).types;
        let names: Vec<(&str, u64)> = grown.iter().map(|t| (t.name.as_str(), t.increase)).collect();
        assert_eq!(names, vec![("dict", 30), ("Leaky", 5)]);
        assert_eq!(grown[0].bytes_change, 30 * 64);
        // Back up to the old peak is churn, not growth.
        assert!(g.update(&census(&[("dict", 120), ("list", 50), ("Leaky", 5)])).types.is_empty());
    }

    #[test]
    fn holders_grow_by_length() {
        let holder = |length| crate::python::heap::Holder {
            path: "app.subs".into(),
            type_name: "list".into(),
            length,
            retained_objects: length + 1,
            retained_bytes: length * 100,
            ..Default::default()
        };
        let mut g = Growth::new();
        let mut c = census(&[]);
        c.holders = vec![holder(10)];
        assert!(g.update(&c).holders.is_empty());
        c.holders = vec![holder(25)];
        let grown = g.update(&c).holders;
        assert_eq!(
            (grown[0].name.as_str(), grown[0].count, grown[0].increase, grown[0].bytes_change),
            ("app.subs", 26, 15, 1500)
        );
    }
}
