//! What the whole module says, collected in one walk before any pattern is judged: which names
//! are module- or class-level and what they hold, which containers are ever evicted (anywhere in
//! the module), which methods are ever referenced (to find a matching `unsubscribe`), each
//! function's scope (parameters, locals, `global`s), and who calls what (for `runs`).

use std::collections::{HashMap, HashSet};

use tree_sitter::Node;

use super::{
    runs::{self, Hints, References, Runs, Site},
    syntax::{
        bound_names, callee_leaf, callee_name, descendants, line, named_children, positional_args, receiver, text,
        value_kind, ValueKind,
    },
};

#[derive(Debug, Clone)]
pub struct Binding {
    pub kind: ValueKind,
    pub line: u32,
}

#[derive(Debug, Default)]
pub struct ClassFacts {
    /// Class-level attributes (shared by every instance: as global as a module-level name).
    pub attrs: HashMap<String, Binding>,
    /// `self.x = ...` in `__init__`: one per instance.
    pub instance_attrs: HashMap<String, Binding>,
    /// Instantiated at module level (a singleton-like instance).
    pub instantiated_at_module: bool,
}

#[derive(Debug)]
pub struct FunctionFacts {
    pub name: String,
    /// The class this is a method of.
    pub class: Option<String>,
    pub params: Vec<String>,
    /// Names bound in the function (parameters included), minus `global`/`nonlocal` ones.
    pub locals: HashSet<String>,
    pub globals: HashSet<String>,
    /// The function this one is nested in.
    pub parent: Option<usize>,
    pub decorators: Vec<String>,
    pub runs: Runs,
    pub runs_reason: String,
}

/// A lazy-initialisation guard around code: it runs once, not per call.
#[derive(Debug, Clone)]
pub enum Guard {
    /// `if self._x is None:` / `if not _X:` (the consequence only): `subject` is `self.x`,
    /// `cls.x` or a name, checked against the module's names when judged.
    Unset { subject: String, condition: String },
    /// `except LookupError/KeyError/AttributeError:` (first use of a context variable, a key).
    Except(String),
}

/// Where a call or assignment is: its function, whether a `while` loop repeats it, its guard.
#[derive(Debug, Clone, Default)]
pub struct Where {
    pub function: Option<usize>,
    pub in_while: bool,
    pub guard: Option<Guard>,
}

#[derive(Debug, Default)]
pub struct Facts {
    /// By node id, for every call, assignment and augmented assignment.
    pub sites: HashMap<usize, Where>,
    pub module: HashMap<String, Binding>,
    /// Local name -> imported dotted name (`lru_cache` -> `functools.lru_cache`).
    pub imports: HashMap<String, String>,
    pub classes: HashMap<String, ClassFacts>,
    /// By the node id of the `function_definition`.
    pub functions: HashMap<usize, FunctionFacts>,
    /// Container key (`NAME` or `.attr`) -> how it is evicted, first occurrence.
    pub evictions: HashMap<String, String>,
    /// Every `x.name` attribute name in the module (called or passed, like `tasks.discard`).
    pub attribute_names: HashSet<String>,
    pub references: References,
}

/// Methods that take entries out of a container.
const EVICTING_METHODS: &[&str] =
    &["pop", "popitem", "popleft", "clear", "remove", "discard", "expire", "difference_update", "intersection_update"];

/// The key of the container an expression refers to: `NAME` for a name, `.attr` for any
/// attribute (self.attr, cls.attr, Class.attr), through subscripts and method-call chains
/// (`CACHE[k]`, `CACHE.setdefault(k, [])`) to the container underneath.
pub fn container_key(node: Node<'_>, source: &str) -> Option<String> {
    match node.kind() {
        "identifier" => Some(text(node, source).to_string()),
        "attribute" => Some(format!(".{}", text(node.child_by_field_name("attribute")?, source))),
        "subscript" => container_key(node.child_by_field_name("value")?, source),
        "call" if callee_leaf(node, source) == Some("setdefault") => container_key(receiver(node)?, source),
        "parenthesized_expression" => container_key(node.named_child(0)?, source),
        _ => None,
    }
}

impl Facts {
    pub fn collect(root: Node<'_>, source: &str, hints: &Hints) -> Facts {
        let mut facts = Facts::default();
        let mut refs = References::default();
        facts.walk(root, source, &Where::default(), None, &mut refs);
        runs::decide(&mut facts.functions, &refs, hints);
        facts.references = refs;
        facts
    }

