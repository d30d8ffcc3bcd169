//! The classifier: every construct of a module that matches a pattern of the catalogue, with the
//! lines it covers, a confidence and the evidence. Containers (caches, global lists), decorators
//! (`lru_cache` on methods) and `re.compile` are judged here; the lifecycle patterns (listeners,
//! logging handlers, tasks, executors, resources) in `lifecycle`.
//!
//! Confidence is the pattern's base (how surely that construct, as seen, grows without bound)
//! times how often the code runs (`runs`): a request handler 1.0, code called repeatedly 0.9, a
//! function whose callers are not in sight 0.6 (library and registration code: most of what a
//! regex flags); code that runs once (import time, startup hooks, `main`, `setup_*`) is never a
//! growing leak and is not reported.

use tree_sitter::Node;

use super::{
    facts::{Binding, Facts, Guard},
    lifecycle,
    patterns::PatternId,
    runs::{self, Hints, Runs},
    syntax::{
        callee_leaf, callee_name, descendants, end_line, is_constant, keyword_arg, line, parse, positional_args,
        receiver, statement_of, text, ValueKind,
    },
};

/// One match of a pattern in a module.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub pattern: PatternId,
    /// The line to show (the construct's own line).
    pub line: u32,
    /// The lines that count as this construct (1-based, inclusive): a profiler-flagged line in
    /// any of them is explained by it.
    pub spans: Vec<(u32, u32)>,
    pub confidence: f64,
    pub evidence: Vec<String>,
}

/// Everything a detector needs.
pub struct Context<'a> {
    pub source: &'a str,
    pub facts: Facts,
}

/// How often the code at `node` runs, and why we think so; `None` at module or class level.
pub struct Frequency {
    pub runs: Runs,
    pub reason: String,
    pub function: usize,
}

impl Frequency {
    /// The confidence factor of the frequency; `None` when the code runs a bounded number of times.
    pub fn factor(&self) -> Option<f64> {
        match self.runs {
            Runs::Once => None,
            Runs::Unknown => Some(0.6),
            Runs::PerCall => Some(0.9),
            Runs::PerRequest => Some(1.0),
        }
    }
}

impl Context<'_> {
    pub fn text(&self, node: Node<'_>) -> &str {
        text(node, self.source)
    }

    /// How often the code at `node` (a call or an assignment) runs: its function's `runs`; more
    /// in a `while` loop; once under a lazy-initialisation guard (`if self._pool is None:`, and
    /// for things that are registered or opened, `lazy_except`, `except LookupError:`).
    pub fn frequency(&self, node: Node<'_>, lazy_except: bool) -> Option<Frequency> {
        let at = self.facts.sites.get(&node.id())?;
        let function = at.function?;
        let facts = &self.facts.functions[&function];
        let mut runs = facts.runs;
        let mut reason = if facts.runs_reason.is_empty() {
            format!("no caller of `{}` in sight: how often it runs is unknown", facts.name)
        } else {
            format!("`{}` {}", facts.name, facts.runs_reason)
        };
        if at.in_while && runs < Runs::PerCall {
            runs = Runs::PerCall;
            reason = format!("inside a `while` loop of `{}`", facts.name);
        }
        let lazy = match &at.guard {
            Some(Guard::Unset { subject, condition }) => {
                let state = subject.contains('.')
                    || (self.facts.is_global_name(Some(function), subject) && self.facts.module.contains_key(subject));
                state.then(|| format!("guarded by `if {condition}`"))
            }
            Some(Guard::Except(head)) if lazy_except => Some(format!("in `{head}`")),
            _ => None,
        };
        if let Some(guard) = lazy {
            runs = Runs::Once;
            reason = format!("{guard}: a lazy one-time initialisation");
        }
        Some(Frequency { runs, reason, function })
    }

    /// The class whose method (or a function nested in one) holds `function`.
    pub fn class_of(&self, function: usize) -> Option<&str> {
        let mut current = Some(function);
        while let Some(id) = current {
            let f = &self.facts.functions[&id];
            if let Some(class) = &f.class {
                return Some(class);
            }
            current = f.parent;
        }
        None
    }
}

