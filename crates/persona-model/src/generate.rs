//! Text generation with a KV cache: greedy or temperature/top-p sampling,
//! many prompts at once.
//!
//! Prompts are sorted by length and generated in left-padded batches; a row
//! that stops leaves the batch (its cache rows are dropped), so the batch
//! shrinks instead of carrying finished rows to the end. Every prompt has its
//! own RNG stream derived from the seed and the prompt's index, so a text
//! does not depend on which other prompts shared its batch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cache::KvCache;
use crate::error::{ModelError, Result};
use crate::model::{ForwardArgs, Model, host_vec};
use crate::sites::{Batch, PadSide, Role, Sequence, Steering};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (first one on ties).
    Greedy,
    /// Softmax at `temperature`, restricted to the smallest set of tokens
    /// whose probability reaches `top_p` (1.0 = no restriction).
    Temperature { temperature: f32, top_p: f32 },
}

impl Sampling {
    /// The sampling of a settings file's `temperature` and `top_p`:
    /// temperature 0 means greedy (top_p unused); anything else samples.
    /// Both are checked ([`Sampling::check`]).
    pub fn from_settings(temperature: f32, top_p: f32) -> Result<Self> {
        let s = if temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Temperature { temperature, top_p }
        };
        s.check()?;
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ModelError::Input(format!(
                "top_p must be in (0, 1], got {top_p}"
            )));
        }
        Ok(s)
    }

    /// Refuses settings that would sample from NaNs: a temperature that is
    /// negative or not finite, a `top_p` outside `(0, 1]`.
    pub fn check(&self) -> Result<()> {
        if let Sampling::Temperature { temperature, top_p } = *self {
            if !(temperature.is_finite() && temperature >= 0.0) {
                return Err(ModelError::Input(format!(
                    "temperature must be a finite number >= 0 (0 = greedy), got {temperature}"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(ModelError::Input(format!(
                    "top_p must be in (0, 1], got {top_p}"
                )));
            }
        }
        Ok(())
    }
}

/// The generation numbers that settings files (evaluation, layer
/// selection, generated extraction) each carry, checked in one place;
/// flattened into those files' tables (`samples = 10` beside their own
/// keys). Temperature 0 means greedy ([`Sampling::from_settings`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingSettings {
    /// Answers per prompt (>= 1).
    pub samples: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Prompts per generation batch (>= 1).
    pub batch_size: usize,
}

/// Upper bounds of [`SamplingSettings`]' sizes (a typo must be an error,
/// not a run that never ends or an allocation that cannot succeed).
pub const MAX_SAMPLES: usize = 10_000;
pub const MAX_BATCH: usize = 1 << 16;
pub const MAX_NEW_TOKENS: usize = 1 << 20;

impl SamplingSettings {
    /// The [`Sampling`] of these settings, or the setting that is wrong.
    pub fn sampling(&self) -> Result<Sampling> {
        for (name, value, max) in [
            ("samples", self.samples, MAX_SAMPLES),
            ("batch_size", self.batch_size, MAX_BATCH),
            ("max_new_tokens", self.max_new_tokens, MAX_NEW_TOKENS),
        ] {
            if !(1..=max).contains(&value) {
                return Err(ModelError::Input(format!(
                    "{name} = {value} must be in 1..={max}"
                )));
            }
        }
        Sampling::from_settings(self.temperature, self.top_p)
    }

    /// The options of one [`generate`] call with these settings.
    pub fn options(&self, steering: Vec<Steering>) -> Result<GenerateOptions> {
        Ok(GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampling: self.sampling()?,
            seed: self.seed,
            batch_size: self.batch_size,
            steering,
        })
    }
}

/// Everything that shapes a generation run.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// At most this many new tokens per prompt; generation also stops when
    /// a batch reaches the model's context (`max_positions`).
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Prompts per batch.
    pub batch_size: usize,
    pub steering: Vec<Steering>,
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Generation {
    /// New tokens, ending with the stop token when `stopped`.
    pub tokens: Vec<u32>,
    /// Ended on a stop token (not on the token limit).
    pub stopped: bool,
}

