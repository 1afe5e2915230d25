//! `persona convert`: a model as an HF directory (f32 safetensors).

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Cache name, .gguf path or HF directory.
    model: String,
    /// Output directory (must not exist or be empty).
    out: PathBuf,
}

pub fn exec(a: Args) -> Result<()> {
    super::ensure_empty(&a.out)?;
    let host = persona_model::load_host(&a.model)
        .with_context(|| format!("loading model `{}`", a.model))?;
    host.write_hf_dir(&a.out)?;
    println!(
        "wrote {} ({} tensors, f32)",
        a.out.display(),
        host.weights.len()
    );
    Ok(())
}
