//! The one-sided projection penalty (`[penalty]`, BLOCK-EM): during
//! training, movement of the residual along a persona vector beyond the
//! frozen model's own projection for the same token costs
//! `lambda * relu(p_now - p_base)^2`, averaged over response tokens and
//! (row, vector) pairs. Movement against the vector is free.

use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use persona_model::{Batch, CaptureRequest, ForwardArgs, Model, Reduction, Role};
use persona_vectors::VectorFile;

use crate::error::Result;
use crate::recipe::Recipe;

/// The penalty of a run: its weight and, per penalised row, the unit
/// vectors of its traits.
pub struct Penalty {
    pub lambda: f64,
    /// `(row, units)` with `units`: `[d_model, n_vectors]`, one unit vector
    /// per column.
    rows: Vec<(usize, Tensor<2>)>,
}

impl Penalty {
    /// The recipe's `[penalty]`; none without one.
    pub fn of_recipe(recipe: &Recipe, device: &Device) -> Result<Option<Self>> {
        let Some(p) = &recipe.penalty else {
            return Ok(None);
        };
        let files: Vec<VectorFile> = p
            .vectors
            .iter()
            .map(|v| VectorFile::load(v))
            .collect::<std::result::Result<_, _>>()?;
        let mut rows = Vec::new();
        for &row in &p.layers {
            let mut directions = Vec::new();
            for f in &files {
                directions.push(f.unit_row(p.variant, row)?);
            }
            rows.push((row, directions));
        }
        Ok(Some(Self::new(p.lambda, rows, device)))
    }

    /// A penalty of weight `lambda` along unit vectors, per row.
    pub fn new(lambda: f64, rows: Vec<(usize, Vec<Vec<f32>>)>, device: &Device) -> Self {
        let rows = rows
            .into_iter()
            .map(|(row, directions)| (row, units(&directions, device)))
            .collect();
        Self { lambda, rows }
    }

    /// What the training forward must capture: every position at the
    /// penalised rows.
    pub fn capture(&self) -> CaptureRequest {
        CaptureRequest::new(self.rows.iter().map(|r| r.0), &[Reduction::Full])
    }

    /// The penalty of one piece of a step, given the captures of its
    /// training forward, divided by `denom` (the step's response tokens)
    /// so that the pieces of a step add up to the step's mean. `p_base`
    /// comes from a forward of the same batch without adapters or
    /// steering that stops after the highest penalised row.
    pub fn of_piece(
        &self,
        model: &Model,
        batch: &Batch,
        captured: &std::collections::BTreeMap<usize, Tensor<3>>,
        denom: usize,
    ) -> Result<Tensor<1>> {
        let request = self.capture();
        let base = model.forward(batch, ForwardArgs::capture(&request, None))?;
        let device = model.device();
        let (n, s) = (batch.n_rows, batch.seq_len);
        let response: Vec<f32> = batch
            .roles
            .iter()
            .map(|r| f32::from(u8::from(*r == Role::Response)))
            .collect();
        let mask = Tensor::<2>::from_data(TensorData::new(response, [n * s, 1]), device);
        let mut total = Tensor::<1>::zeros([1], device);
        for (row, units) in &self.rows {
            let now = flat(captured, *row)?.matmul(units.clone());
            let was = flat(&base.full, *row)?.detach().matmul(units.clone());
            let excess = relu(now - was) * mask.clone();
            total = total + excess.powi_scalar(2).sum();
        }
        let pairs = self.rows.len() * self.rows.first().map_or(1, |r| r.1.dims()[1]);
        Ok(total.mul_scalar(self.lambda / (denom.max(1) * pairs) as f64))
    }
}

/// The unit vectors as the columns of a `[d, k]` matrix.
fn units(columns: &[Vec<f32>], device: &Device) -> Tensor<2> {
    let (k, d) = (columns.len(), columns.first().map_or(0, Vec::len));
    let flat: Vec<f32> = columns.concat();
    Tensor::<2>::from_data(TensorData::new(flat, [k, d]), device).transpose()
}

/// The capture of `row` as `[n_rows * seq_len, d_model]`.
fn flat(captured: &std::collections::BTreeMap<usize, Tensor<3>>, row: usize) -> Result<Tensor<2>> {
    let t = captured.get(&row).ok_or_else(|| {
        persona_model::ModelError::Input(format!("row {row} was not captured for the penalty"))
    })?;
    let [n, s, d] = t.dims();
    Ok(t.clone().reshape([n * s, d]))
}
