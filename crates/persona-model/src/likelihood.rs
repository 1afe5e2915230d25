//! How likely the model finds a response: the log-probability of each
//! response token ([`scored_logprobs`], the training loss) and their sum per
//! sequence ([`response_likelihoods`], used by the offline coherence judge
//! and the capability measures).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::Result;
use crate::lora::Lora;
use crate::model::{ForwardArgs, Logits, Model, host_vec};
use crate::sites::{Batch, CaptureRequest, PadSide, Sequence, Steering};

/// Log-probability of each scored target.
///
/// # Shapes
/// `logits`: `[1, n, vocab]` from [`Logits::Scored`]; `scored`: the batch's
/// [`Batch::scored_positions`] (`n` of them) -> `[n]`
pub fn scored_logprobs(logits: Tensor<3>, scored: &[(usize, u32)]) -> Tensor<1> {
    let n = scored.len();
    let device = logits.device();
    let targets: Vec<i64> = scored.iter().map(|&(_, t)| t as i64).collect();
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [1, n, 1]), &device);
    log_softmax(logits, 2).gather(2, targets).reshape([n])
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
        let scored = batch.scored_positions();
        // (sum of log-probabilities, tokens) per row of the chunk.
        let mut rows = vec![(0f64, 0usize); chunk.len()];
        if !scored.is_empty() {
            let logits = model
                .forward(
                    &batch,
                    ForwardArgs {
                        cache: None,
                        steering,
                        capture: &none,
                        logits: Logits::Scored,
                        lora,
                        lora_dropout: None,
                    },
                )?
                .logits
                .expect("asked for logits");
            let lp = host_vec(scored_logprobs(logits, &scored))?;
            for (&(pos, _), l) in scored.iter().zip(lp) {
                let row = &mut rows[pos / batch.seq_len];
                row.0 += l as f64;
                row.1 += 1;
            }
        }
        out.extend(
            rows.into_iter()
                .map(|(sum_logprob, n_tokens)| ResponseLikelihood {
                    sum_logprob,
                    n_tokens,
                }),
        );
        progress(out.len());
    }
    Ok(out)
}