    /// The function whose body (or signature) holds `node`.
    pub fn function_of(&self, node: Node<'_>) -> Option<usize> {
        if let Some(at) = self.sites.get(&node.id()) {
            return at.function;
        }
        super::syntax::ancestor(node, "function_definition").map(|n| n.id())
    }

    fn walk(&mut self, node: Node<'_>, source: &str, at: &Where, class: Option<&str>, refs: &mut References) {
        let function = at.function;
        match node.kind() {
            "function_definition" => {
                let facts = function_facts(node, source, function, class);
                let id = node.id();
                self.functions.insert(id, facts);
                let inside = Where { function: Some(id), ..Where::default() };
                for child in named_children(node) {
                    self.walk(child, source, &inside, None, refs);
                }
                return;
            }
            "class_definition" => {
                let name = node.child_by_field_name("name").map(|n| text(n, source)).unwrap_or("").to_string();
                self.classes.entry(name.clone()).or_default();
                if let Some(body) = node.child_by_field_name("body") {
                    for child in named_children(body) {
                        self.walk(child, source, at, Some(&name), refs);
                    }
                }
                return;
            }
            "while_statement" if function.is_some() => {
                let inside = Where { in_while: true, ..at.clone() };
                for child in named_children(node) {
                    self.walk(child, source, &inside, class, refs);
                }
                return;
            }
            "if_statement" if function.is_some() => {
                let guard = node.child_by_field_name("condition").and_then(|c| unset_guard(c, source));
                let consequence = node.child_by_field_name("consequence").map(|c| c.id());
                let guarded = Where { guard: guard.or_else(|| at.guard.clone()), ..at.clone() };
                for child in named_children(node) {
                    let inner = if Some(child.id()) == consequence { &guarded } else { at };
                    self.walk(child, source, inner, class, refs);
                }
                return;
            }
            "except_clause" if function.is_some() => {
                let head = text(node, source).lines().next().unwrap_or("").trim().trim_end_matches(':');
                if ["LookupError", "KeyError", "AttributeError"].iter().any(|e| head.contains(e)) {
                    let inside = Where { guard: Some(Guard::Except(head.to_string())), ..at.clone() };
                    for child in named_children(node) {
                        self.walk(child, source, &inside, class, refs);
                    }
                    return;
                }
            }
            "import_from_statement" => {
                let module = node.child_by_field_name("module_name").map(|m| text(m, source)).unwrap_or("");
                for child in named_children(node) {
                    let (name, alias) = match child.kind() {
                        "dotted_name" if Some(child) != node.child_by_field_name("module_name") => {
                            (text(child, source), text(child, source))
                        }
                        "aliased_import" => (
                            child.child_by_field_name("name").map(|n| text(n, source)).unwrap_or(""),
                            child.child_by_field_name("alias").map(|n| text(n, source)).unwrap_or(""),
                        ),
                        _ => continue,
                    };
                    self.imports.insert(alias.to_string(), format!("{module}.{name}"));
                }
            }
            "import_statement" => {
                for child in named_children(node) {
                    if child.kind() == "aliased_import" {
                        let name = child.child_by_field_name("name").map(|n| text(n, source)).unwrap_or("");
                        let alias = child.child_by_field_name("alias").map(|n| text(n, source)).unwrap_or("");
                        self.imports.insert(alias.to_string(), name.to_string());
                    } else {
                        let name = text(child, source);
                        let head = name.split('.').next().unwrap_or(name);
                        self.imports.insert(head.to_string(), head.to_string());
                    }
                }
            }
            "assignment" => {
                self.sites.insert(node.id(), at.clone());
                self.note_assignment(node, source, function, class);
            }
            "augmented_assignment" => {
                self.sites.insert(node.id(), at.clone());
                // `x += ...` in a function without `global x` binds x locally (Python's rule).
                if let (Some(f), Some(left)) = (function, node.child_by_field_name("left")) {
                    if left.kind() == "identifier" {
                        let name = text(left, source).to_string();
                        let facts = self.functions.get_mut(&f).expect("walked");
                        if !facts.globals.contains(&name) {
                            facts.locals.insert(name);
                        }
                    }
                }
            }
            "attribute" => {
                let attr = node.child_by_field_name("attribute").map(|a| text(a, source)).unwrap_or("");
                self.attribute_names.insert(attr.to_string());
                if EVICTING_METHODS.contains(&attr) {
                    if let Some(key) = node.child_by_field_name("object").and_then(|o| container_key(o, source)) {
                        self.evictions.entry(key).or_insert_with(|| format!("`.{attr}` at line {}", line(node)));
                    }
                }
            }
            "delete_statement" => {
                let mut targets = named_children(node);
                if targets.len() == 1 && targets[0].kind() == "expression_list" {
                    targets = named_children(targets[0]);
                }
                for target in targets {
                    if let Some(key) = container_key(target, source) {
                        self.evictions.entry(key).or_insert_with(|| format!("`del` at line {}", line(node)));
                    }
                }
            }
            "comparison_operator" => {
                for call in descendants(node).into_iter().filter(|n| n.kind() == "call") {
                    if callee_name(call, source).as_deref() == Some("len") {
                        if let Some(key) = positional_args(call).first().and_then(|a| container_key(*a, source)) {
                            let why = format!("size check `len(...)` at line {}", line(call));
                            self.evictions.entry(key).or_insert(why);
                        }
                    }
                }
            }
            "call" => {
                self.sites.insert(node.id(), at.clone());
                let guarded = match &at.guard {
                    None => false,
                    Some(Guard::Except(_)) => true,
                    // A name is long-lived state if the module binds it (so far) or it looks private or constant.
                    Some(Guard::Unset { subject, .. }) => {
                        subject.contains('.')
                            || self.module.contains_key(subject)
                            || subject.starts_with('_')
                            || subject.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
                    }
                };
                let site = Site { function, guarded: function.is_some() && guarded, repeated: at.in_while };
                refs.note_call(node, source, site);
            }
            _ => {}
        }
        for child in named_children(node) {
            self.walk(child, source, at, class, refs);
        }
    }

