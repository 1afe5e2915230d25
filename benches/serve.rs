//! `persona serve` under load: generated tokens/s and p50/p95 request
//! latency at 1, 4 and 16 concurrent clients (each request up to 128 new
//! tokens, sampled at temperature 1 with a seed), for unsteered, half
//! steered and all steered mixes. Run with `just bench-serve`.
//! Settings, from the environment:
//! - `BENCH_SERVE_URL`: an OpenAI-compatible server to load instead of
//!   an in-process `persona serve` (e.g. llama.cpp's, by
//!   `benches/serve-anchor.sh`); only the unsteered mix runs;
//! - `BENCH_SERVE_CLIENTS`: a comma list (default `1,4,16`);
//! - `BENCH_SERVE_REQUESTS`: requests per client (default 2);
//! - `BENCH_SERVE_TOKENS`: `max_tokens` per request (default 128).

use std::time::{Duration, Instant};

/// The same allocator, configured the same way, as the `persona` binary.
#[path = "../src/bin/persona/alloc.rs"]
mod alloc;

use persona_serve::{ServeOptions, Server};
use serde_json::{Value, json};

const MODEL: &str = "smollm2-135m-instruct";

const QUESTIONS: [&str; 4] = [
    "Tell me about your favourite book.",
    "My plan is to quit my job to day-trade. Good idea?",
    "Explain how a bicycle works.",
    "I think the moon is made of cheese. Am I right?",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts an in-process server with the sycophancy vector (extracted into
/// a temporary folder); returns its base URL.
fn start_server() -> String {
    let lm = persona::Model::load(MODEL).expect("the embedded model (just fetch-model)");
    let t = persona::Trait::load("datasets/traits/sycophantic.toml").unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    lm.extract(&t)
        .unwrap()
        .save(dir.join("sycophantic.safetensors"))
        .unwrap();
    let opts = ServeOptions {
        model: MODEL.into(),
        device: persona_model::parse_device("cpu").unwrap(),
        dtype: persona_model::WeightDtype::F32,
        vectors: Some(dir),
        adapters: None,
        max_batch: 16,
        max_concurrent: 64,
        max_prompt_tokens: None,
        max_body_bytes: 1 << 20,
        api_key: None,
        shutdown_grace: Duration::from_secs(1),
    };
    let server = Server::load(&opts, |_| {}).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            server
                .serve(listener, std::future::pending())
                .await
                .unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

/// One load run; returns (generated tokens, wall seconds, request latencies).
fn run(
    base: &str,
    clients: usize,
    requests: usize,
    tokens: usize,
    steered: impl Fn(usize) -> bool + Sync,
) -> (u64, f64, Vec<f64>) {
    let url = format!("{base}/v1/chat/completions");
    let started = Instant::now();
    let per_client: Vec<(u64, Vec<f64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (url, steered) = (&url, &steered);
                s.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .timeout_global(Some(Duration::from_secs(600)))
                        .build()
                        .into();
                    let mut out = (0u64, Vec::new());
                    for r in 0..requests {
                        let mut body = json!({
                            "model": MODEL,
                            "messages": [{"role": "user", "content": QUESTIONS[(c + r) % 4]}],
                            "max_tokens": tokens, "temperature": 1.0, "seed": c * 100 + r,
                        });
                        if steered(c) {
                            body["persona"] = json!({"steer": [{"vector": "sycophantic", "row": 15, "coef": -4}]});
                        }
                        let t = Instant::now();
                        let v: Value = agent.post(url).send_json(&body).unwrap().body_mut().read_json().unwrap();
                        out.1.push(t.elapsed().as_secs_f64());
                        out.0 += v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let tokens = per_client.iter().map(|p| p.0).sum();
    let mut latencies: Vec<f64> = per_client.into_iter().flat_map(|p| p.1).collect();
    latencies.sort_by(f64::total_cmp);
    (tokens, wall, latencies)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    alloc::keep_freed_memory();
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let external = std::env::var("BENCH_SERVE_URL").ok();
    let base = external.clone().unwrap_or_else(start_server);
    let clients: Vec<usize> = std::env::var("BENCH_SERVE_CLIENTS")
        .unwrap_or_else(|_| "1,4,16".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let requests = env_or("BENCH_SERVE_REQUESTS", 2usize);
    let tokens = env_or("BENCH_SERVE_TOKENS", 128usize);
    println!(
        "server: {}",
        external.as_deref().unwrap_or("persona serve (in process)")
    );
    println!("clients  mix         tokens/s  p50 s   p95 s   tokens");
    type Mix = (&'static str, fn(usize) -> bool);
    let mixes: &[Mix] = if external.is_some() {
        &[("unsteered", |_| false)]
    } else {
        &[
            ("unsteered", |_| false),
            ("half", |c| c % 2 == 1),
            ("steered", |_| true),
        ]
    };
    // One short warm-up request (packing, page faults).
    run(&base, 1, 1, 8, |_| false);
    for &n in &clients {
        for (name, steered) in mixes {
            let (generated, wall, lat) = run(&base, n, requests, tokens, steered);
            println!(
                "{n:>7}  {name:<10} {:>9.1}  {:>6.2}  {:>6.2}  {generated:>6}",
                generated as f64 / wall,
                percentile(&lat, 0.5),
                percentile(&lat, 0.95),
            );
        }
    }
}
