//! The arguments every projection command shares: a vector, a row, a model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use persona_model::{DEFAULT_MODEL, LoadedModel, parse_device};
use persona_vectors::VectorFile;

#[derive(Args)]
pub struct VectorAtRow {
    /// Persona-vector file.
    #[arg(long)]
    pub vector: PathBuf,
    /// Residual row (row l = output of block l-1; row 0 = embeddings).
    #[arg(long)]
    pub layer: usize,
    #[arg(long, default_value = "response_avg")]
    pub variant: persona_vectors::Variant,
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// cpu, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl VectorAtRow {
    /// Loads the vector and the model, and refuses a vector made for another model.
    pub fn load(&self) -> Result<(VectorFile, LoadedModel)> {
        let device = parse_device(&self.device)?;
        let vector = VectorFile::load(&self.vector)?;
        let loaded = persona_model::load(&self.model, &device)
            .with_context(|| format!("loading model `{}`", self.model))?;
        vector.check_model(&loaded.model.config, &loaded.identity)?;
        Ok((vector, loaded))
    }
}
