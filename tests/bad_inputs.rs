//! Regression tests of the fuzzing and interop campaign (issue 19), on the
//! tiny random model written as a GGUF file, so each runs in well under a
//! second: recipes, training data, run folders, adapters, vector files and
//! CLI arguments that used to be misread, panic, hang or write where they
//! should not. Each is named after what broke.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use burn::tensor::Device;
use persona_model::testing::{tiny_config, tiny_gguf};
use persona_vectors::file::{FORMAT_VERSION, ROW_CONVENTION};
use persona_vectors::{VectorFile, VectorMeta};

/// A PERSONA_HOME holding the tiny model (`models/tiny/tiny.gguf`), a
/// vector file for it, a small ASCII chat dataset and a recipe.
struct Tiny {
    home: tempfile::TempDir,
}

impl Tiny {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let models = home.path().join("models/tiny");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join("tiny.gguf"), tiny_gguf(7)).unwrap();
        let t = Self { home };
        let lines: Vec<String> = (0..8)
            .map(|i| {
                serde_json::json!({"messages": [
                    {"role": "user", "content": format!("Is {i} big?")},
                    {"role": "assistant", "content": format!("No, {i} is small.")}]})
                .to_string()
            })
            .collect();
        std::fs::write(t.path("train.jsonl"), lines.join("\n")).unwrap();
        let (cfg, id) = persona_model::inspect(t.model().to_str().unwrap()).unwrap();
        let mut f = VectorFile::new(VectorMeta {
            format_version: FORMAT_VERSION,
            row_convention: ROW_CONVENTION.into(),
            model_name: "tiny".into(),
            model_sha256: id.sha256,
            d_model: cfg.d_model,
            n_layers: cfg.n_layers,
            extra: serde_json::Value::Null,
        });
        let v = (0..(cfg.n_layers + 1) * cfg.d_model)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        f.variants.insert(persona_vectors::Variant::ResponseAvg, v);
        f.save(&t.path("v.safetensors")).unwrap();
        std::fs::write(t.path("questions.txt"), "Is it big?\nIs it small?\n").unwrap();
        t
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn model(&self) -> PathBuf {
        self.path("models/tiny/tiny.gguf")
    }

    /// A recipe for the tiny model (2 steps, steering at row 2, the shift
    /// logged at row 2), with `edit` applied; returns its path.
    fn recipe(&self, name: &str, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
        let v = self.path("v.safetensors").display().to_string();
        let text = format!(
            r#"
[run]
name = "{name}"
seed = 0
device = "cpu"
save_every = 1
[model]
name = "{model}"
[data]
train = "{train}"
max_examples = 0
max_seq_len = 64
heldout_fraction = 0.0
[lora]
rank = 2
alpha = 4.0
scaling = "rslora"
targets = ["q_proj", "v_proj"]
dropout = 0.0
[optim]
lr = 1e-3
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
eps = 1e-8
warmup_steps = 0
batch_size = 4
grad_accum = 1
max_grad_norm = 1.0
epochs = 1
max_steps = 0
[steering]
mode = "steer"
vector = "{v}"
variant = "response_avg"
layers = [2]
coef = 2.0
incremental = false
[monitor]
every = 1
layers = [2]
traits = [{{ name = "t", vector = "{v}", questions = "{q}" }}]
"#,
            model = self.model().display(),
            train = self.path("train.jsonl").display(),
            q = self.path("questions.txt").display(),
        );
        let mut t: toml::Table = toml::from_str(&text).unwrap();
        edit(&mut t);
        let p = self.path(&format!("{name}.toml"));
        std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
        p
    }

    fn run(&self, name: &str) -> PathBuf {
        self.path("runs").join(name)
    }

    /// `persona ARGS` with this PERSONA_HOME: (exit code, stdout, stderr).
    fn persona(&self, args: &[&str]) -> (i32, String, String) {
        common::output(common::persona(self.home.path()).args(args))
    }

    /// `persona export --format llama-cpp` of one layer, with `extra` flags.
    fn export(
        &self,
        vector: &str,
        layer: &str,
        out: &str,
        extra: &[&str],
    ) -> (i32, String, String) {
        let mut args = vec!["export", "--format", "llama-cpp", "--vector", vector];
        args.extend(["--layer", layer, "--out", out]);
        args.extend(extra);
        self.persona(&args)
    }

    fn train(&self, recipe: &Path, resume: bool) -> (i32, String, String) {
        let mut args = vec!["train", recipe.to_str().unwrap()];
        if resume {
            args.push("--resume");
        }
        self.persona(&args)
    }
}

