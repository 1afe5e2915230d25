//! Frozen weights repacked once for products with few rows (decoding):
//! [`format`] (the panel formats and packing), [`kernel`] (the CPU kernels
//! and their dispatch), and [`PackedWeight`] here (building a packed copy
//! and running a product over it). The model sees only
//! `model::linear::Weight`, which decides when to use it.
//!
//! A decoding step multiplies a few rows (one per sequence) by every weight
//! matrix, so it is bound by reading the weights from memory. gemm, under
//! burn's CPU backend, copies ("packs") each `[k, n]` weight into panels on
//! every call before its kernel runs, so the weights are read, written and
//! read again every step; and its kernel covers at most 6 rows, so a batch
//! of 16 passes over each panel three times. [`PackedWeight`] keeps the
//! weight in panels of 16 columns from the start (built once, on the first
//! few-row product), and its own kernels multiply up to 16 rows (AVX-512)
//! or 8 rows (AVX2, NEON) in one pass over each panel, prefetching the
//! stream ahead of the loads (x86) so that reading memory overlaps the
//! arithmetic.
//!
//! Each output value is one fused multiply-add chain over `k` in order
//! `0..k`, so it does not depend on the number of rows, on which rows are
//! in the batch, on the thread count or on the kernel family. It can differ
//! from burn's matmul in the last bits (gemm splits `k` differently).
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
//! On x86-64 CPUs with AVX-512F or AVX2 + FMA + F16C and on AArch64 (NEON)
//! (checked at run time, or forced with `PERSONA_CPU_KERNELS`:
//! [`CpuKernels`]); elsewhere [`PackedWeight::new`] returns `None` and
//! callers use burn's matmul.

mod format;
mod kernel;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Tensor, TensorData};

pub(crate) use format::Format;
use format::{BLOCK, LINE_BYTES, Line, PANEL, pack_panel};
use kernel::PanelRange;
pub use kernel::{CPU_KERNELS_VAR, CpuKernels};

/// Products with at most this many rows use the packed weights; larger
/// ones (prefill, training) are faster in gemm, which then reuses each
/// packed panel for many rows. Measured (gemm's kernel on pre-packed
/// panels): ours wins up to 32 rows and ties at 64 (benches/RESULTS.md).
pub(crate) const PACKED_MAX_ROWS: usize = 32;

/// Panel ranges per rayon thread in one product (see
/// [`PackedWeight::run_group`]), each at least [`MIN_RANGE_PANELS`] panels.
const RANGES_PER_THREAD: usize = 4;
const MIN_RANGE_PANELS: usize = 4;

/// Rows of `x` one kernel call multiplies (one accumulator register each);
/// more rows are done in groups of this many.
const MAX_GROUP_ROWS: usize = 16;

/// A `[k, n]` weight as `ceil(n / 16)` panels of `panel_lines` [`Line`]s in
/// `format`.
pub(crate) struct PackedWeight {
    k: usize,
    n: usize,
    format: Format,
    kernels: CpuKernels,
    panel_lines: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight [{}, {}] {:?}", self.k, self.n, self.format)
    }
}

impl PackedWeight {
    /// Packs `w` (`[k, n]`, f32) for the selected kernels
    /// ([`CpuKernels::selected`]). `None` when they are
    /// [`CpuKernels::Generic`] or `w` is not f32.
    pub(crate) fn new(w: &Tensor<2>) -> Option<Self> {
        Self::for_kernels(w, CpuKernels::selected().ok()?)
    }

    /// Packs `w` in the first of Q4_1, Q8_0 and f32 that holds every value
    /// exactly, for `kernels`. `None` when `kernels` are generic or not
    /// supported by this CPU, or `w` is not f32.
    fn for_kernels(w: &Tensor<2>, kernels: CpuKernels) -> Option<Self> {
        if kernels == CpuKernels::Generic || !kernels.supported() {
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
        formats
            .iter()
            .find_map(|&f| Self::pack(w, k, n, f, kernels))
    }

    /// `w` (`[k, n]`, row-major) in `format`, or `None` when some value is
    /// not exactly representable in it (never for [`Format::F32`]).
    fn pack(w: &[f32], k: usize, n: usize, format: Format, kernels: CpuKernels) -> Option<Self> {
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
            kernels,
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
                // SAFETY: `self.kernels` were supported when `self` was built;
                // the panels are in `self.format`; `xt` holds `k * rows`
                // floats, `1 <= rows <= 16`, and these columns of the `rows`
                // rows of `out` are written by this range only.
                unsafe { kernel::panels(self.kernels, self.format, range, rows) }
            });
    }
}

