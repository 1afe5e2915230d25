//! The training loop: LoRA fine-tuning with preventative steering in the
//! training forward only, the projection shift logged every few steps, and
//! resumable checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
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
use crate::monitor::TraitMonitor;
use crate::optim::{AdamW, Moments, global_norm, lr_at};
use crate::recipe::{Recipe, SteerMode};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
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

/// The steering of the training forward, from the recipe.
pub fn training_steering(recipe: &Recipe, device: &Device) -> Result<Vec<Steering>> {
    let s = &recipe.steering;
    if s.mode == SteerMode::None {
        return Ok(vec![]);
    }
    let path = s.vector.as_ref().expect("checked by check_static");
    let file = VectorFile::load(path)?;
    let mut out = Vec::new();
    for &row in &s.layers {
        let v = file.row(&s.variant, row)?;
        let v: Vec<f32> = if s.incremental {
            let prev = file.row(&s.variant, row - 1)?;
            v.iter().zip(prev).map(|(a, b)| a - b).collect()
        } else {
            v.to_vec()
        };
        out.push(match s.mode {
            SteerMode::Steer => Steering::add(row, &v, s.coef, Positions::All, device),
            SteerMode::Ablate => Steering::ablate(row, &v, Positions::All, device)?,
            SteerMode::None => unreachable!(),
        });
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
) -> Result<(f64, Vec<Tensor<2>>)> {
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
    let none = CaptureRequest::none();
    let results: Vec<(f64, Vec<Tensor<2>>)> = pieces
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
                    capture: &none,
                    logits: Logits::Scored,
                    lora: Some(&lora),
                    lora_dropout: dropout.map(|d| LoraDropout {
                        seed: d.seed.wrapping_add(j as u64),
                        ..d
                    }),
                },
            )?;
            let loss = masked_nll(out.logits.expect("asked for logits"), scored, denom);
            let grads = loss.backward();
            let g: Vec<Tensor<2>> = lora
                .named_tensors()
                .into_iter()
                .map(|(_, p)| {
                    p.grad(&grads)
                        .unwrap_or_else(|| p.clone().detach().zeros_like())
                })
                .collect();
            Ok((loss.into_scalar::<f32>() as f64, g))
        })
        .collect::<Result<_>>()?;
    let mut loss_sum = 0.0;
    let mut grads_sum: Option<Vec<Tensor<2>>> = None;
    for (loss, g) in results {
        loss_sum += loss;
        grads_sum = Some(match grads_sum {
            None => g,
            Some(acc) => acc.into_iter().zip(g).map(|(a, b)| a + b).collect(),
        });
    }
    Ok((loss_sum, grads_sum.unwrap_or_default()))
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

