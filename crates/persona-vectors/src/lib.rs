//! Persona vectors: the second stage of the pipeline (runtime -> **persona
//! vectors** -> training -> evaluation -> CLI).
//!
//! So far: trait definitions ([`traits`]), the vector file format
//! ([`file`]) and extraction from a trait file's authored responses
//! ([`extract`]). Judges, generated extraction and layer selection are not
//! built yet.

pub mod export;
pub mod extract;
pub mod file;
pub mod traits;

pub use file::{VectorError, VectorFile, VectorMeta, unit};
pub use traits::{TraitDef, TraitError};
