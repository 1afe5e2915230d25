//! Data screening: how far each training sample would push the model along
//! a persona vector, measured before training.
//!
//! For sample `i` with prompt `x_i` and response `y_i`, and the base
//! model's own greedy response `y'_i` to the same prompt:
//! `ΔP_i = (a(x_i, y_i) - a(x_i, y'_i)) · v̂_row`, where `a` is the mean
//! over response tokens of the residual at `row`. The cheap variant needs
//! no generation: `a(x_i, y_i) · v̂ - h(last prompt token of x_i) · v̂`.
//!
//! Files in the output folder:
//! - `screen.json`: the settings; a rerun with other settings is refused;
//! - `progress.jsonl`: one scored sample per line, appended as work goes
//!   (a killed screen resumes from it);
//! - `scores.jsonl` (sorted, highest first), `summary.json`, `histogram.svg`;
//! - with a filter: `filtered.jsonl` and `filter-manifest.json`.
//!
//! Base responses live in a cache shared by all screens of one model
//! (keyed by prompt tokens and generation length), so the three levels of
//! a dataset with the same prompts generate them once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use persona_model::jsonl::{append_records, read_records};
use persona_model::weights::{hex, sha256_files};
use persona_model::{
    ChatRole, GenerateOptions, Message, Model, ModelIdentity, Sampling, Sequence, TextCodec,
    generate, write_atomic,
};
use persona_train::data::{ChatRecord, read_chat_records, tokenize_chat};
use persona_vectors::{Variant, VectorFile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{MonitorError, Result, file_err};
use crate::plot::{Labels, histogram};
use crate::project::{Projection, Projector};
use crate::stats::{BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MeanCi, auroc, bootstrap_mean};

/// What to screen with; everything here is written to `screen.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScreenSettings {
    pub dataset: PathBuf,
    pub dataset_sha256: String,
    pub vector: PathBuf,
    pub vector_sha256: String,
    pub variant: Variant,
    /// Residual row (0 = embeddings, l = output of block l-1).
    pub row: usize,
    pub model_name: String,
    pub model_sha256: String,
    /// `false`: the cheap variant only (no base responses, no ΔP).
    pub generate_base: bool,
    /// Greedy base responses stop here at the latest.
    pub max_new_tokens: usize,
}

/// One screened sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleScore {
    /// 1-based line in the dataset.
    pub line: usize,
    /// The dataset's `label` field, when present.
    pub label: Option<bool>,
    /// `ΔP`; `None` when screening without base responses or when the base
    /// model's response was empty.
    pub delta_p: Option<f64>,
    /// Response projection minus last-prompt-token projection.
    pub cheap: Option<f64>,
    /// Projections of the dataset sample.
    pub sample: Projection,
    /// Mean response projection of the base model's own response.
    pub base_response: Option<f64>,
    /// The start of the last user message, for reading the ranking.
    pub prompt: String,
}

impl SampleScore {
    /// The score samples are ranked and filtered by: ΔP, or the cheap
    /// variant when screening without base responses.
    pub fn rank_score(&self, generate_base: bool) -> Option<f64> {
        if generate_base {
            self.delta_p
        } else {
            self.cheap
        }
    }
}

/// Dataset-level results, written to `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScreenSummary {
    pub settings: ScreenSettings,
    pub samples: usize,
    /// Samples without a ΔP (empty base response).
    pub unscored: usize,
    pub delta_p: Option<MeanCi>,
    pub cheap: Option<MeanCi>,
    /// Mean response projection of the dataset's responses.
    pub sample_response: Option<MeanCi>,
    /// Mean response projection of the base model's responses.
    pub base_response: Option<MeanCi>,
    /// With `label` fields: how well each score ranks trait samples first.
    pub auroc_delta_p: Option<f64>,
    pub auroc_cheap: Option<f64>,
    pub bootstrap: (usize, u64),
}

/// How to generate base responses and batch the forward passes.
#[derive(Debug, Clone)]
pub struct ScreenOptions {
    pub generate_base: bool,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// The shared base-response cache file.
    pub base_cache: PathBuf,
}

