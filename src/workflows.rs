//! The long jobs behind one call each: training a recipe, screening a
//! dataset, evaluating a model or run.

use std::path::{Path, PathBuf};

use persona_eval::capability::CapabilityResult;
use persona_eval::experiment::evaluate_arm;
use persona_eval::trait_eval::{EvalFile, TraitResult};
use persona_eval::{Arm, PostHoc};
use persona_judge::{Judge, JudgeConfig, JudgmentCache};
use persona_model::{PersonaHome, WeightDtype};
use persona_monitor::screen::{SampleScore, ScreenOptions, ScreenSummary};
use persona_train::{Recipe, TrainEvent, TrainOutcome};

use crate::error::Result;
use crate::model::Model;
use crate::vector::PersonaVector;

/// Trains a recipe's run from the start (LoRA fine-tuning, with the
/// vaccine when its `[steering]` says so), silently.
///
/// ```no_run
/// let out = persona::train(&persona::Recipe::load("recipes/smoke.toml".as_ref())?)?;
/// println!("{} steps, last loss {:.3}", out.steps, out.last_loss);
/// # Ok::<(), persona::Error>(())
/// ```
pub fn train(recipe: &Recipe) -> Result<TrainOutcome> {
    train_with(recipe, false, |_| {})
}

/// [`train`], or with `resume` its continuation from the last checkpoint,
/// reporting progress to `on_event`.
///
/// ```no_run
/// let recipe = persona::Recipe::load("recipes/smoke.toml".as_ref())?;
/// persona::train_with(&recipe, false, |e| {
///     if let persona::TrainEvent::Step(m) = e {
///         println!("step {} loss {:.3}", m.step, m.loss);
///     }
/// })?;
/// # Ok::<(), persona::Error>(())
/// ```
pub fn train_with(
    recipe: &Recipe,
    resume: bool,
    mut on_event: impl FnMut(TrainEvent<'_>),
) -> Result<TrainOutcome> {
    screen_recipe_data(recipe, &mut on_event, |_, _| {})?;
    Ok(persona_train::train_recipe(
        recipe.clone(),
        resume,
        &mut on_event,
    )?)
}

/// The screen behind a recipe's `[data] filter`, run when its kept data is
/// missing or stale: `data.train` screened on the filter's vector (the
/// `[trait]` vector extracted first when missing), then the top
/// `drop_top` percent dropped into `filtered.jsonl`, which the run trains
/// on. Nothing to do without a filter. `progress(done, total)` follows the
/// screened samples; a killed screen resumes.
pub fn screen_recipe_data(
    recipe: &Recipe,
    on_event: &mut dyn FnMut(TrainEvent<'_>),
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let Some(f) = &recipe.data.filter else {
        return Ok(());
    };
    let home = PersonaHome::from_env();
    if recipe.training_file_in(&home).is_ok() {
        return Ok(());
    }
    persona_train::trainer::ensure_trait_vector(recipe, on_event)?;
    recipe.check_static()?;
    let device = persona_model::parse_device(&recipe.run.device)?;
    let loaded = persona_model::load_as(&recipe.model.name, &device, recipe.model.dtype)?;
    let vector = persona_vectors::VectorFile::load(&f.vector)?;
    let opts = ScreenOptions {
        generate_base: f.score == persona_train::recipe::ScreenScore::DeltaP,
        max_new_tokens: f.max_new_tokens,
        batch_size: f.batch_size,
        base_cache: home.base_responses(&loaded.identity.sha256),
    };
    let (summary, scores) = persona_monitor::screen::screen(
        &loaded.model,
        &loaded.codec,
        &loaded.identity,
        &recipe.data.train,
        &vector,
        f.variant,
        f.row,
        &opts,
        &f.screen_dir(&recipe.data.train, &home),
        &mut progress,
    )?;
    let kept = f.kept_dir(&recipe.data.train, &home);
    persona_model::files::refuse_symlink(&kept)?;
    std::fs::create_dir_all(&kept).map_err(|e| persona_model::ModelError::write(&kept, e))?;
    let rule = persona_monitor::screen::FilterRule::DropTop {
        percent: f.drop_top,
    };
    persona_monitor::screen::filter(&kept, &summary, &scores, rule)?;
    Ok(())
}

/// Screening a chat dataset: per sample, how far its response pushes the
/// model along a persona vector (ΔP, the projection of the dataset's
/// response minus that of the model's own greedy answer), ranked.
///
/// ```no_run
/// let lm = persona::Model::load("smollm2-135m-instruct")?;
/// let syc = lm.vector("checkpoints/vectors/smollm2-135m-instruct/sycophantic.safetensors")?;
/// let (summary, scores) = persona::Screen::new(&syc, 15)
///     .cheap()
///     .run(&lm, "datasets/finetune/sycophancy/mild.jsonl", "/tmp/screen")?;
/// println!("mean {:?} over {} samples", summary.cheap, scores.len());
/// # Ok::<(), persona::Error>(())
/// ```
pub struct Screen<'v> {
    vector: &'v PersonaVector,
    row: usize,
    generate_base: bool,
    max_new_tokens: usize,
    batch_size: usize,
}

impl<'v> Screen<'v> {
    /// Screening on `vector` at `row`, with the model's own greedy answers
    /// (at most 128 tokens), 8 samples per forward.
    pub fn new(vector: &'v PersonaVector, row: usize) -> Self {
        Self {
            vector,
            row,
            generate_base: true,
            max_new_tokens: 128,
            batch_size: 8,
        }
    }

    /// The cheap variant only: response projection minus last-prompt-token
    /// projection, no generation.
    pub fn cheap(self) -> Self {
        Self {
            generate_base: false,
            ..self
        }
    }

    /// Longest greedy answer of the model, in tokens.
    pub fn max_new_tokens(self, n: usize) -> Self {
        Self {
            max_new_tokens: n,
            ..self
        }
    }

    /// Samples per forward (speed and memory only).
    pub fn batch_size(self, n: usize) -> Self {
        Self {
            batch_size: n,
            ..self
        }
    }

    /// Screens `dataset` (chat JSONL) with `model`, writing scores, summary
    /// and histogram into `out` (a killed screen resumes from there).
    pub fn run(
        &self,
        model: &Model,
        dataset: impl AsRef<Path>,
        out: impl AsRef<Path>,
    ) -> Result<(ScreenSummary, Vec<SampleScore>)> {
        let m = model.runtime();
        let opts = ScreenOptions {
            generate_base: self.generate_base,
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
            base_cache: PersonaHome::from_env().base_responses(&m.identity.sha256),
        };
        Ok(persona_monitor::screen::screen(
            &m.model,
            &m.codec,
            &m.identity,
            dataset.as_ref(),
            self.vector.file(),
            self.vector.chosen_variant(),
            self.row,
            &opts,
            out.as_ref(),
            |_, _| {},
        )?)
    }
}

/// Evaluating a model, a run's adapters or a post-hoc steered model on a
/// trait: sampled answers judged for the trait and coherence, the
/// finetuning shift, and the capability cost (held-out NLL,
/// multiple-choice accuracy), with the settings of a `persona eval`
/// settings file.
///
/// ```no_run
/// let r = persona::Evaluation::load("settings/eval.toml")?
///     .judge("judges/classifier.toml")
///     .run("checkpoints/runs/sycophancy-vaccine", "/tmp/eval-vaccine")?;
/// println!("trait {:?}", r.0.trait_score);
/// # Ok::<(), persona::Error>(())
/// ```
pub struct Evaluation {
    file: EvalFile,
    judge: PathBuf,
    base_model: String,
    dtype: WeightDtype,
    device: String,
    steer: Option<(PathBuf, f32)>,
}

impl Evaluation {
    /// The settings of `path` (`settings/eval.toml`), the offline judge,
    /// the embedded base model, on the CPU.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            file: EvalFile::load(path.as_ref())?,
            judge: PathBuf::from("judges/classifier.toml"),
            base_model: persona_model::DEFAULT_MODEL.into(),
            dtype: WeightDtype::F32,
            device: "cpu".into(),
            steer: None,
        })
    }

    /// Another judge config.
    pub fn judge(self, path: impl AsRef<Path>) -> Self {
        Self {
            judge: path.as_ref().to_path_buf(),
            ..self
        }
    }

    /// The base model a run folder's adapters are merged into.
    pub fn base_model(self, spec: &str) -> Self {
        Self {
            base_model: spec.into(),
            ..self
        }
    }

    /// `cpu`, `cuda` or `wgpu`.
    pub fn device(self, device: &str) -> Self {
        Self {
            device: device.into(),
            ..self
        }
    }

    /// The type the base model's frozen weights are kept in (f32 unless set).
    pub fn dtype(self, dtype: WeightDtype) -> Self {
        Self { dtype, ..self }
    }

    /// Post-hoc steering with a vector file at the settings' shift row.
    pub fn steer(self, vector: impl AsRef<Path>, coef: f32) -> Self {
        Self {
            steer: Some((vector.as_ref().to_path_buf(), coef)),
            ..self
        }
    }

    /// Evaluates `target` (a model spec or a run folder) into `out`
    /// (answers, judgments, results; a rerun with the same inputs reuses
    /// them).
    pub fn run(
        &self,
        target: &str,
        out: impl AsRef<Path>,
    ) -> Result<(TraitResult, CapabilityResult)> {
        let out = out.as_ref();
        let run = PathBuf::from(target);
        let adapter = persona_eval::arm::adapter_dir(&run)
            .join(persona_train::run_dir::ADAPTER_WEIGHTS)
            .exists();
        let arm = Arm {
            id: out
                .file_name()
                .map_or("arm".into(), |n| n.to_string_lossy().into_owned()),
            label: target.into(),
            model: if adapter {
                self.base_model.clone()
            } else {
                target.into()
            },
            dtype: self.dtype,
            adapter: adapter.then_some(run),
            step: None,
            steer: self.steer.as_ref().map(|(vector, coef)| PostHoc {
                vector: vector.clone(),
                row: self.file.eval.shift_row,
                coef: *coef,
            }),
            cap: None,
            system: None,
        };
        let judge = Judge::from_config(&JudgeConfig::load(&self.judge)?)?;
        let mut cache = JudgmentCache::open(&PersonaHome::from_env().judgments())?;
        let device = persona_model::parse_device(&self.device)?;
        Ok(evaluate_arm(
            &arm,
            &self.file.eval,
            &self.file.capability,
            &judge,
            &mut cache,
            out,
            &device,
            |_, _| {},
        )?)
    }
}
