//! A judge computed by a local model through this project's runtime: the
//! rubric is the user message of a chat prompt (generation prompt
//! appended), and the score is [`expected_score`] over the numbers the
//! model could answer.
//!
//! Tokenizers that split numbers into single digits (SmolLM2, Qwen2, ...)
//! cannot put "85" in one token, so a first-token top-20 would only ever
//! see 0..=9. For them the probability of each number is read off the full
//! digit tree ([`digit_tree_candidates`]) in one batched forward: the
//! prompt, then each of "0".."9", "10" and "100" appended. Other tokenizers
//! use the top-20 first tokens, like the HTTP judge.

use persona_model::{
    Batch, ForwardArgs, LoadedModel, Logits, Message, PadSide, Sequence, host_vec,
};

use crate::error::Result;
use crate::score::{digit_tree_candidates, expected_score};

/// How many top tokens enter the score (as `top_logprobs` does over HTTP).
pub const TOP_K: usize = 20;

pub struct LocalJudge {
    pub model: LoadedModel,
    /// Prompts per forward pass.
    pub batch_size: usize,
}

impl LocalJudge {
    /// `local:<model name>@<sha256 prefix>`.
    pub fn identity(&self) -> String {
        let id = &self.model.identity;
        format!(
            "local:{}@{}",
            id.name,
            &id.sha256[..12.min(id.sha256.len())]
        )
    }

    /// The top `TOP_K` `(token text, logprob)` of one row of logits.
    fn top_tokens(&self, logits: &[f32]) -> Result<Vec<(String, f64)>> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_z = max
            + logits
                .iter()
                .map(|l| (*l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
        idx.truncate(TOP_K);
        idx.into_iter()
            .map(|i| {
                let text = self.model.codec.decode(&[i as u32])?;
                Ok((text, logits[i] as f64 - log_z))
            })
            .collect()
    }

    /// Token ids of "0".."9" when each digit is one token.
    fn digit_ids(&self) -> Option<[u32; 10]> {
        let mut ids = [0u32; 10];
        for (d, slot) in ids.iter_mut().enumerate() {
            match self.model.codec.encode(&d.to_string()).ok()?.as_slice() {
                [one] => *slot = *one,
                _ => return None,
            }
        }
        Some(ids)
    }

    /// Softmax probabilities of the ten digit tokens in one row of logits.
    fn digit_probs(logits: &[f32], ids: &[u32; 10]) -> [f64; 10] {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = logits.iter().map(|l| (*l as f64 - max).exp()).sum();
        let mut p = [0f64; 10];
        for (d, id) in ids.iter().enumerate() {
            p[d] = (logits[*id as usize] as f64 - max).exp() / z;
        }
        p
    }

    /// Judges every prompt (a filled rubric), in order.
    pub fn score(&self, prompts: &[String]) -> Result<Vec<Option<f32>>> {
        match self.digit_ids() {
            Some(ids) => self.score_digit_tree(prompts, &ids),
            None => self.score_top_tokens(prompts),
        }
    }

    fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        Ok(self.model.codec.prompt_ids(&[Message::user(prompt)])?)
    }

    /// Next-token logits `[vocab]` after each token sequence, batched.
    fn last_logits(&self, prompts: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let seqs: Vec<Sequence> = prompts
            .into_iter()
            .map(|prompt| Sequence {
                prompt,
                response: Vec::new(),
            })
            .collect();
        let vocab = self.model.model.config.vocab_size;
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(self.batch_size.max(1)) {
            let batch = Batch::new(chunk, PadSide::Right, self.model.codec.pad_id)?;
            let mut args = ForwardArgs::plain();
            args.logits = Logits::Last;
            let fwd = self.model.model.forward(&batch, args)?;
            let logits = host_vec(fwd.logits.expect("asked for logits"))?;
            out.extend(logits.chunks(vocab).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// The digit-tree score: 13 branches per prompt, all prompts batched together.
    fn score_digit_tree(&self, prompts: &[String], ids: &[u32; 10]) -> Result<Vec<Option<f32>>> {
        let mut branches: Vec<Vec<u32>> = vec![vec![]];
        branches.extend(ids.iter().map(|d| vec![*d]));
        branches.push(vec![ids[1], ids[0]]);
        branches.push(vec![ids[1], ids[0], ids[0]]);
        let mut seqs = Vec::with_capacity(prompts.len() * branches.len());
        for prompt in prompts {
            let base = self.prompt_ids(prompt)?;
            seqs.extend(branches.iter().map(|b| [base.as_slice(), b].concat()));
        }
        let logits = self.last_logits(seqs)?;
        Ok(logits
            .chunks(branches.len())
            .map(|tree| {
                let mut rows = [[0f64; 10]; 13];
                for (r, l) in rows.iter_mut().zip(tree) {
                    *r = Self::digit_probs(l, ids);
                }
                expected_score(&digit_tree_candidates(&rows))
            })
            .collect())
    }

    /// The first-token score, for tokenizers with multi-digit tokens.
    fn score_top_tokens(&self, prompts: &[String]) -> Result<Vec<Option<f32>>> {
        let seqs = prompts
            .iter()
            .map(|p| self.prompt_ids(p))
            .collect::<Result<_>>()?;
        self.last_logits(seqs)?
            .iter()
            .map(|l| Ok(expected_score(&self.top_tokens(l)?)))
            .collect()
    }
}
