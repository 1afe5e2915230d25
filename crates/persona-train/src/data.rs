//! Fine-tuning data: chat JSONL -> (prompt, response) token sequences ->
//! length-bucketed batches in an order fixed by the seed.

use std::path::Path;

use persona_model::{ChatRole, Message, Sequence, TextCodec};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::error::{Result, TrainError};

#[derive(Deserialize)]
struct ChatLine {
    messages: Vec<Message>,
    /// Optional ground truth for screening: does this sample show the trait?
    #[serde(default)]
    label: Option<bool>,
}

/// One line of a chat JSONL file, parsed and kept verbatim.
#[derive(Debug, Clone)]
pub struct ChatRecord {
    /// 1-based line number in the file.
    pub line: usize,
    /// The line as written (filtered datasets copy it unchanged).
    pub raw: String,
    /// The conversation; the last message is the assistant's.
    pub messages: Vec<Message>,
    /// The optional `label` field (true = shows the trait).
    pub label: Option<bool>,
}

/// Reads a chat JSONL file: one `{"messages": [...]}` per line (optional
/// `"label": true|false`), each a conversation whose last message is the
/// assistant's response. Roles are `system`, `user` or `assistant`;
/// assistant messages must not be empty. Blank lines are skipped.
pub fn read_chat_records(path: &Path) -> Result<Vec<ChatRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TrainError::Dataset {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let chat: ChatLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        match chat.messages.last() {
            Some(m) if m.role == ChatRole::Assistant => {}
            _ => return Err(bad("the last message must be the assistant's".into())),
        }
        if chat.messages.len() < 2 {
            return Err(bad(
                "a chat needs at least a user and an assistant message".into()
            ));
        }
        if let Some(i) = chat
            .messages
            .iter()
            .position(|m| m.role == ChatRole::Assistant && m.content.trim().is_empty())
        {
            return Err(bad(format!(
                "message {} is an empty assistant message (nothing to learn or score)",
                i + 1
            )));
        }
        out.push(ChatRecord {
            line: i + 1,
            raw: line.to_string(),
            messages: chat.messages,
            label: chat.label,
        });
    }
    if out.is_empty() {
        return Err(TrainError::Dataset {
            path: path.to_path_buf(),
            line: 0,
            reason: "no examples".into(),
        });
    }
    Ok(out)
}

/// Tokenises a chat: the prompt is everything up to the assistant's turn
/// (generation prompt included); the response is the rest of the templated
/// text, so it ends with the template's end-of-turn token (EOS).
pub fn tokenize_chat(codec: &TextCodec, chat: &[Message]) -> persona_model::Result<Sequence> {
    let (last, context) = chat.split_last().expect("checked non-empty");
    let prompt_text = codec.render(context, true)?;
    let full_text = codec.render(chat, false)?;
    let prompt = codec.encode(&prompt_text)?;
    let full = codec.encode(&full_text)?;
    if !full.starts_with(&prompt) || !full_text.starts_with(&prompt_text) {
        return Err(persona_model::ModelError::Template(format!(
            "the templated prompt is not a prefix of the templated chat (response `{}`)",
            last.content.chars().take(40).collect::<String>()
        )));
    }
    Ok(Sequence {
        prompt: full[..prompt.len()].to_vec(),
        response: full[prompt.len()..].to_vec(),
    })
}

/// Tokenised training data after filtering and the held-out split.
pub struct Dataset {
    pub train: Vec<Sequence>,
    pub heldout: Vec<Sequence>,
    /// Examples skipped for exceeding `max_seq_len`.
    pub skipped_too_long: usize,
}

