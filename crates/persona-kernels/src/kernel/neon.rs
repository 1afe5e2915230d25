//! The NEON kernels (AArch64): the AVX-512 kernels' arithmetic on 4-lane
//! registers. A 16-column panel is four quarters of 4 columns; a call
//! covers up to 8 rows times a group of quarters, one accumulator register
//! per row and quarter, and more rows are done in chunks of at most 8.
//!
//! Each output is the same fused multiply-add chain over `l = 0..k` as in
//! the x86 kernels, with the weights rebuilt by the same operations
//! (`vfmaq_f32` is fused, `vmulq_f32` rounds once, f16 -> f32 is exact), so
//! every family gives the same bits. No software prefetch: stable Rust has
//! none on AArch64, and the cores' stream prefetchers follow the panels.
//!
//! Like the x86 kernels, these are loop nests that must stay in registers,
//! so they are not split further.

use std::arch::aarch64::{
    float32x4_t, vandq_u32, vcvtq_f32_s32, vcvtq_f32_u32, vdup_n_u32, vdupq_n_f32, vdupq_n_u32,
    vfmaq_f32, vget_low_s16, vget_low_u16, vld1q_f32, vmovl_s8, vmovl_s16, vmovl_u8, vmovl_u16,
    vmulq_f32, vreinterpret_s8_u32, vreinterpret_u8_u32, vshrq_n_u32, vst1q_f32,
};

use half::f16;

use super::PanelRange;
use super::slices::{Slices, row_chunks, slices_for};
use crate::format::{BLOCK, Format, LINE_BYTES, PANEL, Q4_1_LINES, Q8_0_LINES};

/// Columns per quarter panel: one NEON register of f32.
const QUARTER: usize = PANEL / 4;

/// Rows per kernel call: 8 rows of accumulators leave room in the 32
/// registers for a group of quarters and their weights.
const MAX_ROWS: usize = 8;

pub(super) fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

type Quarters = Slices<QUARTER>;

/// `out[r, c] = sum_l xt[l, r] * w[l, c]` for `r < rows` and the range's
/// columns.
///
/// # Safety
/// NEON must be available; otherwise as the AVX-512 kernels' `panels`.
pub(super) unsafe fn panels(format: Format, range: PanelRange, rows: usize) {
    // SAFETY: as above; each chunk keeps to its rows and slices.
    unsafe { row_chunks(range, rows, MAX_ROWS, |q, rows| chunk(format, q, rows)) }
}

/// [`panels`] for one chunk of `1 <= rows <= 8` rows.
///
/// # Safety
/// As [`panels`].
unsafe fn chunk(format: Format, quarters: Quarters, rows: usize) {
    dispatch!(
        format,
        rows,
        slices_for(quarters),
        f32_kernel / f32_group,
        block_kernel / block_group,
        [1 2 3 4 5 6 7 8]
    )
}

/// Quarters per [`f32_kernel`] call for `rows` rows: `rows x group`
/// accumulators and `group` loaded lines within the 32 registers.
const fn f32_group(rows: usize) -> usize {
    match rows {
        1..=2 => 8,
        3..=6 => 4,
        _ => 3,
    }
}

/// Quarters per [`block_kernel`] call: as [`f32_group`], with room for
/// each quarter's scales, minima and two rebuilt lines.
const fn block_group(rows: usize) -> usize {
    match rows {
        1..=2 => 4,
        3..=4 => 3,
        _ => 2,
    }
}

/// `acc[r][q] += xt[l, r] * line[q]`, one fused multiply-add each.
///
/// # Safety
/// `xt` points at row 0's value of one `l`, rows 1.. following it.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn multiply_add<const ROWS: usize, const GROUP: usize>(
    acc: &mut [[float32x4_t; GROUP]; ROWS],
    xt: *const f32,
    line: &[float32x4_t; GROUP],
) {
    for (r, acc) in acc.iter_mut().enumerate() {
        // SAFETY: as above.
        let x = vdupq_n_f32(unsafe { *xt.add(r) });
        for (acc, &line) in acc.iter_mut().zip(line) {
            *acc = vfmaq_f32(*acc, x, line);
        }
    }
}

/// Writes each quarter's columns of `ROWS` rows.
///
/// # Safety
/// As [`panels`].
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store<const ROWS: usize, const GROUP: usize>(
    acc: &[[float32x4_t; GROUP]; ROWS],
    quarters: &Quarters,
) {
    for (r, acc) in acc.iter().enumerate() {
        for (q, &acc) in acc.iter().enumerate() {
            let c = quarters.cols(q);
            // SAFETY: row `r`, the quarter's `c` columns are in `out`.
            unsafe {
                let at = quarters.out(r, q);
                if c == QUARTER {
                    vst1q_f32(at, acc);
                } else {
                    let mut lanes = [0f32; QUARTER];
                    vst1q_f32(lanes.as_mut_ptr(), acc);
                    std::ptr::copy_nonoverlapping(lanes.as_ptr(), at, c);
                }
            }
        }
    }
}

