//! Frozen weights repacked once for products with few rows (decoding).
//!
//! A decoding step multiplies a few rows (one per sequence) by every weight
//! matrix, so it is bound by reading the weights from memory. gemm, under
//! burn's CPU backend, copies ("packs") each `[k, n]` weight into panels on
//! every call before its kernel runs, so the weights are read, written and
//! read again every step; and its kernel covers at most 6 rows, so a batch
//! of 16 passes over each panel three times. [`PackedWeight`] keeps the
//! weight in panels of 16 columns from the start (built once, on the first
//! few-row product), and its own AVX-512 kernel multiplies up to 16 rows in
//! one pass over each panel, prefetching the stream ahead of the loads so
//! that reading memory overlaps the arithmetic.
//!
//! Each output value is one fused multiply-add chain over `k` in order
//! `0..k`, so it does not depend on the number of rows, on which rows are
//! in the batch or on the thread count. It can differ from burn's matmul in
//! the last bits (gemm splits `k` differently).
//!
//! Each weight is kept in the most compact of three panel formats that
//! reproduces every one of its f32 values bit for bit (checked value by
//! value while packing; see [`Format`]): ggml's Q4_1 and Q8_0 blocks, which
//! is what the values of a dequantised GGUF tensor are, or plain f32 for
//! anything else (HF checkpoints, merged adapters). The scales are found
//! from each block's extremes, which ggml's reference quantiser puts on
//! the grid's ends (Q4_1: `q = 0` and `15`; Q8_0: `|q| = 127`; Q4_0, kept
//! as Q8_0: `q - 8 = -8`); blocks from other quantisers may not be found
//! and then stay f32. The kernels rebuild each weight in registers with the
//! same f32 arithmetic as the dequantiser, so the format changes the bytes
//! read per decoding step (SmolLM2: 540 -> 98 MB), never a result.
//!
//! Measured on the 2-core machine, f32 panels of 30 layers' projections
//! (425 MB), best of 10: 16 rows 31-37 ms with gemm's kernel on pre-packed
//! panels (~50 ms with gemm repacking) -> 23-26 ms; 1 row ~17-19 ->
//! ~16-18 ms. With SmolLM2's block formats, one step's 121 products
//! (projections and LM head): 1 row 6.7-8.8 ms, 16 rows 31.5-33.3 ms (now
//! bound by the arithmetic of rebuilding the weights, not by memory).
//!
//! Only on x86-64 CPUs with AVX-512F (checked at run time); elsewhere
//! [`PackedWeight::new`] returns `None` and callers use burn's matmul.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Tensor, TensorData};
use half::f16;

/// Products with at most this many rows use the packed weights; larger
/// ones (prefill, training) are faster in gemm, which then reuses each
/// packed panel for many rows. Measured (gemm's kernel on pre-packed
/// panels): 32 rows 66 -> 46 ms, 64 rows even.
pub(crate) const PACKED_MAX_ROWS: usize = 32;

/// Output columns per panel: one AVX-512 register of f32.
const PANEL: usize = 16;

/// Values of `k` per quantised block (ggml's block size).
const BLOCK: usize = 32;

/// Lines per panel block in [`Format::Q4_1`]: the 16 columns' scales and
/// minima, then 32 x 16 nibbles.
const Q4_1_LINES: usize = 1 + BLOCK * PANEL / 2 / LINE_BYTES;

/// Lines per panel block in [`Format::Q8_0`]: the 16 columns' scales, then
/// 32 x 16 bytes.
const Q8_0_LINES: usize = 1 + BLOCK * PANEL / LINE_BYTES;

const LINE_BYTES: usize = 64;

/// Panel ranges per rayon thread in one product (see
/// [`PackedWeight::run_group`]), each at least [`MIN_RANGE_PANELS`] panels.
const RANGES_PER_THREAD: usize = 4;
const MIN_RANGE_PANELS: usize = 4;

/// Rows of `x` one kernel call multiplies (one accumulator register each);
/// more rows are done in groups of this many.
const MAX_GROUP_ROWS: usize = 16;

