//! What leakprobe knows about one CPython build's memory (x86_64, GIL builds): one `Layout` per
//! interpreter, chosen once by `runtime::detect` and handed to every reader.
//!
//! The numbers come from `layouts/` (one file per version, generated from that interpreter's own
//! headers by `cargo xtask gen-layouts`). 3.10–3.12 are described there completely; 3.13+
//! describe their thread and frame layout themselves in `_Py_DebugOffsets` (read by
//! `debug_offsets.rs`), and their file holds only what that table does not say.

use leakprobe_common::{PythonConfig, NO_OFFSET};

/// How a thread state names its OS thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadId {
    /// `native_thread_id` (3.11+): the kernel tid.
    Native(u64),
    /// `thread_id` is a `pthread_t` (3.10); glibc keeps the tid inside `struct pthread`.
    Pthread(u64),
}

/// Offset of `tid` in glibc's `struct pthread` on x86_64 (after the 704-byte TCB header and the
/// list node); checked at run time against the main thread, whose tid is the pid.
pub const GLIBC_PTHREAD_TID: u64 = 0x2d0;

/// From `_PyRuntime` to every thread state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadListLayout {
    /// Offset of `interpreters.head` in `_PyRuntime`.
    pub runtime_interpreters_head: u64,
    /// Offset of the first thread state in `PyInterpreterState`.
    pub interpreter_threads_head: u64,
    /// `PyThreadState.next`.
    pub thread_next: u64,
    pub thread_id: ThreadId,
}

/// What a frame's instruction field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instruction {
    /// `f_lasti` (3.10): an int, in code units.
    LastiInt,
    /// `prev_instr` / `instr_ptr` (3.11+): a pointer into the code object's bytecode.
    Pointer,
}

/// From a thread state to its frames, and through them (what the kernel walks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    /// Thread state field holding the top frame (3.11/3.12: the `_PyCFrame`).
    pub tstate_frame: u32,
    /// `_PyCFrame.current_frame` (3.11/3.12), else `NO_OFFSET`.
    pub cframe_frame: u32,
    pub previous: u32,
    /// `f_code` / `f_executable`.
    pub code: u32,
    pub instruction: u32,
    pub instruction_kind: Instruction,
    /// The `owner` byte, or `NO_OFFSET` when shims are not marked by owner (3.10, 3.11).
    pub owner: u32,
    /// Frames whose owner is >= this are interpreter shims (`FRAME_OWNED_BY_CSTACK`).
    pub owner_skip_min: u32,
    /// Bytes to read per frame: every field above, whole 8-byte words.
    pub read_size: u32,
    /// Applied to the code pointer (3.14's `_PyStackRef` tags its low bits).
    pub code_mask: u64,
}

/// `PyCodeObject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLayout {
    pub firstlineno: u64,
    pub filename: u64,
    pub name: u64,
    /// None on 3.10 (no `co_qualname`).
    pub qualname: Option<u64>,
    pub linetable: u64,
    /// `co_code_adaptive` (3.11+; 0 on 3.10, where instructions are not pointers).
    pub bytecode: u64,
}

/// Compact `str` objects (`PyASCIIObject`, `PyCompactUnicodeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrLayout {
    /// `length` (characters).
    pub length: u64,
    /// The `state` bitfield.
    pub state: u64,
    /// sizeof(PyASCIIObject): where compact ASCII data starts.
    pub ascii_data: u64,
    /// sizeof(PyCompactUnicodeObject): where compact non-ASCII data starts.
    pub compact_data: u64,
}

/// `PyBytesObject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BytesLayout {
    /// `ob_size`.
    pub size: u64,
    /// `ob_sval`.
    pub data: u64,
}

/// How an `int` says how many digits it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigitCount {
    /// `ob_size`, negative for negative numbers (3.10, 3.11).
    SignedSize,
    /// `lv_tag`: the count above this many flag bits (3.12+).
    Tagged { flag_bits: u32 },
}

/// `PyLongObject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntLayout {
    /// `ob_size` or `lv_tag`.
    pub size: u64,
    pub size_format: DigitCount,
    /// `ob_digit`: where the digits start (the header size).
    pub digits: u64,
}

