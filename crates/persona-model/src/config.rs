//! Architecture hyper-parameters, read from GGUF metadata or an HF `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Which HF architecture the weights follow. Both are pre-norm decoders with
/// RMSNorm, rotate-half RoPE, grouped-query attention and a SwiGLU MLP; Qwen2
/// adds biases to the q/k/v projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    #[serde(rename = "LlamaForCausalLM")]
    Llama,
    #[serde(rename = "Qwen2ForCausalLM")]
    Qwen2,
}

impl Architecture {
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }
    fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }
}

/// The numbers that define a decoder's shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    pub rope_theta: f64,
    /// Llama 3's long-context frequency scaling, when the config has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Llama3Rope>,
    pub rms_eps: f64,
    /// The LM head reuses the token embedding matrix.
    pub tie_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
}

/// Llama 3's RoPE frequency scaling (`rope_type = "llama3"` in an HF
/// config): wavelengths longer than `original_max_positions /
/// low_freq_factor` are stretched by `factor`, those shorter than
/// `original_max_positions / high_freq_factor` are kept, and the ones in
/// between are interpolated (transformers' `_compute_llama3_parameters`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_positions: usize,
}

impl Llama3Rope {
    /// `inv_freq` after the scaling.
    pub fn scale(&self, inv_freq: f64) -> f64 {
        let old = self.original_max_positions as f64;
        let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
        if wavelen < old / self.high_freq_factor {
            inv_freq
        } else if wavelen > old / self.low_freq_factor {
            inv_freq / self.factor
        } else {
            let smooth = (old / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - smooth) * inv_freq / self.factor + smooth * inv_freq
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !(positive(self.factor)
            && positive(self.low_freq_factor)
            && self.high_freq_factor.is_finite()
            && self.high_freq_factor > self.low_freq_factor
            && self.original_max_positions > 0)
        {
            return Err(format!(
                "llama3 RoPE scaling {self:?} needs finite factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0"
            ));
        }
        Ok(())
    }
}

/// Largest value each size in a config may take. Real models sit far below
/// (Llama-3.1-405B: 126 blocks, d_model 16384, vocab 128256, context
/// 131072); the limits turn a corrupt or hostile file into an error before
/// any size is used to allocate or to loop.
pub mod limits {
    pub const N_LAYERS: usize = 1024;
    pub const D_MODEL: usize = 1 << 16;
    pub const N_HEADS: usize = 1024;
    pub const HEAD_DIM: usize = 1024;
    pub const D_FF: usize = 1 << 18;
    pub const VOCAB: usize = 1 << 22;
    pub const MAX_POSITIONS: usize = 1 << 24;
}

impl ModelConfig {
    /// Number of rows in a vector file: the embedding output plus one per block.
    pub fn n_rows(&self) -> usize {
        self.n_layers + 1
    }

