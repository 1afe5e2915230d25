//! Errors of evaluation and reporting. The wrapped errors of the stages
//! before this one are boxed to keep `Result` small.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(Box<persona_model::ModelError>),
    #[error(transparent)]
    Judge(Box<persona_judge::JudgeError>),
    #[error(transparent)]
    Train(Box<persona_train::TrainError>),
    #[error(transparent)]
    Vector(Box<persona_vectors::VectorError>),
    #[error(transparent)]
    Trait(Box<persona_vectors::TraitError>),
    #[error(transparent)]
    Monitor(Box<persona_monitor::MonitorError>),
    #[error(transparent)]
    Plot(Box<persona_monitor::plot::PlotError>),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Input(String),
}

persona_model::boxed_from!(
    EvalError;
    Model: persona_model::ModelError,
    Judge: persona_judge::JudgeError,
    Train: persona_train::TrainError,
    Vector: persona_vectors::VectorError,
    Trait: persona_vectors::TraitError,
    Monitor: persona_monitor::MonitorError,
    Plot: persona_monitor::plot::PlotError,
);

impl EvalError {
    pub fn file(path: &std::path::Path, reason: impl ToString) -> Self {
        Self::File {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, EvalError>;
