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
//! Measured on the 2-core machine, the projections of 30 layers (425 MB),
//! best of 10: 16 rows 31-37 ms with gemm's kernel on pre-packed panels
//! (~50 ms with gemm repacking) -> 23-26 ms; 1 row ~17-19 -> ~16-18 ms.
//!
//! Each output value is one fused multiply-add chain over `k` in order
//! `0..k`, so it does not depend on the number of rows, on which rows are
//! in the batch or on the thread count. It can differ from burn's matmul in
//! the last bits (gemm splits `k` differently).
//!
//! Only on x86-64 CPUs with AVX-512F (checked at run time); elsewhere
//! [`PackedWeight::new`] returns `None` and callers use burn's matmul.

use burn::tensor::{Tensor, TensorData};

/// Products with at most this many rows use the packed weights; larger
/// ones (prefill, training) are faster in gemm, which then reuses each
/// packed panel for many rows. Measured (gemm's kernel on pre-packed
/// panels): 32 rows 66 -> 46 ms, 64 rows even.
pub(crate) const PACKED_MAX_ROWS: usize = 32;

/// Output columns per panel: one AVX-512 register of f32.
const PANEL: usize = 16;

/// Panel ranges per rayon thread in one product (see
/// [`PackedWeight::run_group`]), each at least [`MIN_RANGE_PANELS`] panels.
const RANGES_PER_THREAD: usize = 4;
const MIN_RANGE_PANELS: usize = 4;

/// Rows of `x` one kernel call multiplies (one accumulator register each);
/// more rows are done in groups of this many.
const MAX_GROUP_ROWS: usize = 16;

/// One `k` step of a panel: 16 weights, cache-line aligned so that every
/// kernel load reads exactly one line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; PANEL]);

/// A `[k, n]` weight as `ceil(n / 16)` panels of `k` [`Line`]s each,
/// `panels[p * k + l][j] = w[l, 16 p + j]` (the last panel zero-padded):
/// each panel is one contiguous stream.
pub(crate) struct PackedWeight {
    k: usize,
    n: usize,
    panels: Vec<Line>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight [{}, {}]", self.k, self.n)
    }
}

impl PackedWeight {
    /// Packs `w` (`[k, n]`, f32). `None` when this CPU has no AVX-512F or
    /// `w` is not f32.
    pub(crate) fn new(w: &Tensor<2>) -> Option<Self> {
        if !kernel::available() {
            return None;
        }
        let [k, n] = w.dims();
        let data = w.clone().into_data();
        let w = data.as_slice::<f32>().ok()?;
        // One thread on purpose: this runs inside a `OnceLock` initialiser
        // (see `model::Weight`), where a rayon job could steal work that
        // waits on the same lock. Packing all of SmolLM2 takes ~0.3 s, once.
        let mut panels = vec![Line([0.0; PANEL]); n.div_ceil(PANEL) * k];
        if k > 0 {
            for (p, panel) in panels.chunks_exact_mut(k).enumerate() {
                let cols = PANEL.min(n - p * PANEL);
                for (row, line) in panel.iter_mut().enumerate() {
                    line.0[..cols].copy_from_slice(&w[row * n + p * PANEL..][..cols]);
                }
            }
        }
        Some(Self { k, n, panels })
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
        let mut out = vec![0f32; m * self.n];
        // With `k == 0` the zeros are the answer; with `n == 0` there is
        // nothing to write.
        if k > 0 && self.n > 0 {
            for (group, out) in x_host
                .chunks(MAX_GROUP_ROWS * k)
                .zip(out.chunks_mut(MAX_GROUP_ROWS * self.n))
            {
                self.run_group(group, out);
            }
        }
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
    fn run_group(&self, x: &[f32], out: &mut [f32]) {
        use rayon::prelude::*;
        let (k, n) = (self.k, self.n);
        let rows = x.len() / k;
        // `x` transposed, `[k, rows]`: the values one `k` step broadcasts
        // lie next to each other.
        let mut xt = vec![0f32; k * rows];
        for (r, x_row) in x.chunks_exact(k).enumerate() {
            for (l, &v) in x_row.iter().enumerate() {
                xt[l * rows + r] = v;
            }
        }
        let n_panels = n.div_ceil(PANEL);
        let ranges = rayon::current_num_threads().max(1) * RANGES_PER_THREAD;
        let per_range = n_panels.div_ceil(ranges).max(MIN_RANGE_PANELS);
        // Every panel range writes a disjoint set of columns of `out`.
        let out = SharedOut(out.as_mut_ptr());
        (0..n_panels.div_ceil(per_range))
            .into_par_iter()
            .for_each(|range| {
                let out = &out;
                let first = range * per_range;
                let last = ((range + 1) * per_range).min(n_panels);
                let range = PanelRange {
                    k,
                    // SAFETY: panels `first..last` lie inside `self.panels`
                    // and their columns inside each row of `out`.
                    panels: unsafe { self.panels.as_ptr().add(first * k).cast() },
                    n_panels: last - first,
                    cols: (n - first * PANEL).min((last - first) * PANEL),
                    xt: xt.as_ptr(),
                    out: unsafe { out.0.add(first * PANEL) },
                    ld_out: n,
                };
                // SAFETY: `kernel::available()` held when `self` was built;
                // `xt` holds `k * rows` floats, `1 <= rows <= 16`, and these
                // columns of the `rows` rows of `out` are written by this
                // range only.
                unsafe { kernel::panels(range, rows) }
            });
    }
}

/// The output pointer, shared by the threads that write disjoint blocks.
struct SharedOut(*mut f32);
// SAFETY: see `PackedWeight::run_group`: each block is written by one
// thread only.
unsafe impl Sync for SharedOut {}

/// Consecutive panels of one product and where their results go.
#[derive(Clone, Copy)]
struct PanelRange {
    /// Lines per panel (the weight's `k`).
    k: usize,
    /// The first panel's first line (64-byte aligned).
    panels: *const f32,
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
                panels: self.panels.add(p * self.k * PANEL),
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
        _MM_HINT_T0, _mm_prefetch, _mm512_fmadd_ps, _mm512_load_ps, _mm512_mask_storeu_ps,
        _mm512_set1_ps, _mm512_setzero_ps,
    };

