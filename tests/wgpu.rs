//! The wgpu backend against the CPU backend (`--features wgpu`; `just test`
//! runs these on Debian's software Vulkan driver, lavapipe, which it
//! installs when missing).
//!
//! Both backends compute in f32; they differ only in the order in which
//! products are summed (gemm's blocking on the CPU, cubecl's tiles on the
//! GPU). Each tolerance below is that rounding at the sizes involved, with
//! headroom, and still far below what a wrong op (a missing mask, a swapped
//! half of RoPE, a steering on the wrong row) changes: those move logits by
//! 1e-2 to 1.

#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use persona_model::testing::{random_weights, tiny_config};
use persona_model::{
    Batch, CaptureRequest, ForwardArgs, GenerateOptions, Logits, Lora, Model, PadSide, Positions,
    Reduction, Sampling, Scaling, Sequence, Steering, Target, WeightDtype, generate, host_vec,
};
use persona_train::optim::{AdamW, Moments};
use persona_train::trainer::loss_and_grads;

fn wgpu() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

fn tiny(device: &Device) -> Model {
    let cfg = tiny_config();
    Model::from_weights(cfg.clone(), &random_weights(&cfg, 7), device).unwrap()
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    host_vec(t).unwrap()
}

/// Largest `|a - b|`, and the largest `|a|` (to state errors relatively).
fn worst(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let scale = a.iter().map(|x| x.abs()).fold(0.0, f32::max);
    (diff, scale)
}

fn assert_close(what: &str, cpu: &[f32], gpu: &[f32], tolerance: f32) {
    // `f32::max` skips NaN: a NaN on either side must fail here.
    assert!(
        cpu.iter().chain(gpu).all(|x| x.is_finite()),
        "{what}: a value is not finite"
    );
    let (diff, scale) = worst(cpu, gpu);
    eprintln!("{what}: worst |cpu - wgpu| {diff:e} (largest value {scale:e})");
    assert!(
        diff <= tolerance * scale.max(1.0),
        "{what}: cpu and wgpu differ by {diff} (tolerance {tolerance} x {scale})"
    );
}

/// Three right-padded rows of different lengths, with responses.
fn mixed_batch() -> Batch {
    let vocab = tiny_config().vocab_size as u32;
    let rows: Vec<Sequence> = (0..3u32)
        .map(|r| Sequence {
            prompt: (0..5 + 3 * r)
                .map(|i| (i * 7 + r * 13 + 4) % vocab)
                .collect(),
            response: (0..4 + r).map(|i| (i * 5 + r + 3) % vocab).collect(),
        })
        .collect();
    Batch::new(&rows, PadSide::Right, 0).unwrap()
}

/// Logits of a padded batch: 3 blocks of products of width <= 48, values
/// of order 1, so f32 rounding differences stay near 1e-6; 1e-4 relative.
#[test]
fn tiny_model_logits_match_the_cpu() {
    let batch = mixed_batch();
    let run = |d: &Device| {
        host(
            tiny(d)
                .forward(&batch, ForwardArgs::plain())
                .unwrap()
                .logits
                .unwrap(),
        )
    };
    assert_close("tiny logits", &run(&Device::flex()), &run(&wgpu()), 1e-4);
}

/// Adding at row 1, ablating at row 2, capturing rows 0-3 in every
/// reduction: same rounding argument as the logits, 1e-4 relative.
#[test]
fn steering_and_capture_match_the_cpu_at_several_rows() {
    let batch = mixed_batch();
    let d_model = tiny_config().d_model;
    let v: Vec<f32> = (0..d_model)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 4.0)
        .collect();
    let reductions = [
        Reduction::ResponseMean,
        Reduction::PromptMean,
        Reduction::LastPrompt,
        Reduction::Full,
    ];
    let request = CaptureRequest::new(0..=3, &reductions);
    let run = |device: &Device| {
        let steering = [
            Steering::add(1, &v, 2.5, Positions::All, device).unwrap(),
            Steering::ablate(2, &v, Positions::Response, device).unwrap(),
        ];
        let out = tiny(device)
            .forward(
                &batch,
                ForwardArgs {
                    cache: None,
                    steering: &steering,
                    capture: &request,
                    logits: Logits::Last,
                    lora: None,
                    lora_dropout: None,
                },
            )
            .unwrap();
        let mut values = host(out.logits.unwrap());
        for t in out.captured.into_values() {
            values.extend(host(t));
        }
        for t in out.full.into_values() {
            values.extend(host(t));
        }
        (values, out.counts)
    };
    let (cpu, cpu_counts) = run(&Device::flex());
    let (gpu, gpu_counts) = run(&wgpu());
    assert_eq!(cpu_counts, gpu_counts);
    assert_close("steered logits and captures", &cpu, &gpu, 1e-4);
}

