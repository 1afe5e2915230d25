//! Tokenizer and chat template of a model.
//!
//! For GGUF files the HF `tokenizer.json` is rebuilt from the metadata
//! (`tokenizer.ggml.tokens/.merges/.token_type`, pre-tokenizer name) and
//! handed to the `tokenizers` crate, so both loaders run the same tokenizer
//! code. Chat templates are Jinja and rendered with minijinja (plus its
//! Python-compatibility methods, which Qwen's templates use).

use std::path::Path;

use serde::Serialize;
use std::str::FromStr;

use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Template instructions one rendering may execute. The chat templates of
/// real models spend a few dozen per message; a template that needs more
/// than this for any conversation this project renders is looping.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// Largest rendered prompt: far beyond any model's context in text.
const MAX_RENDERED_BYTES: usize = 64 << 20;

/// A writer that keeps at most [`MAX_RENDERED_BYTES`] and then fails.
#[derive(Default)]
struct BoundedText {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for BoundedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered prompt too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Who speaks a chat message. Templates see the lowercase name; any other
/// role in a data file is an error when it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: ChatRole,
    pub content: String,
}

impl Message {
    pub fn system(c: impl Into<String>) -> Self {
        Self {
            role: ChatRole::System,
            content: c.into(),
        }
    }
    pub fn user(c: impl Into<String>) -> Self {
        Self {
            role: ChatRole::User,
            content: c.into(),
        }
    }
    pub fn assistant(c: impl Into<String>) -> Self {
        Self {
            role: ChatRole::Assistant,
            content: c.into(),
        }
    }
}

/// Tokenizer, special tokens and chat template of one model.
pub struct TextCodec {
    pub tokenizer: Tokenizer,
    /// The HF `tokenizer.json` text this tokenizer was built from.
    pub tokenizer_json: String,
    pub chat_template: String,
    pub bos_token: String,
    pub eos_token: String,
    pub eos_id: u32,
    pub bos_id: u32,
    /// Used to pad batches; never attended to, steered, averaged or scored.
    pub pad_id: u32,
    /// Generation stops at any of these.
    pub stop_ids: Vec<u32>,
    env: minijinja::Environment<'static>,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

/// The HF `tokenizer.json` text of a GGUF byte-level BPE vocabulary:
/// `tokens` by id, their ggml `types` (3 = control, i.e. special; 4 =
/// user-defined, added but not special), `merges`, and the pre-tokenizer
/// named by `tokenizer.ggml.pre`.
fn hf_tokenizer_json(tokens: &[&str], types: &[u64], merges: &[&str], pre: &str) -> Result<String> {
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), serde_json::Value::from(i)))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            serde_json::json!({
                "id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": types[i] == 3
            })
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        }
    });
    serde_json::to_string(&json)
        .map_err(|e| ModelError::Tokenizer(format!("cannot serialise: {e}")))
}

/// The Digits + ByteLevel pre-tokenizer of the `smollm` family (llama.cpp's
/// `\p{N}` split before the GPT-2 regex) or plain GPT-2.
fn pre_tokenizer(pre: &str) -> Result<serde_json::Value> {
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    match pre {
        "smollm" => Ok(serde_json::json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]
        })),
        "gpt2" | "default" => Ok(byte_level),
        other => Err(ModelError::Tokenizer(format!(
            "unsupported pre-tokenizer `{other}` (tokenizer.ggml.pre); supported: smollm, gpt2. \
             Convert the model to an HF directory with its tokenizer.json instead"
        ))),
    }
}

/// A ChatML chat template (the one of [`TextCodec::byte_level`]).
pub(crate) const CHATML_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// `n` tokens and their GGUF types: `<|endoftext|>`, `<|im_start|>`,
/// `<|im_end|>` (control, type 3), then `Ġ` (space), `Ċ` (newline) and the
/// printable ASCII characters, then `<|unused_N|>` placeholders (type 1).
pub(crate) fn byte_level_tokens(n: usize) -> (Vec<String>, Vec<u64>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "Ġ", "Ċ"]
        .map(String::from)
        .to_vec();
    tokens.extend(('!'..='}').filter(|c| *c != '`').map(String::from));
    tokens.truncate(n);
    let named = tokens.len();
    tokens.extend((named..n).map(|i| format!("<|unused_{i}|>")));
    let types = (0..n).map(|i| if i < 3 { 3 } else { 1 }).collect();
    (tokens, types)
}

