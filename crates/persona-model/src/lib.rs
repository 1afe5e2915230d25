//! The model runtime of persona: the first stage of the pipeline
//! (runtime -> persona vectors -> training -> evaluation -> CLI).
//!
//! It loads a chat model (the embedded SmolLM2-135M-Instruct GGUF, or an HF
//! LLaMA/Qwen2 directory) into burn and runs it with the interventions the
//! rest of the project needs as *arguments* of one forward pass: a KV cache,
//! steering vectors to add or ablate at chosen residual rows, and residual
//! rows to capture, reduced on the device (mean over response or prompt
//! tokens, last prompt token). See [`sites`] for the row convention.

pub mod cache;
pub mod config;
pub mod device;
pub mod dtype;
mod elementwise;
pub mod error;
pub mod files;
pub mod generate;
pub mod gguf;
pub mod home;
pub mod jsonl;
pub mod likelihood;
pub mod load;
pub mod lora;
pub mod model;
mod packed;
pub mod plan;
pub mod quant;
pub mod settings;
pub mod sites;
pub mod synthetic;
pub mod testing;
pub mod tokenizer;
pub mod weights;

#[cfg(test)]
mod model_tests;

pub use cache::KvCache;
pub use config::{Architecture, ModelConfig};
pub use device::parse_device;
pub use dtype::WeightDtype;
pub use error::{ModelError, Result};
pub use files::write_atomic;
pub use generate::{GenerateOptions, Generation, Sampling, SamplingSettings, generate};
pub use home::PersonaHome;
pub use likelihood::{ResponseLikelihood, response_likelihoods};
pub use load::{
    DEFAULT_MODEL, HostModel, LoadedModel, ModelIdentity, inspect, load, load_as, load_host,
    load_host_as,
};
pub use lora::{Lora, LoraDropout, PeftScaling, Scaling, Target};
pub use model::{ForwardArgs, ForwardOutput, Logits, Model, host_vec};
pub use packed::{CPU_KERNELS_VAR, CpuKernels};
pub use sites::{
    Batch, CaptureRequest, PadSide, Positions, Reduction, Role, Sequence, SteerOp, Steering,
};
pub use tokenizer::{ChatRole, Message, TextCodec};
