//! Where the runtime reads and writes the residual stream: the row
//! convention, token roles, steering and capture requests.
//!
//! # Row convention (defined once, here)
//! Row 0 is the embedding output; row `l >= 1` is the output of decoder block
//! `l - 1` (0-based), before the final norm. A model with `n_layers` blocks has
//! rows `0..=n_layers`, and a persona-vector file has shape
//! `[n_layers + 1, d_model]`. HF's `hidden_states[n_layers]` is *after* the
//! final norm; ours is not (see [`crate::Model::final_norm`]).
//!
//! Steering at row `l` changes what block `l` reads; a capture at row `l`
//! sees the stream after the steering at that row.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{ModelError, Result};

/// What a token is, for masks, steering and averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Padding: never attended to, steered, averaged or scored.
    Pad,
    /// Part of the (chat-templated) prompt.
    Prompt,
    /// Part of the assistant's response (teacher-forced or generated).
    Response,
}

/// Which padding side a batch uses: left for generation (all rows end at the
/// same column), right for training and teacher-forced passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadSide {
    Left,
    Right,
}

/// One sequence: a prompt and (possibly empty) response, as token ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sequence {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
}

/// A padded batch of token ids with the role of every position.
///
/// # Shapes
/// `ids` and `roles` are row-major `[n_rows, seq_len]`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub ids: Vec<u32>,
    pub roles: Vec<Role>,
    pub n_rows: usize,
    pub seq_len: usize,
}

impl Batch {
    /// Pads `rows` to a common length with `pad_id` on `side`.
    pub fn new(rows: &[Sequence], side: PadSide, pad_id: u32) -> Result<Self> {
        let seq_len = rows
            .iter()
            .map(|r| r.prompt.len() + r.response.len())
            .max()
            .unwrap_or(0);
        if rows.is_empty() || seq_len == 0 {
            return Err(ModelError::Input("empty batch or empty sequence".into()));
        }
        if let Some(i) = rows
            .iter()
            .position(|r| r.prompt.is_empty() && r.response.is_empty())
        {
            return Err(ModelError::Input(format!(
                "row {i} of the batch has no tokens"
            )));
        }
        let mut ids = Vec::with_capacity(rows.len() * seq_len);
        let mut roles = Vec::with_capacity(rows.len() * seq_len);
        for r in rows {
            let pad = seq_len - r.prompt.len() - r.response.len();
            let push_pad = |ids: &mut Vec<u32>, roles: &mut Vec<Role>| {
                ids.extend(std::iter::repeat_n(pad_id, pad));
                roles.extend(std::iter::repeat_n(Role::Pad, pad));
            };
            if side == PadSide::Left {
                push_pad(&mut ids, &mut roles);
            }
            ids.extend(&r.prompt);
            roles.extend(std::iter::repeat_n(Role::Prompt, r.prompt.len()));
            ids.extend(&r.response);
            roles.extend(std::iter::repeat_n(Role::Response, r.response.len()));
            if side == PadSide::Right {
                push_pad(&mut ids, &mut roles);
            }
        }
        Ok(Self {
            ids,
            roles,
            n_rows: rows.len(),
            seq_len,
        })
    }

    /// Roles of row `b`.
    pub fn row_roles(&self, b: usize) -> &[Role] {
        &self.roles[b * self.seq_len..(b + 1) * self.seq_len]
    }

