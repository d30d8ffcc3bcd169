//! The kernel's event and drop counters as one value, indexed by `Counter` rather than looked up
//! by name (a misspelt name would read 0).

use leakprobe_common::Counter;

const COUNT: usize = Counter::COUNT as usize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters([u64; COUNT]);

impl Counters {
    /// Each counter's total from `total`.
    pub fn from_fn(mut total: impl FnMut(Counter) -> u64) -> Counters {
        let mut values = [0; COUNT];
        for counter in Counter::all() {
            values[counter as usize] = total(counter);
        }
        Counters(values)
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// (name, total) of every counter, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::all().map(|counter| (counter.name(), self.get(counter)))
    }

    /// What a recording and a report store: (name, total) of every counter, in index order.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        self.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_by_counter() {
        let counters = Counters::from_fn(|c| c as u64 * 10);
        assert_eq!(counters.get(Counter::Allocations), 0);
        assert_eq!(counters.get(Counter::ProbeHits), Counter::ProbeHits as u64 * 10);
        assert_eq!(counters.get(Counter::DropProcessEvents), (Counter::COUNT as u64 - 1) * 10);
        assert_eq!(Counters::default().get(Counter::ProbeHits), 0);
    }

    #[test]
    fn named_in_index_order() {
        let counters = Counters::from_fn(|c| c as u64 + 1);
        let named = counters.named();
        assert_eq!(named.len(), Counter::COUNT as usize);
        assert_eq!(named[0], ("allocations", 1));
        assert_eq!(named[Counter::ProbeHits as usize], ("probe_hits", Counter::ProbeHits as u64 + 1));
        assert_eq!(named.last(), Some(&("drop_process_events", Counter::COUNT as u64)));
        let names: Vec<&str> = counters.iter().map(|(n, _)| n).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "two counters share a name");
    }
}
