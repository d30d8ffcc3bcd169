//! The catalogue of leak patterns: what each one is, why it keeps memory alive, and the fix.
//!
//! The patterns are those of the manual guide our users follow (unbounded cache, global list,
//! listener never removed, ...), with its mistakes corrected: `re.compile` per call is not a leak
//! (the `re` module's own cache is bounded), and a dropped `asyncio` task is a problem of ownership
//! (nobody can cancel or await it), not of a missing `await`.

use serde::{Deserialize, Serialize};

/// One pattern of the catalogue. Serialised as its `id` (`unbounded_cache`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternId {
    UnboundedCache,
    GlobalAccumulation,
    ListenerNotRemoved,
    LoggingHandlerPerCall,
    DroppedTask,
    ExecutorNotShutdown,
    UnclosedResource,
    LruCacheMethod,
    RegexCompilePerCall,
}

/// What the catalogue says about a pattern.
#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    pub id: PatternId,
    /// Short name, as printed.
    pub title: &'static str,
    /// False for the look-alike patterns the guide calls leaks but that are bounded.
    pub leaks: bool,
    /// Why this construct keeps memory alive (or, for `leaks == false`, why it does not).
    pub why: &'static str,
    /// The fix, in one or two sentences.
    pub fix: &'static str,
    /// A short example of the fixed code.
    pub example: &'static str,
}

impl PatternId {
    pub const ALL: [PatternId; 9] = [
        PatternId::UnboundedCache,
        PatternId::GlobalAccumulation,
        PatternId::ListenerNotRemoved,
        PatternId::LoggingHandlerPerCall,
        PatternId::DroppedTask,
        PatternId::ExecutorNotShutdown,
        PatternId::UnclosedResource,
        PatternId::LruCacheMethod,
        PatternId::RegexCompilePerCall,
    ];

    /// The id as written in JSON, fixture names and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            PatternId::UnboundedCache => "unbounded_cache",
            PatternId::GlobalAccumulation => "global_accumulation",
            PatternId::ListenerNotRemoved => "listener_not_removed",
            PatternId::LoggingHandlerPerCall => "logging_handler_per_call",
            PatternId::DroppedTask => "dropped_task",
            PatternId::ExecutorNotShutdown => "executor_not_shutdown",
            PatternId::UnclosedResource => "unclosed_resource",
            PatternId::LruCacheMethod => "lru_cache_method",
            PatternId::RegexCompilePerCall => "regex_compile_per_call",
        }
    }

    pub fn pattern(self) -> &'static Pattern {
        CATALOGUE.iter().find(|p| p.id == self).expect("every pattern is in the catalogue")
    }
}

