//! leakprobe: find memory leaks in live Python processes with eBPF.
//!
//! Data flow: `target` finds what to hook in the process, `loader` loads and attaches the kernel
//! programs, `sampler` reads their per-stack aggregates and the process's memory each interval into
//! an `aggregate::Recording`, `verdict` (on top of `trend`) decides leak / no-leak / inconclusive,
//! `symbolize` names the frames, and `report` renders it all.

pub mod advice;
pub mod agent;
pub mod aggregate;
pub mod budget;
pub mod cgroup;
pub mod elf_symbols;
pub mod liveness;
pub mod loader;
pub mod logs;
pub mod probe_cost;
pub mod probe_site;
pub mod process_memory;
pub mod python;
pub mod record;
pub mod report;
pub mod sampled_heap;
pub mod sampler;
pub mod stack_names;
pub mod symbolize;
pub mod target;
pub mod tracefs;
pub mod trend;
pub mod verdict;
pub mod watch;
pub mod windows;
