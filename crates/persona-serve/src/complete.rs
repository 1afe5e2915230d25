//! `POST /v1/chat/completions` and `POST /v1/completions`: a request
//! checked, handed to its model's engine, and answered whole or streamed
//! as server-sent events (ending in `data: [DONE]`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{ChatFields, Common, CompletionFields, PromptText};
use crate::engine::{Event, Finish};
use crate::error::ApiError;
use crate::monitor::Projection;
use crate::request::{Prepared, chat_messages, prepare};
use crate::routes::{parse_body, read_as};
use crate::text::TokenLogprobs;
use crate::{AppState, Served};

/// Which endpoint, for the shapes of its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    /// The body field the prompt comes from.
    fn prompt_field(self) -> &'static str {
        match self {
            Kind::Chat => "messages",
            Kind::Text => "prompt",
        }
    }

    fn endpoint(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Text => "/v1/completions",
        }
    }
}

/// What a handler keeps of a request after handing it to the engine.
struct Ticket {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    prompt_tokens: usize,
    choices: usize,
    seed: u64,
    summary: String,
    logprobs: bool,
    include_usage: bool,
    started: Instant,
}

pub(crate) async fn chat(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (common, r, served) = read_request::<ChatFields>(&s, body)?;
        let messages = chat_messages(r.messages)?;
        let prompt = served
            .model
            .codec
            .prompt_ids(&messages)
            .map_err(|e| ApiError::field("messages", e.to_string()))?;
        let top = r.logprobs.then(|| r.top_logprobs.unwrap_or(0));
        if r.top_logprobs.is_some() && !r.logprobs {
            return Err(ApiError::field(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
        let max_tokens = r.max_completion_tokens.or(common.max_tokens);
        start(
            &s,
            served,
            Kind::Chat,
            prompt,
            common,
            max_tokens,
            top,
            started,
        )
    }
    .await;
    finish_response(&s, Kind::Chat, started, result).await
}

pub(crate) async fn completion(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (common, r, served) = read_request::<CompletionFields>(&s, body)?;
        if r.echo || r.suffix.is_some() || r.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::bad_request(
                "echo, suffix and best_of are not supported by persona serve; leave them out",
            ));
        }
        let text = match r.prompt {
            PromptText::One(t) => t,
            PromptText::Many(mut v) if v.len() == 1 => v.remove(0),
            PromptText::Many(_) => {
                return Err(ApiError::field("prompt", "send one prompt per request"));
            }
        };
        let prompt = served
            .model
            .codec
            .encode(&text)
            .map_err(|e| ApiError::field("prompt", e.to_string()))?;
        // OpenAI's default for this endpoint.
        let max_tokens = common.max_tokens.or(Some(16));
        start(
            &s,
            served,
            Kind::Text,
            prompt,
            common,
            max_tokens,
            r.logprobs,
            started,
        )
    }
    .await;
    finish_response(&s, Kind::Text, started, result).await
}

/// A body's shared fields, the endpoint's own fields `F`, and the model
/// it names.
fn read_request<F: DeserializeOwned>(
    s: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Common, F, &Served), ApiError> {
    let body = parse_body(body)?;
    let common: Common = read_as(&body, "")?;
    let fields: F = read_as(&body, "")?;
    let served = served(s, &common.model)?;
    Ok((common, fields, served))
}

fn served<'a>(s: &'a AppState, model: &str) -> Result<&'a Served, ApiError> {
    s.models.get(model).ok_or_else(|| {
        let ids: Vec<&String> = s.models.keys().collect();
        ApiError {
            param: Some("model".into()),
            ..ApiError::not_found(format!(
                "model `{model}` is not served here; GET /v1/models lists {ids:?}"
            ))
        }
    })
}

/// A started request: the engine's events, and the ticket to answer with.
type Started = (
    UnboundedReceiver<Event>,
    Ticket,
    tokio::sync::OwnedSemaphorePermit,
    bool,
);

