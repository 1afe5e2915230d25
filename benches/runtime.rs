//! Runtime speed: prefill tokens/s (batch 8 x 128), decode tokens/s at
//! batch 1 and batch 16 (128 new tokens; with the prompts' prefill, and
//! without it), a LoRA training step, peak memory.
//! Run with `just bench` (release build). Settings, from the environment:
//! - `BENCH_MODEL`: the model spec (default: the embedded model), e.g.
//!   `synthetic:benches/shapes/qwen2.5-1.5b-instruct.json`;
//! - `BENCH_TRAIN`: the training batch, `ROWSxTOKENS` (default `8x128`,
//!   half prompt, half response);
//! - `BENCH_DEVICE`: `cpu` (default), or `wgpu` / `cuda` in a build with
//!   that feature (`scripts/gpu-bench.sh`);
//! - `BENCH_DTYPE`: the frozen weights' type, `f32` (default), `bf16` or `f16`;
//! - `BENCH_ONLY`: `prefill`, `decode1`, `decode16`, `train` or a comma list;
//! - `BENCH_ROOF_GFLOPS`: the machine's f32 matmul roof, to print each
//!   rate as a fraction of it;
//! - `RAYON_NUM_THREADS`; `PERSONA_CPU_KERNELS` (avx512, avx2, neon, generic).

use std::time::Instant;

/// The same allocator, configured the same way, as the `persona` binary.
#[path = "../src/bin/persona/alloc.rs"]
mod alloc;

use burn::tensor::Device;
use persona_model::{
    Batch, CaptureRequest, DEFAULT_MODEL, ForwardArgs, GenerateOptions, KvCache, Logits, PadSide,
    Sampling, Sequence, WeightDtype, generate, load_as,
};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The CPU model, its vector features and the decoding kernels that run:
/// every number this bench prints depends on them.
fn cpu_line() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(str::trim)
            .unwrap_or("?")
            .to_string()
    };
    let flags = field("flags");
    let vector: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| ["avx2", "fma", "f16c", "avx512f", "asimd"].contains(f))
        .collect();
    let kernels = persona_model::CpuKernels::selected().map_or("?", |k| k.name());
    format!(
        "cpu: {} ({}); threads {}; kernels {kernels}",
        field("model name"),
        vector.join(" "),
        rayon::current_num_threads()
    )
}

fn prompt(len: usize, salt: usize) -> Vec<u32> {
    // Ordinary tokens only (ids >= 17 are not special in SmolLM2; the
    // synthetic models' byte-level vocabulary has 3 special tokens).
    (0..len)
        .map(|i| (17 + (i * 7919 + salt * 104_729) % 40_000) as u32)
        .collect()
}

/// The device the bench runs on (`BENCH_DEVICE`, default the CPU).
fn bench_device() -> Device {
    let name = std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    persona_model::parse_device(&name).unwrap_or_else(|e| panic!("BENCH_DEVICE: {e}"))
}

/// The model the bench runs (`BENCH_MODEL`, default the embedded one).
fn model_spec() -> String {
    std::env::var("BENCH_MODEL").unwrap_or_else(|_| DEFAULT_MODEL.to_string())
}

/// `rate` GFLOP/s, and its fraction of `BENCH_ROOF_GFLOPS` when set.
fn gflops(rate: f64) -> String {
    match std::env::var("BENCH_ROOF_GFLOPS")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
    {
        Some(roof) => format!(
            "{rate:.0} GFLOP/s, {:.0}% of {roof:.0}",
            100.0 * rate / roof
        ),
        None => format!("{rate:.0} GFLOP/s"),
    }
}

