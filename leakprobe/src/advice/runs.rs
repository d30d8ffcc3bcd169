//! How often each function runs: per request, per call, once (startup, import, `main`), or
//! unknown. A growing leak needs code that runs again and again, so this is half of every
//! pattern's confidence.
//!
//! Decided from the function itself (route decorators, `Depends(...)`, startup hooks, names like
//! `setup_logging`), then from its callers in the module (a helper called from a request handler
//! runs per request), then from callers in other files of a scan (`Hints`).

use std::collections::{HashMap, HashSet};

use tree_sitter::Node;

use super::{
    facts::FunctionFacts,
    syntax::{callee_leaf, named_children, text},
};

/// How often the code of a function runs, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Runs {
    /// At startup, at import, in `main`: a bounded number of times.
    Once,
    /// Not known from the code at hand (a function called from elsewhere).
    Unknown,
    /// Called from other code that runs repeatedly.
    PerCall,
    /// A request handler, a dependency or middleware, or called from one.
    PerRequest,
}

/// Callers in other files of a scan, as they apply to one module: the name of one of its
/// functions (or classes, for `__init__`) -> how often its strongest caller runs, and who.
pub type Hints = HashMap<String, (Runs, String)>;

/// Decorator methods that make a function a request handler.
const ROUTE_DECORATORS: &[&str] = &[
    "get",
    "post",
    "put",
    "delete",
    "patch",
    "head",
    "options",
    "trace",
    "route",
    "api_route",
    "websocket",
    "websocket_route",
    "middleware",
    "exception_handler",
];
/// Calls that register a function as a request handler or a per-request dependency.
const ROUTE_REGISTRATIONS: &[&str] = &["add_api_route", "add_url_rule", "add_route", "add_websocket_route", "Depends"];

/// One place a name is called (or passed as a callback) from.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    /// The function it is in (`None`: module level).
    pub function: Option<usize>,
    /// Under a lazy-initialisation guard (`if self._x is None:`, `except LookupError:`): once.
    pub guarded: bool,
    /// In a `while` loop: repeated however often its function runs.
    pub repeated: bool,
}

/// Who references what: function names (calls, and callbacks passed as arguments) and method
/// names, with where; and `module.name(...)` calls through an imported module name.
#[derive(Debug, Default)]
pub struct References {
    pub names: HashMap<String, Vec<Site>>,
    pub methods: HashMap<String, Vec<Site>>,
    /// (imported object, attribute) of `object.attribute(...)` calls.
    pub qualified: Vec<(String, String, Site)>,
    per_request: HashSet<String>,
}

impl References {
    pub fn note_call(&mut self, call: Node<'_>, source: &str, site: Site) {
        if let Some(f) = call.child_by_field_name("function") {
            match f.kind() {
                "identifier" => self.names.entry(text(f, source).to_string()).or_default().push(site),
                "attribute" => {
                    let attr = f.child_by_field_name("attribute").map(|a| text(a, source)).unwrap_or("");
                    self.methods.entry(attr.to_string()).or_default().push(site);
                    if let Some(object) = f.child_by_field_name("object").filter(|o| o.kind() == "identifier") {
                        self.qualified.push((text(object, source).to_string(), attr.to_string(), site));
                    }
                }
                _ => {}
            }
        }
        let registers_handler = callee_leaf(call, source).is_some_and(|l| ROUTE_REGISTRATIONS.contains(&l));
        let Some(args) = call.child_by_field_name("arguments") else { return };
        for arg in named_children(args) {
            let value = if arg.kind() == "keyword_argument" { arg.child_by_field_name("value") } else { Some(arg) };
            let Some(value) = value else { continue };
            match value.kind() {
                "identifier" => {
                    let name = text(value, source).to_string();
                    if registers_handler {
                        self.per_request.insert(name.clone());
                    }
                    self.names.entry(name).or_default().push(site);
                }
                "attribute" => {
                    let attr = value.child_by_field_name("attribute").map(|a| text(a, source)).unwrap_or("");
                    self.methods.entry(attr.to_string()).or_default().push(site);
                }
                _ => {}
            }
        }
    }
}

/// The name callers use for a function: its own, a method's, or its class's for `__init__`.
pub fn called_as(f: &FunctionFacts) -> &str {
    if f.name == "__init__" {
        f.class.as_deref().unwrap_or("")
    } else {
        &f.name
    }
}

