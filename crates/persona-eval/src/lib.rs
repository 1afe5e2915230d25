//! Evaluation, the last stage before the CLI: trait scores of any model arm
//! (base, fine-tuned run, intermediate snapshot, post-hoc steered), the
//! capability cost next to them, the comparison report and the CI gate.
//!
//! - [`arm`]: what is evaluated: a model, optional adapters, optional steering;
//! - [`trait_eval`]: sample, judge trait and coherence, bootstrap, shift;
//! - [`capability`]: held-out NLL and multiple-choice accuracy;
//! - [`cap`]: the range of activation capping, measured on the base model;
//! - [`repeats`]: the same arm over repeated runs (seeds), mean ± sd;
//! - [`report`]: Markdown + self-contained HTML with SVG plots, from saved results;
//! - [`select`]: layer scan and coefficient sweep of a persona vector;
//! - [`gate`]: compare trait scores with a stored baseline (JUnit + Markdown).

pub mod arm;
pub mod cap;
pub mod capability;
pub mod error;
pub mod experiment;
pub mod gate;
pub mod repeats;
pub mod report;
pub mod select;
pub mod trait_eval;

pub use arm::{Arm, Cap, PostHoc};
pub use error::{EvalError, Result};
