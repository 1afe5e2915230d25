//! A judge behind any OpenAI-compatible chat-completions endpoint (OpenAI,
//! vLLM, llama.cpp server, Ollama, `persona serve`): one user message with
//! the filled rubric, `temperature = 0`, `logprobs` with `top_logprobs =
//! 20`, `max_tokens = 3`.
//!
//! The score is the paper's: [`expected_score`] over the first token's
//! top-20 when the model's tokenizer has multi-digit number tokens (the
//! two extra tokens are not read). Tokenizers that split numbers into
//! digits (Qwen2, SmolLM2, Llama-3 for some numbers) put only "8" of "85"
//! in the first token; for them the number is read over the first three
//! tokens as a digit tree ([`digit_tree_candidates`]): the first digit's
//! probabilities from the first token's top-20, the digits after it from
//! the top-20 at the next positions of the reply. The API returns those
//! only along the reply's own (most likely) first digit, so every first
//! digit is assumed to continue the way that one does: exact when the
//! judge is sure of its first digit, an approximation when it hesitates
//! between first digits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{JudgeError, Result};
use crate::score::{digit_tree_candidates, expected_score};

/// Largest reply body read: a judgment is a few kilobytes at most.
pub const MAX_BODY_BYTES: u64 = 1 << 20;

/// Longest wait a server's `Retry-After` may ask for (longer asks wait this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Settings of an OpenAI-compatible judge (the `[judge]` of a judge config
/// with `kind = "openai"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable holding the API key; omit for
    /// servers without keys.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Retries after a 429, a 5xx or a transport error (exponential backoff).
    pub max_retries: usize,
    /// First backoff, doubled on every retry.
    pub backoff_ms: u64,
    /// Whole-request timeout.
    pub timeout_s: u64,
}