/// Sets `runs` and `runs_reason` of every function.
pub fn decide(functions: &mut HashMap<usize, FunctionFacts>, refs: &References, hints: &Hints) {
    let ids: Vec<usize> = functions.keys().copied().collect();
    for &id in &ids {
        let f = functions.get_mut(&id).expect("listed");
        (f.runs, f.runs_reason) = intrinsic(f, refs);
    }
    // Propagate from callers until nothing changes (bounded: ranks only go up along a chain).
    for _ in 0..8 {
        let mut changed = false;
        for &id in &ids {
            let f = &functions[&id];
            if f.runs == Runs::PerRequest || f.runs_reason.starts_with("decorated") {
                continue;
            }
            let callers = if f.class.is_some() && f.name != "__init__" { &refs.methods } else { &refs.names };
            let mut best: Option<(Runs, String)> = None;
            let mut consider = |runs: Runs, who: String| {
                if best.as_ref().is_none_or(|(b, _)| runs > *b) {
                    best = Some((runs, who));
                }
            };
            for site in callers.get(called_as(f)).into_iter().flatten() {
                match site.function {
                    Some(c) if c == id => {}
                    Some(c) if site.guarded => {
                        consider(Runs::Once, format!("called lazily, once, from `{}`", functions[&c].name))
                    }
                    Some(c) if site.repeated && functions[&c].runs < Runs::PerCall => {
                        consider(Runs::PerCall, format!("called in a `while` loop of `{}`", functions[&c].name))
                    }
                    Some(c) => {
                        let caller = &functions[&c];
                        consider(caller.runs, format!("called from `{}`{}", caller.name, per(caller.runs)))
                    }
                    None => consider(Runs::Once, "called at module level".into()),
                }
            }
            if let Some((runs, who)) = hints.get(called_as(f)) {
                consider(*runs, format!("called from {who}{}", per(*runs)));
            }
            if let Some(parent) = f.parent {
                consider(
                    functions[&parent].runs.max(Runs::Unknown),
                    format!("nested in `{}`", functions[&parent].name),
                );
            }
            let Some((runs, reason)) = best else { continue };
            // A name like `setup_logging` wins over callers that are themselves unknown.
            let new = if f.runs_reason.starts_with("named") && runs <= Runs::Unknown { f.runs } else { runs };
            if new != f.runs || f.runs_reason.is_empty() {
                let f = functions.get_mut(&id).expect("listed");
                changed |= new != f.runs;
                f.runs = new;
                f.runs_reason = reason;
            }
        }
        if !changed {
            break;
        }
    }
}

/// How a caller's frequency reads in evidence.
fn per(runs: Runs) -> &'static str {
    match runs {
        Runs::PerRequest => ", per request",
        Runs::PerCall => ", repeatedly",
        Runs::Unknown | Runs::Once => "",
    }
}

/// The calls this module's repeated code makes into other modules, for the hints of a scan:
/// (module the callee is imported from, callee name, how often the caller runs, who). Only
/// names imported by this module count (`from .users import get_user`, `users.get_user(...)`
/// after `from . import users`), so unrelated functions of the same name elsewhere do not.
pub fn outgoing(
    functions: &HashMap<usize, FunctionFacts>,
    refs: &References,
    imports: &HashMap<String, String>,
    file: &str,
) -> Vec<(String, String, Runs, String)> {
    let mut out: HashMap<(String, String), (Runs, String)> = HashMap::new();
    let mut add = |module: &str, name: &str, site: &Site| {
        let Some(f) = site.function.filter(|_| !site.guarded).map(|c| &functions[&c]) else { return };
        let runs = if site.repeated { f.runs.max(Runs::PerCall) } else { f.runs };
        let key = (module_stem(module).to_string(), name.to_string());
        if runs >= Runs::PerCall && out.get(&key).is_none_or(|(r, _)| runs > *r) {
            out.insert(key, (runs, format!("`{}` in {file}", f.name)));
        }
    };
    for (name, sites) in &refs.names {
        // `from app.users import get_user [as fetch]`: imports["fetch"] = "app.users.get_user".
        if let Some((module, original)) = imports.get(name).and_then(|full| full.rsplit_once('.')) {
            sites.iter().for_each(|site| add(module, original, site));
        }
    }
    for (object, attr, site) in &refs.qualified {
        if let Some(module) = imports.get(object) {
            add(module, attr, site);
        }
    }
    out.into_iter().map(|((module, name), (runs, who))| (module, name, runs, who)).collect()
}

/// The last component of a dotted module path (`app.services.users` -> `users`, `..db` -> `db`),
/// which is how a scan matches it to a file (`users.py`, `users/__init__.py`).
pub fn module_stem(module: &str) -> &str {
    module.trim_end_matches('.').rsplit('.').next().unwrap_or("")
}

/// How often a function runs from what it says about itself.
fn intrinsic(f: &FunctionFacts, refs: &References) -> (Runs, String) {
    for d in &f.decorators {
        let head = d.split('(').next().unwrap_or(d);
        let leaf = head.rsplit('.').next().unwrap_or(head);
        if leaf == "on_event" || d.contains("startup") || d.contains("shutdown") {
            return (Runs::Once, format!("decorated @{head} (runs at startup/shutdown)"));
        }
        if head.contains('.') && d.contains('(') && ROUTE_DECORATORS.contains(&leaf) {
            return (Runs::PerRequest, format!("decorated @{head}: a request handler"));
        }
        if leaf == "task" || leaf == "shared_task" {
            return (Runs::PerCall, format!("decorated @{head}: a task, run per job"));
        }
    }
    if refs.per_request.contains(called_as(f)) {
        return (Runs::PerRequest, "is a route or a Depends() dependency: runs per request".into());
    }
    if f.name == "dispatch" && f.class.is_some() {
        return (Runs::PerRequest, "is a middleware's dispatch(): runs per request".into());
    }
    let bare = f.name.trim_start_matches('_');
    let once_names = ["main", "lifespan", "create_app", "startup", "shutdown", "on_startup", "on_shutdown"];
    let once_prefix = ["setup", "configure", "init_", "install", "bootstrap"].iter().any(|p| bare.starts_with(p));
    if once_names.contains(&bare) || once_prefix {
        return (Runs::Once, "named like startup code: runs once".into());
    }
    (Runs::Unknown, String::new())
}
