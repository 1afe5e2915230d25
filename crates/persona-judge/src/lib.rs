//! Judges: score a (question, answer) pair for a rubric, 0..=100 or missing.
//!
//! - [`openai`]: any OpenAI-compatible endpoint, the paper's logprob method;
//! - [`local`]: the same method on a local model through the runtime;
//! - [`cache`]: every judgment on disk, so nothing is judged twice;
//! - [`score`]: the aggregation both use.
//!
//! The offline `classifier` judge (a sentence encoder + per-trait probe) is
//! not built yet.

pub mod cache;
pub mod error;
pub mod local;
pub mod openai;
pub mod score;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use cache::JudgmentCache;
pub use error::{JudgeError, Result};
pub use score::expected_score;

/// A judge config file (`judges/*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum JudgeConfig {
    Openai(openai::OpenAiConfig),
    Local {
        /// Any model spec the runtime loads.
        model: String,
        batch_size: usize,
        /// `cpu`, `cuda` or `wgpu`.
        device: String,
    },
}

impl JudgeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| JudgeError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if let Self::Openai(o) = &cfg
            && o.concurrency == 0
        {
            return Err(err("concurrency must be at least 1".into()));
        }
        Ok(cfg)
    }
}

/// A ready judge.
pub enum Judge {
    Openai(openai::OpenAiJudge),
    Local(Box<local::LocalJudge>),
}

impl Judge {
    pub fn from_config(cfg: &JudgeConfig) -> Result<Self> {
        Ok(match cfg {
            JudgeConfig::Openai(o) => Self::Openai(openai::OpenAiJudge::new(o.clone())?),
            JudgeConfig::Local {
                model,
                batch_size,
                device,
            } => {
                let device = persona_model::parse_device(device)?;
                Self::Local(Box::new(local::LocalJudge {
                    model: persona_model::load(model, &device)?,
                    batch_size: *batch_size,
                }))
            }
        })
    }

    /// What the cache and reports call this judge.
    pub fn identity(&self) -> String {
        match self {
            Self::Openai(j) => j.identity(),
            Self::Local(j) => j.identity(),
        }
    }

    /// Scores filled rubrics, in order.
    pub fn score_prompts(&self, prompts: &[String]) -> Result<Vec<Option<f32>>> {
        match self {
            Self::Openai(j) => j.score(prompts),
            Self::Local(j) => j.score(prompts),
        }
    }

    /// Scores `(question, answer)` pairs with `rubric` (placeholders
    /// `{question}`, `{answer}`), judging only what `cache` does not hold and
    /// recording the new judgments there.
    pub fn judge(
        &self,
        rubric: &str,
        items: &[(String, String)],
        cache: &mut JudgmentCache,
    ) -> Result<Vec<Option<f32>>> {
        let id = self.identity();
        let keys: Vec<String> = items
            .iter()
            .map(|(q, a)| cache::key(&id, rubric, q, a))
            .collect();
        let mut missing: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if cache.get(k).is_none() && !missing.iter().any(|&j| keys[j] == *k) {
                missing.push(i);
            }
        }
        let prompts: Vec<String> = missing
            .iter()
            .map(|&i| {
                rubric
                    .replace("{question}", &items[i].0)
                    .replace("{answer}", &items[i].1)
            })
            .collect();
        let scores = self.score_prompts(&prompts)?;
        let new: Vec<(String, Option<f32>)> = missing
            .iter()
            .zip(scores)
            .map(|(&i, s)| (keys[i].clone(), s))
            .collect();
        cache.insert_all(&new)?;
        Ok(keys.iter().map(|k| cache.get(k).flatten()).collect())
    }
}