impl IntLayout {
    /// Digits of an int whose size field holds `raw`.
    pub fn digit_count(&self, raw: u64) -> u64 {
        match self.size_format {
            DigitCount::SignedSize => (raw as i64).unsigned_abs(),
            DigitCount::Tagged { flag_bits } => raw >> flag_bits,
        }
    }
}

/// The objects leakprobe reads (names, files, line tables) or recognises (liveness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLayout {
    pub code: CodeLayout,
    pub str: StrLayout,
    pub bytes: BytesLayout,
    pub int: IntLayout,
}

/// Where the cyclic GC keeps its state and what a heap census reads of each object (the GC
/// generation lists, type objects, list and dict buffers): `heap::` reads only through this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapLayout {
    /// `PyInterpreterState.gc` (`struct _gc_runtime_state`).
    pub interp_gc: u64,
    /// `sys.modules`: `interp->modules` (3.10, 3.11), `interp->imports.modules` (3.12+).
    pub interp_modules: u64,
    /// `PyModuleObject.md_dict`.
    pub module_dict: u64,
    /// Whether 3.12+ immortal refcounts (negative as an i32) are plausible.
    pub immortal_refcounts: bool,
    pub instance_dict: InstanceDict,
    pub gc: GcLayout,
    pub types: TypeLayout,
    pub containers: ContainerLayout,
    pub refs: RefLayout,
    /// Suspended coroutines' frames.
    pub coroutines: Option<CoroutineLayout>,
    /// 3.14's list of every thread's C tasks (`None` before: asyncio's registry is a `WeakSet`).
    pub asyncio_tasks: Option<AsyncioTaskList>,
}

/// 3.14: each thread state heads a circular list of its asyncio C tasks (`llist_node`s whose
/// first word is `next`), python-heap.md §11.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncioTaskList {
    /// `_PyThreadStateImpl.asyncio_tasks_head`.
    pub thread_head: u64,
    /// `sizeof` an `_asyncio.Task` (what a pending task's object holds, its coroutine aside).
    pub task_size: u64,
}

/// A coroutine (`PyCoroObject`) and the `_PyInterpreterFrame` inline in it, whose fast locals
/// are roots while it is suspended (a background task's own state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoroutineLayout {
    /// `cr_iframe`: where the frame starts in the coroutine (3.11+); 3.10: `cr_frame`, a pointer
    /// to a frame object (NULL once it finished).
    pub frame: u64,
    pub frame_object: bool,
    /// `cr_qualname` (a str).
    pub qualname: u64,
    /// `cr_frame_state` in the coroutine (3.11+), `f_state` in the frame object (3.10): an int8,
    /// negative while created or suspended, in every version.
    pub frame_state: u64,
    /// In the frame: its code object (`f_code`, `f_executable`) and `localsplus[]`.
    pub frame_code: u64,
    pub localsplus: u64,
    /// 3.14: the code and locals are `_PyStackRef`s (tag bits in the low two bits).
    pub stack_refs: bool,
}

/// The references a holder search follows out of functions (defaults, closures), cells, bound
/// methods and `functools.lru_cache` wrappers, and the code fields that name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefLayout {
    /// `PyFunctionObject`: `func_code`, `func_defaults` (a tuple), `func_kwdefaults` (a dict),
    /// `func_closure` (a tuple of cells).
    pub func_code: u64,
    pub func_qualname: u64,
    pub func_defaults: u64,
    pub func_kwdefaults: u64,
    pub func_closure: u64,
    /// `PyCellObject.ob_ref`.
    pub cell_ref: u64,
    /// `PyMethodObject`: `im_func`, `im_self`.
    pub method_func: u64,
    pub method_self: u64,
    /// `co_argcount` (an int).
    pub code_argcount: u64,
    /// The tuple of the code's local names: `co_varnames` (3.10), `co_localsplusnames` (3.11+,
    /// where the free variables are its last entries).
    pub code_names: u64,
    /// `co_freevars` (a tuple, 3.10); 0 where the free variables end `code_names`.
    pub code_freevars: u64,
    /// `lru_cache_object.cache` and `.func` (Modules/_functoolsmodule.c, not in the installed
    /// headers: python-heap.md §11.1, the same in 3.10–3.14, verified live).
    pub lru_cache_dict: u64,
    pub lru_cache_func: u64,
    /// `tp_members` (a class's `__slots__` are members there) and `PyMemberDef`: its size, and
    /// where its `type` and `offset` are; members of type `T_OBJECT_EX` (`member_object`) hold
    /// an object pointer at `offset` in the instance.
    pub type_members: u64,
    pub member_size: u64,
    pub member_type: u64,
    pub member_offset: u64,
    pub member_object: u64,
}

