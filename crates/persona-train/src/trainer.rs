//! The training loop: LoRA fine-tuning with preventative steering in the
//! training forward only, the projection shift logged every few steps, and
//! resumable checkpoints.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use persona_model::{
    Batch, CaptureRequest, ForwardArgs, Logits, Lora, LoraDropout, PadSide, Positions, Role,
    Sequence, Steering, likelihood::scored_logprobs,
};
use persona_vectors::VectorFile;
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::checkpoint::{self, TrainerState};
use crate::data::{Dataset, epoch_batches, load_dataset};
use crate::error::{Result, TrainError};
use crate::optim::{AdamW, Moments, global_norm, lr_at};
use crate::penalty::Penalty;
use crate::recipe::Recipe;
use crate::run_dir::{RunDir, RunState};
use crate::shift::ShiftMonitor;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// The `[penalty]` term the step minimised besides `loss` (the NLL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub penalty: Option<f64>,
    pub tokens_per_s: f64,
    /// `trait -> row -> shift`, on monitor steps only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shift: Option<std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>>,
}

/// What a finished run reports.
#[derive(Debug)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub last_loss: f64,
}

/// The steering of the training forward, from the recipe: per vector (the
/// first, then `also`), per row, in that order.
pub fn training_steering(recipe: &Recipe, device: &Device) -> Result<Vec<Steering>> {
    let Some((_, variant, layers, incremental)) = recipe.steering.target() else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for (path, coef) in recipe.steering.vectors() {
        let file = VectorFile::load(path)?;
        for &row in layers {
            let v = file.row(variant, row)?;
            let v: Vec<f32> = if incremental {
                let prev = file.row(variant, row - 1)?;
                v.iter().zip(prev).map(|(a, b)| a - b).collect()
            } else {
                v.to_vec()
            };
            out.push(match coef {
                Some(c) => Steering::add(row, &v, c, Positions::All, device)?,
                None => Steering::ablate(row, &v, Positions::All, device)?,
            });
        }
    }
    Ok(out)
}

/// Sum over response targets of the negative log-likelihood, divided by `denom`.
///
/// # Shapes
/// `logits`: `[1, n, vocab]` at the `n` `scored` positions
fn masked_nll(logits: Tensor<3>, scored: &[(usize, u32)], denom: usize) -> Tensor<1> {
    scored_logprobs(logits, scored)
        .sum()
        .neg()
        .div_scalar(denom.max(1) as f64)
}

/// Loss (mean NLL over the response tokens of all `batches`) and the summed
/// gradient of every adapter tensor, in [`Lora::named_tensors`] order. The
/// steering and the LoRA dropout apply here, in the training forward, and
/// nowhere else.
///
/// On the CPU, each micro-batch is cut into row groups, one per rayon thread
/// ([`Batch::thread_groups`]), and the groups run forward and backward
/// concurrently, each on its own autodiff graph: burn's CPU backend runs
/// element-wise ops and their gradients on one thread, so one graph leaves
/// a core idle most of the step. Every group's loss is divided by the token
/// count of the whole step, so the summed gradients are the step's gradient;
/// they are added in group order, so a run is reproducible (and `--resume`
/// bit-identical) on a machine with the same thread count. Piece `j` (groups
/// numbered across micro-batches) draws its dropout masks from
/// `dropout.seed + j`.
pub fn loss_and_grads(
    model: &persona_model::Model,
    lora: &Lora,
    batches: &[Batch],
    steering: &[Steering],
    dropout: Option<LoraDropout>,
    penalty: Option<&Penalty>,
) -> Result<(StepLoss, Vec<Tensor<2>>)> {
    let pieces: Vec<Batch> = batches
        .iter()
        .flat_map(|b| {
            b.thread_groups(model.device(), true)
                .into_iter()
                .map(|rows| b.rows(rows))
        })
        .collect();
    let scored: Vec<Vec<(usize, u32)>> = pieces.iter().map(Batch::scored_positions).collect();
    let denom: usize = scored.iter().map(Vec::len).sum();
    let capture = penalty.map_or_else(CaptureRequest::none, Penalty::capture);
    let results: Vec<(StepLoss, Vec<Tensor<2>>)> = pieces
        .par_iter()
        .zip(&scored)
        .enumerate()
        .map(|(j, (batch, scored))| {
            // Each group gets its own adapter leaves: burn joins every node
            // reachable from a shared leaf into one graph and holds that
            // graph's lock for a whole backward pass, so groups sharing the
            // leaves would run their backward passes one after the other.
            let lora = lora.trainable();
            let out = model.forward(
                batch,
                ForwardArgs {
                    cache: None,
                    steering,
                    capture: &capture,
                    logits: Logits::Scored,
                    lora: Some(&lora),
                    lora_dropout: dropout.map(|d| LoraDropout {
                        seed: d.seed.wrapping_add(j as u64),
                        ..d
                    }),
                },
            )?;
            let nll = masked_nll(out.logits.expect("asked for logits"), scored, denom);
            let (loss, penalty) = match penalty {
                Some(p) => {
                    let pen = p.of_piece(model, batch, &out.full, denom)?;
                    let value = pen.clone().into_scalar::<f32>() as f64;
                    (nll.clone() + pen, value)
                }
                None => (nll.clone(), 0.0),
            };
            let grads = loss.backward();
            let g: Vec<Tensor<2>> = lora
                .named_tensors()
                .into_iter()
                .map(|(_, p)| {
                    p.grad(&grads)
                        .unwrap_or_else(|| p.clone().detach().zeros_like())
                })
                .collect();
            let nll = nll.into_scalar::<f32>() as f64;
            Ok((StepLoss { nll, penalty }, g))
        })
        .collect::<Result<_>>()?;
    let mut loss_sum = StepLoss::default();
    let mut grads_sum: Option<Vec<Tensor<2>>> = None;
    for (loss, g) in results {
        loss_sum.nll += loss.nll;
        loss_sum.penalty += loss.penalty;
        grads_sum = Some(match grads_sum {
            None => g,
            Some(acc) => acc.into_iter().zip(g).map(|(a, b)| a + b).collect(),
        });
    }
    Ok((loss_sum, grads_sum.unwrap_or_default()))
}

