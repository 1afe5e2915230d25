//! The range of activation capping, measured on the base model: the
//! quantiles of its per-token projections on `v̂_row` over the responses
//! of ordinary, trait-free chat (the capability `chat` file), so a cap at
//! the 95th percentile leaves 95% of such tokens untouched.

use std::path::Path;

use burn::tensor::Device;
use persona_model::{Batch, CaptureRequest, ForwardArgs, PadSide, Reduction, Role};
use persona_model::{WeightDtype, host_vec};
use persona_monitor::stats::quantile;
use persona_vectors::{Variant, VectorFile};

use crate::capability::{chat_sequences, read_chat};
use crate::error::{EvalError, Result};

/// The base model's per-token projections on `v̂_row` over the assistant
/// responses of the chat JSONL `data` (teacher-forced, no steering), in
/// batches of `batch_size`.
pub fn response_projections(
    model: &str,
    dtype: WeightDtype,
    (vector, row): (&Path, usize),
    data: &Path,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<f64>> {
    let loaded = persona_model::load_as(model, device, dtype)?;
    let file = VectorFile::load(vector)?;
    file.check_model(&loaded.model.config, &loaded.identity)?;
    let unit = file.unit_row(Variant::ResponseAvg, row)?;
    let seqs = chat_sequences(&loaded, &read_chat(data)?)?;
    let request = CaptureRequest::new([row], &[Reduction::Full]);
    let d = unit.len();
    let mut out = Vec::new();
    for chunk in seqs.chunks(batch_size.max(1)) {
        let batch = Batch::new(chunk, PadSide::Right, loaded.codec.pad_id)?;
        let pass = loaded
            .model
            .forward(&batch, ForwardArgs::capture(&request, None))?;
        let full = host_vec(pass.full[&row].clone())?;
        for (h, role) in full.chunks(d).zip(&batch.roles) {
            if *role == Role::Response {
                out.push(
                    h.iter()
                        .zip(&unit)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum(),
                );
            }
        }
    }
    Ok(out)
}

/// The value at quantile `q` of `projections`, as a cap's upper bound.
pub fn upper_bound(projections: &[f64], q: f64) -> Result<f32> {
    if !(0.0..=1.0).contains(&q) {
        return Err(EvalError::Input(format!(
            "cap quantile {q} is not in [0, 1]"
        )));
    }
    quantile(projections, q)
        .map(|v| v as f32)
        .ok_or_else(|| EvalError::Input("no response tokens to measure a cap on".into()))
}
