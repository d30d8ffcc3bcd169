//! Walking one GC generation list while the target mutates it: follow `_gc_next` (tag bits
//! masked), check every node's `_gc_prev` points back at the node before it, and stop at the
//! head, at a broken link, or when the caller's bound says so. One 40-byte read per node gives
//! both links, the refcount, the type pointer and `ob_size`.

use crate::python::memory::ReadMemory;

/// `_gc_next` / `_gc_prev` tag bits (python-heap.md §3.1).
const TAG_BITS: u64 = 3;
/// `_PyGC_PREV_MASK_COLLECTING`: while set, `_gc_prev` holds gc_refs, not a pointer.
const PREV_COLLECTING: u64 = 2;
/// Bytes read per node: `_gc_next`, `_gc_prev`, `ob_refcnt`, `ob_type`, `ob_size`.
const NODE_READ: usize = 40;
/// A node without `ob_size` (the object may be the last 16 bytes of a mapping).
const NODE_READ_SHORT: usize = 32;

/// One tracked object, as its list node says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// The object (after its GC head).
    pub object: u64,
    pub refcnt: u64,
    pub ob_type: u64,
    /// The word where a var-sized object keeps `ob_size`; None when it could not be read.
    pub size_word: Option<u64>,
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Back at the head: the whole list was seen.
    Complete,
    /// A link did not hold (an object unlinked or freed under us, or garbage).
    Broken,
    /// `visit` asked to stop.
    Stopped,
}

/// Calls `visit` for every node of the list whose head is at `head` (`head_size` = sizeof
/// `PyGC_Head`), in list order; `visit` returns false to stop. Never follows more than
/// `max_nodes` links.
pub fn walk_list(
    mem: &impl ReadMemory,
    head: u64,
    head_size: u64,
    max_nodes: u64,
    mut visit: impl FnMut(Node) -> bool,
) -> End {
    let Ok(first) = mem.read_u64(head) else { return End::Broken };
    let mut previous = head;
    let mut node = first & !TAG_BITS;
    let mut buf = [0u8; NODE_READ];
    for _ in 0..max_nodes {
        if node == head {
            return End::Complete;
        }
        if node == 0 || !node.is_multiple_of(8) {
            return End::Broken;
        }
        let size_known = match mem.read(node, &mut buf) {
            Ok(()) => true,
            Err(_) if mem.read(node, &mut buf[..NODE_READ_SHORT]).is_ok() => false,
            Err(_) => return End::Broken,
        };
        let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let (next, prev) = (word(0), word(1));
        if prev & PREV_COLLECTING != 0 || prev & !TAG_BITS != previous {
            return End::Broken;
        }
        let Some(object) = node.checked_add(head_size) else { return End::Broken };
        let size_word = size_known.then(|| word(4));
        if !visit(Node { object, refcnt: word(2), ob_type: word(3), size_word }) {
            return End::Stopped;
        }
        previous = node;
        node = next & !TAG_BITS;
    }
    End::Stopped
}
