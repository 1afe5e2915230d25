//! Judges: score a (question, answer) pair for a rubric, 0..=100 or missing.
//!
//! - [`openai`]: any OpenAI-compatible endpoint, the paper's logprob method;
//! - [`local`]: the same method on a local model through the runtime;
//! - [`classifier`]: the offline default, a sentence encoder ([`encoder`])
//!   plus a per-trait logistic probe ([`probe`]) for traits and the base
//!   model's likelihood for coherence;
//! - [`audit`]: a judge's agreement with careful ratings;
//! - [`cache`]: every judgment on disk, so nothing is judged twice;
//! - [`score`]: the logprob aggregation of the LLM judges.

pub mod audit;
pub mod cache;
pub mod classifier;
pub mod encoder;
pub mod error;
pub mod local;
pub mod metrics;
pub mod openai;
pub mod probe;
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
    Classifier(classifier::ClassifierConfig),
}

/// The name a coherence judgment goes by (see [`Criterion`]).
pub const COHERENCE: &str = "coherence";

/// What a judgment scores: a trait by name with its rubric, or coherence
/// ([`COHERENCE`]) with the coherence rubric. LLM judges read the rubric;
/// the classifier judge uses the name.
#[derive(Debug, Clone, Copy)]
pub struct Criterion<'a> {
    pub name: &'a str,
    pub rubric: &'a str,
}

impl JudgeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| JudgeError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        match &cfg {
            Self::Openai(o) if o.concurrency == 0 => {
                return Err(err("concurrency must be at least 1".into()));
            }
            Self::Classifier(c) => c.check().map_err(err)?,
            _ => {}
        }
        Ok(cfg)
    }
}

/// Receives `(index, score)` pairs of judgments as they arrive.
type Sink<'a> = dyn Fn(&[(usize, Option<f32>)]) + Sync + 'a;

/// A ready judge.
pub enum Judge {
    Openai(openai::OpenAiJudge),
    Local(Box<local::LocalJudge>),
    Classifier(Box<classifier::ClassifierJudge>),
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
            JudgeConfig::Classifier(c) => {
                let device = persona_model::parse_device(&c.device)?;
                Self::Classifier(Box::new(classifier::ClassifierJudge::new(
                    c.clone(),
                    &device,
                )?))
            }
        })
    }

    /// What reports call this judge.
    pub fn identity(&self) -> String {
        match self {
            Self::Openai(j) => j.identity(),
            Self::Local(j) => j.identity(),
            Self::Classifier(j) => format!(
                "classifier {} + probes in {} (coherence: {})",
                j.encoder.identity,
                j.config.probes.display(),
                j.coherence_identity()
            ),
        }
    }

    /// What the cache keys judgments of `criterion` by: the judge, plus for
    /// the classifier the probe file (a retrained probe judges afresh).
    pub fn criterion_identity(&self, criterion: &Criterion<'_>) -> Result<String> {
        match self {
            Self::Classifier(j) if criterion.name == COHERENCE => Ok(j.coherence_identity()),
            Self::Classifier(j) => j.trait_identity(criterion.name),
            _ => Ok(self.identity()),
        }
    }

    /// The line reports print under the judge's name for `trait_name`: the
    /// classifier probe's stored audit, or that the judge was not audited
    /// (`persona judge audit` audits any judge against a ratings file).
    pub fn audit_line(&self, trait_name: &str) -> Result<String> {
        let stored = match self {
            Self::Classifier(j) => j.audit_line(trait_name)?,
            _ => None,
        };
        Ok(stored.unwrap_or_else(|| {
            format!("{trait_name}: not audited (`persona judge audit --ratings FILE` measures it)")
        }))
    }

    /// Scores filled rubrics, in order (LLM judges only).
    pub fn score_prompts(&self, prompts: &[String]) -> Result<Vec<Option<f32>>> {
        self.score_prompts_each(prompts, &|_| {})
    }

    /// [`Judge::score_prompts`], calling `on_results` with `(index, score)`
    /// pairs as judgments arrive: an HTTP judge's one by one, the others'
    /// all at the end.
    fn score_prompts_each(
        &self,
        prompts: &[String],
        on_results: &Sink<'_>,
    ) -> Result<Vec<Option<f32>>> {
        let scores = match self {
            Self::Openai(j) => return j.score(prompts, &|i, s| on_results(&[(i, s)])),
            Self::Local(j) => j.score(prompts)?,
            Self::Classifier(_) => return Err(JudgeError::NotARubricJudge),
        };
        on_results(&scores.iter().copied().enumerate().collect::<Vec<_>>());
        Ok(scores)
    }

    /// Scores `(question, answer)` pairs for `criterion` without the cache,
    /// calling `on_results` as judgments arrive.
    fn score_items(
        &self,
        criterion: &Criterion<'_>,
        items: &[(String, String)],
        on_results: &Sink<'_>,
    ) -> Result<Vec<Option<f32>>> {
        let scores = match self {
            Self::Classifier(j) if criterion.name == COHERENCE => j.score_coherence(items)?,
            Self::Classifier(j) => j.score_trait(criterion.name, items)?,
            _ => {
                let prompts: Vec<String> = items
                    .iter()
                    .map(|(q, a)| {
                        criterion
                            .rubric
                            .replace("{question}", q)
                            .replace("{answer}", a)
                    })
                    .collect();
                return self.score_prompts_each(&prompts, on_results);
            }
        };
        on_results(&scores.iter().copied().enumerate().collect::<Vec<_>>());
        Ok(scores)
    }

    /// Scores `(question, answer)` pairs for `criterion` (rubric placeholders
    /// `{question}`, `{answer}`), judging only what `cache` does not hold and
    /// recording each new judgment there as it arrives: when the judge
    /// fails part-way (an endpoint that goes down), what it judged before
    /// is kept, and a rerun asks only for the rest. A missing judgment (a
    /// refusal, an answer with no number) is a result and is cached; a
    /// failure to get an answer at all is an error and never cached.
    pub fn judge(
        &self,
        criterion: &Criterion<'_>,
        items: &[(String, String)],
        cache: &mut JudgmentCache,
    ) -> Result<Vec<Option<f32>>> {
        let id = self.criterion_identity(criterion)?;
        let keys: Vec<String> = items
            .iter()
            .map(|(q, a)| cache::key(&id, criterion.rubric, q, a))
            .collect();
        let mut missing: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if cache.get(k).is_none() && !missing.iter().any(|&j| keys[j] == *k) {
                missing.push(i);
            }
        }
        let todo: Vec<(String, String)> = missing.iter().map(|&i| items[i].clone()).collect();
        let sink = std::sync::Mutex::new((&mut *cache, None));
        let scored = self.score_items(criterion, &todo, &|done| {
            let new: Vec<(String, Option<f32>)> = done
                .iter()
                .map(|&(j, score)| (keys[missing[j]].clone(), score))
                .collect();
            if let Ok(mut guard) = sink.lock() {
                let (cache, failed) = &mut *guard;
                if failed.is_none()
                    && let Err(e) = cache.insert_all(&new)
                {
                    *failed = Some(e);
                }
            }
        });
        let (_, failed) = sink.into_inner().map_err(|_| JudgeError::Poisoned)?;
        if let Some(e) = failed {
            return Err(e);
        }
        scored?;
        Ok(keys.iter().map(|k| cache.get(k).flatten()).collect())
    }
}
