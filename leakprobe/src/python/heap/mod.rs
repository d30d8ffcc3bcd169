//! A census of a live CPython heap, read from outside with `process_vm_readv` only: the target
//! is never stopped and nothing runs inside it. Every object the cyclic GC tracks is found on the
//! GC's generation lists and counted by type, with its size (objgraph's
//! `show_most_common_types` / `show_growth`, without touching the process).
//!
//! The target keeps running, so every word read may be torn or recycled: each pointer is
//! validated, what does not validate is skipped and counted, and a census is bounded by objects,
//! bytes read and time (`Bounds`); the bound that stopped it is reported.

mod address_set;
pub mod census;
mod coroutines;
pub mod dicts;
pub mod gc_state;
pub mod growth;
pub mod holders;
pub mod instances;
pub mod metered;
pub mod page_cache;
mod referents;
pub mod sizes;
pub mod types;
pub mod walk;

#[cfg(test)]
mod census_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod live_tests;

pub use census::{take_census, Bound, Bounds, Census, Interpreter, Invalid, ListWalk, TypeCount};
pub use gc_state::{GcState, GenerationState};
pub use growth::{CensusGrowth, Grown, Growth};
pub use holders::Holder;