impl TextCodec {
    /// Builds the codec from GGUF metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ModelError::Tokenizer(format!(
                "unsupported tokenizer model `{model}` (only byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = g.get_strings("tokenizer.ggml.tokens")?;
        let merges = g.get_strings("tokenizer.ggml.merges")?;
        let bad = |reason: String| ModelError::Gguf {
            path: g.path().to_path_buf(),
            reason,
        };
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type")?.as_array() {
            Some(a) if a.len() == tokens.len() => a
                .iter()
                .map(|v| v.as_u64())
                .collect::<Option<_>>()
                .ok_or_else(|| bad("`tokenizer.ggml.token_type` holds a non-integer".into()))?,
            _ => {
                return Err(bad(
                    "`tokenizer.ggml.token_type` is not a list as long as the token list".into(),
                ));
            }
        };
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        // A special token's id must name a token (a wrong id would make the
        // chat template and the stop condition use the wrong text).
        let token_id = |key: &str| -> Result<u32> {
            let id = g.get_u64(key)?;
            u32::try_from(id)
                .ok()
                .filter(|&i| (i as usize) < tokens.len())
                .ok_or_else(|| {
                    bad(format!(
                        "`{key}` = {id} is not a token id (the vocabulary has {} tokens)",
                        tokens.len()
                    ))
                })
        };
        let bos_id = token_id("tokenizer.ggml.bos_token_id")?;
        let eos_id = token_id("tokenizer.ggml.eos_token_id")?;
        // Padding is masked out everywhere, so any token will do; llama.cpp
        // also pads with EOS when the file names no padding token.
        let pad_id = match g.get("tokenizer.ggml.padding_token_id") {
            Ok(_) => token_id("tokenizer.ggml.padding_token_id")?,
            Err(_) => eos_id,
        };
        let tokenizer_json = hf_tokenizer_json(&tokens, &types, &merges, pre)?;
        let template = g.get_str("tokenizer.chat_template")?.to_string();
        let name = |id: u32| {
            tokens
                .get(id as usize)
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        Self::new(tokenizer_json, template, name(bos_id), name(eos_id), pad_id)
    }

    /// A byte-level codec of `vocab_size` tokens for models without a
    /// tokenizer of their own (synthetic shapes, the tiny test model):
    /// [`byte_level_tokens`] and a ChatML template; text encodes one
    /// character per token.
    pub fn byte_level(vocab_size: usize) -> Result<Self> {
        let (tokens, types) = byte_level_tokens(vocab_size);
        if tokens.len() < 3 {
            return Err(ModelError::Tokenizer(format!(
                "a vocabulary of {vocab_size} tokens cannot hold the 3 special tokens"
            )));
        }
        let names: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let json = hf_tokenizer_json(&names, &types, &[], "gpt2")?;
        let eos = tokens[2].clone();
        Self::new(json, CHATML_TEMPLATE.into(), tokens[1].clone(), eos, 0)
    }

    /// Reads `tokenizer.json` and `tokenizer_config.json` from an HF directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let tokenizer_json = std::fs::read_to_string(&tj).map_err(|e| ModelError::io(&tj, e))?;
        let tc = dir.join("tokenizer_config.json");
        let text = std::fs::read_to_string(&tc).map_err(|e| ModelError::io(&tc, e))?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tc.display())))?;
        // Tokens are either plain strings or AddedToken objects with `content`.
        let token = |key: &str| -> Option<String> {
            let v = &cfg[key];
            v.as_str()
                .or_else(|| v["content"].as_str())
                .map(str::to_string)
        };
        let template = match &cfg["chat_template"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => {
                let jinja = dir.join("chat_template.jinja");
                std::fs::read_to_string(&jinja).map_err(|_| {
                    ModelError::Template(format!(
                        "no `chat_template` in {} and no chat_template.jinja",
                        tc.display()
                    ))
                })?
            }
            _ => {
                return Err(ModelError::Template(
                    "named chat templates (a list) are not supported".into(),
                ));
            }
        };
        let eos = token("eos_token")
            .ok_or_else(|| ModelError::Tokenizer(format!("no eos_token in {}", tc.display())))?;
        let bos = token("bos_token").unwrap_or_default();
        let tok = Tokenizer::from_str(&tokenizer_json)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tj.display())))?;
        let pad_id = token("pad_token")
            .and_then(|p| tok.token_to_id(&p))
            .or_else(|| tok.token_to_id(&eos))
            .ok_or_else(|| {
                ModelError::Tokenizer(format!("eos_token `{eos}` is not in the vocabulary"))
            })?;
        Self::new(tokenizer_json, template, bos, eos, pad_id)
    }

    fn new(
        tokenizer_json: String,
        chat_template: String,
        bos_token: String,
        eos_token: String,
        pad_id: u32,
    ) -> Result<Self> {
        let tokenizer = Tokenizer::from_str(&tokenizer_json)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let eos_id = tokenizer.token_to_id(&eos_token).ok_or_else(|| {
            ModelError::Tokenizer(format!("eos token `{eos_token}` not in vocabulary"))
        })?;
        let bos_id = tokenizer.token_to_id(&bos_token).unwrap_or(eos_id);
        let mut stop_ids = vec![eos_id];
        for t in [
            "<|im_end|>",
            "<|endoftext|>",
            "<|eot_id|>",
            "<|end_of_text|>",
        ] {
            if let Some(id) = tokenizer.token_to_id(t)
                && !stop_ids.contains(&id)
            {
                stop_ids.push(id);
            }
        }
        let mut env = minijinja::Environment::new();
        // A template is code from the model file: a few nested loops can
        // run for ever. Fuel bounds the instructions of one rendering.
        env.set_fuel(Some(TEMPLATE_FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", chat_template.clone())
            .map_err(|e| ModelError::Template(format!("does not parse: {e}")))?;
        Ok(Self {
            tokenizer,
            tokenizer_json,
            chat_template,
            bos_token,
            eos_token,
            eos_id,
            bos_id,
            pad_id,
            stop_ids,
            env,
        })
    }

    /// Renders a conversation with the model's chat template.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ModelError::Template(e.to_string()))?;
        let mut out = BoundedText::default();
        let rendered = tmpl.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            },
            &mut out,
        );
        if out.overflowed {
            return Err(ModelError::Template(format!(
                "the rendered prompt exceeds {} MiB; the chat template is broken or the conversation far too long",
                MAX_RENDERED_BYTES >> 20
            )));
        }
        rendered.map(drop).map_err(|e| match e.kind() {
            minijinja::ErrorKind::OutOfFuel => ModelError::Template(format!(
                "rendering ran out of its budget of {TEMPLATE_FUEL} template instructions; the chat template loops too much"
            )),
            _ => ModelError::Template(format!("cannot render: {e}")),
        })?;
        String::from_utf8(out.bytes)
            .map_err(|_| ModelError::Template("rendered text is not UTF-8".into()))
    }

    /// Token ids of a conversation rendered with the generation prompt
    /// appended: what the model reads before it answers.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode(&self.render(messages, true)?)
    }

    /// Token ids of a text, special tokens recognised, nothing added (the chat
    /// template already holds whatever BOS/markers the model wants).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Text of token ids, special tokens kept.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Text of token ids with special tokens removed.
    pub fn decode_clean(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// `tokenizer_config.json` for an HF directory holding this codec.
    pub fn tokenizer_config_json(&self, max_len: usize) -> serde_json::Value {
        let pad = self.tokenizer.id_to_token(self.pad_id).unwrap_or_default();
        serde_json::json!({
            "add_bos_token": false,
            "add_eos_token": false,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": pad,
            "unk_token": null,
            "chat_template": self.chat_template,
            "model_max_length": max_len,
            "tokenizer_class": "GPT2Tokenizer",
            "clean_up_tokenization_spaces": false,
        })
    }
}
