//! Frozen weights repacked once for products with few rows (decoding), on
//! the CPU: `format` (the panel formats and packing), `kernel` (the CPU
//! kernels and their dispatch), and [`PackedMatrix`] here (building a
//! packed copy and running a product over it), all on plain host slices.
//! It is its own crate, free of burn, so the kernels of every CPU family
//! build and test on their own (the NEON ones under AArch64 emulation in a
//! minute). The model (`persona-model`'s `packed` module and
//! `model::linear::Weight`) decides when to use it.
//!
//! A decoding step multiplies a few rows (one per sequence) by every weight
//! matrix, so it is bound by reading the weights from memory. gemm, under
//! burn's CPU backend, copies ("packs") each `[k, n]` weight into panels on
//! every call before its kernel runs, so the weights are read, written and
//! read again every step; and its kernel covers at most 6 rows, so a batch
//! of 16 passes over each panel three times. [`PackedMatrix`] keeps the
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
//! as Q8_0, or as Q4_1 when every block also reaches `7 d`: `q - 8 = -8`);
//! blocks from other quantisers may not be found
//! and then stay f32. The kernels rebuild each weight in registers with the
//! same f32 arithmetic as the dequantiser, so the format changes the bytes
//! read per decoding step (SmolLM2: 540 -> 98 MB), never a result.
//!
//! On x86-64 CPUs with AVX-512F or AVX2 + FMA + F16C and on AArch64 (NEON)
//! (checked at run time, or forced with `PERSONA_CPU_KERNELS`:
//! [`CpuKernels`]); elsewhere [`PackedMatrix::pack`] returns `None` and
//! callers use burn's matmul.

mod format;
mod kernel;

use std::sync::atomic::{AtomicBool, Ordering};

pub use format::Format;
use format::{BLOCK, LINE_BYTES, Line, PANEL, pack_panel};
use kernel::PanelRange;
pub use kernel::{CPU_KERNELS_VAR, CpuKernels, KernelChoiceError};

/// Panel ranges per rayon thread in one product (see
/// [`PackedMatrix::run_group`]), each at least [`MIN_RANGE_PANELS`] panels.
const RANGES_PER_THREAD: usize = 4;
const MIN_RANGE_PANELS: usize = 4;

/// Rows of `x` one kernel call multiplies (one accumulator register each);
/// more rows are done in groups of this many.
const MAX_GROUP_ROWS: usize = 16;

/// A `[k, n]` weight as `ceil(n / 16)` panels of `panel_lines` [`Line`]s in
/// `format`.
pub struct PackedMatrix {
    k: usize,
    n: usize,
    format: Format,
    kernels: CpuKernels,
    panel_lines: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix [{}, {}] {:?}", self.k, self.n, self.format)
    }
}

impl PackedMatrix {
    /// Packs `w` (`[k, n]`, row-major) in the first of Q4_1, Q8_0 and f32
    /// that holds every value exactly, for `kernels`. `None` when `kernels`
    /// are generic or not supported by this CPU, or `w` is not `k * n`
    /// values.
    pub fn pack(w: &[f32], k: usize, n: usize, kernels: CpuKernels) -> Option<Self> {
        if kernels == CpuKernels::Generic || !kernels.supported() || k.checked_mul(n)? != w.len() {
            return None;
        }
        let formats: &[Format] = if k > 0 && k.is_multiple_of(BLOCK) {
            &[Format::Q4_1, Format::Q8_0, Format::F32]
        } else {
            &[Format::F32]
        };
        formats
            .iter()
            .find_map(|&f| Self::pack_as(w, k, n, f, kernels))
    }

