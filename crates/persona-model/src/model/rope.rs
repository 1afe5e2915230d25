//! Rotary position embeddings.

use crate::config::ModelConfig;

/// Rotary embeddings in HF's rotate-half layout, with the sign of
/// rotate-half folded into `sin` (first half negated) so that
/// `rope(x) = x * cos + swap_halves(x) * sin` ([`elementwise::rope`]).
///
/// The angles are computed on the host in f64 for the positions a forward
/// uses, not stored as a `[max_positions, head_dim]` table: a table sized
/// by the config's context would take memory in proportion to a number the
/// file chooses, and a forward needs only `b * s` positions (values are the
/// same either way).
#[derive(Debug, Clone)]
pub(super) struct Rope {
    /// `theta^(-2i / head_dim)` for `i < head_dim / 2` (then Llama 3's
    /// scaling, when the config has it).
    inv_freq: Vec<f64>,
}

impl Rope {
    pub(super) fn new(cfg: &ModelConfig) -> Self {
        let hd = cfg.head_dim;
        let inv_freq = (0..hd / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / hd as f64))
            .map(|f| cfg.rope_scaling.map_or(f, |s| s.scale(f)))
            .collect();
        Self { inv_freq }
    }

    /// `(cos, sin)` for each position id, each `[positions.len(), head_dim]`
    /// row-major.
    pub(super) fn tables(&self, positions: &[i64]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let hd = 2 * half;
        let mut cos = vec![0f32; positions.len() * hd];
        let mut sin = vec![0f32; positions.len() * hd];
        for (j, &p) in positions.iter().enumerate() {
            for (i, f) in self.inv_freq.iter().enumerate() {
                let a = p as f64 * f;
                let at = j * hd;
                cos[at + i] = a.cos() as f32;
                cos[at + half + i] = a.cos() as f32;
                sin[at + i] = -a.sin() as f32;
                sin[at + half + i] = a.sin() as f32;
            }
        }
        (cos, sin)
    }
}
