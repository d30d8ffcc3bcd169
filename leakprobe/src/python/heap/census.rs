//! One census: every GC generation list walked (the permanent generation too, which
//! `gc.get_objects()` leaves out), each object's type validated and its bytes counted, bounded
//! by objects, bytes read and time.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    gc_state::{self, GcState},
    holders::{Holder, HolderBounds, HolderSearch},
    metered::Metered,
    page_cache::PageCache,
    sizes::{self, Pending},
    types::{Kind, TypeTable},
    walk::{self, End},
};
use crate::python::{layout::Layout, memory::ReadMemory, runtime::PythonRuntime};

/// What a census needs to know about the interpreter (all of it decided once per process).
#[derive(Debug, Clone, Copy)]
pub struct Interpreter {
    pub layout: Layout,
    /// Address of `_PyRuntime`.
    pub runtime: u64,
    /// The micro version (3.14.0–3.14.4 have another GC); 0 when unknown.
    pub micro: u32,
    /// Address of `PyType_Type`, when its symbol was found.
    pub type_type: Option<u64>,
}

impl Interpreter {
    pub fn of(python: &PythonRuntime) -> Self {
        let micro = python.version.split('.').nth(2).and_then(|m| m.parse().ok()).unwrap_or(0);
        Interpreter { layout: python.layout, runtime: python.runtime, micro, type_type: python.type_type }
    }
}

/// Where a census stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    pub max_objects: u64,
    pub max_bytes_read: u64,
    pub max_duration: Duration,
    /// Holders (containers reached from `sys.modules`) reported; 0: none are looked for.
    #[serde(default)]
    pub max_holders: usize,
    /// Only the holders' lengths: no GC list is walked, nothing retained is (`HolderBounds`).
    #[serde(default)]
    pub lengths_only: bool,
}

impl Default for Bounds {
    /// About 10 s of reading on a busy 2-core machine (python-heap.md §14.3).
    fn default() -> Self {
        Bounds {
            max_objects: 10_000_000,
            // Time is the bound that matters; this one only stops a walk gone round in circles.
            // At 1 GiB the type count of a 1.5 GB heap stopped short every time, and with it every
            // holder search (measured: a recording with no holder at all).
            max_bytes_read: 16 << 30,
            max_duration: Duration::from_secs(20),
            max_holders: 0,
            lengths_only: false,
        }
    }
}

/// The bound that ended a census early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Objects,
    BytesRead,
    Duration,
}

/// What was read but did not validate (skipped, not counted in `types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Invalid {
    /// Objects whose type pointer is not a plausible type.
    pub types: u64,
    /// Objects with an implausible refcount.
    pub refcounts: u64,
    /// Lists and dicts whose buffers did not validate (counted, without those bytes).
    pub containers: u64,
    /// Generation lists that broke under us (an object unlinked mid-walk) after every retry.
    pub broken_lists: u64,
}

impl Invalid {
    pub fn total(&self) -> u64 {
        self.types + self.refcounts + self.containers + self.broken_lists
    }
}

/// Objects and bytes of one type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCount {
    /// `tp_name`, or `__qualname__` for classes (heap types). From the target: untrusted.
    pub name: String,
    pub count: u64,
    pub bytes: u64,
}

/// Objects seen on one GC list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListWalk {
    /// "0", "1", "2" or "permanent".
    pub generation: String,
    pub objects: u64,
    pub complete: bool,
    /// A link did not hold (the list was spliced under the walk, retries included); a walk that
    /// a bound stopped is neither complete nor broken.
    #[serde(default)]
    pub broken: bool,
    /// Walks started again because the list changed under the walk.
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Census {
    /// Most objects first.
    pub types: Vec<TypeCount>,
    pub objects: u64,
    pub bytes: u64,
    pub lists: Vec<ListWalk>,
    pub gc: Option<GcState>,
    pub bounds_hit: Option<Bound>,
    /// The containers reached from `sys.modules` that retain the most (when asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<Holder>,
    /// The holder search stopped at a bound (objects or time) before it reached everything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holders_truncated: bool,
    pub invalid: Invalid,
    /// 3.14: the asyncio C tasks alive, counted from every thread's list of them, and their
    /// objects' bytes (`None` on other versions, or when a walk of a list broke).
    #[serde(default)]
    pub asyncio_tasks: Option<(u64, u64)>,
    pub bytes_read: u64,
    pub reads: u64,
    pub elapsed_secs: f64,
    /// Holders' lengths only (`Bounds::lengths_only`): no types, no objects, nothing retained.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lengths_only: bool,
}

