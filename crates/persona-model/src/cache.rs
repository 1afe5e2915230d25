//! The key/value cache used during generation.

use burn::tensor::{Int, Tensor, TensorData};

/// Keys and values of every past position, per layer, plus which past
/// positions are real tokens (left padding is not).
///
/// # Shapes
/// `keys[l]`, `values[l]`: `[n_rows, n_kv_heads, past_len, head_dim]`.
/// `valid`: `[n_rows][past_len]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) keys: Vec<Tensor<4>>,
    pub(crate) values: Vec<Tensor<4>>,
    pub(crate) valid: Vec<Vec<bool>>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions (padding included).
    pub fn past_len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Real (non-padding) tokens cached for row `b`: the position id of its next token.
    pub(crate) fn n_real(&self, b: usize) -> usize {
        self.valid
            .get(b)
            .map_or(0, |v| v.iter().filter(|x| **x).count())
    }

    /// The caches of consecutive row groups, joined into one (rows in
    /// order). All parts must hold the same number of positions.
    pub(crate) fn concat_rows(parts: Vec<KvCache>) -> KvCache {
        let n_layers = parts.first().map_or(0, |p| p.keys.len());
        let join = |pick: fn(&KvCache) -> &Vec<Tensor<4>>| -> Vec<Tensor<4>> {
            (0..n_layers)
                .map(|l| Tensor::cat(parts.iter().map(|p| pick(p)[l].clone()).collect(), 0))
                .collect()
        };
        KvCache {
            keys: join(|p| &p.keys),
            values: join(|p| &p.values),
            valid: parts.iter().flat_map(|p| p.valid.iter().cloned()).collect(),
        }
    }

    /// Keeps only the rows in `keep` (in that order): finished rows leave the
    /// batch so later steps do no work for them.
    pub fn retain_rows(&mut self, keep: &[usize]) {
        let Some(first) = self.keys.first() else {
            self.valid = keep.iter().map(|&b| self.valid[b].clone()).collect();
            return;
        };
        let device = first.device();
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(
                keep.iter().map(|&b| b as i64).collect::<Vec<_>>(),
                [keep.len()],
            ),
            &device,
        );
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.clone().select(0, idx.clone());
        }
        self.valid = keep.iter().map(|&b| self.valid[b].clone()).collect();
    }
}
