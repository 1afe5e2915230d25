//! The host-side bookkeeping of one pass, built before the first block:
//! argument checks, key validity and position ids (real tokens only), the
//! attention mask, RoPE tables, steering masks and capture weights. The
//! steering and capture applied at each row live here too.

use std::collections::BTreeMap;

use burn::tensor::{Bool, Tensor, TensorData};

use super::{ForwardArgs, Logits, Model};
use crate::cache::KvCache;
use crate::error::{ModelError, Result};
use crate::sites::{
    Batch, CaptureRequest, Reduction, Role, SteerOp, Steering, position_mask, reduction_weights,
};

/// Everything a pass reads besides the weights and the activations.
pub(super) struct PassInputs {
    /// `[b, s]` of the chunk.
    pub shape: [usize; 2],
    /// Positions already cached, and the room to reserve for a fresh cache.
    pub past: usize,
    pub reserve: usize,
    /// Per row, which cached and new positions are real tokens (the
    /// cache keeps it for the next chunk).
    pub key_valid: Vec<Vec<bool>>,
    /// `[b, 1, rep*s, past+s]`, true = masked.
    pub mask: Tensor<4, Bool>,
    /// `[b, 1, s, hd]` each.
    pub cos: Tensor<4>,
    pub sin: Tensor<4>,
    /// One `[b*s, 1]` 0/1 mask per steering, in order.
    pub steer_masks: Vec<Tensor<2>>,
    /// The pooled reductions captured and their averaging weights
    /// `[b, reductions, s]`, with the tokens each row averages over.
    pub pooled: Vec<Reduction>,
    pub pool_weights: Option<Tensor<3>>,
    pub counts: BTreeMap<Reduction, Vec<usize>>,
    /// The last residual row the pass must compute.
    pub last_row: usize,
    /// Flat positions whose logits [`Logits::Scored`] computes.
    pub scored: Vec<i64>,
}

impl PassInputs {
    /// Checks the pass against the model and builds its inputs.
    pub(super) fn new(model: &Model, batch: &Batch, args: &ForwardArgs<'_>) -> Result<Self> {
        check(model, batch, args)?;
        let cfg = &model.config;
        let (b_n, s_n) = (batch.n_rows, batch.seq_len);
        let cache = args.cache.as_deref();
        let past = cache.map_or(0, KvCache::past_len);
        let (key_valid, pos_ids) = positions(batch, cache, cfg.max_positions);
        let dev = model.device();
        let mask = attention_mask(&key_valid, past, s_n, cfg.n_heads / cfg.n_kv_heads);
        let hd = cfg.head_dim;
        let (cos, sin) = model.rope.tables(&pos_ids);
        let steer_masks = args
            .steering
            .iter()
            .map(|st| {
                let mut m = position_mask(&batch.roles, s_n, st.positions);
                for (b, row) in m.chunks_mut(s_n).enumerate() {
                    if !st.applies_to_row(b) {
                        row.fill(0.0);
                    }
                }
                Tensor::from_data(TensorData::new(m, [b_n * s_n, 1]), dev)
            })
            .collect();
        let (pooled, pool_weights, counts) = pool_weights(batch, args.capture, dev);
        let last_row = match args.logits {
            Logits::None => args.capture.rows.iter().copied().max().unwrap_or(0),
            _ => cfg.n_layers,
        };
        if cache.is_some() && last_row != cfg.n_layers {
            return Err(ModelError::Input(
                "a forward with a KV cache must run every layer: ask for logits".into(),
            ));
        }
        Ok(Self {
            shape: [b_n, s_n],
            past,
            reserve: cache.map_or(0, |c| c.reserve),
            key_valid,
            mask: Tensor::from_data(mask, dev),
            cos: Tensor::from_data(TensorData::new(cos, [b_n, 1, s_n, hd]), dev),
            sin: Tensor::from_data(TensorData::new(sin, [b_n, 1, s_n, hd]), dev),
            steer_masks,
            pooled,
            pool_weights,
            counts,
            last_row,
            scored: scored_positions(batch, args.logits)?,
        })
    }

