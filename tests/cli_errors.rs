//! Bad input to the CLI: one line naming the problem and the fix, exit code 2.

mod common;

use std::process::Command;

use persona_vectors::{
    VectorFile, VectorMeta,
    file::{FORMAT_VERSION, ROW_CONVENTION},
};

fn persona(args: &[&str]) -> (i32, String, String) {
    common::output(Command::new(env!("CARGO_BIN_EXE_persona")).args(args))
}

fn assert_one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{stderr}"
    );
}

#[test]
fn missing_model_file() {
    let (code, _, err) = persona(&["info", "/nonexistent/model.gguf"]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "/nonexistent/model.gguf");
}

#[test]
fn unknown_cache_name_names_the_fix() {
    let (code, _, err) = persona(&["info", "no-such-model"]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "just fetch-model");
}

#[test]
fn unknown_architecture() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["MistralForCausalLM"]}"#,
    )
    .unwrap();
    let (code, _, err) = persona(&["info", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "unsupported architecture `MistralForCausalLM`");
}

#[test]
fn corrupt_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    std::fs::write(&p, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let (code, _, err) = persona(&["info", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "not a valid GGUF file");
}

fn vector_file(dir: &std::path::Path, d_model: usize, n_layers: usize, sha: &str) -> String {
    let mut f = VectorFile::new(VectorMeta {
        format_version: FORMAT_VERSION,
        row_convention: ROW_CONVENTION.into(),
        model_name: "test".into(),
        model_sha256: sha.into(),
        d_model,
        n_layers,
        extra: serde_json::Value::Null,
    });
    f.variants.insert(
        persona_vectors::Variant::ResponseAvg,
        vec![0.0; (n_layers + 1) * d_model],
    );
    let p = dir.join("v.safetensors");
    f.save(&p).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn vector_of_the_wrong_width_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = vector_file(dir.path(), 32, 3, "x");
    let (code, _, err) = persona(&[
        "generate", "--prompt", "hi", "--steer", &v, "--layer", "2", "--coef", "1",
    ]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "belongs to another model");
}

#[test]
fn vector_from_another_model_and_row_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let v = vector_file(dir.path(), 576, 30, "0000");
    let (code, _, err) = persona(&[
        "generate", "--prompt", "hi", "--steer", &v, "--layer", "2", "--coef", "1",
    ]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "persona extract");

    let sha = persona_model::load_host(persona_model::DEFAULT_MODEL)
        .unwrap()
        .identity
        .sha256;
    let v = vector_file(dir.path(), 576, 30, &sha);
    let (code, _, err) = persona(&[
        "generate", "--prompt", "hi", "--steer", &v, "--layer", "31", "--coef", "-2",
    ]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "row 31 is out of range");
}

#[test]
fn generate_prints_the_greedy_reply() {
    let (code, out, err) = persona(&[
        "generate",
        "--system",
        "You are a helpful assistant.",
        "--prompt",
        "What is the capital of France? Answer in one word.",
        "--max-new-tokens",
        "10",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "The capital of France is Paris.");
}

/// A kernel family that does not exist, or that this CPU cannot run, is
/// refused when the model loads, before any work.
#[test]
fn unknown_or_unsupported_cpu_kernels_are_refused() {
    let run = |family: &str| {
        common::output(
            Command::new(env!("CARGO_BIN_EXE_persona"))
                .env("PERSONA_CPU_KERNELS", family)
                .args(["generate", "--prompt", "Hi", "--max-new-tokens", "1"]),
        )
    };
    let (code, _, err) = run("avx9");
    assert_eq!(code, 2);
    assert_one_line_error(&err, "PERSONA_CPU_KERNELS=avx9 is not a kernel family");
    for family in persona_model::CpuKernels::ALL {
        let (code, _, err) = run(family.name());
        if family.supported() {
            assert_eq!(code, 0, "{family:?}: {err}");
        } else {
            assert_eq!(code, 2);
            assert_one_line_error(&err, "this CPU cannot run");
        }
    }
}

/// `persona plan` on a synthetic shape: the exact parts add up, and a bad
/// spec or a missing size is one line.
#[test]
fn plan_prints_the_parts_and_refuses_bad_input() {
    let shape = "synthetic:benches/shapes/qwen2.5-0.5b-instruct.json";
    let (code, out, err) = persona(&[
        "plan", "--model", shape, "--batch", "4", "--seq", "256", "--rank", "16",
    ]);
    assert_eq!(code, 0, "{err}");
    // Qwen2.5-0.5B: 494 M checkpoint values + the tied head's 136 M copy, f32.
    assert!(
        out.contains("weights                         2.52 GB"),
        "{out}"
    );
    assert!(out.contains("activations of one step"), "{out}");
    assert!(out.contains("KV cache"), "{out}");
    let (code, _, err) = persona(&[
        "plan",
        "--model",
        "synthetic:/no/config.json",
        "--batch",
        "1",
        "--seq",
        "8",
        "--rank",
        "1",
    ]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "is not a config.json file");
    let (code, _, err) = persona(&[
        "plan", "--model", shape, "--batch", "0", "--seq", "8", "--rank", "1",
    ]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "--batch and --rank must be at least 1");
    let (code, _, err) = persona(&[
        "plan",
        "--model",
        shape,
        "--batch",
        "1",
        "--seq",
        "99999999999",
        "--rank",
        "1",
    ]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "longer than the model's context of 32768 tokens");
    let (code, _, err) = persona(&[
        "plan",
        "--model",
        shape,
        "--batch",
        "18446744073709551615",
        "--seq",
        "8",
        "--rank",
        "1",
    ]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "--batch at most");
}

#[test]
fn judge_audit_refuses_a_bad_ratings_file_before_loading_a_judge() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ratings.jsonl");
    std::fs::write(
        &p,
        "{\"question\":\"q\",\"answer\":\"a\",\"trait\":50,\"coherence\":50}\n{\"question\":\"q\",\"answer\":\"a\",\"trait\":150,\"coherence\":50}\n",
    )
    .unwrap();
    let (code, _, err) = persona(&[
        "judge",
        "audit",
        "--trait",
        "datasets/traits/sycophantic.toml",
        "--ratings",
        p.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "line 2: `trait` must lie in 0..=100");
}