/// The most memory a census keeps of copied target pages.
const PAGE_CACHE_BYTES: u64 = 32 << 20;
/// Walks started again on a list that broke before it is given up, the first after this
/// pause, each next one after four times the last.
const RETRIES: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// One walk of one list: what it counted and how it ended.
struct Walk {
    tally: Tally,
    found: Vec<Pending>,
    /// Coroutines met (their locals are roots for the holder search).
    coroutines: Vec<u64>,
    bad: Invalid,
    seen: u64,
    end: End,
}
/// Coroutines a census keeps for the holder search, at most.
const MAX_COROUTINES: usize = 100_000;
/// Plausible refcounts are below this (python-heap.md §4).
const MAX_REFCNT: u64 = 1 << 40;

fn plausible_refcnt(layout: &Layout, refcnt: u64) -> bool {
    (refcnt > 0 && refcnt < MAX_REFCNT) || (layout.heap.immortal_refcounts && (refcnt as u32 as i32) < 0)
}

/// Per type index: (objects, bytes).
type Tally = HashMap<usize, (u64, u64)>;

/// Takes one census of the heap of `interp` (read through `mem`), within `bounds`.
pub fn take_census(mem: &impl ReadMemory, interp: &Interpreter, bounds: &Bounds) -> Result<Census, String> {
    let started = Instant::now();
    let metered = Metered::new(mem);
    let mem = PageCache::new(&metered, PAGE_CACHE_BYTES);
    let layout = &interp.layout;
    let heads = gc_state::locate(&mem, layout, interp.runtime, interp.micro)?;
    let gc = gc_state::read_state(&mem, &layout.heap.gc, &heads);
    let mut types = TypeTable::new(layout, interp.type_type);
    let mut invalid = Invalid::default();
    let mut total: Tally = HashMap::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut coroutines: Vec<u64> = Vec::new();
    let mut lists = Vec::new();
    let mut bound = None;
    let mut objects = 0u64;
    for (name, head) in heads.lists() {
        if bound.is_some() || bounds.lengths_only {
            break;
        }
        let (mut retries, mut best): (u32, Option<Walk>) = (0, None);
        loop {
            let (mut tally, mut found, mut bad, mut seen) = (Tally::new(), Vec::new(), Invalid::default(), 0u64);
            let mut met_coroutines = Vec::new();
            let end = walk::walk_list(&mem, head, layout.heap.gc.head_size, bounds.max_objects + 1, |node| {
                if objects + seen >= bounds.max_objects {
                    bound = Some(Bound::Objects);
                } else if seen % 1024 == 0 && metered.bytes() >= bounds.max_bytes_read {
                    bound = Some(Bound::BytesRead);
                } else if seen % 1024 == 0 && started.elapsed() >= bounds.max_duration {
                    bound = Some(Bound::Duration);
                }
                if bound.is_some() {
                    return false;
                }
                seen += 1;
                if !plausible_refcnt(layout, node.refcnt) {
                    bad.refcounts += 1;
                    return true;
                }
                let Some(index) = types.resolve(&mem, node.ob_type) else {
                    bad.types += 1;
                    return true;
                };
                let info = &types.types[index];
                let entry = tally.entry(index).or_default();
                entry.0 += 1;
                entry.1 += sizes::own_size(layout, info, &node);
                if matches!(info.kind, Kind::List | Kind::Dict) {
                    found.push(Pending { object: node.object, kind: info.kind, type_index: index });
                } else if info.kind == Kind::Coroutine && coroutines.len() + met_coroutines.len() < MAX_COROUTINES {
                    met_coroutines.push(node.object);
                }
                true
            });
            // Of the walks of a list that keeps breaking, the longest is the best view of it.
            let walk = Walk { tally, found, coroutines: met_coroutines, bad, seen, end };
            if best.as_ref().is_none_or(|b| walk.end == End::Complete || walk.seen > b.seen) {
                best = Some(walk);
            }
            let pause = RETRY_PAUSE * 4u32.pow(retries);
            if end == End::Broken
                && retries < RETRIES
                && bound.is_none()
                && started.elapsed() + pause < bounds.max_duration
            {
                // A collection splices lists for a while: give it time, and read fresh pages.
                retries += 1;
                std::thread::sleep(pause);
                mem.clear();
                continue;
            }
            let Some(Walk { tally, found, coroutines: met, bad, seen, end }) = best.take() else { break };
            coroutines.extend(met);
            invalid.types += bad.types;
            invalid.refcounts += bad.refcounts;
            if end == End::Broken {
                invalid.broken_lists += 1;
            }
            for (index, (count, bytes)) in tally {
                let entry = total.entry(index).or_default();
                entry.0 += count;
                entry.1 += bytes;
            }
            pending.extend(found);
            objects += seen;
            let complete = end == End::Complete;
            let broken = end == End::Broken;
            lists.push(ListWalk { generation: name.to_string(), objects: seen, complete, broken, retries });
            break;
        }
    }
    let (extra, bad_containers) = sizes::out_of_line(&mem, layout, &pending);
    invalid.containers += bad_containers;
    for (p, bytes) in pending.iter().zip(extra) {
        total.entry(p.type_index).or_default().1 += bytes;
    }
    // Types of the same name (a class defined twice, say) are one line, as objgraph shows them.
    let mut by_name: HashMap<&str, (u64, u64)> = HashMap::new();
    for (index, (count, bytes)) in &total {
        let entry = by_name.entry(types.types[*index].name.as_str()).or_default();
        entry.0 += count;
        entry.1 += bytes;
    }
    let mut counts: Vec<TypeCount> =
        by_name.into_iter().map(|(name, (count, bytes))| TypeCount { name: name.to_string(), count, bytes }).collect();
    counts.sort_by(|a, b| b.count.cmp(&a.count).then(b.bytes.cmp(&a.bytes)).then(a.name.cmp(&b.name)));
    let (mut holders, mut holders_truncated) = (Vec::new(), false);
    if bounds.max_holders > 0 && bound.is_none() {
        let modules = mem.read_u64(heads.interpreter.wrapping_add(layout.heap.interp_modules)).unwrap_or(0);
        let holder_bounds = HolderBounds {
            max_objects: bounds.max_objects,
            deadline: started + bounds.max_duration,
            max_holders: bounds.max_holders,
            lengths_only: bounds.lengths_only,
        };
        let mut search = HolderSearch::new(&mem, layout, &mut types, holder_bounds);
        holders = search.from_roots(modules, &coroutines);
        holders_truncated = search.truncated;
    }
    let asyncio_tasks = count_asyncio_tasks(&mem, layout, heads.interpreter)
        .zip(layout.heap.asyncio_tasks)
        .map(|(n, list)| (n, n * list.task_size));
    let counted: u64 = counts.iter().map(|t| t.count).sum();
    let bytes = counts.iter().map(|t| t.bytes).sum();
    Ok(Census {
        types: counts,
        objects: counted,
        bytes,
        lists,
        gc,
        bounds_hit: bound,
        holders,
        holders_truncated,
        invalid,
        asyncio_tasks,
        bytes_read: metered.bytes(),
        reads: metered.calls(),
        elapsed_secs: started.elapsed().as_secs_f64(),
        lengths_only: bounds.lengths_only,
    })
}

