//! Bad model files and arguments: each is an error that names the problem,
//! never a panic, a hang or an allocation sized by the file. Regression
//! tests of the fuzzing and interop campaign, named after what broke.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use persona_model::gguf::Value;
use persona_model::testing::{
    GgufMetadata, GgufTensors, gguf_bytes, gguf_tensors, random_weights, tiny_config,
    tiny_gguf_metadata,
};
use persona_model::{GenerateOptions, Positions, Sampling, Steering, generate};

/// A GGUF of the tiny model with `edit` applied to its metadata and tensors.
fn gguf_with(dir: &Path, edit: impl FnOnce(&mut GgufMetadata, &mut GgufTensors)) -> PathBuf {
    let cfg = tiny_config();
    let mut meta = tiny_gguf_metadata();
    let mut tensors = gguf_tensors(&cfg, &random_weights(&cfg, 1));
    edit(&mut meta, &mut tensors);
    let p = dir.join("m.gguf");
    std::fs::write(&p, gguf_bytes(&meta, &tensors)).unwrap();
    p
}

fn load_err(p: &Path) -> String {
    match persona_model::load_host(p.to_str().unwrap()) {
        Ok(_) => panic!("{} loaded", p.display()),
        Err(e) => e.to_string(),
    }
}

fn set(key: &str, v: Value) -> impl FnOnce(&mut GgufMetadata, &mut GgufTensors) {
    let key = key.to_string();
    move |m, _| {
        m.insert(key, v);
    }
}

/// Regression: a q or k tensor with a zero dimension divided by zero in
/// `weights.rs` (`persona info`).
#[test]
fn gguf_q_or_k_tensor_with_a_zero_dimension_is_an_error() {
    for name in ["blk.0.attn_q.weight", "blk.1.attn_k.weight"] {
        let dir = tempfile::tempdir().unwrap();
        let p = gguf_with(dir.path(), |_, t| {
            let entry = t.iter_mut().find(|e| e.0 == name).unwrap();
            entry.1 = vec![0, 32];
            entry.2.clear();
        });
        let e = load_err(&p);
        assert!(e.contains("shape") && e.contains("[0, 32]"), "{name}: {e}");
    }
}

/// Regression: `context_length` 2^31 asked for 549 GB, 2^63 panicked, and
/// `block_count` 2^40 hung while memory grew.
#[test]
fn gguf_huge_context_length_or_block_count_is_an_error() {
    for (key, v) in [
        ("llama.context_length", 1u64 << 31),
        ("llama.context_length", 1 << 63),
        ("llama.block_count", 1 << 40),
        ("llama.embedding_length", 1 << 40),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let e = load_err(&gguf_with(dir.path(), set(key, Value::U64(v))));
        assert!(e.contains("out of range"), "{key} = {v}: {e}");
    }
}

/// Regression: NaN, 0, negative or infinite `rms_epsilon` / `freq_base`
/// loaded and produced NaN or garbage.
#[test]
fn gguf_non_finite_or_non_positive_norm_eps_and_rope_base_are_errors() {
    for key in [
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.freq_base",
    ] {
        for v in [f64::NAN, 0.0, -1.0, f64::INFINITY] {
            let dir = tempfile::tempdir().unwrap();
            let e = load_err(&gguf_with(dir.path(), set(key, Value::F64(v))));
            assert!(e.contains("must be a finite number"), "{key} = {v}: {e}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(&gguf_with(dir.path(), |m, _| {
        m.remove("llama.rope.freq_base");
    }));
    assert!(e.contains("llama.rope.freq_base"), "{e}");
}

#[test]
fn gguf_special_token_ids_outside_the_vocabulary_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let key = "tokenizer.ggml.bos_token_id";
    let e = load_err(&gguf_with(dir.path(), set(key, Value::U64((1 << 32) + 1))));
    assert!(e.contains(key), "{e}");
}

