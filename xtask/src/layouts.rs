//! `cargo xtask gen-layouts`: writes `leakprobe/src/python/layouts/v3_X.rs` from each installed
//! CPython's own headers, so no offset in leakprobe is typed by hand.
//!
//! For every pyenv CPython 3.10+ (its headers include `internal/`), a small C program includes
//! them with `Py_BUILD_CORE`, prints `offsetof`/`sizeof` of every field leakprobe reads, and is
//! compiled with the machine's `cc` and run; its `name value` lines become a Rust file. What the
//! headers cannot say (which field a version uses, how its line table is encoded) is chosen here,
//! once per version, in `fields`.

use std::{
    collections::BTreeMap,
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Where the generated files live, from the workspace root.
pub const OUT_DIR: &str = "leakprobe/src/python/layouts";

/// First version whose thread and frame layout is read from `_Py_DebugOffsets` at run time.
const SELF_DESCRIBED: u32 = 13;

/// An installed interpreter with its headers.
#[derive(Debug, Clone)]
pub struct Installed {
    pub minor: u32,
    /// `3.11.7`.
    pub version: String,
    pub include: PathBuf,
}

/// The newest pyenv install of each CPython 3.10+ minor version that has internal headers.
pub fn installed() -> Vec<Installed> {
    let root = env::var("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(&env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".pyenv"));
    let mut newest: BTreeMap<u32, (u32, Installed)> = BTreeMap::new();
    for entry in fs::read_dir(root.join("versions")).into_iter().flatten().flatten() {
        let version = entry.file_name().to_string_lossy().into_owned();
        let parts: Vec<u32> = version.split('.').map_while(|p| p.parse().ok()).collect();
        let [3, minor, patch] = parts[..] else { continue };
        let include = entry.path().join(format!("include/python3.{minor}"));
        if minor < 10 || !include.join("internal").is_dir() {
            continue;
        }
        if newest.get(&minor).is_none_or(|(p, _)| *p < patch) {
            newest.insert(minor, (patch, Installed { minor, version, include }));
        }
    }
    newest.into_values().map(|(_, i)| i).collect()
}

/// (name, C expression) of every number leakprobe needs from 3.`minor`.
fn fields(minor: u32) -> Vec<(&'static str, &'static str)> {
    let mut f = vec![
        ("code.firstlineno", "offsetof(PyCodeObject, co_firstlineno)"),
        ("code.filename", "offsetof(PyCodeObject, co_filename)"),
        ("code.name", "offsetof(PyCodeObject, co_name)"),
        ("code.linetable", "offsetof(PyCodeObject, co_linetable)"),
        ("str.length", "offsetof(PyASCIIObject, length)"),
        ("str.state", "offsetof(PyASCIIObject, state)"),
        ("str.ascii_data", "sizeof(PyASCIIObject)"),
        ("str.compact_data", "sizeof(PyCompactUnicodeObject)"),
        ("bytes.size", "offsetof(PyBytesObject, ob_base.ob_size)"),
        ("bytes.data", "offsetof(PyBytesObject, ob_sval)"),
    ];
    if minor >= 11 {
        f.push(("code.qualname", "offsetof(PyCodeObject, co_qualname)"));
        f.push(("code.bytecode", "offsetof(PyCodeObject, co_code_adaptive)"));
    }
    if minor >= 12 {
        f.push(("int.size", "offsetof(PyLongObject, long_value.lv_tag)"));
        f.push(("int.digits", "offsetof(PyLongObject, long_value.ob_digit)"));
        f.push(("int.flag_bits", "_PyLong_NON_SIZE_BITS"));
    } else {
        f.push(("int.size", "offsetof(PyLongObject, ob_base.ob_size)"));
        f.push(("int.digits", "offsetof(PyLongObject, ob_digit)"));
    }
    f.extend(heap_fields(minor));
    if minor >= SELF_DESCRIBED {
        f.extend([
            ("debug.interpreters_head", "offsetof(_Py_DebugOffsets, runtime_state.interpreters_head)"),
            ("debug.threads_head", "offsetof(_Py_DebugOffsets, interpreter_state.threads_head)"),
            ("debug.thread_next", "offsetof(_Py_DebugOffsets, thread_state.next)"),
            ("debug.current_frame", "offsetof(_Py_DebugOffsets, thread_state.current_frame)"),
            ("debug.native_thread_id", "offsetof(_Py_DebugOffsets, thread_state.native_thread_id)"),
            ("debug.frame_previous", "offsetof(_Py_DebugOffsets, interpreter_frame.previous)"),
            ("debug.frame_executable", "offsetof(_Py_DebugOffsets, interpreter_frame.executable)"),
            ("debug.frame_instr_ptr", "offsetof(_Py_DebugOffsets, interpreter_frame.instr_ptr)"),
            ("debug.frame_owner", "offsetof(_Py_DebugOffsets, interpreter_frame.owner)"),
            ("debug.code_adaptive", "offsetof(_Py_DebugOffsets, code_object.co_code_adaptive)"),
            ("debug.size", "sizeof(_Py_DebugOffsets)"),
            // 3.14 marks interpreter-owned entry frames below the C-stack ones: both are shims.
            ("frame.owner_skip_min", if minor >= 14 { "FRAME_OWNED_BY_INTERPRETER" } else { "FRAME_OWNED_BY_CSTACK" }),
            // 3.14's f_executable is a _PyStackRef with tag bits.
            ("frame.code_tag_bits", if minor >= 14 { "Py_TAG_BITS" } else { "0" }),
        ]);
        return f;
    }
    f.extend([
        ("threads.runtime_interpreters_head", "offsetof(_PyRuntimeState, interpreters.head)"),
        ("threads.thread_next", "offsetof(PyThreadState, next)"),
    ]);
    if minor == 10 {
        f.extend([
            ("threads.interpreter_threads_head", "offsetof(PyInterpreterState, tstate_head)"),
            ("threads.thread_id", "offsetof(PyThreadState, thread_id)"),
            ("frame.tstate_frame", "offsetof(PyThreadState, frame)"),
            ("frame.previous", "offsetof(PyFrameObject, f_back)"),
            ("frame.code", "offsetof(PyFrameObject, f_code)"),
            ("frame.instruction", "offsetof(PyFrameObject, f_lasti)"),
            // f_lasti is an int; the kernel reads whole words.
            ("frame.read_size", "(offsetof(PyFrameObject, f_lasti) + sizeof(int) + 7) / 8 * 8"),
        ]);
    } else {
        f.extend([
            ("threads.interpreter_threads_head", "offsetof(PyInterpreterState, threads.head)"),
            ("threads.thread_id", "offsetof(PyThreadState, native_thread_id)"),
            ("frame.tstate_frame", "offsetof(PyThreadState, cframe)"),
            ("frame.cframe_frame", "offsetof(_PyCFrame, current_frame)"),
            ("frame.previous", "offsetof(_PyInterpreterFrame, previous)"),
            ("frame.code", "offsetof(_PyInterpreterFrame, f_code)"),
            ("frame.instruction", "offsetof(_PyInterpreterFrame, prev_instr)"),
            // The fixed header: everything before the locals.
            ("frame.read_size", "offsetof(_PyInterpreterFrame, localsplus)"),
        ]);
    }
    // 3.11 marks entry frames with is_entry instead of C-stack shim frames: nothing to skip.
    if minor == 12 {
        f.push(("frame.owner", "offsetof(_PyInterpreterFrame, owner)"));
        f.push(("frame.owner_skip_min", "FRAME_OWNED_BY_CSTACK"));
    }
    f
}

/// The GC state and the object fields a heap census reads (`HeapLayout`).
fn heap_fields(minor: u32) -> Vec<(&'static str, &'static str)> {
    let mut f = vec![
        ("heap.interp_gc", "offsetof(PyInterpreterState, gc)"),
        ("gc.head_size", "sizeof(PyGC_Head)"),
        ("gc.enabled", "offsetof(struct _gc_runtime_state, enabled)"),
        ("gc.generations", "offsetof(struct _gc_runtime_state, generations)"),
        ("gc.generation_size", "sizeof(struct gc_generation)"),
        ("gc.threshold", "offsetof(struct gc_generation, threshold)"),
        ("gc.count", "offsetof(struct gc_generation, count)"),
        ("gc.generation0", "offsetof(struct _gc_runtime_state, generation0)"),
        ("gc.permanent", "offsetof(struct _gc_runtime_state, permanent_generation)"),
        ("gc.stats", "offsetof(struct _gc_runtime_state, generation_stats)"),
        ("gc.stats_size", "sizeof(struct gc_generation_stats)"),
        ("gc.collecting", "offsetof(struct _gc_runtime_state, collecting)"),
        ("type.name", "offsetof(PyTypeObject, tp_name)"),
        ("type.basicsize", "offsetof(PyTypeObject, tp_basicsize)"),
        ("type.itemsize", "offsetof(PyTypeObject, tp_itemsize)"),
        ("type.flags", "offsetof(PyTypeObject, tp_flags)"),
        ("type.heap_qualname", "offsetof(PyHeapTypeObject, ht_qualname)"),
        ("containers.var_size", "offsetof(PyVarObject, ob_size)"),
        ("containers.list_items", "offsetof(PyListObject, ob_item)"),
        ("containers.list_allocated", "offsetof(PyListObject, allocated)"),
        ("containers.dict_used", "offsetof(PyDictObject, ma_used)"),
        ("containers.dict_keys", "offsetof(PyDictObject, ma_keys)"),
        ("containers.dict_values", "offsetof(PyDictObject, ma_values)"),
        ("containers.tuple_items", "offsetof(PyTupleObject, ob_item)"),
        ("containers.set_used", "offsetof(PySetObject, used)"),
        ("containers.set_mask", "offsetof(PySetObject, mask)"),
        ("containers.set_table", "offsetof(PySetObject, table)"),
        ("containers.bytearray_alloc", "offsetof(PyByteArrayObject, ob_alloc)"),
        ("heap.module_dict", "offsetof(PyModuleObject, md_dict)"),
        ("type.dict", "offsetof(PyTypeObject, tp_dict)"),
        ("type.dictoffset", "offsetof(PyTypeObject, tp_dictoffset)"),
        ("type.cached_keys", "offsetof(PyHeapTypeObject, ht_cached_keys)"),
        ("refs.func_code", "offsetof(PyFunctionObject, func_code)"),
        ("refs.func_qualname", "offsetof(PyFunctionObject, func_qualname)"),
        ("refs.func_defaults", "offsetof(PyFunctionObject, func_defaults)"),
        ("refs.func_kwdefaults", "offsetof(PyFunctionObject, func_kwdefaults)"),
        ("refs.func_closure", "offsetof(PyFunctionObject, func_closure)"),
        ("refs.cell_ref", "offsetof(PyCellObject, ob_ref)"),
        ("refs.method_func", "offsetof(PyMethodObject, im_func)"),
        ("refs.method_self", "offsetof(PyMethodObject, im_self)"),
        ("refs.code_argcount", "offsetof(PyCodeObject, co_argcount)"),
        ("refs.type_members", "offsetof(PyTypeObject, tp_members)"),
        ("refs.member_size", "sizeof(PyMemberDef)"),
        ("refs.member_type", "offsetof(PyMemberDef, type)"),
        ("refs.member_offset", "offsetof(PyMemberDef, offset)"),
        ("refs.member_object", "T_OBJECT_EX"),
    ];
    if minor == 10 {
        f.push(("refs.code_names", "offsetof(PyCodeObject, co_varnames)"));
        f.push(("refs.code_freevars", "offsetof(PyCodeObject, co_freevars)"));
    } else {
        f.push(("refs.code_names", "offsetof(PyCodeObject, co_localsplusnames)"));
        f.push(("refs.code_freevars", "0"));
    }
    if minor >= 13 {
        f.push(("instance.valid", "offsetof(PyDictValues, valid)"));
    }
    // 3.10's split values are a bare `PyObject **`.
    f.push(("containers.split_values", if minor >= 11 { "offsetof(PyDictValues, values)" } else { "0" }));
    f.push((
        "heap.interp_modules",
        if minor <= 11 {
            "offsetof(PyInterpreterState, modules)"
        } else {
            "offsetof(PyInterpreterState, imports.modules)"
        },
    ));
    // The pre-header (managed dict and weakref pointers before the GC head) came with 3.11.
    f.extend(match minor {
        10 => [("gc.preheader_flags", "0"), ("gc.preheader_size", "0")],
        11 => [("gc.preheader_flags", "Py_TPFLAGS_MANAGED_DICT"), ("gc.preheader_size", "2 * sizeof(PyObject *)")],
        _ => [("gc.preheader_flags", "Py_TPFLAGS_PREHEADER"), ("gc.preheader_size", "2 * sizeof(PyObject *)")],
    });
    // Suspended coroutines' frames are inline from 3.11; 3.10's are frame objects.
    if minor == 10 {
        f.extend([
            ("coroutine.frame", "offsetof(PyCoroObject, cr_frame)"),
            ("coroutine.qualname", "offsetof(PyCoroObject, cr_qualname)"),
            ("coroutine.frame_state", "offsetof(PyFrameObject, f_state)"),
            ("coroutine.localsplus", "offsetof(PyFrameObject, f_localsplus)"),
            ("coroutine.frame_code", "offsetof(PyFrameObject, f_code)"),
        ]);
    } else {
        f.extend([
            ("coroutine.frame", "offsetof(PyCoroObject, cr_iframe)"),
            ("coroutine.qualname", "offsetof(PyCoroObject, cr_qualname)"),
            ("coroutine.frame_state", "offsetof(PyCoroObject, cr_frame_state)"),
            ("coroutine.localsplus", "offsetof(_PyInterpreterFrame, localsplus)"),
        ]);
        f.push((
            "coroutine.frame_code",
            if minor <= 12 {
                "offsetof(_PyInterpreterFrame, f_code)"
            } else {
                "offsetof(_PyInterpreterFrame, f_executable)"
            },
        ));
    }
    // 3.10 keeps PyDictKeysObject in Objects/dict-common.h, which is not installed (`render`).
    if minor >= 11 {
        f.extend([
            ("keys.refcnt", "offsetof(PyDictKeysObject, dk_refcnt)"),
            ("keys.log2_size", "offsetof(PyDictKeysObject, dk_log2_size)"),
            ("keys.log2_index_bytes", "offsetof(PyDictKeysObject, dk_log2_index_bytes)"),
            ("keys.kind", "offsetof(PyDictKeysObject, dk_kind)"),
            ("keys.nentries", "offsetof(PyDictKeysObject, dk_nentries)"),
            ("keys.indices", "offsetof(PyDictKeysObject, dk_indices)"),
            ("keys.entry_size", "sizeof(PyDictKeyEntry)"),
            ("keys.unicode_entry_size", "sizeof(PyDictUnicodeEntry)"),
        ]);
    }
    f
}

/// The `HeapLayout` expression of 3.`minor` from its numbers.
fn render_heap(minor: u32, v: &BTreeMap<String, u64>) -> Result<String> {
    let get = |name: &str| v.get(name).copied().with_context(|| format!("3.{minor}: no {name}"));
    let coroutines = format!(
        "Some(CoroutineLayout {{ frame: {}, frame_object: {}, qualname: {}, frame_state: {}, frame_code: {}, localsplus: {}, stack_refs: false }})",
        get("coroutine.frame")?,
        minor == 10,
        get("coroutine.qualname")?,
        get("coroutine.frame_state")?,
        get("coroutine.frame_code")?,
        get("coroutine.localsplus")?,
    );
    let keys = if minor >= 11 {
        format!(
            "DictKeysLayout::Log2 {{
                refcnt: {},
                log2_size: {},
                log2_index_bytes: {},
                kind: {},
                nentries: {},
                indices: {},
                entry_size: {},
                unicode_entry_size: {},
            }}",
            get("keys.refcnt")?,
            get("keys.log2_size")?,
            get("keys.log2_index_bytes")?,
            get("keys.kind")?,
            get("keys.nentries")?,
            get("keys.indices")?,
            get("keys.entry_size")?,
            get("keys.unicode_entry_size")?,
        )
    } else {
        // Not in 3.10's installed headers: the table of python-heap.md §6.2 (verified live).
        "DictKeysLayout::Sized { refcnt: 0, size: 8, nentries: 32, indices: 40, entry_size: 24 }".to_string()
    };
    // The headers say these in inline functions (`_PyObject_ValuesPointer`, `_PyObject_DictPointer`,
    // `_PyObject_DictOrValuesPointer`, `MANAGED_DICT_OFFSET`): words before the object.
    let instance_dict = match minor {
        10 => "InstanceDict::Offset".to_string(),
        11 => "InstanceDict::Managed { dict: -24, values: -32 }".to_string(),
        12 => "InstanceDict::Tagged { dict_or_values: -24 }".to_string(),
        _ => format!("InstanceDict::Inline {{ dict: -24, valid: {} }}", get("instance.valid")?),
    };
    Ok(format!(
        "HeapLayout {{
        interp_gc: {},
        interp_modules: {},
        module_dict: {},
        immortal_refcounts: {},
        instance_dict: {instance_dict},
        gc: GcLayout {{
            head_size: {},
            preheader_flags: {:#x},
            preheader_size: {},
            enabled: {},
            generations: {},
            generation_size: {},
            threshold: {},
            count: {},
            generation0: {},
            permanent: {},
            stats: {},
            stats_size: {},
            collecting: {},
            incremental_before_micro: 0,
        }},
        types: TypeLayout {{ name: {}, basicsize: {}, itemsize: {}, flags: {}, heap_qualname: {}, dict: {}, dictoffset: {}, cached_keys: {} }},
        containers: ContainerLayout {{
            var_size: {},
            list_items: {},
            list_allocated: {},
            dict_used: {},
            dict_keys: {},
            dict_values: {},
            split_values: {},
            keys: {keys},
            tuple_items: {},
            set_used: {},
            set_mask: {},
            set_table: {},
            bytearray_alloc: {},
            // Not in the installed headers: python-heap.md §11.2 (the same in 3.10–3.14, verified live).
            deque: DequeLayout {{ left_block: 24, left_index: 40, block_data: 8, block_items: 64, block_right: 520 }},
        }},
        refs: RefLayout {{
            func_code: {},
            func_qualname: {},
            func_defaults: {},
            func_kwdefaults: {},
            func_closure: {},
            cell_ref: {},
            method_func: {},
            method_self: {},
            code_argcount: {},
            code_names: {},
            code_freevars: {},
            // Not in the installed headers: python-heap.md §11.1 (the same in 3.10–3.14, verified live).
            lru_cache_dict: 72,
            lru_cache_func: 88,
            type_members: {},
            member_size: {},
            member_type: {},
            member_offset: {},
            member_object: {},
        }},
        coroutines: {coroutines},
        asyncio_tasks: None,
    }}",
        get("heap.interp_gc")?,
        get("heap.interp_modules")?,
        get("heap.module_dict")?,
        minor >= 12,
        get("gc.head_size")?,
        get("gc.preheader_flags")?,
        get("gc.preheader_size")?,
        get("gc.enabled")?,
        get("gc.generations")?,
        get("gc.generation_size")?,
        get("gc.threshold")?,
        get("gc.count")?,
        get("gc.generation0")?,
        get("gc.permanent")?,
        get("gc.stats")?,
        get("gc.stats_size")?,
        get("gc.collecting")?,
        get("type.name")?,
        get("type.basicsize")?,
        get("type.itemsize")?,
        get("type.flags")?,
        get("type.heap_qualname")?,
        get("type.dict")?,
        get("type.dictoffset")?,
        get("type.cached_keys")?,
        get("containers.var_size")?,
        get("containers.list_items")?,
        get("containers.list_allocated")?,
        get("containers.dict_used")?,
        get("containers.dict_keys")?,
        get("containers.dict_values")?,
        get("containers.split_values")?,
        get("containers.tuple_items")?,
        get("containers.set_used")?,
        get("containers.set_mask")?,
        get("containers.set_table")?,
        get("containers.bytearray_alloc")?,
        get("refs.func_code")?,
        get("refs.func_qualname")?,
        get("refs.func_defaults")?,
        get("refs.func_kwdefaults")?,
        get("refs.func_closure")?,
        get("refs.cell_ref")?,
        get("refs.method_func")?,
        get("refs.method_self")?,
        get("refs.code_argcount")?,
        get("refs.code_names")?,
        get("refs.code_freevars")?,
        get("refs.type_members")?,
        get("refs.member_size")?,
        get("refs.member_type")?,
        get("refs.member_offset")?,
        get("refs.member_object")?,
    ))
}

