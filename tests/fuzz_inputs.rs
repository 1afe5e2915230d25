//! Seeded mutation testing of every parser a user's file reaches: GGUF
//! files, HF model folders (config + safetensors + shard index), vector
//! files, adapter folders, recipes, trait files and chat templates.
//!
//! Each case mutates a valid input (bit flips, interesting integers written
//! over the header, truncation, repeated chunks; for text formats, values
//! replaced by extremes, lines dropped or repeated) and feeds it to the
//! parser, which must return `Ok` or an error and nothing else:
//! - no panic (each case runs under `catch_unwind`; panics are collected
//!   and reported with the target and case number, which replay them);
//! - no allocation beyond [`CASE_LIMIT`] live bytes (this binary's global
//!   allocator counts; an allocation past [`HARD_LIMIT`] fails at once);
//! - no hang (a watchdog aborts the process when one case runs longer than
//!   [`CASE_SECONDS`]).
//!
//! The seed is fixed, so a run is reproducible; `PERSONA_FUZZ_CASES` sets
//! the cases per target (default [`DEFAULT_CASES`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use persona_model::testing::{tiny_config, tiny_gguf};
use persona_vectors::Variant;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;

/// Live bytes one case may add on top of what was live before it.
const CASE_LIMIT: usize = 64 << 20;
/// No single moment may hold more than this: the allocation that would
/// cross it fails (and the process aborts, failing the test loudly).
const HARD_LIMIT: usize = 1 << 30;
/// A case that runs longer than this is a hang.
const CASE_SECONDS: u64 = 20;
const DEFAULT_CASES: usize = 1000;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if now > HARD_LIMIT {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's layout goes to the system allocator unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One test at a time in this binary: the allocation counts are global.
static SERIAL: Mutex<()> = Mutex::new(());

/// Number of the case running (for the watchdog) and when it started.
static CASE: AtomicUsize = AtomicUsize::new(0);
static STARTED_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    static ZERO: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ZERO.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn cases() -> usize {
    std::env::var("PERSONA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Runs `case(i, rng)` for `cases()` seeded cases; fails listing every case
/// that panicked or allocated too much.
fn fuzz(target: &str, mut case: impl FnMut(&mut ChaCha8Rng)) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    std::panic::set_hook(Box::new(|_| {}));
    let watchdog_target = target.to_string();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done_w = done.clone();
    let watchdog = std::thread::spawn(move || {
        while !done_w.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let since = now_ms().saturating_sub(STARTED_MS.load(Ordering::Relaxed));
            if since > CASE_SECONDS * 1000 {
                eprintln!(
                    "fuzz {watchdog_target}: case {} ran over {CASE_SECONDS} s: a hang",
                    CASE.load(Ordering::Relaxed)
                );
                std::process::abort();
            }
        }
    });
    let mut failures = Vec::new();
    let started = Instant::now();
    let n = cases();
    for i in 0..n {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
        rng.set_stream(i as u64);
        CASE.store(i, Ordering::Relaxed);
        STARTED_MS.store(now_ms(), Ordering::Relaxed);
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| case(&mut rng)));
        let grew = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        if outcome.is_err() {
            failures.push(format!("case {i}: panicked"));
        } else if grew > CASE_LIMIT {
            failures.push(format!("case {i}: {} MiB live", grew >> 20));
        }
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().ok();
    let _ = std::panic::take_hook();
    eprintln!(
        "fuzz {target}: {n} cases in {:.1} s, {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "fuzz {target}: {failures:#?}");
}

/// Integers that break size arithmetic.
const INTERESTING: [u64; 10] = [
    0,
    1,
    2,
    0x7f,
    0xffff_ffff,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 63,
    u64::MAX,
];

/// A few byte-level mutations, biased towards the first `hot` bytes
/// (headers, where sizes and offsets live).
fn mutate_bytes(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, hot: usize) {
    for _ in 0..rng.random_range(1..=4) {
        if data.is_empty() {
            return;
        }
        let span = if rng.random_bool(0.85) {
            hot.min(data.len())
        } else {
            data.len()
        };
        let at = rng.random_range(0..span);
        match rng.random_range(0..6) {
            0 => data[at] ^= 1 << rng.random_range(0..8),
            1 => data[at] = *[0u8, 0xff, 0x7f, 0x80].choose(rng).unwrap(),
            2 => {
                let v = INTERESTING.choose(rng).unwrap().to_le_bytes();
                let n = *[4usize, 8].choose(rng).unwrap();
                for (k, b) in v.iter().take(n).enumerate() {
                    if let Some(x) = data.get_mut(at + k) {
                        *x = *b;
                    }
                }
            }
            3 => data.truncate(at),
            4 => {
                let len = rng.random_range(1..=64).min(data.len() - at);
                let chunk = data[at..at + len].to_vec();
                data.splice(at..at, chunk);
            }
            _ => data[at] = rng.random(),
        }
    }
}

/// A JSON value replaced, somewhere in `v`, by an extreme or a wrong type
/// (or a key removed).
fn mutate_json(rng: &mut ChaCha8Rng, v: &mut serde_json::Value) {
    for _ in 0..rng.random_range(1..=4) {
        mutate_node(rng, v);
    }
}

fn mutate_node(rng: &mut ChaCha8Rng, node: &mut serde_json::Value) {
    use serde_json::{Value, json};
    match node {
        Value::Object(m) if !m.is_empty() && rng.random_bool(0.7) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = keys.choose(rng).unwrap();
            if rng.random_bool(0.1) {
                m.remove(k);
            } else if let Some(child) = m.get_mut(k) {
                mutate_node(rng, child);
            }
        }
        Value::Array(a) if !a.is_empty() && rng.random_bool(0.7) => {
            let i = rng.random_range(0..a.len());
            mutate_node(rng, &mut a[i]);
        }
        Value::Number(_) if rng.random_bool(0.8) => {
            let numbers = [
                json!(0),
                json!(1),
                json!(-1),
                json!(u64::MAX),
                json!(1u64 << 31),
                json!(1u64 << 40),
                json!(1u64 << 62),
                json!(1e308),
                json!(0.0),
                json!(-0.5),
            ];
            *node = numbers.choose(rng).unwrap().clone();
        }
        _ => {
            let extremes = [
                json!(0),
                json!(-1),
                json!(u64::MAX),
                json!(1u64 << 40),
                json!(1e308),
                json!(-1e308),
                json!(0.0),
                json!("yes"),
                json!(null),
                json!(true),
                json!([]),
                json!({}),
                json!({"rope_type": "yarn", "factor": 4.0}),
                json!("../../../dev/zero"),
            ];
            *node = extremes.choose(rng).unwrap().clone();
        }
    }
}

/// Line-level mutations of a TOML (or any line-based) text: a value
/// replaced by an extreme, a line dropped or repeated.
fn mutate_lines(rng: &mut ChaCha8Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let values = [
        "0",
        "-1",
        "nan",
        "inf",
        "-inf",
        "1e308",
        "18446744073709551615",
        "9223372036854775807",
        "4294967296",
        "1e12",
        "\"\"",
        "\"../../etc/passwd\"",
        "[]",
        "[1, 1]",
        "true",
        "{}",
        "\"/dev/zero\"",
    ];
    for _ in 0..rng.random_range(1..=3) {
        if lines.is_empty() {
            break;
        }
        let i = rng.random_range(0..lines.len());
        match rng.random_range(0..4) {
            0 | 1 => {
                if let Some(eq) = lines[i].find(" = ") {
                    let v = values.choose(rng).unwrap();
                    lines[i] = format!("{} = {v}", &lines[i][..eq]);
                }
            }
            2 => {
                lines.remove(i);
            }
            _ => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
        }
    }
    lines.join("\n")
}

/// A safetensors file with its JSON header (tensor table and metadata)
/// mutated by [`mutate_json`] and written back in front of the same data.
fn mutate_safetensors_header(rng: &mut ChaCha8Rng, bytes: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    // Metadata values are JSON held in strings: mutate inside them too.
    if let Some(meta) = header
        .get_mut("__metadata__")
        .and_then(|m| m.as_object_mut())
    {
        for v in meta.values_mut() {
            if let Some(inner) = v.as_str().and_then(|t| serde_json::from_str(t).ok())
                && rng.random_bool(0.5)
            {
                let mut inner: serde_json::Value = inner;
                mutate_json(rng, &mut inner);
                *v = inner.to_string().into();
            }
        }
    }
    if rng.random_bool(0.6) {
        mutate_json(rng, &mut header);
    }
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(&bytes[8 + n..]);
    out
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn fuzz_gguf_files() {
    let dir = scratch();
    let good = tiny_gguf(3);
    // The tensor data starts after the metadata and tensor table (~3 KB).
    fuzz("gguf", |rng| {
        let mut bytes = good.clone();
        mutate_bytes(rng, &mut bytes, 4096);
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(host) = persona_model::load_host(p.to_str().unwrap()) {
            let _ = host
                .codec
                .prompt_ids(&[persona_model::Message::user("Hi there")]);
            let _ = host.to_device(&Device::flex());
        }
    });
}

#[test]
fn fuzz_gguf_metadata_values() {
    use persona_model::gguf::Value;
    use persona_model::testing::{gguf_bytes, gguf_tensors, random_weights, tiny_gguf_metadata};
    let dir = scratch();
    let cfg = tiny_config();
    let tensors = gguf_tensors(&cfg, &random_weights(&cfg, 2));
    let meta = tiny_gguf_metadata();
    let keys: Vec<String> = meta.keys().cloned().collect();
    fuzz("gguf metadata", |rng| {
        let mut m = meta.clone();
        for _ in 0..rng.random_range(1..=3) {
            let k = keys.choose(rng).unwrap().clone();
            let v = match rng.random_range(0..5) {
                0 => Value::U64(*INTERESTING.choose(rng).unwrap()),
                1 => Value::F64(*[f64::NAN, f64::INFINITY, -1.0, 0.0, 1e300].choose(rng).unwrap()),
                2 => Value::Str("{% for a in range(99999) %}{% for b in range(99999) %}x{% endfor %}{% endfor %}".into()),
                3 => Value::Array(vec![Value::I64(-1)]),
                _ => {
                    m.remove(&k);
                    continue;
                }
            };
            m.insert(k, v);
        }
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, gguf_bytes(&m, &tensors)).unwrap();
        if let Ok(host) = persona_model::load_host(p.to_str().unwrap()) {
            let _ = host.codec.prompt_ids(&[persona_model::Message::user("Hi")]);
        }
    });
}

#[test]
fn fuzz_gguf_tensor_shapes() {
    use persona_model::testing::{gguf_bytes, gguf_tensors, random_weights, tiny_gguf_metadata};
    let dir = scratch();
    let cfg = tiny_config();
    let good = gguf_tensors(&cfg, &random_weights(&cfg, 2));
    let meta = tiny_gguf_metadata();
    fuzz("gguf tensor shapes", |rng| {
        let mut tensors = good.clone();
        for _ in 0..rng.random_range(1..=2) {
            let i = rng.random_range(0..tensors.len());
            let d = |rng: &mut ChaCha8Rng| *[0usize, 1, 2, 7, 32, 1 << 20].choose(rng).unwrap();
            let shape = match rng.random_range(0..4) {
                0 => vec![],
                1 => vec![d(rng)],
                2 => vec![d(rng), d(rng)],
                _ => vec![d(rng), d(rng), d(rng)],
            };
            // Data for small shapes; huge ones keep theirs and run past the end.
            let n: usize = shape.iter().product();
            let data = if n <= 1 << 16 {
                vec![0.25; n]
            } else {
                tensors[i].2.clone()
            };
            tensors[i].1 = shape;
            tensors[i].2 = data;
            if rng.random_bool(0.2) {
                tensors.remove(rng.random_range(0..tensors.len()));
            }
        }
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, gguf_bytes(&meta, &tensors)).unwrap();
        if let Ok(host) = persona_model::load_host(p.to_str().unwrap()) {
            let _ = host.to_device(&Device::flex());
        }
    });
}

