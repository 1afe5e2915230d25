//! Trait evaluation of one arm: sample answers to the trait's evaluation
//! questions, judge trait and coherence, bootstrap the means, and measure
//! the finetuning shift (mean last-prompt-token projection on `v̂_row`
//! minus the base model's). Answers and judgments are saved; a rerun with
//! the same inputs returns the saved result without recomputation.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use persona_judge::{Criterion, Judge, JudgmentCache};
use persona_model::{LoadedModel, Message, SamplingSettings, Sequence};
use persona_monitor::Projector;
use persona_monitor::stats::{BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MeanCi, bootstrap_mean};
use persona_vectors::{TraitDef, Variant, VectorFile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::arm::{Arm, LazyArm};
use crate::error::{EvalError, Result};

/// How answers are sampled and where the shift is measured. Read with
/// [`persona_model::settings`], which refuses unknown keys (serde's
/// `deny_unknown_fields` does not work through `flatten`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// The trait file: its evaluation questions and rubric.
    pub trait_file: PathBuf,
    /// The coherence rubric file (`datasets/traits/coherence.toml`).
    pub coherence_file: PathBuf,
    /// Answers per question (paper: 10), temperature (paper: 1.0; 0 =
    /// greedy), top_p, max_new_tokens, seed, batch_size.
    #[serde(flatten)]
    pub sampling: SamplingSettings,
    /// Vector and row of the finetuning shift.
    pub shift_vector: PathBuf,
    pub shift_row: usize,
}

/// A settings file of `persona eval` (`settings/eval.toml`): the same
/// `[eval]` and `[capability]` tables as a recipe's `[experiment]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalFile {
    pub eval: EvalSettings,
    pub capability: crate::capability::CapabilitySettings,
}

impl EvalFile {
    /// Reads and checks a settings file (unknown keys are errors).
    pub fn load(path: &Path) -> Result<Self> {
        let f: Self = persona_model::settings::load(path)?;
        f.eval
            .check()
            .map_err(|e| EvalError::file(path, format!("[eval]: {e}")))?;
        Ok(f)
    }
}

impl EvalSettings {
    /// The generation numbers, checked (a NaN temperature is an error here,
    /// not after a whole evaluation).
    pub fn check(&self) -> persona_model::Result<()> {
        self.sampling.sampling().map(drop)
    }
}

/// One saved answer with its judgments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub question: String,
    pub sample: usize,
    pub answer: String,
    pub trait_score: Option<f32>,
    pub coherence: Option<f32>,
}

/// What an arm scored (`result.json` in its folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraitResult {
    pub arm: Arm,
    pub trait_name: String,
    pub judge: String,
    /// How the judge agrees with careful ratings of this trait (its stored
    /// audit), or that it was not audited.
    pub judge_audit: String,
    pub settings: EvalSettings,
    /// sha256 of everything that decides the result; a saved result with
    /// another fingerprint is recomputed.
    pub fingerprint: String,
    /// Mean of the non-missing trait scores, with a bootstrap 95% interval.
    pub trait_score: Option<MeanCi>,
    /// The trait score over the coherent answers only (judged coherence at
    /// least [`COHERENT_FROM`]; `n` counts them): the paper's comparisons
    /// are about coherent text.
    pub trait_score_coherent: Option<MeanCi>,
    pub coherence: Option<MeanCi>,
    /// Fraction of answers whose trait judgment is missing.
    pub missing_fraction: f64,
    pub n_answers: usize,
    /// Mean over the questions of `h_row(last prompt token) · v̂_row`.
    pub projection: f64,
    /// `projection` minus the base model's: the finetuning shift.
    pub shift: f64,
    pub bootstrap: (usize, u64),
}

/// The judged coherence from which an answer counts as coherent.
pub const COHERENT_FROM: f32 = 50.0;

