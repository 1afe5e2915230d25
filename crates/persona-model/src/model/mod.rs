//! The decoder (LLaMA / Qwen2 family) in burn: one implementation whose
//! forward takes the KV cache, the steering to apply and the sites to
//! capture as arguments, and returns logits plus what was captured.
//!
//! - `args`: what a forward takes and returns;
//! - `inputs`: the host-side bookkeeping of a pass (masks, positions,
//!   RoPE tables, steering masks, capture weights) and the steering and
//!   capture applied at each row;
//! - `block`: one decoder block;
//! - `linear`: frozen projections, packed or not;
//! - `schedule`: how a pass is run on the CPU (row groups, the rayon
//!   pool, column-split products); `Model::pass` is the math alone.

mod args;
mod block;
mod inputs;
mod linear;
mod rope;
mod schedule;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

pub use args::{ForwardArgs, ForwardOutput, Logits, host_vec};
use block::{Block, BlockInputs, rms_norm};
use inputs::{Captures, PassInputs};
use linear::{Linear, Weight, concat_bias, host_to_f32, host_to_tensor, transposed_concat};
use rope::Rope;

use crate::config::ModelConfig;
use crate::dtype::WeightDtype;
use crate::error::{ModelError, Result};
use crate::sites::{Batch, Steering};
use crate::weights::{HostTensor, WeightMap, check_strict};

/// Refuses weights kept in a type `device` cannot compute in (wgpu's WGSL
/// shaders have no bf16), before anything is moved.
fn check_types(w: &WeightMap, device: &Device) -> Result<()> {
    let types: BTreeSet<WeightDtype> = w.values().map(HostTensor::dtype).collect();
    let Some(t) = types.into_iter().find(|t| !device.supports_dtype(t.burn())) else {
        return Ok(());
    };
    let usable: Vec<&str> = WeightDtype::ALL
        .into_iter()
        .filter(|t| device.supports_dtype(t.burn()))
        .map(WeightDtype::name)
        .collect();
    Err(ModelError::Input(format!(
        "device {device:?} cannot compute with {t} weights (wgpu's shaders have no bf16); \
         choose a type it has (`--dtype`, `[model] dtype`): {}",
        usable.join(", ")
    )))
}

/// Yields a model's host tensors by HF name (see `Model::build`).
type Take<'a, 'w> = dyn FnMut(&str) -> Cow<'w, HostTensor> + 'a;

/// Several HF projections (`names`, with `.bias` when `bias`) fused into
/// one linear map.
fn fused(take: &mut Take<'_, '_>, names: &[String], bias: bool, device: &Device) -> Linear {
    let weights: Vec<_> = names.iter().map(|n| take(&format!("{n}.weight"))).collect();
    let biases: Vec<_> = names
        .iter()
        .map(|n| bias.then(|| take(&format!("{n}.bias"))))
        .collect();
    Linear {
        weight: Weight::new(transposed_concat(
            &weights.iter().map(|t| &**t).collect::<Vec<_>>(),
            device,
        )),
        bias: concat_bias(
            &biases.iter().map(|t| t.as_deref()).collect::<Vec<_>>(),
            device,
        ),
    }
}

/// A loaded decoder.
#[derive(Debug, Clone)]
pub struct Model {
    pub config: ModelConfig,
    embed_tokens: Tensor<2>,
    layers: Vec<Block>,
    norm: Tensor<1>,
    /// `[d_model, vocab]`. When tied to `embed_tokens` this is a transposed
    /// copy (113 MB for SmolLM2): gemm streams a contiguous `[d, vocab]`
    /// matrix markedly faster than a transposed view of `[vocab, d]`
    /// (benches/RESULTS.md).
    lm_head: Weight,
    rope: Rope,
    device: Device,
}

impl Model {
    /// Builds the model from HF-named weights; strict about keys and shapes.
    pub fn from_weights(config: ModelConfig, w: &WeightMap, device: &Device) -> Result<Self> {
        check_strict(&config, w)?;
        check_types(w, device)?;
        Self::build(config, &mut |name| Cow::Borrowed(&w[name]), device)
    }

    /// [`Model::from_weights`], releasing each host tensor once its device
    /// tensor exists: loading holds about one copy of the weights, not two.
    pub fn from_owned_weights(
        config: ModelConfig,
        mut w: WeightMap,
        device: &Device,
    ) -> Result<Self> {
        check_strict(&config, &w)?;
        check_types(&w, device)?;
        Self::build(
            config,
            &mut |name| Cow::Owned(w.remove(name).expect("checked by check_strict")),
            device,
        )
    }

