//! Patterns of things that must be ended and are not: listeners never removed, logging handlers
//! added per call, tasks created and dropped, executors never shut down, connections and files
//! never closed. Each needs code that runs repeatedly (see `Frequency`) and the absence of its
//! ending (removal, `with`, `close()`, `shutdown()`, keeping the task) where it would be.

use tree_sitter::Node;

use super::{
    classify::{candidate, Candidate, Context},
    patterns::PatternId,
    syntax::{
        ancestor, callee_leaf, callee_name, descendants, dotted_name, end_line, is_constant, keyword_arg, line,
        named_children, positional_args, receiver, statement_of,
    },
};

/// Registration method -> the methods that undo it.
const REGISTRATIONS: &[(&str, &[&str])] = &[
    ("subscribe", &["unsubscribe", "dispose"]),
    ("add_listener", &["remove_listener", "remove_all_listeners"]),
    ("addListener", &["removeListener", "removeAllListeners"]),
    ("on", &["off", "remove_listener", "remove_all_listeners"]),
    ("add_event_listener", &["remove_event_listener"]),
    ("add_handler", &["remove_handler"]),
    ("connect", &["disconnect"]),
    ("register", &["unregister"]),
    ("add_done_callback", &["remove_done_callback"]),
    ("listen", &["remove"]),
];

/// Methods that end a resource's life.
const CLOSERS: &[&str] = &["close", "aclose", "dispose", "release", "terminate", "shutdown", "disconnect", "__exit__"];
/// Calls that take ownership of a resource and close it.
const OWNERS: &[&str] = &["closing", "aclosing", "enter_context", "enter_async_context", "push", "callback"];

pub fn call(cx: &Context<'_>, call: Node<'_>) -> Option<Candidate> {
    let leaf = callee_leaf(call, cx.source)?;
    match leaf {
        "create_task" | "ensure_future" => dropped_task(cx, call),
        "addHandler" => logging_handler(cx, call),
        "getLogger" => logger_per_call(cx, call),
        "ThreadPoolExecutor" | "ProcessPoolExecutor" | "Pool" | "ThreadPool" => executor(cx, call, leaf),
        // `asyncpg.connect(DSN)` opens a connection; `signal.connect(handler)` registers one.
        _ if super::resources::opens(cx, call).is_some() => resource(cx, call),
        _ => {
            let (_, removals) = REGISTRATIONS.iter().find(|(m, _)| *m == leaf)?;
            listener(cx, call, leaf, removals)
        }
    }
}

/// The expression around a call that holds its value (through `await` and parentheses), and
/// that expression's parent.
fn holder(call: Node<'_>) -> Option<(Node<'_>, Node<'_>)> {
    let mut outer = call;
    let mut parent = call.parent()?;
    while matches!(parent.kind(), "await" | "parenthesized_expression") {
        outer = parent;
        parent = parent.parent()?;
    }
    Some((outer, parent))
}

