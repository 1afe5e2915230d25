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