/// Checks a request and hands it to its model's engine (429 when the
/// server is at its limit of concurrent requests).
#[allow(clippy::too_many_arguments)]
fn start(
    s: &AppState,
    served: &Served,
    kind: Kind,
    prompt: Vec<u32>,
    common: Common,
    max_tokens: Option<usize>,
    top_logprobs: Option<usize>,
    started: Instant,
) -> Result<Started, ApiError> {
    let model = common.model.clone();
    let stream = common.stream;
    let include_usage = common
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let permit = s
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy(1))?;
    let (tx, rx) = unbounded_channel();
    let prompt_tokens = prompt.len();
    let Prepared { job, summary } = prepare(
        &served.model,
        &s.vectors,
        &s.limits,
        prompt,
        kind.prompt_field(),
        common,
        max_tokens,
        top_logprobs,
        tx,
    )?;
    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let ticket = Ticket {
        kind,
        id: match kind {
            Kind::Chat => format!("chatcmpl-{n}"),
            Kind::Text => format!("cmpl-{n}"),
        },
        model,
        created: unix_now(),
        prompt_tokens,
        choices: job.choices,
        seed: job.seed,
        summary,
        logprobs: top_logprobs.is_some(),
        include_usage,
        started,
    };
    served.metrics.queued.inc();
    s.metrics
        .prompt_tokens
        .get_or_create(&crate::metrics::ModelLabel {
            model: ticket.model.clone(),
        })
        .inc_by((prompt_tokens * ticket.choices) as u64);
    served.jobs.send(job).map_err(|_| {
        served.metrics.queued.dec();
        ApiError::unavailable("the model's engine has stopped; restart the server")
    })?;
    Ok((rx, ticket, permit, stream))
}

async fn finish_response(
    s: &Arc<AppState>,
    kind: Kind,
    started: Instant,
    result: Result<Started, ApiError>,
) -> Response {
    let (rx, ticket, permit, stream) = match result {
        Ok(r) => r,
        Err(e) => {
            s.metrics.request(kind.endpoint(), e.status.as_u16(), None);
            return e.into_response();
        }
    };
    if stream {
        return stream_response(s.clone(), rx, ticket, permit);
    }
    let answer = collect(rx, ticket.choices).await;
    drop(permit);
    let seconds = started.elapsed().as_secs_f64();
    match answer {
        Ok(answers) => {
            let usage = usage(&ticket, &answers);
            log_request(&ticket, &answers, seconds);
            s.metrics.request(kind.endpoint(), 200, Some(seconds));
            axum::Json(whole_body(&ticket, &answers, usage)).into_response()
        }
        Err(e) => {
            s.metrics
                .request(kind.endpoint(), e.status.as_u16(), Some(seconds));
            e.into_response()
        }
    }
}

/// One finished answer.
#[derive(Debug, Default)]
struct Answer {
    text: String,
    finish: Option<Finish>,
    tokens: usize,
    logprobs: Vec<TokenLogprobs>,
    projections: Vec<Projection>,
}

/// Waits for every answer of a request.
async fn collect(
    mut rx: UnboundedReceiver<Event>,
    choices: usize,
) -> Result<Vec<Answer>, ApiError> {
    let mut answers: Vec<Answer> = (0..choices).map(|_| Answer::default()).collect();
    let mut done = 0;
    while done < choices {
        match rx.recv().await {
            Some(Event::Token {
                choice, logprobs, ..
            }) => answers[choice].logprobs.extend(logprobs),
            Some(Event::Done {
                choice,
                finish,
                text,
                tokens,
                projections,
            }) => {
                let a = &mut answers[choice];
                (a.text, a.finish, a.tokens, a.projections) =
                    (text, Some(finish), tokens, projections);
                done += 1;
            }
            Some(Event::Failed(m)) => return Err(ApiError::internal(m)),
            None => {
                return Err(ApiError::internal(
                    "the engine stopped before the answer was complete",
                ));
            }
        }
    }
    Ok(answers)
}

