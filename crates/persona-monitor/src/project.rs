//! Projections of residual activations on a persona vector's unit
//! direction `v̂_row`, for many sequences at once.

use persona_model::{
    Batch, CaptureRequest, ForwardArgs, Model, PadSide, Reduction, Sequence, host_vec,
};
use serde::{Deserialize, Serialize};

use crate::error::{MonitorError, Result};

/// Where one sequence's activation at the monitored row points along `v̂`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// `h_row(last prompt token) · v̂`.
    pub last_prompt: f64,
    /// `mean over response tokens of h_row · v̂`; `None` without response tokens.
    pub response_mean: Option<f64>,
}

/// Projects activations at one residual row on one unit vector.
pub struct Projector<'a> {
    model: &'a Model,
    row: usize,
    /// `v̂_row`, `[d_model]`.
    unit: Vec<f32>,
    pad_id: u32,
    batch_size: usize,
}

impl<'a> Projector<'a> {
    /// `unit` must be `v̂_row` (see `VectorFile::unit_row`) and `row` a valid
    /// residual row of `model` (0 = embeddings, l = output of block l-1).
    pub fn new(
        model: &'a Model,
        row: usize,
        unit: Vec<f32>,
        pad_id: u32,
        batch_size: usize,
    ) -> Result<Self> {
        let cfg = &model.config;
        if row > cfg.n_layers {
            return Err(MonitorError::Input(format!(
                "row {row} is out of range: the model has rows 0..={} (row 0 = embedding output, row l = output of block l-1)",
                cfg.n_layers
            )));
        }
        if unit.len() != cfg.d_model {
            return Err(MonitorError::Input(format!(
                "the vector has width {} but the model's d_model is {}",
                unit.len(),
                cfg.d_model
            )));
        }
        Ok(Self {
            model,
            row,
            unit,
            pad_id,
            batch_size: batch_size.max(1),
        })
    }

    pub fn row(&self) -> usize {
        self.row
    }

    /// The model it projects with.
    pub fn model(&self) -> &'a Model {
        self.model
    }

    fn dot(&self, h: &[f32]) -> f64 {
        h.iter()
            .zip(&self.unit)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum()
    }

    /// One projection per sequence, in order; `progress` gets the number done.
    pub fn project(
        &self,
        seqs: &[Sequence],
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<Projection>> {
        let d = self.unit.len();
        let req = CaptureRequest::new(
            [self.row],
            &[Reduction::LastPrompt, Reduction::ResponseMean],
        );
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(self.batch_size) {
            let batch = Batch::new(chunk, PadSide::Right, self.pad_id)?;
            let fwd = self
                .model
                .forward(&batch, ForwardArgs::capture(&req, None))?;
            let last = host_vec(fwd.captured[&(self.row, Reduction::LastPrompt)].clone())?;
            let resp = host_vec(fwd.captured[&(self.row, Reduction::ResponseMean)].clone())?;
            let counts = &fwd.counts[&Reduction::ResponseMean];
            for b in 0..chunk.len() {
                out.push(Projection {
                    last_prompt: self.dot(&last[b * d..(b + 1) * d]),
                    response_mean: (counts[b] > 0).then(|| self.dot(&resp[b * d..(b + 1) * d])),
                });
            }
            progress(out.len());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::screen::score;
    use persona_model::Message;
    use persona_model::testing::{full_row_activations, random_weights, test_device, tiny_config};
    use persona_train::data::ChatRecord;

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    /// ΔP and the cheap variant against a hand computation: per-position
    /// activations from a full capture, averaged and projected on the host.
    #[test]
    fn delta_p_matches_hand_computation() {
        let cfg = tiny_config();
        let m = Model::from_weights(cfg.clone(), &random_weights(&cfg, 5), &test_device()).unwrap();
        let row = 2;
        let raw: Vec<f32> = (0..cfg.d_model)
            .map(|i| ((i * 7 % 11) as f32) - 5.0)
            .collect();
        let unit = persona_vectors::unit(&raw).unwrap();
        // The dataset's response (3 tokens) and the base model's (2 tokens)
        // to the same 4-token prompt, plus an unrelated sequence in the batch.
        let data = Sequence {
            prompt: vec![5, 6, 7, 8],
            response: vec![20, 21, 22],
        };
        let base = Sequence {
            prompt: vec![5, 6, 7, 8],
            response: vec![30, 31],
        };
        let other = Sequence {
            prompt: vec![1],
            response: vec![2, 3, 4, 9, 10, 11],
        };
        let p = Projector::new(&m, row, unit.clone(), 0, 3).unwrap();
        let proj = p
            .project(&[data.clone(), other, base.clone()], |_| {})
            .unwrap();

        let hd = full_row_activations(&m, &data, row).unwrap();
        let hb = full_row_activations(&m, &base, row).unwrap();
        let mean_proj = |h: &[Vec<f32>], from: usize, n: usize| {
            (from..from + n).map(|t| dot(&h[t], &unit)).sum::<f64>() / n as f64
        };
        let want_data = mean_proj(&hd, 4, 3);
        let want_base = mean_proj(&hb, 4, 2);
        let want_last = dot(&hd[3], &unit);

        let rec = ChatRecord {
            line: 7,
            raw: String::new(),
            messages: vec![Message::user("q"), Message::assistant("a")],
            label: Some(true),
        };
        let s = score(&rec, proj[0], Some(proj[2]));
        let tol = 1e-4 * (1.0 + want_data.abs());
        assert!(
            (s.delta_p.unwrap() - (want_data - want_base)).abs() < tol,
            "{s:?}"
        );
        assert!(
            (s.cheap.unwrap() - (want_data - want_last)).abs() < tol,
            "{s:?}"
        );
        assert_eq!((s.line, s.label), (7, Some(true)));
        // No base response: no ΔP, the cheap variant stays.
        let s = score(&rec, proj[0], None);
        assert!(s.delta_p.is_none() && s.cheap.is_some());
    }

    #[test]
    fn rows_and_widths_are_checked() {
        let cfg = tiny_config();
        let m = Model::from_weights(cfg.clone(), &random_weights(&cfg, 5), &test_device()).unwrap();
        let unit = vec![0.0; cfg.d_model];
        assert!(Projector::new(&m, cfg.n_layers + 1, unit.clone(), 0, 1).is_err());
        assert!(Projector::new(&m, 0, vec![1.0; 3], 0, 1).is_err());
        assert!(Projector::new(&m, cfg.n_layers, unit, 0, 1).is_ok());
    }
}