/// The tiny model as an HF folder.
fn tiny_hf(dir: &Path) -> PathBuf {
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, tiny_gguf(3)).unwrap();
    let out = dir.join("hf");
    persona_model::testing::write_hf_copy(gguf.to_str().unwrap(), &out);
    out
}

#[test]
fn fuzz_hf_folders() {
    let dir = scratch();
    let good = tiny_hf(dir.path());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(good.join("config.json")).unwrap()).unwrap();
    let weights = std::fs::read(good.join("model.safetensors")).unwrap();
    fuzz("hf folder", |rng| {
        let case = dir.path().join("case");
        let _ = std::fs::remove_dir_all(&case);
        std::fs::create_dir_all(&case).unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(good.join(f), case.join(f)).unwrap();
        }
        let mut cfg = config.clone();
        let mut st = weights.clone();
        match rng.random_range(0..4) {
            0 => mutate_json(rng, &mut cfg),
            1 => mutate_bytes(rng, &mut st, 2048),
            2 => st = mutate_safetensors_header(rng, &weights),
            _ => {
                let mut index =
                    serde_json::json!({"weight_map": {"model.norm.weight": "model.safetensors"}});
                mutate_json(rng, &mut index);
                std::fs::write(case.join("model.safetensors.index.json"), index.to_string())
                    .unwrap();
            }
        }
        std::fs::write(case.join("config.json"), cfg.to_string()).unwrap();
        std::fs::write(case.join("model.safetensors"), &st).unwrap();
        let _ = persona_model::load_host(case.to_str().unwrap());
    });
}