    /// Rows `rows` of this batch (same `seq_len`, same padding).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Batch {
        let s_n = self.seq_len;
        Batch {
            ids: self.ids[rows.start * s_n..rows.end * s_n].to_vec(),
            roles: self.roles[rows.start * s_n..rows.end * s_n].to_vec(),
            n_rows: rows.len(),
            seq_len: s_n,
        }
    }

    /// Consecutive row ranges to process concurrently, one per rayon
    /// thread, with rows shared out evenly. One range when `device` is not
    /// the CPU (a GPU runs the whole batch in one go), when the batch is too
    /// small to split (groups under [`MIN_GROUP_TOKENS`] tokens), or when
    /// `each_scores` and some group would hold no response token to score.
    pub fn thread_groups(&self, device: &Device, each_scores: bool) -> Vec<std::ops::Range<usize>> {
        if !crate::device::is_cpu(device) {
            return std::iter::once(0..self.n_rows).collect();
        }
        let n = rayon::current_num_threads()
            .min(self.n_rows)
            .min(self.n_rows * self.seq_len / MIN_GROUP_TOKENS)
            .max(1);
        let groups: Vec<_> = (0..n)
            .map(|g| g * self.n_rows / n..(g + 1) * self.n_rows / n)
            .collect();
        let scores = |r: &std::ops::Range<usize>| {
            r.clone().any(|b| {
                self.row_roles(b)
                    .iter()
                    .skip(1)
                    .any(|x| *x == Role::Response)
            })
        };
        if groups.len() > 1 && each_scores && !groups.iter().all(scores) {
            return std::iter::once(0..self.n_rows).collect();
        }
        groups
    }

    /// Index in row `b` of its last prompt token, if the row has one.
    pub fn last_prompt_index(&self, b: usize) -> Option<usize> {
        self.row_roles(b).iter().rposition(|r| *r == Role::Prompt)
    }

    /// Index in row `b` of its last non-padding token.
    pub fn last_token_index(&self, b: usize) -> Option<usize> {
        self.row_roles(b).iter().rposition(|r| *r != Role::Pad)
    }

    /// The positions that predict a response token, row-major: `(b *
    /// seq_len + s, token at s + 1)` for every response token at `s + 1`. A
    /// response's first token is predicted by the token before it (the last
    /// prompt token). Training losses and response likelihoods score exactly
    /// these positions, and [`crate::Logits::Scored`] computes logits only
    /// there.
    pub fn scored_positions(&self) -> Vec<(usize, u32)> {
        let s_n = self.seq_len;
        let mut out = Vec::new();
        for b in 0..self.n_rows {
            for s in 0..s_n.saturating_sub(1) {
                let next = b * s_n + s + 1;
                if self.roles[next] == Role::Response {
                    out.push((b * s_n + s, self.ids[next]));
                }
            }
        }
        out
    }
}

/// Smallest row group (in tokens, padding included) that
/// [`Batch::thread_groups`] gives its own thread: below this, a group's
/// share of the weight reads (every group reads all the weights) outweighs
/// the parallel gain.
pub const MIN_GROUP_TOKENS: usize = 32;

/// The token positions a steering applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// Every non-padding position (preventative steering during training).
    All,
    /// Prompt tokens only.
    Prompt,
    /// Response tokens only (teacher-forced or generated).
    Response,
    /// Every position whose next-token prediction belongs to the response:
    /// the last prompt token, then every response token. This is the paper's
    /// post-hoc steering at inference ("the last position of every forward
    /// call" during generation with a KV cache).
    Generating,
}

impl Positions {
    pub const ALL: [Positions; 4] = [Self::Generating, Self::All, Self::Prompt, Self::Response];

    /// The word in flags and settings: `generating`, `all`, `prompt`, `response`.
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Prompt => "prompt",
            Self::Response => "response",
            Self::Generating => "generating",
        }
    }
}

impl std::fmt::Display for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Positions {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown positions `{s}`; use generating, all, prompt or response")
            })
    }
}

/// How a vector changes the residual stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SteerOp {
    /// `h += coef * v` (raw, unnormalised vector).
    Add { coef: f32 },
    /// `h -= (h . v̂) v̂`: remove the component along the unit vector.
    Ablate,
    /// Clamp the projection on the unit vector to `[min, max]`:
    /// `h += (clamp(h . v̂, min, max) - h . v̂) v̂` (activation capping;
    /// positions already inside the range are left exactly as they are).
    Cap { min: f32, max: f32 },
}

/// One steering intervention at one row.
#[derive(Debug, Clone)]
pub struct Steering {
    pub row: usize,
    pub op: SteerOp,
    pub positions: Positions,
    /// The raw vector `[d_model]` for `Add`, the unit vector for `Ablate`
    /// and `Cap`.
    pub(crate) vector: Tensor<1>,
    /// The batch rows it applies to (sorted, distinct); `None` = every row.
    /// Lets one forward steer each request of a served batch its own way.
    pub(crate) batch_rows: Option<Vec<usize>>,
}

impl Steering {
    /// `h_row += coef * vector` at `positions`. A non-finite coefficient or
    /// vector value is an error (it would turn every steered activation
    /// into NaN or inf).
    pub fn add(
        row: usize,
        vector: &[f32],
        coef: f32,
        positions: Positions,
        device: &Device,
    ) -> Result<Self> {
        check_finite_coef(coef)?;
        if vector.iter().any(|x| !x.is_finite()) {
            return Err(ModelError::Input(format!(
                "the steering vector at row {row} holds a non-finite value"
            )));
        }
        // `coef * v` must be finite too: an infinite product would be
        // masked as `0 * inf = NaN` on rows it does not apply to.
        if vector.iter().any(|x| !(x * coef).is_finite()) {
            return Err(ModelError::Input(format!(
                "steering coefficient {coef} times the vector at row {row} overflows f32; use a smaller coefficient"
            )));
        }
        Ok(Self {
            row,
            op: SteerOp::Add { coef },
            positions,
            vector: Tensor::from_data(TensorData::new(vector.to_vec(), [vector.len()]), device),
            batch_rows: None,
        })
    }

