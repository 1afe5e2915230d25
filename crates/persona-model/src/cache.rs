//! The key/value cache used during generation.

use burn::tensor::{Int, Tensor, TensorData};

/// Keys and values of every past position, per layer, plus which past
/// positions are real tokens (left padding is not).
///
/// The key/value tensors keep spare room along the position axis: a
/// decoding step writes its position in place (see [`append_positions`])
/// instead of copying the whole cache into a new, longer tensor.
///
/// # Shapes
/// `keys[l]`, `values[l]`: `[n_rows, n_kv_heads, capacity, head_dim]`, the
/// first `past_len` positions in use. `valid`: `[n_rows][past_len]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) keys: Vec<Tensor<4>>,
    pub(crate) values: Vec<Tensor<4>>,
    pub(crate) valid: Vec<Vec<bool>>,
}

/// Positions a full cache tensor grows by, rounded up: the cache is
/// copied into a longer tensor once per this many decoding steps (and
/// holds at most this many unused positions).
const GROWTH: usize = 64;

/// Writes this chunk's keys (or values) after the `past` positions in use
/// in `buffer`, growing it when it has no room, and returns the buffer and
/// a view of its first `past + s` positions (what attention reads).
/// Without a buffer (an empty cache) the chunk itself becomes the buffer.
///
/// On the CPU the write is in place when the caller holds the only handle
/// to the buffer's storage (burn-flex's `slice_assign` copies otherwise).
///
/// # Shapes
/// `buffer`: `[b, h, capacity, d]`; `new`: `[b, h, s, d]` ->
/// (`[b, h, capacity', d]`, `[b, h, past + s, d]`)
pub(crate) fn append_positions(
    buffer: Option<Tensor<4>>,
    past: usize,
    new: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let Some(buffer) = buffer else {
        return (new.clone(), new);
    };
    let [b, h, s, d] = new.dims();
    let used = past + s;
    let buffer = if used > buffer.dims()[2] {
        let capacity = used.div_ceil(GROWTH) * GROWTH;
        let spare = Tensor::zeros([b, h, capacity - past, d], &new.device());
        Tensor::cat(vec![buffer.narrow(2, 0, past), spare], 2)
    } else {
        buffer
    };
    let buffer = buffer.slice_assign([0..b, 0..h, past..used, 0..d], new);
    let view = buffer.clone().narrow(2, 0, used);
    (buffer, view)
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

    /// Moves each layer's (keys, values) out, leaving no layers: a forward
    /// writes the new positions into them in place and puts them back.
    pub(crate) fn take_layers(&mut self) -> impl Iterator<Item = (Tensor<4>, Tensor<4>)> + use<> {
        std::mem::take(&mut self.keys)
            .into_iter()
            .zip(std::mem::take(&mut self.values))
    }

    /// The caches of consecutive row groups, joined into one (rows in
    /// order). All parts must hold the same number of positions (and the
    /// same capacity: fresh caches of one padded batch do).
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

#[cfg(test)]
mod tests {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Distribution, Tensor};

    use super::{GROWTH, append_positions};
    use crate::testing::test_device;

    fn host(t: Tensor<4>) -> Vec<f32> {
        crate::host_vec(t).unwrap()
    }

    /// Appending chunk by chunk gives exactly the concatenation of the
    /// chunks; the tensor grows in steps of `GROWTH` positions.
    #[test]
    fn appended_positions_equal_the_concatenation() {
        let dev = test_device();
        let chunks: Vec<Tensor<4>> = [5, 1, 1, 60, 1, 70]
            .iter()
            .map(|&s| Tensor::random([2, 3, s, 4], Distribution::Default, &dev))
            .collect();
        let mut buffer = None;
        let mut past = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            let s = chunk.dims()[2];
            let (grown, view) = append_positions(buffer.take(), past, chunk.clone());
            past += s;
            assert_eq!(view.dims(), [2, 3, past, 4]);
            let capacity = grown.dims()[2];
            assert!(capacity >= past, "capacity {capacity} < {past}");
            if i > 0 {
                assert!(capacity % GROWTH == 0 && capacity - past < GROWTH);
            }
            let want = Tensor::cat(chunks[..=i].to_vec(), 2);
            assert_eq!(host(view), host(want), "after chunk {i}");
            buffer = Some(grown);
        }
    }

    /// Attention over a view of the first positions of a longer tensor
    /// (read in place by the vendored burn-flex) gives the same bits as
    /// over a contiguous copy, in both of its kernels (the flash one runs
    /// from 256 Ki scores per head).
    #[test]
    fn attention_over_a_cache_view_equals_attention_over_a_copy() {
        let dev = test_device();
        for (b, h, s_q, s_kv, capacity) in [(2, 3, 4, 13, 20), (1, 2, 520, 520, 530)] {
            let q = Tensor::<4>::random([b, h, s_q, 8], Distribution::Default, &dev);
            let buffer = Tensor::<4>::random([b, h, capacity, 8], Distribution::Default, &dev);
            let keys = buffer.clone().narrow(2, 0, s_kv);
            let values = buffer.narrow(2, 2, s_kv);
            let copy = |t: &Tensor<4>| Tensor::<4>::from_data(t.clone().into_data(), &dev);
            let (keys_copy, values_copy) = (copy(&keys), copy(&values));
            let run = |k: Tensor<4>, v: Tensor<4>| {
                host(attention(
                    q.clone(),
                    k,
                    v,
                    None,
                    None,
                    AttentionModuleOptions {
                        scale: None,
                        softcap: None,
                        is_causal: true,
                    },
                ))
            };
            assert_eq!(
                run(keys, values),
                run(keys_copy, values_copy),
                "{s_q} x {s_kv}"
            );
        }
    }
}
