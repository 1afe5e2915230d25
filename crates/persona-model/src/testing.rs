//! A tiny randomly initialised model for fast tests (here and in the crates
//! downstream): a few layers, small dims, grouped-query attention.

use burn::tensor::Device;
use rand::SeedableRng;
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
        rope_scaling: None,
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
            let data = crate::synthetic::draw(&name, &shape, &mut rng);
            (name, HostTensor::f32(shape, data))
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

/// GGUF metadata by key.
pub type GgufMetadata = std::collections::BTreeMap<String, crate::gguf::Value>;

/// F32 tensors for a GGUF file: name, shape (PyTorch order), values.
pub type GgufTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The GGUF metadata of [`tiny_config`] with a tiny byte-level tokenizer
/// (3 special tokens, then `Ġ` (space), `Ċ` (newline) and 92 printable
/// ASCII characters, no merges) and a ChatML-style template: enough to
/// render, encode and decode short ASCII chats.
pub fn tiny_gguf_metadata() -> GgufMetadata {
    use crate::gguf::Value;
    let cfg = tiny_config();
    let (tokens, types) = crate::tokenizer::byte_level_tokens(cfg.vocab_size);
    let types: Vec<Value> = types.into_iter().map(Value::U64).collect();
    let template = crate::tokenizer::CHATML_TEMPLATE;
    let u = |v: usize| Value::U64(v as u64);
    [
        ("general.architecture", Value::Str("llama".into())),
        ("llama.block_count", u(cfg.n_layers)),
        ("llama.context_length", u(cfg.max_positions)),
        ("llama.embedding_length", u(cfg.d_model)),
        ("llama.feed_forward_length", u(cfg.d_ff)),
        ("llama.attention.head_count", u(cfg.n_heads)),
        ("llama.attention.head_count_kv", u(cfg.n_kv_heads)),
        ("llama.rope.freq_base", Value::F64(cfg.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F64(cfg.rms_eps),
        ),
        ("llama.vocab_size", u(cfg.vocab_size)),
        ("tokenizer.ggml.model", Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Value::Str("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::Str).collect()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(Vec::new())),
        ("tokenizer.ggml.bos_token_id", u(1)),
        ("tokenizer.ggml.eos_token_id", u(2)),
        ("tokenizer.chat_template", Value::Str(template.into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The GGUF tensors of `weights` (HF names and shapes) in llama.cpp's names
/// and layout, F32; the inverse of what the GGUF loader reads (q/k rows
/// permuted for interleaved RoPE, shapes reversed on disk).
pub fn gguf_tensors(cfg: &ModelConfig, weights: &WeightMap) -> GgufTensors {
    let module = |m: &str| match m {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    weights
        .iter()
        .map(|(name, t)| {
            let gguf = match name.as_str() {
                "model.embed_tokens.weight" => "token_embd.weight".to_string(),
                "model.norm.weight" => "output_norm.weight".to_string(),
                "lm_head.weight" => "output.weight".to_string(),
                other => {
                    let rest = other.strip_prefix("model.layers.").expect("a layer key");
                    let (layer, rest) = rest.split_once('.').expect("layer.module");
                    let (m, kind) = rest.rsplit_once('.').expect("module.kind");
                    format!("blk.{layer}.{}.{kind}", module(m))
                }
            };
            let heads = if name.contains("q_proj.weight") {
                Some(cfg.n_heads)
            } else if name.contains("k_proj.weight") {
                Some(cfg.n_kv_heads)
            } else {
                None
            };
            let data = match heads {
                Some(n) => permute_rows(&t.values(), n, t.shape[1]),
                None => t.values().into_owned(),
            };
            (gguf, t.shape.clone(), data)
        })
        .collect()
}

/// llama.cpp's q/k row permutation (HF rotate-half -> interleaved pairs),
/// the inverse of [`crate::weights::unpermute_rows`]: its converter's
/// `reshape(n_head, 2, half, row).swapaxes(1, 2)`, so out[h, i, t] = in[h, t, i].
pub(crate) fn permute_rows(hf: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    let hd = hf.len() / row_len / n_heads;
    let half = hd / 2;
    let mut out = vec![0f32; hf.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for t in 0..2 {
                let src = h * hd + t * half + i;
                let dst = h * hd + i * 2 + t;
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&hf[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

/// GGUF v3 bytes: `metadata` (integers as u64, floats as f64), then F32
/// tensors given in PyTorch shape order.
pub fn gguf_bytes(metadata: &GgufMetadata, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    use crate::gguf::Value;
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
        }
    }
    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
            Value::Bool(b) => out.push(*b as u8),
            Value::Str(s) => put_str(out, s),
            Value::Array(items) => {
                out.extend(items.first().map_or(10, type_id).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| put_value(out, i));
            }
        }
    }
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend(type_id(v).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    for (name, shape, data) in tensors {
        put_str(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(0u32.to_le_bytes()); // F32
        out.extend(offset.to_le_bytes());
        offset += (data.len() as u64 * 4).div_ceil(32) * 32;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    for (_, _, data) in tensors {
        data.iter().for_each(|x| out.extend(x.to_le_bytes()));
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
    }
    out
}

/// A complete GGUF file of the tiny model ([`tiny_config`], weights from
/// `seed`, [`tiny_gguf_metadata`]).
pub fn tiny_gguf(seed: u64) -> Vec<u8> {
    let cfg = tiny_config();
    gguf_bytes(
        &tiny_gguf_metadata(),
        &gguf_tensors(&cfg, &random_weights(&cfg, seed)),
    )
}

/// Converts the model at `source` (a GGUF file or model name) into an HF
/// folder at `out`, the way `persona convert` does. Panics on failure.
pub fn write_hf_copy(source: &str, out: &std::path::Path) {
    crate::load_host(source)
        .unwrap_or_else(|e| panic!("{source}: {e}"))
        .write_hf_dir(out)
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny GGUF loads through the real GGUF path with the tiny
    /// weights, unpermuted, and its tokenizer and template work.
    #[test]
    fn the_tiny_gguf_loads_as_the_tiny_model() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.gguf");
        std::fs::write(&p, tiny_gguf(4)).unwrap();
        let host = crate::load_host(p.to_str().unwrap()).unwrap();
        assert_eq!(host.config, tiny_config());
        assert_eq!(host.weights, random_weights(&tiny_config(), 4));
        let ids = host
            .codec
            .prompt_ids(&[crate::Message::user("Hi there!")])
            .unwrap();
        let text = host.codec.decode(&ids).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
