//! The batching engine: one thread per served model decodes every running
//! request together, one token per row per step.
//!
//! A request joins between steps: its prompt runs alone (the pass
//! `persona generate` runs for it) and its cache rows are appended to the
//! running batch's ([`KvCache::append_rows`]); each row carries its own
//! steering ([`Steering::on_batch_rows`]), so unsteered rows get exactly
//! the values they would get alone. A row leaves when it stops, and at
//! once when its client has gone.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use persona_model::generate::{prompt_rng, sample};
use persona_model::{
    Batch, ForwardArgs, KvCache, LoadedModel, PadSide, Role, Sampling, Sequence, Steering, host_vec,
};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::ModelMetrics;
use crate::monitor::{Monitor, Projection, project};
use crate::text::{TextStream, TokenLogprobs, logprobs_of};

/// Positions of room a joined cache keeps for the next steps (it grows by
/// as many again when a row needs more; values do not depend on it).
const JOIN_SPARE: usize = 64;

/// New-token positions a prompt pass reserves in its cache at most.
const RESERVE_NEW_TOKENS: usize = 256;

/// A request, checked and tokenized, as the engine runs it.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Answers to generate, each its own row and sampling stream.
    pub choices: usize,
    /// New tokens at most per answer (already capped by the context).
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Stop strings (the model's stop tokens always stop).
    pub stop: Vec<String>,
    /// The request's steering, for every position of its own rows.
    pub steering: Vec<Steering>,
    pub monitors: Vec<Monitor>,
    /// Alternatives to report per token, when log-probabilities are asked for.
    pub top_logprobs: Option<usize>,
    pub events: UnboundedSender<Event>,
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or the model's context.
    Length,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the engine tells a request's handler, in order per answer.
#[derive(Debug)]
pub enum Event {
    /// A new token of answer `choice`, with the text it completes (empty
    /// while held back: an unfinished character or a possible stop string).
    Token {
        choice: usize,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    /// Answer `choice` is complete.
    Done {
        choice: usize,
        finish: Finish,
        /// The whole answer (stop string and stop token removed).
        text: String,
        tokens: usize,
        projections: Vec<Projection>,
    },
    /// The request failed inside the engine.
    Failed(String),
}

/// One answer in the running batch.
struct Row {
    job: Arc<Job>,
    choice: usize,
    rng: ChaCha8Rng,
    tokens: Vec<u32>,
    text: TextStream,
}

/// The engine of one served model; runs on its own thread until every
/// sender of `jobs` is gone and the batch is empty.
pub struct Engine {
    pub model: Arc<LoadedModel>,
    pub max_rows: usize,
    pub metrics: ModelMetrics,
}

impl Engine {
    pub fn run(self, jobs: Receiver<Job>) {
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut rows: Vec<Row> = Vec::new();
        let mut cache = KvCache::new();
        let mut open = true;
        loop {
            if rows.is_empty() && waiting.is_empty() {
                match jobs.recv() {
                    Ok(j) => waiting.push_back(j),
                    Err(_) => return,
                }
            }
            while open {
                match jobs.try_recv() {
                    Ok(j) => waiting.push_back(j),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            // A request joins when its rows fit, or when the batch is empty.
            while let Some(job) = waiting.pop_front() {
                if !rows.is_empty() && rows.len() + job.choices > self.max_rows {
                    waiting.push_front(job);
                    break;
                }
                self.metrics.queued.dec();
                let events = job.events.clone();
                let admitted =
                    catch_unwind(AssertUnwindSafe(|| self.admit(job, &mut rows, &mut cache)));
                if admitted.is_err() {
                    let _ = events.send(Event::Failed("the engine failed on this prompt".into()));
                    fail_all(
                        &mut rows,
                        &mut cache,
                        "the engine failed while a prompt joined",
                    );
                }
            }
            if !rows.is_empty() {
                self.metrics.batch_rows.set(rows.len() as i64);
                // A panic inside the runtime fails this batch's requests,
                // not the server: the engine starts again empty.
                if catch_unwind(AssertUnwindSafe(|| self.step(&mut rows, &mut cache))).is_err() {
                    fail_all(
                        &mut rows,
                        &mut cache,
                        "the engine failed during a decoding step",
                    );
                }
                self.metrics.batch_rows.set(rows.len() as i64);
            } else if !open && waiting.is_empty() {
                return;
            }
        }
    }

    /// Runs each answer's prompt alone and appends its cache rows.
    fn admit(&self, job: Job, rows: &mut Vec<Row>, cache: &mut KvCache) {
        let job = Arc::new(job);
        for choice in 0..job.choices {
            if job.events.is_closed() {
                // The client left while the request waited.
                return;
            }
            match self.prefill(&job, choice) {
                Ok(Some((row, row_cache))) => {
                    cache.append_rows(row_cache, JOIN_SPARE);
                    rows.push(row);
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e.to_string()));
                    return;
                }
            }
        }
    }

    /// The prompt pass of one answer and its first token; `None` when the
    /// answer already ended.
    fn prefill(
        &self,
        job: &Arc<Job>,
        choice: usize,
    ) -> persona_model::Result<Option<(Row, KvCache)>> {
        let m = &self.model;
        let seq = Sequence {
            prompt: job.prompt.clone(),
            response: vec![],
        };
        let batch = Batch::new(&[seq], PadSide::Left, m.codec.pad_id)?;
        // Room for the first new tokens only: a request without
        // `max_tokens` may reach the context, and reserving all of it per
        // request would zero hundreds of MB; the cache grows as needed
        // (the values do not depend on its capacity).
        let room = job.max_new_tokens.min(RESERVE_NEW_TOKENS);
        let mut cache = KvCache::with_capacity(job.prompt.len() + room);
        let out = m
            .model
            .forward(&batch, ForwardArgs::decode(&mut cache, &job.steering))?;
        let logits = logits(out.logits)?;
        let mut row = Row {
            job: job.clone(),
            choice,
            rng: prompt_rng(job.seed, choice),
            tokens: Vec::new(),
            text: TextStream::new(job.stop.clone()),
        };
        let token = sample(&logits, job.sampling, &mut row.rng);
        Ok(match self.accept(&mut row, token, &logits) {
            true => Some((row, cache)),
            false => None,
        })
    }

    /// One decoding step of every running row; finished rows leave.
    fn step(&self, rows: &mut Vec<Row>, cache: &mut KvCache) {
        let ids: Vec<u32> = rows.iter().map(|r| r.tokens[r.tokens.len() - 1]).collect();
        let batch = Batch {
            n_rows: ids.len(),
            seq_len: 1,
            roles: vec![Role::Response; ids.len()],
            ids,
        };
        let steering: Vec<Steering> = rows
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                r.job
                    .steering
                    .iter()
                    .map(move |s| s.clone().on_batch_rows([i]))
            })
            .collect();
        let out = self
            .model
            .model
            .forward(&batch, ForwardArgs::decode(cache, &steering))
            .and_then(|o| logits(o.logits));
        let logits = match out {
            Ok(l) => l,
            Err(e) => {
                fail_all(rows, cache, &e.to_string());
                return;
            }
        };
        let vocab = self.model.model.config.vocab_size;
        // Sampling a row sorts the vocabulary (temperature); rows are
        // independent (each its own stream), so they are drawn in parallel.
        let tokens: Vec<u32> = rows
            .par_iter_mut()
            .zip(logits.par_chunks(vocab))
            .map(|(r, l)| sample(l, r.job.sampling, &mut r.rng))
            .collect();
        // Rows that go on, and their indices in the cache.
        let (mut keep, mut going) = (Vec::new(), Vec::with_capacity(rows.len()));
        let before = rows.len();
        for (i, (mut r, token)) in std::mem::take(rows).into_iter().zip(tokens).enumerate() {
            if self.accept(&mut r, token, &logits[i * vocab..(i + 1) * vocab]) {
                keep.push(i);
                going.push(r);
            }
        }
        if going.is_empty() {
            *cache = KvCache::new();
        } else if going.len() < before {
            cache.retain_rows(&keep);
        }
        *rows = going;
    }

    /// Takes a row's next token (sampled from `logits`) and tells its
    /// client; whether the row goes on.
    fn accept(&self, r: &mut Row, token: u32, logits: &[f32]) -> bool {
        let job = r.job.clone();
        r.tokens.push(token);
        self.metrics.completion_tokens.inc();
        let codec = &self.model.codec;
        let stop_token = codec.stop_ids.contains(&token);
        let content = if stop_token {
            &r.tokens[..r.tokens.len() - 1]
        } else {
            &r.tokens[..]
        };
        let (text, stop_string) = match codec.decode_clean(content) {
            Ok(t) => r.text.update(&t),
            Err(e) => {
                let _ = job.events.send(Event::Failed(e.to_string()));
                return false;
            }
        };
        // The stop token is not part of the answer (as OpenAI reports it).
        let logprobs = job
            .top_logprobs
            .filter(|_| !stop_token)
            .map(|k| logprobs_of(logits, token, k, codec));
        let sent = job.events.send(Event::Token {
            choice: r.choice,
            text,
            logprobs,
        });
        if sent.is_err() {
            // The client is gone: its row leaves now.
            return false;
        }
        let finish = if stop_token || stop_string {
            Some(Finish::Stop)
        } else if r.tokens.len() >= job.max_new_tokens {
            Some(Finish::Length)
        } else {
            None
        };
        match finish {
            None => true,
            Some(f) => {
                self.finish(r, f);
                false
            }
        }
    }

    /// Sends an answer's end, with its projections when monitored.
    fn finish(&self, r: &mut Row, finish: Finish) {
        let job = &r.job;
        let started = Instant::now();
        let projections = match project(&self.model, job, &r.tokens) {
            Ok(p) => p,
            Err(e) => {
                let _ = job.events.send(Event::Failed(e.to_string()));
                return;
            }
        };
        if !job.monitors.is_empty() {
            self.metrics.observe_projections(&projections);
            self.metrics
                .monitor_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        let _ = job.events.send(Event::Done {
            choice: r.choice,
            finish,
            text: r.text.final_text(),
            tokens: r.tokens.len(),
            projections,
        });
    }
}

/// Tells every running row's client that its request failed, and empties
/// the batch.
fn fail_all(rows: &mut Vec<Row>, cache: &mut KvCache, why: &str) {
    for r in rows.drain(..) {
        let _ = r.job.events.send(Event::Failed(why.to_string()));
    }
    *cache = KvCache::new();
}

/// The last-position logits of a forward, on the host: `[rows * vocab]`.
fn logits(t: Option<burn::tensor::Tensor<3>>) -> persona_model::Result<Vec<f32>> {
    let t =
        t.ok_or_else(|| persona_model::ModelError::Data("forward returned no logits".into()))?;
    host_vec(t)
}