/// 64 bytes of a panel, cache-line aligned so that every kernel load stays
/// inside one line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; LINE_BYTES]);

/// How a panel stores its `16 x k` weights. Panel `p` covers columns
/// `16 p .. 16 p + 16` (the last one zero-padded); all its lines are one
/// contiguous stream, `k` in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
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
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
        }
    }

    /// Lines per panel of a weight with `k` rows (a multiple of 32 for the
    /// block formats).
    fn panel_lines(self, k: usize) -> usize {
        match self {
            Self::F32 => k,
            Self::Q4_1 => k / BLOCK * Q4_1_LINES,
            Self::Q8_0 => k / BLOCK * Q8_0_LINES,
        }
    }
}

/// A `[k, n]` weight as `ceil(n / 16)` panels of `panel_lines` [`Line`]s in
/// `format`.
pub(crate) struct PackedWeight {
    k: usize,
    n: usize,
    format: Format,
    panel_lines: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight [{}, {}] {:?}", self.k, self.n, self.format)
    }
}

impl PackedWeight {
    /// Packs `w` (`[k, n]`, f32) in the first of Q4_1, Q8_0 and f32 that
    /// holds every value exactly. `None` when this CPU has no AVX-512F or
    /// `w` is not f32.
    pub(crate) fn new(w: &Tensor<2>) -> Option<Self> {
        if !kernel::available() {
            return None;
        }
        let [k, n] = w.dims();
        let data = w.clone().into_data();
        let w = data.as_slice::<f32>().ok()?;
        let formats: &[Format] = if k > 0 && k.is_multiple_of(BLOCK) {
            &[Format::Q4_1, Format::Q8_0, Format::F32]
        } else {
            &[Format::F32]
        };
        formats.iter().find_map(|&f| Self::pack(w, k, n, f))
    }

    /// `w` (`[k, n]`, row-major) in `format`, or `None` when some value is
    /// not exactly representable in it (never for [`Format::F32`]).
    fn pack(w: &[f32], k: usize, n: usize, format: Format) -> Option<Self> {
        let panel_lines = format.panel_lines(k);
        let n_panels = n.div_ceil(PANEL);
        // A weight that is not in `format` nearly always fails on its first
        // block: find out before writing the whole allocation.
        let mut first = vec![Line([0; LINE_BYTES]); panel_lines];
        if n_panels > 0 && !pack_panel(w, n, 0, format, &mut first) {
            return None;
        }
        let mut lines = vec![Line([0; LINE_BYTES]); n_panels * panel_lines];
        if n_panels > 0 {
            lines[..panel_lines].copy_from_slice(&first);
        }
        let failed = AtomicBool::new(false);
        // Panels 1.. are left.
        if panel_lines > 0 && n_panels > 1 {
            // Plain threads, not rayon's: this runs inside a `OnceLock`
            // initialiser (see `model::Weight`), where a rayon job could
            // steal work that waits on the same lock. As many as rayon
            // has, so `RAYON_NUM_THREADS` holds here too. Checking and
            // packing all of SmolLM2 takes ~0.8-1 s, once.
            let threads = rayon::current_num_threads().max(1);
            let per_thread = (n_panels - 1).div_ceil(threads);
            let rest = &mut lines[panel_lines..];
            std::thread::scope(|s| {
                for (t, chunk) in rest.chunks_mut(per_thread * panel_lines).enumerate() {
                    let failed = &failed;
                    s.spawn(move || {
                        for (i, panel) in chunk.chunks_exact_mut(panel_lines).enumerate() {
                            if failed.load(Ordering::Relaxed)
                                || !pack_panel(w, n, 1 + t * per_thread + i, format, panel)
                            {
                                failed.store(true, Ordering::Relaxed);
                                return;
                            }
                        }
                    });
                }
            });
        }
        (!failed.into_inner()).then_some(Self {
            k,
            n,
            format,
            panel_lines,
            lines,
        })
    }

    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Bytes the panels take (what a decoding step reads).
    pub(crate) fn bytes(&self) -> usize {
        self.lines.len() * LINE_BYTES
    }

