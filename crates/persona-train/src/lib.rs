//! Training: the third stage of the pipeline (runtime -> persona vectors ->
//! **training** -> evaluation -> CLI).
//!
//! LoRA fine-tuning with preventative steering (the vaccine): a fixed
//! multiple of a persona vector is added to the residual stream in every
//! training forward, and only there; the projection shift of the unsteered
//! model is logged as training goes; checkpoints resume bit for bit on CPU.

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod optim;
pub mod peft;
pub mod penalty;
pub mod recipe;
pub mod run_dir;
pub mod shift;
pub mod trainer;

pub use error::{Result, TrainError};
pub use recipe::Recipe;
pub use run_dir::{RunDir, RunState};
pub use trainer::{StepMetrics, TrainEvent, TrainOutcome, ensure_trained, train, train_recipe};
