//! The one error type of the front door: every stage's error, unchanged
//! (boxed, to keep `Result` small).

/// Anything that can go wrong through this crate's API. Each message names
/// the problem and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(Box<persona_model::ModelError>),
    #[error(transparent)]
    Vector(Box<persona_vectors::VectorError>),
    #[error(transparent)]
    Trait(Box<persona_vectors::TraitError>),
    #[error(transparent)]
    Train(Box<persona_train::TrainError>),
    #[error(transparent)]
    Monitor(Box<persona_monitor::MonitorError>),
    #[error(transparent)]
    Eval(Box<persona_eval::EvalError>),
    #[error(transparent)]
    Judge(Box<persona_judge::JudgeError>),
    /// An argument of this API out of range (a row the vector does not
    /// have, a chat with nothing to monitor).
    #[error("{0}")]
    Input(String),
}

persona_model::boxed_from!(
    Error;
    Model: persona_model::ModelError,
    Vector: persona_vectors::VectorError,
    Trait: persona_vectors::TraitError,
    Train: persona_train::TrainError,
    Monitor: persona_monitor::MonitorError,
    Eval: persona_eval::EvalError,
    Judge: persona_judge::JudgeError,
);

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
