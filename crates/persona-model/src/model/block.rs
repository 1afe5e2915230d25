//! One decoder block: pre-norm grouped-query attention with rotate-half
//! RoPE, then a pre-norm SwiGLU MLP, each added to the residual; LoRA
//! branches next to the frozen projections when adapters are passed.

use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

use super::linear::Linear;
use crate::cache::append_positions;
use crate::config::ModelConfig;
use crate::elementwise;
use crate::lora::{Lora, LoraDropout, Target};

/// One decoder block; field names follow the HF checkpoint keys. HF's
/// `q_proj`/`k_proj`/`v_proj` are concatenated at load into one `qkv_proj`
/// (output columns `[q | k | v]`), and `gate_proj`/`up_proj` into
/// `gate_up_proj` (`[gate | up]`): one matmul instead of three or two.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub input_layernorm: Tensor<1>,
    pub qkv_proj: Linear,
    pub o_proj: Linear,
    pub post_attention_layernorm: Tensor<1>,
    pub gate_up_proj: Linear,
    pub down_proj: Linear,
}

/// What every block of one pass reads besides its weights and the
/// residual.
///
/// # Shapes
/// `cos`/`sin`: `[b, 1, s, hd]`; `mask`: `[b, 1, rep*s, past+s]` (true =
/// masked; the `rep` query heads of a KV head stacked along the sequence).
pub(super) struct BlockInputs<'a> {
    pub cfg: &'a ModelConfig,
    /// `[b, s]`: rows and positions of this chunk.
    pub shape: [usize; 2],
    pub cos: &'a Tensor<4>,
    pub sin: &'a Tensor<4>,
    pub mask: &'a Tensor<4, Bool>,
    /// Positions already in the cache.
    pub past: usize,
    /// Positions to make room for when the cache tensors are first made
    /// ([`crate::KvCache::with_capacity`]).
    pub reserve: usize,
    pub lora: Option<&'a Lora>,
    pub dropout: Option<&'a LoraDropout>,
}

/// The cached keys and values of one layer, `[b, kv_heads, capacity, hd]`
/// each (the first `past` positions in use); none for an empty cache.
pub(super) type CachedKv = Option<(Tensor<4>, Tensor<4>)>;

/// `x / sqrt(mean(x^2) + eps) * weight`, over the last dimension.
///
/// # Shapes
/// `x`: `[n, d]`, `weight`: `[d]` -> `[n, d]`
pub(super) fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    let var = x.clone().square().mean_dim(1);
    let inv = var.add_scalar(eps).sqrt().recip();
    x * inv * weight.clone().unsqueeze::<2>()
}

/// The LoRA branches of one block, when adapters are passed.
struct Branches<'a> {
    lora: Option<&'a Lora>,
    dropout: Option<&'a LoraDropout>,
    layer: usize,
}

impl Branches<'_> {
    /// `x A B * scale` of `target`, if adapted.
    fn delta(&self, target: Target, x: &Tensor<2>) -> Option<Tensor<2>> {
        self.lora
            .and_then(|l| l.delta(self.layer, target, x.clone(), self.dropout))
    }

    /// The frozen projection's output `base` plus `target`'s branch.
    fn adapt(&self, target: Target, x: &Tensor<2>, base: Tensor<2>) -> Tensor<2> {
        plus(base, self.delta(target, x))
    }
}

fn plus(base: Tensor<2>, delta: Option<Tensor<2>>) -> Tensor<2> {
    match delta {
        Some(d) => base + d,
        None => base,
    }
}