    /// `h` after the steerings at `row` (in order).
    ///
    /// # Shapes
    /// `h`: `[b*s, d]` -> `[b*s, d]`
    pub(super) fn steer(&self, mut h: Tensor<2>, row: usize, steering: &[Steering]) -> Tensor<2> {
        for (st, m) in steering.iter().zip(&self.steer_masks) {
            if st.row != row {
                continue;
            }
            let v = st.vector.clone().unsqueeze::<2>(); // # (1, d)
            h = match st.op {
                SteerOp::Add { coef } => h + m.clone() * v.mul_scalar(coef),
                SteerOp::Ablate => {
                    let proj = h.clone().matmul(v.clone().transpose()); // # (n, 1)
                    h - (proj * m.clone()) * v
                }
                SteerOp::Cap { min, max } => {
                    let proj = h.clone().matmul(v.clone().transpose()); // # (n, 1)
                    // Zero inside the range, so those positions keep their bits.
                    let shift = proj.clone().clamp(min, max) - proj;
                    h + (shift * m.clone()) * v
                }
            };
        }
        h
    }
}

/// What a pass captured so far: pooled reductions `[b, d]` and full rows
/// `[b, s, d]`, by row.
#[derive(Default)]
pub(super) struct Captures {
    pub pooled: BTreeMap<(usize, Reduction), Tensor<2>>,
    pub full: BTreeMap<usize, Tensor<3>>,
}

impl Captures {
    /// Takes what `request` asks of `row` from `h`. Pooled reductions are
    /// one batched matmul on the device, so only `[b, d]` per reduction
    /// leaves the pass.
    pub(super) fn take(
        &mut self,
        h: &Tensor<2>,
        row: usize,
        request: &CaptureRequest,
        inputs: &PassInputs,
    ) {
        if !request.rows.contains(&row) {
            return;
        }
        let [b_n, s_n] = inputs.shape;
        let [_, d] = h.dims();
        let h3 = h.clone().reshape([b_n, s_n, d]);
        if let Some(w) = &inputs.pool_weights {
            // # (b, r, s) @ (b, s, d) -> (b, r, d)
            let pooled_h = w.clone().matmul(h3.clone());
            for (i, r) in inputs.pooled.iter().enumerate() {
                let one = pooled_h.clone().narrow(1, i, 1).reshape([b_n, d]);
                self.pooled.insert((row, *r), one);
            }
        }
        if request.reductions.contains(&Reduction::Full) {
            self.full.insert(row, h3);
        }
    }
}

/// Refuses arguments that do not fit the model or each other.
fn check(model: &Model, batch: &Batch, args: &ForwardArgs<'_>) -> Result<()> {
    let cfg = &model.config;
    model.check_steering(args.steering)?;
    if let Some(l) = args.lora
        && l.layers.len() != cfg.n_layers
    {
        return Err(ModelError::Input(format!(
            "LoRA adapters have {} layers but the model has {}",
            l.layers.len(),
            cfg.n_layers
        )));
    }
    if let Some(&row) = args.capture.rows.iter().find(|&&r| r > cfg.n_layers) {
        return Err(ModelError::LayerOutOfRange {
            row,
            max: cfg.n_layers,
        });
    }
    if let Some(&bad) = batch.ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
        return Err(ModelError::Input(format!(
            "token id {bad} >= vocab size {}",
            cfg.vocab_size
        )));
    }
    let cache = args.cache.as_deref();
    if let Some(c) = cache.filter(|c| !c.is_empty() && c.valid.len() != batch.n_rows) {
        return Err(ModelError::Input(format!(
            "batch has {} rows but the cache holds {}",
            batch.n_rows,
            c.valid.len()
        )));
    }
    // Real tokens only: a row's position ids do not count the padding a
    // cache may hold after rows of other lengths joined it.
    let total = (0..batch.n_rows)
        .map(|b| {
            let cached = cache.map_or(0, |c| c.n_real(b));
            cached
                + batch
                    .row_roles(b)
                    .iter()
                    .filter(|r| **r != Role::Pad)
                    .count()
        })
        .max()
        .unwrap_or(0);
    if total > cfg.max_positions {
        return Err(ModelError::Input(format!(
            "sequence of {total} tokens exceeds the model's context of {}",
            cfg.max_positions
        )));
    }
    Ok(())
}

