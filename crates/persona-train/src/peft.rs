//! Reading PEFT's `adapter_config.json` strictly: every key that changes
//! what the adapters compute is honoured (`r`, `lora_alpha`, `use_rslora`,
//! `rank_pattern`, `alpha_pattern`) or refused with its name (DoRA, biases,
//! extra trainable modules, ...). A key is never read as its default when
//! it holds something else: `"use_rslora": "yes"` is an error, not `false`.

use persona_model::{PeftScaling, Scaling};
use serde::Deserialize;
use serde_json::Value;

/// Keys that do not change the adapted model's outputs: bookkeeping,
/// training-time settings, or options whose only effect would show up as
/// weights this reader checks anyway (`target_modules`,
/// `layers_to_transform`: the weights present must cover every layer and
/// projection, or loading lists what is missing).
const INERT: &[&str] = &[
    "auto_mapping",
    "base_model_name_or_path",
    "corda_config",
    "eva_config",
    "exclude_modules",
    "inference_mode",
    "init_lora_weights",
    "layers_pattern",
    "layers_to_transform",
    "loftq_config",
    "lora_dropout",
    "megatron_config",
    "megatron_core",
    "peft_version",
    "qalora_group_size",
    "revision",
    "runtime_config",
    "target_modules",
    "task_type",
];

/// The keys read here, besides [`INERT`] ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Known {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: Option<bool>,
    #[serde(default)]
    bias: Option<String>,
}

/// The pattern keys, read from the text itself: their order matters, and a
/// JSON map value would sort it.
#[derive(Deserialize)]
struct Patterns {
    #[serde(default, deserialize_with = "ordered")]
    rank_pattern: Vec<(String, usize)>,
    #[serde(default, deserialize_with = "ordered")]
    alpha_pattern: Vec<(String, f64)>,
}

/// Keys that change what the adapters compute and are not implemented:
/// accepted only when absent, `null`, `false` or empty.
const UNSUPPORTED: &[&str] = &[
    "alora_invocation_tokens",
    "fan_in_fan_out",
    "layer_replication",
    "lora_bias",
    "modules_to_save",
    "target_parameters",
    "trainable_token_indices",
    "use_dora",
    "use_qalora",
];