fn usage(t: &Ticket, answers: &[Answer]) -> Value {
    let completion: usize = answers.iter().map(|a| a.tokens).sum();
    json!({
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": t.prompt_tokens + completion,
    })
}

fn log_request(t: &Ticket, answers: &[Answer], seconds: f64) {
    let out: usize = answers.iter().map(|a| a.tokens).sum();
    let steering = if t.summary.is_empty() {
        "none"
    } else {
        &t.summary
    };
    eprintln!(
        "{} model={} tokens_in={} tokens_out={out} seconds={seconds:.3} steering=[{steering}]",
        t.id, t.model, t.prompt_tokens
    );
}

/// The projections of an answer as the response reports them.
fn projections_json(p: &[Projection]) -> Value {
    Value::Object(
        p.iter()
            .map(|p| {
                (
                    p.name.clone(),
                    serde_json::to_value(p).unwrap_or(Value::Null),
                )
            })
            .collect(),
    )
}

/// The request-level `persona` object: the seed, the steering, and the
/// first answer's projections.
fn persona_json(t: &Ticket, first: Option<&[Projection]>) -> Value {
    let mut v = json!({"seed": t.seed, "steering": t.summary});
    if let Some(p) = first.filter(|p| !p.is_empty()) {
        v["projections"] = projections_json(p);
    }
    v
}

fn whole_body(t: &Ticket, answers: &[Answer], usage: Value) -> Value {
    let choices: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let finish = a.finish.map(Finish::name);
            let mut c = match t.kind {
                Kind::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": a.text},
                    "logprobs": t.logprobs.then(|| json!({"content": a.logprobs})),
                    "finish_reason": finish,
                }),
                Kind::Text => json!({
                    "index": i,
                    "text": a.text,
                    "logprobs": t.logprobs.then(|| text_logprobs(&a.logprobs)),
                    "finish_reason": finish,
                }),
            };
            if !a.projections.is_empty() {
                c["persona"] = json!({"projections": projections_json(&a.projections)});
            }
            c
        })
        .collect();
    json!({
        "id": t.id,
        "object": match t.kind { Kind::Chat => "chat.completion", Kind::Text => "text_completion" },
        "created": t.created,
        "model": t.model,
        "choices": choices,
        "usage": usage,
        "persona": persona_json(t, answers.first().map(|a| a.projections.as_slice())),
    })
}

