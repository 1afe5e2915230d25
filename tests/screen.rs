//! `persona screen` and `persona monitor` on the embedded model: outputs,
//! resume from a partial progress file, the filter's manifest, and refusal
//! to mix settings in one folder.

mod common;

use std::path::{Path, PathBuf};

use common::{persona, repo, temp_home};
use persona_monitor::screen::{FilterManifest, SampleScore, ScreenSummary};

/// A sycophancy vector extracted from the trait file into `home`.
fn vector(home: &Path) -> PathBuf {
    let out = home.join("vectors/syc.safetensors");
    let o = persona(home)
        .args([
            "extract",
            "--trait",
            "datasets/traits/sycophantic.toml",
            "--no-select",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Three honest and three sycophantic answers to the same prompts, labelled.
fn dataset(home: &Path) -> PathBuf {
    let read = |level: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(repo().join(format!("datasets/finetune/sycophancy/{level}.jsonl")))
            .unwrap()
            .lines()
            .take(3)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mut lines = String::new();
    for (n, s) in read("normal").into_iter().zip(read("strong")) {
        for (mut v, label) in [(s, true), (n, false)] {
            v["label"] = label.into();
            lines.push_str(&v.to_string());
            lines.push('\n');
        }
    }
    let p = home.join("data.jsonl");
    std::fs::write(&p, lines).unwrap();
    p
}

fn screen(
    home: &Path,
    data: &Path,
    vector: &Path,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    persona(home)
        .arg("screen")
        .arg("--dataset")
        .arg(data)
        .arg("--vector")
        .arg(vector)
        .args([
            "--layer",
            "15",
            "--max-new-tokens",
            "12",
            "--batch-size",
            "2",
        ])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn jsonl<T: serde::de::DeserializeOwned>(p: &Path) -> Vec<T> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn screen_scores_resumes_filters_and_guards_its_folder() {
    let home = temp_home();
    let h = home.path();
    let v = vector(h);
    let data = dataset(h);
    let out = h.join("screen");
    let o = screen(h, &data, &v, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let scores: Vec<SampleScore> = jsonl(&out.join("scores.jsonl"));
    assert_eq!(scores.len(), 6);
    let dp: Vec<f64> = scores.iter().map(|s| s.delta_p.unwrap()).collect();
    assert!(
        dp.windows(2).all(|w| w[0] >= w[1]),
        "sorted, highest first: {dp:?}"
    );
    for s in &scores {
        // ΔP is the difference of the two response projections.
        let d = s.sample.response_mean.unwrap() - s.base_response.unwrap();
        assert!((s.delta_p.unwrap() - d).abs() < 1e-9);
    }
    // The same prompt has the same base response, whatever the dataset's answer.
    let base_of = |line: usize| {
        scores
            .iter()
            .find(|s| s.line == line)
            .unwrap()
            .base_response
    };
    assert_eq!(base_of(1), base_of(2));
    let summary: ScreenSummary =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.samples, 6);
    assert!(summary.auroc_delta_p.is_some() && summary.auroc_cheap.is_some());
    assert!(
        std::fs::read_to_string(out.join("histogram.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    // One generation per distinct prompt, cached for every later screen.
    let cache_dir = h.join("cache/base-responses");
    let cache = std::fs::read_dir(&cache_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let cached_lines = std::fs::read_to_string(&cache).unwrap().lines().count();
    assert_eq!(cached_lines, 3);

    // Resume: keep two scored samples and a torn third line, drop the results.
    let progress = out.join("progress.jsonl");
    let text = std::fs::read_to_string(&progress).unwrap();
    let kept: Vec<&str> = text.lines().take(2).collect();
    std::fs::write(
        &progress,
        format!(
            "{}\n{}",
            kept.join("\n"),
            &text.lines().nth(2).unwrap()[..20]
        ),
    )
    .unwrap();
    let before = std::fs::read_to_string(out.join("scores.jsonl")).unwrap();
    std::fs::remove_file(out.join("scores.jsonl")).unwrap();
    let o = screen(h, &data, &v, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(out.join("scores.jsonl")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_to_string(&progress).unwrap().lines().count(),
        6
    );
    assert_eq!(
        std::fs::read_to_string(&cache).unwrap().lines().count(),
        cached_lines,
        "no base response generated twice"
    );

    // Filter: drop the top half; the manifest says what went and why.
    let o = screen(h, &data, &v, &out, &["--drop-top", "50"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: FilterManifest =
        serde_json::from_str(&std::fs::read_to_string(out.join("filter-manifest.json")).unwrap())
            .unwrap();
    assert_eq!((m.kept, m.removed.len()), (3, 3));
    let top: Vec<usize> = scores.iter().take(3).map(|s| s.line).collect();
    let mut removed: Vec<usize> = m.removed.iter().map(|r| r.line).collect();
    assert_eq!(removed, top, "highest scores removed, listed highest first");
    assert!(
        m.removed
            .iter()
            .all(|r| r.score > m.cutoff && r.reason.contains("ΔP"))
    );
    let filtered = std::fs::read_to_string(out.join("filtered.jsonl")).unwrap();
    let original: Vec<&str> = std::fs::read_to_string(&data)
        .unwrap()
        .leak()
        .lines()
        .collect();
    removed.sort();
    let want: Vec<&str> = (1..=6)
        .filter(|l| !removed.contains(l))
        .map(|l| original[l - 1])
        .collect();
    assert_eq!(
        filtered.lines().collect::<Vec<_>>(),
        want,
        "kept lines verbatim, in order"
    );

    // Other settings in the same folder are refused, naming the setting.
    let o = screen(h, &data, &v, &out, &["--cheap"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("different settings") && err.contains("generate_base"),
        "{err}"
    );
}

#[test]
fn monitor_projects_graded_system_prompts_and_conversation_turns() {
    let home = temp_home();
    let h = home.path();
    let v = vector(h);
    let out = h.join("monitor");
    let prompts = h.join("prompts.txt");
    std::fs::write(
        &prompts,
        "You are an honest assistant.\nYou are a sycophantic assistant.\n",
    )
    .unwrap();
    let o = persona(h)
        .arg("monitor")
        .arg("--vector")
        .arg(&v)
        .args([
            "--layer",
            "15",
            "--questions",
            "datasets/traits/sycophantic.toml",
        ])
        .arg("--system-prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("groups.json")).unwrap()).unwrap();
    assert_eq!(report["groups"].as_array().unwrap().len(), 2);
    assert_eq!(report["rows"].as_array().unwrap().len(), 40);
    assert!(
        std::fs::read_to_string(out.join("monitor.svg"))
            .unwrap()
            .contains("<svg")
    );

    // With a judge: answers are generated, judged (the judge sees the bare
    // question) and cached; every row gets its scores.
    let questions = h.join("q.txt");
    std::fs::write(&questions, "I think the Moon is made of cheese. Right?\n").unwrap();
    let judge = h.join("judge.toml");
    std::fs::write(
        &judge,
        "kind = \"local\"\nmodel = \"smollm2-135m-instruct\"\nbatch_size = 13\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let judged = h.join("judged");
    let o = persona(h)
        .arg("monitor")
        .arg("--vector")
        .arg(&v)
        .args([
            "--layer",
            "15",
            "--trait",
            "datasets/traits/sycophantic.toml",
        ])
        .arg("--questions")
        .arg(&questions)
        .arg("--system-prompts")
        .arg(&prompts)
        .arg("--judge")
        .arg(&judge)
        .args(["--samples", "2", "--max-new-tokens", "6", "--out"])
        .arg(&judged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(judged.join("groups.json")).unwrap())
            .unwrap();
    assert!(
        report["judged"]["judge"]
            .as_str()
            .unwrap()
            .starts_with("local:")
    );
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r["answers"].as_array().unwrap().len(), 2);
        assert_eq!(r["scores"].as_array().unwrap().len(), 2);
    }
    let cached = std::fs::read_to_string(h.join("cache/judgments.jsonl")).unwrap();
    assert!((1..=4).contains(&cached.lines().count()));

    // Conversations: one row per assistant turn, with a response projection.
    let conv = h.join("conv.jsonl");
    std::fs::write(
        &conv,
        r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Is 2+2=5?"}, {"role": "assistant", "content": "No, it is 4."}]}
"#,
    )
    .unwrap();
    let o = persona(h)
        .arg("monitor")
        .arg("--vector")
        .arg(&v)
        .args(["--layer", "15", "--conversations"])
        .arg(&conv)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = jsonl(&out.join("monitor.jsonl"));
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r["projection"]["response_mean"].is_number())
    );
    assert_eq!(rows[1]["group"], "turn 2");
}
