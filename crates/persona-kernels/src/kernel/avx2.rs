//! The AVX2 + FMA kernels (x86-64-v3): the AVX-512 kernels' arithmetic on
//! 8-lane registers. A 16-column panel is two halves of 8 columns; a call
//! covers up to 8 rows times a group of halves, one accumulator register
//! per row and half, and more rows are done in chunks of at most 8.
//!
//! Each output is the same fused multiply-add chain over `l = 0..k` as in
//! the AVX-512 kernels, with the weights rebuilt by the same operations, so
//! both families give the same bits.
//!
//! Like the AVX-512 kernels, these are loop nests that must stay in
//! registers, so they are not split further.

use std::arch::x86_64::{
    __m128i, __m256, _MM_HINT_T0, _mm_load_si128, _mm_loadl_epi64, _mm_prefetch, _mm256_and_si256,
    _mm256_cmpgt_epi32, _mm256_cvtepi8_epi32, _mm256_cvtepi32_ps, _mm256_cvtepu8_epi32,
    _mm256_cvtph_ps, _mm256_fmadd_ps, _mm256_load_ps, _mm256_maskstore_ps, _mm256_mul_ps,
    _mm256_set1_epi32, _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_ps, _mm256_srli_epi32,
    _mm256_storeu_ps,
};

use super::PanelRange;
use super::slices::{Slices, row_chunks, slices_for};
use crate::format::{BLOCK, Format, LINE_BYTES, Line, PANEL, Q4_1_LINES, Q8_0_LINES};

/// Columns per half panel: one AVX2 register of f32.
const HALF: usize = PANEL / 2;

/// Rows per kernel call: 8 rows of accumulators leave room in the 16
/// registers for the loaded weights.
const MAX_ROWS: usize = 8;

/// How far ahead of its loads the f32 kernel prefetches, in lines (as in
/// the AVX-512 kernel).
const PREFETCH_LINES: usize = 64;

pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

type Halves = Slices<HALF>;

/// `out[r, c] = sum_l xt[l, r] * w[l, c]` for `r < rows` and the range's
/// columns.
///
/// # Safety
/// AVX2, FMA and F16C must be available; otherwise as
/// `super::avx512::panels`.
pub(super) unsafe fn panels(format: Format, range: PanelRange, rows: usize) {
    // SAFETY: as above; each chunk keeps to its rows and slices.
    unsafe { row_chunks(range, rows, MAX_ROWS, |h, rows| chunk(format, h, rows)) }
}

/// [`panels`] for one chunk of `1 <= rows <= 8` rows.
///
/// # Safety
/// As [`panels`].
unsafe fn chunk(format: Format, halves: Halves, rows: usize) {
    dispatch!(
        format,
        rows,
        slices_for(halves),
        f32_kernel / f32_group,
        block_kernel / block_group,
        [1 2 3 4 5 6 7 8]
    )
}

/// Halves per [`f32_kernel`] call for `rows` rows: `rows x group`
/// accumulators, `group` loaded lines and the broadcast value within the
/// 16 registers.
const fn f32_group(rows: usize) -> usize {
    match rows {
        1..=2 => 4,
        3 => 3,
        4..=6 => 2,
        _ => 1,
    }
}

/// Halves per [`block_kernel`] call: as [`f32_group`], with room for each
/// half's scales, minima and two rebuilt lines.
const fn block_group(rows: usize) -> usize {
    match rows {
        1..=2 => 2,
        _ => 1,
    }
}

/// `acc[r][q] += xt[l, r] * line[q]`, one fused multiply-add each.
///
/// # Safety
/// `xt` points at row 0's value of one `l`, rows 1.. following it.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn multiply_add<const ROWS: usize, const GROUP: usize>(
    acc: &mut [[__m256; GROUP]; ROWS],
    xt: *const f32,
    line: &[__m256; GROUP],
) {
    for (r, acc) in acc.iter_mut().enumerate() {
        // SAFETY: as above.
        let x = _mm256_set1_ps(unsafe { *xt.add(r) });
        for (acc, &line) in acc.iter_mut().zip(line) {
            *acc = _mm256_fmadd_ps(x, line, *acc);
        }
    }
}

/// Writes each half's columns of `ROWS` rows.
///
/// # Safety
/// As [`panels`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store<const ROWS: usize, const GROUP: usize>(
    acc: &[[__m256; GROUP]; ROWS],
    halves: &Halves,
) {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (r, acc) in acc.iter().enumerate() {
        for (q, &acc) in acc.iter().enumerate() {
            let c = halves.cols(q);
            // SAFETY: row `r`, the half's `c` columns are in `out`.
            unsafe {
                let at = halves.out(r, q);
                if c == HALF {
                    _mm256_storeu_ps(at, acc);
                } else {
                    // Lanes below `c` have their sign bit set.
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(c as i32), lanes);
                    _mm256_maskstore_ps(at, mask, acc);
                }
            }
        }
    }
}

