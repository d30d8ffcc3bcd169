//! How a recording counts allocations: chosen once at start (`record`), carried into the report
//! build, which judges stacks by it.

/// The accounting mode of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accounting {
    /// Every allocator call hooked for the whole recording (`--max-overhead 100`): the per-stack
    /// series come from the kernel's counters of every call (as low waters, see `LowWater`).
    Exact,
    /// Allocator hooks attached in short windows within the overhead budget; the sampled objects
    /// are followed by `liveness`, and only their stacks can be flagged.
    Sampled,
    /// A budget, but no CPython object allocator to sample with: only the memory syscalls (mmap,
    /// brk) are followed.
    SyscallsOnly,
}

impl Accounting {
    /// `max_overhead_percent`: `--max-overhead`; `can_sample`: whether the target has CPython's
    /// object allocator and `PyType_Type` to recognise sampled objects by.
    pub fn choose(max_overhead_percent: f64, can_sample: bool) -> Accounting {
        match (max_overhead_percent >= 100.0, can_sample) {
            (true, _) => Accounting::Exact,
            (false, true) => Accounting::Sampled,
            (false, false) => Accounting::SyscallsOnly,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_follows_the_budget_and_what_can_be_sampled() {
        assert_eq!(Accounting::choose(100.0, true), Accounting::Exact);
        assert_eq!(Accounting::choose(100.0, false), Accounting::Exact);
        assert_eq!(Accounting::choose(5.0, true), Accounting::Sampled);
        assert_eq!(Accounting::choose(5.0, false), Accounting::SyscallsOnly);
    }
}