/// The micro-batches of the whole run in order (epoch after epoch).
fn schedule(data: &Dataset, recipe: &Recipe) -> Vec<Vec<usize>> {
    let lengths: Vec<usize> = data
        .train
        .iter()
        .map(|s| s.prompt.len() + s.response.len())
        .collect();
    (0..recipe.optim.epochs)
        .flat_map(|e| epoch_batches(&lengths, recipe.optim.batch_size, recipe.run.seed, e))
        .collect()
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

/// Runs (or, with `resume`, continues) the recipe's training run.
pub fn train(recipe_path: &Path, resume: bool, show_progress: bool) -> Result<TrainOutcome> {
    let recipe = Recipe::load(recipe_path)?;
    ensure_trait_vector(&recipe, show_progress)?;
    recipe.check_static()?;
    let (cfg, identity) = persona_model::inspect(&recipe.model.name)?;
    recipe.check_model(&cfg, &identity)?;

    let run_dir = persona_model::persona_home()
        .join("runs")
        .join(&recipe.run.name);
    let has_checkpoint =
        run_dir.join("checkpoint").exists() || run_dir.join("checkpoint.old").exists();
    if resume && !has_checkpoint {
        return Err(TrainError::Checkpoint {
            path: run_dir,
            reason: "no checkpoint to resume from".into(),
        });
    }
    if !resume && run_dir.exists() {
        return Err(TrainError::RunExists { path: run_dir });
    }
    std::fs::create_dir_all(&run_dir).map_err(|e| crate::error::io(&run_dir, e))?;

    let device = persona_model::parse_device(&recipe.run.device)?.autodiff();
    let loaded = persona_model::load(&recipe.model.name, &device)?;
    let (model, codec) = (&loaded.model, &loaded.codec);
    let data = load_dataset(
        &recipe.data.train,
        codec,
        recipe.run.seed,
        recipe.data.max_examples,
        recipe.data.max_seq_len,
        recipe.data.heldout_fraction,
    )?;
    let steering = training_steering(&recipe, &device)?;
    let monitors = recipe
        .monitor
        .traits
        .iter()
        .map(|t| {
            TraitMonitor::new(
                &t.name,
                &VectorFile::load(&t.vector)?,
                &t.questions,
                &recipe.monitor.layers,
                model,
                codec,
            )
        })
        .collect::<Result<Vec<_>>>()?;

    let micro = schedule(&data, &recipe);
    let accum = recipe.optim.grad_accum;
    let mut total_steps = micro.len().div_ceil(accum);
    if recipe.optim.max_steps > 0 {
        total_steps = total_steps.min(recipe.optim.max_steps);
    }

    let mut lora = Lora::init(
        &cfg,
        &recipe.lora.targets,
        recipe.lora.rank,
        recipe.lora.alpha,
        recipe.lora.scaling,
        recipe.run.seed,
        &device,
    )?;
    let (mut moments, mut state) = if resume {
        checkpoint::load(&run_dir, &mut lora, &device)?
    } else {
        let moments = lora
            .named_tensors()
            .into_iter()
            .map(|(_, t)| Moments {
                m: t.clone().zeros_like(),
                v: t.clone().zeros_like(),
            })
            .collect();
        (
            moments,
            TrainerState {
                step: 0,
                total_steps,
                tokens_seen: 0,
            },
        )
    };
    if state.total_steps != total_steps {
        return Err(TrainError::Checkpoint {
            path: run_dir,
            reason: format!(
                "checkpoint was made for {} steps, the recipe gives {total_steps}",
                state.total_steps
            ),
        });
    }

    let meta = checkpoint::AdapterMeta {
        base_model: &recipe.model.name,
        lora_dropout: recipe.lora.dropout,
    };
    // Provenance and the resolved recipe, beside the run (first start only).
    if !resume {
        write_provenance(&run_dir, &recipe, &identity, &data)?;
        std::fs::write(run_dir.join("metrics.jsonl"), "")
            .map_err(|e| crate::error::io(&run_dir, e))?;
        checkpoint::save(&run_dir, &lora, &moments, &state, meta)?;
    } else {
        truncate_metrics(&run_dir.join("metrics.jsonl"), state.step)?;
    }
    let mut metrics_file = std::fs::OpenOptions::new()
        .append(true)
        .open(run_dir.join("metrics.jsonl"))
        .map_err(|e| crate::error::io(&run_dir, e))?;

    let bar = if show_progress {
        let b = ProgressBar::new(total_steps as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [{elapsed} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(state.step as u64);
        b
    } else {
        ProgressBar::hidden()
    };

    let opt = AdamW {
        beta1: recipe.optim.beta1,
        beta2: recipe.optim.beta2,
        eps: recipe.optim.eps,
        weight_decay: recipe.optim.weight_decay,
    };
    let mut last_loss = f64::NAN;
    lora = lora.trainable();
    while state.step < total_steps {
        let started = Instant::now();
        let step = state.step;
        let batches: Vec<Batch> = micro[step * accum..((step + 1) * accum).min(micro.len())]
            .iter()
            .map(|idx| {
                let rows: Vec<Sequence> = idx.iter().map(|&i| data.train[i].clone()).collect();
                Batch::new(&rows, PadSide::Right, codec.pad_id)
            })
            .collect::<persona_model::Result<_>>()?;
        let tokens: usize = batches
            .iter()
            .map(|b| b.roles.iter().filter(|r| **r != Role::Pad).count())
            .sum();
        // Dropout masks depend on (seed, step) only: a resumed step redraws them.
        let dropout = (recipe.lora.dropout > 0.0).then(|| LoraDropout {
            p: recipe.lora.dropout,
            seed: dropout_seed(recipe.run.seed, step),
        });
        let (loss_sum, grads) = loss_and_grads(model, &lora, &batches, &steering, dropout)?;
        let (grads, grad_norm) = clip(grads, recipe.optim.max_grad_norm);
        // Stop before a non-finite value reaches the adapters or a checkpoint.
        for (what, value) in [("loss", loss_sum), ("gradient norm", grad_norm)] {
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    what,
                    value,
                    step: step + 1,
                    dir: run_dir.join("checkpoint"),
                });
            }
        }
        let lr = lr_at(
            recipe.optim.lr,
            step,
            recipe.optim.warmup_steps,
            total_steps,
        );
        for ((p, g), m) in lora
            .tensors_mut()
            .into_iter()
            .zip(grads)
            .zip(moments.iter_mut())
        {
            *p = opt
                .update(p.clone().detach(), g, m, lr, step + 1)
                .detach()
                .require_grad();
        }
        let weights: Vec<Tensor<2>> = lora
            .named_tensors()
            .into_iter()
            .map(|(_, t)| t.clone().detach())
            .collect();
        let weight_norm = global_norm(&weights);
        if !weight_norm.is_finite() {
            return Err(TrainError::NonFinite {
                what: "the adapter weight norm after the update",
                value: weight_norm,
                step: step + 1,
                dir: run_dir.join("checkpoint"),
            });
        }
        state.step += 1;
        state.tokens_seen += tokens as u64;
        last_loss = loss_sum;

        let shift =
            if state.step % recipe.monitor.every == 0 || state.step == total_steps || step == 0 {
                let mut all = std::collections::BTreeMap::new();
                for mon in &monitors {
                    let s = mon.shifts(model, &lora)?;
                    all.insert(
                        mon.name.clone(),
                        mon.rows
                            .iter()
                            .zip(s)
                            .map(|(r, v)| (r.to_string(), v))
                            .collect(),
                    );
                }
                Some(all)
            } else {
                None
            };
        let secs = started.elapsed().as_secs_f64();
        let line = StepMetrics {
            step: state.step,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / secs,
            shift,
        };
        let shift_msg = line
            .shift
            .as_ref()
            .and_then(|s| s.iter().next())
            .and_then(|(name, rows)| {
                rows.iter()
                    .next()
                    .map(|(r, v)| format!(" shift[{name}@{r}] {v:+.3}"))
            })
            .unwrap_or_default();
        bar.set_message(format!("loss {loss_sum:.4}{shift_msg}"));
        bar.set_position(state.step as u64);
        let json = serde_json::to_string(&line).map_err(|e| crate::error::io(&run_dir, e))?;
        writeln!(metrics_file, "{json}").map_err(|e| crate::error::io(&run_dir, e))?;
        // The snapshot first: a saved checkpoint implies its snapshot exists.
        let every = recipe.run.snapshot_every;
        if every > 0 && state.step % every == 0 {
            checkpoint::write_adapter(&snapshot_dir(&run_dir, state.step), &lora.detached(), meta)?;
        }
        if state.step % recipe.run.save_every == 0 || state.step == total_steps {
            let detached = lora.detached();
            checkpoint::save(&run_dir, &detached, &moments, &state, meta)?;
        }
    }
    bar.finish();
    checkpoint::write_adapter(&run_dir.join("adapter"), &lora.detached(), meta)?;
    Ok(TrainOutcome {
        run_dir,
        steps: state.step,
        last_loss,
    })
}