/// A C program printing `name value` for every field of `fields(minor)`.
fn c_program(minor: u32) -> String {
    let mut c = String::from(
        "#define Py_BUILD_CORE 1\n#include <Python.h>\n#include <frameobject.h>\n#include <stdio.h>\n#include <stddef.h>\n\
         #include \"internal/pycore_runtime.h\"\n#include \"internal/pycore_interp.h\"\n\
         #include \"internal/pycore_moduleobject.h\"\n#include \"structmember.h\"\n",
    );
    if minor >= 11 {
        c.push_str("#include \"internal/pycore_frame.h\"\n#include \"internal/pycore_dict.h\"\n");
    }
    if minor >= 14 {
        c.push_str("#include \"internal/pycore_debug_offsets.h\"\n#include \"internal/pycore_stackref.h\"\n");
    }
    c.push_str("int main(void) {\n");
    for (name, expr) in fields(minor) {
        c.push_str(&format!("    printf(\"{name} %llu\\n\", (unsigned long long)({expr}));\n"));
    }
    c.push_str("    return 0;\n}\n");
    c
}

/// Compiles and runs the program for `python`, returning its numbers by name.
fn measure(python: &Installed, work: &Path) -> Result<BTreeMap<String, u64>> {
    let source = work.join(format!("layout_3_{}.c", python.minor));
    let binary = work.join(format!("layout_3_{}", python.minor));
    fs::write(&source, c_program(python.minor))?;
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .arg("-I")
        .arg(&python.include)
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .with_context(|| format!("cannot run {cc}"))?;
    if !out.status.success() {
        bail!("compiling against {} failed:\n{}", python.include.display(), String::from_utf8_lossy(&out.stderr));
    }
    let out = Command::new(&binary).output().with_context(|| format!("cannot run {}", binary.display()))?;
    if !out.status.success() {
        bail!("{} failed", binary.display());
    }
    let mut values = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let (name, value) = line.split_once(' ').context("malformed line")?;
        values.insert(name.to_string(), value.parse()?);
    }
    Ok(values)
}