    /// `x @ w`. `None` (nothing computed) when `x` is not f32 or its width
    /// is not `k`.
    ///
    /// # Shapes
    /// `x`: `[m, k]` -> `[m, n]`
    pub(crate) fn matmul(&self, x: &Tensor<2>) -> Option<Tensor<2>> {
        let [m, k] = x.dims();
        if k != self.k {
            return None;
        }
        let data = x.clone().into_data();
        let x_host = data.as_slice::<f32>().ok()?;
        let len = m * self.n;
        // With `k == 0` the zeros are the answer; with `n == 0` there is
        // nothing to write.
        let out = if k == 0 || self.n == 0 {
            vec![0f32; len]
        } else {
            // Not zeroed first: the kernels write every output (for the
            // LM head of a batch-16 step, 3 MB a step that was written
            // twice). Tests fill it with NaN, so a value left unwritten
            // fails them.
            let mut out = Vec::<f32>::with_capacity(len);
            if cfg!(test) {
                out.spare_capacity_mut()
                    .fill(std::mem::MaybeUninit::new(f32::NAN));
            }
            for (g, group) in x_host.chunks(MAX_GROUP_ROWS * k).enumerate() {
                // SAFETY: the group's rows, `MAX_GROUP_ROWS * g ..`, lie
                // inside the `m * n` floats of capacity.
                unsafe { self.run_group(group, out.as_mut_ptr().add(g * MAX_GROUP_ROWS * self.n)) };
            }
            // SAFETY: every group wrote all `n` columns of each of its rows
            // (the panel ranges cover every panel, each kernel call stores
            // all the columns of its panels), so all `m * n` are written.
            unsafe { out.set_len(len) };
            out
        };
        Some(Tensor::from_data(
            TensorData::new(out, [m, self.n]),
            &x.device(),
        ))
    }

    /// `out = x @ w` for one group of `rows <= 16` rows (`x`: `[rows, k]`,
    /// `out`: `[rows, n]`). The panels are split into a few contiguous
    /// ranges per rayon thread ([`RANGES_PER_THREAD`]): each range is one
    /// stream, and a thread that starts late (waking up takes tens of
    /// microseconds) leaves more of the ranges to the others.
    ///
    /// # Safety
    /// `out` must be valid for writes of `rows * n` floats, and not be read
    /// or written by anything else during the call.
    unsafe fn run_group(&self, x: &[f32], out: *mut f32) {
        use rayon::prelude::*;
        let (k, n) = (self.k, self.n);
        let rows = x.len() / k;
        // `x` transposed, `[k, rows]`: the values one `k` step broadcasts
        // lie next to each other. Written in order, reading `rows`
        // sequential streams (2.5x faster than the other way round for
        // `k = 1536`, where `xt` outgrows the L1 cache).
        let mut xt = vec![0f32; k * rows];
        for (l, xt) in xt.chunks_exact_mut(rows).enumerate() {
            for (r, v) in xt.iter_mut().enumerate() {
                *v = x[r * k + l];
            }
        }
        let n_panels = n.div_ceil(PANEL);
        let ranges = rayon::current_num_threads().max(1) * RANGES_PER_THREAD;
        let per_range = n_panels.div_ceil(ranges).max(MIN_RANGE_PANELS);
        // Every panel range writes a disjoint set of columns of `out`.
        let out = SharedOut(out);
        (0..n_panels.div_ceil(per_range))
            .into_par_iter()
            .for_each(|range| {
                let out = &out;
                let first = range * per_range;
                let last = ((range + 1) * per_range).min(n_panels);
                let range = PanelRange {
                    k,
                    panel_lines: self.panel_lines,
                    // SAFETY: panels `first..last` lie inside `self.lines`
                    // and their columns inside each row of `out`.
                    panels: unsafe { self.lines.as_ptr().add(first * self.panel_lines) },
                    n_panels: last - first,
                    cols: (n - first * PANEL).min((last - first) * PANEL),
                    xt: xt.as_ptr(),
                    out: unsafe { out.0.add(first * PANEL) },
                    ld_out: n,
                };
                // SAFETY: `kernel::available()` held when `self` was built;
                // the panels are in `self.format`; `xt` holds `k * rows`
                // floats, `1 <= rows <= 16`, and these columns of the `rows`
                // rows of `out` are written by this range only.
                unsafe { kernel::panels(self.format, range, rows) }
            });
    }
}

