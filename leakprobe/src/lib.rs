//! leakprobe: find memory leaks in live Python processes with eBPF.
//!
//! Data flow: `target` finds what to hook in the process, `kernel` loads the kernel programs and
//! reads their maps, `loader` attaches them to the process, and each interval of `sampling_loop`
//! (the one loop of record, watch and the agent) reads their per-stack aggregates and the
//! process's memory into an `aggregate::Recording`; `verdict` (on top of `trend`) decides leak /
//! no-leak / inconclusive, `assess` turns that into what record, watch, the agent and logs say of
//! a process, `symbolize` names the frames, and `report` renders it all.

pub mod accounting;
pub mod advice;
pub mod agent;
pub mod aggregate;
pub mod assess;
pub mod block_liveness;
pub mod budget;
pub mod census;
pub mod census_history;
pub mod cgroup;
pub mod elf_symbols;
pub mod kernel;
pub mod liveness;
pub mod loader;
pub mod logs;
pub mod probe_cost;
pub mod probe_site;
pub mod proc_maps;
pub mod process_memory;
pub mod python;
pub mod record;
pub mod report;
pub mod sampled_heap;
pub mod sampling_loop;
pub mod stack_names;
pub mod symbolize;
pub mod target;
pub mod tracefs;
pub mod trend;
pub mod untrusted;
pub mod verdict;
pub mod watch;
pub mod windows;
