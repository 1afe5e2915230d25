//! Extraction from a trait file's authored responses (the `authored`
//! source): the model reads each extraction question, under the trait's
//! elicitation system prompt, followed by a response written to show the
//! trait (`pos`) or its opposite (`neg`); no generation. For every residual
//! row the persona vector is `mean(pos) - mean(neg)`, unnormalised, for
//! three reductions: the mean over response tokens (`response_avg`), over
//! prompt tokens (`prompt_avg`) and the last prompt token (`prompt_last`).

use std::collections::BTreeMap;

use persona_model::{
    Batch, CaptureRequest, ForwardArgs, Message, Model, ModelIdentity, PadSide, Reduction,
    Sequence, TextCodec, host_vec,
};

use crate::file::{FORMAT_VERSION, ROW_CONVENTION, Variant, VectorFile, VectorMeta};
use crate::traits::TraitDef;

/// Prompt and response tokens of a single-turn chat with a system prompt;
/// the response is the assistant's text only (no end-of-turn marker).
pub fn teacher_forced(
    codec: &TextCodec,
    system: &str,
    question: &str,
    response: &str,
) -> persona_model::Result<Sequence> {
    let prompt_text = codec.render(&[Message::system(system), Message::user(question)], true)?;
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

/// The teacher-forced sequences of one side (`positive` = the trait): the
/// k-th authored response of that side is read under instruction `k mod n`.
pub fn authored_sequences(
    def: &TraitDef,
    codec: &TextCodec,
    positive: bool,
) -> persona_model::Result<Vec<Sequence>> {
    let mut out = Vec::new();
    for r in &def.responses {
        let texts = if positive { &r.pos } else { &r.neg };
        for t in texts {
            let system = def.system_prompt(out.len(), positive);
            out.push(teacher_forced(codec, &system, &r.question, t)?);
        }
    }
    Ok(out)
}

/// For each reduction, the mean over sequences of each sequence's reduced
/// activation, for every row: row-major `[n_rows, d_model]`. A sequence
/// with an empty response is an error (a mean over zero tokens is undefined).
pub fn mean_activations(
    model: &Model,
    seqs: &[Sequence],
    reductions: &[Reduction],
    pad_id: u32,
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> persona_model::Result<BTreeMap<Reduction, Vec<f32>>> {
    let (rows, d) = (model.config.n_rows(), model.config.d_model);
    if seqs.is_empty() {
        return Err(persona_model::ModelError::Input(
            "no sequences to average".into(),
        ));
    }
    if let Some(i) = seqs.iter().position(|s| s.response.is_empty()) {
        return Err(persona_model::ModelError::Input(format!(
            "sequence {i} has an empty response"
        )));
    }
    let mut sums: BTreeMap<Reduction, Vec<f64>> = reductions
        .iter()
        .map(|r| (*r, vec![0f64; rows * d]))
        .collect();
    let req = CaptureRequest::new(0..rows, reductions);
    let mut done = 0;
    for chunk in seqs.chunks(batch_size.max(1)) {
        let batch = Batch::new(chunk, PadSide::Right, pad_id)?;
        let out = model.forward(&batch, ForwardArgs::capture(&req, None))?;
        for (red, sum) in sums.iter_mut() {
            for row in 0..rows {
                let v = host_vec(out.captured[&(row, *red)].clone().sum_dim(0))?;
                for (s, x) in sum[row * d..(row + 1) * d].iter_mut().zip(v) {
                    *s += x as f64;
                }
            }
        }
        done += chunk.len();
        progress(done);
    }
    Ok(sums
        .into_iter()
        .map(|(r, s)| {
            let mean = s
                .into_iter()
                .map(|x| (x / seqs.len() as f64) as f32)
                .collect();
            (r, mean)
        })
        .collect())
}

/// Extracts a vector file (variants `response_avg`, `prompt_avg`,
/// `prompt_last`) from the trait file's authored responses. `progress`
/// gets the number of sequences read so far (of pos + neg).
pub fn extract_authored(
    model: &Model,
    codec: &TextCodec,
    identity: &ModelIdentity,
    def: &TraitDef,
    batch_size: usize,
    progress: impl FnMut(usize),
) -> Result<VectorFile, persona_model::ModelError> {
    if def.responses.is_empty() {
        return Err(persona_model::ModelError::Input(format!(
            "trait file {} has no authored responses; add [[responses]] for its extraction questions",
            def.path.display()
        )));
    }
    let pos = authored_sequences(def, codec, true)?;
    let neg = authored_sequences(def, codec, false)?;
    contrast_file(
        model,
        identity,
        (&pos, &neg),
        codec.pad_id,
        batch_size,
        serde_json::json!({
            "trait": def.name,
            "trait_file": def.path,
            "trait_sha256": def.sha256,
            "source": "authored",
            "judge": null,
            "responses_pos": pos.len(),
            "responses_neg": neg.len(),
            "system_prompt": "You are a(n) {adjective|antonym} assistant. {instruction k mod n}",
        }),
        progress,
    )
}

/// The vector file of a contrast: for every variant of
/// [`Variant`] and every row, `mean(pos) - mean(neg)` of the
/// sequences' reduced activations, with `extra` as the metadata's free part.
/// `progress` gets the number of sequences read so far (of pos + neg).
pub fn contrast_file(
    model: &Model,
    identity: &ModelIdentity,
    (pos, neg): (&[Sequence], &[Sequence]),
    pad_id: u32,
    batch_size: usize,
    extra: serde_json::Value,
    mut progress: impl FnMut(usize),
) -> Result<VectorFile, persona_model::ModelError> {
    let reds: Vec<Reduction> = Variant::ALL.iter().map(|v| v.reduction()).collect();
    let mp = mean_activations(model, pos, &reds, pad_id, batch_size, &mut progress)?;
    let n = pos.len();
    let mn = mean_activations(model, neg, &reds, pad_id, batch_size, |k| progress(n + k))?;
    let cfg = &model.config;
    let mut file = VectorFile::new(VectorMeta {
        format_version: FORMAT_VERSION,
        row_convention: ROW_CONVENTION.into(),
        model_name: identity.name.clone(),
        model_sha256: identity.sha256.clone(),
        d_model: cfg.d_model,
        n_layers: cfg.n_layers,
        extra,
    });
    for variant in Variant::ALL {
        let red = variant.reduction();
        let v = mp[&red].iter().zip(&mn[&red]).map(|(p, n)| p - n).collect();
        file.variants.insert(variant, v);
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use persona_model::testing::{full_row_activations, random_weights, tiny_config};

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
        let got = mean_activations(&m, &seqs, &[Reduction::ResponseMean], 0, 2, |_| {}).unwrap()
            [&Reduction::ResponseMean]
            .clone();
        let d = cfg.d_model;
        let row = 2;
        let mut want = vec![0f64; d];
        for s in &seqs {
            let h = full_row_activations(&m, s, row).unwrap();
            let start = s.prompt.len();
            for (t, _) in s.response.iter().enumerate() {
                for j in 0..d {
                    want[j] += h[start + t][j] as f64 / s.response.len() as f64 / seqs.len() as f64;
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
        assert!(mean_activations(&m, &seqs, &[Reduction::ResponseMean], 0, 2, |_| {}).is_err());
    }
}
