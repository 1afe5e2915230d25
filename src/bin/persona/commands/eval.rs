//! `persona eval`: one model, run or post-hoc steered model on a trait.

use std::path::PathBuf;

use anyhow::{Result, bail};
use persona::Evaluation;
use persona_eval::report::{load_arm, table};

#[derive(clap::Args)]
pub struct Args {
    /// A model spec (cache name, .gguf, HF folder) or a run folder (its adapters are merged into `--model`).
    target: String,
    /// Base model when `target` is a run folder.
    #[arg(long, default_value = persona_model::DEFAULT_MODEL)]
    model: String,
    /// Evaluation settings and capability data (TOML with `[eval]` and `[capability]` tables, as in a recipe's `[experiment]`).
    #[arg(long, default_value = "settings/eval.toml")]
    settings: PathBuf,
    /// Judge config.
    #[arg(long, default_value = "judges/classifier.toml")]
    judge: PathBuf,
    /// Post-hoc steering vector (with --coef; the row is the settings' shift row).
    #[arg(long)]
    steer: Option<PathBuf>,
    #[arg(long, allow_hyphen_values = true)]
    coef: Option<f32>,
    /// Output folder of answers, judgments and results.
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    dtype: crate::args::DtypeArg,
}

pub fn exec(a: Args) -> Result<()> {
    let mut evaluation = Evaluation::load(&a.settings)?
        .judge(&a.judge)
        .base_model(&a.model)
        .device(&a.device)
        .dtype(a.dtype.value);
    match (&a.steer, a.coef) {
        (Some(vector), Some(coef)) => evaluation = evaluation.steer(vector, coef),
        (None, None) => {}
        _ => bail!("--steer and --coef go together"),
    }
    let bar = crate::args::spinner();
    bar.set_message(format!("evaluating {}", a.target));
    evaluation.run(&a.target, &a.out)?;
    bar.finish_and_clear();
    let arm = load_arm(&a.out)?;
    print!("{}", table(std::slice::from_ref(&arm)));
    println!("answers and judgments in {}", a.out.display());
    Ok(())
}