/// `struct _gc_runtime_state` and the `PyGC_Head` in front of every tracked object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcLayout {
    /// sizeof(PyGC_Head): a tracked object starts this far after its list node.
    pub head_size: u64,
    /// Types with any of these flags have a pre-header (managed dict / weakref pointers) before
    /// the GC head (0 before 3.11).
    pub preheader_flags: u64,
    pub preheader_size: u64,
    pub enabled: u64,
    /// `generations[0]`, as the headers place it (Debian's 3.13 puts it 4 bytes earlier: the
    /// census calibrates it against `generation0`).
    pub generations: u64,
    /// sizeof(struct gc_generation): the stride between generation heads.
    pub generation_size: u64,
    /// `threshold` and `count` within a `struct gc_generation`.
    pub threshold: u64,
    pub count: u64,
    /// `generation0`, the pointer to `generations[0]` (the calibration).
    pub generation0: u64,
    pub permanent: u64,
    /// `generation_stats[0]`, and the size of one `struct gc_generation_stats`.
    pub stats: u64,
    pub stats_size: u64,
    pub collecting: u64,
    /// Micro versions below this one run the incremental GC (3.14.0–3.14.4): the heads sit at
    /// the same offsets (`young`, `old[2]`) but there is no `generation0` to calibrate with.
    /// 0 when no release of the version has it.
    pub incremental_before_micro: u32,
}

/// `PyTypeObject` / `PyHeapTypeObject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeLayout {
    pub name: u64,
    pub basicsize: u64,
    pub itemsize: u64,
    pub flags: u64,
    /// `ht_qualname` of heap types (a `str`).
    pub heap_qualname: u64,
    /// `tp_dict` (NULL for static builtin types from 3.12 on).
    pub dict: u64,
    /// `tp_dictoffset`: where instances of types without a managed dict keep theirs.
    pub dictoffset: u64,
    /// `ht_cached_keys`: the keys shared by instances' split values.
    pub cached_keys: u64,
}

/// Where instances of types with `Py_TPFLAGS_MANAGED_DICT` (3.11+) keep their attributes, in
/// words before the object (python-heap.md §7; the headers' `_PyObject_*Pointer` functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceDict {
    /// 3.10: no managed dicts, only `tp_dictoffset`.
    Offset,
    /// 3.11: a dict pointer at `dict`; without one, split values (`PyDictValues *`) at `values`.
    Managed { dict: i64, values: i64 },
    /// 3.12: one word, a dict or split values tagged with bit 0 (stored as values − 1).
    Tagged { dict_or_values: i64 },
    /// 3.13+: a dict pointer at `dict`; without one and with `Py_TPFLAGS_INLINE_VALUES`, values
    /// inline at the end of the object (`tp_basicsize`), used when their `valid` byte is set.
    Inline { dict: i64, valid: u64 },
}

/// The containers whose out-of-line buffers a census adds to their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerLayout {
    /// `PyVarObject.ob_size`.
    pub var_size: u64,
    pub list_items: u64,
    pub list_allocated: u64,
    pub dict_used: u64,
    pub dict_keys: u64,
    pub dict_values: u64,
    /// Where the values array starts in what `ma_values` points to (3.13+: after a header).
    pub split_values: u64,
    pub keys: DictKeysLayout,
    /// `PyTupleObject.ob_item` (3.14 put `ob_hash` before it).
    pub tuple_items: u64,
    /// `PySetObject`: `used`, `mask` and `table` (16-byte `setentry {key, hash}`).
    pub set_used: u64,
    pub set_mask: u64,
    pub set_table: u64,
    /// `PyByteArrayObject.ob_alloc`: the bytes of its out-of-line buffer (`ob_size` is its length).
    pub bytearray_alloc: u64,
    pub deque: DequeLayout,
}

/// `collections.deque` (Modules/_collectionsmodule.c, not in the installed headers): items in a
/// chain of fixed blocks, `leftindex` into the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DequeLayout {
    pub left_block: u64,
    pub left_index: u64,
    /// `block.data[]`, of `block_items` pointers, and `block.rightlink`.
    pub block_data: u64,
    pub block_items: u64,
    pub block_right: u64,
}