    /// `h_row -= (h_row . v̂) v̂` at `positions`. A zero vector is an error.
    pub fn ablate(
        row: usize,
        vector: &[f32],
        positions: Positions,
        device: &Device,
    ) -> Result<Self> {
        Self::along_unit(row, vector, SteerOp::Ablate, positions, device)
    }

    /// Clamps the projection of `h_row` on `v̂` to `[min, max]` at
    /// `positions` (activation capping, arXiv 2601.10387). A zero vector,
    /// a non-finite bound or `min > max` is an error.
    pub fn cap(
        row: usize,
        vector: &[f32],
        (min, max): (f32, f32),
        positions: Positions,
        device: &Device,
    ) -> Result<Self> {
        if !(min.is_finite() && max.is_finite() && min <= max) {
            return Err(ModelError::Input(format!(
                "a cap needs finite bounds with min <= max, got [{min}, {max}]"
            )));
        }
        Self::along_unit(row, vector, SteerOp::Cap { min, max }, positions, device)
    }

    /// A steering that works on the unit vector of `vector`.
    fn along_unit(
        row: usize,
        vector: &[f32],
        op: SteerOp,
        positions: Positions,
        device: &Device,
    ) -> Result<Self> {
        let norm = vector
            .iter()
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return Err(ModelError::Input(
                "cannot ablate or cap along a zero or non-finite vector".into(),
            ));
        }
        let unit: Vec<f32> = vector.iter().map(|x| (*x as f64 / norm) as f32).collect();
        Ok(Self {
            row,
            op,
            positions,
            vector: Tensor::from_data(TensorData::new(unit, [vector.len()]), device),
            batch_rows: None,
        })
    }

    /// The same steering applied to these batch rows only (the others
    /// pass unchanged, bit for bit).
    pub fn on_batch_rows(mut self, rows: impl IntoIterator<Item = usize>) -> Self {
        let mut rows: Vec<usize> = rows.into_iter().collect();
        rows.sort_unstable();
        rows.dedup();
        self.batch_rows = Some(rows);
        self
    }

    /// Whether it applies to batch row `b`.
    pub(crate) fn applies_to_row(&self, b: usize) -> bool {
        self.batch_rows
            .as_ref()
            .is_none_or(|rows| rows.binary_search(&b).is_ok())
    }

    /// This steering for the batch rows `range` run as their own pass
    /// (rows renumbered from 0); `None` when it applies to none of them.
    pub(crate) fn for_row_range(&self, range: std::ops::Range<usize>) -> Option<Self> {
        let Some(rows) = &self.batch_rows else {
            return Some(self.clone());
        };
        let inside: Vec<usize> = rows
            .iter()
            .filter(|b| range.contains(b))
            .map(|b| b - range.start)
            .collect();
        (!inside.is_empty()).then(|| Self {
            batch_rows: Some(inside),
            ..self.clone()
        })
    }

    /// Refuses a non-finite coefficient (for steerings built field by field).
    pub(crate) fn check_coef(&self) -> Result<()> {
        match self.op {
            SteerOp::Add { coef } => check_finite_coef(coef),
            SteerOp::Ablate | SteerOp::Cap { .. } => Ok(()),
        }
    }

    pub fn width(&self) -> usize {
        let [d] = self.vector.dims();
        d
    }
}

fn check_finite_coef(coef: f32) -> Result<()> {
    if coef.is_finite() {
        Ok(())
    } else {
        Err(ModelError::Input(format!(
            "steering coefficient {coef} is not a finite number"
        )))
    }
}

/// How captured activations at a row are reduced inside the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reduction {
    /// Mean over response tokens: `[n_rows, d_model]` (zero row when a row has none).
    ResponseMean,
    /// Mean over prompt tokens: `[n_rows, d_model]`.
    PromptMean,
    /// The last prompt token: `[n_rows, d_model]`.
    LastPrompt,
    /// Every position, padding included: `[n_rows, seq_len, d_model]`. For
    /// tests and debugging; costly at scale.
    Full,
}

/// Which rows to capture and how to reduce them.
#[derive(Debug, Clone, Default)]
pub struct CaptureRequest {
    pub rows: Vec<usize>,
    pub reductions: Vec<Reduction>,
}

