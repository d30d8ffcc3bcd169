//! From a holder (`module.name`, `module.Class.attr`, `module.obj.attr['key']`) to the lines of
//! its module that add to it: the file is found among the files the recording's Python frames
//! are in, and its source searched for inserts into the holder's last name (`append`, `add`,
//! `setdefault`, `[k] = v`, `+=`, ...). Pure text work; the caller reads the sources.

use regex::Regex;

use crate::symbolize::{Frame, FrameKind};

/// The holder's module file, among `files` (every Python file seen in the recording's stacks).
/// `main_script` is the file `__main__` runs. Module names have dots too (`uvicorn.main.params`),
/// so the longest dotted prefix that names a file wins.
pub fn module_file<'a>(holder: &str, files: &'a [String], main_script: Option<&'a str>) -> Option<&'a str> {
    let path = holder.split('[').next().unwrap_or(holder);
    let parts: Vec<&str> = path.split('.').collect();
    for len in (1..parts.len()).rev() {
        let module = &parts[..len];
        if module == ["__main__"] {
            return main_script;
        }
        let as_path = module.join("/");
        let found = files.iter().find(|f| {
            let f = f.as_str();
            f.ends_with(&format!("/{as_path}.py"))
                || f.ends_with(&format!("/{as_path}/__init__.py"))
                || f == format!("{as_path}.py")
        });
        if let Some(f) = found {
            return Some(f.as_str());
        }
    }
    None
}

/// Where a stack (frames innermost first) creates an asyncio task: the first Python frame outside
/// asyncio that calls its `create_task` or `ensure_future` (`loop.create_task`,
/// `asyncio.create_task`, `TaskGroup.create_task`), as (file, line).
pub fn task_creation_line(frames: &[Frame]) -> Option<(String, u32)> {
    let python: Vec<&Frame> = frames.iter().filter(|f| f.kind == FrameKind::Python).collect();
    let in_asyncio = |f: &Frame| f.file.as_deref().is_some_and(|file| file.contains("/asyncio/"));
    let creates = |f: &Frame| {
        let name = f.function.rsplit('.').next().unwrap_or(&f.function);
        in_asyncio(f) && matches!(name, "create_task" | "ensure_future")
    };
    let first = python.iter().position(|f| creates(f))?;
    let caller = python[first..].iter().find(|f| !in_asyncio(f))?;
    Some((caller.file.clone()?, caller.line?))
}

/// Whether a module's `__file__` and a frame's `co_filename` name the same file: equal, or one a
/// path the other ends with (a script run by a relative path).
pub fn same_file(a: &str, b: &str) -> bool {
    a == b || a.ends_with(&format!("/{b}")) || b.ends_with(&format!("/{a}"))
}

/// The names code may use for the holder, most likely first: its last attribute (without
/// subscripts) or a default argument's parameter (`module.lookup(_cache=)`), then its last
/// subscript's key when that is a name (`app.state._state['cache']` is `app.state.cache` in the
/// code).
pub fn holder_names(holder: &str) -> Vec<&str> {
    let is_name = |n: &&str| !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_');
    let path = holder.split('[').next().unwrap_or(holder);
    let last = match path.strip_suffix("=)").and_then(|p| p.rsplit_once('(')) {
        Some((_, param)) => Some(param),
        None => path.rsplit('.').next(),
    };
    let key = holder.strip_suffix("']").and_then(|h| h.rsplit_once("['")).map(|(_, key)| key);
    let mut names: Vec<&str> = last.into_iter().chain(key).filter(is_name).collect();
    names.dedup();
    names
}