/// Sha256 of a file's bytes, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    Ok(sha256_files(&[path.to_path_buf()])?)
}

/// One cached greedy response of the base model.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedResponse {
    key: String,
    text: String,
}

/// Key of a base response: the prompt tokens and the generation length.
fn response_key(prompt: &[u32], max_new_tokens: usize) -> String {
    let mut h = Sha256::new();
    for t in prompt {
        h.update(t.to_le_bytes());
    }
    h.update(b"greedy");
    h.update((max_new_tokens as u64).to_le_bytes());
    hex(&h.finalize())
}

/// The sequence of a conversation whose last assistant message is replaced.
fn with_response(codec: &TextCodec, rec: &ChatRecord, response: &str) -> Result<Sequence> {
    let mut chat = rec.messages[..rec.messages.len() - 1].to_vec();
    chat.push(Message::assistant(response));
    Ok(tokenize_chat(codec, &chat)?)
}

fn preview(rec: &ChatRecord) -> String {
    let user = rec
        .messages
        .iter()
        .rev()
        .find(|m| m.role == ChatRole::User)
        .map(|m| m.content.as_str())
        .unwrap_or("");
    let mut s: String = user.chars().take(100).collect();
    if user.chars().count() > 100 {
        s.push('…');
    }
    s
}

/// Scores samples from projections of the dataset's sequences and (when
/// present) of the base model's: the arithmetic behind ΔP and the cheap variant.
pub fn score(rec: &ChatRecord, sample: Projection, base: Option<Projection>) -> SampleScore {
    let base_response = base.and_then(|b| b.response_mean);
    SampleScore {
        line: rec.line,
        label: rec.label,
        delta_p: sample.response_mean.zip(base_response).map(|(s, b)| s - b),
        cheap: sample.response_mean.map(|s| s - sample.last_prompt),
        sample,
        base_response,
        prompt: preview(rec),
    }
}