/// Thread states, and asyncio tasks over all their lists, a count follows at most.
const MAX_THREADS: usize = 1024;
const MAX_TASKS: u64 = 1_000_000;

/// 3.14's asyncio C tasks: the nodes of every thread state's circular list of them, until each
/// list comes back to its head; `None` where the layout has no such list, a walk broke (a task
/// unlinked under it: a node that is null, misaligned or unreadable), or a bound ran out (a
/// thread-state list that comes back on itself, more tasks than `MAX_TASKS`). Tasks of threads
/// that ended move to the interpreter's own list, which is not read.
fn count_asyncio_tasks(mem: &impl ReadMemory, layout: &Layout, interpreter: u64) -> Option<u64> {
    let list = layout.heap.asyncio_tasks?;
    let threads = &layout.threads;
    let mut tstate = mem.read_u64(interpreter.wrapping_add(threads.interpreter_threads_head)).ok()?;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    while tstate != 0 {
        if seen.len() >= MAX_THREADS || !seen.insert(tstate) {
            return None;
        }
        let head = tstate.wrapping_add(list.thread_head);
        let mut node = mem.read_u64(head).ok()?;
        // A thread state whose list was never set up (next still 0) has none.
        while node != head && node != 0 {
            if node % 8 != 0 || total >= MAX_TASKS {
                return None;
            }
            total += 1;
            node = mem.read_u64(node).ok().filter(|next| *next != 0)?;
        }
        tstate = mem.read_u64(tstate.wrapping_add(threads.thread_next)).unwrap_or(0);
    }
    Some(total)
}