/// Every line (1-based) of `source` that adds to `name`, with its code (trimmed), in order.
pub fn inserting_lines(source: &str, name: &str) -> Vec<(u32, String)> {
    let name = regex::escape(name);
    const INSERTS: &str = "append|appendleft|extend|extendleft|add|update|setdefault|insert|put|put_nowait";
    let Ok(insert) = Regex::new(&format!(
        r"(^|[^\w.])(self\.|cls\.|\w+\.)?{name}\s*(\.\s*({INSERTS})\s*\(|\[[^\]\n]*\]\s*(=[^=]|\.\s*({INSERTS})\s*\()|\+=|\|=)"
    )) else {
        return Vec::new();
    };
    // Lines inside a triple-quoted string (a docstring that shows the call) are not code.
    let mut in_string = false;
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            let quotes = line.matches("\"\"\"").count() + line.matches("'''").count();
            let was_in_string = in_string;
            in_string ^= quotes % 2 == 1;
            if was_in_string || quotes > 0 {
                return false;
            }
            let code = line.split('#').next().unwrap_or("");
            insert.is_match(code)
        })
        .map(|(i, line)| (i as u32 + 1, line.trim().to_string()))
        .collect()
}

/// Of the lines that add to a holder, the one the recording's growing allocation stacks pass
/// through fastest (`growth_at(line)`: bytes a second of the stacks with a Python frame at that
/// line of the holder's file), with how sure that choice is; the first line when no growing
/// stack passes through any of them (a census sees what grows, not which line runs).
pub fn growing_line(candidates: Vec<(u32, String)>, growth_at: impl Fn(u32) -> f64) -> Option<Chosen> {
    let others = candidates.len().saturating_sub(1);
    let by_growth = candidates
        .iter()
        .map(|(line, _)| (*line, growth_at(*line)))
        .filter(|(_, g)| g.is_finite() && *g > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let (line, code, growth) = match by_growth {
        Some((line, growth)) => {
            let code = candidates.into_iter().find(|(l, _)| *l == line)?.1;
            (line, code, Some(growth))
        }
        None => {
            let (line, code) = candidates.into_iter().next()?;
            (line, code, None)
        }
    };
    Some(Chosen { line, code, others, stacks_bytes_per_sec: growth })
}

/// The line chosen for a holder.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub line: u32,
    pub code: String,
    /// How many other lines of the module add to the holder.
    pub others: usize,
    /// The growth of the sampled stacks through `line`, when they chose it.
    pub stacks_bytes_per_sec: Option<f64>,
}