impl Block {
    /// Block `layer` over `h`: `h + attention(norm(h))`, then `h +
    /// mlp(norm(h))`. Returns the new residual and the layer's key/value
    /// tensors with this chunk's positions written after the cached ones.
    ///
    /// # Shapes
    /// `h`: `[b*s, d]` -> `[b*s, d]`; keys/values `[b, kv_heads, capacity, hd]`
    pub(super) fn forward(
        &self,
        layer: usize,
        h: Tensor<2>,
        inputs: &BlockInputs<'_>,
        cached: CachedKv,
    ) -> (Tensor<2>, Tensor<4>, Tensor<4>) {
        let eps = inputs.cfg.rms_eps;
        let branches = Branches {
            lora: inputs.lora,
            dropout: inputs.dropout,
            layer,
        };
        let x = rms_norm(h.clone(), &self.input_layernorm, eps);
        let (attn, k_cache, v_cache) = self.attention(x, inputs, &branches, cached);
        let h = h + attn;
        let x = rms_norm(h.clone(), &self.post_attention_layernorm, eps);
        let mlp = self.mlp(x, inputs.cfg.d_ff, &branches);
        (h + mlp, k_cache, v_cache)
    }

    /// Grouped-query attention of the normed residual `x`, through `o_proj`.
    ///
    /// # Shapes
    /// `x`: `[b*s, d]` -> `[b*s, d]`
    fn attention(
        &self,
        x: Tensor<2>,
        inputs: &BlockInputs<'_>,
        branches: &Branches<'_>,
        cached: CachedKv,
    ) -> (Tensor<2>, Tensor<4>, Tensor<4>) {
        let cfg = inputs.cfg;
        let [b_n, s_n] = inputs.shape;
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let (q_w, kv_w) = (nh * hd, nkv * hd);
        let qkv = self.qkv_proj.forward(x.clone()); // # (b*s, q_w + 2 kv_w)
        let q = branches.adapt(Target::Q, &x, qkv.clone().narrow(1, 0, q_w));
        let k = branches.adapt(Target::K, &x, qkv.clone().narrow(1, q_w, kv_w));
        let v = branches.adapt(Target::V, &x, qkv.narrow(1, q_w + kv_w, kv_w));
        let heads = |t: Tensor<2>, n: usize| t.reshape([b_n, s_n, n, hd]).swap_dims(1, 2); // # (b, n, s, hd)
        let q = elementwise::rope(heads(q, nh), inputs.cos, inputs.sin);
        let k = elementwise::rope(heads(k, nkv), inputs.cos, inputs.sin);
        let (k_past, v_past) = cached.unzip();
        let (past, reserve) = (inputs.past, inputs.reserve);
        let (k_cache, k) = append_positions(k_past, past, reserve, k); // k: # (b, nkv, past+s, hd)
        let (v_cache, v) = append_positions(v_past, past, reserve, heads(v, nkv));
        // Grouped-query attention without copying K/V: query heads are
        // ordered kv_head * rep + r, so the `rep` query heads that share a KV
        // head stack along the sequence axis (the mask is laid out to match).
        let rep = nh / nkv;
        let q = q.reshape([b_n, nkv, rep * s_n, hd]);
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        let attn = attention(q, k, v, Some(inputs.mask.clone()), None, options); // # (b, nkv, rep*s, hd) == (b, nh, s, hd)
        let attn = attn
            .reshape([b_n, nh, s_n, hd])
            .swap_dims(1, 2)
            .reshape([b_n * s_n, nh * hd]);
        let out = branches.adapt(Target::O, &attn, self.o_proj.forward(attn.clone()));
        (out, k_cache, v_cache)
    }

    /// `down(silu(gate(x)) * up(x))` of the normed residual `x`.
    ///
    /// # Shapes
    /// `x`: `[b*s, d]` -> `[b*s, d]`
    fn mlp(&self, x: Tensor<2>, ff: usize, branches: &Branches<'_>) -> Tensor<2> {
        let gate_up = self.gate_up_proj.forward(x.clone()); // # (b*s, 2 ff)
        // Adapted gate or up: add the branches to the halves first.
        let act = match (
            branches.delta(Target::Gate, &x),
            branches.delta(Target::Up, &x),
        ) {
            (None, None) => elementwise::swiglu(gate_up, ff),
            (gate_delta, up_delta) => {
                let gate = plus(gate_up.clone().narrow(1, 0, ff), gate_delta);
                silu(gate) * plus(gate_up.narrow(1, ff, ff), up_delta)
            }
        };
        branches.adapt(Target::Down, &act, self.down_proj.forward(act.clone()))
    }
}
