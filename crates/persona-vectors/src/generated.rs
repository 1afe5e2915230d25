//! Extraction from the model's own answers (the `generated` source, the
//! paper's pipeline): for each extraction question, each instruction pair
//! and each sample, one answer under the trait's system prompt (`You are
//! a(n) {adjective} assistant. {pos}`) and one under its opposite (`You are
//! a(n) {antonym} assistant. {neg}`). Both are judged for the trait and for
//! coherence (the judge sees the bare question and the answer, never the
//! system prompt). The pair is kept only when the positive answer shows the
//! trait (score >= threshold), the negative does not (< threshold) and both
//! are coherent; pairs drop together. The kept answers are then read back
//! under their system prompts, as the authored source reads its responses.
//!
//! Answers and judgments are appended to `<work>/generated.jsonl` question
//! by question, so a killed run resumes after the last finished question
//! (each question's sampling seed is `seed + question index`, so a resumed
//! run gives the same answers as an uninterrupted one). The activation pass
//! over the kept pairs is one short forward sweep at the end.

use std::path::Path;

use persona_judge::{Criterion, Judge, JudgmentCache};
use persona_model::{LoadedModel, Message, SamplingSettings, Sequence};
use serde::{Deserialize, Serialize};

use crate::extract::{contrast_file, teacher_forced};
use crate::file::VectorFile;
use crate::traits::TraitDef;

/// How answers are sampled and filtered (`settings/extract-generated.toml`;
/// read with [`persona_model::settings`], which refuses unknown keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedSettings {
    /// Judge config for trait and coherence.
    pub judge: std::path::PathBuf,
    /// The coherence rubric file.
    pub coherence_file: std::path::PathBuf,
    /// Answers per (question, instruction, side) (paper: 10), temperature,
    /// top_p, max_new_tokens, seed (per question: `seed + question index`),
    /// batch_size.
    #[serde(flatten)]
    pub sampling: SamplingSettings,
    /// Positive answers need trait >= this, negative answers trait < this.
    pub trait_threshold: f32,
    /// Both answers need coherence >= this.
    pub coherence_threshold: f32,
}

impl GeneratedSettings {
    /// Checks every number: sampling ([`SamplingSettings`]) and thresholds
    /// in 0..=100.
    pub fn check(&self) -> persona_model::Result<()> {
        self.sampling.sampling()?;
        for (name, t) in [
            ("trait_threshold", self.trait_threshold),
            ("coherence_threshold", self.coherence_threshold),
        ] {
            if !(0.0..=100.0).contains(&t) {
                return Err(persona_model::ModelError::Input(format!(
                    "{name} {t} must be in 0..=100"
                )));
            }
        }
        Ok(())
    }
}

/// One generated, judged answer (a line of `generated.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedAnswer {
    pub question: usize,
    pub instruction: usize,
    pub sample: usize,
    pub positive: bool,
    pub answer: String,
    pub trait_score: Option<f32>,
    pub coherence: Option<f32>,
}

