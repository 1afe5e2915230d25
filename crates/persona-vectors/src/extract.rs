//! Extraction from authored contrast pairs (the `authored` source): the
//! model reads a question with a response that shows the trait and one that
//! shows its opposite (teacher-forced, no generation); the persona vector is
//! the difference of the mean response activations, per row, unnormalised:
//! `v_l = mean(pos) - mean(neg)`.

use std::path::Path;

use persona_model::{
    Batch, CaptureRequest, ForwardArgs, Message, Model, ModelConfig, ModelIdentity, PadSide,
    Reduction, Sequence, TextCodec, host_vec,
};
use serde::Deserialize;

use crate::file::{FORMAT_VERSION, ROW_CONVENTION, VectorError, VectorFile, VectorMeta};

/// One authored contrast: the same question answered with the trait (`pos`)
/// and with its opposite (`neg`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContrastPair {
    pub question: String,
    pub pos: String,
    pub neg: String,
}

/// Reads a JSONL file of [`ContrastPair`]s.
pub fn read_pairs(path: &Path) -> Result<Vec<ContrastPair>, VectorError> {
    let err = |reason: String| VectorError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let pairs: Vec<ContrastPair> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| err(format!("line {}: {e}", i + 1))))
        .collect::<Result<_, _>>()?;
    if pairs.is_empty() {
        return Err(err("no contrast pairs".into()));
    }
    Ok(pairs)
}

/// Prompt and response tokens of a single-turn chat; the response is the
/// assistant's text only (no end-of-turn marker).
pub fn teacher_forced(
    codec: &TextCodec,
    question: &str,
    response: &str,
) -> persona_model::Result<Sequence> {
    let prompt_text = codec.render(&[Message::user(question)], true)?;
    let prompt = codec.encode(&prompt_text)?;
    let full = codec.encode(&format!("{prompt_text}{response}"))?;
    if !full.starts_with(&prompt) {
        return Err(persona_model::ModelError::Template(
            "prompt tokens are not a prefix of prompt + response".into(),
        ));
    }
    Ok(Sequence {
        prompt: full[..prompt.len()].to_vec(),
        response: full[prompt.len()..].to_vec(),
    })
}

/// Mean over sequences of each sequence's mean response activation, for
/// every row: row-major `[n_rows, d_model]`. Sequences with an empty
/// response are an error (a mean over zero tokens is undefined).
pub fn mean_response_activations(
    model: &Model,
    seqs: &[Sequence],
    pad_id: u32,
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> persona_model::Result<Vec<f32>> {
    let cfg: &ModelConfig = &model.config;
    let (rows, d) = (cfg.n_rows(), cfg.d_model);
    if let Some(i) = seqs.iter().position(|s| s.response.is_empty()) {
        return Err(persona_model::ModelError::Input(format!(
            "sequence {i} has an empty response"
        )));
    }
    let mut sum = vec![0f64; rows * d];
    let req = CaptureRequest::new(0..rows, &[Reduction::ResponseMean]);
    let mut done = 0;
    for chunk in seqs.chunks(batch_size.max(1)) {
        let batch = Batch::new(chunk, PadSide::Right, pad_id)?;
        let out = model.forward(&batch, ForwardArgs::capture(&req, None))?;
        for row in 0..rows {
            let v = host_vec(
                out.captured[&(row, Reduction::ResponseMean)]
                    .clone()
                    .sum_dim(0),
            )?;
            for (s, x) in sum[row * d..(row + 1) * d].iter_mut().zip(v) {
                *s += x as f64;
            }
        }
        done += chunk.len();
        progress(done);
    }
    Ok(sum
        .into_iter()
        .map(|s| (s / seqs.len() as f64) as f32)
        .collect())
}

/// Extracts a vector file (variant `response_avg`) from authored pairs.
pub fn extract_authored(
    model: &Model,
    codec: &TextCodec,
    identity: &ModelIdentity,
    trait_name: &str,
    pairs: &[ContrastPair],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Result<VectorFile, persona_model::ModelError> {
    let pos: Vec<Sequence> = pairs
        .iter()
        .map(|p| teacher_forced(codec, &p.question, &p.pos))
        .collect::<Result<_, _>>()?;
    let neg: Vec<Sequence> = pairs
        .iter()
        .map(|p| teacher_forced(codec, &p.question, &p.neg))
        .collect::<Result<_, _>>()?;
    let mp = mean_response_activations(model, &pos, codec.pad_id, batch_size, &mut progress)?;
    let n = pos.len();
    let mn = mean_response_activations(model, &neg, codec.pad_id, batch_size, |k| progress(n + k))?;
    let cfg = &model.config;
    let mut file = VectorFile::new(VectorMeta {
        format_version: FORMAT_VERSION,
        row_convention: ROW_CONVENTION.into(),
        model_name: identity.name.clone(),
        model_sha256: identity.sha256.clone(),
        d_model: cfg.d_model,
        n_layers: cfg.n_layers,
        extra: serde_json::json!({"trait": trait_name, "source": "authored", "pairs": pairs.len()}),
    });
    file.variants.insert(
        "response_avg".into(),
        mp.iter().zip(&mn).map(|(p, n)| p - n).collect(),
    );
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use persona_model::Logits;
    use persona_model::testing::{random_weights, tiny_config};

    /// The mean-diff against a hand computation from full captures.
    #[test]
    fn mean_of_response_means_matches_hand_computation() {
        let cfg = tiny_config();
        let m =
            Model::from_weights(cfg.clone(), &random_weights(&cfg, 2), &Device::flex()).unwrap();
        let seqs = vec![
            Sequence {
                prompt: vec![1, 2],
                response: vec![3, 4, 5],
            },
            Sequence {
                prompt: vec![6],
                response: vec![7],
            },
            Sequence {
                prompt: vec![8, 9, 10],
                response: vec![11, 12],
            },
        ];
        let got = mean_response_activations(&m, &seqs, 0, 2, |_| {}).unwrap();
        let d = cfg.d_model;
        let row = 2;
        let mut want = vec![0f64; d];
        for s in &seqs {
            let b = Batch::new(std::slice::from_ref(s), PadSide::Right, 0).unwrap();
            let req = CaptureRequest::new([row], &[Reduction::Full]);
            let out = m
                .forward(
                    &b,
                    ForwardArgs {
                        cache: None,
                        steering: &[],
                        capture: &req,
                        logits: Logits::None,
                        lora: None,
                    },
                )
                .unwrap();
            let h = out.full[&row]
                .clone()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap();
            let start = s.prompt.len();
            for (t, _) in s.response.iter().enumerate() {
                for j in 0..d {
                    want[j] +=
                        h[(start + t) * d + j] as f64 / s.response.len() as f64 / seqs.len() as f64;
                }
            }
        }
        for j in 0..d {
            assert!((got[row * d + j] as f64 - want[j]).abs() < 1e-5, "dim {j}");
        }
    }

    #[test]
    fn empty_responses_are_refused() {
        let cfg = tiny_config();
        let m =
            Model::from_weights(cfg.clone(), &random_weights(&cfg, 2), &Device::flex()).unwrap();
        let seqs = vec![Sequence {
            prompt: vec![1, 2],
            response: vec![],
        }];
        assert!(mean_response_activations(&m, &seqs, 0, 2, |_| {}).is_err());
    }
}
