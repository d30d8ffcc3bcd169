//! The census of a live interpreter against what `gc.get_objects()` says inside it, on every
//! interpreter the suite is given (`LEAKPROBE_PYTHON`, `LEAKPROBE_EXTRA_PYTHONS`); skipped, with a
//! message, when none is. Needs the right to read another process's memory (root).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{ChildStdin, ChildStdout, Command, Stdio},
};

use super::{take_census, Bounds, Census, Interpreter};
use crate::{
    python::{
        runtime,
        test_pythons::{self, KillOnDrop},
    },
    target::Target,
};

/// Builds known objects, then for each byte on stdin reports its own census (type names as
/// hex, `sys.getsizeof` sums) and waits, blocked in `os.read` with the GC off so that the heap
/// read from outside is the one it counted; `f` freezes everything first. Gone after 60 s
/// whatever happens.
const SCRIPT: &str = r#"
import collections, gc, os, signal, sys
signal.alarm(60)
gc.unfreeze()
class Leaky:
    def __init__(self, i):
        self.i = i
        self.tag = "x"
LEAKS = [Leaky(i) for i in range(5000)]
HUGE = [LEAKS[0]] * 1_100_000
SMALL = [{"k": i, "v": [i]} for i in range(3000)]
class Registry:
    cache = {("key", i): i * 1000 for i in range(1000)}
SEEN = set(range(300, 700))
class Broker:
    def __init__(self, n):
        self.name = "broker"
        self.subs = {"updates": [object() for _ in range(n)]}
BROKER = Broker(250)
TOUCHED = Broker(120)
RECENT = collections.deque([[i] for i in range(150)], maxlen=1000)
vars(TOUCHED)  # its attributes now live in a dict object
import functools
def lookup(key, _cache={}):
    _cache[key] = [key]
for i in range(200):
    lookup(i)
def make_tracker():
    seen = []
    def track(x):
        seen.append(x)
    return track
track = make_tracker()
for i in range(70):
    track([i])
class Pricing:
    @functools.lru_cache(maxsize=None)
    def quote(self, sku):
        return [sku]
PRICING = Pricing()
for i in range(90):
    PRICING.quote(i)
class Sample:
    __slots__ = ("name", "values")
    def __init__(self):
        self.name, self.values = "s", [[i] for i in range(40)]
SAMPLE = Sample()
class State:
    pass
class App:
    def __init__(self):
        self.state = State()
        self.state._state = {"sessions": {("s", i): [i] for i in range(80)}}
        self.routes = [State() for _ in range(3)]
        self.routes[1].endpoint = make_tracker()
APP = App()
for i in range(30):
    APP.routes[1].endpoint([i])
OUTBOX = bytearray()
for i in range(2000):
    OUTBOX.extend(b"%05d log line\n" % i)
import weakref
WATCHED = weakref.WeakSet(LEAKS[:40])
import types
@types.coroutine
def _pause():
    yield
async def collector(n):
    history = [[i] for i in range(n)]
    await _pause()
    return history
COLLECTOR = collector(55)
COLLECTOR.send(None)
gc.disable()
def key(t):
    if t.__flags__ & (1 << 9) or t.__module__ == "builtins":
        return t.__qualname__
    return t.__module__ + "." + t.__qualname__
def report():
    objs = gc.get_objects()
    counts, sizes = collections.Counter(), collections.Counter()
    for o in objs:
        counts[key(type(o))] += 1
        sizes[key(type(o))] += sys.getsizeof(o)
    out = ["total %d %d" % (len(objs), gc.get_freeze_count()), "outbox %d" % sys.getsizeof(OUTBOX)]
    out += ["type %d %d %s" % (n, sizes[k], k.encode().hex()) for k, n in counts.items()]
    del objs, counts, sizes
    print("\n".join(out) + "\nready", flush=True)
while True:
    command = os.read(0, 1)
    if command == b"f":
        gc.freeze()
    elif command != b"r":
        break
    report()
"#;

/// What the interpreter said about itself: total, frozen, and (count, bytes) per type.
struct Inside {
    total: u64,
    frozen: u64,
    types: HashMap<String, (u64, u64)>,
    /// `sys.getsizeof(OUTBOX)`: its object and its buffer (`ob_alloc`).
    outbox: u64,
}