impl CaptureRequest {
    pub const fn none() -> Self {
        Self {
            rows: Vec::new(),
            reductions: Vec::new(),
        }
    }
    pub fn new(rows: impl IntoIterator<Item = usize>, reductions: &[Reduction]) -> Self {
        Self {
            rows: rows.into_iter().collect(),
            reductions: reductions.to_vec(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() || self.reductions.is_empty()
    }
}

/// Per-position 0/1 weights for a set of positions, row-major `[n_rows * seq_len]`.
pub(crate) fn position_mask(roles: &[Role], seq_len: usize, positions: Positions) -> Vec<f32> {
    let mut m = vec![0f32; roles.len()];
    for (b, row) in roles.chunks(seq_len).enumerate() {
        let last_prompt = row.iter().rposition(|r| *r == Role::Prompt);
        for (s, role) in row.iter().enumerate() {
            let on = match positions {
                Positions::All => *role != Role::Pad,
                Positions::Prompt => *role == Role::Prompt,
                Positions::Response => *role == Role::Response,
                Positions::Generating => *role == Role::Response || Some(s) == last_prompt,
            };
            m[b * seq_len + s] = if on { 1.0 } else { 0.0 };
        }
    }
    m
}

/// Averaging weights of one reduction, `[n_rows, seq_len]` row-major, and
/// the number of tokens each row averages over.
pub(crate) fn reduction_weights(
    roles: &[Role],
    seq_len: usize,
    r: Reduction,
) -> (Vec<f32>, Vec<usize>) {
    let mut w = vec![0f32; roles.len()];
    let mut counts = Vec::new();
    for (b, row) in roles.chunks(seq_len).enumerate() {
        let picked: Vec<usize> = match r {
            Reduction::ResponseMean => (0..seq_len).filter(|&s| row[s] == Role::Response).collect(),
            Reduction::PromptMean => (0..seq_len).filter(|&s| row[s] == Role::Prompt).collect(),
            Reduction::LastPrompt => row
                .iter()
                .rposition(|x| *x == Role::Prompt)
                .into_iter()
                .collect(),
            Reduction::Full => Vec::new(),
        };
        // An empty set gives a zero row and a count of 0: callers must check
        // the count (a mean over zero tokens is undefined, not zero).
        for &s in &picked {
            w[b * seq_len + s] = 1.0 / picked.len() as f32;
        }
        counts.push(picked.len());
    }
    (w, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch::new(
            &[
                Sequence {
                    prompt: vec![1, 2, 3],
                    response: vec![4, 5],
                },
                Sequence {
                    prompt: vec![6],
                    response: vec![],
                },
            ],
            PadSide::Right,
            0,
        )
        .unwrap()
    }

    #[test]
    fn right_padding_roles() {
        let b = batch();
        assert_eq!(b.seq_len, 5);
        assert_eq!(b.ids, vec![1, 2, 3, 4, 5, 6, 0, 0, 0, 0]);
        assert_eq!(
            b.row_roles(1),
            &[Role::Prompt, Role::Pad, Role::Pad, Role::Pad, Role::Pad]
        );
        assert_eq!(b.last_prompt_index(0), Some(2));
    }

    #[test]
    fn left_padding_puts_pads_first() {
        let b = Batch::new(
            &[
                Sequence {
                    prompt: vec![7],
                    response: vec![],
                },
                Sequence {
                    prompt: vec![1, 2],
                    response: vec![],
                },
            ],
            PadSide::Left,
            9,
        )
        .unwrap();
        assert_eq!(b.ids, vec![9, 7, 1, 2]);
        assert_eq!(b.roles[0], Role::Pad);
    }

    #[test]
    fn generating_positions_are_last_prompt_and_response() {
        let b = batch();
        let m = position_mask(&b.roles, b.seq_len, Positions::Generating);
        assert_eq!(m, vec![0., 0., 1., 1., 1., 1., 0., 0., 0., 0.]);
        let all = position_mask(&b.roles, b.seq_len, Positions::All);
        assert_eq!(all, vec![1., 1., 1., 1., 1., 1., 0., 0., 0., 0.]);
    }

    #[test]
    fn response_mean_of_empty_response_has_count_zero() {
        let b = batch();
        let (w, counts) = reduction_weights(&b.roles, b.seq_len, Reduction::ResponseMean);
        assert_eq!(counts, vec![2, 0]);
        assert_eq!(&w[..5], &[0., 0., 0., 0.5, 0.5]);
        assert!(w[5..].iter().all(|x| *x == 0.0));
    }
}