/// Per row, the validity of every key (cached ones, then this chunk's) and
/// this chunk's position ids, `[b * s]`. Position ids count real tokens
/// only, so a left-padded row starts at position 0 like an unpadded one.
fn positions(
    batch: &Batch,
    cache: Option<&KvCache>,
    max_positions: usize,
) -> (Vec<Vec<bool>>, Vec<i64>) {
    let (b_n, s_n) = (batch.n_rows, batch.seq_len);
    let mut key_valid: Vec<Vec<bool>> = (0..b_n)
        .map(|b| {
            cache
                .and_then(|c| c.valid.get(b).cloned())
                .unwrap_or_default()
        })
        .collect();
    let mut pos_ids = vec![0i64; b_n * s_n];
    for b in 0..b_n {
        let mut next = cache.map_or(0, |c| c.n_real(b));
        for (s, role) in batch.row_roles(b).iter().enumerate() {
            let real = *role != Role::Pad;
            pos_ids[b * s_n + s] = next.min(max_positions - 1) as i64;
            if real {
                next += 1;
            }
            key_valid[b].push(real);
        }
    }
    (key_valid, pos_ids)
}

/// The attention mask, true = masked, `[b, 1, rep * s, past + s]`. A query
/// may see key k if k is real and not in its future; every query sees
/// itself, so a padding query's softmax has at least one entry (a fully
/// masked row would give NaN, and NaN values would leak into real rows
/// through 0 * NaN in P @ V). Repeated for the `rep` query heads that
/// share a KV head (see `Block::attention`).
fn attention_mask(key_valid: &[Vec<bool>], past: usize, s_n: usize, rep: usize) -> TensorData {
    let b_n = key_valid.len();
    let total = past + s_n;
    let mut mask = vec![false; b_n * rep * s_n * total];
    for (b, valid) in key_valid.iter().enumerate() {
        for q in 0..s_n {
            let qa = past + q;
            let row: Vec<bool> = (0..total)
                .map(|k| k > qa || (!valid[k] && k != qa))
                .collect();
            for r in 0..rep {
                let at = ((b * rep + r) * s_n + q) * total;
                mask[at..at + total].copy_from_slice(&row);
            }
        }
    }
    TensorData::new(mask, [b_n, 1, rep * s_n, total])
}

/// The pooled reductions of `capture`, their averaging weights `[b, r, s]`
/// (none when nothing pooled is captured) and each row's token counts.
fn pool_weights(
    batch: &Batch,
    capture: &CaptureRequest,
    dev: &burn::tensor::Device,
) -> (
    Vec<Reduction>,
    Option<Tensor<3>>,
    BTreeMap<Reduction, Vec<usize>>,
) {
    let (b_n, s_n) = (batch.n_rows, batch.seq_len);
    let mut counts = BTreeMap::new();
    let pooled: Vec<Reduction> = capture
        .reductions
        .iter()
        .copied()
        .filter(|r| *r != Reduction::Full)
        .collect();
    if pooled.is_empty() || capture.rows.is_empty() {
        return (pooled, None, counts);
    }
    let per: Vec<Vec<f32>> = pooled
        .iter()
        .map(|r| {
            let (w, c) = reduction_weights(&batch.roles, s_n, *r);
            counts.insert(*r, c);
            w
        })
        .collect();
    let mut w = Vec::with_capacity(b_n * pooled.len() * s_n);
    for b in 0..b_n {
        for p in &per {
            w.extend_from_slice(&p[b * s_n..(b + 1) * s_n]);
        }
    }
    let weights = Tensor::<3>::from_data(TensorData::new(w, [b_n, pooled.len(), s_n]), dev);
    (pooled, Some(weights), counts)
}

/// The flat positions [`Logits::Scored`] computes logits at (none for the
/// other kinds); an error when the batch has no response token.
fn scored_positions(batch: &Batch, logits: Logits) -> Result<Vec<i64>> {
    if logits != Logits::Scored {
        return Ok(Vec::new());
    }
    let idx: Vec<i64> = batch
        .scored_positions()
        .into_iter()
        .map(|(p, _)| p as i64)
        .collect();
    if idx.is_empty() {
        return Err(ModelError::Input(
            "no response token to score: `Logits::Scored` needs a batch with a response".into(),
        ));
    }
    Ok(idx)
}
