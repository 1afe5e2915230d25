//! LoRA adapters: a trainable low-rank update `x A B * scale` added to the
//! output of chosen projections, passed to the forward as an argument (the
//! base weights are never changed).
//!
//! Written as a visible branch over the frozen base rather than burn's
//! `apply_lora` reparameterisation, which rebuilds the full weight every
//! forward and computes a full weight gradient (slower: benches/RESULTS.md),
//! and scales by alpha/r only, without rsLoRA.

use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::host_vec;
use crate::weights::{HostTensor, WeightMap};

/// LoRA dropout for one training forward, as PEFT applies it: the input of
/// each adapted projection's LoRA branch (not the frozen path) is zeroed
/// with probability `p` per element and scaled by `1 / (1 - p)`. Masks are
/// drawn on the host from `seed`, the layer and the projection only, so the
/// same `seed` gives the same masks on any device and thread count (a
/// resumed run redraws exactly the masks it would have drawn). Training
/// passes it in [`crate::ForwardArgs::lora_dropout`]; evaluation never does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraDropout {
    /// Probability of dropping an element, in `[0, 1)`.
    pub p: f64,
    /// Seed of this forward's masks (the trainer derives it from the run
    /// seed, the step and the row group: see `persona_train::trainer::loss_and_grads`).
    pub seed: u64,
}

impl LoraDropout {
    /// The `[n, d_in]` mask (`0` or `1 / (1 - p)`) of one projection.
    fn mask(
        &self,
        layer: usize,
        target: Target,
        [n, d_in]: [usize; 2],
        device: &Device,
    ) -> Tensor<2> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream((layer * Target::ALL.len() + target as usize) as u64);
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let data: Vec<f32> = (0..n * d_in)
            .map(|_| {
                if rng.random::<f64>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(data, [n, d_in]), device)
    }
}

/// A projection LoRA can adapt, named as in HF/PEFT (`q_proj`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The HF module path inside a block: `self_attn.q_proj`, `mlp.up_proj`, ...
    pub fn module_path(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    pub fn short_name(self) -> &'static str {
        self.module_path().rsplit('.').next().unwrap_or("")
    }

    /// `(d_in, d_out)` of this projection.
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        let (d, q, kv, ff) = (
            cfg.d_model,
            cfg.n_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
            cfg.d_ff,
        );
        match self {
            Self::Q => (d, q),
            Self::K | Self::V => (d, kv),
            Self::O => (q, d),
            Self::Gate | Self::Up => (d, ff),
            Self::Down => (ff, d),
        }
    }
}

/// How the low-rank update is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// `alpha / r` (the original LoRA).
    Classic,
    /// `alpha / sqrt(r)` (rsLoRA; the paper's setting).
    Rslora,
}

impl Scaling {
    /// The factor multiplying `x A B` for rank `rank` and `alpha`.
    pub fn factor(self, alpha: f64, rank: usize) -> f64 {
        match self {
            Scaling::Classic => alpha / rank as f64,
            Scaling::Rslora => alpha / (rank as f64).sqrt(),
        }
    }
}

/// The adapter pair of one projection.
///
/// # Shapes
/// `a`: `[d_in, rank]`, `b`: `[rank, d_out]` (PEFT stores their transposes).
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Tensor<2>,
    pub b: Tensor<2>,
    /// The factor multiplying `x A B`: [`Lora::scale`] for adapters this
    /// project trains; per module for PEFT adapters with `rank_pattern` or
    /// `alpha_pattern`.
    pub scale: f64,
}

/// How a PEFT adapter folder scales each module: `r` and `lora_alpha`,
/// overridden per module by `rank_pattern` / `alpha_pattern` (pattern ->
/// value, tried in the file's order; the first that matches wins, as in
/// PEFT's `get_pattern_key`).
#[derive(Debug, Clone, PartialEq)]
pub struct PeftScaling {
    pub rank: usize,
    pub alpha: f64,
    pub scaling: Scaling,
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
}

