//! The fixtures of tests/fixtures/patterns/ (a leak and a look-alike per pattern), the scan over
//! them against the naive regexes of the manual guide, and the classifier's finer points.
//!
//! Fixture markers: `# <- expected` on the line a pattern is reported at, `# <- covered` on other
//! lines the construct covers (where a profiler may flag the allocation).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::{advise, advise_all, scan, scan_dir, scan_source, PatternId, ScanOptions};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/patterns")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn marked(source: &str, marker: &str) -> Vec<u32> {
    source.lines().enumerate().filter(|(_, l)| l.contains(marker)).map(|(i, _)| i as u32 + 1).collect()
}

#[test]
fn every_leak_fixture_is_classified_at_its_line() {
    for id in PatternId::ALL {
        let path = fixtures().join(format!("{id}_leak.py"));
        let source = read(&path);
        let expected = marked(&source, "# <- expected");
        assert!(!expected.is_empty(), "{id}: no `# <- expected` line");
        for line in expected.iter().chain(&marked(&source, "# <- covered")) {
            let advice = advise(&source, *line).unwrap_or_else(|| panic!("{id}: line {line} not classified"));
            assert_eq!(advice.pattern, id, "{id}: line {line}: {advice:#?}");
            assert!(advice.confidence >= 0.5, "{id}: line {line}: confidence {}", advice.confidence);
            assert_eq!(advice.leaks, id.pattern().leaks, "{id}");
            assert!(!advice.evidence.is_empty() && !advice.fix.is_empty(), "{id}");
        }
        for line in &expected {
            assert_eq!(advise(&source, *line).unwrap().line, *line, "{id}: reported at another line");
        }
        // A scan reports exactly the marked lines (at the default threshold), never re.compile.
        let found: BTreeSet<u32> =
            scan_source(&path, &source).iter().filter(|f| f.advice.confidence >= 0.5).map(|f| f.advice.line).collect();
        let want: BTreeSet<u32> = if id.pattern().leaks { expected.into_iter().collect() } else { BTreeSet::new() };
        assert_eq!(found, want, "{id}: scan of the leak fixture");
    }
}

#[test]
fn no_look_alike_is_classified_as_a_leak() {
    for id in PatternId::ALL {
        let path = fixtures().join(format!("{id}_lookalike.py"));
        let source = read(&path);
        for line in 1..=source.lines().count() as u32 {
            if let Some(advice) = advise(&source, line) {
                assert!(!advice.leaks, "{id} look-alike, line {line}: {advice:#?}");
            }
        }
        let findings = scan_source(&path, &source);
        assert!(findings.is_empty(), "{id} look-alike: {findings:#?}");
    }
}

#[test]
fn scan_dir_finds_the_leaks_and_none_of_the_look_alikes() {
    let findings = scan_dir(&fixtures());
    let found: BTreeSet<(String, u32, PatternId)> = findings
        .iter()
        .filter(|f| f.advice.confidence >= 0.5)
        .map(|f| (f.path.file_name().unwrap().to_string_lossy().into_owned(), f.advice.line, f.advice.pattern))
        .collect();
    let mut want = BTreeSet::new();
    for id in PatternId::ALL.into_iter().filter(|id| id.pattern().leaks) {
        let name = format!("{id}_leak.py");
        for line in marked(&read(&fixtures().join(&name)), "# <- expected") {
            want.insert((name.clone(), line, id));
        }
    }
    assert_eq!(found, want);
    assert!(findings.iter().all(|f| !f.path.to_string_lossy().contains("lookalike")), "{findings:#?}");
    // Ranked: most confident first.
    assert!(findings.windows(2).all(|w| w[0].advice.confidence >= w[1].advice.confidence));
}

/// The manual guide's detector (`leak_pattern_detector.py`: its regexes, whose lookaheads never
/// reject anything and are left out since the regex crate has none) plus the obvious greps for
/// the patterns it lacks. A line is flagged if any of them matches it.
const NAIVE_REGEXES: &[&str] = &[
    r"cache\[.+?\]\s*=\s*.+?",                    // unbounded_cache (guide)
    r"\[.*\]\s*=",                                // any subscript assignment
    r"\.append\(",                                // list accumulation
    r"^[A-Z_]+\s*=\s*\[\]|dict\(\)",              // global_accumulation (guide)
    r"\.on\(|addEventListener|\.subscribe\(",     // event_listener_leak (guide)
    r"addHandler\(",                              // logger handlers
    r"asyncio\.create_task|gather|ensure_future", // async_task_leak (guide)
    r"ThreadPoolExecutor|ProcessPoolExecutor",    // thread_pool_leak (guide)
    r"\.connect\(\)|session\.\w+",                // database_connection_leak (guide)
    r"\bopen\(",                                  // file handles
    r"@(functools\.)?(lru_cache|cache)\b",        // lru_cache
    r"re\.compile\(",                             // "regex compilation" (guide's table)
];

