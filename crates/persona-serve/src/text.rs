//! From tokens to what a client reads: text that grows token by token with
//! stop strings cut off, and log-probabilities of the chosen tokens.

use persona_model::TextCodec;
use serde::Serialize;

/// Most alternatives per position a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The text of one answer as it grows. Text is released only when it can
/// no longer change: not while it ends in an unfinished character (a
/// token holding part of a UTF-8 sequence decodes to U+FFFD) or in the
/// beginning of a stop string.
#[derive(Debug, Default)]
pub struct TextStream {
    stops: Vec<String>,
    /// The answer so far, cut at the first stop string.
    text: String,
    /// What has been released.
    sent: String,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            ..Self::default()
        }
    }

    /// Takes the decoded answer so far; returns the newly released text
    /// and whether a stop string ended the answer.
    pub fn update(&mut self, decoded: &str) -> (String, bool) {
        let cut = self
            .stops
            .iter()
            .filter_map(|s| decoded.find(s.as_str()))
            .min();
        self.text = decoded[..cut.unwrap_or(decoded.len())].to_string();
        let stopped = cut.is_some();
        let end = if stopped {
            self.text.len()
        } else {
            self.text.len() - self.held_back()
        };
        let ready = &self.text[..end];
        // Decoding is prefix-stable for the tokenizers served here; if an
        // earlier part ever changed, the final text (sent with the answer's
        // end) is the one to trust.
        let delta = match ready.strip_prefix(self.sent.as_str()) {
            Some(d) => d.to_string(),
            None => String::new(),
        };
        self.sent.push_str(&delta);
        (delta, stopped)
    }

    /// Bytes at the end of the text that may still change: unfinished
    /// characters, and before them the longest end that begins a stop
    /// string (it may complete once those characters do).
    fn held_back(&self) -> usize {
        let t = &self.text;
        let finished = t.trim_end_matches('\u{FFFD}');
        let stop_prefix = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&n| s.is_char_boundary(n) && finished.ends_with(&s[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0);
        t.len() - finished.len() + stop_prefix
    }

    /// The whole answer, stop string removed.
    pub fn final_text(&self) -> String {
        self.text.clone()
    }
}

/// The log-probability of a chosen token and the most likely tokens at
/// its position, under the model's distribution (before temperature).
#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprobs {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

/// Log-softmax of one row of logits (in f64) at `token`, and its `k` most
/// likely tokens (ties: lower id first).
pub fn logprobs_of(logits: &[f32], token: u32, k: usize, codec: &TextCodec) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_total = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let lp = |id: u32| logits[id as usize] as f64 - log_total;
    let piece = |id: u32| codec.decode(&[id]).unwrap_or_default();
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(MAX_TOP_LOGPROBS).min(ids.len());
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k > 0 && k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by_logit);
    }
    ids.truncate(k);
    ids.sort_by(by_logit);
    let text = piece(token);
    TokenLogprobs {
        bytes: text.as_bytes().to_vec(),
        token: text,
        logprob: lp(token),
        top_logprobs: ids
            .into_iter()
            .map(|id| {
                let t = piece(id);
                TopLogprob {
                    bytes: t.as_bytes().to_vec(),
                    token: t,
                    logprob: lp(id),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the answer's growing texts; returns the released pieces and
    /// whether a stop string ended it.
    fn run(stops: &[&str], texts: &[&str]) -> (Vec<String>, bool, String) {
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        let mut stopped = false;
        for t in texts {
            let (d, st) = s.update(t);
            out.push(d);
            stopped = st;
            if st {
                break;
            }
        }
        (out, stopped, s.final_text())
    }

    #[test]
    fn text_is_released_as_it_grows() {
        let (out, stopped, all) = run(&[], &["He", "Hello", "Hello world"]);
        assert_eq!(out, ["He", "llo", " world"]);
        assert!(!stopped);
        assert_eq!(all, "Hello world");
    }

    #[test]
    fn a_stop_string_ends_the_answer_and_is_never_released() {
        let (out, stopped, all) = run(&["\n\nQ:"], &["A", "A.\n", "A.\n\n", "A.\n\nQ: more"]);
        assert_eq!(out, ["A", ".", "", ""]);
        assert!(stopped);
        assert_eq!(all, "A.");
        // A held-back beginning that turns out not to be a stop is released.
        let (out, stopped, _) = run(&["STOP"], &["a S", "a ST", "a STay"]);
        assert_eq!(out, ["a ", "", "STay"]);
        assert!(!stopped);
    }

    /// A stop string that ends in a character still unfinished holds back
    /// its beginning too: streamed and whole answers agree.
    #[test]
    fn a_stop_string_ending_in_an_unfinished_character_is_held_whole() {
        let (out, stopped, all) = run(&["aé"], &["x", "xa\u{FFFD}", "xaé"]);
        assert_eq!(out, ["x", "", ""]);
        assert!(stopped);
        assert_eq!(all, "x");
    }

    #[test]
    fn unfinished_characters_wait_for_their_last_byte() {
        let (out, _, all) = run(&[], &["caf", "caf\u{FFFD}", "café"]);
        assert_eq!(out, ["caf", "", "é"]);
        assert_eq!(all, "café");
    }
}