/// The one-line `error:` message of a failed command.
fn one_line_error(code: i32, stderr: &str) -> String {
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

/// Regression: `max_grad_norm = nan` turned clipping off silently; negative
/// `max_grad_norm` / `weight_decay` / `lora.alpha`, a NaN coefficient,
/// `steering.layers = [15, 15]` and `monitor.layers = []` were accepted;
/// `lora.rank = 1e8` allocated 230 GB, `batch_size = 2^60` panicked and
/// `epochs = 1e12` allocated 8 GB before aborting.
#[test]
fn recipe_numbers_that_are_nan_negative_repeated_or_absurd_are_refused() {
    let t = Tiny::new();
    common::check_recipe(&t.recipe("ok", |_| {})).unwrap();
    type Edit = Box<dyn FnOnce(&mut toml::Table)>;
    let nan = f64::NAN;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "grad-nan",
            Box::new(move |r| r["optim"]["max_grad_norm"] = nan.into()),
            "optim.max_grad_norm",
        ),
        (
            "grad-neg",
            Box::new(|r| r["optim"]["max_grad_norm"] = (-1.0).into()),
            "optim.max_grad_norm",
        ),
        (
            "wd-neg",
            Box::new(|r| r["optim"]["weight_decay"] = (-0.1).into()),
            "optim.weight_decay",
        ),
        (
            "alpha-zero",
            Box::new(|r| r["lora"]["alpha"] = 0.0.into()),
            "lora.alpha",
        ),
        (
            "alpha-neg",
            Box::new(|r| r["lora"]["alpha"] = (-8.0).into()),
            "lora.alpha",
        ),
        (
            "coef-nan",
            Box::new(move |r| r["steering"]["coef"] = nan.into()),
            "steering.coef",
        ),
        (
            "rows-twice",
            Box::new(|r| r["steering"]["layers"] = vec![2, 2].into()),
            "row 2 is listed twice",
        ),
        (
            "monitor-none",
            Box::new(|r| r["monitor"]["layers"] = Vec::<i64>::new().into()),
            "monitor.layers",
        ),
        (
            "rank-1e8",
            Box::new(|r| r["lora"]["rank"] = 100_000_000.into()),
            "lora.rank",
        ),
        (
            "rank-wide",
            Box::new(|r| r["lora"]["rank"] = 33.into()),
            "lora.rank",
        ),
        (
            "batch-2^60",
            Box::new(|r| r["optim"]["batch_size"] = (1i64 << 60).into()),
            "optim.batch_size",
        ),
        (
            "epochs-1e12",
            Box::new(|r| r["optim"]["epochs"] = 1_000_000_000_000i64.into()),
            "optim.epochs",
        ),
    ];
    for (name, edit, want) in cases {
        let e = common::check_recipe(&t.recipe(name, edit)).expect_err(name);
        assert!(e.contains(want), "{name}: {e}");
    }
}

/// Regression: `epochs = 1e12, max_steps = 1` built every epoch's batches
/// up front (8 GB, then abort). Epochs are now made one at a time.
#[test]
fn many_epochs_cut_short_by_max_steps_train_only_what_they_reach() {
    let t = Tiny::new();
    let r = t.recipe("long", |r| {
        r["optim"]["epochs"] = (1i64 << 20).into();
        r["optim"]["max_steps"] = 1.into();
    });
    let (code, out, err) = t.train(&r, false);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("finished 1 steps"), "{out}");
}