/// Where the adapters of optimizer step `step` are kept (see `snapshot_every`).
pub fn snapshot_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join("snapshots").join(format!("step-{step:05}"))
}

/// Extracts the `[trait]` section's vector from its trait file's authored
/// responses when the vector
/// file does not exist yet (so a recipe works on a fresh machine).
pub fn ensure_trait_vector(recipe: &Recipe, show_progress: bool) -> Result<()> {
    let Some(t) = recipe.trait_.as_ref().filter(|t| !t.vector.exists()) else {
        return Ok(());
    };
    let path = &t.vector;
    let def = persona_vectors::TraitDef::load(&t.definition)?;
    let device = persona_model::parse_device(&recipe.run.device)?;
    let loaded = persona_model::load(&recipe.model.name, &device)?;
    let bar = if show_progress {
        let n: usize = def
            .responses
            .iter()
            .map(|r| r.pos.len() + r.neg.len())
            .sum();
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_message(format!("extracting {} vector", t.name));
    let file = persona_vectors::extract::extract_authored(
        &loaded.model,
        &loaded.codec,
        &loaded.identity,
        &def,
        t.batch_size,
        |k| bar.set_position(k as u64),
    )?;
    bar.finish_and_clear();
    file.save(path)?;
    Ok(())
}

/// Keeps the first `steps` lines of the metrics (a resumed run re-logs the rest).
fn truncate_metrics(path: &Path, steps: usize) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text.lines().take(steps).collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| crate::error::io(path, e))
}

