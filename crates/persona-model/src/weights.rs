//! Host-side weights in HF naming, whatever file they came from.
//!
//! Both loaders end here: the GGUF loader renames llama.cpp's tensors to HF
//! keys and undoes llama.cpp's q/k row permutation; the safetensors loader
//! converts every dtype to f32. The model is then built from this map,
//! strictly: a missing or unexpected key is an error that lists them.
//!
//! Safetensors are read with the `safetensors` crate over a memory map, with
//! the f32 conversion done in parallel (rayon): burn-store's loader was
//! several times slower on this model (benches/RESULTS.md) and its key
//! remaps are regexes; here the keys already match.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::config::{Architecture, ModelConfig};
use crate::dtype::WeightDtype;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::quant::{GgmlType, dequantize};

/// One tensor on the host, row-major, in PyTorch shape order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

/// A host tensor's values in the type they are kept in.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            shape,
            data: HostData::F32(data),
        }
    }

    pub fn dtype(&self) -> WeightDtype {
        match self.data {
            HostData::F32(_) => WeightDtype::F32,
            HostData::Bf16(_) => WeightDtype::Bf16,
            HostData::F16(_) => WeightDtype::F16,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match &self.data {
            HostData::F32(v) => v.len(),
            HostData::Bf16(v) => v.len(),
            HostData::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 (borrowed when they are f32 already; 16-bit values
    /// widen exactly).
    pub fn values(&self) -> Cow<'_, [f32]> {
        match &self.data {
            HostData::F32(v) => Cow::Borrowed(v),
            HostData::Bf16(v) => Cow::Owned(v.par_iter().map(|x| x.to_f32()).collect()),
            HostData::F16(v) => Cow::Owned(v.par_iter().map(|x| x.to_f32()).collect()),
        }
    }

    /// The values as f32, for changing in place: 16-bit values are widened
    /// first (and stay f32).
    pub fn values_mut(&mut self) -> &mut Vec<f32> {
        if !matches!(self.data, HostData::F32(_)) {
            self.data = HostData::F32(self.values().into_owned());
        }
        match &mut self.data {
            HostData::F32(v) => v,
            _ => unreachable!("widened above"),
        }
    }

    /// The type a tensor of `shape` is kept in when the weights are kept as
    /// `dtype`: matrices (projections, embedding table) take it, vectors
    /// (norm weights, biases) stay f32 (see [`crate::dtype`]).
    pub fn kept_type(shape: &[usize], dtype: WeightDtype) -> WeightDtype {
        if shape.len() >= 2 {
            dtype
        } else {
            WeightDtype::F32
        }
    }

    /// The tensor kept as [`HostTensor::kept_type`] says for `dtype`.
    pub fn into_kept(self, dtype: WeightDtype, name: &str) -> Result<Self> {
        let dtype = Self::kept_type(&self.shape, dtype);
        self.into_dtype(dtype, name)
    }

    /// The tensor kept as `dtype`, rounded to nearest. `name` is for the
    /// error when a finite value is beyond the type's range (f16 above 65504).
    pub fn into_dtype(self, dtype: WeightDtype, name: &str) -> Result<Self> {
        if self.dtype() == dtype {
            return Ok(self);
        }
        let values = self.values();
        let data = match dtype {
            WeightDtype::F32 => HostData::F32(values.into_owned()),
            WeightDtype::Bf16 => {
                HostData::Bf16(values.par_iter().map(|&x| bf16::from_f32(x)).collect())
            }
            WeightDtype::F16 => {
                let narrowed: Vec<f16> = values.par_iter().map(|&x| f16::from_f32(x)).collect();
                if let Some(x) = values
                    .iter()
                    .zip(&narrowed)
                    .find(|(x, h)| x.is_finite() && !h.is_finite())
                {
                    return Err(ModelError::Input(format!(
                        "tensor {name} holds {} beyond f16's range (65504): load it as bf16 or f32 (`--dtype`, `[model] dtype`)",
                        x.0
                    )));
                }
                HostData::F16(narrowed)
            }
        };
        Ok(Self {
            shape: self.shape,
            data,
        })
    }
}

/// All of a model's tensors keyed by HF names (`model.layers.0.self_attn.q_proj.weight`).
pub type WeightMap = BTreeMap<String, HostTensor>;

/// The HF keys a model with this config must have, with their shapes.
pub fn expected_shapes(cfg: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let mut m = BTreeMap::new();
    let (d, hd, ff) = (cfg.d_model, cfg.head_dim, cfg.d_ff);
    let (q_out, kv_out) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
    m.insert("model.embed_tokens.weight".into(), vec![cfg.vocab_size, d]);
    m.insert("model.norm.weight".into(), vec![d]);
    if !cfg.tie_embeddings {
        m.insert("lm_head.weight".into(), vec![cfg.vocab_size, d]);
    }
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}");
        m.insert(format!("{p}.input_layernorm.weight"), vec![d]);
        m.insert(format!("{p}.post_attention_layernorm.weight"), vec![d]);
        m.insert(format!("{p}.self_attn.q_proj.weight"), vec![q_out, d]);
        m.insert(format!("{p}.self_attn.k_proj.weight"), vec![kv_out, d]);
        m.insert(format!("{p}.self_attn.v_proj.weight"), vec![kv_out, d]);
        m.insert(format!("{p}.self_attn.o_proj.weight"), vec![d, q_out]);
        if cfg.qkv_bias {
            m.insert(format!("{p}.self_attn.q_proj.bias"), vec![q_out]);
            m.insert(format!("{p}.self_attn.k_proj.bias"), vec![kv_out]);
            m.insert(format!("{p}.self_attn.v_proj.bias"), vec![kv_out]);
        }
        m.insert(format!("{p}.mlp.gate_proj.weight"), vec![ff, d]);
        m.insert(format!("{p}.mlp.up_proj.weight"), vec![ff, d]);
        m.insert(format!("{p}.mlp.down_proj.weight"), vec![d, ff]);
    }
    m
}

