//! Persona monitoring of served answers: the projection of the last
//! prompt token and the mean over the answer's tokens on a vector's unit
//! direction, at its row.
//!
//! Measured after the answer, in one capture pass over prompt and answer
//! with the request's steering (what the served model computed). The
//! prompt's number is the one `persona monitor` reports for the same
//! prompt; the answer's mean covers every generated token, the stop token
//! included.

use std::collections::BTreeSet;

use persona_model::{
    Batch, CaptureRequest, ForwardArgs, LoadedModel, PadSide, Reduction, Sequence, host_vec,
};
use serde::Serialize;

use crate::engine::Job;

/// A monitored vector of a request.
#[derive(Debug, Clone)]
pub struct Monitor {
    /// The name the request used.
    pub name: String,
    pub row: usize,
    /// The unit vector `[d_model]`.
    pub unit: Vec<f32>,
    pub per_token: bool,
}

/// The projections of one answer on one monitored vector.
#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    #[serde(skip)]
    pub name: String,
    pub row: usize,
    pub prompt_last: f64,
    /// `None` for an empty answer.
    pub response_mean: Option<f64>,
    /// Per answer token, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_token: Option<Vec<f64>>,
}

/// The projections of an answer (`tokens`, as generated) on the job's
/// monitored vectors; empty when none are.
pub fn project(
    m: &LoadedModel,
    job: &Job,
    tokens: &[u32],
) -> persona_model::Result<Vec<Projection>> {
    if job.monitors.is_empty() {
        return Ok(Vec::new());
    }
    let seq = Sequence {
        prompt: job.prompt.clone(),
        response: tokens.to_vec(),
    };
    let batch = Batch::new(&[seq], PadSide::Right, m.codec.pad_id)?;
    let rows: BTreeSet<usize> = job.monitors.iter().map(|mo| mo.row).collect();
    let mut reductions = vec![Reduction::LastPrompt, Reduction::ResponseMean];
    if job.monitors.iter().any(|mo| mo.per_token) {
        reductions.push(Reduction::Full);
    }
    let request = CaptureRequest::new(rows, &reductions);
    let args = ForwardArgs {
        steering: &job.steering,
        ..ForwardArgs::capture(&request, None)
    };
    let out = m.model.forward(&batch, args)?;
    let answer_tokens = out
        .counts
        .get(&Reduction::ResponseMean)
        .and_then(|c| c.first().copied())
        .unwrap_or(0);
    let d = m.model.config.d_model;
    job.monitors
        .iter()
        .map(|mo| {
            let pooled = |r: Reduction| -> persona_model::Result<f64> {
                let h = host_vec(out.captured[&(mo.row, r)].clone())?;
                Ok(dot(&h, &mo.unit))
            };
            let per_token = if mo.per_token {
                let h = host_vec(out.full[&mo.row].clone())?;
                let first = job.prompt.len();
                Some(
                    (first..first + tokens.len())
                        .map(|s| dot(&h[s * d..(s + 1) * d], &mo.unit))
                        .collect(),
                )
            } else {
                None
            };
            Ok(Projection {
                name: mo.name.clone(),
                row: mo.row,
                prompt_last: pooled(Reduction::LastPrompt)?,
                response_mean: match answer_tokens {
                    0 => None,
                    _ => Some(pooled(Reduction::ResponseMean)?),
                },
                per_token,
            })
        })
        .collect()
}

/// `a . b` in f64, as `persona monitor` computes it.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}
