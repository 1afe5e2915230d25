//! `persona serve` on the embedded model, driven over HTTP on 127.0.0.1:
//! answers equal the runtime's (alone and in mixed batches), monitoring
//! equals `persona monitor`, OpenAI's shapes, errors that name the field,
//! limits, authentication, disconnects, shutdown, and this project's
//! `openai` judge pointed at the server.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use persona::{Model, Trait};
use serde_json::{Value, json};

const MODEL: &str = "smollm2-135m-instruct";

/// A running `persona serve`; killed when dropped.
struct ServerProcess {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    fn start(vectors: &Path, extra: &[&str]) -> Self {
        let home = common::repo().join("checkpoints");
        let mut child = common::persona(&home)
            .args(["serve", "--port", "0", "--vectors"])
            .arg(vectors)
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Self { child, base, log }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// POSTs JSON; (status, body as JSON, Retry-After).
fn post(url: &str, body: &Value, key: Option<&str>) -> (u16, Value, Option<String>) {
    let mut req = agent().post(url);
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    let mut r = req.send_json(body).unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.body_mut().read_to_string().unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (r.status().as_u16(), v, retry)
}

fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = agent().get(url);
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    let mut r = req.call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// The raw text of a streamed answer.
fn post_stream(url: &str, body: &Value) -> String {
    let mut r = agent().post(url).send_json(body).unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.body_mut().read_to_string().unwrap()
}

/// The embedded model, its sycophancy vector, and a folder holding it.
struct Fixture {
    lm: Model,
    syc: persona::PersonaVector,
    vectors: PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        std::env::set_current_dir(common::repo()).unwrap();
        let lm = Model::load(MODEL).unwrap();
        let syc = lm
            .extract(&Trait::load("datasets/traits/sycophantic.toml").unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let vectors = dir.path().join("vectors");
        std::fs::create_dir(&vectors).unwrap();
        syc.save(vectors.join("sycophantic.safetensors")).unwrap();
        Fixture {
            lm,
            syc,
            vectors,
            _dir: dir,
        }
    })
}

/// The server most tests share (default limits, no key).
fn shared() -> &'static ServerProcess {
    static S: OnceLock<ServerProcess> = OnceLock::new();
    S.get_or_init(|| ServerProcess::start(&fixture().vectors, &[]))
}

const QUESTIONS: [&str; 4] = [
    "I think the moon is made of cheese. Am I right?",
    "My plan is to quit my job to day-trade. Good idea?",
    "What is the capital of France?",
    "Is it healthy to drink only soda?",
];

fn chat_body(q: &str, coef: Option<f64>, stream: bool, max_tokens: usize) -> Value {
    let mut b = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": q}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    });
    if let Some(c) = coef {
        b["persona"] = json!({"steer": [{"vector": "sycophantic", "row": 15, "coef": c}]});
    }
    b
}

/// The concatenated content deltas of a streamed chat answer; checks the
/// SSE framing on the way (every event one `data:` line and a blank line,
/// `[DONE]` last).
fn streamed_content(raw: &str) -> String {
    let events: Vec<&str> = raw.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{raw}");
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let data = e
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("bad event {e:?}"));
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
    }
    text
}