    /// The model from `take(name)`, which yields each HF tensor (checked
    /// beforehand) exactly once.
    fn build<'w>(config: ModelConfig, take: &mut Take<'_, 'w>, device: &Device) -> Result<Self> {
        if crate::device::is_cpu(device) {
            // A bad PERSONA_CPU_KERNELS is refused before any work.
            crate::CpuKernels::selected()?;
            crate::device::tune_cpu_matmul();
        }
        // First, so that a tied LM head (a transposed copy of the table) is
        // built from the same host tensor, which is then released.
        let embed = take("model.embed_tokens.weight");
        let embed_tokens = host_to_tensor(&embed, device);
        let head = if config.tie_embeddings {
            embed
        } else {
            drop(embed);
            take("lm_head.weight")
        };
        let lm_head = Weight::new(transposed_concat(&[&head], device));
        drop(head);
        let mut layers = Vec::with_capacity(config.n_layers);
        for l in 0..config.n_layers {
            let p = format!("model.layers.{l}");
            let attn = |m: &str| format!("{p}.self_attn.{m}");
            let mlp = |m: &str| format!("{p}.mlp.{m}");
            let qkv = [attn("q_proj"), attn("k_proj"), attn("v_proj")];
            layers.push(Block {
                qkv_proj: fused(take, &qkv, config.qkv_bias, device),
                o_proj: fused(take, &[attn("o_proj")], false, device),
                gate_up_proj: fused(take, &[mlp("gate_proj"), mlp("up_proj")], false, device),
                down_proj: fused(take, &[mlp("down_proj")], false, device),
                input_layernorm: host_to_f32(&take(&format!("{p}.input_layernorm.weight")), device),
                post_attention_layernorm: host_to_f32(
                    &take(&format!("{p}.post_attention_layernorm.weight")),
                    device,
                ),
            });
        }
        Ok(Self {
            rope: Rope::new(&config),
            embed_tokens,
            norm: host_to_f32(&take("model.norm.weight"), device),
            layers,
            lm_head,
            config,
            device: device.clone(),
        })
    }

    #[cfg(test)]
    pub(crate) fn embed_tokens_for_tests(&self) -> &Tensor<2> {
        &self.embed_tokens
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The packed copies of the weights that few-row products (decoding)
    /// use on this CPU, by format (`"Q4_1"`, `"Q8_0"` or `"F32"`): how many
    /// weight matrices and how many bytes. Empty until the first such
    /// product, and on CPUs without AVX-512F (see the `packed` module).
    pub fn packed_weights(&self) -> BTreeMap<&'static str, (usize, usize)> {
        let mut formats = BTreeMap::new();
        let weights = self.layers.iter().flat_map(|l| {
            [&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj].map(|lin| &lin.weight)
        });
        for w in weights.chain([&self.lm_head]) {
            if let Some(Some(p)) = w.packed.get() {
                let entry = formats.entry(p.format().name()).or_insert((0, 0));
                entry.0 += 1;
                entry.1 += p.bytes();
            }
        }
        formats
    }

    /// Number of residual rows: `n_layers + 1`.
    pub fn n_rows(&self) -> usize {
        self.config.n_rows()
    }

    /// The final RMSNorm, applied to a raw row-`n_layers` activation `[n, d_model]`
    /// (HF's last `hidden_states` entry is this, not the raw block output).
    pub fn final_norm(&self, x: Tensor<2>) -> Tensor<2> {
        rms_norm(x, &self.norm, self.config.rms_eps)
    }

    /// Checks steering rows and widths against this model.
    pub fn check_steering(&self, steering: &[Steering]) -> Result<()> {
        for s in steering {
            s.check_coef()?;
            if s.row > self.config.n_layers {
                return Err(ModelError::LayerOutOfRange {
                    row: s.row,
                    max: self.config.n_layers,
                });
            }
            if s.width() != self.config.d_model {
                return Err(ModelError::VectorWidth {
                    found: s.width(),
                    expected: self.config.d_model,
                });
            }
        }
        Ok(())
    }

    /// Runs the decoder over one chunk of tokens.
    ///
    /// With a cache, the chunk continues the cached sequences (one row per
    /// cached row); its keys/values are appended. Position ids count real
    /// tokens only, so a left-padded row starts at position 0 like an
    /// unpadded one. On the CPU the pass may run as row groups in parallel
    /// (`Model::row_groups`); the values are those of one whole pass.
    ///
    /// # Shapes
    /// `batch`: `[n_rows, seq_len]` tokens; see [`ForwardOutput`] for outputs.
    pub fn forward(&self, batch: &Batch, args: ForwardArgs<'_>) -> Result<ForwardOutput> {
        // Before any split into row groups renumbers the rows.
        if let Some(b) = args
            .steering
            .iter()
            .filter_map(|st| st.batch_rows.as_ref()?.last())
            .find(|&&b| b >= batch.n_rows)
        {
            return Err(ModelError::Input(format!(
                "a steering names batch row {b} but the batch has {} rows",
                batch.n_rows
            )));
        }
        self.run_pass(batch, args)
    }

    /// One pass over all rows of `batch`: embed, then for each row the
    /// block, the steering and the capture at that row, then the final norm
    /// and the LM head.
    pub(crate) fn pass(&self, batch: &Batch, args: ForwardArgs<'_>) -> Result<ForwardOutput> {
        let inputs = PassInputs::new(self, batch, &args)?;
        let blocks = BlockInputs {
            cfg: &self.config,
            shape: inputs.shape,
            cos: &inputs.cos,
            sin: &inputs.sin,
            mask: &inputs.mask,
            past: inputs.past,
            reserve: inputs.reserve,
            lora: args.lora,
            dropout: args.lora_dropout.as_ref(),
        };
        let mut cache = args.cache;
        // The cache's key/value tensors are moved out (not cloned), so each
        // layer writes its new positions in place; they go back below.
        let mut cached = cache.as_mut().map(|c| c.take_layers());
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut captures = Captures::default();
        let mut h = self.embed(batch); // # (b*s, d), row 0
        for row in 0..=inputs.last_row {
            if row > 0 {
                let past = cached.as_mut().and_then(Iterator::next);
                let (out, k, v) = self.layers[row - 1].forward(row - 1, h, &blocks, past);
                h = out;
                keys.push(k);
                values.push(v);
            }
            h = inputs.steer(h, row, args.steering);
            captures.take(&h, row, args.capture, &inputs);
        }
        let logits = self.logits(h, batch, &inputs, args.logits);
        if let Some(c) = cache {
            c.keys = keys;
            c.values = values;
            c.valid = inputs.key_valid;
        }
        Ok(ForwardOutput {
            logits,
            captured: captures.pooled,
            full: captures.full,
            counts: inputs.counts,
        })
    }

    /// The token embeddings of a batch, `[b*s, d_model]`.
    fn embed(&self, batch: &Batch) -> Tensor<2> {
        let ids: Vec<i64> = batch.ids.iter().map(|&i| i as i64).collect();
        let n = ids.len();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &self.device);
        let h = self.embed_tokens.clone().select(0, ids);
        if h.dtype() == DType::F32 {
            h
        } else {
            h.cast(FloatDType::F32)
        }
    }

    /// The logits `kind` asks for from the last row `h` (`[b*s, d]`).
    fn logits(
        &self,
        h: Tensor<2>,
        batch: &Batch,
        inputs: &PassInputs,
        kind: Logits,
    ) -> Option<Tensor<3>> {
        let [b_n, s_n] = inputs.shape;
        let vocab = self.config.vocab_size;
        match kind {
            Logits::None => None,
            Logits::All => Some(self.lm_head(h).reshape([b_n, s_n, vocab])),
            Logits::Last => {
                let idx = (0..b_n)
                    .map(|b| (b * s_n + batch.last_token_index(b).unwrap_or(s_n - 1)) as i64)
                    .collect();
                Some(self.lm_head_at(h, idx).reshape([b_n, 1, vocab]))
            }
            Logits::Scored => {
                let n = inputs.scored.len();
                Some(
                    self.lm_head_at(h, inputs.scored.clone())
                        .reshape([1, n, vocab]),
                )
            }
        }
    }

    /// # Shapes
    /// `h`: `[n, d_model]` -> `[n, vocab]`
    fn lm_head(&self, h: Tensor<2>) -> Tensor<2> {
        // The vocabulary is wide: two column blocks per thread balance better.
        self.lm_head.matmul(self.final_norm(h), 2)
    }

    /// The LM head at the flat positions `idx` of `h` only.
    ///
    /// # Shapes
    /// `h`: `[b*s, d_model]` -> `[idx.len(), vocab]`
    fn lm_head_at(&self, h: Tensor<2>, idx: Vec<i64>) -> Tensor<2> {
        let n = idx.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &self.device);
        self.lm_head(h.select(0, idx))
    }
}
