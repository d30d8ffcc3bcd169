//! Which containers hold the heap: from `sys.modules`, every module's names are followed into the
//! classes defined there, module-level instances (and the instances they hold, a few levels
//! down: `app.state._state`), functions' default arguments and closure variables, and
//! `functools.lru_cache` wrappers. Each list, dict, set, deque or bytearray (a buffer grown in
//! place, its length in bytes) reached gets a path a person reads as Python (`module.name`, `module.Class.attr`, `module.obj.attr['key']`,
//! `module.lookup(_cache=)`, `module.make.<locals>.seen`, `module.Class.method.<lru_cache>`),
//! its length, and the objects first reached through it (what it retains: `referents`).
//! Bounded by the objects visited and by a deadline; shared objects count for the first holder
//! that reaches them.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    address_set::AddressSet,
    dicts, instances,
    types::{Kind, TypeTable},
};
use crate::python::{layout::Layout, memory::ReadMemory, objects::read_str};

/// Modules, and attributes per namespace, looked at.
const MAX_NAMES: u64 = 1 << 16;
/// Dicts and lists of at most this many entries have their values named (`d['key']`, `l[3]`),
/// for keys of at most this many characters.
const MAX_NESTED_ITEMS: u64 = 64;
const MAX_KEY_CHARS: usize = 64;
/// How far below a module the names are followed through classes, instances, functions and
/// small containers (`logging.Logger.manager.loggerDict['app'].handlers` is 4 down).
const MAX_DEPTH: u32 = 5;
/// Namespaces (classes, instances, functions) opened, over all modules.
const MAX_NAMESPACES: usize = 50_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// `module.name` or `module.Class.attr`; names come from the target (untrusted).
    pub path: String,
    /// The container's type.
    pub type_name: String,
    /// `len()` of the container.
    pub length: u64,
    /// Objects first reached through it, itself included.
    pub retained_objects: u64,
    pub retained_bytes: u64,
    /// What it retains was not walked, or not wholly (a bound stopped the search first, or the
    /// census read lengths only): `retained_*` are then 0 or a part.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retained_unknown: bool,
    /// The `__file__` of the module the path starts in, when it has one (a path in the
    /// target's root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_file: Option<String>,
    /// Where the code that fills it is defined, when the holder says so itself: an
    /// `lru_cache`'s decorated function (file, first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defined_at: Option<(String, u32)>,
    /// Its entries are weak references (a `WeakSet`'s or `WeakValueDictionary`'s `data`): it
    /// keeps nothing alive but the references themselves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weak: bool,
}

/// The classes whose `data` holds only weak references to their elements (`weakref.WeakSet`,
/// `weakref.WeakValueDictionary`; a `WeakKeyDictionary`'s values are strong).
fn holds_weakly(class: &str) -> bool {
    matches!(class, "WeakSet" | "WeakValueDictionary")
}

/// What stops a holder search.
#[derive(Debug, Clone, Copy)]
pub struct HolderBounds {
    pub max_objects: u64,
    pub deadline: Instant,
    /// Holders kept (the most retaining).
    pub max_holders: usize,
    /// Only where each container is and its length: nothing retained is walked (milliseconds
    /// where a walk of a 1 GB heap takes seconds), every container found is kept.
    pub lengths_only: bool,
}

pub struct HolderSearch<'t, 'l, M: ReadMemory> {
    pub(super) mem: &'t M,
    pub(super) layout: &'l Layout,
    pub(super) types: &'t mut TypeTable<'l>,
    bounds: HolderBounds,
    /// Objects already counted for a holder.
    pub(super) visited: AddressSet,
    /// Classes, instances and functions whose names were already followed.
    namespaces: HashSet<u64>,
    /// The `__file__` of the module being walked.
    pub(super) module_file: Option<String>,
    /// Each class's `__slots__`: (name, offset in the instance).
    pub(super) slots_by_type: HashMap<u64, Vec<(String, u64)>>,
    /// Whether a bound cut the search short.
    pub truncated: bool,
}

/// Attribute names that are the interpreter's plumbing, not the program's state.
fn is_dunder(name: &str) -> bool {
    name.len() > 4 && name.starts_with("__") && name.ends_with("__")
}

