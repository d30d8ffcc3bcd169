//! Advice for a growing stack: which of its Python frames is the construct that keeps the memory,
//! and what kind of leak that is.
//!
//! The profiler names the line that allocated what stays alive; the construct that keeps it is
//! that line (`CACHE[key] = "x" * n`), a caller's line (`CACHE[key] = build_page()`), or a
//! neighbour in the same function (`page = render()` then `CACHE[key] = page`). So, in order:
//! 1. the innermost application frame whose line a leak construct covers;
//! 2. the innermost application frame whose line is a look-alike that is not a leak (`re.compile`
//!    per call): the report says so instead of leaving the reader to guess;
//! 3. the innermost application frame whose function holds a leak construct elsewhere (its
//!    confidence scaled down: it is a neighbour, not the line);
//! 4. the innermost application frame whose function is started or registered by a leak construct
//!    of its module: a dropped task's coroutine, a listener never removed, work submitted to an
//!    executor never shut down. Their stacks start at the event loop, the emitter or the worker
//!    thread, so the construct is in no frame (scaled down the same way);
//! 5. a library frame (site-packages, the standard library) whose line a leak construct covers.
//!
//! Application frames are those outside site-packages, dist-packages and the standard library:
//! a leak is almost always in how the application uses a library, and a library's own module-level
//! dicts (registries filled once per type) would otherwise be blamed.

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};
use tree_sitter::Tree;

use super::{sources::TargetSources, syntax, Advice};
use crate::symbolize::{Frame, FrameKind};

/// A construct the flagged line leads to (a neighbour in the same function, what started its
/// function) is less sure than one covering the line itself.
const SAME_FUNCTION_FACTOR: f64 = 0.8;

/// The advice for one stack, and where in the stack it applies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StackAdvice {
    /// Index into the stack's frames (innermost first) of the frame the advice is about.
    pub frame: usize,
    /// That frame's file, as the target names it.
    pub file: String,
    /// `line`: the construct covers the frame's line; `same_function`: it is elsewhere in the
    /// frame's function (`advice.line` says where); `started_by`: the construct starts or
    /// registers the frame's function (a task's coroutine, a listener, submitted work).
    pub relation: Relation,
    #[serde(flatten)]
    pub advice: Advice,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    Line,
    SameFunction,
    StartedBy,
}

/// Advice for the stacks of one target: its sources, each module read, parsed and classified
/// once for all the stacks (a FastAPI stack has some twenty library frames in the same dozen
/// files, and up to 50 stacks are flagged). An unreadable module is remembered as such.
pub struct StackAdvisor {
    sources: TargetSources,
    modules: HashMap<String, Option<Arc<Module>>>,
}

/// One module of the target: its text, its syntax tree and every construct matching a pattern.
struct Module {
    source: Arc<str>,
    tree: Tree,
    all: Vec<Advice>,
}

impl StackAdvisor {
    pub fn new(sources: TargetSources) -> StackAdvisor {
        StackAdvisor { sources, modules: HashMap::new() }
    }

    /// `file`, read and classified; `None` when it cannot be read or parsed.
    fn module(&mut self, file: &str) -> Option<Arc<Module>> {
        if let Some(known) = self.modules.get(file) {
            return known.clone();
        }
        let module = self.sources.read(file).and_then(|source| {
            let tree = syntax::parse(&source)?;
            Some(Arc::new(Module { all: super::advise_all(&source), source, tree }))
        });
        self.modules.insert(file.to_string(), module.clone());
        module
    }

    /// The advice covering `line` of `file` (as `advice::advise` picks it), from the module cache
    /// the stacks' advice reads.
    pub fn advise_line(&mut self, file: &str, line: u32) -> Option<Advice> {
        super::covering(self.module(file)?.all.iter().cloned(), line)
    }

    /// The constructs of `file` that leak by `pattern`, most confident first.
    pub fn leaks_of(&mut self, file: &str, pattern: super::PatternId) -> Vec<Advice> {
        let Some(module) = self.module(file) else { return Vec::new() };
        let mut found: Vec<Advice> = module.all.iter().filter(|a| a.leaks && a.pattern == pattern).cloned().collect();
        found.sort_by(|a, b| b.confidence.total_cmp(&a.confidence).then(a.line.cmp(&b.line)));
        found
    }

