//! Models of real shapes without real weights: `synthetic:PATH/config.json`
//! builds the LLaMA/Qwen2 model a `config.json` describes with seeded
//! random weights, so speed and memory can be measured at 0.5B-8B shapes
//! with nothing downloaded. Its outputs mean nothing.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::config::ModelConfig;
use crate::dtype::WeightDtype;
use crate::error::{ModelError, Result};
use crate::weights::{HostTensor, WeightMap, expected_shapes};

/// The spec prefix: `synthetic:` followed by a `config.json` path (or a
/// folder holding one).
pub const PREFIX: &str = "synthetic:";

/// The seed of every synthetic model's weights (one fixed seed: two runs
/// of a shape measure the same model).
const SEED: u64 = 0;

/// The `config.json` a `synthetic:` spec names, or `None` for other specs.
pub fn config_path(spec: &str) -> Option<Result<PathBuf>> {
    let rest = spec.strip_prefix(PREFIX)?;
    let path = Path::new(rest);
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    Some(if file.is_file() {
        Ok(file)
    } else {
        Err(ModelError::Input(format!(
            "`{spec}`: {} is not a config.json file (a synthetic model is `synthetic:PATH/config.json`; \
             benches/shapes/ holds the public configs of several models)",
            file.display()
        )))
    })
}

/// What identifies a synthetic model: the SHA-256 of its config file and
/// the seed (vectors and adapters made on one are refused by real models).
pub fn identity_hash(config_bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"persona synthetic weights, seed ");
    h.update(SEED.to_le_bytes());
    h.update(config_bytes);
    crate::weights::hex(&h.finalize())
}

/// Seeded random weights for `cfg`, one ChaCha8 stream per tensor (so the
/// tensors are drawn in parallel and do not depend on the thread count):
/// norms near 1, matrices uniform in ±1/sqrt(fan_in), the scale of trained
/// weights, so activations keep realistic magnitudes through the blocks.
pub fn weights(cfg: &ModelConfig, dtype: WeightDtype) -> Result<WeightMap> {
    // The config's sizes are bounded one by one, but their product can
    // still be far beyond this machine: refuse before allocating.
    let need = crate::plan::weight_bytes(cfg, dtype.bytes() as f64);
    if let Some(have) = crate::plan::available_host_bytes()
        && need > have
    {
        return Err(ModelError::Input(format!(
            "a synthetic model of this config needs {:.1} GB of {dtype} weights and {:.1} GB is available; \
             `persona plan` shows what a shape needs",
            need as f64 / 1e9,
            have as f64 / 1e9
        )));
    }
    let shapes: Vec<(String, Vec<usize>)> = expected_shapes(cfg).into_iter().collect();
    let tensors: Vec<(String, HostTensor)> = shapes
        .into_par_iter()
        .map(|(name, shape)| {
            let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ tensor_seed(&name));
            let data = draw(&name, &shape, &mut rng);
            let t = HostTensor::f32(shape, data).into_kept(dtype, &name)?;
            Ok((name, t))
        })
        .collect::<Result<_>>()?;
    if tensors.is_empty() {
        return Err(ModelError::Input("a synthetic model needs weights".into()));
    }
    Ok(tensors.into_iter().collect())
}

/// Random values for the tensor `name` of `shape`: norm weights near 1,
/// everything else uniform in ±1/sqrt(fan_in) (the last dimension).
pub(crate) fn draw(name: &str, shape: &[usize], rng: &mut impl Rng) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if shape.len() == 1 && name.contains("norm") {
        (0..n).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
    } else {
        let bound = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
        (0..n).map(|_| rng.random_range(-bound..bound)).collect()
    }
}

/// A stable per-tensor seed from its name.
fn tensor_seed(name: &str) -> u64 {
    let d = Sha256::digest(name.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("a sha256 digest has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_config;

    #[test]
    fn weights_are_seeded_and_shaped_like_the_config() {
        let cfg = tiny_config();
        let a = weights(&cfg, WeightDtype::F32).unwrap();
        let b = crate::testing::on_threads(1, || weights(&cfg, WeightDtype::F32).unwrap());
        assert_eq!(a, b, "the weights depend on the thread count");
        crate::weights::check_strict(&cfg, &a).unwrap();
        let q = &a["model.layers.0.self_attn.q_proj.weight"];
        let bound = 1.0 / (cfg.d_model as f32).sqrt();
        assert!(q.values().iter().all(|x| x.abs() <= bound));
        assert_ne!(q.data, a["model.layers.1.self_attn.q_proj.weight"].data);
    }

    #[test]
    fn a_spec_names_a_config_file_or_fails_clearly() {
        assert!(config_path("smollm2-135m-instruct").is_none());
        let err = config_path("synthetic:/no/such/config.json")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a config.json file"), "{err}");
    }
}
