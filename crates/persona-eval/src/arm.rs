//! An evaluation arm: a base model, optionally with fine-tuned adapters
//! merged in, optionally steered after the fact at inference.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use persona_model::{HostModel, LoadedModel, Positions, Steering, WeightDtype};
use persona_vectors::{Variant, VectorFile};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use persona_train::run_dir::ADAPTER_WEIGHTS;

/// Post-hoc (inference-time) steering: `coef * v_row` added at the last
/// prompt token and every generated token (negative `coef` suppresses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostHoc {
    pub vector: PathBuf,
    pub row: usize,
    pub coef: f32,
}

/// Activation capping at inference (the "assistant axis" method, arXiv
/// 2601.10387): the projection of `h_row` on `v̂` is clamped to
/// `[min, max]` at the last prompt token and every generated token; a
/// token already inside the range passes unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cap {
    pub vector: PathBuf,
    pub row: usize,
    pub min: f32,
    pub max: f32,
}

/// What one column of a comparison evaluates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// Folder name of its results, e.g. `base`, `vaccine`, `vaccine-step-00010`.
    pub id: String,
    /// What the report calls it.
    pub label: String,
    /// Base model spec (cache name, .gguf or HF folder).
    pub model: String,
    /// The type its frozen weights are kept in (the recipe's
    /// `[model] dtype`); merged adapters make their projections f32.
    #[serde(default, skip_serializing_if = "WeightDtype::is_f32")]
    pub dtype: WeightDtype,
    /// A PEFT adapter folder, or a run folder (its `adapter/` is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<PathBuf>,
    /// The training step of a snapshot (for shift-vs-step plots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steer: Option<PostHoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<Cap>,
    /// A system prompt before every sampled evaluation question (e.g. an
    /// inoculation prompt, to measure whether the trait comes back with
    /// it); capability and projections are measured without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

/// The adapter folder a path names: itself, or `<run>/adapter`.
pub fn adapter_dir(path: &Path) -> PathBuf {
    if path.join("adapter").join(ADAPTER_WEIGHTS).exists() {
        path.join("adapter")
    } else {
        path.to_path_buf()
    }
}

impl Arm {
    /// The base model on the host with this arm's adapters merged in.
    pub fn host_model(&self) -> Result<HostModel> {
        let mut host = persona_model::load_host_as(&self.model, self.dtype)?;
        if let Some(a) = &self.adapter {
            let dir = adapter_dir(a);
            let lora =
                persona_train::checkpoint::read_adapter(&dir, &host.config, &Device::flex())?;
            lora.merge_into(&mut host.weights)?;
        }
        Ok(host)
    }

    /// Loads the arm onto `device`, with its post-hoc steering or capping
    /// (checked against the model) ready for generation and scoring.
    pub fn load(&self, device: &Device) -> Result<(LoadedModel, Vec<Steering>)> {
        let host = self.host_model()?;
        // The response-average vector at `row`, from a file made for this model.
        let vector_row = |path: &Path, row: usize| -> Result<Vec<f32>> {
            let file = VectorFile::load(path)?;
            file.check_model(&host.config, &host.identity)?;
            Ok(file.row(Variant::ResponseAvg, row)?.to_vec())
        };
        let at = Positions::Generating;
        let mut steering = Vec::new();
        if let Some(s) = &self.steer {
            let v = vector_row(&s.vector, s.row)?;
            steering.push(Steering::add(s.row, &v, s.coef, at, device)?);
        }
        if let Some(c) = &self.cap {
            let v = vector_row(&c.vector, c.row)?;
            steering.push(Steering::cap(c.row, &v, (c.min, c.max), at, device)?);
        }
        let loaded = host.to_device(device)?;
        loaded.model.check_steering(&steering)?;
        Ok((loaded, steering))
    }

    /// Files whose bytes decide this arm's outputs besides the base model
    /// (adapter weights, steering vector), for result fingerprints.
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(a) = &self.adapter {
            files.push(adapter_dir(a).join(ADAPTER_WEIGHTS));
        }
        if let Some(s) = &self.steer {
            files.push(s.vector.clone());
        }
        if let Some(c) = &self.cap {
            files.push(c.vector.clone());
        }
        files
    }
}

/// An arm's model and steering, loaded on first use and then shared by every
/// step that needs them (trait evaluation, capability), so adapters are
/// merged once per arm.
pub struct LazyArm<'a> {
    pub arm: &'a Arm,
    pub device: &'a Device,
    loaded: Option<(LoadedModel, Vec<Steering>)>,
}

impl<'a> LazyArm<'a> {
    pub fn new(arm: &'a Arm, device: &'a Device) -> Self {
        Self {
            arm,
            device,
            loaded: None,
        }
    }

    /// The loaded model and its post-hoc steering.
    pub fn get(&mut self) -> Result<&(LoadedModel, Vec<Steering>)> {
        if self.loaded.is_none() {
            self.loaded = Some(self.arm.load(self.device)?);
        }
        Ok(self.loaded.as_ref().expect("just loaded"))
    }
}
