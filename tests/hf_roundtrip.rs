//! `persona convert` writes the embedded GGUF model as an HF directory; loading
//! that directory back must give identical logits, tokens and prompts. This
//! is also how the HF (safetensors) loader is tested without a download.

mod common;

use burn::tensor::Device;
use persona_model::{Batch, ForwardArgs, Message, PadSide, Sequence, load, load_host};

#[test]
fn gguf_to_hf_directory_round_trip_is_exact() {
    let gguf = common::smollm();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-hf");
    persona_model::testing::write_hf_copy(persona_model::DEFAULT_MODEL, &out);
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let hf = load(out.to_str().unwrap(), &Device::flex()).unwrap();
    assert_eq!(hf.model.config, gguf.model.config);

    let messages = [
        Message::system("Be brief."),
        Message::user("Name 3 colours, with numbers 1-3."),
    ];
    let text = gguf.codec.render(&messages, true).unwrap();
    assert_eq!(hf.codec.render(&messages, true).unwrap(), text);
    let ids = gguf.codec.encode(&text).unwrap();
    assert_eq!(hf.codec.encode(&text).unwrap(), ids);
    assert_eq!(hf.codec.stop_ids, gguf.codec.stop_ids);

    let batch = common::prompt_batch(ids, gguf.codec.pad_id);
    let a = gguf
        .model
        .forward(&batch, ForwardArgs::plain())
        .unwrap()
        .logits
        .unwrap();
    let b = hf
        .model
        .forward(&batch, ForwardArgs::plain())
        .unwrap()
        .logits
        .unwrap();
    assert_eq!(
        a.into_data().try_into_vec::<f32>().unwrap(),
        b.into_data().try_into_vec::<f32>().unwrap()
    );
}

#[test]
fn hf_loading_is_strict_about_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let mut host = load_host(persona_model::DEFAULT_MODEL).unwrap();
    host.weights
        .remove("model.layers.3.self_attn.k_proj.weight");
    host.write_hf_dir(&out).unwrap();
    let err = load(out.to_str().unwrap(), &Device::flex())
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("missing") && msg.contains("model.layers.3.self_attn.k_proj.weight"),
        "{msg}"
    );
}

#[test]
fn unimplemented_rope_scaling_is_rejected_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
        "vocab_size": 100, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
        "rope_scaling": {"rope_type": "yarn", "factor": 8.0}
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    let e = persona_model::ModelConfig::from_hf_json(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
    // Llama 3's scaling is implemented, and needs all four of its numbers.
    let mut llama3 = cfg.clone();
    llama3["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
    std::fs::write(&p, llama3.to_string()).unwrap();
    let e = persona_model::ModelConfig::from_hf_json(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rope_scaling.") && e.contains("llama3"), "{e}");
    let mut cfg2 = cfg.clone();
    cfg2["rope_scaling"] = serde_json::Value::Null;
    cfg2["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    std::fs::write(&p, cfg2.to_string()).unwrap();
    let e = persona_model::ModelConfig::from_hf_json(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MistralForCausalLM"), "{e}");
}

#[test]
fn qwen2_directory_with_qkv_bias_and_untied_head_loads() {
    use persona_model::testing::{random_weights, tiny_config};
    use persona_model::{Architecture, Model};
    let mut cfg = tiny_config();
    cfg.architecture = Architecture::Qwen2;
    cfg.qkv_bias = true;
    cfg.tie_embeddings = false;
    let weights = random_weights(&cfg, 3);
    assert!(weights.contains_key("model.layers.0.self_attn.q_proj.bias"));
    assert!(weights.contains_key("lm_head.weight"));
    // Any tokenizer will do for the weights; borrow the embedded model's.
    let mut host = load_host(persona_model::DEFAULT_MODEL).unwrap();
    host.config = cfg.clone();
    host.weights = weights.clone();
    let dir = tempfile::tempdir().unwrap();
    host.write_hf_dir(dir.path()).unwrap();
    let config_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config_json["architectures"][0], "Qwen2ForCausalLM");

    let loaded = load(dir.path().to_str().unwrap(), &Device::flex()).unwrap();
    assert_eq!(loaded.model.config, cfg);
    let direct = Model::from_weights(cfg, &weights, &Device::flex()).unwrap();
    let batch = Batch::new(
        &[Sequence {
            prompt: vec![5, 17, 3, 90],
            response: vec![8],
        }],
        PadSide::Right,
        0,
    )
    .unwrap();
    let a = direct
        .forward(&batch, ForwardArgs::plain())
        .unwrap()
        .logits
        .unwrap();
    let b = loaded
        .model
        .forward(&batch, ForwardArgs::plain())
        .unwrap()
        .logits
        .unwrap();
    assert_eq!(
        a.into_data().try_into_vec::<f32>().unwrap(),
        b.into_data().try_into_vec::<f32>().unwrap()
    );
    // The biases matter: zeroing them changes the output.
    let mut no_bias = weights.clone();
    for (k, t) in no_bias.iter_mut() {
        if k.ends_with(".bias") {
            t.values_mut().iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let c = Model::from_weights(loaded.model.config.clone(), &no_bias, &Device::flex())
        .unwrap()
        .forward(&batch, ForwardArgs::plain())
        .unwrap()
        .logits
        .unwrap();
    let a = direct
        .forward(&batch, ForwardArgs::plain())
        .unwrap()
        .logits
        .unwrap();
    let diff = (a - c).abs().max().into_scalar::<f32>();
    assert!(diff > 1e-4, "q/k/v biases had no effect");
}

/// Regression: SmolLM2 re-saved by transformers >= 5 (`rope_parameters`,
/// no top-level `rope_theta`) loaded with RoPE base 10000 and answered
/// "La femme au pays: Paris…". It must load with base 100000 and give the
/// GGUF's logits exactly.
#[test]
fn rope_theta_from_transformers_5_configs() {
    let gguf = common::smollm();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-hf5");
    persona_model::testing::write_hf_copy(persona_model::DEFAULT_MODEL, &out);
    let p = out.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let o = cfg.as_object_mut().unwrap();
    let theta = o.remove("rope_theta").unwrap();
    o.remove("rope_scaling");
    o.insert(
        "rope_parameters".into(),
        serde_json::json!({"rope_theta": theta, "rope_type": "default"}),
    );
    std::fs::write(&p, cfg.to_string()).unwrap();
    let hf = load(out.to_str().unwrap(), &Device::flex()).unwrap();
    assert_eq!(hf.model.config.rope_theta, 100_000.0);
    let ids = gguf
        .codec
        .prompt_ids(&[Message::user("What is the capital of France?")])
        .unwrap();
    let batch = common::prompt_batch(ids, gguf.codec.pad_id);
    let logits = |m: &persona_model::Model| {
        m.forward(&batch, ForwardArgs::plain())
            .unwrap()
            .logits
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    };
    assert_eq!(logits(&hf.model), logits(&gguf.model));
}