fn function_node(node: Node<'_>) -> Option<Node<'_>> {
    ancestor(node, "function_definition")
}

fn class_node(node: Node<'_>) -> Option<Node<'_>> {
    ancestor(node, "class_definition")
}

/// Whether `scope` ends the life of `name` (an identifier, or `self.x`): `name.close()` (any of
/// CLOSERS), `with name`, `closing(name)`/`enter_context(name)`, or hands it to its caller
/// (`return name`, `yield name`).
fn ended_in(cx: &Context<'_>, scope: Node<'_>, name: &str, closers: &[&str]) -> Option<String> {
    for n in descendants(scope) {
        match n.kind() {
            "attribute" => {
                let object = n.child_by_field_name("object").map(|o| cx.text(o));
                let attr = n.child_by_field_name("attribute").map(|a| cx.text(a)).unwrap_or("");
                if object == Some(name) && closers.contains(&attr) {
                    return Some(format!("`{name}.{attr}` at line {}", line(n)));
                }
            }
            "with_item" => {
                let value = n.child_by_field_name("value").map(|v| cx.text(v)).unwrap_or("");
                let value = value.split(" as ").next().unwrap_or("").trim();
                if value == name || value.ends_with(&format!("({name})")) {
                    return Some(format!("`with {value}` at line {}", line(n)));
                }
            }
            "call"
                if callee_leaf(n, cx.source).is_some_and(|l| OWNERS.contains(&l))
                    && positional_args(n).iter().any(|a| cx.text(*a) == name) =>
            {
                return Some(format!("`{}` at line {}", cx.text(n), line(n)));
            }
            "return_statement" | "yield" if named_children(n).iter().any(|e| cx.text(*e) == name) => {
                return Some(format!("handed to the caller at line {}", line(n)));
            }
            // `self._executor = executor`: kept by a longer-lived object, not dropped per call.
            "assignment"
                if n.child_by_field_name("right").is_some_and(|r| cx.text(r) == name)
                    && n.child_by_field_name("left").is_some_and(|l| matches!(l.kind(), "attribute" | "subscript")) =>
            {
                return Some(format!("stored at line {}", line(n)));
            }
            _ => {}
        }
    }
    None
}

/// Lines where `name` is used as `name.method(...)` with one of `methods`, in `scope`.
fn method_lines(cx: &Context<'_>, scope: Node<'_>, name: &str, methods: &[&str]) -> Vec<(u32, u32)> {
    descendants(scope)
        .into_iter()
        .filter(|n| n.kind() == "call")
        .filter(|c| receiver(*c).is_some_and(|r| cx.text(r) == name))
        .filter(|c| callee_leaf(*c, cx.source).is_some_and(|l| methods.contains(&l)))
        .map(|c| (line(statement_of(c)), end_line(statement_of(c))))
        .collect()
}

fn dropped_task(cx: &Context<'_>, call: Node<'_>) -> Option<Candidate> {
    if let Some(r) = receiver(call) {
        let r = cx.text(r);
        // A TaskGroup (or anyio task group, trio nursery) owns its tasks.
        let function = function_node(call)?;
        let grouped = descendants(function).into_iter().filter(|n| n.kind() == "with_item").any(|w| {
            let t = cx.text(w);
            t.ends_with(&format!(" as {r}"))
                && ["TaskGroup", "task_group", "create_task_group", "open_nursery"].iter().any(|g| t.contains(g))
        });
        if grouped || matches!(r, "tg" | "task_group" | "nursery") {
            return None;
        }
    }
    let frequency = cx.frequency(call, true)?;
    let factor = frequency.factor()?;
    let (outer, parent) = holder(call)?;
    if outer != call {
        return None; // awaited
    }
    let (base, what) = match parent.kind() {
        "expression_statement" => (0.85, "the task is not kept: the statement drops it".to_string()),
        "assignment" => {
            let left = parent.child_by_field_name("left").filter(|l| l.kind() == "identifier")?;
            let name = cx.text(left);
            let function = function_node(call)?;
            let used = descendants(function)
                .into_iter()
                .any(|n| n.kind() == "identifier" && n.id() != left.id() && cx.text(n) == name);
            if used {
                return None;
            }
            (0.6, format!("assigned to `{name}`, which is never used again"))
        }
        _ => return None,
    };
    let name = callee_name(call, cx.source).unwrap_or_else(|| "create_task".into());
    let evidence = vec![
        format!("`{name}(...)`: {what}"),
        "nothing can await, cancel or time it out, and the event loop keeps only a weak reference".into(),
        frequency.reason,
    ];
    Some(candidate(PatternId::DroppedTask, call, base * factor, evidence))
}

fn logging_handler(cx: &Context<'_>, call: Node<'_>) -> Option<Candidate> {
    if cx.facts.attribute_names.contains("removeHandler") {
        return None;
    }
    let frequency = cx.frequency(call, true)?;
    let factor = frequency.factor()?;
    // Guarded: `if not logger.handlers:` / `if not logger.hasHandlers():` adds it once.
    let mut current = call.parent();
    while let Some(n) = current.filter(|n| n.kind() != "function_definition") {
        if n.kind() == "if_statement" {
            let condition = n.child_by_field_name("condition").map(|c| cx.text(c)).unwrap_or("");
            if condition.contains("handlers") || condition.contains("hasHandlers") {
                return None;
            }
        }
        current = n.parent();
    }
    let logger = receiver(call).map(|r| cx.text(r)).unwrap_or("logger");
    let mut c = candidate(
        PatternId::LoggingHandlerPerCall,
        call,
        0.85 * factor,
        vec![
            format!("`{logger}.addHandler(...)` adds one more handler on every call; loggers live forever"),
            "no removeHandler() in this module, no `if not logger.handlers` guard".into(),
            frequency.reason,
        ],
    );
    // The handler is built (and its memory allocated) where its variable is assigned.
    if let (Some(arg), Some(function)) = (positional_args(call).first().copied(), function_node(call)) {
        if arg.kind() == "identifier" {
            let name = cx.text(arg);
            for n in descendants(function).into_iter().filter(|n| n.kind() == "assignment") {
                if n.child_by_field_name("left").is_some_and(|l| cx.text(l) == name) {
                    c.spans.push((line(statement_of(n)), end_line(statement_of(n))));
                }
            }
        }
    }
    Some(c)
}

/// `logging.getLogger(f"...{request_id}")`: one logger per distinct name, kept forever.
fn logger_per_call(cx: &Context<'_>, call: Node<'_>) -> Option<Candidate> {
    let name = callee_name(call, cx.source)?;
    if name != "logging.getLogger" && name != "getLogger" {
        return None;
    }
    let arg = positional_args(call).into_iter().next()?;
    let frequency = cx.frequency(call, true)?;
    let factor = frequency.factor()?;
    let function = &cx.facts.functions[&frequency.function];
    let base = match arg.kind() {
        _ if is_static_name(cx, arg) => return None,
        "string" | "binary_operator" | "call" => 0.75,
        "identifier" if function.params.iter().any(|p| p == cx.text(arg)) => 0.5,
        _ => return None,
    };
    let evidence = vec![
        format!("`{}` names a logger after per-call data", cx.text(call)),
        "logging keeps every logger it ever created (logging.Logger.manager.loggerDict), with its handlers".into(),
        frequency.reason,
    ];
    Some(candidate(PatternId::LoggingHandlerPerCall, call, base * factor, evidence))
}

/// A logger name that is the same on every call: literals, `__name__`, attributes such as
/// `cls.__name__` (bounded by the classes), and concatenations or f-strings of those.
fn is_static_name(cx: &Context<'_>, node: Node<'_>) -> bool {
    match node.kind() {
        "identifier" => cx.text(node) == "__name__" || is_constant(node, cx.source),
        "attribute" => true,
        "binary_operator" => named_children(node).into_iter().all(|n| is_static_name(cx, n)),
        "string" => descendants(node)
            .into_iter()
            .filter(|n| n.kind() == "interpolation")
            .all(|i| i.child_by_field_name("expression").is_some_and(|e| is_static_name(cx, e))),
        "parenthesized_expression" => node.named_child(0).is_some_and(|n| is_static_name(cx, n)),
        _ => is_constant(node, cx.source),
    }
}

fn executor(cx: &Context<'_>, call: Node<'_>, leaf: &str) -> Option<Candidate> {
    let name = callee_name(call, cx.source)?;
    let multiprocessing = matches!(leaf, "Pool" | "ThreadPool");
    if multiprocessing {
        let head = name.split('.').next().unwrap_or(&name);
        let origin = cx.facts.imports.get(head).map(String::as_str).unwrap_or(head);
        if !origin.starts_with("multiprocessing") {
            return None;
        }
    }
    let frequency = cx.frequency(call, true)?;
    let factor = frequency.factor()?;
    let (_, parent) = holder(call)?;
    let created = format!("`{name}(...)` is created on every call");
    let (base, mut extra, spans) = match parent.kind() {
        // Handed to ExitStack.enter_context() / closing(): shut down by its owner.
        "argument_list"
            if parent.parent().and_then(|c| callee_leaf(c, cx.source)).is_some_and(|l| OWNERS.contains(&l)) =>
        {
            return None
        }
        "attribute" | "argument_list" => (0.85, "used in one expression: nothing can shut it down".to_string(), vec![]),
        "assignment" => {
            let left = parent.child_by_field_name("left")?;
            let holder_name = cx.text(left);
            let (scope, base) = match left.kind() {
                "identifier" => (function_node(call)?, if multiprocessing { 0.85 } else { 0.75 }),
                "attribute" if holder_name.starts_with("self.") => (class_node(call)?, 0.6),
                _ => return None,
            };
            if ended_in(cx, scope, holder_name, CLOSERS).is_some() {
                return None;
            }
            let spans = method_lines(cx, scope, holder_name, &["submit", "map", "apply_async", "map_async", "imap"]);
            (base, format!("`{holder_name}` is never shut down (no `with`, `.shutdown()`, `.close()`)"), spans)
        }
        _ => return None,
    };
    if !spans.is_empty() {
        extra.push_str("; its workers start at the first submit/map");
    }
    let mut c = candidate(PatternId::ExecutorNotShutdown, call, base * factor, vec![created, extra, frequency.reason]);
    c.spans.extend(spans);
    Some(c)
}

fn resource(cx: &Context<'_>, call: Node<'_>) -> Option<Candidate> {
    let (what, base, chained_leaks) = super::resources::opens(cx, call)?;
    let frequency = cx.frequency(call, true)?;
    let factor = frequency.factor()?;
    let (_, parent) = holder(call)?;
    let opened =
        format!("`{}` opens {what} on every call", dotted_name(call.child_by_field_name("function")?, cx.source)?);
    let mut evidence = vec![opened];
    let base = match parent.kind() {
        "attribute" if chained_leaks => {
            evidence.push("used in one expression: nothing closes it".into());
            base
        }
        "assignment" => {
            let left = parent.child_by_field_name("left")?;
            let holder_name = cx.text(left);
            let (scope, scale) = match left.kind() {
                "identifier" => (function_node(call)?, 1.0),
                "attribute" if holder_name.starts_with("self.") => (class_node(call)?, 0.8),
                _ => return None,
            };
            if ended_in(cx, scope, holder_name, CLOSERS).is_some() {
                return None;
            }
            evidence.push(format!("`{holder_name}` is never closed (no `with`, `.close()`, closing(), return)"));
            base * scale
        }
        _ => return None,
    };
    if !chained_leaks {
        evidence.push(
            "CPython closes it when its last reference goes: it grows when the object stays reachable (stored, a \
             traceback, a cycle)"
                .into(),
        );
    }
    evidence.push(frequency.reason);
    Some(candidate(PatternId::UnclosedResource, call, base * factor, evidence))
}

fn listener(cx: &Context<'_>, call: Node<'_>, method: &str, removals: &[&str]) -> Option<Candidate> {
    let name = callee_name(call, cx.source).unwrap_or_default();
    let atexit = name == "atexit.register" || cx.facts.imports.get(&name).is_some_and(|o| o == "atexit.register");
    match method {
        "register" if !atexit => return None,
        "listen" if !name.ends_with("event.listen") => return None,
        _ => {}
    }
    if removals.iter().any(|r| cx.facts.attribute_names.contains(*r)) {
        return None; // removed somewhere in this module: taken as paired
    }
    // What is registered: a callable argument, or the decorated function.
    let decorator = call.parent().is_some_and(|p| p.kind() == "decorator");
    let args = call.child_by_field_name("arguments").map(named_children).unwrap_or_default();
    let callback = args
        .iter()
        .map(|a| if a.kind() == "keyword_argument" { a.child_by_field_name("value").unwrap_or(*a) } else { *a })
        .find(|a| matches!(a.kind(), "identifier" | "attribute" | "lambda"));
    if callback.is_none() && !decorator {
        return None; // `.connect()` of a database, `.on("x")` of something else
    }
    // `sock.connect(address)`, `df.on(...)`: for these common names the callback must look like
    // one (a function of this module, a method of self, a lambda), or weak=False be given.
    if matches!(method, "connect" | "on") && !decorator {
        let looks_callable = callback.is_some_and(|cb| match cb.kind() {
            "lambda" => true,
            "attribute" => cx.text(cb).starts_with("self."),
            _ => cx.facts.functions.values().any(|f| f.name == cx.text(cb)),
        });
        if !looks_callable && keyword_arg(call, "weak", cx.source).is_none() {
            return None;
        }
    }
    let frequency = cx.frequency(call, true)?;
    let factor = frequency.factor()?;
    let (receiver_base, holder) = match receiver(call) {
        _ if atexit => (0.9, "atexit keeps it until the interpreter exits".to_string()),
        Some(r) if r.kind() == "identifier" => {
            let r_name = cx.text(r);
            let f = &cx.facts.functions[&frequency.function];
            let global = cx.facts.is_global_name(Some(frequency.function), r_name);
            if method == "add_done_callback" && !(global && cx.facts.module.contains_key(r_name)) {
                return None; // a future's callbacks go when it completes: only a process-long one keeps them
            } else if f.params.iter().any(|p| p == r_name) {
                (0.75, format!("`{r_name}` is passed in: it outlives the call"))
            } else if !global {
                return None; // a local emitter dies with the call
            } else {
                (0.85, format!("`{r_name}` is module-level: it lives as long as the process"))
            }
        }
        Some(r) if method != "add_done_callback" => (0.7, format!("`{}` outlives the call", cx.text(r))),
        _ => return None,
    };
    let mut base = receiver_base;
    let mut evidence = vec![holder];
    if let Some(cb) = callback {
        let cb_text = cx.text(cb);
        let kind = if cb_text.starts_with("self.") {
            " (a bound method: keeps its object alive)"
        } else if cb.kind() == "lambda" {
            " (a closure: keeps what it captures alive)"
        } else {
            ""
        };
        evidence.insert(0, format!("`{}` registers `{cb_text}`{kind}", cx.text(call.child_by_field_name("function")?)));
    }
    if method == "connect" {
        let weak_false = keyword_arg(call, "weak", cx.source).is_some_and(|v| cx.text(v) == "False");
        if !weak_false {
            base = 0.45;
            evidence.push("blinker and Django signals hold receivers weakly by default (weak=True): a leak only with strong references".into());
        }
    }
    evidence.push(format!("no {} anywhere in this module", removals.join("/")));
    evidence.push(frequency.reason);
    Some(candidate(PatternId::ListenerNotRemoved, call, base * factor, evidence))
}
