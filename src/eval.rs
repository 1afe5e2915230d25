//! `persona eval`, `persona compare`, `persona ci`, and the experiment that
//! follows `persona train` when a recipe has an `[experiment]` table.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::ProgressBar;
use persona_eval::capability::CapabilitySettings;
use persona_eval::experiment::{ExperimentConfig, evaluate_arm};
use persona_eval::gate::{Baseline, decide, junit, markdown};
use persona_eval::report::{ComparisonManifest, table, write_report};
use persona_eval::trait_eval::EvalSettings;
use persona_eval::{Arm, PostHoc};
use persona_judge::{Judge, JudgeConfig, JudgmentCache};
use serde::Deserialize;

#[derive(Args)]
pub struct EvalArgs {
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
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
pub struct CompareArgs {
    /// Arm result folders (from `persona eval --out`), or run folders (all arms under `<run>/eval/`).
    #[arg(required = true)]
    targets: Vec<PathBuf>,
    /// Report folder.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct CiArgs {
    /// Gate config: checkpoints, settings, judge, margin.
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

/// `[eval]` + `[capability]` tables of a settings file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    eval: EvalSettings,
    capability: CapabilitySettings,
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn open_cache() -> Result<JudgmentCache> {
    Ok(JudgmentCache::open(
        &persona_model::PersonaHome::from_env().judgments(),
    )?)
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let s: SettingsFile = read_toml(&a.settings)?;
    s.eval
        .sampling()
        .with_context(|| format!("in {} [eval]", a.settings.display()))?;
    let device = persona_model::parse_device(&a.device)?;
    let run = PathBuf::from(&a.target);
    let (model, adapter) = if persona_eval::arm::adapter_dir(&run)
        .join(persona_train::run_dir::ADAPTER_WEIGHTS)
        .exists()
    {
        (a.model.clone(), Some(run))
    } else {
        (a.target.clone(), None)
    };
    let steer = match (a.steer, a.coef) {
        (Some(vector), Some(coef)) => Some(PostHoc {
            vector,
            row: s.eval.shift_row,
            coef,
        }),
        (None, None) => None,
        _ => bail!("--steer and --coef go together"),
    };
    let arm = Arm {
        id: a
            .out
            .file_name()
            .map_or("arm".into(), |n| n.to_string_lossy().into_owned()),
        label: a.target.clone(),
        model,
        adapter,
        step: None,
        steer,
    };
    let judge = Judge::from_config(&JudgeConfig::load(&a.judge)?)?;
    let mut cache = open_cache()?;
    let bar = spinner();
    evaluate_arm(
        &arm,
        &s.eval,
        &s.capability,
        &judge,
        &mut cache,
        &a.out,
        &device,
        |stage, d| bar.set_message(format!("{stage} {d}")),
    )?;
    bar.finish_and_clear();
    let arm_data = persona_eval::report::load_arm(&a.out)?;
    print!("{}", table(std::slice::from_ref(&arm_data)));
    println!("answers and judgments in {}", a.out.display());
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

pub fn compare(a: CompareArgs) -> Result<()> {
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

/// `ci/gate.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GateConfig {
    judge: PathBuf,
    /// A rise smaller than this never fails (trait-score points).
    margin: f64,
    /// Recipes whose finished runs are gated; missing runs are trained first.
    recipes: Vec<PathBuf>,
    eval: EvalSettings,
    capability: CapabilitySettings,
}

pub fn ci(a: CiArgs) -> Result<()> {
    let cfg: GateConfig = read_toml(&a.config)?;
    cfg.eval
        .sampling()
        .with_context(|| format!("in {} [eval]", a.config.display()))?;
    let device = persona_model::parse_device("cpu")?;
    let judge = Judge::from_config(&JudgeConfig::load(&cfg.judge)?)?;
    let mut cache = open_cache()?;
    let mut verdicts = Vec::new();
    let mut current = Baseline {
        scores: Default::default(),
    };
    let old = if a.update {
        None
    } else {
        Some(Baseline::load(&a.baseline)?)
    };
    for recipe_path in &cfg.recipes {
        let recipe = persona_train::Recipe::load(recipe_path)?;
        let run = ensure_trained(recipe_path)?;
        let arm = Arm {
            id: recipe.run.name.clone(),
            label: recipe.run.name.clone(),
            model: recipe.model.name.clone(),
            adapter: Some(run.clone()),
            step: None,
            steer: None,
        };
        let dir = a.out.join("arms").join(&arm.id);
        let bar = spinner();
        let (r, _) = evaluate_arm(
            &arm,
            &cfg.eval,
            &cfg.capability,
            &judge,
            &mut cache,
            &dir,
            &device,
            |stage, d| bar.set_message(format!("{}: {stage} {d}", arm.id)),
        )?;
        bar.finish_and_clear();
        let score = r
            .trait_score
            .with_context(|| format!("{}: every trait judgment is missing", arm.id))?;
        let key = format!("{}/{}", arm.id, r.trait_name);
        if let Some(old) = &old {
            verdicts.push(decide(&key, old.scores.get(&key), &score, cfg.margin));
        }
        current.scores.insert(key, score);
    }
    std::fs::create_dir_all(&a.out)?;
    if a.update {
        current.save(&a.baseline)?;
        println!("baseline {} updated:", a.baseline.display());
        for (k, v) in &current.scores {
            println!("  {k}: {:.2} [{:.2}, {:.2}]", v.mean, v.lo, v.hi);
        }
        return Ok(());
    }
    let md = markdown(&verdicts);
    persona_model::write_atomic(&a.out.join("summary.md"), md.as_bytes())?;
    persona_model::write_atomic(&a.out.join("junit.xml"), junit(&verdicts).as_bytes())?;
    print!("{md}");
    println!("(JUnit: {})", a.out.join("junit.xml").display());
    if verdicts.iter().any(|v| !v.passed) {
        bail!("trait-score gate failed");
    }
    Ok(())
}

/// The run folder of a recipe, training (or resuming) it when unfinished.
pub fn ensure_trained(recipe_path: &Path) -> Result<PathBuf> {
    let recipe = persona_train::Recipe::load(recipe_path)?;
    let run_dir = persona_train::RunDir::named(&recipe.run.name);
    let run = run_dir.root().to_path_buf();
    if run_dir.is_finished() {
        return Ok(run);
    }
    let resume = run_dir.has_checkpoint();
    eprintln!(
        "{} run {} ({})",
        if resume { "resuming" } else { "training" },
        run.display(),
        recipe_path.display()
    );
    let mut progress = crate::progress::TrainProgress::new();
    persona_train::train(recipe_path, resume, &mut |e| progress.on_event(e))?;
    Ok(run)
}

/// Checks a recipe's `[experiment]` table before training starts.
pub fn experiment_config(recipe_path: &Path) -> Result<Option<ExperimentConfig>> {
    let recipe = persona_train::Recipe::load(recipe_path)?;
    recipe
        .experiment
        .as_ref()
        .map(|t| {
            ExperimentConfig::from_table(t).with_context(|| format!("in {}", recipe_path.display()))
        })
        .transpose()
}

/// The comparison after training a recipe with an `[experiment]` table.
pub fn run_experiment(recipe_path: &Path, cfg: &ExperimentConfig) -> Result<()> {
    let recipe = persona_train::Recipe::load(recipe_path)?;
    let vaccine_run = persona_train::RunDir::named(&recipe.run.name)
        .root()
        .to_path_buf();
    let baseline_run = ensure_trained(&cfg.baseline)?;
    let device = persona_model::parse_device(&recipe.run.device)?;
    let bar = spinner();
    let html = persona_eval::experiment::run_experiment(
        &recipe.model.name,
        &vaccine_run,
        &baseline_run,
        cfg,
        &device,
        |arm, stage, d| bar.set_message(format!("evaluating {arm}: {stage} {d}")),
    )?;
    bar.finish_and_clear();
    let manifest: ComparisonManifest = serde_json::from_str(&std::fs::read_to_string(
        vaccine_run.join("comparison.json"),
    )?)?;
    let arms: Vec<_> = manifest
        .arms
        .iter()
        .map(|d| persona_eval::report::load_arm(d))
        .collect::<persona_eval::Result<_>>()?;
    print!("{}", table(&arms));
    println!("report: {} (and report.md)", html.display());
    Ok(())
}

/// `persona vector select`.
pub fn select(
    vector: &Path,
    trait_file: &Path,
    settings: &Path,
    overrides: &Overrides,
    model: &str,
    device: &str,
) -> Result<()> {
    use persona_eval::select::{SelectSettings, select, store};
    let mut s: SelectSettings = read_toml(settings)?;
    overrides.apply(&mut s.judge, &mut s.samples);
    s.check()
        .with_context(|| format!("in {}", settings.display()))?;
    let def = persona_vectors::TraitDef::load(trait_file)?;
    let mut file = persona_vectors::VectorFile::load(vector)?;
    let device = persona_model::parse_device(device)?;
    let loaded =
        persona_model::load(model, &device).with_context(|| format!("loading model `{model}`"))?;
    file.check_model(&loaded.model.config, &loaded.identity)?;
    let judge = Judge::from_config(&JudgeConfig::load(&s.judge)?)?;
    let mut cache = open_cache()?;
    let bar = spinner();
    let t0 = std::time::Instant::now();
    let sel = select(&loaded, &file, &def, &s, &judge, &mut cache, |what| {
        bar.set_message(format!("steering {what}"))
    })?;
    bar.finish_and_clear();
    store(&mut file, &sel)?;
    print_selection(&sel);
    println!(
        "stored in {} ({:.0} s)",
        vector.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The layer scan and the sweep as tables.
pub fn print_selection(sel: &persona_eval::select::Selection) {
    let f = |x: Option<f64>| x.map_or("n/a".into(), |v| format!("{v:.1}"));
    println!(
        "layer scan (coefficient {:+}, extraction questions, judge {}):",
        sel.settings.layer_coef, sel.judge
    );
    println!("  row  trait  coherence");
    for l in &sel.layers {
        println!(
            "  {:>3}  {:>5}  {:>9}",
            l.row,
            f(l.trait_score),
            f(l.coherence)
        );
    }
    match sel.chosen_row {
        Some(r) => println!(
            "chosen row: {r} (highest trait score with coherence >= {})",
            sel.settings.coherence_threshold
        ),
        None => println!(
            "no row keeps coherence >= {}; nothing chosen",
            sel.settings.coherence_threshold
        ),
    }
    if !sel.sweep.is_empty() {
        println!("coefficient sweep (evaluation questions):");
        println!("   coef  trait  coherence");
        for c in &sel.sweep {
            println!(
                "  {:>+5}  {:>5}  {:>9}",
                c.coef,
                f(c.trait_score),
                f(c.coherence)
            );
        }
    }
}

/// Command-line replacements for keys of a settings file (`persona extract
/// --judge/--samples`). The settings actually used are what the vector's
/// metadata records.
#[derive(Debug, Default)]
pub struct Overrides {
    pub judge: Option<PathBuf>,
    pub samples: Option<usize>,
}

impl Overrides {
    fn apply(&self, judge: &mut PathBuf, samples: &mut usize) {
        if let Some(j) = &self.judge {
            *judge = j.clone();
        }
        if let Some(n) = self.samples {
            *samples = n;
        }
    }
}

/// `--judge` value -> judge config: the short names of the shipped configs
/// in `judges/`, anything else a path.
pub fn judge_config_path(name: &str) -> PathBuf {
    match name {
        "classifier" => "judges/classifier.toml".into(),
        "local" => "judges/local-smollm.toml".into(),
        "openai" => "judges/openai.toml".into(),
        path => path.into(),
    }
}

/// `persona extract --source generated`. Returns the file written.
pub fn extract_generated(
    trait_file: &Path,
    settings: &Path,
    overrides: &Overrides,
    model: &str,
    out: Option<PathBuf>,
    device: &str,
) -> Result<PathBuf> {
    let mut g: persona_vectors::generated::GeneratedSettings = read_toml(settings)?;
    overrides.apply(&mut g.judge, &mut g.samples);
    g.check()
        .with_context(|| format!("in {}", settings.display()))?;
    let def = persona_vectors::TraitDef::load(trait_file)?;
    let rubric = persona_vectors::traits::load_coherence_rubric(&g.coherence_file)?;
    let out = out.unwrap_or_else(|| {
        persona_model::PersonaHome::from_env().vector(model, &format!("{}-generated", def.name))
    });
    persona_model::files::check_writable_file(&out)?;
    let device = persona_model::parse_device(device)?;
    let loaded =
        persona_model::load(model, &device).with_context(|| format!("loading model `{model}`"))?;
    let work = out.with_extension("work");
    let judge = Judge::from_config(&JudgeConfig::load(&g.judge)?)?;
    let mut cache = open_cache()?;
    let bar = ProgressBar::new(def.extraction.len() as u64);
    bar.set_message("questions answered and judged");
    let t0 = std::time::Instant::now();
    let (file, counts) = persona_vectors::generated::extract_generated(
        &loaded,
        &def,
        &rubric,
        &judge,
        &mut cache,
        &g,
        &work,
        |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    file.save(&out)?;
    println!(
        "wrote {}: kept {} of {} pairs ({:.0}%), dropped {} ({:.0} s); answers and judgments in {}",
        out.display(),
        counts.kept,
        counts.pairs,
        100.0 * counts.kept as f64 / counts.pairs.max(1) as f64,
        counts.dropped,
        t0.elapsed().as_secs_f64(),
        work.join("generated.jsonl").display()
    );
    Ok(out)
}
