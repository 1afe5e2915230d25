//! Persona vectors: the second stage of the pipeline (runtime -> **persona
//! vectors** -> training -> evaluation -> CLI).
//!
//! Trait definitions ([`traits`]), the vector file format ([`mod@file`]),
//! extraction from a trait file's authored responses ([`extract`]) or from
//! the model's own judged answers ([`generated`]), and the llama.cpp export
//! ([`export`]). Layer selection and the coefficient sweep steer and judge
//! generated answers, so they live in `persona-eval` (`select`).

pub mod export;
pub mod extract;
pub mod file;
pub mod generated;
pub mod traits;

pub use file::{Variant, VectorError, VectorFile, VectorMeta, unit};
pub use traits::{TraitDef, TraitError};