    /// Reads a `llama` GGUF file's hyper-parameters.
    ///
    /// Every number that changes the model's output (RoPE base, norm epsilon)
    /// must be in the file: llama.cpp falls back to 10000 for a missing
    /// `rope.freq_base`, which is right for Llama-1/2 and wrong for almost
    /// every model since, so a missing value is an error here. Sizes with a
    /// default (`head_count_kv` = `head_count`, `vocab_size` = the token
    /// list's length) are checked against the tensor shapes when the weights
    /// load, so a wrong default cannot pass silently.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        let (architecture, qkv_bias) = match arch {
            "llama" => (Architecture::Llama, false),
            "qwen2" => (Architecture::Qwen2, true),
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        let k = |s: &str| format!("{arch}.{s}");
        let size = |key: &str| -> Result<usize> { to_size(g.get_u64(&k(key))?, &k(key), g.path()) };
        let d_model = size("embedding_length")?;
        let n_heads = size("attention.head_count")?;
        let n_kv_heads = match g.get_u64(&k("attention.head_count_kv")) {
            Ok(n) => to_size(n, &k("attention.head_count_kv"), g.path())?,
            Err(_) => n_heads,
        };
        let vocab_size = match g.get_u64(&k("vocab_size")) {
            Ok(v) => to_size(v, &k("vocab_size"), g.path())?,
            Err(_) => g.get_strings("tokenizer.ggml.tokens")?.len(),
        };
        if let Ok(scaling) = g.get_str(&k("rope.scaling.type"))
            && scaling != "none"
        {
            return Err(ModelError::Unsupported(format!(
                "RoPE scaling `{scaling}` in the GGUF file"
            )));
        }
        if let Ok(factor) = g.get_f64(&k("rope.scaling.factor"))
            && factor != 1.0
            && factor != 0.0
        {
            return Err(ModelError::Unsupported(format!(
                "RoPE scaling factor {factor} in the GGUF file (only unscaled RoPE is implemented)"
            )));
        }
        let head_dim = d_model / n_heads.max(1);
        if let Ok(rot) = g.get_u64(&k("rope.dimension_count"))
            && rot != head_dim as u64
        {
            return Err(ModelError::Unsupported(format!(
                "partial rotary embeddings ({rot} of {head_dim} head dimensions) in the GGUF file"
            )));
        }
        let cfg = Self {
            architecture,
            n_layers: size("block_count")?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            d_ff: size("feed_forward_length")?,
            vocab_size,
            max_positions: size("context_length")?,
            rope_theta: g.get_f64(&k("rope.freq_base"))?,
            // llama.cpp stores Llama 3's scaling as a `rope_freqs` tensor,
            // which loading refuses by name.
            rope_scaling: None,
            rms_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon"))?,
            tie_embeddings: !g.tensors.iter().any(|t| t.name == "output.weight"),
            qkv_bias,
        };
        cfg.validate(g.path())?;
        Ok(cfg)
    }

