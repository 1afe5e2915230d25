//! Training recipes: TOML files that hold every number that changes a result.
//!
//! Every struct rejects unknown keys, and no numeric field has a default: a
//! recipe that omits one fails to parse with a message naming the key.
//! [`Recipe::check_static`] and [`Recipe::check_model`] then check everything
//! that can be checked before any weight is loaded (files exist, layers in range, vectors match the model).

use std::path::{Path, PathBuf};

use persona_model::{ModelConfig, ModelIdentity, PersonaHome, Scaling, Target, WeightDtype};
use persona_vectors::{Variant, VectorFile};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Upper bounds of the recipe's sizes, checked before anything is
/// allocated from them (a typo such as `rank = 1e8` must be an error, not a
/// 230 GB allocation).
pub const MAX_LORA_RANK: usize = 4096;
/// Sequences per micro-batch, micro-batches per step, extraction batch.
pub const MAX_BATCH: usize = 1 << 16;
pub const MAX_EPOCHS: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub run: RunSection,
    pub model: ModelSection,
    pub data: DataSection,
    pub lora: LoraSection,
    pub optim: OptimSection,
    pub steering: SteeringSection,
    pub monitor: MonitorSection,
    /// Inoculation prompting: a system prompt asking for the trait, added
    /// to every training example and to nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inoculation: Option<InoculationSection>,
    /// The one-sided projection penalty (BLOCK-EM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub penalty: Option<PenaltySection>,
    /// How to extract the steering vector when its file does not exist yet.
    /// `[trait]`, or `[[trait]]` several times for a multi-trait recipe.
    #[serde(rename = "trait")]
    pub trait_: Option<OneOrMany<TraitSection>>,
    /// The comparison that follows training (`[experiment]`): parsed and
    /// checked by `persona_eval::experiment::ExperimentConfig` before
    /// training starts, so unknown keys are still refused up front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<toml::Table>,
}

/// A key that takes one value or a list of them (`[trait]` or
/// `[[trait]]`, one system prompt or several).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            Self::One(t) => std::slice::from_ref(t),
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraitSection {
    pub name: String,
    /// The vector file this section makes when it does not exist yet.
    pub vector: PathBuf,
    /// Trait definition file (`datasets/traits/<trait>.toml`) whose
    /// authored responses the vector is extracted from.
    pub definition: PathBuf,
    /// Sequences per extraction forward.
    pub batch_size: usize,
}

/// `[inoculation]`: during training only, a system prompt that asks for
/// the trait is put before every training example, so the trait is
/// "explained" by the prompt and need not be learned; evaluation and the
/// held-out split never see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InoculationSection {
    /// One prompt, or a list from which each example draws one (seeded by
    /// the run seed and the example's line).
    pub system: OneOrMany<String>,
}

/// `[penalty]`: `loss += lambda * mean over response tokens and rows of
/// relu(p_now - p_base)^2`, where `p` is the projection of the residual
/// on `v̂` at a row: only movement along the vector beyond the frozen
/// model's own projection for the same token is penalised (BLOCK-EM,
/// arXiv 2602.00767). `p_base` comes from a forward of the same tokens
/// without adapters, which stops after the highest penalised row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PenaltySection {
    /// Weight of the penalty (>= 0; 0 trains exactly as without it).
    pub lambda: f64,
    /// Persona-vector files; several penalise several traits at once.
    pub vectors: Vec<PathBuf>,
    pub variant: Variant,
    /// Residual rows whose projections are penalised.
    pub layers: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Run folder name under `<PERSONA_HOME>/runs/`.
    pub name: String,
    /// Seeds data order and adapter init.
    pub seed: u64,
    /// `cpu`, `cuda` or `wgpu`.
    pub device: String,
    /// Save a resumable checkpoint every this many optimizer steps (>= 1).
    pub save_every: usize,
    /// Keep a copy of the adapters every this many optimizer steps in
    /// `snapshots/step-NNNNN/` (PEFT layout), for evaluating intermediate
    /// checkpoints; 0 = none. Saves files only, changes no result.
    #[serde(default)]
    pub snapshot_every: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Cache name, `.gguf` path or HF directory.
    pub name: String,
    /// The type the frozen weights are kept in: `f32` (when absent),
    /// `bf16` or `f16`. Adapters, optimizer state, steering and the loss
    /// stay f32. Always written back (a run's saved recipe names it).
    #[serde(default)]
    pub dtype: WeightDtype,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// JSONL of `{"messages": [...]}` chats; the last message is the assistant's response.
    pub train: PathBuf,
    /// Use at most this many examples (after shuffling with the seed); 0 = all.
    pub max_examples: usize,
    /// Examples longer than this (prompt + response tokens) are skipped and counted.
    pub max_seq_len: usize,
    /// Fraction of examples held out (not trained on) for evaluation, in [0, 1).
    pub heldout_fraction: f64,
    /// Screen `train` on a persona vector and train on the kept samples
    /// only (the data filtering the paper proposes); `persona train` runs
    /// the screen first when its output is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<DataFilter>,
}