/// Greedy answers through the server, 32 clients at once (steered,
/// unsteered, streamed), equal the runtime's answer to each request alone;
/// an unsteered answer's log-probabilities in that mixed batch are the
/// same bits as when it ran alone.
#[test]
fn answers_equal_the_runtime_alone_and_in_mixed_batches() {
    let f = fixture();
    let s = shared();
    let url = s.url("/v1/chat/completions");
    let want = |q: &str, coef: Option<f32>| {
        let chat = f.lm.chat(q).max_tokens(24);
        match coef {
            Some(c) => chat.steer(f.syc.at(15) * c).generate().unwrap(),
            None => chat.generate().unwrap(),
        }
    };
    let with_logprobs = |q: &str| {
        let mut b = chat_body(q, None, false, 24);
        b["logprobs"] = json!(true);
        b["top_logprobs"] = json!(3);
        b
    };
    let alone: Vec<Value> = QUESTIONS
        .iter()
        .map(|q| post(&url, &with_logprobs(q), None).1)
        .collect();
    let coefs = [None, Some(-4.0), Some(4.0)];
    let expected: Vec<Vec<String>> = QUESTIONS
        .iter()
        .map(|q| coefs.iter().map(|c| want(q, *c)).collect())
        .collect();
    for (q, a) in alone.iter().enumerate() {
        assert_eq!(a["choices"][0]["message"]["content"], expected[q][0]);
    }
    let results: Vec<(usize, usize, bool, String, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let url = url.clone();
                let with_logprobs = &with_logprobs;
                scope.spawn(move || {
                    let (q, c, stream) = (i % 4, (i / 4) % 3, i % 8 >= 4);
                    let coef = coefs[c].map(f64::from);
                    if stream {
                        let raw = post_stream(&url, &chat_body(QUESTIONS[q], coef, true, 24));
                        (q, c, true, streamed_content(&raw), Value::Null)
                    } else {
                        let body = match coef {
                            None => with_logprobs(QUESTIONS[q]),
                            Some(_) => chat_body(QUESTIONS[q], coef, false, 24),
                        };
                        let (status, v, _) = post(&url, &body, None);
                        assert_eq!(status, 200, "{v}");
                        let text = v["choices"][0]["message"]["content"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        (q, c, false, text, v)
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (q, c, stream, text, v) in &results {
        assert_eq!(
            text, &expected[*q][*c],
            "question {q}, coef {:?}, stream {stream}",
            coefs[*c]
        );
        if coefs[*c].is_none() && !stream {
            assert_eq!(
                v["choices"][0]["logprobs"], alone[*q]["choices"][0]["logprobs"],
                "question {q}: log-probabilities in a mixed batch"
            );
        }
    }
    assert_ne!(
        expected[0][0], expected[0][1],
        "steering changes the answer"
    );
    // One log line per request, with its steering.
    let log = s.log.lock().unwrap().join("\n");
    assert!(log.contains("steering=[steer sycophantic@15 -4]"), "{log}");
}

/// The prompt projection a request's `monitor` reports equals the one
/// `persona monitor` (the front door's `project`) computes; the answer's
/// mean is the mean of its per-token projections.
#[test]
fn monitoring_equals_persona_monitor() {
    let f = fixture();
    let s = shared();
    let q = QUESTIONS[1];
    let mut body = chat_body(q, None, false, 12);
    body["persona"] = json!({"monitor": [{"vector": "sycophantic", "row": 15, "per_token": true}]});
    let (status, v, _) = post(&s.url("/v1/chat/completions"), &body, None);
    assert_eq!(status, 200, "{v}");
    let p = &v["persona"]["projections"]["sycophantic"];
    let want = f.lm.chat(q).monitor(&f.syc.at(15)).project().unwrap();
    let got = p["prompt_last"].as_f64().unwrap();
    assert!(
        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    let per_token: Vec<f64> = p["per_token"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(
        per_token.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mean = per_token.iter().sum::<f64>() / per_token.len() as f64;
    let got_mean = p["response_mean"].as_f64().unwrap();
    assert!(
        (mean - got_mean).abs() <= 1e-4 * mean.abs().max(1.0),
        "{mean} vs {got_mean}"
    );
    // The running mean reaches the metrics.
    let (_, metrics) = get(&s.url("/metrics"), None);
    assert!(
        metrics.contains("persona_monitor_projection_mean{"),
        "{metrics}"
    );
}

/// OpenAI's shapes and semantics: usage, finish reasons, stop strings,
/// `n` with a seed, log-probabilities in both layouts, models, health.
#[test]
fn completions_follow_openai_semantics() {
    let s = shared();
    let chat = s.url("/v1/chat/completions");
    let mut b = chat_body(QUESTIONS[2], None, false, 5);
    b["logprobs"] = json!(true);
    b["top_logprobs"] = json!(20);
    let (status, v, _) = post(&chat, &b, None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 5);
    for pos in content {
        let top = pos["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 20);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(pos["token"], top[0]["token"]);
        assert_eq!(pos["logprob"], top[0]["logprob"]);
        let total: f64 = top
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap().exp())
            .sum();
        assert!(total <= 1.0 + 1e-9);
    }
    // A stop string ends the answer and is left out; a stop token says "stop".
    let plain = post(&chat, &chat_body(QUESTIONS[2], None, false, 30), None).1;
    let text = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(plain["choices"][0]["finish_reason"], "stop", "{plain}");
    let mut b = chat_body(QUESTIONS[2], None, false, 30);
    b["stop"] = json!(["Paris"]);
    let cut = post(&chat, &b, None).1;
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    let before = text.split("Paris").next().unwrap();
    assert_eq!(cut["choices"][0]["message"]["content"], before, "{text}");
    // n answers with a seed: reproducible, each its own stream.
    let sampled = json!({
        "model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 12, "temperature": 1.0, "n": 3, "seed": 7,
    });
    let (a, b2) = (post(&chat, &sampled, None).1, post(&chat, &sampled, None).1);
    assert_eq!(a["choices"], b2["choices"]);
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    assert_eq!(a["persona"]["seed"], 7);
    assert_ne!(a["choices"][0]["message"], a["choices"][1]["message"]);
    // Completions: raw text, the legacy log-probability layout.
    let (status, c, _) = post(
        &s.url("/v1/completions"),
        &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 2}),
        None,
    );
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    let lp = &c["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    let joined: String = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(joined, c["choices"][0]["text"].as_str().unwrap());
    // Models and health.
    let (status, models) = get(&s.url("/v1/models"), None);
    assert_eq!(status, 200);
    assert!(models.contains(&format!("\"id\":\"{MODEL}\"")), "{models}");
    assert_eq!(get(&s.url("/health"), None).0, 200);
}

/// Bad requests get a 4xx with OpenAI's error body naming the field.
#[test]
fn bad_requests_name_the_field() {
    let s = shared();
    let chat = s.url("/v1/chat/completions");
    let with = |persona: Value| {
        let mut b = chat_body(QUESTIONS[0], None, false, 4);
        b["persona"] = persona;
        b
    };
    let cases = [
        (
            with(json!({"steer": [{"vector": "nope", "row": 15, "coef": 1}]})),
            400,
            "persona.steer[0].vector",
        ),
        (
            with(json!({"steer": [{"vector": "sycophantic", "row": 99, "coef": 1}]})),
            400,
            "persona.steer[0].row",
        ),
        (
            with(json!({"steer": [{"vector": "sycophantic", "row": 15, "coef": 1e39}]})),
            400,
            "persona.steer[0].coef",
        ),
        (
            // Finite, but its product with the vector overflows f32.
            with(json!({"steer": [{"vector": "sycophantic", "row": 15, "coef": 3e38}]})),
            400,
            "persona.steer[0]",
        ),
        (
            with(json!({"steer": [{"vector": "sycophantic", "coef": 1}]})),
            400,
            "persona.steer[0].row",
        ),
        (
            with(json!({"cap": {"vector": "sycophantic", "row": 15, "min": 2, "max": 1}})),
            400,
            "persona.cap[0]",
        ),
        (
            with(json!({"monitor": ["sycophantic"], "stear": []})),
            400,
            "persona",
        ),
        (
            with(json!({"ablate": {"vector": "sycophantic", "row": 15, "positions": "nowhere"}})),
            400,
            "persona.ablate",
        ),
        (
            json!({"model": "other", "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "model",
        ),
        (json!({"model": MODEL, "messages": []}), 400, "messages"),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": -1}),
            400,
            "temperature",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 0}),
            400,
            "n",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 1}),
            400,
            "presence_penalty",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "tool", "content": "hi"}]}),
            400,
            "messages[0].role",
        ),
    ];
    for (body, status, param) in cases {
        let (got, v, _) = post(&chat, &body, None);
        assert_eq!(got, status, "{body}: {v}");
        let p = v["error"]["param"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"));
        assert!(p.starts_with(param), "{body}: param {p}, want {param}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // A prompt longer than the context (8192 tokens) names the field it
    // came from on each endpoint.
    let long = "hi ".repeat(9000);
    let too_long = [
        (
            chat.clone(),
            json!({"model": MODEL, "messages": [{"role": "user", "content": long}]}),
            "messages",
        ),
        (
            s.url("/v1/completions"),
            json!({"model": MODEL, "prompt": long}),
            "prompt",
        ),
    ];
    for (url, body, param) in too_long {
        let (got, v, _) = post(&url, &body, None);
        assert_eq!(
            (got, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains("at most"),
            "{v}"
        );
    }
    // Not JSON, and a body over the limit.
    let mut r = agent()
        .post(&chat)
        .content_type("application/json")
        .send("{oops")
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("JSON"),
        "{v}"
    );
}

/// Vectors are listed, loaded from a path and unloaded while serving; a
/// vector of another model is refused.
#[test]
fn vectors_are_managed_while_serving() {
    let f = fixture();
    let s = shared();
    let url = s.url("/v1/persona/vectors");
    let (status, list) = get(&url, None);
    assert_eq!(status, 200);
    assert!(list.contains("\"name\":\"sycophantic\""), "{list}");
    let path = f.vectors.join("sycophantic.safetensors");
    let (status, v, _) = post(&url, &json!({"path": path, "name": "syc2"}), None);
    assert_eq!(status, 201, "{v}");
    let mut b = chat_body(QUESTIONS[0], None, false, 4);
    b["persona"] = json!({"steer": [{"vector": "syc2", "row": 15, "coef": -4}]});
    assert_eq!(post(&s.url("/v1/chat/completions"), &b, None).0, 200);
    let r = agent().delete(&format!("{url}/syc2")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, v, _) = post(&s.url("/v1/chat/completions"), &b, None);
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("persona.steer[0].vector"))
    );
    // A vector file of another model (its weights hash differs).
    let mut other = persona_vectors::VectorFile::load(&path).unwrap();
    other.meta.model_sha256 = "0".repeat(64);
    let dir = tempfile::tempdir().unwrap();
    let other_path = dir.path().join("other.safetensors");
    other.save(&other_path).unwrap();
    let (status, v, _) = post(&url, &json!({"path": other_path}), None);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "path");
    // Not a file, or endless: refused before reading.
    for path in ["/no/such/file.safetensors", "/dev/zero", "/tmp"] {
        let (status, v, _) = post(&url, &json!({"path": path}), None);
        assert_eq!(status, 400, "{path}: {v}");
    }
}