impl Chosen {
    /// Why this line, for the advice's evidence; `None` when it is the only one.
    pub fn why(&self) -> Option<String> {
        if self.others == 0 {
            return None;
        }
        Some(match self.stacks_bytes_per_sec {
            Some(g) => format!(
                "of the {} lines that add to it, line {} is where the growing allocation stacks pass ({}/s)",
                self.others + 1,
                self.line,
                crate::report::human_bytes(g)
            ),
            None => format!(
                "{} other lines add to it too: no growing allocation stack passed through any, so the first is named",
                self.others
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: function.into(),
            file: Some(file.into()),
            line: Some(line),
            object: None,
            kind: FrameKind::Python,
            address: 0,
        }
    }

    #[test]
    fn a_task_is_created_at_the_first_frame_outside_asyncio_that_calls_create_task() {
        let native = Frame { kind: FrameKind::Native, ..python("PyType_GenericAlloc", "typeobject.c", 1148) };
        let frames = [
            native,
            python("BaseEventLoop.create_task", "/usr/lib/python3.11/asyncio/base_events.py", 436),
            python("create_task", "/usr/lib/python3.11/asyncio/tasks.py", 384),
            python("order", "/srv/app/main.py", 36),
            python("run_endpoint_function", "/venv/site-packages/fastapi/routing.py", 212),
        ];
        assert_eq!(task_creation_line(&frames), Some(("/srv/app/main.py".into(), 36)));
        // Allocations in a task's own steps (the event loop running it) create no task.
        let stepping = [
            python("Handle._run", "/usr/lib/python3.11/asyncio/events.py", 80),
            python("BaseEventLoop._run_once", "/usr/lib/python3.11/asyncio/base_events.py", 1922),
            python("<module>", "/srv/app/main.py", 47),
        ];
        assert_eq!(task_creation_line(&stepping), None);
        // A user function named create_task is not asyncio's.
        assert_eq!(task_creation_line(&[python("create_task", "/srv/app/jobs.py", 3)]), None);
    }

    #[test]
    fn the_module_is_the_longest_prefix_that_names_a_file() {
        let files = vec![
            "/srv/app/main.py".to_string(),
            "/venv/lib/python3.11/site-packages/uvicorn/main.py".to_string(),
            "/srv/app/broker/__init__.py".to_string(),
        ];
        assert_eq!(module_file("__main__._RECENT", &files, Some("/srv/app/main.py")), Some("/srv/app/main.py"));
        assert_eq!(module_file("uvicorn.main.params", &files, None), Some(files[1].as_str()));
        assert_eq!(module_file("broker.Hub.subs['x']", &files, None), Some(files[2].as_str()));
        assert_eq!(module_file("elsewhere.cache", &files, None), None);
        assert!(same_file("/srv/app/main.py", "main.py") && same_file("app/main.py", "/srv/app/main.py"));
        assert!(!same_file("/srv/app/domain.py", "main.py") && !same_file("/srv/a/main.py", "/srv/b/main.py"));
    }

    fn first(source: &str, name: &str) -> Option<(u32, String)> {
        inserting_lines(source, name).into_iter().next()
    }

    #[test]
    fn the_growing_insert_is_chosen_over_the_first() {
        let source = "ORDERS = []\n\ndef build():\n    ORDERS.append(1)\n\nwhile True:\n    ORDERS.append(2)\n";
        let lines = inserting_lines(source, "ORDERS");
        assert_eq!(lines.iter().map(|l| l.0).collect::<Vec<_>>(), [4, 7]);
        let chosen = growing_line(lines.clone(), |l| if l == 7 { 5000.0 } else { 0.0 }).unwrap();
        assert_eq!((chosen.line, chosen.others, chosen.stacks_bytes_per_sec), (7, 1, Some(5000.0)));
        assert!(chosen.why().unwrap().contains("line 7"), "{:?}", chosen.why());
        let unknown = growing_line(lines.clone(), |_| f64::NAN).unwrap();
        assert_eq!((unknown.line, unknown.stacks_bytes_per_sec), (4, None));
        assert!(unknown.why().unwrap().contains("first"));
        let only = growing_line(lines[..1].to_vec(), |_| 1.0).unwrap();
        assert_eq!(only.why(), None);
        assert_eq!(growing_line(Vec::new(), |_| 1.0), None);
    }

    #[test]
    fn inserts_are_found_and_reads_are_not() {
        let source = "VIEWS = []\n\ndef count():\n    return len(VIEWS)  # VIEWS.append( in a comment\n\ndef view(x):\n    VIEWS.append({'x': x})\n";
        assert_eq!(first(source, "VIEWS"), Some((7, "VIEWS.append({'x': x})".to_string())));
        let source = "class Hub:\n    subs = {}\n    def on(self, k, f):\n        if self.subs[k] == f:\n            pass\n        self.subs[k] = f\n";
        assert_eq!(first(source, "subs").map(|l| l.0), Some(6));
        assert_eq!(first("OTHER_VIEWS.append(1)\n", "VIEWS"), None);
        assert_eq!(first("seen |= {1}\n", "seen").map(|l| l.0), Some(1));
        let documented = "\"\"\"Keeps views.\n\n- `VIEWS.append(x)` forever.\n\"\"\"\nVIEWS = []\nVIEWS.append(1)\n";
        assert_eq!(first(documented, "VIEWS").map(|l| l.0), Some(6));
        assert_eq!(first("x = EVENTS[u]\nEVENTS[u].append(1)\n", "EVENTS").map(|l| l.0), Some(2));
        assert_eq!(holder_names("app.Hub.subs['updates']"), ["subs", "updates"]);
        assert_eq!(holder_names("app.x\"; rm"), Vec::<&str>::new());
        assert_eq!(holder_names("app.lookup(_cache=)"), ["_cache"]);
        assert_eq!(holder_names("app.lookup(_cache=)['k']"), ["_cache", "k"]);
        assert_eq!(holder_names("app.make.<locals>.seen"), ["seen"]);
        assert_eq!(holder_names("__main__.app.state._state['cache']"), ["_state", "cache"]);
        assert_eq!(holder_names("app.routes[3]"), ["routes"]);
    }
}