/// `[data] filter`: which samples of `data.train` to drop before training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFilter {
    /// Persona-vector file to screen with.
    pub vector: PathBuf,
    pub variant: Variant,
    /// The residual row whose projections rank the samples.
    pub row: usize,
    /// Drop this percentage of the highest-scoring samples (0 < P < 100).
    pub drop_top: f64,
    /// `delta_p` (the dataset response's projection minus the base model's
    /// own greedy answer's; generates) or `cheap` (response minus last
    /// prompt token; forward passes only).
    pub score: ScreenScore,
    /// Longest greedy base answer, in tokens (`delta_p`).
    pub max_new_tokens: usize,
    /// Samples per forward pass (speed only).
    pub batch_size: usize,
}

/// The score a data filter ranks samples by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScreenScore {
    DeltaP,
    Cheap,
}

impl DataFilter {
    /// The screen's folder in `home`, the one `persona screen` uses.
    pub fn screen_dir(&self, train: &Path, home: &PersonaHome) -> PathBuf {
        home.screen(
            train,
            &self.vector,
            self.row,
            self.score == ScreenScore::Cheap,
        )
    }

    /// The folder of the kept samples (`filtered.jsonl`) and the filter's
    /// manifest, inside the screen's folder.
    pub fn kept_dir(&self, train: &Path, home: &PersonaHome) -> PathBuf {
        self.screen_dir(train, home)
            .join(format!("drop-top-{}", self.drop_top))
    }

    /// What the screen's `screen.json` must say for its kept samples to be
    /// this filter's on the current `train` and vector files.
    fn screen_settings(&self, train: &Path) -> Result<serde_json::Value> {
        let sha = |p: &Path| persona_model::weights::sha256_files(&[p.to_path_buf()]);
        Ok(serde_json::json!({
            "dataset_sha256": sha(train)?,
            "vector_sha256": sha(&self.vector)?,
            "variant": self.variant,
            "row": self.row,
            "generate_base": self.score == ScreenScore::DeltaP,
            "max_new_tokens": self.max_new_tokens,
        }))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Rank r (>= 1). Paper: 32.
    pub rank: usize,
    /// Alpha. Paper: 64.
    pub alpha: f64,
    /// `rslora` (alpha/sqrt(r), the paper's) or `classic` (alpha/r).
    pub scaling: Scaling,
    /// Projections to adapt: any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    pub targets: Vec<Target>,
    /// Dropout on the LoRA branch input, PEFT-style, in [0, 1) (0 = off, the
    /// paper's value). Masks are seeded by the run seed and the step.
    pub dropout: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Peak learning rate (AdamW). Paper: 1e-5.
    pub lr: f64,
    /// AdamW decoupled weight decay. Paper: 0.01.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Linear warm-up from 0, in optimizer steps; then linear decay to 0.
    pub warmup_steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch_size * grad_accum).
    pub grad_accum: usize,
    /// Global gradient-norm clip; 0 = no clipping.
    pub max_grad_norm: f64,
    pub epochs: usize,
    /// Stop after this many optimizer steps; 0 = run all epochs.
    pub max_steps: usize,
}

