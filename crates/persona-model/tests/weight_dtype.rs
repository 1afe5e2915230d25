//! Frozen weights kept as bf16 / f16: tiny random HF checkpoints stored in
//! each type load their matrices without conversion (norm weights as f32),
//! and the model built from them gives
//! the logits and LoRA gradients of the f32 model of the same values.
//!
//! Tolerances. On the CPU a 16-bit weight is widened to f32 for each
//! product, exactly, so the 16-bit model computes what the f32 model of the
//! same (rounded) values computes; only the summation order differs (the
//! f32 model's few-row products use the packed kernels, the widened ones
//! gemm), which moves f32 results by a few ulp per product: 1e-4 of the
//! largest value over the tiny model's 4 blocks is far above that and far
//! below any real difference. Against the unrounded f32 weights the
//! difference is the rounding itself: bf16 keeps 8 significant bits
//! (relative error up to 2^-9 per weight), f16 11 (2^-12); the bounds
//! below are a few times the differences measured on this model.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use persona_model::likelihood::scored_logprobs;
use persona_model::testing::{tiny_config, tiny_gguf};
use persona_model::weights::{HostData, WeightMap};
use persona_model::{
    Batch, CaptureRequest, ForwardArgs, Logits, Lora, Model, PadSide, Scaling, Sequence, Target,
    WeightDtype, load_host, load_host_as,
};

const SIXTEEN: [WeightDtype; 2] = [WeightDtype::Bf16, WeightDtype::F16];

/// The tiny model's weights (from its GGUF) written as an HF folder with
/// its matrices stored as `dtype`; returns the unrounded f32 weights.
fn write_checkpoint(dir: &Path, dtype: WeightDtype) -> WeightMap {
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, tiny_gguf(3)).unwrap();
    let original = load_host(gguf.to_str().unwrap()).unwrap().weights;
    let host = load_host_as(gguf.to_str().unwrap(), dtype).unwrap();
    host.write_hf_dir(&dir.join("hf")).unwrap();
    original
}

fn batch() -> Batch {
    let rows = [
        Sequence {
            prompt: vec![1, 5, 9, 14],
            response: vec![20, 7, 3],
        },
        Sequence {
            prompt: vec![2, 8],
            response: vec![11, 30, 4, 6],
        },
    ];
    Batch::new(&rows, PadSide::Right, 0).unwrap()
}

fn args<'a>(
    capture: &'a CaptureRequest,
    logits: Logits,
    lora: Option<&'a Lora>,
) -> ForwardArgs<'a> {
    ForwardArgs {
        cache: None,
        steering: &[],
        capture,
        logits,
        lora,
        lora_dropout: None,
    }
}

fn all_logits(m: &Model) -> Vec<f32> {
    let none = CaptureRequest::none();
    let out = m.forward(&batch(), args(&none, Logits::All, None)).unwrap();
    persona_model::host_vec(out.logits.unwrap()).unwrap()
}

/// Largest difference relative to the largest magnitude of `want`.
fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn model_from(weights: WeightMap, device: &Device) -> Model {
    Model::from_owned_weights(tiny_config(), weights, device).unwrap()
}

#[test]
fn sixteen_bit_checkpoints_load_in_their_type_and_give_the_f32_logits() {
    let device = Device::flex();
    for (dtype, bound) in [(WeightDtype::Bf16, 2e-2), (WeightDtype::F16, 4e-3)] {
        let dir = tempfile::tempdir().unwrap();
        let original = write_checkpoint(dir.path(), dtype);
        let hf = dir.path().join("hf");
        let config = std::fs::read_to_string(hf.join("config.json")).unwrap();
        let torch = if dtype == WeightDtype::Bf16 {
            "bfloat16"
        } else {
            "float16"
        };
        assert!(
            config.contains(&format!("\"torch_dtype\": \"{torch}\"")),
            "{config}"
        );
        let kept = load_host_as(hf.to_str().unwrap(), dtype).unwrap();
        assert_eq!(kept.dtype, dtype);
        // Matrices as stored; norm weights widened to f32.
        for (name, t) in &kept.weights {
            let want = if t.shape.len() == 2 {
                dtype
            } else {
                WeightDtype::F32
            };
            assert_eq!(t.dtype(), want, "{name}");
        }
        // The same file read as f32: the 16-bit values widened, exactly.
        let wide = load_host(hf.to_str().unwrap()).unwrap();
        for (name, t) in &wide.weights {
            assert!(matches!(t.data, HostData::F32(_)), "{name}");
            assert_eq!(t.values(), kept.weights[name].values(), "{name}");
        }
        let got = all_logits(&model_from(kept.weights, &device));
        let same_values = all_logits(&model_from(wide.weights, &device));
        let unrounded = all_logits(&model_from(original, &device));
        let d = rel_diff(&got, &same_values);
        assert!(
            d <= 1e-4,
            "{dtype}: {d} from the f32 model of the same values"
        );
        let d = rel_diff(&got, &unrounded);
        assert!(
            d > 0.0 && d <= bound,
            "{dtype}: {d} from the unrounded weights"
        );
    }
}

