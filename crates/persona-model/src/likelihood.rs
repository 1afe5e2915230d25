//! How likely the model finds a response: next-token targets of a batch and
//! the summed log-probability of each row's response tokens. Training uses
//! the targets for its loss; the offline coherence judge and the capability
//! measures use the log-probabilities.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::Result;
use crate::lora::Lora;
use crate::model::{ForwardArgs, Logits, Model, host_vec};
use crate::sites::{Batch, CaptureRequest, PadSide, Role, Sequence, Steering};

/// Next-token targets and loss weights of a right-padded batch: position `s`
/// predicts token `s + 1` and counts only when that token is a response
/// token. Returns `(targets [n], weights [n], count)` row-major `[b, s]`.
pub fn loss_targets(batch: &Batch) -> (Vec<i64>, Vec<f32>, usize) {
    let (b_n, s_n) = (batch.n_rows, batch.seq_len);
    let mut targets = vec![0i64; b_n * s_n];
    let mut weights = vec![0f32; b_n * s_n];
    let mut count = 0;
    for b in 0..b_n {
        for s in 0..s_n.saturating_sub(1) {
            let next = b * s_n + s + 1;
            if batch.roles[next] == Role::Response {
                targets[b * s_n + s] = batch.ids[next] as i64;
                weights[b * s_n + s] = 1.0;
                count += 1;
            }
        }
    }
    (targets, weights, count)
}

/// Log-probability of each target, weighted (0 off the response).
///
/// # Shapes
/// `logits`: `[b, s, vocab]` -> `[b, s, 1]`
pub fn weighted_target_logprobs(logits: Tensor<3>, batch: &Batch) -> Tensor<3> {
    let (targets, weights, _) = loss_targets(batch);
    target_logprobs(logits, batch, targets, weights)
}

/// [`weighted_target_logprobs`] with the targets and weights of
/// [`loss_targets`] already at hand.
fn target_logprobs(
    logits: Tensor<3>,
    batch: &Batch,
    targets: Vec<i64>,
    weights: Vec<f32>,
) -> Tensor<3> {
    let (b_n, s_n) = (batch.n_rows, batch.seq_len);
    let device = logits.device();
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [b_n, s_n, 1]), &device);
    let weights = Tensor::<3>::from_data(TensorData::new(weights, [b_n, s_n, 1]), &device);
    log_softmax(logits, 2).gather(2, targets) * weights
}

/// The log-likelihood of one sequence's response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResponseLikelihood {
    /// Sum of `ln p(token | everything before it)` over the response tokens.
    pub sum_logprob: f64,
    /// Number of response tokens scored (the first response token is scored
    /// from the last prompt token; a sequence without a prompt scores one
    /// token fewer).
    pub n_tokens: usize,
}

impl ResponseLikelihood {
    /// Mean log-probability per token; `None` for an empty response.
    pub fn mean_logprob(&self) -> Option<f64> {
        (self.n_tokens > 0).then(|| self.sum_logprob / self.n_tokens as f64)
    }
}

/// Scores the response tokens of every sequence (teacher-forced, with
/// `steering` applied, e.g. post-hoc steering at [`Positions::Generating`]
/// to measure its cost), `batch_size` sequences per forward, in input order.
/// `progress(done)` is called after each batch.
///
/// [`Positions::Generating`]: crate::sites::Positions::Generating
pub fn response_likelihoods(
    model: &Model,
    lora: Option<&Lora>,
    steering: &[Steering],
    seqs: &[Sequence],
    batch_size: usize,
    pad_id: u32,
    mut progress: impl FnMut(usize),
) -> Result<Vec<ResponseLikelihood>> {
    let none = CaptureRequest::none();
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size.max(1)) {
        let batch = Batch::new(chunk, PadSide::Right, pad_id)?;
        let logits = model
            .forward(
                &batch,
                ForwardArgs {
                    cache: None,
                    steering,
                    capture: &none,
                    logits: Logits::All,
                    lora,
                },
            )?
            .logits
            .expect("asked for logits");
        let (targets, weights, _) = loss_targets(&batch);
        let counts: Vec<usize> = weights
            .chunks(batch.seq_len)
            .map(|row| row.iter().filter(|w| **w > 0.0).count())
            .collect();
        let lp = target_logprobs(logits, &batch, targets, weights).sum_dim(1); // # (b, 1, 1)
        for (sum, n_tokens) in host_vec(lp)?.into_iter().zip(counts) {
            out.push(ResponseLikelihood {
                sum_logprob: sum as f64,
                n_tokens,
            });
        }
        progress(out.len());
    }
    Ok(out)
}