impl<'t, 'l, M: ReadMemory> HolderSearch<'t, 'l, M> {
    pub fn new(mem: &'t M, layout: &'l Layout, types: &'t mut TypeTable<'l>, bounds: HolderBounds) -> Self {
        HolderSearch {
            mem,
            layout,
            types,
            bounds,
            visited: AddressSet::default(),
            namespaces: HashSet::new(),
            module_file: None,
            slots_by_type: HashMap::new(),
            truncated: false,
        }
    }

    pub(super) fn out_of_bounds(&mut self) -> bool {
        if self.visited.len() as u64 >= self.bounds.max_objects || Instant::now() >= self.bounds.deadline {
            self.truncated = true;
        }
        self.truncated
    }

    pub(super) fn read(&self, address: u64) -> u64 {
        self.mem.read_u64(address).unwrap_or(0)
    }

    pub(super) fn kind(&mut self, object: u64) -> Option<(usize, Kind)> {
        let t = self.types.resolve(self.mem, self.read(object.wrapping_add(8)))?;
        Some((t, self.types.types[t].kind))
    }

    fn str_at(&self, object: u64) -> Option<String> {
        read_str(self.mem, &self.layout.objects.str, object)
    }

    /// (name, value) of a dict whose keys are strs (a namespace), bounded.
    fn names(&mut self, dict: u64) -> Vec<(String, u64)> {
        let items = dicts::dict_items(self.mem, &self.layout.heap.containers, dict, MAX_NAMES).unwrap_or_default();
        items.into_iter().filter_map(|(k, v)| Some((self.str_at(k)?, v))).collect()
    }

    /// Every holder reached from the modules of `sys.modules` (the dict at `modules`), then from
    /// the locals of the lone suspended `coroutines` (`coroutines.rs`).
    pub fn from_roots(&mut self, modules: u64, coroutines: &[u64]) -> Vec<Holder> {
        let mut modules = self.names(modules);
        // `__main__` first: what the program itself keeps is named after it.
        modules.sort_by(|a, b| (a.0 != "__main__", &a.0).cmp(&(b.0 != "__main__", &b.0)));
        let mut holders = Vec::new();
        for (module_name, module) in modules {
            if self.out_of_bounds() {
                break;
            }
            if self.kind(module).map(|k| k.1) != Some(Kind::Module) {
                continue;
            }
            let md_dict = self.read(module + self.layout.heap.module_dict);
            let names = self.names(md_dict);
            self.module_file = names.iter().find(|(n, _)| n == "__file__").and_then(|(_, f)| self.str_at(*f));
            for (attr, value) in names {
                if !is_dunder(&attr) {
                    self.named(format!("{module_name}.{attr}"), value, 0, &mut holders);
                }
            }
        }
        self.add_coroutine_locals(coroutines, &mut holders);
        if !self.bounds.lengths_only {
            holders.sort_by(|a, b| b.retained_bytes.cmp(&a.retained_bytes).then(a.path.cmp(&b.path)));
            holders.truncate(self.bounds.max_holders);
        }
        holders
    }

    /// The holders at and below the object `value` named `path`, `depth` levels below a module.
    pub(super) fn named(&mut self, path: String, value: u64, depth: u32, holders: &mut Vec<Holder>) {
        let Some((t, kind)) = self.kind(value) else { return };
        let flags = match kind {
            // A class's own flags say whether it is one (its type's are type's).
            Kind::Type => self.read(value + self.layout.heap.types.flags),
            _ => self.types.types[t].flags,
        };
        let heap_type = flags & super::types::HEAPTYPE != 0;
        let opens = matches!(kind, Kind::Type | Kind::Function | Kind::LruCache) || (kind == Kind::Other && heap_type);
        if opens && (depth >= MAX_DEPTH || self.namespaces.len() >= MAX_NAMESPACES || !self.namespaces.insert(value)) {
            return;
        }
        match kind {
            // A class: its attributes, once (a class imported elsewhere is the same one).
            Kind::Type if heap_type => {
                let tp_dict = self.read(value + self.layout.heap.types.dict);
                for (attr, v) in self.names(tp_dict) {
                    if !is_dunder(&attr) {
                        self.named(format!("{path}.{attr}"), v, depth + 1, holders);
                    }
                }
            }
            Kind::Function => self.function(&path, value, depth, holders),
            Kind::LruCache => {
                let cache = self.read(value + self.layout.heap.refs.lru_cache_dict);
                let defined_at = self.definition(self.read(value + self.layout.heap.refs.lru_cache_func));
                let start = holders.len();
                if let Some((t, kind)) = self.kind(cache) {
                    self.container(format!("{path}.<lru_cache>"), cache, t, kind, depth + 1, holders);
                }
                for h in &mut holders[start..] {
                    h.defined_at.clone_from(&defined_at);
                }
            }
            // An instance of a class: its attributes (`module.obj.attr`), and theirs below.
            // An asyncio event loop (`_UnixSelectorEventLoop`, reached from a coroutine's
            // `self._loop`): its timers and ready queue keep tasks, which are judged as pending
            // tasks, named at the line that creates them; the loop's own lists name no line.
            Kind::Other if heap_type && self.types.types[t].name.ends_with("EventLoop") => {}
            Kind::Other if heap_type => {
                let attrs = self.attributes(t, value);
                let start = holders.len();
                for (attr, v) in attrs {
                    if !is_dunder(&attr) {
                        self.named(format!("{path}.{attr}"), v, depth + 1, holders);
                    }
                }
                if holds_weakly(&self.types.types[t].name) {
                    let data = format!("{path}.data");
                    holders[start..].iter_mut().filter(|h| h.path == data).for_each(|h| h.weak = true);
                }
            }
            _ => self.container(path, value, t, kind, depth, holders),
        }
    }

