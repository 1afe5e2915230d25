//! Memory a run will take, from a model's config alone (`persona plan`):
//! weights, adapters, optimizer state, the activations one training step
//! keeps for its backward pass, and the KV cache of generation.
//!
//! The byte counts of weights, adapters, optimizer state and the KV cache
//! are exact sums over the tensors this runtime allocates. The activations
//! are a count of the tensors the forward pass leaves for autodiff (the
//! constants in [`Activations`], per token and block), checked against
//! measured peak memory (benches/RESULTS.md); they are an estimate.

use crate::config::ModelConfig;
use crate::lora::Target;

/// Bytes of one f32 value: activations, adapters, optimizer state and the
/// KV cache are f32 on every device.
const F32: u64 = 4;

/// What one training step processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainShape {
    /// Sequences per micro-batch.
    pub rows: usize,
    /// Tokens per sequence (prompt and response, padded).
    pub tokens: usize,
    /// Tokens per sequence whose next token is scored (the response).
    pub scored: usize,
    /// LoRA rank.
    pub rank: usize,
}

/// What one generation call holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateShape {
    /// Sequences decoded together.
    pub rows: usize,
    /// Prompt plus new tokens: the KV cache's capacity.
    pub context: usize,
    /// Bytes per weight of the packed decoding copy the CPU keeps next to
    /// the f32 weights (4 for f32 panels, 0.625 for Q4_1, 1.0625 for Q8_0;
    /// 0 on a GPU, which has none).
    pub packed_bytes_per_weight: f64,
}

/// One line of a plan: what, and how many bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub what: &'static str,
    pub bytes: u64,
}

/// Values the forward pass keeps per token and block for the backward
/// pass, in multiples of each width: what autodiff saves is mostly the
/// inputs of products and element-wise ops (`model::block`). `D_MODEL`: the
/// residual and normed inputs of the two RMSNorms and of the projections;
/// `QKV`: RoPE's inputs, the attention's q/k/v and the `o` projection's
/// input; `FF`: SiLU's input and output, the up half and the down
/// projection's input; `SCORES` (times heads and sequence length): the
/// attention scores and probabilities; `HEAD` (times vocabulary, per
/// scored token): the LM head's logits, log-softmax and their gradient.
/// Checked against measured peak memory of SmolLM2 training at 8 x 128,
/// 4 x 256 and 4 x 128 and of a 0.5B shape (benches/RESULTS.md).
pub struct Activations;

impl Activations {
    pub const D_MODEL: f64 = 6.0;
    pub const QKV: f64 = 3.0;
    pub const FF: f64 = 4.5;
    pub const SCORES: f64 = 3.0;
    pub const HEAD: f64 = 3.0;
}

/// Weights of the model as this runtime holds them: every tensor of the
/// checkpoint, plus the transposed copy of a tied embedding that serves as
/// the LM head, at `bytes_per_weight`.
pub fn weight_bytes(cfg: &ModelConfig, bytes_per_weight: f64) -> u64 {
    let tensors: usize = crate::weights::expected_shapes(cfg)
        .values()
        .map(|s| s.iter().product::<usize>())
        .sum();
    let head = if cfg.tie_embeddings {
        cfg.vocab_size * cfg.d_model
    } else {
        0
    };
    ((tensors + head) as f64 * bytes_per_weight) as u64
}

/// A CPU training step with 16-bit weights: each product widens its
/// weight to f32 (see [`crate::dtype`]), and the autodiff graph keeps those
/// f32 copies until the backward pass, so a step holds every projection
/// and the LM head in f32 once more.
pub fn widened_copy_bytes(cfg: &ModelConfig) -> u64 {
    (decode_read_values(cfg) as f64 * F32 as f64) as u64
}

/// Weights one decoding step reads in full: the blocks' matrices and the
/// LM head (the embedding table is read one row per token). The CPU keeps
/// these packed; a GPU reads them from its memory every step.
pub fn decode_read_values(cfg: &ModelConfig) -> usize {
    crate::weights::expected_shapes(cfg)
        .iter()
        .filter(|(name, s)| s.len() == 2 && name.starts_with("model.layers."))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum::<usize>()
        + cfg.vocab_size * cfg.d_model
}

/// Adapter values for rank `rank` on `targets` in every block.
pub fn adapter_values(cfg: &ModelConfig, targets: &[Target], rank: usize) -> u64 {
    let per_block: f64 = targets
        .iter()
        .map(|t| {
            let (d_in, d_out) = t.dims(cfg);
            rank as f64 * (d_in + d_out) as f64
        })
        .sum();
    (per_block * cfg.n_layers as f64) as u64
}