    /// The source of `file`, from the same cache; `None` when it cannot be read or parsed.
    pub fn source(&mut self, file: &str) -> Option<Arc<str>> {
        self.module(file).map(|m| m.source.clone())
    }

    /// The advice for a stack whose frames are `frames` (innermost first); `None` when no frame's
    /// code matches a pattern (or no source can be read).
    pub fn advise(&mut self, frames: &[Frame]) -> Option<StackAdvice> {
        let python: Vec<(usize, &str, u32)> = frames
            .iter()
            .enumerate()
            .filter(|(_, f)| f.kind == FrameKind::Python)
            .filter_map(|(i, f)| Some((i, f.file.as_deref()?, f.line?)))
            .collect();
        let (application, library): (Vec<_>, Vec<_>) = python.into_iter().partition(|(_, file, _)| !is_library(file));
        let found =
            |frame: usize, file: &str, relation, advice| StackAdvice { frame, file: file.into(), relation, advice };
        let app: Vec<_> =
            application.iter().filter_map(|&(i, file, line)| Some((i, file, line, self.module(file)?))).collect();
        let covering = |leaks: bool| {
            app.iter().find_map(|(i, file, line, m)| {
                let advice = super::covering(m.all.iter().filter(|a| a.leaks == leaks).cloned(), *line)?;
                Some(found(*i, file, Relation::Line, advice))
            })
        };
        covering(true)
            .or_else(|| covering(false))
            .or_else(|| {
                app.iter().find_map(|(i, file, line, m)| {
                    Some(found(*i, file, Relation::SameFunction, same_function(m, *line)?))
                })
            })
            .or_else(|| {
                app.iter().find_map(|(i, file, _, m)| {
                    Some(found(*i, file, Relation::StartedBy, started_by(m, &frames[*i].function)?))
                })
            })
            .or_else(|| {
                // Library modules are classified only when the application says nothing.
                library.iter().find_map(|&(i, file, line)| {
                    let m = self.module(file)?;
                    let advice = super::covering(m.all.iter().filter(|a| a.leaks).cloned(), line)?;
                    Some(found(i, file, Relation::Line, advice))
                })
            })
    }
}

/// The most confident leak construct in the function that contains `line` (not covering it).
fn same_function(m: &Module, line: u32) -> Option<Advice> {
    let (first, last, name) = enclosing_function(m, line)?;
    let advice = most_confident(m.all.iter().filter(|a| a.leaks && (first..=last).contains(&a.line)))?;
    let why = format!(
        "the flagged line {line} allocates; line {} of the same function (`{name}`) is where it is kept",
        advice.line
    );
    Some(secondhand(advice, why))
}

/// The most confident construct that starts or registers the function `qualname` (a frame's
/// function: `poll`, `Handler.on_message`, `start.<locals>.worker`): its name appears in the
/// construct's lines (`create_task(poll(user))`, `subscribe("t", self.on_message)`,
/// `pool.submit(work, item)`).
fn started_by(m: &Module, qualname: &str) -> Option<Advice> {
    use super::PatternId::{DroppedTask, ExecutorNotShutdown, ListenerNotRemoved};
    let name = qualname.rsplit('.').next().filter(|n| !n.is_empty() && !n.starts_with('<'))?;
    let mentions: Vec<u32> = syntax::descendants(m.tree.root_node())
        .into_iter()
        .filter(|n| n.kind() == "identifier" && syntax::text(*n, &m.source) == name)
        .filter(|n| n.parent().is_none_or(|p| p.kind() != "function_definition"))
        .map(syntax::line)
        .collect();
    let advice = most_confident(
        m.all
            .iter()
            .filter(|a| a.leaks && matches!(a.pattern, DroppedTask | ListenerNotRemoved | ExecutorNotShutdown))
            .filter(|a| a.lines.iter().any(|[first, last]| mentions.iter().any(|m| (first..=last).contains(&m)))),
    )?;
    let why = format!("the flagged frame's function `{name}` is started or registered at line {}", advice.line);
    Some(secondhand(advice, why))
}

fn most_confident<'a>(advice: impl Iterator<Item = &'a Advice>) -> Option<&'a Advice> {
    advice.max_by(|a, b| a.confidence.total_cmp(&b.confidence))
}