/// Where a container lives.
enum Place<'f> {
    /// Module-level or class-level: lives as long as the process.
    Global { what: String, binding: &'f Binding },
    /// One per instance (`self.x = {}` in `__init__`); `singleton` when an instance is made at import.
    Instance { what: String, binding: &'f Binding, singleton: bool },
    /// Imported from another module: its definition and any eviction are not in this file.
    Imported { what: String, from: String },
}

/// Resolves the container an expression refers to inside function `function`.
fn place<'f>(cx: &'f Context<'_>, node: Node<'_>, function: usize) -> Option<(Place<'f>, String)> {
    let facts = &cx.facts;
    match node.kind() {
        "identifier" => {
            let name = cx.text(node);
            if !facts.is_global_name(Some(function), name) {
                return None;
            }
            if let Some(binding) = facts.module.get(name) {
                let what = format!("`{name}` is module-level ({}, line {})", binding.kind.describe(), binding.line);
                return Some((Place::Global { what, binding }, name.to_string()));
            }
            // `from state import CACHE` (a name from a module), not `import operator` (a module).
            let from = facts.imports.get(name).filter(|f| f.contains('.'))?;
            Some((
                Place::Imported { what: format!("`{name}` is imported from `{from}`"), from: from.clone() },
                name.into(),
            ))
        }
        "attribute" => {
            let object = cx.text(node.child_by_field_name("object")?);
            let attr = cx.text(node.child_by_field_name("attribute")?);
            if attr.starts_with("__") && attr.ends_with("__") {
                return None; // `__fields_set__` and the like: managed by a metaclass or framework
            }
            let class_name = match object {
                "self" | "cls" => cx.class_of(function)?,
                other => other,
            };
            let class = facts.classes.get(class_name)?;
            let key = format!(".{attr}");
            if let Some(binding) = class.attrs.get(attr) {
                let what =
                    format!("`{class_name}.{attr}` is class-level, shared by every instance (line {})", binding.line);
                return Some((Place::Global { what, binding }, key));
            }
            let binding = class.instance_attrs.get(attr)?;
            let singleton = class.instantiated_at_module;
            let what = format!(
                "`self.{attr}` belongs to each `{class_name}` ({}, line {}){}",
                binding.kind.describe(),
                binding.line,
                if singleton {
                    "; an instance is created at module level and lives as long as the process"
                } else {
                    ""
                }
            );
            Some((Place::Instance { what, binding, singleton }, key))
        }
        "subscript" => place(cx, node.child_by_field_name("value")?, function),
        "call" if callee_leaf(node, cx.source) == Some("setdefault") => place(cx, receiver(node)?, function),
        _ => None,
    }
}

/// Base confidence of a growing container by where it lives; `None` when its kind cannot grow
/// without bound (bounded and weak containers, objects of unknown classes).
fn container_base(place: &Place<'_>, key: &str, wanted: &[ValueKind]) -> Option<(f64, String)> {
    let private = key.trim_start_matches('.').starts_with('_');
    match place {
        // A public name may be evicted from another module; a private one only from this one.
        Place::Global { what, binding } if wanted.contains(&binding.kind) => {
            Some((if private { 0.8 } else { 0.75 }, what.clone()))
        }
        Place::Instance { what, binding, singleton } if wanted.contains(&binding.kind) => {
            Some((if *singleton { 0.7 } else { 0.4 }, what.clone()))
        }
        Place::Imported { what, from } => {
            Some((0.4, format!("{what}: its definition and any eviction are in `{from}`, not in this file")))
        }
        _ => None,
    }
}

/// A module's matches, and what a scan needs to judge other files.
#[derive(Debug, Default)]
pub struct Analysis {
    pub candidates: Vec<Candidate>,
    /// Functions (by the name callers use) with how often they run here.
    pub defined: Vec<(String, Runs)>,
    /// What this module's repeated code calls in other modules: (module, name, how often the
    /// caller runs, who).
    pub calls: Vec<(String, String, Runs, String)>,
}

/// All matches in a module.
pub fn classify(source: &str) -> Vec<Candidate> {
    analyze(source, &Hints::new(), "").candidates
}

