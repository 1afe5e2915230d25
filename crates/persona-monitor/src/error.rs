//! Errors of monitoring and screening.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{0}")]
    Input(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(
        "{dir} holds a screen with different settings ({what} differs); choose another --out or delete the folder"
    )]
    OtherScreen { dir: PathBuf, what: String },
    #[error(transparent)]
    Model(#[from] persona_model::ModelError),
    #[error(transparent)]
    Vector(#[from] persona_vectors::VectorError),
    #[error(transparent)]
    Data(#[from] persona_train::TrainError),
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    #[error(transparent)]
    Judge(#[from] persona_judge::JudgeError),
}

pub type Result<T> = std::result::Result<T, MonitorError>;

pub(crate) fn file_err(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> MonitorError {
    MonitorError::File {
        path: path.into(),
        reason: e.to_string(),
    }
}
