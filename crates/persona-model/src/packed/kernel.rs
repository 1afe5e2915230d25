//! The packed products' kernels, chosen by CPU features at run time, and
//! the panel range a kernel call works on.

use super::format::{Format, Line, PANEL};

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Consecutive panels of one product and where their results go.
#[derive(Clone, Copy)]
pub(super) struct PanelRange {
    /// The weight's `k`.
    pub(super) k: usize,
    /// Lines per panel.
    pub(super) panel_lines: usize,
    /// The first panel's first line.
    pub(super) panels: *const Line,
    pub(super) n_panels: usize,
    /// Output columns to write (`<= 16 * n_panels`; the last panel of a
    /// weight can be partly padding).
    pub(super) cols: usize,
    /// `x` transposed, `[k, rows]`.
    pub(super) xt: *const f32,
    /// Row 0 of the first panel's output columns; rows `ld_out` apart.
    pub(super) out: *mut f32,
    pub(super) ld_out: usize,
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

/// Whether this CPU has a packed kernel.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[r, c] = sum_l xt[l, r] * w[l, c]` for `r < rows` and the range's
/// columns, on this CPU's kernel.
///
/// # Safety
/// [`available`] must hold, and the range must be as `avx512::panels`
/// requires (panels in `format`, `xt` of `k * rows` floats, `1 <= rows <=
/// 16`, `out` valid for `rows` rows of `cols` floats).
pub(super) unsafe fn panels(format: Format, range: PanelRange, rows: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as above.
    unsafe {
        avx512::panels(format, range, rows)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (format, range, rows);
        unreachable!("PackedWeight::new returns None without a kernel")
    }
}