/// `PyDictKeysObject`, whose shape changed in 3.11.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictKeysLayout {
    /// 3.10: `dk_size` is the slot count; index width follows from it; 24-byte entries.
    Sized { refcnt: u64, size: u64, nentries: u64, indices: u64, entry_size: u64 },
    /// 3.11+: log2 sizes in bytes; unicode and split tables have 16-byte entries.
    Log2 {
        refcnt: u64,
        log2_size: u64,
        log2_index_bytes: u64,
        kind: u64,
        nentries: u64,
        indices: u64,
        entry_size: u64,
        unicode_entry_size: u64,
    },
}

/// The format of `co_linetable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTableFormat {
    /// 3.10: (byte delta, line delta) pairs over byte offsets.
    BytePairs,
    /// 3.11+: location table entries over code units.
    Locations,
}

/// Everything leakprobe needs to know about one CPython build's memory layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub minor: u32,
    pub threads: ThreadListLayout,
    pub frame: FrameLayout,
    pub objects: ObjectLayout,
    pub linetable: LineTableFormat,
    pub heap: HeapLayout,
}

impl Layout {
    /// The kernel's walking recipe; runtime addresses (`none_address`) and the trust in native
    /// frames are filled in per process by `runtime::detect`.
    pub fn kernel_config(&self) -> PythonConfig {
        let f = &self.frame;
        PythonConfig {
            tstate_frame: f.tstate_frame,
            cframe_frame: f.cframe_frame,
            frame_previous: f.previous,
            frame_code: f.code,
            frame_instruction: f.instruction,
            frame_owner: f.owner,
            owner_skip_min: f.owner_skip_min,
            instruction_is_pointer: u32::from(f.instruction_kind == Instruction::Pointer),
            code_bytecode: self.objects.code.bytecode as u32,
            frame_read_size: f.read_size,
            code_mask: f.code_mask,
            none_address: 0,
            // Until `runtime::detect` checks for frame pointers, trust only the first native frame.
            native_frames_with_python: 1,
            reserved: 0,
        }
    }
}

/// Where the fields of `_Py_DebugOffsets` that leakprobe reads sit in that table (3.13+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugPositions {
    pub interpreters_head: u64,
    pub threads_head: u64,
    pub thread_next: u64,
    pub current_frame: u64,
    pub native_thread_id: u64,
    pub frame_previous: u64,
    pub frame_executable: u64,
    pub frame_instr_ptr: u64,
    pub frame_owner: u64,
    pub code_adaptive: u64,
    /// sizeof(_Py_DebugOffsets): bytes to read.
    pub size: u64,
}

/// What a 3.13+ interpreter does not say in `_Py_DebugOffsets`, and where to find what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfDescribed {
    pub minor: u32,
    pub positions: DebugPositions,
    pub owner_skip_min: u32,
    pub code_mask: u64,
    pub objects: ObjectLayout,
    pub linetable: LineTableFormat,
    pub heap: HeapLayout,
}

/// One version's file in `layouts/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionTables {
    /// 3.10–3.12: the whole layout.
    Complete(Layout),
    /// 3.13+: the rest is read from the interpreter.
    SelfDescribed(SelfDescribed),
}

impl VersionTables {
    pub fn minor(&self) -> u32 {
        match self {
            VersionTables::Complete(l) => l.minor,
            VersionTables::SelfDescribed(s) => s.minor,
        }
    }

    pub fn objects(&self) -> ObjectLayout {
        match self {
            VersionTables::Complete(l) => l.objects,
            VersionTables::SelfDescribed(s) => s.objects,
        }
    }

    pub fn linetable(&self) -> LineTableFormat {
        match self {
            VersionTables::Complete(l) => l.linetable,
            VersionTables::SelfDescribed(s) => s.linetable,
        }
    }

    pub fn heap(&self) -> HeapLayout {
        match self {
            VersionTables::Complete(l) => l.heap,
            VersionTables::SelfDescribed(s) => s.heap,
        }
    }
}

/// `NO_OFFSET` under a name the generated files read well.
pub const ABSENT: u32 = NO_OFFSET;