fn naive_flags(source: &str) -> BTreeSet<u32> {
    let regexes: Vec<regex::Regex> = NAIVE_REGEXES.iter().map(|r| regex::Regex::new(r).unwrap()).collect();
    source
        .lines()
        .enumerate()
        .filter(|(_, l)| regexes.iter().any(|r| r.is_match(l)))
        .map(|(i, _)| i as u32 + 1)
        .collect()
}

/// Measured here and quoted in docs/advice.md (the test fails when they drift apart).
#[test]
fn scan_versus_naive_regexes_on_the_fixtures() {
    let (mut naive_fp, mut scan_fp, mut naive_hits, mut scan_hits, mut leaks) = (0, 0, 0, 0, 0);
    for id in PatternId::ALL {
        let lookalike = read(&fixtures().join(format!("{id}_lookalike.py")));
        naive_fp += naive_flags(&lookalike).len();
        scan_fp += scan_source(Path::new("x.py"), &lookalike).len();
        if id.pattern().leaks {
            let source = read(&fixtures().join(format!("{id}_leak.py")));
            let naive = naive_flags(&source);
            let scanned: BTreeSet<u32> = scan_source(Path::new("x.py"), &source)
                .iter()
                .filter(|f| f.advice.confidence >= 0.5)
                .map(|f| f.advice.line)
                .collect();
            for line in marked(&source, "# <- expected") {
                leaks += 1;
                naive_hits += naive.contains(&line) as usize;
                scan_hits += scanned.contains(&line) as usize;
            }
        }
    }
    let row_scan = format!("| `leakprobe scan` | {scan_fp} | {scan_hits} of {leaks} |");
    let row_naive = format!("| naive regexes | {naive_fp} | {naive_hits} of {leaks} |");
    eprintln!("{row_scan}\n{row_naive}");
    assert_eq!(scan_fp, 0);
    assert_eq!(scan_hits, leaks);
    let doc = read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/advice.md"));
    assert!(doc.contains(&row_scan) && doc.contains(&row_naive), "update docs/advice.md:\n{row_scan}\n{row_naive}");
}

/// The project's own leaky programs (demo and end-to-end fixtures): the lines their comments
/// call leaks are found, the bounded caches, warm-ups and churn are not.
#[test]
fn the_projects_own_leaky_programs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for (file, leaks) in [
        ("demo/app.py", vec!["the leak: never evicted"]),
        ("tests/fixtures/fastapi_app.py", vec!["# LEAK-ASYNC", "# LEAK-SYNC"]),
        ("tests/fixtures/py_leak.py", vec!["never trimmed: the leak"]),
        ("tests/fixtures/py_same_size_class.py", vec!["# LEAK: kept forever"]),
        ("tests/fixtures/py_bounded_cache.py", vec![]),
        ("tests/fixtures/py_warmup.py", vec![]),
        ("tests/fixtures/py_steady.py", vec![]),
    ] {
        let source = read(&root.join(file));
        let want: BTreeSet<u32> = leaks.iter().flat_map(|m| marked(&source, m)).collect();
        let found: BTreeSet<u32> = scan_source(Path::new(file), &source)
            .iter()
            .filter(|f| f.advice.confidence >= 0.5)
            .map(|f| f.advice.line)
            .collect();
        assert_eq!(found, want, "{file}");
    }
}

// ---- The finer points, on small sources. ----

fn only(source: &str) -> Vec<(u32, PatternId)> {
    advise_all(source).into_iter().filter(|a| a.leaks).map(|a| (a.line, a.pattern)).collect()
}

const ROUTE: &str = "@app.get(\"/x\")\nasync def handler(k):\n";

