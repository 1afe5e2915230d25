//! The capability cost of an arm, on scales that mean the same for a 135M
//! and a 7B model:
//!
//! - **held-out NLL**: mean per-token negative log-likelihood of reference
//!   answers, (a) the last `normal_examples` lines of the trait-free
//!   ("normal") fine-tuning data and (b) the project's general chat sample
//!   (`datasets/eval/general-chat.jsonl`). Higher = the model finds ordinary,
//!   correct answers less likely. Each example's mean NLL is one observation
//!   of the bootstrap interval.
//! - **multiple-choice accuracy** on the project's general-knowledge set
//!   (`datasets/eval/general-mc.jsonl`): each option is scored as the answer
//!   to the question by its mean token log-probability (deterministic, no
//!   sampling); correct when the right option scores highest. Interval:
//!   bootstrap over questions (with 40 questions one question is 2.5
//!   points, so differences under ~10 points are noise).
//!
//! Post-hoc steering applies while scoring (last prompt token and answer
//! tokens), so its cost is measured the same way as an adapter's.

use std::path::{Path, PathBuf};

use persona_model::{ChatRole, LoadedModel, Message, Sequence, Steering, response_likelihoods};
use persona_monitor::stats::{BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MeanCi, bootstrap_mean};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// Where the capability data lives and how much of it to use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitySettings {
    /// Trait-free chat JSONL (`{"messages": [...]}`); its last `normal_examples` lines are used.
    pub normal: PathBuf,
    pub normal_examples: usize,
    /// General chat sample, same layout.
    pub chat: PathBuf,
    /// Multiple choice: `{"question", "options": [..], "answer": index}`.
    pub mc: PathBuf,
    pub batch_size: usize,
}

/// The capability measures of one arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityResult {
    pub normal_nll: Option<MeanCi>,
    pub chat_nll: Option<MeanCi>,
    pub mc_accuracy: Option<MeanCi>,
}

#[derive(Debug, Deserialize)]
struct Mc {
    question: String,
    options: Vec<String>,
    answer: usize,
}

/// Reads `(question, answer)` pairs: the first user turn and the assistant's reply.
pub(crate) fn read_chat(path: &Path) -> Result<Vec<(String, String)>> {
    let records = persona_train::data::read_chat_records(path)?;
    records
        .into_iter()
        .map(|r| {
            let user = r.messages.iter().find(|m| m.role == ChatRole::User);
            let reply = r
                .messages
                .iter()
                .rev()
                .find(|m| m.role == ChatRole::Assistant);
            match (user, reply) {
                (Some(u), Some(a)) => Ok((u.content.clone(), a.content.clone())),
                _ => Err(EvalError::file(
                    path,
                    format!("line {} needs a user and an assistant turn", r.line),
                )),
            }
        })
        .collect()
}

fn read_mc(path: &Path) -> Result<Vec<Mc>> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::file(path, e))?;
    let mut out = Vec::new();
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let m: Mc = serde_json::from_str(l)
            .map_err(|e| EvalError::file(path, format!("line {}: {e}", i + 1)))?;
        if m.answer >= m.options.len() || m.options.len() < 2 {
            return Err(EvalError::file(
                path,
                format!(
                    "line {}: needs 2+ options and an answer index among them",
                    i + 1
                ),
            ));
        }
        out.push(m);
    }
    Ok(out)
}

/// Each `(question, answer)` as a sequence: the templated question as the
/// prompt, the answer's tokens as the response.
pub(crate) fn chat_sequences(
    loaded: &LoadedModel,
    pairs: &[(String, String)],
) -> Result<Vec<Sequence>> {
    pairs
        .iter()
        .map(|(q, a)| {
            Ok(Sequence {
                prompt: loaded.codec.prompt_ids(&[Message::user(q.as_str())])?,
                response: loaded.codec.encode(a)?,
            })
        })
        .collect()
}

/// Mean token log-probability of each answer to its question.
fn mean_logprobs(
    loaded: &LoadedModel,
    steering: &[Steering],
    pairs: &[(String, String)],
    batch_size: usize,
) -> Result<Vec<f64>> {
    let seqs = chat_sequences(loaded, pairs)?;
    let lik = response_likelihoods(
        &loaded.model,
        None,
        steering,
        &seqs,
        batch_size,
        loaded.codec.pad_id,
        |_| {},
    )?;
    Ok(lik
        .iter()
        .map(|l| l.mean_logprob().unwrap_or(f64::NEG_INFINITY))
        .collect())
}

/// Measures `loaded` (with `steering` active) on the capability data.
pub fn evaluate_capability(
    loaded: &LoadedModel,
    steering: &[Steering],
    s: &CapabilitySettings,
) -> Result<CapabilityResult> {
    let ci = |x: &[f64]| bootstrap_mean(x, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED);
    let normal = read_chat(&s.normal)?;
    let normal = &normal[normal.len().saturating_sub(s.normal_examples)..];
    let nll = |pairs: &[(String, String)]| -> Result<Vec<f64>> {
        Ok(mean_logprobs(loaded, steering, pairs, s.batch_size)?
            .into_iter()
            .map(|lp| -lp)
            .collect())
    };
    let normal_nll = ci(&nll(normal)?);
    let chat_nll = ci(&nll(&read_chat(&s.chat)?)?);
    let mc = read_mc(&s.mc)?;
    let pairs: Vec<(String, String)> = mc
        .iter()
        .flat_map(|m| m.options.iter().map(|o| (m.question.clone(), o.clone())))
        .collect();
    let scores = mean_logprobs(loaded, steering, &pairs, s.batch_size)?;
    let mut correct = Vec::with_capacity(mc.len());
    let mut at = 0;
    for m in &mc {
        let opts = &scores[at..at + m.options.len()];
        at += m.options.len();
        // First best on ties, so the result does not depend on float noise order.
        let best = opts
            .iter()
            .enumerate()
            .fold(0, |b, (i, v)| if *v > opts[b] { i } else { b });
        correct.push(if best == m.answer { 1.0 } else { 0.0 });
    }
    Ok(CapabilityResult {
        normal_nll,
        chat_nll,
        mc_accuracy: ci(&correct),
    })
}