    /// A function's default arguments (`f(name=)`), keyword-only defaults and closure variables
    /// (`enclosing.<locals>.name`, as Python names the enclosing function's locals).
    fn function(&mut self, path: &str, function: u64, depth: u32, holders: &mut Vec<Holder>) {
        let r = &self.layout.heap.refs;
        let (code, defaults, kwdefaults, closure) = (
            self.read(function + r.func_code),
            self.read(function + r.func_defaults),
            self.read(function + r.func_kwdefaults),
            self.read(function + r.func_closure),
        );
        let names = self.tuple_strs(self.read(code + r.code_names));
        let argcount = (self.read(code + r.code_argcount) as u32) as usize;
        let defaults = self.tuple_items(defaults);
        for (i, value) in defaults.iter().enumerate() {
            let param = (argcount + i).checked_sub(defaults.len()).and_then(|at| names.get(at).cloned());
            let param = param.unwrap_or_else(|| format!("<default {i}>"));
            self.named(format!("{path}({param}=)"), *value, depth + 1, holders);
        }
        if kwdefaults != 0 && self.kind(kwdefaults).map(|k| k.1) == Some(Kind::Dict) {
            for (param, value) in self.names(kwdefaults) {
                self.named(format!("{path}({param}=)"), value, depth + 1, holders);
            }
        }
        let cells = self.tuple_items(closure);
        if cells.is_empty() {
            return;
        }
        let free = if r.code_freevars != 0 { self.tuple_strs(self.read(code + r.code_freevars)) } else { names };
        // The free variables are the last names (3.11+) or the whole co_freevars tuple (3.10).
        let free = &free[free.len().saturating_sub(cells.len())..];
        let qualname = self.str_at(self.read(function + self.layout.heap.refs.func_qualname));
        let scope = qualname
            .as_deref()
            .and_then(|q| q.rfind(".<locals>.").map(|at| &q[..at + ".<locals>".len()]))
            .map(|scope| match path.rsplit_once('.') {
                Some((module_or_owner, _)) if depth == 0 => format!("{module_or_owner}.{scope}"),
                _ => format!("{path}.<closure>"),
            })
            .unwrap_or_else(|| format!("{path}.<closure>"));
        for (i, cell) in cells.iter().enumerate() {
            let var = free.get(i).cloned().unwrap_or_else(|| format!("<cell {i}>"));
            if self.kind(*cell).map(|k| k.1) == Some(Kind::Cell) {
                let content = self.read(cell + self.layout.heap.refs.cell_ref);
                if content != 0 {
                    self.named(format!("{scope}.{var}"), content, depth + 1, holders);
                }
            }
        }
    }

    /// Where a function is defined: its code's file and first line (a decorated function's is
    /// its first decorator's).
    fn definition(&mut self, function: u64) -> Option<(String, u32)> {
        if self.kind(function)?.1 != Kind::Function {
            return None;
        }
        let code = self.read(function + self.layout.heap.refs.func_code);
        let c = &self.layout.objects.code;
        let file = self.str_at(self.read(code + c.filename))?;
        let line = self.read(code + c.firstlineno) as u32;
        (line > 0).then_some((file, line))
    }

