//! `persona compare`: a report from saved evaluations.

use std::path::PathBuf;

use anyhow::{Result, bail};
use persona_eval::report::{ComparisonManifest, write_report};

#[derive(clap::Args)]
pub struct Args {
    /// Arm result folders (from `persona eval --out`), or run folders (all arms under `<run>/eval/`).
    #[arg(required = true)]
    targets: Vec<PathBuf>,
    /// Report folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn exec(a: Args) -> Result<()> {
    let arms = arm_dirs(&a.targets)?;
    let runs = a
        .targets
        .iter()
        .filter(|t| t.join("metrics.jsonl").exists())
        .map(|t| (t.display().to_string(), t.clone()))
        .collect();
    let manifest = ComparisonManifest {
        title: "Checkpoint comparison".into(),
        arms,
        runs,
    };
    let html = write_report(&a.out, &manifest)?;
    println!("wrote {} and report.md", html.display());
    Ok(())
}

/// Arm folders named by `targets` (a run folder stands for every arm under
/// `<run>/eval/`, and its `metrics.jsonl` gives the shift-per-step plot).
fn arm_dirs(targets: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for t in targets {
        if t.join("result.json").exists() {
            out.push(t.clone());
        } else if t.join("eval").is_dir() {
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(t.join("eval"))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("result.json").exists())
                .collect();
            dirs.sort();
            out.extend(dirs);
        } else if t.join("metrics.jsonl").exists() {
            // A run folder without evaluations: only its shift-per-step curve.
        } else {
            bail!(
                "{} holds no result.json and no eval/ folder; evaluate it first with `persona eval`",
                t.display()
            );
        }
    }
    Ok(out)
}