/// The output pointer, shared by the threads that write disjoint blocks.
struct SharedOut(*mut f32);
// SAFETY: see `PackedWeight::run_group`: each block is written by one
// thread only.
unsafe impl Sync for SharedOut {}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, TensorData};

    use half::f16;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::{CpuKernels, Format, PackedWeight};
    use crate::quant::{GgmlType, dequantize};
    use crate::testing::test_device;

    fn host(t: Tensor<2>) -> Vec<f32> {
        crate::host_vec(t).unwrap()
    }

    /// The packed kernel families this CPU runs (the generic one packs
    /// nothing).
    fn families() -> Vec<CpuKernels> {
        let families: Vec<_> = CpuKernels::supported_here()
            .into_iter()
            .filter(|&k| k != CpuKernels::Generic)
            .collect();
        if families.is_empty() {
            eprintln!("no packed kernels on this CPU: packed products not tested");
        }
        families
    }

    /// `x @ w` in f64 (`x`: `[m, k]`, `w`: `[k, n]`).
    fn reference(x: &[f32], w: &[f32], k: usize, n: usize) -> Vec<f64> {
        let m = x.len() / k;
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for l in 0..k {
                let xv = f64::from(x[r * k + l]);
                for c in 0..n {
                    out[r * n + c] += xv * f64::from(w[l * n + c]);
                }
            }
        }
        out
    }

    /// What every family computes, in scalar code: each output one fused
    /// multiply-add chain over `l = 0..k` in order, from zero.
    fn fma_chain(x: &[f32], w: &[f32], k: usize, n: usize) -> Vec<f32> {
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] =
                    (0..k).fold(0f32, |acc, l| x[r * k + l].mul_add(w[l * n + c], acc));
            }
        }
        out
    }

    /// Every family gives the bits of the scalar fused multiply-add chain
    /// (so every CPU gives the same bits) and agrees with an f64 product
    /// (within f32 rounding of `k` terms), for widths that are and are not a multiple of the panel
    /// width and for panel counts that do and do not fill the kernels'
    /// groups; each row's result is the same bits whatever other rows
    /// share the product (1 to 21 rows: one and two row groups, every
    /// kernel shape), whatever the thread count and whatever the family.
    #[test]
    fn packed_products_are_the_fma_chain_and_do_not_depend_on_the_batch() {
        let dev = test_device();
        for (k, n) in [(96, 128), (70, 200), (33, 7), (17, 16 * 7 + 3), (40, 8)] {
            let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
            let x = Tensor::<2>::random([21, k], Distribution::Normal(0.0, 1.0), &dev);
            let (x_host, w_host) = (host(x.clone()), host(w.clone()));
            let want = reference(&x_host, &w_host, k, n);
            let chain = fma_chain(&x_host, &w_host, k, n);
            for kernels in families() {
                let packed = PackedWeight::for_kernels(&w, kernels).unwrap();
                assert_eq!(packed.format(), Format::F32, "random weights, k {k}, n {n}");
                let got = host(packed.matmul(&x).unwrap());
                assert_eq!(got, chain, "{kernels:?}, k {k}, n {n}");
                for (g, w) in got.iter().zip(&want) {
                    let err = (f64::from(*g) - w).abs();
                    assert!(
                        err <= 1e-5 * k as f64 * (1.0 + w.abs()),
                        "{kernels:?}: {g} vs {w}"
                    );
                }
                for rows in 1..=20 {
                    let first = 20 - rows;
                    let part = host(packed.matmul(&x.clone().narrow(0, first, rows)).unwrap());
                    let rows_of = &got[first * n..21 * n - n];
                    assert_eq!(part, rows_of, "{kernels:?}, rows {first}..20, k {k}, n {n}");
                }
                let one_thread = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap()
                    .install(|| host(packed.matmul(&x).unwrap()));
                assert_eq!(one_thread, got, "{kernels:?}, 1 thread, k {k}, n {n}");
            }
        }
    }

    #[test]
    fn a_mismatched_width_is_refused() {
        let dev = test_device();
        let w = Tensor::<2>::random([8, 64], Distribution::Default, &dev);
        for kernels in families() {
            let packed = PackedWeight::for_kernels(&w, kernels).unwrap();
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
                for kernels in families() {
                    let packed = PackedWeight::for_kernels(&tensor, kernels).unwrap();
                    assert_eq!(packed.format(), format, "k {k}, n {n}");
                    let plain = PackedWeight::pack(&w, k, n, Format::F32, kernels).unwrap();
                    let x = Tensor::<2>::random([20, k], Distribution::Normal(0.0, 1.0), &dev);
                    for rows in 1..=20 {
                        let x = x.clone().narrow(0, 0, rows);
                        assert_eq!(
                            host(packed.matmul(&x).unwrap()),
                            host(plain.matmul(&x).unwrap()),
                            "{kernels:?}, {format:?}, rows {rows}, k {k}, n {n}"
                        );
                    }
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
            for kernels in families() {
                let packed = PackedWeight::for_kernels(&tensor, kernels).unwrap();
                assert_eq!(packed.format(), Format::F32, "{kernels:?}, {t:?}");
            }
        }
    }
}