/// The Rust file for 3.`minor` from its numbers.
fn render(python: &Installed, v: &BTreeMap<String, u64>) -> Result<String> {
    let get = |name: &str| v.get(name).copied().with_context(|| format!("3.{}: no {name}", python.minor));
    let minor = python.minor;
    let qualname = match v.get("code.qualname") {
        Some(q) => format!("Some({q})"),
        None => "None".into(),
    };
    let size_format = match v.get("int.flag_bits") {
        Some(bits) => format!("DigitCount::Tagged {{ flag_bits: {bits} }}"),
        None => "DigitCount::SignedSize".into(),
    };
    let linetable = if minor == 10 { "BytePairs" } else { "Locations" };
    let heap = render_heap(minor, v)?;
    let objects = format!(
        "ObjectLayout {{
        code: CodeLayout {{
            firstlineno: {},
            filename: {},
            name: {},
            qualname: {qualname},
            linetable: {},
            bytecode: {},
        }},
        str: StrLayout {{ length: {}, state: {}, ascii_data: {}, compact_data: {} }},
        bytes: BytesLayout {{ size: {}, data: {} }},
        int: IntLayout {{ size: {}, size_format: {size_format}, digits: {} }},
    }}",
        get("code.firstlineno")?,
        get("code.filename")?,
        get("code.name")?,
        get("code.linetable")?,
        v.get("code.bytecode").copied().unwrap_or(0),
        get("str.length")?,
        get("str.state")?,
        get("str.ascii_data")?,
        get("str.compact_data")?,
        get("bytes.size")?,
        get("bytes.data")?,
        get("int.size")?,
        get("int.digits")?,
    );
    let header = format!(
        "//! CPython 3.{minor} (from {}'s headers). Generated by `cargo xtask gen-layouts`; do not edit.\n\n\
         use crate::python::layout::*;\n\n",
        python.version
    );
    let body = if minor >= SELF_DESCRIBED {
        let p = |name: &str| get(&format!("debug.{name}"));
        let tag_bits = get("frame.code_tag_bits")?;
        let code_mask = if tag_bits == 0 { "u64::MAX".to_string() } else { format!("!{}", (1u64 << tag_bits) - 1) };
        format!(
            "pub const TABLES: VersionTables = VersionTables::SelfDescribed(SelfDescribed {{
    minor: {minor},
    positions: DebugPositions {{
        interpreters_head: {},
        threads_head: {},
        thread_next: {},
        current_frame: {},
        native_thread_id: {},
        frame_previous: {},
        frame_executable: {},
        frame_instr_ptr: {},
        frame_owner: {},
        code_adaptive: {},
        size: {},
    }},
    owner_skip_min: {},
    code_mask: {code_mask},
    objects: {objects},
    linetable: LineTableFormat::{linetable},
    heap: {heap},
}});
",
            p("interpreters_head")?,
            p("threads_head")?,
            p("thread_next")?,
            p("current_frame")?,
            p("native_thread_id")?,
            p("frame_previous")?,
            p("frame_executable")?,
            p("frame_instr_ptr")?,
            p("frame_owner")?,
            p("code_adaptive")?,
            p("size")?,
            get("frame.owner_skip_min")?,
        )
    } else {
        let thread_id = if minor == 10 { "Pthread" } else { "Native" };
        let instruction_kind = if minor == 10 { "LastiInt" } else { "Pointer" };
        let or_absent = |name: &str| v.get(name).map_or("ABSENT".to_string(), |n| n.to_string());
        format!(
            "pub const TABLES: VersionTables = VersionTables::Complete(Layout {{
    minor: {minor},
    threads: ThreadListLayout {{
        runtime_interpreters_head: {},
        interpreter_threads_head: {},
        thread_next: {},
        thread_id: ThreadId::{thread_id}({}),
    }},
    frame: FrameLayout {{
        tstate_frame: {},
        cframe_frame: {},
        previous: {},
        code: {},
        instruction: {},
        instruction_kind: Instruction::{instruction_kind},
        owner: {},
        owner_skip_min: {},
        read_size: {},
        code_mask: u64::MAX,
    }},
    objects: {objects},
    linetable: LineTableFormat::{linetable},
    heap: {heap},
}});
",
            get("threads.runtime_interpreters_head")?,
            get("threads.interpreter_threads_head")?,
            get("threads.thread_next")?,
            get("threads.thread_id")?,
            get("frame.tstate_frame")?,
            or_absent("frame.cframe_frame"),
            get("frame.previous")?,
            get("frame.code")?,
            get("frame.instruction")?,
            or_absent("frame.owner"),
            v.get("frame.owner_skip_min").map_or("0xff".to_string(), |n| n.to_string()),
            get("frame.read_size")?,
        )
    };
    Ok(header + &body)
}

