//! Persona-vector files: `[n_layers + 1, d_model]` f32 tensors per variant in
//! a safetensors file, with metadata that ties them to one model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use persona_model::config::limits;
use persona_model::{ModelConfig, ModelIdentity};
use serde::{Deserialize, Serialize};

/// The row convention, written into every file.
pub const ROW_CONVENTION: &str =
    "row 0 = embedding output; row l = output of block l-1, pre-final-norm";
pub const FORMAT_VERSION: u32 = 1;
/// The metadata key holding [`VectorMeta`] as JSON.
const META_KEY: &str = "persona";

/// Which reduction of the residual stream a persona vector was taken over;
/// a vector file holds one `[n_layers + 1, d_model]` tensor per variant,
/// named by [`Variant::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The mean over response tokens: the one to steer with (the paper's).
    ResponseAvg,
    /// The mean over prompt tokens.
    PromptAvg,
    /// The last prompt token.
    PromptLast,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Self::ResponseAvg, Self::PromptAvg, Self::PromptLast];

    /// The tensor name in a vector file and the word in recipes and flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::ResponseAvg => "response_avg",
            Self::PromptAvg => "prompt_avg",
            Self::PromptLast => "prompt_last",
        }
    }

    /// The reduction the runtime computes for this variant.
    pub fn reduction(self) -> persona_model::Reduction {
        match self {
            Self::ResponseAvg => persona_model::Reduction::ResponseMean,
            Self::PromptAvg => persona_model::Reduction::PromptMean,
            Self::PromptLast => persona_model::Reduction::LastPrompt,
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                format!("unknown variant `{s}`; use response_avg, prompt_avg or prompt_last")
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("cannot read vector file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write vector file {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot export vector file {path}: {reason}")]
    Export { path: PathBuf, reason: String },
    #[error(
        "vector file {path} was extracted from model `{file_model}` (sha256 {file_sha}), not from `{model}` (sha256 {model_sha}); extract a vector for this model with `persona extract`"
    )]
    WrongModel {
        path: PathBuf,
        file_model: String,
        file_sha: String,
        model: String,
        model_sha: String,
    },
    #[error(
        "vector file {path} has shape [{rows}, {width}] but the model needs [{want_rows}, {want_width}] (n_layers + 1 rows of d_model); it belongs to another model"
    )]
    Shape {
        path: PathBuf,
        rows: usize,
        width: usize,
        want_rows: usize,
        want_width: usize,
    },
    #[error("vector file {path} has no variant `{variant}`; it has: {available:?}")]
    NoVariant {
        path: PathBuf,
        variant: Variant,
        available: Vec<Variant>,
    },
    #[error(
        "row {row} of variant `{variant}` in vector file {path} is zero, so it has no direction; pick another row"
    )]
    ZeroRow {
        path: PathBuf,
        variant: Variant,
        row: usize,
    },
    #[error(
        "row {row} is out of range for vector file {path}: rows are 0..={max} (row 0 = embedding output, row l = output of block l-1)"
    )]
    Row {
        path: PathBuf,
        row: usize,
        max: usize,
    },
}

/// What a vector file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorMeta {
    pub format_version: u32,
    pub row_convention: String,
    pub model_name: String,
    pub model_sha256: String,
    pub d_model: usize,
    pub n_layers: usize,
    /// Everything else (trait, judge, counts, chosen layer, sweeps), free-form.
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A loaded vector file.
#[derive(Debug, Clone)]
pub struct VectorFile {
    pub path: PathBuf,
    pub meta: VectorMeta,
    /// Variant -> row-major `[n_layers + 1, d_model]`.
    pub variants: BTreeMap<Variant, Vec<f32>>,
}

impl VectorFile {
    pub fn new(meta: VectorMeta) -> Self {
        Self {
            path: PathBuf::new(),
            meta,
            variants: BTreeMap::new(),
        }
    }

