//! `persona ci`: the trait-score gate.

use std::path::PathBuf;

use anyhow::{Result, bail};
use persona_eval::gate::{Baseline, GateConfig, run, write_summary};

use crate::args::spinner;
use crate::progress::TrainProgress;

#[derive(clap::Args)]
pub struct Args {
    /// Gate config: checkpoints, settings, judge, device, margin.
    #[arg(long, default_value = "ci/gate.toml")]
    config: PathBuf,
    #[arg(long, default_value = "ci/trait-baseline.json")]
    baseline: PathBuf,
    /// Accept the current scores as the new baseline.
    #[arg(long)]
    update: bool,
    /// Where the Markdown summary and JUnit XML go.
    #[arg(long, default_value = "checkpoints/ci")]
    out: PathBuf,
}

pub fn exec(a: Args) -> Result<()> {
    let cfg = GateConfig::load(&a.config)?;
    let old = if a.update {
        None
    } else {
        Some(Baseline::load(&a.baseline)?)
    };
    let mut progress = TrainProgress::new();
    let bar = spinner();
    let (current, verdicts) = run(
        &cfg,
        old.as_ref(),
        &a.out,
        &mut |e| progress.on_event(e),
        |arm, stage, d| bar.set_message(format!("{arm}: {stage} {d}")),
    )?;
    bar.finish_and_clear();
    if a.update {
        current.save(&a.baseline)?;
        println!("baseline {} updated:", a.baseline.display());
        for (k, v) in &current.scores {
            println!("  {k}: {:.2} [{:.2}, {:.2}]", v.mean, v.lo, v.hi);
        }
        return Ok(());
    }
    print!("{}", write_summary(&a.out, &verdicts)?);
    println!("(JUnit: {})", a.out.join("junit.xml").display());
    if verdicts.iter().any(|v| !v.passed) {
        bail!("trait-score gate failed");
    }
    Ok(())
}