/// A valid vector file for the tiny model's shape.
fn tiny_vector(path: &Path) {
    use persona_vectors::file::{FORMAT_VERSION, ROW_CONVENTION};
    let cfg = tiny_config();
    let mut f = persona_vectors::VectorFile::new(persona_vectors::VectorMeta {
        format_version: FORMAT_VERSION,
        row_convention: ROW_CONVENTION.into(),
        model_name: "tiny".into(),
        model_sha256: "0".repeat(64),
        d_model: cfg.d_model,
        n_layers: cfg.n_layers,
        extra: serde_json::json!({"trait": "t"}),
    });
    for v in [Variant::ResponseAvg, Variant::PromptAvg] {
        f.variants
            .insert(v, vec![0.5; (cfg.n_layers + 1) * cfg.d_model]);
    }
    f.save(path).unwrap();
}

/// A vector file built from random metadata sizes and tensor shapes that
/// agree with them in wrapping arithmetic (as a careless writer would
/// compute `n_layers + 1`), with data when the shape is small.
fn generated_vector_file(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let sizes = [0u64, 1, 3, 32, 1 << 40, u64::MAX];
    let (n_layers, d_model) = (*sizes.choose(rng).unwrap(), *sizes.choose(rng).unwrap());
    let meta = serde_json::json!({"format_version": persona_vectors::file::FORMAT_VERSION,
        "row_convention": persona_vectors::file::ROW_CONVENTION, "model_name": "x",
        "model_sha256": "y", "d_model": d_model, "n_layers": n_layers});
    let rows = n_layers.wrapping_add(1) as usize;
    let shape = vec![rows, d_model as usize];
    let n = rows
        .checked_mul(d_model as usize)
        .filter(|&n| n <= 4096)
        .unwrap_or(0);
    let data: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let mut tensors = serde_json::Map::new();
    if rng.random_bool(0.8) {
        tensors.insert(
            "response_avg".into(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [0, data.len()]}),
        );
    }
    tensors.insert(
        "__metadata__".into(),
        serde_json::json!({"persona": meta.to_string()}),
    );
    let text = serde_json::Value::Object(tensors).to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(data);
    out
}

