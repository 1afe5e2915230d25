//! The one error type of the model runtime.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
///
/// Each message names the problem and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot write {path}: {source}; check that its folder exists, is writable and has space"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error(
        "unsupported quantization type {ggml_type} in tensor {tensor}; supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0"
    )]
    UnsupportedQuantization { ggml_type: String, tensor: String },
    #[error(
        "unsupported architecture `{0}`; supported: llama (GGUF), LlamaForCausalLM, Qwen2ForCausalLM (HF)"
    )]
    UnsupportedArchitecture(String),
    #[error("unsupported model setting: {0}")]
    Unsupported(String),
    #[error("bad model config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("missing metadata key `{0}` in the model file")]
    MissingMetadata(String),
    #[error(
        "weights do not match the architecture (loading is strict); missing: {}; unexpected: {}",
        some(missing),
        some(unexpected)
    )]
    KeyMismatch {
        missing: Vec<String>,
        unexpected: Vec<String>,
    },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("bad safetensors file {path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error(
        "model `{name}` is not in the model cache ({dir}); run `just fetch-model` for the embedded model, or pass a path to a .gguf file or an HF directory"
    )]
    ModelNotFound { name: String, dir: PathBuf },
    #[error(
        "layer row {row} is out of range: this model has rows 0..={max} (row 0 = embedding output, row l = output of block l-1)"
    )]
    LayerOutOfRange { row: usize, max: usize },
    #[error("vector width {found} does not match the model's d_model {expected}")]
    VectorWidth { found: usize, expected: usize },
    #[error("bad JSONL file {path}: {reason}")]
    Jsonl { path: PathBuf, reason: String },
    #[error("bad input: {0}")]
    Input(String),
    #[error(
        "device `{0}` is not available in this build; rebuild with `--features {0}` (see README)"
    )]
    DeviceUnavailable(String),
    #[error("tensor data: {0}")]
    Data(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// The first few names of a list and how many more (error messages stay
/// one readable line when a whole model's keys are missing).
fn some(names: &[String]) -> String {
    const SHOWN: usize = 6;
    match names.len() {
        0 => "none".into(),
        n if n <= SHOWN => names.join(", "),
        n => format!("{} and {} more", names[..SHOWN].join(", "), n - SHOWN),
    }
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A failed write (or folder creation) at `path`.
    pub fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Write {
            path: path.into(),
            source,
        }
    }
}

/// `From` for an error enum whose variants box the errors of earlier
/// stages (boxed to keep `Result` small):
/// `boxed_from!(MyError; Model: ModelError, Judge: JudgeError)`.
#[macro_export]
macro_rules! boxed_from {
    ($target:ty; $($variant:ident: $t:ty),* $(,)?) => {$(
        impl From<$t> for $target {
            fn from(e: $t) -> Self {
                Self::$variant(Box::new(e))
            }
        }
    )*};
}

/// A bad `PERSONA_CPU_KERNELS` is bad input like any other.
impl From<persona_kernels::KernelChoiceError> for ModelError {
    fn from(e: persona_kernels::KernelChoiceError) -> Self {
        ModelError::Input(e.to_string())
    }
}
