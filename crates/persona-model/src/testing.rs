//! A tiny randomly initialised model for fast tests (here and in the crates
//! downstream): a few layers, small dims, grouped-query attention.

use burn::tensor::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Architecture, ModelConfig};
use crate::weights::{HostTensor, WeightMap, expected_shapes};

/// 3 blocks, d_model 32, 4 heads over 2 KV heads, vocab 97.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        n_layers: 3,
        d_model: 32,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        d_ff: 48,
        vocab_size: 97,
        max_positions: 128,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        tie_embeddings: true,
        qkv_bias: false,
    }
}

/// Random weights for `cfg`: norms near 1, matrices uniform in ±1/sqrt(fan_in).
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> WeightMap {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    expected_shapes(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if shape.len() == 1 && name.contains("norm") {
                (0..n).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
            } else {
                let bound = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            (name, HostTensor { shape, data })
        })
        .collect()
}

/// `h_row` at every position of one sequence (batch of one, no padding),
/// from a full capture: the reference that reduced captures are tested against.
pub fn full_row_activations(
    model: &crate::Model,
    seq: &crate::Sequence,
    row: usize,
) -> crate::Result<Vec<Vec<f32>>> {
    use crate::{Batch, CaptureRequest, ForwardArgs, PadSide, Reduction};
    let b = Batch::new(std::slice::from_ref(seq), PadSide::Right, 0)?;
    let req = CaptureRequest::new([row], &[Reduction::Full]);
    let out = model.forward(&b, ForwardArgs::capture(&req, None))?;
    let h = crate::host_vec(out.full[&row].clone())?;
    Ok(h.chunks(model.config.d_model)
        .map(<[f32]>::to_vec)
        .collect())
}

/// Runs `f` on a rayon pool of `n` threads (the work sharing of
/// [`crate::Batch::thread_groups`] follows the pool's thread count).
pub fn on_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("a rayon pool")
        .install(f)
}

/// The device unit tests run on: `PERSONA_TEST_DEVICE` (`cpu`, `cuda`,
/// `wgpu`; default `cpu`), so the same tests can check a GPU build.
pub fn test_device() -> Device {
    let name = std::env::var("PERSONA_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    crate::device::parse_device(&name).unwrap_or_else(|e| panic!("PERSONA_TEST_DEVICE: {e}"))
}