/// With a key every endpoint needs it; past `--max-concurrent` a request
/// gets 429 with Retry-After; a client that leaves mid-stream frees its
/// batch row.
#[test]
fn keys_limits_and_disconnects() {
    let s = ServerProcess::start(
        &fixture().vectors,
        &[
            "--api-key",
            "sesame",
            "--max-concurrent",
            "1",
            "--max-body-bytes",
            "400",
        ],
    );
    for path in ["/health", "/v1/models", "/metrics", "/v1/persona/vectors"] {
        assert_eq!(get(&s.url(path), None).0, 401, "{path}");
        assert_eq!(get(&s.url(path), Some("wrong")).0, 401, "{path}");
        assert_eq!(get(&s.url(path), Some("sesame")).0, 200, "{path}");
    }
    let chat = s.url("/v1/chat/completions");
    assert_eq!(post(&chat, &chat_body("hi", None, false, 2), None).0, 401);
    // A body over --max-body-bytes (small enough to arrive whole before
    // the answer, so the client sees it rather than a closed socket).
    let long_question = "why? ".repeat(100);
    let (status, v, _) = post(
        &chat,
        &chat_body(&long_question, None, false, 2),
        Some("sesame"),
    );
    assert_eq!(status, 413, "{v}");
    // A long streamed answer holds the one slot; the client reads a
    // little, then closes its connection (a raw socket: an HTTP client
    // library may keep a connection open for reuse).
    let mut long = chat_body(QUESTIONS[1], None, true, 2000);
    long["temperature"] = json!(1.0);
    let body = long.to_string();
    let host = s.base.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(host).unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sesame\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 512];
    let mut read = 0;
    while !String::from_utf8_lossy(&first[..read]).contains("data: ") {
        read += socket.read(&mut first[read..]).unwrap();
    }
    let (status, v, retry) = post(&chat, &chat_body("hi", None, false, 2), Some("sesame"));
    assert_eq!(status, 429, "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    drop(socket);
    let rows = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("persona_batch_rows{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = get(&s.url("/metrics"), Some("sesame"));
        let ok = post(&chat, &chat_body("hi", None, false, 2), Some("sesame")).0 == 200;
        if ok && rows(&m) == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "the row was not freed: {m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGTERM: the server stops accepting, finishes the request in flight,
/// and exits 0.
#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut s = ServerProcess::start(&fixture().vectors, &[]);
    let chat = s.url("/v1/chat/completions");
    let client =
        std::thread::spawn(move || post(&chat, &chat_body(QUESTIONS[3], None, false, 40), None));
    // Wait until the request is decoding.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !get(&s.url("/metrics"), None)
        .1
        .contains("persona_batch_rows{model=\"smollm2-135m-instruct\"} 1")
    {
        assert!(Instant::now() < deadline, "the request never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) }, 0);
    let (status, v, _) = client.join().unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let code = s.child.wait().unwrap();
    assert_eq!(code.code(), Some(0));
    assert!(s.log.lock().unwrap().iter().any(|l| l.contains("stopped")));
}

/// This project's `openai` judge, pointed at `persona serve`, scores a
/// rubric end to end (the model's own numbers: SmolLM2 is no judge).
#[test]
fn the_openai_judge_scores_through_persona_serve() {
    let s = shared();
    let cfg = persona_judge::JudgeConfig::Openai(persona_judge::openai::OpenAiConfig {
        base_url: s.url("/v1"),
        model: MODEL.into(),
        api_key_env: None,
        concurrency: 2,
        max_retries: 0,
        backoff_ms: 10,
        timeout_s: 120,
    });
    let judge = persona_judge::Judge::from_config(&cfg).unwrap();
    // A prompt SmolLM2 answers with a digit first (it answers no rubric so).
    let prompt = "Count from 1 to 5.".to_string();
    let scores = judge.score_prompts(&[prompt.clone(), prompt]).unwrap();
    assert_eq!(scores.len(), 2);
    let score = scores[0].expect("the model's first tokens hold digits");
    assert!((0.0..=100.0).contains(&score), "{score}");
    assert_eq!(scores[0], scores[1], "greedy judgments repeat");
}

/// A run folder under `--adapters` is served as `<model>:<folder>`, its
/// adapters merged: its answer equals the merged model's through the
/// runtime, and differs from the base model's.
#[test]
fn adapter_folders_are_served_as_models() {
    use burn::tensor::Device;
    use persona_model::Target;
    let f = fixture();
    let runs = tempfile::tempdir().unwrap();
    std::fs::create_dir(runs.path().join("still-training")).unwrap();
    common::write_test_adapter(
        &f.lm.runtime().model.config,
        &[Target::Q, Target::V, Target::Down],
        4,
        &runs.path().join("tuned").join("adapter"),
    );
    let s = ServerProcess::start(&f.vectors, &["--adapters", runs.path().to_str().unwrap()]);
    let (_, models) = get(&s.url("/v1/models"), None);
    let ids: Vec<String> = serde_json::from_str::<Value>(&models).unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let tuned_id = format!("{MODEL}:tuned");
    assert_eq!(
        ids,
        [MODEL.to_string(), tuned_id.clone()],
        "a folder without adapters is skipped"
    );
    let mut body = chat_body(QUESTIONS[0], None, false, 16);
    body["model"] = json!(tuned_id);
    let (status, v, _) = post(&s.url("/v1/chat/completions"), &body, None);
    assert_eq!(status, 200, "{v}");
    let arm = persona_eval::Arm {
        id: "tuned".into(),
        label: "tuned".into(),
        model: MODEL.into(),
        dtype: Default::default(),
        adapter: Some(runs.path().join("tuned")),
        step: None,
        steer: None,
        cap: None,
        system: None,
    };
    let (merged, _) = arm.load(&Device::flex()).unwrap();
    let prompt = merged
        .codec
        .prompt_ids(&[persona::Message::user(QUESTIONS[0])])
        .unwrap();
    let opts = persona_model::GenerateOptions {
        max_new_tokens: 16,
        sampling: persona_model::Sampling::Greedy,
        seed: 0,
        batch_size: 1,
        steering: vec![],
    };
    let g = persona_model::generate(
        &merged.model,
        &[prompt],
        &merged.codec.stop_ids,
        merged.codec.pad_id,
        &opts,
        |_| {},
    )
    .unwrap();
    let want = merged.codec.decode_clean(g[0].content_tokens()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], want);
    let base = f.lm.chat(QUESTIONS[0]).max_tokens(16).generate().unwrap();
    assert_ne!(want, base, "the adapters change the answer");
}

/// A sampled, steered answer through the server is the one `persona
/// generate --steer --temperature --seed` gives (the same sampling stream).
#[test]
fn sampled_steered_answers_equal_persona_generate_with_the_seed() {
    let f = fixture();
    let s = shared();
    let mut body = chat_body(QUESTIONS[1], Some(-2.0), false, 24);
    body["temperature"] = json!(0.8);
    body["top_p"] = json!(0.9);
    body["seed"] = json!(11);
    let (status, v, _) = post(&s.url("/v1/chat/completions"), &body, None);
    assert_eq!(status, 200, "{v}");
    let want =
        f.lm.chat(QUESTIONS[1])
            .steer(f.syc.at(15) * -2.0)
            .max_tokens(24)
            .sample(0.8, 0.9, 11)
            .unwrap()
            .generate()
            .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], want);
    assert_eq!(v["persona"]["seed"], 11);
}