    use super::{PANEL, PanelRange};

    /// How far ahead of its loads the kernel prefetches a panel, in lines
    /// (64 lines = 4 KiB). Measured, 16 rows: none 39 ms, 16 lines 28-32,
    /// 32-128 lines 23-28; 1 row: no difference.
    const PREFETCH_LINES: usize = 64;

    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }

    /// `out[r, c] = sum_l xt[l, r] * w[l, c]` for `r < rows` and the
    /// range's columns.
    ///
    /// # Safety
    /// AVX-512F must be available; `range.panels` must hold
    /// `range.n_panels * range.k` lines, 64-byte aligned; `range.xt` must
    /// hold `k * rows` floats; `1 <= rows <= 16`; `range.out` must be valid
    /// for `rows` rows of `range.cols` floats at stride `range.ld_out`.
    pub(super) unsafe fn panels(range: PanelRange, rows: usize) {
        macro_rules! dispatch {
            ($($rows:literal => $group:literal),*) => {
                match rows {
                    $($rows => unsafe { panels_for::<$rows, $group>(range) },)*
                    _ => unreachable!("row groups have 1..=16 rows"),
                }
            };
        }
        // Panels per kernel call: as many as keep rows x panels
        // accumulators (plus the loaded lines) inside the 32 registers.
        dispatch!(1 => 4, 2 => 4, 3 => 4, 4 => 4, 5 => 4, 6 => 4,
                  7 => 3, 8 => 3, 9 => 2, 10 => 2, 11 => 2, 12 => 2,
                  13 => 1, 14 => 1, 15 => 1, 16 => 1)
    }

    /// [`panels`] with `ROWS` rows, `GROUP` panels per kernel call (the
    /// last `n_panels mod GROUP` one at a time).
    ///
    /// # Safety
    /// As [`panels`], with `rows == ROWS`.
    unsafe fn panels_for<const ROWS: usize, const GROUP: usize>(range: PanelRange) {
        let mut p = 0;
        while p < range.n_panels {
            // SAFETY: `p < n_panels`, and the kernels read and write only
            // the panels (and their columns) left in the range.
            unsafe {
                if range.n_panels - p >= GROUP {
                    kernel::<ROWS, GROUP>(range.skip(p));
                    p += GROUP;
                } else {
                    kernel::<ROWS, 1>(range.skip(p));
                    p += 1;
                }
            }
        }
    }

    /// One pass over the range's first `GROUP` panels: `ROWS x GROUP`
    /// accumulators, each a fused multiply-add chain over `l = 0..k`.
    /// Writes the first `min(cols, 16 * GROUP)` columns.
    ///
    /// # Safety
    /// As [`panels`], with at least `GROUP` panels in the range.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const ROWS: usize, const GROUP: usize>(range: PanelRange) {
        let PanelRange {
            k,
            panels: w,
            cols,
            xt,
            out,
            ld_out,
            ..
        } = range;
        let stride = k * PANEL;
        let mut acc = [[_mm512_setzero_ps(); GROUP]; ROWS];
        for l in 0..k {
            let mut line = [_mm512_setzero_ps(); GROUP];
            for (q, line) in line.iter_mut().enumerate() {
                let at = w.wrapping_add(q * stride + l * PANEL);
                // A prefetch never faults, so reading past the end (the
                // last panel's final lines) is harmless; `wrapping_add`
                // keeps the address arithmetic defined.
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_LINES * PANEL).cast());
                // SAFETY: line `l` of panel `q` is in range and aligned.
                *line = unsafe { _mm512_load_ps(at) };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `xt` holds `k * ROWS` floats.
                let x = _mm512_set1_ps(unsafe { *xt.add(l * ROWS + r) });
                for (acc, &line) in acc.iter_mut().zip(&line) {
                    *acc = _mm512_fmadd_ps(x, line, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (q, &acc) in acc.iter().enumerate() {
                let c = cols.saturating_sub(q * PANEL).min(PANEL);
                let mask = ((1u32 << c) - 1) as u16;
                // SAFETY: row `r`, columns `16 q .. 16 q + c` are in `out`.
                unsafe { _mm512_mask_storeu_ps(out.add(r * ld_out + q * PANEL), mask, acc) };
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub(super) fn available() -> bool {
        false
    }

    pub(super) unsafe fn panels(_: super::PanelRange, _: usize) {
        unreachable!("PackedWeight::new returns None off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::PackedWeight;
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
}