/// The legacy completions' log-probability layout.
fn text_logprobs(lps: &[TokenLogprobs]) -> Value {
    let mut offset = 0;
    let mut offsets = Vec::new();
    for lp in lps {
        offsets.push(offset);
        offset += lp.token.len();
    }
    json!({
        "tokens": lps.iter().map(|l| &l.token).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|l| {
            l.top_logprobs.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// A streamed answer: one chunk per released piece of text, one with each
/// answer's finish reason (and its projections), the usage when asked
/// for, then `[DONE]`. A client that goes away drops the stream, and the
/// engine frees its rows at the next step.
fn stream_response(
    s: Arc<AppState>,
    mut rx: UnboundedReceiver<Event>,
    t: Ticket,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let (out, events) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let _permit = permit;
        let send = |data: String| {
            let out = out.clone();
            async move { out.send(Ok(SseEvent::default().data(data))).await.is_ok() }
        };
        let mut stream = Streamed::new(t);
        let mut chunks = stream.opening();
        loop {
            for c in chunks {
                if !send(c.to_string()).await {
                    return;
                }
            }
            if stream.done == stream.t.choices {
                break;
            }
            chunks = match rx.recv().await {
                Some(Event::Failed(m)) => {
                    let _ = send(ApiError::internal(m).body().to_string()).await;
                    s.metrics.request(stream.t.kind.endpoint(), 500, None);
                    return;
                }
                Some(event) => stream.chunks(event),
                None => return,
            };
        }
        let seconds = stream.t.started.elapsed().as_secs_f64();
        if let Some(u) = stream.usage_chunk()
            && !send(u.to_string()).await
        {
            return;
        }
        let _ = send("[DONE]".into()).await;
        log_request(&stream.t, &stream.answers, seconds);
        s.metrics
            .request(stream.t.kind.endpoint(), 200, Some(seconds));
    });
    Sse::new(ReceiverStream::new(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What a streamed request has sent so far.
struct Streamed {
    t: Ticket,
    /// Text sent per answer.
    sent: Vec<String>,
    answers: Vec<Answer>,
    done: usize,
}

impl Streamed {
    fn new(t: Ticket) -> Self {
        Self {
            sent: vec![String::new(); t.choices],
            answers: (0..t.choices).map(|_| Answer::default()).collect(),
            done: 0,
            t,
        }
    }

    /// The chunks before any token: each chat answer's role.
    fn opening(&self) -> Vec<Value> {
        match self.t.kind {
            Kind::Chat => (0..self.t.choices)
                .map(|i| {
                    chunk(
                        &self.t,
                        i,
                        json!({"role": "assistant", "content": ""}),
                        None,
                        None,
                    )
                })
                .collect(),
            Kind::Text => Vec::new(),
        }
    }

    /// The chunks an engine event (a token or an answer's end) makes.
    fn chunks(&mut self, event: Event) -> Vec<Value> {
        let t = &self.t;
        match event {
            Event::Token {
                choice,
                text,
                logprobs,
            } => {
                if text.is_empty() && logprobs.is_none() {
                    return Vec::new();
                }
                self.sent[choice].push_str(&text);
                vec![chunk(t, choice, content(t, &text), logprobs.as_ref(), None)]
            }
            Event::Done {
                choice,
                finish,
                text,
                tokens,
                projections,
            } => {
                let mut out = Vec::new();
                // Text held back until the end (the start of a stop string
                // that never came) goes out now.
                let rest = text.strip_prefix(self.sent[choice].as_str()).unwrap_or("");
                if !rest.is_empty() {
                    out.push(chunk(t, choice, content(t, rest), None, None));
                }
                let mut last = chunk(t, choice, content(t, ""), None, Some(finish));
                if !projections.is_empty() {
                    last["choices"][0]["persona"] =
                        json!({"projections": projections_json(&projections)});
                }
                out.push(last);
                let a = &mut self.answers[choice];
                (a.tokens, a.finish, a.projections) = (tokens, Some(finish), projections);
                self.done += 1;
                out
            }
            Event::Failed(_) => Vec::new(),
        }
    }

    /// The usage chunk, when the request asked for it.
    fn usage_chunk(&self) -> Option<Value> {
        let t = &self.t;
        t.include_usage.then(|| {
            let mut u = chunk(t, 0, json!({}), None, None);
            u["choices"] = json!([]);
            u["usage"] = usage(t, &self.answers);
            u["persona"] = persona_json(t, self.answers.first().map(|a| a.projections.as_slice()));
            u
        })
    }
}

/// A chat delta or a completion's text.
fn content(t: &Ticket, text: &str) -> Value {
    match t.kind {
        Kind::Chat if text.is_empty() => json!({}),
        Kind::Chat => json!({"content": text}),
        Kind::Text => json!(text),
    }
}

/// One streamed chunk of answer `i`.
fn chunk(
    t: &Ticket,
    i: usize,
    piece: Value,
    lp: Option<&TokenLogprobs>,
    finish: Option<Finish>,
) -> Value {
    let finish = finish.map(Finish::name);
    let choice = match t.kind {
        Kind::Chat => json!({
            "index": i,
            "delta": piece,
            "logprobs": lp.map(|l| json!({"content": [l]})),
            "finish_reason": finish,
        }),
        Kind::Text => json!({
            "index": i,
            "text": piece,
            "logprobs": lp.map(|l| text_logprobs(std::slice::from_ref(l))),
            "finish_reason": finish,
        }),
    };
    json!({
        "id": t.id,
        "object": match t.kind { Kind::Chat => "chat.completion.chunk", Kind::Text => "text_completion" },
        "created": t.created,
        "model": t.model,
        "choices": [choice],
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
