//! `persona judge`: train the classifier judge's per-trait probes.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use persona_judge::JudgeConfig;

#[derive(Subcommand)]
pub enum Command {
    /// Train the classifier judge's probe for a trait on labelled responses
    /// and report its held-out AUROC and calibration.
    Train {
        /// Trait file (its `name` names the probe).
        #[arg(long = "trait")]
        trait_file: PathBuf,
        /// Classifier judge config (encoder, probe folder, probe training settings).
        #[arg(long, default_value = "judges/classifier.toml")]
        config: PathBuf,
        /// Labelled JSONL `{"question", "answer", "label"}`; default
        /// `datasets/judge/<trait name>.jsonl`.
        #[arg(long)]
        labelled: Option<PathBuf>,
    },
}

pub fn exec(cmd: Command) -> Result<()> {
    match cmd {
        Command::Train {
            trait_file,
            config,
            labelled,
        } => {
            let def = persona_vectors::TraitDef::load(&trait_file)?;
            let JudgeConfig::Classifier(cfg) = JudgeConfig::load(&config)? else {
                bail!(
                    "{} is not a classifier judge config (kind = \"classifier\"); only the classifier judge has probes to train",
                    config.display()
                );
            };
            let labelled = labelled
                .unwrap_or_else(|| PathBuf::from(format!("datasets/judge/{}.jsonl", def.name)));
            let device = persona_model::parse_device(&cfg.device)?;
            let t0 = std::time::Instant::now();
            let probe =
                persona_judge::classifier::train_trait_probe(&cfg, &def.name, &labelled, &device)
                    .with_context(|| format!("training the `{}` probe", def.name))?;
            let r = &probe.report;
            let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.3}"));
            println!(
                "probe `{}` -> {} ({:.1} s)",
                def.name,
                cfg.probe_path(&def.name).display(),
                t0.elapsed().as_secs_f64()
            );
            println!(
                "  train: {} answers, AUROC {}; held out: {} answers from {} questions",
                r.n_train,
                f(r.train_auroc),
                r.n_held_out,
                r.held_out_questions
            );
            println!(
                "  held-out AUROC {}, accuracy {:.3}, Brier {:.4}, ECE {:.4}",
                f(r.held_out_auroc),
                r.held_out_accuracy,
                r.held_out_brier,
                r.held_out_ece
            );
            println!("  calibration (held out): bin  n  mean P  fraction positive");
            for b in &r.calibration {
                println!(
                    "    [{:.1}, {:.1})  {:>3}  {:.3}  {:.3}",
                    b.lo, b.hi, b.n, b.mean_predicted, b.fraction_positive
                );
            }
            Ok(())
        }
    }
}