/// One pass over `GROUP` f32 quarters: `ROWS x GROUP` accumulators, each a
/// fused multiply-add chain over `l = 0..k`.
///
/// # Safety
/// As [`panels`], with at least `GROUP` quarters left.
#[target_feature(enable = "neon")]
unsafe fn f32_kernel<const ROWS: usize, const GROUP: usize>(quarters: Quarters) {
    let mut acc = [[vdupq_n_f32(0.0); GROUP]; ROWS];
    for l in 0..quarters.range.k {
        let mut line = [vdupq_n_f32(0.0); GROUP];
        for (q, line) in line.iter_mut().enumerate() {
            let at = quarters.line(q, l).wrapping_add(16 * quarters.side(q));
            // SAFETY: line `l` of the quarter is in range.
            *line = unsafe { vld1q_f32(at.cast()) };
        }
        // SAFETY: `xt` holds `k` steps of `ld_x` floats.
        unsafe { multiply_add(&mut acc, quarters.xt.add(l * quarters.ld_x), &line) };
    }
    // SAFETY: as [`panels`].
    unsafe { store(&acc, &quarters) };
}

/// Four f16 values at `at` as f32 lanes (exact).
///
/// # Safety
/// `at` must be valid for 8 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn f16x4(at: *const u8) -> float32x4_t {
    // SAFETY: as above.
    let bits = unsafe { std::ptr::read_unaligned(at.cast::<[u16; 4]>()) };
    let values = bits.map(|b| f16::from_bits(b).to_f32());
    // SAFETY: `values` holds 4 floats.
    unsafe { vld1q_f32(values.as_ptr()) }
}

/// [`f32_kernel`] for Q4_1 (`Q4`) or Q8_0 quarters: each block's weights
/// rebuilt in registers as `q * d + m` (one fused multiply-add; `q * d` is
/// exact) or `q * d`, as the x86 kernels do, so the products are
/// bit-identical to f32 panels of the dequantised weights.
///
/// # Safety
/// As [`panels`], with at least `GROUP` quarters left.
#[target_feature(enable = "neon")]
unsafe fn block_kernel<const Q4: bool, const ROWS: usize, const GROUP: usize>(quarters: Quarters) {
    let block_lines = if Q4 { Q4_1_LINES } else { Q8_0_LINES };
    let low_nibble = vdupq_n_u32(0x0f);
    let mut acc = [[vdupq_n_f32(0.0); GROUP]; ROWS];
    for b in 0..quarters.range.k / BLOCK {
        let mut scale = [vdupq_n_f32(0.0); GROUP];
        let mut min = [vdupq_n_f32(0.0); GROUP];
        let mut data = [std::ptr::null::<u8>(); GROUP];
        for q in 0..GROUP {
            let block = quarters.line(q, b * block_lines);
            let side = quarters.side(q);
            // SAFETY: block `b` of the quarter's panel is in range; its
            // first line holds 16 scales, then (Q4_1) 16 minima, as f16.
            unsafe {
                scale[q] = f16x4(block.add(8 * side));
                if Q4 {
                    min[q] = f16x4(block.add(32 + 8 * side));
                }
            }
            data[q] = block.wrapping_add(LINE_BYTES + QUARTER * side);
        }
        // The quarter's 4 bytes of one 16-byte step of the data lines.
        // SAFETY: inside the block's data lines.
        let load = |q: usize, i: usize| unsafe {
            vdup_n_u32(std::ptr::read_unaligned(data[q].add(16 * i).cast::<u32>()))
        };
        let xt = quarters.xt.wrapping_add(b * BLOCK * quarters.ld_x);
        if Q4 {
            for i in 0..BLOCK / 2 {
                let mut even = [vdupq_n_f32(0.0); GROUP];
                let mut odd = [vdupq_n_f32(0.0); GROUP];
                for q in 0..GROUP {
                    let bytes = vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(load(q, i)))));
                    let lo = vcvtq_f32_u32(vandq_u32(bytes, low_nibble));
                    let hi = vcvtq_f32_u32(vshrq_n_u32::<4>(bytes));
                    even[q] = vfmaq_f32(min[q], lo, scale[q]);
                    odd[q] = vfmaq_f32(min[q], hi, scale[q]);
                }
                // SAFETY: `xt` holds `k` steps of `ld_x` floats.
                unsafe {
                    multiply_add(&mut acc, xt.add(2 * i * quarters.ld_x), &even);
                    multiply_add(&mut acc, xt.add((2 * i + 1) * quarters.ld_x), &odd);
                }
            }
        } else {
            for l in 0..BLOCK {
                let mut line = [vdupq_n_f32(0.0); GROUP];
                for (q, line) in line.iter_mut().enumerate() {
                    let bytes = vreinterpret_s8_u32(load(q, l));
                    let q8 = vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(bytes))));
                    *line = vmulq_f32(q8, scale[q]);
                }
                // SAFETY: `xt` holds `k` steps of `ld_x` floats.
                unsafe { multiply_add(&mut acc, xt.add(l * quarters.ld_x), &line) };
            }
        }
    }
    // SAFETY: as [`panels`].
    unsafe { store(&acc, &quarters) };
}