#[test]
fn a_module_level_bytearray_extended_per_request_accumulates() {
    // (`OUTBOX += line` in a function without `global` is an UnboundLocalError, not a leak.)
    for grow in ["    OUTBOX.extend(line)\n", "    OUTBOX.append(0x0a)\n"] {
        let leak = format!("OUTBOX = bytearray()\n{ROUTE}{grow}");
        assert_eq!(only(&leak), vec![(4, PatternId::GlobalAccumulation)], "{leak}");
        // Drained somewhere: managed.
        let drained = format!("{leak}def flush():\n    OUTBOX.clear()\n");
        assert_eq!(only(&drained), vec![], "{drained}");
    }
}

#[test]
fn containers_need_a_global_scope_and_no_eviction() {
    let leak = format!("CACHE = {{}}\n{ROUTE}    CACHE[k] = 1\n");
    assert_eq!(only(&leak), vec![(4, PatternId::UnboundedCache)]);
    // Local, shadowed, constant key, bounded, weak: none.
    for src in [
        format!("{ROUTE}    CACHE = {{}}\n    CACHE[k] = 1\n"),
        format!("CACHE = {{}}\n{ROUTE}    CACHE['x'] = 1\n"),
        format!("CACHE = TTLCache(maxsize=10, ttl=60)\n{ROUTE}    CACHE[k] = 1\n"),
        format!("CACHE = weakref.WeakValueDictionary()\n{ROUTE}    CACHE[k] = 1\n"),
        format!("CACHE = make_cache()\n{ROUTE}    CACHE[k] = 1\n"),
        "CACHE = {}\nfor k in range(3):\n    CACHE[k] = 1\n".to_string(),
    ] {
        assert_eq!(only(&src), vec![], "{src}");
    }
    // Every eviction form silences it.
    for eviction in [
        "    CACHE.pop(k, None)\n",
        "    del CACHE[k]\n",
        "    CACHE.clear()\n",
        "    if len(CACHE) > 100:\n        reset()\n",
        "    global CACHE\n    CACHE = {}\n",
        "    atexit.register(CACHE.clear)\n",
    ] {
        let src = format!("CACHE = {{}}\n{ROUTE}    CACHE[k] = 1\ndef other():\n{eviction}");
        let caches: Vec<_> = only(&src).into_iter().filter(|(_, p)| *p == PatternId::UnboundedCache).collect();
        assert_eq!(caches, vec![], "{src}");
    }
}

#[test]
fn accumulation_through_classes_and_dict_values() {
    let class_level = format!("class Registry:\n    items = []\n    def add(self, x):\n        self.items.append(x)\n{ROUTE}    Registry().add(k)\n");
    let advice = advise(&class_level, 4).unwrap();
    assert_eq!(advice.pattern, PatternId::GlobalAccumulation);
    assert!(advice.confidence >= 0.7, "{advice:#?}");
    // Per-instance lists are only suspect when an instance lives at module level.
    let per_instance = "class Buf:\n    def __init__(self):\n        self.items = []\n    def add(self, x):\n        self.items.append(x)\n";
    assert!(advise(per_instance, 5).unwrap().confidence < 0.5);
    let singleton = format!("{per_instance}BUF = Buf()\n{ROUTE}    BUF.add(k)\n");
    assert!(advise(&singleton, 5).unwrap().confidence >= 0.5);
    let values = format!("BY_USER = defaultdict(list)\n{ROUTE}    BY_USER[k].append(1)\n    SEEN.setdefault(k, []).append(2)\nSEEN = {{}}\n");
    assert_eq!(only(&values), vec![(4, PatternId::GlobalAccumulation), (5, PatternId::GlobalAccumulation)]);
    let bounded = format!(
        "RECENT = deque(maxlen=100)\nOTHER = deque([], 10)\n{ROUTE}    RECENT.append(k)\n    OTHER.append(k)\n"
    );
    assert_eq!(only(&bounded), vec![]);
}