/// The judge itself.
pub struct OpenAiJudge {
    cfg: OpenAiConfig,
    key: Option<String>,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct TopLogprob {
    token: String,
    logprob: f64,
}

/// One position of the reply with its top alternatives.
#[derive(Deserialize)]
struct Position {
    token: String,
    top_logprobs: Vec<TopLogprob>,
}

/// Why one request did not give a judgment; each kind retries, and the
/// last one decides the error.
enum Failure {
    /// No HTTP answer (refused, reset, timed out).
    Transport(String),
    /// HTTP 429 or 5xx, with the server's `Retry-After` if it sent one.
    Status(u16, Option<Duration>),
    /// An answer whose body is too large or not the JSON expected.
    Body(String),
}

impl OpenAiJudge {
    pub fn new(cfg: OpenAiConfig) -> Result<Self> {
        let key = match &cfg.api_key_env {
            Some(var) => {
                Some(std::env::var(var).map_err(|_| JudgeError::MissingKey { var: var.clone() })?)
            }
            None => None,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(cfg.timeout_s.max(1))))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self { cfg, key, agent })
    }

    /// `openai:<model>@<base_url>`.
    pub fn identity(&self) -> String {
        format!("openai:{}@{}", self.cfg.model, self.cfg.base_url)
    }

    fn url(&self) -> String {
        format!(
            "{}/chat/completions",
            self.cfg.base_url.trim_end_matches('/')
        )
    }

    /// One judgment, with retries: exponential backoff from `backoff_ms`,
    /// or the server's `Retry-After` (at most [`MAX_RETRY_AFTER`]) when it
    /// sends one.
    fn score_one(&self, prompt: &str) -> Result<Option<f32>> {
        let url = self.url();
        let mut last = Failure::Transport(String::new());
        for attempt in 0..=self.cfg.max_retries {
            if attempt > 0 {
                let backoff = Duration::from_millis(
                    self.cfg
                        .backoff_ms
                        .saturating_mul(1 << (attempt - 1).min(16)),
                );
                let wait = match &last {
                    Failure::Status(_, Some(after)) => (*after).min(MAX_RETRY_AFTER),
                    _ => backoff,
                };
                std::thread::sleep(wait);
            }
            match self.request(&url, prompt)? {
                Ok(reply) => return Ok(judgment(&reply)),
                Err(f) => last = f,
            }
        }
        let tries = self.cfg.max_retries + 1;
        Err(match last {
            Failure::Transport(reason) => JudgeError::Unreachable { url, tries, reason },
            Failure::Status(429, _) => JudgeError::RateLimited { url, tries },
            Failure::Status(status, _) => JudgeError::ServerError { url, status, tries },
            Failure::Body(reason) => JudgeError::BadResponse { url, reason },
        })
    }

    /// One request: the reply's positions, a failure worth retrying, or a
    /// final error (a 4xx other than 429, a reply without logprobs).
    fn request(
        &self,
        url: &str,
        prompt: &str,
    ) -> Result<std::result::Result<Vec<Position>, Failure>> {
        let body = serde_json::json!({
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 3,
            "temperature": 0,
            "logprobs": true,
            "top_logprobs": 20,
        });
        let mut req = self.agent.post(url);
        if let Some(k) = &self.key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = match req.send_json(&body) {
            Ok(r) => r,
            Err(e) => return Ok(Err(Failure::Transport(e.to_string()))),
        };
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_vec();
        if status == 429 || status >= 500 {
            return Ok(Err(Failure::Status(status, retry_after(&resp))));
        }
        let bytes = match bytes {
            Ok(b) => b,
            Err(ureq::Error::BodyExceedsLimit(n)) => {
                return Ok(Err(Failure::Body(format!(
                    "the reply body is larger than {n} bytes"
                ))));
            }
            Err(e) => return Ok(Err(Failure::Transport(e.to_string()))),
        };
        if status != 200 {
            return Err(JudgeError::Http {
                url: url.to_string(),
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        let v: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return Ok(Err(Failure::Body(format!("not JSON: {e}")))),
        };
        let no_logprobs = || JudgeError::NoLogprobs {
            url: url.to_string(),
        };
        let content = v
            .pointer("/choices/0/logprobs/content")
            .cloned()
            .ok_or_else(no_logprobs)?;
        let positions: Vec<Position> =
            serde_json::from_value(content).map_err(|_| no_logprobs())?;
        if positions.is_empty() {
            return Err(no_logprobs());
        }
        Ok(Ok(positions))
    }

    /// Judges every prompt with at most `concurrency` requests in flight;
    /// results are in input order. The first error stops the work.
    /// `on_result(i, score)` is called as each judgment arrives (the
    /// judgment cache records it at once, so a later failure loses none).
    pub fn score(
        &self,
        prompts: &[String],
        on_result: &(dyn Fn(usize, Option<f32>) + Sync),
    ) -> Result<Vec<Option<f32>>> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Option<f32>>>> = Mutex::new(vec![None; prompts.len()]);
        let failure: Mutex<Option<JudgeError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..self.cfg.concurrency.clamp(1, prompts.len().max(1)) {
                s.spawn(|| {
                    loop {
                        if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= prompts.len() {
                            return;
                        }
                        match self.score_one(&prompts[i]) {
                            Ok(v) => {
                                on_result(i, v);
                                if let Ok(mut r) = results.lock() {
                                    r[i] = Some(v);
                                }
                            }
                            Err(e) => {
                                if let Ok(mut f) = failure.lock() {
                                    f.get_or_insert(e);
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().ok().flatten() {
            return Err(e);
        }
        let results = results.into_inner().unwrap_or_default();
        Ok(results.into_iter().map(|r| r.flatten()).collect())
    }
}

/// The server's `Retry-After` in seconds (the HTTP-date form is not read:
/// the backoff applies then).
fn retry_after(resp: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    let v = resp.headers().get("retry-after")?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e6)))
}

/// Probabilities of the ten digits among one position's top tokens (token
/// texts trimmed, as [`expected_score`] reads them).
fn digit_probs(top: &[TopLogprob]) -> [f64; 10] {
    let mut p = [0f64; 10];
    for t in top {
        if let Ok(d) = t.token.trim().parse::<usize>()
            && d < 10
            && t.token.trim().len() == 1
            && t.logprob.is_finite()
        {
            p[d] += t.logprob.exp();
        }
    }
    p
}

/// The judgment of one reply (see the module doc): the paper's first-token
/// score when the first position offers multi-digit numbers (or no digit
/// at all), else the digit tree along the reply.
fn judgment(reply: &[Position]) -> Option<f32> {
    let first = &reply[0].top_logprobs;
    let is_number = |t: &TopLogprob| t.token.trim().parse::<u32>().is_ok();
    let multi_digit = first
        .iter()
        .any(|t| is_number(t) && t.token.trim().len() > 1);
    if multi_digit || !first.iter().any(is_number) {
        let cands: Vec<(String, f64)> =
            first.iter().map(|t| (t.token.clone(), t.logprob)).collect();
        return expected_score(&cands);
    }
    let mut rows = [[0f64; 10]; 13];
    rows[0] = digit_probs(first);
    let greedy = |i: usize| reply.get(i).map(|p| p.token.trim());
    if greedy(0).is_some_and(|g| g.len() == 1 && g.parse::<u8>().is_ok())
        && let Some(next) = reply.get(1)
    {
        let after = digit_probs(&next.top_logprobs);
        for row in &mut rows[1..=10] {
            *row = after;
        }
        if greedy(0) == Some("1")
            && greedy(1) == Some("0")
            && let Some(third) = reply.get(2)
        {
            rows[11] = digit_probs(&third.top_logprobs);
        }
    }
    expected_score(&digit_tree_candidates(&rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(token: &str, top: &[(&str, f64)]) -> Position {
        Position {
            token: token.into(),
            top_logprobs: top
                .iter()
                .map(|(t, p)| TopLogprob {
                    token: t.to_string(),
                    logprob: p.ln(),
                })
                .collect(),
        }
    }

    /// Regression: with a tokenizer that splits numbers into digits, "85"
    /// was read as 8.
    #[test]
    fn openai_judge_reads_multi_token_numbers() {
        let reply = [
            pos("8", &[("8", 0.9), ("9", 0.1)]),
            pos("5", &[("5", 0.5), ("0", 0.5)]),
            pos("<|im_end|>", &[("<|im_end|>", 1.0)]),
        ];
        // 0.9 * (80 + 2.5) + 0.1 * (90 + 2.5)
        let s = judgment(&reply).unwrap();
        assert!((s - 83.5).abs() < 1e-3, "{s}");
        // "100" along the reply.
        let reply = [
            pos("1", &[("1", 1.0)]),
            pos("0", &[("0", 1.0)]),
            pos("0", &[("0", 1.0)]),
        ];
        assert!((judgment(&reply).unwrap() - 100.0).abs() < 1e-3);
        // One digit, then the end of the reply.
        let reply = [pos("7", &[("7", 1.0)]), pos("\n", &[("\n", 1.0)])];
        assert!((judgment(&reply).unwrap() - 7.0).abs() < 1e-3);
        // Multi-digit tokens: the paper's first-token rule, the rest unread.
        let reply = [pos("80", &[("80", 0.5), (" 90", 0.3), ("REFUSAL", 0.2)])];
        assert!((judgment(&reply).unwrap() - 83.75).abs() < 1e-3);
        // A refusal stays missing.
        let reply = [pos("REFUSAL", &[("REFUSAL", 0.9), ("5", 0.1)])];
        assert_eq!(judgment(&reply), None);
    }
}