fn main() {
    alloc::keep_freed_memory();
    let spec = model_spec();
    println!("{}", cpu_line());
    // `BENCH_ONLY=prefill|decode1|decode16|train` runs one part, or a comma
    // list of them (for profiling, and for the peak memory of one part).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let want = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    if ["prefill", "decode1", "decode16"].iter().any(|p| want(p)) {
        let m = load_model(&spec, &bench_device());
        if want("prefill") {
            prefill_bench(&m);
        }
        for batch_size in [1usize, 16] {
            if want(&format!("decode{batch_size}")) {
                decode_bench(&m, batch_size);
            }
        }
    }
    if want("train") {
        train_bench(&spec);
    }
    println!("peak RSS: {:.0} MB", peak_rss_mb());
}

/// The frozen weights' type (`BENCH_DTYPE`, default f32).
fn bench_dtype() -> WeightDtype {
    let name = std::env::var("BENCH_DTYPE").unwrap_or_else(|_| "f32".into());
    name.parse().unwrap_or_else(|e| panic!("BENCH_DTYPE: {e}"))
}

/// Loads the model and prints its shape and the load time.
fn load_model(spec: &str, device: &Device) -> persona_model::LoadedModel {
    let t = Instant::now();
    let dtype = bench_dtype();
    let m = load_as(spec, device, dtype)
        .unwrap_or_else(|e| panic!("{e} (`just fetch-model` fetches the embedded model)"));
    let c = &m.model.config;
    println!(
        "model: {spec} ({:.2} B parameters: {} blocks, d_model {}, d_ff {}, vocab {}; weights {dtype}); load: {:.2} s",
        parameters(c) as f64 / 1e9,
        c.n_layers,
        c.d_model,
        c.d_ff,
        c.vocab_size,
        t.elapsed().as_secs_f64()
    );
    m
}

/// Weights of the projections and MLP of one block.
fn block_weights(c: &persona_model::ModelConfig) -> usize {
    c.d_model * (c.n_heads * c.head_dim) * 2
        + c.d_model * (c.n_kv_heads * c.head_dim) * 2
        + 3 * c.d_model * c.d_ff
}

/// Parameters of the model (norms and biases left out).
fn parameters(c: &persona_model::ModelConfig) -> usize {
    let embeddings = c.vocab_size * c.d_model * if c.tie_embeddings { 1 } else { 2 };
    block_weights(c) * c.n_layers + embeddings
}

/// Multiply-adds per token in the decoder blocks (projections and MLP,
/// attention scores left out), in GFLOP.
fn block_gflop_per_token(c: &persona_model::ModelConfig) -> f64 {
    2.0 * (block_weights(c) * c.n_layers) as f64 / 1e9
}

/// Prefill: batch 8 x 128, logits at the last position (as generation uses it).
fn prefill_bench(m: &persona_model::LoadedModel) {
    let rows: Vec<Sequence> = (0..8)
        .map(|s| Sequence {
            prompt: prompt(128, s),
            response: vec![],
        })
        .collect();
    let batch = Batch::new(&rows, PadSide::Left, m.codec.pad_id).unwrap();
    let none = CaptureRequest::none();
    let run = || {
        let args = ForwardArgs {
            cache: None,
            steering: &[],
            capture: &none,
            logits: Logits::Last,
            lora: None,
            lora_dropout: None,
        };
        let out = m.model.forward(&batch, args).unwrap();
        out.logits.unwrap().into_data();
    };
    run();
    let reps = 3;
    let t = Instant::now();
    for _ in 0..reps {
        run();
    }
    let secs = t.elapsed().as_secs_f64() / reps as f64;
    let tps = 8.0 * 128.0 / secs;
    println!(
        "prefill 8x128: {tps:.0} tokens/s ({} in the blocks)",
        gflops(tps * block_gflop_per_token(&m.model.config))
    );
}