/// Adapters on every projection with a non-zero `B` (a fresh adapter has
/// `B = 0`, which would leave `A`'s gradient zero on both backends).
fn trained_adapters(device: &Device) -> Lora {
    let cfg = tiny_config();
    let mut lora = Lora::init(&cfg, &Target::ALL, 4, 8.0, Scaling::Rslora, 5, device).unwrap();
    for pair in lora.layers.iter_mut().flat_map(|l| l.values_mut()) {
        let [rank, d_out] = pair.b.dims();
        let values: Vec<f32> = (0..rank * d_out)
            .map(|i| ((i * 29 % 17) as f32 - 8.0) / 64.0)
            .collect();
        pair.b = Tensor::from_data(TensorData::new(values, [rank, d_out]), device);
    }
    lora
}

/// Loss and adapter gradients of one step (two micro-batches, steering at
/// row 2), then one AdamW update: the backward pass sums over tokens and
/// positions, so 1e-4 relative to each tensor's largest value; the loss to
/// 1e-5 relative.
#[test]
fn a_lora_training_step_matches_the_cpu() {
    let batches = [mixed_batch(), mixed_batch().rows(1..3)];
    let d_model = tiny_config().d_model;
    let v: Vec<f32> = (0..d_model).map(|i| (i as f32 - 16.0) / 16.0).collect();
    let run = |device: Device| {
        let device = device.autodiff();
        let model = tiny(&device);
        let lora = trained_adapters(&device);
        let steering = [Steering::add(2, &v, 1.5, Positions::All, &device).unwrap()];
        let (loss, grads) = loss_and_grads(&model, &lora, &batches, &steering, None, None).unwrap();
        let loss = loss.nll;
        let opt = AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let updated: Vec<Vec<f32>> = lora
            .named_tensors()
            .into_iter()
            .zip(&grads)
            .map(|((_, p), g)| {
                let mut state = Moments {
                    m: g.zeros_like(),
                    v: g.zeros_like(),
                };
                host(opt.update(p.clone().detach(), g.clone(), &mut state, 1e-3, 1))
            })
            .collect();
        (
            loss,
            grads.into_iter().map(host).collect::<Vec<_>>(),
            updated,
        )
    };
    let (cpu_loss, cpu_grads, cpu_updated) = run(Device::flex());
    let (gpu_loss, gpu_grads, gpu_updated) = run(wgpu());
    eprintln!("loss: cpu {cpu_loss}, wgpu {gpu_loss}");
    assert!((cpu_loss - gpu_loss).abs() <= 1e-5 * cpu_loss.abs());
    assert_eq!(cpu_grads.len(), gpu_grads.len());
    for (i, (c, g)) in cpu_grads.iter().zip(&gpu_grads).enumerate() {
        assert_close(&format!("adapter gradient {i}"), c, g, 1e-4);
    }
    for (i, (c, g)) in cpu_updated.iter().zip(&gpu_updated).enumerate() {
        assert_close(&format!("updated adapter {i}"), c, g, 1e-4);
    }
}

/// The tiny model's weights kept as `dtype` (rounded from the f32 draw).
fn tiny_as(dtype: WeightDtype, device: &Device) -> persona_model::Result<Model> {
    let cfg = tiny_config();
    let weights = random_weights(&cfg, 7)
        .into_iter()
        .map(|(k, t)| {
            let t = t.into_kept(dtype, &k)?;
            Ok((k, t))
        })
        .collect::<persona_model::Result<_>>()?;
    Model::from_owned_weights(cfg, weights, device)
}

