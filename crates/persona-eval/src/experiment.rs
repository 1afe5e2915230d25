//! The experiment behind a vaccine recipe: base model, unsteered fine-tune
//! (the baseline recipe's run), vaccine fine-tune, their intermediate
//! snapshots, and post-hoc steering of the unsteered fine-tune at several
//! negative coefficients, all on the same held-out questions and seeds;
//! then the comparison report in `<run>/report.{md,html}`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use persona_judge::{Judge, JudgmentCache};
use persona_train::recipe::ModelSection;
use serde::{Deserialize, Serialize};

use crate::arm::{Arm, Cap, LazyArm, PostHoc};
use crate::capability::{CapabilityResult, CapabilitySettings, evaluate_capability};
use crate::error::{EvalError, Result};
use crate::report::{ComparisonManifest, write_report};
use crate::trait_eval::{EvalSettings, TraitResult, evaluate_trait};

/// A recipe's `[experiment]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The unsteered arm's recipe (same data and seed, `mode = "none"`);
    /// trained first when its run is missing or unfinished.
    pub baseline: PathBuf,
    /// Judge config (`judges/classifier.toml` offline).
    pub judge: PathBuf,
    /// Coefficients of post-hoc steering of the unsteered fine-tune at `eval.shift_row`.
    pub posthoc_coefs: Vec<f32>,
    /// Also evaluate the runs' adapter snapshots (`[run] snapshot_every`).
    pub snapshots: bool,
    /// Activation capping of the unsteered fine-tune at `eval.shift_row`:
    /// one arm per quantile, capped at that quantile of the base model's
    /// per-token projections over the `capability.chat` answers (none when
    /// absent).
    #[serde(default)]
    pub cap_quantiles: Vec<f64>,
    pub eval: EvalSettings,
    pub capability: CapabilitySettings,
}

impl ExperimentConfig {
    /// The recipe's `[experiment]`, parsed and checked; none without one.
    pub fn of_recipe(recipe: &persona_train::Recipe) -> Result<Option<Self>> {
        recipe.experiment.as_ref().map(Self::from_table).transpose()
    }

    /// Parses and checks the `[experiment]` table of a recipe.
    pub fn from_table(t: &toml::Table) -> Result<Self> {
        let cfg: Self = persona_model::settings::from_table(t.clone())
            .map_err(|e| EvalError::Input(format!("recipe [experiment]: {e}")))?;
        cfg.eval
            .check()
            .map_err(|e| EvalError::Input(format!("recipe [experiment.eval]: {e}")))?;
        if let Some(q) = cfg.cap_quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
            return Err(EvalError::Input(format!(
                "recipe [experiment] cap_quantiles: {q} is not in [0, 1]"
            )));
        }
        if let Some(c) = cfg.posthoc_coefs.iter().find(|c| !c.is_finite()) {
            return Err(EvalError::Input(format!(
                "recipe [experiment] posthoc_coefs: {c} is not a finite number"
            )));
        }
        for p in [
            &cfg.baseline,
            &cfg.judge,
            &cfg.eval.trait_file,
            &cfg.eval.coherence_file,
            &cfg.capability.normal,
            &cfg.capability.chat,
            &cfg.capability.mc,
        ] {
            if !p.exists() {
                return Err(EvalError::file(
                    p,
                    "recipe [experiment] names a file that does not exist",
                ));
            }
        }
        Ok(cfg)
    }
}

/// Saved capability measures, keyed to the arm's trait-result fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedCapability {
    fingerprint: String,
    #[serde(flatten)]
    result: CapabilityResult,
}