/// Screens a dataset; resumes from `out_dir/progress.jsonl` when it holds
/// the same settings. `progress(done, total)` follows the samples.
#[allow(clippy::too_many_arguments)]
pub fn screen(
    model: &Model,
    codec: &TextCodec,
    identity: &ModelIdentity,
    dataset: &Path,
    vector: &VectorFile,
    variant: Variant,
    row: usize,
    opts: &ScreenOptions,
    out_dir: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<(ScreenSummary, Vec<SampleScore>)> {
    vector.check_model(&model.config, identity)?;
    let projector = Projector::new(
        model,
        row,
        vector.unit_row(variant, row)?,
        codec.pad_id,
        opts.batch_size,
    )?;
    let records = read_chat_records(dataset)?;
    let settings = ScreenSettings {
        dataset: dataset.to_path_buf(),
        dataset_sha256: file_sha256(dataset)?,
        vector: vector.path.clone(),
        vector_sha256: file_sha256(&vector.path)?,
        variant,
        row,
        model_name: identity.name.clone(),
        model_sha256: identity.sha256.clone(),
        generate_base: opts.generate_base,
        max_new_tokens: opts.max_new_tokens,
    };
    std::fs::create_dir_all(out_dir).map_err(|e| file_err(out_dir, e))?;
    claim_folder(out_dir, &settings)?;

    let progress_path = out_dir.join("progress.jsonl");
    let mut scored: HashMap<usize, SampleScore> = read_records::<SampleScore>(&progress_path)?
        .into_iter()
        .map(|s| (s.line, s))
        .collect();
    let mut cache: HashMap<String, String> = read_records::<CachedResponse>(&opts.base_cache)?
        .into_iter()
        .map(|c| (c.key, c.text))
        .collect();
    let pending: Vec<&ChatRecord> = records
        .iter()
        .filter(|r| !scored.contains_key(&r.line))
        .collect();
    let total = records.len();
    progress(total - pending.len(), total);
    let chunk_size = opts.batch_size.max(1) * 4;
    for chunk in pending.chunks(chunk_size) {
        let new = score_chunk(&projector, codec, chunk, opts, &mut cache)?;
        append_records(&progress_path, &new)?;
        for s in new {
            scored.insert(s.line, s);
        }
        progress(scored.len(), total);
    }
    let mut scores: Vec<SampleScore> = records
        .iter()
        .filter_map(|r| scored.remove(&r.line))
        .collect();
    sort_by_rank(&mut scores, opts.generate_base);
    let summary = summarize(settings, &scores);
    write_results(out_dir, &summary, &scores, &[])?;
    Ok((summary, scores))
}

/// The score above which a rule drops samples, and the rule in words.
fn cutoff(rule: FilterRule, mut values: Vec<f64>, score_name: &str) -> Result<(f64, String)> {
    match rule {
        FilterRule::DropTop { percent } => {
            if !(0.0..=100.0).contains(&percent) {
                return Err(MonitorError::Input(format!(
                    "--drop-top must be a percentage in 0..=100, got {percent}"
                )));
            }
            // Drop exactly round(n * P / 100) samples: the cutoff is the
            // score of the highest one kept.
            let n_drop = (values.len() as f64 * percent / 100.0).round() as usize;
            values.sort_by(|a, b| b.total_cmp(a));
            let cutoff = if n_drop == 0 {
                f64::INFINITY
            } else if n_drop >= values.len() {
                f64::NEG_INFINITY
            } else {
                values[n_drop]
            };
            Ok((cutoff, format!("drop the top {percent}% by {score_name}")))
        }
        FilterRule::Threshold { threshold } => {
            if !threshold.is_finite() {
                return Err(MonitorError::Input(format!(
                    "--threshold must be a finite number, got {threshold}"
                )));
            }
            Ok((threshold, format!("drop {score_name} > {threshold}")))
        }
    }
}

/// The scores of one chunk of samples: the base model's greedy answers
/// (from `cache`, generated when missing), then the dataset's sequences and
/// the non-empty base answers projected in one pass.
fn score_chunk(
    projector: &Projector<'_>,
    codec: &TextCodec,
    chunk: &[&ChatRecord],
    opts: &ScreenOptions,
    cache: &mut HashMap<String, String>,
) -> Result<Vec<SampleScore>> {
    let seqs: Vec<Sequence> = chunk
        .iter()
        .map(|r| tokenize_chat(codec, &r.messages))
        .collect::<std::result::Result<_, _>>()?;
    let mut base_texts: Vec<Option<String>> = vec![None; chunk.len()];
    if opts.generate_base {
        let keys: Vec<String> = seqs
            .iter()
            .map(|s| response_key(&s.prompt, opts.max_new_tokens))
            .collect();
        generate_missing(projector.model(), codec, &seqs, &keys, opts, cache)?;
        for (t, k) in base_texts.iter_mut().zip(&keys) {
            *t = cache.get(k).cloned();
        }
    }
    let mut all = seqs;
    let mut base_at = vec![None; chunk.len()];
    for (i, (rec, text)) in chunk.iter().zip(&base_texts).enumerate() {
        if let Some(t) = text.as_deref().filter(|t| !t.trim().is_empty()) {
            base_at[i] = Some(all.len());
            all.push(with_response(codec, rec, t)?);
        }
    }
    let proj = projector.project(&all, |_| {})?;
    Ok(chunk
        .iter()
        .enumerate()
        .map(|(i, rec)| score(rec, proj[i], base_at[i].map(|j| proj[j])))
        .collect())
}

/// Writes `screen.json` in a new folder, or checks that an existing one
/// holds the same settings (so a resumed screen continues the same work).
fn claim_folder(out_dir: &Path, settings: &ScreenSettings) -> Result<()> {
    let path = out_dir.join("screen.json");
    let want = serde_json::to_value(settings).map_err(|e| file_err(&path, e))?;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let have: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| file_err(&path, e))?;
            if let Some(obj) = want.as_object() {
                for (k, v) in obj {
                    if have.get(k) != Some(v) {
                        return Err(MonitorError::OtherScreen {
                            dir: out_dir.to_path_buf(),
                            what: k.clone(),
                        });
                    }
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_string_pretty(&want).map_err(|e| file_err(&path, e))?;
            Ok(write_atomic(&path, text.as_bytes())?)
        }
        Err(e) => Err(file_err(&path, e)),
    }
}