    /// `w` (`[k, n]`, row-major) in `format`, or `None` when some value is
    /// not exactly representable in it (never for [`Format::F32`]).
    fn pack_as(w: &[f32], k: usize, n: usize, format: Format, kernels: CpuKernels) -> Option<Self> {
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
            // initialiser (the model's `Weight`), where a rayon job could
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

    pub fn format(&self) -> Format {
        self.format
    }

    /// `(k, n)`: the matrix is `[k, n]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Bytes the panels take (what a decoding step reads).
    pub fn bytes(&self) -> usize {
        self.lines.len() * LINE_BYTES
    }

    /// `x @ w`, row-major. `None` (nothing computed) when `x` is not `m`
    /// rows of width `k`.
    ///
    /// # Shapes
    /// `x`: `[m, k]` -> `[m, n]`
    pub fn matmul(&self, x_host: &[f32], m: usize) -> Option<Vec<f32>> {
        let k = self.k;
        if m.checked_mul(k)? != x_host.len() {
            return None;
        }
        let len = m.checked_mul(self.n)?;
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
        Some(out)
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
// SAFETY: see `PackedMatrix::run_group`: each block is written by one
// thread only.
unsafe impl Sync for SharedOut {}

#[cfg(test)]
mod tests {
    use half::f16;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::{CpuKernels, Format, PackedMatrix};

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

    fn normal(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        // A sum of uniforms: roughly normal, enough for products' rounding.
        (0..len)
            .map(|_| (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() * 0.85)
            .collect()
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
    /// (within f32 rounding of `k` terms), for widths that are and are not
    /// a multiple of the panel width and for panel counts that do and do
    /// not fill the kernels' groups; each row's result is the same bits
    /// whatever other rows share the product (1 to 21 rows: one and two
    /// row groups, every kernel shape), whatever the thread count and
    /// whatever the family.
    #[test]
    fn packed_products_are_the_fma_chain_and_do_not_depend_on_the_batch() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (k, n) in [(96, 128), (70, 200), (33, 7), (17, 16 * 7 + 3), (40, 8)] {
            let w = normal(k * n, &mut rng);
            let x = normal(21 * k, &mut rng);
            let want = reference(&x, &w, k, n);
            let chain = fma_chain(&x, &w, k, n);
            for kernels in families() {
                let packed = PackedMatrix::pack(&w, k, n, kernels).unwrap();
                assert_eq!(packed.format(), Format::F32, "random weights, k {k}, n {n}");
                let got = packed.matmul(&x, 21).unwrap();
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
                    let part = packed.matmul(&x[first * k..20 * k], rows).unwrap();
                    let rows_of = &got[first * n..20 * n];
                    assert_eq!(part, rows_of, "{kernels:?}, rows {first}..20, k {k}, n {n}");
                }
                let one_thread = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap()
                    .install(|| packed.matmul(&x, 21).unwrap());
                assert_eq!(one_thread, got, "{kernels:?}, 1 thread, k {k}, n {n}");
            }
        }
    }

    #[test]
    fn a_mismatched_input_is_refused() {
        let w = vec![0.5f32; 8 * 64];
        for kernels in families() {
            let packed = PackedMatrix::pack(&w, 8, 64, kernels).unwrap();
            assert!(packed.matmul(&[0.0; 2 * 9], 2).is_none());
            assert!(PackedMatrix::pack(&w, 8, 65, kernels).is_none());
        }
        assert!(PackedMatrix::pack(&w, 8, 64, CpuKernels::Generic).is_none());
    }

    /// A random `[k, n]` weight whose blocks of 32 along `k` lie on the
    /// grid of `format`, with the block's extremes on the grid's ends as
    /// ggml's reference quantisers put them (Q4_1: `q = 0` and `15`; Q8_0:
    /// `|q| = 127`; `q4_0` Q4_0 blocks: `q - 8 = -8`, kept as Q8_0), each
    /// value computed as the dequantiser does (`q * d + m`, `q * d`); one
    /// block in ten constant (Q4_1 with scale 0). Also returns the format
    /// the packer must choose: a Q4_0 block whose values reach `7 d` is
    /// exactly a Q4_1 block too (`m = -8 d`), so a Q4_0 weight all of whose
    /// blocks do is packed as the more compact Q4_1, any other as Q8_0.
    fn block_weight(
        format: Format,
        q4_0: bool,
        k: usize,
        n: usize,
        seed: u64,
    ) -> (Vec<f32>, Format) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut w = vec![0f32; k * n];
        let mut all_reach_top = true;
        for c in 0..n {
            for b in 0..k / 32 {
                let constant = rng.random_bool(0.1);
                let d = if constant && format == Format::Q4_1 {
                    0.0
                } else {
                    f16::from_f32(rng.random_range(0.01..0.1)).to_f32()
                };
                let m = f16::from_f32(rng.random_range(-1.0..0.0)).to_f32();
                let mut qs: Vec<i32> = (0..32)
                    .map(|_| match (format, q4_0) {
                        (Format::Q4_1, _) => rng.random_range(0..16),
                        (_, true) => rng.random_range(-8..8),
                        _ => rng.random_range(-127..128),
                    })
                    .collect();
                match (format, q4_0) {
                    (Format::Q4_1, _) => (qs[0], qs[1]) = (0, 15),
                    (_, true) => qs[0] = -8,
                    _ => qs[0] = if rng.random_bool(0.5) { 127 } else { -127 },
                }
                if constant {
                    // Q4_1: scale 0, every value `m`; Q8_0: every `q` at the
                    // grid's end.
                    qs = vec![qs[0]; 32];
                }
                all_reach_top &= qs.contains(&7);
                for (j, q) in qs.into_iter().enumerate() {
                    w[(b * 32 + j) * n + c] = if format == Format::Q4_1 {
                        q as f32 * d + m
                    } else {
                        q as f32 * d
                    };
                }
            }
        }
        let packed_as = if q4_0 && all_reach_top {
            Format::Q4_1
        } else {
            format
        };
        (w, packed_as)
    }

    /// Weights on the Q4_1 / Q8_0 / Q4_0 grids are packed as Q4_1 / Q8_0 /
    /// Q8_0 (or Q4_1, see [`block_weight`]), and their products are bit for
    /// bit those of f32 panels of the same weights, for every row count.
    #[test]
    fn block_weights_pack_as_blocks_with_the_same_bits_as_f32() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for (format, q4_0) in [
            (Format::Q4_1, false),
            (Format::Q8_0, false),
            (Format::Q8_0, true),
        ] {
            for (k, n) in [(64, 48), (96, 16 * 9 + 3), (32, 7)] {
                let (w, packed_as) = block_weight(format, q4_0, k, n, k as u64 + n as u64);
                for kernels in families() {
                    let packed = PackedMatrix::pack(&w, k, n, kernels).unwrap();
                    assert_eq!(packed.format(), packed_as, "k {k}, n {n}, q4_0 {q4_0}");
                    let plain = PackedMatrix::pack_as(&w, k, n, Format::F32, kernels).unwrap();
                    let x = normal(20 * k, &mut rng);
                    for rows in 1..=20 {
                        let x = &x[..rows * k];
                        assert_eq!(
                            packed.matmul(x, rows).unwrap(),
                            plain.matmul(x, rows).unwrap(),
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
        for (format, q4_0) in [
            (Format::Q4_1, false),
            (Format::Q8_0, false),
            (Format::Q8_0, true),
        ] {
            let (k, n) = (64, 32);
            let (mut w, _) = block_weight(format, q4_0, k, n, 7);
            let i = 40 * n + 5;
            w[i] = f32::from_bits(w[i].to_bits() + 1);
            for kernels in families() {
                let packed = PackedMatrix::pack(&w, k, n, kernels).unwrap();
                assert_eq!(packed.format(), Format::F32, "{kernels:?}, {format:?}");
            }
        }
    }
}