/// All matches in a module whose functions may be called from other files (`hints`); `file`
/// names this module in the hints it gives others.
pub fn analyze(source: &str, hints: &Hints, file: &str) -> Analysis {
    let Some(tree) = parse(source) else { return Analysis::default() };
    let root = tree.root_node();
    let cx = Context { source, facts: Facts::collect(root, source, hints) };
    let mut out = Vec::new();
    for node in descendants(root) {
        let found = match node.kind() {
            "assignment" | "augmented_assignment" => container_write(&cx, node),
            "call" => {
                container_call(&cx, node).or_else(|| regex_compile(&cx, node)).or_else(|| lifecycle::call(&cx, node))
            }
            "decorated_definition" => lru_cache_method(&cx, node).or_else(|| cached_function(&cx, node)),
            _ => None,
        };
        out.extend(found);
    }
    out.sort_by_key(|c| (c.line, c.pattern));
    out.dedup_by_key(|c| (c.line, c.pattern));
    let functions = &cx.facts.functions;
    Analysis {
        candidates: out,
        defined: functions.values().map(|f| (runs::called_as(f).to_string(), f.runs)).collect(),
        calls: runs::outgoing(functions, &cx.facts.references, &cx.facts.imports, file),
    }
}

/// A candidate spanning `node`'s statement.
pub fn candidate(pattern: PatternId, node: Node<'_>, confidence: f64, evidence: Vec<String>) -> Candidate {
    let statement = statement_of(node);
    Candidate {
        pattern,
        line: line(node),
        spans: vec![(line(statement), end_line(statement))],
        confidence: (confidence * 100.0).round() / 100.0,
        evidence,
    }
}

/// `X[k] = v` and `X[k] += n` on a long-lived dict (the unbounded cache); `X += [...]` on a
/// long-lived list (accumulation).
fn container_write(cx: &Context<'_>, node: Node<'_>) -> Option<Candidate> {
    let left = node.child_by_field_name("left")?;
    let frequency = cx.frequency(node, false)?;
    let factor = frequency.factor()?;
    let augmented = node.kind() == "augmented_assignment";
    let (pattern, wanted, key_note, base_scale) = match left.kind() {
        "subscript" => {
            let key = left.child_by_field_name("subscript")?;
            if key.kind() == "slice" || is_constant(key, cx.source) || is_type_key(cx, key) {
                return None; // a fixed key is overwritten, not added; classes are bounded by the code
            }
            // `COUNTS[k] += 1` only adds keys on Counter/defaultdict: a little less sure.
            let kinds = vec![ValueKind::Dict];
            (
                PatternId::UnboundedCache,
                kinds,
                format!("a new key per distinct `{}`", cx.text(key)),
                if augmented { 0.8 } else { 1.0 },
            )
        }
        "identifier" | "attribute" if augmented => {
            let op = node.child_by_field_name("operator").map(|o| cx.text(o)).unwrap_or("");
            if !matches!(op, "+=" | "|=") {
                return None;
            }
            let kinds = vec![ValueKind::List, ValueKind::Set, ValueKind::Deque, ValueKind::Buffer];
            (PatternId::GlobalAccumulation, kinds, format!("grows by `{op}`"), 1.0)
        }
        _ => return None,
    };
    let (place, key) = place(cx, left, frequency.function)?;
    if cx.facts.evictions.contains_key(&key) {
        return None; // evicted somewhere in the module: bounded, or at least managed
    }
    let (base, what) = container_base(&place, &key, &wanted)?;
    let evidence = vec![
        what,
        "no eviction found in this module (pop/popitem/del/clear/reassignment/len() check)".into(),
        key_note,
        frequency.reason,
    ];
    Some(candidate(pattern, node, base * base_scale * factor, evidence))
}