/// Generates (greedy) and caches the base responses that are not cached yet.
fn generate_missing(
    model: &Model,
    codec: &TextCodec,
    seqs: &[Sequence],
    keys: &[String],
    opts: &ScreenOptions,
    cache: &mut HashMap<String, String>,
) -> Result<()> {
    let mut seen = HashSet::new();
    let mut prompts = Vec::new();
    let mut new_keys = Vec::new();
    for (s, k) in seqs.iter().zip(keys) {
        if !cache.contains_key(k) && seen.insert(k.clone()) {
            prompts.push(s.prompt.clone());
            new_keys.push(k.clone());
        }
    }
    if prompts.is_empty() {
        return Ok(());
    }
    let gen_opts = GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        sampling: Sampling::Greedy,
        seed: 0,
        batch_size: opts.batch_size,
        steering: Vec::new(),
    };
    let outs = generate(
        model,
        &prompts,
        &codec.stop_ids,
        codec.pad_id,
        &gen_opts,
        |_| {},
    )?;
    let mut fresh = Vec::new();
    for (k, g) in new_keys.into_iter().zip(outs) {
        let text = codec.decode_clean(g.content_tokens())?;
        fresh.push(CachedResponse { key: k, text });
    }
    append_records(&opts.base_cache, &fresh)?;
    cache.extend(fresh.into_iter().map(|c| (c.key, c.text)));
    Ok(())
}

/// Highest rank score first; unscored samples last; ties by line.
fn sort_by_rank(scores: &mut [SampleScore], generate_base: bool) {
    scores.sort_by(|a, b| {
        let (x, y) = (a.rank_score(generate_base), b.rank_score(generate_base));
        match (x, y) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then(a.line.cmp(&b.line))
    });
}

fn summarize(settings: ScreenSettings, scores: &[SampleScore]) -> ScreenSummary {
    let ci = |f: &dyn Fn(&SampleScore) -> Option<f64>| {
        let v: Vec<f64> = scores.iter().filter_map(f).collect();
        bootstrap_mean(&v, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
    };
    let labelled = |f: &dyn Fn(&SampleScore) -> Option<f64>| {
        let (s, l): (Vec<f64>, Vec<bool>) = scores
            .iter()
            .filter_map(|x| Some((f(x)?, x.label?)))
            .unzip();
        auroc(&s, &l)
    };
    ScreenSummary {
        samples: scores.len(),
        unscored: scores
            .iter()
            .filter(|s| s.rank_score(settings.generate_base).is_none())
            .count(),
        delta_p: ci(&|s| s.delta_p),
        cheap: ci(&|s| s.cheap),
        sample_response: ci(&|s| s.sample.response_mean),
        base_response: ci(&|s| s.base_response),
        auroc_delta_p: labelled(&|s| s.delta_p),
        auroc_cheap: labelled(&|s| s.cheap),
        bootstrap: (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
        settings,
    }
}

fn write_results(
    out_dir: &Path,
    summary: &ScreenSummary,
    scores: &[SampleScore],
    markers: &[(String, f64)],
) -> Result<()> {
    let mut lines = String::new();
    for s in scores {
        lines.push_str(&serde_json::to_string(s).map_err(|e| file_err(out_dir, e))?);
        lines.push('\n');
    }
    write_atomic(&out_dir.join("scores.jsonl"), lines.as_bytes())?;
    let json = serde_json::to_string_pretty(summary).map_err(|e| file_err(out_dir, e))?;
    write_atomic(&out_dir.join("summary.json"), json.as_bytes())?;
    let gb = summary.settings.generate_base;
    let value = |s: &SampleScore| s.rank_score(gb);
    let has_labels = scores.iter().any(|s| s.label.is_some());
    let groups: Vec<(String, Vec<f64>)> = if has_labels {
        [(true, "label = true"), (false, "label = false")]
            .iter()
            .map(|(l, name)| {
                let v = scores
                    .iter()
                    .filter(|s| s.label == Some(*l))
                    .filter_map(value)
                    .collect();
                (name.to_string(), v)
            })
            .collect()
    } else {
        vec![("samples".into(), scores.iter().filter_map(value).collect())]
    };
    let name = if gb {
        "ΔP"
    } else {
        "response − last-prompt projection"
    };
    let svg = histogram(
        Labels {
            title: &format!(
                "{} at row {}: {}",
                name,
                summary.settings.row,
                summary.settings.dataset.display()
            ),
            x: name,
            y: "samples",
        },
        &groups,
        30,
        markers,
    )?;
    write_atomic(&out_dir.join("histogram.svg"), svg.as_bytes())?;
    Ok(())
}

/// Which samples to drop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FilterRule {
    /// Drop the highest-scoring `percent`% of the scored samples.
    DropTop { percent: f64 },
    /// Drop every sample whose score is above `threshold`.
    Threshold { threshold: f64 },
}

/// One removed sample, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    pub line: usize,
    pub score: f64,
    pub reason: String,
    pub prompt: String,
}

