//! The persona vectors a server steers and monitors with: the files of
//! its `--vectors` folder by name, loaded and unloaded while it serves,
//! or any vector file by path. Every file is checked against the served
//! model before use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use persona_model::{ModelConfig, ModelIdentity};
use persona_vectors::{Variant, VectorFile};
use serde::Serialize;

use crate::api::VectorAt;
use crate::error::{ApiError, ServeError};

/// Vector files by name, for one base model.
pub struct VectorStore {
    config: ModelConfig,
    identity: ModelIdentity,
    files: RwLock<BTreeMap<String, Arc<VectorFile>>>,
}

/// What `GET /v1/persona/vectors` lists per vector.
#[derive(Debug, Clone, Serialize)]
pub struct VectorInfo {
    pub name: String,
    pub path: PathBuf,
    pub variants: Vec<&'static str>,
    /// The row `persona vector select` chose, when it ran.
    pub chosen_row: Option<usize>,
    pub rows: usize,
    pub d_model: usize,
}

/// One row of one vector, ready to steer or project with.
#[derive(Debug, Clone)]
pub struct VectorRow {
    /// The name the request used (a file name or a path).
    pub name: String,
    pub row: usize,
    /// The raw row `[d_model]` (steering adds `coef` times it).
    pub values: Vec<f32>,
}

impl VectorStore {
    /// Every `*.safetensors` file in `dir` (none without a folder), each
    /// checked against the model: a file of another model stops startup.
    pub fn open(
        dir: Option<&Path>,
        config: ModelConfig,
        identity: ModelIdentity,
    ) -> Result<Self, ServeError> {
        let store = Self {
            config,
            identity,
            files: RwLock::new(BTreeMap::new()),
        };
        let Some(dir) = dir else { return Ok(store) };
        let entries = std::fs::read_dir(dir).map_err(|e| {
            ServeError::Setup(format!(
                "cannot read the vectors folder {}: {e}",
                dir.display()
            ))
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        for p in paths {
            store.insert(&p, None)?;
        }
        Ok(store)
    }

    /// Reads and checks a vector file; stores it under `name` (default:
    /// its file stem).
    fn insert(&self, path: &Path, name: Option<String>) -> Result<VectorInfo, ServeError> {
        let file = self.read_checked(path)?;
        let name = match name {
            Some(n) => n,
            None => file_stem(path)?,
        };
        let info = info(&name, &file);
        self.write().insert(name, Arc::new(file));
        Ok(info)
    }

    fn read_checked(&self, path: &Path) -> Result<VectorFile, ServeError> {
        // A regular file no larger than three variants of this model's
        // shape and a header: not a device, a pipe or a huge file.
        let max = 3 * (self.config.n_layers + 1) * self.config.d_model * 4 + (1 << 20);
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.len() as usize <= max => {}
            Ok(m) if m.is_file() => {
                return Err(ServeError::Setup(format!(
                    "{}: {} bytes is more than a vector file of this model can hold ({max})",
                    path.display(),
                    m.len()
                )));
            }
            Ok(_) => {
                return Err(ServeError::Setup(format!(
                    "{}: not a regular file",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(ServeError::Setup(format!("{}: {e}", path.display())));
            }
        }
        let file = VectorFile::load(path)?;
        file.check_model(&self.config, &self.identity)?;
        Ok(file)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<VectorFile>>> {
        // A poisoned lock only means a panic elsewhere; the map stays whole.
        self.files.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<VectorFile>>> {
        self.files.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<VectorInfo> {
        self.read().iter().map(|(n, f)| info(n, f)).collect()
    }

    /// `POST /v1/persona/vectors`: loads a file from a path on the server.
    pub fn load(&self, path: &str, name: Option<String>) -> Result<VectorInfo, ApiError> {
        if let Some(n) = &name
            && !valid_name(n)
        {
            return Err(ApiError::field(
                "name",
                format!("vector name `{n}` must be letters, digits, `-`, `_` or `.`"),
            ));
        }
        self.insert(Path::new(path), name)
            .map_err(|e| ApiError::field("path", e.to_string()))
    }

    /// `DELETE /v1/persona/vectors/{name}`.
    pub fn unload(&self, name: &str) -> Result<(), ApiError> {
        self.write()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| ApiError::not_found(format!("no vector named `{name}` is loaded")))
    }

    /// The row a request names (`param` is the request field, for errors):
    /// a loaded vector by name, else a file by path (`/` in it or a
    /// `.safetensors` ending); the request's row, else the file's chosen row.
    pub fn resolve(&self, at: &VectorAt, param: &str) -> Result<VectorRow, ApiError> {
        let field = |k: &str, m: String| ApiError::field(format!("{param}.{k}"), m);
        // The guard ends here: the arms below take the lock again or read
        // a file.
        let loaded = self.read().get(&at.vector).cloned();
        let file = match loaded {
            Some(f) => f,
            None if at.vector.contains('/') || at.vector.ends_with(".safetensors") => Arc::new(
                self.read_checked(Path::new(&at.vector))
                    .map_err(|e| field("vector", e.to_string()))?,
            ),
            None => {
                let names: Vec<String> = self.read().keys().cloned().collect();
                return Err(field(
                    "vector",
                    format!(
                        "unknown vector `{}`; loaded: [{}] (or give a path to a vector file)",
                        at.vector,
                        names.join(", ")
                    ),
                ));
            }
        };
        let variant: Variant = match &at.variant {
            Some(v) => v.parse().map_err(|e: String| field("variant", e))?,
            None => Variant::ResponseAvg,
        };
        let row = match at.row.or_else(|| chosen_row(&file)) {
            Some(r) => r,
            None => {
                return Err(field(
                    "row",
                    format!(
                        "vector `{}` has no chosen row (run `persona vector select`); give `row`",
                        at.vector
                    ),
                ));
            }
        };
        let max = self.config.n_layers;
        if row > max {
            return Err(field("row", format!("row {row} is out of range 0..={max}")));
        }
        let values = file
            .row(variant, row)
            .map_err(|e| field("variant", e.to_string()))?
            .to_vec();
        Ok(VectorRow {
            name: at.vector.clone(),
            row,
            values,
        })
    }
}

fn info(name: &str, f: &VectorFile) -> VectorInfo {
    VectorInfo {
        name: name.to_string(),
        path: f.path.clone(),
        variants: f.variants.keys().map(|v| v.name()).collect(),
        chosen_row: chosen_row(f),
        rows: f.meta.n_layers + 1,
        d_model: f.meta.d_model,
    }
}

/// The row `persona vector select` stored in the file's metadata.
fn chosen_row(f: &VectorFile) -> Option<usize> {
    f.meta
        .extra
        .pointer("/selection/chosen_row")?
        .as_u64()
        .map(|r| r as usize)
}

fn file_stem(path: &Path) -> Result<String, ServeError> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| valid_name(s))
        .map(String::from)
        .ok_or_else(|| {
            ServeError::Setup(format!(
                "{}: a vector's file name must be letters, digits, `-`, `_` or `.`",
                path.display()
            ))
        })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}