/// A key that is a class (`type(x)`, `cls`, `x.__class__`, `cls.name`): as many as the code has.
fn is_type_key(cx: &Context<'_>, key: Node<'_>) -> bool {
    let is_class = |t: &str| matches!(t, "cls" | "klass" | "typ" | "type_" | "tp") || t.ends_with("__class__");
    match key.kind() {
        "identifier" => is_class(cx.text(key)),
        "attribute" => key.child_by_field_name("object").is_some_and(|o| is_type_key(cx, o)) || is_class(cx.text(key)),
        "call" => callee_name(key, cx.source).as_deref() == Some("type"),
        "tuple" => super::syntax::named_children(key).iter().all(|k| is_type_key(cx, *k) || is_constant(*k, cx.source)),
        _ => false,
    }
}

/// Method calls that grow a long-lived container: `X.append(v)`, `X.add(v)`, `X[k].append(v)`,
/// `X.setdefault(k, []).append(v)`, `X.setdefault(k, v)`, `X.update(...)`.
fn container_call(cx: &Context<'_>, call: Node<'_>) -> Option<Candidate> {
    let method = callee_leaf(call, cx.source)?;
    let object = receiver(call)?;
    let (pattern, wanted): (PatternId, &[ValueKind]) = match method {
        "append" | "extend" | "insert" | "appendleft" | "extendleft" | "add" => match object.kind() {
            // Lists in the values of a dict: `X[k].append(v)`.
            "subscript" | "call" => (PatternId::GlobalAccumulation, &[ValueKind::Dict]),
            _ => {
                (PatternId::GlobalAccumulation, &[ValueKind::List, ValueKind::Set, ValueKind::Deque, ValueKind::Buffer])
            }
        },
        "setdefault" | "update" => {
            // `X.setdefault(k, []).append(v)` is judged at the append.
            if call.parent().is_some_and(|p| p.kind() == "attribute") {
                return None;
            }
            let first = positional_args(call).into_iter().next();
            if method == "setdefault" && first.is_none_or(|k| is_constant(k, cx.source)) {
                return None;
            }
            (PatternId::UnboundedCache, &[ValueKind::Dict])
        }
        _ => return None,
    };
    let frequency = cx.frequency(call, false)?;
    let factor = frequency.factor()?;
    let (place, key) = place(cx, object, frequency.function)?;
    if cx.facts.evictions.contains_key(&key) {
        return None;
    }
    let (base, what) = container_base(&place, &key, wanted)?;
    let evidence = vec![
        what,
        "no eviction found in this module (pop/remove/discard/del/clear/reassignment/len() check)".into(),
        format!("grows by `.{method}()` on every call"),
        frequency.reason,
    ];
    Some(candidate(pattern, call, base * factor, evidence))
}

/// `re.compile(...)` inside a function: reported as not a leak (only to `advise`, never in scans).
fn regex_compile(cx: &Context<'_>, call: Node<'_>) -> Option<Candidate> {
    let name = callee_name(call, cx.source)?;
    let from_re = name == "re.compile"
        || name == "regex.compile"
        || (name == "compile" && cx.facts.imports.get("compile").is_some_and(|m| m == "re.compile"));
    if !from_re {
        return None;
    }
    let function = cx.facts.function_of(call)?;
    let fname = &cx.facts.functions[&function].name;
    let evidence = vec![
        format!("`{name}` runs on every call of `{fname}`"),
        "re caches compiled patterns itself, bounded (re._MAXCACHE, 512 in CPython): no growth from this call".into(),
    ];
    Some(candidate(PatternId::RegexCompilePerCall, call, 0.9, evidence))
}

/// The `@lru_cache` / `@functools.cache` decorator of a decorated definition and whether it is
/// unbounded (`maxsize=None`, `@cache`); `None` without one, or on a static or class method.
fn cache_decorator<'t>(cx: &Context<'_>, node: Node<'t>) -> Option<(Node<'t>, bool)> {
    let mut cache = None;
    for decorator in super::syntax::named_children(node).into_iter().filter(|d| d.kind() == "decorator") {
        let expr = decorator.named_child(0)?;
        let (callee, call) = match expr.kind() {
            "call" => (callee_name(expr, cx.source)?, Some(expr)),
            _ => (super::syntax::dotted_name(expr, cx.source)?, None),
        };
        let resolved = match callee.split_once('.') {
            Some((head, rest)) => format!("{}.{rest}", cx.facts.imports.get(head).map_or(head, String::as_str)),
            None => cx.facts.imports.get(&callee).cloned().unwrap_or_else(|| callee.clone()),
        };
        match resolved.as_str() {
            "staticmethod" | "classmethod" => return None,
            "functools.lru_cache" | "lru_cache" => {
                let unbounded = call.is_some_and(|c| {
                    keyword_arg(c, "maxsize", cx.source).is_some_and(|v| v.kind() == "none")
                        || positional_args(c).first().is_some_and(|v| v.kind() == "none")
                });
                cache = Some((decorator, unbounded));
            }
            "functools.cache" => cache = Some((decorator, true)),
            _ => {}
        }
    }
    cache
}

