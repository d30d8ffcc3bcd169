//! Small helpers over tree-sitter-python's syntax tree: parsing, node text and lines, dotted names,
//! call parts, and what a value expression builds (the container kinds the detectors care about).

use tree_sitter::{Node, Parser, Tree};

/// Deepest syntax tree the classifier walks. Its walks recurse over the tree; CPython itself
/// refuses code nested past 200 parentheses or 100 blocks, so this only turns away hostile or
/// generated files (`x = [[[...]]]` 200,000 deep overflowed the stack).
pub const MAX_TREE_DEPTH: usize = 1000;

/// Parses Python source (tree-sitter recovers from syntax errors: the tree is always usable).
/// None when it cannot, or when the tree is deeper than `MAX_TREE_DEPTH`.
pub fn parse(source: &str) -> Option<Tree> {
    let mut parser = Parser::new();
    parser.set_language(&tree_sitter_python::LANGUAGE.into()).ok()?;
    let tree = parser.parse(source, None)?;
    (depth(tree.root_node()) <= MAX_TREE_DEPTH).then_some(tree)
}

/// How deep the tree under `root` goes (the root alone: 1), walked without recursion.
fn depth(root: Node<'_>) -> usize {
    let mut cursor = root.walk();
    let (mut depth, mut deepest) = (1, 1);
    loop {
        if cursor.goto_first_child() {
            depth += 1;
            deepest = deepest.max(depth);
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return deepest;
            }
            depth -= 1;
        }
    }
}

/// The source text of a node ("" if it is not valid UTF-8, which a &str source cannot produce).
pub fn text<'s>(node: Node<'_>, source: &'s str) -> &'s str {
    node.utf8_text(source.as_bytes()).unwrap_or("")
}

/// 1-based first line of a node.
pub fn line(node: Node<'_>) -> u32 {
    node.start_position().row as u32 + 1
}

/// 1-based last line of a node.
pub fn end_line(node: Node<'_>) -> u32 {
    let end = node.end_position();
    // A node ending at column 0 ends on the line before (its trailing newline).
    if end.column == 0 && end.row > node.start_position().row {
        end.row as u32
    } else {
        end.row as u32 + 1
    }
}