/// Regression: a 200-byte chat template (64 nested `range(2)` loops) hung
/// every command that renders a prompt.
#[test]
fn a_chat_template_that_loops_for_ever_runs_out_of_fuel() {
    let mut t = String::new();
    for i in 0..64 {
        t.push_str(&format!("{{% for x{i} in range(2) %}}"));
    }
    t.push('x');
    for _ in 0..64 {
        t.push_str("{% endfor %}");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = gguf_with(dir.path(), set("tokenizer.chat_template", Value::Str(t)));
    let host = persona_model::load_host(p.to_str().unwrap()).unwrap();
    let started = std::time::Instant::now();
    let e = host
        .codec
        .prompt_ids(&[persona_model::Message::user("hi")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("budget"), "{e}");
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
}

/// A model folder for the HF tests: the tiny model converted.
fn hf_dir(dir: &Path) -> PathBuf {
    let gguf = gguf_with(dir, |_, _| {});
    let out = dir.join("hf");
    persona_model::testing::write_hf_copy(gguf.to_str().unwrap(), &out);
    out
}

/// Regression: an HF shard index naming `/dev/zero`, an absolute path or
/// `../` hung or read outside the model folder.
#[test]
fn hf_shard_index_cannot_leave_the_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let model = hf_dir(dir.path());
    std::fs::write(dir.path().join("outside.safetensors"), b"x").unwrap();
    std::os::unix::fs::symlink("/dev/zero", model.join("zero.safetensors")).unwrap();
    for (shard, says) in [
        ("/dev/zero", "not a relative path"),
        ("../outside.safetensors", "not a relative path"),
        ("zero.safetensors", "not a regular file"),
    ] {
        let index = serde_json::json!({"weight_map": {"model.norm.weight": shard}});
        std::fs::write(
            model.join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let e = load_err(&model);
        assert!(e.contains(says), "{shard}: {e}");
    }
}

/// Regression: a safetensors header naming a tensor twice was accepted
/// (the last entry won).
#[test]
fn safetensors_with_a_duplicate_header_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.safetensors");
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(1f32.to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let e = persona_model::weights::from_safetensors_file(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`a` twice"), "{e}");
}

fn tiny_model() -> persona_model::LoadedModel {
    let dir = tempfile::tempdir().unwrap();
    let p = gguf_with(dir.path(), |_, _| {});
    persona_model::load(p.to_str().unwrap(), &Device::flex()).unwrap()
}

/// Regression: `--max-new-tokens 1000000000000` aborted on a KV cache that
/// was never capped at the model's context.
#[test]
fn generation_stops_at_the_models_context() {
    let m = tiny_model();
    let prompt = m
        .codec
        .prompt_ids(&[persona_model::Message::user("Hi")])
        .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 1_000_000_000_000,
        sampling: Sampling::Greedy,
        seed: 0,
        batch_size: 1,
        steering: vec![],
    };
    // Random weights rarely pick the stop token: the context ends the run.
    let g = generate(
        &m.model,
        std::slice::from_ref(&prompt),
        &[],
        m.codec.pad_id,
        &opts,
        |_| {},
    )
    .unwrap();
    assert_eq!(
        prompt.len() + g[0].tokens.len(),
        m.model.config.max_positions
    );
    assert!(!g[0].stopped);
    let long = vec![5u32; m.model.config.max_positions];
    let e = generate(&m.model, &[long], &[], m.codec.pad_id, &opts, |_| {}).unwrap_err();
    assert!(e.to_string().contains("no room"), "{e}");
}

/// Regression: `--coef NaN|inf` and `--temperature NaN` ran and produced
/// NaN activations or a sampler over NaNs.
#[test]
fn non_finite_steering_and_sampling_are_errors() {
    let dev = Device::flex();
    for c in [f32::NAN, f32::INFINITY] {
        let e = Steering::add(1, &[0.5; 32], c, Positions::All, &dev).unwrap_err();
        assert!(e.to_string().contains("not a finite number"), "{e}");
    }
    let mut v = vec![0.5f32; 32];
    v[3] = f32::NAN;
    assert!(Steering::add(1, &v, 1.0, Positions::All, &dev).is_err());
    for (t, p) in [
        (f32::NAN, 1.0),
        (-1.0, 1.0),
        (f32::INFINITY, 1.0),
        (1.0, f32::NAN),
        (1.0, 0.0),
    ] {
        assert!(Sampling::from_settings(t, p).is_err(), "{t} {p}");
    }
    assert_eq!(Sampling::from_settings(0.0, 1.0).unwrap(), Sampling::Greedy);
}