impl std::fmt::Display for PatternId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub static CATALOGUE: [Pattern; 9] = [
    Pattern {
        id: PatternId::UnboundedCache,
        title: "Unbounded cache",
        leaks: true,
        why: "A dict that lives as long as the process (module- or class-level) gets a new key per call and \
              nothing ever removes one: every distinct key keeps its value alive for good.",
        fix: "Bound it: cachetools.TTLCache / LRUCache (maxsize and ttl), or functools.lru_cache(maxsize=N) on a \
              module-level function; or evict explicitly (popitem() when len() passes a limit). cachetools \
              caches are not thread-safe: guard them with a lock in sync endpoints (they run in a thread pool).",
        example: "from cachetools import TTLCache\n\
                  _results = TTLCache(maxsize=10_000, ttl=300)  # at most 10k entries, each for 5 minutes\n\
                  ...\n\
                  _results[query_id] = result",
    },
    Pattern {
        id: PatternId::GlobalAccumulation,
        title: "Global list/set accumulation",
        leaks: true,
        why: "A module- or class-level list, set or deque gets one more element per call (append/add/extend) and \
              nothing trims it: request history, audit trails, 'recent' buffers, task registries.",
        fix: "Keep only what you need: collections.deque(maxlen=N) for the recent items; send history to a log, a \
              database or a metric instead of memory; remove entries when their work is done \
              (set.discard in a done callback).",
        example: "from collections import deque\n\
                  RECENT_REQUESTS = deque(maxlen=1000)  # the oldest entry drops out\n\
                  ...\n\
                  RECENT_REQUESTS.append(summary)",
    },
    Pattern {
        id: PatternId::ListenerNotRemoved,
        title: "Listener or subscription never removed",
        leaks: true,
        why: "A callback registered on a long-lived emitter (message broker, event bus, signal, atexit) per call \
              or per object is held by the emitter for the life of the process, and through a bound method or \
              closure so is the object it belongs to.",
        fix: "Keep the handle and remove it when done (unsubscribe / remove_listener / off / disconnect / \
              unregister) in a finally block or a shutdown hook; register once at startup; or register weakly \
              (weakref.WeakMethod, blinker and Django signals with weak=True).",
        example: "self._subscription = broker.subscribe(\"orders\", self.on_message)\n\
                  ...\n\
                  def close(self):\n    \
                  broker.unsubscribe(self._subscription)",
    },
    Pattern {
        id: PatternId::LoggingHandlerPerCall,
        title: "Logging handler added per call",
        leaks: true,
        why: "logger.addHandler() appends to the logger's handler list and loggers are never freed \
              (logging.getLogger keeps every name it was asked for). Per request, the list grows by one handler \
              (with its stream, lock and formatter) each time, and every record is written once per handler.",
        fix: "Configure handlers once at startup (logging.config.dictConfig); carry per-request context with \
              logging.LoggerAdapter or extra=; if a handler really is per call, removeHandler() it in finally. \
              Never name loggers after request ids.",
        example: "logger = logging.getLogger(__name__)  # handlers configured once, at startup\n\
                  ...\n\
                  log = logging.LoggerAdapter(logger, {\"request_id\": request_id})",
    },
    Pattern {
        id: PatternId::DroppedTask,
        title: "asyncio task created and dropped",
        leaks: true,
        why: "asyncio.create_task() whose task nobody keeps: nothing can await, cancel or time it out, and the \
              event loop keeps only a weak reference. A task that waits on something that never comes (or loops) \
              holds its coroutine frame and everything it references for good; created per request, they pile \
              up. Its exception is never retrieved.",
        fix: "Own the task: asyncio.TaskGroup (3.11+) or await it; for background work keep it in a set and \
              discard it when done, and bound its run time with asyncio.timeout().",
        example: "_background: set[asyncio.Task] = set()\n\
                  ...\n\
                  task = asyncio.create_task(notify(user_id))\n\
                  _background.add(task)\n\
                  task.add_done_callback(_background.discard)",
    },
    Pattern {
        id: PatternId::ExecutorNotShutdown,
        title: "Executor never shut down",
        leaks: true,
        why: "A ThreadPoolExecutor / ProcessPoolExecutor / multiprocessing Pool created per call starts its own \
              workers (threads with their stacks, or processes) and its queues; without shutdown() they live \
              until the pool object is collected, and a multiprocessing Pool's not reliably even then. Kept \
              reachable (stored on an object, caught in a cycle, pending work), they accumulate.",
        fix: "Create one executor at startup and shut it down in the shutdown hook (FastAPI lifespan), or use \
              `with ThreadPoolExecutor() as pool:` for a one-off batch; in async code, asyncio.to_thread / \
              loop.run_in_executor(None, ...) use the loop's shared pool.",
        example: "with ThreadPoolExecutor(max_workers=4) as pool:  # shut down on exit\n    \
                  results = list(pool.map(resize, images))",
    },
    Pattern {
        id: PatternId::UnclosedResource,
        title: "Connection or file never closed",
        leaks: true,
        why: "A file, socket, DB connection, engine or HTTP session opened per call and never closed holds its \
              descriptor, buffers and pooled connections until the object is collected, and for good if anything \
              keeps it reachable (a traceback, a cycle, a transport registered with the event loop).",
        fix: "Use with / async with (contextlib.closing or ExitStack when it has no context manager); for DB \
              sessions a FastAPI dependency that yields and closes in finally; create clients, sessions and \
              engines once per application, not per call.",
        example: "async with aiohttp.ClientSession() as session:  # closed on exit, even on error\n    \
                  async with session.get(url) as response:\n        \
                  return await response.json()",
    },
    Pattern {
        id: PatternId::LruCacheMethod,
        title: "functools.lru_cache on a method (retains self)",
        leaks: true,
        why: "lru_cache / cache on a method keys its one, module-wide cache on `self`: it keeps every instance it \
              has seen alive (and their attributes) until the entry is evicted: never with maxsize=None or \
              @cache, after maxsize newer calls otherwise.",
        fix: "Cache a function of the real arguments (a @staticmethod or module-level function with \
              lru_cache), cache on the instance (functools.cached_property, or a per-instance cache built in \
              __init__), or key the cache on an id rather than the object.",
        example: "class PriceService:\n    \
                  @staticmethod\n    \
                  @functools.lru_cache(maxsize=1024)\n    \
                  def rate(currency: str) -> Decimal:\n        \
                  ...",
    },
    Pattern {
        id: PatternId::RegexCompilePerCall,
        title: "re.compile per call (not a leak)",
        leaks: false,
        why: "re keeps its own cache of compiled patterns, bounded (512 entries in CPython), so compiling per call \
              costs a cache lookup, not memory growth, even for patterns built from request data.",
        fix: "Nothing to fix for memory; compile once at module level for speed. If this line grows, look at what \
              keeps its results (matches, lists or dicts built from them): the container leaks, not the regex.",
        example: "TOKEN = re.compile(r\"[A-Za-z0-9_-]+\")  # once, at import\n\
                  ...\n\
                  TOKEN.findall(text)",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_has_every_pattern_once() {
        for id in PatternId::ALL {
            assert_eq!(CATALOGUE.iter().filter(|p| p.id == id).count(), 1, "{id}");
            assert_eq!(serde_json::to_value(id).unwrap(), id.as_str());
        }
    }
}