impl PeftScaling {
    /// `(rank, alpha)` of the module at `key` (its name in the base model,
    /// e.g. `model.layers.3.self_attn.v_proj`). A pattern `p` matches when
    /// the whole key matches the regular expression `(.*\.)?(p)`, PEFT's rule.
    pub fn for_module(&self, key: &str) -> Result<(usize, f64)> {
        let rank = first_match(&self.rank_pattern, key, "rank_pattern")?.unwrap_or(self.rank);
        let alpha = first_match(&self.alpha_pattern, key, "alpha_pattern")?.unwrap_or(self.alpha);
        Ok((rank, alpha))
    }
}

fn first_match<T: Copy>(patterns: &[(String, T)], key: &str, field: &str) -> Result<Option<T>> {
    for (pattern, value) in patterns {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$")).map_err(|e| {
            ModelError::Input(format!(
                "adapter {field} key `{pattern}` is not a regular expression this reader understands: {e}"
            ))
        })?;
        if re.is_match(key) {
            return Ok(Some(*value));
        }
    }
    Ok(None)
}

/// Adapters for a whole model.
#[derive(Debug, Clone)]
pub struct Lora {
    pub rank: usize,
    pub alpha: f64,
    pub scaling: Scaling,
    /// One map per block.
    pub layers: Vec<BTreeMap<Target, LoraPair>>,
}

impl Lora {
    /// Whether the adapters are being trained (tracked by autodiff).
    pub fn is_tracked(&self) -> bool {
        self.layers
            .iter()
            .flat_map(|l| l.values())
            .any(|p| p.a.is_require_grad() || p.b.is_require_grad())
    }