/// Checks that `weights` holds exactly the expected keys with the expected shapes.
pub fn check_strict(cfg: &ModelConfig, weights: &WeightMap) -> Result<()> {
    let shapes: BTreeMap<String, Vec<usize>> = weights
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    check_shapes(cfg, &shapes)
}

/// Checks that `shapes` names exactly the expected keys with the expected
/// shapes (before any tensor is converted: a file's sizes are only used
/// once they are known to be the model's).
pub fn check_shapes(cfg: &ModelConfig, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    let expected = expected_shapes(cfg);
    let want: BTreeSet<&String> = expected.keys().collect();
    let have: BTreeSet<&String> = shapes.keys().collect();
    let missing: Vec<String> = want.difference(&have).map(|s| s.to_string()).collect();
    let unexpected: Vec<String> = have.difference(&want).map(|s| s.to_string()).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(ModelError::KeyMismatch {
            missing,
            unexpected,
        });
    }
    for (name, shape) in &expected {
        let found = &shapes[name];
        if found != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.clone(),
                found: found.clone(),
                expected: shape.clone(),
            });
        }
    }
    Ok(())
}

/// Maps a llama.cpp tensor name to its HF key.
fn hf_name_of_gguf(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's q/k permutation.
///
/// llama.cpp's converter reorders the rows of each head from HF's
/// `[two, half]` layout (rotate-half RoPE pairs dimension i with i + hd/2) to
/// `[half, two]` (its interleaved RoPE pairs 2i with 2i+1). We keep HF's
/// layout and rotate-half RoPE everywhere, so GGUF row `h*hd + 2i + t` goes
/// back to HF row `h*hd + t*hd/2 + i`. Without this, q/k differ by up to ~5.7
/// and logits are wrong.
pub fn unpermute_rows(data: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    let n_rows = data.len() / row_len;
    let hd = n_rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for t in 0..2 {
                let g = h * hd + 2 * i + t;
                let r = h * hd + t * half + i;
                out[r * row_len..(r + 1) * row_len]
                    .copy_from_slice(&data[g * row_len..(g + 1) * row_len]);
            }
        }
    }
    out
}