fn ask(stdin: &mut ChildStdin, stdout: &mut BufReader<ChildStdout>, command: &[u8]) -> Inside {
    stdin.write_all(command).unwrap();
    stdin.flush().unwrap();
    let mut inside = Inside { total: 0, frozen: 0, types: HashMap::new(), outbox: 0 };
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the interpreter ended early");
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["ready"] => return inside,
            ["outbox", n] => inside.outbox = n.parse().unwrap(),
            ["total", n, frozen] => (inside.total, inside.frozen) = (n.parse().unwrap(), frozen.parse().unwrap()),
            ["type", n, bytes, hex] => {
                let name = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
                inside.types.insert(String::from_utf8(name).unwrap(), (n.parse().unwrap(), bytes.parse().unwrap()));
            }
            other => panic!("unexpected line {other:?}"),
        }
    }
}

fn outside(c: &Census, name: &str) -> (u64, u64) {
    c.types.iter().find(|t| t.name == name).map_or((0, 0), |t| (t.count, t.bytes))
}

/// Within `percent` of `want`, or a few objects off (the report's own transient objects).
fn close(got: u64, want: u64, percent: f64) -> bool {
    (got as f64 - want as f64).abs() <= (want as f64 * percent / 100.0).max(3.0)
}

#[test]
fn census_matches_gc_get_objects_live() {
    // Every interpreter given, not one per minor version: Debian's static 3.11 is another build.
    for python in test_pythons::given() {
        let mut child = KillOnDrop(
            Command::new(&python).args(["-c", SCRIPT]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap(),
        );
        let mut stdin = child.0.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
        let inside = ask(&mut stdin, &mut stdout, b"r");
        let target = Target::inspect(child.0.id()).unwrap();
        let python_rt = runtime::detect(&target).unwrap().expect("a CPython");
        let interp = Interpreter::of(&python_rt);
        let census =
            take_census(&python_rt.mem, &interp, &Bounds { max_holders: 10_000, ..Bounds::default() }).unwrap();
        let who = format!("{} ({})", python.display(), python_rt.version);
        eprintln!(
            "{who}: census {} objects, {} bytes in {:.1} ms, {} bytes read in {} reads; gc.get_objects() {}; invalid {:?}",
            census.objects,
            census.bytes,
            census.elapsed_secs * 1e3,
            census.bytes_read,
            census.reads,
            inside.total,
            census.invalid
        );
        assert_eq!(census.bounds_hit, None, "{who}");
        assert_eq!(census.invalid.total(), 0, "{who}: {:?}", census.invalid);
        assert_eq!(inside.frozen, 0);
        assert!(
            close(census.objects, inside.total, 1.0),
            "{who}: {} objects outside, {} inside",
            census.objects,
            inside.total
        );
        for name in ["Leaky", "dict", "list", "function", "tuple"] {
            let (count, bytes) = outside(&census, name);
            let (want, want_bytes) = inside.types.get(name).copied().unwrap_or_default();
            eprintln!("{who}: {name:>10}: census {count:>6} objects {bytes:>9} bytes; inside {want:>6} objects {want_bytes:>9} bytes (getsizeof)");
        }
        assert_eq!(outside(&census, "Leaky").0, 5000, "{who}");
        for (name, (want, _)) in &inside.types {
            let got = outside(&census, name).0;
            assert!(close(got, *want, 3.0), "{who}: {name}: {got} outside, {want} inside");
        }
        for name in ["dict", "list"] {
            let (got, want) = (outside(&census, name).1, inside.types[name].1);
            assert!(close(got, want, 10.0), "{who}: {name}: {got} bytes outside, {want} inside");
        }
        let holder = |path: &str| {
            census.holders.iter().find(|h| h.path == path).unwrap_or_else(|| panic!("{who}: no holder {path}"))
        };
        for h in census.holders.iter().take(5) {
            eprintln!(
                "{who}: holder {} ({}) length {} retains {} objects, {} bytes",
                h.path, h.type_name, h.length, h.retained_objects, h.retained_bytes
            );
        }
        let leaks = holder("__main__.LEAKS");
        assert_eq!((leaks.type_name.as_str(), leaks.length), ("list", 5000), "{who}");
        assert!(leaks.retained_objects > 5000, "{who}: {leaks:?}");
        // Longer than a census once walked (1M): its 8.8 MB item array is what it retains.
        let huge = holder("__main__.HUGE");
        assert_eq!(huge.length, 1_100_000, "{who}");
        assert!(huge.retained_bytes > 8_800_000, "{who}: {huge:?}");
        let small = holder("__main__.SMALL");
        assert_eq!(small.length, 3000);
        assert!(small.retained_objects > 6000, "{who}: the dicts and their lists: {small:?}");
        assert_eq!(holder("__main__.Registry.cache").length, 1000);
        assert_eq!((holder("__main__.SEEN").type_name.as_str(), holder("__main__.SEEN").length), ("set", 400));
        assert!(!census.holders_truncated);
        let subs = holder("__main__.BROKER.subs");
        assert_eq!((subs.type_name.as_str(), subs.length), ("dict", 1), "{who}");
        let updates = holder("__main__.BROKER.subs['updates']");
        assert_eq!((updates.type_name.as_str(), updates.length), ("list", 250), "{who}");
        assert_eq!(updates.retained_objects, 251, "{who}: the list and its objects: {updates:?}");
        let recent = holder("__main__.RECENT");
        // `collections.deque` up to 3.11, a heap type named by its `__qualname__` from 3.12.
        assert!(recent.type_name.ends_with("deque") && recent.length == 150, "{who}: {recent:?}");
        assert!(recent.retained_objects > 150, "{who}: the deque and its lists: {recent:?}");
        // Functions' defaults and closures, lru_cache dicts, __slots__, instances a few levels down.
        assert_eq!(holder("__main__.lookup(_cache=)").length, 200, "{who}");
        assert_eq!(holder("__main__.make_tracker.<locals>.seen").length, 70, "{who}");
        let quote = holder("__main__.Pricing.quote.<lru_cache>");
        assert_eq!(quote.length, 90, "{who}");
        let (file, line) = quote.defined_at.clone().unwrap_or_else(|| panic!("{who}: {quote:?}"));
        assert!(file.ends_with(".py") || file == "<string>", "{who}: {file}");
        assert!(line > 0);
        assert_eq!(holder("__main__.SAMPLE.values").retained_objects, 41, "{who}: through __slots__");
        assert_eq!(holder("__main__.APP.state._state['sessions']").length, 80, "{who}");
        assert_eq!(holder("__main__.APP.routes[1].endpoint.<closure>.seen").length, 30, "{who}");
        // A buffer grown in place: its length in bytes, its buffer (`ob_alloc`) what it retains.
        let outbox = holder("__main__.OUTBOX");
        assert_eq!((outbox.type_name.as_str(), outbox.length), ("bytearray", 30_000), "{who}");
        assert_eq!(outbox.retained_bytes, inside.outbox, "{who}: {outbox:?} against sys.getsizeof");
        let watched = holder("__main__.WATCHED.data");
        assert!(watched.weak && watched.length == 40, "{who}: {watched:?}");
        assert!(census.holders.iter().filter(|h| h.weak).all(|h| h.path.ends_with(".data")), "{who}");
        // A suspended coroutine's locals: a root no module reaches.
        let history = holder("<coroutine collector>.history");
        assert_eq!((history.length, history.retained_objects), (55, 56), "{who}: {history:?}");
        assert_eq!(history.module_file.as_deref(), Some("<string>"), "{who}");
        let touched = holder("__main__.TOUCHED.subs['updates']");
        assert_eq!(touched.retained_objects, 121, "{who}: through a materialised __dict__");
        // Lengths only: every container found, where it is and how long, nothing walked below.
        let quick = take_census(
            &python_rt.mem,
            &interp,
            &Bounds { max_holders: 10_000, lengths_only: true, ..Bounds::default() },
        )
        .unwrap();
        assert!(quick.lengths_only && quick.types.is_empty() && quick.objects == 0, "{who}");
        let quick_leaks = quick.holders.iter().find(|h| h.path == "__main__.LEAKS").expect("LEAKS, lengths only");
        assert_eq!((quick_leaks.length, quick_leaks.retained_unknown), (5000, true), "{who}");
        assert!(quick.holders.iter().any(|h| h.path == "__main__.BROKER.subs['updates']" && h.length == 250));
        eprintln!("{who}: lengths only: {} holders in {:.1} ms", quick.holders.len(), quick.elapsed_secs * 1e3);
        let gc = census.gc.as_ref().expect("the GC state");
        assert!(!gc.enabled && !gc.collecting, "{who}: the script disabled the GC: {gc:?}");
        // Everything frozen: the permanent generation holds it, and the census still counts it.
        let frozen = ask(&mut stdin, &mut stdout, b"f");
        let after = take_census(&python_rt.mem, &interp, &Bounds::default()).unwrap();
        let permanent = after.lists.iter().find(|l| l.generation == "permanent").unwrap().objects;
        assert!(
            close(permanent, frozen.frozen, 1.0),
            "{who}: {permanent} permanent outside, {} frozen inside",
            frozen.frozen
        );
        assert!(
            close(after.objects, frozen.total + frozen.frozen, 1.0),
            "{who}: gc.get_objects() leaves the permanent generation out, the census does not"
        );
        assert_eq!(outside(&after, "Leaky").0, 5000, "{who}: frozen objects are counted");
        let _ = stdin.write_all(b"q");
    }
}
