//! The layout of `PERSONA_HOME` (default `./checkpoints`), in one place:
//! the model cache, extracted vectors, runs, screens and the caches that
//! long jobs share.

use std::path::{Path, PathBuf};

/// The folder holding models, vectors, runs and caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonaHome {
    root: PathBuf,
}

impl PersonaHome {
    /// `$PERSONA_HOME`, or `./checkpoints` when unset.
    pub fn from_env() -> Self {
        Self::at(
            std::env::var_os("PERSONA_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("checkpoints")),
        )
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The model cache: `models/<name>/` holds a `.gguf` or an HF folder.
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }

    /// Where `persona extract` writes a vector by default:
    /// `vectors/<model>/<stem>.safetensors`.
    pub fn vector(&self, model: &str, stem: &str) -> PathBuf {
        self.root
            .join("vectors")
            .join(model)
            .join(format!("{stem}.safetensors"))
    }

    /// Training runs: `runs/<name>/`.
    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// Screening results: `screens/<name>/`.
    pub fn screens(&self) -> PathBuf {
        self.root.join("screens")
    }

    /// The folder of one screen: `screens/<dataset>-<vector>-row<L>`, with
    /// `-cheap` for the cheap score only (file stems name the inputs).
    pub fn screen(&self, dataset: &Path, vector: &Path, row: usize, cheap: bool) -> PathBuf {
        let stem = |p: &Path| {
            p.file_stem()
                .map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned())
        };
        let cheap = if cheap { "-cheap" } else { "" };
        self.screens().join(format!(
            "{}-{}-row{row}{cheap}",
            stem(dataset),
            stem(vector)
        ))
    }

    /// Every judgment ever made: `cache/judgments.jsonl`.
    pub fn judgments(&self) -> PathBuf {
        self.root.join("cache").join("judgments.jsonl")
    }

    /// The base model's greedy answers for screening, shared by every
    /// screen of one model: `cache/base-responses/<sha256 prefix>.jsonl`.
    pub fn base_responses(&self, model_sha256: &str) -> PathBuf {
        let id = &model_sha256[..16.min(model_sha256.len())];
        self.root
            .join("cache")
            .join("base-responses")
            .join(format!("{id}.jsonl"))
    }
}
