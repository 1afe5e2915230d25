//! The bookkeeping of kernels whose registers are narrower than a panel
//! (AVX2: 8 lanes, NEON: 4): a 16-column panel is `16 / W` slices of `W`
//! columns, a call covers a group of slices for a chunk of rows, and the
//! rows of a product are split into chunks that fit the registers.

use super::PanelRange;
use crate::format::PANEL;

/// Consecutive `W`-column slices of one panel range and the rows they are
/// multiplied by.
#[derive(Clone, Copy)]
pub(super) struct Slices<const W: usize> {
    pub(super) range: PanelRange,
    /// The first slice, counted from the range's first panel.
    first: usize,
    /// Slices left in the range from `first` (padding slices excluded).
    count: usize,
    /// The chunk's first row's value of `l = 0` in `xt`.
    pub(super) xt: *const f32,
    /// Floats per `l` in `xt` (all the product's rows).
    pub(super) ld_x: usize,
    /// The chunk's first row of `out`.
    out: *mut f32,
}

impl<const W: usize> Slices<W> {
    /// The start of line `line` of slice `s`'s panel; the slice's own
    /// columns lie [`Self::side`] parts into each section of the line.
    pub(super) fn line(&self, s: usize, line: usize) -> *const u8 {
        self.range
            .panels
            .wrapping_add((self.first + s) / (PANEL / W) * self.range.panel_lines + line)
            .cast::<u8>()
    }

    /// Which slice of its panel `s` is (`0 .. 16 / W`).
    pub(super) fn side(&self, s: usize) -> usize {
        (self.first + s) % (PANEL / W)
    }

    /// Output columns of slice `s` (`W`, fewer in the last).
    pub(super) fn cols(&self, s: usize) -> usize {
        self.range.cols.saturating_sub((self.first + s) * W).min(W)
    }

    /// Row `r` of the chunk's output at slice `s`'s first column.
    pub(super) fn out(&self, r: usize, s: usize) -> *mut f32 {
        self.out
            .wrapping_add(r * self.range.ld_out + (self.first + s) * W)
    }

    fn skip(self, s: usize) -> Self {
        Self {
            first: self.first + s,
            count: self.count - s,
            ..self
        }
    }
}

/// Calls `chunk(slices, chunk_rows)` for the range's rows split into
/// `ceil(rows / max_rows)` chunks of nearly equal size, each chunk over
/// all the range's slices.
///
/// # Safety
/// `range.xt` must hold `k * rows` floats and `range.out` be valid for
/// `rows` rows (as the kernels require), and `chunk` must keep to the rows
/// and slices it is given.
pub(super) unsafe fn row_chunks<const W: usize>(
    range: PanelRange,
    rows: usize,
    max_rows: usize,
    mut chunk: impl FnMut(Slices<W>, usize),
) {
    let chunks = rows.div_ceil(max_rows);
    let mut row = 0;
    for c in 0..chunks {
        let chunk_rows = (rows - row).div_ceil(chunks - c);
        chunk(
            Slices {
                range,
                first: 0,
                count: range.cols.div_ceil(W),
                xt: range.xt.wrapping_add(row),
                ld_x: rows,
                out: range.out.wrapping_add(row * range.ld_out),
            },
            chunk_rows,
        );
        row += chunk_rows;
    }
}

/// Runs `wide` (a kernel over `group` slices) along the slices, and
/// `single` (the same over one slice) on the last `count mod group`.
///
/// # Safety
/// Both kernels must be safe to call on any `group` (`wide`) or one
/// (`single`) of the slices left.
pub(super) unsafe fn slices_for<const W: usize>(
    slices: Slices<W>,
    group: usize,
    wide: unsafe fn(Slices<W>),
    single: unsafe fn(Slices<W>),
) {
    let mut s = 0;
    while s < slices.count {
        // SAFETY: `s < count`; the kernels read and write only the slices
        // (and their columns) left.
        unsafe {
            if slices.count - s >= group {
                wide(slices.skip(s));
                s += group;
            } else {
                single(slices.skip(s));
                s += 1;
            }
        }
    }
}