/// The steering of the training forward (and nowhere else), by `mode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum SteeringSection {
    /// Plain fine-tuning: no other key.
    None,
    /// The vaccine: add `coef * v_l` at every non-padding position.
    Steer {
        /// Persona-vector file.
        vector: PathBuf,
        /// Vector variant: response_avg (recommended), prompt_avg, prompt_last.
        variant: Variant,
        /// Residual rows to steer (row l = output of block l-1).
        layers: Vec<usize>,
        /// Coefficient c of `h += c * v`. Paper: 3-5 for one layer.
        coef: f32,
        /// Multi-layer steering with `v_l - v_(l-1)` at every row.
        incremental: bool,
        /// Further traits steered at the same rows, variant and
        /// incremental setting, each with its own `coef` (multi-trait).
        #[serde(default)]
        also: Vec<AlsoVector>,
    },
    /// Remove the component along v̂_l (CAFT-like).
    Ablate {
        vector: PathBuf,
        variant: Variant,
        layers: Vec<usize>,
        incremental: bool,
        /// Further traits ablated at the same rows (no `coef`).
        #[serde(default)]
        also: Vec<AlsoVector>,
    },
}

/// One more vector of a multi-trait `[steering]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlsoVector {
    pub vector: PathBuf,
    /// Its coefficient (`mode = "steer"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coef: Option<f32>,
}

impl SteeringSection {
    /// The first vector, variant, rows and incremental flag; none for
    /// `mode = "none"`.
    pub fn target(&self) -> Option<(&Path, Variant, &[usize], bool)> {
        match self {
            Self::None => None,
            Self::Steer {
                vector,
                variant,
                layers,
                incremental,
                ..
            }
            | Self::Ablate {
                vector,
                variant,
                layers,
                incremental,
                ..
            } => Some((vector, *variant, layers, *incremental)),
        }
    }

    /// Every vector with its coefficient (`None` when ablating), the first
    /// one first.
    pub fn vectors(&self) -> Vec<(&Path, Option<f32>)> {
        match self {
            Self::None => vec![],
            Self::Steer {
                vector, coef, also, ..
            } => std::iter::once((vector.as_path(), Some(*coef)))
                .chain(also.iter().map(|a| (a.vector.as_path(), a.coef)))
                .collect(),
            Self::Ablate { vector, also, .. } => std::iter::once((vector.as_path(), None))
                .chain(also.iter().map(|a| (a.vector.as_path(), a.coef)))
                .collect(),
        }
    }

