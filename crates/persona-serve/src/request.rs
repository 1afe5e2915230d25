//! A parsed request turned into an engine [`Job`]: the prompt tokenized,
//! every number checked (naming the field at fault), the persona
//! extension resolved against the served model's vectors.

use persona_model::{LoadedModel, Message, Positions, Sampling, Steering};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::{ChatMessage, Common, Content, PersonaRequest};
use crate::engine::{Event, Job};
use crate::error::ApiError;
use crate::monitor::Monitor;
use crate::routes::read_as;
use crate::text::MAX_TOP_LOGPROBS;
use crate::vectors::VectorStore;

/// Most stop strings (OpenAI's limit).
const MAX_STOPS: usize = 4;

/// Limits of one server, applied to every request.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most prompt tokens (also bounded by the model's context).
    pub max_prompt_tokens: usize,
    /// Most answers per request (`n`).
    pub max_choices: usize,
}

/// What a request asks for besides its prompt, checked.
pub struct Prepared {
    pub job: Job,
    /// One line on the steering, for the request log.
    pub summary: String,
}

/// The chat messages as the runtime's messages.
pub fn chat_messages(messages: Vec<ChatMessage>) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::field(
            "messages",
            "at least one message is needed",
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let text = match m.content {
                Content::Text(t) => t,
                Content::Parts(parts) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::field(
                                    format!("messages[{i}].content"),
                                    format!("content parts of type `{kind}` are not supported; send text"),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            Ok(match m.role.as_str() {
                "system" | "developer" => Message::system(text),
                "user" => Message::user(text),
                "assistant" => Message::assistant(text),
                other => {
                    return Err(ApiError::field(
                        format!("messages[{i}].role"),
                        format!("role `{other}` is not supported; use system, user or assistant"),
                    ));
                }
            })
        })
        .collect()
}

/// Refuses OpenAI fields the server would otherwise ignore.
fn check_unsupported(c: &Common) -> Result<(), ApiError> {
    let unsupported = |name: &str| {
        Err(ApiError::field(
            name,
            format!("`{name}` is not supported by persona serve; leave it out"),
        ))
    };
    for (name, v) in [
        ("frequency_penalty", c.frequency_penalty),
        ("presence_penalty", c.presence_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return unsupported(name);
        }
    }
    for (name, v) in [
        ("logit_bias", &c.logit_bias),
        ("tools", &c.tools),
        ("functions", &c.functions),
        ("response_format", &c.response_format),
    ] {
        // Some clients send an empty list or object for "none".
        let empty = |v: &serde_json::Value| {
            v.is_null()
                || v.as_array().is_some_and(Vec::is_empty)
                || v.as_object().is_some_and(serde_json::Map::is_empty)
        };
        if v.as_ref().is_some_and(|v| !empty(v)) {
            return unsupported(name);
        }
    }
    Ok(())
}

/// Builds the job of a request whose prompt is `prompt`, read from the
/// body's field `prompt_field` (`messages` or `prompt`: errors name it).
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    model: &LoadedModel,
    vectors: &VectorStore,
    limits: &Limits,
    prompt: Vec<u32>,
    prompt_field: &'static str,
    common: Common,
    max_tokens: Option<usize>,
    top_logprobs: Option<usize>,
    events: UnboundedSender<Event>,
) -> Result<Prepared, ApiError> {
    check_unsupported(&common)?;
    let context = model.model.config.max_positions;
    fn field(p: &str, m: impl Into<String>) -> ApiError {
        ApiError::field(p, m)
    }
    if prompt.is_empty() {
        return Err(field(prompt_field, "the prompt is empty"));
    }
    let max_prompt = limits.max_prompt_tokens.min(context - 1);
    if prompt.len() > max_prompt {
        return Err(field(
            prompt_field,
            format!(
                "the prompt has {} tokens; this server takes at most {max_prompt} (--max-prompt-tokens, and the context of {context} leaves room for one new token)",
                prompt.len()
            ),
        ));
    }
    let max_new_tokens = match max_tokens {
        Some(0) => return Err(field("max_tokens", "max_tokens must be at least 1")),
        Some(n) => n.min(context - prompt.len()),
        None => context - prompt.len(),
    };
    let temperature = common.temperature.unwrap_or(1.0);
    let top_p = common.top_p.unwrap_or(1.0);
    let sampling = Sampling::from_settings(temperature, top_p).map_err(|e| {
        let name = if temperature.is_finite() && temperature >= 0.0 {
            "top_p"
        } else {
            "temperature"
        };
        field(name, e.to_string())
    })?;
    let choices = common.n.unwrap_or(1);
    if !(1..=limits.max_choices).contains(&choices) {
        return Err(field(
            "n",
            format!("n must be in 1..={} (--max-batch)", limits.max_choices),
        ));
    }
    let stop = common.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOPS || stop.iter().any(String::is_empty) {
        return Err(field("stop", "stop takes up to 4 non-empty strings"));
    }
    if top_logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return Err(field("top_logprobs", "top_logprobs must be in 0..=20"));
    }
    let persona: PersonaRequest = match &common.persona {
        Some(v) => read_as(v, "persona")?,
        None => PersonaRequest::default(),
    };
    let (steering, summary) = steering(model, vectors, &persona)?;
    let monitors = monitors(vectors, &persona)?;
    let seed = common.seed.unwrap_or_else(fresh_seed);
    Ok(Prepared {
        job: Job {
            prompt,
            choices,
            max_new_tokens,
            sampling,
            seed,
            stop,
            steering,
            monitors,
            top_logprobs,
            events,
        },
        summary,
    })
}