    /// Reads an HF `config.json` (the layouts of transformers 4 and 5).
    ///
    /// RoPE scaling and sliding windows are refused (not implemented), an
    /// unknown architecture is an error, and so is a missing RoPE base or
    /// norm epsilon: transformers 5 moved `rope_theta` into
    /// `rope_parameters`, and reading only the old key fell back to 10000
    /// without a word. Keys with a format-defined default
    /// (`num_key_value_heads` = `num_attention_heads`, `head_dim` =
    /// `hidden_size / num_attention_heads`, no biases, untied embeddings)
    /// only decide tensor shapes and key names, which loading checks
    /// strictly, so a wrong default is an error there, never a silent change.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: path.to_path_buf(),
                reason: format!("not JSON: {e}"),
            })?;
        let c = HfJson { v: &json, path };
        let archs = json["architectures"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .ok_or_else(|| c.bad("no `architectures` list".into()))?;
        let architecture = match archs {
            "LlamaForCausalLM" => Architecture::Llama,
            "Qwen2ForCausalLM" => Architecture::Qwen2,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        for flag in ["use_sliding_window", "mlp_bias"] {
            if c.bool(flag)? == Some(true) {
                return Err(ModelError::Unsupported(format!(
                    "`{flag}: true` in {}",
                    path.display()
                )));
            }
        }
        if let Some(f) = c.float("partial_rotary_factor")?
            && f != 1.0
        {
            return Err(ModelError::Unsupported(format!(
                "partial_rotary_factor {f} in {} (only full rotary embeddings are implemented)",
                path.display()
            )));
        }
        let d_model = c.size("hidden_size")?;
        let n_heads = c.size("num_attention_heads")?;
        let qkv_bias = match architecture {
            Architecture::Qwen2 => true,
            Architecture::Llama => c.bool("attention_bias")?.unwrap_or(false),
        };
        let (rope_theta, rope_scaling) = c.rope()?;
        let cfg = Self {
            architecture,
            n_layers: c.size("num_hidden_layers")?,
            d_model,
            n_heads,
            n_kv_heads: c.optional_size("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim: c
                .optional_size("head_dim")?
                .unwrap_or(d_model / n_heads.max(1)),
            d_ff: c.size("intermediate_size")?,
            vocab_size: c.size("vocab_size")?,
            max_positions: c.size("max_position_embeddings")?,
            rope_theta,
            rope_scaling,
            rms_eps: c
                .float("rms_norm_eps")?
                .ok_or_else(|| c.missing("rms_norm_eps"))?,
            tie_embeddings: c.bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let sizes = [
            ("n_layers", self.n_layers, limits::N_LAYERS),
            ("d_model", self.d_model, limits::D_MODEL),
            ("n_heads", self.n_heads, limits::N_HEADS),
            ("n_kv_heads", self.n_kv_heads, limits::N_HEADS),
            ("head_dim", self.head_dim, limits::HEAD_DIM),
            ("d_ff", self.d_ff, limits::D_FF),
            ("vocab_size", self.vocab_size, limits::VOCAB),
            ("max_positions", self.max_positions, limits::MAX_POSITIONS),
        ];
        for (name, value, max) in sizes {
            if value == 0 || value > max {
                return Err(bad(format!(
                    "{name} = {value} is out of range (1..={max}); the file is corrupt or not a model this runtime supports"
                )));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad(format!(
                "{} heads is not a multiple of {} KV heads",
                self.n_heads, self.n_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(format!("head_dim {} must be even", self.head_dim)));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(bad(format!(
                "RoPE base (rope_theta) {} must be a finite number > 0",
                self.rope_theta
            )));
        }
        if let Some(scaling) = &self.rope_scaling {
            scaling.check().map_err(bad)?;
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            return Err(bad(format!(
                "RMSNorm epsilon {} must be a finite number in (0, 1)",
                self.rms_eps
            )));
        }
        Ok(())
    }

    /// The HF `config.json` describing this model (what `persona convert` writes).
    pub fn to_hf_json(&self, bos: u32, eos: u32) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.architecture.hf_name()],
            "model_type": self.architecture.model_type(),
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "num_hidden_layers": self.n_layers,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_positions,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "rope_scaling": self.rope_scaling.map(|r| serde_json::json!({
                "rope_type": "llama3",
                "factor": r.factor,
                "low_freq_factor": r.low_freq_factor,
                "high_freq_factor": r.high_freq_factor,
                "original_max_position_embeddings": r.original_max_positions,
            })),
            "bos_token_id": bos,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        });
        if self.architecture == Architecture::Llama {
            v["attention_bias"] = serde_json::Value::Bool(self.qkv_bias);
            v["mlp_bias"] = serde_json::Value::Bool(false);
        }
        v
    }
}

/// A size from a file as `usize`, or an error naming the key (a u64 that
/// does not fit, on 32-bit targets).
fn to_size(v: u64, key: &str, path: &Path) -> Result<usize> {
    usize::try_from(v).map_err(|_| ModelError::Config {
        path: path.to_path_buf(),
        reason: format!("`{key}` = {v} is out of range"),
    })
}

/// Typed, strict access to the keys of an HF `config.json`: a key that is
/// present with the wrong type is an error (`"tie_word_embeddings": "yes"`
/// is not `false`).
struct HfJson<'a> {
    v: &'a serde_json::Value,
    path: &'a Path,
}

