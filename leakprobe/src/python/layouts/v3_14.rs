//! CPython 3.14. Written by hand in the generated form: no 3.14 headers were installed where the
//! others were generated (`cargo xtask gen-layouts` overwrites this file once they are). The
//! numbers are the ones leakprobe typed by hand before generation (objects as on 3.12/3.13).
//! `heap` is from `/work/shared/notes/python-heap.md` (verified live on Debian's 3.14.10): §2's
//! interpreter table, §3.2's 3.14.5+ GC column (3.14.0–3.14.4's incremental GC keeps its heads
//! at the same offsets, `[S]` there), §5's `ht_qualname`, `ht_cached_keys`, `tp_dict` and `tp_dictoffset`, §7's instance dicts, §6's dict, §8's tuple and set, §10's module, §11.2's deque, §9's functions and §11.1's lru_cache; `bytearray_alloc` checked live on Debian's 3.14.10
//! (the word at `id(b) + 24` is `b.__alloc__()`, as the headers give it for 3.10–3.13).

use crate::python::layout::*;

pub const TABLES: VersionTables = VersionTables::SelfDescribed(SelfDescribed {
    minor: 14,
    positions: DebugPositions {
        interpreters_head: 40,
        threads_head: 72,
        thread_next: 192,
        current_frame: 208,
        native_thread_id: 224,
        frame_previous: 256,
        frame_executable: 264,
        frame_instr_ptr: 272,
        frame_owner: 288,
        code_adaptive: 384,
        size: 760,
    },
    owner_skip_min: 3,
    code_mask: !3,
    objects: ObjectLayout {
        code: CodeLayout {
            firstlineno: 68,
            filename: 112,
            name: 120,
            qualname: Some(128),
            linetable: 136,
            bytecode: 200,
        },
        str: StrLayout { length: 16, state: 32, ascii_data: 40, compact_data: 56 },
        bytes: BytesLayout { size: 16, data: 32 },
        int: IntLayout { size: 16, size_format: DigitCount::Tagged { flag_bits: 3 }, digits: 24 },
    },
    linetable: LineTableFormat::Locations,
    heap: HeapLayout {
        interp_gc: 7408,
        interp_modules: 7688,
        module_dict: 16,
        immortal_refcounts: true,
        instance_dict: InstanceDict::Inline { dict: -24, valid: 3 },
        gc: GcLayout {
            head_size: 16,
            preheader_flags: 0x18,
            preheader_size: 16,
            enabled: 12,
            generations: 24,
            generation_size: 24,
            threshold: 16,
            count: 20,
            generation0: 256,
            permanent: 96,
            stats: 120,
            stats_size: 24,
            collecting: 192,
            incremental_before_micro: 5,
        },
        types: TypeLayout {
            name: 24,
            basicsize: 32,
            itemsize: 40,
            flags: 168,
            heap_qualname: 872,
            dict: 264,
            dictoffset: 288,
            cached_keys: 880,
        },
        containers: ContainerLayout {
            var_size: 16,
            list_items: 24,
            list_allocated: 32,
            dict_used: 16,
            dict_keys: 32,
            dict_values: 40,
            split_values: 8,
            keys: DictKeysLayout::Log2 {
                refcnt: 0,
                log2_size: 8,
                log2_index_bytes: 9,
                kind: 10,
                nentries: 24,
                indices: 32,
                entry_size: 24,
                unicode_entry_size: 16,
            },
            tuple_items: 32,
            set_used: 24,
            set_mask: 32,
            set_table: 40,
            bytearray_alloc: 24,
            deque: DequeLayout { left_block: 24, left_index: 40, block_data: 8, block_items: 64, block_right: 520 },
        },
        // §9: function, cell and bound-method fields [V all], code fields as on 3.12/3.13; §11.1's lru_cache.
        refs: RefLayout {
            func_code: 48,
            func_qualname: 40,
            func_defaults: 56,
            func_kwdefaults: 64,
            func_closure: 72,
            cell_ref: 16,
            method_func: 16,
            method_self: 24,
            code_argcount: 52,
            code_names: 96,
            code_freevars: 0,
            lru_cache_dict: 72,
            lru_cache_func: 88,
            type_members: 240,
            member_size: 40,
            member_type: 8,
            member_offset: 16,
            member_object: 16,
        },
        // §11.5: the frame inline at `cr_iframe` 72, `cr_qualname` 32, `cr_frame_state` 67 [V];
        // §12's 3.14 frame: `f_executable` @0 and `localsplus` @80, both `_PyStackRef`s [V].
        coroutines: Some(CoroutineLayout {
            frame: 72,
            frame_object: false,
            qualname: 32,
            frame_state: 67,
            frame_code: 0,
            localsplus: 80,
            stack_refs: true,
        }),
        // §11.6, from 3.14.10's `_asyncio` debug section [V]: `asyncio_tasks_head` at 880 of
        // `_PyThreadStateImpl`, an `_asyncio.Task` 168 bytes.
        asyncio_tasks: Some(AsyncioTaskList { thread_head: 880, task_size: 168 }),
    },
});