/// The named children of a node, collected (tree-sitter's iterator borrows a cursor).
pub fn named_children(node: Node<'_>) -> Vec<Node<'_>> {
    let mut cursor = node.walk();
    node.named_children(&mut cursor).collect()
}

/// Every named node of the subtree, in source order (pre-order), the root included.
pub fn descendants(node: Node<'_>) -> Vec<Node<'_>> {
    let mut out = Vec::new();
    let mut cursor = node.walk(); // rooted at `node`: it never moves above it
    loop {
        let current = cursor.node();
        if current.is_named() {
            out.push(current);
        }
        if cursor.goto_first_child() {
            continue;
        }
        while !cursor.goto_next_sibling() {
            if !cursor.goto_parent() {
                return out;
            }
        }
    }
}

/// `a.b.c` for identifiers and attribute chains; `None` for anything else (calls, subscripts).
pub fn dotted_name(node: Node<'_>, source: &str) -> Option<String> {
    match node.kind() {
        "identifier" => Some(text(node, source).to_string()),
        "attribute" => {
            let object = dotted_name(node.child_by_field_name("object")?, source)?;
            let attribute = text(node.child_by_field_name("attribute")?, source);
            Some(format!("{object}.{attribute}"))
        }
        _ => None,
    }
}

/// The last component of a callee: `create_task` for `asyncio.create_task`, `open` for `open`.
pub fn callee_leaf<'s>(call: Node<'_>, source: &'s str) -> Option<&'s str> {
    let function = call.child_by_field_name("function")?;
    match function.kind() {
        "identifier" => Some(text(function, source)),
        "attribute" => Some(text(function.child_by_field_name("attribute")?, source)),
        _ => None,
    }
}

/// The receiver of a method call (`x` in `x.append(...)`), if the callee is an attribute.
pub fn receiver(call: Node<'_>) -> Option<Node<'_>> {
    let function = call.child_by_field_name("function")?;
    (function.kind() == "attribute").then(|| function.child_by_field_name("object")).flatten()
}

/// The dotted callee (`asyncio.create_task`), when it is a plain name or attribute chain.
pub fn callee_name(call: Node<'_>, source: &str) -> Option<String> {
    dotted_name(call.child_by_field_name("function")?, source)
}

/// Positional arguments of a call.
pub fn positional_args(call: Node<'_>) -> Vec<Node<'_>> {
    call.child_by_field_name("arguments")
        .map(|args| {
            named_children(args)
                .into_iter()
                .filter(|a| !matches!(a.kind(), "keyword_argument" | "comment" | "dictionary_splat" | "list_splat"))
                .collect()
        })
        .unwrap_or_default()
}

/// The value of keyword argument `name` of a call.
pub fn keyword_arg<'t>(call: Node<'t>, name: &str, source: &str) -> Option<Node<'t>> {
    let args = call.child_by_field_name("arguments")?;
    named_children(args).into_iter().find_map(|a| {
        (a.kind() == "keyword_argument" && a.child_by_field_name("name").map(|n| text(n, source)) == Some(name))
            .then(|| a.child_by_field_name("value"))
            .flatten()
    })
}

/// A literal whose value cannot vary between calls (a constant key).
pub fn is_constant(node: Node<'_>, source: &str) -> bool {
    match node.kind() {
        "integer" | "float" | "true" | "false" | "none" => true,
        "string" | "concatenated_string" => !descendants(node).iter().any(|n| n.kind() == "interpolation"),
        "tuple" => named_children(node).iter().all(|n| is_constant(*n, source)),
        // UPPER_CASE names are constants by convention.
        "identifier" => {
            let t = text(node, source);
            t.len() > 1 && t.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        }
        _ => false,
    }
}

/// What a value expression builds, as far as leaks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    Dict,
    List,
    Set,
    /// A deque without maxlen.
    Deque,
    /// A `bytearray`: a buffer that grows in place.
    Buffer,
    /// Bounded or self-evicting: cachetools caches, `deque(maxlen=...)`, lru-dict.
    Bounded(String),
    /// Weak containers: entries go away with their referents.
    Weak(String),
    /// Anything else built by a call: the callee's dotted name.
    Call(String),
    Other,
}

impl ValueKind {
    pub fn describe(&self) -> String {
        match self {
            ValueKind::Dict => "dict".into(),
            ValueKind::List => "list".into(),
            ValueKind::Set => "set".into(),
            ValueKind::Deque => "deque without maxlen".into(),
            ValueKind::Buffer => "bytearray".into(),
            ValueKind::Bounded(n) | ValueKind::Weak(n) | ValueKind::Call(n) => n.clone(),
            ValueKind::Other => "value".into(),
        }
    }
}

const BOUNDED_CACHES: &[&str] = &[
    "TTLCache",
    "LRUCache",
    "LFUCache",
    "TLRUCache",
    "FIFOCache",
    "RRCache",
    "MRUCache",
    "LRU",
    "lrucache",
    "ExpiringDict",
];
const WEAK_CONTAINERS: &[&str] = &["WeakValueDictionary", "WeakKeyDictionary", "WeakSet"];

/// Classifies the right-hand side of a binding.
pub fn value_kind(value: Node<'_>, source: &str) -> ValueKind {
    match value.kind() {
        "dictionary" | "dictionary_comprehension" => ValueKind::Dict,
        "list" | "list_comprehension" => ValueKind::List,
        "set" | "set_comprehension" => ValueKind::Set,
        "call" => {
            let Some(name) = callee_name(value, source) else { return ValueKind::Other };
            let leaf = name.rsplit('.').next().unwrap_or(&name);
            match leaf {
                "dict" | "defaultdict" | "OrderedDict" | "Counter" => ValueKind::Dict,
                "list" => ValueKind::List,
                "set" => ValueKind::Set,
                "bytearray" => ValueKind::Buffer,
                "deque" => {
                    if keyword_arg(value, "maxlen", source).is_some_and(|v| v.kind() != "none")
                        || positional_args(value).len() >= 2
                    {
                        ValueKind::Bounded(text(value, source).to_string())
                    } else {
                        ValueKind::Deque
                    }
                }
                l if BOUNDED_CACHES.contains(&l) => ValueKind::Bounded(name),
                l if WEAK_CONTAINERS.contains(&l) => ValueKind::Weak(name),
                _ => ValueKind::Call(name),
            }
        }
        _ => ValueKind::Other,
    }
}

/// Names bound by an assignment target (`a`, `a, b`, `[a, *b]`); attributes and subscripts bind none.
pub fn bound_names<'s>(target: Node<'_>, source: &'s str, out: &mut Vec<&'s str>) {
    match target.kind() {
        "identifier" => out.push(text(target, source)),
        "pattern_list"
        | "tuple_pattern"
        | "list_pattern"
        | "expression_list"
        | "tuple"
        | "list"
        | "list_splat_pattern"
        | "parenthesized_expression"
        | "as_pattern_target" => {
            for child in named_children(target) {
                bound_names(child, source, out);
            }
        }
        _ => {}
    }
}

/// The statement a node belongs to (its nearest ancestor that is a statement of a block).
pub fn statement_of(node: Node<'_>) -> Node<'_> {
    let mut current = node;
    while let Some(parent) = current.parent() {
        if matches!(parent.kind(), "block" | "module") {
            return current;
        }
        current = parent;
    }
    current
}

/// The nearest enclosing node of `kind` (`function_definition`, `class_definition`), not `node`
/// itself.
pub fn ancestor<'t>(node: Node<'t>, kind: &str) -> Option<Node<'t>> {
    let mut current = node.parent();
    while let Some(n) = current {
        if n.kind() == kind {
            return Some(n);
        }
        current = n.parent();
    }
    None
}
