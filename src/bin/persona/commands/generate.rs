//! `persona generate`: one reply, optionally steered.

use std::path::PathBuf;

use anyhow::{Result, bail};
use persona::{Model, Positions};

use crate::args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt; without it the model's chat template may add its own default.
    #[arg(long)]
    system: Option<String>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Persona-vector file to steer with.
    #[arg(long, requires_all = ["layer", "coef"])]
    steer: Option<PathBuf>,
    /// Vector row to steer at (row l = output of block l-1; row 0 = embeddings).
    #[arg(long)]
    layer: Option<usize>,
    /// Steering coefficient (negative suppresses the trait).
    #[arg(long, allow_hyphen_values = true)]
    coef: Option<f32>,
    /// Vector variant in the file: response_avg, prompt_avg or prompt_last.
    #[arg(long, default_value = "response_avg")]
    variant: persona::Variant,
    /// Where steering applies: generating (the last prompt token and every
    /// generated token, the paper's), all, prompt or response.
    #[arg(long, default_value = "generating")]
    positions: Positions,
}

pub fn exec(a: Args) -> Result<()> {
    // Checked before the model loads.
    persona_model::Sampling::from_settings(a.temperature, a.top_p)?;
    let lm = Model::load_as(&a.model.model, &a.model.device, a.model.dtype.value)?;
    let context = lm.runtime().model.config.max_positions;
    if a.max_new_tokens > context {
        bail!(
            "--max-new-tokens {} is more than the model's context of {context} tokens; generation stops at the context anyway, so pass at most {context}",
            a.max_new_tokens
        );
    }
    let mut chat =
        lm.chat(&a.prompt)
            .max_tokens(a.max_new_tokens)
            .sample(a.temperature, a.top_p, a.seed)?;
    if let Some(s) = &a.system {
        chat = chat.system(s);
    }
    if let (Some(path), Some(layer), Some(coef)) = (&a.steer, a.layer, a.coef) {
        let v = lm.vector(path)?.variant(a.variant);
        chat = chat.steer_at(v.at(layer) * coef, a.positions);
    }
    println!("{}", chat.generate()?);
    Ok(())
}
