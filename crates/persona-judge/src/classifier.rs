//! The offline classifier judge: trait scores from a sentence encoder plus
//! a per-trait logistic probe on (question, answer) features
//! (`100 * P(trait)`, see [`crate::probe`]), coherence from the base
//! model's mean token log-probability of the answer, mapped linearly:
//!
//! `coherence = 100 * clamp((mean_logprob - floor) / (ceiling - floor), 0, 1)`
//!
//! with `floor`/`ceiling` (nats per token) from the judge config.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::audit::{Audit, read_ratings};
use crate::encoder::SentenceEncoder;
use crate::error::{JudgeError, Result};
use crate::probe::{Example, Features, Probe, ProbeSettings, Provenance};

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
    /// Folder of authored labelled responses, `<labelled>/<trait>.jsonl`; a
    /// missing or outdated probe is trained from there on first use.
    pub labelled: PathBuf,
    /// Folder of hand-rated model answers trained on with the labelled
    /// ones, `<rated>/<trait>.jsonl` (ratings format, see [`crate::audit`];
    /// a trait without a file trains on the labelled answers alone).
    pub rated: PathBuf,
    /// Folder of held-out audit ratings, `<audit>/<trait>.jsonl`: never
    /// trained on; `persona judge train` scores the new probe on it and the
    /// probe file stores the result.
    pub audit: PathBuf,
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

    /// The files a probe of `trait_name` trains on: the labelled file, then
    /// the rated one when it exists.
    pub fn training_files(&self, trait_name: &str) -> Vec<PathBuf> {
        let labelled = self.labelled.join(format!("{trait_name}.jsonl"));
        let rated = self.rated.join(format!("{trait_name}.jsonl"));
        std::iter::once(labelled)
            .chain(rated.exists().then_some(rated))
            .collect()
    }

    /// The audit ratings of `trait_name`, when it has some.
    pub fn audit_file(&self, trait_name: &str) -> Option<PathBuf> {
        Some(self.audit.join(format!("{trait_name}.jsonl"))).filter(|p| p.exists())
    }

    /// The data folders must exist: a mistyped `rated` or `audit` would
    /// otherwise train without the ratings or leave probes unaudited
    /// without a word.
    pub fn check_folders(&self) -> Result<()> {
        for (key, dir) in [
            ("labelled", &self.labelled),
            ("rated", &self.rated),
            ("audit", &self.audit),
        ] {
            if !dir.is_dir() {
                return Err(JudgeError::Probe {
                    path: dir.clone(),
                    reason: format!(
                        "the judge config's `{key}` folder does not exist; create it or fix the path"
                    ),
                });
            }
        }
        Ok(())
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
        config.check_folders()?;
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
        let files = self.config.training_files(trait_name);
        let current = if path.exists() {
            Some(Probe::load(&path).and_then(|p| self.check_probe(&path, p, &files)))
        } else {
            None
        };
        match current {
            Some(Ok(p)) => Ok(p),
            _ if files[0].exists() => train_with(&self.config, &self.encoder, trait_name, &files),
            Some(Err(e)) => Err(e),
            None => Err(JudgeError::NoProbe {
                trait_name: trait_name.to_string(),
                path,
            }),
        }
    }

    fn check_probe(&self, path: &Path, p: Probe, files: &[PathBuf]) -> Result<Probe> {
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
        if files.iter().all(|f| f.exists())
            && persona_model::weights::sha256_files(files)? != p.report.training_sha256
        {
            return Err(stale(format!(
                "trained on other data than {} now holds",
                display_files(files)
            )));
        }
        let audit_now = match self.config.audit_file(&p.trait_name) {
            Some(a) => Some(file_sha256(&a)?),
            None => None,
        };
        if audit_now.as_deref() != p.report.audit.as_ref().map(|a| a.ratings_sha256.as_str()) {
            return Err(stale(
                "audited against other ratings than the audit folder holds".into(),
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
        let x = features(
            &self.encoder,
            probe.settings.features,
            items,
            self.config.batch_size,
        )?;
        Ok(probe
            .predict(&x)
            .into_iter()
            .map(|p| Some((100.0 * p) as f32))
            .collect())
    }

    /// The probe's stored audit line, when it was audited.
    pub fn audit_line(&self, trait_name: &str) -> Result<Option<String>> {
        Ok(self.probe(trait_name)?.report.audit.map(|a| a.line()))
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

/// The probe features of `(question, answer)` pairs.
pub fn features(
    encoder: &SentenceEncoder,
    kind: Features,
    items: &[(String, String)],
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let groups = kind
        .texts(items)
        .iter()
        .map(|texts| embed_distinct(encoder, texts, batch_size))
        .collect::<Result<Vec<_>>>()?;
    Ok(kind.assemble(groups))
}

/// Embeds each distinct text once (an evaluation's questions repeat once
/// per sample) and returns one embedding per text, in order.
fn embed_distinct(
    encoder: &SentenceEncoder,
    texts: &[String],
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut index: std::collections::HashMap<&str, usize> = Default::default();
    let mut distinct: Vec<String> = Vec::new();
    let slots: Vec<usize> = texts
        .iter()
        .map(|t| {
            *index.entry(t.as_str()).or_insert_with(|| {
                distinct.push(t.clone());
                distinct.len() - 1
            })
        })
        .collect();
    let emb = encoder.embed(&distinct, batch_size)?;
    Ok(slots.into_iter().map(|i| emb[i].clone()).collect())
}

fn display_files(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Trains the probe of `trait_name` on the config's training files, audits
/// it on the config's audit ratings when the trait has some, writes it to
/// the config's probe folder and returns it.
pub fn train_trait_probe(
    config: &ClassifierConfig,
    trait_name: &str,
    device: &Device,
) -> Result<Probe> {
    config.check_folders()?;
    let encoder = SentenceEncoder::load(&config.encoder_dir(), config.max_tokens, device)?;
    train_with(
        config,
        &encoder,
        trait_name,
        &config.training_files(trait_name),
    )
}

/// How many of `ratings` the probe of `trait_name` trains on (an audit of
/// those measures the training fit, not agreement).
pub fn trained_on(
    config: &ClassifierConfig,
    trait_name: &str,
    ratings: &[crate::audit::Rating],
) -> Result<usize> {
    let examples = training_examples(&config.training_files(trait_name))?;
    Ok(in_examples(&examples, ratings).len())
}

/// The examples of `files` ([`ClassifierConfig::training_files`]): the
/// labelled file's, then the rated file's.
fn training_examples(files: &[PathBuf]) -> Result<Vec<Example>> {
    let mut examples = crate::probe::read_labelled(&files[0])?;
    for rated in &files[1..] {
        examples.extend(crate::probe::read_rated(rated)?);
    }
    Ok(examples)
}

/// The positions of the `ratings` whose (question, answer) is one of `examples`.
fn in_examples(examples: &[Example], ratings: &[crate::audit::Rating]) -> Vec<usize> {
    let seen: std::collections::HashSet<(&str, &str)> = examples
        .iter()
        .map(|e| (e.question.as_str(), e.answer.as_str()))
        .collect();
    (0..ratings.len())
        .filter(|&i| seen.contains(&(ratings[i].question.as_str(), ratings[i].answer.as_str())))
        .collect()
}

fn train_with(
    config: &ClassifierConfig,
    encoder: &SentenceEncoder,
    trait_name: &str,
    files: &[PathBuf],
) -> Result<Probe> {
    let examples = training_examples(files)?;
    crate::probe::check_both_sides(&examples, Path::new(&display_files(files)))?;
    let audit_file = config.audit_file(trait_name);
    if let Some(a) = &audit_file {
        refuse_overlap(&examples, a)?;
    }
    let pairs: Vec<(String, String)> = examples
        .iter()
        .map(|e| (e.question.clone(), e.answer.clone()))
        .collect();
    let kind = config.probe.features;
    let x = features(encoder, kind, &pairs, config.batch_size)?;
    let provenance = Provenance {
        files: files.iter().map(|f| f.display().to_string()).collect(),
        sha256: persona_model::weights::sha256_files(files)?,
    };
    let mut probe = crate::probe::train_probe(
        trait_name,
        &encoder.identity,
        &examples,
        &x,
        &config.probe,
        provenance,
        &encoder.device,
    )?;
    if let Some(a) = audit_file {
        let ratings = read_ratings(&a)?;
        let items: Vec<(String, String)> = ratings
            .iter()
            .map(|r| (r.question.clone(), r.answer.clone()))
            .collect();
        let p = probe.predict(&features(encoder, kind, &items, config.batch_size)?);
        let judged: Vec<Option<f32>> = p.iter().map(|p| Some((100.0 * p) as f32)).collect();
        let source = (a.display().to_string(), file_sha256(&a)?);
        probe.report.audit = Some(Audit::of(trait_name, source, &ratings, &judged, None));
    }
    probe.save(&config.probe_path(trait_name))?;
    Ok(probe)
}

/// An audit answer among the training examples would make the audit a
/// training score: refused.
fn refuse_overlap(examples: &[Example], audit: &Path) -> Result<()> {
    match in_examples(examples, &read_ratings(audit)?).first() {
        Some(i) => Err(JudgeError::Labelled {
            path: audit.to_path_buf(),
            line: i + 1,
            reason: "this audit answer is also in the training data; an audit set must be held out"
                .into(),
        }),
        None => Ok(()),
    }
}

/// sha256 of a file, as hex (for provenance of the labelled set).
pub fn file_sha256(path: &Path) -> Result<String> {
    Ok(persona_model::weights::sha256_files(&[path.to_path_buf()])?)
}