/// `@functools.cache` / `@lru_cache(maxsize=None)` on a module-level function with parameters,
/// called repeatedly: one entry per distinct argument tuple, never evicted: an unbounded cache.
/// (Bounded, it plateaus; without parameters it holds one value.)
fn cached_function(cx: &Context<'_>, node: Node<'_>) -> Option<Candidate> {
    let definition = node.child_by_field_name("definition").filter(|d| d.kind() == "function_definition")?;
    node.parent().filter(|p| p.kind() == "module")?;
    let (decorator, unbounded) = cache_decorator(cx, node)?;
    let params = definition.child_by_field_name("parameters")?;
    if !unbounded || super::syntax::named_children(params).is_empty() {
        return None;
    }
    let facts = cx.facts.functions.get(&definition.id())?;
    let factor = match facts.runs {
        Runs::Once => return None,
        Runs::Unknown => 0.6,
        Runs::PerCall => 0.9,
        Runs::PerRequest => 1.0,
    };
    let name = cx.text(definition.child_by_field_name("name")?);
    let runs = if facts.runs_reason.is_empty() {
        format!("no caller of `{name}` in sight: how often it runs is unknown")
    } else {
        format!("`{name}` {}", facts.runs_reason)
    };
    let evidence = vec![
        format!("`@{}` on module-level function `{name}`", cx.text(decorator.named_child(0)?)),
        "unbounded (maxsize=None / @cache): one entry per distinct arguments, never evicted".into(),
        runs,
    ];
    let mut c = candidate(PatternId::UnboundedCache, decorator, 0.8 * factor, evidence);
    c.spans = vec![(line(node), end_line(node))];
    Some(c)
}

/// `@lru_cache` / `@functools.cache` on a method whose first parameter is the instance.
fn lru_cache_method(cx: &Context<'_>, node: Node<'_>) -> Option<Candidate> {
    let definition = node.child_by_field_name("definition").filter(|d| d.kind() == "function_definition")?;
    // Directly in a class body.
    let class = node.parent().filter(|p| p.kind() == "block")?.parent().filter(|p| p.kind() == "class_definition")?;
    let class_name = cx.text(class.child_by_field_name("name")?);
    let (decorator, unbounded) = cache_decorator(cx, node)?;
    let params = definition.child_by_field_name("parameters")?;
    let first = super::syntax::named_children(params).into_iter().next()?;
    let first = cx.text(first);
    if first.is_empty() || matches!(first, "cls" | "klass" | "mcs") || first.starts_with('*') {
        return None;
    }
    let method = cx.text(definition.child_by_field_name("name")?);
    let mut evidence = vec![
        format!(
            "`@{}` on method `{class_name}.{method}` (first parameter `{first}`)",
            cx.text(decorator.named_child(0)?)
        ),
        "the cache is one per function, module-wide, and keys on the instance".into(),
    ];
    evidence.push(if unbounded {
        "unbounded (maxsize=None / @cache): every instance ever used stays alive".into()
    } else {
        "bounded by maxsize: keeps up to maxsize instances alive after their use".into()
    });
    // Bounded, it plateaus (the profiler calls that a bounded cache): worth a look, not a finding.
    let mut c = candidate(PatternId::LruCacheMethod, decorator, if unbounded { 0.9 } else { 0.4 }, evidence);
    c.spans = vec![(line(node), end_line(node))];
    Some(c)
}