/// Dequantises every tensor of a GGUF file into HF naming and layout, kept
/// as `dtype` (each tensor is narrowed as soon as it is dequantised, so at
/// most one f32 tensor per thread exists besides the map).
pub fn from_gguf(g: &GgufFile, cfg: &ModelConfig, dtype: WeightDtype) -> Result<WeightMap> {
    let mut unknown = Vec::new();
    let mut jobs = Vec::new();
    for info in &g.tensors {
        match hf_name_of_gguf(&info.name) {
            Some(hf) => jobs.push((hf, info)),
            None => unknown.push(info.name.clone()),
        }
    }
    if !unknown.is_empty() {
        return Err(ModelError::KeyMismatch {
            missing: vec![],
            unexpected: unknown,
        });
    }
    let mut shapes = BTreeMap::new();
    for (hf, info) in &jobs {
        if shapes.insert(hf.clone(), info.shape.clone()).is_some() {
            return Err(ModelError::Gguf {
                path: g.path().to_path_buf(),
                reason: format!("tensor {} appears twice", info.name),
            });
        }
    }
    check_shapes(cfg, &shapes)?;
    let converted: Vec<Result<(String, HostTensor)>> = jobs
        .into_par_iter()
        .map(|(hf, info)| {
            let mut data = g.dequantize(info)?;
            // Only llama's converter permutes (qwen2 keeps HF order, NEOX RoPE).
            if cfg.architecture == Architecture::Llama {
                let heads = if hf.contains("q_proj") {
                    Some(cfg.n_heads)
                } else if hf.contains("k_proj") {
                    Some(cfg.n_kv_heads)
                } else {
                    None
                };
                if let Some(n) = heads {
                    let row_len = if info.shape.len() == 2 {
                        info.shape[1]
                    } else {
                        1
                    };
                    data = unpermute_rows(&data, n, row_len);
                }
            }
            let t = HostTensor::f32(info.shape.clone(), data).into_kept(dtype, &hf)?;
            Ok((hf, t))
        })
        .collect();
    converted.into_iter().collect()
}

/// Reads every `*.safetensors` shard in an HF directory (the index file, when
/// present, decides the shard list), each tensor kept as `dtype`.
pub fn from_safetensors_dir(dir: &Path, dtype: WeightDtype) -> Result<(WeightMap, Vec<PathBuf>)> {
    let files = safetensors_files(dir)?;
    let mut weights = WeightMap::new();
    for f in &files {
        read_safetensors(f, dtype, &mut weights)?;
    }
    Ok((weights, files))
}

/// The weight files of an HF directory: the shards named by
/// `model.safetensors.index.json`, or `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    Ok(if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
                path: index.clone(),
                reason: e.to_string(),
            })?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::Safetensors {
                path: index.clone(),
                reason: "no `weight_map` object".into(),
            })?;
        let mut names = BTreeSet::new();
        for v in map.values() {
            let name = v.as_str().ok_or_else(|| ModelError::Safetensors {
                path: index.clone(),
                reason: format!("`weight_map` value {v} is not a file name"),
            })?;
            names.insert(shard_path(dir, &index, name)?);
        }
        names.into_iter().collect()
    } else {
        vec![dir.join("model.safetensors")]
    })
}

/// A shard named by an index file: a relative path inside the model folder
/// (no `..`, no absolute path) to a regular file. Symlinks are followed, as
/// the HF hub cache links snapshot files to its blob store, but what they
/// reach must be a regular file (never a device such as `/dev/zero`).
fn shard_path(dir: &Path, index: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    let plain = !name.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    let bad = |reason: String| ModelError::Safetensors {
        path: index.to_path_buf(),
        reason,
    };
    if !plain {
        return Err(bad(format!(
            "shard `{name}` is not a relative path inside the model folder"
        )));
    }
    let path = dir.join(rel);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(bad(format!("shard `{name}` is not a regular file"))),
        Err(e) => Err(ModelError::io(&path, e)),
    }
}

/// Reads one safetensors file into f32 host tensors (and returns its path).
pub fn from_safetensors_file(path: &Path) -> Result<(WeightMap, PathBuf)> {
    let mut w = WeightMap::new();
    read_safetensors(path, WeightDtype::F32, &mut w)?;
    Ok((w, path.to_path_buf()))
}

/// Reads the tensors of one safetensors file into `out` as `dtype`, from a
/// memory map, one tensor at a time per thread: a tensor stored in `dtype`
/// is copied once, any other is converted through f32 on its own, so the
/// host holds about one copy of the weights in `dtype`.
fn read_safetensors(path: &Path, dtype: WeightDtype, out: &mut WeightMap) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: read-only map of a file we do not modify.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let bad = |reason: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    check_unique_keys(&mmap).map_err(&bad)?;
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| bad(e.to_string()))?;
    let views: Vec<_> = st.tensors();
    let converted: Vec<Result<(String, HostTensor)>> = views
        .into_par_iter()
        .map(|(name, view)| {
            use safetensors::Dtype;
            let b = view.data();
            // Same conversions as GGUF's float types.
            let ggml = match view.dtype() {
                Dtype::F32 => GgmlType::F32,
                Dtype::F16 => GgmlType::F16,
                Dtype::BF16 => GgmlType::BF16,
                other => {
                    return Err(bad(format!(
                        "tensor {name} has unsupported dtype {other:?}"
                    )));
                }
            };
            let shape = view.shape().to_vec();
            let pairs = || b.chunks_exact(2).map(|c| [c[0], c[1]]);
            let t = match (ggml, HostTensor::kept_type(&shape, dtype)) {
                (GgmlType::BF16, WeightDtype::Bf16) => HostTensor {
                    shape,
                    data: HostData::Bf16(pairs().map(bf16::from_le_bytes).collect()),
                },
                (GgmlType::F16, WeightDtype::F16) => HostTensor {
                    shape,
                    data: HostData::F16(pairs().map(f16::from_le_bytes).collect()),
                },
                _ => HostTensor::f32(shape, dequantize(ggml, b, &name)?).into_kept(dtype, &name)?,
            };
            Ok((name, t))
        })
        .collect();
    for r in converted {
        let (name, t) = r?;
        if out.insert(name.clone(), t).is_some() {
            return Err(bad(format!("tensor {name} appears in more than one shard")));
        }
    }
    Ok(())
}

