//! Reading CPython from outside: version and layout detection, thread states, code objects.

pub mod layout;
pub mod linetable;
pub mod memory;
pub mod objects;
pub mod resolver;
pub mod runtime;