/// Writes panel `p` of `w` (`[k, n]`) in `format` into `panel` (zeroed,
/// `format.panel_lines(k)` lines); false when a value is not exactly
/// representable in `format`.
fn pack_panel(w: &[f32], n: usize, p: usize, format: Format, panel: &mut [Line]) -> bool {
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

/// The output pointer, shared by the threads that write disjoint blocks.
struct SharedOut(*mut f32);
// SAFETY: see `PackedWeight::run_group`: each block is written by one
// thread only.
unsafe impl Sync for SharedOut {}

/// Consecutive panels of one product and where their results go.
#[derive(Clone, Copy)]
struct PanelRange {
    /// The weight's `k`.
    k: usize,
    /// Lines per panel.
    panel_lines: usize,
    /// The first panel's first line.
    panels: *const Line,
    n_panels: usize,
    /// Output columns to write (`<= 16 * n_panels`; the last panel of a
    /// weight can be partly padding).
    cols: usize,
    /// `x` transposed, `[k, rows]`.
    xt: *const f32,
    /// Row 0 of the first panel's output columns; rows `ld_out` apart.
    out: *mut f32,
    ld_out: usize,
}

impl PanelRange {
    /// The same range without its first `p` panels.
    ///
    /// # Safety
    /// `p <= n_panels`.
    unsafe fn skip(self, p: usize) -> Self {
        // SAFETY: panels and output columns up to `n_panels` are in range.
        unsafe {
            Self {
                panels: self.panels.add(p * self.panel_lines),
                n_panels: self.n_panels - p,
                cols: self.cols - p * PANEL,
                out: self.out.add(p * PANEL),
                ..self
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::{
        __m128i, __m256i, __m512, _MM_HINT_T0, _mm_load_si128, _mm_prefetch, _mm256_load_si256,
        _mm512_and_si512, _mm512_cvtepi8_epi32, _mm512_cvtepi32_ps, _mm512_cvtepu8_epi32,
        _mm512_cvtph_ps, _mm512_fmadd_ps, _mm512_load_ps, _mm512_mask_storeu_ps, _mm512_mul_ps,
        _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps, _mm512_srli_epi32,
    };

    use super::{BLOCK, Format, LINE_BYTES, PANEL, PanelRange, Q4_1_LINES, Q8_0_LINES};

    /// How far ahead of its loads the f32 kernel prefetches a panel, in
    /// lines (64 lines = 4 KiB). Measured, 16 rows: none 39 ms, 16
    /// lines 28-32, 32-128 lines 23-28; 1 row: no difference.
    const PREFETCH_LINES: usize = 64;

    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }

    /// `out[r, c] = sum_l xt[l, r] * w[l, c]` for `r < rows` and the
    /// range's columns.
    ///
    /// # Safety
    /// AVX-512F must be available; `range.panels` must hold
    /// `range.n_panels * range.panel_lines` lines in `format`; `range.xt`
    /// must hold `k * rows` floats; `1 <= rows <= 16`; `range.out` must be
    /// valid for `rows` rows of `range.cols` floats at stride `range.ld_out`.
    pub(super) unsafe fn panels(format: Format, range: PanelRange, rows: usize) {
        macro_rules! dispatch {
            ($kernel:ident, $group:ident) => {
                dispatch!(@rows $kernel, $group; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
            };
            (@rows $kernel:ident, $group:ident; $($rows:literal)*) => {
                match rows {
                    $($rows => {
                        const GROUP: usize = $group($rows);
                        unsafe {
                            panels_for(range, GROUP, $kernel::<$rows, GROUP>, $kernel::<$rows, 1>)
                        }
                    })*
                    _ => unreachable!("row groups have 1..=16 rows"),
                }
            };
        }
        match format {
            Format::F32 => dispatch!(f32_kernel, f32_group),
            Format::Q4_1 => dispatch!(q4_1_kernel, block_group),
            Format::Q8_0 => dispatch!(q8_0_kernel, block_group),
        }
    }

    /// Panels per [`f32_kernel`] call for `rows` rows: as many as keep the
    /// `rows x panels` accumulators and the loaded lines inside the 32
    /// registers.
    const fn f32_group(rows: usize) -> usize {
        match rows {
            1..=6 => 4,
            7..=8 => 3,
            9..=12 => 2,
            _ => 1,
        }
    }

    /// Panels per [`block_kernel`] call for `rows` rows: as
    /// [`f32_group`], with room for each panel's scales and minima and its
    /// two rebuilt lines.
    const fn block_group(rows: usize) -> usize {
        match rows {
            1..=3 => 4,
            4..=5 => 3,
            6..=10 => 2,
            _ => 1,
        }
    }

    /// Runs `wide` (a kernel over `group` panels) along the range, and
    /// `single` (the same over one panel) on the last `n_panels mod group`.
    ///
    /// # Safety
    /// As [`panels`], with both kernels for its format and row count.
    unsafe fn panels_for(
        range: PanelRange,
        group: usize,
        wide: unsafe fn(PanelRange),
        single: unsafe fn(PanelRange),
    ) {
        let mut p = 0;
        while p < range.n_panels {
            // SAFETY: `p < n_panels`, and the kernels read and write only
            // the panels (and their columns) left in the range.
            unsafe {
                if range.n_panels - p >= group {
                    wide(range.skip(p));
                    p += group;
                } else {
                    single(range.skip(p));
                    p += 1;
                }
            }
        }
    }

    /// `acc[r][q] += xt[l, r] * line[q]`: one fused multiply-add per
    /// accumulator, so each is a chain over `l` in order.
    ///
    /// # Safety
    /// `xt` points at the `ROWS` values of one `l`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn multiply_add<const ROWS: usize, const GROUP: usize>(
        acc: &mut [[__m512; GROUP]; ROWS],
        xt: *const f32,
        line: &[__m512; GROUP],
    ) {
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let x = _mm512_set1_ps(unsafe { *xt.add(r) });
            for (acc, &line) in acc.iter_mut().zip(line) {
                *acc = _mm512_fmadd_ps(x, line, *acc);
            }
        }
    }

    /// Writes the first `min(cols, 16 * GROUP)` columns of `ROWS` rows.
    ///
    /// # Safety
    /// As [`panels`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store<const ROWS: usize, const GROUP: usize>(
        acc: &[[__m512; GROUP]; ROWS],
        range: &PanelRange,
    ) {
        for (r, acc) in acc.iter().enumerate() {
            for (q, &acc) in acc.iter().enumerate() {
                let c = range.cols.saturating_sub(q * PANEL).min(PANEL);
                let mask = ((1u32 << c) - 1) as u16;
                // SAFETY: row `r`, columns `16 q .. 16 q + c` are in `out`.
                unsafe {
                    _mm512_mask_storeu_ps(range.out.add(r * range.ld_out + q * PANEL), mask, acc)
                };
            }
        }
    }

    /// One pass over the range's first `GROUP` f32 panels: `ROWS x GROUP`
    /// accumulators, each a fused multiply-add chain over `l = 0..k`.
    ///
    /// # Safety
    /// As [`panels`], with at least `GROUP` panels in the range.
    #[target_feature(enable = "avx512f")]
    unsafe fn f32_kernel<const ROWS: usize, const GROUP: usize>(range: PanelRange) {
        let w = range.panels;
        let mut acc = [[_mm512_setzero_ps(); GROUP]; ROWS];
        for l in 0..range.k {
            let mut line = [_mm512_setzero_ps(); GROUP];
            for (q, line) in line.iter_mut().enumerate() {
                let at = w.wrapping_add(q * range.panel_lines + l);
                // A prefetch never faults, so reading past the end (the
                // last panel's final lines) is harmless; `wrapping_add`
                // keeps the address arithmetic defined.
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_LINES).cast());
                // SAFETY: line `l` of panel `q` is in range and aligned.
                *line = unsafe { _mm512_load_ps(at.cast()) };
            }
            // SAFETY: `xt` holds `k * ROWS` floats.
            unsafe { multiply_add(&mut acc, range.xt.add(l * ROWS), &line) };
        }
        // SAFETY: as [`panels`].
        unsafe { store(&acc, &range) };
    }

    /// [`block_kernel`] for Q4_1 panels.
    ///
    /// # Safety
    /// As [`block_kernel`].
    #[target_feature(enable = "avx512f")]
    unsafe fn q4_1_kernel<const ROWS: usize, const GROUP: usize>(range: PanelRange) {
        unsafe { block_kernel::<true, ROWS, GROUP>(range) }
    }

    /// [`block_kernel`] for Q8_0 panels.
    ///
    /// # Safety
    /// As [`block_kernel`].
    #[target_feature(enable = "avx512f")]
    unsafe fn q8_0_kernel<const ROWS: usize, const GROUP: usize>(range: PanelRange) {
        unsafe { block_kernel::<false, ROWS, GROUP>(range) }
    }

    /// [`f32_kernel`] for Q4_1 (`Q4`) or Q8_0 panels: each block's weights
    /// are rebuilt in registers as `q * d + m` (Q4_1) or `q * d` (Q8_0),
    /// rounded as in the dequantiser, so the products are bit-identical to
    /// f32 panels of the dequantised weights.
    ///
    /// # Safety
    /// As [`panels`], with at least `GROUP` panels in the range.
    #[target_feature(enable = "avx512f")]
    unsafe fn block_kernel<const Q4: bool, const ROWS: usize, const GROUP: usize>(
        range: PanelRange,
    ) {
        let block_lines = if Q4 { Q4_1_LINES } else { Q8_0_LINES };
        // Block panels are short (SmolLM2: 90-240 lines), so the prefetch
        // goes to the same block of the panel one group further on (the
        // panels read next), not a fixed distance ahead, which would mostly
        // land in the group's own next panel. Measured against 64 lines
        // ahead, the 121 products of one SmolLM2 step, best of 5, 3 rounds:
        // 1 row 7.8-9.5 -> 6.7-8.8 ms, 4 rows 12.0-12.5 -> 11.2-12.0,
        // 16 rows 32.5-37.9 -> 31.5-33.3.
        let ahead = GROUP * range.panel_lines;
        let low_nibble = _mm512_set1_epi32(0x0f);
        let mut acc = [[_mm512_setzero_ps(); GROUP]; ROWS];
        for b in 0..range.k / BLOCK {
            let mut scale = [_mm512_setzero_ps(); GROUP];
            let mut min = [_mm512_setzero_ps(); GROUP];
            let mut data = [std::ptr::null::<u8>(); GROUP];
            for q in 0..GROUP {
                let block = range
                    .panels
                    .wrapping_add(q * range.panel_lines + b * block_lines);
                for i in 0..block_lines {
                    // Never faults; see `f32_kernel`.
                    _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(ahead + i).cast());
                }
                let header = block.cast::<__m256i>();
                // SAFETY: block `b` of panel `q` is in range; its first line
                // holds the scales, then (Q4_1) the minima, as f16.
                unsafe {
                    scale[q] = _mm512_cvtph_ps(_mm256_load_si256(header));
                    if Q4 {
                        min[q] = _mm512_cvtph_ps(_mm256_load_si256(header.add(1)));
                    }
                }
                data[q] = block.cast::<u8>().wrapping_add(LINE_BYTES);
            }
            // SAFETY (every load below): 16-byte aligned steps inside the
            // block's data lines.
            let load = |q: usize, i: usize| unsafe {
                _mm_load_si128(data[q].add(16 * i).cast::<__m128i>())
            };
            let xt = range.xt.wrapping_add(b * BLOCK * ROWS);
            if Q4 {
                for i in 0..BLOCK / 2 {
                    let mut even = [_mm512_setzero_ps(); GROUP];
                    let mut odd = [_mm512_setzero_ps(); GROUP];
                    for q in 0..GROUP {
                        let bytes = _mm512_cvtepu8_epi32(load(q, i));
                        let lo = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, low_nibble));
                        let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(bytes));
                        // `q * d` is exact in f32 (4 + 11 significant
                        // bits), so one fused multiply-add rounds the
                        // same as the dequantiser's multiply, then add.
                        even[q] = _mm512_fmadd_ps(lo, scale[q], min[q]);
                        odd[q] = _mm512_fmadd_ps(hi, scale[q], min[q]);
                    }
                    // SAFETY: `xt` holds `k * ROWS` floats.
                    unsafe {
                        multiply_add(&mut acc, xt.add(2 * i * ROWS), &even);
                        multiply_add(&mut acc, xt.add((2 * i + 1) * ROWS), &odd);
                    }
                }
            } else {
                for l in 0..BLOCK {
                    let mut line = [_mm512_setzero_ps(); GROUP];
                    for (q, line) in line.iter_mut().enumerate() {
                        let q8 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load(q, l)));
                        *line = _mm512_mul_ps(q8, scale[q]);
                    }
                    // SAFETY: `xt` holds `k * ROWS` floats.
                    unsafe { multiply_add(&mut acc, xt.add(l * ROWS), &line) };
                }
            }
        }
        // SAFETY: as [`panels`].
        unsafe { store(&acc, &range) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub(super) fn available() -> bool {
        false
    }

    pub(super) unsafe fn panels(_: super::Format, _: super::PanelRange, _: usize) {
        unreachable!("PackedWeight::new returns None off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, TensorData};

    use half::f16;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::{Format, PackedWeight};
    use crate::quant::{GgmlType, dequantize};
    use crate::testing::test_device;

    fn host(t: Tensor<2>) -> Vec<f32> {
        crate::host_vec(t).unwrap()
    }

    /// Agrees with burn's matmul, for widths that are and are not a
    /// multiple of the panel width and for panel counts that do and do not
    /// fill the kernel's panel groups; each row's result is the same bits
    /// whatever other rows share the product (1 to 21 rows: one and two
    /// row groups, every kernel shape) and whatever the thread count.
    #[test]
    fn packed_products_match_matmul_and_do_not_depend_on_the_batch() {
        let dev = test_device();
        for (k, n) in [(96, 128), (70, 200), (33, 7), (17, 16 * 7 + 3)] {
            let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
            let Some(packed) = PackedWeight::new(&w) else {
                eprintln!("no AVX-512 on this CPU: packed products not tested");
                return;
            };
            assert_eq!(packed.format(), Format::F32, "random weights, k {k}, n {n}");
            let x = Tensor::<2>::random([21, k], Distribution::Normal(0.0, 1.0), &dev);
            let got = host(packed.matmul(&x).unwrap());
            let want = host(x.clone().matmul(w.clone()));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
            }
            for rows in 1..=20 {
                let first = 20 - rows;
                let part = host(packed.matmul(&x.clone().narrow(0, first, rows)).unwrap());
                assert_eq!(
                    part,
                    got[first * n..21 * n - n],
                    "rows {first}..20, k {k}, n {n}"
                );
            }
            let one_thread = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| host(packed.matmul(&x).unwrap()));
            assert_eq!(one_thread, got, "1 thread, k {k}, n {n}");
        }
    }

    #[test]
    fn a_mismatched_width_is_refused() {
        let dev = test_device();
        let w = Tensor::<2>::random([8, 64], Distribution::Default, &dev);
        if let Some(packed) = PackedWeight::new(&w) {
            assert!(packed.matmul(&Tensor::<2>::zeros([2, 9], &dev)).is_none());
        }
    }

    /// A random `[k, n]` weight quantised to blocks of `t` by ggml's
    /// reference quantiser (`quantize_row_q4_1_ref`, `..._q8_0_ref`,
    /// `..._q4_0_ref`)
    /// along `k` and dequantised by the loader, as the model would hold it
    /// (one block in ten constant, with scale 0).
    fn dequantised_weight(t: GgmlType, k: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut bytes = Vec::new();
        for _ in 0..n * k / 32 {
            let constant = rng.random_bool(0.1);
            let first: f32 = rng.random_range(-1.0..1.0);
            let x: Vec<f32> = (0..32)
                .map(|_| {
                    if constant {
                        first
                    } else {
                        rng.random_range(-1.0..1.0)
                    }
                })
                .collect();
            if t == GgmlType::Q4_1 {
                let min = x.iter().copied().fold(f32::INFINITY, f32::min);
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                bytes.extend(f16::from_f32(d).to_le_bytes());
                bytes.extend(f16::from_f32(min).to_le_bytes());
                let q = |v: f32| ((((v - min) * id) + 0.5) as i8).min(15) as u8;
                bytes.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            } else if t == GgmlType::Q4_0 {
                // The value of largest magnitude, with its sign.
                let max = x
                    .iter()
                    .copied()
                    .fold(0f32, |a, v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                bytes.extend(f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
                bytes.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            } else {
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                bytes.extend(f16::from_f32(d).to_le_bytes());
                bytes.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        let rows = dequantize(t, &bytes, "w").unwrap(); // [n, k]
        (0..k * n).map(|i| rows[(i % n) * k + i / n]).collect()
    }

    /// Weights that are dequantised Q4_1 / Q8_0 / Q4_0 blocks are packed as
    /// Q4_1 / Q8_0 / Q8_0,
    /// and their products are bit for bit those of f32 panels of the same
    /// weights, for every row count.
    #[test]
    fn quantised_weights_pack_as_blocks_with_the_same_bits_as_f32() {
        let dev = test_device();
        for (t, format) in [
            (GgmlType::Q4_1, Format::Q4_1),
            (GgmlType::Q8_0, Format::Q8_0),
            (GgmlType::Q4_0, Format::Q8_0),
        ] {
            for (k, n) in [(64, 48), (96, 16 * 9 + 3), (32, 7)] {
                let w = dequantised_weight(t, k, n, k as u64 + n as u64);
                let tensor = Tensor::<2>::from_data(TensorData::new(w.clone(), [k, n]), &dev);
                let Some(packed) = PackedWeight::new(&tensor) else {
                    eprintln!("no AVX-512 on this CPU: packed products not tested");
                    return;
                };
                assert_eq!(packed.format(), format, "k {k}, n {n}");
                let plain = PackedWeight::pack(&w, k, n, Format::F32).unwrap();
                let x = Tensor::<2>::random([20, k], Distribution::Normal(0.0, 1.0), &dev);
                for rows in 1..=20 {
                    let x = x.clone().narrow(0, 0, rows);
                    assert_eq!(
                        host(packed.matmul(&x).unwrap()),
                        host(plain.matmul(&x).unwrap()),
                        "{format:?}, rows {rows}, k {k}, n {n}"
                    );
                }
            }
        }
    }

    /// One value off its block's grid (one ulp) and the weight is kept in
    /// f32: the block formats are used only when they are exact.
    #[test]
    fn a_value_off_the_block_grid_keeps_the_weight_in_f32() {
        let dev = test_device();
        for t in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0] {
            let (k, n) = (64, 32);
            let mut w = dequantised_weight(t, k, n, 7);
            let i = 40 * n + 5;
            w[i] = f32::from_bits(w[i].to_bits() + 1);
            let tensor = Tensor::<2>::from_data(TensorData::new(w, [k, n]), &dev);
            if let Some(packed) = PackedWeight::new(&tensor) {
                assert_eq!(packed.format(), Format::F32, "{t:?}");
            }
        }
    }
}