#[test]
fn fuzz_vector_files() {
    let dir = scratch();
    let p = dir.path().join("v.safetensors");
    tiny_vector(&p);
    let good = std::fs::read(&p).unwrap();
    fuzz("vector file", |rng| {
        let bytes = if rng.random_bool(0.3) {
            generated_vector_file(rng)
        } else if rng.random_bool(0.5) {
            mutate_safetensors_header(rng, &good)
        } else {
            let mut b = good.clone();
            mutate_bytes(rng, &mut b, 1024);
            b
        };
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(f) = persona_vectors::VectorFile::load(&p) {
            // Every row, as `persona vector info` prints them.
            for row in 0..=f.meta.n_layers {
                for variant in f.variants.keys() {
                    let _ = f.unit_row(*variant, row);
                }
            }
            let _ = persona_vectors::export::llama_cpp_control_vector(
                &f,
                Variant::ResponseAvg,
                &[2],
                1.0,
                "x",
            );
        }
    });
}

#[test]
fn fuzz_adapter_folders() {
    use persona_model::{Lora, Scaling, Target};
    let dir = scratch();
    let cfg = tiny_config();
    let good = dir.path().join("good");
    let lora = Lora::init(
        &cfg,
        &[Target::Q, Target::Down],
        2,
        4.0,
        Scaling::Rslora,
        1,
        &Device::flex(),
    )
    .unwrap();
    persona_train::checkpoint::write_adapter(
        &good,
        &lora,
        persona_train::checkpoint::AdapterMeta {
            base_model: "tiny",
            lora_dropout: 0.0,
        },
    )
    .unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(good.join("adapter_config.json")).unwrap())
            .unwrap();
    let weights = std::fs::read(good.join("adapter_model.safetensors")).unwrap();
    let base = persona_model::testing::random_weights(&cfg, 1);
    fuzz("adapter folder", |rng| {
        let case = dir.path().join("case");
        std::fs::create_dir_all(&case).unwrap();
        let mut c = config.clone();
        let mut w = weights.clone();
        match rng.random_range(0..3) {
            0 => mutate_json(rng, &mut c),
            1 => mutate_bytes(rng, &mut w, 2048),
            _ => w = mutate_safetensors_header(rng, &weights),
        }
        std::fs::write(case.join("adapter_config.json"), c.to_string()).unwrap();
        std::fs::write(case.join("adapter_model.safetensors"), &w).unwrap();
        if let Ok(l) = persona_train::checkpoint::read_adapter(&case, &cfg, &Device::flex()) {
            let _ = l.merge_into(&mut base.clone());
        }
    });
}