/// Errors of generated extraction.
#[derive(Debug, thiserror::Error)]
pub enum GeneratedError {
    #[error(transparent)]
    Model(#[from] persona_model::ModelError),
    #[error(transparent)]
    Judge(#[from] persona_judge::JudgeError),
    #[error("{0}")]
    Input(String),
}

/// A work folder holds the answers and judgments of one set of settings:
/// `work/settings.json` records them (with the trait file's hash and the
/// judge) on the first start, and a resume with anything different is
/// refused rather than mixing answers sampled or judged differently.
fn check_work_settings(
    work: &Path,
    def: &TraitDef,
    s: &GeneratedSettings,
    judge: &Judge,
) -> Result<(), GeneratedError> {
    let path = work.join("settings.json");
    let want = serde_json::json!({
        "trait_sha256": def.sha256,
        "judge": judge.identity(),
        "settings": s,
    });
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let have: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                GeneratedError::Input(format!("{} is not valid JSON: {e}", path.display()))
            })?;
            if have != want {
                return Err(GeneratedError::Input(format!(
                    "{} holds answers made with other settings, trait file or judge ({} vs now {}); \
                     rerun with the same ones, or delete {} to start over",
                    work.display(),
                    have,
                    want,
                    work.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(work)
                .map_err(|e| GeneratedError::Input(format!("{}: {e}", work.display())))?;
            let text = serde_json::to_string_pretty(&want).expect("serialises");
            persona_model::write_atomic(&path, text.as_bytes())?;
            Ok(())
        }
        Err(e) => Err(GeneratedError::Input(format!("{}: {e}", path.display()))),
    }
}

/// Whether a (positive, negative) pair is kept.
pub fn keep_pair(pos: &GeneratedAnswer, neg: &GeneratedAnswer, s: &GeneratedSettings) -> bool {
    let coherent = |a: &GeneratedAnswer| a.coherence.is_some_and(|c| c >= s.coherence_threshold);
    !pos.answer.trim().is_empty()
        && !neg.answer.trim().is_empty()
        && pos.trait_score.is_some_and(|t| t >= s.trait_threshold)
        && neg.trait_score.is_some_and(|t| t < s.trait_threshold)
        && coherent(pos)
        && coherent(neg)
}

/// Generates and judges the answers of question `qi` (both sides).
fn answer_question(
    loaded: &LoadedModel,
    def: &TraitDef,
    qi: usize,
    s: &GeneratedSettings,
    judge: &Judge,
    criteria: (&Criterion<'_>, &Criterion<'_>),
    cache: &mut JudgmentCache,
) -> Result<Vec<GeneratedAnswer>, GeneratedError> {
    let q = &def.extraction[qi];
    let codec = &loaded.codec;
    let mut slots = Vec::new();
    let mut prompts = Vec::new();
    for positive in [true, false] {
        for k in 0..def.instructions.len() {
            let system = def.system_prompt(k, positive);
            let ids = codec.prompt_ids(&[Message::system(system), Message::user(q.as_str())])?;
            for j in 0..s.sampling.samples {
                slots.push((positive, k, j));
                prompts.push(ids.clone());
            }
        }
    }
    let gens = persona_model::generate(
        &loaded.model,
        &prompts,
        &codec.stop_ids,
        codec.pad_id,
        &SamplingSettings {
            seed: s.sampling.seed + qi as u64,
            ..s.sampling
        }
        .options(Vec::new())?,
        |_| {},
    )?;
    let answers: Vec<String> = gens
        .iter()
        .map(|g| codec.decode_clean(g.content_tokens()))
        .collect::<persona_model::Result<_>>()?;
    let items: Vec<(String, String)> = answers.iter().map(|a| (q.clone(), a.clone())).collect();
    let traits = judge.judge(criteria.0, &items, cache)?;
    let coherence = judge.judge(criteria.1, &items, cache)?;
    Ok(slots
        .into_iter()
        .zip(answers)
        .enumerate()
        .map(
            |(i, ((positive, instruction, sample), answer))| GeneratedAnswer {
                question: qi,
                instruction,
                sample,
                positive,
                answer,
                trait_score: traits[i],
                coherence: coherence[i],
            },
        )
        .collect())
}

/// What generated extraction kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeepCounts {
    pub pairs: usize,
    pub kept: usize,
    pub dropped: usize,
}

/// Runs (or resumes) generated extraction; `work` holds `generated.jsonl`.
/// `progress(questions done, total)`.
#[allow(clippy::too_many_arguments)]
pub fn extract_generated(
    loaded: &LoadedModel,
    def: &TraitDef,
    coherence_rubric: &str,
    judge: &Judge,
    cache: &mut JudgmentCache,
    s: &GeneratedSettings,
    work: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<(VectorFile, KeepCounts), GeneratedError> {
    s.check()?;
    let log = work.join("generated.jsonl");
    check_work_settings(work, def, s, judge)?;
    let per_question = 2 * def.instructions.len() * s.sampling.samples;
    let n = def.extraction.len();
    let mut done = whole_questions(&log, n, per_question)?;
    let complete = |qi: usize, done: &[GeneratedAnswer]| {
        done.iter().filter(|a| a.question == qi).count() == per_question
    };
    let (trait_c, coh_c) = def.criteria(coherence_rubric);
    for qi in 0..n {
        if !complete(qi, &done) {
            let answers = answer_question(loaded, def, qi, s, judge, (&trait_c, &coh_c), cache)?;
            persona_model::jsonl::append_records(&log, &answers)?;
            done.extend(answers);
        }
        progress(qi + 1, n);
    }
    let (pos, neg, counts) = kept_pairs(&loaded.codec, def, s, &done)?;
    if counts.kept == 0 {
        return Err(GeneratedError::Input(format!(
            "no pair of {} passed the filter (positive trait >= {}, negative < {}, both coherence >= {}); see {} for the answers and judgments",
            counts.pairs,
            s.trait_threshold,
            s.trait_threshold,
            s.coherence_threshold,
            log.display()
        )));
    }
    let file = contrast_file(
        &loaded.model,
        &loaded.identity,
        (&pos, &neg),
        loaded.codec.pad_id,
        s.sampling.batch_size,
        serde_json::json!({
            "trait": def.name,
            "trait_file": def.path,
            "trait_sha256": def.sha256,
            "source": "generated",
            "judge": judge.identity(),
            "settings": s,
            "pairs": counts.pairs,
            "pairs_kept": counts.kept,
            "pairs_dropped": counts.dropped,
            "system_prompt": "You are a(n) {adjective|antonym} assistant. {instruction k}",
        }),
        |_| {},
    )?;
    Ok((file, counts))
}

/// The answers in the log, whole questions only: a question's answers are
/// appended at once, but a killed writer can leave part of one, so partial
/// questions (and questions beyond `n`) are dropped from the log before
/// going on, and every question appears exactly once.
fn whole_questions(
    log: &Path,
    n: usize,
    per_question: usize,
) -> Result<Vec<GeneratedAnswer>, GeneratedError> {
    let mut done: Vec<GeneratedAnswer> = persona_model::jsonl::read_records(log)?;
    let count = |qi: usize| done.iter().filter(|a| a.question == qi).count();
    let partial: Vec<usize> = (0..n)
        .filter(|&qi| count(qi) > 0 && count(qi) != per_question)
        .collect();
    if !partial.is_empty() || done.iter().any(|a| a.question >= n) {
        done.retain(|a| a.question < n && !partial.contains(&a.question));
        let mut text = String::new();
        for a in &done {
            text.push_str(&serde_json::to_string(a).expect("serialises"));
            text.push('\n');
        }
        persona_model::write_atomic(log, text.as_bytes())?;
    }
    Ok(done)
}

/// The teacher-forced sequences of every pair that passes [`keep_pair`]
/// (positive side, negative side), with the counts.
fn kept_pairs(
    codec: &persona_model::TextCodec,
    def: &TraitDef,
    s: &GeneratedSettings,
    done: &[GeneratedAnswer],
) -> Result<(Vec<Sequence>, Vec<Sequence>, KeepCounts), GeneratedError> {
    let find = |qi, k, j, positive| {
        done.iter().find(|a| {
            a.question == qi && a.instruction == k && a.sample == j && a.positive == positive
        })
    };
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    let mut counts = KeepCounts {
        pairs: 0,
        kept: 0,
        dropped: 0,
    };
    for (qi, q) in def.extraction.iter().enumerate() {
        for k in 0..def.instructions.len() {
            for j in 0..s.sampling.samples {
                counts.pairs += 1;
                match (find(qi, k, j, true), find(qi, k, j, false)) {
                    (Some(p), Some(m)) if keep_pair(p, m, s) => {
                        counts.kept += 1;
                        pos.push(teacher_forced(
                            codec,
                            &def.system_prompt(k, true),
                            q,
                            &p.answer,
                        )?);
                        neg.push(teacher_forced(
                            codec,
                            &def.system_prompt(k, false),
                            q,
                            &m.answer,
                        )?);
                    }
                    _ => counts.dropped += 1,
                }
            }
        }
    }
    Ok((pos, neg, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(positive: bool, t: Option<f32>, c: Option<f32>, text: &str) -> GeneratedAnswer {
        GeneratedAnswer {
            question: 0,
            instruction: 0,
            sample: 0,
            positive,
            answer: text.into(),
            trait_score: t,
            coherence: c,
        }
    }

    #[test]
    fn pairs_are_kept_only_when_both_sides_pass() {
        let s = GeneratedSettings {
            judge: "j.toml".into(),
            coherence_file: "c.toml".into(),
            sampling: SamplingSettings {
                samples: 1,
                temperature: 1.0,
                top_p: 1.0,
                max_new_tokens: 8,
                seed: 0,
                batch_size: 1,
            },
            trait_threshold: 50.0,
            coherence_threshold: 50.0,
        };
        let good_pos = a(true, Some(80.0), Some(70.0), "yes!");
        let good_neg = a(false, Some(10.0), Some(90.0), "no.");
        assert!(keep_pair(&good_pos, &good_neg, &s));
        // Threshold edges: pos needs >= 50, neg needs < 50.
        assert!(keep_pair(
            &a(true, Some(50.0), Some(50.0), "x"),
            &good_neg,
            &s
        ));
        assert!(!keep_pair(
            &good_pos,
            &a(false, Some(50.0), Some(90.0), "x"),
            &s
        ));
        // A weak positive, an incoherent side, a missing judgment or an empty answer drops the pair.
        assert!(!keep_pair(
            &a(true, Some(49.9), Some(70.0), "x"),
            &good_neg,
            &s
        ));
        assert!(!keep_pair(
            &good_pos,
            &a(false, Some(10.0), Some(49.0), "x"),
            &s
        ));
        assert!(!keep_pair(&a(true, None, Some(70.0), "x"), &good_neg, &s));
        assert!(!keep_pair(&good_pos, &a(false, Some(10.0), None, "x"), &s));
        assert!(!keep_pair(
            &a(true, Some(90.0), Some(90.0), "  "),
            &good_neg,
            &s
        ));
    }
}
