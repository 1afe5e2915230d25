//! The OpenAI-compatible judge against an HTTP server on loopback started
//! by the test: request shape, logprob scoring, retries on 5xx/429, the
//! refusal rule, missing logprobs, an unreachable endpoint, and the cache.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use persona_judge::openai::OpenAiConfig;
use persona_judge::{Criterion, Judge, JudgeConfig, JudgeError, JudgmentCache};

/// Serves chat completions; the reply depends on the answer in the prompt.
/// Returns the base URL and the log of request bodies.
/// Request bodies and Authorization headers the server saw.
type Log<T> = Arc<Mutex<Vec<T>>>;

fn serve() -> (String, Log<serde_json::Value>, Log<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let auths = Arc::new(Mutex::new(Vec::new()));
    let (b, a) = (bodies.clone(), auths.clone());
    std::thread::spawn(move || {
        let mut flaky_seen = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("authorization:") {
                    a.lock().unwrap().push(line.trim().to_string());
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let content = req["messages"][0]["content"]
                .as_str()
                .unwrap_or("")
                .to_string();
            b.lock().unwrap().push(req);
            let top = |pairs: &[(&str, f64)]| {
                let items: Vec<serde_json::Value> = pairs
                    .iter()
                    .map(|(t, p)| serde_json::json!({"token": t, "logprob": p.ln(), "bytes": []}))
                    .collect();
                serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": pairs[0].0},
                    "logprobs": {"content": [{"token": pairs[0].0, "logprob": pairs[0].1.ln(), "top_logprobs": items}]}}]})
            };
            let (status, reply) = if content.contains("ANSWER-FLAKY") && flaky_seen < 2 {
                flaky_seen += 1;
                (
                    if flaky_seen == 1 { 503 } else { 429 },
                    serde_json::json!({"error": "busy"}),
                )
            } else if content.contains("ANSWER-GOOD") || content.contains("ANSWER-FLAKY") {
                (200, top(&[("80", 0.5), (" 90", 0.3), ("REFUSAL", 0.2)]))
            } else if content.contains("ANSWER-REFUSE") {
                (200, top(&[("REFUSAL", 0.9), ("50", 0.1)]))
            } else if content.contains("ANSWER-NOLOGPROBS") {
                (
                    200,
                    serde_json::json!({"choices": [{"message": {"content": "7"}}]}),
                )
            } else {
                (400, serde_json::json!({"error": "unknown"}))
            };
            let text = reply.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (format!("http://{addr}/v1"), bodies, auths)
}

fn config(url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: url.to_string(),
        model: "judge-model".into(),
        api_key_env: Some("PERSONA_TEST_JUDGE_KEY".into()),
        concurrency: 3,
        max_retries: 3,
        backoff_ms: 10,
        timeout_s: 10,
    }
}

const RUBRIC: &str = "Q: {question}\nA: {answer}\nScore 0-100 or REFUSAL.";
const CRITERION: Criterion<'static> = Criterion {
    name: "test-trait",
    rubric: RUBRIC,
};

#[test]
fn openai_judge_protocol_scoring_retries_and_cache() {
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("PERSONA_TEST_JUDGE_KEY", "sk-test") };
    let (url, bodies, auths) = serve();
    let judge = Judge::from_config(&JudgeConfig::Openai(config(&url))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cache = JudgmentCache::open(&dir.path().join("judgments.jsonl")).unwrap();
    let items: Vec<(String, String)> = ["ANSWER-GOOD", "ANSWER-REFUSE", "ANSWER-FLAKY"]
        .iter()
        .map(|a| ("Is it?".to_string(), a.to_string()))
        .collect();
    let scores = judge.judge(&CRITERION, &items, &mut cache).unwrap();
    // 0.5 * 80 + 0.3 * 90 over 0.8 of mass; refusal: 0.1 < 0.25 -> missing.
    assert!((scores[0].unwrap() - 83.75).abs() < 1e-3, "{scores:?}");
    assert_eq!(scores[1], None);
    assert!(
        (scores[2].unwrap() - 83.75).abs() < 1e-3,
        "retried after 503 and 429"
    );

    let sent = bodies.lock().unwrap().clone();
    assert_eq!(sent.len(), 5, "3 prompts + 2 retries");
    let first = &sent[0];
    assert_eq!(first["model"], "judge-model");
    assert_eq!(first["max_tokens"], 1);
    assert_eq!(first["temperature"], 0);
    assert_eq!(first["logprobs"], true);
    assert_eq!(first["top_logprobs"], 20);
    assert_eq!(first["messages"].as_array().unwrap().len(), 1);
    assert_eq!(first["messages"][0]["role"], "user");
    assert!(sent.iter().any(
        |b| b["messages"][0]["content"] == "Q: Is it?\nA: ANSWER-GOOD\nScore 0-100 or REFUSAL."
    ));
    assert!(
        auths
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "authorization: Bearer sk-test" || a == "Authorization: Bearer sk-test")
    );

    // Cached: a re-run sends nothing, also after reopening the cache.
    let again = judge.judge(&CRITERION, &items, &mut cache).unwrap();
    assert_eq!(again, scores);
    let mut reopened = JudgmentCache::open(&dir.path().join("judgments.jsonl")).unwrap();
    assert_eq!(
        judge.judge(&CRITERION, &items, &mut reopened).unwrap(),
        scores
    );
    assert_eq!(bodies.lock().unwrap().len(), 5, "nothing judged twice");

    // No logprobs in the reply: a clear error.
    let e = judge
        .judge(
            &CRITERION,
            &[("q".into(), "ANSWER-NOLOGPROBS".into())],
            &mut cache,
        )
        .unwrap_err();
    assert!(matches!(e, JudgeError::NoLogprobs { .. }), "{e}");
    assert!(e.to_string().contains("top_logprobs"));
}

#[test]
fn unreachable_endpoint_and_missing_key_are_clear_errors() {
    // A port nobody listens on: bind, take the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(&format!("http://127.0.0.1:{port}/v1"));
    cfg.api_key_env = None;
    cfg.max_retries = 2;
    let judge = Judge::from_config(&JudgeConfig::Openai(cfg.clone())).unwrap();
    let e = judge.score_prompts(&["x".into()]).unwrap_err();
    assert!(matches!(e, JudgeError::Unreachable { tries: 3, .. }), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");

    cfg.api_key_env = Some("PERSONA_TEST_SURELY_UNSET_KEY".into());
    let e = Judge::from_config(&JudgeConfig::Openai(cfg)).err().unwrap();
    assert!(
        e.to_string().contains("PERSONA_TEST_SURELY_UNSET_KEY"),
        "{e}"
    );
}
