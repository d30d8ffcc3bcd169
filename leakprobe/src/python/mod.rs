//! Reading CPython from outside: version and layout detection, thread states, code objects.

pub mod debug_offsets;
pub mod heap;
pub mod layout;
pub mod layouts;
pub mod linetable;
pub mod memory;
pub mod objects;
pub mod resolver;
pub mod runtime;
#[cfg(test)]
pub(crate) mod test_pythons;