/// What a filter did, written to `filter-manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterManifest {
    pub dataset: PathBuf,
    pub dataset_sha256: String,
    /// `ΔP` or `cheap`.
    pub score: String,
    pub rule: String,
    /// The score above which samples were dropped.
    pub cutoff: f64,
    pub kept: usize,
    pub removed: Vec<Removed>,
    /// Samples without a score, kept.
    pub unscored_kept: Vec<usize>,
}

/// Applies `rule` to the scores of a finished screen: writes
/// `filtered.jsonl` (the kept lines of the dataset, verbatim and in their
/// order) and `filter-manifest.json`, and redraws the histogram with the cutoff.
pub fn filter(
    out_dir: &Path,
    summary: &ScreenSummary,
    scores: &[SampleScore],
    rule: FilterRule,
) -> Result<FilterManifest> {
    let gb = summary.settings.generate_base;
    let score_name = if gb { "ΔP" } else { "cheap" };
    let values: Vec<f64> = scores.iter().filter_map(|s| s.rank_score(gb)).collect();
    let (cutoff, rule_text) = cutoff(rule, values, score_name)?;
    let records = read_chat_records(&summary.settings.dataset)?;
    let by_line: HashMap<usize, &SampleScore> = scores.iter().map(|s| (s.line, s)).collect();
    let mut kept_lines = String::new();
    let mut removed = Vec::new();
    let mut unscored_kept = Vec::new();
    let mut kept = 0;
    for rec in &records {
        let s = by_line.get(&rec.line).ok_or_else(|| {
            MonitorError::Input(format!(
                "line {} of {} has no score: the dataset changed since the screen",
                rec.line,
                summary.settings.dataset.display()
            ))
        })?;
        match s.rank_score(gb) {
            Some(v) if v > cutoff => removed.push(Removed {
                line: rec.line,
                score: v,
                reason: format!("{score_name} {v:.4} > {cutoff:.4} ({rule_text})"),
                prompt: s.prompt.clone(),
            }),
            other => {
                if other.is_none() {
                    unscored_kept.push(rec.line);
                }
                kept += 1;
                kept_lines.push_str(&rec.raw);
                kept_lines.push('\n');
            }
        }
    }
    removed.sort_by(|a, b| b.score.total_cmp(&a.score));
    let manifest = FilterManifest {
        dataset: summary.settings.dataset.clone(),
        dataset_sha256: summary.settings.dataset_sha256.clone(),
        score: score_name.into(),
        rule: rule_text,
        cutoff,
        kept,
        removed,
        unscored_kept,
    };
    write_atomic(&out_dir.join("filtered.jsonl"), kept_lines.as_bytes())?;
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| file_err(out_dir, e))?;
    write_atomic(&out_dir.join("filter-manifest.json"), json.as_bytes())?;
    if cutoff.is_finite() {
        write_results(out_dir, summary, scores, &[("cutoff".into(), cutoff)])?;
    }
    Ok(manifest)
}
