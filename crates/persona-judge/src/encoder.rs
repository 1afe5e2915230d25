//! The sentence encoder of the offline classifier judge: a BERT encoder
//! (all-MiniLM-L6-v2 by default) in burn, mean-pooled over real tokens and
//! L2-normalised, as the model's `1_Pooling/config.json` prescribes.
//!
//! Loading is strict: every expected tensor must be present with its shape,
//! and a pooling config other than mean pooling is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{JudgeError, Result};

/// The subset of an HF BERT `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
}

#[derive(Debug, Deserialize)]
struct PoolingConfig {
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

/// `y = x @ weight + bias`, weight stored `[d_in, d_out]`.
#[derive(Debug, Clone)]
struct Dense {
    weight: Tensor<2>,
    bias: Tensor<1>,
}

impl Dense {
    /// `x`: `[n, d_in]` -> `[n, d_out]`
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.clone()) + self.bias.clone().unsqueeze::<2>()
    }
}

#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor<1>,
    bias: Tensor<1>,
    eps: f64,
}

impl LayerNorm {
    /// `x`: `[n, d]` -> `[n, d]`
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mean = x.clone().mean_dim(1);
        let centred = x - mean;
        let var = centred.clone().square().mean_dim(1);
        centred * var.add_scalar(self.eps).sqrt().recip() * self.weight.clone().unsqueeze::<2>()
            + self.bias.clone().unsqueeze::<2>()
    }
}

/// One post-norm BERT layer; query/key/value fused into one matmul.
#[derive(Debug, Clone)]
struct EncoderLayer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

/// A loaded sentence encoder with its tokenizer.
pub struct SentenceEncoder {
    pub config: BertConfig,
    word_embeddings: Tensor<2>,
    position_embeddings: Tensor<2>,
    /// Token type 0 (every input is one segment).
    token_type_embedding: Tensor<1>,
    embedding_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    tokenizer: Tokenizer,
    /// `<dir name> (sha256 <first 16 hex of model.safetensors>)`.
    pub identity: String,
    pub device: Device,
}

/// The default encoder's folder in the model cache (fetched by `just fetch-model`).
pub fn default_encoder_dir() -> PathBuf {
    persona_model::PersonaHome::from_env()
        .models()
        .join("all-minilm-l6-v2")
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bad = |reason: String| JudgeError::Encoder {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(format!(
            "{e} (fetch the default encoder with `just fetch-model`)"
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
}

/// Tensor name -> (shape, f32 data).
type TensorMap = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads the f32 tensors of a safetensors file into `name -> (shape, data)`.
fn read_tensors(path: &Path) -> Result<TensorMap> {
    let bad = |reason: String| JudgeError::Encoder {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        bad(format!(
            "{e} (fetch the default encoder with `just fetch-model`)"
        ))
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        match view.dtype() {
            safetensors::Dtype::F32 => {
                let data = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                out.insert(name, (view.shape().to_vec(), data));
            }
            // HF stores the position-id buffer as int64; it is 0..n by definition.
            _ if name.ends_with("position_ids") => {}
            other => {
                return Err(bad(format!(
                    "tensor {name} has unsupported dtype {other:?}"
                )));
            }
        }
    }
    Ok(out)
}

/// The subset of BERT sentence-transformers this encoder implements.
fn check_supported(
    config: &BertConfig,
    pooling: &PoolingConfig,
) -> std::result::Result<(), String> {
    if !pooling.pooling_mode_mean_tokens
        || pooling.pooling_mode_cls_token
        || pooling.pooling_mode_max_tokens
    {
        return Err("only mean pooling is supported".into());
    }
    if config.hidden_act != "gelu" {
        return Err(format!(
            "activation `{}` is not supported (only `gelu`)",
            config.hidden_act
        ));
    }
    if !config
        .hidden_size
        .is_multiple_of(config.num_attention_heads)
    {
        return Err("hidden_size is not a multiple of the head count".into());
    }
    Ok(())
}

/// `tokenizer.json`, truncating to `max_length` and padding each batch to
/// its longest input.
fn load_tokenizer(dir: &Path, max_length: usize) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let bad = |reason: String| JudgeError::Encoder {
        path: path.clone(),
        reason,
    };
    let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| bad(e.to_string()))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            ..Default::default()
        }))
        .map_err(|e| bad(e.to_string()))?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..Default::default()
    }));
    Ok(tokenizer)
}

