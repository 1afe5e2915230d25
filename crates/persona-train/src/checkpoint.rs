//! Run checkpoints: PEFT-layout adapters for users, plus the exact tensors
//! and counters a resumed run needs. Every write goes to a temporary folder
//! that replaces the previous checkpoint by rename, so a killed run always
//! leaves one complete checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use persona_model::Lora;
use persona_model::weights::{HostTensor, WeightMap, write_safetensors};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::Moments;
use crate::run_dir::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunDir};

/// Counters of a run at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done; the next step to run.
    pub step: usize,
    pub total_steps: usize,
    pub tokens_seen: u64,
}

fn ck_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn to_host(t: &Tensor<2>) -> Result<HostTensor> {
    let [r, c] = t.dims();
    let data = persona_model::host_vec(t.clone())?;
    Ok(HostTensor::f32(vec![r, c], data))
}

/// What `adapter_config.json` records besides the adapters themselves.
#[derive(Debug, Clone, Copy)]
pub struct AdapterMeta<'a> {
    /// PEFT's `base_model_name_or_path`: the model's HF hub id when it has
    /// one (so `AutoPeftModelForCausalLM` finds it), else its path
    /// ([`persona_model::ModelIdentity::peft_base_model`]).
    pub base_model: &'a str,
    /// The LoRA dropout the adapters were trained with.
    pub lora_dropout: f64,
}

/// The PEFT `adapter_config.json` of these adapters.
pub fn adapter_config(lora: &Lora, meta: AdapterMeta<'_>) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": meta.base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": meta.lora_dropout,
        "use_rslora": lora.scaling == persona_model::Scaling::Rslora,
        "target_modules": lora.targets().iter().map(|t| t.short_name()).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
    })
}

/// Writes `adapter_model.safetensors` + `adapter_config.json` into `dir`
/// (never through a symbolic link at `dir`).
pub fn write_adapter(dir: &Path, lora: &Lora, meta: AdapterMeta<'_>) -> Result<()> {
    persona_model::files::refuse_symlink(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| persona_model::ModelError::write(dir, e))?;
    write_safetensors(&lora.to_peft()?, &dir.join(ADAPTER_WEIGHTS))?;
    let cfg =
        serde_json::to_string_pretty(&adapter_config(lora, meta)).map_err(|e| ck_err(dir, e))?;
    persona_model::write_atomic(&dir.join(ADAPTER_CONFIG), cfg.as_bytes())?;
    Ok(())
}

/// Reads adapters written by [`write_adapter`] or by PEFT (LoRA on the
/// projections this runtime knows) from `dir`; see [`crate::peft`] for what
/// of `adapter_config.json` is honoured and what is refused.
pub fn read_adapter(dir: &Path, cfg: &persona_model::ModelConfig, device: &Device) -> Result<Lora> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ck_err(&cfg_path, e))?;
    let scaling = crate::peft::read_config(&text).map_err(|e| ck_err(&cfg_path, e))?;
    let (weights, _) = persona_model::weights::from_safetensors_file(&dir.join(ADAPTER_WEIGHTS))?;
    Ok(Lora::from_peft(cfg, &weights, &scaling, device)?)
}

/// Saves a resumable checkpoint to `<run>/checkpoint/`.
pub fn save(
    run: &RunDir,
    lora: &Lora,
    moments: &[Moments],
    state: &TrainerState,
    meta: AdapterMeta<'_>,
) -> Result<()> {
    let tmp = run.checkpoint_tmp();
    // `remove_dir_all` removes a link itself, never what it points to.
    if std::fs::symlink_metadata(&tmp).is_ok() {
        std::fs::remove_dir_all(&tmp)
            .or_else(|_| std::fs::remove_file(&tmp))
            .map_err(|e| ck_err(&tmp, e))?;
    }
    write_adapter(&tmp, lora, meta)?;
    // Exact tensors in the trainer's own layout (resuming from the PEFT
    // transposes would change memory layouts and so, possibly, float sums).
    let mut exact: WeightMap = BTreeMap::new();
    for (i, ((_, p), m)) in lora.named_tensors().into_iter().zip(moments).enumerate() {
        exact.insert(format!("{i:05}.param"), to_host(p)?);
        exact.insert(format!("{i:05}.exp_avg"), to_host(&m.m)?);
        exact.insert(format!("{i:05}.exp_avg_sq"), to_host(&m.v)?);
    }
    write_safetensors(&exact, &tmp.join("resume.safetensors"))?;
    let st = serde_json::to_string_pretty(state).map_err(|e| ck_err(&tmp, e))?;
    persona_model::write_atomic(&tmp.join("trainer_state.json"), st.as_bytes())?;
    replace_checkpoint(run, &tmp)
}

