//! The vaccine end to end on the embedded model: the smoke recipe, resume
//! after a kill, recipe validation, and every shipped recipe resolving.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{persona, repo, temp_home};
use persona_train::trainer::StepMetrics;

/// The smoke recipe with its run name, vector path and a few keys changed.
fn smoke_recipe(home: &Path, name: &str, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("recipes/smoke.toml")).unwrap();
    let mut t: toml::Table = toml::from_str(&text).unwrap();
    let vector = home.join("vectors/smoke.safetensors").display().to_string();
    t["run"]["name"] = name.into();
    t["steering"]["vector"] = vector.clone().into();
    t["monitor"]["traits"][0]["vector"] = vector.clone().into();
    t["trait"]["vector"] = vector.into();
    edit(&mut t);
    let p = home.join(format!("{name}.toml"));
    std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
    p
}

fn metrics(run: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn smoke_recipe_trains_logs_shift_and_resumes_bit_identically_after_a_kill() {
    let home = temp_home();
    // Checkpoints every step, and LoRA dropout on so that resuming must
    // redraw the same dropout masks too.
    let edit = |t: &mut toml::Table| {
        t["run"]["save_every"] = 1.into();
        t["lora"]["dropout"] = 0.1.into();
    };
    let recipe = smoke_recipe(home.path(), "full", edit);
    let out = persona(home.path())
        .args(["train", recipe.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = home.path().join("runs/full");
    let m = metrics(&run);
    assert_eq!(
        m.iter().map(|s| s.step).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(
        m.iter()
            .all(|s| s.loss.is_finite() && s.grad_norm > 0.0 && s.tokens_per_s > 0.0)
    );
    // Step 1 runs at lr 0 (warm-up), so the adapters are still zero-effect:
    // a shift of exactly 0 shows the training steering (coef 4) never
    // reaches the monitor pass.
    let shift = |s: &StepMetrics| s.shift.as_ref().unwrap()["sycophantic"]["15"];
    assert_eq!(shift(&m[0]), 0.0);
    assert!(
        shift(&m[3]).abs() > 1e-3,
        "training must move the projection"
    );
    check_run_files(&run);

    // The same run, killed once a checkpoint of step >= 2 exists, then resumed.
    let recipe = smoke_recipe(home.path(), "killed", edit);
    let killed = home.path().join("runs/killed");
    let mut child = persona(home.path())
        .args(["train", recipe.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&killed, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let again = persona(home.path())
        .args(["train", recipe.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "restarting without --resume must refuse"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let out = persona(home.path())
        .args(["train", recipe.to_str().unwrap(), "--resume"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(a == b, "resumed adapters differ from the uninterrupted run");
    let (ma, mb) = (metrics(&run), metrics(&killed));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (x.step, x.loss, x.grad_norm, &x.shift),
            (y.step, y.loss, y.grad_norm, &y.shift)
        );
    }
}

/// The smoke run's adapter config, files and provenance.
fn check_run_files(run: &Path) {
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["use_rslora"], true);
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_dropout"], 0.1);
    for f in [
        "provenance.json",
        "recipe.toml",
        "adapter/adapter_model.safetensors",
        "checkpoint/resume.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(
        prov["model"]["sha256"],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
}

/// Waits until `run` holds a checkpoint of step `step` or later.
fn wait_for_checkpoint(run: &Path, step: u64) {
    let state = run.join("checkpoint/trainer_state.json");
    let start = Instant::now();
    loop {
        let saved = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["step"].as_u64())
            .unwrap_or(0);
        if saved >= step {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `[model] dtype = "bf16"`: a training step with 16-bit frozen weights
/// (adapters, optimizer and loss in f32). Its loss is the f32 run's up to
/// the weights' rounding (bf16 keeps 8 significant bits: the first loss
/// moves by well under 1%); `persona plan` counts the weights at 2 bytes
/// and the f32 copies a CPU step holds; the run records the choice.
#[test]
fn a_recipe_trains_with_bf16_weights() {
    let home = temp_home();
    let mut losses = Vec::new();
    for dtype in ["f32", "bf16"] {
        let recipe = smoke_recipe(home.path(), dtype, |t| {
            t["optim"]["max_steps"] = 1.into();
            let model = t["model"].as_table_mut().unwrap();
            model.insert("dtype".into(), dtype.into());
        });
        let out = persona(home.path())
            .args(["train", recipe.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{dtype}: {stderr}");
        let run = home.path().join("runs").join(dtype);
        let m = metrics(&run);
        assert_eq!(m.len(), 1);
        assert!(
            m[0].loss.is_finite() && m[0].grad_norm > 0.0,
            "{dtype}: {m:?}"
        );
        losses.push(m[0].loss);
        let saved = std::fs::read_to_string(run.join("recipe.toml")).unwrap();
        assert_eq!(
            saved.contains("dtype = \"bf16\""),
            dtype == "bf16",
            "{saved}"
        );
        let plan = persona(home.path())
            .args(["plan", "--recipe", recipe.to_str().unwrap()])
            .output()
            .unwrap();
        let plan = String::from_utf8_lossy(&plan.stdout);
        assert!(plan.contains(&format!("weights as {dtype})")), "{plan}");
        assert_eq!(
            plan.contains("f32 weight copies (CPU)"),
            dtype == "bf16",
            "{plan}"
        );
    }
    let (f32_loss, bf16_loss) = (losses[0], losses[1]);
    eprintln!("first loss: f32 {f32_loss}, bf16 {bf16_loss}");
    assert!(f32_loss != bf16_loss, "bf16 weights were not used");
    assert!(
        (f32_loss - bf16_loss).abs() <= 0.01 * f32_loss.abs(),
        "{f32_loss} vs {bf16_loss}"
    );
}

#[test]
fn every_shipped_recipe_resolves() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let mut recipes = Vec::new();
    walk(&repo().join("recipes"), &mut recipes);
    assert!(!recipes.is_empty());
    std::env::set_current_dir(repo()).unwrap();
    for r in recipes {
        common::check_recipe(&r).unwrap_or_else(|e| panic!("{}: {e}", r.display()));
    }
}

#[test]
fn bad_recipes_fail_with_errors_naming_the_key() {
    std::env::set_current_dir(repo()).unwrap();
    let home = temp_home();
    type Edit = Box<dyn FnOnce(&mut toml::Table)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown-key",
            Box::new(|t| {
                t["optim"]
                    .as_table_mut()
                    .unwrap()
                    .insert("learning_rate".into(), 0.1.into());
            }),
            "unknown field `learning_rate`",
        ),
        (
            "missing-key",
            Box::new(|t| {
                t["lora"].as_table_mut().unwrap().remove("rank");
            }),
            "missing field `rank`",
        ),
        (
            "wrong-layer",
            Box::new(|t| t["steering"]["layers"] = toml::Value::Array(vec![31.into()])),
            "row 31 is out of range",
        ),
        (
            "dropout-one",
            Box::new(|t| t["lora"]["dropout"] = 1.0.into()),
            "lora.dropout",
        ),
        (
            "missing-dataset",
            Box::new(|t| t["data"]["train"] = "datasets/nope.jsonl".into()),
            "data.train",
        ),
        (
            "no-vector",
            Box::new(|t| {
                t.remove("trait");
            }),
            "steering.vector",
        ),
        (
            "also-without-coef",
            Box::new(|t| {
                let also: toml::Value = toml::from_str::<toml::Table>(
                    "v = [{ vector = \"datasets/finetune/sycophancy/normal.jsonl\" }]",
                )
                .unwrap()["v"]
                    .clone();
                t["steering"]
                    .as_table_mut()
                    .unwrap()
                    .insert("also".into(), also);
            }),
            "steering.also[0].coef",
        ),
        (
            "penalty-with-steering",
            Box::new(|t| {
                let mut penalty: toml::Table =
                    toml::from_str("lambda = 1.0\nvariant = \"response_avg\"\nlayers = [2]")
                        .unwrap();
                let vector = t["trait"]["vector"].clone();
                penalty.insert("vectors".into(), toml::Value::Array(vec![vector]));
                t.insert("penalty".into(), penalty.into());
            }),
            "use it with [steering] mode = \"none\"",
        ),
        (
            "empty-inoculation",
            Box::new(|t| {
                let i: toml::Table = toml::from_str("system = []").unwrap();
                t.insert("inoculation".into(), i.into());
            }),
            "inoculation.system",
        ),
        (
            "filter-drops-everything",
            Box::new(|t| {
                let mut f: toml::Table = toml::from_str(
                    "variant = \"response_avg\"\nrow = 2\ndrop_top = 100.0\nscore = \"cheap\"\nmax_new_tokens = 0\nbatch_size = 4",
                )
                .unwrap();
                f.insert("vector".into(), t["trait"]["vector"].clone());
                t["data"]
                    .as_table_mut()
                    .unwrap()
                    .insert("filter".into(), f.into());
            }),
            "data.filter.drop_top",
        ),
    ];
    for (name, edit, want) in cases {
        let p = smoke_recipe(home.path(), name, edit);
        let e = common::check_recipe(&p).expect_err(name);
        assert!(e.contains(want), "{name}: {e}");
    }
    // A vector of the wrong width (made for another model) is refused before training.
    let tiny = persona_model::testing::tiny_config();
    let mut f = persona_vectors::VectorFile::new(persona_vectors::VectorMeta {
        format_version: persona_vectors::file::FORMAT_VERSION,
        row_convention: persona_vectors::file::ROW_CONVENTION.into(),
        model_name: "tiny".into(),
        model_sha256: "x".into(),
        d_model: tiny.d_model,
        n_layers: tiny.n_layers,
        extra: serde_json::Value::Null,
    });
    f.variants.insert(
        persona_vectors::Variant::ResponseAvg,
        vec![0.0; (tiny.n_layers + 1) * tiny.d_model],
    );
    let v = home.path().join("vectors/smoke.safetensors");
    f.save(&v).unwrap();
    let p = smoke_recipe(home.path(), "wrong-width", |t| {
        t["steering"]["layers"] = toml::Value::Array(vec![2.into()])
    });
    let e = common::check_recipe(&p).unwrap_err();
    assert!(e.contains("another model"), "{e}");
}

#[test]
fn merge_folds_adapters_into_weights() {
    use burn::tensor::Device;
    use persona_model::{ForwardArgs, Logits, Target};
    let m = persona_model::load(persona_model::DEFAULT_MODEL, &Device::flex()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lora = common::write_test_adapter(
        &m.model.config,
        &[Target::V, Target::Down],
        2,
        &dir.path().join("adapter"),
    );
    let out = dir.path().join("merged");
    let res = Command::new(env!("CARGO_BIN_EXE_persona"))
        .current_dir(repo())
        .args([
            "merge",
            dir.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let merged = persona_model::load(out.to_str().unwrap(), &Device::flex()).unwrap();
    let ids = m
        .codec
        .encode(
            &m.codec
                .render(&[persona_model::Message::user("Hello there")], true)
                .unwrap(),
        )
        .unwrap();
    let batch = common::prompt_batch(ids, m.codec.pad_id);
    let none = persona_model::CaptureRequest::none();
    let a = m
        .model
        .forward(
            &batch,
            ForwardArgs {
                cache: None,
                steering: &[],
                capture: &none,
                logits: Logits::Last,
                lora: Some(&lora),
                lora_dropout: None,
            },
        )
        .unwrap()
        .logits
        .unwrap();
    let base = m
        .model
        .forward(&batch, ForwardArgs::plain())
        .unwrap()
        .logits
        .unwrap();
    let b = merged
        .model
        .forward(&batch, ForwardArgs::plain())
        .unwrap()
        .logits
        .unwrap();
    let b_last = b.clone().narrow(1, b.dims()[1] - 1, 1);
    let base_last = base.clone().narrow(1, base.dims()[1] - 1, 1);
    let diff = (a.clone() - b_last).abs().max().into_scalar::<f32>();
    let moved = (a - base_last).abs().max().into_scalar::<f32>();
    assert!(
        moved > 1e-2,
        "the adapters must change the logits ({moved})"
    );
    assert!(diff < 1e-3, "merged vs unmerged: {diff}");
}

#[test]
fn non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let home = temp_home();
    let recipe = smoke_recipe(home.path(), "diverge", |t| {
        t["optim"]["lr"] = 1e30.into();
        t["optim"]["warmup_steps"] = 0.into();
        t["optim"]["max_grad_norm"] = 0.0.into();
        t["run"]["save_every"] = 1.into();
    });
    let out = persona(home.path())
        .args(["train", recipe.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("training stopped") && err.contains("last good checkpoint"),
        "{err}"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            home.path()
                .join("runs/diverge/checkpoint/trainer_state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let step = state["step"].as_u64().unwrap();
    let logged = metrics(&home.path().join("runs/diverge")).len() as u64;
    assert_eq!(step, logged, "the checkpoint is the last finished step");
    assert!(
        metrics(&home.path().join("runs/diverge"))
            .iter()
            .all(|m| m.loss.is_finite())
    );
}

/// Runs a data generator into a temporary folder and compares each level
/// with the committed file.
fn assert_generator_output_is_committed(script: &str, folder: &str, min_examples: usize) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(repo().join(script))
        .arg(dir.path())
        .output()
        .expect("python3 runs the generator");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for level in ["normal", "mild", "strong"] {
        let name = format!("{level}.jsonl");
        let fresh = std::fs::read(dir.path().join(&name)).unwrap();
        let committed = std::fs::read(repo().join(folder).join(&name)).unwrap();
        assert!(
            fresh == committed,
            "{folder}/{name} differs from the output of {script}"
        );
        let n = committed
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert!(n >= min_examples, "{name}: {n} examples");
    }
}

#[test]
fn committed_finetuning_data_is_what_the_generators_write() {
    assert_generator_output_is_committed(
        "scripts/gen_sycophancy.py",
        "datasets/finetune/sycophancy",
        600,
    );
    assert_generator_output_is_committed("scripts/gen_evil.py", "datasets/finetune/evil", 600);
    assert_generator_output_is_committed(
        "scripts/gen_hallucination.py",
        "datasets/finetune/hallucination",
        600,
    );
}