/// A LoRA step's loss and adapter gradients with 16-bit frozen weights are
/// those of the f32 model of the same values; the frozen weights get none.
#[test]
fn a_lora_step_with_sixteen_bit_weights_matches_f32() {
    let device = Device::flex().autodiff();
    let cfg = tiny_config();
    for dtype in SIXTEEN {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), dtype);
        let hf = dir.path().join("hf");
        let step = |dtype: WeightDtype| {
            let host = load_host_as(hf.to_str().unwrap(), dtype).unwrap();
            let m = model_from(host.weights, &device);
            let targets = [Target::Q, Target::V, Target::Up, Target::Down];
            let mut lora = Lora::init(&cfg, &targets, 2, 4.0, Scaling::Rslora, 5, &device).unwrap();
            // B = 0 at init would leave A without a gradient: fixed
            // nonzero values instead, the same for both models.
            for (j, t) in lora.tensors_mut().into_iter().enumerate() {
                let shape = t.dims();
                let values: Vec<f32> = (0..shape[0] * shape[1])
                    .map(|i| ((i * 7 + j * 13) as f32 * 0.37).sin() * 0.05)
                    .collect();
                *t = Tensor::from_data(TensorData::new(values, shape), &device).require_grad();
            }
            let b = batch();
            let none = CaptureRequest::none();
            let logits = m
                .forward(&b, args(&none, Logits::Scored, Some(&lora)))
                .unwrap()
                .logits
                .unwrap();
            let loss = scored_logprobs(logits, &b.scored_positions()).mean().neg();
            let value = persona_model::host_vec(loss.clone().reshape([1])).unwrap()[0];
            let grads = loss.backward();
            let pair = &lora.layers[2][&Target::V];
            let grad = |t: &Tensor<2>| persona_model::host_vec(t.grad(&grads).unwrap()).unwrap();
            (value, grad(&pair.a), grad(&pair.b))
        };
        let (loss16, a16, b16) = step(dtype);
        let (loss32, a32, b32) = step(WeightDtype::F32);
        assert!(loss16.is_finite());
        assert!(
            (loss16 - loss32).abs() <= 1e-5 * loss32.abs(),
            "{dtype}: {loss16} vs {loss32}"
        );
        assert!(rel_diff(&a16, &a32) <= 1e-4, "{dtype}: A gradients");
        assert!(rel_diff(&b16, &b32) <= 1e-4, "{dtype}: B gradients");
        assert!(a16.iter().any(|&g| g != 0.0) && b16.iter().any(|&g| g != 0.0));
    }
}

/// Adapters merged into a 16-bit model make the merged projections f32 (a
/// LoRA delta is often below bf16's resolution of its weight), the others
/// stay 16-bit, and the fused projections mixing both still build.
#[test]
fn adapters_merged_into_sixteen_bit_weights_stay_f32() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), WeightDtype::Bf16);
    let hf = dir.path().join("hf");
    let cfg = tiny_config();
    let device = Device::flex();
    let mut lora = Lora::init(&cfg, &[Target::Q], 2, 4.0, Scaling::Rslora, 5, &device).unwrap();
    for t in lora.tensors_mut() {
        *t = t.clone().add_scalar(0.01);
    }
    let merged = |dtype| {
        let mut host = load_host_as(hf.to_str().unwrap(), dtype).unwrap();
        lora.merge_into(&mut host.weights).unwrap();
        host.weights
    };
    let kept = merged(WeightDtype::Bf16);
    let q = "model.layers.0.self_attn.q_proj.weight";
    let k = "model.layers.0.self_attn.k_proj.weight";
    assert_eq!(kept[q].dtype(), WeightDtype::F32);
    assert_eq!(kept[k].dtype(), WeightDtype::Bf16);
    let got = all_logits(&model_from(kept, &device));
    let want = all_logits(&model_from(merged(WeightDtype::F32), &device));
    assert!(rel_diff(&got, &want) <= 1e-4);
}

#[test]
fn weights_beyond_f16_range_are_refused_with_the_fix() {
    let t = persona_model::weights::HostTensor::f32(vec![2], vec![1.0, 1e5]);
    let e = t
        .clone()
        .into_dtype(WeightDtype::F16, "model.norm.weight")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("65504") && e.contains("bf16"),
        "{e}"
    );
    let b = t.into_dtype(WeightDtype::Bf16, "x").unwrap();
    assert_eq!(b.values().to_vec(), vec![1.0, 99840.0]);
}