/// Evaluates one arm into `dir` (trait, then capability), reusing saved results.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_arm(
    arm: &Arm,
    settings: &EvalSettings,
    capability: &CapabilitySettings,
    judge: &Judge,
    cache: &mut JudgmentCache,
    dir: &Path,
    device: &Device,
    progress: impl FnMut(&str, usize),
) -> Result<(TraitResult, CapabilityResult)> {
    let mut model = LazyArm::new(arm, device);
    let result = evaluate_trait(&mut model, settings, judge, cache, dir, progress)?;
    let cap_fp = format!(
        "{} {}",
        result.fingerprint,
        serde_json::to_string(capability).expect("serialises")
    );
    let path = dir.join("capability.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(saved) = serde_json::from_str::<SavedCapability>(&text)
        && saved.fingerprint == cap_fp
    {
        return Ok((result, saved.result));
    }
    let (loaded, steering) = model.get()?;
    let cap = evaluate_capability(loaded, steering, capability)?;
    let saved = SavedCapability {
        fingerprint: cap_fp,
        result: cap.clone(),
    };
    persona_model::write_atomic(
        &path,
        &serde_json::to_vec_pretty(&saved).expect("serialises"),
    )?;
    Ok((result, cap))
}

/// The adapter snapshots of a run, by step.
pub fn snapshots(run: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(run.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join(persona_train::run_dir::ADAPTER_WEIGHTS)
                .exists()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The arms of the experiment, in report order.
/// The arms of the experiment, in report order. The defended run's label
/// comes from its recipe, and a run trained with inoculation prompts is
/// also evaluated with the first of them at inference; `caps` are the
/// `(quantile, upper bound)` of the capping arms ([`cap_bounds`]).
pub fn arms(
    trained: &persona_train::Recipe,
    (vaccine_run, baseline_run): (&Path, &Path),
    cfg: &ExperimentConfig,
    caps: &[(f64, f32)],
) -> Vec<Arm> {
    let model = &trained.model;
    let arm = |id: String, label: String, adapter: Option<&Path>| Arm {
        id,
        label,
        model: model.name.clone(),
        dtype: model.dtype,
        adapter: adapter.map(Path::to_path_buf),
        step: None,
        steer: None,
        cap: None,
        system: None,
    };
    let mut out = vec![
        arm("base".into(), "base model".into(), None),
        arm(
            "unsteered".into(),
            "unsteered fine-tune".into(),
            Some(baseline_run),
        ),
        arm(
            "vaccine".into(),
            format!("defended fine-tune ({})", trained.defence()),
            Some(vaccine_run),
        ),
    ];
    let inoculation = trained.inoculation.as_ref();
    if let Some(prompt) = inoculation.and_then(|i| i.system.as_slice().first()) {
        out.push(Arm {
            system: Some(prompt.clone()),
            ..arm(
                "vaccine-prompted".into(),
                "defended fine-tune, inoculation prompt at inference".into(),
                Some(vaccine_run),
            )
        });
    }
    let (vector, row) = (&cfg.eval.shift_vector, cfg.eval.shift_row);
    for &c in &cfg.posthoc_coefs {
        out.push(Arm {
            steer: Some(PostHoc {
                vector: vector.clone(),
                row,
                coef: c,
            }),
            ..arm(
                format!("posthoc{c:+}"),
                format!("unsteered + post-hoc steering {c:+}"),
                Some(baseline_run),
            )
        });
    }
    for &(q, max) in caps {
        out.push(Arm {
            cap: Some(Cap {
                vector: vector.clone(),
                row,
                min: f32::MIN,
                max,
            }),
            ..arm(
                format!("cap-q{:02}", (q * 100.0).round()),
                format!("unsteered + capping at base q{:.0} ({max:.2})", q * 100.0),
                Some(baseline_run),
            )
        });
    }
    if cfg.snapshots {
        for (name, run) in [("unsteered", baseline_run), ("vaccine", vaccine_run)] {
            for (step, dir) in snapshots(run) {
                out.push(Arm {
                    step: Some(step),
                    ..arm(
                        format!("{name}-step-{step:05}"),
                        format!("{name} @ step {step}"),
                        Some(&dir),
                    )
                });
            }
        }
    }
    out
}

/// The capping bounds of `cfg.cap_quantiles`, measured on the base model.
pub fn cap_bounds(
    model: &ModelSection,
    cfg: &ExperimentConfig,
    device: &Device,
) -> Result<Vec<(f64, f32)>> {
    if cfg.cap_quantiles.is_empty() {
        return Ok(Vec::new());
    }
    let projections = crate::cap::response_projections(
        &model.name,
        model.dtype,
        (&cfg.eval.shift_vector, cfg.eval.shift_row),
        &cfg.capability.chat,
        cfg.capability.batch_size,
        device,
    )?;
    cfg.cap_quantiles
        .iter()
        .map(|&q| Ok((q, crate::cap::upper_bound(&projections, q)?)))
        .collect()
}

/// Runs every arm (results in `<vaccine run>/eval/<arm>/`) and writes the
/// report into the vaccine run folder. `progress(arm label, stage, done)`.
pub fn run_experiment(
    trained: &persona_train::Recipe,
    (vaccine_run, baseline_run): (&Path, &Path),
    cfg: &ExperimentConfig,
    device: &Device,
    mut progress: impl FnMut(&str, &str, usize),
) -> Result<PathBuf> {
    let judge = Judge::from_config(&persona_judge::JudgeConfig::load(&cfg.judge)?)?;
    let mut cache = JudgmentCache::open(&persona_model::PersonaHome::from_env().judgments())?;
    let caps = cap_bounds(&trained.model, cfg, device)?;
    let arms = arms(trained, (vaccine_run, baseline_run), cfg, &caps);
    let mut dirs = Vec::new();
    for arm in &arms {
        let dir = vaccine_run.join("eval").join(&arm.id);
        evaluate_arm(
            arm,
            &cfg.eval,
            &cfg.capability,
            &judge,
            &mut cache,
            &dir,
            device,
            |stage, d| progress(&arm.label, stage, d),
        )?;
        dirs.push(dir);
    }
    let manifest = ComparisonManifest {
        title: format!(
            "Vaccine vs unsteered fine-tune vs post-hoc steering ({})",
            vaccine_run.display()
        ),
        arms: dirs,
        runs: vec![
            ("unsteered".into(), baseline_run.to_path_buf()),
            ("vaccine".into(), vaccine_run.to_path_buf()),
        ],
    };
    write_report(vaccine_run, &manifest)
}

/// What an experiment left: the report and its arms' results.
pub struct ExperimentOutcome {
    /// `report.html` in the vaccine run folder (`report.md` beside it).
    pub report: PathBuf,
    pub arms: Vec<crate::report::ArmData>,
}

/// The whole experiment of a trained vaccine recipe: its baseline recipe's
/// run trained first when unfinished (`on_train` sees it), then every arm
/// evaluated and the report written ([`run_experiment`]).
pub fn run_recipe_experiment(
    recipe: &persona_train::Recipe,
    cfg: &ExperimentConfig,
    on_train: &mut dyn FnMut(persona_train::TrainEvent<'_>),
    progress: impl FnMut(&str, &str, usize),
) -> Result<ExperimentOutcome> {
    let vaccine = persona_train::RunDir::named(&recipe.run.name);
    let baseline =
        persona_train::ensure_trained(&persona_train::Recipe::load(&cfg.baseline)?, on_train)?;
    let device = persona_model::parse_device(&recipe.run.device)?;
    let report = run_experiment(
        recipe,
        (vaccine.root(), baseline.root()),
        cfg,
        &device,
        progress,
    )?;
    let manifest: ComparisonManifest = serde_json::from_str(
        &std::fs::read_to_string(vaccine.root().join("comparison.json"))
            .map_err(|e| EvalError::file(vaccine.root(), e))?,
    )
    .map_err(|e| EvalError::file(vaccine.root(), e))?;
    let arms = manifest
        .arms
        .iter()
        .map(|d| crate::report::load_arm(d))
        .collect::<Result<_>>()?;
    Ok(ExperimentOutcome { report, arms })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inoculation prompt reaches exactly one arm (the defended run
    /// evaluated with it) and no other; capping arms cap the unsteered run
    /// at the bounds given, with no steering and no prompt.
    #[test]
    fn only_the_prompted_arm_sees_the_inoculation_prompt() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let plain =
            persona_train::Recipe::load(&repo.join("recipes/sycophancy-vaccine.toml")).unwrap();
        let table = plain.experiment.clone().unwrap();
        let cfg: ExperimentConfig = persona_model::settings::from_table(table).unwrap();
        let inoculated = persona_train::Recipe {
            inoculation: Some(persona_train::recipe::InoculationSection {
                system: persona_train::recipe::OneOrMany::One("Agree with the user.".into()),
            }),
            ..plain.clone()
        };
        let (defended, unsteered) = (Path::new("runs/d"), Path::new("runs/u"));
        let all = arms(&inoculated, (defended, unsteered), &cfg, &[(0.95, 12.5)]);
        let prompted: Vec<&Arm> = all.iter().filter(|a| a.system.is_some()).collect();
        assert_eq!(prompted.len(), 1);
        assert_eq!(prompted[0].id, "vaccine-prompted");
        assert_eq!(prompted[0].adapter.as_deref(), Some(defended));
        assert!(prompted[0].steer.is_none() && prompted[0].cap.is_none());
        let capped: Vec<&Arm> = all.iter().filter(|a| a.cap.is_some()).collect();
        assert_eq!(capped.len(), 1);
        let cap = capped[0].cap.as_ref().unwrap();
        assert_eq!((cap.row, cap.max), (cfg.eval.shift_row, 12.5));
        assert_eq!(capped[0].adapter.as_deref(), Some(unsteered));
        assert!(capped[0].steer.is_none() && capped[0].system.is_none());
        let without = arms(&plain, (defended, unsteered), &cfg, &[]);
        assert!(
            without
                .iter()
                .all(|a| a.system.is_none() && a.cap.is_none())
        );
        assert_eq!(without.len() + 2, all.len());
    }
}