    fn note_assignment(&mut self, node: Node<'_>, source: &str, function: Option<usize>, class: Option<&str>) {
        let (Some(left), right) = (node.child_by_field_name("left"), node.child_by_field_name("right")) else { return };
        let binding = |value: Option<Node<'_>>| Binding {
            kind: value.map(|v| value_kind(v, source)).unwrap_or(ValueKind::Other),
            line: line(node),
        };
        match (function, class) {
            (None, None) => {
                let mut names = Vec::new();
                bound_names(left, source, &mut names);
                for name in names {
                    let value = if left.kind() == "identifier" { right } else { None };
                    self.module.insert(name.to_string(), binding(value));
                }
                // `x = Class()` at import makes a process-long instance (not under `if __name__ == ...`).
                let main_guard = std::iter::successors(node.parent(), |n| n.parent()).any(|n| {
                    n.kind() == "if_statement"
                        && n.child_by_field_name("condition").is_some_and(|c| text(c, source).contains("__name__"))
                });
                if let Some(right) = right.filter(|r| r.kind() == "call" && !main_guard) {
                    if let Some(callee) = callee_name(right, source) {
                        if let Some(class) = self.classes.get_mut(&callee) {
                            class.instantiated_at_module = true;
                        }
                    }
                }
            }
            (None, Some(class)) => {
                if left.kind() == "identifier" {
                    let facts = self.classes.entry(class.to_string()).or_default();
                    facts.attrs.insert(text(left, source).to_string(), binding(right));
                }
            }
            (Some(f), _) => {
                let mut names = Vec::new();
                bound_names(left, source, &mut names);
                let facts = self.functions.get_mut(&f).expect("walked");
                let in_init = facts.name == "__init__";
                let method_class = facts.class.clone();
                for name in names {
                    if facts.globals.contains(name) {
                        // `global X; X = ...` in a function: a reset of the global.
                        self.evictions
                            .entry(name.to_string())
                            .or_insert_with(|| format!("reassigned at line {}", line(node)));
                    } else {
                        facts.locals.insert(name.to_string());
                    }
                }
                match left.kind() {
                    "attribute" => {
                        let object = left.child_by_field_name("object").map(|o| text(o, source));
                        let attr = left.child_by_field_name("attribute").map(|a| text(a, source)).unwrap_or("");
                        if in_init && object == Some("self") {
                            if let Some(class) = method_class {
                                let facts = self.classes.entry(class).or_default();
                                facts.instance_attrs.insert(attr.to_string(), binding(right));
                            }
                        } else {
                            self.evictions
                                .entry(format!(".{attr}"))
                                .or_insert_with(|| format!("reassigned at line {}", line(node)));
                        }
                    }
                    "subscript" => {
                        // Slice assignment (`x[:] = x[-100:]`) trims the container.
                        let sliced = left.child_by_field_name("subscript").is_some_and(|s| s.kind() == "slice");
                        if let (true, Some(key)) = (sliced, container_key(left, source)) {
                            self.evictions
                                .entry(key)
                                .or_insert_with(|| format!("slice assignment at line {}", line(node)));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Where a name used in function `f` lives: `None` when it is local (or a closure variable).
    pub fn is_global_name(&self, f: Option<usize>, name: &str) -> bool {
        let mut current = f;
        while let Some(id) = current {
            let facts = &self.functions[&id];
            if facts.globals.contains(name) {
                return true;
            }
            if facts.locals.contains(name) {
                return false;
            }
            current = facts.parent;
        }
        true
    }
}

fn function_facts(node: Node<'_>, source: &str, parent: Option<usize>, class: Option<&str>) -> FunctionFacts {
    let name = node.child_by_field_name("name").map(|n| text(n, source)).unwrap_or("").to_string();
    let mut params = Vec::new();
    if let Some(parameters) = node.child_by_field_name("parameters") {
        for p in named_children(parameters) {
            let ident = match p.kind() {
                "identifier" => Some(p),
                "typed_parameter" => named_children(p).into_iter().find(|c| c.kind() == "identifier"),
                "default_parameter" | "typed_default_parameter" => p.child_by_field_name("name"),
                "list_splat_pattern" | "dictionary_splat_pattern" => p.named_child(0),
                _ => None,
            };
            if let Some(ident) = ident {
                params.push(text(ident, source).to_string());
            }
        }
    }
    let mut globals = HashSet::new();
    let mut locals: HashSet<String> = params.iter().cloned().collect();
    // Declarations and other binding forms (assignments are noted during the walk).
    if let Some(body) = node.child_by_field_name("body") {
        let mut stack = vec![body];
        while let Some(n) = stack.pop() {
            match n.kind() {
                "global_statement" | "nonlocal_statement" => {
                    for ident in named_children(n) {
                        globals.insert(text(ident, source).to_string());
                    }
                }
                "function_definition" | "class_definition" => {
                    if let Some(name) = n.child_by_field_name("name") {
                        locals.insert(text(name, source).to_string());
                    }
                    continue; // their bodies are their own scopes
                }
                "for_statement" | "for_in_clause" => {
                    let mut names = Vec::new();
                    if let Some(left) = n.child_by_field_name("left") {
                        bound_names(left, source, &mut names);
                    }
                    locals.extend(names.into_iter().map(str::to_string));
                }
                "as_pattern_target" | "named_expression" => {
                    let target = n.child_by_field_name("name").unwrap_or(n);
                    let mut names = Vec::new();
                    bound_names(if target.kind() == "identifier" { target } else { n }, source, &mut names);
                    locals.extend(names.into_iter().map(str::to_string));
                }
                "import_statement" | "import_from_statement" => {
                    for child in descendants(n).into_iter().filter(|c| c.kind() == "identifier") {
                        locals.insert(text(child, source).to_string());
                    }
                }
                _ => {}
            }
            stack.extend(named_children(n));
        }
    }
    for g in &globals {
        locals.remove(g);
    }
    let decorators = node
        .parent()
        .filter(|p| p.kind() == "decorated_definition")
        .map(|p| {
            named_children(p)
                .into_iter()
                .filter(|d| d.kind() == "decorator")
                .map(|d| text(d, source).trim_start_matches('@').trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    FunctionFacts {
        name,
        class: class.map(str::to_string),
        params,
        locals,
        globals,
        parent,
        decorators,
        runs: Runs::Unknown,
        runs_reason: String::new(),
    }
}

/// The guard of `if X is None:` / `if not X:`, X being `self.x`, `cls.x` or a name.
fn unset_guard(condition: Node<'_>, source: &str) -> Option<Guard> {
    let subject = match condition.kind() {
        "comparison_operator" if text(condition, source).ends_with(" is None") => condition.named_child(0)?,
        "not_operator" => condition.child_by_field_name("argument")?,
        _ => return None,
    };
    let long_lived = match subject.kind() {
        "attribute" => subject.child_by_field_name("object").is_some_and(|o| matches!(text(o, source), "self" | "cls")),
        "identifier" => true,
        _ => false,
    };
    long_lived.then(|| Guard::Unset {
        subject: text(subject, source).to_string(),
        condition: text(condition, source).to_string(),
    })
}