#[test]
fn fuzz_recipes() {
    let repo = common::repo();
    let dir = scratch();
    let gguf = dir.path().join("tiny.gguf");
    std::fs::write(&gguf, tiny_gguf(3)).unwrap();
    let vector = dir.path().join("v.safetensors");
    tiny_vector(&vector);
    // The smoke recipe on the tiny model, with absolute paths.
    let text = std::fs::read_to_string(repo.join("recipes/smoke.toml"))
        .unwrap()
        .replace("smollm2-135m-instruct\"", &format!("{}\"", gguf.display()))
        .replace("\"datasets/", &format!("\"{}/datasets/", repo.display()))
        .replace(
            "\"checkpoints/vectors/smollm2-135m-instruct/sycophantic-smoke.safetensors\"",
            &format!("\"{}\"", vector.display()),
        )
        .replace("layers = [15]", "layers = [2]");
    let p = dir.path().join("r.toml");
    fuzz("recipe", |rng| {
        std::fs::write(&p, mutate_lines(rng, &text)).unwrap();
        if let Ok(r) = persona_train::Recipe::load(&p)
            && r.check_static().is_ok()
            && let Ok((cfg, id)) = persona_model::inspect(&r.model.name)
        {
            let _ = r.check_model(&cfg, &id);
        }
    });
}

#[test]
fn fuzz_trait_files() {
    let repo = common::repo();
    let text = std::fs::read_to_string(repo.join("datasets/traits/sycophantic.toml")).unwrap();
    let dir = scratch();
    let p = dir.path().join("t.toml");
    fuzz("trait file", |rng| {
        std::fs::write(&p, mutate_lines(rng, &text)).unwrap();
        let _ = persona_vectors::TraitDef::load(&p);
    });
}

#[test]
fn fuzz_chat_templates() {
    use persona_model::gguf::Value;
    use persona_model::testing::{gguf_bytes, gguf_tensors, random_weights, tiny_gguf_metadata};
    let dir = scratch();
    let cfg = tiny_config();
    let tensors = gguf_tensors(&cfg, &random_weights(&cfg, 2));
    let pieces = [
        "{% for m in messages %}",
        "{% endfor %}",
        "{% for i in range(2) %}",
        "{% for i in range(100000) %}",
        "{{ m['content'] }}",
        "{{ m.content * 1000 }}",
        "{{ 'ab' * 100000 }}",
        "{% if add_generation_prompt %}",
        "{% endif %}",
        "{% set x = messages %}",
        "{{ raise_exception('no') }}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
        "{{ messages[0]['content'] | upper }}",
        "{{ eos_token }}",
        "<|im_start|>",
        "{{",
        "}}",
        "x",
    ];
    fuzz("chat template", |rng| {
        let t: String = (0..rng.random_range(1..=12))
            .map(|_| *pieces.choose(rng).unwrap())
            .collect();
        let mut m = tiny_gguf_metadata();
        m.insert("tokenizer.chat_template".into(), Value::Str(t));
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, gguf_bytes(&m, &tensors)).unwrap();
        if let Ok(host) = persona_model::load_host(p.to_str().unwrap()) {
            let _ = host.codec.prompt_ids(&[
                persona_model::Message::system("Be brief."),
                persona_model::Message::user("Hi there"),
            ]);
        }
    });
}
