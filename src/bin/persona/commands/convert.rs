//! `persona convert`: a model as an HF directory (safetensors in f32, bf16
//! or f16).

use std::path::PathBuf;

use anyhow::{Context, Result};
use persona_model::WeightDtype;

#[derive(clap::Args)]
pub struct Args {
    /// Cache name, .gguf path or HF directory.
    model: String,
    /// Output directory (must not exist or be empty).
    out: PathBuf,
    /// The type the tensors are written in: f32, bf16 or f16 (rounded to
    /// nearest; f16 refuses values beyond its range).
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
}

pub fn exec(a: Args) -> Result<()> {
    super::ensure_empty(&a.out)?;
    let host = persona_model::load_host_as(&a.model, a.dtype)
        .with_context(|| format!("loading model `{}`", a.model))?;
    host.write_hf_dir(&a.out)?;
    println!(
        "wrote {} ({} tensors, {})",
        a.out.display(),
        host.weights.len(),
        a.dtype
    );
    Ok(())
}