/// One pass over `GROUP` f32 halves: `ROWS x GROUP` accumulators, each a
/// fused multiply-add chain over `l = 0..k`.
///
/// # Safety
/// As [`panels`], with at least `GROUP` halves left.
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_kernel<const ROWS: usize, const GROUP: usize>(halves: Halves) {
    let mut acc = [[_mm256_setzero_ps(); GROUP]; ROWS];
    for l in 0..halves.range.k {
        let mut line = [_mm256_setzero_ps(); GROUP];
        for (q, line) in line.iter_mut().enumerate() {
            let at = halves.line(q, l).wrapping_add(32 * halves.side(q));
            // A prefetch never faults (see the AVX-512 kernel).
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_LINES * LINE_BYTES).cast());
            // SAFETY: line `l` of the half is in range, 32-byte aligned.
            *line = unsafe { _mm256_load_ps(at.cast()) };
        }
        // SAFETY: `xt` holds `k` steps of `ld_x` floats.
        unsafe { multiply_add(&mut acc, halves.xt.add(l * halves.ld_x), &line) };
    }
    // SAFETY: as [`panels`].
    unsafe { store(&acc, &halves) };
}

/// [`f32_kernel`] for Q4_1 (`Q4`) or Q8_0 halves: each block's weights
/// rebuilt in registers as `q * d + m` (one fused multiply-add; `q * d` is
/// exact) or `q * d`, as the AVX-512 kernel does, so the products are
/// bit-identical to f32 panels of the dequantised weights.
///
/// # Safety
/// As [`panels`], with at least `GROUP` halves left.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_kernel<const Q4: bool, const ROWS: usize, const GROUP: usize>(halves: Halves) {
    let block_lines = if Q4 { Q4_1_LINES } else { Q8_0_LINES };
    let low_nibble = _mm256_set1_epi32(0x0f);
    let mut acc = [[_mm256_setzero_ps(); GROUP]; ROWS];
    for b in 0..halves.range.k / BLOCK {
        let mut scale = [_mm256_setzero_ps(); GROUP];
        let mut min = [_mm256_setzero_ps(); GROUP];
        let mut data = [std::ptr::null::<u8>(); GROUP];
        for q in 0..GROUP {
            let block = halves.line(q, b * block_lines);
            // The same block of the panel after the group's (read next;
            // see the AVX-512 kernel). Never faults.
            let ahead = block.wrapping_add(halves.range.panel_lines * LINE_BYTES);
            for i in 0..block_lines {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(i * LINE_BYTES).cast());
            }
            let side = halves.side(q);
            // SAFETY: block `b` of the half's panel is in range; its first
            // line holds 16 scales, then (Q4_1) 16 minima, as f16: this
            // half's 8 are 16 bytes in, 16-byte aligned.
            unsafe {
                let header = block.add(16 * side).cast::<__m128i>();
                scale[q] = _mm256_cvtph_ps(_mm_load_si128(header));
                if Q4 {
                    min[q] = _mm256_cvtph_ps(_mm_load_si128(header.add(2)));
                }
            }
            data[q] = block.wrapping_add(LINE_BYTES + HALF * side);
        }
        // SAFETY (every load below): the half's 8 bytes of one 16-byte
        // step inside the block's data lines.
        let load = |q: usize, i: usize| unsafe { _mm_loadl_epi64(data[q].add(16 * i).cast()) };
        let xt = halves.xt.wrapping_add(b * BLOCK * halves.ld_x);
        if Q4 {
            for i in 0..BLOCK / 2 {
                let mut even = [_mm256_setzero_ps(); GROUP];
                let mut odd = [_mm256_setzero_ps(); GROUP];
                for q in 0..GROUP {
                    let bytes = _mm256_cvtepu8_epi32(load(q, i));
                    let lo = _mm256_cvtepi32_ps(_mm256_and_si256(bytes, low_nibble));
                    let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(bytes));
                    even[q] = _mm256_fmadd_ps(lo, scale[q], min[q]);
                    odd[q] = _mm256_fmadd_ps(hi, scale[q], min[q]);
                }
                // SAFETY: `xt` holds `k` steps of `ld_x` floats.
                unsafe {
                    multiply_add(&mut acc, xt.add(2 * i * halves.ld_x), &even);
                    multiply_add(&mut acc, xt.add((2 * i + 1) * halves.ld_x), &odd);
                }
            }
        } else {
            for l in 0..BLOCK {
                let mut line = [_mm256_setzero_ps(); GROUP];
                for (q, line) in line.iter_mut().enumerate() {
                    let q8 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load(q, l)));
                    *line = _mm256_mul_ps(q8, scale[q]);
                }
                // SAFETY: `xt` holds `k` steps of `ld_x` floats.
                unsafe { multiply_add(&mut acc, xt.add(l * halves.ld_x), &line) };
            }
        }
    }
    // SAFETY: as [`panels`].
    unsafe { store(&acc, &halves) };
}

// `Line` is what the panel pointers point at; its alignment makes every
// 32-byte half of a line and every 16-byte step of a block aligned.
const _: () = assert!(std::mem::align_of::<Line>() == LINE_BYTES);