/// Moves the complete checkpoint `tmp` to `<run>/checkpoint/`. The one it
/// replaces is renamed to `checkpoint.old` first and deleted last, so a
/// kill at any point leaves one complete checkpoint (`load` falls back to
/// `checkpoint.old` when `checkpoint/` is missing).
fn replace_checkpoint(run: &RunDir, tmp: &Path) -> Result<()> {
    let final_dir = run.checkpoint();
    let old = run.checkpoint_old();
    // A save killed while deleting the replaced checkpoint leaves part of
    // `checkpoint.old` next to a complete `checkpoint/`; renaming onto a
    // non-empty directory would fail ("Directory not empty").
    if old.exists() && final_dir.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| ck_err(&old, e))?;
    }
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old).map_err(|e| ck_err(&final_dir, e))?;
    }
    std::fs::rename(tmp, &final_dir).map_err(|e| ck_err(&final_dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| ck_err(&old, e))?;
    }
    Ok(())
}

/// Restores adapters (into `lora`, whose shapes must match), moments and
/// counters from `<run>/checkpoint/` (or `checkpoint.old` if a save was cut
/// between its two renames).
pub fn load(
    run: &RunDir,
    lora: &mut Lora,
    device: &Device,
) -> Result<(Vec<Moments>, TrainerState)> {
    let mut dir = run.checkpoint();
    if !dir.exists() && run.checkpoint_old().exists() {
        dir = run.checkpoint_old();
    }
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| ck_err(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| ck_err(&state_path, e))?;
    let resume = dir.join("resume.safetensors");
    let (exact, _) = persona_model::weights::from_safetensors_file(&resume)?;
    let get = |k: String| -> Result<Tensor<2>> {
        let h = exact
            .get(&k)
            .ok_or_else(|| ck_err(&resume, format!("missing {k}")))?;
        let &[r, c] = h.shape.as_slice() else {
            return Err(ck_err(
                &resume,
                format!("{k} has shape {:?}, not 2-D", h.shape),
            ));
        };
        Ok(Tensor::from_data(
            TensorData::new(h.values().into_owned(), [r, c]),
            device,
        ))
    };
    let mut moments = Vec::new();
    for (i, slot) in lora.tensors_mut().into_iter().enumerate() {
        let p = get(format!("{i:05}.param"))?;
        if p.dims() != slot.dims() {
            return Err(ck_err(
                &resume,
                format!(
                    "tensor {i} has shape {:?}, the recipe's adapters {:?}",
                    p.dims(),
                    slot.dims()
                ),
            ));
        }
        *slot = p;
        moments.push(Moments {
            m: get(format!("{i:05}.exp_avg"))?,
            v: get(format!("{i:05}.exp_avg_sq"))?,
        });
    }
    if exact.len() != moments.len() * 3 {
        return Err(ck_err(
            &resume,
            "holds more tensors than the recipe's adapters (different targets?)",
        ));
    }
    Ok((moments, state))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::replace_checkpoint;
    use crate::run_dir::RunDir;

    fn write(dir: &Path, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("trainer_state.json"), text).unwrap();
    }

    fn read(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("trainer_state.json")).unwrap()
    }

    /// The new checkpoint replaces the old one, also after a save that was
    /// killed while deleting the checkpoint it had replaced (a partial,
    /// non-empty `checkpoint.old` next to a complete `checkpoint/`), and
    /// after one killed between its two renames (only `checkpoint.old`).
    #[test]
    fn a_checkpoint_replaces_the_last_one_after_any_interrupted_save() {
        let dir = tempfile::tempdir().unwrap();
        let run = &RunDir::at(dir.path());
        let tmp = run.checkpoint_tmp();
        let (final_dir, old) = (run.checkpoint(), run.checkpoint_old());

        write(&tmp, "1");
        replace_checkpoint(run, &tmp).unwrap();
        assert_eq!(read(&final_dir), "1");

        write(&old, "partly deleted");
        std::fs::write(old.join("resume.safetensors"), "x").unwrap();
        write(&tmp, "2");
        replace_checkpoint(run, &tmp).unwrap();
        assert_eq!(read(&final_dir), "2");
        assert!(!old.exists() && !tmp.exists());

        std::fs::rename(&final_dir, &old).unwrap();
        write(&tmp, "3");
        replace_checkpoint(run, &tmp).unwrap();
        assert_eq!(read(&final_dir), "3");
        assert!(!old.exists() && !tmp.exists());
    }
}