impl SentenceEncoder {
    /// Loads an HF BERT sentence-transformers folder (`config.json`,
    /// `model.safetensors`, `tokenizer.json`, `1_Pooling/config.json`).
    /// Inputs longer than `max_tokens` are truncated.
    pub fn load(dir: &Path, max_tokens: usize, device: &Device) -> Result<Self> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let pooling: PoolingConfig = read_json(&dir.join("1_Pooling").join("config.json"))?;
        let weights_path = dir.join("model.safetensors");
        let bad = |reason: String| JudgeError::Encoder {
            path: dir.to_path_buf(),
            reason,
        };
        check_supported(&config, &pooling).map_err(bad)?;
        let mut w = Tensors {
            map: read_tensors(&weights_path)?,
            path: weights_path.clone(),
            device: device.clone(),
        };
        let (d, ff, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let layers = (0..config.num_hidden_layers)
            .map(|l| w.layer(l, d, ff, eps))
            .collect::<Result<Vec<_>>>()?;
        let e = "embeddings";
        let word_name = format!("{e}.word_embeddings.weight");
        let n_vocab = w.map.get(&word_name).map_or(0, |(s, _)| s[0]);
        let word = w.take(&word_name, &[n_vocab, d])?;
        let n_pos = config.max_position_embeddings;
        let position = w.take(&format!("{e}.position_embeddings.weight"), &[n_pos, d])?;
        let types = w.take(&format!("{e}.token_type_embeddings.weight"), &[2, d])?;
        let embedding_norm = w.norm(&format!("{e}.LayerNorm"), d, eps)?;
        // BERT's CLS pooler is not part of a mean-pooled sentence embedding.
        if let Some(extra) = w.map.keys().find(|k| !k.starts_with("pooler.")) {
            return Err(bad(format!("unexpected tensor {extra}")));
        }
        let t1 = |data: Vec<f32>| {
            Tensor::<1>::from_data(TensorData::new(data.clone(), [data.len()]), device)
        };

        let tokenizer = load_tokenizer(dir, max_tokens.min(n_pos))?;
        let sha = persona_model::weights::sha256_files(&[weights_path])?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "encoder".into());
        Ok(Self {
            word_embeddings: Tensor::from_data(TensorData::new(word, [n_vocab, d]), device),
            position_embeddings: Tensor::from_data(TensorData::new(position, [n_pos, d]), device),
            token_type_embedding: t1(types[..d].to_vec()),
            embedding_norm,
            layers,
            tokenizer,
            identity: format!("{name} (sha256 {})", &sha[..16]),
            config,
            device: device.clone(),
        })
    }

    /// Embeds texts, `batch_size` per forward: one unit vector `[d]` each.
    pub fn embed(&self, texts: &[String], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size.max(1)) {
            let enc = self
                .tokenizer
                .encode_batch(chunk.to_vec(), true)
                .map_err(|e| JudgeError::Tokenize(e.to_string()))?;
            let ids: Vec<Vec<u32>> = enc.iter().map(|e| e.get_ids().to_vec()).collect();
            let mask: Vec<Vec<u32>> = enc
                .iter()
                .map(|e| e.get_attention_mask().to_vec())
                .collect();
            out.extend(self.embed_ids(&ids, &mask)?);
        }
        Ok(out)
    }

    /// Embeds pre-tokenised inputs (with `[CLS]`/`[SEP]`, equal lengths;
    /// `mask` 1 = real token, 0 = padding).
    ///
    /// # Shapes
    /// `ids`, `mask`: `[b][s]` -> `[b][d]`
    pub fn embed_ids(&self, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let (b, s) = (ids.len(), ids.first().map_or(0, Vec::len));
        let d = self.config.hidden_size;
        if b == 0 || s == 0 {
            return Ok(Vec::new());
        }
        if s > self.config.max_position_embeddings {
            return Err(JudgeError::Tokenize(format!(
                "{s} tokens exceed the encoder's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let dev = &self.device;
        let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
        let keep: Vec<f32> = mask.iter().flatten().map(|&m| m as f32).collect();
        let ids_t = Tensor::<1, Int>::from_data(TensorData::new(flat, [b * s]), dev);
        let positions = self
            .position_embeddings
            .clone()
            .narrow(0, 0, s)
            .unsqueeze::<3>()
            .repeat_dim(0, b)
            .reshape([b * s, d]);
        let h = self.word_embeddings.clone().select(0, ids_t)
            + positions
            + self.token_type_embedding.clone().unsqueeze::<2>();
        let mut h = self.embedding_norm.forward(h); // # (b*s, d)

        // true = masked: padding keys are never attended to.
        let key_masked: Vec<bool> = (0..b)
            .flat_map(|r| (0..s).flat_map(move |_| (0..s).map(move |k| (r, k))))
            .map(|(r, k)| mask[r][k] == 0)
            .collect();
        let attn_mask =
            Tensor::<4, Bool>::from_data(TensorData::new(key_masked, [b, 1, s, s]), dev);
        let heads = self.config.num_attention_heads;
        let hd = d / heads;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(h.clone()); // # (b*s, 3d)
            let split = |i: usize| {
                qkv.clone()
                    .narrow(1, i * d, d)
                    .reshape([b, s, heads, hd])
                    .swap_dims(1, 2)
            }; // # (b, heads, s, hd)
            let a = attention(
                split(0),
                split(1),
                split(2),
                Some(attn_mask.clone()),
                None,
                AttentionModuleOptions {
                    scale: None,
                    softcap: None,
                    is_causal: false,
                },
            )
            .swap_dims(1, 2)
            .reshape([b * s, d]);
            h = layer
                .attention_norm
                .forward(layer.attention_out.forward(a) + h);
            let f = layer
                .output
                .forward(gelu(layer.intermediate.forward(h.clone())));
            h = layer.output_norm.forward(f + h);
        }
        // Mean over real tokens, then unit length.
        let keep = Tensor::<3>::from_data(TensorData::new(keep, [b, s, 1]), dev);
        let summed = (h.reshape([b, s, d]) * keep.clone()).sum_dim(1); // # (b, 1, d)
        let pooled = summed / keep.sum_dim(1); // # (b, 1, d)
        let norm = pooled.clone().square().sum_dim(2).sqrt(); // # (b, 1, 1)
        let unit = (pooled / norm.clamp_min(1e-12)).reshape([b, d]);
        let flat = persona_model::host_vec(unit)?;
        Ok(flat.chunks(d).map(<[f32]>::to_vec).collect())
    }
}

/// The encoder's tensors while they are being taken apart into layers.
struct Tensors {
    map: TensorMap,
    path: PathBuf,
    device: Device,
}

impl Tensors {
    fn bad(&self, reason: String) -> JudgeError {
        JudgeError::Encoder {
            path: self.path.clone(),
            reason,
        }
    }

    /// Removes tensor `name`, checking its shape.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (s, data) = self
            .map
            .remove(name)
            .ok_or_else(|| self.bad(format!("missing tensor {name}")))?;
        if s != shape {
            return Err(self.bad(format!("tensor {name} has shape {s:?}, expected {shape:?}")));
        }
        Ok(data)
    }

    fn vector(&self, data: Vec<f32>) -> Tensor<1> {
        let n = data.len();
        Tensor::from_data(TensorData::new(data, [n]), &self.device)
    }

    /// HF linears `names` (`[out, in]` weights) fused into one `x @ W`
    /// whose output columns are theirs side by side.
    fn dense(&mut self, names: &[String], inp: usize, out: usize) -> Result<Dense> {
        let total = out * names.len();
        let mut weight = vec![0f32; inp * total];
        let mut bias = Vec::with_capacity(total);
        for (j, n) in names.iter().enumerate() {
            let w = self.take(&format!("{n}.weight"), &[out, inp])?;
            for o in 0..out {
                for i in 0..inp {
                    weight[i * total + j * out + o] = w[o * inp + i];
                }
            }
            bias.extend(self.take(&format!("{n}.bias"), &[out])?);
        }
        Ok(Dense {
            weight: Tensor::from_data(TensorData::new(weight, [inp, total]), &self.device),
            bias: self.vector(bias),
        })
    }

    fn norm(&mut self, name: &str, d: usize, eps: f64) -> Result<LayerNorm> {
        let weight = self.take(&format!("{name}.weight"), &[d])?;
        let bias = self.take(&format!("{name}.bias"), &[d])?;
        Ok(LayerNorm {
            weight: self.vector(weight),
            bias: self.vector(bias),
            eps,
        })
    }

    /// Encoder layer `l`: `d` wide with an `ff`-wide feed-forward.
    fn layer(&mut self, l: usize, d: usize, ff: usize, eps: f64) -> Result<EncoderLayer> {
        let p = format!("encoder.layer.{l}");
        let s = |m: &str| format!("{p}.attention.self.{m}");
        Ok(EncoderLayer {
            qkv: self.dense(&[s("query"), s("key"), s("value")], d, d)?,
            attention_out: self.dense(&[format!("{p}.attention.output.dense")], d, d)?,
            attention_norm: self.norm(&format!("{p}.attention.output.LayerNorm"), d, eps)?,
            intermediate: self.dense(&[format!("{p}.intermediate.dense")], d, ff)?,
            output: self.dense(&[format!("{p}.output.dense")], ff, d)?,
            output_norm: self.norm(&format!("{p}.output.LayerNorm"), d, eps)?,
        })
    }
}
