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
        let (mut flaky_seen, mut waited_once) = (0, false);
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
            // One digit per position: "8" then "5" (or "0") then the end.
            let digits = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "85"},
                "logprobs": {"content": [
                    {"token": "8", "logprob": 0.9f64.ln(), "top_logprobs": [
                        {"token": "8", "logprob": 0.9f64.ln()}, {"token": "9", "logprob": 0.1f64.ln()}]},
                    {"token": "5", "logprob": 0.5f64.ln(), "top_logprobs": [
                        {"token": "5", "logprob": 0.5f64.ln()}, {"token": "0", "logprob": 0.5f64.ln()}]},
                    {"token": "<|im_end|>", "logprob": 0.0, "top_logprobs": [
                        {"token": "<|im_end|>", "logprob": 0.0}]}]}}]});
            let mut retry_after = None;
            let (status, text) = if content.contains("ANSWER-FLAKY") && flaky_seen < 2 {
                flaky_seen += 1;
                (
                    if flaky_seen == 1 { 503 } else { 429 },
                    serde_json::json!({"error": "busy"}).to_string(),
                )
            } else if content.contains("ANSWER-WAIT") && !waited_once {
                waited_once = true;
                retry_after = Some(1);
                (429, serde_json::json!({"error": "slow down"}).to_string())
            } else if content.contains("ANSWER-ALWAYS-429") {
                (429, serde_json::json!({"error": "slow down"}).to_string())
            } else if content.contains("ANSWER-DOWN") {
                (503, serde_json::json!({"error": "down"}).to_string())
            } else if content.contains("ANSWER-GARBAGE") {
                (200, "{\"choices\": [".to_string())
            } else if content.contains("ANSWER-HUGE") {
                (200, format!("{{\"pad\": \"{}\"}}", "x".repeat(3 << 20)))
            } else if content.contains("ANSWER-DIGITS") {
                (200, digits.to_string())
            } else if content.contains("ANSWER-GOOD")
                || content.contains("ANSWER-FLAKY")
                || content.contains("ANSWER-WAIT")
            {
                (
                    200,
                    top(&[("80", 0.5), (" 90", 0.3), ("REFUSAL", 0.2)]).to_string(),
                )
            } else if content.contains("ANSWER-REFUSE") {
                (200, top(&[("REFUSAL", 0.9), ("50", 0.1)]).to_string())
            } else if content.contains("ANSWER-NOLOGPROBS") {
                (
                    200,
                    serde_json::json!({"choices": [{"message": {"content": "7"}}]}).to_string(),
                )
            } else {
                (400, serde_json::json!({"error": "unknown"}).to_string())
            };
            let extra = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
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
    // Three tokens: a tokenizer that splits "85" into digits needs them.
    assert_eq!(first["max_tokens"], 3);
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

fn one(judge: &Judge, answer: &str) -> persona_judge::Result<Vec<Option<f32>>> {
    judge.score_prompts(&[format!("Q: q\nA: {answer}")])
}

/// Regression: a 429 asking for 3 s was retried after 0.2 and 0.4 s.
#[test]
fn judge_client_honours_retry_after() {
    let (url, _, _) = serve();
    let mut cfg = config(&url);
    cfg.api_key_env = None;
    let judge = Judge::from_config(&JudgeConfig::Openai(cfg)).unwrap();
    let started = std::time::Instant::now();
    let s = one(&judge, "ANSWER-WAIT").unwrap();
    assert!((s[0].unwrap() - 83.75).abs() < 1e-3);
    let waited = started.elapsed().as_secs_f64();
    assert!(
        waited >= 0.95,
        "waited {waited:.3} s for Retry-After: 1 (backoff is 10 ms)"
    );
}

/// Regression: 429s, malformed JSON and a huge body were all reported as
/// "unreachable ... check that the server is running".
#[test]
fn judge_client_names_what_went_wrong() {
    let (url, _, _) = serve();
    let mut cfg = config(&url);
    cfg.api_key_env = None;
    cfg.max_retries = 1;
    let judge = Judge::from_config(&JudgeConfig::Openai(cfg)).unwrap();
    let e = one(&judge, "ANSWER-ALWAYS-429").unwrap_err();
    assert!(matches!(e, JudgeError::RateLimited { tries: 2, .. }), "{e}");
    assert!(
        e.to_string().contains("429") && !e.to_string().contains("unreachable"),
        "{e}"
    );
    let e = one(&judge, "ANSWER-DOWN").unwrap_err();
    assert!(
        matches!(e, JudgeError::ServerError { status: 503, .. }),
        "{e}"
    );
    let e = one(&judge, "ANSWER-GARBAGE").unwrap_err();
    assert!(e.to_string().contains("not JSON"), "{e}");
    let e = one(&judge, "ANSWER-HUGE").unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
}

/// Regression: with a digit-splitting tokenizer, "85" was read as 8.
#[test]
fn judge_client_reads_numbers_split_into_digits() {
    let (url, _, _) = serve();
    let mut cfg = config(&url);
    cfg.api_key_env = None;
    let judge = Judge::from_config(&JudgeConfig::Openai(cfg)).unwrap();
    let s = one(&judge, "ANSWER-DIGITS").unwrap();
    // 0.9 * (80 + 2.5) + 0.1 * (90 + 2.5)
    assert!((s[0].unwrap() - 83.5).abs() < 1e-3, "{s:?}");
}

/// Regression: caching was all-or-nothing, so judgments that succeeded
/// before a persistent failure were lost.
#[test]
fn judgments_are_cached_as_they_arrive() {
    let (url, bodies, _) = serve();
    let mut cfg = config(&url);
    cfg.api_key_env = None;
    cfg.concurrency = 1;
    cfg.max_retries = 1;
    let judge = Judge::from_config(&JudgeConfig::Openai(cfg)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("judgments.jsonl");
    let mut cache = JudgmentCache::open(&path).unwrap();
    let items: Vec<(String, String)> = ["ANSWER-GOOD", "ANSWER-REFUSE", "ANSWER-DOWN"]
        .iter()
        .map(|a| ("q".to_string(), a.to_string()))
        .collect();
    assert!(judge.judge(&CRITERION, &items, &mut cache).is_err());
    let reopened = JudgmentCache::open(&path).unwrap();
    assert_eq!(
        reopened.len(),
        2,
        "the two judgments before the failure are kept"
    );
    // A rerun asks only for the one that failed.
    let before = bodies.lock().unwrap().len();
    let mut cache = JudgmentCache::open(&path).unwrap();
    assert!(judge.judge(&CRITERION, &items, &mut cache).is_err());
    assert_eq!(
        bodies.lock().unwrap().len() - before,
        2,
        "only ANSWER-DOWN, twice"
    );
}
