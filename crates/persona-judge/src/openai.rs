//! A judge behind any OpenAI-compatible chat-completions endpoint (OpenAI,
//! vLLM, llama.cpp server, Ollama): one user message with the filled rubric,
//! `max_tokens = 1`, `temperature = 0`, `logprobs` with `top_logprobs = 20`;
//! the score is [`expected_score`] of the first token's top logprobs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{JudgeError, Result};
use crate::score::expected_score;

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

    /// One judgment, with retries.
    fn score_one(&self, prompt: &str) -> Result<Option<f32>> {
        let url = self.url();
        let body = serde_json::json!({
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": true,
            "top_logprobs": 20,
        });
        let mut last_err = String::new();
        for attempt in 0..=self.cfg.max_retries {
            if attempt > 0 {
                let ms = self
                    .cfg
                    .backoff_ms
                    .saturating_mul(1 << (attempt - 1).min(16));
                std::thread::sleep(Duration::from_millis(ms));
            }
            let mut req = self.agent.post(&url);
            if let Some(k) = &self.key {
                req = req.header("Authorization", &format!("Bearer {k}"));
            }
            let mut resp = match req.send_json(&body) {
                Ok(r) => r,
                Err(e) => {
                    last_err = e.to_string();
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if status == 429 || status >= 500 {
                last_err = format!("HTTP {status}");
                continue;
            }
            if status != 200 {
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                return Err(JudgeError::Http {
                    url,
                    status,
                    body: text.chars().take(300).collect(),
                });
            }
            let v: serde_json::Value = match resp.body_mut().read_json() {
                Ok(v) => v,
                Err(e) => {
                    last_err = format!("unreadable response: {e}");
                    continue;
                }
            };
            let top = v
                .pointer("/choices/0/logprobs/content/0/top_logprobs")
                .cloned()
                .ok_or_else(|| JudgeError::NoLogprobs { url: url.clone() })?;
            let top: Vec<TopLogprob> = serde_json::from_value(top)
                .map_err(|_| JudgeError::NoLogprobs { url: url.clone() })?;
            let cands: Vec<(String, f64)> = top.into_iter().map(|t| (t.token, t.logprob)).collect();
            return Ok(expected_score(&cands));
        }
        Err(JudgeError::Unreachable {
            url,
            tries: self.cfg.max_retries + 1,
            reason: last_err,
        })
    }

    /// Judges every prompt with at most `concurrency` requests in flight;
    /// results are in input order. The first error stops the work.
    pub fn score(&self, prompts: &[String]) -> Result<Vec<Option<f32>>> {
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
