//! `persona convert`: a model as an HF directory (safetensors in f32, bf16
//! or f16).

use std::path::PathBuf;

use crate::args::DtypeArg;
use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Cache name, .gguf path or HF directory.
    model: String,
    /// Output directory (must not exist or be empty).
    out: PathBuf,
    // Also the type the tensors are written in (rounded to nearest).
    #[command(flatten)]
    dtype: DtypeArg,
}

pub fn exec(a: Args) -> Result<()> {
    super::ensure_empty(&a.out)?;
    let host = persona_model::load_host_as(&a.model, a.dtype.value)
        .with_context(|| format!("loading model `{}`", a.model))?;
    host.write_hf_dir(&a.out)?;
    println!(
        "wrote {} ({} tensors, {})",
        a.out.display(),
        host.weights.len(),
        a.dtype.value
    );
    Ok(())
}