/// A seed for a request that gave none (reported back, so the answer can
/// be reproduced).
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The runtime steering of a request's `steer`, `ablate` and `cap`, and a
/// one-line summary.
fn steering(
    model: &LoadedModel,
    vectors: &VectorStore,
    p: &PersonaRequest,
) -> Result<(Vec<Steering>, String), ApiError> {
    let device = model.model.device();
    let mut out = Vec::new();
    let mut summary = Vec::new();
    let finite = |param: String, name: &str, v: f64| -> Result<f32, ApiError> {
        let f = v as f32;
        if f.is_finite() {
            Ok(f)
        } else {
            Err(ApiError::field(
                param,
                format!("{name} must be a finite number, got {v}"),
            ))
        }
    };
    let runtime = |param: &str, r: persona_model::Result<Steering>| {
        r.map_err(|e| ApiError::field(param, e.to_string()))
    };
    for (i, s) in p.steer.iter().enumerate() {
        let param = format!("persona.steer[{i}]");
        let v = vectors.resolve(&s.at(), &param)?;
        let coef = finite(format!("{param}.coef"), "coef", s.coef)?;
        let positions = s.positions.map_or(Positions::Generating, |p| p.0);
        out.push(runtime(
            &param,
            Steering::add(v.row, &v.values, coef, positions, device),
        )?);
        summary.push(format!("steer {}@{} {coef:+}", v.name, v.row));
    }
    for (i, a) in p.ablate.as_slice().iter().enumerate() {
        let param = format!("persona.ablate[{i}]");
        let v = vectors.resolve(&a.at(), &param)?;
        let positions = a.positions.map_or(Positions::All, |p| p.0);
        out.push(runtime(
            &param,
            Steering::ablate(v.row, &v.values, positions, device),
        )?);
        summary.push(format!("ablate {}@{}", v.name, v.row));
    }
    for (i, c) in p.cap.as_slice().iter().enumerate() {
        let param = format!("persona.cap[{i}]");
        let v = vectors.resolve(&c.at(), &param)?;
        let bounds = (
            finite(format!("{param}.min"), "min", c.min)?,
            finite(format!("{param}.max"), "max", c.max)?,
        );
        let positions = c.positions.map_or(Positions::All, |p| p.0);
        out.push(runtime(
            &param,
            Steering::cap(v.row, &v.values, bounds, positions, device),
        )?);
        summary.push(format!(
            "cap {}@{} [{}, {}]",
            v.name, v.row, bounds.0, bounds.1
        ));
    }
    model
        .model
        .check_steering(&out)
        .map_err(|e| ApiError::field("persona", e.to_string()))?;
    Ok((out, summary.join(", ")))
}

fn monitors(vectors: &VectorStore, p: &PersonaRequest) -> Result<Vec<Monitor>, ApiError> {
    p.monitor
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("persona.monitor[{i}]");
            let v = vectors.resolve(&m.at(), &param)?;
            let unit = persona_vectors::unit(&v.values).ok_or_else(|| {
                ApiError::field(
                    &param,
                    format!("row {} of `{}` is zero: no direction", v.row, v.name),
                )
            })?;
            Ok(Monitor {
                name: v.name,
                row: v.row,
                unit,
                per_token: m.per_token(),
            })
        })
        .collect()
}
