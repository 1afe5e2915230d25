//! The request bodies the server reads: OpenAI's chat and completion
//! requests, and the `persona` extension (steering, ablation, capping and
//! monitoring per request).
//!
//! OpenAI fields the server does not implement are refused when set to
//! anything but their neutral value (a penalty the server would ignore
//! changes the answer the client expects); unknown fields are ignored, as
//! OpenAI does. The `persona` object refuses unknown keys: a typo in a
//! steering must not pass as an unsteered request.

use serde::Deserialize;

use persona_model::Positions;

/// The fields of `POST /v1/chat/completions` besides [`Common`] (each
/// read from the whole body, so an error names its field).
#[derive(Debug, Deserialize)]
pub struct ChatFields {
    pub messages: Vec<ChatMessage>,
    /// Log-probabilities of the chosen tokens.
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per position (0-20), with `logprobs: true`.
    pub top_logprobs: Option<usize>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<usize>,
}

/// The fields of `POST /v1/completions` besides [`Common`]: a raw text
/// prompt, no chat template.
#[derive(Debug, Deserialize)]
pub struct CompletionFields {
    pub prompt: PromptText,
    /// Log-probabilities of the chosen tokens and this many alternatives (0-20).
    pub logprobs: Option<usize>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    pub best_of: Option<usize>,
}

/// A completion prompt: one text (a list must hold exactly one).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptText {
    One(String),
    Many(Vec<String>),
}

/// The fields both endpoints share.
#[derive(Debug, Deserialize)]
pub struct Common {
    pub model: String,
    pub max_tokens: Option<usize>,
    /// Default 1 (OpenAI's); 0 = greedy.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Without one the server draws a seed and reports it in `persona.seed`.
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    /// Answers per request (each its own sampling stream).
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// The persona extension, read as a [`PersonaRequest`] on its own (so
    /// its errors name their path below `persona`).
    pub persona: Option<serde_json::Value>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Value>,
    pub tools: Option<serde_json::Value>,
    pub functions: Option<serde_json::Value>,
    pub response_format: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or up to four.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// One chat message; `developer` is read as `system`.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Content,
}

/// A message's text, or a list of parts of which only text parts are read.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// The `persona` object of a request body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonaRequest {
    /// `h += coef * v` at a row (several at once).
    #[serde(default)]
    pub steer: Vec<SteerSpec>,
    /// `h -= (h . v̂) v̂` at a row: one object or a list.
    #[serde(default)]
    pub ablate: OneOrMany<AblateSpec>,
    /// Clamp `h . v̂` to `[min, max]` at a row: one object or a list.
    #[serde(default)]
    pub cap: OneOrMany<CapSpec>,
    /// Vectors whose projections the response reports: names, or
    /// objects with a row and per-token projections.
    #[serde(default)]
    pub monitor: Vec<MonitorSpec>,
}

/// One object or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(t) => std::slice::from_ref(t),
            OneOrMany::Many(v) => v,
        }
    }

    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A vector named by the server's `--vectors` folder or by a path on the
/// server, at a row (default: the row `persona vector select` chose and
/// stored in the file), in a variant (default `response_avg`).
#[derive(Debug, Clone)]
pub struct VectorAt {
    pub vector: String,
    pub row: Option<usize>,
    pub variant: Option<String>,
}

/// The `vector`, `row` and `variant` keys every intervention has (written
/// out in each: serde cannot refuse unknown keys through `flatten`).
macro_rules! vector_at {
    ($t:ty) => {
        impl $t {
            pub fn at(&self) -> VectorAt {
                VectorAt {
                    vector: self.vector.clone(),
                    row: self.row,
                    variant: self.variant.clone(),
                }
            }
        }
    };
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerSpec {
    pub vector: String,
    pub row: Option<usize>,
    pub variant: Option<String>,
    pub coef: f64,
    /// Default `generating` (the last prompt token and every generated
    /// token, as `persona generate --steer`).
    pub positions: Option<PositionsName>,
}
vector_at!(SteerSpec);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblateSpec {
    pub vector: String,
    pub row: Option<usize>,
    pub variant: Option<String>,
    /// Default `all`.
    pub positions: Option<PositionsName>,
}
vector_at!(AblateSpec);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapSpec {
    pub vector: String,
    pub row: Option<usize>,
    pub variant: Option<String>,
    pub min: f64,
    pub max: f64,
    /// Default `all`.
    pub positions: Option<PositionsName>,
}
vector_at!(CapSpec);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorAt {
    pub vector: String,
    pub row: Option<usize>,
    pub variant: Option<String>,
    /// Also the projection of every response token.
    #[serde(default)]
    pub per_token: bool,
}
vector_at!(MonitorAt);

/// A [`Positions`] by its name in flags and settings.
#[derive(Debug, Clone, Copy)]
pub struct PositionsName(pub Positions);

impl<'de> Deserialize<'de> for PositionsName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map(PositionsName)
            .map_err(serde::de::Error::custom)
    }
}

/// A monitored vector: its name (its chosen row), or a [`MonitorAt`].
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MonitorSpec {
    Name(String),
    At(MonitorAt),
}

impl MonitorSpec {
    pub fn at(&self) -> VectorAt {
        match self {
            MonitorSpec::Name(n) => VectorAt {
                vector: n.clone(),
                row: None,
                variant: None,
            },
            MonitorSpec::At(m) => m.at(),
        }
    }

    pub fn per_token(&self) -> bool {
        matches!(self, MonitorSpec::At(m) if m.per_token)
    }
}

/// `POST /v1/persona/vectors`: load a vector file from a path on the server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadVector {
    pub path: String,
    /// Default: the file's stem.
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_persona_extension_reads_its_short_and_long_forms() {
        let p: PersonaRequest = serde_json::from_str(
            r#"{"steer": [{"vector": "sycophantic", "row": 15, "coef": -4}],
                "ablate": {"vector": "evil", "row": 3},
                "cap": [{"vector": "evil", "min": -1, "max": 2, "positions": "generating"}],
                "monitor": ["sycophantic", {"vector": "evil", "row": 12, "per_token": true}]}"#,
        )
        .unwrap();
        assert_eq!(p.steer[0].coef, -4.0);
        assert_eq!(p.steer[0].row, Some(15));
        assert_eq!(p.ablate.into_vec().len(), 1);
        let cap = p.cap.into_vec();
        assert_eq!(cap[0].row, None);
        assert_eq!(cap[0].positions.unwrap().0, Positions::Generating);
        assert!(matches!(&p.monitor[0], MonitorSpec::Name(n) if n == "sycophantic"));
        assert!(p.monitor[1].per_token() && !p.monitor[0].per_token());
    }

    #[test]
    fn unknown_keys_and_positions_in_the_extension_are_refused() {
        for bad in [
            r#"{"steeer": []}"#,
            r#"{"steer": [{"vector": "v", "coef": 1, "cof": 2}]}"#,
            r#"{"steer": [{"vector": "v", "coef": 1, "positions": "everywhere"}]}"#,
            r#"{"monitor": [{"vector": "v", "per_tokn": true}]}"#,
        ] {
            assert!(
                serde_json::from_str::<PersonaRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