/// Regression: an empty assistant message or an unknown role in training
/// data was accepted.
#[test]
fn training_data_with_an_empty_assistant_message_or_unknown_role_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    for (line, want) in [
        (
            r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}"#,
            "empty assistant message",
        ),
        (
            r#"{"messages": [{"role": "human", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}"#,
            "unknown variant `human`",
        ),
    ] {
        std::fs::write(&p, line).unwrap();
        let e = persona_train::data::read_chat_records(&p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains(want), "{e}");
    }
}

/// Regression: a failure before the first checkpoint (a device typo, a bad
/// dataset line) left a run folder that neither `train` nor `--resume`
/// would take.
#[test]
fn a_run_that_fails_before_starting_leaves_no_run_folder() {
    let t = Tiny::new();
    let r = t.recipe("typo", |r| r["run"]["device"] = "cpuu".into());
    let (code, _, err) = t.train(&r, false);
    one_line_error(code, &err);
    assert!(!t.run("typo").exists());
    std::fs::write(t.path("bad.jsonl"), "{\"messages\": [}\n").unwrap();
    let bad = t.path("bad.jsonl").display().to_string();
    let r = t.recipe("baddata", |r| r["data"]["train"] = bad.into());
    let (code, _, err) = t.train(&r, false);
    assert!(one_line_error(code, &err).contains("line 1"), "{err}");
    assert!(!t.run("baddata").exists());
}