    /// Reads a vector file; checks that every variant has the shape its metadata claims.
    pub fn load(path: &Path) -> Result<Self, VectorError> {
        let read_err = |reason: String| VectorError::Read {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| read_err(format!("not a safetensors file: {e}")))?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| {
                read_err(format!(
                    "no `{META_KEY}` metadata (not a persona vector file)"
                ))
            })?;
        let meta: VectorMeta =
            serde_json::from_str(meta_json).map_err(|e| read_err(format!("bad metadata: {e}")))?;
        if meta.format_version != FORMAT_VERSION {
            return Err(read_err(format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                meta.format_version
            )));
        }
        // Sizes come from the file: bound them before they shape a loop.
        if meta.n_layers > limits::N_LAYERS || !(1..=limits::D_MODEL).contains(&meta.d_model) {
            return Err(read_err(format!(
                "implausible shape in the metadata: n_layers {} (at most {}), d_model {} (1..={})",
                meta.n_layers,
                limits::N_LAYERS,
                meta.d_model,
                limits::D_MODEL
            )));
        }
        persona_model::weights::check_unique_keys(&bytes).map_err(&read_err)?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| read_err(e.to_string()))?;
        let mut variants = BTreeMap::new();
        for (name, view) in st.tensors() {
            let variant: Variant = name.parse().map_err(&read_err)?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(read_err(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let shape = view.shape();
            if shape != [meta.n_layers + 1, meta.d_model] {
                return Err(VectorError::Shape {
                    path: path.to_path_buf(),
                    rows: shape.first().copied().unwrap_or(0),
                    width: shape.get(1).copied().unwrap_or(0),
                    want_rows: meta.n_layers + 1,
                    want_width: meta.d_model,
                });
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                return Err(read_err(format!(
                    "variant `{name}` holds a non-finite value ({}) at row {}; the file is corrupt, extract the vector again",
                    data[i],
                    i / meta.d_model
                )));
            }
            variants.insert(variant, data);
        }
        if variants.is_empty() {
            return Err(read_err("holds no vectors".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            meta,
            variants,
        })
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), VectorError> {
        let write_err = |reason: String| VectorError::Write {
            path: path.to_path_buf(),
            reason,
        };
        let shape = vec![self.meta.n_layers + 1, self.meta.d_model];
        let mut views = Vec::new();
        for (variant, data) in &self.variants {
            let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            views.push((variant.name().to_string(), shape.clone(), bytes));
        }
        let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = views
            .iter()
            .map(|(n, s, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| write_err(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let mut meta = HashMap::new();
        meta.insert(
            META_KEY.to_string(),
            serde_json::to_string(&self.meta).map_err(|e| write_err(e.to_string()))?,
        );
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| write_err(e.to_string()))?;
        }
        persona_model::files::write_atomic_with(path, |tmp, file| {
            drop(file);
            safetensors::serialize_to_file(tensors, Some(meta), tmp)
                .map_err(|e| persona_model::ModelError::write(tmp, std::io::Error::other(e)))
        })
        .map_err(|e| write_err(e.to_string()))
    }

    /// Refuses a file made for another model: shape first, then weight hash.
    pub fn check_model(&self, cfg: &ModelConfig, id: &ModelIdentity) -> Result<(), VectorError> {
        if self.meta.n_layers != cfg.n_layers || self.meta.d_model != cfg.d_model {
            return Err(VectorError::Shape {
                path: self.path.clone(),
                rows: self.meta.n_layers + 1,
                width: self.meta.d_model,
                want_rows: cfg.n_layers + 1,
                want_width: cfg.d_model,
            });
        }
        if self.meta.model_sha256 != id.sha256 {
            return Err(VectorError::WrongModel {
                path: self.path.clone(),
                file_model: self.meta.model_name.clone(),
                file_sha: self.meta.model_sha256.clone(),
                model: id.name.clone(),
                model_sha: id.sha256.clone(),
            });
        }
        Ok(())
    }

    /// `v̂_row = v_row / |v_row|` of one variant (projections use the unit
    /// vector; steering uses the raw one). A zero row is an error.
    pub fn unit_row(&self, variant: Variant, row: usize) -> Result<Vec<f32>, VectorError> {
        let v = self.row(variant, row)?;
        unit(v).ok_or_else(|| VectorError::ZeroRow {
            path: self.path.clone(),
            variant,
            row,
        })
    }

    /// One row `[d_model]` of one variant.
    pub fn row(&self, variant: Variant, row: usize) -> Result<&[f32], VectorError> {
        let data = self
            .variants
            .get(&variant)
            .ok_or_else(|| VectorError::NoVariant {
                path: self.path.clone(),
                variant,
                available: self.variants.keys().copied().collect(),
            })?;
        if row > self.meta.n_layers {
            return Err(VectorError::Row {
                path: self.path.clone(),
                row,
                max: self.meta.n_layers,
            });
        }
        let d = self.meta.d_model;
        Ok(&data[row * d..(row + 1) * d])
    }
}

/// `v / |v|` computed in f64; `None` for a zero (or non-finite) vector.
pub fn unit(v: &[f32]) -> Option<Vec<f32>> {
    let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (n > 0.0 && n.is_finite()).then(|| v.iter().map(|x| (*x as f64 / n) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_model::testing::tiny_config;

    fn sample() -> VectorFile {
        let cfg = tiny_config();
        let mut f = VectorFile::new(VectorMeta {
            format_version: FORMAT_VERSION,
            row_convention: ROW_CONVENTION.into(),
            model_name: "tiny".into(),
            model_sha256: "abc".into(),
            d_model: cfg.d_model,
            n_layers: cfg.n_layers,
            extra: serde_json::json!({"trait": "test"}),
        });
        let data: Vec<f32> = (0..(cfg.n_layers + 1) * cfg.d_model)
            .map(|i| i as f32)
            .collect();
        f.variants.insert(Variant::ResponseAvg, data);
        f
    }

    #[test]
    fn round_trip_and_row_access() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.safetensors");
        sample().save(&p).unwrap();
        let f = VectorFile::load(&p).unwrap();
        assert_eq!(f.meta, sample().meta);
        assert_eq!(f.row(Variant::ResponseAvg, 2).unwrap()[0], 64.0);
        assert!(matches!(
            f.row(Variant::ResponseAvg, 4),
            Err(VectorError::Row { .. })
        ));
        assert!(matches!(
            f.row(Variant::PromptAvg, 0),
            Err(VectorError::NoVariant { .. })
        ));
    }

    #[test]
    fn other_models_are_refused() {
        let f = sample();
        let mut cfg = tiny_config();
        let id = ModelIdentity {
            name: "tiny".into(),
            sha256: "abc".into(),
            path: PathBuf::new(),
            hf_id: None,
        };
        f.check_model(&cfg, &id).unwrap();
        let other = ModelIdentity {
            sha256: "def".into(),
            ..id.clone()
        };
        assert!(matches!(
            f.check_model(&cfg, &other),
            Err(VectorError::WrongModel { .. })
        ));
        cfg.d_model = 64;
        let e = f.check_model(&cfg, &id).unwrap_err().to_string();
        assert!(e.contains("another model"), "{e}");
    }
}