/// f16 weights: on wgpu the products run in f16 (activations rounded to
/// 11 significant bits, relative 2^-12, at each product's input and
/// output), on the CPU the f16 weights are widened and the products run in
/// f32 on the same values. That rounding over 3 blocks moved the logits by
/// 7e-4 to 1e-3 of the largest (lavapipe, 2026-12-07): tolerance 5e-3. A training
/// step's loss moved by 3e-5 relative (tolerance 2e-4), adapter gradients
/// by at most 1.4e-3 (tolerance 5e-3; the backward pass multiplies by the
/// same f16 weights). bf16, which wgpu's WGSL shaders cannot express, is
/// refused in one line.
#[test]
fn f16_weights_on_wgpu_match_the_cpu_and_bf16_is_refused() {
    let batch = mixed_batch();
    let run = |d: &Device| {
        let m = tiny_as(WeightDtype::F16, d).unwrap();
        host(
            m.forward(&batch, ForwardArgs::plain())
                .unwrap()
                .logits
                .unwrap(),
        )
    };
    assert_close(
        "f16 tiny logits",
        &run(&Device::flex()),
        &run(&wgpu()),
        5e-3,
    );
    let step = |device: Device| {
        let device = device.autodiff();
        let model = tiny_as(WeightDtype::F16, &device).unwrap();
        let lora = trained_adapters(&device);
        let (loss, grads) =
            loss_and_grads(&model, &lora, &[mixed_batch()], &[], None, None).unwrap();
        let loss = loss.nll;
        (loss, grads.into_iter().map(host).collect::<Vec<_>>())
    };
    let (cpu_loss, cpu_grads) = step(Device::flex());
    let (gpu_loss, gpu_grads) = step(wgpu());
    eprintln!("f16 loss: cpu {cpu_loss}, wgpu {gpu_loss}");
    assert!((cpu_loss - gpu_loss).abs() <= 2e-4 * cpu_loss.abs());
    for (i, (c, g)) in cpu_grads.iter().zip(&gpu_grads).enumerate() {
        assert_close(&format!("f16 adapter gradient {i}"), c, g, 5e-3);
    }
    let e = tiny_as(WeightDtype::Bf16, &wgpu()).unwrap_err().to_string();
    assert!(e.contains("bf16 weights") && e.contains("f32, f16"), "{e}");
}

/// Greedy decoding with the KV cache, three prompts in one left-padded
/// batch, steered while generating: the same tokens as on the CPU.
#[test]
fn generation_with_the_kv_cache_matches_the_cpu() {
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 11, 40], vec![7, 3], vec![60, 61, 62, 63, 64, 65]];
    let d_model = tiny_config().d_model;
    let v: Vec<f32> = (0..d_model).map(|i| ((i % 5) as f32 - 2.0) / 2.0).collect();
    let run = |device: &Device| {
        let opts = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling::Greedy,
            seed: 0,
            batch_size: 3,
            steering: vec![Steering::add(1, &v, 0.5, Positions::Generating, device).unwrap()],
        };
        let out = generate(&tiny(device), &prompts, &[], 0, &opts, |_| {}).unwrap();
        out.into_iter().map(|g| g.tokens).collect::<Vec<_>>()
    };
    assert_eq!(run(&Device::flex()), run(&wgpu()));
}

/// SmolLM2-135M-Instruct on wgpu against the PyTorch reference, with the
/// CPU test's tolerances (`tests/reference_numerics.rs`: 2e-3 on logits of
/// order 10-20, 1e-4 relative on hidden-state norms). (Decoding with the
/// cache is checked on the tiny model above: on lavapipe every new cache
/// length compiles new kernels, minutes for a sentence.)
#[test]
fn smollm2_matches_the_reference_on_wgpu() {
    let m = persona_model::load(persona_model::DEFAULT_MODEL, &wgpu())
        .unwrap_or_else(|e| panic!("{e}\n(run `just fetch-model`, or `just test` which does it)"));
    let (logits, hidden) = common::reference_pass(&m);
    let worst_logit = common::assert_reference_logits(&logits);
    let worst_norm = common::assert_reference_norms(&hidden);
    eprintln!("wgpu vs reference: logits {worst_logit:e} absolute, norms {worst_norm:e} relative");
}

/// Without a usable adapter (the Vulkan and EGL loaders pointed at no
/// driver, so none of wgpu's backends finds one), the CLI says so in one
/// line instead of panicking inside the backend.
#[test]
fn a_wgpu_device_without_an_adapter_is_a_one_line_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_persona"))
        .args([
            "generate",
            "--device",
            "wgpu",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "1",
        ])
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent/egl.json")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("device `wgpu` does not start"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
