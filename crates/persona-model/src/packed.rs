//! Frozen weights repacked once for products with few rows (decoding).
//!
//! A decoding step multiplies a few rows (one per sequence) by every weight
//! matrix, so it is bound by reading the weights from memory. gemm, under
//! burn's CPU backend, copies ("packs") each `[k, n]` weight into panels of
//! 64 output columns on every call before its AVX-512 kernel runs: the
//! weights are read, written and read again, every step. [`PackedWeight`]
//! keeps that panel layout from the start (built once, on the first
//! few-row product) and calls the same gemm kernel on it directly, so a
//! step streams each weight once. Measured on the 2-core machine, 30
//! layers' projections, 16 rows: ~50 -> ~40 ms; 1 row: ~35 -> ~22 ms.
//!
//! Each output value is one kernel accumulation over the whole `k` in a
//! fixed order, so it does not depend on the number of rows, on which rows
//! are in the batch or on the thread count. It can differ from burn's
//! matmul in the last bits (gemm splits `k` in two halves there).
//!
//! Only on x86-64 CPUs with AVX-512 (checked at run time); elsewhere
//! [`PackedWeight::new`] returns `None` and callers use burn's matmul.

use burn::tensor::{Tensor, TensorData};

/// Products with at most this many rows use the packed weights; larger
/// ones (prefill, training) are faster in gemm, which then reuses each
/// packed panel for many rows. Measured: 32 rows 66 -> 46 ms, 64 rows even.
pub(crate) const PACKED_MAX_ROWS: usize = 32;

/// Output columns per panel: gemm's AVX-512 f32 kernel height (4 x 16 lanes).
const PANEL: usize = 64;

/// A `[k, n]` weight as `ceil(n / 64)` panels, each `[k, 64]` row-major
/// (the last one zero-padded): the layout gemm's kernel reads.
pub(crate) struct PackedWeight {
    k: usize,
    n: usize,
    panels: Vec<f32>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight [{}, {}]", self.k, self.n)
    }
}

impl PackedWeight {
    /// Packs `w` (`[k, n]`, f32). `None` when this CPU has no AVX-512 or
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
        let mut panels = vec![0f32; n.div_ceil(PANEL) * k * PANEL];
        for (p, panel) in panels.chunks_exact_mut(k * PANEL).enumerate() {
            let cols = PANEL.min(n - p * PANEL);
            for (row, dst) in panel.chunks_exact_mut(PANEL).enumerate() {
                dst[..cols].copy_from_slice(&w[row * n + p * PANEL..][..cols]);
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
        if m > 0 {
            self.run(x_host, m, &mut out);
        }
        Some(Tensor::from_data(
            TensorData::new(out, [m, self.n]),
            &x.device(),
        ))
    }

    /// Splits the panels into one contiguous range per rayon thread (each
    /// thread streams its part of the weight) and runs the kernel on each
    /// panel for every group of up to `kernel::COLS` rows.
    fn run(&self, x: &[f32], m: usize, out: &mut [f32]) {
        use rayon::prelude::*;
        let (k, n) = (self.k, self.n);
        let n_panels = n.div_ceil(PANEL);
        let per_thread = n_panels.div_ceil(rayon::current_num_threads().max(1));
        // Every (panel, row group) writes a disjoint block of `out`.
        let out = SharedOut(out.as_mut_ptr());
        (0..n_panels.div_ceil(per_thread))
            .into_par_iter()
            .for_each(|chunk| {
                let out = &out;
                let end = ((chunk + 1) * per_thread).min(n_panels);
                for p in chunk * per_thread..end {
                    let panel = &self.panels[p * k * PANEL..][..k * PANEL];
                    let cols = PANEL.min(n - p * PANEL);
                    let mut row = 0;
                    while row < m {
                        let rows = kernel::COLS.min(m - row);
                        // SAFETY: `kernel::available()` held when `self` was
                        // built; `panel` holds `k` rows of PANEL floats, `x`
                        // holds `m` rows of `k`, and the destination block
                        // (rows `row..row + rows`, columns of panel `p`)
                        // lies inside `out` and is written by this call only.
                        unsafe {
                            kernel::run(
                                cols,
                                rows,
                                k,
                                panel.as_ptr(),
                                x.as_ptr().add(row * k),
                                out.0.add(row * n + p * PANEL),
                                n,
                            );
                        }
                        row += rows;
                    }
                }
            });
    }
}

/// The output pointer, shared by the threads that write disjoint blocks.
struct SharedOut(*mut f32);
// SAFETY: see `PackedWeight::run`: each block is written by one thread only.
unsafe impl Sync for SharedOut {}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use gemm_f32::microkernel::avx512f::f32::{MR_DIV_N, NR, UKR};

    /// Rows of `x` (kernel columns) per kernel call.
    pub(super) const COLS: usize = NR;

    pub(super) fn available() -> bool {
        MR_DIV_N * 16 == super::PANEL && std::is_x86_feature_detected!("avx512f")
    }

    /// `out[i, j] = sum_l x[i, l] * panel[l, j]` for `i < rows`, `j < cols`,
    /// with `out` row stride `ld_out`. gemm's kernel computes
    /// `dst = lhs @ rhs` column-major; here `lhs` is the panel
    /// (`[cols, k]`, column stride 64), `rhs` is `x` transposed (`[k, rows]`,
    /// row stride 1, column stride `k`) and `dst` is `out` transposed.
    ///
    /// # Safety
    /// AVX-512F must be available; `panel` must hold `k * 64` floats, `x`
    /// `rows * k`, and `out` must be valid for the block written.
    pub(super) unsafe fn run(
        cols: usize,
        rows: usize,
        k: usize,
        panel: *const f32,
        x: *const f32,
        out: *mut f32,
        ld_out: usize,
    ) {
        let ukr = UKR[MR_DIV_N - 1][rows - 1];
        // alpha_status 0: `dst = beta * acc`, dst is not read.
        unsafe {
            ukr(
                cols,
                rows,
                k,
                out,
                panel,
                x,
                ld_out as isize,
                1,
                super::PANEL as isize,
                1,
                k as isize,
                0.0,
                1.0,
                0,
                false,
                false,
                false,
                panel,
            )
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub(super) const COLS: usize = 1;

    pub(super) fn available() -> bool {
        false
    }

    pub(super) unsafe fn run(
        _: usize,
        _: usize,
        _: usize,
        _: *const f32,
        _: *const f32,
        _: *mut f32,
        _: usize,
    ) {
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
    /// multiple of the panel width; each row's result is the same bits
    /// whatever other rows share the product.
    #[test]
    fn packed_products_match_matmul_and_do_not_depend_on_the_batch() {
        let dev = test_device();
        for (k, n) in [(96, 128), (70, 200), (33, 7)] {
            let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
            let Some(packed) = PackedWeight::new(&w) else {
                eprintln!("no AVX-512 on this CPU: packed products not tested");
                return;
            };
            let x = Tensor::<2>::random([13, k], Distribution::Normal(0.0, 1.0), &dev);
            let got = host(packed.matmul(&x).unwrap());
            let want = host(x.clone().matmul(w.clone()));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
            }
            for row in [0, 6, 12] {
                let alone = host(packed.matmul(&x.clone().narrow(0, row, 1)).unwrap());
                assert_eq!(
                    alone,
                    got[row * n..(row + 1) * n],
                    "row {row}, k {k}, n {n}"
                );
            }
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
