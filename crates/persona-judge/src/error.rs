//! Errors of the judges.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error(
        "judge endpoint {url} is unreachable: no HTTP answer over {tries} tries ({reason}); check base_url, that the server is running, and your network"
    )]
    Unreachable {
        url: String,
        tries: usize,
        reason: String,
    },
    #[error(
        "judge endpoint {url} kept answering HTTP 429 (too many requests) over {tries} tries; lower `concurrency` or raise `max_retries` / `backoff_ms` in the judge config"
    )]
    RateLimited { url: String, tries: usize },
    #[error(
        "judge endpoint {url} kept answering HTTP {status} (a server error) over {tries} tries; check the server's log"
    )]
    ServerError {
        url: String,
        status: u16,
        tries: usize,
    },
    #[error(
        "judge endpoint {url} sent a reply this client cannot read ({reason}); is base_url an OpenAI-compatible /v1 endpoint?"
    )]
    BadResponse { url: String, reason: String },
    #[error("judge endpoint {url} answered HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error(
        "judge endpoint {url} returned no logprobs (choices[0].logprobs.content[].top_logprobs); use a server and model that support `logprobs` and `top_logprobs`"
    )]
    NoLogprobs { url: String },
    #[error(
        "environment variable {var} (the judge's api_key_env) is not set; export it or remove api_key_env for servers without keys"
    )]
    MissingKey { var: String },
    #[error("judge config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("sentence encoder {path}: {reason}")]
    Encoder { path: PathBuf, reason: String },
    #[error("encoder tokenizer: {0}")]
    Tokenize(String),
    #[error("probe {path}: {reason}")]
    Probe { path: PathBuf, reason: String },
    #[error(
        "no classifier probe for trait `{trait_name}` at {path}; train it with `persona judge train --trait datasets/traits/{trait_name}.toml`"
    )]
    NoProbe { trait_name: String, path: PathBuf },
    #[error("labelled data {path} line {line}: {reason}")]
    Labelled {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "the classifier judge scores (question, answer) pairs per trait, not filled rubric prompts"
    )]
    NotARubricJudge,
    #[error("a judging thread panicked; the judgment cache holds what finished before")]
    Poisoned,
    #[error(transparent)]
    Model(#[from] persona_model::ModelError),
}

pub type Result<T> = std::result::Result<T, JudgeError>;
