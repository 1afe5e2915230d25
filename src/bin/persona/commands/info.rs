//! `persona info`: what a model is.

use anyhow::{Context, Result};
use persona_model::DEFAULT_MODEL;

#[derive(clap::Args)]
pub struct Args {
    #[arg(default_value = DEFAULT_MODEL)]
    model: String,
}

pub fn exec(a: Args) -> Result<()> {
    let host = persona_model::load_host(&a.model)
        .with_context(|| format!("loading model `{}`", a.model))?;
    let c = &host.config;
    let params: usize = host.weights.values().map(|t| t.len()).sum();
    println!("model:        {}", host.identity.name);
    println!("path:         {}", host.identity.path.display());
    println!("sha256:       {}", host.identity.sha256);
    println!("architecture: {}", c.architecture.hf_name());
    println!("stored as:    {}", host.source_format);
    println!("loaded as:    f32");
    println!("parameters:   {params}");
    println!(
        "blocks {} | d_model {} | heads {} (kv {}) | head_dim {} | ffn {} | vocab {} | context {}",
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.d_ff,
        c.vocab_size,
        c.max_positions
    );
    println!(
        "rope theta {} | rms eps {} | tied embeddings {} | qkv bias {}",
        c.rope_theta, c.rms_eps, c.tie_embeddings, c.qkv_bias
    );
    if let Some(r) = &c.rope_scaling {
        println!(
            "rope scaling llama3: factor {} | low/high freq factor {} / {} | original context {}",
            r.factor, r.low_freq_factor, r.high_freq_factor, r.original_max_positions
        );
    }
    println!(
        "residual rows: 0..={} (row 0 = embedding output, row l = output of block l-1)",
        c.n_layers
    );
    println!(
        "bos {:?} | eos {:?} | stop ids {:?}",
        host.codec.bos_token, host.codec.eos_token, host.codec.stop_ids
    );
    println!("chat template:\n{}", host.codec.chat_template);
    Ok(())
}