    /// An instance's attributes: its dict or split values, and its `__slots__`.
    fn attributes(&mut self, t: usize, object: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let info = self.types.types[t].clone();
        if let Some(at) = instances::locate(self.mem, self.layout, &info, object) {
            for (name, v) in instances::items(self.mem, self.layout, at, MAX_NAMES) {
                if let Some(attr) = self.str_at(name) {
                    out.push((attr, v));
                }
            }
        }
        for (name, offset) in self.slots(&info) {
            let v = self.read(object.wrapping_add(offset));
            if v != 0 {
                out.push((name, v));
            }
        }
        out
    }

    /// The items of the tuple at `tuple` (none when it is not one).
    pub(super) fn tuple_items(&mut self, tuple: u64) -> Vec<u64> {
        if tuple == 0 || self.kind(tuple).map(|k| k.1) != Some(Kind::Tuple) {
            return Vec::new();
        }
        let n = self.read(tuple + self.layout.heap.containers.var_size);
        self.pointers(tuple + self.layout.heap.containers.tuple_items, n.min(MAX_NAMES))
    }

    pub(super) fn tuple_strs(&mut self, tuple: u64) -> Vec<String> {
        self.tuple_items(tuple).into_iter().map(|s| self.str_at(s).unwrap_or_default()).collect()
    }

    /// The container `object` as a holder, when no other path reached it first; a small one's
    /// elements first (a dict's str keys: `path['key']`, a list's items: `path[3]`), as holders
    /// of their own or namespaces to follow, so that what grows inside `subs['updates']` or in a
    /// closure of `app.router.routes[3].endpoint` is named there rather than only as more retained
    /// by the outer container.
    fn container(&mut self, path: String, object: u64, t: usize, kind: Kind, depth: u32, holders: &mut Vec<Holder>) {
        if !matches!(kind, Kind::List | Kind::Dict | Kind::Set | Kind::Deque | Kind::ByteArray)
            || self.visited.contains(object)
        {
            return;
        }
        if depth < MAX_DEPTH {
            match kind {
                Kind::Dict if self.read(object + self.layout.heap.containers.dict_used) <= MAX_NESTED_ITEMS => {
                    let c = &self.layout.heap.containers;
                    for (key, value) in dicts::dict_items(self.mem, c, object, MAX_NESTED_ITEMS).unwrap_or_default() {
                        if let Some(key) = self.str_at(key).filter(|k| k.len() <= MAX_KEY_CHARS) {
                            self.named(format!("{path}['{key}']"), value, depth + 1, holders);
                        }
                    }
                }
                Kind::List => {
                    let c = &self.layout.heap.containers;
                    let (len, items) = (self.read(object + c.var_size), self.read(object + c.list_items));
                    let items = if len <= MAX_NESTED_ITEMS { self.pointers(items, len) } else { Vec::new() };
                    // Items that are namespaces (instances, functions), not containers: a list of
                    // lists is one holder, however short.
                    for (i, item) in items.into_iter().enumerate() {
                        let item_kind = self.kind(item).map(|k| k.1);
                        if !matches!(
                            item_kind,
                            Some(Kind::List | Kind::Dict | Kind::Set | Kind::Deque | Kind::ByteArray)
                        ) {
                            self.named(format!("{path}[{i}]"), item, depth + 1, holders);
                        }
                    }
                }
                _ => {}
            }
        }
        if self.visited.contains(object) {
            return;
        }
        let length = self.length(object, kind);
        let (retained_objects, retained_bytes, retained_unknown) = if self.bounds.lengths_only {
            (0, 0, true)
        } else {
            let (objects, bytes) = self.retain(object);
            (objects, bytes, self.truncated)
        };
        holders.push(Holder {
            path,
            type_name: self.types.types[t].name.clone(),
            length,
            retained_objects,
            retained_bytes,
            retained_unknown,
            module_file: self.module_file.clone(),
            defined_at: None,
            weak: false,
        });
    }

    fn length(&self, object: u64, kind: Kind) -> u64 {
        let c = &self.layout.heap.containers;
        match kind {
            Kind::Dict => self.read(object + c.dict_used),
            Kind::Set => self.read(object + c.set_used),
            _ => self.read(object + c.var_size),
        }
    }
}