/// Advice about a construct the flagged line leads to rather than covers: less sure, and the
/// first piece of evidence says how it was reached.
fn secondhand(advice: &Advice, how: String) -> Advice {
    let mut advice = advice.clone();
    advice.confidence = (advice.confidence * SAME_FUNCTION_FACTOR * 100.0).round() / 100.0;
    advice.evidence.insert(0, how);
    advice
}

/// The innermost `def` containing `line`: its first and last line and its name.
fn enclosing_function(m: &Module, line: u32) -> Option<(u32, u32, String)> {
    syntax::descendants(m.tree.root_node())
        .into_iter()
        .filter(|n| n.kind() == "function_definition")
        .map(|n| (syntax::line(n), syntax::end_line(n), n))
        .filter(|(first, last, _)| (*first..=*last).contains(&line))
        .min_by_key(|(first, last, _)| last - first)
        .map(|(first, last, n)| {
            let name = n.child_by_field_name("name").map_or("?", |name| syntax::text(name, &m.source));
            (first, last, name.to_string())
        })
}

/// Third-party packages and the standard library (`.../lib/python3.12/json/decoder.py`).
pub fn is_library(file: &str) -> bool {
    if file.contains("/site-packages/") || file.contains("/dist-packages/") {
        return true;
    }
    file.split('/').any(|part| {
        part.strip_prefix("python3.")
            .is_some_and(|minor| !minor.is_empty() && minor.chars().all(|c| c.is_ascii_digit()))
    }) && file.contains("/lib/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advice::PatternId;

    fn frame(file: &str, line: u32) -> Frame {
        Frame {
            function: "f".into(),
            file: Some(file.into()),
            line: Some(line),
            object: None,
            kind: FrameKind::Python,
            address: 0,
        }
    }

    fn native(function: &str) -> Frame {
        Frame { function: function.into(), file: None, line: None, object: None, kind: FrameKind::Native, address: 1 }
    }

    struct Tree(std::path::PathBuf);

    impl Tree {
        fn new(name: &str, files: &[(&str, &str)]) -> Tree {
            let dir = std::env::temp_dir().join(format!("leakprobe-stack-{name}-{}", std::process::id()));
            for (path, text) in files {
                let path = dir.join(path.trim_start_matches('/'));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
            Tree(dir)
        }
        fn advisor(&self) -> StackAdvisor {
            StackAdvisor::new(TargetSources::in_dirs(&self.0, &self.0))
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const APP: &str = "\
import re
from fastapi import FastAPI
app = FastAPI()
CACHE = {}

def render(key):
    return \"x\" * 10_000

@app.get(\"/a/{key}\")
async def a(key: str):
    CACHE[key] = render(key)
    return {}

@app.get(\"/b/{key}\")
async def b(key: str):
    page = \"y\" * 10_000
    CACHE[key] = page
    return {}

@app.get(\"/c/{key}\")
async def c(key: str):
    return re.compile(key).pattern
";

    #[test]
    fn the_caller_that_keeps_it_is_named() {
        let tree = Tree::new("caller", &[("/srv/app.py", APP)]);
        let frames = [native("PyObject_Malloc"), frame("/srv/app.py", 7), frame("/srv/app.py", 11), native("main")];
        let advice = tree.advisor().advise(&frames).unwrap();
        assert_eq!((advice.frame, advice.relation, advice.advice.line), (2, Relation::Line, 11));
        assert_eq!(advice.advice.pattern, PatternId::UnboundedCache);
        assert_eq!(advice.file, "/srv/app.py");
    }

    #[test]
    fn a_neighbour_in_the_same_function_is_less_sure() {
        let tree = Tree::new("neighbour", &[("/srv/app.py", APP)]);
        let direct = tree.advisor().advise(&[frame("/srv/app.py", 17)]).unwrap();
        let neighbour = tree.advisor().advise(&[frame("/srv/app.py", 16)]).unwrap();
        assert_eq!((neighbour.relation, neighbour.advice.line), (Relation::SameFunction, 17));
        assert!(neighbour.advice.confidence < direct.advice.confidence);
        assert!(neighbour.advice.evidence[0].contains("line 17 of the same function (`b`)"), "{:?}", neighbour);
    }

    #[test]
    fn a_look_alike_says_it_is_not_a_leak() {
        let tree = Tree::new("lookalike", &[("/srv/app.py", APP)]);
        let advice = tree.advisor().advise(&[frame("/srv/app.py", 22)]).unwrap();
        assert_eq!(advice.advice.pattern, PatternId::RegexCompilePerCall);
        assert!(!advice.advice.leaks);
    }

    #[test]
    fn application_frames_come_before_library_frames() {
        let library = "REGISTRY = {}\ndef register(k, v):\n    REGISTRY[k] = v\n";
        let tree =
            Tree::new("library", &[("/srv/app.py", APP), ("/venv/lib/python3.12/site-packages/lib.py", library)]);
        let lib = "/venv/lib/python3.12/site-packages/lib.py";
        let advice = tree.advisor().advise(&[frame(lib, 3), frame("/srv/app.py", 11)]).unwrap();
        assert_eq!((advice.frame, advice.advice.line), (1, 11));
        // Nothing in the application: the library's line, if a construct covers it.
        let quiet = "def handler():\n    return 1\n";
        let tree = Tree::new("library-only", &[("/srv/quiet.py", quiet), (lib, library)]);
        let advice = tree.advisor().advise(&[frame(lib, 3), frame("/srv/quiet.py", 2)]);
        assert_eq!(advice.map(|a| (a.frame, a.file)), Some((0, lib.to_string())));
    }

    #[test]
    fn unreadable_or_garbage_sources_give_no_advice() {
        let tree = Tree::new("garbage", &[("/srv/bin.py", "\u{0}\u{1}garbage(((\n")]);
        let mut advisor = tree.advisor();
        assert_eq!(advisor.advise(&[frame("/srv/missing.py", 3), frame("/srv/bin.py", 1)]), None);
        assert_eq!(advisor.advise(&[frame("<frozen importlib._bootstrap>", 1)]), None);
        assert_eq!(advisor.advise(&[native("malloc")]), None);
        assert_eq!(advisor.advise(&[frame("/srv/bin.py", 999_999)]), None);
    }

    #[test]
    fn a_task_or_listener_is_named_by_what_started_it() {
        let app = "\
import asyncio
from fastapi import FastAPI
app = FastAPI()

async def poll_forever(user_id):
    seen = []
    while True:
        seen.append(\"x\" * 1000)
        await asyncio.sleep(0.1)

class Handler:
    def __init__(self, broker):
        broker.subscribe(\"topic\", self.on_message)

    def on_message(self, msg):
        self.last = msg * 2

@app.get(\"/start/{uid}\")
async def start(uid: str):
    asyncio.create_task(poll_forever(uid))
    Handler(BROKER)
";
        let tree = Tree::new("started", &[("/srv/app.py", app)]);
        let loop_ = "/usr/lib/python3.12/asyncio/events.py";
        let mut coroutine = frame("/srv/app.py", 8);
        coroutine.function = "poll_forever".into();
        let task = tree.advisor().advise(&[coroutine, frame(loop_, 88)]);
        let mut task = task.expect("the coroutine's creator");
        task.advice.evidence.truncate(1);
        assert_eq!(
            (task.relation, task.advice.pattern, task.advice.line),
            (Relation::StartedBy, PatternId::DroppedTask, 20)
        );
        assert!(task.advice.evidence[0].contains("`poll_forever` is started or registered at line 20"), "{task:?}");
        let mut on_message = frame("/srv/app.py", 16);
        on_message.function = "Handler.on_message".into();
        let listener = tree.advisor().advise(&[on_message]).expect("the registration");
        assert_eq!((listener.relation, listener.advice.pattern), (Relation::StartedBy, PatternId::ListenerNotRemoved));
    }

    #[test]
    fn library_paths() {
        assert!(is_library("/usr/lib/python3.12/json/decoder.py"));
        assert!(is_library("/opt/venv/lib/python3.13/site-packages/starlette/routing.py"));
        assert!(is_library("/usr/lib/python3/dist-packages/yaml/__init__.py"));
        assert!(!is_library("/srv/app/main.py"));
        assert!(!is_library("/home/me/python3.12-notes/app.py"));
    }
}