/// The two parts of a step's loss.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepLoss {
    /// Mean NLL over the step's response tokens.
    pub nll: f64,
    /// The `[penalty]` term (0 without one).
    pub penalty: f64,
}

/// The seed of step `step`'s LoRA dropout masks (row groups add their
/// index): a fixed mix of the run seed and the step.
fn dropout_seed(run_seed: u64, step: usize) -> u64 {
    let mut h = Sha256::new();
    h.update(b"lora-dropout");
    h.update(run_seed.to_le_bytes());
    h.update((step as u64).to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("a sha256 digest has 32 bytes"))
}

/// Scales gradients so their global norm is at most `max_norm` (0 = no
/// clipping); returns them with the norm before clipping.
pub fn clip(grads: Vec<Tensor<2>>, max_norm: f64) -> (Vec<Tensor<2>>, f64) {
    let norm = global_norm(&grads);
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        (
            grads.into_iter().map(|g| g.mul_scalar(scale)).collect(),
            norm,
        )
    } else {
        (grads, norm)
    }
}

/// The micro-batches of the whole run in order, epoch after epoch, made
/// one epoch at a time when first needed (a run of many epochs cut short
/// by `max_steps` never builds the epochs it does not reach).
struct Schedule {
    lengths: Vec<usize>,
    batch_size: usize,
    seed: u64,
    epochs: usize,
    /// The epoch whose batches are in `batches`.
    epoch: Option<usize>,
    batches: Vec<Vec<usize>>,
}

impl Schedule {
    fn new(data: &Dataset, recipe: &Recipe) -> Self {
        Self {
            lengths: data
                .train
                .iter()
                .map(|s| s.prompt.len() + s.response.len())
                .collect(),
            batch_size: recipe.optim.batch_size,
            seed: recipe.run.seed,
            epochs: recipe.optim.epochs,
            epoch: None,
            batches: Vec::new(),
        }
    }

    fn per_epoch(&self) -> usize {
        self.lengths.len().div_ceil(self.batch_size)
    }

    /// Micro-batches in the whole run.
    fn len(&self) -> usize {
        self.per_epoch().saturating_mul(self.epochs)
    }