    /// PEFT-style initialisation: `A` Kaiming-uniform (bound `1/sqrt(d_in)`,
    /// PEFT's `kaiming_uniform_(a=sqrt(5))`), `B` zero, so a fresh adapter
    /// leaves the model unchanged.
    pub fn init(
        cfg: &ModelConfig,
        targets: &[Target],
        rank: usize,
        alpha: f64,
        scaling: Scaling,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        check_rank(cfg, targets, rank)?;
        if targets.is_empty() {
            return Err(ModelError::Input(
                "LoRA needs at least one target projection".into(),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers = (0..cfg.n_layers)
            .map(|_| {
                targets
                    .iter()
                    .map(|&t| {
                        let (d_in, d_out) = t.dims(cfg);
                        let bound = 1.0 / (d_in as f32).sqrt();
                        let a: Vec<f32> = (0..d_in * rank)
                            .map(|_| rng.random_range(-bound..bound))
                            .collect();
                        let pair = LoraPair {
                            a: Tensor::from_data(TensorData::new(a, [d_in, rank]), device),
                            b: Tensor::zeros([rank, d_out], device),
                            scale: scaling.factor(alpha, rank),
                        };
                        (t, pair)
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            rank,
            alpha,
            scaling,
            layers,
        })
    }

    /// The factor multiplying `x A B` at `rank` and `alpha` (every module of
    /// adapters this project trains; see [`LoraPair::scale`]).
    pub fn scale(&self) -> f64 {
        self.scaling.factor(self.alpha, self.rank)
    }

    /// `x A B * scale` for one projection, if it is adapted; with `dropout`,
    /// `x` is first passed through that projection's dropout mask.
    ///
    /// # Shapes
    /// `x`: `[n, d_in]` -> `[n, d_out]`
    pub fn delta(
        &self,
        layer: usize,
        target: Target,
        x: Tensor<2>,
        dropout: Option<&LoraDropout>,
    ) -> Option<Tensor<2>> {
        let pair = self.layers.get(layer)?.get(&target)?;
        let x = match dropout {
            Some(d) if d.p > 0.0 => {
                let mask = d.mask(layer, target, x.dims(), &x.device());
                x * mask
            }
            _ => x,
        };
        Some(
            x.matmul(pair.a.clone())
                .matmul(pair.b.clone())
                .mul_scalar(pair.scale),
        )
    }

    /// Every adapter tensor with its PEFT key, in a fixed order.
    pub fn named_tensors(&self) -> Vec<(String, &Tensor<2>)> {
        let mut out = Vec::new();
        for (l, map) in self.layers.iter().enumerate() {
            for (t, pair) in map {
                let base = format!("base_model.model.model.layers.{l}.{}", t.module_path());
                out.push((format!("{base}.lora_A.weight"), &pair.a));
                out.push((format!("{base}.lora_B.weight"), &pair.b));
            }
        }
        out
    }

    /// Mutable access to every adapter tensor, in the order of [`Lora::named_tensors`].
    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor<2>> {
        let mut out = Vec::new();
        for map in self.layers.iter_mut() {
            for pair in map.values_mut() {
                out.push(&mut pair.a);
                out.push(&mut pair.b);
            }
        }
        out
    }

    /// A copy that records no autodiff graph (same values): for evaluation,
    /// monitoring and saving.
    pub fn detached(&self) -> Lora {
        self.map_tensors(|t| t.detach())
    }

    /// A copy whose tensors are fresh autodiff leaves that collect
    /// gradients, connected to no graph built so far.
    pub fn trainable(&self) -> Lora {
        self.map_tensors(|t| t.detach().require_grad())
    }

    fn map_tensors(&self, f: impl Fn(Tensor<2>) -> Tensor<2>) -> Lora {
        let mut out = self.clone();
        for t in out.tensors_mut() {
            *t = f(t.clone());
        }
        out
    }

    /// The adapted projections.
    pub fn targets(&self) -> Vec<Target> {
        self.layers
            .first()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Host copies in PEFT layout: `lora_A.weight` `[rank, d_in]`, `lora_B.weight` `[d_out, rank]`.
    pub fn to_peft(&self) -> Result<WeightMap> {
        self.named_tensors()
            .into_iter()
            .map(|(name, t)| {
                let t = t.clone().transpose();
                let [r, c] = t.dims();
                let data = host_vec(t)?;
                Ok((name, HostTensor::f32(vec![r, c], data)))
            })
            .collect()
    }

    /// Rebuilds adapters from PEFT-layout tensors (see [`Lora::to_peft`]):
    /// every layer must adapt the same projections, each pair 2-D with the
    /// rank its module gets from `peft` (at most the projection's smaller
    /// side) and finite values.
    pub fn from_peft(
        cfg: &ModelConfig,
        weights: &WeightMap,
        peft: &PeftScaling,
        device: &Device,
    ) -> Result<Self> {
        let key = |l: usize, t: Target, ab: &str| {
            format!(
                "base_model.model.model.layers.{l}.{}.lora_{ab}.weight",
                t.module_path()
            )
        };
        let targets: Vec<Target> = Target::ALL
            .into_iter()
            .filter(|&t| weights.contains_key(&key(0, t, "A")))
            .collect();
        if targets.is_empty() {
            return Err(ModelError::Input(
                "the adapter holds no LoRA weights for any projection this runtime knows".into(),
            ));
        }
        let want: BTreeSet<String> = (0..cfg.n_layers)
            .flat_map(|l| {
                targets
                    .iter()
                    .flat_map(move |&t| [key(l, t, "A"), key(l, t, "B")])
            })
            .collect();
        let have: BTreeSet<String> = weights.keys().cloned().collect();
        let missing: Vec<String> = want.difference(&have).cloned().collect();
        let unexpected: Vec<String> = have.difference(&want).cloned().collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(ModelError::KeyMismatch {
                missing,
                unexpected,
            });
        }
        let layers = (0..cfg.n_layers)
            .map(|l| {
                targets
                    .iter()
                    .map(|&t| {
                        let module = format!("model.layers.{l}.{}", t.module_path());
                        let (rank, alpha) = peft.for_module(&module)?;
                        check_rank(cfg, &[t], rank)?;
                        let (d_in, d_out) = t.dims(cfg);
                        let a = peft_tensor(weights, &key(l, t, "A"), [rank, d_in], device)?;
                        let b = peft_tensor(weights, &key(l, t, "B"), [d_out, rank], device)?;
                        let scale = peft.scaling.factor(alpha, rank);
                        Ok((t, LoraPair { a, b, scale }))
                    })
                    .collect::<Result<BTreeMap<_, _>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            rank: peft.rank,
            alpha: peft.alpha,
            scaling: peft.scaling,
            layers,
        })
    }

    /// Folds the adapters into HF-layout base weights: `W[out, in] += scale * (A B)^T`.
    /// A merge that would make a weight non-finite (adapters with huge
    /// values) is an error naming the projection.
    pub fn merge_into(&self, weights: &mut WeightMap) -> Result<()> {
        for (l, map) in self.layers.iter().enumerate() {
            for (t, pair) in map {
                let key = format!("model.layers.{l}.{}.weight", t.module_path());
                let delta = pair
                    .a
                    .clone()
                    .matmul(pair.b.clone())
                    .transpose()
                    .mul_scalar(pair.scale); // # (out, in)
                let delta = host_vec(delta)?;
                let w = weights.get_mut(&key).ok_or_else(|| {
                    ModelError::Input(format!("cannot merge: base weights have no {key}"))
                })?;
                if w.len() != delta.len() {
                    return Err(ModelError::ShapeMismatch {
                        name: key,
                        found: w.shape.clone(),
                        expected: vec![delta.len()],
                    });
                }
                // A 16-bit weight is widened and stays f32: a LoRA delta is
                // often below bf16's resolution of the weight it is added to.
                let values = w.values_mut();
                values.iter_mut().zip(delta).for_each(|(w, d)| *w += d);
                if values.iter().any(|x| !x.is_finite()) {
                    return Err(ModelError::Input(format!(
                        "merging the adapters makes {key} non-finite: the adapter's values are too large"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Refuses a rank of 0 or above a target projection's smaller side (more
/// adds parameters, not expressiveness), before anything is allocated.
fn check_rank(cfg: &ModelConfig, targets: &[Target], rank: usize) -> Result<()> {
    for &t in targets {
        let (d_in, d_out) = t.dims(cfg);
        if rank == 0 || rank > d_in.min(d_out) {
            return Err(ModelError::Input(format!(
                "LoRA rank {rank} for {} must be in 1..={} (the projection is {d_in} x {d_out})",
                t.short_name(),
                d_in.min(d_out)
            )));
        }
    }
    Ok(())
}

/// One PEFT tensor of the expected 2-D shape with finite values, on the
/// device and transposed to this runtime's layout.
fn peft_tensor(
    weights: &WeightMap,
    name: &str,
    expected: [usize; 2],
    device: &Device,
) -> Result<Tensor<2>> {
    let h = &weights[name];
    if h.shape != expected {
        return Err(ModelError::ShapeMismatch {
            name: name.to_string(),
            found: h.shape.clone(),
            expected: expected.to_vec(),
        });
    }
    let values = h.values().into_owned();
    if values.iter().any(|x| !x.is_finite()) {
        return Err(ModelError::Input(format!(
            "adapter tensor {name} holds a non-finite value"
        )));
    }
    Ok(Tensor::<2>::from_data(TensorData::new(values, expected), device).transpose())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_masks_drop_p_and_rescale_the_rest() {
        let dev = crate::testing::test_device();
        let d = LoraDropout { p: 0.25, seed: 7 };
        let host = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap();
        let m = host(d.mask(2, Target::Up, [200, 500], &dev));
        let zeros = m.iter().filter(|&&x| x == 0.0).count() as f64 / m.len() as f64;
        assert!((zeros - 0.25).abs() < 0.01, "dropped fraction {zeros}");
        assert!(m.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-6));
        // Each projection of each layer has its own mask; the same key the same one.
        assert_ne!(host(d.mask(2, Target::Down, [200, 500], &dev)), m);
        assert_ne!(host(d.mask(3, Target::Up, [200, 500], &dev)), m);
        assert_eq!(host(d.mask(2, Target::Up, [200, 500], &dev)), m);
    }
}
