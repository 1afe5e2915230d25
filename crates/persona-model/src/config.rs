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
    pub rms_eps: f64,
    /// The LM head reuses the token embedding matrix.
    pub tie_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
}

impl ModelConfig {
    /// Number of rows in a vector file: the embedding output plus one per block.
    pub fn n_rows(&self) -> usize {
        self.n_layers + 1
    }

    /// Reads a `llama` GGUF file's hyper-parameters.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        let (architecture, qkv_bias) = match arch {
            "llama" => (Architecture::Llama, false),
            "qwen2" => (Architecture::Qwen2, true),
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        let k = |s: &str| format!("{arch}.{s}");
        let d_model = g.get_u64(&k("embedding_length"))? as usize;
        let n_heads = g.get_u64(&k("attention.head_count"))? as usize;
        let n_kv_heads = g
            .get_u64(&k("attention.head_count_kv"))
            .unwrap_or(n_heads as u64) as usize;
        let vocab_size = match g.get_u64(&k("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => g.get_strings("tokenizer.ggml.tokens")?.len(),
        };
        if let Ok(scaling) = g.get_str(&k("rope.scaling.type"))
            && scaling != "none"
        {
            return Err(ModelError::Unsupported(format!(
                "RoPE scaling `{scaling}` in the GGUF file"
            )));
        }
        let cfg = Self {
            architecture,
            n_layers: g.get_u64(&k("block_count"))? as usize,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim: d_model / n_heads.max(1),
            d_ff: g.get_u64(&k("feed_forward_length"))? as usize,
            vocab_size,
            max_positions: g.get_u64(&k("context_length"))? as usize,
            rope_theta: g.get_f64(&k("rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon"))?,
            tie_embeddings: !g.tensors.iter().any(|t| t.name == "output.weight"),
            qkv_bias,
        };
        cfg.validate(g.path())?;
        Ok(cfg)
    }

    /// Reads an HF `config.json`. RoPE scaling is rejected explicitly (not
    /// implemented); an unknown architecture is an error.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let bad = |reason: String| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let archs = v["architectures"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .ok_or_else(|| bad("no `architectures` list".into()))?;
        let architecture = match archs {
            "LlamaForCausalLM" => Architecture::Llama,
            "Qwen2ForCausalLM" => Architecture::Qwen2,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        let num = |key: &str| -> Result<usize> {
            v[key]
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("missing or non-integer `{key}`")))
        };
        let float = |key: &str, default: Option<f64>| -> Result<f64> {
            match (v[key].as_f64(), default) {
                (Some(x), _) => Ok(x),
                (None, Some(d)) if v[key].is_null() => Ok(d),
                _ => Err(bad(format!("missing or non-numeric `{key}`"))),
            }
        };
        if !v["rope_scaling"].is_null() {
            let kind = v["rope_scaling"]["rope_type"]
                .as_str()
                .or(v["rope_scaling"]["type"].as_str())
                .unwrap_or("?");
            if kind != "default" {
                return Err(ModelError::Unsupported(format!(
                    "rope_scaling of type `{kind}` in {} (only unscaled RoPE is implemented)",
                    path.display()
                )));
            }
        }
        for flag in ["use_sliding_window"] {
            if v[flag].as_bool() == Some(true) {
                return Err(ModelError::Unsupported(format!(
                    "`{flag}: true` in {}",
                    path.display()
                )));
            }
        }
        let d_model = num("hidden_size")?;
        let n_heads = num("num_attention_heads")?;
        let head_dim = match v["head_dim"].as_u64() {
            Some(h) => h as usize,
            None => d_model / n_heads.max(1),
        };
        let qkv_bias = match architecture {
            Architecture::Qwen2 => true,
            Architecture::Llama => v["attention_bias"].as_bool().unwrap_or(false),
        };
        if architecture == Architecture::Llama && v["mlp_bias"].as_bool() == Some(true) {
            return Err(ModelError::Unsupported("`mlp_bias: true`".into()));
        }
        let cfg = Self {
            architecture,
            n_layers: num("num_hidden_layers")?,
            d_model,
            n_heads,
            n_kv_heads: v["num_key_value_heads"]
                .as_u64()
                .map(|x| x as usize)
                .unwrap_or(n_heads),
            head_dim,
            d_ff: num("intermediate_size")?,
            vocab_size: num("vocab_size")?,
            max_positions: num("max_position_embeddings")?,
            rope_theta: float("rope_theta", Some(10_000.0))?,
            rms_eps: float("rms_norm_eps", None)?,
            tie_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
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
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return Err(bad(format!(
                "{} heads is not a multiple of {} KV heads",
                self.n_heads, self.n_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            return Err(bad(format!("head_dim {} must be even", self.head_dim)));
        }
        if self.n_layers == 0 || self.d_model == 0 || self.vocab_size == 0 {
            return Err(bad("zero-sized model".into()));
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
            "rope_scaling": null,
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