#[test]
fn how_often_code_runs() {
    // Startup hooks, setup functions, module-level-only callers: once.
    for src in [
        "@app.on_event(\"startup\")\nasync def start():\n    asyncio.create_task(refresh())\n",
        "def setup_logging():\n    logging.getLogger().addHandler(logging.StreamHandler())\n",
        "def install():\n    asyncio.ensure_future(refresh())\ninstall()\n",
    ] {
        assert_eq!(only(src), vec![], "{src}");
    }
    // ... unless a while loop repeats it, or a request handler calls it.
    let looped = "@app.on_event(\"startup\")\nasync def consume():\n    while True:\n        msg = await q.get()\n        asyncio.create_task(handle(msg))\n";
    assert_eq!(only(looped), vec![(5, PatternId::DroppedTask)]);
    // Lazy initialisation of long-lived state runs once.
    for src in [
        format!("class C:\n    def pool(self):\n        if self._pool is None:\n            self._pool = ThreadPoolExecutor()\n        return self._pool\n{ROUTE}    C().pool()\n"),
        format!("_client = None\n{ROUTE}    global _client\n    if not _client:\n        _client = httpx.AsyncClient()\nimport httpx\n"),
    ] {
        assert_eq!(only(&src), vec![], "{src}");
    }
    let called = format!("def setup_logger():\n    log.addHandler(h)\n{ROUTE}    setup_logger()\n");
    let advice = advise(&called, 2).unwrap();
    assert_eq!((advice.pattern, advice.confidence), (PatternId::LoggingHandlerPerCall, 0.85));
    assert!(advice.evidence.iter().any(|e| e.contains("called from `handler`")), "{advice:#?}");
    // A FastAPI dependency runs per request.
    let dependency = "def get_client():\n    c = httpx.Client()\n    return c.get('/')\n@app.get('/')\ndef h(x = Depends(get_client)):\n    pass\nimport httpx\n";
    assert_eq!(advise(dependency, 2).unwrap().confidence, 0.8);
}

#[test]
fn tasks_loggers_listeners_executors() {
    let task = format!(
        "{ROUTE}    t = asyncio.create_task(work())\n    u = asyncio.create_task(work())\n    return await u\n"
    );
    assert_eq!(only(&task), vec![(3, PatternId::DroppedTask)]);
    let logger = format!(
        "{ROUTE}    log = logging.getLogger(f\"req.{{k}}\")\n    other = logging.getLogger(f\"{{__name__}}.x\")\n"
    );
    assert_eq!(only(&logger), vec![(3, PatternId::LoggingHandlerPerCall)]);
    // Signals hold receivers weakly by default.
    let weak = format!("def on_saved(sender):\n    pass\n{ROUTE}    user_saved.connect(on_saved)\n");
    assert!(advise(&weak, 5).unwrap().confidence < 0.5);
    let strong = format!("{ROUTE}    user_saved.connect(on_saved, weak=False)\n");
    assert!(advise(&strong, 3).unwrap().confidence >= 0.5);
    // A socket's connect(address) is no listener.
    let socket = format!("{ROUTE}    sock.connect(address)\n");
    assert!(advise(&socket, 3).is_none());
    let atexit = format!("import atexit\n{ROUTE}    atexit.register(cleanup, k)\n");
    assert_eq!(only(&atexit), vec![(4, PatternId::ListenerNotRemoved)]);
    let db_connect = format!("{ROUTE}    engine.connect()\n");
    assert_eq!(only(&db_connect).iter().filter(|(_, p)| *p == PatternId::ListenerNotRemoved).count(), 0);
    let chained = format!("{ROUTE}    return ThreadPoolExecutor().submit(work).result()\n");
    assert_eq!(only(&chained), vec![(3, PatternId::ExecutorNotShutdown)]);
    let pool = format!("from multiprocessing import Pool\n{ROUTE}    p = Pool(4)\n    return p.map(f, k)\n");
    assert_eq!(only(&pool), vec![(4, PatternId::ExecutorNotShutdown)]);
    let not_mp = format!("{ROUTE}    p = Pool(4)\n    return p.map(f, k)\n");
    assert_eq!(only(&not_mp), vec![]);
}

#[test]
fn files_are_judged_by_what_keeps_them() {
    // CPython closes a file with its last reference: a one-expression open is not reported.
    let chained = format!("{ROUTE}    return open(k).read()\n");
    assert_eq!(only(&chained), vec![]);
    let named = format!("{ROUTE}    f = open(k)\n    return f.read()\n");
    let advice = advise(&named, 3).unwrap();
    assert_eq!(advice.pattern, PatternId::UnclosedResource);
    assert!(advice.evidence.iter().any(|e| e.contains("last reference")));
    let closed =
        format!("{ROUTE}    f = open(k)\n    try:\n        return f.read()\n    finally:\n        f.close()\n");
    assert_eq!(only(&closed), vec![]);
}