/// The generated file of `python` (name, contents).
pub fn generate(python: &Installed, work: &Path) -> Result<(String, String)> {
    let values = measure(python, work)?;
    Ok((format!("v3_{}.rs", python.minor), render(python, &values)?))
}

/// `cargo xtask gen-layouts`: regenerates every installed version's file.
pub fn run() -> Result<()> {
    let found = installed();
    if found.is_empty() {
        bail!("no pyenv CPython 3.10+ with internal headers found (PYENV_ROOT or ~/.pyenv)");
    }
    let work = env::temp_dir().join(format!("leakprobe-gen-layouts-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    let out = crate::root().join(OUT_DIR);
    for python in &found {
        let (name, text) = generate(python, &work)?;
        fs::write(out.join(&name), text)?;
        eprintln!("gen-layouts: {OUT_DIR}/{name} from CPython {}", python.version);
    }
    let _ = fs::remove_dir_all(&work);
    // Best effort: the test compares the files modulo formatting.
    let _ = Command::new("cargo").current_dir(crate::root()).args(["fmt", "-p", "leakprobe"]).status();
    eprintln!("gen-layouts: a new version's file is registered by its entry in ALL in {OUT_DIR}/mod.rs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed files are what the installed headers say (skipped without pyenv).
    #[test]
    fn committed_layouts_match_the_headers() {
        let found = installed();
        if found.is_empty() {
            eprintln!("skipped: no pyenv CPython 3.10+ with internal headers to regenerate the layouts from");
            return;
        }
        let work = env::temp_dir().join(format!("leakprobe-layouts-test-{}", std::process::id()));
        fs::create_dir_all(&work).unwrap();
        for python in &found {
            let (name, text) = generate(python, &work).unwrap();
            let committed = fs::read_to_string(crate::root().join(OUT_DIR).join(&name))
                .unwrap_or_else(|e| panic!("{OUT_DIR}/{name} (for CPython {}): {e}", python.version));
            assert_eq!(
                rustfmt(&text),
                rustfmt(&committed),
                "{OUT_DIR}/{name} differs from CPython {}'s headers: run cargo xtask gen-layouts",
                python.version
            );
            eprintln!("{name} matches CPython {}'s headers", python.version);
        }
        let _ = fs::remove_dir_all(&work);
    }

    /// The text without what rustfmt may change (the committed files are formatted).
    fn rustfmt(text: &str) -> String {
        text.chars().filter(|c| !c.is_whitespace()).collect::<String>().replace(",}", "}").replace(",)", ")")
    }

    #[test]
    fn every_version_has_the_fields_of_its_kind() {
        for minor in 10..=14 {
            let names: Vec<&str> = fields(minor).iter().map(|(n, _)| *n).collect();
            for needed in ["code.filename", "str.ascii_data", "bytes.data", "int.digits"] {
                assert!(names.contains(&needed), "3.{minor} lacks {needed}");
            }
            assert_eq!(names.contains(&"debug.size"), minor >= SELF_DESCRIBED);
            assert!(c_program(minor).contains("Py_BUILD_CORE"));
        }
    }
}
