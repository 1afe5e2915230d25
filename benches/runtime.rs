//! Runtime speed on the embedded model: prefill tokens/s (batch 8 x 128),
//! decode tokens/s at batch 1 and batch 16 (128 new tokens), peak memory.
//! Run with `just bench` (release build). Thread count: RAYON_NUM_THREADS.

use std::time::Instant;

use burn::tensor::Device;
use persona_model::{
    Batch, CaptureRequest, DEFAULT_MODEL, ForwardArgs, GenerateOptions, Logits, PadSide, Sampling,
    Sequence, generate, load,
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

fn prompt(len: usize, salt: usize) -> Vec<u32> {
    // Ordinary tokens only (ids >= 17 are not special in SmolLM2).
    (0..len)
        .map(|i| (17 + (i * 7919 + salt * 104_729) % 40_000) as u32)
        .collect()
}

fn main() {
    let device = Device::flex();
    let t = Instant::now();
    let m = load(DEFAULT_MODEL, &device).expect("run `just fetch-model` first");
    println!("load: {:.2} s", t.elapsed().as_secs_f64());
    let gflop_per_token = {
        let c = &m.model.config;
        let per_layer = c.d_model * (c.n_heads * c.head_dim) * 2
            + c.d_model * (c.n_kv_heads * c.head_dim) * 2
            + 3 * c.d_model * c.d_ff;
        2.0 * (per_layer * c.n_layers + c.d_model * c.vocab_size) as f64 / 1e9
    };

    // `BENCH_ONLY=prefill|decode` runs one part (for profiling).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let want = |part: &str| only.is_empty() || only == part;

    // Prefill: batch 8 x 128, logits at the last position (as generation uses it).
    let rows: Vec<Sequence> = (0..8)
        .map(|s| Sequence {
            prompt: prompt(128, s),
            response: vec![],
        })
        .collect();
    let batch = Batch::new(&rows, PadSide::Left, m.codec.pad_id).unwrap();
    let none = CaptureRequest::none();
    let run = || {
        let out = m
            .model
            .forward(
                &batch,
                ForwardArgs {
                    cache: None,
                    steering: &[],
                    capture: &none,
                    logits: Logits::Last,
                    lora: None,
                },
            )
            .unwrap();
        out.logits.unwrap().into_data();
    };
    if want("prefill") {
        run();
        let reps = 3;
        let t = Instant::now();
        for _ in 0..reps {
            run();
        }
        let secs = t.elapsed().as_secs_f64() / reps as f64;
        let tps = 8.0 * 128.0 / secs;
        let body_gflop = gflop_per_token
            - 2.0 * (m.model.config.d_model * m.model.config.vocab_size) as f64 / 1e9;
        println!(
            "prefill 8x128: {tps:.0} tokens/s ({:.0} GFLOP/s in the blocks)",
            tps * body_gflop
        );
    }
    for batch_size in [1usize, 16] {
        if !want(&format!("decode{batch_size}")) {
            continue;
        }
        let prompts: Vec<Vec<u32>> = (0..batch_size).map(|s| prompt(16, s)).collect();
        let opts = GenerateOptions {
            max_new_tokens: 128,
            sampling: Sampling::Greedy,
            seed: 0,
            batch_size,
            steering: vec![],
        };
        // No stop ids: every row generates exactly 128 tokens.
        let t = Instant::now();
        let out = generate(&m.model, &prompts, &[], m.codec.pad_id, &opts, |_| {}).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let n: usize = out.iter().map(|g| g.tokens.len()).sum();
        println!(
            "decode batch {batch_size}: {:.1} tokens/s ({n} tokens in {secs:.1} s, prefill included)",
            n as f64 / secs
        );
    }
    println!("peak RSS: {:.0} MB", peak_rss_mb());
}
