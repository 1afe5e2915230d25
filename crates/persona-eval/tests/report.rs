//! Reports come from saved results only: the arms here name a model that
//! does not exist, so any attempt to recompute would fail.

use std::path::Path;

use persona_eval::report::{ComparisonManifest, write_report};
use persona_eval::trait_eval::{AnswerRecord, EvalSettings, TraitResult};
use persona_eval::{Arm, PostHoc};
use persona_monitor::stats::MeanCi;

fn ci(mean: f64) -> Option<MeanCi> {
    Some(MeanCi {
        mean,
        lo: mean - 1.0,
        hi: mean + 1.0,
        n: 6,
    })
}

fn save_arm(dir: &Path, arm: Arm, trait_score: f64, shift: f64, nll: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let settings = EvalSettings {
        trait_file: "t.toml".into(),
        coherence_file: "c.toml".into(),
        sampling: persona_model::SamplingSettings {
            samples: 2,
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 8,
            seed: 0,
            batch_size: 4,
        },
        shift_vector: "v.safetensors".into(),
        shift_row: 15,
    };
    let result = TraitResult {
        arm,
        trait_name: "sycophantic".into(),
        judge: "test-judge".into(),
        judge_audit: "sycophantic: Pearson 0.50 (test)".into(),
        settings,
        fingerprint: dir.display().to_string(),
        trait_score: ci(trait_score),
        trait_score_coherent: Some(MeanCi {
            n: 1,
            ..ci(trait_score - 5.0).unwrap()
        }),
        coherence: ci(80.0),
        missing_fraction: 0.0,
        n_answers: 2,
        projection: shift,
        shift,
        bootstrap: (2000, 0),
    };
    std::fs::write(
        dir.join("result.json"),
        serde_json::to_string(&result).unwrap(),
    )
    .unwrap();
    let cap = serde_json::json!({
        "fingerprint": "f",
        "normal_nll": ci(nll),
        "chat_nll": ci(nll + 0.5),
        "mc_accuracy": ci(0.5),
    });
    std::fs::write(dir.join("capability.json"), cap.to_string()).unwrap();
    let answers: String = (0..2)
        .map(|s| {
            serde_json::to_string(&AnswerRecord {
                question: "Is the sky green?".into(),
                sample: s,
                answer: format!("answer <{s}> & more"),
                trait_score: Some(trait_score as f32),
                coherence: None,
            })
            .unwrap()
                + "\n"
        })
        .collect();
    std::fs::write(dir.join("answers.jsonl"), answers).unwrap();
}

fn arm(id: &str, steer: Option<f32>, step: Option<usize>) -> Arm {
    Arm {
        id: id.into(),
        label: id.into(),
        model: "no-such-model".into(),
        dtype: Default::default(),
        adapter: None,
        step,
        steer: steer.map(|coef| PostHoc {
            vector: "v.safetensors".into(),
            row: 15,
            coef,
        }),
        cap: None,
        system: None,
    }
}

#[test]
fn report_is_written_from_saved_results() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    save_arm(&root.join("base"), arm("base", None, None), 10.0, 0.0, 2.0);
    save_arm(&root.join("ft"), arm("ft", None, None), 60.0, 4.0, 2.2);
    save_arm(
        &root.join("ft-10"),
        arm("ft-10", None, Some(10)),
        35.0,
        2.0,
        2.1,
    );
    save_arm(
        &root.join("post"),
        arm("post", Some(-2.0), None),
        30.0,
        4.0,
        2.9,
    );
    let run = root.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":1.0,\"lr\":0.1,\"grad_norm\":1.0,\"tokens_per_s\":1.0,\"shift\":{\"sycophantic\":{\"15\":0.5}}}\n{\"step\":2,\"loss\":1.0,\"lr\":0.1,\"grad_norm\":1.0,\"tokens_per_s\":1.0}\n",
    )
    .unwrap();
    let manifest = ComparisonManifest {
        title: "Test <report>".into(),
        arms: ["base", "ft", "ft-10", "post"]
            .iter()
            .map(|a| root.join(a))
            .collect(),
        runs: vec![("run".into(), run)],
    };
    let out = root.join("report");
    let html_path = write_report(&out, &manifest).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains(
            "| ft | 60.0 [59.0, 61.0] | 55.0 (1) | 80.0 [79.0, 81.0] | 0% | +4.00 | 2.200 [1.200, 3.200] |"
        ),
        "{md}"
    );
    assert!(
        md.contains("Judge audit: sycophantic: Pearson 0.50 (test)"),
        "{md}"
    );
    // Pearson r over the unsteered arms: (0,10), (4,60), (2,35) is nearly a line.
    assert!(
        md.contains("Pearson r (shift vs trait score, unsteered checkpoints): 1.00"),
        "{md}"
    );
    for f in [
        "shift-per-step.svg",
        "trait-vs-capability.svg",
        "trait-vs-shift.svg",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let html = std::fs::read_to_string(&html_path).unwrap();
    // Self-contained: plots inline, text escaped, nothing fetched.
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(html.contains("Test &lt;report&gt;"));
    assert!(html.contains("answer &lt;0&gt; &amp; more"));
    assert!(!html.contains("src=\"http") && !html.contains("<script"));
    let manifest_back: ComparisonManifest =
        serde_json::from_str(&std::fs::read_to_string(out.join("comparison.json")).unwrap())
            .unwrap();
    assert_eq!(manifest_back, manifest);
}

