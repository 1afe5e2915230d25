//! Monitoring and data screening with persona vectors (runtime -> persona
//! vectors -> training -> **monitoring / screening**, evaluation -> CLI).
//!
//! - [`project`]: projections of residual activations on `v̂_row`;
//! - [`prompts`]: last-prompt-token projections under graded system
//!   prompts, k-shot examples and conversation turns;
//! - [`screen`]: per-sample projection difference `ΔP` of a training set,
//!   with cached base responses, resume, and filtering;
//! - [`stats`] and [`plot`]: intervals, quantiles, SVG charts (AUROC and
//!   Pearson r live in `persona_judge::metrics`, re-exported here).

pub mod error;
pub mod plot;
pub mod project;
pub mod prompts;
pub mod screen;
pub mod stats;

pub use error::{MonitorError, Result};
pub use project::{Projection, Projector};