#[test]
fn advise_prefers_the_innermost_construct_and_survives_bad_input() {
    let src = "from functools import lru_cache\nSEEN = []\nclass A:\n    @lru_cache(maxsize=None)\n    def f(self, x):\n        SEEN.append(x)\n        return x\n";
    assert_eq!(advise(src, 6).unwrap().pattern, PatternId::GlobalAccumulation);
    assert_eq!(advise(src, 7).unwrap().pattern, PatternId::LruCacheMethod);
    assert_eq!(advise(src, 4).unwrap().line, 4);
    assert!(advise("", 1).is_none());
    assert!(advise("def f(:\n  CACHE[k] = \x00 (((\n", 2).is_none());
    assert!(advise(src, 0).is_none() && advise(src, 999).is_none());
    let regex = format!("import re\n{ROUTE}    return re.compile(k).match('x')\n");
    let advice = advise(&regex, 4).unwrap();
    assert_eq!((advice.pattern, advice.leaks), (PatternId::RegexCompilePerCall, false));
    assert!(scan_source(Path::new("x.py"), &regex).is_empty());
}

#[test]
fn scan_follows_calls_across_files() {
    let root = std::env::temp_dir().join(format!("leakprobe-scan-calls-{}", std::process::id()));
    std::fs::create_dir_all(root.join("app/services")).unwrap();
    std::fs::write(
        root.join("app/routes.py"),
        "from fastapi import APIRouter\nfrom .services import users\nfrom .services.orders import load_order\n\n\
         router = APIRouter()\n\n@router.get('/users/{uid}')\nasync def user(uid: int):\n    return users.get_user(uid)\n\n\
         @router.get('/orders/{oid}')\nasync def order(oid: int):\n    return load_order(oid)\n",
    )
    .unwrap();
    let users = "_users = {}\n\ndef get_user(uid):\n    if uid not in _users:\n        _users[uid] = fetch(uid)\n    return _users[uid]\n";
    std::fs::write(root.join("app/services/users.py"), users).unwrap();
    // Two hops: route -> load_order -> remember.
    let orders = "from .history import remember\n\ndef load_order(oid):\n    order = fetch(oid)\n    remember(order)\n    return order\n";
    std::fs::write(root.join("app/services/orders.py"), orders).unwrap();
    std::fs::write(
        root.join("app/services/history.py"),
        "HISTORY = []\n\ndef remember(order):\n    HISTORY.append(order)\n",
    )
    .unwrap();
    let report = scan(&root, &ScanOptions::default()).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    let found: Vec<(String, u32, PatternId, f64)> = report
        .findings
        .iter()
        .map(|f| {
            (
                f.path.file_name().unwrap().to_string_lossy().into_owned(),
                f.advice.line,
                f.advice.pattern,
                f.advice.confidence,
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("users.py".to_string(), 5, PatternId::UnboundedCache, 0.8),
            ("history.py".to_string(), 4, PatternId::GlobalAccumulation, 0.75)
        ]
    );
    let evidence = &report.findings[0].advice.evidence;
    assert!(evidence.iter().any(|e| e.contains("called from `user` in app/routes.py")), "{evidence:?}");
    // Alone, the same file's function has no caller in sight.
    assert!(scan_source(Path::new("users.py"), users).iter().all(|f| f.advice.confidence < 0.5));
}

#[test]
fn scan_skips_vendored_code_unless_asked() {
    let root = std::env::temp_dir().join(format!("leakprobe-scan-{}", std::process::id()));
    let leak = format!("CACHE = {{}}\n{ROUTE}    CACHE[k] = 1\n");
    for dir in ["app", ".venv/lib", "env", "site-packages/pkg", ".git", "app/__pycache__"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join("m.py"), &leak).unwrap();
    }
    std::fs::write(root.join("env/pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    std::fs::write(root.join("app/notes.txt"), &leak).unwrap();
    let report = scan(&root, &ScanOptions::default()).unwrap();
    let everything = scan(&root, &ScanOptions { include_vendored: true }).unwrap();
    let single = scan(&root.join("app/m.py"), &ScanOptions::default()).unwrap();
    let missing = scan(&root.join("nope"), &ScanOptions::default());
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!((report.files_scanned, report.findings.len()), (1, 1));
    assert!(report.findings[0].path.ends_with("app/m.py"));
    assert_eq!(everything.files_scanned, 6);
    assert_eq!(single.findings.len(), 1);
    assert!(missing.is_err());
    let text = super::scan::render_text(&report, 0.5);
    assert!(text.contains("app/m.py:4  unbounded_cache  confidence 0.75"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["findings"][0]["pattern"], "unbounded_cache");
    assert_eq!(json["findings"][0]["lines"][0], serde_json::json!([4, 4]));
}

#[test]
fn scan_survives_garbage_and_special_files() {
    let root = std::env::temp_dir().join(format!("leakprobe-scan-bad-{}", std::process::id()));
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("binary.py"), b"\xff\xfe\x00\x01 garbage").unwrap();
    std::fs::write(root.join("broken.py"), "def (((\n").unwrap();
    std::fs::write(root.join("ok.py"), format!("CACHE = {{}}\n{ROUTE}    CACHE[k] = 1\n")).unwrap();
    std::os::unix::fs::symlink(".", root.join("sub/loop")).unwrap();
    let fifo = std::ffi::CString::new(root.join("fifo.py").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let report = scan(&root, &ScanOptions::default()).unwrap();
    let single_fifo = scan(&root.join("fifo.py"), &ScanOptions::default());
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(report.findings.len(), 1, "{report:?}");
    assert!(report.findings[0].path.ends_with("ok.py"));
    let err = format!("{:#}", single_fifo.unwrap_err());
    assert!(err.contains("is not a file or a directory"), "{err}");
}

#[test]
fn the_guides_connection_examples() {
    // BAD: connection created but never closed; GOOD: a context manager.
    let bad = format!("{ROUTE}    conn = await db.connect()\n    return await conn.fetch(\"SELECT 1\")\n");
    assert_eq!(only(&bad), vec![(3, PatternId::UnclosedResource)]);
    let good = format!("{ROUTE}    async with db.connect() as conn:\n        return await conn.fetch(\"SELECT 1\")\n");
    assert_eq!(only(&good), vec![]);
    let closed = format!("{ROUTE}    conn = await self.database.connect()\n    try:\n        return 1\n    finally:\n        await conn.close()\n");
    assert_eq!(only(&closed), vec![]);
    // A socket's connect is not a database's.
    let socket = format!("{ROUTE}    sock.connect(addr)\n");
    assert_eq!(only(&socket), vec![]);
}

#[test]
fn an_unbounded_cache_decorator_on_a_function_called_per_request() {
    let cached = |decorator: &str, params: &str| {
        format!(
            "import functools\nfrom functools import cache\n\n{decorator}\ndef load(user_id{params}):\n    return str(user_id) * 100\n\n{ROUTE}    return load(k)\n"
        )
    };
    for decorator in ["@functools.lru_cache(maxsize=None)", "@cache", "@functools.cache"] {
        let leaks = advise_all(&cached(decorator, ""));
        let found: Vec<(u32, PatternId)> = leaks.iter().filter(|a| a.leaks).map(|a| (a.line, a.pattern)).collect();
        assert_eq!(found, vec![(4, PatternId::UnboundedCache)], "{decorator}");
        // The body's lines are the construct: a profiler flags the line that builds the value.
        assert_eq!(advise(&cached(decorator, ""), 6).map(|a| a.pattern), Some(PatternId::UnboundedCache));
    }
    // Bounded, or without arguments (one value), or only called at import: not a leak.
    assert_eq!(only(&cached("@functools.lru_cache(maxsize=256)", "")), vec![]);
    let no_args = "import functools\n@functools.cache\ndef settings():\n    return {}\n";
    assert_eq!(only(no_args), vec![]);
    let at_import =
        "import functools\n@functools.cache\ndef load(k):\n    return k * 2\nTABLE = [load(i) for i in range(10)]\n";
    assert_eq!(only(at_import), vec![]);
}

#[test]
fn deeply_nested_source_is_turned_away_not_a_stack_overflow() {
    // The issue's reproduction: `x = [[[...]]]` 200,000 deep aborted `leakprobe scan` (exit 134).
    let deep =
        format!("_CACHE = {{}}\nx = {}{}\ndef f(k, v):\n    _CACHE[k] = v\n", "[".repeat(200_000), "]".repeat(200_000));
    assert!(super::syntax::parse(&deep).is_none());
    assert!(scan_source(Path::new("deep.py"), &deep).is_empty());
    assert_eq!(advise(&deep, 4), None);
    // Ordinary nesting is far below the bound and still classified.
    let nested = format!(
        "_CACHE = {{}}\nx = {}{}\n@app.get('/')\ndef f(k, v):\n    _CACHE[k] = v\n",
        "[".repeat(150),
        "]".repeat(150)
    );
    assert!(super::syntax::parse(&nested).is_some());
}