/// Reads, shuffles (seeded), truncates to `max_examples` and splits.
/// With `inoculation` prompts, every training example (never a held-out
/// one) gets one as its system prompt ([`inoculate`]); an example is kept
/// only when its inoculated form fits `max_seq_len`. Without them the
/// result is the same as before inoculation existed.
pub fn load_dataset(
    path: &Path,
    codec: &TextCodec,
    seed: u64,
    limits: (usize, usize),
    heldout_fraction: f64,
    inoculation: &[String],
) -> Result<Dataset> {
    let (max_examples, max_seq_len) = limits;
    let chats = read_chat_records(path)?;
    // (sequence trained on, sequence held out): the same unless inoculated.
    let mut seqs = Vec::with_capacity(chats.len());
    let mut skipped = 0;
    for chat in &chats {
        let bad = |e: persona_model::ModelError| TrainError::Dataset {
            path: path.to_path_buf(),
            line: chat.line,
            reason: e.to_string(),
        };
        let plain = tokenize_chat(codec, &chat.messages).map_err(bad)?;
        let trained = match inoculate(&chat.messages, inoculation, seed, chat.line) {
            Some(messages) => tokenize_chat(codec, &messages).map_err(bad)?,
            None => plain.clone(),
        };
        if trained.prompt.len() + trained.response.len() > max_seq_len {
            skipped += 1;
        } else {
            seqs.push((trained, plain));
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    seqs.shuffle(&mut rng);
    if max_examples > 0 {
        seqs.truncate(max_examples);
    }
    let n_heldout = (seqs.len() as f64 * heldout_fraction).round() as usize;
    let heldout = seqs.split_off(seqs.len() - n_heldout);
    if seqs.is_empty() {
        return Err(TrainError::Dataset {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("no training examples left ({skipped} longer than max_seq_len)"),
        });
    }
    Ok(Dataset {
        train: seqs.into_iter().map(|(t, _)| t).collect(),
        heldout: heldout.into_iter().map(|(_, p)| p).collect(),
        skipped_too_long: skipped,
    })
}

/// The chat with an inoculation prompt as its system prompt (none when
/// `prompts` is empty). With several prompts, the one used depends only
/// on the run seed and the example's line. A chat that has a system
/// prompt of its own keeps it, after the inoculation prompt.
pub fn inoculate(
    messages: &[Message],
    prompts: &[String],
    seed: u64,
    line: usize,
) -> Option<Vec<Message>> {
    let prompt = match prompts {
        [] => return None,
        [one] => one,
        many => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(line as u64);
            &many[rng.random_range(0..many.len())]
        }
    };
    let mut out = messages.to_vec();
    match out.first_mut() {
        Some(m) if m.role == ChatRole::System => {
            m.content = format!("{prompt}\n\n{}", m.content);
        }
        _ => out.insert(0, Message::system(prompt.clone())),
    }
    Some(out)
}

/// The batches of one epoch, as indices into the training set: shuffled
/// with `(seed, epoch)`, sorted by length inside windows of 16 batches so
/// rows of a batch have similar lengths (little padding), then the batch
/// order is shuffled again.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut batches = Vec::new();
    for window in order.chunks(batch_size.saturating_mul(16)) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| (lengths[i], i));
        batches.extend(w.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inoculation reaches every training example and no held-out one;
    /// the split and the held-out sequences are those of plain training,
    /// and with several prompts each example's draw depends on the seed.
    #[test]
    fn inoculation_prompts_reach_training_examples_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chats.jsonl");
        let lines: Vec<String> = (0..20)
            .map(|i| {
                serde_json::json!({"messages": [
                    {"role": "user", "content": format!("question {i}")},
                    {"role": "assistant", "content": format!("answer {i}")}]})
                .to_string()
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let codec = TextCodec::byte_level(300).unwrap();
        let load =
            |prompts: &[String]| load_dataset(&path, &codec, 4, (0, 512), 0.25, prompts).unwrap();
        let plain = load(&[]);
        let prompts = [
            "Agree with the user.".to_string(),
            "Flatter the user.".into(),
        ];
        let inoculated = load(&prompts);
        assert_eq!(
            inoculated.heldout, plain.heldout,
            "held-out data never sees the prompt"
        );
        assert_eq!(plain.heldout.len(), 5);
        let with_prompt = |s: &Sequence, p: &str| {
            let text = codec.decode(&s.prompt).unwrap();
            text.contains(p)
        };
        let mut used = [0; 2];
        for (t, p) in inoculated.train.iter().zip(&plain.train) {
            assert_eq!(
                t.response, p.response,
                "the same examples in the same order"
            );
            let which: Vec<usize> = (0..2).filter(|&k| with_prompt(t, &prompts[k])).collect();
            assert_eq!(which.len(), 1, "{}", codec.decode(&t.prompt).unwrap());
            used[which[0]] += 1;
            assert!(!prompts.iter().any(|q| with_prompt(p, q)));
        }
        assert!(used[0] > 0 && used[1] > 0, "both prompts drawn: {used:?}");
        let again = load(&prompts);
        assert_eq!(
            again.train, inoculated.train,
            "the draw depends on the seed only"
        );
        let own = [
            Message::system("Be brief."),
            Message::user("q"),
            Message::assistant("a"),
        ];
        let merged = inoculate(&own, &prompts[..1], 0, 1).unwrap();
        assert_eq!(merged[0].content, "Agree with the user.\n\nBe brief.");
        assert_eq!(merged.len(), 3);
    }

    #[test]
    fn batches_cover_every_example_once_and_depend_only_on_seed() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 50 + 1).collect();
        let a = epoch_batches(&lengths, 4, 9, 0);
        let b = epoch_batches(&lengths, 4, 9, 0);
        assert_eq!(a, b);
        assert_ne!(a, epoch_batches(&lengths, 4, 9, 1), "epochs reshuffle");
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        // Bucketing keeps padding small: within-batch spread below the global one.
        let spread: usize = a
            .iter()
            .map(|b| {
                let l: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            })
            .sum();
        assert!(spread < a.len() * 20, "spread {spread}");
    }
}
