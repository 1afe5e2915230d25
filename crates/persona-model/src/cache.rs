//! The key/value cache used during generation.

use burn::tensor::{Int, Tensor, TensorData};

/// Keys and values of every past position, per layer, plus which past
/// positions are real tokens (left padding is not).
///
/// The key/value tensors keep spare room along the position axis: a
/// decoding step writes its position in place (see `append_positions`)
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
    /// Positions to make room for when the tensors are first made (see
    /// [`KvCache::with_capacity`]).
    pub(crate) reserve: usize,
}

/// Positions a full cache tensor grows by, rounded up: the cache is
/// copied into a longer tensor once per this many decoding steps (and
/// holds at most this many unused positions).
const GROWTH: usize = 64;

/// Writes this chunk's keys (or values) after the `past` positions in use
/// in `buffer`, growing it when it has no room, and returns the buffer and
/// a view of its first `past + s` positions (what attention reads).
/// Without a buffer (an empty cache) a new one gets room for `reserve`
/// positions, or is the chunk itself when that is no more than the chunk.
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
    reserve: usize,
    new: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let [b, h, s, d] = new.dims();
    let used = past + s;
    let buffer = match buffer {
        Some(buffer) => buffer,
        None if reserve > used => Tensor::zeros([b, h, reserve, d], &new.device()),
        None => return (new.clone(), new),
    };
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

    /// An empty cache whose tensors get room for `positions` positions
    /// (prompt and generated tokens, padding included) when first made, so
    /// that decoding up to that length never copies the cache into a
    /// longer tensor. Without it they grow by 64 positions at a time.
    pub fn with_capacity(positions: usize) -> Self {
        Self {
            reserve: positions,
            ..Self::default()
        }
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
        let reserve = parts.first().map_or(0, |p| p.reserve);
        let join = |pick: fn(&KvCache) -> &Vec<Tensor<4>>| -> Vec<Tensor<4>> {
            (0..n_layers)
                .map(|l| Tensor::cat(parts.iter().map(|p| pick(p)[l].clone()).collect(), 0))
                .collect()
        };
        KvCache {
            keys: join(|p| &p.keys),
            values: join(|p| &p.values),
            valid: parts.iter().flat_map(|p| p.valid.iter().cloned()).collect(),
            reserve,
        }
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.valid.len()
    }

    /// Adds the rows of `other` after this cache's rows, so sequences of
    /// different lengths decode together (a served batch that requests
    /// join between steps). The shorter side is left-padded with invalid
    /// positions (masked, so each row's values do not change), columns no
    /// row uses any more are dropped, and the joined tensors keep room for
    /// `spare` more positions. Copies both caches once.
    ///
    /// # Shapes
    /// `[b1, h, p1, d]` + `[b2, h, p2, d]` -> `[b1 + b2, h, max(p1', p2') + spare, d]`
    /// (`p'`: positions after the unused leading columns are dropped)
    pub fn append_rows(&mut self, other: KvCache, spare: usize) {
        if self.valid.is_empty() {
            *self = other;
            return;
        }
        if other.valid.is_empty() {
            return;
        }
        let skip = [leading_unused(&self.valid), leading_unused(&other.valid)];
        let lens = [self.past_len() - skip[0], other.past_len() - skip[1]];
        let len = lens[0].max(lens[1]);
        let capacity = len + spare;
        let parts = [std::mem::take(self), other];
        let align = |t: &Tensor<4>, side: usize| -> Tensor<4> {
            let [b, h, _, d] = t.dims();
            let device = t.device();
            let mut pieces = Vec::new();
            if len > lens[side] {
                pieces.push(Tensor::zeros([b, h, len - lens[side], d], &device));
            }
            if lens[side] > 0 {
                pieces.push(t.clone().narrow(2, skip[side], lens[side]));
            }
            if spare > 0 {
                pieces.push(Tensor::zeros([b, h, spare, d], &device));
            }
            Tensor::cat(pieces, 2)
        };
        let join = |pick: fn(&KvCache) -> &Vec<Tensor<4>>| -> Vec<Tensor<4>> {
            (0..pick(&parts[0]).len())
                .map(|l| {
                    Tensor::cat(
                        vec![align(&pick(&parts[0])[l], 0), align(&pick(&parts[1])[l], 1)],
                        0,
                    )
                })
                .collect()
        };
        let valid = parts
            .iter()
            .enumerate()
            .flat_map(|(side, p)| {
                p.valid.iter().map(move |row| {
                    let mut v = vec![false; len - lens[side]];
                    v.extend_from_slice(&row[skip[side]..]);
                    v
                })
            })
            .collect();
        *self = KvCache {
            keys: join(|p| &p.keys),
            values: join(|p| &p.values),
            valid,
            reserve: capacity,
        };
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

/// Leading positions that no row uses (padding of every row).
fn leading_unused(valid: &[Vec<bool>]) -> usize {
    let past = valid.first().map_or(0, Vec::len);
    (0..past)
        .find(|&j| valid.iter().any(|row| row[j]))
        .unwrap_or(past)
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Bool, Distribution, Tensor};

    use super::{GROWTH, append_positions};
    use crate::testing::test_device;

    fn host(t: Tensor<4>) -> Vec<f32> {
        crate::host_vec(t).unwrap()
    }

    /// Appends random chunks of these lengths one after the other, with
    /// `reserve` positions reserved, and checks that each view is exactly
    /// the concatenation of the chunks so far. Returns each step's
    /// (positions in use, capacity).
    fn append_in_turn(lengths: &[usize], reserve: usize) -> Vec<(usize, usize)> {
        let dev = test_device();
        let chunks: Vec<Tensor<4>> = lengths
            .iter()
            .map(|&s| Tensor::random([2, 3, s, 4], Distribution::Default, &dev))
            .collect();
        let mut buffer = None;
        let mut past = 0;
        let mut steps = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let (grown, view) = append_positions(buffer.take(), past, reserve, chunk.clone());
            past += chunk.dims()[2];
            assert_eq!(view.dims(), [2, 3, past, 4]);
            let want = Tensor::cat(chunks[..=i].to_vec(), 2);
            assert_eq!(host(view), host(want), "after chunk {i}");
            steps.push((past, grown.dims()[2]));
            buffer = Some(grown);
        }
        steps
    }

    /// Appending chunk by chunk gives exactly the concatenation of the
    /// chunks; the tensor grows in steps of `GROWTH` positions.
    #[test]
    fn appended_positions_equal_the_concatenation() {
        let steps = append_in_turn(&[5, 1, 1, 60, 1, 70], 0);
        for (i, &(past, capacity)) in steps.iter().enumerate() {
            assert!(capacity >= past, "capacity {capacity} < {past}");
            if i > 0 {
                assert!(capacity % GROWTH == 0 && capacity - past < GROWTH);
            }
        }
    }

    /// With room reserved, the first chunk is copied into a tensor of that
    /// many positions and later chunks are written into it: it never grows
    /// while they fit, and grows as usual after.
    #[test]
    fn reserved_positions_are_filled_without_growing() {
        let steps = append_in_turn(&[7, 1, 1, 3, 2], 13);
        for (i, &(past, capacity)) in steps.iter().enumerate() {
            let want_capacity = if past <= 13 { 13 } else { GROWTH };
            assert_eq!(capacity, want_capacity, "after chunk {i}");
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

    /// Grouped-query attention with a padding mask and the causal offset,
    /// against a direct f64 computation, for 1-5 query rows: up to 4 rows
    /// per head the vendored burn-flex computes both products itself
    /// (decoding), 5 rows go through gemm; head widths that are and are not
    /// a multiple of 16 lanes, up to the widest it handles (128) and one
    /// past it (gemm again).
    #[test]
    fn few_row_attention_matches_a_direct_computation() {
        let dev = test_device();
        let (b, heads, kv_heads) = (2, 6, 2);
        for d in [64, 40, 8, 128, 136] {
            for s_kv in [1, 13, 37] {
                for s_q in 1..=5.min(s_kv) {
                    let q = Tensor::<4>::random([b, heads, s_q, d], Distribution::Default, &dev);
                    let k =
                        Tensor::<4>::random([b, kv_heads, s_kv, d], Distribution::Default, &dev);
                    let v =
                        Tensor::<4>::random([b, kv_heads, s_kv, d], Distribution::Default, &dev);
                    // Batch row 1 is left-padded: its first 2 keys are masked.
                    let masked = |bi: usize, j: usize| bi == 1 && j < 2 && s_kv > 2;
                    let mask: Vec<bool> = (0..b * s_q * s_kv)
                        .map(|i| masked(i / (s_q * s_kv), i % s_kv))
                        .collect();
                    let mask = Tensor::<1, Bool>::from_data(mask.as_slice(), &dev)
                        .reshape([b, 1, s_q, s_kv])
                        .expand([b, heads, s_q, s_kv]);
                    let got = host(attention(
                        q.clone(),
                        k.clone(),
                        v.clone(),
                        Some(mask),
                        None,
                        AttentionModuleOptions {
                            scale: None,
                            softcap: None,
                            is_causal: true,
                        },
                    ));
                    let (q, k, v) = (host(q), host(k), host(v));
                    for (bi, h, i) in (0..b).flat_map(|bi| {
                        (0..heads).flat_map(move |h| (0..s_q).map(move |i| (bi, h, i)))
                    }) {
                        let kh = h / (heads / kv_heads);
                        let q_row = &q[((bi * heads + h) * s_q + i) * d..][..d];
                        let row = |t: &[f32], j: usize| -> Vec<f64> {
                            t[((bi * kv_heads + kh) * s_kv + j) * d..][..d]
                                .iter()
                                .map(|&x| x as f64)
                                .collect()
                        };
                        let visible: Vec<usize> = (0..s_kv)
                            .filter(|&j| !masked(bi, j) && j + s_q <= i + s_kv)
                            .collect();
                        let scores: Vec<f64> = visible
                            .iter()
                            .map(|&j| {
                                let dot: f64 = q_row
                                    .iter()
                                    .zip(row(&k, j))
                                    .map(|(&a, b)| a as f64 * b)
                                    .sum();
                                dot / (d as f64).sqrt()
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                        let total: f64 = weights.iter().sum();
                        let out = &got[((bi * heads + h) * s_q + i) * d..][..d];
                        for (c, &o) in out.iter().enumerate() {
                            let want: f64 = visible
                                .iter()
                                .zip(&weights)
                                .map(|(&j, w)| w / total * row(&v, j)[c])
                                .sum();
                            assert!(
                                (o as f64 - want).abs() < 1e-5,
                                "d {d}, {s_q} x {s_kv}, batch {bi} head {h} row {i}: {o} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