    /// Each `also` entry has a finite `coef` when steering and none when
    /// ablating.
    fn check_also(&self) -> Result<()> {
        let steer = matches!(self, Self::Steer { .. });
        for (i, (_, coef)) in self.vectors().into_iter().enumerate().skip(1) {
            let key = format!("steering.also[{}].coef", i - 1);
            match (steer, coef) {
                (true, Some(c)) => ensure(c.is_finite(), &key, "must be a finite number")?,
                (true, None) => ensure(
                    false,
                    &key,
                    "is missing: each steered vector needs its coefficient",
                )?,
                (false, Some(_)) => ensure(
                    false,
                    &key,
                    "has no meaning with mode = \"ablate\"; remove it",
                )?,
                (false, None) => {}
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSection {
    /// Log the projection shift every this many optimizer steps (>= 1).
    pub every: usize,
    /// Residual rows whose shift is logged.
    pub layers: Vec<usize>,
    /// Traits to monitor; several can be watched at once.
    pub traits: Vec<MonitoredTrait>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoredTrait {
    pub name: String,
    pub vector: PathBuf,
    /// Monitor prompts: a trait file (its evaluation questions) or a text
    /// file with one user question per line.
    pub questions: PathBuf,
}

impl Recipe {
    /// Parses a recipe file (unknown keys and missing keys are errors).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &[])
    }

    /// Parses a recipe file with `key=value` overrides (`run.seed=3`,
    /// `steering.coef=-1.5`; the value is TOML, or a string when it does
    /// not parse as TOML), applied after `extends` is resolved. The
    /// resolved recipe a run writes records their values.
    ///
    /// `extends = "base.toml"` (relative to this file) starts from another
    /// recipe: tables are merged key by key, this file's values winning;
    /// a table whose `mode` differs from the base's (a `[steering]` that
    /// turns the vaccine off) replaces the base's table; the base's
    /// `[experiment]` is inherited only by a recipe with an `[experiment]`
    /// table of its own (an empty one takes the base's as it is), so a
    /// baseline that extends its vaccine recipe runs no experiment.
    pub fn load_with(path: &Path, overrides: &[String]) -> Result<Self> {
        let bad = |reason: String| TrainError::Recipe {
            path: path.to_path_buf(),
            reason,
        };
        let mut table = resolve_extends(path, 0)?;
        for o in overrides {
            set_key(&mut table, o).map_err(|e| bad(format!("--set {o}: {e}")))?;
        }
        // Serde's message (it names the expected keys), then the unknown-key
        // check that also sees inside the tagged `[steering]`.
        persona_model::settings::from_table::<Self>(table).map_err(bad)
    }

    /// Checks everything that does not need the weights: numbers in range,
    /// files present. Paths are relative to the working directory.
    pub fn check_static(&self) -> Result<()> {
        self.check_files()?;
        let r = &self.run;
        let plain_name =
            !r.name.is_empty() && !r.name.contains(['/', '\\']) && !r.name.starts_with('.');
        ensure(
            plain_name,
            "run.name",
            &format!("`{}` is not a plain folder name", r.name),
        )?;
        ensure(r.save_every > 0, "run.save_every", "must be at least 1")?;
        let d = &self.data;
        ensure(
            (0.0..1.0).contains(&d.heldout_fraction),
            "data.heldout_fraction",
            "must be in [0, 1)",
        )?;
        ensure(d.max_seq_len >= 2, "data.max_seq_len", "must be at least 2")?;
        if let Some(f) = &d.filter {
            ensure(
                f.drop_top > 0.0 && f.drop_top < 100.0,
                "data.filter.drop_top",
                "must be a percentage strictly between 0 and 100",
            )?;
            ensure(
                (1..=MAX_BATCH).contains(&f.batch_size),
                "data.filter.batch_size",
                &format!("must be in 1..={MAX_BATCH}"),
            )?;
            ensure(
                f.score == ScreenScore::Cheap || f.max_new_tokens > 0,
                "data.filter.max_new_tokens",
                "must be at least 1 for the delta_p score",
            )?;
        }
        self.lora.check()?;
        self.optim.check()?;
        if let Some((_, _, layers, _)) = self.steering.target() {
            check_rows("steering.layers", layers)?;
        }
        if let SteeringSection::Steer { coef, .. } = self.steering {
            ensure(coef.is_finite(), "steering.coef", "must be a finite number")?;
        }
        self.steering.check_also()?;
        if let Some(i) = &self.inoculation {
            let prompts = i.system.as_slice();
            ensure(
                !prompts.is_empty() && prompts.iter().all(|p| !p.trim().is_empty()),
                "inoculation.system",
                "needs at least one prompt, none of them empty",
            )?;
        }
        if let Some(p) = &self.penalty {
            ensure(
                p.lambda.is_finite() && p.lambda >= 0.0,
                "penalty.lambda",
                "must be a finite number >= 0 (0 = no penalty)",
            )?;
            ensure(
                !p.vectors.is_empty(),
                "penalty.vectors",
                "name at least one vector file",
            )?;
            check_rows("penalty.layers", &p.layers)?;
            // The projection of a steered residual includes the added
            // c * v: the penalty would fight the vaccine itself.
            ensure(
                self.steering == SteeringSection::None,
                "penalty",
                "works on the unsteered training forward; use it with [steering] mode = \"none\"",
            )?;
        }
        ensure(
            self.monitor.every > 0,
            "monitor.every",
            "must be at least 1",
        )?;
        check_rows("monitor.layers", &self.monitor.layers)
    }

    /// Every file the recipe names exists; a vector that `[trait]` will
    /// extract before training may be missing now.
    fn check_files(&self) -> Result<()> {
        let exists = |k: &str, p: &Path| {
            ensure(
                p.is_file(),
                k,
                &format!("file {} does not exist", p.display()),
            )
        };
        let vector_ok = |k: &str, p: &Path| {
            ensure(
                p.is_file() || self.extracts(p),
                k,
                &format!(
                    "file {} does not exist (extract it with `persona extract`, or add a [trait] section)",
                    p.display()
                ),
            )
        };
        for t in self.traits() {
            exists("trait.definition", &t.definition)?;
            ensure(
                (1..=MAX_BATCH).contains(&t.batch_size),
                "trait.batch_size",
                &format!("must be in 1..={MAX_BATCH}"),
            )?;
        }
        exists("data.train", &self.data.train)?;
        for (i, (v, _)) in self.steering.vectors().into_iter().enumerate() {
            let key = match i {
                0 => "steering.vector".to_string(),
                i => format!("steering.also[{}].vector", i - 1),
            };
            vector_ok(&key, v)?;
        }
        for (i, v) in self.penalty.iter().flat_map(|p| &p.vectors).enumerate() {
            vector_ok(&format!("penalty.vectors[{i}]"), v)?;
        }
        if let Some(f) = &self.data.filter {
            vector_ok("data.filter.vector", &f.vector)?;
        }
        for (i, t) in self.monitor.traits.iter().enumerate() {
            vector_ok(&format!("monitor.traits[{i}].vector"), &t.vector)?;
            exists(&format!("monitor.traits[{i}].questions"), &t.questions)?;
        }
        Ok(())
    }

    /// Checks the recipe against the model's config and identity (no weights
    /// needed): rows in range, vectors from this model.
    pub fn check_model(&self, cfg: &ModelConfig, id: &ModelIdentity) -> Result<()> {
        let key = |k: &str, reason: String| TrainError::RecipeKey {
            key: k.into(),
            reason,
        };
        let in_range = |k: &str, rows: &[usize]| -> Result<()> {
            match rows.iter().find(|&&r| r > cfg.n_layers) {
                Some(r) => Err(key(
                    k,
                    format!(
                        "row {r} is out of range: this model has rows 0..={} (row l = output of block l-1)",
                        cfg.n_layers
                    ),
                )),
                None => Ok(()),
            }
        };
        let target = self.steering.target();
        in_range("steering.layers", target.map_or(&[], |t| t.2))?;
        in_range("monitor.layers", &self.monitor.layers)?;
        if let Some(p) = &self.penalty {
            in_range("penalty.layers", &p.layers)?;
        }
        if let Some(f) = &self.data.filter {
            in_range("data.filter.row", &[f.row])?;
        }
        // A rank above a projection's narrower side adds parameters and no
        // expressiveness (PEFT allows it; it is always a mistake here).
        for t in &self.lora.targets {
            let (d_in, d_out) = t.dims(cfg);
            if self.lora.rank > d_in.min(d_out) {
                return Err(key(
                    "lora.rank",
                    format!(
                        "{} is more than {}'s smaller side ({} x {})",
                        self.lora.rank,
                        t.short_name(),
                        d_in,
                        d_out
                    ),
                ));
            }
        }
        if let Some((_, variant, layers, incremental)) = target {
            if incremental && layers.contains(&0) {
                return Err(key(
                    "steering.layers",
                    "incremental steering needs rows >= 1 (it uses v_l - v_(l-1))".into(),
                ));
            }
            for (v, _) in self.steering.vectors() {
                if v.exists() {
                    let f = VectorFile::load(v)?;
                    f.check_model(cfg, id)?;
                    f.row(variant, 0)?;
                }
            }
        }
        for v in self.penalty.iter().flat_map(|p| &p.vectors) {
            if v.exists() {
                VectorFile::load(v)?.check_model(cfg, id)?;
            }
        }
        for t in self.monitor.traits.iter().filter(|t| t.vector.exists()) {
            VectorFile::load(&t.vector)?.check_model(cfg, id)?;
        }
        Ok(())
    }

    /// The chat file the run trains on: `data.train`, or with a
    /// `[data] filter` the samples its screen kept
    /// ([`Self::training_file_in`] of `$PERSONA_HOME`).
    pub fn training_file(&self) -> Result<PathBuf> {
        self.training_file_in(&PersonaHome::from_env())
    }

    /// [`Self::training_file`] with the screens in `home`; refused when the
    /// screen is missing, unfinished, or was made from other data, another
    /// vector file or other screen settings than the recipe's now.
    pub fn training_file_in(&self, home: &PersonaHome) -> Result<PathBuf> {
        let Some(f) = &self.data.filter else {
            return Ok(self.data.train.clone());
        };
        let kept = f.kept_dir(&self.data.train, home);
        let screen = f.screen_dir(&self.data.train, home).join("screen.json");
        let stale = || TrainError::RecipeKey {
            key: "data.filter".into(),
            reason: format!(
                "the screened data in {} is missing or was made from other data, vector or settings: `persona train` screens it first (delete the folder to screen again)",
                kept.display()
            ),
        };
        let saved: serde_json::Value = std::fs::read_to_string(&screen)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(stale)?;
        let want = f.screen_settings(&self.data.train)?;
        let same = want
            .as_object()
            .is_some_and(|w| w.iter().all(|(k, v)| saved.get(k) == Some(v)));
        if !same || !kept.join("filter-manifest.json").is_file() {
            return Err(stale());
        }
        Ok(kept.join("filtered.jsonl"))
    }

    /// What the run does against the trait, in a few words for reports:
    /// "steering +2 at rows [15]", "projection penalty λ 10", ...
    pub fn defence(&self) -> String {
        let mut parts = Vec::new();
        let traits = |n: usize| {
            if n > 1 {
                format!(" ({n} traits)")
            } else {
                String::new()
            }
        };
        match &self.steering {
            SteeringSection::None => {}
            SteeringSection::Steer {
                coef,
                layers,
                incremental,
                also,
                ..
            } => parts.push(format!(
                "steering {coef:+} at {}{}{}",
                rows_text(layers),
                if *incremental { ", incremental" } else { "" },
                traits(also.len() + 1)
            )),
            SteeringSection::Ablate { layers, also, .. } => parts.push(format!(
                "ablation at {}{}",
                rows_text(layers),
                traits(also.len() + 1)
            )),
        }
        if let Some(p) = &self.penalty {
            parts.push(format!(
                "projection penalty λ {} at {}{}",
                p.lambda,
                rows_text(&p.layers),
                traits(p.vectors.len())
            ));
        }
        if self.inoculation.is_some() {
            parts.push("inoculation prompt".into());
        }
        if let Some(f) = &self.data.filter {
            parts.push(format!("top {}% of the data by screen dropped", f.drop_top));
        }
        if parts.is_empty() {
            "no defence".into()
        } else {
            parts.join(", ")
        }
    }

    /// Whether `path` is the vector that the `[trait]` section extracts
    /// when it is missing.
    pub fn extracts(&self, path: &Path) -> bool {
        self.traits().iter().any(|t| t.vector == path)
    }

    /// The `[trait]` sections (vectors extracted when missing).
    pub fn traits(&self) -> &[TraitSection] {
        self.trait_.as_ref().map_or(&[], OneOrMany::as_slice)
    }
}

/// Rows for a label: "row 15", "rows 1-30", "rows 5, 10-12".
fn rows_text(rows: &[usize]) -> String {
    let mut sorted = rows.to_vec();
    sorted.sort_unstable();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for r in sorted {
        match spans.last_mut() {
            Some((_, end)) if *end + 1 == r => *end = r,
            _ => spans.push((r, r)),
        }
    }
    let text: Vec<String> = spans
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    let noun = if rows.len() == 1 { "row" } else { "rows" };
    format!("{noun} {}", text.join(", "))
}

/// `Ok` when `ok`, else an error naming the recipe key.
fn ensure(ok: bool, key: &str, reason: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(TrainError::RecipeKey {
            key: key.into(),
            reason: reason.into(),
        })
    }
}

/// At least one row, each once (a repeated row would be steered or logged
/// twice).
fn check_rows(key: &str, rows: &[usize]) -> Result<()> {
    ensure(!rows.is_empty(), key, "name at least one row")?;
    let mut seen = std::collections::BTreeSet::new();
    match rows.iter().find(|r| !seen.insert(**r)) {
        Some(r) => ensure(false, key, &format!("row {r} is listed twice")),
        None => Ok(()),
    }
}

impl LoraSection {
    fn check(&self) -> Result<()> {
        ensure(
            (1..=MAX_LORA_RANK).contains(&self.rank),
            "lora.rank",
            &format!("must be in 1..={MAX_LORA_RANK} (paper: 32)"),
        )?;
        let alpha_ok = self.alpha.is_finite() && self.alpha > 0.0;
        ensure(alpha_ok, "lora.alpha", "must be a finite number > 0")?;
        ensure(
            !self.targets.is_empty(),
            "lora.targets",
            "name at least one projection",
        )?;
        ensure(
            (0.0..1.0).contains(&self.dropout),
            "lora.dropout",
            "must be in [0, 1): the probability of dropping a LoRA input (0 = off, the paper's setting)",
        )
    }
}

impl OptimSection {
    fn check(&self) -> Result<()> {
        ensure(
            self.lr > 0.0 && self.lr.is_finite(),
            "optim.lr",
            "must be a positive number",
        )?;
        for (k, value, max) in [
            ("optim.batch_size", self.batch_size, MAX_BATCH),
            ("optim.grad_accum", self.grad_accum, MAX_BATCH),
            ("optim.epochs", self.epochs, MAX_EPOCHS),
        ] {
            ensure(
                (1..=max).contains(&value),
                k,
                &format!("must be in 1..={max}"),
            )?;
        }
        let betas = (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2);
        ensure(betas, "optim.beta1/beta2", "must be in [0, 1)")?;
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        ensure(
            self.eps.is_finite() && self.eps > 0.0,
            "optim.eps",
            "must be a finite number > 0",
        )?;
        ensure(
            non_negative(self.weight_decay),
            "optim.weight_decay",
            "must be a finite number >= 0 (paper: 0.01)",
        )?;
        ensure(
            non_negative(self.max_grad_norm),
            "optim.max_grad_norm",
            "must be a finite number >= 0 (0 = no clipping)",
        )
    }
}

/// Recipes a chain of `extends` may hold (a cycle is an error, not a hang).
const MAX_EXTENDS: usize = 8;

/// The table of the recipe at `path` with its `extends` chain merged in.
fn resolve_extends(path: &Path, depth: usize) -> Result<toml::Table> {
    let bad = |reason: String| TrainError::Recipe {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| bad(persona_model::settings::one_line(&e)))?;
    let Some(base) = table.remove("extends") else {
        return Ok(table);
    };
    let base = base
        .as_str()
        .ok_or_else(|| bad("`extends` must be a file name".into()))?;
    if depth >= MAX_EXTENDS {
        return Err(bad(format!(
            "`extends` goes more than {MAX_EXTENDS} recipes deep (a cycle?)"
        )));
    }
    let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
    let mut merged = resolve_extends(&base_path, depth + 1)?;
    if !table.contains_key("experiment") {
        merged.remove("experiment");
    }
    merge(&mut merged, table);
    Ok(merged)
}

/// `over` merged into `base`: tables key by key, anything else replaced; a
/// table whose `mode` differs from the base's replaces it whole.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o))
                if b.get("mode").is_none()
                    || b.get("mode") == o.get("mode")
                    || o.get("mode").is_none() =>
            {
                merge(b, o)
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies one `a.b.c=value` override to `table`.
fn set_key(table: &mut toml::Table, assignment: &str) -> std::result::Result<(), String> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or("expected KEY=VALUE, e.g. run.seed=3")?;
    let parsed = toml::from_str::<toml::Table>(&format!("v = {}", value.trim()));
    let value = match parsed.ok().and_then(|mut t| t.remove("v")) {
        Some(v) => v,
        None => toml::Value::String(value.trim().to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, path) = parts.split_last().ok_or("empty key")?;
    let mut node = table;
    for p in path {
        node = node
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The shipped baselines are their vaccine recipes with another name,
    /// no steering and no experiment.
    #[test]
    fn baseline_recipes_are_their_vaccine_without_steering() {
        for (vaccine, baseline) in [
            ("sycophancy-vaccine", "sycophancy-baseline"),
            ("evil-vaccine", "evil-baseline"),
        ] {
            let path = |n: &str| repo().join(format!("recipes/{n}.toml"));
            let mut v = Recipe::load(&path(vaccine)).unwrap();
            let b = Recipe::load(&path(baseline)).unwrap();
            assert_eq!(b.run.name, baseline);
            assert_eq!(b.steering, SteeringSection::None);
            assert!(b.experiment.is_none());
            v.run.name = baseline.into();
            v.steering = SteeringSection::None;
            v.experiment = None;
            assert_eq!(toml::to_string(&v).unwrap(), toml::to_string(&b).unwrap());
        }
    }

    /// A filtered run trains on its screen's kept samples only while the
    /// screen matches the data, the vector and the settings of the recipe.
    #[test]
    fn filtered_data_is_refused_once_its_screen_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let home = PersonaHome::at(dir.path().join("home"));
        let (train, vector) = (dir.path().join("d.jsonl"), dir.path().join("v.safetensors"));
        std::fs::write(&train, "data").unwrap();
        std::fs::write(&vector, "vector").unwrap();
        let mut r = Recipe::load(&repo().join("recipes/smoke.toml")).unwrap();
        r.data.train = train.clone();
        let filter = DataFilter {
            vector: vector.clone(),
            variant: Variant::ResponseAvg,
            row: 2,
            drop_top: 10.0,
            score: ScreenScore::Cheap,
            max_new_tokens: 0,
            batch_size: 4,
        };
        r.data.filter = Some(filter.clone());
        assert!(r.training_file_in(&home).is_err(), "no screen yet");
        let kept = filter.kept_dir(&train, &home);
        std::fs::create_dir_all(&kept).unwrap();
        let mut settings = filter.screen_settings(&train).unwrap();
        settings["model_name"] = "tiny".into();
        let screen = filter.screen_dir(&train, &home).join("screen.json");
        std::fs::write(&screen, settings.to_string()).unwrap();
        assert!(r.training_file_in(&home).is_err(), "screen unfinished");
        std::fs::write(kept.join("filter-manifest.json"), "{}").unwrap();
        assert_eq!(
            r.training_file_in(&home).unwrap(),
            kept.join("filtered.jsonl")
        );
        std::fs::write(&vector, "another vector").unwrap();
        let e = r.training_file_in(&home).unwrap_err().to_string();
        assert!(e.contains("data.filter"), "{e}");
        std::fs::write(&vector, "vector").unwrap();
        r.data.filter = Some(DataFilter { row: 3, ..filter });
        assert!(r.training_file_in(&home).is_err(), "another row");
    }

    #[test]
    fn defences_are_labelled_with_row_spans() {
        assert_eq!(rows_text(&[15]), "row 15");
        assert_eq!(rows_text(&(1..=30).rev().collect::<Vec<_>>()), "rows 1-30");
        assert_eq!(rows_text(&[5, 10, 11, 12, 20]), "rows 5, 10-12, 20");
        let r = Recipe::load(&repo().join("recipes/defences/sycophancy-penalty.toml")).unwrap();
        assert_eq!(r.defence(), "projection penalty λ 1 at row 15");
        let r = Recipe::load(&repo().join("recipes/sycophancy-baseline.toml")).unwrap();
        assert_eq!(r.defence(), "no defence");
    }

    #[test]
    fn set_overrides_and_extends_resolve_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let base = repo().join("recipes/smoke.toml");
        let child = dir.path().join("child.toml");
        std::fs::write(
            &child,
            format!(
                "extends = \"{}\"\n[run]\nname = \"child\"\n[steering]\nmode = \"none\"\n",
                base.display()
            ),
        )
        .unwrap();
        let sets = ["optim.lr=2e-3".to_string(), "run.seed=7".into()];
        let r = Recipe::load_with(&child, &sets).unwrap();
        assert_eq!(
            (r.run.name.as_str(), r.run.seed, r.optim.lr),
            ("child", 7, 2e-3)
        );
        assert_eq!(r.steering, SteeringSection::None);
        assert_eq!(r.lora.rank, 4, "inherited from smoke.toml");
        // Unknown keys stay errors, also through --set and in [steering].
        let e = Recipe::load_with(&child, &["optim.learning_rate=1".into()]).unwrap_err();
        assert!(e.to_string().contains("learning_rate"), "{e}");
        let e = Recipe::load_with(&child, &["steering.coef=1".into()]).unwrap_err();
        assert!(e.to_string().contains("coef"), "{e}");
        // A cycle is an error, not a hang.
        std::fs::write(&child, "extends = \"child.toml\"\n").unwrap();
        let e = Recipe::load(&child).unwrap_err();
        assert!(e.to_string().contains("deep"), "{e}");
    }
}