/// Refuses a safetensors header that names a key twice: the `safetensors`
/// crate reads the header into a map and keeps the last entry without a
/// word. Other header errors are left to the crate's own checks.
pub fn check_unique_keys(bytes: &[u8]) -> std::result::Result<(), String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    /// Reads a JSON object's keys; its value is the first key seen twice.
    struct FirstRepeat;
    impl<'de> Visitor<'de> for FirstRepeat {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let (mut seen, mut repeat) = (BTreeSet::new(), None);
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    repeat.get_or_insert(key);
                }
            }
            Ok(repeat)
        }
    }
    let header = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .and_then(|len| bytes.get(8..8usize.saturating_add(usize::try_from(len).ok()?)))
        .and_then(|h| std::str::from_utf8(h).ok());
    let Some(header) = header else {
        return Ok(());
    };
    match serde_json::Deserializer::from_str(header).deserialize_map(FirstRepeat) {
        Ok(Some(key)) => Err(format!("the header names `{key}` twice")),
        _ => Ok(()),
    }
}

/// Writes `weights` as one safetensors file, each tensor in the type it is
/// kept in (f32, BF16 or F16), atomically (see
/// [`crate::files::write_atomic_with`]).
pub fn write_safetensors(weights: &WeightMap, path: &Path) -> Result<()> {
    write_safetensors_except(weights, &[], path)
}

/// [`write_safetensors`] without the tensors named in `skip` (no copy of
/// the rest is made).
pub fn write_safetensors_except(weights: &WeightMap, skip: &[&str], path: &Path) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = weights
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, t)| {
            let (dtype, bytes) = match &t.data {
                HostData::F32(v) => (safetensors::Dtype::F32, plain_bytes(v)),
                HostData::Bf16(v) => (safetensors::Dtype::BF16, plain_bytes(v)),
                HostData::F16(v) => (safetensors::Dtype::F16, plain_bytes(v)),
            };
            safetensors::tensor::TensorView::new(dtype, t.shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| ModelError::Safetensors {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<_>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    crate::files::write_atomic_with(path, |tmp, file| {
        drop(file);
        safetensors::serialize_to_file(views, Some(meta), tmp).map_err(|e| {
            ModelError::Safetensors {
                path: path.to_path_buf(),
                reason: format!("cannot write: {e}"),
            }
        })
    })
}

/// The number types a tensor is kept in: no padding, every bit pattern a
/// value.
trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for bf16 {}
impl Plain for f16 {}

fn plain_bytes<T: Plain>(data: &[T]) -> &[u8] {
    // SAFETY: `Plain` types have no padding and any byte pattern is a valid
    // u8; the slice covers exactly the data. Safetensors stores
    // little-endian, which is the layout of every target this project
    // builds for.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

/// The SHA-256 of a set of files (hex), in the order given: the model's
/// identity in provenance records and vector files.
pub fn sha256_files(files: &[PathBuf]) -> Result<String> {
    let mut outer = Sha256::new();
    for f in files {
        let mut h = Sha256::new();
        let mut file = std::fs::File::open(f).map_err(|e| ModelError::io(f, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| ModelError::io(f, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        if files.len() == 1 {
            return Ok(hex(&h.finalize()));
        }
        outer.update(h.finalize());
    }
    Ok(hex(&outer.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (heads, hd, row) = (3, 8, 5);
        let hf: Vec<f32> = (0..heads * hd * row).map(|x| x as f32).collect();
        let g = crate::testing::permute_rows(&hf, heads, row);
        assert_ne!(g, hf);
        assert_eq!(unpermute_rows(&g, heads, row), hf);
    }

    #[test]
    fn gguf_names_map_to_hf_keys() {
        assert_eq!(
            hf_name_of_gguf("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name_of_gguf("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name_of_gguf("rope_freqs.weight"), None);
    }
}