impl HfJson<'_> {
    fn bad(&self, reason: String) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn missing(&self, key: &str) -> ModelError {
        self.bad(format!(
            "missing `{key}`; add it to the config (see the model's original config.json)"
        ))
    }

    fn present(&self, key: &str) -> Option<&serde_json::Value> {
        self.v.get(key).filter(|x| !x.is_null())
    }

    fn optional_size(&self, key: &str) -> Result<Option<usize>> {
        self.present(key)
            .map(|x| {
                x.as_u64()
                    .ok_or_else(|| {
                        self.bad(format!("`{key}` must be a non-negative integer, got {x}"))
                    })
                    .and_then(|n| to_size(n, key, self.path))
            })
            .transpose()
    }

    fn size(&self, key: &str) -> Result<usize> {
        self.optional_size(key)?.ok_or_else(|| self.missing(key))
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        self.present(key)
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| self.bad(format!("`{key}` must be a number, got {x}")))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.present(key)
            .map(|x| {
                x.as_bool()
                    .ok_or_else(|| self.bad(format!("`{key}` must be true or false, got {x}")))
            })
            .transpose()
    }

    /// The RoPE base and scaling from either layout: transformers 4's
    /// top-level `rope_theta` + `rope_scaling`, or transformers 5's
    /// `rope_parameters = {rope_theta, rope_type, ...}`. Only Llama 3's
    /// scaling is implemented; any other is refused, and both layouts at
    /// once must agree on the base.
    fn rope(&self) -> Result<(f64, Option<Llama3Rope>)> {
        let mut old_scaling = None;
        if let Some(s) = self.present("rope_scaling") {
            let kind = s["rope_type"]
                .as_str()
                .or(s["type"].as_str())
                .unwrap_or("unknown");
            old_scaling = Some(self.named_scaling(Some(kind), s, "rope_scaling")?);
        }
        let mut new_scaling = None;
        let old = self.float("rope_theta")?;
        let new = match self.present("rope_parameters") {
            None => None,
            Some(p) => {
                let p = p
                    .as_object()
                    .ok_or_else(|| self.bad("`rope_parameters` must be an object".into()))?;
                if !p.contains_key("rope_theta") && !p.contains_key("rope_type") {
                    return Err(ModelError::Unsupported(format!(
                        "per-layer-type `rope_parameters` in {} (only one RoPE for every layer is implemented)",
                        self.path.display()
                    )));
                }
                let kind = match p.get("rope_type") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(k) => Some(k.as_str().ok_or_else(|| {
                        self.bad(format!(
                            "`rope_parameters.rope_type` must be a string, got {k}"
                        ))
                    })?),
                };
                // Only a named type says anything about the scaling.
                if kind.is_some() {
                    new_scaling = Some(self.named_scaling(
                        kind,
                        &serde_json::Value::Object(p.clone()),
                        "rope_parameters",
                    )?);
                }
                match p.get("rope_theta") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(t) => Some(t.as_f64().ok_or_else(|| {
                        self.bad(format!(
                            "`rope_parameters.rope_theta` must be a number, got {t}"
                        ))
                    })?),
                }
            }
        };
        let scaling = match (old_scaling, new_scaling) {
            (Some(a), Some(b)) if a != b => {
                return Err(self.bad(format!(
                    "`rope_scaling` ({a:?}) and `rope_parameters` ({b:?}) disagree"
                )));
            }
            (a, b) => a.or(b).flatten(),
        };
        match (old, new) {
            (Some(a), Some(b)) if a != b => Err(self.bad(format!(
                "`rope_theta` {a} and `rope_parameters.rope_theta` {b} disagree"
            ))),
            (Some(t), _) | (None, Some(t)) => Ok((t, scaling)),
            (None, None) => Err(self.bad(
                "no RoPE base: neither `rope_theta` nor `rope_parameters.rope_theta`; add the model's value (the transformers default of 10000 is wrong for most models)".into(),
            )),
        }
    }

    /// The scaling a layout's `kind` names: `None` for unscaled.
    fn named_scaling(
        &self,
        kind: Option<&str>,
        params: &serde_json::Value,
        key: &str,
    ) -> Result<Option<Llama3Rope>> {
        match kind {
            None | Some("default") => Ok(None),
            Some("llama3") => Ok(Some(self.llama3_rope(params, key)?)),
            Some(kind) => Err(ModelError::Unsupported(format!(
                "{key} of type `{kind}` in {} (unscaled RoPE and Llama 3's `llama3` scaling are implemented)",
                self.path.display()
            ))),
        }
    }

    /// The four numbers of a `llama3` scaling object, all required (as in
    /// transformers).
    fn llama3_rope(&self, params: &serde_json::Value, key: &str) -> Result<Llama3Rope> {
        let number = |name: &str| {
            params[name].as_f64().ok_or_else(|| {
                self.bad(format!(
                    "`{key}.{name}` must be a number (llama3 RoPE scaling)"
                ))
            })
        };
        let original = params["original_max_position_embeddings"]
            .as_u64()
            .ok_or_else(|| {
                self.bad(format!(
                    "`{key}.original_max_position_embeddings` must be a positive integer (llama3 RoPE scaling)"
                ))
            })?;
        Ok(Llama3Rope {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_positions: to_size(original, key, self.path)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2's numbers as an HF config, in transformers 4's layout.
    fn smollm_json() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
            "num_attention_heads": 9, "num_key_value_heads": 3, "num_hidden_layers": 30,
            "vocab_size": 49152, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "rope_scaling": null, "tie_word_embeddings": true
        })
    }

    fn parse(v: &serde_json::Value) -> Result<ModelConfig> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, v.to_string()).unwrap();
        ModelConfig::from_hf_json(&p)
    }

    fn err(v: &serde_json::Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    /// Regression: transformers >= 5 writes `rope_parameters` and no
    /// top-level `rope_theta`; the base fell back to 10000 without a word.
    #[test]
    fn rope_theta_is_read_from_transformers_5_rope_parameters() {
        let old = parse(&smollm_json()).unwrap();
        let mut v = smollm_json();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("rope_scaling");
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 100000.0, "rope_type": "default"}),
        );
        let new = parse(&v).unwrap();
        assert_eq!(new.rope_theta, 100000.0);
        assert_eq!(new, old);
        // Both layouts at once must agree.
        v["rope_theta"] = 10000.0.into();
        assert!(err(&v).contains("disagree"));
    }

    /// Regression: a RoPE scaling in the new layout was accepted.
    #[test]
    fn rope_scaling_in_rope_parameters_is_read_or_refused() {
        let mut v = smollm_json();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] =
            serde_json::json!({"rope_theta": 500000.0, "rope_type": "yarn", "factor": 8.0});
        let e = err(&v);
        assert!(e.contains("rope_parameters") && e.contains("`yarn`"), "{e}");
        // Llama 3's, complete, in transformers 5's layout.
        let llama3 = serde_json::json!({"factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let mut params = llama3.clone();
        params["rope_theta"] = 500000.0.into();
        params["rope_type"] = "llama3".into();
        v["rope_parameters"] = params;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, v.to_string()).unwrap();
        let cfg = ModelConfig::from_hf_json(&path).unwrap();
        assert_eq!(cfg.rope_scaling.map(|r| r.factor), Some(8.0));
        // Both layouts must agree on the scaling, as on the base.
        let mut other = llama3.clone();
        other["factor"] = 32.0.into();
        other["rope_type"] = "llama3".into();
        v["rope_scaling"] = other;
        v["rope_theta"] = 500000.0.into();
        assert!(err(&v).contains("disagree"), "{}", err(&v));
        v["rope_scaling"] = serde_json::json!({"rope_type": "default"});
        assert!(err(&v).contains("disagree"), "{}", err(&v));
        v.as_object_mut().unwrap().remove("rope_scaling");
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = serde_json::json!({"full_attention": {"rope_theta": 1e6}});
        assert!(err(&v).contains("per-layer-type"));
    }

    /// Regression: a config without any RoPE base read as 10000.
    #[test]
    fn a_config_missing_rope_theta_is_an_error() {
        let mut v = smollm_json();
        v.as_object_mut().unwrap().remove("rope_theta");
        let e = err(&v);
        assert!(e.contains("no RoPE base"), "{e}");
        let mut v = smollm_json();
        v.as_object_mut().unwrap().remove("rms_norm_eps");
        assert!(err(&v).contains("missing `rms_norm_eps`"));
    }

    /// Regression: `rms_norm_eps = -1` and `rope_theta` 0 or negative loaded.
    #[test]
    fn non_positive_norm_eps_and_rope_theta_are_refused() {
        for (key, value) in [
            ("rms_norm_eps", -1.0),
            ("rms_norm_eps", 0.0),
            ("rope_theta", 0.0),
            ("rope_theta", -10000.0),
        ] {
            let mut v = smollm_json();
            v[key] = value.into();
            let e = err(&v);
            assert!(
                e.contains("must be a finite number"),
                "{key} = {value}: {e}"
            );
        }
    }

    /// Regression: `num_hidden_layers` 2^40 hung, `max_position_embeddings`
    /// 2^31 asked for 549 GB and 2^63 panicked.
    #[test]
    fn huge_sizes_in_an_hf_config_are_refused() {
        for (key, value) in [
            ("num_hidden_layers", 1u64 << 40),
            ("max_position_embeddings", 1 << 31),
            ("max_position_embeddings", 1 << 63),
            ("vocab_size", 1 << 40),
            ("num_attention_heads", 0),
        ] {
            let mut v = smollm_json();
            v[key] = value.into();
            let e = err(&v);
            assert!(e.contains("out of range"), "{key} = {value}: {e}");
        }
    }

    /// Regression: a key present with the wrong type read as its default.
    #[test]
    fn config_keys_of_the_wrong_type_are_errors() {
        for (key, value) in [
            ("tie_word_embeddings", serde_json::json!("yes")),
            ("num_key_value_heads", serde_json::json!(3.5)),
            ("attention_bias", serde_json::json!(1)),
            ("rms_norm_eps", serde_json::json!("1e-5")),
        ] {
            let mut v = smollm_json();
            v[key] = value;
            let e = err(&v);
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    /// Llama 3's scaling, from the public Llama-3.2-1B-Instruct config
    /// (benches/shapes/): parsed, and applied per wavelength band with
    /// values worked out by hand from transformers' formula.
    #[test]
    fn llama3_rope_scaling_is_read_and_applied() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../benches/shapes/llama-3.2-1b-instruct.json");
        let cfg = ModelConfig::from_hf_json(&path).unwrap();
        let s = cfg.rope_scaling.expect("llama3 scaling");
        assert_eq!(
            s,
            Llama3Rope {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_positions: 8192
            }
        );
        assert_eq!(cfg.rope_theta, 500_000.0);
        // Wavelength 2*pi < 8192/4: kept. 2*pi/1e-5 > 8192/1: divided by 32.
        assert_eq!(s.scale(1.0), 1.0);
        assert_eq!(s.scale(1e-5), 1e-5 / 32.0);
        // Wavelength 4096: smooth = (8192/4096 - 1) / (4 - 1) = 1/3, so
        // (2/3) f/32 + (1/3) f = f * 34/96.
        let f = 2.0 * std::f64::consts::PI / 4096.0;
        assert!((s.scale(f) - f * 34.0 / 96.0).abs() < 1e-15);
        // Written back out, the scaling survives a round trip.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("config.json");
        std::fs::write(&out, cfg.to_hf_json(1, 2).to_string()).unwrap();
        assert_eq!(ModelConfig::from_hf_json(&out).unwrap(), cfg);
    }

    #[test]
    fn other_rope_scalings_and_incomplete_llama3_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let base = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../benches/shapes/llama-3.2-1b-instruct.json"),
        )
        .unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
        v["rope_scaling"]["rope_type"] = "yarn".into();
        std::fs::write(&path, v.to_string()).unwrap();
        let err = ModelConfig::from_hf_json(&path).unwrap_err().to_string();
        assert!(err.contains("`yarn`"), "{err}");
        v["rope_scaling"]["rope_type"] = "llama3".into();
        v["rope_scaling"]
            .as_object_mut()
            .unwrap()
            .remove("low_freq_factor");
        std::fs::write(&path, v.to_string()).unwrap();
        let err = ModelConfig::from_hf_json(&path).unwrap_err().to_string();
        assert!(err.contains("low_freq_factor"), "{err}");
        v["rope_scaling"]["low_freq_factor"] = 8.0.into();
        std::fs::write(&path, v.to_string()).unwrap();
        let err = ModelConfig::from_hf_json(&path).unwrap_err().to_string();
        assert!(err.contains("low_freq_factor < high_freq_factor"), "{err}");
    }
}