/// A JSON object read as `(key, value)` pairs in the file's order (PEFT
/// tries pattern keys in order; a map type would sort them).
fn ordered<'de, D, T>(d: D) -> Result<Vec<(String, T)>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Pairs<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Pairs<T> {
        type Value = Vec<(String, T)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of pattern -> value, or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(pair) = m.next_entry()? {
                out.push(pair);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Pairs(std::marker::PhantomData))
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The scaling of every module from the text of an `adapter_config.json`,
/// or the reason it cannot be honoured.
pub fn read_config(text: &str) -> Result<PeftScaling, String> {
    let mut v: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
    let patterns: Patterns = serde_json::from_str(text).map_err(|e| e.to_string())?;
    for k in INERT.iter().chain(&["rank_pattern", "alpha_pattern"]) {
        v.remove(*k);
    }
    let (mut off, mut rest) = (serde_json::Map::new(), serde_json::Map::new());
    for (k, x) in v {
        if UNSUPPORTED.contains(&k.as_str()) {
            off.insert(k, x);
        } else {
            rest.insert(k, x);
        }
    }
    let known: Known = serde_json::from_value(Value::Object(rest)).map_err(|e| {
        let e = e.to_string();
        if e.starts_with("unknown field") {
            format!("{e}; this reader does not know that key, so it cannot tell whether it changes the adapters")
        } else {
            e
        }
    })?;
    if let Some(t) = known.peft_type.as_deref().filter(|t| *t != "LORA") {
        return Err(format!("peft_type `{t}`: only LORA adapters are supported"));
    }
    if let Some(b) = known.bias.as_deref().filter(|b| *b != "none") {
        return Err(format!(
            "bias = `{b}`: adapters with trained biases are not supported"
        ));
    }
    if let Some((k, x)) = off.iter().find(|(_, x)| !is_default(x)) {
        return Err(format!("`{k}` = {x} is not supported (only plain LoRA is)"));
    }
    if !(known.lora_alpha.is_finite() && known.lora_alpha > 0.0) {
        return Err(format!(
            "lora_alpha {} must be a finite number > 0",
            known.lora_alpha
        ));
    }
    if let Some((p, a)) = patterns
        .alpha_pattern
        .iter()
        .find(|(_, a)| !(a.is_finite() && *a > 0.0))
    {
        return Err(format!(
            "alpha_pattern `{p}` = {a} must be a finite number > 0"
        ));
    }
    Ok(PeftScaling {
        rank: known.r,
        alpha: known.lora_alpha,
        scaling: if known.use_rslora.unwrap_or(false) {
            Scaling::Rslora
        } else {
            Scaling::Classic
        },
        rank_pattern: patterns.rank_pattern,
        alpha_pattern: patterns.alpha_pattern,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEFT_0_21: &str = r#"{
        "alpha_pattern": {}, "auto_mapping": null,
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "bias": "none", "corda_config": null, "eva_config": null, "exclude_modules": null,
        "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
        "layer_replication": null, "layers_pattern": null, "layers_to_transform": null,
        "loftq_config": {}, "lora_alpha": 16, "lora_bias": false, "lora_dropout": 0.05,
        "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null,
        "peft_type": "LORA", "qalora_group_size": 16, "r": 8, "rank_pattern": {},
        "revision": null, "target_modules": ["v_proj", "q_proj"], "target_parameters": null,
        "task_type": "CAUSAL_LM", "trainable_token_indices": null, "use_dora": false,
        "use_qalora": false, "use_rslora": false
    }"#;

    fn with(key: &str, value: &str) -> String {
        let mut v: serde_json::Map<String, Value> = serde_json::from_str(PEFT_0_21).unwrap();
        v.insert(key.into(), serde_json::from_str(value).unwrap());
        Value::Object(v).to_string()
    }

    #[test]
    fn a_current_peft_config_reads_as_classic_rank_8() {
        let s = read_config(PEFT_0_21).unwrap();
        assert_eq!((s.rank, s.alpha, s.scaling), (8, 16.0, Scaling::Classic));
    }

    /// Regression: `alpha_pattern` was ignored (v_proj off by 0.144 after a merge).
    #[test]
    fn peft_alpha_pattern_and_rank_pattern_are_honoured_in_order() {
        // Written as text: the order of the pattern keys is the file's.
        let text = PEFT_0_21
            .replace(
                r#""alpha_pattern": {}"#,
                r#""alpha_pattern": {"v_proj": 64, "layers\\.0\\..*": 2}"#,
            )
            .replace(
                r#""rank_pattern": {}"#,
                r#""rank_pattern": {"model.layers.1.self_attn.q_proj": 4}"#,
            );
        let s = read_config(&text).unwrap();
        assert_eq!(
            s.for_module("model.layers.3.self_attn.v_proj").unwrap(),
            (8, 64.0)
        );
        // First match wins: `v_proj` is listed before `layers\.0\..*`.
        assert_eq!(
            s.for_module("model.layers.0.self_attn.v_proj").unwrap(),
            (8, 64.0)
        );
        assert_eq!(
            s.for_module("model.layers.0.self_attn.q_proj").unwrap(),
            (8, 2.0)
        );
        assert_eq!(
            s.for_module("model.layers.1.self_attn.q_proj").unwrap(),
            (4, 16.0)
        );
        // A pattern matches whole dotted names only: `proj` is not `q_proj`.
        let s = read_config(&with("alpha_pattern", r#"{"proj": 1}"#)).unwrap();
        assert_eq!(
            s.for_module("model.layers.1.self_attn.q_proj").unwrap(),
            (8, 16.0)
        );
    }

    /// Regression: `"use_rslora": "yes"` was read as false.
    #[test]
    fn use_rslora_must_be_a_bool() {
        assert_eq!(
            read_config(&with("use_rslora", "true")).unwrap().scaling,
            Scaling::Rslora
        );
        let e = read_config(&with("use_rslora", r#""yes""#)).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
    }

    /// Regression: `lora_alpha` 0 or negative was accepted.
    #[test]
    fn lora_alpha_must_be_positive() {
        for a in ["0", "-16"] {
            let e = read_config(&with("lora_alpha", a)).unwrap_err();
            assert!(e.contains("lora_alpha"), "{e}");
        }
    }

    #[test]
    fn keys_that_change_the_computation_are_refused_by_name() {
        for (k, v) in [
            ("use_dora", "true"),
            ("fan_in_fan_out", "true"),
            ("modules_to_save", r#"["lm_head"]"#),
            ("lora_bias", "true"),
        ] {
            let e = read_config(&with(k, v)).unwrap_err();
            assert!(e.contains(k), "{k}: {e}");
        }
        let e = read_config(&with("bias", r#""all""#)).unwrap_err();
        assert!(e.contains("bias"), "{e}");
        let e = read_config(&with("peft_type", r#""IA3""#)).unwrap_err();
        assert!(e.contains("IA3"), "{e}");
        let e = read_config(&with("some_future_key", "3")).unwrap_err();
        assert!(e.contains("some_future_key"), "{e}");
    }
}
