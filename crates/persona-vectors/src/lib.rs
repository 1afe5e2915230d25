//! Persona vectors: the second stage of the pipeline (runtime -> **persona
//! vectors** -> training -> evaluation -> CLI).
//!
//! So far this crate holds the vector file format ([`file`]); trait
//! definitions, judges and extraction arrive with the persona-vectors issue.

pub mod file;

pub use file::{VectorError, VectorFile, VectorMeta};
