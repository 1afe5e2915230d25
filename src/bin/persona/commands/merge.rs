//! `persona merge`: adapters folded into the base weights.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::Device;
use persona_model::DEFAULT_MODEL;

#[derive(clap::Args)]
pub struct Args {
    /// A run folder (uses its `adapter/`) or an adapter folder (PEFT layout).
    adapter: PathBuf,
    /// The base model the adapters were trained on.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Output directory (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    dtype: crate::args::DtypeArg,
}

pub fn exec(a: Args) -> Result<()> {
    super::ensure_empty(&a.out)?;
    let dir = persona_eval::arm::adapter_dir(&a.adapter);
    let mut host = persona_model::load_host_as(&a.model, a.dtype.value)
        .with_context(|| format!("loading model `{}`", a.model))?;
    let lora = persona_train::checkpoint::read_adapter(&dir, &host.config, &Device::flex())?;
    lora.merge_into(&mut host.weights)?;
    host.write_hf_dir(&a.out)?;
    println!(
        "merged {} into {}; wrote {}",
        dir.display(),
        a.model,
        a.out.display()
    );
    Ok(())
}