    /// Micro-batch `k` of the run, as indices into the training set.
    fn micro_batch(&mut self, k: usize) -> &[usize] {
        let (epoch, i) = (k / self.per_epoch(), k % self.per_epoch());
        if self.epoch != Some(epoch) {
            self.batches = epoch_batches(&self.lengths, self.batch_size, self.seed, epoch);
            self.epoch = Some(epoch);
        }
        &self.batches[i]
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    persona_model::weights::sha256_files(&[path.to_path_buf()]).map_err(Into::into)
}

fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// What training reports as it goes: the binary turns these into progress
/// bars and messages; the library prints nothing.
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// The recipe's `[trait]` vector is being extracted first: `done` of
    /// `total` authored responses read.
    Extracting { done: usize, total: usize },
    /// The run folder holds a start that stopped before its first
    /// checkpoint; the run starts again from step 0.
    Restarting { run: &'a Path },
    /// Training of the run in `run` goes from `step` (0 unless resumed)
    /// to `total_steps`.
    Started {
        run: &'a Path,
        step: usize,
        total_steps: usize,
    },
    /// One optimizer step is done and logged.
    Step(&'a StepMetrics),
}

/// Runs (or, with `resume`, continues) the recipe's training run.
///
/// Everything is checked and loaded (recipe, model, data, vectors) before
/// the run folder is touched, so a bad input never leaves a folder behind.
/// A folder left by a start that stopped before its first checkpoint is
/// started again, with or without `resume` ([`TrainEvent::Restarting`]).
pub fn train(
    recipe_path: &Path,
    resume: bool,
    on_event: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainOutcome> {
    train_recipe(Recipe::load(recipe_path)?, resume, on_event)
}

/// [`train`] of a recipe already read.
pub fn train_recipe(
    recipe: Recipe,
    resume: bool,
    on_event: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainOutcome> {
    let mut training = Training::setup(recipe, resume, on_event)?;
    on_event(TrainEvent::Started {
        run: training.run.root(),
        step: training.state.step,
        total_steps: training.total_steps,
    });
    while training.state.step < training.total_steps {
        let metrics = training.step()?;
        training.log(&metrics)?;
        on_event(TrainEvent::Step(&metrics));
        training.save()?;
    }
    training.finish()
}

/// A run being trained: the phases of [`train`] (setup, step, log, save,
/// finish) and what they share.
struct Training {
    recipe: Recipe,
    run: RunDir,
    loaded: persona_model::LoadedModel,
    data: Dataset,
    /// The training forward's steering (the vaccine); nowhere else.
    steering: Vec<Steering>,
    /// The `[penalty]` term of the training loss.
    penalty: Option<Penalty>,
    monitors: Vec<ShiftMonitor>,
    schedule: Schedule,
    total_steps: usize,
    lora: Lora,
    moments: Vec<Moments>,
    state: TrainerState,
    opt: AdamW,
    /// PEFT's `base_model_name_or_path` for every adapter folder written.
    base_model: String,
    metrics: std::fs::File,
    last_loss: f64,
}

/// Optimizer steps in the run: one per `grad_accum` micro-batches, capped
/// by `optim.max_steps` when set.
fn optimizer_steps(schedule: &Schedule, recipe: &Recipe) -> usize {
    let steps = schedule.len().div_ceil(recipe.optim.grad_accum);
    match recipe.optim.max_steps {
        0 => steps,
        max => steps.min(max),
    }
}

/// The adapter, optimizer moments and state of the run's last checkpoint,
/// refused when it was made for a different number of steps.
fn resume_state(
    run: &RunDir,
    mut lora: Lora,
    total_steps: usize,
    device: &Device,
) -> Result<(Lora, Vec<Moments>, TrainerState)> {
    let (moments, state) = checkpoint::load(run, &mut lora, device)?;
    if state.total_steps != total_steps {
        return Err(TrainError::Checkpoint {
            path: run.root().to_path_buf(),
            reason: format!(
                "checkpoint was made for {} steps, the recipe gives {total_steps}",
                state.total_steps
            ),
        });
    }
    Ok((lora, moments, state))
}

impl Training {
    /// Checks and loads everything, then opens the run folder: a fresh
    /// start writes provenance and a step-0 checkpoint, a resume restores
    /// the last checkpoint.
    fn setup(
        recipe: Recipe,
        resume: bool,
        on_event: &mut dyn FnMut(TrainEvent<'_>),
    ) -> Result<Self> {
        ensure_trait_vector(&recipe, &mut *on_event)?;
        recipe.check_static()?;
        let (cfg, identity) = persona_model::inspect(&recipe.model.name)?;
        recipe.check_model(&cfg, &identity)?;
        let run = RunDir::named(&recipe.run.name);
        let fresh = fresh_start(&run, resume)?;

        let device = persona_model::parse_device(&recipe.run.device)?.autodiff();
        let loaded = persona_model::load_as(&recipe.model.name, &device, recipe.model.dtype)?;
        let training_file = recipe.training_file()?;
        let data = load_dataset(
            &training_file,
            &loaded.codec,
            recipe.run.seed,
            (recipe.data.max_examples, recipe.data.max_seq_len),
            recipe.data.heldout_fraction,
            recipe
                .inoculation
                .as_ref()
                .map_or(&[], |i| i.system.as_slice()),
        )?;
        let steering = training_steering(&recipe, &device)?;
        let penalty = Penalty::of_recipe(&recipe, &device)?;
        let monitors = shift_monitors(&recipe, &loaded)?;
        let schedule = Schedule::new(&data, &recipe);
        let total_steps = optimizer_steps(&schedule, &recipe);
        let l = &recipe.lora;
        let lora = Lora::init(
            &cfg,
            &l.targets,
            l.rank,
            l.alpha,
            l.scaling,
            recipe.run.seed,
            &device,
        )?;
        let (lora, moments, state) = if fresh {
            create_run_folder(&run, on_event)?;
            zero_state(lora, total_steps)
        } else {
            resume_state(&run, lora, total_steps, &device)?
        };
        let base_model = identity.peft_base_model();
        if fresh {
            write_provenance(&run, &recipe, &identity, (&data, &training_file))?;
            truncate_metrics(&run.metrics(), 0)?;
            let meta = checkpoint::AdapterMeta {
                base_model: &base_model,
                lora_dropout: recipe.lora.dropout,
            };
            checkpoint::save(&run, &lora, &moments, &state, meta)?;
        } else {
            truncate_metrics(&run.metrics(), state.step)?;
        }
        Ok(Self {
            opt: AdamW::of(&recipe.optim),
            metrics: persona_model::files::open_append(&run.metrics())?,
            base_model,
            lora: lora.trainable(),
            recipe,
            run,
            loaded,
            data,
            steering,
            penalty,
            monitors,
            schedule,
            total_steps,
            moments,
            state,
            last_loss: f64::NAN,
        })
    }

    fn meta(&self) -> checkpoint::AdapterMeta<'_> {
        checkpoint::AdapterMeta {
            base_model: &self.base_model,
            lora_dropout: self.recipe.lora.dropout,
        }
    }

    /// One optimizer step: forward and backward of `grad_accum`
    /// micro-batches with the training steering, clipping, AdamW; then the
    /// shift of the unsteered model on monitor steps.
    fn step(&mut self) -> Result<StepMetrics> {
        let started = Instant::now();
        let step = self.state.step;
        let batches = self.micro_batches(step)?;
        let recipe = &self.recipe;
        let tokens: usize = batches
            .iter()
            .map(|b| b.roles.iter().filter(|r| **r != Role::Pad).count())
            .sum();
        // Dropout masks depend on (seed, step) only: a resumed step redraws them.
        let dropout = (recipe.lora.dropout > 0.0).then(|| LoraDropout {
            p: recipe.lora.dropout,
            seed: dropout_seed(recipe.run.seed, step),
        });
        let model = &self.loaded.model;
        let (loss, grads) = loss_and_grads(
            model,
            &self.lora,
            &batches,
            &self.steering,
            dropout,
            self.penalty.as_ref(),
        )?;
        let (grads, grad_norm) = clip(grads, recipe.optim.max_grad_norm);
        // Stop before a non-finite value reaches the adapters or a checkpoint.
        for (what, value) in [
            ("loss", loss.nll),
            ("penalty", loss.penalty),
            ("gradient norm", grad_norm),
        ] {
            self.check_finite(what, value)?;
        }
        let lr = lr_at(
            recipe.optim.lr,
            step,
            recipe.optim.warmup_steps,
            self.total_steps,
        );
        for ((p, g), m) in self
            .lora
            .tensors_mut()
            .into_iter()
            .zip(grads)
            .zip(self.moments.iter_mut())
        {
            *p = self
                .opt
                .update(p.clone().detach(), g, m, lr, step + 1)
                .detach()
                .require_grad();
        }
        let weights: Vec<Tensor<2>> = self
            .lora
            .named_tensors()
            .into_iter()
            .map(|(_, t)| t.clone().detach())
            .collect();
        self.check_finite(
            "the adapter weight norm after the update",
            global_norm(&weights),
        )?;
        self.state.step += 1;
        self.state.tokens_seen += tokens as u64;
        self.last_loss = loss.nll;
        let s = self.state.step;
        let monitored =
            s.is_multiple_of(recipe.monitor.every) || s == self.total_steps || step == 0;
        let shift = if monitored {
            Some(self.shifts()?)
        } else {
            None
        };
        Ok(StepMetrics {
            step: s,
            loss: loss.nll,
            lr,
            grad_norm,
            penalty: self.penalty.as_ref().map(|_| loss.penalty),
            tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64(),
            shift,
        })
    }

    /// The `grad_accum` micro-batches of optimizer step `step`, padded.
    fn micro_batches(&mut self, step: usize) -> Result<Vec<Batch>> {
        let accum = self.recipe.optim.grad_accum;
        let end = ((step + 1) * accum).min(self.schedule.len());
        let pad_id = self.loaded.codec.pad_id;
        (step * accum..end)
            .map(|k| {
                let rows: Vec<Sequence> = self
                    .schedule
                    .micro_batch(k)
                    .iter()
                    .map(|&i| self.data.train[i].clone())
                    .collect();
                Ok(Batch::new(&rows, PadSide::Right, pad_id)?)
            })
            .collect()
    }

    fn check_finite(&self, what: &'static str, value: f64) -> Result<()> {
        if value.is_finite() {
            return Ok(());
        }
        Err(TrainError::NonFinite {
            what,
            value,
            step: self.state.step + 1,
            dir: self.run.checkpoint(),
        })
    }

    /// `trait -> row -> shift` of the model as trained so far, unsteered.
    fn shifts(&self) -> Result<BTreeMap<String, BTreeMap<String, f64>>> {
        let mut all = BTreeMap::new();
        for mon in &self.monitors {
            let s = mon.shifts(&self.loaded.model, &self.lora)?;
            let rows = mon.rows.iter().zip(s).map(|(r, v)| (r.to_string(), v));
            all.insert(mon.name.clone(), rows.collect());
        }
        Ok(all)
    }

    /// Appends a step's line to `metrics.jsonl`.
    fn log(&mut self, line: &StepMetrics) -> Result<()> {
        let json = serde_json::to_string(line).map_err(|e| TrainError::Checkpoint {
            path: self.run.metrics(),
            reason: format!("cannot serialise a metrics line: {e}"),
        })?;
        writeln!(self.metrics, "{json}")
            .map_err(|e| persona_model::ModelError::write(self.run.metrics(), e).into())
    }

    /// The snapshot and the checkpoint due at this step. The snapshot goes
    /// first: a saved checkpoint implies its snapshot exists.
    fn save(&self) -> Result<()> {
        let (step, run) = (self.state.step, &self.recipe.run);
        if run.snapshot_every > 0 && step.is_multiple_of(run.snapshot_every) {
            checkpoint::write_adapter(
                &self.run.snapshot(step),
                &self.lora.detached(),
                self.meta(),
            )?;
        }
        if step.is_multiple_of(run.save_every) || step == self.total_steps {
            let detached = self.lora.detached();
            checkpoint::save(
                &self.run,
                &detached,
                &self.moments,
                &self.state,
                self.meta(),
            )?;
        }
        Ok(())
    }

    /// Writes the final adapters (`adapter/`).
    fn finish(self) -> Result<TrainOutcome> {
        checkpoint::write_adapter(&self.run.adapter(), &self.lora.detached(), self.meta())?;
        Ok(TrainOutcome {
            run_dir: self.run.root().to_path_buf(),
            steps: self.state.step,
            last_loss: self.last_loss,
        })
    }
}

/// Whether `run` starts from step 0 (a new folder, or one that holds no
/// checkpoint) or resumes; an error for the combinations that cannot go on.
fn fresh_start(run: &RunDir, resume: bool) -> Result<bool> {
    let path = run.root().to_path_buf();
    match (run.state(), resume) {
        (RunState::Absent, false) | (RunState::Unstarted, _) => Ok(true),
        (RunState::Resumable, true) => Ok(false),
        (RunState::Absent, true) => Err(TrainError::Checkpoint {
            path,
            reason: "no such run to resume; run without --resume to start it".into(),
        }),
        (RunState::Resumable | RunState::Finished, false) => Err(TrainError::RunExists { path }),
        (RunState::Finished, true) => Err(TrainError::Checkpoint {
            path,
            reason: "the run is finished (its adapter/ is written); nothing to resume".into(),
        }),
    }
}

/// Creates the run folder (never through a link), saying so when it held
/// a start that stopped before its first checkpoint.
fn create_run_folder(run: &RunDir, on_event: &mut dyn FnMut(TrainEvent<'_>)) -> Result<()> {
    if run.state() == RunState::Unstarted {
        on_event(TrainEvent::Restarting { run: run.root() });
    }
    persona_model::files::refuse_symlink(run.root())?;
    std::fs::create_dir_all(run.root())
        .map_err(|e| persona_model::ModelError::write(run.root(), e))?;
    Ok(())
}

/// Fresh adapters with zero AdamW moments, at step 0.
fn zero_state(lora: Lora, total_steps: usize) -> (Lora, Vec<Moments>, TrainerState) {
    let moments = lora
        .named_tensors()
        .into_iter()
        .map(|(_, t)| Moments {
            m: t.clone().zeros_like(),
            v: t.clone().zeros_like(),
        })
        .collect();
    let state = TrainerState {
        step: 0,
        total_steps,
        tokens_seen: 0,
    };
    (lora, moments, state)
}

/// One shift monitor per trait of the recipe's `[monitor]`, measured on
/// the base model.
fn shift_monitors(
    recipe: &Recipe,
    loaded: &persona_model::LoadedModel,
) -> Result<Vec<ShiftMonitor>> {
    recipe
        .monitor
        .traits
        .iter()
        .map(|t| {
            ShiftMonitor::new(
                &t.name,
                &VectorFile::load(&t.vector)?,
                &t.questions,
                &recipe.monitor.layers,
                &loaded.model,
                &loaded.codec,
            )
        })
        .collect()
}

/// The run folder of a recipe, trained first when it is not finished: a
/// run with a checkpoint is resumed, any other started again.
pub fn ensure_trained(recipe: &Recipe, on_event: &mut dyn FnMut(TrainEvent<'_>)) -> Result<RunDir> {
    let run = RunDir::named(&recipe.run.name);
    if !run.is_finished() {
        let resume = run.has_checkpoint();
        train_recipe(recipe.clone(), resume, on_event)?;
    }
    Ok(run)
}

/// Extracts each `[trait]` section's vector from its trait file's authored
/// responses when the vector file does not exist yet (so a recipe works on
/// a fresh machine).
pub fn ensure_trait_vector(
    recipe: &Recipe,
    on_event: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<()> {
    let missing: Vec<_> = recipe
        .traits()
        .iter()
        .filter(|t| !t.vector.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let device = persona_model::parse_device(&recipe.run.device)?;
    let loaded = persona_model::load_as(&recipe.model.name, &device, recipe.model.dtype)?;
    for t in missing {
        let def = persona_vectors::TraitDef::load(&t.definition)?;
        persona_model::files::check_writable_file(&t.vector)?;
        let total: usize = def
            .responses
            .iter()
            .map(|r| r.pos.len() + r.neg.len())
            .sum();
        let file = persona_vectors::extract::extract_authored(
            &loaded.model,
            &loaded.codec,
            &loaded.identity,
            &def,
            t.batch_size,
            |done| on_event(TrainEvent::Extracting { done, total }),
        )?;
        file.save(&t.vector)?;
    }
    Ok(())
}

/// Keeps the first `steps` lines of the metrics (a resumed run re-logs the
/// rest); rewritten atomically, never through a link.
fn truncate_metrics(path: &Path, steps: usize) -> Result<()> {
    persona_model::files::refuse_symlink(path)?;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(crate::error::io(path, e)),
    };
    let mut out: String = text.lines().take(steps).collect::<Vec<_>>().join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(persona_model::write_atomic(path, out.as_bytes())?)
}

fn write_provenance(
    run: &RunDir,
    recipe: &Recipe,
    identity: &persona_model::ModelIdentity,
    (data, trained_file): (&Dataset, &Path),
) -> Result<()> {
    let mut vectors = serde_json::Map::new();
    let penalised = recipe.penalty.iter().flat_map(|p| &p.vectors);
    for v in recipe
        .steering
        .vectors()
        .into_iter()
        .map(|v| v.0)
        .chain(penalised.map(PathBuf::as_path))
    {
        vectors.insert(v.display().to_string(), sha256_file(v)?.into());
    }
    for t in &recipe.monitor.traits {
        vectors.insert(
            t.vector.display().to_string(),
            sha256_file(&t.vector)?.into(),
        );
    }
    let prov = serde_json::json!({
        "git_revision": git_revision(),
        "model": identity,
        "dataset": {"path": recipe.data.train, "sha256": sha256_file(&recipe.data.train)?,
                    "trained_file": trained_file,
                    "train_examples": data.train.len(), "heldout_examples": data.heldout.len(),
                    "skipped_too_long": data.skipped_too_long},
        "vectors": vectors,
        "seed": recipe.run.seed,
    });
    let err = |e: &dyn std::fmt::Display| TrainError::Checkpoint {
        path: run.root().to_path_buf(),
        reason: format!("cannot serialise the provenance or recipe: {e}"),
    };
    let text = serde_json::to_string_pretty(&prov).map_err(|e| err(&e))?;
    persona_model::write_atomic(&run.provenance(), text.as_bytes())?;
    let resolved = toml::to_string_pretty(recipe).map_err(|e| err(&e))?;
    persona_model::write_atomic(&run.recipe(), resolved.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_model::testing::{on_threads, random_weights, test_device, tiny_config};
    use persona_model::{Model, Scaling, Target, host_vec};

    /// Two micro-batches of four rows of different lengths.
    fn tiny_batches() -> Vec<Batch> {
        (0..2u32)
            .map(|m| {
                let rows: Vec<Sequence> = (0..4u32)
                    .map(|r| Sequence {
                        prompt: (0..10 + r).map(|i| (i * 7 + r + m * 13) % 97).collect(),
                        response: (0..4 + 2 * r).map(|i| (i * 5 + r + 1) % 97).collect(),
                    })
                    .collect();
                Batch::new(&rows, PadSide::Right, 0).unwrap()
            })
            .collect()
    }

    /// The tiny model, and adapters with non-zero B so they change the model.
    fn tiny_model_and_adapters(device: &Device) -> (Model, Lora) {
        let cfg = tiny_config();
        let model = Model::from_weights(cfg.clone(), &random_weights(&cfg, 1), device).unwrap();
        let mut lora = Lora::init(&cfg, &Target::ALL, 4, 8.0, Scaling::Rslora, 3, device).unwrap();
        for t in lora.tensors_mut() {
            *t = t.clone().add_scalar(0.02).require_grad();
        }
        (model, lora)
    }

    fn host_grads(grads: Vec<Tensor<2>>) -> Vec<Vec<f32>> {
        grads.into_iter().map(|g| host_vec(g).unwrap()).collect()
    }

    fn direction(seed: f32) -> Vec<f32> {
        (0..32).map(|i| (i as f32 * seed).sin() + 0.1).collect()
    }

    /// lambda = 0 trains exactly as without a penalty; adapters that do
    /// not move the projections (B = 0 at init) cost nothing; and the
    /// penalty is one-sided: the penalties along v and along -v add up to
    /// the two-sided mean square of the projection's change.
    #[test]
    fn projection_penalty_is_zero_at_lambda_zero_and_one_sided() {
        let device = test_device().autodiff();
        let (model, lora) = tiny_model_and_adapters(&device);
        let batches = tiny_batches();
        let run = |lora: &Lora, penalty: Option<&Penalty>| {
            on_threads(1, || {
                loss_and_grads(&model, lora, &batches, &[], None, penalty)
            })
            .unwrap()
        };
        let v = direction(0.7);
        let minus: Vec<f32> = v.iter().map(|x| -x).collect();
        let pen = |lambda: f64, v: &[f32]| {
            Penalty::new(
                lambda,
                vec![(2, vec![persona_vectors::unit(v).unwrap()])],
                &device,
            )
        };
        let (plain, plain_grads) = run(&lora, None);
        let (zero, zero_grads) = run(&lora, Some(&pen(0.0, &v)));
        assert_eq!((zero.nll, zero.penalty), (plain.nll, 0.0));
        assert_eq!(host_grads(zero_grads), host_grads(plain_grads));

        let fresh = Lora::init(
            &tiny_config(),
            &Target::ALL,
            4,
            8.0,
            Scaling::Rslora,
            3,
            &device,
        )
        .unwrap()
        .trainable();
        assert_eq!(run(&fresh, Some(&pen(5.0, &v))).0.penalty, 0.0);

        let (up, up_grads) = run(&lora, Some(&pen(5.0, &v)));
        let (down, _) = run(&lora, Some(&pen(5.0, &minus)));
        assert!(up.penalty > 0.0 && down.penalty > 0.0, "{up:?} {down:?}");
        assert_ne!(host_grads(up_grads), host_grads(run(&lora, None).1));
        // The two-sided mean square, from captures with and without adapters.
        let capture = CaptureRequest::new([2], &[persona_model::Reduction::Full]);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let (mut sum, mut tokens) = (0f64, 0usize);
        for b in &batches {
            let proj = |lora: Option<&Lora>| {
                let out = model
                    .forward(b, ForwardArgs::capture(&capture, lora))
                    .unwrap();
                let full = host_vec(out.full[&2].clone()).unwrap();
                full.chunks(32)
                    .map(|h| h.iter().zip(&v).map(|(h, v)| h * v / norm).sum::<f32>())
                    .collect::<Vec<f32>>()
            };
            let (now, base) = (proj(Some(&lora)), proj(None));
            for (i, role) in b.roles.iter().enumerate() {
                if *role == Role::Response {
                    sum += ((now[i] - base[i]) as f64).powi(2);
                    tokens += 1;
                }
            }
        }
        let two_sided = 5.0 * sum / tokens as f64;
        let got = up.penalty + down.penalty;
        assert!(
            (got - two_sided).abs() < 1e-4 * two_sided,
            "{got} vs {two_sided}"
        );
    }

    /// A second trait steered with coefficient 0 changes nothing: the
    /// multi-trait step is the single-trait step bit for bit.
    #[test]
    fn a_second_trait_at_coefficient_zero_changes_nothing() {
        use persona_vectors::{Variant, VectorMeta};
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny_config();
        let write = |name: &str, seed: f32| {
            let mut f = VectorFile::new(VectorMeta {
                format_version: persona_vectors::file::FORMAT_VERSION,
                row_convention: persona_vectors::file::ROW_CONVENTION.into(),
                model_name: "tiny".into(),
                model_sha256: "tiny".into(),
                d_model: cfg.d_model,
                n_layers: cfg.n_layers,
                extra: serde_json::json!({}),
            });
            let rows: Vec<f32> = (0..cfg.n_layers + 1)
                .flat_map(|_| direction(seed))
                .collect();
            f.variants.insert(Variant::ResponseAvg, rows);
            let p = dir.path().join(name);
            f.save(&p).unwrap();
            p
        };
        let (a, b) = (write("a.safetensors", 0.7), write("b.safetensors", 0.3));
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/smoke.toml");
        let mut recipe = Recipe::load(&repo).unwrap();
        let steer = |also: Vec<crate::recipe::AlsoVector>| crate::recipe::SteeringSection::Steer {
            vector: a.clone(),
            variant: Variant::ResponseAvg,
            layers: vec![1, 2],
            coef: 1.5,
            incremental: false,
            also,
        };
        let device = test_device().autodiff();
        let (model, lora) = tiny_model_and_adapters(&device);
        let batches = tiny_batches();
        let mut step = |section| {
            recipe.steering = section;
            let steering = training_steering(&recipe, &device).unwrap();
            let (loss, grads) = on_threads(1, || {
                loss_and_grads(&model, &lora, &batches, &steering, None, None)
            })
            .unwrap();
            (steering.len(), loss.nll, host_grads(grads))
        };
        let single = step(steer(vec![]));
        let zero = step(steer(vec![crate::recipe::AlsoVector {
            vector: b.clone(),
            coef: Some(0.0),
        }]));
        let pushed = step(steer(vec![crate::recipe::AlsoVector {
            vector: b,
            coef: Some(1.0),
        }]));
        assert_eq!(
            (single.0, zero.0),
            (2, 4),
            "one steering per vector and row"
        );
        assert_eq!((single.1, &single.2), (zero.1, &zero.2));
        assert_ne!(
            single.1, pushed.1,
            "the second vector does steer when its coef is not 0"
        );
    }

    #[test]
    fn row_groups_on_two_threads_give_the_whole_step_gradient() {
        let device = test_device().autodiff();
        // Non-zero B, so the A matrices get gradients too.
        let (model, lora) = tiny_model_and_adapters(&device);
        let batches = tiny_batches();
        let steering = [Steering::add(2, &[0.3; 32], 1.5, Positions::All, &device).unwrap()];
        let dropout = Some(LoraDropout { p: 0.0, seed: 5 });
        let (loss1, grads1) = on_threads(1, || {
            loss_and_grads(&model, &lora, &batches, &steering, dropout, None)
        })
        .unwrap();
        let (loss2, grads2) = on_threads(2, || {
            assert_eq!(batches[0].thread_groups(&device, true), vec![0..2, 2..4]);
            loss_and_grads(&model, &lora, &batches, &steering, dropout, None)
        })
        .unwrap();
        let (loss1, loss2) = (loss1.nll, loss2.nll);
        assert!(
            (loss1 - loss2).abs() < 1e-5 * loss1.abs(),
            "{loss1} vs {loss2}"
        );
        assert_eq!(grads1.len(), grads2.len());
        for (a, b) in grads1.into_iter().zip(grads2) {
            let (a, b) = (host_vec(a).unwrap(), host_vec(b).unwrap());
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "an adapter got no gradient");
            let diff = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-4 * scale, "{diff} vs scale {scale}");
        }
    }
}