/// Regression: a folder left by a start killed before its first save was
/// refused by `train` ("already holds a run") and by `--resume` ("no
/// checkpoint"). It now starts again, with a message, either way.
#[test]
fn a_run_folder_without_a_checkpoint_starts_again() {
    let t = Tiny::new();
    for (name, resume) in [("again", false), ("again-resume", true)] {
        let r = t.recipe(name, |_| {});
        std::fs::create_dir_all(t.run(name)).unwrap();
        std::fs::write(t.run(name).join("metrics.jsonl"), "{\"step\": 1, \"torn").unwrap();
        let (code, out, err) = t.train(&r, resume);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("starting the run again"), "{err}");
        assert!(out.contains("finished 2 steps"), "{out}");
        let lines = std::fs::read_to_string(t.run(name).join("metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 2, "{lines}");
    }
    // A finished run is still protected.
    let (code, _, err) = t.train(&t.recipe("again", |_| {}), false);
    assert!(one_line_error(code, &err).contains("--resume"), "{err}");
}

/// Regression: `--resume` followed symlinks planted in a run folder
/// (`metrics.jsonl`, `adapter/`) and truncated files outside it.
#[test]
fn resume_never_writes_through_planted_symlinks() {
    let t = Tiny::new();
    let r = t.recipe("links", |_| {});
    assert_eq!(t.train(&r, false).0, 0);
    let run = t.run("links");
    // Back to "resumable": the final adapters are gone.
    std::fs::remove_dir_all(run.join("adapter")).unwrap();
    let outside = t.path("precious.txt");
    std::fs::write(&outside, "precious").unwrap();
    std::fs::remove_file(run.join("metrics.jsonl")).unwrap();
    std::os::unix::fs::symlink(&outside, run.join("metrics.jsonl")).unwrap();
    let (code, _, err) = t.train(&r, true);
    assert!(
        one_line_error(code, &err).contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");

    std::fs::remove_file(run.join("metrics.jsonl")).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    let elsewhere = t.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, run.join("adapter")).unwrap();
    let (code, _, err) = t.train(&r, true);
    assert!(
        one_line_error(code, &err).contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// Regression: `adapter_config.json` named the cache entry, so PEFT's
/// `AutoPeftModelForCausalLM` could not find the base model. A model with
/// no hub id is named by its path.
#[test]
fn adapter_config_names_a_base_model_peft_can_load() {
    let t = Tiny::new();
    assert_eq!(t.train(&t.recipe("peft", |_| {}), false).0, 0);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.run("peft").join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        cfg["base_model_name_or_path"],
        t.model().display().to_string()
    );
    let embedded = persona_model::inspect(persona_model::DEFAULT_MODEL)
        .unwrap()
        .1;
    assert_eq!(
        embedded.peft_base_model(),
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    );
}

/// Writes adapters for the tiny model with `config` as `adapter_config.json`.
fn adapter_folder(
    dir: &Path,
    config: serde_json::Value,
    edit: impl FnOnce(&mut persona_model::weights::WeightMap),
) -> PathBuf {
    use persona_model::{Lora, Scaling, Target};
    let cfg = tiny_config();
    let lora = Lora::init(
        &cfg,
        &[Target::V, Target::Q],
        2,
        4.0,
        Scaling::Classic,
        1,
        &Device::flex(),
    )
    .unwrap();
    let mut peft = lora.to_peft().unwrap();
    for t in peft.values_mut() {
        t.values_mut()
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x += (i as f32 * 0.3).sin() * 0.1);
    }
    edit(&mut peft);
    let out = dir.join("adapter");
    std::fs::create_dir_all(&out).unwrap();
    persona_model::weights::write_safetensors(&peft, &out.join("adapter_model.safetensors"))
        .unwrap();
    std::fs::write(out.join("adapter_config.json"), config.to_string()).unwrap();
    out
}

fn peft_config(r: u64) -> serde_json::Value {
    serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 4.0, "use_rslora": false,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": false})
}

fn read(dir: &Path) -> Result<persona_model::Lora, String> {
    persona_train::checkpoint::read_adapter(dir, &tiny_config(), &Device::flex())
        .map_err(|e| e.to_string())
}

/// Regression: a 1-D or 0-D `lora_A` panicked in `from_peft`, a 3-D one
/// was accepted, and an adapter of rank 1e8 allocated 230 GB.
#[test]
fn adapter_tensors_must_be_2d_of_the_configs_rank() {
    let key = "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight";
    for shape in [vec![64], vec![], vec![2, 32, 1]] {
        let dir = tempfile::tempdir().unwrap();
        let n: usize = shape.iter().product();
        let a = adapter_folder(dir.path(), peft_config(2), |w| {
            w.insert(
                key.into(),
                persona_model::weights::HostTensor::f32(shape.clone(), vec![0.1; n]),
            );
        });
        let e = read(&a).unwrap_err();
        assert!(e.contains(key) && e.contains("shape"), "{shape:?}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let a = adapter_folder(dir.path(), peft_config(100_000_000), |_| {});
    let e = read(&a).unwrap_err();
    assert!(e.contains("rank 100000000"), "{e}");
}

/// Regression: NaN in `lora_B` merged into NaN weights; a huge `lora_B`
/// into infinite ones.
#[test]
fn adapters_with_nan_or_huge_values_are_refused() {
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    let dir = tempfile::tempdir().unwrap();
    let a = adapter_folder(dir.path(), peft_config(2), |w| {
        w.get_mut(key).unwrap().values_mut()[0] = f32::NAN
    });
    assert!(read(&a).unwrap_err().contains("non-finite"));
    let dir = tempfile::tempdir().unwrap();
    // Finite values whose product is not: 1e30 * 1e30 overflows f32.
    let a = adapter_folder(dir.path(), peft_config(2), |w| {
        for k in [key.to_string(), key.replace("lora_B", "lora_A")] {
            w.get_mut(&k)
                .unwrap()
                .values_mut()
                .iter_mut()
                .for_each(|x| *x = 1e30)
        }
    });
    let lora = read(&a).unwrap();
    let mut weights = persona_model::testing::random_weights(&tiny_config(), 1);
    let e = lora.merge_into(&mut weights).unwrap_err().to_string();
    assert!(e.contains("non-finite") && e.contains("q_proj"), "{e}");
}

/// Regression: PEFT's `alpha_pattern` was ignored by `persona merge` (v_proj
/// off by 0.144 after the merge); `rank_pattern` likewise.
#[test]
fn merge_honours_peft_alpha_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = peft_config(2);
    cfg["alpha_pattern"] = serde_json::json!({"v_proj": 16.0});
    let patterned = read(&adapter_folder(dir.path(), cfg, |_| {})).unwrap();
    let plain = read(&adapter_folder(dir.path(), peft_config(2), |_| {})).unwrap();
    let base = persona_model::testing::random_weights(&tiny_config(), 1);
    let merged = |l: &persona_model::Lora| {
        let mut w = base.clone();
        l.merge_into(&mut w).unwrap();
        w
    };
    let (a, b) = (merged(&patterned), merged(&plain));
    for (key, ratio) in [
        ("model.layers.1.self_attn.v_proj.weight", 4.0),
        ("model.layers.1.self_attn.q_proj.weight", 1.0),
    ] {
        let delta = |w: &persona_model::weights::WeightMap| -> Vec<f32> {
            w[key]
                .values()
                .iter()
                .zip(base[key].values().iter())
                .map(|(x, y)| x - y)
                .collect()
        };
        let (da, db) = (delta(&a), delta(&b));
        let worst = da
            .iter()
            .zip(&db)
            .map(|(x, y)| (x - ratio * y).abs())
            .fold(0f32, f32::max);
        assert!(db.iter().any(|x| x.abs() > 1e-4), "{key} moved");
        assert!(
            worst < 1e-5,
            "{key}: alpha 16 vs 4 must scale the update x{ratio} ({worst})"
        );
    }
}

/// Writes a vector file whose metadata says `meta` over one small tensor.
fn raw_vector_file(path: &Path, meta: serde_json::Value, data: &[f32], shape: Vec<usize>) {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes).unwrap();
    let info = std::collections::HashMap::from([("persona".to_string(), meta.to_string())]);
    safetensors::serialize_to_file([("response_avg", view)], Some(info), path).unwrap();
}

fn meta(n_layers: u64, d_model: u64) -> serde_json::Value {
    serde_json::json!({"format_version": FORMAT_VERSION, "row_convention": ROW_CONVENTION,
        "model_name": "x", "model_sha256": "y", "d_model": d_model, "n_layers": n_layers})
}

/// Regression: a vector file whose `n_layers` is u64::MAX panicked in
/// `vector info` and `export`; with `d_model` 0 it looped 2^64 times; a
/// vector of NaN or inf values loaded.
#[test]
fn vector_files_with_absurd_shapes_or_non_finite_values_are_refused() {
    let t = Tiny::new();
    let p = t.path("bad.safetensors");
    for (m, data, shape, want) in [
        (
            meta(u64::MAX, 4),
            vec![0.0; 8],
            vec![2, 4],
            "implausible shape",
        ),
        (meta(1, 0), vec![], vec![2, 0], "implausible shape"),
        (
            meta(1, 4),
            vec![0.0, 1.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0],
            vec![2, 4],
            "non-finite",
        ),
        (
            meta(1, 4),
            vec![0.0, 1.0, 0.0, 0.0, f32::INFINITY, 0.0, 0.0, 0.0],
            vec![2, 4],
            "row 1",
        ),
    ] {
        raw_vector_file(&p, m, &data, shape);
        for args in [
            vec!["vector", "info", p.to_str().unwrap()],
            vec![
                "export",
                "--format",
                "llama-cpp",
                "--vector",
                p.to_str().unwrap(),
                "--layer",
                "1",
                "--out",
                "/tmp/never.gguf",
            ],
        ] {
            let (code, _, err) = t.persona(&args);
            assert!(one_line_error(code, &err).contains(want), "{args:?}: {err}");
        }
    }
}

/// Regression: `generate --coef NaN|inf`, `--temperature NaN` and `export
/// --coef NaN` ran; `--max-new-tokens 1000000000000` aborted.
#[test]
fn non_finite_or_absurd_cli_numbers_are_one_line_errors() {
    let t = Tiny::new();
    let (m, v) = (
        t.model().display().to_string(),
        t.path("v.safetensors").display().to_string(),
    );
    let generate = |extra: &[&str]| {
        let mut a = vec!["generate", "--model", &m, "--prompt", "Hi"];
        a.extend_from_slice(extra);
        t.persona(&a)
    };
    for (extra, want) in [
        (
            vec!["--steer", &v, "--layer", "2", "--coef", "NaN"],
            "not a finite number",
        ),
        (
            vec!["--steer", &v, "--layer", "2", "--coef", "inf"],
            "not a finite number",
        ),
        (vec!["--temperature", "NaN"], "temperature"),
        (vec!["--top-p", "NaN"], "top_p"),
        (
            vec!["--max-new-tokens", "1000000000000"],
            "context of 128 tokens",
        ),
    ] {
        let (code, _, err) = generate(&extra);
        assert!(
            one_line_error(code, &err).contains(want),
            "{extra:?}: {err}"
        );
    }
    let out = t.path("cv.gguf").display().to_string();
    let (code, _, err) = t.export(&v, "2", &out, &["--coef", "NaN"]);
    assert!(
        one_line_error(code, &err).contains("not a finite number"),
        "{err}"
    );
    assert!(!Path::new(&out).exists());
}

/// Regression: `persona export` printed and the README showed
/// `--control-vector-scaled FILE 1.0`; current llama.cpp wants `FILE:1.0`.
#[test]
fn export_prints_the_current_llama_cpp_syntax() {
    let t = Tiny::new();
    let out = t.path("cv.gguf").display().to_string();
    let v = t.path("v.safetensors").display().to_string();
    let (code, stdout, err) = t.export(&v, "2", &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains(&format!("--control-vector-scaled {out}:1.0 ")),
        "{stdout}"
    );
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    assert!(
        !readme.contains(".gguf 1.0"),
        "README still shows `FILE 1.0`"
    );
}

/// Regression: failed writes left 0-byte `.tmp` files, read-only outputs
/// were reported as "cannot read", and extract found an unwritable output
/// only after all its work.
#[test]
fn failed_writes_say_write_and_leave_nothing_behind() {
    let t = Tiny::new();
    let v = t.path("v.safetensors").display().to_string();
    // A non-empty folder where the file should go: the rename fails.
    let taken = t.path("taken");
    std::fs::create_dir_all(taken.join("x")).unwrap();
    let (code, _, err) = t.export(&v, "2", taken.to_str().unwrap(), &[]);
    assert!(one_line_error(code, &err).contains("cannot write"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(t.home.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The output is checked before the model is even looked up: a missing
    // model is not what this error is about.
    let under_a_file = t.path("v.safetensors/out.safetensors");
    let (code, _, err) = t.persona(&[
        "extract",
        "--trait",
        "datasets/traits/sycophantic.toml",
        "--no-select",
        "--model",
        "no-such-model",
        "--out",
        under_a_file.to_str().unwrap(),
    ]);
    let e = one_line_error(code, &err);
    assert!(
        e.contains("cannot write") && !e.contains("no-such-model"),
        "{e}"
    );
}

/// Regression: settings with `temperature = nan` ran the whole evaluation,
/// then failed reading their own `result.json`.
#[test]
fn settings_with_a_nan_temperature_are_refused_before_any_work() {
    let t = Tiny::new();
    let text = std::fs::read_to_string(common::repo().join("settings/eval.toml")).unwrap();
    let bad = t.path("eval.toml");
    std::fs::write(&bad, text.replace("temperature = 1.0", "temperature = nan")).unwrap();
    let out = t.path("eval-out");
    let (code, _, err) = t.persona(&[
        "eval",
        t.model().to_str().unwrap(),
        "--settings",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(one_line_error(code, &err).contains("temperature"), "{err}");
    assert!(!out.join("answers.jsonl").exists());
}

/// `persona` with no arguments prints clap's usage and exits 2 (documented
/// in the README; clap's own message, not an `error:` line).
#[test]
fn no_arguments_print_the_usage_with_exit_code_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_persona"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: persona"));
}
