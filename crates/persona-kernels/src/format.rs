//! The panel formats of a packed weight and how a weight is checked and
//! written into them: f32, or ggml's Q4_1 / Q8_0 blocks when those hold
//! every value bit for bit.

use half::f16;

/// Output columns per panel: one AVX-512 register of f32.
pub(super) const PANEL: usize = 16;

/// Values of `k` per quantised block (ggml's block size).
pub(super) const BLOCK: usize = 32;

/// Lines per panel block in [`Format::Q4_1`]: the 16 columns' scales and
/// minima, then 32 x 16 nibbles.
pub(super) const Q4_1_LINES: usize = 1 + BLOCK * PANEL / 2 / LINE_BYTES;

/// Lines per panel block in [`Format::Q8_0`]: the 16 columns' scales, then
/// 32 x 16 bytes.
pub(super) const Q8_0_LINES: usize = 1 + BLOCK * PANEL / LINE_BYTES;

pub(super) const LINE_BYTES: usize = 64;

/// 64 bytes of a panel, cache-line aligned so that every kernel load stays
/// inside one line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [u8; LINE_BYTES]);

/// How a panel stores its `16 x k` weights. Panel `p` covers columns
/// `16 p .. 16 p + 16` (the last one zero-padded); all its lines are one
/// contiguous stream, `k` in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per `l`: `w[l, 16 p + j]` as f32 at bytes `4 j ..`.
    F32,
    /// Per block of 32 `l` ([`Q4_1_LINES`] lines): bytes `2 j ..` hold
    /// column `j`'s scale `d` and bytes `32 + 2 j ..` its minimum `m` (f16);
    /// byte `64 + 16 i + j` holds `q` for `l = 2 i` (low nibble) and
    /// `l = 2 i + 1` (high nibble). The weight is `q as f32 * d + m`.
    Q4_1,
    /// Per block of 32 `l` ([`Q8_0_LINES`] lines): bytes `2 j ..` hold
    /// column `j`'s scale `d` (f16); byte `64 + 16 l + j` holds `q` (i8).
    /// The weight is `q as f32 * d`. Also holds dequantised Q4_0 blocks
    /// (`(q - 8) * d`), at 1.125 bytes per weight instead of 0.5625.
    Q8_0,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
        }
    }

    /// Lines per panel of a weight with `k` rows (a multiple of 32 for the
    /// block formats).
    pub(super) fn panel_lines(self, k: usize) -> usize {
        match self {
            Self::F32 => k,
            Self::Q4_1 => k / BLOCK * Q4_1_LINES,
            Self::Q8_0 => k / BLOCK * Q8_0_LINES,
        }
    }
}

/// Writes panel `p` of `w` (`[k, n]`) in `format` into `panel` (zeroed,
/// `format.panel_lines(k)` lines); false when a value is not exactly
/// representable in `format`.
pub(super) fn pack_panel(
    w: &[f32],
    n: usize,
    p: usize,
    format: Format,
    panel: &mut [Line],
) -> bool {
    let cols = PANEL.min(n - p * PANEL);
    let at = |l: usize, j: usize| w[l * n + p * PANEL + j];
    match format {
        Format::F32 => {
            for (l, line) in panel.iter_mut().enumerate() {
                for j in 0..cols {
                    line.0[4 * j..][..4].copy_from_slice(&at(l, j).to_ne_bytes());
                }
            }
        }
        Format::Q4_1 => {
            for (b, block) in panel.chunks_exact_mut(Q4_1_LINES).enumerate() {
                let block = bytes_mut(block);
                for j in 0..cols {
                    let values = std::array::from_fn(|i| at(b * BLOCK + i, j));
                    let Some((d, m, q)) = q4_1(&values) else {
                        return false;
                    };
                    block[2 * j..][..2].copy_from_slice(&d.to_le_bytes());
                    block[32 + 2 * j..][..2].copy_from_slice(&m.to_le_bytes());
                    for i in 0..BLOCK / 2 {
                        block[LINE_BYTES + 16 * i + j] = q[2 * i] | (q[2 * i + 1] << 4);
                    }
                }
            }
        }
        Format::Q8_0 => {
            for (b, block) in panel.chunks_exact_mut(Q8_0_LINES).enumerate() {
                let block = bytes_mut(block);
                for j in 0..cols {
                    let values = std::array::from_fn(|i| at(b * BLOCK + i, j));
                    let Some((d, q)) = q8_0(&values) else {
                        return false;
                    };
                    block[2 * j..][..2].copy_from_slice(&d.to_le_bytes());
                    for (l, &q) in q.iter().enumerate() {
                        block[LINE_BYTES + 16 * l + j] = q as u8;
                    }
                }
            }
        }
    }
    true
}