impl Generation {
    /// The new tokens without the final stop token.
    pub fn content_tokens(&self) -> &[u32] {
        if self.stopped {
            &self.tokens[..self.tokens.len() - 1]
        } else {
            &self.tokens
        }
    }
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], sampling: Sampling, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    match sampling {
        Sampling::Greedy => argmax(),
        Sampling::Temperature { temperature, top_p } => {
            if temperature <= 0.0 {
                return argmax();
            }
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let probs: Vec<f64> = logits
                .iter()
                .map(|&l| (((l - max) / temperature) as f64).exp())
                .collect();
            let total: f64 = probs.iter().sum();
            let order = by_probability(&probs);
            let mut kept = 0.0;
            let mut n = 0;
            for &id in &order {
                kept += probs[id as usize] / total;
                n += 1;
                if kept >= top_p as f64 {
                    break;
                }
            }
            let kept_mass: f64 = order[..n].iter().map(|&id| probs[id as usize]).sum();
            let mut u = rng.random::<f64>() * kept_mass;
            for &id in &order[..n] {
                u -= probs[id as usize];
                if u <= 0.0 {
                    return id;
                }
            }
            order[n - 1]
        }
    }
}

/// Token ids by probability, most likely first, ties by lower id: the
/// order of `(p, id)` under `f64::total_cmp` descending, then id. Sorted
/// as one integer per token (the total order's key in the high bits, the
/// id in the low ones), which is several times faster than comparing
/// pairs and gives the same order.
fn by_probability(probs: &[f64]) -> Vec<u32> {
    let mut keys: Vec<u128> = probs
        .iter()
        .enumerate()
        .map(|(id, p)| {
            // `total_cmp`'s key: flip the magnitude bits of negatives, then
            // the sign bit, so unsigned order is total order.
            let bits = p.to_bits() as i64;
            let ordered = (bits ^ ((((bits >> 63) as u64) >> 1) as i64)) as u64 ^ (1 << 63);
            ((!ordered as u128) << 32) | id as u128
        })
        .collect();
    keys.sort_unstable();
    keys.into_iter().map(|k| k as u32).collect()
}

/// Generates a continuation for every prompt (token ids of a rendered chat
/// prompt, generation prompt included). `progress` is called with the
/// number of prompts finished so far.
pub fn generate(
    model: &Model,
    prompts: &[Vec<u32>],
    stop_ids: &[u32],
    pad_id: u32,
    opts: &GenerateOptions,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Generation>> {
    if opts.batch_size == 0 {
        return Err(ModelError::Input("batch_size must be at least 1".into()));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Input(format!("prompt {i} is empty")));
    }
    model.check_steering(&opts.steering)?;
    opts.sampling.check()?;
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut results: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut done = 0;
    let mut finished = || {
        done += 1;
        progress(done);
    };
    for chunk in order.chunks(opts.batch_size) {
        let batch = Prompts {
            prompts,
            chunk,
            stop_ids,
            pad_id,
        };
        let outs = generate_batch(model, &batch, opts, &mut finished)?;
        for (g, &i) in outs.into_iter().zip(chunk) {
            results[i] = Some(g);
        }
    }
    Ok(results
        .into_iter()
        .map(|g| g.expect("every prompt belongs to one chunk"))
        .collect())
}

/// The sampling stream of prompt `index` of a [`generate`] call: a
/// server answering one prompt alone uses stream 0 (choice `i` of a
/// request for several answers, stream `i`) and samples the same tokens.
pub fn prompt_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(index as u64);
    r
}

/// The prompts of one generation batch: `prompts[chunk[..]]`.
struct Prompts<'a> {
    prompts: &'a [Vec<u32>],
    chunk: &'a [usize],
    stop_ids: &'a [u32],
    pad_id: u32,
}

