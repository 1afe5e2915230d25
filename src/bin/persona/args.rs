//! Argument groups several commands share.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use persona_model::{DEFAULT_MODEL, LoadedModel, WeightDtype};
use persona_vectors::{Variant, VectorFile};

/// `--model` and `--device`.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Cache name (see `checkpoints/models/`), .gguf path or HF directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// cpu, cuda or wgpu (the latter two need the cargo feature of that name).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub dtype: DtypeArg,
}

/// `--dtype`.
#[derive(Args, Debug)]
pub struct DtypeArg {
    /// The type the frozen weights are kept in: f32, bf16 or f16 (half the
    /// memory; on the CPU the products are still computed in f32; merged
    /// adapters stay f32).
    #[arg(long = "dtype", value_name = "DTYPE", default_value = "f32")]
    pub value: WeightDtype,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        let device = persona_model::parse_device(&self.device)?;
        persona_model::load_as(&self.model, &device, self.dtype.value)
            .with_context(|| format!("loading model `{}`", self.model))
    }
}

/// A persona vector at one row, and the model it belongs to.
#[derive(Args, Debug)]
pub struct VectorAtRow {
    /// Persona-vector file.
    #[arg(long)]
    pub vector: PathBuf,
    /// Residual row (row l = output of block l-1; row 0 = embeddings).
    #[arg(long)]
    pub layer: usize,
    /// Vector variant: response_avg, prompt_avg or prompt_last.
    #[arg(long, default_value = "response_avg")]
    pub variant: Variant,
    #[command(flatten)]
    pub model: ModelArgs,
}

impl VectorAtRow {
    /// Loads the vector and the model, and refuses a vector made for another model.
    pub fn load(&self) -> Result<(VectorFile, LoadedModel)> {
        let vector = VectorFile::load(&self.vector)?;
        let loaded = self.model.load()?;
        vector.check_model(&loaded.model.config, &loaded.identity)?;
        Ok((vector, loaded))
    }
}

/// `--judge` value -> judge config: the short names of the shipped configs
/// in `judges/`, anything else a path.
pub fn judge_config_path(name: &str) -> PathBuf {
    match name {
        "classifier" => "judges/classifier.toml".into(),
        "local" => "judges/local-smollm.toml".into(),
        "openai" => "judges/openai.toml".into(),
        path => path.into(),
    }
}

/// The judgment cache of this `PERSONA_HOME`.
pub fn judgment_cache() -> Result<persona_judge::JudgmentCache> {
    Ok(persona_judge::JudgmentCache::open(
        &persona_model::PersonaHome::from_env().judgments(),
    )?)
}

/// A spinner that ticks on its own.
pub fn spinner() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