fn write_provenance(
    run_dir: &Path,
    recipe: &Recipe,
    identity: &persona_model::ModelIdentity,
    data: &Dataset,
) -> Result<()> {
    let mut vectors = serde_json::Map::new();
    if let Some(v) = &recipe.steering.vector {
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
                    "train_examples": data.train.len(), "heldout_examples": data.heldout.len(),
                    "skipped_too_long": data.skipped_too_long},
        "vectors": vectors,
        "seed": recipe.run.seed,
    });
    let text = serde_json::to_string_pretty(&prov).map_err(|e| crate::error::io(run_dir, e))?;
    persona_model::load::write_atomic(&run_dir.join("provenance.json"), text.as_bytes())?;
    let resolved = toml::to_string_pretty(recipe).map_err(|e| crate::error::io(run_dir, e))?;
    persona_model::load::write_atomic(&run_dir.join("recipe.toml"), resolved.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_model::testing::{on_threads, random_weights, test_device, tiny_config};
    use persona_model::{Model, Scaling, Target, host_vec};

    #[test]
    fn row_groups_on_two_threads_give_the_whole_step_gradient() {
        let device = test_device().autodiff();
        let cfg = tiny_config();
        let model = Model::from_weights(cfg.clone(), &random_weights(&cfg, 1), &device).unwrap();
        let mut lora = Lora::init(&cfg, &Target::ALL, 4, 8.0, Scaling::Rslora, 3, &device).unwrap();
        // Non-zero B, so the A matrices get gradients too.
        for t in lora.tensors_mut() {
            *t = t.clone().add_scalar(0.02).require_grad();
        }
        let batches: Vec<Batch> = (0..2u32)
            .map(|m| {
                let rows: Vec<Sequence> = (0..4u32)
                    .map(|r| Sequence {
                        prompt: (0..10 + r).map(|i| (i * 7 + r + m * 13) % 97).collect(),
                        response: (0..4 + 2 * r).map(|i| (i * 5 + r + 1) % 97).collect(),
                    })
                    .collect();
                Batch::new(&rows, PadSide::Right, 0).unwrap()
            })
            .collect();
        let steering = [Steering::add(2, &[0.3; 32], 1.5, Positions::All, &device)];
        let dropout = Some(LoraDropout { p: 0.0, seed: 5 });
        let (loss1, grads1) = on_threads(1, || {
            loss_and_grads(&model, &lora, &batches, &steering, dropout)
        })
        .unwrap();
        let (loss2, grads2) = on_threads(2, || {
            assert_eq!(batches[0].thread_groups(&device, true), vec![0..2, 2..4]);
            loss_and_grads(&model, &lora, &batches, &steering, dropout)
        })
        .unwrap();
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