/// A run of lines seen as its bytes.
fn bytes_mut(lines: &mut [Line]) -> &mut [u8] {
    // SAFETY: `Line` is `repr(C)` around `[u8; 64]`, so a slice of lines is
    // `64 * len` initialised bytes without padding.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * LINE_BYTES) }
}

/// Scale candidates around `approx`: its nearest f16 and the f16 either
/// side (the value a block was quantised with is not recoverable exactly,
/// but it is one of these).
fn scale_candidates(approx: f32) -> impl Iterator<Item = f16> + Clone {
    let d = f16::from_f32(approx);
    [
        d,
        f16::from_bits(d.to_bits().wrapping_add(1)),
        f16::from_bits(d.to_bits().wrapping_sub(1)),
    ]
    .into_iter()
    .filter(|d| d.is_finite() && !d.is_sign_negative())
}

/// `(d, m, q)` with `q[i] as f32 * d + m == values[i]` bit for bit (two
/// f32 roundings, as in ggml's Q4_1 dequantisation), `q[i] < 16`, if there
/// are such.
fn q4_1(values: &[f32; BLOCK]) -> Option<(f16, f16, [u8; BLOCK])> {
    if !values.iter().all(|v| v.is_finite()) {
        return None;
    }
    // `q * d >= 0`, so the minimum is `m` itself (ggml's quantiser gives
    // the block's minimum `q = 0`).
    let min = values.iter().copied().fold(f32::INFINITY, f32::min);
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let m = f16::from_f32(min);
    if m.to_f32().to_bits() != min.to_bits() {
        return None;
    }
    let mf = m.to_f32();
    scale_candidates((max - mf) / 15.0).find_map(|d| {
        let df = d.to_f32();
        let inverse = if df > 0.0 { 1.0 / df } else { 0.0 };
        let mut q = [0u8; BLOCK];
        // Every value checked without an early exit: a loop the compiler
        // vectorises (most blocks pass).
        let mut exact = true;
        for (&v, q) in values.iter().zip(&mut q) {
            // `as` truncates (and saturates), so `+ 0.5` rounds `q >= 0`;
            // any guess would do, the comparison decides.
            *q = ((v - mf) * inverse + 0.5).min(15.0) as u8;
            exact &= (f32::from(*q) * df + mf).to_bits() == v.to_bits();
        }
        exact.then_some((d, m, q))
    })
}

/// `(d, q)` with `q[i] as f32 * d == values[i]` bit for bit (ggml's Q8_0
/// dequantisation), if there are such. The block's largest magnitude is
/// `127 d` for ggml's Q8_0 quantiser and `8 |d|` for its Q4_0 one (whose
/// `(q - 8) * d` is the same grid with `q - 8` in `-8..8`), so both
/// scales are tried; Q4_0's `d` is negative when the block's extreme is
/// positive, and only a negative scale gives its `q = 8` the value `-0.0`.
fn q8_0(values: &[f32; BLOCK]) -> Option<(f16, [i8; BLOCK])> {
    if !values.iter().all(|v| v.is_finite()) {
        return None;
    }
    let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    let q4_0 = scale_candidates(amax / 8.0);
    let mut candidates = scale_candidates(amax / 127.0).chain(q4_0.clone().chain(q4_0.map(|d| -d)));
    candidates.find_map(|d| {
        let df = d.to_f32();
        let inverse = if df != 0.0 { 1.0 / df } else { 0.0 };
        let mut q = [0i8; BLOCK];
        // As in `q4_1`: no early exit.
        let mut exact = true;
        for (&v, q) in values.iter().zip(&mut q) {
            let ratio = v * inverse;
            *q = (ratio + 0.5f32.copysign(ratio)) as i8;
            exact &= (f32::from(*q) * df).to_bits() == v.to_bits();
        }
        exact.then_some((d, q))
    })
}
