//! Errors of the training crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("recipe {path}: {reason}")]
    Recipe { path: PathBuf, reason: String },
    #[error("recipe key `{key}`: {reason}")]
    RecipeKey { key: String, reason: String },
    #[error("dataset {path} line {line}: {reason}")]
    Dataset {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] persona_model::ModelError),
    #[error(transparent)]
    Vector(#[from] persona_vectors::VectorError),
    #[error(transparent)]
    Trait(#[from] persona_vectors::TraitError),
    #[error(
        "{what} is {value} at step {step}: training stopped; the last good checkpoint in {dir} is kept (lower the learning rate or the steering coefficient)"
    )]
    NonFinite {
        what: &'static str,
        value: f64,
        step: usize,
        dir: PathBuf,
    },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error(
        "run directory {path} already holds a run; pass --resume to continue it or choose another run name"
    )]
    RunExists { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.into(),
        reason: e.to_string(),
    }
}
