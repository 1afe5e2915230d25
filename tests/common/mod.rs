//! Shared helpers for the integration tests that use the real embedded model.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use burn::tensor::Device;
use persona_model::{DEFAULT_MODEL, LoadedModel, load};

/// The embedded model, loaded once per test binary. `just test` fetches it
/// first; a missing model is a failure, not a skip.
pub fn smollm() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        load(DEFAULT_MODEL, &Device::flex()).unwrap_or_else(|e| {
            panic!("{e}\n(run `just fetch-model`, or `just test` which does it)")
        })
    })
}

/// `tests/data/smollm2-135m-instruct.reference.json`: PyTorch/transformers
/// numerics of the embedded model (token ids, logits, hidden-state norms per
/// row, greedy continuation, in f32 and f64), with how they were computed
/// in its `notes`.
pub fn reference() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/smollm2-135m-instruct.reference.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("reference JSON parses")
}

/// The reference prompt's token ids.
pub fn reference_ids() -> Vec<u32> {
    reference()["token_ids"]
        .as_array()
        .expect("token_ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// `m` on the reference prompt: the last position's logits and every
/// row's activations (row-major `[s, d]` each).
pub fn reference_pass(m: &LoadedModel) -> (Vec<f32>, Vec<Vec<f32>>) {
    use persona_model::{CaptureRequest, ForwardArgs, Logits, Reduction, host_vec};
    let batch = prompt_batch(reference_ids(), m.codec.pad_id);
    let rows = 0..=m.model.config.n_layers;
    let request = CaptureRequest::new(rows.clone(), &[Reduction::Full]);
    let args = ForwardArgs {
        logits: Logits::Last,
        ..ForwardArgs::capture(&request, None)
    };
    let out = m.model.forward(&batch, args).unwrap();
    let logits = host_vec(out.logits.unwrap()).unwrap();
    let hidden = rows
        .map(|r| host_vec(out.full[&r].clone()).unwrap())
        .collect();
    (logits, hidden)
}

/// The reference's first five and top five last-position logits within
/// 2e-3 (f32 against PyTorch's f32 for logits of order 10-20), and its
/// next token (504, `The`). Returns the worst absolute error.
pub fn assert_reference_logits(logits: &[f32]) -> f64 {
    let f32r = &reference()["f32"];
    let mut checks: Vec<(usize, f64)> = floats(&f32r["logits_last_first5"])
        .into_iter()
        .enumerate()
        .collect();
    for pair in f32r["logits_last_top5"].as_array().expect("top5") {
        checks.push((
            pair[0].as_u64().expect("id") as usize,
            pair[1].as_f64().expect("logit"),
        ));
    }
    let mut worst: f64 = 0.0;
    for (id, want) in checks {
        let err = (logits[id] as f64 - want).abs();
        assert!(err < 2e-3, "logit {id}: {} vs {want}", logits[id]);
        worst = worst.max(err);
    }
    let argmax = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
    assert_eq!(argmax.map(|(i, _)| i), Some(504));
    worst
}

/// The Frobenius norm of each row's activations below the last (HF's last
/// hidden state is after the final norm) within 1e-4 relative of the
/// reference. Returns the worst relative error.
pub fn assert_reference_norms(hidden: &[Vec<f32>]) -> f64 {
    let norms = floats(&reference()["f32"]["all_hidden_state_frobenius_norms"]);
    assert_eq!(norms.len(), hidden.len());
    let mut worst: f64 = 0.0;
    for (row, h) in hidden[..hidden.len() - 1].iter().enumerate() {
        let norm = frobenius(h);
        let rel = (norm - norms[row]).abs() / norms[row];
        assert!(
            rel < 1e-4,
            "row {row}: {norm} vs {} (rel {rel:e})",
            norms[row]
        );
        worst = worst.max(rel);
    }
    worst
}

pub fn frobenius(x: &[f32]) -> f64 {
    x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt()
}

pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A PERSONA_HOME in a temporary folder that shares the real model cache.
pub fn temp_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        repo().join("checkpoints/models").canonicalize().unwrap(),
        home.path().join("models"),
    )
    .unwrap();
    home
}

/// The `persona` binary with `PERSONA_HOME = home`, run from the repository root.
pub fn persona(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_persona"));
    c.env("PERSONA_HOME", home).current_dir(repo());
    c
}

/// Runs a command to completion: (exit code, stdout, stderr).
pub fn output(c: &mut Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every check `persona train` makes before loading weights, as one message.
pub fn check_recipe(recipe: &Path) -> Result<(), String> {
    let r = persona_train::Recipe::load(recipe).map_err(|e| e.to_string())?;
    r.check_static().map_err(|e| e.to_string())?;
    let (cfg, id) = persona_model::inspect(&r.model.name).map_err(|e| e.to_string())?;
    r.check_model(&cfg, &id).map_err(|e| e.to_string())
}

/// One unpadded prompt as a batch.
pub fn prompt_batch(ids: Vec<u32>, pad_id: u32) -> persona_model::Batch {
    let row = persona_model::Sequence {
        prompt: ids,
        response: vec![],
    };
    persona_model::Batch::new(&[row], persona_model::PadSide::Left, pad_id).unwrap()
}

/// Rank-`rank` LoRA adapters on `targets` whose B matrices are small
/// deterministic values (fresh adapters have B = 0 and change nothing),
/// written as a PEFT folder at `dir`.
pub fn write_test_adapter(
    cfg: &persona_model::ModelConfig,
    targets: &[persona_model::Target],
    rank: usize,
    dir: &Path,
) -> persona_model::Lora {
    use burn::tensor::{Device, Tensor, TensorData};
    let mut lora = persona_model::Lora::init(
        cfg,
        targets,
        rank,
        4.0,
        persona_model::Scaling::Rslora,
        1,
        &Device::flex(),
    )
    .unwrap();
    for (i, t) in lora.tensors_mut().into_iter().enumerate() {
        if i % 2 == 1 {
            let [r, c] = t.dims();
            let data: Vec<f32> = (0..r * c)
                .map(|k| ((k + i) as f32 * 0.71).sin() * 0.02)
                .collect();
            *t = Tensor::from_data(TensorData::new(data, [r, c]), &Device::flex());
        }
    }
    persona_train::checkpoint::write_adapter(
        dir,
        &lora,
        persona_train::checkpoint::AdapterMeta {
            base_model: "smollm2-135m-instruct",
            lora_dropout: 0.0,
        },
    )
    .unwrap();
    lora
}
