//! The offline classifier judge: trait scores from a sentence encoder plus
//! a per-trait logistic probe (`100 * P(trait)`), coherence from the base
//! model's mean token log-probability of the answer, mapped linearly:
//!
//! `coherence = 100 * clamp((mean_logprob - floor) / (ceiling - floor), 0, 1)`
//!
//! with `floor`/`ceiling` (nats per token) from the judge config.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::encoder::SentenceEncoder;
use crate::error::{JudgeError, Result};
use crate::probe::{Probe, ProbeSettings, probe_text};

/// The `[coherence]` table of a classifier judge config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoherenceConfig {
    /// The base model whose likelihood measures fluency.
    pub model: String,
    /// Mean log-probability (nats/token) mapped to 0.
    pub floor: f64,
    /// Mean log-probability mapped to 100.
    pub ceiling: f64,
    pub batch_size: usize,
}

/// A classifier judge config (`kind = "classifier"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// A folder holding an HF BERT sentence-transformers model, or a name
    /// in the model cache.
    pub encoder: String,
    /// Longest input in encoder tokens (longer ones are truncated).
    pub max_tokens: usize,
    pub batch_size: usize,
    /// Folder of trained probes, `<probes>/<trait>.probe.json`.
    pub probes: PathBuf,
    /// Folder of labelled responses, `<labelled>/<trait>.jsonl`; a missing
    /// probe is trained from there on first use.
    pub labelled: PathBuf,
    /// `cpu`, `cuda` or `wgpu`.
    pub device: String,
    pub coherence: CoherenceConfig,
    pub probe: ProbeSettings,
}

impl ClassifierConfig {
    /// The encoder folder: a path when it exists, else `<model cache>/<name>`.
    pub fn encoder_dir(&self) -> PathBuf {
        let p = PathBuf::from(&self.encoder);
        if p.is_dir() {
            p
        } else {
            persona_model::PersonaHome::from_env()
                .models()
                .join(&self.encoder)
        }
    }

    /// Where the probe of `trait_name` lives.
    pub fn probe_path(&self, trait_name: &str) -> PathBuf {
        self.probes.join(format!("{trait_name}.probe.json"))
    }

    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let c = &self.coherence;
        if c.ceiling <= c.floor {
            return Err("coherence.ceiling must be above coherence.floor".into());
        }
        if self.batch_size == 0 || c.batch_size == 0 || self.max_tokens == 0 {
            return Err("batch sizes and max_tokens must be at least 1".into());
        }
        if self.probe.held_out_every < 2 {
            return Err("probe.held_out_every must be at least 2".into());
        }
        Ok(())
    }
}

/// The coherence transform of the config.
pub fn coherence_score(mean_logprob: f64, floor: f64, ceiling: f64) -> f32 {
    (100.0 * ((mean_logprob - floor) / (ceiling - floor)).clamp(0.0, 1.0)) as f32
}

/// A ready classifier judge.
pub struct ClassifierJudge {
    pub config: ClassifierConfig,
    pub encoder: SentenceEncoder,
    coherence_model: persona_model::LoadedModel,
}

impl ClassifierJudge {
    pub fn new(config: ClassifierConfig, device: &Device) -> Result<Self> {
        let encoder = SentenceEncoder::load(&config.encoder_dir(), config.max_tokens, device)?;
        let coherence_model = persona_model::load(&config.coherence.model, device)?;
        Ok(Self {
            config,
            encoder,
            coherence_model,
        })
    }

    /// Loads the probe of `trait_name`, checking that it was trained on this
    /// encoder with this config's probe settings and the current probe
    /// format. A missing or outdated probe is (re)trained first when
    /// `<labelled>/<trait>.jsonl` exists; otherwise it is an error that names
    /// the command to run.
    pub fn probe(&self, trait_name: &str) -> Result<Probe> {
        let path = self.config.probe_path(trait_name);
        let labelled = self.config.labelled.join(format!("{trait_name}.jsonl"));
        let current = if path.exists() {
            Some(Probe::load(&path).and_then(|p| self.check_probe(&path, p)))
        } else {
            None
        };
        match current {
            Some(Ok(p)) => Ok(p),
            _ if labelled.exists() => {
                train_with(&self.config, &self.encoder, trait_name, &labelled)
            }
            Some(Err(e)) => Err(e),
            None => Err(JudgeError::NoProbe {
                trait_name: trait_name.to_string(),
                path,
            }),
        }
    }

