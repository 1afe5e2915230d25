//! The arguments of one forward pass besides the tokens, and what it returns.

use std::collections::BTreeMap;

use burn::tensor::Tensor;

use crate::cache::KvCache;
use crate::error::{ModelError, Result};
use crate::lora::{Lora, LoraDropout};
use crate::sites::{CaptureRequest, Reduction, Steering};

/// Which logits a forward call computes. The LM head is a large matmul
/// (vocab 49152 for SmolLM2): skip it when only activations are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// `[n_rows, seq_len, vocab]`.
    All,
    /// `[n_rows, 1, vocab]` at each row's last non-padding token.
    Last,
    /// `[1, n, vocab]` at the `n` positions that predict a response token
    /// ([`crate::Batch::scored_positions`], same order): all a loss or a response
    /// likelihood needs, and much cheaper than `All` when prompts are long
    /// (the LM head and its softmax dominate a training step). The batch
    /// must hold at least one response token.
    Scored,
    /// None; the forward also stops after the highest captured row.
    None,
}

/// Arguments of one forward call besides the tokens.
pub struct ForwardArgs<'a> {
    /// Cache to read past keys/values from and append this chunk's to.
    pub cache: Option<&'a mut KvCache>,
    pub steering: &'a [Steering],
    pub capture: &'a CaptureRequest,
    pub logits: Logits,
    /// LoRA adapters to add to the projections (training, or an unmerged
    /// fine-tuned model).
    pub lora: Option<&'a Lora>,
    /// Dropout on the LoRA branches' inputs: training forwards only.
    pub lora_dropout: Option<LoraDropout>,
}

impl<'a> ForwardArgs<'a> {
    /// No cache, no steering, no capture, all logits.
    pub fn plain() -> ForwardArgs<'static> {
        ForwardArgs {
            cache: None,
            steering: &[],
            capture: &NO_CAPTURE,
            logits: Logits::All,
            lora: None,
            lora_dropout: None,
        }
    }

    /// A capture-only pass: no cache, steering or adapters, no logits (the
    /// pass stops after the highest captured row).
    pub fn capture(capture: &'a CaptureRequest, lora: Option<&'a Lora>) -> Self {
        ForwardArgs {
            cache: None,
            steering: &[],
            capture,
            logits: Logits::None,
            lora,
            lora_dropout: None,
        }
    }

    /// A generation step: continue `cache`, last-position logits, no capture.
    pub fn decode(cache: &'a mut KvCache, steering: &'a [Steering]) -> Self {
        ForwardArgs {
            cache: Some(cache),
            steering,
            capture: &NO_CAPTURE,
            logits: Logits::Last,
            lora: None,
            lora_dropout: None,
        }
    }
}

static NO_CAPTURE: CaptureRequest = CaptureRequest::none();

/// What a forward call returns.
pub struct ForwardOutput {
    /// See [`Logits`]; `None` when not asked for.
    pub logits: Option<Tensor<3>>,
    /// `(row, reduction)` -> `[n_rows, d_model]` for the pooled reductions.
    pub captured: BTreeMap<(usize, Reduction), Tensor<2>>,
    /// `row` -> `[n_rows, seq_len, d_model]` for [`Reduction::Full`].
    pub full: BTreeMap<usize, Tensor<3>>,
    /// Tokens each row averaged over, per reduction (0 = empty set: the
    /// captured row is zero and must not be used as a mean).
    pub counts: BTreeMap<Reduction, Vec<usize>>,
}

impl ForwardOutput {
    /// Joins the outputs of consecutive row groups of one batch.
    pub(super) fn concat_rows(parts: Vec<ForwardOutput>, logits: Logits) -> ForwardOutput {
        let mut logit_parts = Vec::new();
        let mut captured: BTreeMap<(usize, Reduction), Vec<Tensor<2>>> = BTreeMap::new();
        let mut full: BTreeMap<usize, Vec<Tensor<3>>> = BTreeMap::new();
        let mut counts: BTreeMap<Reduction, Vec<usize>> = BTreeMap::new();
        for p in parts {
            logit_parts.extend(p.logits);
            for (k, t) in p.captured {
                captured.entry(k).or_default().push(t);
            }
            for (k, t) in p.full {
                full.entry(k).or_default().push(t);
            }
            for (k, c) in p.counts {
                counts.entry(k).or_default().extend(c);
            }
        }
        // Scored logits are `[1, n, vocab]` in row-major order: rows follow
        // along dim 1. Every other output has rows on dim 0.
        let logit_dim = if logits == Logits::Scored { 1 } else { 0 };
        ForwardOutput {
            logits: (!logit_parts.is_empty()).then(|| Tensor::cat(logit_parts, logit_dim)),
            captured: captured
                .into_iter()
                .map(|(k, ts)| (k, Tensor::cat(ts, 0)))
                .collect(),
            full: full
                .into_iter()
                .map(|(k, ts)| (k, Tensor::cat(ts, 0)))
                .collect(),
            counts,
        }
    }
}

/// Copies a tensor's values to the host.
pub fn host_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Data(format!("{e:?}")))
}
