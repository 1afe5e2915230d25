//! `persona train`: a recipe's run, then its `[experiment]` when it has one.

use std::path::PathBuf;

use anyhow::Result;
use persona_eval::experiment::{ExperimentConfig, run_recipe_experiment};
use persona_eval::report::table;
use persona_train::{Recipe, RunDir};

use crate::args::spinner;
use crate::progress::TrainProgress;

#[derive(clap::Args)]
pub struct Args {
    /// Recipe TOML (see recipes/).
    recipe: PathBuf,
    /// Continue the run from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Override a recipe key: `--set steering.coef=-1.5` (TOML value; the
    /// resolved recipe in the run folder records it). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn exec(a: Args) -> Result<()> {
    let recipe = Recipe::load_with(&a.recipe, &a.set)?;
    // The experiment's settings are checked before any training.
    let experiment = ExperimentConfig::of_recipe(&recipe)
        .map_err(|e| anyhow::anyhow!("in {}: {e}", a.recipe.display()))?;
    let mut progress = TrainProgress::new();
    if recipe.data.filter.is_some() {
        let bar = spinner();
        persona::screen_recipe_data(&recipe, &mut |e| progress.on_event(e), |done, total| {
            bar.set_message(format!(
                "screening the training data: {done}/{total} samples"
            ))
        })?;
        bar.finish_and_clear();
    }
    if experiment.is_some() && RunDir::named(&recipe.run.name).is_finished() && !a.resume {
        println!("run already finished; going on to its experiment");
    } else {
        let out =
            persona_train::train_recipe(recipe.clone(), a.resume, &mut |e| progress.on_event(e))?;
        progress.finish();
        println!(
            "finished {} steps (last loss {:.4}); run in {}",
            out.steps,
            out.last_loss,
            out.run_dir.display()
        );
    }
    if let Some(cfg) = experiment {
        run_experiment(&recipe, &cfg, &mut progress)?;
    }
    Ok(())
}

/// The comparison after training (the baseline trained first when needed).
fn run_experiment(
    recipe: &Recipe,
    cfg: &ExperimentConfig,
    progress: &mut TrainProgress,
) -> Result<()> {
    let bar = spinner();
    let outcome = run_recipe_experiment(
        recipe,
        cfg,
        &mut |e| progress.on_event(e),
        |arm, stage, d| bar.set_message(format!("evaluating {arm}: {stage} {d}")),
    )?;
    bar.finish_and_clear();
    print!("{}", table(&outcome.arms));
    println!("report: {} (and report.md)", outcome.report.display());
    Ok(())
}