/// One training step: weights at `bytes_per_weight`, adapters, their
/// gradients and AdamW moments, activations.
pub fn training(
    cfg: &ModelConfig,
    shape: TrainShape,
    targets: &[Target],
    bytes_per_weight: f64,
) -> Vec<Item> {
    let adapters = adapter_values(cfg, targets, shape.rank) * F32;
    let (q, kv) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
    let per_token_block = Activations::D_MODEL * cfg.d_model as f64
        + Activations::QKV * (q + 2 * kv) as f64
        + Activations::FF * cfg.d_ff as f64
        + Activations::SCORES * cfg.n_heads as f64 * shape.tokens as f64;
    let tokens = shape.rows as f64 * shape.tokens as f64;
    let blocks = tokens * per_token_block * cfg.n_layers as f64;
    let head = shape.rows as f64 * shape.scored as f64 * Activations::HEAD * cfg.vocab_size as f64;
    vec![
        Item {
            what: "weights",
            bytes: weight_bytes(cfg, bytes_per_weight),
        },
        Item {
            what: "adapters",
            bytes: adapters,
        },
        Item {
            what: "gradients + AdamW moments",
            bytes: 3 * adapters,
        },
        Item {
            what: "activations of one step",
            bytes: ((blocks + head) * F32 as f64) as u64,
        },
    ]
}

/// One generation call: weights, the packed decoding copy, the KV cache
/// and the last position's logits.
pub fn generation(cfg: &ModelConfig, shape: GenerateShape, bytes_per_weight: f64) -> Vec<Item> {
    // In f64: the shape comes from the command line (products of sizes
    // that are each bounded can still overflow an integer).
    let kv = 2.0
        * (cfg.n_layers * cfg.n_kv_heads * cfg.head_dim) as f64
        * shape.rows as f64
        * shape.context as f64;
    let projections = decode_read_values(cfg);
    vec![
        Item {
            what: "weights",
            bytes: weight_bytes(cfg, bytes_per_weight),
        },
        Item {
            what: "packed decoding copy (CPU)",
            bytes: (projections as f64 * shape.packed_bytes_per_weight) as u64,
        },
        Item {
            what: "KV cache",
            bytes: (kv * F32 as f64) as u64,
        },
        Item {
            what: "logits",
            bytes: (shape.rows as f64 * cfg.vocab_size as f64 * F32 as f64) as u64,
        },
    ]
}

/// Bytes per weight of the packed decoding copy of the model at `path`:
/// a GGUF file's Q4_1 tensors pack as Q4_1 (20 bytes per 32 values), its
/// Q8_0 and Q4_0 tensors as Q8_0 (34 per 32), everything else (and every
/// HF or synthetic model) as f32 panels. An average over the matrices.
pub fn packed_bytes_per_weight(path: &std::path::Path) -> crate::Result<f64> {
    use crate::quant::GgmlType;
    if path.extension().is_none_or(|e| e != "gguf") {
        return Ok(F32 as f64);
    }
    let g = crate::gguf::GgufFile::open(path)?;
    let (mut values, mut bytes) = (0f64, 0f64);
    for t in g.tensors.iter().filter(|t| t.shape.len() == 2) {
        let n = t.shape.iter().product::<usize>() as f64;
        let per_value = match t.ggml_type {
            GgmlType::Q4_1 => 20.0 / 32.0,
            GgmlType::Q8_0 | GgmlType::Q4_0 => 34.0 / 32.0,
            _ => F32 as f64,
        };
        values += n;
        bytes += n * per_value;
    }
    Ok(if values > 0.0 {
        bytes / values
    } else {
        F32 as f64
    })
}

/// The sum of a plan's lines.
pub fn total(items: &[Item]) -> u64 {
    items.iter().map(|i| i.bytes).sum()
}

/// Memory the operating system reports as available (`MemAvailable` in
/// `/proc/meminfo`), when it can be read.
pub fn available_host_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_config;

    #[test]
    fn exact_parts_are_sums_over_the_tensors() {
        let cfg = tiny_config();
        // 3 blocks: q 32x32, k/v 16x32, o 32x32, gate/up/down 48x32, 2
        // norms; embeddings 97x32 (+ the tied head's copy), final norm.
        let block = 32 * 32 * 2 + 16 * 32 * 2 + 48 * 32 * 3 + 2 * 32;
        let want = 3 * block + 97 * 32 * 2 + 32;
        assert_eq!(weight_bytes(&cfg, 4.0), 4 * want as u64);
        assert_eq!(weight_bytes(&cfg, 2.0), 2 * want as u64);
        // Rank 2 on q (32 -> 32) and down (48 -> 32), 3 blocks.
        let a = adapter_values(&cfg, &[Target::Q, Target::Down], 2);
        assert_eq!(a, 3 * (2 * (32 + 32) + 2 * (48 + 32)));
        let shape = GenerateShape {
            rows: 2,
            context: 10,
            packed_bytes_per_weight: 0.0,
        };
        let kv = &generation(&cfg, shape, 4.0)[2];
        assert_eq!(kv.bytes, 4 * 2 * 3 * 2 * 10 * 16);
    }

    #[test]
    fn activations_grow_with_tokens_and_quadratically_with_length() {
        let cfg = tiny_config();
        let at = |rows, tokens| {
            let shape = TrainShape {
                rows,
                tokens,
                scored: tokens / 2,
                rank: 4,
            };
            training(&cfg, shape, &Target::ALL, 4.0)[3].bytes
        };
        assert_eq!(at(4, 16), 2 * at(2, 16));
        assert!(at(1, 64) > 4 * at(1, 16));
    }
}
