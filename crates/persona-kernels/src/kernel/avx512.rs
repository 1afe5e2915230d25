//! The AVX-512 kernels: up to 16 rows times a group of 16-column panels per
//! call, one accumulator register per row and panel, weights rebuilt in
//! registers from their panel format.
//!
//! The kernels are long, macro-heavy and unsafe by nature: each is one
//! loop nest that must stay in registers, so they are not split further.

use std::arch::x86_64::{
    __m128i, __m256i, __m512, _MM_HINT_T0, _mm_load_si128, _mm_prefetch, _mm256_load_si256,
    _mm512_and_si512, _mm512_cvtepi8_epi32, _mm512_cvtepi32_ps, _mm512_cvtepu8_epi32,
    _mm512_cvtph_ps, _mm512_fmadd_ps, _mm512_load_ps, _mm512_mask_storeu_ps, _mm512_mul_ps,
    _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps, _mm512_srli_epi32,
};

use super::PanelRange;
use crate::format::{BLOCK, Format, LINE_BYTES, PANEL, Q4_1_LINES, Q8_0_LINES};

/// How far ahead of its loads the f32 kernel prefetches a panel, in
/// lines (64 lines = 4 KiB): far enough that memory keeps up at 16 rows,
/// within the range that measured best (benches/RESULTS.md).
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
    dispatch!(
        format,
        rows,
        panels_for(range),
        f32_kernel / f32_group,
        block_kernel / block_group,
        [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16]
    )
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

/// [`f32_kernel`] for Q4_1 (`Q4`) or Q8_0 panels: each block's weights
/// are rebuilt in registers as `q * d + m` (Q4_1) or `q * d` (Q8_0),
/// rounded as in the dequantiser, so the products are bit-identical to
/// f32 panels of the dequantised weights.
///
/// # Safety
/// As [`panels`], with at least `GROUP` panels in the range.
#[target_feature(enable = "avx512f")]
unsafe fn block_kernel<const Q4: bool, const ROWS: usize, const GROUP: usize>(range: PanelRange) {
    let block_lines = if Q4 { Q4_1_LINES } else { Q8_0_LINES };
    // Block panels are short (SmolLM2: 90-240 lines), so the prefetch
    // goes to the same block of the panel one group further on (the
    // panels read next), not a fixed distance ahead, which would mostly
    // land in the group's own next panel (a few percent faster:
    // benches/RESULTS.md).
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
        let load =
            |q: usize, i: usize| unsafe { _mm_load_si128(data[q].add(16 * i).cast::<__m128i>()) };
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
