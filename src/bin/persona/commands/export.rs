//! `persona export`: a persona vector as a llama.cpp control vector.

use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;
use persona_vectors::VectorFile;
use persona_vectors::export::{llama_cpp_control_vector, llama_cpp_direction};

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    LlamaCpp,
}

#[derive(clap::Args)]
pub struct Args {
    /// Persona-vector file.
    #[arg(long)]
    vector: PathBuf,
    /// Target format (llama-cpp: a control-vector GGUF for `llama-cli --control-vector-scaled`).
    #[arg(long, value_enum)]
    format: Format,
    /// Rows to export (row l = output of block l-1; llama.cpp numbers it l-1).
    #[arg(long = "layer", required = true, num_args = 1..)]
    layers: Vec<usize>,
    /// Multiplier baked into the file (llama-cli can scale it again).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    coef: f32,
    /// Vector variant: response_avg, prompt_avg or prompt_last.
    #[arg(long, default_value = "response_avg")]
    variant: persona_vectors::Variant,
    /// `controlvector.model_hint` (default: the vector's model name).
    #[arg(long)]
    model_hint: Option<String>,
    #[arg(long)]
    out: PathBuf,
}

pub fn exec(a: Args) -> Result<()> {
    let Format::LlamaCpp = a.format;
    let f = VectorFile::load(&a.vector)?;
    let hint = a.model_hint.unwrap_or_else(|| f.meta.model_name.clone());
    let bytes = llama_cpp_control_vector(&f, a.variant, &a.layers, a.coef, &hint)?;
    persona_model::write_atomic(&a.out, &bytes)?;
    let dirs: Vec<String> = a
        .layers
        .iter()
        .filter_map(|r| llama_cpp_direction(*r))
        .map(|d| d.to_string())
        .collect();
    println!(
        "wrote {} (rows {:?} -> llama.cpp direction.{{{}}}, x {})",
        a.out.display(),
        a.layers,
        dirs.join(","),
        a.coef
    );
    println!(
        "steer with: llama-cli -m MODEL.gguf --control-vector-scaled {}:1.0 --control-vector-layer-range {} {}",
        a.out.display(),
        dirs.first().map(String::as_str).unwrap_or("1"),
        dirs.last().map(String::as_str).unwrap_or("1"),
    );
    Ok(())
}
