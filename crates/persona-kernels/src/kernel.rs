//! The packed products' kernels, one family per CPU feature level, chosen
//! at run time ([`CpuKernels`]), and the panel range a kernel call works on.

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use super::format::PANEL;
use super::format::{Format, Line};

/// A kernel family that cannot be used: [`CPU_KERNELS_VAR`] names no
/// family, or one this CPU cannot run. The message names the choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KernelChoiceError(String);

/// Runs a family's kernels for a `format` and a row count known only at
/// run time: `$run($target, GROUP, wide, single)` with the kernel made for
/// those rows over `GROUP` panels or slices (`wide`; `GROUP` from the
/// family's `$f32_group` or `$block_group` table) and over one (`single`).
/// `$block::<true, ..>` is the Q4_1 kernel, `$block::<false, ..>` the Q8_0
/// one.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! dispatch {
    ($format:expr, $rows:expr, $run:ident($target:expr),
     $f32:ident / $f32_group:ident, $block:ident / $block_group:ident, [$($r:literal)*]) => {
        match ($format, $rows) {
            $(
                (Format::F32, $r) => {
                    const GROUP: usize = $f32_group($r);
                    unsafe { $run($target, GROUP, $f32::<$r, GROUP>, $f32::<$r, 1>) }
                }
                (Format::Q4_1, $r) => {
                    const GROUP: usize = $block_group($r);
                    unsafe {
                        $run($target, GROUP, $block::<true, $r, GROUP>, $block::<true, $r, 1>)
                    }
                }
                (Format::Q8_0, $r) => {
                    const GROUP: usize = $block_group($r);
                    unsafe {
                        $run($target, GROUP, $block::<false, $r, GROUP>, $block::<false, $r, 1>)
                    }
                }
            )*
            _ => unreachable!("row counts are checked by the caller"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod slices;

/// Consecutive panels of one product and where their results go.
#[derive(Clone, Copy)]
pub(super) struct PanelRange {
    /// The weight's `k`.
    pub(super) k: usize,
    /// Lines per panel.
    pub(super) panel_lines: usize,
    /// The first panel's first line.
    pub(super) panels: *const Line,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
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
    /// The same range without its first `p` panels (the AVX-512 kernels
    /// step by panels; the narrower ones by [`slices`]).
    ///
    /// # Safety
    /// `p <= n_panels`.
    #[cfg(target_arch = "x86_64")]
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

/// The environment variable that forces a kernel family.
pub const CPU_KERNELS_VAR: &str = "PERSONA_CPU_KERNELS";

/// A family of packed decoding kernels. Every family computes each output
/// as the same fused multiply-add chain over `k`, so all of them give the
/// same bits; [`CpuKernels::Generic`] (burn's matmul) can differ from them
/// in the last bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuKernels {
    /// x86-64 with AVX-512F: 16 lanes, up to 16 rows per pass.
    Avx512,
    /// x86-64-v3 (AVX2, FMA, F16C): 8 lanes, up to 8 rows per pass.
    Avx2,
    /// AArch64 NEON: 4 lanes, up to 8 rows per pass.
    Neon,
    /// No packed kernel: every product goes through burn's matmul.
    Generic,
}

impl CpuKernels {
    /// Every family, fastest first.
    pub const ALL: [Self; 4] = [Self::Avx512, Self::Avx2, Self::Neon, Self::Generic];

    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512",
            Self::Avx2 => "avx2",
            Self::Neon => "neon",
            Self::Generic => "generic",
        }
    }

    /// Whether this CPU can run the family.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => avx512::available(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => avx2::available(),
            #[cfg(target_arch = "aarch64")]
            Self::Neon => neon::available(),
            Self::Generic => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The families this CPU can run, fastest first.
    pub fn supported_here() -> Vec<Self> {
        Self::ALL.into_iter().filter(|k| k.supported()).collect()
    }

    /// The family products use: the one [`CPU_KERNELS_VAR`] names, or the
    /// fastest this CPU supports. Read once per process; an unknown name,
    /// or a family this CPU lacks, is an error every time it is asked.
    pub fn selected() -> Result<Self, KernelChoiceError> {
        static SELECTED: OnceLock<Result<CpuKernels, String>> = OnceLock::new();
        SELECTED
            .get_or_init(|| Self::from_var(std::env::var(CPU_KERNELS_VAR).ok().as_deref()))
            .clone()
            .map_err(KernelChoiceError)
    }

    fn from_var(value: Option<&str>) -> Result<Self, String> {
        let names = || {
            Self::supported_here()
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(Self::supported_here()[0]);
        };
        let Some(kernels) = Self::ALL.into_iter().find(|k| k.name() == value) else {
            return Err(format!(
                "{CPU_KERNELS_VAR}={value} is not a kernel family; use one of {}",
                names()
            ));
        };
        if !kernels.supported() {
            return Err(format!(
                "{CPU_KERNELS_VAR}={value}: this CPU cannot run the {value} kernels; use one of {}",
                names()
            ));
        }
        Ok(kernels)
    }
}

/// `out[r, c] = sum_l xt[l, r] * w[l, c]` for `r < rows` and the range's
/// columns, on `kernels`.
///
/// # Safety
/// `kernels` must be supported and not [`CpuKernels::Generic`], and the
/// range must be as `avx512::panels` requires (panels in `format`, `xt` of
/// `k * rows` floats, `1 <= rows <= 16`, `out` valid for `rows` rows of
/// `cols` floats).
pub(super) unsafe fn panels(kernels: CpuKernels, format: Format, range: PanelRange, rows: usize) {
    match kernels {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        CpuKernels::Avx512 => unsafe { avx512::panels(format, range, rows) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        CpuKernels::Avx2 => unsafe { avx2::panels(format, range, rows) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        CpuKernels::Neon => unsafe { neon::panels(format, range, rows) },
        _ => {
            let _ = (format, range, rows);
            unreachable!("PackedWeight::new returns None without a kernel")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CpuKernels;

    #[test]
    fn the_kernel_family_comes_from_the_cpu_or_the_variable() {
        let fastest = CpuKernels::supported_here()[0];
        assert_eq!(CpuKernels::from_var(None), Ok(fastest));
        assert_eq!(CpuKernels::from_var(Some("")), Ok(fastest));
        assert_eq!(
            CpuKernels::from_var(Some("generic")),
            Ok(CpuKernels::Generic)
        );
        let unknown = CpuKernels::from_var(Some("avx9")).unwrap_err();
        assert!(unknown.contains("PERSONA_CPU_KERNELS=avx9 is not a kernel family"));
        for kernels in CpuKernels::ALL {
            let chosen = CpuKernels::from_var(Some(kernels.name()));
            if kernels.supported() {
                assert_eq!(chosen, Ok(kernels));
            } else {
                assert!(chosen.unwrap_err().contains("this CPU cannot run"));
            }
        }
    }
}
