//! `persona judge`: train the classifier judge's per-trait probes, and
//! audit any judge against careful ratings.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use persona_judge::audit::{Agreement, Audit, read_ratings};
use persona_judge::probe::Probe;
use persona_judge::{Judge, JudgeConfig};

use crate::args::{judge_config_path, judgment_cache};

#[derive(Subcommand)]
pub enum Command {
    /// Train the classifier judge's probe for a trait on labelled and
    /// hand-rated answers; report its held-out AUROC, calibration and its
    /// audit against the held-out ratings.
    Train {
        /// Trait file (its `name` names the probe).
        #[arg(long = "trait")]
        trait_file: PathBuf,
        /// Classifier judge config (encoder, probe folder, training data:
        /// `<labelled>/<trait>.jsonl` and `<rated>/<trait>.jsonl`, audit
        /// ratings, probe settings).
        #[arg(long, default_value = "judges/classifier.toml")]
        config: PathBuf,
    },
    /// Score a judge against a file of ratings: Pearson, Spearman, agreement
    /// on the 50 line, mean bias, and bias per `group`.
    Audit {
        /// `classifier`, `local`, `openai` (the configs in judges/) or a judge config file.
        #[arg(long, default_value = "classifier")]
        judge: String,
        /// Trait file: its name and rubric.
        #[arg(long = "trait")]
        trait_file: PathBuf,
        /// JSONL, one rated answer per line: `{"question", "answer", "trait":
        /// 0-100|null, "coherence": 0-100|null, "group"?}`.
        #[arg(long)]
        ratings: PathBuf,
        /// Coherence rubric file (for LLM judges).
        #[arg(long, default_value = "datasets/traits/coherence.toml")]
        coherence: PathBuf,
        /// Also write the audit as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn exec(cmd: Command) -> Result<()> {
    match cmd {
        Command::Train { trait_file, config } => train(&trait_file, &config),
        Command::Audit {
            judge,
            trait_file,
            ratings,
            coherence,
            out,
        } => audit(&judge, &trait_file, &ratings, &coherence, out.as_deref()),
    }
}

fn train(trait_file: &Path, config: &Path) -> Result<()> {
    let def = persona_vectors::TraitDef::load(trait_file)?;
    let JudgeConfig::Classifier(cfg) = JudgeConfig::load(config)? else {
        bail!(
            "{} is not a classifier judge config (kind = \"classifier\"); only the classifier judge has probes to train",
            config.display()
        );
    };
    let device = persona_model::parse_device(&cfg.device)?;
    let t0 = std::time::Instant::now();
    let probe = persona_judge::classifier::train_trait_probe(&cfg, &def.name, &device)
        .with_context(|| format!("training the `{}` probe", def.name))?;
    println!(
        "probe `{}` -> {} ({:.1} s)",
        def.name,
        cfg.probe_path(&def.name).display(),
        t0.elapsed().as_secs_f64()
    );
    print_training_report(&probe);
    match &probe.report.audit {
        Some(a) => print_audit(a),
        None => println!(
            "  no audit ratings at {}: the probe is not audited",
            cfg.audit.join(format!("{}.jsonl", def.name)).display()
        ),
    }
    Ok(())
}

fn print_training_report(probe: &Probe) {
    let r = &probe.report;
    let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    println!(
        "  trained on {} ({:?} features)",
        r.training_files.join(" + "),
        probe.settings.features
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
}

fn audit(
    judge: &str,
    trait_file: &Path,
    ratings_file: &Path,
    coherence_file: &Path,
    out: Option<&Path>,
) -> Result<()> {
    let def = persona_vectors::TraitDef::load(trait_file)?;
    let ratings = read_ratings(ratings_file)?;
    let rubric = persona_vectors::traits::load_coherence_rubric(coherence_file)?;
    let (trait_c, coh_c) = def.criteria(&rubric);
    let judge = Judge::from_config(&JudgeConfig::load(&judge_config_path(judge))?)?;
    let items: Vec<(String, String)> = ratings
        .iter()
        .map(|r| (r.question.clone(), r.answer.clone()))
        .collect();
    let mut cache = judgment_cache()?;
    eprintln!(
        "judging {} rated answers with {}",
        items.len(),
        judge.identity()
    );
    let traits = judge.judge(&trait_c, &items, &mut cache)?;
    let coherence = judge.judge(&coh_c, &items, &mut cache)?;
    let source = (
        ratings_file.display().to_string(),
        persona_judge::classifier::file_sha256(ratings_file)?,
    );
    let a = Audit::of(&def.name, source, &ratings, &traits, Some(&coherence));
    println!("judge: {}", judge.identity());
    print_audit(&a);
    if let Some(out) = out {
        let bytes = serde_json::to_vec_pretty(&a)?;
        persona_model::write_atomic(out, &bytes)
            .with_context(|| format!("writing the audit to {}", out.display()))?;
    }
    Ok(())
}

fn print_audit(a: &Audit) {
    println!("  audit on {} ({}):", a.ratings_file, a.trait_name);
    let print = |name: &str, g: &Option<Agreement>| match g {
        None => println!("    {name}: no answer both rated and judged"),
        Some(g) => {
            println!("    {name}: {}", g.line());
            for b in &g.groups {
                println!(
                    "      {:<28} n {:>4}  judge {:>5.1}  rating {:>5.1}  bias {:+6.1}",
                    b.group, b.n, b.mean_judge, b.mean_rating, b.bias
                );
            }
        }
    };
    print(&a.trait_name, &a.trait_agreement);
    if a.coherence_agreement.is_some() {
        print("coherence", &a.coherence_agreement);
    }
    if a.judge_missing > 0 {
        println!("    {} rated answers got no judgment", a.judge_missing);
    }
}
