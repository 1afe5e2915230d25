//! Persona vectors: the second stage of the pipeline (runtime -> **persona
//! vectors** -> training -> evaluation -> CLI).
//!
//! So far: the vector file format ([`file`]) and extraction from authored
//! contrast pairs ([`extract`]). Trait definitions, judges, generated
//! extraction and layer selection arrive with the persona-vectors issue.

pub mod extract;
pub mod file;

pub use file::{VectorError, VectorFile, VectorMeta, unit};
