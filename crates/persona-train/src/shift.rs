//! The projection shift during training: how far the model's mean
//! last-prompt-token activation on a trait's monitor prompts has moved along
//! the trait's unit vector, relative to the base model.

use std::path::Path;

use burn::tensor::Tensor;
use persona_model::{
    Batch, CaptureRequest, ForwardArgs, Lora, Message, Model, PadSide, Reduction, Sequence,
    TextCodec, host_vec,
};
use persona_vectors::{Variant, VectorFile};

use crate::error::Result;

/// One monitored trait: its prompts, unit vectors and the base model's means.
pub struct ShiftMonitor {
    pub name: String,
    /// Rows monitored.
    pub rows: Vec<usize>,
    batch: Batch,
    /// `v̂_row` per row, `[d_model]` each.
    units: Vec<Vec<f32>>,
    /// Base model's mean last-prompt-token activation per row.
    base: Vec<Vec<f32>>,
}

impl ShiftMonitor {
    /// Builds the monitor and measures the base model (no adapters, no steering).
    pub fn new(
        name: &str,
        vector: &VectorFile,
        questions: &Path,
        rows: &[usize],
        model: &Model,
        codec: &TextCodec,
    ) -> Result<Self> {
        let mut seqs = Vec::new();
        for q in persona_vectors::traits::read_questions(questions)? {
            let prompt = codec.prompt_ids(&[Message::user(q.as_str())])?;
            seqs.push(Sequence {
                prompt,
                response: vec![],
            });
        }
        let batch = Batch::new(&seqs, PadSide::Right, codec.pad_id)?;
        let units = rows
            .iter()
            .map(|&r| vector.unit_row(Variant::ResponseAvg, r))
            .collect::<std::result::Result<_, _>>()?;
        let mut m = Self {
            name: name.to_string(),
            rows: rows.to_vec(),
            batch,
            units,
            base: vec![],
        };
        m.base = m.means(model, None)?;
        Ok(m)
    }

    /// Mean last-prompt-token activation per monitored row, `[d_model]` each.
    fn means(&self, model: &Model, lora: Option<&Lora>) -> Result<Vec<Vec<f32>>> {
        let req = CaptureRequest::new(self.rows.iter().copied(), &[Reduction::LastPrompt]);
        let out = model.forward(&self.batch, ForwardArgs::capture(&req, lora))?;
        self.rows
            .iter()
            .map(|r| {
                let t: Tensor<2> = out.captured[&(*r, Reduction::LastPrompt)].clone();
                Ok(host_vec(t.mean_dim(0).detach())?)
            })
            .collect()
    }

    /// `shift_row = (mean_now - mean_base) . v̂_row` for the current adapters
    /// (steering off: monitoring always sees the unsteered model).
    pub fn shifts(&self, model: &Model, lora: &Lora) -> Result<Vec<f64>> {
        let detached = lora.detached();
        let now = self.means(model, Some(&detached))?;
        Ok(now
            .iter()
            .zip(&self.base)
            .zip(&self.units)
            .map(|((n, b), u)| {
                n.iter()
                    .zip(b)
                    .zip(u)
                    .map(|((n, b), u)| ((n - b) * u) as f64)
                    .sum()
            })
            .collect())
    }
}