/// Greedy decoding of 128 new tokens for `batch_size` 16-token prompts.
fn decode_bench(m: &persona_model::LoadedModel, batch_size: usize) {
    let prompts: Vec<Vec<u32>> = (0..batch_size).map(|s| prompt(16, s)).collect();
    let opts = GenerateOptions {
        max_new_tokens: 128,
        sampling: Sampling::Greedy,
        seed: 0,
        batch_size,
        steering: vec![],
    };
    // Warm-up: a CPU model packs its weights for few-row products on the
    // first decoding step (once per process; see persona-model's
    // `packed` module). Reported, but not part of the decoding speed.
    let warm_up = GenerateOptions {
        max_new_tokens: 2,
        ..opts.clone()
    };
    let packed_before = m.model.packed_weights();
    let t = Instant::now();
    generate(&m.model, &prompts, &[], m.codec.pad_id, &warm_up, |_| {}).unwrap();
    println!(
        "decode batch {batch_size} warm-up (2 tokens): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let packed = m.model.packed_weights();
    if packed != packed_before {
        for (format, (n, bytes)) in packed {
            println!(
                "  packed {format}: {n} weights, {:.1} MB",
                bytes as f64 / 1e6
            );
        }
    }
    // No stop ids: every row generates exactly 128 tokens.
    let t = Instant::now();
    let out = generate(&m.model, &prompts, &[], m.codec.pad_id, &opts, |_| {}).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let n: usize = out.iter().map(|g| g.tokens.len()).sum();
    // `generate`'s first forward reads the prompts into the cache (and
    // gives the first new token); timed on its own, the same way, and
    // taken out for the decoding rate proper.
    let prefill = prompt_prefill_secs(&m.model, &prompts, m.codec.pad_id, opts.max_new_tokens);
    let decode_rate = (n - batch_size) as f64 / (secs - prefill);
    println!(
        "decode batch {batch_size}: {:.1} tokens/s ({n} tokens in {secs:.2} s, prefill included); \
         {decode_rate:.1} tokens/s without the prompts' prefill ({prefill:.3} s, timed apart)",
        n as f64 / secs,
    );
    // Each decoding step reads every weight once: the weight bandwidth a
    // GPU reaches (the CPU reads packed copies; see `packed` above).
    if !persona_model::device::is_cpu(m.model.device()) {
        let dtype = bench_dtype();
        let bytes =
            dtype.bytes() as f64 * persona_model::plan::decode_read_values(&m.model.config) as f64;
        println!(
            "  weights read at {:.0} GB/s ({dtype} matrices of the blocks and the head)",
            decode_rate / batch_size as f64 * bytes / 1e9
        );
    }
}

/// Seconds of `generate`'s first step for `prompts`: the prompts through
/// the model into a fresh KV cache, logits at the last position (best of 3).
fn prompt_prefill_secs(
    model: &persona_model::Model,
    prompts: &[Vec<u32>],
    pad_id: u32,
    max_new_tokens: usize,
) -> f64 {
    let rows: Vec<Sequence> = prompts
        .iter()
        .map(|p| Sequence {
            prompt: p.clone(),
            response: vec![],
        })
        .collect();
    let batch = Batch::new(&rows, PadSide::Left, pad_id).unwrap();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    (0..3)
        .map(|_| {
            let mut cache = KvCache::with_capacity(longest + max_new_tokens);
            let t = Instant::now();
            let out = model
                .forward(&batch, ForwardArgs::decode(&mut cache, &[]))
                .unwrap();
            out.logits.unwrap().into_data();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The training batch, `BENCH_TRAIN=ROWSxTOKENS` (default 8x128).
fn train_shape() -> (usize, usize) {
    let text = std::env::var("BENCH_TRAIN").unwrap_or_else(|_| "8x128".into());
    text.split_once('x')
        .and_then(|(r, t)| Some((r.parse().ok()?, t.parse().ok()?)))
        .filter(|&(r, t): &(usize, usize)| r > 0 && t >= 2)
        .unwrap_or_else(|| panic!("BENCH_TRAIN={text}: want ROWSxTOKENS, e.g. 4x256"))
}

/// LoRA r16 on all seven projections, `BENCH_TRAIN` rows of tokens (half
/// prompt, half response), preventative steering at row 15 (or the middle
/// row of a shallower model), AdamW: tokens/s of full optimizer steps
/// (forward, backward, update).
fn train_bench(spec: &str) {
    use persona_model::{Lora, Positions, Scaling, Steering, Target};
    use persona_train::optim::{AdamW, Moments};
    use persona_train::trainer::{clip, loss_and_grads};
    let device = bench_device().autodiff();
    let m = load_model(spec, &device);
    let cfg = &m.model.config;
    let (n_rows, tokens) = train_shape();
    let mut lora = Lora::init(cfg, &Target::ALL, 16, 32.0, Scaling::Rslora, 0, &device)
        .unwrap()
        .trainable();
    let mut moments: Vec<Moments> = lora
        .named_tensors()
        .into_iter()
        .map(|(_, t)| Moments {
            m: t.clone().detach().zeros_like(),
            v: t.clone().detach().zeros_like(),
        })
        .collect();
    let v: Vec<f32> = (0..cfg.d_model).map(|i| (i as f32 * 0.1).sin()).collect();
    let row = 15.min(cfg.n_layers / 2);
    let steering = [Steering::add(row, &v, 4.0, Positions::All, &device).unwrap()];
    let rows: Vec<Sequence> = (0..n_rows)
        .map(|s| Sequence {
            prompt: prompt(tokens / 2, s),
            response: prompt(tokens - tokens / 2, s + 100),
        })
        .collect();
    let batch = Batch::new(&rows, PadSide::Right, m.codec.pad_id).unwrap();
    let opt = AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    // The one-sided projection penalty's step (no steering): its extra
    // adapter-free forward stops at the penalised row.
    let unit = persona_vectors::unit(&v).unwrap();
    let penalty = persona_train::penalty::Penalty::new(1.0, vec![(row, vec![unit])], &device);
    let mut step = |t: usize, penalised: bool| {
        let (steering, penalty) = match penalised {
            false => (&steering[..], None),
            true => (&[][..], Some(&penalty)),
        };
        let (_, grads) = loss_and_grads(
            &m.model,
            &lora,
            std::slice::from_ref(&batch),
            steering,
            None,
            penalty,
        )
        .unwrap();
        let (grads, _) = clip(grads, 1.0);
        for ((p, g), mo) in lora
            .tensors_mut()
            .into_iter()
            .zip(grads)
            .zip(moments.iter_mut())
        {
            *p = opt
                .update(p.clone().detach(), g, mo, 1e-4, t)
                .detach()
                .require_grad();
        }
    };
    step(1, false);
    let reps = 3;
    let mut time = |penalised: bool| {
        let t = Instant::now();
        for i in 0..reps {
            step(i + 2, penalised);
        }
        t.elapsed().as_secs_f64() / reps as f64
    };
    let secs = time(false);
    let penalised = time(true);
    let n = (n_rows * tokens) as f64;
    // Forward and input gradients through the frozen blocks (2 + 2 FLOP
    // per weight and token) and the LM head on the scored (response)
    // tokens; attention scores and the rank-16 branches left out.
    let scored = (n_rows * (tokens - tokens / 2)) as f64;
    let head = 4.0 * (cfg.vocab_size * cfg.d_model) as f64 * scored / n / 1e9;
    let per_token = 2.0 * block_gflop_per_token(cfg) + head;
    println!(
        "train LoRA r16, {n_rows}x{tokens}, AdamW: {:.0} tokens/s ({secs:.2} s/step; {})",
        n / secs,
        gflops(n / secs * per_token)
    );
    println!(
        "train LoRA r16, {n_rows}x{tokens}, projection penalty at row {row} instead of steering: {:.0} tokens/s ({penalised:.2} s/step, {:+.0}%)",
        n / penalised,
        100.0 * (penalised / secs - 1.0)
    );
}