/// Mean last-prompt-token projection of `questions` on `v̂_row`.
pub fn mean_projection(
    loaded: &LoadedModel,
    questions: &[String],
    unit: Vec<f32>,
    row: usize,
    batch_size: usize,
) -> Result<f64> {
    let seqs = questions
        .iter()
        .map(|q| {
            Ok(Sequence {
                prompt: loaded.codec.prompt_ids(&[Message::user(q.as_str())])?,
                response: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let p = Projector::new(&loaded.model, row, unit, loaded.codec.pad_id, batch_size)?;
    let proj = p.project(&seqs, |_| {})?;
    Ok(proj.iter().map(|p| p.last_prompt).sum::<f64>() / proj.len().max(1) as f64)
}

fn fingerprint(arm: &Arm, settings: &EvalSettings, judge_ids: &[String]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(arm).expect("serialises"));
    h.update(serde_json::to_vec(settings).expect("serialises"));
    for id in judge_ids {
        h.update(id.as_bytes());
    }
    let mut files = arm.input_files();
    files.push(settings.trait_file.clone());
    files.push(settings.coherence_file.clone());
    files.push(settings.shift_vector.clone());
    h.update(persona_model::weights::sha256_files(&files)?.as_bytes());
    let (_, id) = persona_model::inspect(&arm.model)?;
    h.update(id.sha256.as_bytes());
    Ok(format!("{:x}", h.finalize()))
}

/// Samples `s.samples` answers per question from `loaded` with `steering`,
/// after `system` when given (the judge sees the bare question and the answer) and judges them for
/// the trait and coherence criteria. `progress(stage, done)`.
#[allow(clippy::too_many_arguments)]
pub fn sample_and_judge(
    loaded: &LoadedModel,
    steering: Vec<persona_model::Steering>,
    system: Option<&str>,
    questions: &[String],
    s: &SamplingSettings,
    judge: &Judge,
    (trait_c, coh_c): (&Criterion<'_>, &Criterion<'_>),
    cache: &mut JudgmentCache,
    progress: &mut impl FnMut(&str, usize),
) -> Result<Vec<AnswerRecord>> {
    let options = s.options(steering)?;
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .flat_map(|q| std::iter::repeat_n(q, s.samples))
        .map(|q| {
            let user = Message::user(q.as_str());
            match system {
                Some(p) => loaded.codec.prompt_ids(&[Message::system(p), user]),
                None => loaded.codec.prompt_ids(&[user]),
            }
        })
        .collect::<persona_model::Result<_>>()?;
    let gens = persona_model::generate(
        &loaded.model,
        &prompts,
        &loaded.codec.stop_ids,
        loaded.codec.pad_id,
        &options,
        |d| progress("generating", d),
    )?;
    let mut items = Vec::with_capacity(gens.len());
    for (i, g) in gens.iter().enumerate() {
        let q = &questions[i / s.samples];
        items.push((q.clone(), loaded.codec.decode_clean(g.content_tokens())?));
    }
    progress("judging", 0);
    let traits = judge.judge(trait_c, &items, cache)?;
    let coherence = judge.judge(coh_c, &items, cache)?;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, (question, answer))| AnswerRecord {
            question,
            sample: i % s.samples,
            answer,
            trait_score: traits[i],
            coherence: coherence[i],
        })
        .collect())
}