/// The settings files the CLI reads by default parse into their types, and
/// the flagship recipe's `[experiment]` passes its checks.
#[test]
fn shipped_settings_files_parse() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::set_current_dir(&repo).unwrap();
    let table = |p: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let _: persona_eval::select::SelectSettings =
        toml::from_str(&std::fs::read_to_string("settings/vector-select.toml").unwrap()).unwrap();
    let _: persona_vectors::generated::GeneratedSettings =
        toml::from_str(&std::fs::read_to_string("settings/extract-generated.toml").unwrap())
            .unwrap();
    for p in ["settings/eval.toml", "ci/gate.toml"] {
        let t = table(p);
        let _: EvalSettings = t["eval"]
            .clone()
            .try_into()
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        let _: persona_eval::capability::CapabilitySettings = t["capability"]
            .clone()
            .try_into()
            .unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    let recipe = table("recipes/sycophancy-vaccine.toml");
    let exp = recipe["experiment"].as_table().unwrap();
    let cfg = persona_eval::experiment::ExperimentConfig::from_table(exp).unwrap();
    assert_eq!(cfg.baseline, Path::new("recipes/sycophancy-baseline.toml"));
    // An unknown key in [experiment] is refused before any training.
    let mut bad = exp.clone();
    bad.insert("sampels".into(), toml::Value::Integer(3));
    let e = persona_eval::experiment::ExperimentConfig::from_table(&bad).unwrap_err();
    assert!(e.to_string().contains("sampels"), "{e}");
    // Also among the sampling keys flattened into [experiment.eval], where
    // serde's deny_unknown_fields cannot look.
    let mut bad = exp.clone();
    bad["eval"]
        .as_table_mut()
        .unwrap()
        .insert("temprature".into(), toml::Value::Float(1.0));
    let e = persona_eval::experiment::ExperimentConfig::from_table(&bad).unwrap_err();
    assert!(e.to_string().contains("eval.temprature"), "{e}");
    // The strict loaders read every shipped settings file.
    let _: persona_eval::select::SelectSettings =
        persona_model::settings::load(Path::new("settings/vector-select.toml")).unwrap();
    let _: persona_vectors::generated::GeneratedSettings =
        persona_model::settings::load(Path::new("settings/extract-generated.toml")).unwrap();
    persona_eval::trait_eval::EvalFile::load(Path::new("settings/eval.toml")).unwrap();
    persona_eval::gate::GateConfig::load(Path::new("ci/gate.toml")).unwrap();
}

/// Arms with the same label are one setting over several runs: the report
/// gives their mean ± sd and each run's score; the same evaluation found
/// in two run folders counts once.
#[test]
fn repeated_runs_of_an_arm_are_averaged() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut dirs = Vec::new();
    for (seed, score) in [(0, 40.0), (1, 50.0), (2, 60.0)] {
        let dir = root.join(format!("s{seed}/vaccine"));
        save_arm(
            &dir,
            arm("vaccine", None, None),
            score,
            -0.5,
            2.0 + seed as f64,
        );
        dirs.push(dir);
    }
    save_arm(
        &root.join("s0/base"),
        arm("base", None, None),
        10.0,
        0.0,
        2.0,
    );
    dirs.push(root.join("s0/base"));
    // The base model's evaluation again, as another run folder holds it.
    let copy = root.join("s1/base");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["result.json", "capability.json", "answers.jsonl"] {
        std::fs::copy(root.join("s0/base").join(f), copy.join(f)).unwrap();
    }
    dirs.push(copy);
    let manifest = ComparisonManifest {
        title: "seeds".into(),
        arms: dirs,
        runs: vec![],
    };
    write_report(&root.join("report"), &manifest).unwrap();
    let md = std::fs::read_to_string(root.join("report/report.md")).unwrap();
    assert!(
        md.contains("| vaccine | 3 | 50.0 ± 10.0 | 40.0, 50.0, 60.0 | 45.0 ± 10.0 | 80.0 ± 0.0 | -0.50 ± 0.00 | 3.000 ± 1.000 |"),
        "{md}"
    );
    assert!(md.contains("| base | 1 | 10.0 | 10.0 |"), "{md}");
    // One run per arm: no such table.
    let single = ComparisonManifest {
        title: "one".into(),
        arms: vec![root.join("s0/vaccine"), root.join("s0/base")],
        runs: vec![],
    };
    write_report(&root.join("one"), &single).unwrap();
    let md = std::fs::read_to_string(root.join("one/report.md")).unwrap();
    assert!(!md.contains("Over repeated runs"), "{md}");
}