    fn check_probe(&self, path: &Path, p: Probe) -> Result<Probe> {
        let stale = |reason: String| JudgeError::Probe {
            path: path.to_path_buf(),
            reason: format!("{reason}; retrain it with `persona judge train`"),
        };
        if p.encoder != self.encoder.identity {
            return Err(stale(format!(
                "trained on encoder {}, this judge uses {}",
                p.encoder, self.encoder.identity
            )));
        }
        if p.settings != self.config.probe {
            return Err(stale(
                "trained with other [probe] settings than the judge config's".into(),
            ));
        }
        Ok(p)
    }

    /// What the cache records for a trait judgment: encoder and probe file hash.
    pub fn trait_identity(&self, trait_name: &str) -> Result<String> {
        let path = self.config.probe_path(trait_name);
        self.probe(trait_name)?;
        let sha = persona_model::weights::sha256_files(&[path])?;
        Ok(format!(
            "classifier {} probe {trait_name} {}",
            self.encoder.identity,
            &sha[..16]
        ))
    }

    /// What the cache records for a coherence judgment.
    pub fn coherence_identity(&self) -> String {
        let c = &self.config.coherence;
        format!(
            "coherence mean-logprob {} ({}) floor {} ceiling {}",
            c.model,
            &self.coherence_model.identity.sha256[..16],
            c.floor,
            c.ceiling
        )
    }

    /// `100 * P(trait)` for each `(question, answer)`.
    pub fn score_trait(
        &self,
        trait_name: &str,
        items: &[(String, String)],
    ) -> Result<Vec<Option<f32>>> {
        let probe = self.probe(trait_name)?;
        let texts: Vec<String> = items.iter().map(|(q, a)| probe_text(q, a)).collect();
        let emb = self.encoder.embed(&texts, self.config.batch_size)?;
        Ok(probe
            .predict(&emb)
            .into_iter()
            .map(|p| Some((100.0 * p) as f32))
            .collect())
    }

    /// Coherence of each answer to its question (missing for an empty answer).
    pub fn score_coherence(&self, items: &[(String, String)]) -> Result<Vec<Option<f32>>> {
        let m = &self.coherence_model;
        let c = &self.config.coherence;
        let seqs = items
            .iter()
            .map(|(q, a)| {
                Ok(persona_model::Sequence {
                    prompt: m
                        .codec
                        .prompt_ids(&[persona_model::Message::user(q.as_str())])?,
                    response: m.codec.encode(a)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lik = persona_model::response_likelihoods(
            &m.model,
            None,
            &[],
            &seqs,
            c.batch_size,
            m.codec.pad_id,
            |_| {},
        )?;
        Ok(lik
            .iter()
            .map(|l| {
                l.mean_logprob()
                    .map(|lp| coherence_score(lp, c.floor, c.ceiling))
            })
            .collect())
    }
}

/// sha256 of a file, as hex (for provenance of the labelled set).
pub fn file_sha256(path: &Path) -> Result<String> {
    Ok(persona_model::weights::sha256_files(&[path.to_path_buf()])?)
}

/// Trains the probe of `trait_name` on a labelled JSONL file, writes it to
/// the config's probe folder and returns it. `progress(done, total)` follows
/// the embedding passes.
pub fn train_trait_probe(
    config: &ClassifierConfig,
    trait_name: &str,
    labelled: &Path,
    device: &Device,
) -> Result<Probe> {
    let encoder = SentenceEncoder::load(&config.encoder_dir(), config.max_tokens, device)?;
    train_with(config, &encoder, trait_name, labelled)
}

fn train_with(
    config: &ClassifierConfig,
    encoder: &SentenceEncoder,
    trait_name: &str,
    labelled: &Path,
) -> Result<Probe> {
    let items = crate::probe::read_labelled(labelled)?;
    let texts: Vec<String> = items
        .iter()
        .map(|l| probe_text(&l.question, &l.answer))
        .collect();
    let emb = encoder.embed(&texts, config.batch_size)?;
    let probe = crate::probe::train_probe(
        trait_name,
        &encoder.identity,
        &items,
        &emb,
        &config.probe,
        (labelled.display().to_string(), file_sha256(labelled)?),
        &encoder.device,
    )?;
    probe.save(&config.probe_path(trait_name))?;
    Ok(probe)
}
