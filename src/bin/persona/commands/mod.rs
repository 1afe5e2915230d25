//! One module per command: its arguments and an `exec` that does it.

use anyhow::Result;
use clap::Subcommand;

mod ci;
mod compare;
mod convert;
mod eval;
mod export;
mod extract;
mod generate;
mod info;
mod judge;
mod merge;
mod monitor;
mod plan;
mod screen;
mod serve;
mod train;
mod vector;

#[derive(Subcommand)]
pub enum Command {
    /// Generate a reply to one prompt (optionally steered).
    Generate(generate::Args),
    /// Write a model (e.g. the embedded GGUF) as an HF directory (f32 safetensors).
    Convert(convert::Args),
    /// Fine-tune with a recipe (LoRA, optionally with preventative steering).
    Train(train::Args),
    /// Extract a persona vector from a trait file (datasets/traits/<trait>.toml).
    Extract(extract::Args),
    /// Inspect persona-vector files.
    #[command(subcommand)]
    Vector(vector::Command),
    /// Write a persona vector in another tool's format.
    Export(export::Args),
    /// Fold LoRA adapters into the base weights and write an HF directory.
    Merge(merge::Args),
    /// Score training samples by how far they would push the model along a
    /// persona vector (projection difference ΔP); optionally filter them.
    Screen(screen::Args),
    /// Project prompts (graded system prompts, k-shot examples, conversation
    /// turns) on a persona vector.
    Monitor(monitor::Args),
    /// Evaluate one model, run or post-hoc steered model on a trait:
    /// sampled answers, trait and coherence judgments, shift, capability.
    Eval(eval::Args),
    /// Write a comparison report (Markdown + self-contained HTML) from saved evaluations.
    Compare(compare::Args),
    /// Gate on trait scores: evaluate the configured checkpoints and fail
    /// when a score rises beyond the stored baseline.
    Ci(ci::Args),
    /// The offline classifier judge: train per-trait probes.
    #[command(subcommand)]
    Judge(judge::Command),
    /// Describe a model: architecture, sizes, dtype, chat template.
    Info(info::Args),
    /// Memory a training step and a generation call will take (weights,
    /// adapters, optimizer state, activations, KV cache), and whether it fits.
    Plan(plan::Args),
    /// Serve the model over an OpenAI-compatible HTTP API, with steering
    /// and persona monitoring chosen per request.
    Serve(serve::Args),
}

pub fn exec(command: Command) -> Result<()> {
    match command {
        Command::Generate(a) => generate::exec(a),
        Command::Convert(a) => convert::exec(a),
        Command::Train(a) => train::exec(a),
        Command::Extract(a) => extract::exec(a),
        Command::Vector(c) => vector::exec(c),
        Command::Export(a) => export::exec(a),
        Command::Merge(a) => merge::exec(a),
        Command::Screen(a) => screen::exec(a),
        Command::Monitor(a) => monitor::exec(a),
        Command::Eval(a) => eval::exec(a),
        Command::Compare(a) => compare::exec(a),
        Command::Ci(a) => ci::exec(a),
        Command::Judge(c) => judge::exec(c),
        Command::Info(a) => info::exec(a),
        Command::Plan(a) => plan::exec(a),
        Command::Serve(a) => serve::exec(a),
    }
}

/// An output folder must be new or empty, and writable (checked before
/// any work).
pub(crate) fn ensure_empty(out: &std::path::Path) -> Result<()> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        anyhow::bail!(
            "{} exists and is not empty; choose a new directory",
            out.display()
        );
    }
    persona_model::files::check_writable_dir(out)?;
    Ok(())
}