/// One left-padded batch, decoded until every row stops (a stop token,
/// `max_new_tokens`, or the model's context); a finished row leaves the
/// batch and its cache rows are dropped. `finished` is called per row.
fn generate_batch(
    model: &Model,
    p: &Prompts<'_>,
    opts: &GenerateOptions,
    finished: &mut dyn FnMut(),
) -> Result<Vec<Generation>> {
    let rows: Vec<Sequence> = p
        .chunk
        .iter()
        .map(|&i| Sequence {
            prompt: p.prompts[i].clone(),
            response: vec![],
        })
        .collect();
    // One stream per prompt: a text does not depend on its batch.
    let mut rngs: Vec<ChaCha8Rng> = p.chunk.iter().map(|&i| prompt_rng(opts.seed, i)).collect();
    let mut outs = vec![Generation::default(); p.chunk.len()];
    // Generation stops at the model's context: the batch's rows are padded
    // to the longest prompt, so that prompt sets the room left.
    let context = model.config.max_positions;
    let longest = rows.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
    if longest >= context {
        return Err(ModelError::Input(format!(
            "a prompt of {longest} tokens leaves no room in the model's context of {context} tokens"
        )));
    }
    let max_new_tokens = opts.max_new_tokens.min(context - longest);
    if max_new_tokens == 0 {
        p.chunk.iter().for_each(|_| finished());
        return Ok(outs);
    }
    // Room for the longest prompt and every new token: decoding never
    // copies the cache into a longer tensor.
    let mut cache = KvCache::with_capacity(longest + max_new_tokens);
    let mut batch = Batch::new(&rows, PadSide::Left, p.pad_id)?;
    // Positions in `chunk` of the rows still generating, in cache order.
    let mut active: Vec<usize> = (0..p.chunk.len()).collect();
    while !active.is_empty() {
        let out = model.forward(&batch, ForwardArgs::decode(&mut cache, &opts.steering))?;
        let logits = host_vec(
            out.logits
                .ok_or_else(|| ModelError::Data("forward returned no logits".into()))?,
        )?;
        let vocab = model.config.vocab_size;
        let (mut keep, mut next) = (Vec::new(), Vec::new());
        for (slot, &r) in active.iter().enumerate() {
            let row = &logits[slot * vocab..(slot + 1) * vocab];
            let tok = sample(row, opts.sampling, &mut rngs[r]);
            let g = &mut outs[r];
            g.tokens.push(tok);
            g.stopped = p.stop_ids.contains(&tok);
            if g.stopped || g.tokens.len() >= max_new_tokens {
                finished();
            } else {
                keep.push(slot);
                next.push(tok);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache.retain_rows(&keep);
            active = keep.iter().map(|&s| active[s]).collect();
        }
        batch = Batch {
            n_rows: next.len(),
            seq_len: 1,
            roles: vec![Role::Response; next.len()],
            ids: next,
        };
    }
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer-key order is the pair comparator's, ties and all.
    #[test]
    fn probability_order_equals_the_pair_comparison() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut probs: Vec<f64> = (0..5000).map(|_| rng.random::<f64>().powi(8)).collect();
        for i in (0..5000).step_by(7) {
            probs[i] = probs[i / 2]; // ties
        }
        probs[11] = 0.0;
        probs[12] = f64::INFINITY;
        probs[13] = -0.0;
        let mut pairs: Vec<(u32, f64)> = probs
            .iter()
            .enumerate()
            .map(|(i, &p)| (i as u32, p))
            .collect();
        pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<u32> = pairs.into_iter().map(|p| p.0).collect();
        assert_eq!(by_probability(&probs), want);
    }

    #[test]
    fn greedy_takes_first_max() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(sample(&[0.0, 3.0, 3.0, 1.0], Sampling::Greedy, &mut rng), 1);
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let s = Sampling::Temperature {
            temperature: 1.0,
            top_p: 1e-6,
        };
        for _ in 0..20 {
            assert_eq!(sample(&[0.0, 2.0, 1.9], s, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let s = Sampling::Temperature {
            temperature: 1.0,
            top_p: 1.0,
        };
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let n = 4000;
        let ones = (0..n).filter(|_| sample(&logits, s, &mut rng) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
    }
}