/// Evaluates the arm on the trait, writing `answers.jsonl` and `result.json`
/// into `dir` (the model is loaded only when the saved result is stale).
/// `progress(stage, done)` follows the long parts.
pub fn evaluate_trait(
    model: &mut LazyArm<'_>,
    settings: &EvalSettings,
    judge: &Judge,
    cache: &mut JudgmentCache,
    dir: &Path,
    mut progress: impl FnMut(&str, usize),
) -> Result<TraitResult> {
    let (arm, device) = (model.arm, model.device);
    let def = TraitDef::load(&settings.trait_file)?;
    let coherence_rubric =
        persona_vectors::traits::load_coherence_rubric(&settings.coherence_file)?;
    let (trait_c, coh_c) = def.criteria(&coherence_rubric);
    let judge_ids = vec![
        judge.criterion_identity(&trait_c)?,
        judge.criterion_identity(&coh_c)?,
    ];
    let fp = fingerprint(arm, settings, &judge_ids)?;
    if let Some(saved) = saved_result(dir, &fp) {
        return Ok(saved);
    }
    settings.check()?;

    let (loaded, steering) = model.get()?;
    let vectors = VectorFile::load(&settings.shift_vector)?;
    vectors.check_model(&loaded.model.config, &loaded.identity)?;
    let unit = vectors.unit_row(Variant::ResponseAvg, settings.shift_row)?;
    let questions = &def.evaluation;
    let records = sample_and_judge(
        loaded,
        steering.clone(),
        arm.system.as_deref(),
        questions,
        &settings.sampling,
        judge,
        (&trait_c, &coh_c),
        cache,
        &mut progress,
    )?;
    let traits: Vec<Option<f32>> = records.iter().map(|r| r.trait_score).collect();
    let coherence: Vec<Option<f32>> = records.iter().map(|r| r.coherence).collect();

    let (projection, shift) = projection_and_shift(loaded, arm, device, settings, unit, questions)?;
    let ok = |v: &[Option<f32>]| -> Vec<f64> { v.iter().flatten().map(|x| *x as f64).collect() };
    let coherent: Vec<Option<f32>> = traits
        .iter()
        .zip(&coherence)
        .map(|(t, c)| t.filter(|_| c.is_some_and(|c| c >= COHERENT_FROM)))
        .collect();
    let result = TraitResult {
        arm: arm.clone(),
        trait_name: def.name.clone(),
        judge: judge.identity(),
        judge_audit: judge.audit_line(&def.name)?,
        settings: settings.clone(),
        fingerprint: fp,
        trait_score: bootstrap_mean(&ok(&traits), BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
        trait_score_coherent: bootstrap_mean(&ok(&coherent), BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
        coherence: bootstrap_mean(&ok(&coherence), BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
        missing_fraction: traits.iter().filter(|t| t.is_none()).count() as f64
            / traits.len().max(1) as f64,
        n_answers: records.len(),
        projection,
        shift,
        bootstrap: (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
    };
    save(dir, &records, &result)?;
    Ok(result)
}

/// The result saved in `dir` when its fingerprint still matches.
fn saved_result(dir: &Path, fingerprint: &str) -> Option<TraitResult> {
    let text = std::fs::read_to_string(dir.join("result.json")).ok()?;
    let saved = serde_json::from_str::<TraitResult>(&text).ok()?;
    (saved.fingerprint == fingerprint).then_some(saved)
}

/// The arm's mean projection on the unit vector over the questions, and
/// its shift from the base model's (zero for the base model itself).
fn projection_and_shift(
    loaded: &LoadedModel,
    arm: &Arm,
    device: &Device,
    settings: &EvalSettings,
    unit: Vec<f32>,
    questions: &[String],
) -> Result<(f64, f64)> {
    let (row, batch) = (settings.shift_row, settings.sampling.batch_size);
    let projection = mean_projection(loaded, questions, unit.clone(), row, batch)?;
    if arm.adapter.is_none() {
        return Ok((projection, 0.0));
    }
    let base = persona_model::load_as(&arm.model, device, arm.dtype)?;
    let base_projection = mean_projection(&base, questions, unit, row, batch)?;
    Ok((projection, projection - base_projection))
}

/// Writes `answers.jsonl`, then `result.json`: the result's presence means
/// the answers beside it are complete.
fn save(dir: &Path, records: &[AnswerRecord], result: &TraitResult) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::file(dir, e))?;
    let mut lines = String::new();
    for r in records {
        lines.push_str(&serde_json::to_string(r).expect("serialises"));
        lines.push('\n');
    }
    persona_model::write_atomic(&dir.join("answers.jsonl"), lines.as_bytes())?;
    persona_model::write_atomic(
        &dir.join("result.json"),
        &serde_json::to_vec_pretty(result).expect("serialises"),
    )?;
    Ok(())
}

/// Reads an arm's saved answers.
pub fn read_answers(dir: &Path) -> Result<Vec<AnswerRecord>> {
    let path = dir.join("answers.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| EvalError::file(&path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| EvalError::file(&path, e)))
        .collect()
}
